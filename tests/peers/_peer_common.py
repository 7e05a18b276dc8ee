"""Shared helpers for fedgate's test-only protocol peers (not a protocol implementation).

- RequestLog: ASGI middleware that appends one JSON line per HTTP request to a file.
- BearerJwsGuard: verifies `Authorization: Bearer <compact JWS>` (ES256/EdDSA) against a
  SPIFFE bundle / JWKS file, with `cryptography` only.
- serve(): runs an ASGI app with uvicorn and prints `READY <port>` once listening.
- client TLS helpers shared by the clients.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import sys
import threading
import time
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

Scope = dict
ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


# --------------------------------------------------------------------------- logging


def header_map(scope: dict) -> dict[str, Any]:
    """Lower-cased header name -> value (str), or list of values when repeated."""
    out: dict[str, Any] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in out:
            prev = out[name]
            out[name] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[name] = value
    return out


def credential_fields(headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "authorization": headers.get("authorization"),
        "delegation_chain": headers.get("delegation-chain"),
        "fedgate": {k: v for k, v in headers.items() if k.startswith("fedgate-")},
    }


class _LogFile:
    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        # Create (or keep) the file so a test can open it before the first request.
        with open(path, "a", encoding="utf-8"):
            pass

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()


Extractor = Callable[[dict, bytes], dict]
Guard = Callable[[dict, dict], Awaitable["tuple[bool, dict, tuple[int, dict, bytes] | None]"]]


class RequestLog:
    """ASGI middleware: buffers the request body (replayed to the app), lets `extract`
    pull protocol fields out of it, optionally runs `guard` (which may answer itself),
    and writes one JSON line when the response starts (status included)."""

    def __init__(self, app: ASGIApp, log_path: str, extract: Extractor | None = None,
                 guard: Any = None, extract_response: Callable[[bytes], dict] | None = None):
        self.app = app
        self.log = _LogFile(log_path)
        self.extract = extract
        self.guard = guard
        # With extract_response, the line is written when the response body is complete
        # (so it can carry e.g. a task id the server assigned), not when it starts.
        self.extract_response = extract_response
        self.seq = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body = b""
        disconnected = None
        while True:
            msg = await receive()
            if msg["type"] == "http.request":
                body += msg.get("body", b"")
                if not msg.get("more_body", False):
                    break
            else:  # http.disconnect before the body was complete
                disconnected = msg
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                if disconnected is not None:
                    return disconnected
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        headers = header_map(scope)
        self.seq += 1
        record: dict[str, Any] = {
            "seq": self.seq,
            "ts": time.time(),
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            **credential_fields(headers),
            "headers": headers,
        }
        if self.extract is not None:
            try:
                record.update(self.extract(headers, body))
            except Exception as e:  # never let logging break the peer
                record["extract_error"] = repr(e)
        written = False

        def write(status):
            nonlocal written
            if not written:
                written = True
                record["status"] = status
                self.log.write(record)

        if self.guard is not None:
            allowed, info, reply = await self.guard(scope, headers)
            record["auth"] = info
            if not allowed:
                status, rheaders, rbody = reply
                write(status)
                await send({"type": "http.response.start", "status": status,
                            "headers": [(k.encode(), v.encode()) for k, v in rheaders.items()]})
                await send({"type": "http.response.body", "body": rbody})
                return

        resp = {"status": None, "body": b""}

        async def send_wrapper(message):
            if self.extract_response is None:
                if message["type"] == "http.response.start":
                    write(message["status"])
            elif message["type"] == "http.response.start":
                resp["status"] = message["status"]
            elif message["type"] == "http.response.body":
                if len(resp["body"]) < 256 * 1024:
                    resp["body"] += message.get("body", b"")
                if not message.get("more_body", False):
                    try:
                        record.update(self.extract_response(resp["body"]))
                        if record.get("task_id") is None and record.get("response_task_id"):
                            record["task_id"] = record["response_task_id"]
                    except Exception as e:
                        record["extract_error"] = repr(e)
                    write(resp["status"])
            await send(message)

        try:
            await self.app(scope, replay, send_wrapper)
        finally:
            write(resp["status"])


def jsonrpc_messages(body: bytes) -> list[dict]:
    if not body:
        return []
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if isinstance(doc, dict):
        return [doc]
    if isinstance(doc, list):
        return [m for m in doc if isinstance(m, dict)]
    return []


# --------------------------------------------------------------------------- JWS (cryptography)


def b64url_decode(s: str) -> bytes:
    if not isinstance(s, str) or any(c in s for c in "=+/ \t\r\n"):
        raise ValueError("not base64url without padding")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def public_key_from_jwk(jwk: dict):
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    kty = jwk.get("kty")
    if kty == "EC" and jwk.get("crv") == "P-256":
        x = int.from_bytes(b64url_decode(jwk["x"]), "big")
        y = int.from_bytes(b64url_decode(jwk["y"]), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    raise ValueError(f"unsupported JWK (kty={kty!r}, crv={jwk.get('crv')!r}); need EC P-256 or OKP Ed25519")


def verify_compact_jws(token: str, keys: list[dict]) -> tuple[dict, dict]:
    """Verify a compact JWS signed ES256 or EdDSA; return (header, payload).
    Raises ValueError with a short reason on any failure."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("malformed: not a compact JWS")
    try:
        header = json.loads(b64url_decode(parts[0]))
        payload_bytes = b64url_decode(parts[1])
        sig = b64url_decode(parts[2])
    except Exception as e:
        raise ValueError(f"malformed: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("malformed: header is not an object")
    alg = header.get("alg")
    if alg not in ("ES256", "EdDSA"):
        raise ValueError(f"bad_alg: {alg!r}")
    if "crit" in header:
        raise ValueError("malformed: crit not supported")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise ValueError("malformed: no kid")
    candidates = [k for k in keys if isinstance(k, dict) and k.get("kid") == kid
                  and k.get("use") in (None, "jwt-svid", "sig")]
    if not candidates:
        raise ValueError(f"unknown_kid: {kid!r}")
    signing_input = (parts[0] + "." + parts[1]).encode("ascii")
    last = "bad_signature"
    for jwk in candidates:
        try:
            key = public_key_from_jwk(jwk)
        except Exception as e:
            last = f"bad_key: {e}"
            continue
        try:
            if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
                if len(sig) != 64:
                    raise ValueError("bad_signature: ES256 signature must be 64 bytes")
                der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
                key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            elif alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(sig, signing_input)
            else:
                last = f"bad_alg: {alg} does not fit key kty={jwk.get('kty')}"
                continue
        except InvalidSignature:
            last = "bad_signature"
            continue
        try:
            payload = json.loads(payload_bytes)
        except ValueError:
            raise ValueError("malformed: payload is not JSON") from None
        if not isinstance(payload, dict):
            raise ValueError("malformed: payload is not an object")
        return header, payload
    raise ValueError(last)


class BearerJwsGuard:
    """Checks `Authorization: Bearer <JWS>`: signature by a key of the JWKS file (re-read
    on every request, so a test may rotate it), `aud` == resource (string or array
    member), `exp` in the future (no skew), `nbf` (if any) not after now + 30 s.
    Paths starting with /.well-known/ are not guarded."""

    def __init__(self, jwks_path: str, resource: str):
        self.jwks_path = jwks_path
        self.resource = resource
        u = urlsplit(resource)
        path = u.path.rstrip("/")
        self.metadata_url = f"{u.scheme}://{u.netloc}/.well-known/oauth-protected-resource{path}"

    def metadata_document(self) -> dict:
        return {"resource": self.resource, "bearer_methods_supported": ["header"]}

    def _deny(self, reason: str, presented: bool):
        challenge = f'Bearer resource_metadata="{self.metadata_url}"'
        if presented:
            desc = reason.replace('"', "'").replace("\\", "/")
            challenge += f', error="invalid_token", error_description="{desc}"'
        body = json.dumps({"error": "invalid_token" if presented else "unauthorized", "reason": reason}).encode()
        return False, {"ok": False, "error": reason}, (
            401, {"www-authenticate": challenge, "content-type": "application/json"}, body)

    async def __call__(self, scope, headers):
        if scope["path"].startswith("/.well-known/"):
            return True, {"ok": None, "skipped": "well-known"}, None
        auth = headers.get("authorization")
        if auth is None:
            return self._deny("missing bearer token", False)
        if isinstance(auth, list):
            return self._deny("more than one Authorization header", True)
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._deny("not a bearer token", False)
        token = token.strip()
        try:
            with open(self.jwks_path, encoding="utf-8") as f:
                keys = json.load(f).get("keys", [])
        except Exception as e:
            return self._deny(f"cannot read jwks: {e}", True)
        try:
            header, claims = verify_compact_jws(token, keys)
        except ValueError as e:
            return self._deny(str(e), True)
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if self.resource not in auds:
            return self._deny(f"aud {aud!r} is not {self.resource!r}", True)
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            return self._deny("no numeric exp", True)
        if now >= exp:
            return self._deny("expired", True)
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and nbf > now + 30:
            return self._deny("not yet valid", True)
        return True, {"ok": True, "kid": header.get("kid"), "alg": header.get("alg"),
                      "typ": header.get("typ"), "claims": claims}, None


# --------------------------------------------------------------------------- serving


def serve(app, host: str, port: int, *, certfile: str | None = None, keyfile: str | None = None,
          cafile: str | None = None) -> None:
    """Run `app` with uvicorn; print `READY <port>` (the bound port, so port 0 works)
    on stdout once listening. Exits on SIGTERM/SIGINT."""
    import uvicorn

    kwargs: dict[str, Any] = {}
    if certfile:
        kwargs.update(ssl_certfile=certfile, ssl_keyfile=keyfile)
        if cafile:
            kwargs.update(ssl_ca_certs=cafile, ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=2, **kwargs)
    server = uvicorn.Server(config)

    async def main():
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                raise SystemExit("server exited before it was listening")
            await asyncio.sleep(0.02)
        bound = port
        for s in server.servers:
            for sock in s.sockets:
                bound = sock.getsockname()[1]
        print(f"READY {bound}", flush=True)
        await task

    asyncio.run(main())


# --------------------------------------------------------------------------- clients


def client_ssl_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | bool:
    if ca is None and cert is None:
        return True
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def parse_headers(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in values or []:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"bad --header {h!r}: expected 'Name: value'")
        out[name.strip()] = value.strip()
    return out


def emit(obj: dict) -> None:
    """Print one JSON object on one line to stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()
