"""Interop both ways with the fedgate binary: chains the SDK builds verify in `fedgate chain
verify`; chains `fedgate chain extend` builds parse, verify and extend in the SDK; `inspect`
agrees; every client-side refusal of `extend` carries the reason the gateway would give."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import Domain, binary_verify, issue, run_fedgate
from fedgate_agent import (
    MAX_LINK_BYTES,
    Chain,
    ChainError,
    ExtendError,
    X509Svid,
    issue_grant,
    link_hash,
)
from fedgate_agent.jose import b64std, b64url_decode, parse_compact
from kit import INVENTORY, PLANNING
from pki import PyDomain


def test_sdk_extended_chain_verifies_in_the_binary(fedgate_bin: str, company: Domain, tmp_path: Path) -> None:
    raw = issue(fedgate_bin, company, to=PLANNING, scope="analytics:* pii:customers:read cloud:read", task="interop-1")
    planning, inventory = company.agent("planning/p1"), company.agent("inventory/i1")
    c = Chain.parse(raw, svid=planning)
    c2 = c.extend(to=INVENTORY, scope=["analytics:run", "cloud:read"], ttl="30m")
    c3 = c2.bind(inventory).extend(PLANNING, "analytics:run", ttl=600)
    b = binary_verify(fedgate_bin, company.bundles_dir, str(c3), tmp_path)
    assert b["valid"], b
    assert b["holder"] == PLANNING and b["scope"] == ["analytics:run"] and b["depth"] == 4
    assert b["task"] == "interop-1" and b["digest"] == c3.digest
    v = c3.verify(company.bundles_dir)
    assert (v.holder, v.scope.to_strings(), v.depth) == (PLANNING, ["analytics:run"], 4)


def test_link_construction_follows_section_3(fedgate_bin: str, company: Domain) -> None:
    raw = issue(fedgate_bin, company, to=PLANNING, scope="analytics:* cloud:read", task="build", ttl="20m")
    planning = company.agent("planning/p1")
    held = Chain.parse(raw, svid=planning)
    before = int(time.time())
    ext = held.extend(INVENTORY, ["cloud:read", "analytics:run", "analytics:run"], ttl="1h")
    last = ext.links[-1]
    jws = parse_compact(last.compact)
    assert list(jws.header) == ["alg", "typ", "x5c"]
    assert jws.header["alg"] == "ES256" and jws.header["typ"] == "delegation+jwt"
    assert jws.header["x5c"] == [b64std(d) for d in planning.der_chain] and len(jws.header["x5c"]) == 1
    claims = json.loads(b64url_decode(last.compact.split(".")[1]))
    assert list(claims) == ["iss", "sub", "sub_type", "dlg", "scope", "task", "iat", "exp", "prev", "jti"]
    assert claims["iss"] == claims["dlg"] == PLANNING and claims["sub"] == INVENTORY
    assert claims["sub_type"] == "agent" and claims["task"] == "build"
    assert claims["scope"] == ["analytics:run", "cloud:read"]  # normalized, as the gateway's
    assert claims["prev"] == link_hash(held.links[-1].compact)
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] == held.last.exp  # 1h asked, clamped to the holder's 20m
    assert len(claims["jti"]) == 22
    jws.verify_with(planning.signing_key.public)
    assert ext.holder == INVENTORY and ext.svid is None and len(ext) == 3
    assert str(ext).startswith(raw + "~")


def test_binary_extended_chain_extends_in_the_sdk(fedgate_bin: str, company: Domain, tmp_path: Path) -> None:
    raw = issue(fedgate_bin, company, to=PLANNING, scope="analytics:*", task="interop-2")
    f = tmp_path / "c.txt"
    f.write_text(raw)
    d = company.dir / "agents"
    ext = run_fedgate(
        fedgate_bin, "chain", "extend", "--chain", str(f), "--cert", str(d / "planning/p1.pem"),
        "--key", str(d / "planning/p1.key"), "--to", INVENTORY, "--scope", "analytics:run analytics:read:x", "--ttl", "15m",
    ).stdout.strip()
    c = Chain.parse(ext)
    v = c.verify(company.bundles)
    assert v.holder == INVENTORY and v.scope.to_strings() == ["analytics:read:x", "analytics:run"]
    again = c.bind(company.agent("inventory/i1")).extend(PLANNING, "analytics:read:x")
    b = binary_verify(fedgate_bin, company.bundles_dir, str(again), tmp_path)
    assert b["valid"] and b["holder"] == PLANNING and b["scope"] == ["analytics:read:x"]


def test_inspect_matches_the_binary(fedgate_bin: str, company: Domain, tmp_path: Path) -> None:
    raw = issue(fedgate_bin, company, to=PLANNING, scope="analytics:*", task="inspect")
    c = Chain.parse(raw, svid=company.agent("planning/p1")).extend(INVENTORY, "analytics:run")
    f = tmp_path / "c.txt"
    f.write_text(str(c))
    assert json.loads(run_fedgate(fedgate_bin, "chain", "inspect", "--chain", str(f)).stdout) == c.inspect()
    assert "eyJ" not in repr(c)  # no token in repr


def test_eddsa_links_and_keys_verify_in_the_binary(fedgate_bin: str, tmp_path: Path) -> None:
    # A domain built in Python with Ed25519 IdP key and Ed25519 agent SVIDs (fedgate init makes
    # P-256 ones): the SDK signs EdDSA exactly as the gateway verifies it.
    d = PyDomain.create("eddsa.example", alg="EdDSA")  # with fedgate_role: a role-aware gateway requires it
    bundles = tmp_path / "bundles"
    d.write_bundle(bundles)
    a, b = d.svid("/agent/planning/p1"), d.svid("/agent/inventory/i1")
    c = issue_grant(d.idp, "spiffe://eddsa.example/idp", "bob@eddsa.example", a.spiffe_id, "x:*", "ed")
    c = c.bind(a).extend(b.spiffe_id, "x:y").bind(b).extend(a.spiffe_id, "x:y")
    assert parse_compact(c.links[-1].compact).header["alg"] == "EdDSA"
    got = binary_verify(fedgate_bin, bundles, str(c), tmp_path)
    assert got["valid"], got
    assert got["holder"] == a.spiffe_id and got["depth"] == 4
    assert c.verify(bundles).holder == a.spiffe_id


def test_issue_grant_matches_fedgate_chain_issue(fedgate_bin: str, company: Domain, tmp_path: Path) -> None:
    c = issue_grant(company.key("idp"), "spiffe://company.com/idp", "carol@company.com", PLANNING, "a:* b", "issue")
    got = binary_verify(fedgate_bin, company.bundles_dir, str(c), tmp_path)
    assert got["valid"] and got["principal"] == "carol@company.com" and got["scope"] == ["a:*", "b"]
    theirs = Chain.parse(issue(fedgate_bin, company, to=PLANNING, scope="a:* b", task="issue"))
    ours = [json.loads(b64url_decode(s.compact.split(".")[0])) for s in c.links]
    assert ours == [json.loads(b64url_decode(s.compact.split(".")[0])) for s in theirs.links]
    assert [list(link.claims.to_json()) for link in c.links] == [list(link.claims.to_json()) for link in theirs.links]


# ---- extend refuses before signing ------------------------------------------------------------


@pytest.fixture(scope="module")
def held(fedgate_bin: str, company: Domain) -> Chain:
    raw = issue(fedgate_bin, company, to=PLANNING, scope="analytics:* cloud:read", task="refuse")
    return Chain.parse(raw, svid=company.agent("planning/p1"))


def _refused(fn, reason: str, link: int | None = 2) -> ExtendError:  # type: ignore[no-untyped-def]
    with pytest.raises(ExtendError) as e:
        fn()
    assert isinstance(e.value, ChainError)
    assert (e.value.reason, e.value.link) == (reason, link), str(e.value)
    return e.value


def test_extend_refuses_scope_escalation(held: Chain) -> None:
    e = _refused(lambda: held.extend(INVENTORY, ["cloud:read", "cloud:*", "billing:read"]), "scope_escalation")
    assert "billing:read" in e.message and "cloud:*" in e.message


def test_extend_refuses_a_signer_that_is_not_the_holder(held: Chain, company: Domain, impostor: Domain) -> None:
    _refused(lambda: held.extend(INVENTORY, "cloud:read", svid=company.agent("inventory/i1")), "wrong_signer")
    _refused(lambda: Chain.parse(held.raw).extend(INVENTORY, "cloud:read"), "wrong_signer")
    lone = Chain.parse(held.raw.split("~")[0], svid=held.svid)
    _refused(lambda: lone.extend(INVENTORY, "cloud:read"), "wrong_signer", 1)


def test_extend_refuses_an_expired_or_future_chain(held: Chain) -> None:
    _refused(lambda: held.extend(INVENTORY, "cloud:read", now=held.expires), "expired", 0)
    _refused(lambda: held.extend(INVENTORY, "cloud:read", now=held.issued_at - 300), "not_yet_valid", 0)


def test_extend_refuses_too_deep(held: Chain, company: Domain) -> None:
    inv = company.agent("inventory/i1")
    c = held
    while len(c) < 16:
        c = c.extend(INVENTORY if c.holder == PLANNING else PLANNING, "cloud:read")
        c = c.bind(inv if c.holder == INVENTORY else held.svid)  # type: ignore[arg-type]
    _refused(lambda: c.extend(PLANNING, "cloud:read"), "too_deep", 16)
    _refused(lambda: held.extend(INVENTORY, "cloud:read", max_links=2), "too_deep")


def test_extend_refuses_a_chain_over_64_kib(company: Domain) -> None:
    big = [f"a:{'x' * 240}{i:03d}" for i in range(40)]
    planning, inventory = company.agent("planning/p1"), company.agent("inventory/i1")
    c = issue_grant(company.key("idp"), "spiffe://company.com/idp", "x@company.com", PLANNING, big, "big").bind(planning)
    grown = 0
    with pytest.raises(ExtendError) as e:
        for _ in range(6):
            c = c.extend(INVENTORY if c.holder == PLANNING else PLANNING, big)
            c = c.bind(inventory if c.holder == INVENTORY else planning)
            grown += 1
    assert (e.value.reason, e.value.link) == ("too_large", None) and grown >= 1
    assert len(c.raw) <= 64 * 1024


def test_extend_refuses_too_large_link(fedgate_bin: str, company: Domain) -> None:
    many = [f"a:{'x' * 245}{i:03d}" for i in range(64)]
    raw = issue(fedgate_bin, company, to=PLANNING, scope="a:*", task="big")
    c = Chain.parse(raw, svid=company.agent("planning/p1"))
    e = _refused(lambda: c.extend(INVENTORY, many), "too_large")
    assert str(MAX_LINK_BYTES) in e.message


def test_extend_refuses_malformed_input(held: Chain) -> None:
    _refused(lambda: held.extend("not-an-id", "cloud:read"), "malformed")
    _refused(lambda: held.extend(INVENTORY, "cloud read*x"), "malformed")
    _refused(lambda: held.extend(INVENTORY, []), "malformed")
    _refused(lambda: held.extend(INVENTORY, "cloud:read", ttl=0), "malformed")
    _refused(lambda: held.extend(INVENTORY, "cloud:read", ttl="5 minutes"), "malformed")


def test_extend_refuses_an_expired_svid(held: Chain, tmp_path: Path) -> None:
    d = PyDomain.create("company.com", alg="ES256")
    old: X509Svid = d.svid("/agent/planning/p1", alg="ES256", days=1)
    _refused(lambda: held.extend(INVENTORY, "cloud:read", svid=old, now=old.not_after + 1), "expired", 0)
    c = issue_grant(d.idp, "spiffe://company.com/idp", "x@y", PLANNING, "a", "t", ttl="3d")
    _refused(lambda: c.extend(INVENTORY, "a", svid=old, now=old.not_after + 1), "bad_svid")


def test_chain_parse_errors(held: Chain) -> None:
    for raw, reason in [("", "malformed"), ("a~", "malformed"), ("x" * (64 * 1024 + 1), "too_large"), ("a.b.c", "malformed")]:
        with pytest.raises(ChainError) as e:
            Chain.parse(raw)
        assert e.value.reason == reason
    assert Chain.parse(f"  {held.raw}\n") == held


def test_extend_refuses_a_link_that_would_end_before_it_starts(company: Domain, fedgate_bin: str, tmp_path: Path) -> None:
    # The held link was issued 20 s ahead of this clock (within the skew): iat = max(now, last
    # iat) = now + 20, and a 10 s ttl would give exp = now + 10 <= iat.
    now = int(time.time())
    planning = company.agent("planning/p1")
    c = issue_grant(company.key("idp"), "spiffe://company.com/idp", "x@company.com", PLANNING, "a:*", "t", now=now + 20).bind(planning)
    e = _refused(lambda: c.extend(INVENTORY, "a:b", ttl=10, now=now), "malformed")
    assert "too short" in e.message
    # What it would have signed is what the gateway refuses.
    from fedgate_agent import LinkClaims, random_id, sign_link

    last = c.last
    bad = LinkClaims(
        iss=PLANNING, sub=INVENTORY, sub_type="agent", dlg=PLANNING, scope=("a:b",), task="t",
        iat=now + 20, exp=now + 10, prev=link_hash(c.links[-1].compact), jti=random_id(),
    )
    raw = f"{c.raw}~{sign_link(bad, planning.signing_key, x5c=planning.x5c)}"
    assert last.iat == now + 20
    got = binary_verify(fedgate_bin, company.bundles_dir, raw, tmp_path)
    assert (got["reason"], got["link"]) == ("malformed", 2), got
    # A ttl that leaves the link a moment to live is signed.
    assert c.extend(INVENTORY, "a:b", ttl=21, now=now).last.exp == now + 21


def test_extend_refuses_a_delegate_of_another_domain(held: Chain, vendor: Domain) -> None:
    """Internal chains stay internal (spec-notes 18): a gateway refuses, at egress and token
    exchange, a chain with an agent of another domain, so the SDK does not sign one."""
    e = _refused(lambda: held.extend("spiffe://vendor.example/agent/analytics/a1", "cloud:read"), "broken_link")
    assert "only through a crossing" in e.message
    assert vendor.td == "vendor.example"


def test_sdk_errors_are_typed(held: Chain, company: Domain, tmp_path: Path) -> None:
    from fedgate_agent import (
        ConfigError,
        FedgateError,
        LinkClaims,
        Policy,
        ScopeError,
        ScopeSet,
        SigningKey,
        random_id,
        sign_link,
    )

    for kw in ({"max_links": 100}, {"max_links": 0}, {"skew": 301}, {"skew": -1}):
        with pytest.raises(ConfigError):
            Policy(**kw)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            held.verify(company.bundles_dir, **kw)  # type: ignore[arg-type]
    with pytest.raises(ChainError) as e:
        issue_grant(company.key("idp"), "spiffe://company.com/idp", "x@y", PLANNING, "a", "t", ttl="5 minutes")
    assert e.value.reason == "malformed"
    with pytest.raises(ConfigError):
        SigningKey.from_file(tmp_path / "missing.key")
    with pytest.raises(ScopeError):
        ScopeSet("a:b")  # type: ignore[arg-type]
    # A held chain whose last scope is not a scope list: Chain.parse does not check scopes
    # (verify does, in rule order), but everything that reads them raises a ChainError.
    last = held.last
    odd = LinkClaims(
        iss=PLANNING, sub=INVENTORY, sub_type="agent", dlg=PLANNING, scope=("not a scope!",),
        task=last.task, iat=last.iat, exp=last.exp, prev=link_hash(held.links[-1].compact), jti=random_id(),
    )
    planning = company.agent("planning/p1")
    c = Chain.parse(f"{held.raw}~{sign_link(odd, planning.signing_key, x5c=planning.x5c)}", svid=company.agent("inventory/i1"))
    with pytest.raises(ChainError) as e2:
        c.scope
    assert (e2.value.reason, e2.value.link) == ("malformed", 2)
    _refused(lambda: c.extend(PLANNING, "a"), "malformed")
    assert "not a scope!" in repr(c)
    for err in (e.value, e2.value):
        assert isinstance(err, FedgateError)
