"""Every reason of SPEC section 3 (rules 1-7) reproduced from the SDK's errors, and the SDK's
``verify`` agreeing with ``fedgate chain verify --json`` on reason and link index for each."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import Domain, binary_verify, issue
from fedgate_agent import ChainError, SigningKey, sign_link, verify_chain
from fedgate_agent.verify import Policy
from kit import GATEWAY, IDP, INVENTORY, PLANNING, Kit, raw_jws

Case = Callable[[Kit, Domain, Domain], tuple[str, str | None, int | None]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def deco(f: Case) -> Case:
        CASES[name] = f
        return f

    return deco


@case("valid_three_links")
def _(k: Kit, imp: Domain, ve: Domain):
    links, _ = k.to_inventory()
    return "~".join(links), None, None


@case("malformed_typ")
def _(k, imp, ve):
    return sign_link(k.l0(), k.idp, typ="JWT"), "malformed", 0


@case("malformed_missing_task")
def _(k, imp, ve):
    d = k.l0().to_json()
    del d["task"]
    return sign_link(d, k.idp), "malformed", 0


@case("malformed_crossing_claim_off_root")
def _(k, imp, ve):
    links, _ = k.to_inventory(crossing="x", dep=1)
    return "~".join(links), "malformed", 2


@case("bad_alg")
def _(k, imp, ve):
    links, claims = k.base()
    bad = raw_jws({"alg": "HS256", "typ": "delegation+jwt", "kid": k.idp.kid}, claims[1].to_json())
    return f"{links[0]}~{bad}", "bad_alg", 1


@case("bad_signature")
def _(k, imp, ve):
    links, _ = k.base()
    other, _ = k.base()
    forged = links[1].rsplit(".", 1)[0] + "." + other[1].rsplit(".", 1)[1]
    return f"{links[0]}~{forged}", "bad_signature", 1


@case("unknown_key")
def _(k, imp, ve):
    return sign_link(k.l0(), SigningKey.generate()), "unknown_key", 0


@case("unknown_domain")
def _(k, imp, ve):
    return "~".join(k.to_inventory(signer=ve.agent("analytics/a1"))[0]), "unknown_domain", 2


@case("bad_svid")
def _(k, imp, ve):
    # planning/p1's SVID from another CA that also claims company.com.
    return "~".join(k.to_inventory(signer=imp.agent("planning/p1"))[0]), "bad_svid", 2


@case("bad_root_x5c_signed")
def _(k, imp, ve):
    return k.x5c(k.l0(iss=PLANNING), k.planning), "bad_root", 0


@case("bad_root_not_an_idp")
def _(k, imp, ve):
    return k.kid(k.l0(iss="spiffe://company.com/hr")), "bad_root", 0


@case("bad_root_crossing_without_crossing_claim")
def _(k, imp, ve):
    c = k.l0(iss=GATEWAY, sub=INVENTORY, sub_type="agent", dlg="spiffe://vendor.example/agent/analytics/a1", prev="x", dep=2)
    return k.kid(c, k.gateway), "bad_root", 0


@case("broken_link_dlg")
def _(k, imp, ve):
    return "~".join(k.to_inventory(dlg=INVENTORY)[0]), "broken_link", 2


@case("broken_link_prev")
def _(k, imp, ve):
    return "~".join(k.to_inventory(prev="AAAA")[0]), "broken_link", 2


@case("wrong_signer_not_the_delegator")
def _(k, imp, ve):
    # inventory signs a link that claims planning delegated.
    return "~".join(k.to_inventory(iss=INVENTORY, signer=k.inventory)[0]), "wrong_signer", 2


@case("wrong_signer_agent_link_with_kid")
def _(k, imp, ve):
    return "~".join(k.to_inventory(iss=GATEWAY, signer=k.gateway)[0]), "wrong_signer", 2


@case("wrong_signer_human_delegation_by_agent")
def _(k, imp, ve):
    c0 = k.l0()
    s0 = k.kid(c0)
    c1 = k.next(c0, s0, iss=PLANNING)
    return f"{s0}~{k.x5c(c1, k.planning)}", "wrong_signer", 1


@case("scope_escalation")
def _(k, imp, ve):
    return "~".join(k.to_inventory(scope=("cloud:read", "billing:*"))[0]), "scope_escalation", 2


@case("expiry_extension_exp")
def _(k, imp, ve):
    return "~".join(k.to_inventory(exp=k.now + 7200)[0]), "expiry_extension", 2


@case("expiry_extension_iat")
def _(k, imp, ve):
    return "~".join(k.to_inventory(iat=k.now - 60)[0]), "expiry_extension", 2


@case("not_yet_valid")
def _(k, imp, ve):
    return "~".join(k.base(iat=k.now + 600, exp=k.now + 3600)[0]), "not_yet_valid", 0


@case("expired")
def _(k, imp, ve):
    return "~".join(k.base(iat=k.now - 7200, exp=k.now - 3600)[0]), "expired", 0


@case("task_mismatch")
def _(k, imp, ve):
    return "~".join(k.to_inventory(task="other")[0]), "task_mismatch", 2


@case("too_deep")
def _(k, imp, ve):
    links, claims = k.base()
    who = [(k.planning, INVENTORY), (k.inventory, PLANNING)]
    i = 0
    while len(links) < 17:
        svid, to = who[i % 2]
        c = k.next(claims[-1], links[-1], sub=to, scope=("cloud:read",))
        links.append(k.x5c(c, svid))
        claims.append(c)
        i += 1
    return "~".join(links), "too_deep", 16


@case("too_deep_crossing_dep")
def _(k, imp, ve):
    c = k.l0(
        iss=GATEWAY,
        sub=PLANNING,
        sub_type="agent",
        dlg="spiffe://vendor.example/agent/analytics/a1",
        prev="AAAA",
        crossing="x1",
        dep=15,
    )
    s0 = k.kid(c, k.gateway)
    c1 = k.next(c, s0, sub=INVENTORY)
    return f"{s0}~{k.x5c(c1, k.planning)}", "too_deep", 0


@case("valid_crossing_rooted")
def _(k, imp, ve):
    c = k.l0(
        iss=GATEWAY,
        sub=PLANNING,
        sub_type="agent",
        dlg="spiffe://vendor.example/agent/analytics/a1",
        prev="AAAA",
        crossing="x1",
        dep=2,
    )
    s0 = k.kid(c, k.gateway)
    c1 = k.next(c, s0, sub=INVENTORY)
    return f"{s0}~{k.x5c(c1, k.planning)}", None, None


@case("too_large_link")
def _(k, imp, ve):
    links, claims = k.base()
    c = dataclasses.replace(claims[1], extra={"pad": "x" * 17000})
    return f"{links[0]}~{k.kid(c)}", "too_large", 1


@case("too_large_chain")
def _(k, imp, ve):
    links, claims = k.base()
    big = [k.kid(dataclasses.replace(claims[1], extra={"pad": "x" * 15000})) for _ in range(5)]
    return "~".join([links[0], *big]), "too_large", None


@pytest.fixture(scope="module")
def kit(company: Domain) -> Kit:
    return Kit.of(company)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reason_matches_the_binary(
    name: str, kit: Kit, impostor: Domain, vendor: Domain, fedgate_bin: str, tmp_path: Path
) -> None:
    raw, reason, link = CASES[name](kit, impostor, vendor)
    try:
        v = verify_chain(raw, kit.co.bundles)
        got: tuple[str | None, int | None] = (None, None)
        assert v.holder
    except ChainError as e:
        got = (e.reason, e.link)
    assert got == (reason, link), f"SDK: {got}"
    b = binary_verify(fedgate_bin, kit.co.bundles_dir, raw, tmp_path)
    assert (b["reason"], b["link"]) == (reason, link), f"binary: {b}"
    assert b["valid"] is (reason is None)


def test_max_links_policy_matches_the_binary(kit: Kit, fedgate_bin: str, tmp_path: Path) -> None:
    raw = "~".join(kit.to_inventory()[0])
    with pytest.raises(ChainError) as e:
        verify_chain(raw, kit.co.bundles, policy=Policy(max_links=2))
    b = binary_verify(fedgate_bin, kit.co.bundles_dir, raw, tmp_path, "--max-links", "2")
    assert (e.value.reason, e.value.link) == (b["reason"], b["link"]) == ("too_deep", 2)


def test_idp_and_gateway_lists_match_the_binary(kit: Kit, fedgate_bin: str, tmp_path: Path) -> None:
    raw = "~".join(kit.base()[0])
    with pytest.raises(ChainError) as e:
        verify_chain(raw, kit.co.bundles, policy=Policy(idps=["spiffe://company.com/other-idp"]))
    b = binary_verify(fedgate_bin, kit.co.bundles_dir, raw, tmp_path, "--idp", "spiffe://company.com/other-idp")
    assert (e.value.reason, e.value.link) == (b["reason"], b["link"]) == ("bad_root", 0)


def test_every_reason_of_rules_3_to_7_is_covered() -> None:
    expected = {
        "broken_link", "wrong_signer", "scope_escalation", "expiry_extension",
        "not_yet_valid", "expired", "task_mismatch", "too_deep", "too_large",
    }
    covered = {r for r in expected if any(n.startswith(r) for n in CASES)}
    assert covered == expected, expected - covered


def test_valid_verification_reports_what_the_binary_reports(kit: Kit, fedgate_bin: str, tmp_path: Path) -> None:
    raw = "~".join(kit.to_inventory()[0])
    v = verify_chain(raw, kit.co.bundles)
    b = binary_verify(fedgate_bin, kit.co.bundles_dir, raw, tmp_path)
    assert b["valid"] and b["holder"] == v.holder == INVENTORY
    assert b["scope"] == v.scope.to_strings() and b["task"] == v.task
    assert b["depth"] == v.depth == 3 and b["digest"] == v.digest
    assert b["principal"] == v.root_principal == "alice@company.com"
    assert v.agents() == [PLANNING, INVENTORY]
    assert [link.signer for link in v.links] == ["idp", "idp", "agent"]


def test_revocations(kit: Kit) -> None:
    raw = "~".join(kit.to_inventory()[0])
    for kind, value, link in [("principal", "alice@company.com", 0), ("task", "t1", 0), ("agent", INVENTORY, 2)]:
        with pytest.raises(ChainError) as e:
            verify_chain(raw, kit.co.bundles, revoked=lambda d, k, v, kind=kind, value=value: (k, v) == (kind, value))
        assert (e.value.reason, e.value.link) == ("revoked", link)


def test_revocations_of_a_crossing_rooted_chain(kit: Kit, fedgate_bin: str, tmp_path: Path) -> None:
    """As `gateway/src/chain/verify.rs` `revoked`: the crossing, its foreign actor, the
    disclosed principal (`prn`) and the task are looked up under the sending domain."""
    foreign = "spiffe://vendor.example/agent/analytics/a1"
    c0 = kit.l0(
        iss=GATEWAY, sub=INVENTORY, sub_type="agent", dlg=foreign, prev="x", crossing="cx-1", dep=2,
        prn="anon:pseudonym", agr="a@sha256:00",
    )
    s0 = kit.kid(c0, kit.gateway)
    c1 = kit.next(c0, s0, iss=INVENTORY, sub=PLANNING)
    raw = f"{s0}~{kit.x5c(c1, kit.inventory)}"
    assert verify_chain(raw, kit.co.bundles).holder == PLANNING
    assert binary_verify(fedgate_bin, kit.co.bundles_dir, raw, tmp_path)["valid"]
    cases = [
        (("vendor.example", "jti", "cx-1"), 0),
        (("vendor.example", "agent", foreign), 0),
        (("vendor.example", "principal", "anon:pseudonym"), 0),
        (("vendor.example", "task", "t1"), 0),
        (("company.com", "agent", PLANNING), 1),
    ]
    for entry, link in cases:
        with pytest.raises(ChainError) as e:
            verify_chain(raw, kit.co.bundles, revoked=lambda d, k, v, entry=entry: (d, k, v) == entry)
        assert (e.value.reason, e.value.link) == ("revoked", link), entry
    # A value is revoked only under the domain that owns it: the principal as disclosed by
    # vendor.example is not company.com's to revoke.
    verify_chain(raw, kit.co.bundles, revoked=lambda d, k, v: (d, k, v) == ("company.com", "principal", "anon:pseudonym"))


def test_verify_at_a_time(kit: Kit) -> None:
    raw = "~".join(kit.base()[0])
    with pytest.raises(ChainError) as e:
        verify_chain(raw, kit.co.bundles, now=int(time.time()) + 7200)
    assert e.value.reason == "expired"
    with pytest.raises(ChainError) as e:
        verify_chain(raw, kit.co.bundles, now=int(time.time()) - 600)
    assert e.value.reason == "not_yet_valid"


def test_issue_from_binary_and_idp_ids(kit: Kit, fedgate_bin: str) -> None:
    raw = issue(fedgate_bin, kit.co, to=PLANNING, scope="analytics:*")
    v = verify_chain(raw, kit.co.bundles, policy=Policy(idps=[IDP]))
    assert v.holder == PLANNING
