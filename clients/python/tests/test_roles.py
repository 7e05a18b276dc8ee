"""Key roles (`fedgate_role`): a human grant and the IdP's human→agent link verify only with an
`idp` key, a crossing link only with a `gateway` key of the issuer's domain; another role (or
none, or an unknown one) is `wrong_signer`, an unknown kid `unknown_key` — with no fallback for
bundles without any role, as `gateway/src/spiffe/bundle.rs` `jwt_key`.

Every case is also given to `fedgate chain verify --json`, and the SDK must report the same
reason at the same link."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Domain, binary_verify
from fedgate_agent import ChainError, load_bundles, verify_chain
from kit import GATEWAY, INVENTORY, PLANNING, Kit, with_roles

ROLES = {"idp": "idp", "gateway": "gateway", "audit": "audit"}


@pytest.fixture(scope="module")
def kit(company: Domain) -> Kit:
    return Kit.of(company)


def _crossing(k: Kit, key) -> str:  # type: ignore[no-untyped-def]
    c = k.l0(
        iss=GATEWAY, sub=PLANNING, sub_type="agent", dlg="spiffe://vendor.example/agent/analytics/a1",
        prev="AAAA", crossing="x1", dep=2,
    )
    return k.kid(c, key)


def _grant_signed_by(k: Kit, key) -> str:  # type: ignore[no-untyped-def]
    c0 = k.l0()
    s0 = k.kid(c0, key)
    return f"{s0}~{k.kid(k.next(c0, s0), key)}"


def _reason(raw: str, bundles: Path) -> tuple[str | None, int | None]:
    try:
        verify_chain(raw, load_bundles(bundles))
    except ChainError as e:
        return e.reason, e.link
    return None, None


def _agree(fedgate_bin: str, raw: str, bundles: Path, tmp: Path) -> tuple[str | None, int | None]:
    """The SDK's verdict, after checking that the binary's is the same."""
    ours = _reason(raw, bundles)
    got = binary_verify(fedgate_bin, bundles, raw, tmp)
    assert (got["reason"], got["link"]) == ours, (got, ours)
    return ours


def test_with_roles(kit: Kit, tmp_path: Path, fedgate_bin: str, company: Domain) -> None:
    b = with_roles(kit.co, tmp_path / "roles", ROLES)
    assert load_bundles(b)["company.com"].has_roles
    c0 = kit.l0()
    s0 = kit.kid(c0, kit.idp)
    idp_then_gateway = f"{s0}~{kit.kid(kit.next(c0, s0), kit.gateway)}"
    cases = [
        (_grant_signed_by(kit, kit.idp), (None, None)),
        (_grant_signed_by(kit, kit.gateway), ("wrong_signer", 0)),
        (_grant_signed_by(kit, kit.co.key("audit")), ("wrong_signer", 0)),
        (_crossing(kit, kit.gateway), (None, None)),
        (_crossing(kit, kit.idp), ("wrong_signer", 0)),
        # L0 by the IdP, the human's delegation L1 by the gateway key.
        (idp_then_gateway, ("wrong_signer", 1)),
        # A root whose issuer is no accepted IdP is bad_root, whichever key signed it.
        (kit.kid(kit.l0(iss="spiffe://company.com/hr"), kit.gateway), ("bad_root", 0)),
        (kit.kid(kit.l0(iss="spiffe://company.com/hr"), kit.idp), ("bad_root", 0)),
    ]
    for raw, want in cases:
        assert _agree(fedgate_bin, raw, b, tmp_path) == want


def test_a_key_without_a_role_signs_nothing(kit: Kit, tmp_path: Path, fedgate_bin: str) -> None:
    b = with_roles(kit.co, tmp_path / "partial", {"idp": None, "gateway": "gateway", "audit": "audit"})
    assert _agree(fedgate_bin, _grant_signed_by(kit, kit.idp), b, tmp_path) == ("wrong_signer", 0)
    unknown = with_roles(kit.co, tmp_path / "unknown", {"idp": "admin", "gateway": "gateway"})
    assert _agree(fedgate_bin, _grant_signed_by(kit, kit.idp), unknown, tmp_path) == ("wrong_signer", 0)


def test_unknown_kid_is_unknown_key(kit: Kit, tmp_path: Path, fedgate_bin: str) -> None:
    from fedgate_agent import SigningKey

    b = with_roles(kit.co, tmp_path / "r", ROLES)
    raw = _grant_signed_by(kit, SigningKey.generate())
    assert _agree(fedgate_bin, raw, b, tmp_path) == ("unknown_key", 0)
    none = with_roles(kit.co, tmp_path / "none", {"idp": None, "gateway": None, "audit": None})
    assert _agree(fedgate_bin, raw, none, tmp_path) == ("unknown_key", 0)


def test_bundles_without_roles_verify_nothing(kit: Kit, tmp_path: Path, fedgate_bin: str) -> None:
    """A bundle written before key roles (no `fedgate_role` on any key): no key verifies any
    link — no fallback to "any key of the issuer's domain" (spec-notes 34)."""
    none = with_roles(kit.co, tmp_path / "none", {"idp": None, "gateway": None, "audit": None})
    assert not load_bundles(none)["company.com"].has_roles
    cases = [
        _grant_signed_by(kit, kit.idp),
        _grant_signed_by(kit, kit.gateway),
        _crossing(kit, kit.idp),
        _crossing(kit, kit.co.key("audit")),
        _crossing(kit, kit.gateway),
    ]
    for raw in cases:
        assert _agree(fedgate_bin, raw, none, tmp_path) == ("wrong_signer", 0)
    with pytest.raises(ChainError, match="fedgate bundle assign-roles"):
        verify_chain(cases[0], load_bundles(none))


def test_agent_links_are_x5c_whatever_the_roles(kit: Kit, tmp_path: Path) -> None:
    b = with_roles(kit.co, tmp_path / "r", ROLES)
    links, _ = kit.to_inventory()
    assert _reason("~".join(links), b) == (None, None)
    links, _ = kit.to_inventory(iss=GATEWAY, signer=kit.gateway)
    assert _reason("~".join(links), b) == ("wrong_signer", 2)
    assert json.loads((b / "company.com.json").read_text())["keys"][1]["fedgate_role"] in ROLES.values()
    assert INVENTORY
