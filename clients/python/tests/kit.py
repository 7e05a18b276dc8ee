"""Building valid and deliberately invalid chains from an `fedgate init` domain's keys."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import Domain
from fedgate_agent import LinkClaims, SigningKey, X509Svid, link_hash, random_id, sign_link
from fedgate_agent.jose import b64url, json_compact, sha256

PLANNING = "spiffe://company.com/agent/planning/p1"
INVENTORY = "spiffe://company.com/agent/inventory/i1"
IDP = "spiffe://company.com/idp"
GATEWAY = "spiffe://company.com/gateway"
ALICE = "alice@company.com"


@dataclass
class Kit:
    co: Domain
    idp: SigningKey
    gateway: SigningKey
    planning: X509Svid
    inventory: X509Svid
    now: int

    @classmethod
    def of(cls, co: Domain) -> Kit:
        return cls(co, co.key("idp"), co.key("gateway"), co.agent("planning/p1"), co.agent("inventory/i1"), int(time.time()))

    def l0(self, **over: Any) -> LinkClaims:
        c = LinkClaims(
            iss=IDP,
            sub=ALICE,
            sub_type="human",
            scope=("analytics:*", "cloud:read"),
            task="t1",
            iat=self.now,
            exp=self.now + 3600,
            jti=random_id(),
        )
        return dataclasses.replace(c, **over)

    def next(self, prev_claims: LinkClaims, prev_compact: str, **over: Any) -> LinkClaims:
        prev = prev_claims
        c = LinkClaims(
            iss=over.pop("iss", prev.sub if prev.sub_type == "agent" else prev.iss),
            sub=over.pop("sub", PLANNING),
            sub_type="agent",
            dlg=prev.sub,
            scope=prev.scope,
            task=prev.task,
            iat=prev.iat,
            exp=prev.exp,
            prev=link_hash(prev_compact),
            jti=random_id(),
        )
        return dataclasses.replace(c, **over)

    def kid(self, claims: LinkClaims, key: SigningKey | None = None) -> str:
        return sign_link(claims, key or self.idp)

    def x5c(self, claims: LinkClaims, svid: X509Svid) -> str:
        return sign_link(claims, svid.signing_key, x5c=svid.x5c)

    def base(self, **l0_over: Any) -> tuple[list[str], list[LinkClaims]]:
        """L0~L1: alice → planning."""
        c0 = self.l0(**l0_over)
        s0 = self.kid(c0)
        c1 = self.next(c0, s0)
        return [s0, self.kid(c1)], [c0, c1]

    def to_inventory(self, **over: Any) -> tuple[list[str], list[LinkClaims]]:
        """L0~L1~L2 with L2 planning → inventory, claims overridable."""
        links, claims = self.base()
        signer = over.pop("signer", self.planning)
        over.setdefault("sub", INVENTORY)
        over.setdefault("scope", ("cloud:read",))
        c2 = self.next(claims[1], links[1], **over)
        links.append(self.x5c(c2, signer) if isinstance(signer, X509Svid) else self.kid(c2, signer))
        claims.append(c2)
        return links, claims


def raw_jws(header: dict[str, Any], claims: dict[str, Any], sig: bytes = bytes(64)) -> str:
    return f"{b64url(json_compact(header))}.{b64url(json_compact(claims))}.{b64url(sig)}"


def with_roles(co: Domain, out: Path, roles: dict[str, str | None]) -> Path:
    """A copy of the domain's bundle dir whose jwt-svid keys carry ``fedgate_role`` (by key file
    name: idp, gateway, audit; ``None`` drops the member)."""
    doc = json.loads((co.bundles_dir / "company.com.json").read_text())
    by_kid = {co.key(name).kid: role for name, role in roles.items()}
    for k in doc["keys"]:
        if k.get("use") == "jwt-svid" and k["kid"] in by_kid:
            k.pop("fedgate_role", None)
            if by_kid[k["kid"]] is not None:
                k["fedgate_role"] = by_kid[k["kid"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "company.com.json").write_text(json.dumps(doc, indent=2))
    return out


__all__ = ["Kit", "raw_jws", "with_roles", "sha256"]
