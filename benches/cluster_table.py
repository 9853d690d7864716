"""The closing table of benches/cluster.sh: the ledger and etcd side by side, with
the ratios issue 19 sets targets for.

Usage: cluster_table.py RESULTS CLIENTS MANY MOST DELAY_MS
RESULTS holds one report per load (ledger-LOAD.txt, etcd-LOAD.txt) as
ledger-loadgen printed it, each followed by "cpu seconds S" (the system's
processes), "generator cpu seconds S" and "machine busy F" (the busy fraction of
all cores during the load).
"""

import re
import sys
from pathlib import Path

# Issue 19's targets.
WAITING_RATIO = {0: 1.0, 1: 2.0, 2: 2.0}  # by position: CLIENTS, MANY, MOST
HALF_LOAD_P99_MS = 50.0
# Busier than this, a load is taken to be held by the CPU rather than by latency.
CPU_BOUND = 0.85
SATURATION = 20_000
VIEW_CHANGE_TIMEOUT_S = 2.0


def report(results, name):
    """What one load's report says: rate, committed, p50, p99, asked, cpu."""
    path = results / f"{name}.txt"
    if not path.exists():
        return None
    text = path.read_text()
    found = {}
    patterns = {
        "committed": r"node committed (\d+) entries",
        "acknowledged": r"(\d+) committed \(200\)",
        "seconds": r"entries, ([\d.]+) s",
        "rate": r"entries: ([\d.]+) entries/s",
        "p50": r"p50 ([\d.]+) ms",
        "p99": r"p99 ([\d.]+) ms",
        "asked": r"paced at ([\d.]+) /s",
        "cpu": r"^cpu seconds ([\d.]+)",
        "generator": r"generator cpu seconds ([\d.]+)",
        "busy": r"machine busy ([\d.]+)",
        "recovery": r"first commit ([\d.]+) s",
    }
    for key, pattern in patterns.items():
        match = re.search(pattern, text, re.MULTILINE)
        if match:
            found[key] = float(match.group(1))
    if "p99" in found and found.get("acknowledged") and found.get("seconds"):
        # Clients that wait: what they were answered, not what the node committed
        # meanwhile (a backlog of the load before would count).
        found["committed"] = found["acknowledged"]
        found["rate"] = found["acknowledged"] / found["seconds"]
    return found


def cpu_per_1000(load):
    if not load or "cpu" not in load or not load.get("committed"):
        return None
    return load["cpu"] / load["committed"] * 1000


def cell(load):
    if not load or "rate" not in load:
        return "—"
    text = f"{load['rate']:,.0f}/s"
    if "p99" in load:
        text += f"; p50 {load['p50']:.1f}, p99 {load['p99']:.1f} ms"
    cpu = cpu_per_1000(load)
    if cpu is not None:
        text += f"; {cpu:.2f} CPU-s/1k"
    return text


def verdict(ok):
    return "met" if ok else "MISSED"


def main():
    results = Path(sys.argv[1])
    counts = [int(n) for n in sys.argv[2:5]]
    delay = sys.argv[5]
    print(f"\n== side by side (one-way delay between members: {delay} ms)")
    print("| load | ledger (4 members, BFT) | etcd (3 members, CFT) | ledger / etcd | target |")
    print("|---|---|---|---|---|")
    targets = []
    saturation = report(results, "ledger-saturation")
    if saturation and "rate" in saturation:
        ok = saturation["rate"] >= SATURATION
        targets.append(ok)
        print(f"| saturation, {counts[0]} clients not waiting | {cell(saturation)} | — | — "
              f"| ≥ {SATURATION:,}/s: {verdict(ok)} |")
    batched = report(results, "ledger-saturation-batched")
    if batched and "rate" in batched:
        print(f"| saturation, {counts[0]} clients not waiting, batches | {cell(batched)} | — | — "
              f"| (the cluster's own limit) |")
    ours, theirs = report(results, "ledger-1"), report(results, "etcd-1")
    if ours or theirs:
        ratio = "—"
        if ours and theirs and theirs.get("rate") and "rate" in ours:
            ratio = f"{ours['rate'] / theirs['rate']:.2f}×"
        # Both answer a client at a backup (follower) once its member learns the
        # commit: forward, pre-prepare, prepare, commit; forward, append, ack,
        # commit index.
        path = "the commit path's latency"
        if float(delay) > 0:
            path += f"; four crossings between members take {4 * float(delay):g} ms"
        print(f"| 1 client, waiting for its commit | {cell(ours)} | {cell(theirs)} "
              f"| {ratio} | ({path}) |")
    for position, n in enumerate(counts):
        ours, theirs = report(results, f"ledger-{n}"), report(results, f"etcd-{n}")
        ratio, target = "—", "—"
        if ours and theirs and theirs.get("rate"):
            value = ours["rate"] / theirs["rate"]
            ok = value >= WAITING_RATIO[position]
            targets.append(ok)
            ratio = f"{value:.2f}×"
            target = f"≥ {WAITING_RATIO[position]:.1f}×: {verdict(ok)}"
        print(f"| {n} clients, each waiting for its commit | {cell(ours)} | {cell(theirs)} "
              f"| {ratio} | {target} |")
    ours, theirs = report(results, "ledger-half"), report(results, "etcd-half")
    target = "—"
    if ours and "p99" in ours:
        ok = ours["p99"] <= HALF_LOAD_P99_MS
        targets.append(ok)
        target = f"ledger p99 ≤ {HALF_LOAD_P99_MS:.0f} ms: {verdict(ok)}"
    print(f"| half load, paced (the ledger at half its saturation, etcd at half its best "
          f"waiting rate) | {cell(ours)} | {cell(theirs)} | — | {target} |")
    ours = report(results, "ledger-half-waiting")
    if ours and "p99" in ours:
        print(f"| half load, paced (each at half its best waiting rate) | {cell(ours)} "
              f"| {cell(theirs)} | — | (etcd's definition) |")
    recovery = report(results, "ledger-recovery")
    if recovery and "recovery" in recovery:
        limit = 2 * VIEW_CHANGE_TIMEOUT_S
        ok = recovery["recovery"] <= limit
        targets.append(ok)
        print(f"| SIGKILL of the primary → first commit | {recovery['recovery']:.2f} s | — | — "
              f"| ≤ {limit:.0f} s: {verdict(ok)} |")
    print("\n| CPU seconds per 1,000 commits | ledger | etcd | ledger / etcd | target |")
    print("|---|---|---|---|---|")
    for n in counts:
        ours = cpu_per_1000(report(results, f"ledger-{n}"))
        theirs = cpu_per_1000(report(results, f"etcd-{n}"))
        if ours is None:
            continue
        ratio, target = "—", "—"
        if theirs:
            ok = ours <= theirs
            targets.append(ok)
            ratio, target = f"{ours / theirs:.2f}×", f"≤ 1.0×: {verdict(ok)}"
        shown = f"{theirs:.2f}" if theirs else "—"
        print(f"| {n} waiting clients | {ours:.2f} | {shown} | {ratio} | {target} |")
    headroom(results, counts)
    print(f"\ntargets met: {sum(targets)} of {len(targets)}")


def headroom(results, counts):
    """How busy the machine was under each load, and the most it could commit at
    that load's cost per commit (its rate over its busy fraction): what says
    whether a target is within this machine's reach at all."""
    rows = []
    for n in counts:
        rows.append((f"ledger, {n} waiting", report(results, f"ledger-{n}")))
    rows.append(("ledger, half load", report(results, "ledger-half")))
    rows.append(("ledger, half its best waiting rate", report(results, "ledger-half-waiting")))
    for n in counts:
        rows.append((f"etcd, {n} waiting", report(results, f"etcd-{n}")))
    rows.append(("etcd, half load", report(results, "etcd-half")))
    rows = [(name, load) for name, load in rows
            if load and load.get("busy") and load.get("committed")]
    if not rows:
        return
    print("\n| load | machine busy | CPU-s per 1k commits, system + generator "
          "| rate / busy: the most at this load's cost per commit |")
    print("|---|---|---|---|")
    for name, load in rows:
        both = "—"
        if "cpu" in load and "generator" in load:
            both = f"{(load['cpu'] + load['generator']) / load['committed'] * 1000:.2f}"
        print(f"| {name} | {load['busy']:.0%} | {both} "
              f"| {load['rate'] / load['busy']:,.0f}/s |")
    for position, n in enumerate(counts):
        ours, theirs = report(results, f"ledger-{n}"), report(results, f"etcd-{n}")
        if not (ours and theirs and ours.get("busy") and theirs.get("rate")):
            continue
        asked = WAITING_RATIO[position] * theirs["rate"]
        if ours["rate"] >= asked:
            continue
        most = ours["rate"] / ours["busy"]
        target = f"- {n} waiting: {WAITING_RATIO[position]:.1f}× etcd is {asked:,.0f}/s"
        if ours["busy"] >= CPU_BOUND:
            target += (f"; the machine was {ours['busy']:.0%} busy, and at the cost "
                       f"per commit this load ran at it would carry {most:,.0f}/s: held "
                       f"by the CPU")
        else:
            # Little's law again: n closed-loop clients at this rate waited n / rate.
            target += (f"; the machine was only {ours['busy']:.0%} busy: held by the "
                       f"latency of a commit under this load ({1000 * n / ours['rate']:.1f} ms "
                       f"mean), not the CPU")
        # n closed-loop clients commit n over the mean commit latency (Little's
        # law), and a commit under load takes at least a lone one's path.
        alone = report(results, "ledger-1")
        if alone and alone.get("rate"):
            bound = n * alone["rate"]
            target += (f". At one waiting client's latency ({1000 / alone['rate']:.1f} ms "
                       f"mean) {n} clients would commit {bound:,.0f}/s")
            if bound < asked:
                short = 1 - bound / asked
                target += f", {short:.0%} short of it"
                if short > 0.1:
                    target += ": out of reach without a shorter commit path"
            elif ours["busy"] < CPU_BOUND:
                target += ": the path is short enough; the wait a commit adds under load is not"
        print(target)
    for name in ("ledger-half", "ledger-half-waiting", "etcd-half"):
        half = report(results, name)
        if not (half and half.get("busy") and "asked" in half and "rate" in half):
            continue
        text = (f"- {name}: {half['asked']:,.0f}/s asked, {half['rate']:,.0f}/s "
                f"answered, the machine {half['busy']:.0%} busy")
        if half["rate"] < 0.95 * half["asked"]:
            text += ("; the clients fell behind their schedule, so their number "
                     "(PACED) and not the pacing set the rate")
        print(text)


if __name__ == "__main__":
    main()
