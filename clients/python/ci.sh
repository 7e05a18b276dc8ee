#!/usr/bin/env bash
# The Python SDK's CI step: a fresh venv, `pip install ./clients/python[test,test-spiffe]`, its
# pytest suite against the fedgate binary. pytest's exit 5 ("no tests ran") is a failure here, and
# so is a skip for want of the binary or of py-spiffe (FEDGATE_REQUIRE_BIN, FEDGATE_REQUIRE_SPIFFE).
# Needs `python3 -m venv` (Debian/Ubuntu: the python3-venv package) and access to PyPI.
# Usage: clients/python/ci.sh [FEDGATE_BIN]   (default: target/debug/fedgate of this repository)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${1:-${FEDGATE_BIN:-$repo/target/debug/fedgate}}"
case "$bin" in /*) ;; *) bin="$repo/$bin" ;; esac
venv="$(mktemp -d "${TMPDIR:-/tmp}/fedgate-agent-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
if ! python3 -m venv "$venv"; then
  echo "ci.sh: 'python3 -m venv' failed: install python3-venv (Debian/Ubuntu) or a Python with venv" >&2
  exit 1
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$here[test,test-spiffe]"
cd "$here"
set +e
FEDGATE_BIN="$bin" FEDGATE_REQUIRE_BIN=1 FEDGATE_REQUIRE_SPIFFE=1 "$venv/bin/pytest" -p no:cacheprovider tests
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
