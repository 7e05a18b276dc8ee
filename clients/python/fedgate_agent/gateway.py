"""Talking to the local gateway (SPEC section 7) and, after a token exchange, to a partner's.

* :meth:`Gateway.exchange` — RFC 8693 token exchange at ``POST /v1/token``; RFC 6749 errors are
  raised as typed :class:`~fedgate_agent.errors.TokenExchangeError` subclasses carrying
  ``error``, ``error_description``, ``reason``, ``crossing`` and the HTTP status.
* :meth:`Gateway.egress` — the forward proxy ``/egress/{path}``: returns the partner's response;
  a denial (the local gateway's, or the partner gateway's passed back) is raised as
  :class:`~fedgate_agent.errors.CrossingDenied`, whatever its reason code
  (:func:`gateway_denial` says how one is recognized).
* :meth:`Gateway.direct` / :func:`direct` — the ``cnf``-bound mode: the agent presents the
  exchanged token itself at the partner gateway's ``/ingress/{path}`` over mTLS with its SVID.

Every connection is mTLS with the agent's SVID, and the server must be the expected SPIFFE ID
(``spiffe://<td>/gateway`` by default) with a certificate of its domain's bundle
(:mod:`fedgate_agent.tls`). Nothing here logs a key, a chain or a token.

The SVID and the bundles may change under a running agent (a renewed SVID from the Workload
API or its files, a gateway key or CA rotation in the bundle files): each request asks the SVID
source and the bundle source for the current ones, and the TLS context (and the httpx client
using it) is rebuilt when the certificate presented or the CA trusted changes.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Mapping, TypeVar, Union

import httpx

from .bundle import Bundle, BundleSet, BundleSource, BundleStore, bundle_source
from .chain import Chain
from .errors import (
    OAUTH_ERRORS,
    PARTNER_RESPONSE_REASONS,
    ChainError,
    ConfigError,
    CrossingDenied,
    FedgateError,
    GatewayError,
    GatewayIdentityError,
    GatewayUnavailable,
    PartnerResponseRefused,
    ScopeError,
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
from .svid import SvidLike, SvidSource, X509Svid, current_svid, svid_source
from .tls import client_context, identity_error_in

log = logging.getLogger("fedgate_agent")

DEFAULT_TIMEOUT = 15.0
_RESERVED = ("delegation-chain", "fedgate-")
HEADER_CROSSING = "fedgate-crossing"
"""The crossing id on every gateway denial, and on every answer to a crossing."""
HEADER_RECEIPT = "fedgate-receipt"
"""The receiving gateway's signed receipt: only on the partner's own answers to a crossing."""


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


def gateway_denial(resp: httpx.Response) -> dict[str, Any] | None:
    """The body of a gateway denial, or ``None`` if ``resp`` is not one.

    A denial — the local gateway's, or the partner gateway's passed back through egress (or
    met directly in ``direct`` mode) — is recognized by the shape every gateway refusal has
    (``gateway/src/server/deny.rs``), not by a list of reason codes, so a code this SDK does not
    know is raised too: a 4xx/5xx status, a ``Fedgate-Crossing`` header, a JSON object body with
    string ``error``, ``reason`` and ``crossing``, and *no* ``Fedgate-Receipt``. The last is what
    tells a denial from the partner's own answer: the receiving gateway puts its signed receipt
    on every answer its upstream gives to an allowed crossing (``server/ingress.rs``), whatever
    the status, and never on a denial; the sending gateway passes the receipt on to the agent
    (``server/response.rs``). So a partner's own ``404`` — even one whose body looks like a
    denial — comes back as a response.
    """
    if resp.status_code < 400:
        return None
    if HEADER_RECEIPT in resp.headers or HEADER_CROSSING not in resp.headers:
        return None
    if "json" not in resp.headers.get("content-type", "").lower():
        return None
    try:
        body = resp.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if not all(isinstance(body.get(k), str) for k in ("error", "reason", "crossing")):
        return None
    return body


def _retry_after(resp: httpx.Response) -> int | None:
    v = resp.headers.get("retry-after", "")
    return int(v) if v.isdigit() else None


def _raise_denied(resp: httpx.Response, body: Mapping[str, Any], what: str) -> None:
    reason = body["reason"]
    crossing = body["crossing"] or resp.headers.get(HEADER_CROSSING) or None
    log.info("%s denied: status=%s reason=%s crossing=%s", what, resp.status_code, reason, crossing)
    detail = body.get("message")
    msg = f"{what} denied: {body['error']}"
    if isinstance(detail, str) and detail:
        msg += f": {detail}"
    cls = PartnerResponseRefused if reason in PARTNER_RESPONSE_REASONS else CrossingDenied
    e = cls(
        msg,
        reason=reason,
        status=resp.status_code,
        error=body["error"],
        error_description=detail if isinstance(detail, str) else None,
        crossing=crossing,
        body=body,
    )
    e.retry_after = _retry_after(resp)
    raise e


def _transport_error(e: Exception, server: str) -> GatewayError:
    if isinstance(e, httpx.InvalidURL):
        return GatewayUnavailable(f"{server}: invalid URL: {e}", reason="malformed")
    ident = identity_error_in(e)
    if ident is not None:
        return GatewayIdentityError(
            f"{server}: the server certificate is not acceptable: {ident}", reason="bad_svid"
        )
    return GatewayUnavailable(f"{server}: {type(e).__name__}: {e}")


_TRANSPORT_ERRORS = (httpx.RequestError, httpx.InvalidURL)


def _check_headers(headers: Mapping[str, str] | None, reserved: tuple[str, ...] = _RESERVED) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (headers or {}).items():
        if k.lower().startswith(reserved):
            raise ConfigError(
                f"header {k} is set by the SDK (pass chain=, target=, scope=, token=)",
                reason="malformed",
            )
        out[k] = v
    return out


def _path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError("path must start with '/'", reason="malformed")
    return path


C = TypeVar("C")


class _Slot(Generic[C]):
    """One HTTP client per TLS context: a new client when the context changes (a renewed SVID,
    a rotated CA). The replaced client is closed at the next replacement, an SVID lifetime
    later, so requests in flight on it finish."""

    def __init__(self, make: Callable[[ssl.SSLContext], C]):
        self.make = make
        self.ctx: ssl.SSLContext | None = None
        self.client: C | None = None
        self.retired: C | None = None

    def get(self, ctx: ssl.SSLContext) -> tuple[C, C | None]:
        """The client for ``ctx``, and a client to close now (or ``None``)."""
        drop = None
        if ctx is not self.ctx or self.client is None:
            drop, self.retired = self.retired, self.client
            self.client, self.ctx = self.make(ctx), ctx
        return self.client, drop

    def all(self) -> list[C]:
        out = [c for c in (self.client, self.retired) if c is not None]
        self.client = self.retired = None
        self.ctx = None
        return out


class _Core:
    """What the blocking and asyncio clients share: configuration, request building, results."""

    def __init__(
        self,
        internal_url: str,
        svid: SvidLike,
        *,
        bundles: BundleSet | BundleStore | Bundle | str | os.PathLike[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        gateway_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        precheck: bool = True,
    ):
        if not isinstance(svid, (X509Svid, SvidSource)):
            raise ConfigError("svid must be an X509Svid or an SVID source (load_svid, svid_source)")
        self.svid_source: SvidLike = svid
        first = current_svid(svid)
        if not isinstance(internal_url, str) or not internal_url.startswith("https://"):
            raise ConfigError("the gateway's internal listener is https://")
        self.internal_url = internal_url.rstrip("/")
        td = first.trust_domain
        self.trust_domain = td
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
        self.bundles: BundleSource = bundle_source(bundles) if bundles is not None else BundleSet()
        self.ca_file = ca_file
        self.timeout = httpx.Timeout(timeout)
        self.precheck = precheck
        self._lock = threading.Lock()
        self._ctx: ssl.SSLContext | None = None
        self._ctx_key: tuple[Any, ...] | None = None
        self._direct_ctx: dict[str, tuple[tuple[Any, ...], ssl.SSLContext]] = {}
        self.context()  # configuration errors now, not at the first request

    @classmethod
    def for_direct(cls, svid: SvidLike, bundles: BundleSet | BundleStore | Bundle | str | os.PathLike[str], timeout: float) -> _Core:
        """A core for :func:`direct` only (no local gateway)."""
        core = cls.__new__(cls)
        core.svid_source = svid
        core.bundles = bundle_source(bundles)
        core.precheck = True
        core.timeout = httpx.Timeout(timeout)
        core._lock = threading.Lock()
        core._direct_ctx = {}
        return core

    @property
    def svid(self) -> X509Svid:
        """The SVID in force now (the source's current one)."""
        return current_svid(self.svid_source)

    def context(self) -> ssl.SSLContext:
        """The TLS context for the local gateway: the current SVID, the current CA of the local
        bundle; rebuilt when either changed."""
        svid = self.svid
        bs = self.bundles.current()
        ca_pem = bs.ca_pem(self.trust_domain) if self.trust_domain in bs else None
        key = (svid.x5t_s256, ca_pem)
        with self._lock:
            if self._ctx is None or key != self._ctx_key:
                if self._ctx is not None:
                    log.info("TLS context to %s rebuilt (renewed SVID or rotated CA)", self.gateway_id)
                self._ctx = client_context(svid, self.gateway_id, ca_pem=ca_pem, ca_file=self.ca_file)
                self._ctx_key = key
            return self._ctx

    def direct_context(self, expected: SpiffeId) -> ssl.SSLContext:
        svid = self.svid
        td = expected.trust_domain
        bs = self.bundles.current()
        if td not in bs:
            raise ConfigError(f"no bundle for {td}: the partner gateway cannot be verified")
        ca_pem = bs.ca_pem(td)
        key = (svid.x5t_s256, ca_pem)
        with self._lock:
            cached = self._direct_ctx.get(expected)
            if cached is None or cached[0] != key:
                cached = (key, client_context(svid, expected, ca_pem=ca_pem))
                self._direct_ctx[expected] = cached
            return cached[1]

    # ---- chains ------------------------------------------------------------------------------

    def held(self, chain: Chain | str, scope: ScopeSet | None) -> str:
        """The chain's wire form, after the client-side checks (``precheck``)."""
        if not self.precheck:
            return chain.raw if isinstance(chain, Chain) else chain.strip()
        c = chain if isinstance(chain, Chain) else Chain.parse(chain)
        if c.holder != self.svid_source.spiffe_id:
            raise ChainError(
                f"the chain's holder is {c.holder}, not this agent ({self.svid_source.spiffe_id})",
                reason="not_holder",
            )
        if scope is not None:
            try:
                held_scope = c.scope
            except ChainError as e:
                raise ChainError(e.message, reason="malformed", link=e.link) from None
            extra = scope.not_covered_by(held_scope)
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
            expires_in = body.get("expires_in", 0)
            try:
                if isinstance(expires_in, bool) or not isinstance(expires_in, int):
                    raise ValueError("expires_in is not an integer")
                granted = ScopeSet.parse(body.get("scope", ""))
            except (ValueError, ScopeError) as e:
                raise TokenExchangeError(
                    f"the token endpoint's answer does not parse: {e}", status=resp.status_code
                ) from None
            t = ExchangedToken(
                access_token=token,
                issued_token_type=str(body.get("issued_token_type", ISSUED_TOKEN_TYPE)),
                token_type=str(body.get("token_type", "N_A")),
                expires_in=expires_in,
                scope=granted,
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
    ) -> tuple[SpiffeId, ssl.SSLContext, str, dict[str, str]]:
        raw = token.access_token if isinstance(token, ExchangedToken) else token
        if not isinstance(raw, str):
            raise ConfigError("token must be an ExchangedToken or its access_token string")
        claims = token.claims if isinstance(token, ExchangedToken) else decode_payload_unverified(raw)
        aud = partner_gateway_id or claims.get("aud")
        if not isinstance(aud, str):
            raise ConfigError("the partner gateway's SPIFFE ID is unknown: pass partner_gateway_id=")
        expected = SpiffeId(aud)
        if not isinstance(partner_url, str) or not partner_url.startswith("https://"):
            raise ConfigError("the partner's federation listener is https://")
        cnf = claims.get("cnf")
        bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if self.precheck:
            if bound is None:
                raise GatewayError(
                    "direct mode needs a cnf-bound token (from exchange())", reason="issuer_mismatch"
                )
            if bound != self.svid.x5t_s256:
                raise GatewayError(
                    "the token is bound to another certificate (another agent's, or this "
                    "agent's before its SVID was renewed: exchange again)",
                    reason="issuer_mismatch",
                )
        # The token is the one Authorization: a caller's own would make two (the partner
        # gateway reads one), so it is refused like the other headers the SDK sets.
        h = _check_headers(headers, _RESERVED + ("authorization",))
        h["Authorization"] = f"Bearer {raw}"
        url = f"{partner_url.rstrip('/')}/ingress{_path(path)}"
        return expected, self.direct_context(expected), url, h

    def result(self, resp: httpx.Response, what: str, raise_for_denial: bool) -> httpx.Response:
        if raise_for_denial:
            body = gateway_denial(resp)
            if body is not None:
                _raise_denied(resp, body, what)
        return resp


_BundlesArg = Union[BundleSet, BundleStore, Bundle, str, "os.PathLike[str]", None]


class _Common:
    """The properties :class:`Gateway` and :class:`AsyncGateway` share."""

    _core: _Core

    @property
    def svid(self) -> X509Svid:
        """This agent's SVID now (the source's current one: it changes when renewed)."""
        return self._core.svid

    @property
    def svid_source(self) -> SvidLike:
        """Where the SVID comes from (an :class:`X509Svid`, :class:`~fedgate_agent.SvidFiles`
        or :class:`~fedgate_agent.WorkloadApiSvidSource`): bind chains and the middleware to
        it to follow renewals."""
        return self._core.svid_source

    @property
    def bundles(self) -> BundleSource:
        """The bundles (a :class:`BundleStore` re-read on change when given a directory or
        file; a fixed :class:`BundleSet` when given one). A ``Mapping`` of trust domains."""
        return self._core.bundles

    @property
    def gateway_id(self) -> SpiffeId:
        return self._core.gateway_id

    def hold(self, chain: Chain | str) -> Chain:
        """``chain`` bound to this agent's SVID source (so it can :meth:`Chain.extend`, with
        the SVID current at that moment)."""
        return (chain if isinstance(chain, Chain) else Chain.parse(chain)).bind(self.svid_source)


def _env_kwargs(kwargs: dict[str, Any]) -> tuple[str, SvidLike]:
    url = os.environ.get("FEDGATE_GATEWAY_URL")
    if not url:
        raise ConfigError("FEDGATE_GATEWAY_URL is not set")
    if "bundles" not in kwargs and "ca_file" not in kwargs and os.environ.get("FEDGATE_BUNDLES"):
        kwargs["bundles"] = bundle_source()  # else _Core: $FEDGATE_CA, or a ConfigError
    if os.environ.get("FEDGATE_GATEWAY_ID"):
        kwargs.setdefault("gateway_id", os.environ["FEDGATE_GATEWAY_ID"])
    svid = kwargs.pop("svid", None)
    return url, svid if svid is not None else svid_source()


class Gateway(_Common):
    """The local gateway's internal listener, as seen by one agent (blocking, httpx.Client).

    ``svid``: the agent's :class:`X509Svid`, or an SVID source that follows renewals
    (:func:`~fedgate_agent.svid_source`: SVID files re-read on change, or the Workload API).
    ``bundles`` (a bundle directory or file — re-read when it changes —, a
    :class:`BundleStore`, or a fixed :class:`BundleSet`) must hold the local domain's bundle (to
    verify the gateway) and, for :meth:`direct`, the partner's; ``ca_file`` may replace the
    local bundle for the TLS check. Without either, ``$FEDGATE_BUNDLES`` or ``$FEDGATE_CA``.
    ``precheck`` refuses client-side, before any request, a chain this agent does not hold
    (``not_holder``) or a scope beyond it (``scope_escalation``).
    """

    def __init__(
        self,
        internal_url: str,
        svid: SvidLike,
        *,
        bundles: _BundlesArg = None,
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
        self._lock = threading.Lock()
        self._local: _Slot[httpx.Client] = _Slot(self._make)
        self._direct: dict[str, _Slot[httpx.Client]] = {}

    def _make(self, ctx: ssl.SSLContext) -> httpx.Client:
        return httpx.Client(verify=ctx, timeout=self._core.timeout)

    def _client(self, slot: _Slot[httpx.Client], ctx: ssl.SSLContext) -> httpx.Client:
        with self._lock:
            client, drop = slot.get(ctx)
        if drop is not None:
            drop.close()
        return client

    @classmethod
    def from_env(cls, **kwargs: Any) -> Gateway:
        """From ``$FEDGATE_GATEWAY_URL`` (the internal listener), the SVID source of
        :func:`~fedgate_agent.svid_source` (``$FEDGATE_CERT``/``$FEDGATE_KEY``, re-read when
        they change, or the Workload API at ``$SPIFFE_ENDPOINT_SOCKET``, renewed as it pushes
        new SVIDs), ``$FEDGATE_BUNDLES`` (re-read on change) and, if set,
        ``$FEDGATE_GATEWAY_ID``."""
        url, svid = _env_kwargs(kwargs)
        return cls(url, svid, **kwargs)

    def _send(self, slot: _Slot[httpx.Client], ctx: ssl.SSLContext, server: str, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            return self._client(slot, ctx).request(method, url, **kw)
        except _TRANSPORT_ERRORS as e:
            raise _transport_error(e, server) from None

    def exchange(self, chain: Chain | str, audience: str, scope: ScopeLike) -> ExchangedToken:
        """RFC 8693: exchanges ``chain`` for a federation token to ``audience`` (a partner's
        agent), bound to this agent's certificate (``cnf``)."""
        url, form, _ = self._core.exchange_request(chain, audience, scope)
        resp = self._send(self._local, self._core.context(), self._core.gateway_id, "POST", url, data=form)
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
        ``/ingress{path}``; returns the partner's response (any status: the partner's own
        answers carry its ``Fedgate-Receipt``). Gateway denials raise :class:`CrossingDenied`
        (:class:`PartnerResponseRefused` when the partner's answer was refused), unless
        ``raise_for_denial=False``."""
        url, h = self._core.egress_request(path, target, scope, chain, headers)
        resp = self._send(
            self._local, self._core.context(), self._core.gateway_id, method, url,
            headers=h, content=content, json=json, params=params,
        )
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
        partner's bundle. ``headers`` may not carry ``Authorization`` (the token is it)."""
        expected, ctx, url, h = self._core.direct_request(path, token, partner_url, partner_gateway_id, headers)
        with self._lock:
            slot = self._direct.setdefault(expected, _Slot(self._make))
        resp = self._send(slot, ctx, partner_url, method, url, headers=h, content=content, json=json, params=params)
        return self._core.result(resp, "direct", raise_for_denial)

    def close(self) -> None:
        with self._lock:
            clients = self._local.all() + [c for s in self._direct.values() for c in s.all()]
            self._direct.clear()
        for c in clients:
            c.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Gateway({self._core.internal_url!r}, agent={self.svid_source.spiffe_id!r}, gateway={self.gateway_id!r})"


class AsyncGateway(_Common):
    """:class:`Gateway` for asyncio code (httpx.AsyncClient); the same methods, awaitable."""

    def __init__(
        self,
        internal_url: str,
        svid: SvidLike,
        *,
        bundles: _BundlesArg = None,
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
        self._local: _Slot[httpx.AsyncClient] = _Slot(self._make)
        self._direct: dict[str, _Slot[httpx.AsyncClient]] = {}

    def _make(self, ctx: ssl.SSLContext) -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=ctx, timeout=self._core.timeout)

    @classmethod
    def from_env(cls, **kwargs: Any) -> AsyncGateway:
        """As :meth:`Gateway.from_env`."""
        url, svid = _env_kwargs(kwargs)
        return cls(url, svid, **kwargs)

    async def _send(self, slot: _Slot[httpx.AsyncClient], ctx: ssl.SSLContext, server: str, method: str, url: str, **kw: Any) -> httpx.Response:
        client, drop = slot.get(ctx)  # one event loop: no lock needed
        if drop is not None:
            await drop.aclose()
        try:
            return await client.request(method, url, **kw)
        except _TRANSPORT_ERRORS as e:
            raise _transport_error(e, server) from None

    async def exchange(self, chain: Chain | str, audience: str, scope: ScopeLike) -> ExchangedToken:
        url, form, _ = self._core.exchange_request(chain, audience, scope)
        resp = await self._send(self._local, self._core.context(), self._core.gateway_id, "POST", url, data=form)
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
        resp = await self._send(
            self._local, self._core.context(), self._core.gateway_id, method, url,
            headers=h, content=content, json=json, params=params,
        )
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
        expected, ctx, url, h = self._core.direct_request(path, token, partner_url, partner_gateway_id, headers)
        slot = self._direct.setdefault(expected, _Slot(self._make))
        resp = await self._send(slot, ctx, partner_url, method, url, headers=h, content=content, json=json, params=params)
        return self._core.result(resp, "direct", raise_for_denial)

    async def aclose(self) -> None:
        clients = self._local.all() + [c for s in self._direct.values() for c in s.all()]
        self._direct.clear()
        for c in clients:
            await c.aclose()

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def direct(
    svid: SvidLike,
    partner_url: str,
    method: str,
    path: str,
    token: ExchangedToken | str,
    *,
    bundles: BundleSet | BundleStore | Bundle | str | os.PathLike[str],
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
    core = _Core.for_direct(svid, bundles, timeout)
    _, ctx, url, h = core.direct_request(path, token, partner_url, partner_gateway_id, headers)
    with httpx.Client(verify=ctx, timeout=core.timeout) as client:
        try:
            resp = client.request(method, url, headers=h, content=content, json=json, params=params)
            resp.read()
        except _TRANSPORT_ERRORS as e:
            raise _transport_error(e, partner_url) from None
    return core.result(resp, "direct", raise_for_denial)
