#!/usr/bin/env bash
# The cluster benchmark (issue 5): a 4-member ledger cluster of four ledgerd
# processes and a 3-member etcd cluster, both on loopback, driven by the same load
# generator with 100-byte values, one after the other in the same run.
#
#   cargo build --release -p ledger --bins -p ledger-benches
#   benches/cluster.sh [WORKDIR] [SECONDS]
#
# Prints, for the ledger: saturation (committed entries/s with $CLIENTS clients
# submitting without waiting, and with each of $CLIENTS and $MANY clients waiting for
# its commit), commit latency paced at half the saturation rate ($PACED clients
# waiting, so the pacing and not the client count sets the rate), and the time from
# SIGKILL of the primary to the first commit in the new view. Then the same waiting
# loads against etcd (benches/etcd.sh), whose puts answer once committed.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/ledger-cluster-bench}
seconds=${2:-10}
clients=${CLIENTS:-64}
many=${MANY:-256}
paced=${PACED:-512}  # enough waiting clients that the pacing, not their number, sets the rate
bin=${BIN:-target/release}  # BIN=DIR compares another build
base=27400
rm -rf "$work"
mkdir -p "$work"

"$bin/ledgerd" dev init --nodes 4 --dir "$work/ledger" --base-port $base >/dev/null
pids=()
start_node() {
    RUST_LOG=warn "$bin/ledgerd" run --config "$work/ledger/node$1/ledgerd.toml" \
        2>>"$work/node$1.log" &
    pids[$1]=$!
    disown  # no "Killed" line from the shell when the primary is shot
}
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    benches/etcd.sh stop "$work/etcd" 2>/dev/null || true
}
trap stop_all EXIT
for i in 0 1 2 3; do start_node $i; done
for _ in $(seq 100); do
    "$bin/ledgerctl" --node http://127.0.0.1:$((base + 2)) status >/dev/null 2>&1 && break
    sleep 0.1
done
"$bin/ledgerctl" --node http://127.0.0.1:$((base + 2)) submit warm-up --wait >/dev/null

loadgen() { "$bin/ledger-loadgen" --clients "$1" --duration "$seconds" "${@:2}"; }
rate_of() { awk '/entries\/s/ { print $(NF-1) }' "$1"; }
ledger=(--addr 127.0.0.1:$((base + 2)))
echo "== ledger, 4 members, through member 1: saturation, $clients clients not waiting"
loadgen "$clients" "${ledger[@]}" | tee "$work/ledger-saturation.txt"
for n in "$clients" "$many"; do
    echo "== ledger: saturation, $n clients each waiting for its commit"
    loadgen "$n" "${ledger[@]}" --wait
done
rate=$(rate_of "$work/ledger-saturation.txt")
half=$(( ${rate%.*} / 2 ))
[ "$half" -gt 0 ] || half=100
echo "== ledger: half load, $half/s paced over $paced clients waiting for commits"
loadgen "$paced" "${ledger[@]}" --wait --rate "$half"

echo "== ledger: SIGKILL of the primary (member 0) under half load, to the first commit after"
loadgen "$paced" "${ledger[@]}" --wait --rate "$half" >"$work/ledger-recovery-load.txt" &
sleep 2
python3 - "$base" "${pids[0]}" <<'PY'
import json, os, signal, sys, time, urllib.request
base, primary = int(sys.argv[1]), int(sys.argv[2])
url = f"http://127.0.0.1:{base + 2}/v1/entries?wait=commit&timeout_ms=60000"
def commit(i):
    body = json.dumps({"data": f"recovery {time.time_ns()} {i}"}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, body), timeout=70) as r:
        return r.status
assert commit(0) == 200
os.kill(primary, signal.SIGKILL)
killed = time.monotonic()
status = commit(100)
print(f"first commit {time.monotonic() - killed:.2f} s after SIGKILL of the primary (answer {status})")
PY
wait $! || true  # the load
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
if [ "${ETCD:-1}" = 0 ]; then  # ETCD=0: the ledger alone, to compare two builds
    exit 0
fi

benches/etcd.sh start "$work/etcd" >/dev/null
etcd=(--etcd --addr 127.0.0.1:23792)
for n in "$clients" "$many"; do
    echo "== etcd, 3 members: saturation, $n clients each waiting for its put"
    loadgen "$n" "${etcd[@]}" | tee "$work/etcd-$n.txt"
done
erate=$(rate_of "$work/etcd-$many.txt")
ehalf=$(( ${erate%.*} / 2 ))
[ "$ehalf" -gt 0 ] || ehalf=100
echo "== etcd: half load, $ehalf/s paced over $paced clients"
loadgen "$paced" "${etcd[@]}" --rate "$ehalf"
benches/etcd.sh stop "$work/etcd"
