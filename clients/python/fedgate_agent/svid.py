"""X509-SVIDs: loading an agent's SVID and key (files or the SPIFFE Workload API), and
validating SVIDs as the X509-SVID standard and ``gateway/src/spiffe/svid.rs`` do.

Validation: the leaf has exactly one URI SAN holding a SPIFFE ID with a path, is not a CA, has
key usage with digitalSignature and without keyCertSign/cRLSign; intermediates are CAs with
keyCertSign; the path verifies (signatures, names, validity times) to an ``x509-svid``
authority of the bundle of the SPIFFE ID's *own* trust domain, so a partner's CA can never vouch
for an identity in another domain.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from .bundle import BundleSet
from .errors import ConfigError, IdError, JoseError, SvidError
from .jose import SigningKey, VerifyingKey, b64std, b64url, sha256
from .limits import MAX_SVID_CERT_BYTES, MAX_SVID_CHAIN_CERTS
from .spiffe_id import SpiffeId

Usage = Literal["any", "client", "server"]


@dataclass(frozen=True)
class VerifiedSvid:
    spiffe_id: SpiffeId
    not_after: int
    leaf_sha256: bytes


def _ext(cert: x509.Certificate, cls: type, i: int) -> Any:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as e:  # duplicate or unparsable extensions
        raise SvidError(f"certificate {i} does not parse: {e}") from None


def leaf_spiffe_id(cert: x509.Certificate) -> SpiffeId:
    """The single SPIFFE ID of a leaf (URI SAN), with the standard's SAN rules."""
    san = _ext(cert, x509.SubjectAlternativeName, 0)
    if san is None:
        raise SvidError("leaf has no URI SAN")
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise SvidError("leaf has no URI SAN")
    if len(uris) > 1:
        raise SvidError("leaf has more than one URI SAN")
    try:
        sid = SpiffeId(uris[0])
    except IdError as e:
        raise SvidError(f"leaf URI SAN is not a valid SPIFFE ID: {e.message}") from None
    if not sid.path:
        raise SvidError("leaf SPIFFE ID has no path (a trust domain ID cannot be an SVID)")
    return sid


def check_leaf(cert: x509.Certificate) -> SpiffeId:
    sid = leaf_spiffe_id(cert)
    bc = _ext(cert, x509.BasicConstraints, 0)
    if bc is not None and bc.ca:
        raise SvidError("leaf is a CA")
    ku = _ext(cert, x509.KeyUsage, 0)
    if ku is None:
        raise SvidError("leaf has no key usage extension")
    if not ku.digital_signature:
        raise SvidError("leaf key usage lacks digitalSignature")
    if ku.key_cert_sign:
        raise SvidError("leaf key usage has keyCertSign")
    if ku.crl_sign:
        raise SvidError("leaf key usage has cRLSign")
    return sid


def _check_intermediate(i: int, cert: x509.Certificate) -> None:
    bc = _ext(cert, x509.BasicConstraints, i)
    if bc is None or not bc.ca:
        raise SvidError(f"intermediate {i} is not a CA")
    ku = _ext(cert, x509.KeyUsage, i)
    if ku is None or not ku.key_cert_sign:
        raise SvidError(f"intermediate {i} lacks keyCertSign")


def _parse(i: int, der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise SvidError(f"certificate {i} does not parse: {e}") from None


def check_structure(chain: Sequence[bytes]) -> tuple[SpiffeId, list[x509.Certificate]]:
    """The structural rules only (no bundle, no time)."""
    if not chain:
        raise SvidError("no certificate presented")
    if len(chain) > MAX_SVID_CHAIN_CERTS or any(len(c) > MAX_SVID_CERT_BYTES for c in chain):
        raise SvidError(
            f"chain has more than {MAX_SVID_CHAIN_CERTS} certificates or a certificate over "
            f"{MAX_SVID_CERT_BYTES} bytes"
        )
    certs = [_parse(i, d) for i, d in enumerate(chain)]
    sid = check_leaf(certs[0])
    for i, c in enumerate(certs[1:], start=1):
        _check_intermediate(i, c)
    return sid, certs


def _times(cert: x509.Certificate, now: int) -> None:
    if now < int(cert.not_valid_before_utc.timestamp()):
        raise SvidError("certificate not yet valid")
    if now > int(cert.not_valid_after_utc.timestamp()):
        raise SvidError("certificate expired")


def _eku_ok(cert: x509.Certificate, usage: Usage) -> bool:
    if usage == "any":
        return True
    eku = _ext(cert, x509.ExtendedKeyUsage, 0)
    if eku is None:
        return True
    want = ExtendedKeyUsageOID.CLIENT_AUTH if usage == "client" else ExtendedKeyUsageOID.SERVER_AUTH
    return want in eku


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def verify_svid(
    chain: Sequence[bytes],
    bundles: BundleSet,
    now: int | None = None,
    usage: Usage = "any",
) -> VerifiedSvid:
    """Validates an X509-SVID chain (DER, leaf first) at ``now`` against the bundle of the
    leaf's own trust domain. Raises :class:`SvidError` (``bad_svid`` / ``unknown_domain``)."""
    t = int(time.time()) if now is None else now
    sid, certs = check_structure(chain)
    bundle = bundles.get(sid.trust_domain)
    if bundle is None:
        raise SvidError(f"no bundle for trust domain {sid.trust_domain}", reason="unknown_domain")
    leaf = certs[0]
    _times(leaf, t)
    if not _eku_ok(leaf, usage):
        raise SvidError(f"leaf is not valid for {usage} authentication")
    anchors = bundle.x509_authorities
    intermediates = certs[1:]

    def build(cert: x509.Certificate, used: frozenset[int], depth: int) -> bool:
        if any(_issued_by(cert, a) for a in anchors):
            return True
        if depth >= MAX_SVID_CHAIN_CERTS:
            return False
        for j, inter in enumerate(intermediates):
            if j in used or not _issued_by(cert, inter):
                continue
            _times(inter, t)
            if build(inter, used | {j}, depth + 1):
                return True
        return False

    if not build(leaf, frozenset(), 0):
        raise SvidError(f"path does not verify to an authority of {sid.trust_domain}")
    return VerifiedSvid(sid, int(leaf.not_valid_after_utc.timestamp()), sha256(chain[0]))


def leaf_verifying_key(cert: x509.Certificate) -> VerifyingKey:
    """The leaf's public key, for verifying a link it signed (P-256 or Ed25519 only)."""
    try:
        return VerifyingKey(cert.public_key())  # type: ignore[arg-type]
    except JoseError as e:
        raise SvidError(f"certificate 0 does not parse: {e.message}") from None


# ---------------------------------------------------------------------------------------------
# An agent's own SVID


@dataclass(frozen=True)
class X509Svid:
    """An agent's X509-SVID (leaf first) and its private key. ``repr`` never shows the key."""

    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]
    signing_key: SigningKey = field(repr=False)
    source: str = "memory"

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes, *, source: str = "memory") -> X509Svid:
        try:
            certs = tuple(x509.load_pem_x509_certificates(cert_pem))
        except ValueError as e:
            raise SvidError(f"certificate PEM does not parse: {e}") from None
        try:
            key = SigningKey.from_pem(key_pem)
        except JoseError as e:
            raise SvidError(f"private key: {e.message}") from None
        return cls.from_parts(certs, key, source=source)

    @classmethod
    def from_parts(
        cls, certs: Sequence[x509.Certificate], key: SigningKey | Any, *, source: str = "memory"
    ) -> X509Svid:
        if not certs:
            raise SvidError("no certificate")
        sk = key if isinstance(key, SigningKey) else SigningKey(key)
        sid = check_leaf(certs[0])
        try:
            leaf_key = VerifyingKey(certs[0].public_key())  # type: ignore[arg-type]
        except JoseError as e:
            raise SvidError(f"leaf key: {e.message}") from None
        if leaf_key != sk.public:
            raise SvidError("the private key does not belong to the leaf certificate")
        return cls(sid, tuple(certs), sk, source)

    @classmethod
    def load(cls, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> X509Svid:
        """From a PEM certificate chain (leaf first) and a PKCS#8 PEM key (``fedgate init``'s
        ``agents/<type>/<instance>.pem`` and ``.key``)."""
        try:
            cert_pem = Path(cert).read_bytes()
            key_pem = Path(key).read_bytes()
        except OSError as e:
            raise ConfigError(f"{e.filename}: {e.strerror}") from None
        return cls.from_pem(cert_pem, key_pem, source=f"file:{cert}")

    @classmethod
    def from_workload_api(cls, socket: str | None = None) -> X509Svid:
        """The default X509-SVID from the SPIFFE Workload API (py-spiffe, ``pip install
        'fedgate-agent[spiffe]'``), at ``socket`` or ``$SPIFFE_ENDPOINT_SOCKET``.
        py-spiffe is imported only here."""
        try:
            import spiffe  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError(
                "the SPIFFE Workload API needs py-spiffe: pip install 'fedgate-agent[spiffe]'"
            ) from None
        addr = socket or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
        if not addr:
            raise ConfigError("no Workload API socket: pass socket= or set SPIFFE_ENDPOINT_SOCKET")
        try:
            client = spiffe.WorkloadApiClient(socket_path=addr)
            try:
                svid = client.fetch_x509_svid()
            finally:
                close = getattr(client, "close", None)
                if callable(close):
                    close()
        except Exception as e:  # py-spiffe raises its own hierarchy (and grpc's)
            raise ConfigError(f"Workload API at {addr}: {type(e).__name__}: {e}") from None
        chain = list(getattr(svid, "cert_chain", None) or [svid.leaf])
        return cls.from_parts(chain, svid.private_key, source=f"workload-api:{addr}")

    @property
    def leaf(self) -> x509.Certificate:
        return self.cert_chain[0]

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id.trust_domain

    @property
    def der_chain(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in self.cert_chain]

    @property
    def x5c(self) -> list[str]:
        """The chain as a JWS ``x5c`` (standard base64 DER, leaf first)."""
        return [b64std(d) for d in self.der_chain]

    @property
    def x5t_s256(self) -> str:
        """RFC 8705 thumbprint of the leaf (what a ``cnf``-bound token names)."""
        return b64url(sha256(self.der_chain[0]))

    @property
    def not_after(self) -> int:
        return int(self.leaf.not_valid_after_utc.timestamp())

    def cert_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.cert_chain)

    def encrypted_key_pem(self, password: bytes) -> bytes:
        """The key as encrypted PKCS#8 PEM (for TLS libraries that only read files)."""
        return self.signing_key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )

    def verify(self, bundles: BundleSet, now: int | None = None, usage: Usage = "any") -> VerifiedSvid:
        return verify_svid(self.der_chain, bundles, now, usage)


def load_svid(
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    *,
    socket: str | None = None,
) -> X509Svid:
    """An agent's SVID: from ``cert``/``key`` files; else from the Workload API when a socket is
    given; else from ``$FEDGATE_CERT``/``$FEDGATE_KEY``; else from the Workload API at
    ``$SPIFFE_ENDPOINT_SOCKET``."""
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise ConfigError("give both cert and key")
        return X509Svid.load(cert, key)
    if socket:
        return X509Svid.from_workload_api(socket)
    env_cert, env_key = os.environ.get("FEDGATE_CERT"), os.environ.get("FEDGATE_KEY")
    if env_cert and env_key:
        return X509Svid.load(env_cert, env_key)
    if os.environ.get("SPIFFE_ENDPOINT_SOCKET"):
        return X509Svid.from_workload_api()
    raise ConfigError(
        "no SVID: pass cert= and key=, set FEDGATE_CERT and FEDGATE_KEY, "
        "or configure a Workload API socket (SPIFFE_ENDPOINT_SOCKET)"
    )
