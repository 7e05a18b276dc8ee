"""X509-SVIDs: loading an agent's SVID and key (files or the SPIFFE Workload API), and
validating SVIDs as the X509-SVID standard and ``gateway/src/spiffe/svid.rs`` do.

Validation: the leaf has exactly one URI SAN holding a SPIFFE ID with a path, is not a CA, has
key usage with digitalSignature and without keyCertSign/cRLSign; intermediates are CAs with
keyCertSign; the path verifies (signatures, names, validity times) to an ``x509-svid``
authority of the bundle of the SPIFFE ID's *own* trust domain, so a partner's CA can never vouch
for an identity in another domain.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Sequence, Union, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from .bundle import BundleSet
from .errors import ConfigError, IdError, JoseError, SvidError
from .jose import SigningKey, VerifyingKey, b64std, b64url, sha256
from .limits import MAX_SVID_CERT_BYTES, MAX_SVID_CHAIN_CERTS
from .spiffe_id import SpiffeId

log = logging.getLogger("fedgate_agent")

Usage = Literal["any", "client", "server"]

WORKLOAD_API_TIMEOUT = 10.0
"""Seconds to wait for the Workload API's first answer before giving up (``ConfigError``)."""
WORKLOAD_API_REOPEN_INTERVAL = 5.0
"""Seconds between attempts to reopen a Workload API watch that failed (meanwhile the last
SVID is used for as long as it is valid)."""


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
        'fedgate-agent[spiffe]'``), at ``socket`` or ``$SPIFFE_ENDPOINT_SOCKET``: one fetch, a
        snapshot that expires. A long-running agent uses :class:`WorkloadApiSvidSource`
        (:func:`svid_source`), which follows renewals. py-spiffe is imported only here."""
        spiffe = _import_spiffe()
        addr = _workload_socket(socket)
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
        return _from_py_spiffe(svid, addr)

    def current(self) -> X509Svid:
        """This SVID (an ``X509Svid`` is its own, unchanging, :class:`SvidSource`)."""
        return self

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


def _import_spiffe() -> Any:
    try:
        import spiffe  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ConfigError(
            "the SPIFFE Workload API needs py-spiffe: pip install 'fedgate-agent[spiffe]'"
        ) from None
    return spiffe


def _workload_socket(socket: str | None) -> str:
    addr = socket or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    if not addr:
        raise ConfigError("no Workload API socket: pass socket= or set SPIFFE_ENDPOINT_SOCKET")
    return addr


def _from_py_spiffe(svid: Any, addr: str) -> X509Svid:
    chain = list(getattr(svid, "cert_chain", None) or [svid.leaf])
    return X509Svid.from_parts(chain, svid.private_key, source=f"workload-api:{addr}")


# ---------------------------------------------------------------------------------------------
# SVIDs that renew


@runtime_checkable
class SvidSource(Protocol):
    """Where the agent's current SVID comes from. An :class:`X509Svid` is a source of itself;
    :class:`SvidFiles` and :class:`WorkloadApiSvidSource` follow renewals. Everything in the SDK
    that signs or connects asks ``current()`` at that moment."""

    @property
    def spiffe_id(self) -> SpiffeId: ...

    def current(self) -> X509Svid: ...


SvidLike = Union[X509Svid, SvidSource]


def _file_sig(*paths: Path) -> tuple[Any, ...]:
    out = []
    for p in paths:
        st = p.stat()
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


class SvidFiles:
    """An SVID in PEM files (``cert``: chain, leaf first; ``key``: PKCS#8), re-read when either
    file changes (a sidecar such as spiffe-helper rewrites them before expiry). A pair that does
    not load — caught between the two writes, or of another SPIFFE ID — is logged and the last
    good SVID stays in force until the files change again."""

    def __init__(self, cert: str | os.PathLike[str], key: str | os.PathLike[str]):
        self.cert, self.key = Path(cert), Path(key)
        self._lock = threading.Lock()
        self._sig = self._stat()
        self._svid = X509Svid.load(self.cert, self.key)
        self.reloads = 0

    def _stat(self) -> tuple[Any, ...]:
        try:
            return _file_sig(self.cert, self.key)
        except OSError as e:
            raise ConfigError(f"{e.filename}: {e.strerror}") from None

    @property
    def spiffe_id(self) -> SpiffeId:
        return self._svid.spiffe_id

    def current(self) -> X509Svid:
        try:
            sig = _file_sig(self.cert, self.key)
        except OSError:
            return self._svid
        if sig != self._sig:
            with self._lock:
                if sig != self._sig:
                    self._sig = sig
                    try:
                        new = X509Svid.load(self.cert, self.key)
                    except (SvidError, ConfigError) as e:
                        log.warning("SVID files not re-read, keeping the last good SVID: %s", e.message)
                        return self._svid
                    if new.spiffe_id != self._svid.spiffe_id:
                        log.error("SVID files now hold %s, not %s: ignored", new.spiffe_id, self._svid.spiffe_id)
                        return self._svid
                    self._svid = new
                    self.reloads += 1
                    log.info("SVID re-read from %s (valid until %s)", self.cert, new.not_after)
        return self._svid

    def __repr__(self) -> str:
        return f"SvidFiles({str(self.cert)!r}, spiffe_id={self.spiffe_id!r})"


class WorkloadApiSvidSource:
    """The agent's SVID from the SPIFFE Workload API, kept current: py-spiffe's ``X509Source``
    holds the API's ``FetchX509SVID`` stream open in a background thread, and the SPIFFE agent
    (SPIRE) pushes a renewed SVID on it before the old one expires; :meth:`current` returns the
    newest. If the watch fails for good, it is reopened (at most every
    :data:`WORKLOAD_API_REOPEN_INTERVAL` seconds) while the last SVID is used as long as it is
    valid; after that, :meth:`current` raises :class:`SvidError` (``bad_svid``).

    ``socket``: ``unix:///path`` (or ``$SPIFFE_ENDPOINT_SOCKET``). Needs py-spiffe
    (``pip install 'fedgate-agent[spiffe]'``). :meth:`close` stops the watch.
    """

    def __init__(self, socket: str | None = None, *, timeout: float = WORKLOAD_API_TIMEOUT):
        self._spiffe = _import_spiffe()
        self.socket = _workload_socket(socket)
        self.timeout = timeout
        self._lock = threading.RLock()
        self._source: Any = None
        self._reopen_at = 0.0
        self._open()
        try:
            self._svid = self._convert(self._snapshot())
        except SvidError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise ConfigError(f"Workload API at {self.socket}: {type(e).__name__}: {e}") from None
        self._leaf = self._svid.der_chain[0]
        self.updates = 0
        """How many renewed SVIDs were taken after the first."""

    def _open(self) -> None:
        try:
            self._source = self._spiffe.X509Source(
                socket_path=self.socket, timeout_in_seconds=self.timeout
            )
        except Exception as e:  # py-spiffe's and grpc's errors
            raise ConfigError(f"Workload API at {self.socket}: {type(e).__name__}: {e}") from None

    def _snapshot(self) -> Any:
        get = getattr(self._source, "get_x509_context", None)
        if callable(get):
            return get().default_svid
        return self._source.svid  # py-spiffe before get_x509_context

    def _convert(self, s: Any) -> X509Svid:
        return _from_py_spiffe(s, self.socket)

    @property
    def spiffe_id(self) -> SpiffeId:
        return self._svid.spiffe_id

    def current(self) -> X509Svid:
        try:
            s = self._snapshot()
        except Exception as e:  # the watch ended (py-spiffe closes the source on a fatal error)
            return self._after_failure(e)
        leaf = s.leaf.public_bytes(serialization.Encoding.DER)
        if leaf != self._leaf:
            with self._lock:
                self._leaf = leaf  # tried once per SVID the API sends, not once per call
                try:
                    new = self._convert(s)
                except SvidError as e:
                    log.warning("Workload API SVID refused, keeping the last one: %s", e.message)
                    return self._svid
                if new.spiffe_id != self._svid.spiffe_id:
                    log.error("Workload API now serves %s, not %s: ignored", new.spiffe_id, self._svid.spiffe_id)
                    return self._svid
                if new.der_chain[0] != self._svid.der_chain[0]:
                    self._svid = new
                    self.updates += 1
                    log.info("SVID renewed from the Workload API (valid until %s)", new.not_after)
        return self._svid

    def _after_failure(self, e: Exception) -> X509Svid:
        now = time.monotonic()
        reopened = False
        with self._lock:
            if now >= self._reopen_at:
                self._reopen_at = now + WORKLOAD_API_REOPEN_INTERVAL
                old = self._source
                try:
                    self._open()
                    reopened = True
                    close = getattr(old, "close", None)
                    if callable(close):
                        close()
                except ConfigError as again:
                    log.warning("Workload API watch not reopened: %s", again.message)
        if reopened:
            log.info("Workload API watch at %s reopened", self.socket)
            return self.current()  # a second failure finds _reopen_at ahead: no loop
        if time.time() < self._svid.not_after:
            log.warning("Workload API watch failed (%s); using the last SVID until it expires", type(e).__name__)
            return self._svid
        raise SvidError(
            f"Workload API at {self.socket}: {type(e).__name__}: {e}; the last SVID has expired"
        )

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> WorkloadApiSvidSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WorkloadApiSvidSource({self.socket!r}, spiffe_id={self.spiffe_id!r})"


def svid_source(
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    *,
    socket: str | None = None,
) -> SvidFiles | WorkloadApiSvidSource:
    """As :func:`load_svid`, but a source that follows renewals: :class:`SvidFiles` for files
    (``cert``/``key``, else ``$FEDGATE_CERT``/``$FEDGATE_KEY``), :class:`WorkloadApiSvidSource`
    for the Workload API (``socket``, else ``$SPIFFE_ENDPOINT_SOCKET``)."""
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise ConfigError("give both cert and key")
        return SvidFiles(cert, key)
    if socket:
        return WorkloadApiSvidSource(socket)
    env_cert, env_key = os.environ.get("FEDGATE_CERT"), os.environ.get("FEDGATE_KEY")
    if env_cert and env_key:
        return SvidFiles(env_cert, env_key)
    if os.environ.get("SPIFFE_ENDPOINT_SOCKET"):
        return WorkloadApiSvidSource()
    raise ConfigError(
        "no SVID: pass cert= and key=, set FEDGATE_CERT and FEDGATE_KEY, "
        "or configure a Workload API socket (SPIFFE_ENDPOINT_SOCKET)"
    )


def current_svid(svid: SvidLike) -> X509Svid:
    """The SVID a source holds now (an ``X509Svid`` is returned as is)."""
    if isinstance(svid, X509Svid):
        return svid
    cur = svid.current()
    if not isinstance(cur, X509Svid):
        raise ConfigError("an SVID source's current() must return an X509Svid")
    return cur


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
