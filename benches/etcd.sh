#!/usr/bin/env bash
# A 3-member etcd cluster on loopback, the peer the cluster benchmark compares with
# (Debian's etcd-server). Usage: benches/etcd.sh start DIR | stop DIR
# Client URLs: http://127.0.0.1:23791, :23792, :23793 (JSON gateway at /v3/kv/put).
# ETCD_PEER_BASE=P advertises member i's peer URL at port P + i (a proxy in front of
# the port it listens on, 2380i), as the cluster benchmark's delayed runs do.
set -euo pipefail
command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
action=${1:?start or stop}
dir=${2:?a directory for the data and logs of the members}
peer_port() { echo $(( ${ETCD_PEER_BASE:-23800} + $1 )); }
cluster="e1=http://127.0.0.1:$(peer_port 1),e2=http://127.0.0.1:$(peer_port 2),e3=http://127.0.0.1:$(peer_port 3)"
case "$action" in
start)
    mkdir -p "$dir"
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$dir/e$i" \
            --listen-client-urls "http://127.0.0.1:2379$i" \
            --advertise-client-urls "http://127.0.0.1:2379$i" \
            --listen-peer-urls "http://127.0.0.1:2380$i" \
            --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token ledger-bench \
            >"$dir/e$i.log" 2>&1 &
        echo $! >"$dir/e$i.pid"
    done
    for _ in $(seq 100); do
        if curl -sf http://127.0.0.1:23791/health | grep -q '"health":"true"'; then
            echo "etcd cluster up: http://127.0.0.1:23791 .. 23793"
            exit 0
        fi
        sleep 0.1
    done
    echo "etcd did not become healthy; see $dir/e*.log" >&2
    exit 1
    ;;
stop)
    for i in 1 2 3; do
        [ -f "$dir/e$i.pid" ] && kill "$(cat "$dir/e$i.pid")" 2>/dev/null || true
    done
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
