#!/usr/bin/env bash
# Make a throw-away test CA, a server certificate and a client certificate with openssl.
#
#   tests/peers/make_test_ca.sh OUTDIR [CLIENT_URI_SAN]
#
# OUTDIR/ca.pem, ca.key                   self-signed CA (P-256, 2 days)
# OUTDIR/server.pem, server.key           leaf, SAN IP:127.0.0.1, IP:::1, DNS:localhost, serverAuth
# OUTDIR/client.pem, client.key           leaf, SAN URI:CLIENT_URI_SAN (default
#                                         spiffe://company.com/agent/test), clientAuth
# Keys are unencrypted PKCS#8 PEM. Not a SPIFFE trust bundle: for peers and TLS plumbing only.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR [CLIENT_URI_SAN]" >&2; exit 2; }
OUT="$1"
URI="${2:-spiffe://company.com/agent/test}"
command -v openssl >/dev/null || { echo "make_test_ca.sh: openssl not found" >&2; exit 1; }
mkdir -p "$OUT"
cd "$OUT"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=fedgate test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" -out ca.pem

leaf() { # name subject ext-file-content
  key "$1.key"
  openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 2 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

leaf server "/CN=127.0.0.1" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost"

leaf client "/CN=test client" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=$(printf 'URI:%s' "$URI")"

rm -f ca.srl
openssl verify -CAfile ca.pem server.pem client.pem >/dev/null
echo "make_test_ca.sh: wrote $(pwd)/{ca,server,client}.{pem,key}" >&2
