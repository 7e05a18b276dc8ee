"""mTLS with SPIFFE identities for the agent's side of the gateway connections.

Client authentication: the agent's X509-SVID and key. Server authentication is SPIFFE's, not
web PKI's: the server's certificate must chain to the ``x509-svid`` authorities of the expected
server's trust domain (the bundle, or a CA file) *and* its single URI SAN must equal the expected
SPIFFE ID (by default ``spiffe://<td>/gateway``). Host names are not checked — that is not how
SPIFFE identities work.

The SPIFFE ID check runs inside the TLS handshake (``SSLContext.sslsocket_class`` /
``sslobject_class``), before a single request byte — a chain, a token — is written, for both the
blocking and the asyncio transports of httpx.
"""

from __future__ import annotations

import os
import secrets
import ssl
import tempfile
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import ConfigError, SvidError
from .spiffe_id import SpiffeId
from .svid import X509Svid, check_leaf


class SpiffeIdMismatch(ssl.SSLCertVerificationError):
    """The server presented a valid certificate of the trust domain, but not the expected
    SPIFFE identity (or not a valid X509-SVID at all)."""

    def __init__(self, expected: str, got: str | None, detail: str = ""):
        self.expected = expected
        self.got = got
        msg = f"server is {got or 'not an X509-SVID'}, expected {expected}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


def _check_peer(der: bytes | None, expected: str) -> None:
    if not der:
        raise SpiffeIdMismatch(expected, None, "no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
        got = check_leaf(cert)
    except (ValueError, SvidError) as e:
        raise SpiffeIdMismatch(expected, None, getattr(e, "message", str(e))) from None
    if got != expected:
        raise SpiffeIdMismatch(expected, got)


def _classes(expected: str) -> tuple[type[ssl.SSLSocket], type[ssl.SSLObject]]:
    class SpiffeSSLSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            _check_peer(self.getpeercert(binary_form=True), expected)

    class SpiffeSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            _check_peer(self.getpeercert(binary_form=True), expected)

    return SpiffeSSLSocket, SpiffeSSLObject


def client_context(
    svid: X509Svid | None,
    expected_server: str,
    *,
    ca_pem: str | None = None,
    ca_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """An ``SSLContext`` presenting ``svid`` (if given) and accepting only ``expected_server``
    with a certificate chaining to ``ca_pem`` / ``ca_file``."""
    expected = SpiffeId(expected_server)
    if not ca_pem and ca_file is None:
        raise ConfigError(f"no CA to verify {expected} against")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the SPIFFE ID is checked instead (see _check_peer)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca_pem:
        ctx.load_verify_locations(cadata=ca_pem)
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=os.fspath(ca_file))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{ca_file}: {e}") from None
    if svid is not None:
        load_client_identity(ctx, svid)
    ctx.sslsocket_class, ctx.sslobject_class = _classes(expected)
    return ctx


def load_client_identity(ctx: ssl.SSLContext, svid: X509Svid) -> None:
    """Loads the SVID into ``ctx``. The ssl module reads keys only from files, so the key is
    written *encrypted* with a one-time password to a private temporary directory, loaded and
    deleted at once: the plaintext key never touches the disk."""
    password = secrets.token_bytes(32).hex().encode()
    with tempfile.TemporaryDirectory(prefix="fedgate-agent-") as d:
        os.chmod(d, 0o700)
        cert_path, key_path = Path(d, "svid.pem"), Path(d, "svid.key")
        cert_path.write_bytes(svid.cert_pem())
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(svid.encrypted_key_pem(password))
        ctx.load_cert_chain(cert_path, key_path, password=password)


def pem_of(certs: Sequence[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


def identity_error_in(exc: BaseException) -> SpiffeIdMismatch | ssl.SSLCertVerificationError | None:
    """The certificate-verification error behind a transport exception, if that is what it was."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
        for arg in getattr(e, "args", ()):
            if isinstance(arg, ssl.SSLCertVerificationError):
                return arg
        e = e.__cause__ or e.__context__
    return None
