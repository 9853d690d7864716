#!/usr/bin/env bash
# Makes a throwaway certificate authority and a certificate for an API on 127.0.0.1
# (and localhost) with openssl, for trying TLS out and for the benchmarks:
# DIR/ca.pem (give it to clients: --cacert), DIR/api.crt and DIR/api.key (the
# node's [api] tls_cert and tls_key). Valid for a day. Never for production.
#
#   ops/test-ca.sh DIR
set -euo pipefail
dir=${1:?usage: ops/test-ca.sh DIR}
mkdir -p "$dir"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -days 1 -subj /CN=ledger-test-ca \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req "${ec[@]}" -subj /CN=ledger-api -keyout "$dir/api.key" -out "$dir/api.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san"
openssl x509 -req -in "$dir/api.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 1 -extfile "$dir/san" -out "$dir/api.crt" 2>/dev/null
chmod 600 "$dir/api.key" "$dir/ca.key"
