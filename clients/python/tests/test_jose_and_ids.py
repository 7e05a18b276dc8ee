"""JWS framing (jose.rs), SPIFFE IDs (id.rs), bundles (bundle.rs)."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization

from fedgate_agent import Bundle, BundleError, IdError, JoseError, SigningKey, SpiffeId
from fedgate_agent.jose import (
    b64std_decode,
    b64url,
    b64url_decode,
    json_compact,
    parse_compact,
    sign_compact,
)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_sign_and_verify_both_algs(alg: str) -> None:
    k = SigningKey.generate(alg)
    t = sign_compact(k, "x+jwt", {"a": "b"}, use_kid=True)
    c = parse_compact(t)
    assert c.header == {"alg": alg, "typ": "x+jwt", "kid": k.kid}
    assert len(c.signature) == 64
    c.verify_with(k.public)
    bad = t[: t.index(".") + 2] + ("A" if t[t.index(".") + 2] != "A" else "B") + t[t.index(".") + 3 :]
    try:
        parse_compact(bad).verify_with(k.public)
        raise AssertionError("tampered token verified")
    except JoseError as e:
        assert e.reason in ("bad_signature", "malformed")


def test_header_is_serialized_as_the_gateway_does() -> None:
    k = SigningKey.generate()
    t = sign_compact(k, "delegation+jwt", {"a": 1}, x5c=["AAAA"])
    assert b64url_decode(t.split(".")[0]) == b'{"alg":"ES256","typ":"delegation+jwt","x5c":["AAAA"]}'


def test_refuses_other_algs_and_key_mismatch() -> None:
    for alg in ["none", "HS256", "RS256", "PS256", "ES384", "es256", "EDDSA", ""]:
        h = b64url(json.dumps({"alg": alg}).encode())
        with pytest.raises(JoseError) as e:
            parse_compact(f"{h}.{b64url(b'{}')}.{b64url(bytes(64))}")
        assert e.value.reason == "bad_alg", alg
    p, e_ = SigningKey.generate("ES256"), SigningKey.generate("EdDSA")
    t = sign_compact(e_, "x", {"a": "b"}, use_kid=True)
    with pytest.raises(JoseError) as err:
        parse_compact(t).verify_with(p.public)
    assert err.value.reason == "bad_alg"


def test_malformed_inputs() -> None:
    for t in ["", "a", "a.b", "a.b.c.d", "!!.e30.AA", "e30.e30.AA", "a" * (64 * 1024 + 1)]:
        with pytest.raises(JoseError):
            parse_compact(t)
    for hdr in [b'{"alg":"ES256","alg":"none"}', b'{"alg":"ES256","crit":["exp"]}', b"[1]", b'{"alg":7}']:
        with pytest.raises(JoseError) as e:
            parse_compact(f"{b64url(hdr)}.{b64url(b'{}')}.{b64url(bytes(64))}")
        assert e.value.reason == "malformed"
    # A signature of the wrong length is bad_signature, as the gateway says.
    with pytest.raises(JoseError) as e:
        h = b64url(b'{"alg":"ES256"}')
        parse_compact(f"{h}.{b64url(b'{}')}.{b64url(bytes(63))}")
    assert e.value.reason == "bad_signature"


def test_base64_is_strict() -> None:
    assert b64url_decode("AQ") == b"\x01"
    for bad in ["AQ==", "A", "AR", "a+b/", "a b"]:
        with pytest.raises(ValueError):
            b64url_decode(bad)
    assert b64std_decode("AQ==") == b"\x01"
    for bad in ["AQ", "AR==", "a-b_", "AQ=="[:3]]:
        with pytest.raises(ValueError):
            b64std_decode(bad)


def test_thumbprint_rfc7638_shape() -> None:
    k = SigningKey.generate()
    pem = k.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    again = SigningKey.from_pem(pem)
    assert k.kid == again.kid and len(k.kid) == 43
    assert json_compact(k.public.jwk_members()).startswith(b'{"crv":"P-256","kty":"EC","x":')
    assert k.kid in repr(k) and "PRIVATE" not in repr(k)


def test_kid_matches_the_gateways(company) -> None:  # type: ignore[no-untyped-def]
    b = company.bundles["company.com"]
    for name in ("idp", "gateway", "audit"):
        assert b.authority(company.key(name).kid) is not None, name


@pytest.mark.parametrize(
    "good",
    [
        "spiffe://company.com/agent/planning/p1",
        "spiffe://a.b-c_d/x.y-z_/W",
        "spiffe://td",
    ],
)
def test_spiffe_ids_valid(good: str) -> None:
    assert SpiffeId(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "http://company.com/x",
        "spiffe://",
        "spiffe:///x",
        "spiffe://Company.com/x",
        "spiffe://company.com:443/x",
        "spiffe://user@company.com/x",
        "spiffe://company.com/x?q",
        "spiffe://company.com/x#f",
        "spiffe://company.com/a%20b",
        "spiffe://company.com/",
        "spiffe://company.com/a/",
        "spiffe://company.com//a",
        "spiffe://company.com/a/./b",
        "spiffe://company.com/a/../b",
        "spiffe://company.com/a b",
        "spiffe://company.com/" + "a" * 2048,
    ],
)
def test_spiffe_ids_invalid(bad: str) -> None:
    with pytest.raises(IdError) as e:
        SpiffeId(bad)
    assert e.value.reason == "malformed"


def test_spiffe_id_parts() -> None:
    i = SpiffeId("spiffe://company.com/agent/planning/p1")
    assert i.trust_domain == "company.com" and i.path == "/agent/planning/p1" and i.agent_type == "planning"
    assert SpiffeId("spiffe://company.com/gateway").agent_type is None


def test_bundles(company) -> None:  # type: ignore[no-untyped-def]
    raw = (company.bundles_dir / "company.com.json").read_bytes()
    b = Bundle.parse("company.com", raw)
    assert len(b.x509_authorities) == 1 and len(b.jwt_authorities) == 3
    doc = json.loads(raw)
    for mutate, msg in [
        (lambda d: d.pop("keys"), "no \"keys\""),
        (lambda d: d["keys"].append(dict(d["keys"][1])), "duplicate"),
        (lambda d: d["keys"][1].__setitem__("fedgate_role", 7), "fedgate_role"),
        (lambda d: d["keys"][0].__setitem__("x5c", []), "exactly one"),
        (lambda d: d.__setitem__("spiffe_sequence", -1), "non-negative"),
    ]:
        d = json.loads(raw)
        mutate(d)
        with pytest.raises(BundleError, match=msg):
            Bundle.parse("company.com", json.dumps(d))
    doc["keys"].append({"use": "jwt-svid", "kid": "r", "kty": "RSA", "n": "AQAB", "e": "AQAB"})
    doc["keys"].append({"use": "wit-svid"})
    b2 = Bundle.parse("company.com", json.dumps(doc))
    assert len(b2.skipped) == 2 and b2.has_roles == b.has_roles  # roles: as the binary writes them
