#!/usr/bin/env bash
# Install fedgate's test-only protocol peers into CACHE_DIR.
#
#   tests/peers/install.sh CACHE_DIR
#
# Creates CACHE_DIR/venv (python3 -m venv, pip-installs requirements.txt) and
# CACHE_DIR/oidc (npm ci from oidc/package-lock.json, plus copies of server.mjs and
# genkeys.mjs, which must be run from there so that `import 'oidc-provider'` resolves).
# Idempotent: a stamp (sha256 of the inputs) makes a second run with unchanged inputs
# return at once. Safe to run concurrently (flock on CACHE_DIR/.install.lock).
# Progress goes to stderr; the last line on stdout is the venv's python path.
set -euo pipefail

die() { echo "install.sh: error: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 CACHE_DIR"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1" || die "cannot create cache dir $1"
CACHE="$(cd "$1" && pwd)"
PY="${PYTHON:-python3}"

command -v "$PY" >/dev/null || die "$PY not found (need Python >= 3.10 with venv)"
command -v node >/dev/null || die "node not found (need node >= 20 and npm)"
command -v npm >/dev/null || die "npm not found"
command -v sha256sum >/dev/null || die "sha256sum not found"

for f in requirements.txt oidc/package.json oidc/package-lock.json oidc/server.mjs oidc/genkeys.mjs; do
  [ -f "$HERE/$f" ] || die "missing $HERE/$f"
done

exec 9>"$CACHE/.install.lock"
if command -v flock >/dev/null; then
  flock -w 900 9 || die "timed out waiting for another install into $CACHE"
fi

# The node program files are copied on every run (cheap), so edits to them take effect
# without a reinstall; they are not part of the stamp.
copy_node_programs() {
  mkdir -p "$CACHE/oidc"
  cp "$HERE/oidc/server.mjs" "$HERE/oidc/genkeys.mjs" "$CACHE/oidc/"
}

STAMP_INPUT="$(
  {
    echo "install-layout-v1"
    "$PY" -c 'import sys; print(sys.version)'
    node --version
    sha256sum "$HERE/requirements.txt" "$HERE/oidc/package.json" "$HERE/oidc/package-lock.json" | awk '{print $1}'
  } | sha256sum | awk '{print $1}'
)"
STAMP="$CACHE/.stamp"
VPY="$CACHE/venv/bin/python"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_INPUT" ] \
   && [ -x "$VPY" ] && [ -f "$CACHE/oidc/node_modules/oidc-provider/package.json" ]; then
  copy_node_programs
  echo "install.sh: up to date ($CACHE)" >&2
  echo "$VPY"
  exit 0
fi
rm -f "$STAMP"

echo "install.sh: installing peers into $CACHE" >&2

# --- Python venv ---------------------------------------------------------------
if [ ! -x "$VPY" ] || ! "$VPY" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$CACHE/venv"
  "$PY" -m venv "$CACHE/venv" || die "python3 -m venv failed (is the venv module installed?)"
fi
"$VPY" -m pip install --disable-pip-version-check --no-input -q -r "$HERE/requirements.txt" >&2 \
  || die "pip install -r requirements.txt failed"
"$VPY" - <<'EOF' >&2 || die "the installed Python packages do not import"
import importlib.metadata as md
import a2a, cryptography, http_message_signatures, httpx, mcp, starlette, uvicorn  # noqa: F401
from mcp.server.mcpserver import MCPServer  # noqa: F401
print("install.sh: python peers:", ", ".join(
    f"{p}=={md.version(p)}" for p in
    ("mcp", "a2a-sdk", "http-message-signatures", "httpx", "uvicorn", "starlette", "cryptography")))
EOF

# --- oidc-provider (npm) -------------------------------------------------------
mkdir -p "$CACHE/oidc"
cp "$HERE/oidc/package.json" "$HERE/oidc/package-lock.json" "$CACHE/oidc/"
copy_node_programs
( cd "$CACHE/oidc" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2 ) \
  || die "npm ci in $CACHE/oidc failed"
[ -f "$CACHE/oidc/node_modules/oidc-provider/package.json" ] || die "oidc-provider missing after npm ci"
echo "install.sh: oidc-provider $(node -p "require('$CACHE/oidc/node_modules/oidc-provider/package.json').version")" >&2

echo "$STAMP_INPUT" > "$STAMP"
echo "install.sh: done" >&2
echo "$VPY"
