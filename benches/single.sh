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
RUST_LOG=warn "$bin/ledgerd" run --config "$work/ledger/node0/ledgerd.toml" 2>>"$work/node0.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

loadgen() { "$bin/ledger-loadgen" --addr "127.0.0.1:$port" --duration "$seconds" "$@"; }
echo "== single node: saturation, $clients clients not waiting"
loadgen --clients "$clients" | tee "$work/saturation.txt"
rate=$(awk '/entries\/s/ { print $(NF-1) }' "$work/saturation.txt")
half=$(( ${rate%.*} / 2 ))
[ "$half" -gt 0 ] || half=100
echo "== single node: half load, $half/s paced over $paced clients waiting for commits"
loadgen --clients "$paced" --wait --rate "$half"
kill -INT $pid
wait $pid
