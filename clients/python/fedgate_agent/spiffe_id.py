"""SPIFFE IDs and trust domain names exactly as the SPIFFE-ID standard (and ``spiffe/id.rs``)
define them: scheme ``spiffe://``, a lowercase trust domain of ``[a-z0-9.-_]``, path segments of
``[A-Za-z0-9.-_]``, no empty, ``.`` or ``..`` segments, no trailing slash, no query, fragment,
port, userinfo or percent-encoding, at most 2048 bytes."""

from __future__ import annotations

from .errors import IdError
from .limits import MAX_SPIFFE_ID_BYTES, MAX_TRUST_DOMAIN_BYTES

SCHEME = "spiffe://"
_TD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_")


def _td_error(c: str, at: int) -> str:
    if "A" <= c <= "Z":
        return "trust domain must be lowercase"
    return {
        ":": "port is not allowed in a SPIFFE ID",
        "@": "userinfo is not allowed in a SPIFFE ID",
        "%": "percent-encoding is not allowed in a SPIFFE ID",
        "?": "query is not allowed in a SPIFFE ID",
        "#": "fragment is not allowed in a SPIFFE ID",
    }.get(c, f"trust domain contains a character outside [a-z0-9.-_] at byte {at}")


def _check_trust_domain(td: str, offset: int) -> None:
    if not td:
        raise IdError("trust domain is missing")
    if len(td.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise IdError(f"longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    for i, c in enumerate(td):
        if c not in _TD_CHARS:
            raise IdError(_td_error(c, offset + i))


def _check_path(path: str, offset: int) -> None:
    if not path:
        return
    for i, c in enumerate(path):
        if c != "/" and c not in _PATH_CHARS:
            msg = {
                "%": "percent-encoding is not allowed in a SPIFFE ID",
                "?": "query is not allowed in a SPIFFE ID",
                "#": "fragment is not allowed in a SPIFFE ID",
            }.get(c, f"path contains a character outside [A-Za-z0-9.-_] at byte {offset + i}")
            raise IdError(msg)
    if path.endswith("/"):
        raise IdError("path has an empty segment" if path == "/" else "path has a trailing slash")
    for seg in path[1:].split("/"):
        if not seg:
            raise IdError("path has an empty segment")
        if seg in (".", ".."):
            raise IdError("path has a '.' or '..' segment")


def valid_trust_domain(td: str) -> str:
    """Checks a bare trust domain name (``company.com``); returns it."""
    if not td:
        raise IdError("empty trust domain")
    _check_trust_domain(td, 0)
    return td


class SpiffeId(str):
    """A valid SPIFFE ID; a ``str`` subclass, so it compares, hashes and serializes as one."""

    __slots__ = ()

    def __new__(cls, value: str) -> SpiffeId:
        if isinstance(value, SpiffeId):
            return value
        if not isinstance(value, str):
            raise IdError("a SPIFFE ID is a string")
        if not value:
            raise IdError("empty SPIFFE ID")
        if len(value.encode("utf-8", "surrogatepass")) > MAX_SPIFFE_ID_BYTES:
            raise IdError(f"longer than {MAX_SPIFFE_ID_BYTES} bytes")
        if not value.startswith(SCHEME):
            raise IdError('scheme must be exactly "spiffe://"')
        rest = value[len(SCHEME) :]
        cut = rest.find("/")
        td, path = (rest, "") if cut < 0 else (rest[:cut], rest[cut:])
        _check_trust_domain(td, len(SCHEME))
        _check_path(path, len(SCHEME) + len(td))
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, value: str) -> SpiffeId:
        return cls(value)

    @property
    def trust_domain(self) -> str:
        rest = self[len(SCHEME) :]
        cut = rest.find("/")
        return rest if cut < 0 else rest[:cut]

    @property
    def path(self) -> str:
        """The path: empty, or starting with ``/``."""
        return self[len(SCHEME) + len(self.trust_domain) :]

    @property
    def agent_type(self) -> str | None:
        """For ``spiffe://td/agent/<type>/<instance>``: the agent type."""
        p = self.path
        if not p.startswith("/agent/"):
            return None
        seg = p[len("/agent/") :].split("/")[0]
        return seg or None

    def in_domain(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain

    @staticmethod
    def for_domain(trust_domain: str, path: str) -> SpiffeId:
        """``spiffe://<trust_domain><path>``, checked."""
        return SpiffeId(f"{SCHEME}{trust_domain}{path}")

    def __repr__(self) -> str:
        return f"SpiffeId({str.__repr__(self)})"


def is_spiffe_id(value: object) -> bool:
    try:
        SpiffeId(value)  # type: ignore[arg-type]
    except IdError:
        return False
    return True
