#!/usr/bin/env bash
# Fuzzes every decoder for SECONDS each (default 20): seeds the corpora from a small
# valid chain (server/examples/fuzz_seeds.rs), builds the targets with cargo-fuzz on
# the nightly toolchain, runs each one, and exits non-zero on the first crash, whose
# input libFuzzer leaves under fuzz/artifacts/TARGET/.
#
#   cargo install cargo-fuzz      # once
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Each target is built just before it runs. With TIDY=1 its binary (about 90 MB:
# AddressSanitizer and line tables) is deleted once it ran clean, so a run needs the
# disk of one target, not of twenty; CI runs `TIDY=1 fuzz/run.sh 10`. Corpora grow
# under fuzz/corpus/ (not committed): a long run started later goes on from what
# earlier runs found.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
cargo run -q -p ledger --features testing --example fuzz_seeds -- fuzz/corpus >/dev/null
out=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    cargo +nightly fuzz build -O "$target"
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
    if [ "${TIDY:-0}" = 1 ]; then
        [ -e "$out/$target" ] || echo "TIDY=1: no $out/$target to delete" >&2
        rm -f "$out/$target" "$out/deps/$target"-*
    fi
done
