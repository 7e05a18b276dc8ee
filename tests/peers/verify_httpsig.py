#!/usr/bin/env python3
"""Verify an RFC 9421 HTTP message signature on a response with the PyPI package
`http-message-signatures` (its signature base, component resolution, RFC 9530 digest check).

usage: verify_httpsig.py --case FILE [--label L] [--require COMPONENT]... [--max-age S]

FILE is JSON:
  {"request":  {"method": "GET", "url": "https://host/path?q", "headers": {"Name": "v" | ["v1","v2"]}},
   "response": {"status": 200, "headers": {...}, "body_b64": "<standard or url-safe base64>"},
   "jwk": {public JWK: EC P-256 (ecdsa-p256-sha256) or OKP Ed25519 (ed25519)},
   "keyid": "<the keyid the signature must name>"}
Every signature label in Signature-Input is verified (or only --label L). Covered components
may include `;req` request components. When the body is non-empty or Content-Digest is present,
a signed Content-Digest is required and checked against the body. --require demands coverage
of a component (e.g. --require @status --require content-digest --require '"@method";req').
Exit 0 and print {"valid": true, "covered": [...], "labels": [...], "params": {...}}, or exit 1
and print {"valid": false, "error": "..."}; exit 2 on a malformed case file.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import sys
import warnings


class Headers:
    """Ordered field lines; enough of the interface the package documents for messages."""

    def __init__(self, mapping: dict):
        self._lines: list[tuple[str, str]] = []
        for name, value in (mapping or {}).items():
            for v in (value if isinstance(value, list) else [value]):
                self._lines.append((str(name), str(v)))

    def items(self):
        return list(self._lines)

    def __iter__(self):
        return iter(dict.fromkeys(n for n, _ in self._lines))

    def __contains__(self, name):
        return any(n.lower() == str(name).lower() for n, _ in self._lines)

    def __getitem__(self, name):
        vals = [v for n, v in self._lines if n.lower() == name.lower()]
        if not vals:
            raise KeyError(name)
        return ", ".join(vals)

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def __setitem__(self, name, value):
        self.__delitem__(name)
        self._lines.append((name, value))

    def __delitem__(self, name):
        self._lines = [(n, v) for n, v in self._lines if n.lower() != name.lower()]


class Request:
    def __init__(self, method: str, url: str, headers: dict):
        self.method = method.upper()
        self.url = url
        self.headers = Headers(headers)


class Response:
    def __init__(self, status: int, headers: dict, request: Request):
        self.status_code = int(status)
        self.headers = Headers(headers)
        self.request = request


def b64any(s: str) -> bytes:
    s = (s or "").strip()
    s += "=" * (-len(s) % 4)
    return base64.urlsafe_b64decode(s.replace("+", "-").replace("/", "_"))


def key_and_algorithm(jwk: dict):
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from http_message_signatures import algorithms

    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        x = int.from_bytes(b64any(jwk["x"]), "big")
        y = int.from_bytes(b64any(jwk["y"]), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key(), algorithms.ECDSA_P256_SHA256
    if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(b64any(jwk["x"])), algorithms.ED25519
    raise ValueError(f"unsupported JWK kty={jwk.get('kty')!r} crv={jwk.get('crv')!r}")


def verify_case(case: dict, label: str | None = None, require: list[str] | None = None,
                max_age: float | None = 86400) -> dict:
    import http_sf
    from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver

    req = case["request"]
    resp = case["response"]
    request = Request(req["method"], req["url"], req.get("headers", {}))
    response = Response(resp["status"], resp.get("headers", {}), request)
    body = b64any(resp.get("body_b64", ""))
    key, alg = key_and_algorithm(case["jwk"])
    keyid = case["keyid"]

    sig_input = response.headers.get("Signature-Input")
    if sig_input is None:
        raise ValueError("response has no Signature-Input")
    labels = list(http_sf.parse(sig_input.encode(), tltype="dictionary").keys())
    if label is not None:
        if label not in labels:
            raise ValueError(f"label {label!r} not in Signature-Input (has {labels})")
        labels = [label]

    verifier = HTTPMessageVerifier(signature_algorithm=alg,
                                   key_resolver=MappingKeyResolver(public_keys={keyid: key}, private_keys={}))
    verifier.allow_label_only_selection = True
    covered: list[str] = []
    params: dict = {}
    age = None if max_age is None else datetime.timedelta(seconds=max_age)
    for lb in labels:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = verifier.verify(response, expect_label=lb if len(labels) > 1 or label else None,
                                      body=body, require_components=tuple(require or ()), max_age=age)
        for r in results:
            params[r.label] = dict(r.parameters)
            for c in r.covered_components:
                if c != '"@signature-params"' and c not in covered:
                    covered.append(c)
    return {"valid": True, "labels": labels, "covered": covered, "params": params,
            "digest_verified": any(c.split(";")[0] == '"content-digest"' and ";req" not in c for c in covered)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", required=True)
    ap.add_argument("--label")
    ap.add_argument("--require", action="append", default=[])
    ap.add_argument("--max-age", type=float, default=86400.0, help="max signature age in seconds (<=0: none)")
    args = ap.parse_args()
    try:
        with open(args.case, encoding="utf-8") as f:
            case = json.load(f)
        for k in ("request", "response", "jwk", "keyid"):
            if k not in case:
                raise KeyError(k)
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"valid": False, "error": f"bad case file: {type(e).__name__}: {e}"}))
        sys.exit(2)
    require = []
    for c in args.require:
        require.append(c if c.startswith('"') else f'"{c}"')
    try:
        out = verify_case(case, args.label, require, args.max_age if args.max_age > 0 else None)
    except Exception as e:  # noqa: BLE001 - InvalidSignature, HTTPMessageSignaturesException, ValueError...
        detail = str(e) or (type(e.__cause__).__name__ if e.__cause__ else "") or "signature does not verify"
        if detail == "InvalidSignature":  # cryptography's exception carries no message
            detail = "signature does not verify"
        print(json.dumps({"valid": False, "error": f"{type(e).__name__}: {detail}"}))
        sys.exit(1)
    print(json.dumps(out))
    sys.exit(0)


if __name__ == "__main__":
    main()
