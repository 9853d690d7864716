#!/usr/bin/env bash
# The cluster benchmark (issues 5 and 19): a 4-member ledger cluster of four ledgerd
# processes and a 3-member etcd cluster, both on loopback, driven by the same load
# generator with 100-byte values, in the same run.
#
#   cargo build --release -p ledger --bins -p ledger-benches
#   benches/cluster.sh [WORKDIR] [SECONDS]
#
# For the ledger: saturation with $CLIENTS clients submitting without waiting; then
# one, $CLIENTS, $MANY and $MOST clients each waiting for its commit; commit latency paced
# at half the saturation rate and at half the best waiting rate ($PACED clients
# waiting, so the pacing and not the client count sets the rate); saturation again
# with $BATCH entries per request (what the cluster commits when the client API's
# cost per request is shared); the time from SIGKILL of the primary to the first
# commit in the new view. For the waiting and paced loads etcd (benches/etcd.sh,
# whose puts answer once committed) runs beside the ledger, and each load against
# the ledger is followed at once by the same load against etcd (the two paced ledger
# loads by etcd's one), so a ratio compares loads seconds apart, not minutes: this
# shared machine's speed drifts. The cluster not under load idles meanwhile
# (etcd about 2% of the machine, the ledger 1%). Every load also reports the CPU
# seconds all of the system's processes and the generator spent, and how busy the
# whole machine was (from /proc). The run ends with a table of both systems side by
# side, their ratios, the most each could commit at each load's cost per commit, and
# the most each load's clients could commit at one waiting client's latency.
#
# DELAY_MS=D puts a delaying proxy (ledger-netproxy) in front of every member's peer
# port, for both systems: each byte between two members waits D ms (one way).
# ETCD=0 runs the ledger alone; BIN=DIR takes the binaries from DIR; SET='key = value'
# sets one key in every member's ledgerd.toml (a setting's before and after).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/ledger-cluster-bench}
seconds=${2:-10}
clients=${CLIENTS:-64}
many=${MANY:-256}
most=${MOST:-1024}
paced=${PACED:-2048}  # enough waiting clients that the pacing, not their number, sets the rate
batch=${BATCH:-16}   # entries per request of the batched saturation (POST /v1/entries/batch)
bin=${BIN:-target/release}  # BIN=DIR compares another build
delay=${DELAY_MS:-0}
base=27400
proxy_base=27450  # member i's peer port seen through the proxy: proxy_base + i
etcd_proxy_base=23850
tick=$(getconf CLK_TCK)
rm -rf "$work"
mkdir -p "$work/results"

proxies=()
start_proxy() {  # LISTEN=TARGET pairs
    "$bin/ledger-netproxy" --delay-ms "$delay" "$@" 2>>"$work/netproxy.log" &
    proxies+=($!)
}
delayed() { [ "$delay" != 0 ]; }

"$bin/ledgerd" dev init --nodes 4 --dir "$work/ledger" --base-port $base >/dev/null
if [ -n "${SET:-}" ]; then
    echo "every member's ledgerd.toml sets: $SET"
    for i in 0 1 2 3; do
        toml="$work/ledger/node$i/ledgerd.toml"
        grep -v "^${SET%% =*} =" "$toml" >"$toml.new" || true
        echo "$SET" >>"$toml.new"
        mv "$toml.new" "$toml"
    done
fi
if delayed; then
    # The members learn each other's peer addresses from the genesis file: point
    # them at the proxies, which forward to the real ports the members listen on.
    pairs=()
    for i in 0 1 2 3; do
        real=$((base + 2 * i + 1))
        sed -i "s/^p2p_addr = \"127.0.0.1:$real\"/p2p_addr = \"127.0.0.1:$((proxy_base + i))\"/" \
            "$work/ledger/genesis.toml"
        pairs+=("127.0.0.1:$((proxy_base + i))=127.0.0.1:$real")
    done
    start_proxy "${pairs[@]}"
fi
pids=()
start_node() {
    RUST_LOG=warn "$bin/ledgerd" run --config "$work/ledger/node$1/ledgerd.toml" \
        2>>"$work/node$1.log" &
    pids[$1]=$!
    disown  # no "Killed" line from the shell when the primary is shot
}
stop_all() {
    for pid in "${pids[@]}" "${proxies[@]}"; do kill "$pid" 2>/dev/null || true; done
    benches/etcd.sh stop "$work/etcd" 2>/dev/null || true
}
trap stop_all EXIT
for i in 0 1 2 3; do start_node $i; done
for _ in $(seq 100); do
    "$bin/ledgerctl" --node http://127.0.0.1:$((base + 2)) status >/dev/null 2>&1 && break
    sleep 0.1
done
"$bin/ledgerctl" --node http://127.0.0.1:$((base + 2)) submit warm-up --wait >/dev/null

# CPU ticks (user + system) of the processes given, alive or not.
ticks() {
    local sum=0 pid
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] || continue
        # Fields after the ")" that ends the name: utime and stime are the 12th and 13th.
        sum=$((sum + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')))
    done
    echo "$sum"
}
# Busy and all CPU ticks of the whole machine so far (/proc/stat; idle and iowait
# are not busy, and time the hypervisor stole counts in neither).
machine() { awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8; print busy, busy + $5 + $6; exit }' /proc/stat; }
# load NAME PIDS -- LOADGEN ARGS: runs one load, prints and keeps its report, the
# CPU the processes and the generator spent during it, and how busy the machine was.
load() {
    local name=$1 ours=() before after busy0 all0 busy1 all1
    shift
    while [ "$1" != -- ]; do ours+=("$1"); shift; done
    shift
    before=$(ticks "${ours[@]}")
    read -r busy0 all0 < <(machine)
    local views_before=
    if [[ $name == ledger* ]]; then views_before=$(views); fi
    local TIMEFORMAT='generator cpu seconds %U %S'
    if ! { time "$bin/ledger-loadgen" --duration "$seconds" "$@" |
        tee "$work/results/$name.txt"; } 2>"$work/$name.stderr"; then
        grep -v '^generator cpu seconds' "$work/$name.stderr" >&2 || true
        return 1
    fi
    after=$(ticks "${ours[@]}")
    read -r busy1 all1 < <(machine)
    grep -v '^generator cpu seconds' "$work/$name.stderr" >&2 || true
    echo "cpu seconds $(awk -v t=$((after - before)) -v hz="$tick" 'BEGIN { printf "%.2f", t / hz }')" \
        | tee -a "$work/results/$name.txt"
    awk '/^generator cpu seconds/ { printf "generator cpu seconds %.2f\n", $4 + $5 }' \
        "$work/$name.stderr" | tee -a "$work/results/$name.txt"
    echo "machine busy $(awk -v b=$((busy1 - busy0)) -v a=$((all1 - all0)) \
        'BEGIN { printf "%.3f", (a > 0 ? b / a : 0) }')" | tee -a "$work/results/$name.txt"
    if [ -n "$views_before" ]; then
        echo "view changes $(($(views) - views_before))" | tee -a "$work/results/$name.txt"
    fi
}
# The view changes member 1 has seen; nothing while no ledger runs.
views() {
    [ "${#pids[@]}" -gt 0 ] || return 0
    curl -s "http://127.0.0.1:$((base + 2))/metrics" |
        awk '/^ledger_view_changes_total / { print int($2) }'
}
rate_of() { awk '/entries\/s/ { print $(NF-1) }' "$work/results/$1.txt"; }
# Waits until no member holds entries to commit: a load's backlog (the pool holds up
# to 100,000) must not be counted, or charged for CPU, in the next.
drain() {
    local i n total
    for _ in $(seq 600); do
        total=0
        for i in "${!pids[@]}"; do
            n=$(curl -s "http://127.0.0.1:$((base + 2 * i))/metrics" |
                awk '/^ledger_pool_size / { print int($2) }')
            total=$((total + ${n:-0}))
        done
        [ "$total" -eq 0 ] && return 0
        sleep 0.2
    done
    echo "the members' pools did not drain in 120 s" >&2
}
half_of() {
    local half
    half=$(( $(rate_of "$1" | cut -d. -f1) / 2 ))
    [ "$half" -gt 0 ] || half=100
    echo "$half"
}

with_etcd() { [ "${ETCD:-1}" != 0 ]; }
epids=()
etcd=()
# Starts the etcd cluster and picks the follower the generator talks to.
start_etcd() {
    local i status eport
    if delayed; then
        export ETCD_PEER_BASE=$etcd_proxy_base  # etcd.sh advertises these peer ports
        start_proxy "127.0.0.1:$((etcd_proxy_base + 1))=127.0.0.1:23801" \
            "127.0.0.1:$((etcd_proxy_base + 2))=127.0.0.1:23802" \
            "127.0.0.1:$((etcd_proxy_base + 3))=127.0.0.1:23803"
    fi
    benches/etcd.sh start "$work/etcd" >/dev/null
    epids=($(cat "$work"/etcd/e*.pid))
    # A follower, as the ledger's generator talks to a backup: each put is forwarded
    # to the leader as each entry is to the primary (either may lead after start).
    eport=23792
    for i in 1 2 3; do
        status=$(curl -s -X POST "http://127.0.0.1:2379$i/v3/maintenance/status" -d '{}')
        if python3 -c 'import json, sys; s = json.loads(sys.argv[1]); sys.exit(s["header"]["member_id"] == s["leader"])' "$status"; then
            eport=2379$i
            break
        fi
    done
    etcd=(--etcd --addr "127.0.0.1:$eport")
}

ledger=(--addr 127.0.0.1:$((base + 2)))
echo "== ledger: 4 members, through member 1; etcd: 3 members, through a follower" \
    "(one-way delay ${delay} ms)"
echo "-- ledger saturation, $clients clients not waiting"
load ledger-saturation "${pids[@]}" -- --clients "$clients" "${ledger[@]}"
# etcd runs beside the ledger only for the loads that compare the two.
if with_etcd; then start_etcd; fi
# One waiting client first: its rate is one over the commit path's latency with no
# batching and no queueing, so n clients commit at most n times it (Little's law).
for n in 1 "$clients" "$many" "$most"; do
    drain
    echo "-- ledger, $n clients each waiting for its commit"
    load "ledger-$n" "${pids[@]}" -- --clients "$n" "${ledger[@]}" --wait
    if with_etcd; then
        echo "-- etcd, $n clients each waiting for its put"
        load "etcd-$n" "${epids[@]}" -- --clients "$n" "${etcd[@]}"
    fi
done
# The load of SYSTEM's waiting clients that committed the most.
best_waiting() {
    local best=$1-$clients n
    for n in "$many" "$most"; do
        if [ "$(rate_of "$1-$n" | cut -d. -f1)" -gt "$(rate_of "$best" | cut -d. -f1)" ]; then
            best=$1-$n
        fi
    done
    echo "$best"
}
half=$(half_of ledger-saturation)
drain
echo "-- ledger half load, $half/s paced over $paced clients waiting for commits"
load ledger-half "${pids[@]}" -- --clients "$paced" "${ledger[@]}" --wait --rate "$half"
# Half of the saturation above is issue 19's half load, but a waiting entry costs
# more than one not waited for, so that rate is close to the most waiting clients
# commit. etcd's half load is half its best waiting rate: the ledger's at the same
# definition is reported beside it.
whalf=$(half_of "$(best_waiting ledger)")
drain
echo "-- ledger half of its best waiting rate, $whalf/s paced over $paced clients"
load ledger-half-waiting "${pids[@]}" -- --clients "$paced" "${ledger[@]}" --wait --rate "$whalf"
if with_etcd; then
    ehalf=$(half_of "$(best_waiting etcd)")
    echo "-- etcd half load, $ehalf/s paced over $paced clients"
    load etcd-half "${epids[@]}" -- --clients "$paced" "${etcd[@]}" --rate "$ehalf"
    benches/etcd.sh stop "$work/etcd" >/dev/null
fi
# Last of the loads, so the chain it leaves (several times longer) weighs on no other.
drain
echo "-- ledger saturation, $clients clients not waiting, $batch entries per request"
load ledger-saturation-batched "${pids[@]}" -- --clients "$clients" "${ledger[@]}" --batch "$batch"
drain

echo "-- ledger: SIGKILL of the primary under half load, to the first commit after"
"$bin/ledger-loadgen" --duration "$seconds" --clients "$paced" "${ledger[@]}" --wait \
    --rate "$half" >"$work/ledger-recovery-load.txt" &
sleep 2
python3 - "$base" "${pids[@]}" <<'PY' | tee "$work/results/ledger-recovery.txt"
import json, os, signal, sys, time, urllib.request
base, pids = int(sys.argv[1]), [int(pid) for pid in sys.argv[2:]]
def api(member):
    return f"http://127.0.0.1:{base + 2 * member}"
def statuses():
    found = []
    for member in range(len(pids)):
        try:
            with urllib.request.urlopen(f"{api(member)}/v1/status", timeout=5) as r:
                found.append(json.load(r))
        except OSError:
            pass
    return found
# The loads before may have changed the view, and a view change may still be under
# way (one member's view can lag the others'): wait until every member names the
# same view and primary twice, half a second apart, then shoot that primary, and
# submit through member 1 unless it is the one shot.
agreed, deadline = None, time.monotonic() + 30
while time.monotonic() < deadline:
    views = {(s["view"], s["primary"]) for s in statuses()}
    now = views.pop() if len(views) == 1 else None
    if now is not None and now == agreed:
        break
    agreed = now
    time.sleep(0.5)
else:
    sys.exit("the members did not agree on a view within 30 s")
view, primary_id = agreed
status = statuses()[0]
leader = next(m for m in status["members"] if m["node_id"] == primary_id)
primary = (int(leader["api_addr"].rsplit(":", 1)[1]) - base) // 2
url = f"{api(2 if primary == 1 else 1)}/v1/entries?wait=commit&timeout_ms=60000"
def commit(i):
    body = json.dumps({"data": f"recovery {time.time_ns()} {i}"}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, body), timeout=70) as r:
        return r.status
assert commit(0) == 200
os.kill(pids[primary], signal.SIGKILL)
killed = time.monotonic()
answer = commit(100)
print(f"first commit {time.monotonic() - killed:.2f} s after SIGKILL of the primary "
      f"(member {primary}, view {view}; answer {answer})")
PY
wait $! || true  # the load

python3 benches/cluster_table.py "$work/results" "$clients" "$many" "$most" "$delay"
