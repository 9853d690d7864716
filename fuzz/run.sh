#!/usr/bin/env bash
# Fuzzes every decoder for SECONDS each (default 20): seeds the corpora from a small
# valid chain (server/examples/fuzz_seeds.rs), builds the targets with cargo-fuzz on
# the nightly toolchain, runs each one, and exits non-zero on the first crash, whose
# input libFuzzer leaves under fuzz/artifacts/TARGET/.
#
#   cargo install cargo-fuzz      # once
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# CI runs `fuzz/run.sh 20`. Corpora grow under fuzz/corpus/ (not committed): a long
# run started later goes on from what earlier runs found.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
cargo run -q -p ledger --features testing --example fuzz_seeds -- fuzz/corpus >/dev/null
cargo +nightly fuzz build -O
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    log=$(mktemp)
    if ! cargo +nightly fuzz run -O "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
        rm -f "$log"
        exit 1
    fi
    runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
    coverage=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    echo "$target: $runs runs in ${seconds} s, coverage $coverage edges, no crash"
    rm -f "$log"
done
