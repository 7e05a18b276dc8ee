#!/usr/bin/env bash
# End-to-end self-test of the peers WITHOUT the gateway: every server against its client.
#
#   tests/peers/selftest.sh CACHE_DIR
#
# Installs (install.sh CACHE_DIR), makes a test CA, then runs the MCP, A2A, RFC 9421 and OIDC
# checks, each bounded by `timeout`. Every server it starts is killed on exit (trap).
# Prints one line per check and 'N passed, N failed'; exit 0 only when all passed.
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 CACHE_DIR" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$(bash "$HERE/install.sh" "$1" | tail -n 1)" || { echo "install failed" >&2; exit 1; }
CACHE="$(cd "$1" && pwd)"
NODE_DIR="$CACHE/oidc"
W="$(mktemp -d /tmp/peers-selftest.XXXXXX)"
PIDS=()
PASS=0
FAIL=0

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
}
trap cleanup EXIT

check() { # name, then a python expression over `d` (the JSON in $OUT)
  local name="$1" expr="$2"
  if printf '%s' "$OUT" | "$PY" -c "import json,sys; d=json.loads(sys.stdin.read()); sys.exit(0 if ($expr) else 1)" 2>/dev/null; then
    PASS=$((PASS + 1)); echo "PASS $name"
  else
    FAIL=$((FAIL + 1)); echo "FAIL $name: ${OUT:0:600}"
  fi
}

start() { # name, command... ; sets PORT from the READY line
  local name="$1"; shift
  timeout 300 "$@" >"$W/$name.out" 2>"$W/$name.err" &
  PIDS+=($!)
  PORT=""
  for _ in $(seq 100); do
    PORT="$(awk '/^READY /{print $2; exit}' "$W/$name.out")"
    [ -n "$PORT" ] && return 0
    sleep 0.1
  done
  echo "FAIL start $name: $(tail -5 "$W/$name.err")"; FAIL=$((FAIL + 1)); return 1
}

stop_last() { local p="${PIDS[-1]}"; kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; unset 'PIDS[-1]'; }

bash "$HERE/make_test_ca.sh" "$W/pki" 2>/dev/null || { echo "make_test_ca.sh failed"; exit 1; }
PKI="$W/pki"

# ---------------------------------------------------------------- MCP, plain HTTP
if start mcp "$PY" "$HERE/mcp_server.py" --port 0 --log "$W/mcp.log"; then
  U="http://127.0.0.1:$PORT/mcp"
  OUT="$(timeout 60 "$PY" "$HERE/mcp_client.py" --url "$U" --tool summarize --args '{"text":"one two three"}' \
        --header 'Fedgate-Target: spiffe://partner.com/agent/report' --header 'Delegation-Chain: a.b.c~d.e.f')"
  check "mcp summarize ok, 3 progress notifications spread out" \
    'd["ok"] and len(d["progress_times"]) == 3 and d["progress_times"][2] - d["progress_times"][0] > 0.4 and "Summary" in d["result"]["content"][0]["text"]'
  OUT="$(timeout 60 "$PY" "$HERE/mcp_client.py" --url "$U" --tool delete_records --args '{"table":"users"}')"
  check "mcp delete_records ok" 'd["ok"] and d["result"]["content"][0]["text"] == "deleted 42 records from users"'
  OUT="$(timeout 60 "$PY" "$HERE/mcp_client.py" --url "$U" --tool summarize --args '{"text":"x"}' --protocol-version 2025-11-25)"
  check "mcp legacy 2025-11-25 handshake" 'd["ok"] and d["protocol_version"] == "2025-11-25" and len(d["progress_times"]) == 3'
  OUT="$(cat "$W/mcp.log" | "$PY" -c 'import json,sys; print(json.dumps([json.loads(l) for l in sys.stdin]))')"
  check "mcp log: tools/call lines carry tool, fedgate-* and Delegation-Chain" \
    'any(r["tool"] == "summarize" and r["fedgate"] == {"fedgate-target": "spiffe://partner.com/agent/report"} and r["delegation_chain"] == "a.b.c~d.e.f" for r in d) and any(r["tool"] == "delete_records" for r in d)'
  stop_last
fi

# ---------------------------------------------------------------- MCP, mTLS + bearer JWS
RES="https://gateway.partner.example:9443/ingress/mcp"
"$PY" - "$W/bundle.json" "$RES" "$W/tokens.json" <<'EOF'
import base64, json, sys, time
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
eck, edk = ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
n = eck.public_key().public_numbers()
json.dump({"spiffe_sequence": 1, "keys": [
    {"kty": "EC", "crv": "P-256", "x": b(n.x.to_bytes(32, "big")), "y": b(n.y.to_bytes(32, "big")), "kid": "gw-es", "use": "jwt-svid"},
    {"kty": "OKP", "crv": "Ed25519", "x": b(edk.public_key().public_bytes_raw()), "kid": "gw-ed", "use": "jwt-svid"}]},
    open(sys.argv[1], "w"))
def tok(alg, kid, claims):
    si = b(json.dumps({"alg": alg, "kid": kid, "typ": "federation+jwt"}).encode()) + "." + b(json.dumps(claims).encode())
    if alg == "ES256":
        r, s = decode_dss_signature(eck.sign(si.encode(), ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = edk.sign(si.encode())
    return si + "." + b(sig)
now = int(time.time())
c = {"iss": "spiffe://company.com/gateway", "aud": sys.argv[2], "exp": now + 300, "iat": now, "jti": "j1"}
json.dump({"es": tok("ES256", "gw-es", c), "ed": tok("EdDSA", "gw-ed", c),
           "aud": tok("ES256", "gw-es", {**c, "aud": "https://elsewhere/"}),
           "exp": tok("EdDSA", "gw-ed", {**c, "exp": now - 5})}, open(sys.argv[3], "w"))
EOF
tokn() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$W/tokens.json" "$1"; }
if start mcptls "$PY" "$HERE/mcp_server.py" --port 0 --log "$W/mcptls.log" --jwks "$W/bundle.json" --resource "$RES" \
     --tls-cert "$PKI/server.pem" --tls-key "$PKI/server.key" --tls-client-ca "$PKI/ca.pem"; then
  U="https://127.0.0.1:$PORT/mcp"
  M=(--cert "$PKI/client.pem" --key "$PKI/client.key" --ca "$PKI/ca.pem")
  OUT="$(timeout 60 "$PY" "$HERE/mcp_client.py" --url "$U" "${M[@]}" --header "Authorization: Bearer $(tokn es)" --tool summarize --args '{"text":"t"}')"
  check "mcp mTLS + ES256 bearer accepted" 'd["ok"] and len(d["progress_times"]) == 3'
  OUT="$(timeout 60 "$PY" "$HERE/mcp_client.py" --url "$U" "${M[@]}" --header "Authorization: Bearer $(tokn ed)" --tool delete_records --args '{"table":"t"}')"
  check "mcp mTLS + EdDSA bearer accepted" 'd["ok"]'
  OUT="$(timeout 60 "$PY" "$HERE/mcp_client.py" --url "$U" "${M[@]}" --header "Authorization: Bearer $(tokn aud)" --tool delete_records --args '{"table":"t"}')"
  check "mcp wrong aud -> 401 with resource_metadata" \
    'not d["ok"] and d["error"]["data"]["http_status"] == 401 and "resource_metadata=" in d["error"]["data"]["www_authenticate"]'
  OUT="$(timeout 60 "$PY" "$HERE/mcp_client.py" --url "$U" "${M[@]}" --header "Authorization: Bearer $(tokn exp)" --tool delete_records --args '{"table":"t"}')"
  check "mcp expired token -> 401" 'not d["ok"] and d["error"]["data"]["http_status"] == 401'
  OUT="$(timeout 60 "$PY" "$HERE/mcp_client.py" --url "$U" "${M[@]}" --tool delete_records --args '{"table":"t"}')"
  check "mcp no token -> 401 Bearer challenge" \
    'not d["ok"] and d["error"]["data"]["www_authenticate"].startswith("Bearer resource_metadata=")'
  OUT="$(timeout 60 "$PY" "$HERE/mcp_client.py" --url "$U" --ca "$PKI/ca.pem" --tool delete_records --args '{"table":"t"}'; echo "{\"rc\": $?}")"
  OUT="$(printf '%s' "$OUT" | tail -n 1)"
  check "mcp without client certificate -> exit 2" 'd["rc"] == 2'
  stop_last
fi

# ---------------------------------------------------------------- A2A
if start a2a "$PY" "$HERE/a2a_agent.py" --port 0 --log "$W/a2a.log"; then
  B="http://127.0.0.1:$PORT/"
  OUT="$(timeout 60 "$PY" "$HERE/a2a_client.py" --base "$B" --card)"
  check "a2a card: analytics / analyze / url / v1.0 + v0.3 interfaces" \
    'd["ok"] and d["card"]["name"] == "analytics" and d["card"]["skills"][0]["id"] == "analyze" and d["card"]["url"] == "'"$B"'" and sorted(i["protocolVersion"] for i in d["card"]["supportedInterfaces"]) == ["0.3", "1.0"]'
  OUT="$(timeout 60 "$PY" "$HERE/a2a_client.py" --base "$B" --send "Q3 revenue" --header 'Fedgate-Scope: analytics:read')"
  check "a2a v1.0 SendMessage -> completed task with artifact" \
    'd["ok"] and d["state"] == "TASK_STATE_COMPLETED" and d["artifact_text"] == "analysis of: Q3 revenue" and "task" in d["response"]["result"]'
  OUT="$(timeout 60 "$PY" "$HERE/a2a_client.py" --base "$B" --send "Q4 costs" --v03)"
  check "a2a v0.3 message/send -> completed task with artifact" \
    'd["ok"] and d["state"] == "TASK_STATE_COMPLETED" and d["response"]["result"]["kind"] == "task" and d["response"]["result"]["status"]["state"] == "completed"'
  OUT="$(cat "$W/a2a.log" | "$PY" -c 'import json,sys; print(json.dumps([json.loads(l) for l in sys.stdin]))')"
  check "a2a log: methods, task ids, fedgate-* headers" \
    '[r["rpc_method"] for r in d if r["method"] == "POST"] == ["SendMessage", "message/send"] and all(r["task_id"] for r in d if r["method"] == "POST") and d[1]["fedgate"] == {"fedgate-scope": "analytics:read"}'
  stop_last
fi

# ---------------------------------------------------------------- RFC 9421
OUT="$(timeout 120 "$PY" "$HERE/selftest_httpsig.py" | tail -n 1 | "$PY" -c 'import sys,json; l=sys.stdin.read().split(); print(json.dumps({"passed": int(l[0]), "failed": int(l[2])}))')"
check "selftest_httpsig.py: all passed" 'd["failed"] == 0 and d["passed"] >= 20'

# ---------------------------------------------------------------- OIDC, with a key rotation
OPORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
OIDC=(node "$NODE_DIR/server.mjs" --port "$OPORT" --cert "$PKI/server.pem" --key "$PKI/server.key"
      --jwks "$W/idp.jwks.json" --client-id agent-app --redirect-uri https://agent.company.com/cb)
LOGIN=("$PY" "$HERE/oidc_login.py" --issuer "https://127.0.0.1:$OPORT" --ca "$PKI/ca.pem"
       --client-id agent-app --redirect-uri https://agent.company.com/cb)
KID1="$(node "$NODE_DIR/genkeys.mjs" --out "$W/idp.jwks.json")"
if start oidc1 "${OIDC[@]}"; then
  OUT="$(timeout 60 "${LOGIN[@]}" --acr urn:fedgate:acr:mfa --amr pwd,otp --age 600)"
  check "oidc login: RS256 ID token with iss aud exp iat auth_time email acr amr" \
    'all(k in d["claims"] for k in ("iss","aud","exp","iat","auth_time","email","acr","amr")) and d["header"]["alg"] == "RS256" and d["claims"]["email"] == "alice@company.com" and d["claims"]["acr"] == "urn:fedgate:acr:mfa" and d["claims"]["amr"] == ["pwd","otp"] and 590 <= d["claims"]["iat"] - d["claims"]["auth_time"] <= 615 and d["signature_valid"] and d["header"]["kid"] == "'"$KID1"'"'
  stop_last
fi
KID2="$(node "$NODE_DIR/genkeys.mjs" --append "$W/idp.jwks.json" --out "$W/idp.jwks.json")"
if start oidc2 "${OIDC[@]}"; then
  OUT="$(timeout 60 "${LOGIN[@]}")"
  check "oidc after rotation: new kid signs, old kid still published" \
    'd["header"]["kid"] == "'"$KID2"'" and d["jwks_kids"] == ["'"$KID2"'", "'"$KID1"'"] and d["signature_valid"] and "auth_time" in d["claims"]'
  stop_last
fi

rm -rf "$W"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
