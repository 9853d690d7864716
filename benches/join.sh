#!/usr/bin/env bash
# The joining benchmark (issue 17): a 4-member cluster filled with $ENTRIES entries
# of 100 bytes; then member 3 loses its data directory and rejoins, (a) replaying
# every block from its peers (join_from_snapshot = false), (b) from a snapshot, one
# after the other in the same run, each while a paced load of waiting clients
# commits through member 1.
#
#   cargo build --release -p ledger --bins -p ledger-benches
#   benches/join.sh [WORKDIR] [ENTRIES]
#
# Prints per way: seconds from the start of the process until it validates new
# blocks (its height reaches the others' tip of half a second before), until it
# holds the whole history (history_from = 1), the snapshot bytes it fetched against
# the size of the entry ids (32 bytes each), its peak RSS, and the cluster's
# committed rate during the join against the same load without one.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/ledger-join-bench}
entries=${2:-1000000}
rate=${RATE:-}             # the paced load during each join; half the fill rate if unset
load_seconds=${LOAD:-40}   # how long that load runs
cache_mib=${CACHE_MIB:-}   # the joiner's database cache (cache_mib) in both ways; redb's default if unset
bin=${BIN:-target/release}
base=27500
rm -rf "$work"
mkdir -p "$work"

"$bin/ledgerd" dev init --nodes 4 --dir "$work/ledger" --base-port $base >/dev/null
pids=()
start_node() {
    local level=warn
    [ "$1" = 3 ] && level=info  # the joiner's progress lines
    RUST_LOG=$level "$bin/ledgerd" run --config "$work/ledger/node$1/ledgerd.toml" \
        2>>"$work/node$1.log" &
    pids[$1]=$!
}
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT
for i in 0 1 2 3; do start_node $i; done
member() { echo "http://127.0.0.1:$((base + 2 * $1))"; }
for _ in $(seq 100); do
    "$bin/ledgerctl" --node "$(member 1)" status >/dev/null 2>&1 && break
    sleep 0.1
done
"$bin/ledgerctl" --node "$(member 1)" submit warm-up --wait >/dev/null
log_size() { curl -sf "$(member 1)/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["log_size"])'; }

echo "== filling the cluster with $entries entries of 100 bytes"
started=$(date +%s)
while [ "$(log_size)" -lt "$entries" ]; do
    "$bin/ledger-loadgen" --addr "127.0.0.1:$((base + 2))" --clients 64 --duration 10 \
        >/dev/null
done
filled=$(log_size)
elapsed=$(( $(date +%s) - started ))
echo "   $filled entries in $elapsed s"
# Half of what the cluster committed while filling: the half load of the issue.
[ -n "$rate" ] || rate=$(( filled / (elapsed > 0 ? elapsed : 1) / 2 ))

# What the fill left in the pools commits first, so the loads below measure only
# themselves.
pool() { curl -sf "$(member 1)/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pool_size"])'; }
for _ in $(seq 600); do
    [ "$(pool)" -eq 0 ] && break
    sleep 1
done

loadgen() {
    "$bin/ledger-loadgen" --addr "127.0.0.1:$((base + 2))" --clients 256 --wait \
        --rate "$rate" --duration "$load_seconds"
}
rate_of() { awk '/node committed/ { print $(NF-1) }' "$1"; }
echo "== the load alone: $rate/s paced over 256 waiting clients for $load_seconds s"
loadgen | tee "$work/load-alone.txt"

for way in replay snapshot; do
    echo "== member 3 loses its data directory and rejoins by $way, under the same load"
    kill "${pids[3]}"
    wait "${pids[3]}" 2>/dev/null || true
    rm -rf "$work/ledger/node3/data"
    config="$work/ledger/node3/ledgerd.toml"
    sed -i '/^join_from_snapshot = /d; /^cache_mib = /d' "$config"
    [ "$way" = replay ] && echo 'join_from_snapshot = false' >>"$config"
    [ -n "$cache_mib" ] && echo "cache_mib = $cache_mib" >>"$config"
    loadgen >"$work/load-$way.txt" &
    load=$!
    sleep 1
    # Timed from the process's start: on the busy machine Python began polling
    # 0.25-0.38 s after it, which timing from the script's own start left out.
    spawned=$(date +%s.%N)
    start_node 3
    python3 - "$(member 0)" "$(member 3)" "${pids[3]}" "$work/node3.log" "$spawned" <<'PY'
import json, re, sys, time, urllib.request
others, joiner, pid, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
spawned = float(sys.argv[5])
def get(url, raw=False):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read()
            return body if raw else body.decode()
    except Exception:
        return None
def status(url):
    text = get(url + "/v1/status")
    return json.loads(text) if text else None
def peak_rss():
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) // 1024
deadline = time.monotonic() + 3600
validating = history = None
rss = 0
# The others' height over time: the joiner validates new blocks once it holds what
# they held LAG seconds before. A member that lost its disk abstains for a while and
# follows the chain by fetching each retransmit interval (250 ms), so it trails by
# up to that; asking it to match a tip that moves every 125 ms would time a poll's
# luck, not the join.
LAG = 0.5
theirs_seen = []
while time.monotonic() < deadline and history is None:
    rss = max(rss, peak_rss())
    mine, theirs = status(joiner), status(others)
    now = time.time() - spawned
    if theirs and validating is None:
        theirs_seen.append((now, theirs["height"]))
        # Keep one sample at least LAG old: the newest such is what the joiner must hold.
        while len(theirs_seen) > 1 and theirs_seen[1][0] <= now - LAG:
            theirs_seen.pop(0)
    if mine and theirs:
        old = theirs_seen[0]
        if validating is None and old[0] <= now - LAG and mine["height"] >= old[1]:
            validating = now
        if validating is not None and mine["history_from"] == 1:
            history = now
    time.sleep(0.1)
metrics = get(joiner + "/metrics") or ""
def metric(name):
    found = re.search(rf"^{name} (\d+)$", metrics, re.M)
    return int(found.group(1)) if found else 0
fetched = metric("ledger_snapshot_bytes_fetched_total")
print(f"   validating new blocks after {validating:.1f} s; whole history after {history:.1f} s")
restored = re.findall(r"restored from a snapshot.*?height=(\d+).*?manifest_bytes=(\d+) "
                      r"peak_rss_mib=(\d+) released_mib=(\d+)", open(log).read())
if restored:
    # What a join transfers before it validates: the manifest, the chunks (the ids,
    # 32 bytes each) and block h, against the ids alone.
    h, manifest, join_rss, released = (int(x) for x in restored[-1])
    ids = json.loads(get(f"{others}/v1/blocks/{h}"))["log_size"]
    block = len(get(f"{others}/v1/blocks/{h}/committed", raw=True) or b"")
    total = fetched + manifest + block
    print(f"   snapshot at {h}: {ids} ids; fetched {fetched} B of chunks, {manifest} B of "
          f"manifest, {block} B of block {h}: {total / (32 * ids):.3f}x the ids' {32 * ids} B")
    print(f"   peak RSS of the join itself {join_rss} MiB, "
          f"{released} MiB of it handed back once restored")
print(f"   history blocks fetched {metric('ledger_history_blocks_fetched_total')}")
print(f"   peak RSS of the joiner process, running node included {rss} MiB")
PY
    wait $load || true
    echo "   the load meanwhile: $(rate_of "$work/load-$way.txt") committed entries/s, alone $(rate_of "$work/load-alone.txt")"
    grep -E "latency" "$work/load-$way.txt" | sed 's/^/   /' || true
done

echo "== once more by snapshot, the load started only once it validates: the backfill under load"
kill "${pids[3]}"
wait "${pids[3]}" 2>/dev/null || true
rm -rf "$work/ledger/node3/data"
sed -i '/^join_from_snapshot = /d' "$work/ledger/node3/ledgerd.toml"
start_node 3
python3 - "$(member 0)" "$(member 3)" <<'PY'
import json, sys, time, urllib.request
others, joiner = sys.argv[1], sys.argv[2]
def status(url):
    try:
        with urllib.request.urlopen(url + "/v1/status", timeout=5) as r:
            return json.loads(r.read())
    except Exception:
        return None
deadline = time.monotonic() + 3600
while time.monotonic() < deadline:
    mine, theirs = status(joiner), status(others)
    if mine and theirs and mine["height"] >= theirs["height"]:
        print(f"   validating; history from block {mine['history_from']}")
        break
    time.sleep(0.2)
PY
loadgen >"$work/load-backfill.txt"
left=$(curl -sf "$(member 3)/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["history_from"])')
echo "   after the load, history from block $left (above 1: the backfill ran through the whole load)"
echo "   the load during the backfill: $(rate_of "$work/load-backfill.txt") committed entries/s, alone $(rate_of "$work/load-alone.txt")"
grep -E "latency" "$work/load-backfill.txt" | sed 's/^/   /' || true
grep -E "latency" "$work/load-alone.txt" | sed 's/^/   alone: /' || true
