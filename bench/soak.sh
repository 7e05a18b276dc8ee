#!/usr/bin/env bash
# Soak: two gateways (company.com, vendor.example; release build) under mixed traffic for
# MINUTES (default 30): allowed crossings, denied ones (scope beyond the chain), token
# exchange with the token used and then replayed, revocations, reloads of both gateways every
# two minutes, and a key rotation of company.com's gateway at a third of the
# run. Every minute bench/soak_driver.py samples each gateway's RSS, open file descriptors and
# open sockets, and it counts every answer. It fails if any answer is not the intended one, or
# if RSS, descriptors or sockets grow (the last third's mean more than 10 % and 8 MiB / 16
# above the middle third's).
#
# Usage: bench/soak.sh [MINUTES]   (FEDGATE_BIN=path skips the build; KEEP=DIR keeps the files)
set -euo pipefail
cd "$(dirname "$0")/.."
MIN=${1:-30}
if [ -n "${FEDGATE_BIN:-}" ]; then FG=$FEDGATE_BIN; else
  echo "building fedgate (release)..." >&2
  cargo build --release --quiet
  FG=$PWD/target/release/fedgate
fi
T=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp -a "$T"/. "$KEEP"/; fi
  rm -rf "$T"
}
trap cleanup EXIT
read -r P_UP P_CI P_CF P_CA P_VI P_VF P_VA < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(7)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')

$FG init --trust-domain company.com --out "$T/co" --internal 127.0.0.1:$P_CI \
  --federation 127.0.0.1:$P_CF --admin 127.0.0.1:$P_CA --agent planning/p1 >/dev/null
$FG init --trust-domain vendor.example --out "$T/ve" --internal 127.0.0.1:$P_VI \
  --federation 127.0.0.1:$P_VF --admin 127.0.0.1:$P_VA --agent analytics/a1 >/dev/null
cp "$T/co/bundles/company.com.json" "$T/ve/bundles/"
cp "$T/ve/bundles/vendor.example.json" "$T/co/bundles/"
python3 bench/soak_driver.py setup "$T" "$P_UP" "$P_CF" "$P_VF"
for d in co ve; do cp "$T/agreement.toml" "$T/$d/agreements/soak.toml"; done
$FG agreement sign --agreement "$T/co/agreements/soak.toml" --key "$T/co/keys/gateway.key" \
  --trust-domain company.com >/dev/null
$FG agreement sign --agreement "$T/co/agreements/soak.toml" --key "$T/ve/keys/gateway.key" \
  --trust-domain vendor.example >/dev/null
cp "$T"/co/agreements/soak.*.sig "$T/ve/agreements/"

python3 bench/soak_driver.py upstream "$P_UP" >/dev/null 2>&1 & PIDS+=($!)
FEDGATE_LOG=warn $FG serve --config "$T/co/gateway.toml" 2>"$T/co.log" & CO=$!; PIDS+=($CO)
FEDGATE_LOG=warn $FG serve --config "$T/ve/gateway.toml" 2>"$T/ve.log" & VE=$!; PIDS+=($VE)
for p in $P_UP $P_CI $P_VF $P_CA $P_VA; do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.05; done
done
for i in $(seq 0 63); do
  $FG chain issue --dir "$T/co" --human alice@company.com \
    --to spiffe://company.com/agent/planning/p1 --scope "analytics:*" --task "soak-$i" \
    --ttl 2h > "$T/chain-$i.txt"
done
python3 bench/soak_driver.py run "$T" "$FG" "$MIN" "$CO" "$VE" "$P_CI" "$P_VF" "$P_CA" "$P_VA"
