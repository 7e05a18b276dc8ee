#!/usr/bin/env bash
# Regenerates trust-bundles/ and the signatures in federation-agreements/ for the demo domains
# company.com and vendor.example, the way two organizations would: each runs `fedgate init`,
# they exchange bundles, and each signs the agreement with its own gateway key. The private keys
# live only in a temporary directory and are deleted at the end: nothing secret is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
fedgate=target/debug/fedgate
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

$fedgate init --trust-domain company.com --out "$tmp/company.com" \
  --internal 127.0.0.1:8443 --federation 127.0.0.1:9443 --admin 127.0.0.1:9090 \
  --agent planning/p1 --agent inventory/i1 --agent report/r1 >/dev/null
$fedgate init --trust-domain vendor.example --out "$tmp/vendor.example" \
  --internal 127.0.0.1:8444 --federation 127.0.0.1:9444 --admin 127.0.0.1:9091 \
  --agent analytics/a1 >/dev/null

mkdir -p trust-bundles
cp "$tmp/company.com/bundles/company.com.json" trust-bundles/
cp "$tmp/vendor.example/bundles/vendor.example.json" trust-bundles/

agreement=federation-agreements/company-vendor-analytics.toml
$fedgate agreement lint "$agreement"
$fedgate agreement sign --agreement "$agreement" --key "$tmp/company.com/keys/gateway.key" \
  --trust-domain company.com --bundles trust-bundles
$fedgate agreement sign --agreement "$agreement" --key "$tmp/vendor.example/keys/gateway.key" \
  --trust-domain vendor.example --bundles trust-bundles
$fedgate agreement verify --bundles trust-bundles "$agreement"
