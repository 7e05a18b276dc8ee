"""SPIFFE trust bundles (SPEC section 2), read as ``gateway/src/spiffe/bundle.rs`` reads them.

A bundle is a JWK Set: ``x509-svid`` keys (one CA certificate in ``x5c``) and ``jwt-svid`` keys
(a P-256 ``EC`` or Ed25519 ``OKP`` public key with a unique ``kid``), plus ``spiffe_sequence``
and ``spiffe_refresh_hint``. Unknown ``use`` values and unsupported key types are skipped.

Key roles: a ``jwt-svid`` key of a fedgate bundle carries ``"fedgate_role"`` (``idp``,
``gateway``, ``audit``, ``witness``) and a verifier asks for a key in the role it needs
(:meth:`Bundle.jwt_key`). A key without the member, or with a role fedgate does not know, has
no role and verifies nothing — as ``gateway/src/spiffe/bundle.rs`` ``jwt_key``: a kid whose key
has another role or none is ``wrong_signer``, a kid not in the bundle ``unknown_key``. A bundle
written before key roles (no ``fedgate_role`` on any key) therefore verifies no link at all;
``fedgate bundle assign-roles`` upgrades it (spec-notes 34).

Bundles change: a gateway rewrites ``bundles_dir/<td>.json`` when it publishes a key rotation.
:class:`BundleStore` re-reads a bundle directory (or file) when a file changes, so a
long-running agent follows rotations; :class:`BundleSet` is one immutable snapshot.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import BundleError, ChainError, ConfigError, IdError
from .jose import VerifyingKey, b64std_decode, json_loads_strict
from .limits import MAX_BUNDLE_BYTES, MAX_BUNDLE_KEYS, MAX_KID_BYTES, ROLE_MEMBER
from .spiffe_id import valid_trust_domain

log = logging.getLogger("fedgate_agent")

USE_X509 = "x509-svid"
USE_JWT = "jwt-svid"

FORCED_RELOAD_INTERVAL = 1.0
"""Seconds between two re-reads of an unchanged bundle source forced by an ``unknown_key``
(:meth:`BundleStore.reload_for_unknown_key`): a rotation's new kid is picked up at once, while
links with made-up kids cannot make the agent parse its bundle files on every request."""


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
    """Whether any ``jwt-svid`` key of the document carries ``fedgate_role``. For display and
    messages only: a key without a role verifies nothing either way (bundles written by a
    gateway from before key roles verify no link; run ``fedgate bundle assign-roles``)."""

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
        role, an unknown one, or none (fail closed, as the gateway's ``Bundle::jwt_key``). There
        is no fallback for bundles without roles: their keys verify nothing.
        """
        a = self.authority(kid)
        if a is None:
            raise ChainError(
                f"kid {kid!r} is not a jwt-svid authority of {self.trust_domain}",
                reason="unknown_key",
                link=link,
            )
        if a.role != role:
            has = f"a {a.role}" if a.role is not None else "a role-less"
            hint = (
                "" if self.has_roles
                else "; the bundle has no key roles (written before them): run "
                "`fedgate bundle assign-roles` on its gateway"
            )
            raise ChainError(
                f"key {kid!r} of {self.trust_domain} is {has} key, not a {role} key{hint}",
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

    def current(self) -> BundleSet:
        """This set (a :class:`BundleSet` is its own, unchanging, bundle source)."""
        return self


def _signature(path: Path) -> tuple[Any, ...]:
    """What changes when a bundle file or directory is rewritten: for a directory, every
    ``*.json`` file's name, inode, size, mtime and ctime (an atomic rename changes the inode,
    an in-place write the ctime)."""

    def one(p: Path) -> tuple[Any, ...]:
        st = p.stat()
        return (p.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    if path.is_dir():
        names = sorted(n for n in os.listdir(path) if n.endswith(".json") and not n.startswith("."))
        out = []
        for n in names:
            try:
                out.append(one(path / n))
            except FileNotFoundError:
                continue
        return tuple(out)
    return (one(path),)


class BundleStore(Mapping[str, Bundle]):
    """A bundle directory (the gateway's ``bundles_dir``) or one ``<td>.json`` file, re-read
    when it changes, so that a gateway key rotation (which rewrites the local bundle) does not
    break a long-running agent.

    :meth:`current` compares every file's inode, size, mtime and ctime with the last read
    (a few ``stat`` calls) and re-reads on a change; a verifier that meets a kid it does not
    know calls :meth:`reload_for_unknown_key`, which re-reads once even without a visible
    change (at most every :data:`FORCED_RELOAD_INTERVAL` seconds), then retries. If a re-read
    fails (a file being written, a broken document), the last good set stays in force, the
    failure is logged, and the next call tries again. As a ``Mapping`` it reads the current set.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._sig = self._stat()
        self._set = self._read()
        self._forced_at: float | None = None
        self.reloads = 0
        """How many times the source was re-read after the first load."""

    def _stat(self) -> tuple[Any, ...]:
        try:
            return _signature(self.path)
        except OSError as e:
            raise ConfigError(f"{self.path}: {e.strerror}") from None

    def _read(self) -> BundleSet:
        if self.path.is_dir():
            return BundleSet.load_dir(self.path)
        return BundleSet.of(Bundle.load(self.path))

    def _reload(self, sig: tuple[Any, ...]) -> None:
        try:
            new = self._read()
        except (BundleError, ConfigError) as e:
            # Tried again when the files change again (or on an unknown kid), not per request.
            self._sig = sig
            log.warning("bundles at %s not re-read, keeping the last good ones: %s", self.path, e.message)
            return
        self._set, self._sig = new, sig
        self.reloads += 1
        log.info("bundles re-read from %s: %s", self.path, ", ".join(sorted(new)))

    def current(self) -> BundleSet:
        """The bundles in force: re-read first if a file changed since the last read."""
        try:
            sig = _signature(self.path)
        except OSError:
            sig = self._sig  # gone or unreadable for a moment: keep the last good set
        if sig != self._sig:
            with self._lock:
                if sig != self._sig:
                    self._reload(sig)
        return self._set

    def reload_for_unknown_key(self) -> bool:
        """Re-reads the source once although nothing visibly changed (a kid was unknown), at
        most every :data:`FORCED_RELOAD_INTERVAL` seconds. Returns whether a re-read happened
        (the caller then retries its verification once)."""
        with self._lock:
            now = self._clock()
            if self._forced_at is not None and now - self._forced_at < FORCED_RELOAD_INTERVAL:
                return False
            self._forced_at = now
            try:
                sig = _signature(self.path)
            except OSError:
                return False
            before = self._set
            self._reload(sig)
            return self._set is not before

    def __getitem__(self, td: str) -> Bundle:
        return self.current()[td]

    def __iter__(self) -> Iterator[str]:
        return iter(self.current())

    def __len__(self) -> int:
        return len(self.current())

    def ca_pem(self, trust_domain: str) -> str:
        return self.current().ca_pem(trust_domain)

    def __repr__(self) -> str:
        return f"BundleStore({str(self.path)!r}, domains={sorted(self._set)!r})"


BundleSource = Union[BundleSet, BundleStore]
"""Where bundles come from: a fixed :class:`BundleSet`, or a :class:`BundleStore` that follows
the files. Both have ``current() -> BundleSet``."""


def bundle_source(
    source: BundleSet | BundleStore | Bundle | str | os.PathLike[str] | None = None,
) -> BundleSource:
    """A set or store as given; one bundle as a set; a directory or file as a
    :class:`BundleStore` (re-read on change); ``None``: ``$FEDGATE_BUNDLES`` as a store."""
    if isinstance(source, (BundleSet, BundleStore)):
        return source
    if isinstance(source, Bundle):
        return BundleSet.of(source)
    if source is None:
        env = os.environ.get("FEDGATE_BUNDLES")
        if not env:
            raise ConfigError("no bundles given and FEDGATE_BUNDLES is not set")
        source = env
    if not Path(source).exists():
        raise ConfigError(f"{source}: no such bundle directory or file")
    return BundleStore(source)


def load_bundles(
    source: BundleSet | BundleStore | Bundle | str | os.PathLike[str] | None = None,
) -> BundleSet:
    """A :class:`BundleSet` (one snapshot) from a set, a store (its current set), one bundle,
    a bundle directory, or a single ``<td>.json`` file; with no argument, from
    ``$FEDGATE_BUNDLES``."""
    if isinstance(source, BundleSet):
        return source
    if isinstance(source, BundleStore):
        return source.current()
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
