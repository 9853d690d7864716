//! The nemesis's schedule: which fault starts and ends when, drawn from the seed
//! alone, so that a run's seed, member count and duration replay it.

use std::fmt;

use ledger_benches::proxy::SplitMix64;

/// One fault the nemesis injects.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The two sides cannot reach each other (iptables in every namespace).
    Partition([Vec<usize>; 2]),
    /// What `from` sends to `to` is lost; the other way works.
    OneWay { from: Vec<usize>, to: Vec<usize> },
    /// The member's link is down: nothing reaches it, clients included.
    Isolate(usize),
    /// Every link between members holds each chunk this long, plus jitter.
    Delay { ms: u64, jitter_ms: u64 },
    /// Every link between members cuts a connection on a chunk with this chance.
    Drop { per_million: u32 },
    /// SIGSTOP, then SIGCONT at the end.
    Pause(usize),
    /// SIGKILL, then a restart at the end.
    Kill(usize),
    /// The member's data directory (a tmpfs of its own) is filled, then freed.
    DiskFull(usize),
    /// The member's wall clock jumps by this many seconds, then back.
    Skew(usize, i64),
    /// Stopped, bits flipped in its database, restarted on it; at the end the
    /// operator's recovery: stopped, data directory emptied, restarted to rejoin.
    Damage(usize),
}

impl Fault {
    /// The member the fault is on, for faults that have one.
    pub fn member(&self) -> Option<usize> {
        match *self {
            Fault::Isolate(m)
            | Fault::Pause(m)
            | Fault::Kill(m)
            | Fault::DiskFull(m)
            | Fault::Skew(m, _)
            | Fault::Damage(m) => Some(m),
            _ => None,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Fault::Partition(_) | Fault::OneWay { .. } | Fault::Isolate(_) => Kind::Network,
            Fault::Delay { .. } | Fault::Drop { .. } => Kind::Links,
            _ => Kind::Member,
        }
    }
}

/// Faults of one kind never overlap (network faults, link shaping), or never on
/// the same member.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Network,
    Links,
    Member,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition([a, b]) => write!(f, "partition {a:?} | {b:?}"),
            Fault::OneWay { from, to } => write!(f, "one-way loss {from:?} -> {to:?}"),
            Fault::Isolate(m) => write!(f, "link of member {m} down"),
            Fault::Delay { ms, jitter_ms } => write!(f, "delay {ms} ms + up to {jitter_ms} ms"),
            Fault::Drop { per_million } => {
                write!(
                    f,
                    "cut connections, {} per 10,000 chunks",
                    per_million / 100
                )
            }
            Fault::Pause(m) => write!(f, "pause member {m}"),
            Fault::Kill(m) => write!(f, "kill member {m}"),
            Fault::DiskFull(m) => write!(f, "fill member {m}'s disk"),
            Fault::Skew(m, s) => write!(f, "skew member {m}'s clock by {s:+} s"),
            Fault::Damage(m) => write!(f, "damage member {m}'s database"),
        }
    }
}

/// A fault and when it holds, in milliseconds from the start of the load.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub start_ms: u64,
    pub end_ms: u64,
    pub fault: Fault,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |ms: u64| ms as f64 / 1000.0;
        write!(
            f,
            "{:7.1} s to {:7.1} s  {}",
            s(self.start_ms),
            s(self.end_ms),
            self.fault
        )
    }
}

/// What the replica of a Byzantine member does (`ledgerd-byzantine`'s
/// `LEDGER_BYZANTINE`): the simulator's behaviours that rewrite a replica's output.
pub const BEHAVIOURS: [&str; 7] = [
    "equivocate",
    "conflicting-votes",
    "forge-signatures",
    "invalid-blocks",
    "withhold",
    "replay",
    "bogus-new-view",
];

/// A run: its Byzantine members and its faults.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Members that run `ledgerd-byzantine`, and how each misbehaves.
    pub byzantine: Vec<(usize, &'static str)>,
    pub steps: Vec<Step>,
}

/// The plan of a run. Half the seeds make up to `f` members Byzantine. Faults come
/// from 3 s until the end of `duration_ms`, a few seconds apart, each holding a
/// few seconds; at most one network fault and one link shaping at a time, one
/// fault per member at a time, and never more than `f` members faulty beyond
/// crashing: Byzantine ones and damaged ones (a damaged database may forget what it
/// voted).
pub fn plan(seed: u64, members: usize, duration_ms: u64) -> Plan {
    let f = (members - 1) / 3;
    let mut random = SplitMix64(seed);
    let mut byzantine = Vec::new();
    if random.chance(0.5) {
        let count = random.range(1, f as u64) as usize;
        for member in subset(&mut random, members, count) {
            let behaviour = BEHAVIOURS[random.range(0, BEHAVIOURS.len() as u64 - 1) as usize];
            byzantine.push((member, behaviour));
        }
    }
    let steps = schedule(&mut random, members, duration_ms, f - byzantine.len());
    Plan { byzantine, steps }
}

fn schedule(random: &mut SplitMix64, members: usize, duration_ms: u64, f: usize) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut t = 3_000;
    loop {
        t += random.range(300, 2_500);
        let end = t + random.range(1_500, 8_000);
        if end + 1_000 > duration_ms {
            return steps;
        }
        let fault = draw(random, members);
        let active: Vec<&Step> = steps.iter().filter(|s| s.end_ms > t).collect();
        let clashes = active.iter().any(|s| match (s.fault.kind(), fault.kind()) {
            (Kind::Member, Kind::Member) => s.fault.member() == fault.member(),
            (a, b) => a == b && a != Kind::Member,
        });
        let damaged = active
            .iter()
            .filter(|s| matches!(s.fault, Fault::Damage(_)))
            .count();
        if clashes || (matches!(fault, Fault::Damage(_)) && damaged >= f) {
            continue;
        }
        steps.push(Step {
            start_ms: t,
            end_ms: end,
            fault,
        });
    }
}

fn draw(random: &mut SplitMix64, members: usize) -> Fault {
    let n = members as u64;
    let member = |random: &mut SplitMix64| random.range(0, n - 1) as usize;
    match random.range(0, 13) {
        0 | 1 => {
            // A minority on one side, chosen by a random subset.
            let size = random.range(1, n / 2) as usize;
            let side = subset(random, members, size);
            let rest = (0..members).filter(|m| !side.contains(m)).collect();
            Fault::Partition([side, rest])
        }
        2 => {
            let size = random.range(1, n / 2) as usize;
            let from = subset(random, members, size);
            let to = (0..members).filter(|m| !from.contains(m)).collect();
            Fault::OneWay { from, to }
        }
        3 => Fault::Isolate(member(random)),
        4 => Fault::Delay {
            ms: random.range(1, 60),
            jitter_ms: random.range(0, 20),
        },
        5 => Fault::Drop {
            per_million: random.range(100, 5_000) as u32,
        },
        6 | 7 => Fault::Pause(member(random)),
        8 | 9 => Fault::Kill(member(random)),
        10 => Fault::DiskFull(member(random)),
        11 => {
            let seconds = random.range(2, 40) as i64;
            Fault::Skew(
                member(random),
                if random.chance(0.5) {
                    seconds
                } else {
                    -seconds
                },
            )
        }
        _ => Fault::Damage(member(random)),
    }
}

fn subset(random: &mut SplitMix64, members: usize, size: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..members).collect();
    for i in (1..all.len()).rev() {
        all.swap(i, random.range(0, i as u64) as usize);
    }
    let mut chosen = all[..size].to_vec();
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_plan_and_the_rules_hold() {
        let mut with_byzantine = 0;
        for seed in 0..200 {
            for members in 4..=7 {
                let plan = plan(seed, members, 120_000);
                assert_eq!(plan, super::plan(seed, members, 120_000));
                let steps = &plan.steps;
                assert!(!steps.is_empty());
                let f = (members - 1) / 3;
                assert!(plan.byzantine.len() <= f);
                with_byzantine += usize::from(!plan.byzantine.is_empty());
                for (i, step) in steps.iter().enumerate() {
                    assert!(step.end_ms + 1_000 <= 120_000 && step.start_ms < step.end_ms);
                    let during = || {
                        steps[..i]
                            .iter()
                            .filter(|s| s.end_ms > step.start_ms)
                            .map(|s| &s.fault)
                    };
                    let damaged = during().filter(|s| matches!(s, Fault::Damage(_))).count();
                    let this = usize::from(matches!(step.fault, Fault::Damage(_)));
                    assert!(
                        plan.byzantine.len() + damaged + this <= f,
                        "seed {seed}: more than f faulty beyond crashing"
                    );
                    if let Some(m) = step.fault.member() {
                        if step.fault.kind() == Kind::Member {
                            assert!(
                                during().all(|s| s.kind() != Kind::Member || s.member() != Some(m))
                            );
                        }
                    }
                }
            }
        }
        assert!(
            (300..=500).contains(&with_byzantine),
            "{with_byzantine} of 800"
        );
        let kinds: std::collections::BTreeSet<String> = (0..50)
            .flat_map(|seed| plan(seed, 4, 120_000).steps)
            .map(|s| {
                format!("{:?}", s.fault)
                    .split(['(', ' '])
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(kinds.len(), 10, "every fault is drawn: {kinds:?}");
    }
}
