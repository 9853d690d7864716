#!/usr/bin/env bash
# A long campaign of the fault-injection harness: COUNT runs from seed FIRST, the
# members cycling through 4 to 7, each SECONDS long; one line per run, a failed
# run's working directory kept as WORK-SEED. Exit status 0 only when every run passed.
#
#   ops/chaos/campaign.sh FIRST COUNT [SECONDS] [WORK]
set -euo pipefail
cd "$(dirname "$0")/../.."
first=${1:?first seed}
count=${2:?number of runs}
seconds=${3:-120}
work=${4:-/tmp/ledger-chaos}
# Built once, and copied: a rebuild in the tree during the campaign changes nothing.
ops/chaos/run.sh --dry-run >/dev/null
bin="$work-bin"
rm -rf "$bin"
mkdir -p "$bin"
profile=${PROFILE:-release}
cp "target/$profile"/{ledgerd,ledgerctl,ledgerd-byzantine,ledger-chaos} "$bin/"
failed=0
started=$(date +%s)
for ((i = 0; i < count; i++)); do
    seed=$((first + i))
    members=$((4 + i % 4))
    log="$work.log"
    status=0
    "$bin/ledger-chaos" --bin "$bin" --seed "$seed" --members "$members" \
        --duration "$seconds" --work "$work" >"$log" 2>&1 || status=$?
    if [ "$status" -eq 2 ]; then
        # The harness itself could not run: the next runs would not either.
        tail -3 "$log"
        exit 2
    fi
    if [ "$status" -eq 0 ]; then
        verdict=passed
    else
        verdict=FAILED
        failed=$((failed + 1))
        rm -rf "$work-$seed"
        cp -r "$work" "$work-$seed" || true
        cp "$log" "$work-$seed/run.log" || true
    fi
    summary=$(grep -E "entries acknowledged and found|committed again" "$log" | tr '\n' ' ' | cut -c1-220 || true)
    echo "seed $seed, $members members: $verdict ($(grep -c '] start' "$log") faults) $summary"
done
echo "== $count runs, $failed failed, $(( $(date +%s) - started )) s"
[ "$failed" -eq 0 ]
