"""Gateway answers as the agent sees them, against a stub HTTPS server (it presents company.com's
inventory SVID, and the SDK is told to expect that identity): every gateway denial — whatever
its reason code, known or not — is a typed CrossingDenied; a partner's own answer, which its
gateway marks with a Fedgate-Receipt, is a response whatever its status or body. Also the
typed errors of the token endpoint's answers and of direct mode's headers."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from conftest import Domain
from fedgate_agent import (
    ALL_REASONS,
    EXTRA_REASONS,
    REASONS,
    ConfigError,
    CrossingDenied,
    Gateway,
    PartnerResponseRefused,
    TemporarilyUnavailableError,
    TokenExchangeError,
    errors,
    gateway_denial,
)
from kit import INVENTORY, raw_jws

ANALYTICS = "spiffe://vendor.example/agent/analytics/a1"

# path -> (status, headers, body bytes)
ANSWERS: dict[str, tuple[int, dict[str, str], bytes]] = {}


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        status, headers, body = ANSWERS[self.path]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET = _answer  # noqa: N815

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture(scope="module")
def stub(company: Domain) -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    d = company.dir / "agents"
    ctx.load_cert_chain(d / "inventory/i1.pem", d / "inventory/i1.key")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"https://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def gw(stub: str, company: Domain) -> Iterator[Gateway]:
    with Gateway(stub, company.agent("planning/p1"), bundles=company.bundles_dir, gateway_id=INVENTORY, precheck=False) as g:
        yield g


def _denial(reason: str, crossing: str = "c-1", status: int | None = None, **extra_headers: str) -> tuple[int, dict[str, str], bytes]:
    body = {"error": "crossing denied", "reason": reason, "crossing": crossing}
    headers = {"Content-Type": "application/json", "Fedgate-Crossing": crossing, **extra_headers}
    return status or errors.http_status(reason), headers, json.dumps(body).encode()


def _egress(gw: Gateway, case: str) -> Any:
    return gw.egress("POST", f"/{case}", ANALYTICS, ["analytics:run"], "a.b.c", json={})


def test_http_status_matches_the_gateways() -> None:
    # gateway/src/reason.rs Reason::http_status, the codes beyond SPEC section 10 included.
    assert [errors.http_status(r) for r in EXTRA_REASONS] == [429, 503, 502, 502, 502, 403, 403, 403]
    assert errors.http_status("audit_unavailable") == 503 and errors.http_status("partner_unavailable") == 502
    assert errors.http_status("revoked") == 403 and errors.http_status("replayed") == 401
    assert set(ALL_REASONS) == set(REASONS) | set(EXTRA_REASONS) and len(REASONS) == 31


@pytest.mark.parametrize("reason", [*ALL_REASONS, "quota_exhausted"])
def test_every_gateway_denial_is_raised(gw: Gateway, reason: str) -> None:
    """Known or not (``quota_exhausted`` stands for a code a newer gateway may add), a denial is
    recognized by its shape and raised with its reason, status and crossing id."""
    status = 418 if reason == "quota_exhausted" else errors.http_status(reason)
    ANSWERS[f"/egress/{reason}"] = _denial(reason, crossing=f"x-{reason}", status=status)
    with pytest.raises(CrossingDenied) as e:
        _egress(gw, reason)
    err = e.value
    assert (err.reason, err.status, err.crossing) == (reason, status, f"x-{reason}")
    assert isinstance(err, PartnerResponseRefused) is (reason in errors.PARTNER_RESPONSE_REASONS)
    assert err.retryable is (reason in ("rate_limited", "state_unavailable", "audit_unavailable", "partner_unavailable"))


def test_retry_after_is_kept(gw: Gateway) -> None:
    ANSWERS["/egress/busy"] = _denial("rate_limited", **{"Retry-After": "7"})
    with pytest.raises(CrossingDenied) as e:
        _egress(gw, "busy")
    assert e.value.retry_after == 7 and e.value.retryable


def test_the_partners_own_answers_are_responses(gw: Gateway) -> None:
    # The partner's upstream answered (its gateway added the receipt): a 404 whose body even
    # looks like a denial is the partner's answer, not the gateway's.
    status, headers, body = _denial("route_denied", status=404, **{"Fedgate-Receipt": "eyJ.receipt.sig"})
    ANSWERS["/egress/own-404"] = (status, headers, body)
    r = _egress(gw, "own-404")
    assert r.status_code == 404 and r.json()["reason"] == "route_denied"
    ANSWERS["/egress/own-500"] = (500, {"Content-Type": "text/plain", "Fedgate-Crossing": "c", "Fedgate-Receipt": "r"}, b"boom")
    assert _egress(gw, "own-500").text == "boom"
    # Not the gateway's shape: no Fedgate-Crossing, or not JSON, or members missing.
    ANSWERS["/egress/no-header"] = (403, {"Content-Type": "application/json"}, json.dumps({"error": "e", "reason": "rule_denied", "crossing": "c"}).encode())
    assert _egress(gw, "no-header").status_code == 403
    ANSWERS["/egress/no-reason"] = (403, {"Content-Type": "application/json", "Fedgate-Crossing": "c"}, b'{"error": "e", "crossing": "c"}')
    assert _egress(gw, "no-reason").status_code == 403
    # raise_for_denial=False hands even a denial back.
    ANSWERS["/egress/kept"] = _denial("rule_denied")
    r = gw.egress("POST", "/kept", ANALYTICS, ["analytics:run"], "a.b.c", raise_for_denial=False)
    assert r.status_code == 403 and gateway_denial(r) == {"error": "crossing denied", "reason": "rule_denied", "crossing": "c-1"}


def test_token_endpoint_answers_are_typed(gw: Gateway) -> None:
    ANSWERS["/v1/token"] = (200, {"Content-Type": "application/json"}, b'{"access_token": "a.b.c", "expires_in": "soon", "scope": "x"}')
    with pytest.raises(TokenExchangeError, match="does not parse"):
        gw.exchange("a.b.c", ANALYTICS, "analytics:run")
    ANSWERS["/v1/token"] = (200, {"Content-Type": "application/json"}, b'{"access_token": "a.b.c", "expires_in": 60, "scope": "bad scope!"}')
    with pytest.raises(TokenExchangeError, match="does not parse"):
        gw.exchange("a.b.c", ANALYTICS, "analytics:run")
    # A rate-limited exchange (the gateway's oauth form of rate_limited).
    body = {"error": "temporarily_unavailable", "error_description": "slow down", "reason": "rate_limited", "crossing": "c"}
    ANSWERS["/v1/token"] = (429, {"Content-Type": "application/json", "Fedgate-Crossing": "c"}, json.dumps(body).encode())
    with pytest.raises(TemporarilyUnavailableError) as e:
        gw.exchange("a.b.c", ANALYTICS, "analytics:run")
    assert (e.value.reason, e.value.status, e.value.retryable) == ("rate_limited", 429, True)


def test_direct_never_sends_two_authorization_headers(gw: Gateway) -> None:
    token = raw_jws(
        {"alg": "ES256", "typ": "federation+jwt"},
        {"aud": "spiffe://vendor.example/gateway", "cnf": {"x5t#S256": gw.svid.x5t_s256}},
    )
    for name in ("Authorization", "authorization", "AUTHORIZATION"):
        with pytest.raises(ConfigError) as e:
            gw.direct("POST", "/x", token, partner_url="https://127.0.0.1:1", headers={name: "Bearer internal"})
        assert e.value.reason == "malformed" and f"header {name} is set by the SDK" in str(e.value)
    # On egress the caller's Authorization is fine (the gateway strips it); the SDK's own
    # headers are refused there too.
    with pytest.raises(ConfigError):
        gw.egress("POST", "/x", ANALYTICS, ["analytics:run"], "a.b.c", headers={"Fedgate-Target": "x"})
