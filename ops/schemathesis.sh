#!/usr/bin/env bash
# Runs schemathesis (PyPI `schemathesis`) against one node serving its API over TLS
# with tokens, as an operator would run it: every check of the OpenAPI document
# (status codes, schemas, headers, auth actually enforced, stateful links) with an
# admin token. Exit 0 when nothing failed.
#
#   cargo build --release -p ledger --bins
#   ops/schemathesis.sh [EXAMPLES_PER_OPERATION]
#
# `positive_data_acceptance` is left out: it expects every schema-valid request to be
# accepted, and a schema cannot say that a signature must verify or that `from` must
# not exceed `to`; those requests are answered 422 and 400 with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-300}
bin=${BIN:-target/release}
port=${PORT:-27400}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
pid=

"$bin/ledgerd" dev init --nodes 1 --dir "$work/dev" --base-port "$port" --difficulty 8 >/dev/null
tls="$work/tls"
ops/test-ca.sh "$tls"
config="$work/dev/node0/ledgerd.toml"
printf '\n[api]\ntls_cert = "%s"\ntls_key = "%s"\n\n' "$tls/api.crt" "$tls/api.key" >>"$config"
"$bin/ledgerd" token new --role admin --name schemathesis --out "$work/admin.token" \
    >>"$config" 2>/dev/null

RUST_LOG=warn "$bin/ledgerd" run --config "$config" 2>"$work/node.log" &
pid=$!
for _ in $(seq 100); do
    curl -sf --cacert "$tls/ca.pem" "https://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.1
done
kill -0 "$pid" 2>/dev/null || { cat "$work/node.log" >&2; exit 1; }

status=0
st run "https://127.0.0.1:$port/v1/openapi.json" --tls-verify "$tls/ca.pem" \
    -H "Authorization: Bearer $(cat "$work/admin.token")" \
    --checks all --exclude-checks positive_data_acceptance \
    -n "$examples" --workers 2 || status=$?
if grep -qi panick "$work/node.log"; then
    echo "the node panicked:" >&2
    cat "$work/node.log" >&2
    status=1
fi
exit "$status"
