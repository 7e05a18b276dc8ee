"""fedgate agent SDK: delegation chains (SPEC section 3) for Python agents.

* :class:`X509Svid` / :func:`load_svid` — the agent's X509-SVID and key (files, or the SPIFFE
  Workload API through py-spiffe when a socket is configured); :func:`svid_source` — the same,
  renewed (:class:`SvidFiles`, :class:`WorkloadApiSvidSource`).
* :class:`BundleStore` — a bundle directory re-read when the gateway rewrites it.
* :class:`Chain` — a received ``Delegation-Chain``: :meth:`Chain.extend`, :meth:`Chain.inspect`,
  :meth:`Chain.verify`.
* :class:`Gateway` / :class:`AsyncGateway` — ``exchange`` (RFC 8693), ``egress``, ``direct``.
* :class:`FedgateMiddleware` — ASGI middleware for a receiving agent; :func:`crossing_of`;
  :class:`ReplayCache` / :class:`MemoryReplayCache` — each crossing link accepted once.
* :mod:`fedgate_agent.errors` — one exception hierarchy, each with ``.reason`` and ``.link``.
"""

from __future__ import annotations

from . import errors, limits
from .bundle import Bundle, BundleSet, BundleSource, BundleStore, JwtAuthority, bundle_source, load_bundles
from .chain import Chain, issue_grant, random_id
from .errors import (
    ALL_REASONS,
    EXTRA_REASONS,
    REASONS,
    BundleError,
    ChainError,
    ConfigError,
    CrossingContextMissing,
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
    PartnerResponseRefused,
    ReceiveError,
    ReplayCacheFull,
    ScopeError,
    ServerError,
    TemporarilyUnavailableError,
    SvidError,
    TokenExchangeError,
    UnauthorizedClientError,
)
from .gateway import AsyncGateway, ExchangedToken, Gateway, direct, gateway_denial
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
from .replay import MAX_REPLAY_ENTRIES, MemoryReplayCache, ReplayCache
from .scope import Scope, ScopeSet
from .spiffe_id import SpiffeId
from .svid import (
    SvidFiles,
    SvidSource,
    WorkloadApiSvidSource,
    X509Svid,
    load_svid,
    svid_source,
    verify_svid,
)
from .verify import CrossingRoot, HumanRoot, Policy, VerifiedChain, verify_chain

__version__ = "0.1.0"

__all__ = [
    "ALL_REASONS",
    "AsyncGateway",
    "Bundle",
    "bundle_source",
    "BundleError",
    "BundleSet",
    "BundleSource",
    "BundleStore",
    "Chain",
    "chain_digest",
    "ChainError",
    "ConfigError",
    "crossing_dependency",
    "crossing_of",
    "CrossingContext",
    "CrossingContextMissing",
    "CrossingDenied",
    "CrossingRoot",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_MAX_LINKS",
    "direct",
    "errors",
    "ExchangedToken",
    "ExtendError",
    "EXTRA_REASONS",
    "FedgateError",
    "FedgateMiddleware",
    "Gateway",
    "gateway_denial",
    "GatewayError",
    "GatewayIdentityError",
    "GatewayUnavailable",
    "HumanRoot",
    "IdError",
    "InvalidGrantError",
    "InvalidRequestError",
    "InvalidScopeError",
    "InvalidTargetError",
    "issue_grant",
    "JoseError",
    "JwtAuthority",
    "limits",
    "Link",
    "link_hash",
    "LinkClaims",
    "load_bundles",
    "load_svid",
    "MAX_CHAIN_BYTES",
    "MAX_LINK_BYTES",
    "MAX_LINKS_HARD",
    "MAX_REPLAY_ENTRIES",
    "MAX_SCOPE_BYTES",
    "MAX_SCOPES",
    "MemoryReplayCache",
    "MIN_SCOPES",
    "PartnerResponseRefused",
    "Policy",
    "random_id",
    "REASONS",
    "ReceiveError",
    "ReplayCache",
    "ReplayCacheFull",
    "Scope",
    "ScopeError",
    "ScopeSet",
    "ServerError",
    "TemporarilyUnavailableError",
    "sign_link",
    "SigningKey",
    "SpiffeId",
    "svid_source",
    "SvidError",
    "SvidFiles",
    "SvidSource",
    "TokenExchangeError",
    "UnauthorizedClientError",
    "VerifiedChain",
    "verify_chain",
    "verify_svid",
    "VerifyingKey",
    "WorkloadApiSvidSource",
    "X509Svid",
]
