#!/usr/bin/env bash
# Fuzzes every decoder for SECONDS each (default 20): seeds the corpora from a small
# valid chain (server/examples/fuzz_seeds.rs), builds the targets with cargo-fuzz on
# the nightly toolchain, runs JOBS of them at a time (default: one per core), and
# exits non-zero after the first crash, whose input libFuzzer leaves under
# fuzz/artifacts/TARGET/.
#
#   cargo install cargo-fuzz      # once
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# No sanitizer by default: our code that the targets reach has no `unsafe` (the
# plugin ABI's raw pointers stay outside the SDK's views), so there AddressSanitizer
# could only find what Rust's own checks already stop, at 7-10 times fewer inputs a
# second and a fifth more build time (fuzz/README.md). SANITIZER=address brings it
# back, for a long run that should also watch the dependencies' own `unsafe`.
#
# Each target is built just before it runs. With TIDY=1 its binary is deleted once
# it ran clean, so a run needs the disk of a few targets, not of twenty; CI runs
# `TIDY=1 fuzz/run.sh 10`. Corpora grow under fuzz/corpus/ (not committed): a long
# run started later goes on from what earlier runs found.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
jobs=${JOBS:-$(nproc)}
sanitizer=${SANITIZER:-none}
cargo run -q -p ledger --features testing --example fuzz_seeds -- fuzz/corpus >/dev/null
out=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)

# Runs one built target for the time given; prints its line, or its log's tail.
fuzz() {
    local target=$1 log
    log=$(mktemp)
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    if ! "$out/$target" "fuzz/corpus/$target" -artifact_prefix="fuzz/artifacts/$target/" \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
        rm -f "$log"
        return 1
    fi
    local runs coverage
    runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
    coverage=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    echo "$target: $runs runs in ${seconds} s, coverage $coverage edges, no crash"
    rm -f "$log"
    if [ "${TIDY:-0}" = 1 ]; then
        [ -e "$out/$target" ] || echo "TIDY=1: no $out/$target to delete" >&2
        rm -f "$out/$target" "$out/deps/$target"-*
    fi
}

# A target that fails leaves a file here: the exit statuses of background jobs can be
# reaped by `jobs` before `wait` sees them.
failures=$(mktemp -d)
trap 'rm -rf "$failures"' EXIT
for target in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    [ -z "$(ls -A "$failures")" ] || break
    cargo +nightly fuzz build -O -a -s "$sanitizer" "$target"
    { fuzz "$target" || touch "$failures/$target"; } &
done
wait
[ -z "$(ls -A "$failures")" ]
