"""Scopes (SPEC section 4), mirroring ``gateway/src/scope.rs`` rule for rule.

A scope is 1-256 bytes of ``[A-Za-z0-9_.:/*-]``; a trailing ``*`` makes it a prefix pattern and a
``*`` anywhere else is malformed. P covers Q when Q = P, or P ends in ``*`` and Q (its own
trailing ``*`` dropped) starts with P's stem. A ⊆ B when every member of A is covered by some
member of B. A :class:`ScopeSet` is kept sorted (byte order) and without members covered by
other members, so equal sets compare equal and serialize exactly as the gateway's do.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Union

from .errors import ScopeError
from .limits import MAX_SCOPE_BYTES, MAX_SCOPES, SCOPE_CHARS

_CHARS = frozenset(SCOPE_CHARS)


class Scope(str):
    """One valid scope or scope pattern (a ``str`` subclass)."""

    __slots__ = ()

    def __new__(cls, value: str) -> Scope:
        if isinstance(value, Scope):
            return value
        if not isinstance(value, str):
            raise ScopeError("a scope is a string")
        if not value:
            raise ScopeError("empty scope")
        if len(value.encode("utf-8", "surrogatepass")) > MAX_SCOPE_BYTES:
            raise ScopeError(f"scope longer than {MAX_SCOPE_BYTES} bytes")
        if any(c not in _CHARS for c in value):
            raise ScopeError(f"scope {value[:64]!r} has a character outside [A-Za-z0-9_.:/*-]")
        star = value.find("*")
        if star >= 0 and star != len(value) - 1:
            raise ScopeError(f"scope {value!r} has '*' other than as its last character")
        return super().__new__(cls, value)

    @property
    def is_wildcard(self) -> bool:
        return self.endswith("*")

    @property
    def stem(self) -> str:
        """The part a pattern matches on: the string without its trailing ``*``."""
        return str(self[:-1]) if self.is_wildcard else str(self)

    def covers(self, other: str) -> bool:
        """Whether this scope covers ``other`` (SPEC section 4)."""
        o = Scope(other)
        if str(self) == str(o):
            return True
        return self.is_wildcard and o.stem.startswith(self.stem)

    def meet(self, other: str) -> Scope | None:
        """The largest pattern covered by both, if any (always one of the two, or nothing)."""
        o = Scope(other)
        if self.covers(o):
            return o
        if o.covers(self):
            return self
        return None

    def __repr__(self) -> str:
        return f"Scope({str.__repr__(self)})"


ScopeLike = Union["ScopeSet", str, Iterable[str]]
"""What every API taking scopes accepts: a :class:`ScopeSet`, a space-separated string, or an
iterable of scope strings."""


def _normalize(items: list[Scope]) -> tuple[Scope, ...]:
    uniq = sorted(set(items), key=lambda s: s.encode())
    return tuple(s for s in uniq if not any(o != s and o.covers(s) for o in uniq))


class ScopeSet:
    """An immutable, normalized set of scopes. ``x in s`` means *s covers x*."""

    __slots__ = ("_items",)
    _items: tuple[Scope, ...]

    def __init__(self, items: Iterable[str] = ()):
        if isinstance(items, str):
            raise ScopeError("use ScopeSet.parse() for a space-separated string")
        lst = list(items)
        if len(lst) > MAX_SCOPES:
            raise ScopeError(f"more than {MAX_SCOPES} scopes")
        self._items = _normalize([Scope(s) for s in lst])

    @classmethod
    def parse(cls, value: ScopeLike) -> ScopeSet:
        """From a ScopeSet, a space-separated string (OAuth form), or an iterable of strings.
        The result may be empty; see :meth:`parse_nonempty`."""
        if isinstance(value, ScopeSet):
            return value
        if isinstance(value, str):
            return cls(x for x in value.split(" ") if x)
        return cls(value)

    @classmethod
    def parse_nonempty(cls, value: ScopeLike) -> ScopeSet:
        """Like :meth:`parse`, but at least one scope is required (a link holds 1-64)."""
        if isinstance(value, str):
            items = [x for x in value.split(" ") if x]
        elif isinstance(value, ScopeSet):
            items = list(value)
        else:
            items = list(value)
        if not items:
            raise ScopeError("no scopes")
        return cls(items)

    def __iter__(self) -> Iterator[Scope]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ScopeSet):
            return self._items == other._items
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._items)

    def __contains__(self, scope: object) -> bool:
        return isinstance(scope, str) and self.covers(scope)

    def covers(self, scope: str) -> bool:
        """Whether some member covers ``scope``."""
        s = Scope(scope)
        return any(m.covers(s) for m in self._items)

    def is_subset_of(self, other: ScopeLike) -> bool:
        """``self ⊆ other``: every member of self is covered by some member of other."""
        o = ScopeSet.parse(other)
        return all(o.covers(s) for s in self._items)

    def not_covered_by(self, other: ScopeLike) -> tuple[Scope, ...]:
        """Members of self that ``other`` does not cover (empty when ``self ⊆ other``)."""
        o = ScopeSet.parse(other)
        return tuple(s for s in self._items if not o.covers(s))

    def intersect(self, other: ScopeLike) -> ScopeSet:
        """Intersection by coverage: the largest set covered by both, normalized."""
        o = ScopeSet.parse(other)
        out: list[Scope] = []
        for a in self._items:
            for b in o._items:
                m = a.meet(b)
                if m is not None:
                    out.append(m)
        res = ScopeSet.__new__(ScopeSet)
        res._items = _normalize(out)
        return res

    def to_strings(self) -> list[str]:
        return [str(s) for s in self._items]

    def to_spaced(self) -> str:
        """Space-separated (OAuth ``scope`` form)."""
        return " ".join(self._items)

    def __str__(self) -> str:
        return self.to_spaced()

    def __repr__(self) -> str:
        return f"ScopeSet({self.to_strings()!r})"
