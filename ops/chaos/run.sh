#!/usr/bin/env bash
# The fault-injection harness (ops/chaos/README.md): builds ledgerd, ledgerctl, the
# test-only ledgerd-byzantine and the harness, then runs one seeded run over real
# processes in network namespaces. Exit status 0 only when every check holds.
#
#   ops/chaos/run.sh [--seed N] [--duration SECONDS] [--members N] [ledger-chaos options]
#
# PROFILE=debug runs debug builds (CI's test step has built most of them already).
# Needs root: network namespaces, iptables, tmpfs mounts.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
    echo "ops/chaos/run.sh needs root (network namespaces, iptables, tmpfs mounts)" >&2
    exit 2
fi
missing=()
for tool in ip iptables mount; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "ops/chaos/run.sh needs ${missing[*]} (Debian: iproute2, iptables, mount)" >&2
    exit 2
fi
# Clock skew goes through libfaketime; installed when apt can.
if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] && command -v apt-get >/dev/null; then
    echo "== installing faketime (clock skew)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
fi
profile=${PROFILE:-release}
flags=()
[ "$profile" = release ] && flags=(--release)
echo "== building ($profile)"
cargo build -q "${flags[@]}" -p ledger --bins
cargo build -q "${flags[@]}" -p ledger --features byzantine --bin ledgerd-byzantine
cargo build -q "${flags[@]}" -p ledger-benches --bin ledger-chaos
exec "target/$profile/ledger-chaos" --bin "target/$profile" "$@"
