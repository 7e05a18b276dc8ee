"""Talking to the local gateway (SPEC section 7) and, after a token exchange, to a partner's.

* :meth:`Gateway.exchange` — RFC 8693 token exchange at ``POST /v1/token``; RFC 6749 errors are
  raised as typed :class:`~fedgate_agent.errors.TokenExchangeError` subclasses carrying
  ``error``, ``error_description``, ``reason``, ``crossing`` and the HTTP status.
* :meth:`Gateway.egress` — the forward proxy ``/egress/{path}``: returns the partner's response;
  a denial (the local gateway's, or the partner gateway's passed back) is raised as
  :class:`~fedgate_agent.errors.CrossingDenied`.
* :meth:`Gateway.direct` / :func:`direct` — the ``cnf``-bound mode: the agent presents the
  exchanged token itself at the partner gateway's ``/ingress/{path}`` over mTLS with its SVID.

Every connection is mTLS with the agent's SVID, and the server must be the expected SPIFFE ID
(``spiffe://<td>/gateway`` by default) with a certificate of its domain's bundle
(:mod:`fedgate_agent.tls`). Nothing here logs a key, a chain or a token.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass, field
from typing import Any, Mapping

import httpx

from .bundle import Bundle, BundleSet, load_bundles
from .chain import Chain
from .errors import (
    OAUTH_ERRORS,
    REASONS,
    ChainError,
    ConfigError,
    CrossingDenied,
    FedgateError,
    GatewayError,
    GatewayIdentityError,
    GatewayUnavailable,
    TokenExchangeError,
)
from .jose import decode_payload_unverified
from .limits import (
    GRANT_TYPE,
    HEADER_CHAIN,
    HEADER_SCOPE,
    HEADER_TARGET,
    ISSUED_TOKEN_TYPE,
    SUBJECT_TOKEN_TYPE,
)
from .scope import ScopeLike, ScopeSet
from .spiffe_id import SpiffeId
from .svid import X509Svid, load_svid
from .tls import client_context, identity_error_in

log = logging.getLogger("fedgate_agent")

DEFAULT_TIMEOUT = 15.0
_RESERVED = ("delegation-chain", "fedgate-")


@dataclass(frozen=True)
class ExchangedToken:
    """An RFC 8693 token-exchange result. ``repr`` never shows the token."""

    access_token: str = field(repr=False)
    issued_token_type: str
    token_type: str
    expires_in: int
    scope: ScopeSet
    audience: str
    """The target agent asked for."""
    claims: Mapping[str, Any] = field(repr=False, default_factory=dict)
    """The token's claims, decoded *without verification* (the partner verifies)."""

    @property
    def crossing(self) -> str | None:
        """The token's ``jti``: the crossing id both audit logs will record."""
        v = self.claims.get("jti")
        return v if isinstance(v, str) else None

    @property
    def partner_gateway(self) -> str | None:
        """``aud``: the partner gateway the token is for."""
        v = self.claims.get("aud")
        return v if isinstance(v, str) else None

    @property
    def cnf_thumbprint(self) -> str | None:
        cnf = self.claims.get("cnf")
        v = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        return v if isinstance(v, str) else None

    @property
    def expires_at(self) -> int | None:
        v = self.claims.get("exp")
        return v if type(v) is int else None


def _denial_body(resp: httpx.Response) -> dict[str, Any] | None:
    if "json" not in resp.headers.get("content-type", ""):
        return None
    try:
        body = resp.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("reason") in REASONS and "crossing" in body:
        return body
    return None


def _raise_denied(resp: httpx.Response, body: Mapping[str, Any], what: str) -> None:
    reason = body.get("reason")
    crossing = body.get("crossing") if isinstance(body.get("crossing"), str) else None
    log.info("%s denied: status=%s reason=%s crossing=%s", what, resp.status_code, reason, crossing)
    detail = body.get("message")
    msg = f"{what} denied: {body.get('error', 'denied')}"
    if isinstance(detail, str) and detail:
        msg += f": {detail}"
    raise CrossingDenied(
        msg,
        reason=reason if isinstance(reason, str) else None,
        status=resp.status_code,
        error=body.get("error") if isinstance(body.get("error"), str) else None,
        error_description=detail if isinstance(detail, str) else None,
        crossing=crossing,
        body=body,
    )


def _transport_error(e: Exception, server: str) -> GatewayError:
    ident = identity_error_in(e)
    if ident is not None:
        return GatewayIdentityError(
            f"{server}: the server certificate is not acceptable: {ident}", reason="bad_svid"
        )
    return GatewayUnavailable(f"{server}: {type(e).__name__}: {e}")


def _check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (headers or {}).items():
        if k.lower().startswith(_RESERVED):
            raise FedgateError(
                f"header {k} is set by the SDK (pass chain=, target=, scope=)", reason="malformed"
            )
        out[k] = v
    return out


def _path(path: str) -> str:
    if not path.startswith("/"):
        raise FedgateError("path must start with '/'", reason="malformed")
    return path


class _Core:
    """What the blocking and asyncio clients share: configuration, request building, results."""

    def __init__(
        self,
        internal_url: str,
        svid: X509Svid,
        *,
        bundles: BundleSet | Bundle | str | os.PathLike[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        gateway_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        precheck: bool = True,
    ):
        if not isinstance(svid, X509Svid):
            raise ConfigError("svid must be an X509Svid (load_svid(...))")
        self.svid = svid
        self.internal_url = internal_url.rstrip("/")
        if not self.internal_url.startswith("https://"):
            raise ConfigError("the gateway's internal listener is https://")
        td = svid.trust_domain
        self.gateway_id = SpiffeId(gateway_id or f"spiffe://{td}/gateway")
        if self.gateway_id.trust_domain != td:
            raise ConfigError(
                f"the internal listener is the local gateway's; {self.gateway_id} is not of {td}"
            )
        if bundles is None and ca_file is None:
            if os.environ.get("FEDGATE_BUNDLES"):
                bundles = os.environ["FEDGATE_BUNDLES"]
            elif os.environ.get("FEDGATE_CA"):
                ca_file = os.environ["FEDGATE_CA"]
            else:
                raise ConfigError(
                    "nothing to verify the gateway with: give bundles= (a bundle directory or "
                    "BundleSet) or ca_file=, or set FEDGATE_BUNDLES or FEDGATE_CA"
                )
        self.bundles = load_bundles(bundles) if bundles is not None else BundleSet()
        self.ca_file = ca_file
        ca_pem = self.bundles.ca_pem(td) if td in self.bundles else None
        self.ctx = client_context(svid, self.gateway_id, ca_pem=ca_pem, ca_file=ca_file)
        self.timeout = httpx.Timeout(timeout)
        self.precheck = precheck
        self._direct_ctx: dict[str, ssl.SSLContext] = {}

    # ---- chains ------------------------------------------------------------------------------

    def held(self, chain: Chain | str, scope: ScopeSet | None) -> str:
        """The chain's wire form, after the client-side checks (``precheck``)."""
        if not self.precheck:
            return chain.raw if isinstance(chain, Chain) else chain.strip()
        c = chain if isinstance(chain, Chain) else Chain.parse(chain)
        if c.holder != self.svid.spiffe_id:
            raise ChainError(
                f"the chain's holder is {c.holder}, not this agent ({self.svid.spiffe_id})",
                reason="not_holder",
            )
        if scope is not None:
            extra = scope.not_covered_by(c.scope)
            if extra:
                raise ChainError(
                    f"requested {' '.join(extra)} beyond the chain's {c.scope}",
                    reason="scope_escalation",
                )
        return c.raw

    # ---- exchange ----------------------------------------------------------------------------

    def exchange_request(self, chain: Chain | str, audience: str, scope: ScopeLike) -> tuple[str, dict[str, str], ScopeSet]:
        want = ScopeSet.parse_nonempty(scope)
        aud = SpiffeId(audience)
        c = self.held(chain, want)
        form = {
            "grant_type": GRANT_TYPE,
            "subject_token": c,
            "subject_token_type": SUBJECT_TOKEN_TYPE,
            "audience": aud,
            "scope": want.to_spaced(),
        }
        return f"{self.internal_url}/v1/token", form, want

    def exchange_result(self, resp: httpx.Response, audience: str) -> ExchangedToken:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
            token = body["access_token"]
            try:
                claims: Mapping[str, Any] = decode_payload_unverified(token)
            except FedgateError:
                claims = {}
            t = ExchangedToken(
                access_token=token,
                issued_token_type=str(body.get("issued_token_type", ISSUED_TOKEN_TYPE)),
                token_type=str(body.get("token_type", "N_A")),
                expires_in=int(body.get("expires_in", 0)),
                scope=ScopeSet.parse(str(body.get("scope", ""))),
                audience=audience,
                claims=claims,
            )
            log.info("token exchanged: crossing=%s audience=%s scope=%s", t.crossing, audience, t.scope)
            return t
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            err = body["error"]
            desc = body.get("error_description") if isinstance(body.get("error_description"), str) else None
            reason = body.get("reason") if isinstance(body.get("reason"), str) else None
            crossing = body.get("crossing") if isinstance(body.get("crossing"), str) else None
            log.info("token exchange refused: status=%s error=%s reason=%s crossing=%s", resp.status_code, err, reason, crossing)
            cls = OAUTH_ERRORS.get(err, TokenExchangeError)
            raise cls(
                f"token exchange refused: {err}" + (f": {desc}" if desc else ""),
                reason=reason,
                status=resp.status_code,
                error=err,
                error_description=desc,
                crossing=crossing,
                body=body,
            )
        raise TokenExchangeError(
            f"token exchange failed with HTTP {resp.status_code}", status=resp.status_code
        )

    # ---- egress ------------------------------------------------------------------------------

    def egress_request(
        self,
        path: str,
        target: str,
        scope: ScopeLike,
        chain: Chain | str,
        headers: Mapping[str, str] | None,
    ) -> tuple[str, dict[str, str]]:
        want = ScopeSet.parse_nonempty(scope)
        tgt = SpiffeId(target)
        c = self.held(chain, want)
        h = _check_headers(headers)
        h[HEADER_CHAIN] = c
        h[HEADER_TARGET] = tgt
        h[HEADER_SCOPE] = want.to_spaced()
        return f"{self.internal_url}/egress{_path(path)}", h

    # ---- direct ------------------------------------------------------------------------------

    def direct_request(
        self,
        path: str,
        token: ExchangedToken | str,
        partner_url: str,
        partner_gateway_id: str | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[ssl.SSLContext, str, dict[str, str]]:
        raw = token.access_token if isinstance(token, ExchangedToken) else token
        claims = token.claims if isinstance(token, ExchangedToken) else decode_payload_unverified(raw)
        aud = partner_gateway_id or claims.get("aud")
        if not isinstance(aud, str):
            raise ConfigError("the partner gateway's SPIFFE ID is unknown: pass partner_gateway_id=")
        expected = SpiffeId(aud)
        cnf = claims.get("cnf")
        bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if self.precheck:
            if bound is None:
                raise GatewayError(
                    "direct mode needs a cnf-bound token (from exchange())", reason="issuer_mismatch"
                )
            if bound != self.svid.x5t_s256:
                raise GatewayError(
                    "the token is bound to another agent's certificate", reason="issuer_mismatch"
                )
        ctx = self._direct_ctx.get(expected)
        if ctx is None:
            td = expected.trust_domain
            if td not in self.bundles:
                raise ConfigError(f"no bundle for {td}: the partner gateway cannot be verified")
            ctx = client_context(self.svid, expected, ca_pem=self.bundles.ca_pem(td))
            self._direct_ctx[expected] = ctx
        h = _check_headers(headers)
        h["Authorization"] = f"Bearer {raw}"
        if not partner_url.startswith("https://"):
            raise ConfigError("the partner's federation listener is https://")
        return ctx, f"{partner_url.rstrip('/')}/ingress{_path(path)}", h

    def result(self, resp: httpx.Response, what: str, raise_for_denial: bool) -> httpx.Response:
        if raise_for_denial and resp.status_code >= 400:
            body = _denial_body(resp)
            if body is not None:
                _raise_denied(resp, body, what)
        return resp


class Gateway:
    """The local gateway's internal listener, as seen by one agent (blocking, httpx.Client).

    ``bundles`` (a :class:`BundleSet` or a bundle directory) must hold the local domain's bundle
    (to verify the gateway) and, for :meth:`direct`, the partner's; ``ca_file`` may replace the
    local bundle for the TLS check. Without either, ``$FEDGATE_BUNDLES`` or ``$FEDGATE_CA``. ``precheck`` refuses client-side, before any request, a
    chain this agent does not hold (``not_holder``) or a scope beyond it (``scope_escalation``).
    """

    def __init__(
        self,
        internal_url: str,
        svid: X509Svid,
        *,
        bundles: BundleSet | Bundle | str | os.PathLike[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        gateway_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        precheck: bool = True,
    ):
        self._core = _Core(
            internal_url,
            svid,
            bundles=bundles,
            ca_file=ca_file,
            gateway_id=gateway_id,
            timeout=timeout,
            precheck=precheck,
        )
        self._client = httpx.Client(verify=self._core.ctx, timeout=self._core.timeout)
        self._direct_clients: dict[str, httpx.Client] = {}

    @classmethod
    def from_env(cls, **kwargs: Any) -> Gateway:
        """From ``$FEDGATE_GATEWAY_URL`` (the internal listener), the SVID of :func:`load_svid`
        (``$FEDGATE_CERT``/``$FEDGATE_KEY`` or the Workload API), ``$FEDGATE_BUNDLES`` and, if
        set, ``$FEDGATE_GATEWAY_ID``."""
        url = os.environ.get("FEDGATE_GATEWAY_URL")
        if not url:
            raise ConfigError("FEDGATE_GATEWAY_URL is not set")
        kwargs.setdefault("bundles", load_bundles())
        if os.environ.get("FEDGATE_GATEWAY_ID"):
            kwargs.setdefault("gateway_id", os.environ["FEDGATE_GATEWAY_ID"])
        return cls(url, load_svid(), **kwargs)

    @property
    def svid(self) -> X509Svid:
        return self._core.svid

    @property
    def bundles(self) -> BundleSet:
        return self._core.bundles

    @property
    def gateway_id(self) -> SpiffeId:
        return self._core.gateway_id

    def hold(self, chain: Chain | str) -> Chain:
        """``chain`` bound to this agent's SVID (so it can :meth:`Chain.extend`)."""
        return (chain if isinstance(chain, Chain) else Chain.parse(chain)).bind(self.svid)

    def exchange(self, chain: Chain | str, audience: str, scope: ScopeLike) -> ExchangedToken:
        """RFC 8693: exchanges ``chain`` for a federation token to ``audience`` (a partner's
        agent), bound to this agent's certificate (``cnf``)."""
        url, form, _ = self._core.exchange_request(chain, audience, scope)
        try:
            resp = self._client.post(url, data=form)
        except httpx.TransportError as e:
            raise _transport_error(e, self._core.gateway_id) from None
        return self._core.exchange_result(resp, audience)

    def egress(
        self,
        method: str,
        path: str,
        target: str,
        scope: ScopeLike,
        chain: Chain | str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        raise_for_denial: bool = True,
    ) -> httpx.Response:
        """``method /egress{path}`` with ``Delegation-Chain``, ``Fedgate-Target`` and
        ``Fedgate-Scope``: the gateway mints the federation token and forwards to the partner's
        ``/ingress{path}``; returns the partner's response. Denials raise
        :class:`CrossingDenied` (unless ``raise_for_denial=False``)."""
        url, h = self._core.egress_request(path, target, scope, chain, headers)
        try:
            resp = self._client.request(method, url, headers=h, content=content, json=json, params=params)
        except httpx.TransportError as e:
            raise _transport_error(e, self._core.gateway_id) from None
        return self._core.result(resp, "egress", raise_for_denial)

    def direct(
        self,
        method: str,
        path: str,
        token: ExchangedToken | str,
        *,
        partner_url: str,
        partner_gateway_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        raise_for_denial: bool = True,
    ) -> httpx.Response:
        """The ``cnf``-bound mode: presents ``token`` (from :meth:`exchange`) at the partner
        gateway's ``{partner_url}/ingress{path}`` over mTLS with this agent's SVID. The server
        must be the token's ``aud`` (or ``partner_gateway_id``) with a certificate of the
        partner's bundle."""
        ctx, url, h = self._core.direct_request(path, token, partner_url, partner_gateway_id, headers)
        key = f"{id(ctx)}"
        client = self._direct_clients.get(key)
        if client is None:
            client = httpx.Client(verify=ctx, timeout=self._core.timeout)
            self._direct_clients[key] = client
        try:
            resp = client.request(method, url, headers=h, content=content, json=json, params=params)
        except httpx.TransportError as e:
            raise _transport_error(e, partner_url) from None
        return self._core.result(resp, "direct", raise_for_denial)

    def close(self) -> None:
        self._client.close()
        for c in self._direct_clients.values():
            c.close()
        self._direct_clients.clear()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Gateway({self._core.internal_url!r}, agent={self.svid.spiffe_id!r}, gateway={self.gateway_id!r})"


class AsyncGateway:
    """:class:`Gateway` for asyncio code (httpx.AsyncClient); the same methods, awaitable."""

    def __init__(
        self,
        internal_url: str,
        svid: X509Svid,
        *,
        bundles: BundleSet | Bundle | str | os.PathLike[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        gateway_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        precheck: bool = True,
    ):
        self._core = _Core(
            internal_url,
            svid,
            bundles=bundles,
            ca_file=ca_file,
            gateway_id=gateway_id,
            timeout=timeout,
            precheck=precheck,
        )
        self._client = httpx.AsyncClient(verify=self._core.ctx, timeout=self._core.timeout)
        self._direct_clients: dict[str, httpx.AsyncClient] = {}

    @property
    def svid(self) -> X509Svid:
        return self._core.svid

    @property
    def bundles(self) -> BundleSet:
        return self._core.bundles

    @property
    def gateway_id(self) -> SpiffeId:
        return self._core.gateway_id

    async def exchange(self, chain: Chain | str, audience: str, scope: ScopeLike) -> ExchangedToken:
        url, form, _ = self._core.exchange_request(chain, audience, scope)
        try:
            resp = await self._client.post(url, data=form)
        except httpx.TransportError as e:
            raise _transport_error(e, self._core.gateway_id) from None
        return self._core.exchange_result(resp, audience)

    async def egress(
        self,
        method: str,
        path: str,
        target: str,
        scope: ScopeLike,
        chain: Chain | str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        raise_for_denial: bool = True,
    ) -> httpx.Response:
        url, h = self._core.egress_request(path, target, scope, chain, headers)
        try:
            resp = await self._client.request(method, url, headers=h, content=content, json=json, params=params)
        except httpx.TransportError as e:
            raise _transport_error(e, self._core.gateway_id) from None
        return self._core.result(resp, "egress", raise_for_denial)

    async def direct(
        self,
        method: str,
        path: str,
        token: ExchangedToken | str,
        *,
        partner_url: str,
        partner_gateway_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        raise_for_denial: bool = True,
    ) -> httpx.Response:
        ctx, url, h = self._core.direct_request(path, token, partner_url, partner_gateway_id, headers)
        key = f"{id(ctx)}"
        client = self._direct_clients.get(key)
        if client is None:
            client = httpx.AsyncClient(verify=ctx, timeout=self._core.timeout)
            self._direct_clients[key] = client
        try:
            resp = await client.request(method, url, headers=h, content=content, json=json, params=params)
        except httpx.TransportError as e:
            raise _transport_error(e, partner_url) from None
        return self._core.result(resp, "direct", raise_for_denial)

    async def aclose(self) -> None:
        await self._client.aclose()
        for c in self._direct_clients.values():
            await c.aclose()
        self._direct_clients.clear()

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def direct(
    svid: X509Svid,
    partner_url: str,
    method: str,
    path: str,
    token: ExchangedToken | str,
    *,
    bundles: BundleSet | Bundle | str | os.PathLike[str],
    partner_gateway_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    content: bytes | str | None = None,
    json: Any = None,
    params: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    raise_for_denial: bool = True,
) -> httpx.Response:
    """One ``cnf``-bound call at a partner gateway, without a :class:`Gateway` (``bundles`` must
    hold the partner's bundle)."""
    bs = load_bundles(bundles)
    core = _Core.__new__(_Core)
    core.svid, core.bundles, core.precheck = svid, bs, True
    core.timeout = httpx.Timeout(timeout)
    core._direct_ctx = {}
    ctx, url, h = core.direct_request(path, token, partner_url, partner_gateway_id, headers)
    with httpx.Client(verify=ctx, timeout=core.timeout) as client:
        try:
            resp = client.request(method, url, headers=h, content=content, json=json, params=params)
        except httpx.TransportError as e:
            raise _transport_error(e, partner_url) from None
        resp.read()
    return core.result(resp, "direct", raise_for_denial)
