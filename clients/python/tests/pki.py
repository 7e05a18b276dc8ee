"""A development trust domain built in Python (CA, IdP and gateway keys, agent SVIDs, bundle),
for tests that need key types or certificates `fedgate init` does not make (Ed25519)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgate_agent import SigningKey, X509Svid
from fedgate_agent.jose import b64std


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class PyDomain:
    td: str
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    idp: SigningKey
    gateway: SigningKey
    roles: bool = True
    extra_keys: list[tuple[SigningKey, str | None]] = field(default_factory=list)

    @classmethod
    def create(cls, td: str, *, alg: str = "EdDSA", roles: bool = True) -> PyDomain:
        now = dt.datetime.now(dt.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{td} test CA"))
            .issuer_name(_name(f"{td} test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{td}")]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cls(td, ca_key, ca, SigningKey.generate(alg), SigningKey.generate(alg), roles)

    def svid(self, path: str, *, alg: str = "EdDSA", ca_flag: bool = False, days: float = 1, start: float = -5) -> X509Svid:
        now = dt.datetime.now(dt.timezone.utc)
        key = ed25519.Ed25519PrivateKey.generate() if alg == "EdDSA" else ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(path))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(minutes=start))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{self.td}{path}")]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        # The private key of a leaf marked CA cannot be an X509Svid (check_leaf refuses it);
        # such certificates are built for verification tests only.
        if ca_flag:
            return cert  # type: ignore[return-value]
        return X509Svid.from_parts([cert], SigningKey(key))

    def bundle_doc(self) -> dict:
        keys: list[dict] = [
            {"use": "x509-svid", "x5c": [b64std(self.ca.public_bytes(serialization.Encoding.DER))]}
        ]
        for k, role in [(self.idp, "idp"), (self.gateway, "gateway"), *self.extra_keys]:
            jwk = {"use": "jwt-svid", "kid": k.kid, **k.public.jwk_members()}
            if self.roles and role is not None:
                jwk["fedgate_role"] = role
            keys.append(jwk)
        return {"keys": keys, "spiffe_sequence": 1, "spiffe_refresh_hint": 300}

    def write_bundle(self, d: Path) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{self.td}.json"
        p.write_text(json.dumps(self.bundle_doc(), indent=2))
        return p
