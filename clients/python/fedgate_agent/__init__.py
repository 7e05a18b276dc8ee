"""fedgate agent SDK: delegation chains (SPEC section 3) for Python agents.

* :class:`X509Svid` / :func:`load_svid` — the agent's X509-SVID and key (files, or the SPIFFE
  Workload API through py-spiffe when a socket is configured).
* :class:`Chain` — a received ``Delegation-Chain``: :meth:`Chain.extend`, :meth:`Chain.inspect`,
  :meth:`Chain.verify`.
* :class:`Gateway` / :class:`AsyncGateway` — ``exchange`` (RFC 8693), ``egress``, ``direct``.
* :class:`FedgateMiddleware` — ASGI middleware for a receiving agent; :func:`crossing_of`.
* :mod:`fedgate_agent.errors` — one exception hierarchy, each with ``.reason`` and ``.link``.
"""

from __future__ import annotations

from . import errors, limits
from .bundle import Bundle, BundleSet, JwtAuthority, load_bundles
from .chain import Chain, issue_grant, random_id
from .errors import (
    REASONS,
    BundleError,
    ChainError,
    ConfigError,
    CrossingDenied,
    ExtendError,
    FedgateError,
    GatewayError,
    GatewayIdentityError,
    GatewayUnavailable,
    IdError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    InvalidTargetError,
    JoseError,
    ReceiveError,
    ScopeError,
    ServerError,
    SvidError,
    TokenExchangeError,
    UnauthorizedClientError,
)
from .gateway import AsyncGateway, ExchangedToken, Gateway, direct
from .jose import SigningKey, VerifyingKey
from .limits import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_MAX_LINKS,
    MAX_CHAIN_BYTES,
    MAX_LINK_BYTES,
    MAX_LINKS_HARD,
    MAX_SCOPE_BYTES,
    MAX_SCOPES,
    MIN_SCOPES,
)
from .links import Link, LinkClaims, chain_digest, link_hash, sign_link
from .middleware import CrossingContext, FedgateMiddleware, crossing_dependency, crossing_of
from .scope import Scope, ScopeSet
from .spiffe_id import SpiffeId
from .svid import X509Svid, load_svid, verify_svid
from .verify import CrossingRoot, HumanRoot, Policy, VerifiedChain, verify_chain

__version__ = "0.1.0"

__all__ = [
    "AsyncGateway",
    "Bundle",
    "BundleError",
    "BundleSet",
    "Chain",
    "ChainError",
    "ConfigError",
    "CrossingContext",
    "CrossingDenied",
    "CrossingRoot",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_MAX_LINKS",
    "ExchangedToken",
    "ExtendError",
    "FedgateError",
    "FedgateMiddleware",
    "Gateway",
    "GatewayError",
    "GatewayIdentityError",
    "GatewayUnavailable",
    "HumanRoot",
    "IdError",
    "InvalidGrantError",
    "InvalidRequestError",
    "InvalidScopeError",
    "InvalidTargetError",
    "JoseError",
    "JwtAuthority",
    "Link",
    "LinkClaims",
    "MAX_CHAIN_BYTES",
    "MAX_LINKS_HARD",
    "MAX_LINK_BYTES",
    "MAX_SCOPES",
    "MAX_SCOPE_BYTES",
    "MIN_SCOPES",
    "Policy",
    "REASONS",
    "ReceiveError",
    "Scope",
    "ScopeError",
    "ScopeSet",
    "ServerError",
    "SigningKey",
    "SpiffeId",
    "SvidError",
    "TokenExchangeError",
    "UnauthorizedClientError",
    "VerifiedChain",
    "VerifyingKey",
    "X509Svid",
    "chain_digest",
    "crossing_dependency",
    "crossing_of",
    "direct",
    "errors",
    "issue_grant",
    "limits",
    "link_hash",
    "load_bundles",
    "load_svid",
    "random_id",
    "sign_link",
    "verify_chain",
    "verify_svid",
]
