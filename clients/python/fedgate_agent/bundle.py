"""SPIFFE trust bundles (SPEC section 2), read as ``gateway/src/spiffe/bundle.rs`` reads them.

A bundle is a JWK Set: ``x509-svid`` keys (one CA certificate in ``x5c``) and ``jwt-svid`` keys
(a P-256 ``EC`` or Ed25519 ``OKP`` public key with a unique ``kid``), plus ``spiffe_sequence``
and ``spiffe_refresh_hint``. Unknown ``use`` values and unsupported key types are skipped.

Key roles: a ``jwt-svid`` key of a fedgate bundle carries ``"fedgate_role"`` (``idp``,
``gateway``, ``audit``, ``witness``) and a verifier asks for a key in the role it needs
(:meth:`Bundle.jwt_key`). A key without the member has no role. Bundles written before roles
existed carry the member on no key at all; for those, :meth:`Bundle.jwt_key` falls back to the
old rule (any key of the issuer's domain) — see :attr:`Bundle.has_roles`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import BundleError, ChainError, ConfigError, IdError
from .jose import VerifyingKey, b64std_decode, json_loads_strict
from .limits import MAX_BUNDLE_BYTES, MAX_BUNDLE_KEYS, MAX_KID_BYTES, ROLE_MEMBER
from .spiffe_id import valid_trust_domain

USE_X509 = "x509-svid"
USE_JWT = "jwt-svid"


@dataclass(frozen=True)
class JwtAuthority:
    kid: str
    key: VerifyingKey
    role: str | None
    """The ``fedgate_role`` member as written (``None``: absent). Unknown strings are kept and
    match no role."""


@dataclass(frozen=True)
class Bundle:
    trust_domain: str
    x509_authorities: tuple[x509.Certificate, ...]
    jwt_authorities: tuple[JwtAuthority, ...]
    sequence: int | None = None
    refresh_hint: int | None = None
    skipped: tuple[str, ...] = ()
    has_roles: bool = False
    """Whether any ``jwt-svid`` key of the document carries ``fedgate_role``. When none does
    (bundles written by a gateway from before key roles), role checks fall back to "any key of
    the issuer's domain", which is what such a gateway itself accepts."""

    @classmethod
    def parse(cls, trust_domain: str, data: bytes | str) -> Bundle:
        try:
            valid_trust_domain(trust_domain)
        except IdError as e:
            raise BundleError(f"{trust_domain!r} is not a trust domain: {e.message}") from None
        raw = data.encode() if isinstance(data, str) else data
        if len(raw) > MAX_BUNDLE_BYTES:
            raise BundleError(f"bundle larger than {MAX_BUNDLE_BYTES} bytes")
        try:
            doc = json_loads_strict(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BundleError(f"bundle is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise BundleError("bundle is not a JSON object")
        if "keys" not in doc:
            raise BundleError('bundle has no "keys" member')
        keys = doc["keys"]
        if not isinstance(keys, list):
            raise BundleError('"keys" must be an array of objects')
        if len(keys) > MAX_BUNDLE_KEYS:
            raise BundleError(f"more than {MAX_BUNDLE_KEYS} keys")

        def number(name: str) -> int | None:
            v = doc.get(name)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BundleError(f"{name} must be a non-negative integer")
            return v

        sequence, hint = number("spiffe_sequence"), number("spiffe_refresh_hint")
        x509s: list[x509.Certificate] = []
        x509_der: list[bytes] = []
        jwts: list[JwtAuthority] = []
        skipped: list[str] = []
        kids: set[str] = set()
        has_roles = False
        for i, k in enumerate(keys):
            if not isinstance(k, dict):
                raise BundleError('"keys" must be an array of objects')
            use = k.get("use")
            if use is None:
                raise BundleError(f'keys[{i}]: missing "use"')
            if not isinstance(use, str):
                raise BundleError(f'keys[{i}]: "use" must be a string')
            if use == USE_X509:
                x5c = k.get("x5c")
                if not isinstance(x5c, list):
                    raise BundleError(f'keys[{i}]: x509-svid key without "x5c" array')
                if len(x5c) != 1:
                    raise BundleError(
                        f'keys[{i}]: x509-svid "x5c" must hold exactly one certificate, found {len(x5c)}'
                    )
                try:
                    der = b64std_decode(x5c[0]) if isinstance(x5c[0], str) else None
                except ValueError:
                    der = None
                if der is None:
                    raise BundleError(f"keys[{i}]: x5c entry is not standard base64")
                if der in x509_der:
                    raise BundleError(f"keys[{i}]: duplicate x509-svid authority")
                try:
                    cert = x509.load_der_x509_certificate(der)
                except ValueError as e:
                    raise BundleError(f"keys[{i}]: x5c certificate does not parse: {e}") from None
                x509_der.append(der)
                x509s.append(cert)
            elif use == USE_JWT:
                kid = k.get("kid")
                if kid is None or kid == "":
                    raise BundleError(f'keys[{i}]: jwt-svid key without "kid"')
                if not isinstance(kid, str):
                    raise BundleError(f'keys[{i}]: "kid" must be a string')
                if len(kid.encode()) > MAX_KID_BYTES:
                    raise BundleError(f"keys[{i}]: kid too long")
                if kid in kids:
                    raise BundleError(f"duplicate jwt-svid kid {kid!r}")
                kids.add(kid)
                role = k.get(ROLE_MEMBER)
                if role is not None:
                    if not isinstance(role, str):
                        raise BundleError(f'keys[{i}]: "{ROLE_MEMBER}" must be a string')
                    has_roles = True
                try:
                    vk = VerifyingKey.from_jwk(k)
                except ValueError as e:
                    raise BundleError(f"keys[{i}]: {e}") from None
                if vk is None:
                    skipped.append(
                        f"keys[{i}]: jwt-svid key {kid!r} of unsupported type "
                        f"{k.get('kty', '?')}/{k.get('crv', '-')}"
                    )
                    continue
                if any(a.key == vk for a in jwts):
                    raise BundleError(f"keys[{i}]: the same public key appears twice")
                jwts.append(JwtAuthority(kid, vk, role))
            else:
                skipped.append(f"keys[{i}]: unknown use {use!r}")
        return cls(
            trust_domain,
            tuple(x509s),
            tuple(jwts),
            sequence,
            hint,
            tuple(skipped),
            has_roles,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], trust_domain: str | None = None) -> Bundle:
        """Loads ``<trust-domain>.json`` (the trust domain is the file name unless given)."""
        p = Path(path)
        td = trust_domain or p.name.removesuffix(".json")
        try:
            with p.open("rb") as f:
                data = f.read(MAX_BUNDLE_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"{p}: {e.strerror}") from None
        try:
            return cls.parse(td, data)
        except BundleError as e:
            raise BundleError(f"{p}: {e.message}") from None

    def authority(self, kid: str) -> JwtAuthority | None:
        for a in self.jwt_authorities:
            if a.kid == kid:
                return a
        return None

    def jwt_key(self, kid: str, role: str, *, link: int | None = None) -> VerifyingKey:
        """The key ``kid`` for signatures of ``role``.

        ``unknown_key`` if the kid is not in the bundle; ``wrong_signer`` if the key has another
        role or none (fail closed). Fallback: when the bundle carries no roles at all (written
        by a gateway from before key roles), any key of the domain is accepted for any role,
        as that gateway itself does.
        """
        a = self.authority(kid)
        if a is None:
            raise ChainError(
                f"kid {kid!r} is not a jwt-svid authority of {self.trust_domain}",
                reason="unknown_key",
                link=link,
            )
        # Fallback for bundles from before key roles: when no key of this bundle carries
        # `fedgate_role`, the role is not checked (any key of the issuer's domain verifies, as
        # the gateway that wrote the bundle accepts). As soon as one key carries a role, every
        # key is held to its own, and a key without the member has none: fail closed.
        if self.has_roles and a.role != role:
            has = a.role if a.role is not None else "role-less"
            raise ChainError(
                f"key {kid!r} of {self.trust_domain} is a {has} key, not a {role} key",
                reason="wrong_signer",
                link=link,
            )
        return a.key

    def keys_with_role(self, role: str) -> tuple[JwtAuthority, ...]:
        return tuple(a for a in self.jwt_authorities if a.role == role)

    def ca_pem(self) -> str:
        """The ``x509-svid`` authorities as PEM (for TLS trust stores)."""
        return "".join(
            c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in self.x509_authorities
        )

    def summary(self) -> dict[str, Any]:
        return {
            "trust_domain": self.trust_domain,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint,
            "x509_authorities": [c.subject.rfc4514_string() for c in self.x509_authorities],
            "jwt_authorities": [
                {"kid": a.kid, "alg": a.key.alg, "role": a.role} for a in self.jwt_authorities
            ],
            "has_roles": self.has_roles,
            "skipped": list(self.skipped),
        }


@dataclass(frozen=True)
class BundleSet(Mapping[str, Bundle]):
    """The bundles an agent trusts, one per trust domain."""

    bundles: Mapping[str, Bundle] = field(default_factory=dict)

    @classmethod
    def of(cls, *bundles: Bundle) -> BundleSet:
        return cls({b.trust_domain: b for b in bundles})

    @classmethod
    def load_dir(cls, path: str | os.PathLike[str]) -> BundleSet:
        """Every ``<trust-domain>.json`` in ``path`` (as the gateway's ``bundles_dir``)."""
        d = Path(path)
        try:
            names = sorted(os.listdir(d))
        except OSError as e:
            raise ConfigError(f"{d}: {e.strerror}") from None
        out: dict[str, Bundle] = {}
        problems: list[str] = []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                b = Bundle.load(d / name)
            except (BundleError, ConfigError) as e:
                problems.append(e.message)
                continue
            out[b.trust_domain] = b
        if problems:
            raise BundleError("; ".join(problems))
        return cls(out)

    def __getitem__(self, td: str) -> Bundle:
        return self.bundles[td]

    def __iter__(self) -> Iterator[str]:
        return iter(self.bundles)

    def __len__(self) -> int:
        return len(self.bundles)

    def with_bundle(self, bundle: Bundle) -> BundleSet:
        d = dict(self.bundles)
        d[bundle.trust_domain] = bundle
        return BundleSet(d)

    def ca_pem(self, trust_domain: str) -> str:
        b = self.bundles.get(trust_domain)
        if b is None or not b.x509_authorities:
            raise ConfigError(f"no x509-svid authorities for trust domain {trust_domain}")
        return b.ca_pem()


def load_bundles(source: BundleSet | Bundle | str | os.PathLike[str] | None = None) -> BundleSet:
    """A :class:`BundleSet` from a set, one bundle, a bundle directory, or a single
    ``<td>.json`` file; with no argument, from ``$FEDGATE_BUNDLES``."""
    if isinstance(source, BundleSet):
        return source
    if isinstance(source, Bundle):
        return BundleSet.of(source)
    if source is None:
        env = os.environ.get("FEDGATE_BUNDLES")
        if not env:
            raise ConfigError("no bundles given and FEDGATE_BUNDLES is not set")
        source = env
    p = Path(source)
    if p.is_dir():
        return BundleSet.load_dir(p)
    return BundleSet.of(Bundle.load(p))


def bundle_json(bundle_doc: Mapping[str, Any]) -> str:
    """Pretty JSON of a bundle document (for tests and tools that rewrite bundles)."""
    return json.dumps(bundle_doc, indent=2) + "\n"
