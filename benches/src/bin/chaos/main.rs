//! `ledger-chaos`: the fault-injection harness (ops/chaos/README.md). Real `ledgerd`
//! members in network namespaces of their own, a client load through all of them
//! recording every acknowledged entry, and a nemesis injecting faults on a schedule
//! drawn from the seed. After healing it checks that the cluster commits again,
//! that the members hold one chain, that every acknowledged entry is in it once
//! where its receipt said, and that every receipt verifies with `ledgerctl verify`.
//! Exits 0 only when every check holds; a failing run prints how to replay it.

mod check;
mod cluster;
mod load;
mod nemesis;
mod soak;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ledger_benches::proxy::{Shape, SplitMix64};
use ledger_client::types::BlockView;
use ledger_client::Verifier;

use cluster::Cluster;
use nemesis::{Fault, Plan};

#[derive(Parser)]
#[command(
    about = "Fault injection over real ledgerd processes (needs root: namespaces, iptables, tmpfs)"
)]
struct Args {
    /// Seed of the schedule (default: drawn from the clock, and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of load under faults, before healing.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Members, 4 to 7.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(4..=7))]
    members: u16,
    /// Clients, each waiting for its entry's commit.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Where ledgerd and ledgerctl are.
    #[arg(long, default_value = "target/release")]
    bin: PathBuf,
    /// Working directory (emptied first; logs and receipts stay there).
    #[arg(long, default_value = "/tmp/ledger-chaos")]
    work: PathBuf,
    /// Seconds after healing within which every member must commit again.
    #[arg(long, default_value_t = 60)]
    recovery: u64,
    /// Run every member with this protocol break (`weak-quorum`), to see the
    /// checks fail.
    #[arg(long)]
    flaw: Option<String>,
    /// A soak instead: no faults, the load paced at --rate, the members sampled
    /// every --sample seconds (ops/chaos/README.md, "Soak").
    #[arg(long)]
    soak: bool,
    /// Entries per second the clients start together (default: as fast as they
    /// are answered; 200 in a soak).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds between two samples of a soak.
    #[arg(long, default_value_t = 60)]
    sample: u64,
    /// Print the plan and stop.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000)
    });
    let members = usize::from(args.members);
    let replay = replay(&args, seed);
    let plan = match args.soak {
        false => nemesis::plan(seed, members, args.duration * 1000),
        true => Plan {
            byzantine: Vec::new(),
            steps: Vec::new(),
        },
    };
    println!(
        "== chaos: seed {seed}, {members} members, {} s, {} clients",
        args.duration, args.clients
    );
    for (member, behaviour) in &plan.byzantine {
        println!("== member {member} is Byzantine: {behaviour}");
    }
    println!("== schedule ({} faults)", plan.steps.len());
    for step in &plan.steps {
        println!("  {step}");
    }
    if args.dry_run {
        return ExitCode::SUCCESS;
    }
    if let Err(error) = claim(&args.work) {
        println!("== {error:#}");
        return ExitCode::from(2);
    }
    let result = run(&args, seed, &plan);
    if !matches!(&result, Ok(failures) if failures.is_empty()) {
        cluster::keep_data(&args.work, members);
    }
    cluster::clean_up(&args.work);
    let work = args.work.display();
    match result {
        Ok(failures) if failures.is_empty() => {
            println!("== PASSED (seed {seed})");
            ExitCode::SUCCESS
        }
        Ok(failures) => {
            println!("== FAILED: {} check(s)", failures.len());
            for failure in failures.iter().take(50) {
                println!("  {failure}");
            }
            println!("replay: {replay}   (logs in {work}, databases in {work}/kept)");
            ExitCode::FAILURE
        }
        Err(error) => {
            println!("== the harness itself failed: {error:#}");
            println!("replay: {replay}   (logs in {work})");
            ExitCode::from(2)
        }
    }
}

/// The command that runs the same plan again: every option that was not left at
/// its default.
fn replay(args: &Args, seed: u64) -> String {
    let mut line = format!(
        "ops/chaos/run.sh --seed {seed} --members {} --duration {}",
        args.members, args.duration
    );
    let default = Args::parse_from(["ledger-chaos"]);
    if args.clients != default.clients {
        line += &format!(" --clients {}", args.clients);
    }
    if args.recovery != default.recovery {
        line += &format!(" --recovery {}", args.recovery);
    }
    if let Some(flaw) = &args.flaw {
        line += &format!(" --flaw {flaw}");
    }
    if args.soak {
        line += &format!(" --soak --sample {}", args.sample);
    }
    if let Some(rate) = args.rate {
        line += &format!(" --rate {rate}");
    }
    if args.work != default.work {
        line += &format!(" --work {}", args.work.display());
    }
    line
}

/// Makes `work` this harness's own: a directory that does not exist, is empty, or
/// was made by an earlier run (it holds the marker). It is emptied at every run,
/// as root, so anything else is refused.
fn claim(work: &Path) -> anyhow::Result<()> {
    const MARKER: &str = ".ledger-chaos";
    let ours = work.join(MARKER).exists()
        || std::fs::read_dir(work).map_or(true, |mut entries| entries.next().is_none());
    anyhow::ensure!(
        ours,
        "{} holds files of something else: give --work a directory of its own",
        work.display()
    );
    cluster::clean_up(work);
    if work.exists() {
        std::fs::remove_dir_all(work)
            .with_context(|| format!("cannot empty {}", work.display()))?;
    }
    std::fs::create_dir_all(work)?;
    std::fs::write(work.join(MARKER), "ledger-chaos working directory\n")?;
    Ok(())
}

fn run(args: &Args, seed: u64, plan: &Plan) -> anyhow::Result<Vec<String>> {
    let members = usize::from(args.members);
    let work = args.work.as_path();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // A soak's database grows for its whole length; a run with faults needs a
    // small disk, to fill it at once.
    let disk = if args.soak { "2g" } else { "128m" };
    let mut cluster = Cluster::create(
        work,
        &args.bin,
        members,
        seed,
        &plan.byzantine,
        args.flaw.clone(),
        disk,
        &runtime,
    )?;
    // The checks of what the members hold are on the honest ones.
    let honest: Vec<usize> = (0..members)
        .filter(|m| plan.byzantine.iter().all(|(b, _)| b != m))
        .collect();
    let verifier = Verifier::from_genesis_file(&cluster.genesis)?;
    started(members)?;

    let rate = args.rate.or(args.soak.then_some(200.0));
    let answers = work.join("answers");
    let load = load::Load::start(args.clients, members, seed, rate, verifier, &answers)?;
    let mut failures = Vec::new();
    let mut exits = Exits::default();
    let start = Instant::now();
    if args.soak {
        let rate = rate.unwrap_or_default();
        soak(args, rate, &mut cluster, &load, &mut exits, &mut failures)?;
    } else {
        faults(args, seed, plan, &mut cluster, &load, &mut exits)?;
    }
    println!(
        "[{:6.1} s] healing everything ({} entries acknowledged)",
        start.elapsed().as_secs_f64(),
        load.acknowledged()
    );
    // A member that exited on its own at the last instant is reported too.
    exits.watch(&mut cluster, &BTreeSet::new(), start);
    cluster.heal()?;
    let healed = Instant::now();
    let recovery = check::commits_again(&honest, healed, Duration::from_secs(args.recovery));
    let record = load.stop();
    match recovery {
        Ok(after) => println!(
            "every member committed again {:.1} s after healing",
            after.as_secs_f64()
        ),
        Err(failure) => failures.push(failure),
    }
    match check::converge(&honest, Duration::from_secs(90)) {
        Ok(tip) => failures.extend(holdings(args, &cluster, &honest, tip, &record)),
        Err(failure) => failures.push(failure),
    }
    exits.watch(&mut cluster, &BTreeSet::new(), start);
    failures.extend(exits.failures());
    for m in 0..members {
        let log = cluster.log(m);
        if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
            failures.push(format!("member {m} panicked: {line}"));
        }
    }
    Ok(failures)
}

/// The soak at `rate` entries a second: samples at every interval until the run's
/// end, then the judgement of their growth.
fn soak(
    args: &Args,
    rate: f64,
    cluster: &mut Cluster,
    load: &load::Load,
    exits: &mut Exits,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut samples = Vec::new();
    let start = Instant::now();
    let every = args.sample.max(1);
    let interval = Duration::from_secs(every);
    for k in 1..=(args.duration / every) {
        let at = start + interval * k as u32;
        while Instant::now() < at {
            exits.watch(cluster, &BTreeSet::new(), start);
            std::thread::sleep(
                at.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(500)),
            );
        }
        let since = at - interval;
        let sample = soak::sample(cluster, k * every, &load.latencies_since(since));
        println!("{}", soak::line(&sample));
        samples.push(sample);
        soak::save(&args.work, &samples)?;
    }
    let (findings, found) = soak::judge(&samples, args.clients, rate);
    findings.iter().for_each(|f| println!("{f}"));
    failures.extend(found);
    Ok(())
}

/// The plan's faults, each started and ended on time, until the run's end.
fn faults(
    args: &Args,
    seed: u64,
    plan: &Plan,
    cluster: &mut Cluster,
    load: &load::Load,
    exits: &mut Exits,
) -> anyhow::Result<()> {
    let steps = &plan.steps;
    let start = Instant::now();
    let mut events: Vec<(u64, bool, usize)> = steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| [(s.start_ms, true, i), (s.end_ms, false, i)])
        .collect();
    events.sort_by_key(|&(at, starts, _)| (at, starts));
    let mut down = BTreeSet::new();
    let mut progress = Progress::default();
    let mut skipped = BTreeSet::new();
    // Members wiped after damage, until they say they vote again.
    let mut wiped = BTreeSet::new();
    let end = (args.duration * 1000, false, usize::MAX);
    for (at, starts, i) in events.into_iter().chain([end]) {
        while start.elapsed() < Duration::from_millis(at) {
            exits.watch(cluster, &down, start);
            progress.report(start, load.acknowledged());
            std::thread::sleep(Duration::from_millis(100));
        }
        let Some(step) = steps.get(i) else {
            return Ok(());
        };
        let at = start.elapsed().as_secs_f64();
        if skipped.contains(&i) {
            continue;
        }
        if let (false, Fault::Damage(m)) = (starts, &step.fault) {
            wiped.insert(*m);
        }
        if let (true, Fault::Damage(_)) = (starts, &step.fault) {
            wiped.retain(|&m| abstains(m) != Some(false));
            if let Some(&amnesiac) = wiped.first() {
                // Losing a second member's votes while one still abstains makes
                // more than f faulty: the schedule keeps to the fault model.
                println!(
                    "[{at:6.1} s] skip  {}: member {amnesiac} still abstains",
                    step.fault
                );
                skipped.insert(i);
                continue;
            }
        }
        let verb = if starts { "start" } else { "end  " };
        println!("[{at:6.1} s] {verb} {}", step.fault);
        apply(cluster, &step.fault, starts, seed ^ i as u64, &mut down)
            .with_context(|| format!("applying {}", step.fault))?;
    }
    Ok(())
}

/// The checks of what the honest members hold at `tip`: one chain, every
/// acknowledged entry in it once where its receipt said, every receipt accepted
/// by `ledgerctl verify`.
fn holdings(
    args: &Args,
    cluster: &Cluster,
    honest: &[usize],
    tip: u64,
    record: &load::Record,
) -> Vec<String> {
    let mut failures = Vec::new();
    // One chain held at a time beside the first: a soak's are long.
    let mut reference: Option<(usize, Vec<BlockView>)> = None;
    for &m in honest {
        match (check::chain(m, tip), &reference) {
            (Err(error), _) => {
                failures.push(format!("member {m} did not serve its chain: {error:#}"))
            }
            (Ok(chain), None) => reference = Some((m, chain)),
            (Ok(chain), Some((first, blocks))) => {
                if let Some((block, _)) = blocks.iter().zip(&chain).find(|(a, b)| a != b) {
                    failures.push(format!(
                        "member {m}'s block {} differs from member {first}'s",
                        block.header.height
                    ));
                }
            }
        }
    }
    let Some((_, reference)) = reference else {
        return failures;
    };
    failures.extend(check::record_check(&reference, record));
    let verify_started = Instant::now();
    // Every receipt in a run with faults; in a soak's hundreds of thousands, every
    // k-th up to 5,000 (the clients checked each one with the same code already).
    let every = if args.soak {
        record.acks.len().div_ceil(5_000).max(1)
    } else {
        1
    };
    let verified = record.acks.len().div_ceil(every);
    failures.extend(check::receipts(
        &args.bin.join("ledgerctl"),
        &cluster.genesis,
        record,
        every,
    ));
    let committed: usize = reference.iter().map(|b| b.entries.len()).sum();
    println!(
        "{} entries acknowledged and found where their receipts said, {verified} receipts \
         verified by ledgerctl in {:.1} s; {} unknown to their clients; {} submits; chain of \
         {tip} blocks, {committed} entries, identical on all {} honest members",
        record.acks.len(),
        verify_started.elapsed().as_secs_f64(),
        record.unknown.len(),
        record.submits,
        honest.len(),
    );
    failures
}

/// A line every 5 s with the entries acknowledged since the last: how the faults
/// bite shows as stalls.
#[derive(Default)]
struct Progress {
    printed_s: u64,
    acknowledged: usize,
}

impl Progress {
    fn report(&mut self, start: Instant, acknowledged: usize) {
        let now = start.elapsed().as_secs();
        if now >= self.printed_s + 5 {
            println!(
                "[{now:4}.0 s] {acknowledged} acknowledged (+{})",
                acknowledged - self.acknowledged
            );
            self.printed_s = now;
            self.acknowledged = acknowledged;
        }
    }
}

/// Whether member `m`, which lost its record of votes, still abstains until the
/// chain passes a height (a faulty member until then); `None` when it does not
/// answer.
fn abstains(m: usize) -> Option<bool> {
    let api = cluster::client(m, Duration::from_secs(2)).ok()?;
    api.status()
        .ok()
        .map(|status| status.abstaining_until.is_some())
}

/// Waits until every member answers on its API.
fn started(members: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for m in 0..members {
        let api = cluster::client(m, Duration::from_secs(2))?;
        while api.status().is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "member {m} did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Members whose process ended when nothing stopped it (a damaged database may be
/// refused at start: those are in `down` and expected), each started again at most
/// once a second.
#[derive(Default)]
struct Exits {
    /// Per member: how many times, the first time and its last log line.
    seen: BTreeMap<usize, (usize, String)>,
    restarted: BTreeMap<usize, Instant>,
}

impl Exits {
    fn watch(&mut self, cluster: &mut Cluster, down: &BTreeSet<usize>, start: Instant) {
        for m in 0..cluster.members.len() {
            if down.contains(&m)
                || self
                    .restarted
                    .get(&m)
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
            {
                continue;
            }
            if let Some(status) = cluster.exited(m) {
                let entry = self.seen.entry(m).or_insert_with(|| {
                    let log = cluster.log(m);
                    let last = log.lines().last().unwrap_or("").to_owned();
                    let at = start.elapsed().as_secs_f64();
                    (0, format!("first at {at:.1} s ({status}): {last}"))
                });
                entry.0 += 1;
                cluster.kill(m);
                let _ = cluster.start(m);
                self.restarted.insert(m, Instant::now());
            }
        }
    }

    fn failures(&self) -> impl Iterator<Item = String> + '_ {
        self.seen.iter().map(|(m, (count, first))| {
            format!("member {m} exited {count} time(s) unasked, {first}")
        })
    }
}

/// Starts (`starts`) or ends `fault`; `down` holds the members whose process may
/// be gone.
fn apply(
    cluster: &mut Cluster,
    fault: &Fault,
    starts: bool,
    seed: u64,
    down: &mut BTreeSet<usize>,
) -> anyhow::Result<()> {
    match (fault, starts) {
        (Fault::Partition([a, b]), true) => {
            for &x in a {
                for &y in b {
                    cluster.block(x, y)?;
                    cluster.block(y, x)?;
                }
            }
        }
        (Fault::OneWay { from, to }, true) => {
            for &x in from {
                for &y in to {
                    cluster.block(x, y)?;
                }
            }
        }
        (Fault::Partition(_) | Fault::OneWay { .. }, false) => cluster.unblock_all()?,
        (Fault::Isolate(m), starts) => cluster.link(*m, !starts)?,
        (Fault::Delay { ms, jitter_ms }, true) => cluster.shape_all(|s| {
            s.set_delay(
                Duration::from_millis(*ms),
                Duration::from_millis(*jitter_ms),
            )
        }),
        (Fault::Drop { per_million }, true) => {
            cluster.shape_all(|s| s.set_drop(f64::from(*per_million) / 1e6))
        }
        (Fault::Delay { .. } | Fault::Drop { .. }, false) => cluster.shape_all(Shape::clear),
        (Fault::Pause(m), starts) => cluster.pause(*m, starts)?,
        (Fault::Kill(m), true) => {
            down.insert(*m);
            cluster.kill(*m);
        }
        (Fault::Kill(m), false) => {
            cluster.start(*m)?;
            down.remove(m);
        }
        (Fault::DiskFull(m), starts) => cluster.fill_disk(*m, starts)?,
        (Fault::Skew(m, seconds), true) => cluster.skew(*m, *seconds)?,
        (Fault::Skew(m, _), false) => cluster.skew(*m, 0)?,
        (Fault::Damage(m), true) => {
            down.insert(*m);
            cluster.kill(*m);
            if !cluster.damage(*m, &mut SplitMix64(seed))? {
                println!("          (member {m} holds no database yet: nothing damaged)");
            }
            cluster.start(*m)?;
        }
        (Fault::Damage(m), false) => {
            cluster.kill(*m);
            cluster.wipe(*m)?;
            cluster.start(*m)?;
            down.remove(m);
        }
    }
    Ok(())
}
