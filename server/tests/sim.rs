//! The deterministic simulator as tests: a fixed set of seeds per catalogue scenario
//! must find no violation, a seed must replay exactly, and each deliberate protocol
//! break must make the checker report a violation (a checker that cannot fail proves
//! nothing). `ledger-sim --seeds N` runs the large sweep.

use ledger::consensus::Flaws;
use ledger::sim::{Behaviour, Cut, Reconfigure, Report, Scenario, Sim, Violation};

/// Seeds per scenario in CI; the sweep binary runs far more.
const SEEDS: u64 = 4;

fn run_catalogue(members: usize) {
    let scenarios: Vec<Scenario> = Scenario::catalogue()
        .into_iter()
        .filter(|s| s.members == members)
        .collect();
    assert!(!scenarios.is_empty());
    for scenario in scenarios {
        for seed in 0..SEEDS {
            let report = Sim::new(scenario.clone(), seed).run();
            assert!(report.violation.is_none(), "{report}");
            assert!(report.height > 0, "{report}: nothing committed");
        }
    }
}

#[test]
fn one_to_three_members_survive_every_scenario() {
    for members in 1..=3 {
        run_catalogue(members);
    }
}

#[test]
fn four_members_survive_every_scenario() {
    run_catalogue(4);
}

#[test]
fn five_members_survive_every_scenario() {
    run_catalogue(5);
}

#[test]
fn six_members_survive_every_scenario() {
    run_catalogue(6);
}

#[test]
fn seven_members_survive_every_scenario() {
    run_catalogue(7);
}

#[test]
fn eight_members_survive_every_scenario() {
    run_catalogue(8);
}

#[test]
fn nine_members_survive_every_scenario() {
    run_catalogue(9);
}

#[test]
fn ten_members_survive_every_scenario() {
    run_catalogue(10);
}

/// Seeds the 100,000-seed sweeps once failed on, kept so the fixes stay fixed: a
/// replica that timed out to the next view alone, the others short of its
/// VIEW-CHANGE (or of the NEW-VIEW) for the view before (silent-4); members whose one
/// request for a re-proposed block body went to a peer without it, never asking
/// again (equivocate-10); a restarted member of two whose CHECKPOINT was lost and
/// never announced again, leaving both stuck at the window (crashes-2).
#[test]
fn past_sweep_failures_stay_fixed() {
    let failures = [
        ("silent-4", 13294),
        ("silent-4", 26903),
        ("equivocate-10", 95355),
        ("crashes-2", 66593),
        // A member that lost its disk heard from one member at height 0, took the
        // chain for new and voted at once: it now waits for enough answers.
        ("disk-loss-3", 8927),
        // Both others had lost the blocks they applied since their disks synced, so
        // showed height 0; one still held their prepared certificates, and now shows
        // those too.
        ("disk-loss-3", 2348959),
        // At f = 0 one member's checkpoint vouches alone: it lost its disk after
        // voting, and the other waited forever to fetch blocks nobody held.
        ("disk-loss-2", 4074656),
        // A primary that counted a slot an earlier view left above the tip among
        // its blocks in flight waited for it forever (one block in flight: odd seeds).
        ("invalid-blocks-reconfigure-4", 531),
        ("invalid-blocks-reconfigure-7", 925),
    ];
    for (name, seed) in failures {
        let scenario = Scenario::named(name).expect("catalogue scenario");
        let report = Sim::new(scenario, seed).run();
        assert!(report.violation.is_none(), "{report}");
    }
}

/// The joiner's checks are what keep a liar's snapshot out: with them off, a member
/// restored from a forged manifest or chunk is caught by the checker.
#[test]
fn a_joiner_that_trusts_snapshots_unchecked_is_caught() {
    let mut scenario = Scenario::named("lying-snapshots-4").expect("catalogue scenario");
    scenario.unchecked_snapshots = true;
    let report = first_violation(&scenario, 400);
    assert!(
        matches!(
            report.violation,
            Some(Violation::ForgedSnapshot { .. } | Violation::NoProgress { .. })
        ),
        "{report}"
    );
    // With the checks, the same seed joins and commits.
    let scenario = Scenario::named("lying-snapshots-4").expect("catalogue scenario");
    let again = Sim::new(scenario, report.seed).run();
    assert!(again.violation.is_none(), "{again}");
    assert!(
        again.snapshots.restores + again.snapshots.refused > 0,
        "{again:?}"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let scenario = Scenario::named("partitions-4").expect("catalogue scenario");
    let first = Sim::new(scenario.clone(), 7).run();
    let second = Sim::new(scenario, 7).run();
    assert_eq!(
        (first.events, first.height, first.view, first.end_ms),
        (second.events, second.height, second.view, second.end_ms)
    );
}

/// The first seed in `0..limit` whose run reports a violation.
fn first_violation(scenario: &Scenario, limit: u64) -> Report {
    (0..limit)
        .map(|seed| Sim::new(scenario.clone(), seed).run())
        .find(|report| report.violation.is_some())
        .unwrap_or_else(|| panic!("{}: no seed below {limit} broke the checker", scenario.name))
}

#[test]
fn a_quorum_of_2f_lets_an_equivocating_primary_split_the_replicas() {
    let mut scenario = Scenario::new("weak-quorum", 4);
    scenario.byzantine = vec![(0, Behaviour::Equivocate)];
    scenario.flaws = Flaws {
        weak_quorum: true,
        ..Flaws::default()
    };
    let report = first_violation(&scenario, 20);
    assert!(
        matches!(report.violation, Some(Violation::Conflict { .. })),
        "{report}"
    );
}

/// DESIGN.md, "Consensus": 2f + 1 votes are a quorum only at n = 3f + 1. At n = 5 two
/// sets of 2f + 1 = 3 meet in one member, so an equivocating primary makes both
/// halves commit; at n = 6 two sets of 3 need not meet at all, so two sides of a
/// partition each elect a primary and commit. q = ⌈(n + f + 1) / 2⌉ survives both.
#[test]
fn a_quorum_of_2f_plus_1_is_unsafe_at_five_and_six_members() {
    let mut equivocation = Scenario::new("classic-quorum-5", 5);
    equivocation.byzantine = vec![(0, Behaviour::Equivocate)];
    let mut partition = Scenario::new("classic-quorum-6", 6);
    partition.network.partitions = true;
    partition.network.drop = 0.0;
    for mut scenario in [equivocation, partition] {
        scenario.flaws = Flaws {
            classic_quorum: true,
            ..Flaws::default()
        };
        let report = first_violation(&scenario, 40);
        assert!(
            matches!(report.violation, Some(Violation::Conflict { .. })),
            "{report}"
        );
        scenario.flaws = Flaws::default();
        for seed in 0..SEEDS {
            let report = Sim::new(scenario.clone(), seed).run();
            assert!(report.violation.is_none(), "{report}");
        }
    }
}

#[test]
fn f_plus_one_colluding_members_split_the_replicas() {
    let mut scenario = Scenario::new("f-plus-one", 4);
    scenario.byzantine = vec![(0, Behaviour::Equivocate), (1, Behaviour::Equivocate)];
    let report = first_violation(&scenario, 20);
    assert!(
        matches!(report.violation, Some(Violation::Conflict { .. })),
        "{report}"
    );
}

#[test]
fn skipping_the_chaining_rule_is_caught() {
    // Prepares for height 2 are lost, so block 2 is never prepared; a replica that
    // prepares block 3 anyway lets it be committed on a parent the next view drops.
    let mut scenario = Scenario::new("skip-chaining", 4);
    scenario.cuts = vec![Cut {
        kind: "prepare",
        height: Some(2),
        to: None,
        from_ms: 0,
        until_ms: scenario.faulty_ms,
    }];
    scenario.flaws = Flaws {
        skip_chaining: true,
        ..Flaws::default()
    };
    let report = first_violation(&scenario, 20);
    assert!(report.violation.is_some(), "{report}");
    // The same faults without the flaw are survived.
    scenario.flaws = Flaws::default();
    for seed in 0..4 {
        let report = Sim::new(scenario.clone(), seed).run();
        assert!(report.violation.is_none(), "{report}");
    }
}

#[test]
fn trusting_a_new_view_without_recomputing_it_is_caught() {
    // Commits to members 2 and 3 are lost, so only member 0 applies the last block
    // before the view change; member 1, the next primary, replaces that block in its
    // NEW-VIEW. Replicas that take the NEW-VIEW on trust commit the replacement.
    let mut scenario = Scenario::new("trust-new-view", 4);
    scenario.byzantine = vec![(1, Behaviour::BogusNewView)];
    scenario.network.drop = 0.0;
    for member in [2, 3] {
        for kind in ["commit", "committed-blocks"] {
            scenario.cuts.push(Cut {
                kind,
                height: None,
                to: Some(member),
                from_ms: 0,
                until_ms: scenario.faulty_ms,
            });
        }
    }
    scenario.flaws = Flaws {
        trust_new_view: true,
        ..Flaws::default()
    };
    let report = first_violation(&scenario, 200);
    assert!(
        matches!(report.violation, Some(Violation::Conflict { .. })),
        "{report}"
    );
    scenario.flaws = Flaws::default();
    for seed in 0..4 {
        let report = Sim::new(scenario.clone(), seed).run();
        assert!(report.violation.is_none(), "{report}");
    }
}

/// Runs `scenario` with `flaws` until a seed below `limit` breaks the checker, then
/// without them over the CI seeds: the violation, and the clean runs (each must be).
fn caught_only_with(mut scenario: Scenario, flaws: Flaws, limit: u64) -> (Report, Vec<Report>) {
    scenario.flaws = flaws;
    let caught = first_violation(&scenario, limit);
    scenario.flaws = Flaws::default();
    let clean: Vec<Report> = (0..SEEDS)
        .map(|seed| Sim::new(scenario.clone(), seed).run())
        .collect();
    for report in &clean {
        assert!(report.violation.is_none(), "{report}");
    }
    (caught, clean)
}

/// A change is in force from the block after the first checkpoint at or above the
/// block that holds it: replicas that move to the new membership at the very next
/// block have it certify heights the old one orders, which the checker, holding
/// every certificate to the membership in force at its height, reports.
#[test]
fn a_membership_change_put_in_force_early_is_caught() {
    let scenario = Scenario::named("grow-4").expect("catalogue scenario");
    let early = Flaws {
        early_change: true,
        ..Flaws::default()
    };
    let (caught, clean) = caught_only_with(scenario, early, 20);
    assert!(
        matches!(caught.violation, Some(Violation::BadCertificate { .. })),
        "{caught}"
    );
    assert!(clean.iter().all(|report| report.epoch == 2), "{clean:?}");
}

/// After a change takes seven members to six, 2f + 1 = 3 votes let both sides of a
/// partition commit; the quorum of the new membership, ⌈(6 + 1 + 1) / 2⌉ = 4, does not.
#[test]
fn counting_2f_plus_1_after_shrinking_to_six_is_caught() {
    let mut scenario = Scenario::new("classic-quorum-after-shrink", 7);
    scenario.network.partitions = true;
    scenario.network.drop = 0.0;
    scenario.faulty_ms = 8_000;
    scenario.changes = vec![Reconfigure::Remove(6)];
    let classic = Flaws {
        classic_quorum: true,
        ..Flaws::default()
    };
    let (caught, clean) = caught_only_with(scenario, classic, 100);
    assert!(
        matches!(caught.violation, Some(Violation::Conflict { .. })),
        "{caught}"
    );
    assert!(clean.iter().all(|report| report.epoch == 1), "{clean:?}");
}
