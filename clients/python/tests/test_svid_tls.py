"""SVID loading (files, Workload API), X509-SVID validation, and SPIFFE server authentication."""

from __future__ import annotations

import json
import ssl
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Domain, run_fedgate
from fedgate_agent import (
    ConfigError,
    Gateway,
    GatewayIdentityError,
    GatewayUnavailable,
    InvalidGrantError,
    SvidError,
    X509Svid,
    load_svid,
    verify_svid,
)
from kit import INVENTORY, PLANNING
from pki import PyDomain


def test_load_from_files_and_env(company: Domain, monkeypatch: pytest.MonkeyPatch) -> None:
    s = company.agent("planning/p1")
    assert s.spiffe_id == PLANNING and s.trust_domain == "company.com"
    assert "PRIVATE" not in repr(s) and "signing_key" not in repr(s)
    d = company.dir / "agents"
    monkeypatch.setenv("FEDGATE_CERT", str(d / "inventory/i1.pem"))
    monkeypatch.setenv("FEDGATE_KEY", str(d / "inventory/i1.key"))
    assert load_svid().spiffe_id == INVENTORY
    monkeypatch.delenv("FEDGATE_CERT")
    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET", raising=False)
    with pytest.raises(ConfigError):
        load_svid()
    with pytest.raises(SvidError, match="does not belong"):
        load_svid(d / "planning/p1.pem", d / "inventory/i1.key")
    with pytest.raises(ConfigError):
        load_svid(d / "nope.pem", d / "nope.key")


def test_workload_api_through_py_spiffe(company: Domain, monkeypatch: pytest.MonkeyPatch) -> None:
    real = company.agent("planning/p1")
    seen: dict[str, object] = {}

    class FakeSvid:
        cert_chain = list(real.cert_chain)
        leaf = real.cert_chain[0]
        private_key = real.signing_key.private_key

    class WorkloadApiClient:
        def __init__(self, socket_path: str | None = None):
            seen["socket"] = socket_path

        def fetch_x509_svid(self) -> FakeSvid:
            return FakeSvid()

        def close(self) -> None:
            seen["closed"] = True

    monkeypatch.setitem(sys.modules, "spiffe", types.SimpleNamespace(WorkloadApiClient=WorkloadApiClient))
    monkeypatch.delenv("FEDGATE_CERT", raising=False)
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "unix:/tmp/agent.sock")
    s = load_svid()
    assert s.spiffe_id == PLANNING and s.source == "workload-api:unix:/tmp/agent.sock"
    assert seen == {"socket": "unix:/tmp/agent.sock", "closed": True}
    assert load_svid(socket="unix:/other.sock").spiffe_id == PLANNING and seen["socket"] == "unix:/other.sock"


def test_workload_api_without_py_spiffe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "spiffe", None)  # import fails
    with pytest.raises(ConfigError, match=r"fedgate-agent\[spiffe\]"):
        X509Svid.from_workload_api("unix:/tmp/x.sock")


def test_svid_validation_matches_the_binary(fedgate_bin: str, company: Domain, impostor: Domain, vendor: Domain, tmp_path: Path) -> None:
    b = company.bundles
    p = company.agent("planning/p1")
    assert verify_svid(p.der_chain, b).spiffe_id == PLANNING
    cases = [
        (impostor.dir / "agents/planning/p1.pem", "bad_svid"),
        (vendor.dir / "agents/analytics/a1.pem", "unknown_domain"),
        (company.dir / "agents/planning/p1.pem", None),
    ]
    for pem, reason in cases:
        svid_certs = X509Svid.from_pem(pem.read_bytes(), pem.with_suffix(".key").read_bytes())
        try:
            verify_svid(svid_certs.der_chain, b)
            got = None
        except SvidError as e:
            got = e.reason
        assert got == reason
        r = run_fedgate(fedgate_bin, "svid", "verify", "--bundles", str(company.bundles_dir), "--cert", str(pem), "--json", check=False)
        assert (r.returncode == 0) is (reason is None), r.stdout
    with pytest.raises(SvidError, match="expired"):
        verify_svid(p.der_chain, b, now=p.not_after + 10)


def test_svid_structure_rules(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from fedgate_agent import BundleSet, Bundle

    d = PyDomain.create("t.example", alg="ES256")
    b = BundleSet.of(Bundle.parse("t.example", json.dumps(d.bundle_doc())))
    ok = d.svid("/agent/a/1", alg="ES256")
    assert verify_svid(ok.der_chain, b).spiffe_id == "spiffe://t.example/agent/a/1"
    ca_leaf = d.svid("/agent/a/2", alg="ES256", ca_flag=True)
    with pytest.raises(SvidError, match="leaf is a CA"):
        verify_svid([ca_leaf.public_bytes(serialization.Encoding.DER)], b)  # type: ignore[attr-defined]
    future = d.svid("/agent/a/3", alg="ES256", start=60)
    with pytest.raises(SvidError, match="not yet valid"):
        verify_svid(future.der_chain, b)
    with pytest.raises(SvidError):
        verify_svid([], b)
    with pytest.raises(SvidError):
        verify_svid([b"\x30\x03\x02\x01\x00"], b)


# ---- SPIFFE server authentication --------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = json.dumps(
            {"error": "invalid_grant", "error_description": "link 1: expired", "reason": "expired", "crossing": "c-1"}
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def tls_server(company: Domain) -> Iterator[int]:
    """An HTTPS server presenting company.com's *inventory agent* SVID."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    d = company.dir / "agents"
    ctx.load_cert_chain(d / "inventory/i1.pem", d / "inventory/i1.key")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def test_server_must_be_the_expected_spiffe_id(company: Domain, tls_server: int) -> None:
    url = f"https://127.0.0.1:{tls_server}"
    p = company.agent("planning/p1")
    chain = "a.b.c"
    with Gateway(url, p, bundles=company.bundles_dir, precheck=False) as g:
        with pytest.raises(GatewayIdentityError) as e:
            g.exchange(chain, "spiffe://vendor.example/agent/analytics/a1", "x")
        assert e.value.reason == "bad_svid" and INVENTORY in str(e.value)
    # Expecting exactly that identity, the same server is accepted, and its RFC 6749 error is
    # raised as a typed exception with every field.
    with Gateway(url, p, bundles=company.bundles_dir, gateway_id=INVENTORY, precheck=False) as g:
        with pytest.raises(InvalidGrantError) as e2:
            g.exchange(chain, "spiffe://vendor.example/agent/analytics/a1", "x")
    err = e2.value
    assert (err.status, err.error, err.reason, err.crossing) == (401, "invalid_grant", "expired", "c-1")
    assert err.error_description == "link 1: expired"


def test_server_of_another_ca_is_refused(impostor: Domain, company: Domain, tls_server: int) -> None:
    with Gateway(f"https://127.0.0.1:{tls_server}", company.agent("planning/p1"), bundles=impostor.bundles_dir, gateway_id=INVENTORY, precheck=False) as g:
        with pytest.raises(GatewayIdentityError):
            g.exchange("a.b.c", "spiffe://vendor.example/agent/analytics/a1", "x")


def test_nobody_listening(company: Domain) -> None:
    from conftest import free_port

    with Gateway(f"https://127.0.0.1:{free_port()}", company.agent("planning/p1"), bundles=company.bundles_dir, precheck=False) as g:
        with pytest.raises(GatewayUnavailable):
            g.exchange("a.b.c", "spiffe://vendor.example/agent/analytics/a1", "x")


def test_gateway_config_errors(company: Domain, monkeypatch: pytest.MonkeyPatch) -> None:
    p = company.agent("planning/p1")
    with pytest.raises(ConfigError):
        Gateway("http://127.0.0.1:1", p, bundles=company.bundles_dir)
    monkeypatch.delenv("FEDGATE_BUNDLES", raising=False)
    monkeypatch.delenv("FEDGATE_CA", raising=False)
    with pytest.raises(ConfigError):
        Gateway("https://127.0.0.1:1", p)
    monkeypatch.setenv("FEDGATE_CA", str(company.dir / "ca.pem"))
    Gateway("https://127.0.0.1:1", p).close()
    with pytest.raises(ConfigError):
        Gateway("https://127.0.0.1:1", p, bundles=company.bundles_dir, gateway_id="spiffe://vendor.example/gateway")
    assert PLANNING
