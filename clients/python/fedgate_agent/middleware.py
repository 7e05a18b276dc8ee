"""ASGI middleware for a receiving agent (plain ASGI: works with FastAPI, Starlette, or bare
apps; neither is a dependency).

The local gateway forwards an inbound crossing to the agent's upstream with one credential: a
*crossing link* it signed for the target agent (``Delegation-Chain``, that link alone). The
middleware verifies it — signed by the local gateway's key (role ``gateway``), a crossing root
(``crossing``, ``dep``, ``prev``, the foreign actor in ``dlg``), for this agent (the link's
``sub`` is the agent's own SPIFFE ID: always checked), not expired, not revoked, and not seen
before (a one-time cache keyed by the link's ``jti``, :mod:`fedgate_agent.replay`) — and refuses
anything else with the gateway's denial shape ``{"error", "reason", "link"}``. Optionally the
TLS peer must be the local gateway itself (``require_gateway_peer``), where the ASGI server
exposes the client certificate. On success the handler finds a :class:`CrossingContext` in
``scope["fedgate"]`` (and ``request.state.fedgate`` in Starlette/FastAPI); :func:`crossing_of`
fetches it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping, MutableMapping, Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .bundle import Bundle, BundleSet, BundleStore, bundle_source
from .chain import Chain
from .errors import (
    ChainError,
    ConfigError,
    CrossingContextMissing,
    FedgateError,
    IdError,
    ReceiveError,
    SvidError,
    http_status,
)
from .limits import DEFAULT_CLOCK_SKEW, DEFAULT_MAX_LINKS
from .replay import MemoryReplayCache, ReplayCache
from .scope import ScopeSet
from .spiffe_id import SpiffeId
from .svid import SvidLike, verify_svid
from .verify import CrossingRoot, Policy, Revoked, VerifiedChain, verify_chain

if TYPE_CHECKING:
    from .gateway import AsyncGateway, Gateway

log = logging.getLogger("fedgate_agent")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCOPE_KEY = "fedgate"


@dataclass(frozen=True)
class CrossingContext:
    """What a verified crossing link tells the handler."""

    holder: SpiffeId
    """This agent (the link's ``sub``)."""
    scope: ScopeSet
    """What this agent may do for the caller (token scope ∩ the route's)."""
    task: str
    crossing: str
    """The crossing id (the federation token's ``jti``), as both audit logs record it."""
    foreign_actor: SpiffeId
    """The partner's agent that delegated across the boundary (``dlg``)."""
    dep: int
    """Links counted before this one, across both domains."""
    principal: str | None
    """The root principal as the sending domain disclosed it (``prn``: clear, ``anon:…``), or
    ``None`` when it disclosed none (or the gateway does not write ``prn``)."""
    agreement: str | None
    """The agreement ref ``<id>@<hash>`` the crossing was under (``agr``), when present."""
    expires: int
    chain: Chain = field(repr=False)
    """The link as a chain this agent holds (bound to its SVID, or SVID source, when the
    middleware has one): present it to the local gateway's egress, or :meth:`Chain.extend` it.
    The link is accepted once: extending it hands it to the delegate as the first link of its
    chain, and a delegate presenting it back to this agent alone is refused (``replayed``)."""
    verified: VerifiedChain = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """What the link says, as JSON-ready values (the ``chain`` itself left out)."""
        return {
            "holder": str(self.holder),
            "scope": self.scope.to_strings(),
            "task": self.task,
            "crossing": self.crossing,
            "foreign_actor": str(self.foreign_actor),
            "dep": self.dep,
            "principal": self.principal,
            "agreement": self.agreement,
            "expires": self.expires,
        }

    def allows(self, scope: str) -> bool:
        """Whether the crossing's scope covers ``scope``."""
        return self.scope.covers(scope)

    def require(self, *scopes: str) -> None:
        """Raises :class:`ReceiveError` (``scope_escalation``) unless every scope is covered."""
        missing = [s for s in scopes if not self.scope.covers(s)]
        if missing:
            raise ReceiveError(
                f"the crossing grants {self.scope}, not {' '.join(missing)}",
                reason="scope_escalation",
            )

    @property
    def depth(self) -> int:
        return self.verified.depth


def crossing_of(request_or_scope: Any) -> CrossingContext:
    """The :class:`CrossingContext` of a request (Starlette/FastAPI ``Request``, or an ASGI
    scope). Raises :class:`~fedgate_agent.errors.CrossingContextMissing` (a ``ConfigError`` and
    a ``LookupError``) outside :class:`FedgateMiddleware`."""
    scope = getattr(request_or_scope, "scope", request_or_scope)
    ctx = scope.get(SCOPE_KEY) if isinstance(scope, MutableMapping) else None
    if not isinstance(ctx, CrossingContext):
        raise CrossingContextMissing("no crossing context: is FedgateMiddleware installed?")
    return ctx


def crossing_dependency() -> Callable[..., CrossingContext]:
    """A FastAPI dependency giving the handler its :class:`CrossingContext`
    (``link: CrossingContext = Depends(crossing_dependency())``). Starlette is imported only
    here, when asked for."""
    from starlette.requests import HTTPConnection

    def crossing(connection: HTTPConnection) -> CrossingContext:
        return crossing_of(connection)

    # Real classes, not the postponed strings of this module: FastAPI reads them.
    crossing.__annotations__ = {"connection": HTTPConnection, "return": CrossingContext}
    return crossing


Holders = Union[str, Iterable[str]]


class FedgateMiddleware:
    """Refuses every HTTP/WebSocket request without a valid crossing link from the local
    gateway, for this agent, seen for the first time; exposes the link to the handler.

    * ``gateway``: a :class:`~fedgate_agent.Gateway` / :class:`~fedgate_agent.AsyncGateway`
      — its bundles (re-read on change), SVID source and gateway ID are the defaults of the
      three below.
    * ``bundles``: the local domain's bundle — a directory or file (a
      :class:`~fedgate_agent.BundleStore`, re-read when the gateway rewrites it on a key
      rotation), a store, or a fixed :class:`~fedgate_agent.BundleSet`.
    * ``svid``: this agent's SVID or SVID source (its SPIFFE ID is the holder every link must
      name, and ``ctx.chain`` comes bound to it), or ``holder``: this agent's SPIFFE ID, or
      several (an app serving more than one agent identity behind one address). One of
      ``gateway``, ``svid``, ``holder`` is required: a link for another agent is never accepted
      (``not_holder``), and there is no switch to turn that off.
    * ``gateway_id``: the local gateway (default ``spiffe://<td>/gateway``); ``trust_domain``,
      if given, must be the holder's (a check only: it never replaces the holder).
    * ``replay_cache``: where used link ``jti`` values are kept (default a
      :class:`~fedgate_agent.MemoryReplayCache` of this process). Replicas of an agent behind
      one address must share one (:class:`~fedgate_agent.ReplayCache`).
    * ``require_gateway_peer``: also require the TLS client certificate of the connection to be
      the local gateway's SVID (``bad_svid`` otherwise) — only where the ASGI server exposes it
      (the ASGI ``tls`` extension) and the gateway reaches the agent over mTLS
      (``[[upstreams]]`` with ``https://``); with a server that does not expose it, every
      request is refused.
    * ``revoked``: a revocation lookup (as :func:`~fedgate_agent.verify_chain`), ``skew``,
      ``max_links``, ``exempt_paths`` (exact paths served without a link: health checks).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        gateway: Gateway | AsyncGateway | None = None,
        bundles: BundleSet | BundleStore | Bundle | str | os.PathLike[str] | None = None,
        holder: Holders | None = None,
        svid: SvidLike | None = None,
        trust_domain: str | None = None,
        gateway_id: str | None = None,
        skew: int = DEFAULT_CLOCK_SKEW,
        max_links: int = DEFAULT_MAX_LINKS,
        exempt_paths: Iterable[str] = (),
        revoked: Revoked | None = None,
        replay_cache: ReplayCache | None = None,
        require_gateway_peer: bool = False,
        clock: Callable[[], float] = time.time,
    ):
        self.app = app
        if gateway is not None:
            bundles = bundles if bundles is not None else gateway.bundles
            svid = svid if svid is not None else gateway.svid_source
            gateway_id = gateway_id or gateway.gateway_id
        self.svid = svid
        try:
            if holder is None:
                holders = [svid.spiffe_id] if svid is not None else []
            elif isinstance(holder, str):
                holders = [SpiffeId(holder)]
            else:
                holders = [SpiffeId(h) for h in holder]
        except IdError as e:
            raise ConfigError(f"holder: {e.message}") from None
        if not holders:
            raise ConfigError(
                "FedgateMiddleware needs this agent's identity: gateway=, svid= or holder= "
                "(a crossing link is accepted only for the agent it names)"
            )
        if svid is not None and svid.spiffe_id not in holders:
            raise ConfigError(f"svid is {svid.spiffe_id}, not one of holder={holders}")
        self.holders = frozenset(holders)
        self.holder = holders[0] if len(holders) == 1 else None
        """This agent's SPIFFE ID (``None`` when several were given: see ``holders``)."""
        tds = {h.trust_domain for h in holders}
        if len(tds) != 1:
            raise ConfigError(f"holders of several trust domains: {sorted(tds)}")
        td = tds.pop()
        if trust_domain is not None and trust_domain != td:
            raise ConfigError(f"{holders[0]} is not of trust domain {trust_domain}")
        self.trust_domain = td
        try:
            self.gateway_id = SpiffeId(gateway_id or f"spiffe://{td}/gateway")
        except IdError as e:
            raise ConfigError(f"gateway_id: {e.message}") from None
        if self.gateway_id.trust_domain != td:
            raise ConfigError("crossing links for this agent come from its own domain's gateway")
        self.bundles = bundle_source(bundles)
        local = self.bundles.current().get(td)
        if local is None:
            raise ConfigError(f"no bundle for {td}: the gateway's key is unknown")
        if not local.keys_with_role("gateway"):
            hint = (
                "; the bundle has no key roles (written before them): run "
                "`fedgate bundle assign-roles` on the gateway"
                if not local.has_roles
                else ""
            )
            raise ConfigError(f"the bundle of {td} has no gateway-role key: no crossing link could verify{hint}")
        # idps=[]: a human grant never roots what arrives here; only the local gateway's link.
        self.policy = Policy(max_links=max_links, skew=skew, idps=[], gateways=[self.gateway_id])
        self.exempt = frozenset(exempt_paths)
        self.revoked = revoked
        self.replay_cache: ReplayCache = replay_cache if replay_cache is not None else MemoryReplayCache()
        self.require_gateway_peer = require_gateway_peer
        self.clock = clock

    # ---- checks ------------------------------------------------------------------------------

    def _verify_chain(self, raw: str, now: int) -> VerifiedChain:
        try:
            return verify_chain(raw, self.bundles.current(), now=now, policy=self.policy, revoked=self.revoked)
        except ChainError as e:
            # A kid the bundle does not know may be a rotation's new key, published in the
            # bundle file a moment ago: re-read once, then verify once more.
            if e.reason == "unknown_key" and isinstance(self.bundles, BundleStore):
                if self.bundles.reload_for_unknown_key():
                    return verify_chain(
                        raw, self.bundles.current(), now=now, policy=self.policy, revoked=self.revoked
                    )
            raise

    def check_peer(self, tls: Mapping[str, Any] | None) -> None:
        """With ``require_gateway_peer``: the connection's client certificate (the ASGI ``tls``
        extension's ``client_cert_chain``, PEM, leaf first) must be a valid X509-SVID of the
        local gateway. Raises :class:`ReceiveError` (``bad_svid``)."""
        if not self.require_gateway_peer:
            return
        if not isinstance(tls, Mapping):
            raise ReceiveError(
                "require_gateway_peer: the ASGI server does not expose the TLS connection "
                "(ASGI 'tls' extension), so the gateway cannot be recognized as the peer",
                reason="bad_svid",
            )
        pems = tls.get("client_cert_chain") or ()
        if not pems:
            raise ReceiveError("no TLS client certificate: only the local gateway may call", reason="bad_svid")
        try:
            ders = [
                x509.load_pem_x509_certificate(p.encode("ascii") if isinstance(p, str) else p).public_bytes(
                    serialization.Encoding.DER
                )
                for p in pems
            ]
            peer = verify_svid(ders, self.bundles.current(), int(self.clock()), "client")
        except (ValueError, SvidError) as e:
            raise ReceiveError(
                f"the TLS peer is not a valid X509-SVID: {getattr(e, 'message', e)}", reason="bad_svid"
            ) from None
        if peer.spiffe_id != self.gateway_id:
            raise ReceiveError(
                f"the TLS peer is {peer.spiffe_id}, not the local gateway {self.gateway_id}",
                reason="bad_svid",
            )

    def verify(self, header: str | None, *, tls: Mapping[str, Any] | None = None) -> CrossingContext:
        """Verifies one ``Delegation-Chain`` value and records the link as used: a second call
        with the same link is ``replayed``. Raises :class:`ReceiveError`."""
        self.check_peer(tls)
        if header is None:
            raise ReceiveError("a crossing link from the local gateway is required", reason="malformed")
        raw = header.strip()
        now = int(self.clock())
        try:
            v = self._verify_chain(raw, now)
        except ChainError as e:
            raise ReceiveError(e.message, reason=e.reason, link=e.link) from None
        if len(v.links) != 1 or not isinstance(v.root, CrossingRoot):
            raise ReceiveError(
                "expected the local gateway's crossing link alone", reason="malformed", link=1
            )
        holder = SpiffeId(v.holder)
        if holder not in self.holders:
            mine = self.holder or ", ".join(sorted(self.holders))
            raise ReceiveError(
                f"the link is for {v.holder}, not this agent ({mine})", reason="not_holder", link=0
            )
        # One crossing, one forwarded request, one link: a link seen before is a replay (by a
        # delegate that holds it as its chain's first link, or anything that saw the header).
        link = v.links[0]
        try:
            first = self.replay_cache.first_use(link.jti, link.exp + self.policy.skew, now)
        except FedgateError as e:
            raise ReceiveError(e.message, reason=e.reason or "state_unavailable") from None
        except Exception as e:  # a shared cache that failed: fail closed
            raise ReceiveError(
                f"replay cache unavailable: {type(e).__name__}: {e}", reason="state_unavailable"
            ) from None
        if not first:
            raise ReceiveError(
                f"crossing link {link.jti} was already used (crossing {v.root.crossing})",
                reason="replayed",
                link=0,
            )
        bound = self.svid if self.svid is not None and self.svid.spiffe_id == holder else None
        chain = Chain.parse(raw, svid=bound)
        r = v.root
        return CrossingContext(
            holder=holder,
            scope=v.scope,
            task=v.task,
            crossing=r.crossing,
            foreign_actor=r.foreign_actor,
            dep=r.dep,
            principal=r.principal,
            agreement=r.agreement,
            expires=v.expires,
            chain=chain,
            verified=v,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket") or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope.get("headers", ()) if k.lower() == b"delegation-chain"]
        try:
            if len(values) > 1:
                raise ReceiveError("Delegation-Chain must appear once", reason="malformed")
            try:
                header = values[0].decode("ascii") if values else None
            except UnicodeDecodeError:
                raise ReceiveError("Delegation-Chain is not ASCII", reason="malformed") from None
            ext = scope.get("extensions") or {}
            ctx = self.verify(header, tls=ext.get("tls") if isinstance(ext, Mapping) else None)
        except FedgateError as e:
            log.info("crossing link refused: reason=%s link=%s path=%s", e.reason, e.link, scope.get("path"))
            await self._refuse(scope, receive, send, e)
            return
        scope[SCOPE_KEY] = ctx
        state = scope.setdefault("state", {})
        if isinstance(state, MutableMapping):
            state[SCOPE_KEY] = ctx
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, e: FedgateError) -> None:
        reason = e.reason or "malformed"
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return
        body = json.dumps(
            {"error": "crossing link refused", "reason": reason, "link": e.link, "message": e.message}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": http_status(reason),
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
