"""SVID loading (files, Workload API), X509-SVID validation, and SPIFFE server authentication."""

from __future__ import annotations

import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Domain, binary_verify, run_fedgate
from fedgate_agent import (
    ConfigError,
    Gateway,
    GatewayIdentityError,
    GatewayUnavailable,
    InvalidGrantError,
    SvidError,
    X509Svid,
    issue_grant,
    load_svid,
    verify_svid,
)
from fedgate_agent.jose import b64url, sha256
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


def _need_py_spiffe() -> None:
    try:
        import grpc  # noqa: F401
        import spiffe  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        if os.environ.get("FEDGATE_REQUIRE_SPIFFE"):
            pytest.fail("py-spiffe and grpcio are required here (ci.sh installs '.[test,test-spiffe]')")
        pytest.skip("py-spiffe / grpcio not installed: pip install './clients/python[test-spiffe]'")


@pytest.fixture
def wl_domain() -> PyDomain:
    return PyDomain.create("wl.example", alg="ES256")


@pytest.fixture
def workload_api(wl_domain: PyDomain) -> Iterator[Any]:
    """A real Workload API (gRPC over a Unix socket) serving wl.example's planning SVID."""
    _need_py_spiffe()
    from workload_api import WorkloadApi

    api = WorkloadApi(wl_domain.svid("/agent/planning/p1", alg="ES256"), wl_domain.ca).start()
    try:
        yield api
    finally:
        api.stop()


WL_PLANNING = "spiffe://wl.example/agent/planning/p1"


def test_workload_api_through_py_spiffe(
    workload_api: Any, wl_domain: PyDomain, monkeypatch: pytest.MonkeyPatch, fedgate_bin: str, tmp_path: Path
) -> None:
    """py-spiffe (the real package) against a real gRPC Workload API: both socket forms and
    SPIFFE_ENDPOINT_SOCKET; the security header is sent (the server refuses calls without it);
    a chain extended with the SVID verifies in the binary."""
    import grpc
    from spiffe._proto import workload_pb2, workload_pb2_grpc  # type: ignore[import-not-found, unused-ignore]

    served = workload_api._svid
    for addr in (workload_api.address, f"unix:{workload_api.path}"):
        s = load_svid(socket=addr)
        assert s.spiffe_id == WL_PLANNING and s.source == f"workload-api:{addr}"
        assert s.der_chain == served.der_chain and s.x5t_s256 == served.x5t_s256
    monkeypatch.delenv("FEDGATE_CERT", raising=False)
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", workload_api.address)
    assert load_svid().x5t_s256 == served.x5t_s256
    assert workload_api.calls == ["true", "true", "true"]
    with grpc.insecure_channel(f"unix:{workload_api.path}") as ch:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            next(iter(stub.FetchX509SVID(workload_pb2.X509SVIDRequest())))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bundles = tmp_path / "bundles"
    wl_domain.write_bundle(bundles)
    c = issue_grant(wl_domain.idp, "spiffe://wl.example/idp", "bob@wl.example", WL_PLANNING, "x:*", "wl")
    ext = c.bind(load_svid(socket=workload_api.address)).extend("spiffe://wl.example/agent/inventory/i1", "x:y")
    assert binary_verify(fedgate_bin, bundles, str(ext), tmp_path)["valid"]


def _wait_for(pred: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _EchoPeer(BaseHTTPRequestHandler):
    """Answers with the thumbprint of the client certificate the connection presented."""

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        der = self.connection.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        body = json.dumps({"peer": b64url(sha256(der))}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def wl_gateway(wl_domain: PyDomain, tmp_path: Path) -> Iterator[str]:
    """An mTLS server presenting wl.example's gateway SVID, requiring a client certificate of
    wl.example's CA."""
    from cryptography.hazmat.primitives import serialization

    g = wl_domain.svid("/gateway", alg="ES256")
    cert, key = tmp_path / "gw.pem", tmp_path / "gw.key"
    cert.write_bytes(g.cert_pem())
    key.write_bytes(
        g.signing_key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=wl_domain.ca.public_bytes(serialization.Encoding.PEM).decode())
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _EchoPeer)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"https://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_workload_api_svid_is_renewed(
    workload_api: Any, wl_domain: PyDomain, wl_gateway: str, fedgate_bin: str, tmp_path: Path
) -> None:
    """The Workload API rotates the SVID; the SDK takes the new one without a restart: the
    gateway connection presents it, a bound chain is extended with it. If the watch ends with a
    fatal error, it is reopened and the next rotation is taken too."""
    import grpc

    from fedgate_agent import BundleSet, Bundle, WorkloadApiSvidSource, svid_source

    bundles = tmp_path / "bundles"
    wl_domain.write_bundle(bundles)
    first = workload_api._svid
    with svid_source(socket=workload_api.address) as src:
        assert isinstance(src, WorkloadApiSvidSource) and src.spiffe_id == WL_PLANNING
        assert src.current().x5t_s256 == first.x5t_s256
        bs = BundleSet.of(Bundle.parse("wl.example", json.dumps(wl_domain.bundle_doc())))
        chain = issue_grant(wl_domain.idp, "spiffe://wl.example/idp", "bob@wl.example", WL_PLANNING, "x:*", "wl")
        held = chain.bind(src)
        with Gateway(wl_gateway, src, bundles=bs, precheck=False) as gw:

            def peer() -> str:
                r = gw.egress("POST", "/x", "spiffe://other.example/agent/a/1", "x:y", "a.b.c", json={})
                return str(r.json()["peer"])

            assert peer() == first.x5t_s256
            renewed = wl_domain.svid("/agent/planning/p1", alg="ES256")
            workload_api.rotate(renewed)
            _wait_for(lambda: src.current().x5t_s256 == renewed.x5t_s256, "the renewed SVID")
            assert src.updates == 1 and gw.svid.x5t_s256 == renewed.x5t_s256
            assert peer() == renewed.x5t_s256  # a new TLS context, with the new certificate
            ext = held.extend("spiffe://wl.example/agent/inventory/i1", "x:y")
            assert ext.links[-1].x5c == renewed.x5c
            assert binary_verify(fedgate_bin, bundles, str(ext), tmp_path)["valid"]
            # The watch ends for good (a non-retryable status: py-spiffe closes its source);
            # the SDK reopens it and follows the next rotation.
            workload_api.fail_streams(grpc.StatusCode.INVALID_ARGUMENT)
            third = wl_domain.svid("/agent/planning/p1", alg="ES256")
            workload_api.rotate(third)
            _wait_for(lambda: src.current().x5t_s256 == third.x5t_s256, "the SVID after the watch was reopened")
            assert peer() == third.x5t_s256
    assert len(workload_api.calls) >= 2 and set(workload_api.calls) == {"true"}


def test_svid_files_are_re_read(tmp_path: Path, wl_domain: PyDomain) -> None:
    from cryptography.hazmat.primitives import serialization

    from fedgate_agent import SvidFiles, svid_source

    def write(s: X509Svid) -> None:
        (tmp_path / "a.pem").write_bytes(s.cert_pem())
        (tmp_path / "a.key").write_bytes(
            s.signing_key.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    a, b = (wl_domain.svid("/agent/planning/p1", alg="ES256") for _ in range(2))
    write(a)
    src = svid_source(tmp_path / "a.pem", tmp_path / "a.key")
    assert isinstance(src, SvidFiles) and src.current().x5t_s256 == a.x5t_s256
    # Caught between the two writes: the new certificate with the old key does not load; the
    # last good SVID stays.
    (tmp_path / "a.pem").write_bytes(b.cert_pem())
    assert src.current().x5t_s256 == a.x5t_s256
    write(b)
    assert src.current().x5t_s256 == b.x5t_s256 and src.reloads == 1
    # Another identity in the files is not taken.
    write(wl_domain.svid("/agent/other/o1", alg="ES256"))
    assert src.current().x5t_s256 == b.x5t_s256


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
    # from_env: sources that follow renewals (the SVID files, the bundle directory).
    from fedgate_agent import BundleStore, SvidFiles

    d = company.dir / "agents"
    monkeypatch.setenv("FEDGATE_GATEWAY_URL", "https://127.0.0.1:1")
    monkeypatch.setenv("FEDGATE_CERT", str(d / "planning/p1.pem"))
    monkeypatch.setenv("FEDGATE_KEY", str(d / "planning/p1.key"))
    monkeypatch.setenv("FEDGATE_BUNDLES", str(company.bundles_dir))
    with Gateway.from_env() as g:
        assert isinstance(g.svid_source, SvidFiles) and isinstance(g.bundles, BundleStore)
        assert g.svid.spiffe_id == PLANNING and "company.com" in g.bundles
