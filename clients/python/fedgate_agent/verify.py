"""Chain verification: rules 1-8 of SPEC section 3, ported from ``gateway/src/chain/verify.rs``
check for check and in the same order, so a chain fails here with the reason code and link
index ``fedgate chain verify`` reports. A convenience for debugging and for receiving agents:
the gateway is the authority.

Key roles (``fedgate_role``): a human's grant and the IdP's human→agent link verify only with an
``idp`` key, a crossing link only with a ``gateway`` key of the link issuer's domain, an agent's
link only with its ``x5c`` SVID. A kid not in the bundle is ``unknown_key``, a key of another
role (or none) ``wrong_signer`` — with no fallback for bundles written before key roles, exactly
as the gateway (see :meth:`Bundle.jwt_key`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

from cryptography import x509

from .bundle import BundleSet, BundleStore
from .errors import ChainError, ConfigError, IdError, JoseError, ScopeError, SvidError
from .jose import b64std_decode, parse_compact
from .limits import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_MAX_LINKS,
    MAX_CLOCK_SKEW,
    MAX_JTI_BYTES,
    MAX_LINKS_HARD,
    MAX_X5C_CERTS,
    SUB_AGENT,
    SUB_HUMAN,
    TYP_LINK,
)
from .links import Link, LinkClaims, chain_digest, link_hash, split_chain, valid_principal, valid_task
from .scope import ScopeSet
from .spiffe_id import SpiffeId
from .svid import leaf_verifying_key, verify_svid

Revoked = Callable[[str, str, str], bool]
"""Revocation lookup: ``(owning trust domain, kind, value) -> bool`` with kind one of ``jti``,
``task``, ``agent``, ``principal`` (SPEC rule 8)."""

_FOREVER = 2**63 - 1


@dataclass(frozen=True)
class Policy:
    """What verification accepts beyond the fixed rules (``chain::Policy``)."""

    max_links: int = DEFAULT_MAX_LINKS
    """Most links, a crossing root's ``dep`` included (rule 7)."""
    skew: int = DEFAULT_CLOCK_SKEW
    """Tolerated clock skew on ``iat`` (rule 6), 0-300 s."""
    idps: Sequence[str] | None = None
    """IdPs whose human grants may root a chain; ``None``: any ``spiffe://<td>/idp``."""
    gateways: Sequence[str] | None = None
    """Gateways whose crossing links may root a chain; ``None``: any ``spiffe://<td>/gateway``."""
    one_domain: bool = False
    """Every agent must be of the root's trust domain (what gateways require for egress)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_links, bool) or not isinstance(self.max_links, int) or not (
            1 <= self.max_links <= MAX_LINKS_HARD
        ):
            raise ConfigError(f"max_links must be an integer 1..={MAX_LINKS_HARD}")
        if isinstance(self.skew, bool) or not isinstance(self.skew, int) or not (
            0 <= self.skew <= MAX_CLOCK_SKEW
        ):
            raise ConfigError(f"skew must be an integer 0..={MAX_CLOCK_SKEW} seconds")


@dataclass(frozen=True)
class HumanRoot:
    """The chain starts with a human's grant, signed by an IdP."""

    principal: str
    idp: SpiffeId


@dataclass(frozen=True)
class CrossingRoot:
    """The chain starts with a crossing link minted by a gateway for an inbound crossing."""

    gateway: SpiffeId
    crossing: str
    foreign_actor: SpiffeId
    dep: int
    agreement: str | None = None
    """``agr`` of the crossing link, when the gateway writes it."""
    principal: str | None = None
    """``prn`` of the crossing link: the root principal as the sending domain disclosed it."""


Root = Union[HumanRoot, CrossingRoot]


@dataclass(frozen=True)
class LinkSummary:
    iss: str
    sub: str
    signer: str
    """``idp``, ``gateway`` or ``agent``."""
    scope: ScopeSet
    iat: int
    exp: int
    jti: str


@dataclass(frozen=True)
class VerifiedChain:
    """A chain that passed every rule at a given time."""

    holder: str
    """``Ln.sub``: the only party that may present this chain."""
    holder_is_agent: bool
    scope: ScopeSet
    task: str
    root: Root
    depth: int
    """Links counted, a crossing root's ``dep`` included."""
    expires: int
    valid_until: int
    """The chain's expiry or the earliest ``notAfter`` of a signing SVID, whichever is first."""
    digest: str
    links: tuple[LinkSummary, ...] = field(repr=False)
    root_domain: str

    @property
    def root_principal(self) -> str:
        """The human, or for a crossing-rooted chain the foreign actor that crossed (as the
        gateway puts it in audit records)."""
        if isinstance(self.root, HumanRoot):
            return self.root.principal
        return self.root.foreign_actor

    def agents(self) -> list[str]:
        """Agents of the chain in delegation order, the holder last."""
        v: list[str] = []
        if isinstance(self.root, CrossingRoot):
            v.append(self.root.foreign_actor)
        for link in self.links:
            if link.sub.startswith("spiffe://") and (not v or v[-1] != link.sub):
                v.append(link.sub)
        return v


def _err(i: int | None, reason: str, message: str) -> ChainError:
    return ChainError(message, reason=reason, link=i)


def _malformed(i: int | None, message: str) -> ChainError:
    return _err(i, "malformed", message)


def _jose(i: int, e: JoseError) -> ChainError:
    return _err(i, e.reason or "malformed", e.message)


@dataclass
class _Prev:
    compact: str
    claims: LinkClaims
    scope: ScopeSet


def verify_chain(
    raw: str,
    bundles: BundleSet | BundleStore,
    *,
    now: int | None = None,
    policy: Policy | None = None,
    revoked: Revoked | None = None,
) -> VerifiedChain:
    """Verifies every rule of SPEC section 3 at ``now`` (default: the clock). Raises
    :class:`ChainError` with ``.reason`` and ``.link`` on the first failure."""
    pol = policy or Policy()
    t = int(time.time()) if now is None else int(now)
    if isinstance(bundles, BundleStore):
        bundles = bundles.current()
    if not isinstance(raw, str):
        raise ChainError("a chain is a string", reason="malformed")
    raw = raw.strip()
    links = split_chain(raw)
    n = len(links)
    mx = min(pol.max_links, MAX_LINKS_HARD)
    if n > mx:
        raise _err(mx, "too_deep", f"{n} links, more than the allowed {mx}")
    prev: _Prev | None = None
    root: Root | None = None
    root_domain = ""
    summaries: list[LinkSummary] = []
    dep = 0
    svid_until = _FOREVER

    for i, compact in enumerate(links):
        # Rule 1: parse, alg, typ, signature with the key the header designates.
        try:
            c = parse_compact(compact)
        except JoseError as e:
            raise _jose(i, e) from None
        if c.typ != TYP_LINK:
            raise _malformed(i, f"typ must be {TYP_LINK}")
        try:
            claims = LinkClaims.from_json(c.payload)
        except ValueError as e:
            raise _malformed(i, f"claims: {e}") from None
        try:
            iss = SpiffeId(claims.iss)
        except IdError as e:
            raise _malformed(i, f"iss: {e.message}") from None
        try:
            scope = ScopeSet.parse_nonempty(list(claims.scope))
        except ScopeError as e:
            raise _malformed(i, f"scope: {e.message}") from None
        if not valid_task(claims.task):
            raise _malformed(i, "task must be 1-128 printable bytes")
        if not claims.jti or len(claims.jti.encode()) > MAX_JTI_BYTES:
            raise _malformed(i, "jti must be 1-128 bytes")
        if claims.exp <= claims.iat:
            raise _malformed(i, "exp must be after iat")
        sub_agent: SpiffeId | None
        if claims.sub_type == SUB_HUMAN:
            if not valid_principal(claims.sub):
                raise _malformed(i, "human principal must be 1-256 printable bytes")
            sub_agent = None
        elif claims.sub_type == SUB_AGENT:
            try:
                sub_agent = SpiffeId(claims.sub)
            except IdError as e:
                raise _malformed(i, f"sub: {e.message}") from None
        else:
            raise _malformed(i, f"sub_type {claims.sub_type!r} is not human or agent")

        kid, x5c = c.kid, c.x5c
        x5c_id: SpiffeId | None
        if kid is not None and x5c is None:
            bundle = bundles.get(iss.trust_domain)
            if bundle is None:
                raise _err(i, "unknown_domain", f"no bundle for trust domain {iss.trust_domain}")
            # Keys have roles: a human's grant and a human's delegation are the IdP's to sign,
            # a crossing link (an agent-rooted L0) the gateway's. (A kid-signed link after an
            # agent also asks for the gateway role; it fails rule 4 below either way.)
            human_side = (
                claims.sub_type == SUB_HUMAN if prev is None else prev.claims.sub_type == SUB_HUMAN
            )
            role = "idp" if human_side else "gateway"
            try:
                key = bundle.jwt_key(kid, role, link=i)
            except ChainError as e:
                # A root whose issuer is not an accepted IdP or gateway at all is a bad root
                # (rule 2), whatever key signed it.
                if e.reason == "wrong_signer" and prev is None and not _root_issuer_accepted(iss, role, pol):
                    raise _err(
                        i, "bad_root", f"{iss} is not an accepted {'IdP' if role == 'idp' else 'gateway'}"
                    ) from None
                raise
            try:
                c.verify_with(key)
            except JoseError as e:
                raise _jose(i, e) from None
            x5c_id = None
        elif x5c is not None and kid is None:
            if not x5c or len(x5c) > MAX_X5C_CERTS:
                raise _malformed(i, f"x5c must hold 1-{MAX_X5C_CERTS} certificates")
            ders: list[bytes] = []
            for s in x5c:
                try:
                    ders.append(b64std_decode(s))
                except ValueError:
                    raise _malformed(i, "x5c entry is not base64") from None
            try:
                svid = verify_svid(ders, bundles, t, "any")
                leaf = x509.load_der_x509_certificate(ders[0])
                key = leaf_verifying_key(leaf)
            except SvidError as e:
                reason = e.reason or "bad_svid"
                prefix = "" if reason == "unknown_domain" else "x5c is not a valid X509-SVID: "
                raise _err(i, reason, prefix + e.message) from None
            try:
                c.verify_with(key)
            except JoseError as e:
                raise _jose(i, e) from None
            svid_until = min(svid_until, svid.not_after)
            x5c_id = svid.spiffe_id
        else:
            raise _malformed(i, "header must carry exactly one of kid and x5c")

        # Rules 2-6 relative to the previous link.
        if prev is None:
            root, signer = _check_root(kid, x5c_id, claims, iss, sub_agent, pol)
            if isinstance(root, CrossingRoot):
                dep = root.dep
                if dep + n > mx:
                    raise _err(0, "too_deep", f"{dep + n} links, more than the allowed {mx}")
            root_domain = iss.trust_domain
        else:
            # Rule 3: linkage.
            if claims.dlg != prev.claims.sub:
                raise _err(i, "broken_link", "dlg is not the previous link's sub")
            if claims.prev != link_hash(prev.compact):
                raise _err(i, "broken_link", "prev is not the hash of the previous link")
            if sub_agent is None:
                raise _malformed(i, "only the root link may grant to a human")
            if pol.one_domain and sub_agent.trust_domain != root_domain:
                raise _err(
                    i,
                    "broken_link",
                    f"{sub_agent} is not of {root_domain}: a delegation leaves the domain "
                    "only through a crossing",
                )
            if (
                claims.crossing is not None
                or claims.dep is not None
                or claims.agr is not None
                or claims.prn is not None
            ):
                raise _malformed(i, "crossing, dep, agr and prn belong to a root crossing link only")
            # Rule 4: the right signer.
            if prev.claims.sub_type == SUB_HUMAN:
                idp_ok = isinstance(root, HumanRoot) and root.idp == iss
                if not idp_ok or x5c_id is not None:
                    raise _err(
                        i,
                        "wrong_signer",
                        "a human's delegation must be signed by the IdP that issued the grant",
                    )
                signer = "idp"
            elif x5c_id is not None:
                if x5c_id == prev.claims.sub and iss == x5c_id:
                    signer = "agent"
                else:
                    raise _err(
                        i,
                        "wrong_signer",
                        f"signed by {x5c_id}, but the delegator is {prev.claims.sub}",
                    )
            else:
                raise _err(
                    i,
                    "wrong_signer",
                    "an agent's delegation must be signed with its own X509-SVID (x5c)",
                )
            # Rule 5: scope only narrows.
            if not scope.is_subset_of(prev.scope):
                raise _err(
                    i,
                    "scope_escalation",
                    f"scope {scope} is not within the previous link's {prev.scope}",
                )
            # Rule 6: expiry only shortens, issue time only moves forward.
            if claims.exp > prev.claims.exp:
                raise _err(i, "expiry_extension", "exp is later than the previous link's")
            if claims.iat < prev.claims.iat:
                raise _err(i, "expiry_extension", "iat is earlier than the previous link's")
            # Rule 7: one task.
            if claims.task != prev.claims.task:
                raise _err(i, "task_mismatch", "task differs from the root's")
        # Rule 6: times of every link.
        if claims.iat > t + pol.skew:
            raise _err(i, "not_yet_valid", f"issued in the future (iat {claims.iat})")
        if t >= claims.exp:
            raise _err(i, "expired", f"expired at {claims.exp}")
        summaries.append(
            LinkSummary(claims.iss, claims.sub, signer, scope, claims.iat, claims.exp, claims.jti)
        )
        prev = _Prev(compact, claims, scope)

    assert prev is not None and root is not None
    holder_is_agent = prev.claims.sub_type == SUB_AGENT
    if revoked is not None:
        _check_revocations(root, root_domain, summaries, prev.claims.task, revoked)
    return VerifiedChain(
        holder=prev.claims.sub,
        holder_is_agent=holder_is_agent,
        scope=prev.scope,
        task=prev.claims.task,
        root=root,
        depth=dep + n,
        expires=prev.claims.exp,
        valid_until=min(prev.claims.exp, svid_until),
        digest=chain_digest(raw),
        links=tuple(summaries),
        root_domain=root_domain,
    )


def _root_issuer_accepted(iss: SpiffeId, role: str, pol: Policy) -> bool:
    lst, path = (pol.idps, "/idp") if role == "idp" else (pol.gateways, "/gateway")
    return iss in lst if lst is not None else iss.path == path


def _check_root(
    kid: str | None,
    x5c_id: SpiffeId | None,
    claims: LinkClaims,
    iss: SpiffeId,
    sub_agent: SpiffeId | None,
    pol: Policy,
) -> tuple[Root, str]:
    """Rule 2: a human grant by an accepted IdP, or a crossing link by an accepted gateway."""

    def bad(m: str) -> ChainError:
        return _err(0, "bad_root", m)

    if kid is None or x5c_id is not None:
        raise bad("the root link must be signed by an IdP or gateway key (kid)")
    if sub_agent is None:
        if not _root_issuer_accepted(iss, "idp", pol):
            raise bad(f"{iss} is not an accepted IdP")
        if (
            claims.dlg is not None
            or claims.prev is not None
            or claims.crossing is not None
            or claims.dep is not None
            or claims.agr is not None
            or claims.prn is not None
        ):
            raise bad("a human grant has no dlg, prev, crossing, dep, agr or prn")
        return HumanRoot(claims.sub, iss), "idp"
    if not _root_issuer_accepted(iss, "gateway", pol):
        raise bad(f"{iss} is not an accepted gateway")
    if not sub_agent.in_domain(iss.trust_domain):
        raise bad("a gateway mints crossing links only for agents of its own domain")
    try:
        foreign = SpiffeId(claims.dlg) if claims.dlg is not None else None
    except IdError:
        foreign = None
    if foreign is None:
        raise bad("a crossing link names the foreign actor in dlg")
    if foreign.trust_domain == iss.trust_domain:
        raise bad("the foreign actor of a crossing link must be in another domain")
    crossing = claims.crossing
    if crossing is not None and not (0 < len(crossing.encode()) <= MAX_JTI_BYTES):
        crossing = None
    if crossing is None or claims.dep is None or claims.prev is None:
        raise bad("a crossing link carries crossing, dep and prev")
    return (
        CrossingRoot(iss, crossing, foreign, claims.dep, claims.agr, claims.prn),
        "gateway",
    )


def _check_revocations(
    root: Root, root_domain: str, links: list[LinkSummary], task: str, rev: Revoked
) -> None:
    def revoked(i: int, what: str) -> ChainError:
        return _err(i, "revoked", f"revoked: {what}")

    if isinstance(root, HumanRoot):
        if rev(root_domain, "principal", root.principal):
            raise revoked(0, f"principal {root.principal}")
        task_owner = root_domain
    else:
        fd = root.foreign_actor.trust_domain
        if rev(fd, "jti", root.crossing):
            raise revoked(0, f"crossing {root.crossing}")
        if rev(fd, "agent", root.foreign_actor):
            raise revoked(0, f"agent {root.foreign_actor}")
        # The root principal as the sending domain disclosed it (`prn`, clear or `anon:…`):
        # revoking it there stops chains rooted in such links (spec-notes 22).
        if root.principal is not None and rev(fd, "principal", root.principal):
            raise revoked(0, f"principal {root.principal}")
        task_owner = fd
    if rev(task_owner, "task", task):
        raise revoked(0, f"task {task}")
    for i, link in enumerate(links):
        try:
            link_domain = SpiffeId(link.iss).trust_domain
        except IdError:
            link_domain = ""
        if rev(link_domain, "jti", link.jti):
            raise revoked(i, f"link {link.jti}")
        for who in (link.iss, link.sub):
            try:
                sid = SpiffeId(who)
            except IdError:
                continue
            if sid.agent_type is not None and rev(sid.trust_domain, "agent", sid):
                raise revoked(i, f"agent {sid}")


def parse_links(raw: str) -> list[Link]:
    """Splits and parses every link (no signature checked)."""
    return [Link.parse(s, i) for i, s in enumerate(split_chain(raw.strip()))]
