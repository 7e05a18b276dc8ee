#!/usr/bin/env python3
"""Drive an OpenID Connect authorization-code flow with PKCE against oidc/server.mjs, with
httpx and no browser.

usage: oidc_login.py --issuer URL --ca CA --client-id ID --redirect-uri URI
                     [--acr A] [--amr a,b] [--age SECONDS] [--scope 'openid email']
                     [--login alice] [--timeout S]

Steps: discovery -> /auth (code_challenge S256, state, nonce) -> the interaction URL ->
POST /interaction/<uid>/login (acr, amr, age) -> redirects up to --redirect-uri (never
fetched: `code` is read from the Location) -> POST /token with the code_verifier.
Prints {"id_token", "access_token", "token_type", "expires_in", "claims": <ID token payload>,
"header": <ID token JOSE header>, "signature_valid": <checked against the served JWKS>,
"jwks_kids": [...], "issuer"}. Exit 0 on success; 1 if the provider refused (error JSON on
stdout: {"error", "error_description", "stage"}); 2 on usage/connection failure.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import secrets
import sys
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit


def b64u_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def verify_jwt_signature(token: str, jwks: dict) -> bool:
    """RS256 / PS256 / ES256 / EdDSA check of a compact JWS against a JWKS (cryptography)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    h, p, s = token.split(".")
    header = json.loads(b64u_decode(h))
    sig = b64u_decode(s)
    data = f"{h}.{p}".encode()
    for jwk in jwks.get("keys", []):
        if jwk.get("kid") != header.get("kid"):
            continue
        try:
            alg = header["alg"]
            if jwk["kty"] == "RSA" and alg in ("RS256", "PS256"):
                key = rsa.RSAPublicNumbers(int.from_bytes(b64u_decode(jwk["e"]), "big"),
                                           int.from_bytes(b64u_decode(jwk["n"]), "big")).public_key()
                pad = padding.PKCS1v15() if alg == "RS256" else \
                    padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
                key.verify(sig, data, pad, hashes.SHA256())
                return True
            if jwk["kty"] == "EC" and alg == "ES256":
                key = ec.EllipticCurvePublicNumbers(int.from_bytes(b64u_decode(jwk["x"]), "big"),
                                                    int.from_bytes(b64u_decode(jwk["y"]), "big"),
                                                    ec.SECP256R1()).public_key()
                der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
                key.verify(der, data, ec.ECDSA(hashes.SHA256()))
                return True
            if jwk["kty"] == "OKP" and alg in ("EdDSA", "Ed25519"):
                ed25519.Ed25519PublicKey.from_public_bytes(b64u_decode(jwk["x"])).verify(sig, data)
                return True
        except (InvalidSignature, KeyError, ValueError):
            return False
    return False


class Refused(Exception):
    def __init__(self, stage: str, error: str, description: str | None = None, extra: dict | None = None):
        super().__init__(f"{stage}: {error}: {description}")
        self.out = {"error": error, "error_description": description, "stage": stage, **(extra or {})}


def login(args) -> dict:
    import httpx

    client = httpx.Client(verify=args.ca, trust_env=False, follow_redirects=False, timeout=args.timeout)
    with client:
        disc = client.get(args.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if disc.status_code != 200:
            raise Refused("discovery", "discovery_failed", f"HTTP {disc.status_code}")
        meta = disc.json()

        verifier = b64u(secrets.token_bytes(48))
        challenge = b64u(hashlib.sha256(verifier.encode()).digest())
        state = b64u(secrets.token_bytes(16))
        nonce = b64u(secrets.token_bytes(16))
        params = {"client_id": args.client_id, "redirect_uri": args.redirect_uri, "response_type": "code",
                  "scope": args.scope, "state": state, "nonce": nonce,
                  "code_challenge": challenge, "code_challenge_method": "S256"}
        url = meta["authorization_endpoint"] + "?" + urlencode(params)
        resp = client.get(url)
        location = None
        for _hop in range(12):
            if resp.status_code not in (302, 303, 307):
                try:
                    body = resp.json()
                except ValueError:
                    body = {"error": "unexpected_response", "error_description": resp.text[:500]}
                raise Refused("authorize", body.get("error", "unexpected_response"),
                              body.get("error_description"), {"http_status": resp.status_code})
            location = urljoin(str(resp.url), resp.headers["location"])
            if location.split("?")[0].split("#")[0] == args.redirect_uri:
                break
            m = re.search(r"/interaction/([A-Za-z0-9_-]+)/?$", urlsplit(location).path)
            if m:
                details = client.get(location)
                if details.status_code != 200:
                    raise Refused("interaction", "interaction_failed", details.text[:500],
                                  {"http_status": details.status_code})
                form = {"login": args.login, "acr": args.acr, "amr": args.amr, "age": str(args.age)}
                resp = client.post(location.rstrip("/") + "/login", data=form)
            else:
                resp = client.get(location)
        else:
            raise Refused("authorize", "too_many_redirects", location)

        q = parse_qs(urlsplit(location).query)
        if "error" in q:
            raise Refused("authorize", q["error"][0], q.get("error_description", [None])[0])
        if q.get("state", [None])[0] != state:
            raise Refused("authorize", "state_mismatch", location)
        if q.get("iss") and q["iss"][0] != meta["issuer"]:
            raise Refused("authorize", "iss_mismatch", q["iss"][0])
        code = q["code"][0]

        tok = client.post(meta["token_endpoint"], data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": args.redirect_uri,
            "client_id": args.client_id, "code_verifier": verifier})
        body = tok.json()
        if tok.status_code != 200:
            raise Refused("token", body.get("error", "token_failed"), body.get("error_description"),
                          {"http_status": tok.status_code})
        id_token = body["id_token"]
        h, p, _ = id_token.split(".")
        header = json.loads(b64u_decode(h))
        claims = json.loads(b64u_decode(p))
        jwks = client.get(meta["jwks_uri"]).json()
        if claims.get("nonce") != nonce:
            raise Refused("token", "nonce_mismatch", str(claims.get("nonce")))
        return {"id_token": id_token, "access_token": body.get("access_token"),
                "token_type": body.get("token_type"), "expires_in": body.get("expires_in"),
                "scope": body.get("scope"), "claims": claims, "header": header,
                "signature_valid": verify_jwt_signature(id_token, jwks),
                "jwks_kids": [k.get("kid") for k in jwks.get("keys", [])], "issuer": meta["issuer"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--redirect-uri", required=True)
    ap.add_argument("--acr", default="urn:fedgate:acr:pwd")
    ap.add_argument("--amr", default="pwd", help="comma-separated")
    ap.add_argument("--age", type=int, default=0, help="seconds since the (simulated) sign-in")
    ap.add_argument("--scope", default="openid email")
    ap.add_argument("--login", default="alice")
    ap.add_argument("--timeout", type=float, default=20.0)
    try:
        args = ap.parse_args()
    except SystemExit as e:
        sys.exit(2 if e.code else 0)
    import httpx

    try:
        out = login(args)
    except Refused as r:
        print(json.dumps(r.out))
        sys.exit(1)
    except (httpx.TransportError, OSError) as e:
        print(json.dumps({"error": "connection_failed", "error_description": f"{type(e).__name__}: {e}",
                          "stage": "connect"}))
        sys.exit(2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
