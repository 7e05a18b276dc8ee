#!/usr/bin/env bash
# The fedgate pair against a pair of nginx reverse proxies, in front of the same trivial
# upstream, on loopback, loaded by wrk at fixed rates and flat out.
#
#   wrk -> C (nginx, mTLS origination) -> company.com fedgate  -> vendor.example fedgate -> upstream
#   wrk -> C (nginx, mTLS origination) -> nginx A (mTLS)       -> nginx B (mTLS)         -> upstream
#
# The same client-side nginx (C) originates mTLS for both, because wrk cannot present a client
# certificate; the difference between the two rows is the pair. fedgate does everything it does
# in production on each request: chain verification (cached after the first), agreement
# decision, token mint and verification, replay cache, crossing link, receipt, and four durable
# audit appends (fdatasync, group commit).
#
# Usage: bench/crossing.sh [SECONDS_PER_RUN]   (default 10; the whole run takes ~2-3 minutes
# plus the release build). Installs nginx and wrk from Debian if missing. Cleans up after itself.
# FEDGATE_SERVE_LOG=info and KEEP_LOGS=DIR keep both gateways' logs and a timeline of the runs.
# FEDGATE_BIN=path uses a prebuilt binary (e.g. one built with frame pointers for profiling).
# PROFILE=FILE also samples both gateways with perf during the flat-out run and writes the
# hottest symbols to FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
RATES=(500 1000 2000)

need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! need nginx || ! need wrk; then
  echo "installing nginx and wrk (Debian packages)..." >&2
  (apt-get update -qq && apt-get install -y -qq nginx-light wrk) >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -n "${FEDGATE_BIN:-}" ]; then
  FG=$FEDGATE_BIN
else
  echo "building fedgate (release)..." >&2
  cargo build --release --quiet
  FG=$PWD/target/release/fedgate
fi

T=$(mktemp -d)
PIDS=()
cleanup() {
  [ -n "${KEEP_LOGS:-}" ] && mkdir -p "$KEEP_LOGS" && cp "$T"/*.log "$KEEP_LOGS"/ 2>/dev/null
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  for c in "$T"/nginx-*.conf; do [ -f "$c" ] && "$NGINX" -c "$c" -s stop 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$T"
}
trap cleanup EXIT

# Free loopback ports.
read -r P_UP P_CI P_CF P_CA P_VI P_VF P_VA P_C1 P_C2 P_A P_B < <(python3 - <<'PY'
import socket
ss=[socket.socket() for _ in range(11)]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
PY
)

# Two domains, bundles exchanged, agreement signed by both.
$FG init --trust-domain company.com --out "$T/co" --internal 127.0.0.1:$P_CI --federation 127.0.0.1:$P_CF --admin 127.0.0.1:$P_CA --agent planning/p1 >/dev/null
$FG init --trust-domain vendor.example --out "$T/ve" --internal 127.0.0.1:$P_VI --federation 127.0.0.1:$P_VF --admin 127.0.0.1:$P_VA --agent analytics/a1 --agent proxy/b1 >/dev/null
cp "$T/co/bundles/company.com.json" "$T/ve/bundles/"
cp "$T/ve/bundles/vendor.example.json" "$T/co/bundles/"
sed -i 's/^upstreams = \[\]$//' "$T/ve/gateway.toml"
cat >> "$T/ve/gateway.toml" <<EOF

[[upstreams]]
target = "spiffe://vendor.example/agent/analytics/*"
url = "http://127.0.0.1:$P_UP"
EOF
FROM=$(date -u -d '-1 day' +%Y-%m-%dT%H:%M:%SZ)
UNTIL=$(date -u -d '+1 year' +%Y-%m-%dT%H:%M:%SZ)
cat > "$T/agreement.toml" <<EOF
id = "bench"
version = 1
valid_from = $FROM
valid_until = $UNTIL
max_chain_depth = 5
max_token_ttl = "15m"
clock_skew = "30s"

[[domains]]
trust_domain = "company.com"
gateway_id = "spiffe://company.com/gateway"
gateway_url = "https://127.0.0.1:$P_CF"
bundle_endpoint = "https://127.0.0.1:$P_CF/bundle"
disclosure = { principal = "pseudonymous", chain = "digest" }

[[domains]]
trust_domain = "vendor.example"
gateway_id = "spiffe://vendor.example/gateway"
gateway_url = "https://127.0.0.1:$P_VF"
bundle_endpoint = "https://127.0.0.1:$P_VF/bundle"
disclosure = { principal = "none", chain = "digest" }

[[flows]]
from = "spiffe://company.com/agent/planning/*"
to = "spiffe://vendor.example/agent/analytics/*"
max_scope = ["analytics:*"]

[[flows.routes]]
method = "GET"
path = "/*"
scope = "analytics:*"
EOF
for d in co ve; do cp "$T/agreement.toml" "$T/$d/agreements/bench.toml"; done
$FG agreement sign --agreement "$T/co/agreements/bench.toml" --key "$T/co/keys/gateway.key" --trust-domain company.com >/dev/null
$FG agreement sign --agreement "$T/co/agreements/bench.toml" --key "$T/ve/keys/gateway.key" --trust-domain vendor.example >/dev/null
cp "$T"/co/agreements/bench.*.sig "$T/ve/agreements/"
CHAIN=$($FG chain issue --dir "$T/co" --human alice@company.com --to spiffe://company.com/agent/planning/p1 --scope "analytics:*" --task bench --ttl 2h)

# The trivial upstream (nginx answering 200).
mkconf() { # name body
  cat > "$T/nginx-$1.conf" <<EOF
worker_processes 1;
pid $T/nginx-$1.pid;
error_log $T/nginx-$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  $2
}
EOF
  "$NGINX" -c "$T/nginx-$1.conf"
}
mkconf up "server { listen 127.0.0.1:$P_UP; location / { return 200 'ok'; } }"

# fedgate pair.
FEDGATE_LOG=${FEDGATE_SERVE_LOG:-error} $FG serve --config "$T/co/gateway.toml" 2>"$T/co.log" & PIDS+=($!)
FEDGATE_LOG=${FEDGATE_SERVE_LOG:-error} $FG serve --config "$T/ve/gateway.toml" 2>"$T/ve.log" & PIDS+=($!)

# nginx pair: A and B with mTLS between C, A and B, using vendor.example's dev PKI.
CA=$T/ve/ca.pem
mkconf b "upstream up { server 127.0.0.1:$P_UP; keepalive 64; }
  server { listen 127.0.0.1:$P_B ssl; ssl_certificate $T/ve/gateway.pem; ssl_certificate_key $T/ve/keys/gateway-svid.key;
    ssl_client_certificate $CA; ssl_verify_client on;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
mkconf a "upstream b { server 127.0.0.1:$P_B; keepalive 64; }
  server { listen 127.0.0.1:$P_A ssl; ssl_certificate $T/ve/gateway.pem; ssl_certificate_key $T/ve/keys/gateway-svid.key;
    ssl_client_certificate $CA; ssl_verify_client on;
    location / { proxy_pass https://b; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_ssl_certificate $T/ve/agents/proxy/b1.pem; proxy_ssl_certificate_key $T/ve/agents/proxy/b1.key; proxy_ssl_session_reuse on; } }"
# The two client-side sidecars.
mkconf c1 "upstream fg { server 127.0.0.1:$P_CI; keepalive 64; }
  server { listen 127.0.0.1:$P_C1; location / { proxy_pass https://fg/egress/; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_ssl_certificate $T/co/agents/planning/p1.pem; proxy_ssl_certificate_key $T/co/agents/planning/p1.key; proxy_ssl_session_reuse on; } }"
mkconf c2 "upstream ng { server 127.0.0.1:$P_A; keepalive 64; }
  server { listen 127.0.0.1:$P_C2; location / { proxy_pass https://ng/; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_ssl_certificate $T/ve/agents/proxy/b1.pem; proxy_ssl_certificate_key $T/ve/agents/proxy/b1.key; proxy_ssl_session_reuse on; } }"

for i in $(seq 1 100); do
  grep -q "started" "$T/co.log" 2>/dev/null || true
  if curl -s -o /dev/null "http://127.0.0.1:$P_C1/analytics" -H "Delegation-Chain: $CHAIN" -H "Fedgate-Target: spiffe://vendor.example/agent/analytics/a1" -H "Fedgate-Scope: analytics:*" -w '%{http_code}' | grep -q 200; then break; fi
  sleep 0.2
done
for url in "http://127.0.0.1:$P_C1/analytics" "http://127.0.0.1:$P_C2/analytics"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$url" -H "Delegation-Chain: $CHAIN" -H "Fedgate-Target: spiffe://vendor.example/agent/analytics/a1" -H "Fedgate-Scope: analytics:*")
  [ "$code" = 200 ] || { echo "setup failed: $url answered $code" >&2; cat "$T"/*.log "$T"/*.err >&2; exit 1; }
done

# wrk: fixed rates through a per-connection delay (Debian's wrk has no -R), then flat out.
CONNS=20
run() { # url delay_ms conns
  cat > "$T/pace.lua" <<EOF
function delay() return $2 end
EOF
  local extra=()
  [ "$2" -gt 0 ] && extra=(-s "$T/pace.lua")
  wrk -t 2 -c "$3" -d "${DUR}s" --latency "${extra[@]}" \
    -H "Delegation-Chain: $CHAIN" -H "Fedgate-Target: spiffe://vendor.example/agent/analytics/a1" -H "Fedgate-Scope: analytics:*" \
    "$1" > "$T/wrk.out"
  local rps p50 p99 bad
  rps=$(awk '/Requests\/sec/ {print $2}' "$T/wrk.out")
  p50=$(awk '$1=="50%" {print $2}' "$T/wrk.out")
  p99=$(awk '$1=="99%" {print $2}' "$T/wrk.out")
  bad=$(awk '/Non-2xx/ {print $5}' "$T/wrk.out"); bad=${bad:-0}
  echo "$rps $p50 $p99 $bad"
}
# CPU time (ms) used so far by both fedgate processes.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ s += $14 + $15 } END { print s * 1000 / hz }' /proc/${PIDS[0]}/stat /proc/${PIDS[1]}/stat; }
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } else print v }'; }

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); $DUR s per run, $CONNS connections for fixed rates"
printf "\n%-10s | %-28s | %-28s | %-22s\n" "load" "nginx pair: rps p50 p99" "fedgate pair: rps p50 p99" "fedgate/nginx: p50 p99 Δp99"
printf -- "-----------+------------------------------+------------------------------+-----------------------\n"
for r in "${RATES[@]}" flat; do
  if [ "$r" = flat ]; then d=0; c=64; label="flat out"; else d=$(( CONNS * 1000 / r )); c=$CONNS; label="$r rps"; fi
  read -r n_rps n_p50 n_p99 n_bad < <(run "http://127.0.0.1:$P_C2/analytics" "$d" "$c")
  if [ "$r" = flat ] && [ -n "${PROFILE:-}" ]; then
    # Sample both gateways while they run flat out (software clock: no hardware counters needed).
    perf record -F 999 --call-graph fp -o "$T/perf.data" -p "${PIDS[0]},${PIDS[1]}" -- sleep "$DUR" >/dev/null 2>&1 &
    PERF=$!
  fi
  cpu0=$(cpu_ms)
  echo "$(date +%T.%N) start fedgate $label" >> "$T/timeline.log"
  read -r f_rps f_p50 f_p99 f_bad < <(run "http://127.0.0.1:$P_C1/analytics" "$d" "$c")
  echo "$(date +%T.%N) end fedgate $label" >> "$T/timeline.log"
  cpu1=$(cpu_ms)
  if [ -n "${PERF:-}" ]; then
    wait "$PERF" || true
    { perf report -i "$T/perf.data" --stdio --no-children --sort dso --percent-limit 1 -g none 2>/dev/null; perf report -i "$T/perf.data" --stdio --no-children --sort symbol --percent-limit 0.7 -g none 2>/dev/null; } | grep "%" | sed "s/  */ /g" > "$PROFILE"; cp "$T/perf.data" "$PROFILE.data" 2>/dev/null || true
    unset PERF
  fi
  np50=$(to_ms "$n_p50"); np99=$(to_ms "$n_p99"); fp50=$(to_ms "$f_p50"); fp99=$(to_ms "$f_p99")
  printf "%-10s | %8.0f %7.2fms %7.2fms | %8.0f %7.2fms %7.2fms | %5.1fx %5.1fx %+6.2fms\n" "$label" "$n_rps" "$np50" "$np99" "$f_rps" "$fp50" "$fp99" \
    "$(awk -v a="$fp50" -v b="$np50" 'BEGIN{print a/b}')" "$(awk -v a="$fp99" -v b="$np99" 'BEGIN{print a/b}')" "$(awk -v a="$fp99" -v b="$np99" 'BEGIN{print a-b}')"
  echo "           fedgate CPU: $(awk -v a="$cpu0" -v b="$cpu1" -v r="$f_rps" -v d="$DUR" 'BEGIN { printf "%.0f us per crossing (both gateways), %.0f%% of one core", (b-a)*1000/(r*d), (b-a)/(d*10) }')"
  if [ "$n_bad" != 0 ] || [ "$f_bad" != 0 ]; then echo "  non-2xx responses: nginx $n_bad, fedgate $f_bad"; fi
done
echo
echo "audit records written by the fedgate pair: company.com $(ls -la $T/co/data/audit/ | awk '/seg-/ {s+=$5} END {print s+0}') bytes, vendor.example $(ls -la $T/ve/data/audit/ | awk '/seg-/ {s+=$5} END {print s+0}') bytes"
