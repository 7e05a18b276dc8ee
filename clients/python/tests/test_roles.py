"""Key roles (`fedgate_role`): a human grant and the IdP's human→agent link verify only with an
`idp` key, a crossing link only with a `gateway` key of the issuer's domain; another role (or
none) is `wrong_signer`, an unknown kid `unknown_key`. Bundles without any role fall back to
today's rule (any key of the issuer's domain).

Where the binary writes roles itself (`fedgate init` puts `fedgate_role` in the bundle), it is
asked too and must agree; a binary from before roles is only checked on the fallback cases."""

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


def binary_has_roles(company: Domain) -> bool:
    return "fedgate_role" in (company.bundles_dir / "company.com.json").read_text()


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
        assert _reason(raw, b) == want
        if binary_has_roles(company):
            got = binary_verify(fedgate_bin, b, raw, tmp_path)
            assert (got["reason"], got["link"]) == want, got


def test_a_key_without_a_role_signs_nothing(kit: Kit, tmp_path: Path) -> None:
    b = with_roles(kit.co, tmp_path / "partial", {"idp": None, "gateway": "gateway", "audit": "audit"})
    assert _reason(_grant_signed_by(kit, kit.idp), b) == ("wrong_signer", 0)
    unknown = with_roles(kit.co, tmp_path / "unknown", {"idp": "admin", "gateway": "gateway"})
    assert _reason(_grant_signed_by(kit, kit.idp), unknown) == ("wrong_signer", 0)


def test_unknown_kid_is_unknown_key(kit: Kit, tmp_path: Path) -> None:
    from fedgate_agent import SigningKey

    b = with_roles(kit.co, tmp_path / "r", ROLES)
    assert _reason(_grant_signed_by(kit, SigningKey.generate()), b) == ("unknown_key", 0)


def test_bundles_without_roles_fall_back(kit: Kit, tmp_path: Path, fedgate_bin: str, company: Domain) -> None:
    none = with_roles(kit.co, tmp_path / "none", {"idp": None, "gateway": None, "audit": None})
    assert not load_bundles(none)["company.com"].has_roles
    # Any key of the issuer's domain, as a gateway from before roles accepts.
    for raw in (_grant_signed_by(kit, kit.gateway), _crossing(kit, kit.idp), _grant_signed_by(kit, kit.idp)):
        assert _reason(raw, none) == (None, None)
        if not binary_has_roles(company):
            assert binary_verify(fedgate_bin, none, raw, tmp_path)["valid"]


def test_agent_links_are_x5c_whatever_the_roles(kit: Kit, tmp_path: Path) -> None:
    b = with_roles(kit.co, tmp_path / "r", ROLES)
    links, _ = kit.to_inventory()
    assert _reason("~".join(links), b) == (None, None)
    links, _ = kit.to_inventory(iss=GATEWAY, signer=kit.gateway)
    assert _reason("~".join(links), b) == ("wrong_signer", 2)
    assert json.loads((b / "company.com.json").read_text())["keys"][1]["fedgate_role"] in ROLES.values()
    assert INVENTORY
