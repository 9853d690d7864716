#!/usr/bin/env bash
# The single-node benchmark (issue 3): one ledgerd at the dev difficulty (16), driven
# by ledger-loadgen with 100-byte unsigned entries on loopback.
#
#   cargo build --release -p ledger --bins -p ledger-benches
#   benches/single.sh [WORKDIR] [SECONDS]
#
# Prints saturation (committed entries/s with $CLIENTS clients submitting without
# waiting), then commit latency with every submit waiting for its commit, paced at
# half that rate over $PACED clients (so the pacing, not their number, sets the
# rate). Targets: >= 20 000 entries/s at saturation, p99 <= 50 ms at half of it.
#
# TLS=1 serves the API over TLS (a CA and certificate made with openssl), TOKEN=1
# needs a submit token, SECURE=1 both; the load generator then uses them, so the
# cost of each can be measured.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/ledger-single-bench}
seconds=${2:-10}
clients=${CLIENTS:-64}
paced=${PACED:-1024}
bin=${BIN:-target/release}  # BIN=DIR compares another build
port=${PORT:-27300}
rm -rf "$work"
mkdir -p "$work"

"$bin/ledgerd" dev init --nodes 1 --dir "$work/ledger" --base-port "$port" --difficulty 16 >/dev/null
scheme=http
loadgen_security=()
curl_security=()
# SECURE=1 is TLS=1 TOKEN=1; each alone measures its own part.
if [ "${SECURE:-0}" = 1 ]; then TLS=1 TOKEN=1; fi
if [ "${TLS:-0}" = 1 ]; then
    tls="$work/tls"
    ops/test-ca.sh "$tls"
    config="$work/ledger/node0/ledgerd.toml"
    printf '\n[api]\ntls_cert = "%s"\ntls_key = "%s"\n\n' "$tls/api.crt" "$tls/api.key" >>"$config"
    scheme=https
    loadgen_security+=(--cacert "$tls/ca.pem")
    curl_security+=(--cacert "$tls/ca.pem")
fi
if [ "${TOKEN:-0}" = 1 ]; then
    printf '\n' >>"$work/ledger/node0/ledgerd.toml"
    "$bin/ledgerd" token new --role submit --name bench --out "$work/bench.token" \
        >>"$work/ledger/node0/ledgerd.toml" 2>/dev/null
    loadgen_security+=(--token "$(cat "$work/bench.token")")
fi
RUST_LOG=warn "$bin/ledgerd" run --config "$work/ledger/node0/ledgerd.toml" 2>>"$work/node0.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -sf "${curl_security[@]}" "$scheme://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

loadgen() {
    "$bin/ledger-loadgen" --addr "127.0.0.1:$port" --duration "$seconds" \
        "${loadgen_security[@]}" "$@"
}
# The node's CPU seconds (user + system) so far, from /proc.
cpu() { awk -v tick="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / tick }' "/proc/$pid/stat"; }
echo "== single node: saturation, $clients clients not waiting"
before=$(cpu)
loadgen --clients "$clients" | tee "$work/saturation.txt"
committed=$(awk '/node committed/ { print $3 }' "$work/saturation.txt")
awk -v a="$before" -v b="$(cpu)" -v n="$committed" \
    'BEGIN { printf "  node CPU: %.2f s, %.1f ms per 1000 committed entries\n", b - a, (b - a) * 1e6 / n }'
rate=$(awk '/entries\/s/ { print $(NF-1) }' "$work/saturation.txt")
half=$(( ${rate%.*} / 2 ))
[ "$half" -gt 0 ] || half=100
echo "== single node: half load, $half/s paced over $paced clients waiting for commits"
loadgen --clients "$paced" --wait --rate "$half"
kill -INT $pid
wait $pid
