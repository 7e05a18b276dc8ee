#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60), one after the other, with
# a corpus seeded from the repository's test vectors and a fresh demo's files, and prints one
# line per target: executions, executions per second, corpus size, findings. Exits 1 if any
# target found a crash (the input is left in fuzz/artifacts/<target>/).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs the nightly toolchain (sanitizer flags) and cargo-fuzz (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo +nightly --version >/dev/null

# Seeds: every vector, conformance file and a fresh demo's bundles, agreements and exports.
SEEDS=$(mktemp -d)
trap 'rm -rf "$SEEDS"' EXIT
cargo build --quiet --bin fedgate
target/debug/fedgate demo --keep "$SEEDS/demo" >/dev/null
seed() { # target files...
  local t=$1; shift
  mkdir -p "fuzz/corpus/$t"
  for f in "$@"; do [ -f "$f" ] && cp "$f" "fuzz/corpus/$t/seed-$(sha256sum "$f" | cut -c1-16)"; done
  return 0
}
seed chain tests/vectors/chains/*.chain
seed federation_token tests/vectors/chains/*.chain
seed bundle tests/data/spiffe/bundles/*.json tests/vectors/chains/bundles/*.json "$SEEDS"/demo/*/bundles/*.json
seed agreement federation-agreements/*.toml "$SEEDS"/demo/company.com/agreements/*.toml
seed audit_export "$SEEDS"/demo/*/audit.jsonl
mkdir -p fuzz/corpus/spiffe_id
for id in spiffe://company.com/agent/planning/p1 spiffe://vendor.example/gateway spiffe://a.b/c%20d spiffe://x/y/../z; do
  printf '%s' "$id" > "fuzz/corpus/spiffe_id/seed-$(printf '%s' "$id" | sha256sum | cut -c1-16)"
done

TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(cd fuzz && cargo +nightly fuzz list)
fi
(cd fuzz && cargo +nightly fuzz build -O >/dev/null 2>&1)
printf '%-18s %8s %14s %10s %8s %s\n' target seconds executions exec/s corpus findings
failed=0
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log=$(mktemp)
  set +e
  (cd fuzz && cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
      -max_total_time="$SECS" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1)
  rc=$?
  set -e
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  rate=$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  found=$(find "fuzz/artifacts/$t" -type f | wc -l)
  printf '%-18s %8s %14s %10s %8s %s\n' "$t" "$SECS" "${execs:-?}" "${rate:-?}" "$corpus" "$found"
  if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
    failed=1
    grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5 >&2
  fi
  rm -f "$log"
done
exit $failed
