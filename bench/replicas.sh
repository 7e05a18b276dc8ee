#!/usr/bin/env bash
# Crossings per second of vendor.example's ingress as one replica on sled, one replica on
# PostgreSQL and two replicas on one PostgreSQL, side by side in one run (issue 13). The
# measurement is tests/bench_replicas.rs (ignored by `cargo test`), built in release; it
# starts its own PostgreSQL cluster (Debian's package, installed by the test harness when
# missing) and prints a Markdown table.
#
# Usage: bench/replicas.sh [SECONDS_PER_ROUND] [ROUNDS]   (default 5 and 3: about a minute
# plus the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_SECONDS=${1:-5} BENCH_ROUNDS=${2:-3}
cargo test --release --locked --test bench_replicas -- --ignored --nocapture --test-threads 1 2>&1 |
  grep -E '^(round|\|)'
