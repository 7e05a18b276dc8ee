"""Compact JWS with exactly two algorithms, framed as ``gateway/src/jose.rs`` frames them.

ES256 (P-256, fixed-size ``r||s`` signatures) and EdDSA (Ed25519). Every other ``alg`` —
``none``, HMAC, RSA, anything unknown — is refused before any key is touched, and the algorithm
is pinned by the *key type*: a header algorithm that does not match the key is ``bad_alg``.
Headers are serialized as serde serializes the gateway's ``Header`` (members ``alg``, ``typ``,
``kid``, ``x5c`` in that order, compact JSON), base64url without padding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .errors import ConfigError, JoseError
from .limits import ALGORITHMS, MAX_JWS_BYTES

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_B64STD = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")

PrivateKey = Union[ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey]
PublicKey = Union[ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey]


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(s: str) -> bytes:
    """Strict base64url without padding: other alphabets, padding and non-canonical trailing
    bits are errors (as the gateway's decoder)."""
    if not isinstance(s, str) or not _B64URL.match(s) or len(s) % 4 == 1:
        raise ValueError("not base64url without padding")
    out = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if b64url(out) != s:
        raise ValueError("non-canonical base64url")
    return out


def b64std(data: bytes) -> str:
    """Standard base64 with padding (``x5c``)."""
    return base64.b64encode(data).decode("ascii")


def b64std_decode(s: str) -> bytes:
    """Strict standard base64 with padding."""
    if not isinstance(s, str) or not _B64STD.match(s) or len(s) % 4 != 0:
        raise ValueError("not standard base64")
    try:
        out = base64.b64decode(s, validate=True)
    except binascii.Error as e:
        raise ValueError(f"not standard base64: {e}") from None
    if b64std(out) != s:
        raise ValueError("non-canonical base64")
    return out


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _reject_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate member {k!r}")
        d[k] = v
    return d


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_loads_strict(data: bytes) -> Any:
    """JSON as serde_json reads it for fedgate's types: UTF-8, no duplicate members, no
    NaN/Infinity."""
    return json.loads(
        data.decode("utf-8"), object_pairs_hook=_reject_dupes, parse_constant=_no_constants
    )


def json_compact(value: Any) -> bytes:
    """Compact JSON as serde_json writes it (no spaces, non-ASCII unescaped)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Keys


class VerifyingKey:
    """A public key for one of the two allowed algorithms."""

    __slots__ = ("alg", "key", "_raw")

    def __init__(self, key: PublicKey):
        if isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(key.curve, ec.SECP256R1):
                raise JoseError("EC key on a curve other than P-256", reason="bad_alg")
            self.alg = "ES256"
            self._raw = key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        elif isinstance(key, ed25519.Ed25519PublicKey):
            self.alg = "EdDSA"
            self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raise JoseError("key is not P-256 or Ed25519", reason="bad_alg")
        self.key = key

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> VerifyingKey | None:
        """From a JWK's public members; ``None`` for key types fedgate cannot verify.
        Raises ``ValueError`` for a supported type with bad members."""
        kty, crv = jwk.get("kty"), jwk.get("crv")

        def coord(name: str) -> bytes:
            v = jwk.get(name)
            if not isinstance(v, str):
                raise ValueError(f'missing "{name}"')
            try:
                return b64url_decode(v)
            except ValueError:
                raise ValueError(f'"{name}" is not base64url') from None

        if kty == "EC" and crv == "P-256":
            x, y = coord("x"), coord("y")
            if len(x) != 32 or len(y) != 32:
                raise ValueError("P-256 coordinates must be 32 bytes")
            try:
                pub = ec.EllipticCurvePublicNumbers(
                    int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
                ).public_key()
            except ValueError as e:
                raise ValueError(f"P-256 point rejected: {e}") from None
            return cls(pub)
        if kty == "OKP" and crv == "Ed25519":
            x = coord("x")
            if len(x) != 32:
                raise ValueError("Ed25519 public key must be 32 bytes")
            return cls(ed25519.Ed25519PublicKey.from_public_bytes(x))
        return None

    @property
    def raw(self) -> bytes:
        """SEC1 uncompressed point for P-256, 32 bytes for Ed25519."""
        return self._raw

    def jwk_members(self) -> dict[str, str]:
        """Public JWK members in RFC 7638 (lexicographic) order."""
        if self.alg == "ES256":
            return {
                "crv": "P-256",
                "kty": "EC",
                "x": b64url(self._raw[1:33]),
                "y": b64url(self._raw[33:65]),
            }
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url(self._raw)}

    def thumbprint(self) -> str:
        """RFC 7638 JWK thumbprint (SHA-256, base64url): the ``kid`` fedgate gives its keys."""
        return b64url(sha256(json_compact(self.jwk_members())))

    def verify(self, alg: str, message: bytes, signature: bytes) -> None:
        """Raises :class:`JoseError` (``bad_alg`` or ``bad_signature``)."""
        if alg != self.alg:
            raise JoseError(f"header says {alg} but the key is for {self.alg}", reason="bad_alg")
        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                if len(signature) != 64:
                    raise InvalidSignature()
                r = int.from_bytes(signature[:32], "big")
                s = int.from_bytes(signature[32:], "big")
                self.key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
            else:
                self.key.verify(signature, message)
        except InvalidSignature:
            raise JoseError("signature does not verify", reason="bad_signature") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyingKey) and (self.alg, self._raw) == (other.alg, other._raw)

    def __hash__(self) -> int:
        return hash((self.alg, self._raw))

    def __repr__(self) -> str:
        return f"VerifyingKey({self.alg}, {self._raw[:8].hex()})"


class SigningKey:
    """A private P-256 or Ed25519 key with its ``kid`` (RFC 7638 thumbprint). Its ``repr``
    shows the ``kid`` only."""

    __slots__ = ("_key", "public", "kid")

    def __init__(self, key: PrivateKey):
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if not isinstance(key.curve, ec.SECP256R1):
                raise JoseError("EC key on a curve other than P-256", reason="bad_alg")
        elif not isinstance(key, ed25519.Ed25519PrivateKey):
            raise JoseError("not a P-256 or Ed25519 private key", reason="bad_alg")
        self._key = key
        self.public = VerifyingKey(key.public_key())
        self.kid = self.public.thumbprint()

    @classmethod
    def from_pem(cls, data: bytes, password: bytes | None = None) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError) as e:
            # aws-lc (the gateway's crypto) writes Ed25519 keys as PKCS#8 v2 (RFC 5958, with
            # the public key), which some OpenSSL builds refuse: read those by hand.
            ed = _ed25519_pkcs8_v2(data) if password is None else None
            if ed is None:
                raise JoseError(f"not a PEM private key: {type(e).__name__}", reason="malformed") from None
            key = ed
        return cls(key)  # type: ignore[arg-type]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], password: bytes | None = None) -> SigningKey:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        return cls.from_pem(data, password)

    @classmethod
    def generate(cls, alg: str = "ES256") -> SigningKey:
        if alg == "ES256":
            return cls(ec.generate_private_key(ec.SECP256R1()))
        if alg == "EdDSA":
            return cls(ed25519.Ed25519PrivateKey.generate())
        raise JoseError(f"algorithm not allowed: {alg!r}", reason="bad_alg")

    @property
    def alg(self) -> str:
        return self.public.alg

    @property
    def private_key(self) -> PrivateKey:
        return self._key

    def sign_raw(self, message: bytes) -> bytes:
        """ES256: raw ``r||s`` (32 bytes each, big-endian); EdDSA: the 64-byte signature."""
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self._key.sign(message, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey({self.alg}, kid={self.kid})"


_ED25519_OID = bytes.fromhex("06032b6570")


def _der(buf: bytes, i: int) -> tuple[int, bytes, int]:
    """One DER TLV at ``i``: (tag, value, next index). ``ValueError`` on bad input."""
    if i + 2 > len(buf):
        raise ValueError("truncated")
    tag, n = buf[i], buf[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 3 or i + k > len(buf):
            raise ValueError("bad length")
        n = int.from_bytes(buf[i : i + k], "big")
        i += k
    if i + n > len(buf):
        raise ValueError("truncated")
    return tag, buf[i : i + n], i + n


def _ed25519_pkcs8_v2(pem: bytes) -> ed25519.Ed25519PrivateKey | None:
    """An Ed25519 key from PKCS#8 v1/v2 PEM (OneAsymmetricKey), or ``None``."""
    try:
        text = pem.decode("ascii")
        body = text.split("-----BEGIN PRIVATE KEY-----", 1)[1].split("-----END PRIVATE KEY-----", 1)[0]
        der = base64.b64decode("".join(body.split()), validate=True)
        tag, seq, end = _der(der, 0)
        if tag != 0x30 or end != len(der):
            return None
        tag, version, i = _der(seq, 0)
        if tag != 0x02 or version not in (b"\x00", b"\x01"):
            return None
        tag, alg, i = _der(seq, i)
        if tag != 0x30 or alg != _ED25519_OID:
            return None
        tag, octets, i = _der(seq, i)
        if tag != 0x04:
            return None
        tag, seed, _ = _der(octets, 0)
        if tag != 0x04 or len(seed) != 32:
            return None
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        while i < len(seq):  # [0] attributes, [1] publicKey: the public key must match
            tag, val, i = _der(seq, i)
            if tag in (0x81, 0xA1):
                pub = val[1:] if tag == 0x81 else _der(val, 0)[1][1:]
                raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                if pub != raw:
                    return None
        return key
    except (ValueError, IndexError, UnicodeDecodeError, binascii.Error):
        return None


# ---------------------------------------------------------------------------------------------
# Compact JWS


@dataclass(frozen=True)
class Compact:
    """A compact JWS split into its parts; nothing verified yet."""

    header: Mapping[str, Any]
    alg: str
    signing_input: str
    payload: bytes
    signature: bytes

    @property
    def typ(self) -> str | None:
        return self.header.get("typ")

    @property
    def kid(self) -> str | None:
        return self.header.get("kid")

    @property
    def x5c(self) -> list[str] | None:
        return self.header.get("x5c")

    def verify_with(self, key: VerifyingKey) -> None:
        key.verify(self.alg, self.signing_input.encode("ascii"), self.signature)


def _malformed(m: str) -> JoseError:
    return JoseError(f"not a compact JWS: {m}", reason="malformed")


def parse_compact(token: str) -> Compact:
    """Splits and decodes a compact JWS, checking ``alg`` against the allow-list and refusing
    ``crit`` — in the gateway's order, so each failure has the gateway's reason code."""
    if len(token.encode("utf-8", "surrogatepass")) > MAX_JWS_BYTES:
        raise _malformed(f"longer than {MAX_JWS_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise _malformed("expected three dot-separated parts")
    h, p, s = parts
    try:
        hbytes = b64url_decode(h)
    except ValueError:
        raise _malformed("header is not base64url") from None
    try:
        header = json_loads_strict(hbytes)
    except (ValueError, UnicodeDecodeError) as e:
        raise _malformed(f"header JSON: {e}") from None
    if not isinstance(header, dict):
        raise _malformed("header JSON: not an object")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _malformed('header JSON: missing or non-string "alg"')
    for name in ("typ", "kid"):
        if header.get(name) is not None and not isinstance(header[name], str):
            raise _malformed(f'header JSON: "{name}" must be a string')
    x5c = header.get("x5c")
    if x5c is not None and not (isinstance(x5c, list) and all(isinstance(c, str) for c in x5c)):
        raise _malformed('header JSON: "x5c" must be an array of strings')
    if alg not in ALGORITHMS:
        raise JoseError(f"algorithm not allowed: {alg[:32]!r}", reason="bad_alg")
    if header.get("crit") is not None:
        raise _malformed("crit header parameters are not supported")
    try:
        payload = b64url_decode(p)
    except ValueError:
        raise _malformed("payload is not base64url") from None
    try:
        signature = b64url_decode(s)
    except ValueError:
        raise _malformed("signature is not base64url") from None
    if len(signature) != 64:
        raise JoseError("signature does not verify", reason="bad_signature")
    # Normalize absent/null optional members as serde's Option does.
    clean = {k: v for k, v in header.items() if v is not None}
    return Compact(clean, alg, f"{h}.{p}", payload, signature)


def encode_header(alg: str, typ: str, *, kid: str | None = None, x5c: Sequence[str] | None = None) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": alg, "typ": typ}
    if kid is not None:
        header["kid"] = kid
    if x5c is not None:
        header["x5c"] = list(x5c)
    return header


def signing_input(header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    return f"{b64url(json_compact(dict(header)))}.{b64url(json_compact(dict(claims)))}"


SIGNATURE_B64_LEN = 86
"""Length of a base64url 64-byte signature (both algorithms): sizes are known before signing."""


def sign_compact(
    key: SigningKey,
    typ: str,
    claims: Mapping[str, Any],
    *,
    use_kid: bool = False,
    x5c: Sequence[str] | None = None,
) -> str:
    """A compact JWS of ``claims`` (``alg`` from the key; ``kid`` and/or ``x5c`` as asked)."""
    header = encode_header(key.alg, typ, kid=key.kid if use_kid else None, x5c=x5c)
    si = signing_input(header, claims)
    return f"{si}.{b64url(key.sign_raw(si.encode('ascii')))}"


def decode_payload_unverified(token: str) -> dict[str, Any]:
    """The claims of a compact JWS *without verifying anything* (for display and routing only)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _malformed("expected three dot-separated parts")
    try:
        v = json_loads_strict(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise _malformed("payload is not base64url JSON") from None
    if not isinstance(v, dict):
        raise _malformed("payload is not a JSON object")
    return v
