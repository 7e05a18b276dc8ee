"""ASGI middleware for a receiving agent (plain ASGI: works with FastAPI, Starlette, or bare
apps; neither is a dependency).

The local gateway forwards an inbound crossing to the agent's upstream with one credential: a
*crossing link* it signed for the target agent (``Delegation-Chain``, that link alone). The
middleware verifies it — signed by the local gateway's key (role ``gateway``), a crossing root
(``crossing``, ``dep``, ``prev``, the foreign actor in ``dlg``), for this agent, not expired — and
refuses anything else with the gateway's denial shape ``{"error", "reason", "link"}``. On success
the handler finds a :class:`CrossingContext` in ``scope["fedgate"]`` (and
``request.state.fedgate`` in Starlette/FastAPI); :func:`crossing_of` fetches it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, MutableMapping

from .bundle import Bundle, BundleSet, load_bundles
from .chain import Chain
from .errors import ChainError, ConfigError, FedgateError, ReceiveError, http_status
from .limits import DEFAULT_CLOCK_SKEW, DEFAULT_MAX_LINKS
from .scope import ScopeSet
from .spiffe_id import SpiffeId
from .svid import X509Svid
from .verify import CrossingRoot, Policy, Revoked, VerifiedChain, verify_chain

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
    """The link as a chain this agent holds (bound to its SVID when the middleware has one):
    present it to the local gateway's egress, or :meth:`Chain.extend` it."""
    verified: VerifiedChain = field(repr=False)

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
    scope). Raises ``LookupError`` outside :class:`FedgateMiddleware`."""
    scope = getattr(request_or_scope, "scope", request_or_scope)
    ctx = scope.get(SCOPE_KEY) if isinstance(scope, MutableMapping) else None
    if not isinstance(ctx, CrossingContext):
        raise LookupError("no crossing context: is FedgateMiddleware installed?")
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


class FedgateMiddleware:
    """Refuses every HTTP/WebSocket request without a valid crossing link from the local
    gateway; exposes the link to the handler.

    ``bundles``: the local domain's bundle (a :class:`BundleSet`, a directory, or a file).
    ``holder``: this agent's SPIFFE ID (the link's ``sub`` must equal it); or give ``svid`` (its
    ID is the holder, and ``ctx.chain`` comes bound to it). ``trust_domain`` / ``gateway_id``
    default from those (``spiffe://<td>/gateway``). ``exempt_paths``: exact paths served
    without a link (health checks).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        bundles: BundleSet | Bundle | str | os.PathLike[str] | None = None,
        holder: str | None = None,
        svid: X509Svid | None = None,
        trust_domain: str | None = None,
        gateway_id: str | None = None,
        skew: int = DEFAULT_CLOCK_SKEW,
        max_links: int = DEFAULT_MAX_LINKS,
        exempt_paths: Iterable[str] = (),
        revoked: Revoked | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.app = app
        self.bundles = load_bundles(bundles)
        self.svid = svid
        self.holder = SpiffeId(holder) if holder else (svid.spiffe_id if svid else None)
        td = trust_domain or (
            self.holder.trust_domain
            if self.holder
            else SpiffeId(gateway_id).trust_domain
            if gateway_id
            else None
        )
        if td is None:
            raise ConfigError("FedgateMiddleware needs holder=, svid=, trust_domain= or gateway_id=")
        if self.holder is not None and self.holder.trust_domain != td:
            raise ConfigError(f"{self.holder} is not of trust domain {td}")
        self.trust_domain = td
        self.gateway_id = SpiffeId(gateway_id or f"spiffe://{td}/gateway")
        if self.gateway_id.trust_domain != td:
            raise ConfigError("crossing links for this agent come from its own domain's gateway")
        if td not in self.bundles:
            raise ConfigError(f"no bundle for {td}: the gateway's key is unknown")
        # idps=[]: a human grant never roots what arrives here; only the local gateway's link.
        self.policy = Policy(max_links=max_links, skew=skew, idps=[], gateways=[self.gateway_id])
        self.exempt = frozenset(exempt_paths)
        self.revoked = revoked
        self.clock = clock

    def verify(self, header: str | None) -> CrossingContext:
        """Verifies one ``Delegation-Chain`` value; raises :class:`ReceiveError`."""
        if header is None:
            raise ReceiveError("a crossing link from the local gateway is required", reason="malformed")
        raw = header.strip()
        try:
            v = verify_chain(raw, self.bundles, now=int(self.clock()), policy=self.policy, revoked=self.revoked)
        except ChainError as e:
            raise ReceiveError(e.message, reason=e.reason, link=e.link) from None
        if len(v.links) != 1 or not isinstance(v.root, CrossingRoot):
            raise ReceiveError(
                "expected the local gateway's crossing link alone", reason="malformed", link=1
            )
        if self.holder is not None and v.holder != self.holder:
            raise ReceiveError(
                f"the link is for {v.holder}, not this agent ({self.holder})", reason="not_holder", link=0
            )
        chain = Chain.parse(raw, svid=self.svid)
        r = v.root
        return CrossingContext(
            holder=SpiffeId(v.holder),
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
            ctx = self.verify(header)
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
