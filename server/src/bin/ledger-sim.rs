//! ledger-sim: runs the PBFT replicas in the deterministic simulator.
//!
//! `ledger-sim --scenario NAME --seed S` replays one run; `--seeds N` sweeps seeds
//! `0..N` over every catalogue scenario (or the one named) on all cores and prints a
//! summary. Exits 1 if any run found a violation.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use ledger::sim::{Report, Scenario, Sim};

#[derive(Parser)]
#[command(version, about = "Deterministic simulation of the PBFT replicas")]
struct Args {
    /// Run only this catalogue scenario (see --list).
    #[arg(long)]
    scenario: Option<String>,
    /// Replay this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep this many seeds, spread over the scenarios.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of the sweep.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

/// One run; a panic in a replica is a violation like any other, with its seed.
fn run(scenario: Scenario, seed: u64) -> Report {
    let name = scenario.name.clone();
    std::panic::catch_unwind(|| Sim::new(scenario, seed).run()).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        Report::panicked(name, seed, message)
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let scenarios: Vec<Scenario> = match &args.scenario {
        Some(name) => match Scenario::named(name) {
            Some(scenario) => vec![scenario],
            None => {
                eprintln!("ledger-sim: no scenario named {name:?}; --list shows them");
                return ExitCode::from(2);
            }
        },
        None => Scenario::catalogue(),
    };
    if args.list {
        for scenario in &scenarios {
            println!("{}", scenario.name);
        }
        return ExitCode::SUCCESS;
    }
    if let Some(seed) = args.seed {
        let mut failed = false;
        for scenario in scenarios {
            let report = run(scenario, seed);
            println!("{report}");
            failed |= report.violation.is_some();
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    // Seed s runs scenario s mod |scenarios|: every seed is one run, and a sweep of
    // N seeds covers each scenario N / |scenarios| times.
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let next = AtomicU64::new(args.first);
    let end = args.first + args.seeds;
    let failures = Mutex::new(Vec::new());
    let done = AtomicU64::new(0);
    let events = AtomicU64::new(0);
    let (restores, refused, probes) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let (later, above) = (AtomicU64::new(0), AtomicU64::new(0));
    let lost = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let scenario = scenarios[(seed % scenarios.len() as u64) as usize].clone();
                let report = run(scenario, seed);
                events.fetch_add(report.events, Ordering::Relaxed);
                lost.fetch_add(report.lost_applies, Ordering::Relaxed);
                restores.fetch_add(report.snapshots.restores, Ordering::Relaxed);
                refused.fetch_add(report.snapshots.refused, Ordering::Relaxed);
                probes.fetch_add(report.snapshots.probes_repeated, Ordering::Relaxed);
                later.fetch_add(report.snapshots.restores_after_changes, Ordering::Relaxed);
                above.fetch_add(
                    report.snapshots.restores_above_epoch_start,
                    Ordering::Relaxed,
                );
                if report.violation.is_some() {
                    eprintln!("{report}");
                    failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(report);
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished.is_multiple_of(1000) {
                    eprintln!("{finished} seeds, {:.0} s", started.elapsed().as_secs_f64());
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    println!(
        "{} seeds over {} scenarios in {:.1} s ({} events): {} violations",
        args.seeds,
        scenarios.len(),
        started.elapsed().as_secs_f64(),
        events.load(Ordering::Relaxed),
        failures.len()
    );
    println!(
        "snapshot joins: {} members restored ({} after membership changes, {} of them above \
         their epoch's start), {} forged manifests or chunks refused, {} probes of the \
         chain's height repeated for too few answers",
        restores.load(Ordering::Relaxed),
        later.load(Ordering::Relaxed),
        above.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        probes.load(Ordering::Relaxed)
    );
    println!(
        "crashes took back {} blocks applied without waiting for the disk",
        lost.load(Ordering::Relaxed)
    );
    for report in &failures {
        println!("  {report}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
