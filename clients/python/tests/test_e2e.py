"""End to end on the two-domain demo setup (`fedgate demo --keep`): a Python planning agent
(SDK) → company.com's gateway `/egress/analytics/...` → vendor.example's gateway → the README's
FastAPI analytics agent (middleware), which delegates one more hop back through its own gateway
to company.com's report agent (a bare ASGI app with the middleware). The README's planning
agent runs verbatim against the same setup. Also token exchange + direct mode, a partner's own
refusal handed back as a response, and typed errors for refused crossings."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import subprocess
import sys
import time
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
    LinkClaims,
    TokenExchangeError,
    direct,
    load_svid,
    random_id,
    sign_link,
)
from fedgate_agent.jose import b64url

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
    principal: str
    """How company.com discloses alice@company.com (pseudonymous: anon:HMAC of its key)."""
    agreement: str
    """`<id>@<hash>` of the one agreement both flows are under."""


def _listen(cfg: str, name: str) -> int:
    m = re.search(rf'^{name} = "127\.0\.0\.1:(\d+)"', cfg, re.M)
    assert m, f"no [listen] {name} in gateway.toml"
    return int(m.group(1))


def _prepare(d: Path, upstream_port: int) -> tuple[int, int, int]:
    """Points the domain's first [[upstreams]] (its agents'; vendor.example's MCP tool server
    comes after it) at our agent and gives it a fresh data_dir: the demo's own state (it
    revoked planning/p1 at its end, and told the partner) stays behind."""
    p = d / "gateway.toml"
    cfg = p.read_text()
    cfg, n = re.subn(r'^url = "http://127\.0\.0\.1:\d+"$', f'url = "http://127.0.0.1:{upstream_port}"', cfg, count=1, flags=re.M)
    assert n == 1, "expected an [[upstreams]] url"
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
        # What the gateways will write, computed independently: the agreement's hash by the
        # binary, company.com's pseudonym of alice as SPEC section 5 defines it.
        agr_hash = run_fedgate(fedgate_bin, "agreement", "hash", str(co.dir / "agreements/company-vendor-analytics.toml")).stdout.strip()
        key = bytes.fromhex((co.dir / "keys/pseudonym.key").read_text().strip())
        anon = "anon:" + b64url(hmac.new(key, b"alice@company.com", hashlib.sha256).digest())
        yield Federation(
            Side(co, *co_ports), Side(ve, *ve_ports), analytics_port, report_port, procs,
            principal=anon, agreement=f"company-vendor-analytics@{agr_hash}",
        )
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
    before = int(time.time())
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
    rep = body.pop("report")
    # What the analytics agent's middleware exposed (CrossingContext.to_dict()).
    crossing, expires = body.pop("crossing"), body.pop("expires")
    assert crossing == resp.headers["fedgate-crossing"]  # the crossing id both logs record
    assert before < expires <= int(time.time()) + 15 * 60  # the agreement's max_token_ttl
    assert body == {
        "holder": ANALYTICS,
        "scope": ["analytics:*"],
        "task": "e2e-quarterly",
        "foreign_actor": PLANNING,
        "dep": 2,  # alice's grant, alice → planning
        "principal": fed.principal,  # company.com discloses principals pseudonymously
        "agreement": fed.agreement,
    }
    # What the report agent saw of the reverse crossing.
    assert rep.pop("crossing") != crossing
    headers = rep.pop("headers")
    assert rep == {
        "service": "company reports",
        "path": "/reports/quarterly-review",
        "holder": REPORT,
        "scope": ["analytics:report-back"],
        "task": "e2e-quarterly",
        "foreign_actor": ANALYTICS,
        "dep": 3,  # alice's grant, alice → planning, the vendor's crossing link
        "principal": None,  # vendor.example discloses no principal
        "agreement": fed.agreement,
        "received": {"job": "quarterly-review"},
    }
    # No internal credential crossed either boundary; the report agent got the link only.
    assert "authorization" not in headers and "x-api-key" not in headers
    assert "delegation-chain" in headers


def test_a_partners_own_refusal_is_a_response(fedgate_bin: str, fed: Federation, planning: Gateway) -> None:
    """The report agent answers 409 with a body shaped like a gateway denial; its gateway
    marks the answer with a receipt, so the analytics agent's SDK returns it as the partner's
    response (and the analytics agent puts it in its own answer)."""
    chain = _chain(fedgate_bin, fed, "e2e-partner-no")
    resp = planning.egress("POST", "/analytics/refused-here", ANALYTICS, ["analytics:*"], chain, json={})
    assert resp.status_code == 200, resp.text
    assert resp.json()["report"] == {"error": "not today", "reason": "rule_denied", "crossing": "made-up"}


def test_the_readme_planning_agent_runs(fedgate_bin: str, fed: Federation) -> None:
    """The README's second example (examples/planning_agent.py), run as written."""
    co = fed.company.domain.dir
    env = {
        **os.environ,
        "FEDGATE_GATEWAY_URL": fed.company.internal_url,
        "FEDGATE_CERT": str(co / "agents/planning/p1.pem"),
        "FEDGATE_KEY": str(co / "agents/planning/p1.key"),
        "FEDGATE_BUNDLES": str(co / "bundles"),
    }
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "planning_agent.py")],
        input=_chain(fedgate_bin, fed, "e2e-readme", scope="analytics:*"),
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"200 {REPORT}",
        "spiffe://company.com/agent/inventory/i1 analytics:run 3",
    ]


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
    # analytics:report-back, so the SDK refuses its reverse hop client-side and FastAPI answers
    # 500: the partner's own answer (with its gateway's receipt), a response, not a denial.
    resp = planning.direct("POST", "/analytics/direct-job", tok, partner_url=fed.vendor.federation_url)
    assert resp.status_code == 500 and resp.headers.get("fedgate-receipt")
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


def test_an_internal_chain_may_not_leave_the_domain(fedgate_bin: str, fed: Federation, planning: Gateway) -> None:
    """A chain that went planning → vendor's analytics agent → back to planning, without a
    crossing: `Chain.extend` refuses the first step (broken_link); signed by hand, the gateway
    refuses the chain with the same reason (spec-notes 18)."""
    held = Chain.parse(_chain(fedgate_bin, fed, "e2e-leak"), svid=planning.svid)
    with pytest.raises(ChainError) as e:
        held.extend(ANALYTICS, "analytics:run")
    assert e.value.reason == "broken_link"
    last = held.last
    leak = LinkClaims(
        iss=PLANNING, sub=ANALYTICS, sub_type="agent", dlg=PLANNING, scope=("analytics:run",), task=last.task,
        iat=last.iat, exp=last.exp, prev=held.links[-1].hash, jti=random_id(),
    )
    p = planning.svid
    out = Chain.parse(f"{held.raw}~{sign_link(leak, p.signing_key, x5c=p.x5c)}")
    ve = fed.vendor.domain.dir
    back = out.bind(load_svid(ve / "agents/analytics/a1.pem", ve / "agents/analytics/a1.key")).extend(PLANNING, "analytics:run")
    with pytest.raises(CrossingDenied) as d:
        planning.egress("POST", "/analytics/x", ANALYTICS, ["analytics:run"], back)
    assert (d.value.reason, d.value.status) == ("broken_link", 401)


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
