"""Scopes: the same cases as gateway/src/scope.rs, plus its properties on random sets."""

from __future__ import annotations

import itertools
import random

import pytest

from fedgate_agent import MAX_SCOPES, Scope, ScopeError, ScopeSet


def s(x: str) -> Scope:
    return Scope(x)


def sset(*x: str) -> ScopeSet:
    return ScopeSet(x)


def test_parse_rules() -> None:
    assert s("cloud:read") == "cloud:read"
    assert s("a-b_c.d:e/f*")
    assert s("*")
    assert s("a" * 256)
    for bad in ["", "a" * 257, "a b", "é", "a*b", "**", "a\n", "x,y", "q?"]:
        with pytest.raises(ScopeError) as e:
            Scope(bad)
        assert e.value.reason == "malformed"
    with pytest.raises(ScopeError):
        ScopeSet.parse_nonempty([])
    with pytest.raises(ScopeError):
        ScopeSet.parse_nonempty("   ")
    with pytest.raises(ScopeError):
        ScopeSet([f"s{i}" for i in range(MAX_SCOPES + 1)])
    assert len(ScopeSet([f"s{i}" for i in range(MAX_SCOPES)])) == MAX_SCOPES


def test_coverage_examples_from_the_spec() -> None:
    assert s("cloud:*").covers("cloud:read")
    assert s("cloud:*").covers("cloud:read:x")
    assert s("ec2:Describe*").covers("ec2:DescribeInstances")
    assert s("ec2:Describe*").covers("ec2:DescribeX*")
    assert not s("ec2:Describe*").covers("ec2:Delete")
    assert not s("ec2:Describe*").covers("ec2:Desc*")
    assert not s("cloud:read").covers("cloud:*")
    assert not s("cloud:read").covers("cloud:read:x")
    assert s("*").covers("anything:at:all*")


def test_set_operations() -> None:
    held = sset("analytics:*", "reports:write")
    assert sset("analytics:run").is_subset_of(held)
    assert not sset("analytics:run", "pii:read").is_subset_of(held)
    assert sset("analytics:run", "pii:read").not_covered_by(held) == ("pii:read",)
    mx = sset("analytics:run", "analytics:read:*", "pii:customers:read")
    assert sset("analytics:*").intersect(mx) == sset("analytics:run", "analytics:read:*")
    assert sset("analytics:read:x").intersect(mx) == sset("analytics:read:x")
    assert not sset("billing:read").intersect(mx)
    assert sset("a:*", "a:b") == sset("a:*")
    assert ScopeSet.parse(" a  b ").to_spaced() == "a b"
    assert "analytics:run" in held and "billing:x" not in held
    assert ScopeSet.parse(held) is held


def test_normalized_order_is_byte_order() -> None:
    # The gateway sorts by bytes: upper case before lower case, ':' after digits.
    assert sset("b", "B", "a:1", "a1", "_").to_strings() == ["B", "_", "a1", "a:1", "b"]


def _rand_scope(r: random.Random) -> Scope:
    stem = "".join(r.choice("ab:") for _ in range(r.randint(1, 4)))
    return Scope(stem + "*" if r.random() < 0.5 else stem)


def _rand_set(r: random.Random) -> ScopeSet:
    return ScopeSet(_rand_scope(r) for _ in range(r.randint(0, 5)))


def test_properties_on_random_sets() -> None:
    r = random.Random(18)
    for _ in range(400):
        a, b, c = _rand_set(r), _rand_set(r), _rand_set(r)
        assert a.is_subset_of(a)
        if a.is_subset_of(b) and b.is_subset_of(c):
            assert a.is_subset_of(c)
        i = a.intersect(b)
        assert i.is_subset_of(a) and i.is_subset_of(b)
        for x in itertools.chain(a, b):
            if a.covers(x) and b.covers(x):
                assert i.covers(x), (x, a, b, i)


def test_coverage_matches_string_semantics() -> None:
    r = random.Random(7)
    for _ in range(2000):
        p, q = _rand_scope(r), _rand_scope(r)
        ps = p[:-1] if p.endswith("*") else None
        qs = q[:-1] if q.endswith("*") else None
        if ps is None and qs is None:
            expect = p == q
        elif ps is None:
            expect = False
        elif qs is None:
            expect = q.startswith(ps)
        else:
            expect = qs.startswith(ps)
        assert p.covers(q) == expect, (p, q)
