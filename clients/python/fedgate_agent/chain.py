"""A delegation chain an agent holds: inspect it, extend it by one link, verify it.

>>> svid = load_svid("agents/planning/p1.pem", "agents/planning/p1.key")
>>> chain = Chain.parse(request.headers["Delegation-Chain"], svid=svid)
>>> sub = chain.extend(to="spiffe://company.com/agent/inventory/i1", scope=["cloud:read"], ttl="30m")

``extend`` appends a link exactly per SPEC section 3 (``x5c`` of the holder's SVID, ``dlg`` =
the holder, ``prev`` = hash of the last link, the same ``task``, ``iat``/``exp`` within the last
link's) and refuses, before anything is signed, a link the gateway would reject: wider scope
(``scope_escalation``), a signer that is not the holder (``wrong_signer``), an expired chain,
too many links (``too_deep``), too many bytes (``too_large``), a link that would be over before
it starts (``malformed``: ``exp <= iat``), or a delegate of another trust domain than the chain's
(``broken_link``: a delegation leaves an organization only through a crossing, spec-notes 18).
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Iterator, Sequence

from ._time import Duration, format_rfc3339, parse_duration
from ._time import now as _now
from .bundle import Bundle, BundleSet, BundleStore, load_bundles
from .errors import ChainError, ExtendError, IdError, ScopeError
from .jose import SIGNATURE_B64_LEN, SigningKey, b64url, encode_header, signing_input
from .limits import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_MAX_LINKS,
    MAX_CHAIN_BYTES,
    MAX_LINK_BYTES,
    MAX_LINKS_HARD,
    MAX_X5C_CERTS,
    SEPARATOR,
    SUB_AGENT,
    SUB_HUMAN,
    TYP_LINK,
)
from .links import Link, LinkClaims, chain_digest, link_hash, sign_link, valid_principal, valid_task
from .scope import ScopeLike, ScopeSet
from .spiffe_id import SpiffeId
from .svid import SvidLike, current_svid
from .verify import Policy, Revoked, VerifiedChain, parse_links, verify_chain

def random_id() -> str:
    """A fresh 128-bit random identifier, base64url (22 characters), as the gateway's."""
    return b64url(secrets.token_bytes(16))


class Chain:
    """A parsed (not verified) chain ``L0~…~Ln``, optionally bound to the SVID of the agent
    holding it (needed to :meth:`extend`). ``str(chain)`` is the wire form; ``repr`` never
    shows tokens."""

    __slots__ = ("raw", "links", "svid")

    raw: str
    links: tuple[Link, ...]
    svid: SvidLike | None
    """The SVID (or SVID source, which then signs with its current SVID) of the holder."""

    def __init__(self, raw: str | bytes, *, svid: SvidLike | None = None):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("ascii")
            except UnicodeDecodeError:
                raise ChainError("chain is not ASCII", reason="malformed") from None
        if not isinstance(raw, str):
            raise ChainError("a chain is a string", reason="malformed")
        self.raw = raw.strip()
        self.links = tuple(parse_links(self.raw))
        self.svid = svid

    @classmethod
    def parse(cls, raw: str | bytes, *, svid: SvidLike | None = None) -> Chain:
        """Parses ``L0~…~Ln`` (sizes, counts, every link's JWS and claims; no signatures).
        Raises :class:`ChainError`."""
        return cls(raw, svid=svid)

    def bind(self, svid: SvidLike) -> Chain:
        """The same chain, held by ``svid`` (an :class:`X509Svid`, or a source such as
        :class:`~fedgate_agent.WorkloadApiSvidSource`, whose current SVID then signs)."""
        c = Chain.__new__(Chain)
        c.raw, c.links, c.svid = self.raw, self.links, svid
        return c

    # ---- what the chain says (unverified) ---------------------------------------------------

    @property
    def last(self) -> LinkClaims:
        return self.links[-1].claims

    @property
    def root_link(self) -> LinkClaims:
        return self.links[0].claims

    @property
    def holder(self) -> str:
        """``Ln.sub``: who may present the chain (an agent's SPIFFE ID, or a lone human grant's
        principal)."""
        return self.last.sub

    @property
    def holder_is_agent(self) -> bool:
        return self.last.sub_type == SUB_AGENT

    @property
    def scope(self) -> ScopeSet:
        """The holder's scope. :class:`ChainError` (``malformed``) if the last link's is not a
        valid scope list."""
        return self._held_scope()

    def _held_scope(self) -> ScopeSet:
        try:
            return ScopeSet.parse_nonempty(list(self.last.scope))
        except ScopeError as e:
            raise ChainError(f"scope: {e.message}", reason="malformed", link=len(self.links) - 1) from None

    @property
    def task(self) -> str:
        return self.last.task

    @property
    def expires(self) -> int:
        return min(link.claims.exp for link in self.links)

    @property
    def issued_at(self) -> int:
        return self.last.iat

    @property
    def is_crossing_rooted(self) -> bool:
        return self.links[0].is_crossing_link

    @property
    def crossing(self) -> str | None:
        """The crossing id (federation token ``jti``) when the chain is rooted in a crossing."""
        return self.root_link.crossing if self.is_crossing_rooted else None

    @property
    def depth(self) -> int:
        """Links counted, a crossing root's ``dep`` included (what ``max_chain_depth`` caps)."""
        r = self.root_link
        base = (r.dep or 0) if self.is_crossing_rooted else 0
        return base + len(self.links)

    @property
    def digest(self) -> str:
        return chain_digest(self.raw)

    def __str__(self) -> str:
        return self.raw

    def __len__(self) -> int:
        return len(self.links)

    def __iter__(self) -> Iterator[Link]:
        return iter(self.links)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chain) and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return (
            f"Chain(holder={self.holder!r}, links={len(self.links)}, scope={list(self.last.scope)!r}, "
            f"task={self.task!r}, digest={self.digest!r})"
        )

    # ---- extend -----------------------------------------------------------------------------

    def extend(
        self,
        to: str,
        scope: ScopeLike,
        ttl: Duration = "1h",
        *,
        svid: SvidLike | None = None,
        now: int | None = None,
        max_links: int = DEFAULT_MAX_LINKS,
        skew: int = DEFAULT_CLOCK_SKEW,
    ) -> Chain:
        """Appends a link delegating ``scope`` to ``to``, signed with the holder's SVID (the one
        bound to the chain, or ``svid``). The link expires at ``min(now + ttl, last link's
        exp)`` and is issued at ``max(now, last link's iat)``, as ``fedgate chain extend`` does.

        Raises :class:`ExtendError` before signing anything if the link would break a rule, or
        would be refused by the gateway: ``to`` outside the chain's trust domain
        (``broken_link``), or a ``ttl`` so short that ``exp <= iat`` (``malformed``). Returns a
        new :class:`Chain` (held by ``to``, unbound).
        """
        bound = svid if svid is not None else self.svid
        signer = current_svid(bound) if bound is not None else None
        n = len(self.links)
        here = n  # index the new link would have

        def refuse(reason: str, message: str, link: int | None = here) -> ExtendError:
            return ExtendError(message, reason=reason, link=link)

        if signer is None:
            raise refuse("wrong_signer", "no SVID to sign with: bind one (Chain.parse(..., svid=...))")
        try:
            to_id = SpiffeId(to)
        except IdError as e:
            raise refuse("malformed", f"to: {e.message}") from None
        try:
            want = ScopeSet.parse_nonempty(scope)
        except ScopeError as e:
            raise refuse("malformed", f"scope: {e.message}") from None
        try:
            secs = parse_duration(ttl)
        except ValueError as e:
            raise refuse("malformed", f"ttl: {e}") from None
        if secs <= 0:
            raise refuse("malformed", "ttl must be positive")
        t = _now() if now is None else int(now)
        last = self.last
        # Rule 4: only the holder can delegate, with its own SVID.
        if last.sub_type != SUB_AGENT:
            raise refuse(
                "wrong_signer",
                "the chain's holder is a human; only the IdP can delegate for a human",
            )
        if signer.spiffe_id != last.sub:
            raise refuse(
                "wrong_signer",
                f"the chain's holder is {last.sub}, but this SVID is {signer.spiffe_id}: "
                "only the holder can extend",
            )
        # Rule 6: the chain must still be valid.
        for i, link in enumerate(self.links):
            if link.claims.iat > t + skew:
                raise refuse("not_yet_valid", f"issued in the future (iat {link.claims.iat})", i)
            if t >= link.claims.exp:
                raise refuse("expired", f"the chain expired at {format_rfc3339(link.claims.exp)}", i)
        # Rule 5: scope only narrows.
        try:
            held = self._held_scope()
        except ChainError as e:
            raise refuse("malformed", e.message, e.link) from None
        extra = want.not_covered_by(held)
        if extra:
            raise refuse(
                "scope_escalation",
                f"scope {' '.join(extra)} is not within the holder's {held}",
            )
        # Rule 7: depth.
        limit = min(max_links, MAX_LINKS_HARD)
        if self.depth + 1 > limit or n + 1 > MAX_LINKS_HARD:
            raise refuse(
                "too_deep", f"{self.depth + 1} links, more than the allowed {limit}"
            )
        if t >= signer.not_after:
            raise refuse("bad_svid", f"the SVID expired at {format_rfc3339(signer.not_after)}")
        x5c = signer.x5c
        if len(x5c) > MAX_X5C_CERTS:
            raise refuse("malformed", f"x5c must hold 1-{MAX_X5C_CERTS} certificates")
        # Internal chains stay internal (spec-notes 18): the gateway honours, for egress and
        # token exchange, only chains whose agents all belong to the root's domain.
        try:
            root_domain = SpiffeId(self.root_link.iss).trust_domain
        except IdError:
            raise refuse("malformed", "the root link's iss is not a SPIFFE ID", 0) from None
        if to_id.trust_domain != root_domain:
            raise refuse(
                "broken_link",
                f"{to_id} is not of {root_domain}: a delegation leaves the domain only through a "
                "crossing (call the partner through the gateway: Gateway.egress or exchange)",
            )
        iat, exp = max(t, last.iat), min(t + secs, last.exp)
        if exp <= iat:
            raise refuse(
                "malformed",
                f"ttl {secs}s is too short: the link would expire at {exp}, not after its issue "
                f"time {iat} (the held link was issued {last.iat - t}s ahead of this clock)",
            )
        claims = LinkClaims(
            iss=signer.spiffe_id,
            sub=to_id,
            sub_type=SUB_AGENT,
            dlg=last.sub,
            scope=tuple(want.to_strings()),
            task=last.task,
            iat=iat,
            exp=exp,
            prev=link_hash(self.links[-1].compact),
            jti=random_id(),
        )
        header = encode_header(signer.signing_key.alg, TYP_LINK, x5c=x5c)
        size = len(signing_input(header, claims.to_json())) + 1 + SIGNATURE_B64_LEN
        if size > MAX_LINK_BYTES:
            raise refuse("too_large", f"the new link would be {size} bytes, over {MAX_LINK_BYTES}")
        if len(self.raw) + 1 + size > MAX_CHAIN_BYTES:
            raise refuse(
                "too_large",
                f"the chain would be {len(self.raw) + 1 + size} bytes, over {MAX_CHAIN_BYTES}",
                None,
            )
        compact = sign_link(claims, signer.signing_key, x5c=x5c)
        return Chain(f"{self.raw}{SEPARATOR}{compact}")

    # ---- debugging --------------------------------------------------------------------------

    def inspect(self) -> dict[str, Any]:
        """Readable JSON of the links, the shape ``fedgate chain inspect`` prints (nothing is
        verified), plus ``agreement`` / ``disclosed_principal`` of a crossing link."""
        out = []
        for link in self.links:
            c = link.claims
            e: dict[str, Any] = {
                "principal": c.sub,
                "type": c.sub_type,
                "scope": list(c.scope),
                "task": c.task,
                "timestamp": format_rfc3339(c.iat),
                "expires": format_rfc3339(c.exp),
                "issuer": c.iss,
                "signed_with": link.signed_with,
                "alg": link.alg,
                "signature": link.signature_digest,
                "jti": c.jti,
            }
            if c.dlg is not None:
                e["delegated_by"] = c.dlg
            if c.crossing is not None:
                e["crossing"] = c.crossing
            if c.dep is not None:
                e["dep"] = c.dep
            if c.agr is not None:
                e["agreement"] = c.agr
            if c.prn is not None:
                e["disclosed_principal"] = c.prn
            out.append(e)
        return {"chain": out, "digest": self.digest}

    def verify(
        self,
        bundles: BundleSet | BundleStore | Bundle | str | os.PathLike[str],
        *,
        at: int | None = None,
        max_links: int = DEFAULT_MAX_LINKS,
        skew: int = DEFAULT_CLOCK_SKEW,
        idps: Sequence[str] | None = None,
        gateways: Sequence[str] | None = None,
        one_domain: bool = False,
        revoked: Revoked | None = None,
    ) -> VerifiedChain:
        """Verifies rules 1-8 (revocation only with ``revoked``) against ``bundles`` (a
        :class:`BundleSet`, or a bundle directory as ``fedgate chain verify --bundles``).
        Raises :class:`ChainError` with the reason and link ``fedgate chain verify`` reports."""
        policy = Policy(
            max_links=max_links, skew=skew, idps=idps, gateways=gateways, one_domain=one_domain
        )
        return verify_chain(self.raw, load_bundles(bundles), now=at, policy=policy, revoked=revoked)


def issue_grant(
    idp_key: SigningKey | str | os.PathLike[str],
    idp: str,
    principal: str,
    to: str,
    scope: ScopeLike,
    task: str,
    ttl: Duration = "1h",
    *,
    now: int | None = None,
) -> Chain:
    """As a domain's IdP: the human's grant ``L0`` and the human → agent link ``L1``, both
    signed with the IdP key (``kid``), as ``fedgate chain issue`` does. For development IdPs
    and tests; in production the IdP issues these."""
    key = idp_key if isinstance(idp_key, SigningKey) else SigningKey.from_file(idp_key)
    idp_id, agent = SpiffeId(idp), SpiffeId(to)
    if not valid_principal(principal):
        raise ChainError("principal must be 1-256 printable bytes without spaces", reason="malformed")
    if not valid_task(task):
        raise ChainError("task must be 1-128 printable bytes", reason="malformed")
    s = ScopeSet.parse_nonempty(scope)
    try:
        secs = parse_duration(ttl)
    except ValueError as e:
        raise ChainError(f"ttl: {e}", reason="malformed") from None
    if secs <= 0:
        raise ChainError("ttl must be positive", reason="malformed")
    t = _now() if now is None else int(now)
    l0 = LinkClaims(
        iss=idp_id,
        sub=principal,
        sub_type=SUB_HUMAN,
        scope=tuple(s.to_strings()),
        task=task,
        iat=t,
        exp=t + secs,
        jti=random_id(),
    )
    s0 = sign_link(l0, key)
    l1 = LinkClaims(
        iss=idp_id,
        sub=agent,
        sub_type=SUB_AGENT,
        dlg=principal,
        scope=l0.scope,
        task=task,
        iat=t,
        exp=t + secs,
        prev=link_hash(s0),
        jti=random_id(),
    )
    return Chain(f"{s0}{SEPARATOR}{sign_link(l1, key)}")
