"""End to end on the two-domain demo setup (`fedgate demo --keep`): a Python planning agent
(SDK) → company.com's gateway `/egress/analytics/...` → vendor.example's gateway → the README's
FastAPI analytics agent (middleware), which delegates one more hop back through its own gateway
to company.com's report agent (a bare ASGI app with the middleware). Also token exchange +
direct mode, and typed errors for refused crossings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import EXAMPLES, HERE, Domain, Processes, free_port, issue, run_fedgate, uvicorn_args, wait_port
from fedgate_agent import (
    AsyncGateway,
    Chain,
    ChainError,
    CrossingDenied,
    ExchangedToken,
    Gateway,
    GatewayError,
    GatewayIdentityError,
    InvalidScopeError,
    InvalidTargetError,
    TokenExchangeError,
    direct,
    load_svid,
)

ANALYTICS = "spiffe://vendor.example/agent/analytics/a1"
REPORT = "spiffe://company.com/agent/report/r1"
PLANNING = "spiffe://company.com/agent/planning/p1"


@dataclass
class Side:
    domain: Domain
    internal: int
    federation: int
    admin: int

    @property
    def internal_url(self) -> str:
        return f"https://127.0.0.1:{self.internal}"

    @property
    def federation_url(self) -> str:
        return f"https://127.0.0.1:{self.federation}"


@dataclass
class Federation:
    company: Side
    vendor: Side
    analytics_port: int
    report_port: int
    processes: Processes


def _listen(cfg: str, name: str) -> int:
    m = re.search(rf'^{name} = "127\.0\.0\.1:(\d+)"', cfg, re.M)
    assert m, f"no [listen] {name} in gateway.toml"
    return int(m.group(1))


def _prepare(d: Path, upstream_port: int) -> tuple[int, int, int]:
    """Points the domain's one [[upstreams]] at our agent and gives it a fresh data_dir: the
    demo's own state (it revoked planning/p1 at its end, and told the partner) stays behind."""
    p = d / "gateway.toml"
    cfg = p.read_text()
    cfg, n = re.subn(r'^url = "http://127\.0\.0\.1:\d+"$', f'url = "http://127.0.0.1:{upstream_port}"', cfg, flags=re.M)
    assert n == 1, "expected exactly one [[upstreams]] url"
    cfg, n = re.subn(r'^data_dir = "data"$', 'data_dir = "data-sdk-e2e"', cfg, flags=re.M)
    assert n == 1
    p.write_text(cfg)
    return _listen(cfg, "internal"), _listen(cfg, "federation"), _listen(cfg, "admin")


@pytest.fixture(scope="module")
def fed(fedgate_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("e2e")
    keep = root / "demo"
    run_fedgate(fedgate_bin, "demo", "--keep", str(keep), "--json", timeout=120)
    co, ve = Domain("company.com", keep / "company.com"), Domain("vendor.example", keep / "vendor.example")
    analytics_port, report_port = free_port(), free_port()
    co_ports = _prepare(co.dir, report_port)
    ve_ports = _prepare(ve.dir, analytics_port)
    procs = Processes(root)
    try:
        a, alog = procs.start(
            "analytics",
            uvicorn_args("analytics_agent", EXAMPLES, analytics_port),
            env={
                "FEDGATE_GATEWAY_URL": f"https://127.0.0.1:{ve_ports[0]}",
                "FEDGATE_CERT": str(ve.dir / "agents/analytics/a1.pem"),
                "FEDGATE_KEY": str(ve.dir / "agents/analytics/a1.key"),
                "FEDGATE_BUNDLES": str(ve.dir / "bundles"),
            },
        )
        r, rlog = procs.start(
            "report",
            uvicorn_args("report_agent", HERE / "apps", report_port),
            env={"FEDGATE_BUNDLES": str(co.dir / "bundles"), "REPORT_AGENT": REPORT},
        )
        gw = []
        for name, d in (("company", co), ("vendor", ve)):
            gw.append(
                procs.start(
                    f"gateway-{name}",
                    [fedgate_bin, "serve", "--config", str(d.dir / "gateway.toml")],
                    env={"FEDGATE_LOG": "warn"},
                )
            )
        wait_port(analytics_port, a, log=alog)
        wait_port(report_port, r, log=rlog)
        for (p, log), ports in zip(gw, (co_ports, ve_ports)):
            for port in ports:
                wait_port(port, p, log=log)
        yield Federation(Side(co, *co_ports), Side(ve, *ve_ports), analytics_port, report_port, procs)
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def planning(fed: Federation) -> Iterator[Gateway]:
    co = fed.company
    svid = load_svid(co.domain.dir / "agents/planning/p1.pem", co.domain.dir / "agents/planning/p1.key")
    with Gateway(co.internal_url, svid, bundles=co.domain.bundles_dir) as g:
        yield g


def _chain(fedgate_bin: str, fed: Federation, task: str, scope: str = "analytics:* pii:customers:read") -> str:
    return issue(fedgate_bin, fed.company.domain, to=PLANNING, scope=scope, task=task)


def test_planning_to_vendor_analytics_and_back_to_company_reports(fedgate_bin: str, fed: Federation, planning: Gateway) -> None:
    chain = Chain.parse(_chain(fedgate_bin, fed, "e2e-quarterly"), svid=planning.svid)
    resp = planning.egress(
        "POST",
        "/analytics/quarterly-review",
        ANALYTICS,
        ["analytics:*"],
        chain,
        json={"quarter": "Q3"},
        headers={"Authorization": "Bearer internal-api-key", "X-Api-Key": "internal"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("fedgate-receipt"), "the vendor's signed receipt comes back"
    body = resp.json()
    # What the analytics agent's middleware exposed.
    assert body["holder"] == ANALYTICS
    assert body["scope"] == ["analytics:*"]
    assert body["task"] == "e2e-quarterly"
    # company.com discloses principals pseudonymously: `prn` is `anon:…` once the gateway writes
    # it; today's binary does not put `prn` on crossing links, so the middleware says None.
    assert body["principal"] is None or body["principal"].startswith("anon:")
    # What the report agent saw of the reverse crossing.
    rep = body["report"]
    assert rep["service"] == "company reports"
    assert rep["path"] == "/reports/quarterly-review"
    assert rep["holder"] == REPORT
    assert rep["scope"] == ["analytics:report-back"]
    assert rep["task"] == "e2e-quarterly"
    assert rep["foreign_actor"] == ANALYTICS
    assert rep["dep"] == 3  # alice's grant, alice → planning, the vendor's crossing link
    assert rep["principal"] is None  # vendor.example discloses no principal
    assert rep["agreement"] is None or rep["agreement"].startswith("company-vendor-analytics@sha256:")
    if rep["agreement"] is not None:  # a gateway that writes agr and prn on crossing links
        assert body["principal"].startswith("anon:"), body["principal"]
    assert rep["received"] == {"job": "quarterly-review"}
    # No internal credential crossed either boundary; the report agent got the link only.
    assert "authorization" not in rep["headers"] and "x-api-key" not in rep["headers"]
    assert "delegation-chain" in rep["headers"]


def test_exchange_then_direct(fedgate_bin: str, fed: Federation, planning: Gateway) -> None:
    chain = _chain(fedgate_bin, fed, "e2e-direct")
    tok = planning.exchange(chain, ANALYTICS, ["analytics:run"])
    assert isinstance(tok, ExchangedToken)
    assert tok.scope.to_strings() == ["analytics:run"]
    assert tok.issued_token_type == "urn:ietf:params:oauth:token-type:jwt" and tok.token_type == "N_A"
    assert tok.partner_gateway == "spiffe://vendor.example/gateway"
    assert tok.cnf_thumbprint == planning.svid.x5t_s256
    assert tok.access_token not in repr(tok)
    # The analytics agent answers; its link holds only analytics:run, which does not cover
    # analytics:report-back, so the SDK refuses its reverse hop client-side and FastAPI answers 500.
    resp = planning.direct(
        "POST", "/analytics/direct-job", tok, partner_url=fed.vendor.federation_url, raise_for_denial=False
    )
    assert resp.status_code == 500
    # A second presentation of the same token is a replay.
    with pytest.raises(CrossingDenied) as e:
        planning.direct("POST", "/analytics/direct-job", tok, partner_url=fed.vendor.federation_url)
    assert e.value.reason == "replayed" and e.value.status == 401 and e.value.crossing
    # A fresh token with the scope the reverse hop needs works end to end, via the module-level
    # direct() too.
    tok2 = planning.exchange(chain, ANALYTICS, "analytics:*")
    resp = direct(
        planning.svid,
        fed.vendor.federation_url,
        "POST",
        "/analytics/direct-2",
        tok2,
        bundles=fed.company.domain.bundles_dir,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["report"]["holder"] == REPORT


def test_direct_refuses_a_token_of_another_agent(fedgate_bin: str, fed: Federation, planning: Gateway) -> None:
    tok = planning.exchange(_chain(fedgate_bin, fed, "e2e-stolen"), ANALYTICS, ["analytics:run"])
    d = fed.company.domain.dir
    thief = Gateway(fed.company.internal_url, load_svid(d / "agents/inventory/i1.pem", d / "agents/inventory/i1.key"), bundles=d / "bundles")
    with thief, pytest.raises(GatewayError) as e:
        thief.direct("POST", "/analytics/x", tok, partner_url=fed.vendor.federation_url)
    assert e.value.reason == "issuer_mismatch" and e.value.status is None  # client-side: cnf is not ours
    thief2 = Gateway(fed.company.internal_url, thief.svid, bundles=d / "bundles", precheck=False)
    with thief2, pytest.raises(CrossingDenied) as e2:
        thief2.direct("POST", "/analytics/x", tok, partner_url=fed.vendor.federation_url)
    assert e2.value.reason == "issuer_mismatch"  # and the partner agrees


def test_refused_crossings_are_typed(fedgate_bin: str, fed: Federation, planning: Gateway) -> None:
    chain = _chain(fedgate_bin, fed, "e2e-refused")
    # No flow from planning to a vendor billing agent.
    with pytest.raises(CrossingDenied) as e:
        planning.egress("POST", "/analytics/x", "spiffe://vendor.example/agent/billing/b1", ["analytics:run"], chain)
    assert e.value.reason == "rule_denied" and e.value.status == 403 and e.value.crossing
    # A route the agreement does not have: refused by the *vendor's* gateway, passed back.
    with pytest.raises(CrossingDenied) as e:
        planning.egress("DELETE", "/analytics/x", ANALYTICS, ["analytics:run"], chain)
    assert e.value.reason == "route_denied"
    # Token exchange: RFC 6749 errors as typed exceptions.
    with pytest.raises(InvalidTargetError) as t:
        planning.exchange(chain, "spiffe://vendor.example/agent/billing/b1", ["analytics:run"])
    assert t.value.error == "invalid_target" and t.value.reason == "rule_denied" and t.value.status == 403
    assert t.value.crossing and t.value.error_description
    loose = Gateway(fed.company.internal_url, planning.svid, bundles=fed.company.domain.bundles_dir, precheck=False)
    with loose:
        with pytest.raises(InvalidScopeError) as s:
            loose.exchange(chain, ANALYTICS, ["billing:read"])
        assert s.value.reason == "scope_escalation" and s.value.error == "invalid_scope"
        with pytest.raises(TokenExchangeError) as nh:
            loose.exchange(Chain.parse(issue(fedgate_bin, fed.company.domain, to="spiffe://company.com/agent/inventory/i1", scope="analytics:run")), ANALYTICS, ["analytics:run"])
        assert nh.value.reason == "not_holder"
    # The same two, client-side, before anything is sent.
    with pytest.raises(ChainError) as c:
        planning.exchange(chain, ANALYTICS, ["billing:read"])
    assert c.value.reason == "scope_escalation"


def test_the_gateway_must_be_the_expected_spiffe_id(fedgate_bin: str, fed: Federation, planning: Gateway) -> None:
    # vendor.example's internal listener is a gateway, but not company.com's: refused in the TLS
    # handshake (its certificate does not chain to company.com's CA), before the chain is sent.
    chain = _chain(fedgate_bin, fed, "e2e-wrong-server")
    wrong = Gateway(fed.vendor.internal_url, planning.svid, bundles=fed.company.domain.bundles_dir)
    with wrong, pytest.raises(GatewayIdentityError) as e:
        wrong.exchange(chain, ANALYTICS, ["analytics:run"])
    assert e.value.reason == "bad_svid"
    # Trusting vendor.example's CA is not enough either: the server must be company.com's gateway.
    both = fed.company.domain.bundles
    mixed = Gateway(
        fed.vendor.internal_url,
        planning.svid,
        bundles=both.with_bundle(
            both["vendor.example"].__class__(
                "company.com",
                both["vendor.example"].x509_authorities,
                both["company.com"].jwt_authorities,
            )
        ),
    )
    with mixed, pytest.raises(GatewayIdentityError) as e2:
        mixed.exchange(chain, ANALYTICS, ["analytics:run"])
    assert "spiffe://vendor.example/gateway" in str(e2.value)


def test_async_gateway(fedgate_bin: str, fed: Federation, planning: Gateway) -> None:
    import asyncio

    chain = _chain(fedgate_bin, fed, "e2e-async")

    async def go() -> tuple[int, str | None]:
        async with AsyncGateway(fed.company.internal_url, planning.svid, bundles=fed.company.domain.bundles_dir) as g:
            r = await g.egress("POST", "/analytics/async-job", ANALYTICS, "analytics:*", chain, json={})
            with pytest.raises(CrossingDenied) as e:
                await g.egress("POST", "/analytics/x", "spiffe://vendor.example/agent/billing/b1", "analytics:run", chain)
            return r.status_code, e.value.reason

    status, reason = asyncio.run(go())
    assert status == 200 and reason == "rule_denied"


def test_analytics_agent_refuses_requests_without_a_link(fed: Federation) -> None:
    r = httpx.post(f"http://127.0.0.1:{fed.analytics_port}/analytics/x", json={})
    assert r.status_code == 400 and r.json()["reason"] == "malformed"
    r = httpx.post(
        f"http://127.0.0.1:{fed.analytics_port}/analytics/x",
        headers={"Delegation-Chain": "e30.e30.AAAA"},
    )
    assert r.status_code in (400, 401)
