#!/usr/bin/env python3
"""Self-test for verify_httpsig.py: sign responses with `http-message-signatures` (fresh
ES256 / ecdsa-p256-sha256 and Ed25519 keys), write case files, run verify_httpsig.py as a
subprocess, and check that good signatures verify and tampered ones do not.

usage: selftest_httpsig.py [--keep DIR]
Prints one line per check and a final 'N passed, N failed'; exit 0 only if all passed.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from verify_httpsig import Request, Response  # noqa: E402  (same message views for signing)


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_case(kind: str, covered: tuple[str, ...], body: bytes | None = b'{"result":"ok"}',
              label: str = "fedgate", keyid: str = "gw-key-1") -> dict:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms

    if kind == "es256":
        priv = ec.generate_private_key(ec.SECP256R1())
        n = priv.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big")),
               "kid": keyid}
        alg = algorithms.ECDSA_P256_SHA256
    else:
        priv = ed25519.Ed25519PrivateKey.generate()
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(priv.public_key().public_bytes_raw()), "kid": keyid}
        alg = algorithms.ED25519
    req_headers = {"Host": "partner.example:9443", "Content-Type": "application/json",
                   "Fedgate-Crossing": "c-123"}
    request = Request("POST", "https://partner.example:9443/ingress/mcp?x=1", req_headers)
    response = Response(200, {"Content-Type": "application/json", "Cache-Control": "no-store"}, request)
    signer = HTTPMessageSigner(signature_algorithm=alg,
                               key_resolver=MappingKeyResolver(public_keys={}, private_keys={keyid: priv}))
    signer.sign(response, key_id=keyid, label=label, covered_component_ids=covered, body=body)
    return {
        "request": {"method": request.method, "url": request.url, "headers": dict(request.headers.items())},
        "response": {"status": response.status_code, "headers": dict(response.headers.items()),
                     "body_b64": base64.b64encode(body or b"").decode()},
        "jwk": jwk, "keyid": keyid,
    }


COVERED = ('"@status"', '"content-type"', '"content-digest"', '"@method";req', '"@target-uri";req',
           '"@authority";req', '"fedgate-crossing";req')


# RFC 9421 appendix B.2.4 ("Signing a Response Using ecdsa-p256-sha256"), key B.1.3
# test-key-ecc-p256: a known answer, so the package's signature base is the standard one and
# not merely consistent with itself.
RFC9421_P256_PUBLIC_PEM = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf
w0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END PUBLIC KEY-----
"""


def rfc9421_b24_case() -> dict:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    n = load_pem_public_key(RFC9421_P256_PUBLIC_PEM).public_numbers()
    return {
        "request": {"method": "POST", "url": "https://example.com/foo?param=Value&Pet=dog",
                    "headers": {"Host": "example.com", "Content-Type": "application/json"}},
        "response": {"status": 200, "headers": {
            "Date": "Tue, 20 Apr 2021 02:07:56 GMT",
            "Content-Type": "application/json",
            "Content-Digest": "sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:",
            "Content-Length": "23",
            "Signature-Input": 'sig-b24=("@status" "content-type" "content-digest" "content-length")'
                               ';created=1618884473;keyid="test-key-ecc-p256"',
            "Signature": "sig-b24=:wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==:",
        }, "body_b64": base64.b64encode(b'{"message": "good dog"}').decode()},
        "jwk": {"kty": "EC", "crv": "P-256", "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))},
        "keyid": "test-key-ecc-p256",
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="write the case files here instead of a temp dir")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="httpsig-")
    os.makedirs(tmp, exist_ok=True)
    passed = failed = 0

    def check(name: str, case: dict, want_valid: bool, extra: list[str] = ()) -> None:
        nonlocal passed, failed
        path = os.path.join(tmp, name + ".json")
        with open(path, "w") as f:
            json.dump(case, f, indent=1)
        p = subprocess.run([sys.executable, os.path.join(HERE, "verify_httpsig.py"), "--case", path, *extra],
                           capture_output=True, text=True, timeout=60)
        try:
            out = json.loads(p.stdout)
        except ValueError:
            out = {"raw": p.stdout, "stderr": p.stderr}
        ok = (p.returncode == 0 and out.get("valid") is True) if want_valid else \
             (p.returncode == 1 and out.get("valid") is False)
        passed, failed = passed + ok, failed + (not ok)
        print(f"{'PASS' if ok else 'FAIL'} {name}: rc={p.returncode} {json.dumps(out)[:300]}")

    for kind in ("es256", "ed25519"):
        good = make_case(kind, COVERED)
        check(f"{kind}-valid", good, True, ["--require", "@status", "--require", "content-digest",
                                            "--require", '"@method";req'])
        sig_input = good["response"]["headers"]["Signature-Input"]
        assert "ecdsa-p256-sha256" in sig_input if kind == "es256" else "ed25519" in sig_input, sig_input

        bad = copy.deepcopy(good)
        bad["response"]["body_b64"] = base64.b64encode(b'{"result":"tampered"}').decode()
        check(f"{kind}-tampered-body", bad, False)

        bad = copy.deepcopy(good)
        bad["response"]["status"] = 201
        check(f"{kind}-tampered-status", bad, False)

        bad = copy.deepcopy(good)
        bad["request"]["url"] = "https://partner.example:9443/ingress/other?x=1"
        check(f"{kind}-tampered-req-target", bad, False)

        bad = copy.deepcopy(good)
        bad["request"]["headers"]["Fedgate-Crossing"] = "c-999"
        check(f"{kind}-tampered-req-header", bad, False)

        other = make_case(kind, COVERED)
        bad = copy.deepcopy(good)
        bad["jwk"] = other["jwk"]
        check(f"{kind}-wrong-key", bad, False)

        bad = copy.deepcopy(good)
        bad["keyid"] = "someone-else"
        check(f"{kind}-wrong-keyid", bad, False)

        # No body given to the signer: no Content-Digest, nothing covers the (empty) body.
        nodigest = make_case(kind, ('"@status"', '"content-type"'), body=None)
        check(f"{kind}-empty-body-no-digest", nodigest, True)
        check(f"{kind}-required-but-uncovered", nodigest, False, ["--require", "content-digest"])

    kat = rfc9421_b24_case()
    check("rfc9421-b24-known-answer", kat, True, ["--max-age", "0"])
    bad = copy.deepcopy(kat)
    bad["response"]["headers"]["Content-Length"] = "24"
    check("rfc9421-b24-tampered-field", bad, False, ["--max-age", "0"])
    bad = copy.deepcopy(kat)
    bad["response"]["body_b64"] = base64.b64encode(b'{"message": "bad dog!"}').decode()
    check("rfc9421-b24-tampered-body", bad, False, ["--max-age", "0"])
    check("rfc9421-b24-too-old-by-default", kat, False)

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
