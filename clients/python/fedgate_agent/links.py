"""Delegation links (SPEC section 3): claims, parsing, hashing and signing.

A link is a compact JWS, header ``typ`` = ``delegation+jwt`` and either ``kid`` (an IdP or
gateway key of the signer's trust domain) or ``x5c`` (the delegating agent's X509-SVID, leaf
first, standard base64 DER). Claims are serialized in the gateway's field order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .errors import ChainError, JoseError
from .jose import (
    Compact,
    SigningKey,
    b64url,
    json_loads_strict,
    parse_compact,
    sha256,
    sign_compact,
)
from .limits import (
    MAX_CHAIN_BYTES,
    MAX_LINK_BYTES,
    MAX_LINKS_HARD,
    MAX_PRINCIPAL_BYTES,
    MAX_TASK_BYTES,
    SEPARATOR,
    SUB_AGENT,
    SUB_HUMAN,
    TYP_LINK,
)

_I64 = (-(2**63), 2**63 - 1)
_U32 = (0, 2**32 - 1)


def link_hash(compact: str) -> str:
    """``prev`` of the next link: base64url (no padding) SHA-256 of this link's compact JWS."""
    return b64url(sha256(compact.encode("ascii")))


def chain_digest(raw: str) -> str:
    """base64url SHA-256 of the chain as presented (the federation token's ``chn``)."""
    return b64url(sha256(raw.encode("utf-8")))


def valid_principal(p: str) -> bool:
    """A human principal: 1-256 printable ASCII bytes, no spaces (SPEC section 1)."""
    b = p.encode("utf-8", "surrogatepass")
    return 0 < len(b) <= MAX_PRINCIPAL_BYTES and all(0x21 <= x <= 0x7E for x in b)


def valid_task(t: str) -> bool:
    """A task id: 1-128 bytes of printable ASCII."""
    b = t.encode("utf-8", "surrogatepass")
    return 0 < len(b) <= MAX_TASK_BYTES and all(0x20 <= x <= 0x7E for x in b)


_KNOWN = (
    "iss",
    "sub",
    "sub_type",
    "dlg",
    "scope",
    "task",
    "iat",
    "exp",
    "prev",
    "jti",
    "crossing",
    "dep",
    "agr",
    "prn",
)


@dataclass(frozen=True)
class LinkClaims:
    """The claims of one link. ``crossing``, ``dep``, ``agr`` and ``prn`` appear only on a
    crossing link (the root a receiving gateway mints for an inbound crossing)."""

    iss: str
    sub: str
    sub_type: str
    scope: tuple[str, ...]
    task: str
    iat: int
    exp: int
    jti: str
    dlg: str | None = None
    prev: str | None = None
    crossing: str | None = None
    dep: int | None = None
    agr: str | None = None
    """Crossing links: the agreement ref ``<id>@<hash>`` the crossing was under."""
    prn: str | None = None
    """Crossing links: the root principal as the sending domain disclosed it (clear or
    ``anon:…``); absent when it disclosed none."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Members this SDK does not know (kept, never interpreted)."""

    @classmethod
    def from_json(cls, payload: bytes) -> LinkClaims:
        """Parses claims with the gateway's typing (serde): required members present and of
        the right type, optional ones absent or null, no duplicate members. ``ValueError``."""
        try:
            obj = json_loads_strict(payload)
        except UnicodeDecodeError:
            raise ValueError("claims are not UTF-8") from None
        if not isinstance(obj, dict):
            raise ValueError("claims are not a JSON object")

        def req_str(k: str) -> str:
            if k not in obj:
                raise ValueError(f"missing field `{k}`")
            v = obj[k]
            if not isinstance(v, str):
                raise ValueError(f"`{k}` must be a string")
            return v

        def opt_str(k: str) -> str | None:
            v = obj.get(k)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"`{k}` must be a string")
            return v

        def req_int(k: str, rng: tuple[int, int]) -> int:
            if k not in obj:
                raise ValueError(f"missing field `{k}`")
            v = obj[k]
            if type(v) is not int or not rng[0] <= v <= rng[1]:
                raise ValueError(f"`{k}` must be an integer")
            return v

        scope = obj.get("scope")
        if "scope" not in obj:
            raise ValueError("missing field `scope`")
        if not isinstance(scope, list) or not all(isinstance(s, str) for s in scope):
            raise ValueError("`scope` must be an array of strings")
        dep = obj.get("dep")
        if dep is not None and (type(dep) is not int or not _U32[0] <= dep <= _U32[1]):
            raise ValueError("`dep` must be a non-negative integer")
        return cls(
            iss=req_str("iss"),
            sub=req_str("sub"),
            sub_type=req_str("sub_type"),
            scope=tuple(scope),
            task=req_str("task"),
            iat=req_int("iat", _I64),
            exp=req_int("exp", _I64),
            jti=req_str("jti"),
            dlg=opt_str("dlg"),
            prev=opt_str("prev"),
            crossing=opt_str("crossing"),
            dep=dep,
            agr=opt_str("agr"),
            prn=opt_str("prn"),
            extra={k: v for k, v in obj.items() if k not in _KNOWN},
        )

    def to_json(self) -> dict[str, Any]:
        """The claims in the gateway's serialization order (absent options omitted)."""
        d: dict[str, Any] = {"iss": self.iss, "sub": self.sub, "sub_type": self.sub_type}
        if self.dlg is not None:
            d["dlg"] = self.dlg
        d["scope"] = list(self.scope)
        d["task"] = self.task
        d["iat"] = self.iat
        d["exp"] = self.exp
        if self.prev is not None:
            d["prev"] = self.prev
        d["jti"] = self.jti
        if self.crossing is not None:
            d["crossing"] = self.crossing
        if self.dep is not None:
            d["dep"] = self.dep
        if self.agr is not None:
            d["agr"] = self.agr
        if self.prn is not None:
            d["prn"] = self.prn
        d.update(self.extra)
        return d


@dataclass(frozen=True)
class Link:
    """One parsed (not verified) link."""

    compact: str = field(repr=False)
    header: Mapping[str, Any] = field(repr=False)
    alg: str
    claims: LinkClaims
    signature: bytes = field(repr=False)

    @classmethod
    def parse(cls, compact: str, index: int | None = None) -> Link:
        """Raises :class:`ChainError` (``malformed``, ``bad_alg``, ``bad_signature``)."""
        try:
            c: Compact = parse_compact(compact)
        except JoseError as e:
            raise ChainError(e.message, reason=e.reason, link=index) from None
        try:
            claims = LinkClaims.from_json(c.payload)
        except ValueError as e:
            raise ChainError(f"claims: {e}", reason="malformed", link=index) from None
        return cls(compact, c.header, c.alg, claims, c.signature)

    @property
    def kid(self) -> str | None:
        return self.header.get("kid")

    @property
    def x5c(self) -> list[str] | None:
        return self.header.get("x5c")

    @property
    def signed_with(self) -> str:
        """``x5c`` (an agent's SVID) or ``kid`` (an IdP or gateway key)."""
        return "x5c" if self.x5c is not None else "kid"

    @property
    def is_crossing_link(self) -> bool:
        c = self.claims
        return c.sub_type == SUB_AGENT and c.crossing is not None and self.kid is not None

    @property
    def hash(self) -> str:
        return link_hash(self.compact)

    @property
    def signature_digest(self) -> str:
        return "sha256:" + sha256(self.signature).hex()


def split_chain(raw: str) -> list[str]:
    """``L0~L1~…~Ln`` split into links, with the size and count limits enforced before any
    decoding, in the gateway's order (``UnverifiedChain::parse``)."""
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_CHAIN_BYTES:
        raise ChainError(f"chain over {MAX_CHAIN_BYTES} bytes", reason="too_large")
    if not raw:
        raise ChainError("empty chain", reason="malformed")
    links = raw.split(SEPARATOR)
    if len(links) > MAX_LINKS_HARD:
        raise ChainError(
            f"{len(links)} links, more than the allowed {MAX_LINKS_HARD}", reason="too_deep"
        )
    for i, link in enumerate(links):
        if len(link.encode("utf-8", "surrogatepass")) > MAX_LINK_BYTES:
            raise ChainError(f"link over {MAX_LINK_BYTES} bytes", reason="too_large", link=i)
        if not link:
            raise ChainError("empty link", reason="malformed", link=i)
    return links


def sign_link(
    claims: LinkClaims | Mapping[str, Any],
    key: SigningKey,
    *,
    x5c: Sequence[str] | None = None,
    typ: str = TYP_LINK,
) -> str:
    """Signs arbitrary link claims, no checks (the primitive under every minting function;
    tests use it to build invalid chains). With ``x5c`` the header carries the certificate
    chain (an agent's link), otherwise the key's ``kid`` (an IdP's or gateway's link)."""
    body = claims.to_json() if isinstance(claims, LinkClaims) else dict(claims)
    if x5c is not None:
        return sign_compact(key, typ, body, x5c=list(x5c))
    return sign_compact(key, typ, body, use_kid=True)


__all__ = [
    "Link",
    "LinkClaims",
    "chain_digest",
    "link_hash",
    "sign_link",
    "split_chain",
    "valid_principal",
    "valid_task",
    "SUB_AGENT",
    "SUB_HUMAN",
]
