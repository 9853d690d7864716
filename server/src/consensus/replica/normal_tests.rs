//! The normal case step by step (C&L §4.2, §4.3): exact outputs for each input.

use std::sync::Arc;

use crate::chain::{Block, Entry, Hash, Header};
use crate::consensus::harness::*;
use crate::consensus::{Config, Durable, Input, Output, Payload, Replica};
use crate::testing;

/// A policy (the plugins) for the tests: one more bit of difficulty than the parent,
/// and no entry whose data starts with "forbidden".
#[derive(Debug)]
struct StricterEachBlock;

impl crate::chain::Policy for StricterEachBlock {
    fn difficulty_window(&self) -> usize {
        1
    }

    fn required_difficulty(&self, recent: &[Header]) -> Result<Option<u32>, String> {
        Ok(recent.last().map(|parent| parent.difficulty + 1))
    }

    fn check_block(&self, block: &Block) -> Result<(), String> {
        block.entries.iter().try_for_each(|e| self.check_entry(e))
    }

    fn check_entry(&self, entry: &Entry) -> Result<(), String> {
        match entry.data.starts_with(b"forbidden") {
            true => Err("forbidden entry".into()),
            false => Ok(()),
        }
    }
}

/// §4.2: a backup accepts a valid pre-prepare, persists it, then sends PREPARE; with
/// 2f matching prepares it is prepared, persists the certificate, then sends COMMIT;
/// with 2f + 1 matching commits it applies the block with their certificate.
#[test]
fn normal_case_prepare_commit_apply() {
    let setup = Setup::new(4);
    let mut backup = setup.replica(1);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);

    let outputs = message(&mut backup, setup.pre_prepare(0, &block));
    assert_eq!(
        outputs,
        ["persist accepted v0 h1", "broadcast prepare v0 h1"]
    );

    // Its own prepare and member 2's make 2f = 2: prepared.
    let outputs = message(&mut backup, vote(&setup, 2, false, 0, &block));
    assert_eq!(
        outputs,
        ["persist prepared v0 h1", "broadcast commit v0 h1"]
    );
    assert_eq!(
        message(&mut backup, vote(&setup, 3, false, 0, &block)),
        Vec::<String>::new()
    );

    // Its own commit and member 2's are 2 of the 2f + 1 = 3 needed.
    assert!(message(&mut backup, vote(&setup, 2, true, 0, &block)).is_empty());
    let mut applied = backup.handle(Input::Message(vote(&setup, 0, true, 0, &block)), &NoEntries);
    assert_eq!(applied.len(), 1);
    let Some(Output::Apply {
        block: got,
        certificate,
    }) = applied.pop()
    else {
        panic!("expected an apply");
    };
    assert_eq!(got.hash(), block.hash());
    certificate
        .verify(
            &setup.spec.chain_hash(),
            &setup.spec.members,
            1,
            &block.hash(),
        )
        .expect("the commits form a client-checkable certificate");
    assert_eq!(backup.height(), 1);
}

/// DESIGN.md, validation: a block that fails validation is never prepared.
#[test]
fn invalid_blocks_are_not_prepared() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let good = setup.block(&genesis.header, &genesis.log, 1);
    let mut bad_root = (*good).clone();
    bad_root.entries.pop();
    let mut wrong_parent = (*good).clone();
    wrong_parent.header.prev_hash = Hash([7; 32]);
    for bad in [bad_root, wrong_parent] {
        let mut backup = setup.replica(1);
        let outputs = message(&mut backup, setup.pre_prepare(0, &Arc::new(bad)));
        assert_eq!(outputs, ["dropped InvalidBlock"]);
    }
}

/// The chain's policy (its plugins) is part of validation before a backup prepares
/// (C&L §4.2 leaves "valid" to the service): a block below the policy's difficulty
/// or with an entry it refuses is dropped; the primary mines at that difficulty.
#[test]
fn the_chain_policy_decides_difficulty_and_refuses_blocks() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let with_policy = |member: usize| {
        let config = Config::new(&setup.spec, setup.keys[member].clone(), TIMING)
            .expect("member")
            .with_policy(Arc::new(StricterEachBlock));
        let durable = Durable::genesis(setup.spec.genesis_block().hash());
        Replica::new(config, setup.genesis(), durable, [], setup.now)
    };
    let required = genesis.header.difficulty + 1;
    let easy = setup.block(&genesis.header, &genesis.log, 1);
    assert_eq!(
        message(&mut with_policy(1), setup.pre_prepare(0, &easy)),
        ["dropped InvalidBlock"]
    );
    let forbidden = Entry::new(&b"forbidden fruit"[..]);
    let refused = Arc::new(testing::next_block(
        &genesis.header,
        &genesis.log,
        vec![forbidden],
        required,
    ));
    assert_eq!(
        message(&mut with_policy(1), setup.pre_prepare(0, &refused)),
        ["dropped InvalidBlock"]
    );
    let fine = Arc::new(testing::next_block(
        &genesis.header,
        &genesis.log,
        testing::entries(2, 2, 32),
        required,
    ));
    assert_eq!(
        message(&mut with_policy(1), setup.pre_prepare(0, &fine)),
        ["persist accepted v0 h1", "broadcast prepare v0 h1"]
    );

    let mut primary = with_policy(0);
    let outputs = submit(&mut primary, testing::entries(3, 1, 32).remove(0));
    let Some(Output::Mine(template)) = outputs.last() else {
        panic!("expected a template: {outputs:?}");
    };
    assert_eq!(template.header.difficulty, required);
}

/// Entries another member forwards meet this member's rules before they wait in its
/// pool: a member that runs other rules (or lies) cannot stall a primary with an
/// entry no block it accepts could hold.
#[test]
fn entries_the_policy_refuses_leave_the_pool() {
    let setup = Setup::new(4);
    let primary = || {
        let config = Config::new(&setup.spec, setup.keys[0].clone(), TIMING)
            .expect("member")
            .with_policy(Arc::new(StricterEachBlock));
        let durable = Durable::genesis(setup.spec.genesis_block().hash());
        Replica::new(config, setup.genesis(), durable, [], setup.now)
    };
    let forwarded = |entry: Entry| Input::Entry {
        entry,
        forwarded: true,
    };
    let forbidden = Entry::new(&b"forbidden fruit"[..]);
    let mut taking = primary();
    assert_eq!(
        feed(&mut taking, forwarded(forbidden.clone())),
        ["dropped InvalidEntry"]
    );
    assert!(!taking.is_pending(&forbidden.id()));
    let fine = testing::entries(4, 1, 32).remove(0);
    let outputs = taking.handle(forwarded(fine.clone()), &NoEntries);
    let Some(Output::Mine(template)) = outputs.last() else {
        panic!("expected a template: {outputs:?}");
    };
    assert_eq!(template.entries, [fine]);
}

/// A primary whose rules refuse the block its pool would make (a block rule, or a
/// stateful plugin that took an entry at admission and refuses it now) proposes
/// what they take: entries refused alone leave the pool, told; those refused only
/// beside the others wait for the next block. Proposing the refused block again
/// and again stopped the chain for good.
#[test]
fn a_primary_cuts_the_block_its_rules_take() {
    let setup = Setup::new(4);
    let mut primary = setup.replica_with(0, |config| {
        config.policy = Some(Arc::new(TWO_A_BLOCK));
    });
    let mut pool = testing::entries(5, 3, 32);
    let blockless = Entry::new(&b"blockless"[..]);
    pool.insert(1, blockless.clone());
    let outputs = primary.handle(Input::Entries(pool.clone()), &NoEntries);
    let lines: Vec<String> = outputs.iter().map(describe).collect();
    assert_eq!(lines, ["unpooled", "dropped InvalidEntry", "mine h1"]);
    assert!(matches!(
        &outputs[0],
        Output::Unpooled { id, why }
            if *id == blockless.id() && why == "refused by policy: no block holds a blockless entry"
    ));
    assert!(matches!(
        &outputs[1],
        Output::Dropped { error: Some(crate::chain::ChainError::Policy(reason)), .. }
            if reason == "no block holds a blockless entry"
    ));
    let Some(Output::Mine(template)) = outputs.last() else {
        unreachable!()
    };
    assert_eq!(template.entries, [pool[0].clone(), pool[2].clone()]);
    assert!(!primary.is_pending(&blockless.id()));
    assert!(primary.is_pending(&pool[3].id()));
    assert_eq!(template.header.log_size, 2, "the header is the block's own");

    // Proposed, and the deferred entry goes in the next block.
    let lines = feed(&mut primary, Input::Mined(mined(template)));
    assert!(
        lines.contains(&"broadcast pre-prepare v0 h1".to_owned()),
        "{lines:?}"
    );
    let outputs = primary.handle(Input::Cut, &NoEntries);
    let Some(Output::Mine(next)) = outputs.last() else {
        panic!("expected a template: {outputs:?}");
    };
    assert_eq!((next.header.height, &next.entries[..]), (2, &pool[3..]));
}

/// The chaining rule: a block at h + 1 is accepted on the block accepted at h and
/// voted for at once, but this replica is prepared at h + 1 only once it is prepared
/// at h, however the prepares arrive.
#[test]
fn chaining_rule_prepares_a_block_only_on_a_prepared_parent() {
    let setup = Setup::new(4);
    let mut backup = setup.replica(1);
    let genesis = setup.genesis();
    let first = setup.block(&genesis.header, &genesis.log, 1);
    let second = setup.block(&first.header, &after(&genesis, &first).log, 2);

    assert_eq!(
        message(&mut backup, setup.pre_prepare(0, &first)),
        ["persist accepted v0 h1", "broadcast prepare v0 h1"]
    );
    // Height 2 arrives before height 1 is prepared: accepted and voted for.
    assert_eq!(
        message(&mut backup, setup.pre_prepare(0, &second)),
        ["persist accepted v0 h2", "broadcast prepare v0 h2"]
    );
    // A quorum's prepares at height 2 with none yet at height 1: not prepared.
    assert!(message(&mut backup, vote(&setup, 2, false, 0, &second)).is_empty());
    let outputs = message(&mut backup, vote(&setup, 2, false, 0, &first));
    assert_eq!(
        outputs,
        [
            "persist prepared v0 h1",
            "broadcast commit v0 h1",
            "persist prepared v0 h2",
            "broadcast commit v0 h2"
        ]
    );
}

/// A block accepted at h + 1 on a parent that never prepared here is not prepared
/// once another block at h is applied by catch-up (a later view's): it does not
/// extend the tip, however many prepares it holds.
#[test]
fn a_block_that_does_not_extend_the_tip_is_not_prepared() {
    let setup = Setup::new(4);
    let mut backup = setup.replica(1);
    let genesis = setup.genesis();
    let first = setup.block(&genesis.header, &genesis.log, 1);
    let second = setup.block(&first.header, &after(&genesis, &first).log, 2);
    message(&mut backup, setup.pre_prepare(0, &first));
    message(&mut backup, setup.pre_prepare(0, &second));
    assert!(message(&mut backup, vote(&setup, 2, false, 0, &second)).is_empty());
    let other = setup.block(&genesis.header, &genesis.log, 3);
    let outputs = feed(
        &mut backup,
        Input::Committed {
            block: other.clone(),
            certificate: testing::certify(&setup.keys[..3], &other),
        },
    );
    assert_eq!(outputs, ["apply h1"]);
}

/// Batching is the primary's choice (C&L §5.1.4 batches while requests are in
/// flight): with nothing in flight it cuts a block at once; while a block is in
/// flight, entries gather until `max_block_delay`.
#[test]
fn the_primary_cuts_at_once_when_idle_and_batches_while_busy() {
    let setup = Setup::new(4);
    let mut primary = setup.replica(0);
    let mut entries = testing::entries(5, 2, 32).into_iter();
    let mut outputs = submit(&mut primary, entries.next().expect("two entries"));
    assert_eq!(
        outputs.iter().map(describe).collect::<Vec<_>>(),
        ["mine h1"]
    );
    let Some(Output::Mine(template)) = outputs.pop() else {
        unreachable!()
    };
    assert_eq!(template.entries.len(), 1);
    assert!(
        submit(&mut primary, entries.next().expect("two entries")).is_empty(),
        "one block is mined at a time"
    );

    assert_eq!(
        feed(&mut primary, Input::Mined(mined(&template))),
        ["persist accepted v0 h1", "broadcast pre-prepare v0 h1"]
    );
    let delay = TIMING.max_block_delay_ms;
    assert!(feed(
        &mut primary,
        Input::Tick {
            now_ms: setup.now + delay - 1
        }
    )
    .is_empty());
    assert_eq!(
        feed(
            &mut primary,
            Input::Tick {
                now_ms: setup.now + delay
            }
        ),
        ["mine h2"]
    );
}

/// A find the primary did not ask for now, though at the same height and on the same
/// parent (a template cut before a view change, found as it was cancelled), is not
/// proposed in place of the template being mined; a find of that template is.
#[test]
fn only_a_find_of_the_template_being_mined_is_proposed() {
    let setup = Setup::new(4);
    let mut primary = setup.replica(0);
    let entry = testing::entries(5, 1, 32).remove(0);
    let Some(Output::Mine(template)) = submit(&mut primary, entry).pop() else {
        panic!("an idle primary cuts at once");
    };
    let mut other = Block::clone(&template);
    other.header.timestamp_ms += 1;
    assert!(feed(&mut primary, Input::Mined(mined(&other))).is_empty());
    assert_eq!(
        feed(&mut primary, Input::Mined(mined(&template))),
        ["persist accepted v0 h1", "broadcast pre-prepare v0 h1"]
    );
}

/// Drives the block `outputs` (a primary's) asked to mine through its three phases
/// with members 1 and 2: the block, and the outputs of the last vote.
fn commit_proposal(
    setup: &Setup,
    primary: &mut Replica,
    outputs: Vec<Output>,
) -> (Arc<Block>, Vec<Output>) {
    let Some(Output::Mine(template)) = outputs.into_iter().last() else {
        panic!("a block to mine")
    };
    let block = mined(&template);
    feed(primary, Input::Mined(block.clone()));
    let mut outputs = Vec::new();
    for (from, commit) in [(1, false), (2, false), (1, true), (2, true)] {
        let message = Input::Message(vote(setup, from, commit, 0, &block));
        outputs = primary.handle(message, &NoEntries);
    }
    (block, outputs)
}

/// With nothing in flight, entries that come one at a time are cut at once, but
/// while they come together the oldest waits `max_block_delay` for the others:
/// otherwise a busy cluster spends its CPU on blocks of a few entries each, and on
/// a WAN the first entry of a burst goes alone and the rest wait a round. The
/// delay counts in the time the driver tells, at ticks or between them.
#[test]
fn entries_that_come_together_wait_the_delay_for_each_other() {
    let setup = Setup::new(4);
    let mut primary = setup.replica(0);
    let mut entries = testing::entries(7, 6, 32).into_iter();
    let mut next = || entries.next().expect("six entries");
    let commit = |primary: &mut Replica, outputs| commit_proposal(&setup, primary, outputs);
    let lines = |outputs: &[Output]| outputs.iter().map(describe).collect::<Vec<_>>();

    // One entry: cut at once. Two more arrive while it is in flight. The flag looks
    // one cut back: the first entry came alone, so once its block commits, nothing
    // is in flight and the two are cut at once too.
    let first = submit(&mut primary, next());
    assert!(submit(&mut primary, next()).is_empty());
    assert!(submit(&mut primary, next()).is_empty());
    let (_, outputs) = commit(&mut primary, first);
    assert_eq!(lines(&outputs), ["apply h1", "mine h2"]);
    let (second, _) = commit(&mut primary, outputs);
    assert_eq!(second.entries.len(), 2);

    // Those two came together: an entry arriving after a pause (nothing in
    // flight, the delay since their cut long past) waits the delay for others,
    // counted from its arrival as the clock between ticks dates it, and one
    // arriving meanwhile joins it. The replica names when the block falls due,
    // and the clock cuts it then.
    let delay = TIMING.max_block_delay_ms;
    let tick = |primary: &mut Replica, after: u64| {
        primary.handle(
            Input::Tick {
                now_ms: setup.now + after,
            },
            &NoEntries,
        )
    };
    let clock = |primary: &mut Replica, after: u64| {
        let now_ms = setup.now + after;
        primary.handle(Input::Clock { now_ms }, &NoEntries)
    };
    let paused = 3 * delay;
    assert!(clock(&mut primary, paused).is_empty());
    assert_eq!(primary.cut_due_ms(), None);
    assert!(submit(&mut primary, next()).is_empty());
    assert_eq!(primary.cut_due_ms(), Some(setup.now + paused + delay));
    assert!(clock(&mut primary, paused + delay / 2).is_empty());
    assert!(submit(&mut primary, next()).is_empty());
    assert!(clock(&mut primary, paused + delay - 1).is_empty());
    let third = clock(&mut primary, paused + delay);
    assert_eq!(lines(&third), ["mine h3"]);
    assert_eq!(
        primary.cut_due_ms(),
        None,
        "nothing more is due while it mines"
    );

    // Those two came together as well, so the next entry waits the delay too.
    let (block, _) = commit(&mut primary, third);
    assert_eq!(block.entries.len(), 2);
    assert!(submit(&mut primary, next()).is_empty());
    assert_eq!(lines(&tick(&mut primary, paused + 2 * delay)), ["mine h4"]);
}

/// While entries keep coming, the next cut also waits `min_block_interval_ms` from
/// the last one, unless as many entries wait as arrived in that long before it.
/// Without it the pace would follow the last block's prepare at any rate, and the
/// members' CPU would go to blocks of a few entries.
#[test]
fn entries_that_keep_coming_wait_the_block_interval_unless_enough_are_in() {
    let setup = Setup::new(4);
    let delay = TIMING.max_block_delay_ms;
    let interval = 5 * delay;
    let mut primary = setup.replica_with(0, |config| {
        config.max_blocks_in_flight = 1;
        config.min_block_interval_ms = interval;
    });
    let mut entries = testing::entries(9, 7, 32).into_iter();
    let mut next = || entries.next().expect("seven entries");
    let at = |primary: &mut Replica, after: u64| {
        let now_ms = setup.now + after;
        primary.handle(Input::Clock { now_ms }, &NoEntries)
    };
    let commit = |primary: &mut Replica, outputs| commit_proposal(&setup, primary, outputs);
    let lines = |outputs: &[Output]| outputs.iter().map(describe).collect::<Vec<_>>();

    // One entry alone is cut at once; two arrive while it is in flight, and are cut
    // once it commits, 10 ms later.
    let first = submit(&mut primary, next());
    assert!(submit(&mut primary, next()).is_empty());
    assert!(submit(&mut primary, next()).is_empty());
    assert!(at(&mut primary, 10).is_empty());
    let (_, outputs) = commit(&mut primary, first);
    assert_eq!(lines(&outputs), ["apply h1", "mine h2"]);
    let (second, _) = commit(&mut primary, outputs);
    assert_eq!(second.entries.len(), 2);

    // Those two came in the 10 ms before their cut, so a block's worth is
    // 2 * interval / 10 entries: the next entries wait out the interval from that
    // cut, not only the delay from their arrival.
    assert!(submit(&mut primary, next()).is_empty());
    assert_eq!(primary.cut_due_ms(), Some(setup.now + 10 + interval));
    assert!(
        at(&mut primary, 10 + delay).is_empty(),
        "the delay alone is out"
    );
    assert!(submit(&mut primary, next()).is_empty());
    assert!(at(&mut primary, 10 + interval - 1).is_empty());
    let third = at(&mut primary, 10 + interval);
    assert_eq!(lines(&third), ["mine h3"]);
    let (third, _) = commit(&mut primary, third);
    assert_eq!(third.entries.len(), 2);

    // Two came in that interval, so two are a block's worth now: one waits for
    // the interval, and once a second is in, both wait only the delay.
    let cut = 10 + interval;
    assert!(submit(&mut primary, next()).is_empty());
    assert_eq!(primary.cut_due_ms(), Some(setup.now + cut + interval));
    assert!(submit(&mut primary, next()).is_empty());
    assert_eq!(primary.cut_due_ms(), Some(setup.now + cut + delay));
    assert_eq!(lines(&at(&mut primary, cut + delay)), ["mine h4"]);
}

/// With `max_blocks_in_flight` blocks preparing, entries wait for one to prepare
/// however long they have waited; the primary then cuts at once, and mines while
/// the prepared block commits.
#[test]
fn the_primary_waits_for_a_prepare_with_its_blocks_in_flight() {
    let setup = Setup::new(4);
    let mut primary = setup.replica_with(0, |config| config.max_blocks_in_flight = 1);
    let mut entries = testing::entries(6, 2, 32).into_iter();
    let mut next = || entries.next().expect("two entries");
    let Some(Output::Mine(template)) = submit(&mut primary, next()).pop() else {
        panic!("an idle primary cuts at once")
    };
    assert!(submit(&mut primary, next()).is_empty());
    let mined = mined(&template);
    feed(&mut primary, Input::Mined(mined.clone()));
    let late = setup.now + 10 * TIMING.max_block_delay_ms;
    assert!(
        feed(&mut primary, Input::Tick { now_ms: late }).is_empty(),
        "one block in flight: the second entry waits past the delay"
    );
    assert_eq!(
        primary.cut_due_ms(),
        None,
        "the cut waits for a prepare, not a time"
    );
    let outputs = message(&mut primary, vote(&setup, 1, false, 0, &mined));
    assert!(
        !outputs.iter().any(|o| o.starts_with("mine")),
        "{outputs:?}"
    );
    let outputs = message(&mut primary, vote(&setup, 2, false, 0, &mined));
    assert_eq!(
        outputs.last().map(String::as_str),
        Some("mine h2"),
        "prepared: {outputs:?}"
    );
    message(&mut primary, vote(&setup, 1, true, 0, &mined));
    let outputs = message(&mut primary, vote(&setup, 2, true, 0, &mined));
    assert_eq!(outputs, ["apply h1"]);
}

/// With two blocks in flight the primary proposes the second on the first before the
/// first is prepared, so their pre-prepares are not a prepare round apart; it is
/// prepared at the second only once prepared at the first (the chaining rule), however
/// its prepares arrive.
#[test]
fn the_primary_pipelines_proposals_and_prepares_them_in_order() {
    let setup = Setup::new(4);
    let mut primary = setup.replica_with(0, |config| config.max_blocks_in_flight = 2);
    let mut entries = testing::entries(8, 2, 32).into_iter();
    let mut next = || entries.next().expect("two entries");
    let Some(Output::Mine(template)) = submit(&mut primary, next()).pop() else {
        panic!("an idle primary cuts at once")
    };
    let first = mined(&template);
    assert_eq!(
        feed(&mut primary, Input::Mined(first.clone())),
        ["persist accepted v0 h1", "broadcast pre-prepare v0 h1"]
    );
    assert!(submit(&mut primary, next()).is_empty());
    let now_ms = setup.now + TIMING.max_block_delay_ms;
    let outputs = primary.handle(Input::Tick { now_ms }, &NoEntries);
    let Some(Output::Mine(template)) = outputs.last() else {
        panic!("room for a second block: {outputs:?}")
    };
    assert_eq!(template.header.prev_hash, first.hash());
    let second = mined(template);
    assert_eq!(
        feed(&mut primary, Input::Mined(second.clone())),
        ["persist accepted v0 h2", "broadcast pre-prepare v0 h2"],
        "the second goes out with the first still preparing"
    );
    // A quorum of prepares for the second, before any for the first: not prepared.
    assert!(message(&mut primary, vote(&setup, 1, false, 0, &second)).is_empty());
    assert!(message(&mut primary, vote(&setup, 2, false, 0, &second)).is_empty());
    message(&mut primary, vote(&setup, 1, false, 0, &first));
    let outputs = message(&mut primary, vote(&setup, 2, false, 0, &first));
    assert_eq!(
        &outputs[..4],
        [
            "persist prepared v0 h1",
            "broadcast commit v0 h1",
            "persist prepared v0 h2",
            "broadcast commit v0 h2"
        ]
    );
}

/// A full block is cut however many blocks are in flight. The pool also holds the
/// entries of the block in flight, so it is the entries outside it that must fill
/// one: after a scan that found too few, the primary counts arrivals instead of
/// scanning the pool again for each.
#[test]
fn a_full_block_of_new_entries_is_cut_with_a_block_in_flight() {
    let setup = Setup::new(4);
    let mut primary = setup.replica_with(0, |config| {
        config.max_blocks_in_flight = 1;
        config.max_block_entries = 3;
    });
    let mut entries = testing::entries(7, 4, 32).into_iter();
    let mut next = || entries.next().expect("four entries");
    let Some(Output::Mine(template)) = submit(&mut primary, next()).pop() else {
        panic!("an idle primary cuts at once")
    };
    feed(&mut primary, Input::Mined(mined(&template)));
    // The pool holds three entries at the second arrival, one of them in flight.
    assert!(submit(&mut primary, next()).is_empty());
    assert!(submit(&mut primary, next()).is_empty());
    let outputs = submit(&mut primary, next());
    assert_eq!(
        outputs.iter().map(describe).collect::<Vec<_>>(),
        ["mine h2"]
    );
    let Some(Output::Mine(second)) = outputs.last() else {
        unreachable!()
    };
    assert_eq!(second.entries.len(), 3);
    assert!(!second.entries.iter().any(|e| template.entries.contains(e)));
}

/// §4.3: at a checkpoint height the replica announces its state; a quorum of matching
/// announcements make it stable, and the consensus log at or below it is discarded.
#[test]
fn checkpoints_become_stable_and_truncate_the_log() {
    let setup = Setup::new(4);
    let mut backup = setup.replica(1);
    let mut parent = setup.genesis();
    for height in 1..=2u64 {
        let block = setup.block(&parent.header, &parent.log, height);
        message(&mut backup, setup.pre_prepare(0, &block));
        message(&mut backup, vote(&setup, 2, false, 0, &block));
        message(&mut backup, vote(&setup, 2, true, 0, &block));
        let outputs = message(&mut backup, vote(&setup, 3, true, 0, &block));
        let expected: Vec<&str> = if height == 2 {
            vec!["apply h2", "broadcast checkpoint h2"]
        } else {
            vec!["apply h1"]
        };
        assert_eq!(outputs, expected);
        parent = after(&parent, &block);
    }
    assert!(backup.footprint().slots >= 2);
    let hash = parent.header.hash();
    let checkpoint = |from: usize| setup.sign(from, Payload::Checkpoint { height: 2, hash });
    assert!(message(&mut backup, checkpoint(2)).is_empty());
    assert_eq!(message(&mut backup, checkpoint(3)), ["persist stable h2"]);
    assert_eq!(backup.stable_checkpoint().height, 2);
    assert_eq!(backup.footprint().slots, 0);
    assert_eq!(backup.footprint().blocks, 0);
}

/// §4.3 with §6.1: a replica restarted with a checkpoint block applied above its
/// stable checkpoint announces it again. Its first announcement may never have left,
/// and at n = 2 (q = 2) the cluster cannot move past the window without it.
#[test]
fn a_restarted_replica_announces_its_last_checkpoint_again() {
    let setup = Setup::new(2);
    let mut tip = setup.genesis();
    let mut applied = Vec::new();
    for height in 1..=3u64 {
        let block = setup.block(&tip.header, &tip.log, height);
        applied.push((height, block.hash()));
        tip = after(&tip, &block);
    }
    let config = Config::new(&setup.spec, setup.keys[1].clone(), TIMING).expect("member");
    let durable = Durable::genesis(setup.spec.genesis_block().hash());
    let mut restarted = Replica::new(config, tip, durable, applied.clone(), setup.now);
    let outputs = feed(&mut restarted, Input::Tick { now_ms: setup.now });
    assert_eq!(outputs, ["broadcast checkpoint h2"]);
    let (height, hash) = applied[1];
    let other = setup.sign(0, Payload::Checkpoint { height, hash });
    assert_eq!(message(&mut restarted, other), ["persist stable h2"]);
}

/// A member that lost its disk forgot what it signed: up to its bound it signs no
/// PREPARE, COMMIT or VIEW-CHANGE, proposes nothing as primary and only applies what
/// the others committed (a quorum's COMMITs on a block it accepted, or a fetched
/// block with its certificate); once its tip reaches the bound it votes again.
#[test]
fn a_member_that_forgot_its_votes_abstains_until_past_them() {
    let setup = Setup::new(4);
    let config = Config::new(&setup.spec, setup.keys[1].clone(), TIMING).expect("member");
    let mut durable = Durable::genesis(setup.spec.genesis_block().hash());
    durable.abstain_through = 2;
    let mut backup = Replica::new(config, setup.genesis(), durable, [], setup.now);
    assert!(backup.abstaining());
    let mut tip = setup.genesis();
    let mut blocks = Vec::new();
    for height in 1..=3u64 {
        let block = setup.block(&tip.header, &tip.log, height);
        tip = after(&tip, &block);
        blocks.push(block);
    }
    // It asks for the blocks since its tip at once. A pre-prepare is accepted but
    // not voted for; others' votes make nothing here.
    assert_eq!(
        message(&mut backup, setup.pre_prepare(0, &blocks[0])),
        [
            "fetch committed after 0 (entered view 0)",
            "persist accepted v0 h1"
        ]
    );
    assert!(message(&mut backup, vote(&setup, 2, false, 0, &blocks[0])).is_empty());
    assert!(message(&mut backup, vote(&setup, 3, false, 0, &blocks[0])).is_empty());
    // A quorum of the others' COMMITs on it: applied, with nothing sent.
    assert!(message(&mut backup, vote(&setup, 0, true, 0, &blocks[0])).is_empty());
    assert!(message(&mut backup, vote(&setup, 2, true, 0, &blocks[0])).is_empty());
    let outputs = message(&mut backup, vote(&setup, 3, true, 0, &blocks[0]));
    assert!(outputs.contains(&"apply h1".to_string()), "{outputs:?}");
    assert!(
        !outputs.iter().any(|o| o.contains("broadcast")),
        "{outputs:?}"
    );
    // Its timer runs out on a waiting entry: it starts no view change.
    client_entry(&mut backup);
    let late = setup.now + 10 * TIMING.view_change_timeout_ms;
    let outputs = feed(&mut backup, Input::Tick { now_ms: late });
    assert!(
        !outputs.iter().any(|o| o.contains("view-change")),
        "{outputs:?}"
    );
    // A committed block fetched with its certificate it applies too, and from its
    // bound on it votes.
    for block in &blocks[1..2] {
        let committed = Input::Committed {
            block: block.clone(),
            certificate: testing::certify(&setup.keys[..3], block),
        };
        assert!(feed(&mut backup, committed).contains(&format!("apply h{}", block.header.height)));
    }
    assert!(!backup.abstaining());
    assert_eq!(
        message(&mut backup, setup.pre_prepare(0, &blocks[2])),
        ["persist accepted v0 h3", "broadcast prepare v0 h3"]
    );
}

/// §4.2 (a request executes once): a block validated in the same step that applied
/// its parent must not repeat the parent's entries, although the driver's index
/// learns of the parent only after the step.
#[test]
fn a_block_repeating_an_entry_of_a_parent_applied_in_the_same_step_is_refused() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let first = setup.block(&genesis.header, &genesis.log, 1);
    let repeat = vec![first.entries[0].clone()];
    let second = Arc::new(testing::next_block(
        &first.header,
        &after(&genesis, &first).log,
        repeat,
        setup.spec.difficulty,
    ));
    let mut backup = setup.replica(1);
    // The second block arrives first and waits for its parent.
    assert!(message(&mut backup, setup.pre_prepare(0, &second)).is_empty());
    // Catch-up delivers the parent with its certificate; the wait ends in this step.
    let outputs = feed(
        &mut backup,
        Input::Committed {
            block: first.clone(),
            certificate: testing::certify(&setup.keys[..3], &first),
        },
    );
    assert_eq!(outputs, ["apply h1", "dropped InvalidBlock"]);
}

/// Client entries that arrive together are taken in one step: an idle primary cuts
/// one block holding all of them, where one entry at a time would have cut a block
/// for the first alone.
#[test]
fn client_entries_taken_together_fill_one_block() {
    let setup = Setup::new(4);
    let mut primary = setup.replica(0);
    let entries = testing::entries(7, 3, 32);
    let mut outputs = primary.handle(Input::Entries(entries.clone()), &NoEntries);
    assert_eq!(
        outputs.iter().map(describe).collect::<Vec<_>>(),
        ["mine h1"]
    );
    let Some(Output::Mine(template)) = outputs.pop() else {
        unreachable!()
    };
    assert_eq!(template.entries, entries);
    // A backup takes them the same way and passes them to the primary.
    let mut backup = setup.replica(1);
    let outputs = backup.handle(Input::Entries(entries), &NoEntries);
    assert_eq!(
        outputs.iter().map(describe).collect::<Vec<_>>(),
        ["forward 0", "forward 0", "forward 0"]
    );
    assert_eq!(backup.footprint().pending, 3);
}

/// DESIGN.md, "Membership": a change goes into a block alone, and the replicas of its
/// epoch order nothing from the height the next epoch starts (here 3: the change at
/// height 1, a checkpoint every 2 blocks), neither as backups nor as primary; a
/// replica that does not order changes refuses a block holding one.
#[test]
fn a_change_ends_its_epoch_at_the_next_checkpoint() {
    let mut setup = Setup::new(4);
    let admin = testing::key(30);
    setup.spec.admins =
        Some(crate::chain::Admins::new(vec![admin.verifying_key()], 1).expect("one admin"));
    let genesis = setup.genesis();
    let change = |epoch: u64, seed: u8| {
        let mut change = crate::chain::Reconfiguration::new(
            epoch,
            crate::chain::Change::AddLearner {
                public_key: testing::key(seed).verifying_key(),
                p2p_addr: format!("127.0.0.1:{}", 7000 + u16::from(seed)),
                api_addr: None,
            },
        )
        .expect("valid change");
        change.sign(&admin, &setup.spec.chain_hash());
        change.to_entry()
    };
    let ordering = |config: &mut Config| config.reconfigurations = true;

    // The primary takes one change in its pool and cuts it into a block; a second
    // while the first is in flight, or one signed for another epoch, is dropped.
    let mut primary = setup.replica_with(0, ordering);
    let pool = |replica: &mut Replica, entry: Entry| {
        feed(
            replica,
            Input::Entry {
                entry,
                forwarded: true,
            },
        )
    };
    assert_eq!(pool(&mut primary, change(1, 9)), ["dropped InvalidEntry"]);
    let mut outputs = primary.handle(
        Input::Entry {
            entry: change(0, 9),
            forwarded: true,
        },
        &NoEntries,
    );
    let Some(Output::Mine(template)) = outputs.pop() else {
        panic!("an idle primary cuts at once");
    };
    assert_eq!(template.entries, [change(0, 9)]);

    // Backups accept the block holding it and its successor at height 2.
    let first = Arc::new(testing::next_block(
        &genesis.header,
        &genesis.log,
        vec![change(0, 9)],
        setup.spec.difficulty,
    ));
    let mut backup = setup.replica_with(1, ordering);
    assert_eq!(
        message(&mut backup, setup.pre_prepare(0, &first)),
        ["persist accepted v0 h1", "broadcast prepare v0 h1"]
    );
    let after_first = after(&genesis, &first);
    let second = setup.block(&after_first.header, &after_first.log, 2);
    assert_eq!(
        message(&mut backup, setup.pre_prepare(0, &second)),
        ["persist accepted v0 h2", "broadcast prepare v0 h2"]
    );
    assert_eq!(
        message(&mut backup, vote(&setup, 2, false, 0, &first)),
        ["persist prepared v0 h1", "broadcast commit v0 h1"]
    );
    // Height 3 belongs to epoch 1 on this chain: refused while height 1 is in flight.
    let after_second = after(&after_first, &second);
    let third = setup.block(&after_second.header, &after_second.log, 3);
    assert_eq!(
        message(&mut backup, vote(&setup, 2, false, 0, &second)),
        ["persist prepared v0 h2", "broadcast commit v0 h2"]
    );
    assert_eq!(
        message(&mut backup, setup.pre_prepare(0, &third)),
        ["dropped InvalidBlock"]
    );
    // Once height 1 commits the change is on its way, in force from height 3.
    message(&mut backup, vote(&setup, 2, true, 0, &first));
    let applied = message(&mut backup, vote(&setup, 0, true, 0, &first));
    assert_eq!(applied, ["apply h1"]);
    let pending = backup.membership().pending.clone().expect("on its way");
    assert_eq!((pending.height, pending.in_force_from), (1, 3));

    // A replica that does not order changes refuses the block outright.
    let mut closed = setup.replica(1);
    assert_eq!(
        message(&mut closed, setup.pre_prepare(0, &first)),
        ["dropped InvalidBlock"]
    );
    assert_eq!(pool(&mut closed, change(0, 9)), ["dropped InvalidEntry"]);
}

/// The epoch's last blocks are cut even with no entry waiting, so a change comes into
/// force without clients; once the last is applied the replica names the next
/// membership, and a replica of that epoch starts above it in view 0, signing
/// under the new epoch's domain.
#[test]
fn an_ending_epoch_is_filled_and_the_next_starts_above_it() {
    let mut setup = Setup::new(1);
    let admin = testing::key(30);
    setup.spec.admins =
        Some(crate::chain::Admins::new(vec![admin.verifying_key()], 1).expect("one admin"));
    let mut change = crate::chain::Reconfiguration::new(
        0,
        crate::chain::Change::AddLearner {
            public_key: testing::key(9).verifying_key(),
            p2p_addr: "127.0.0.1:7009".into(),
            api_addr: None,
        },
    )
    .expect("valid change");
    change.sign(&admin, &setup.spec.chain_hash());
    let mut replica = setup.replica_with(0, |config| config.reconfigurations = true);
    let mine = |replica: &mut Replica, outputs: Vec<Output>| {
        let Some(Output::Mine(template)) = outputs.into_iter().last() else {
            panic!("the primary cuts a block");
        };
        replica.handle(Input::Mined(mined(&template)), &NoEntries)
    };
    let outputs = submit(&mut replica, change.to_entry());
    // Block 1 holds the change, so blocks up to the checkpoint at 2 are epoch 0's:
    // the one member applies block 1, then cuts block 2 with nothing in it.
    let applied = |outputs: &[Output]| {
        outputs.iter().find_map(|o| match o {
            Output::Apply { block, .. } => Some(block.clone()),
            _ => None,
        })
    };
    let outputs = mine(&mut replica, outputs);
    let first = applied(&outputs).expect("block 1 applies");
    assert_eq!(first.entries, [change.to_entry()]);
    assert!(replica.next_membership().is_none());
    let outputs = mine(&mut replica, outputs);
    let last = applied(&outputs).expect("block 2 applies");
    assert_eq!((last.header.height, last.entries.len()), (2, 0));
    let next = replica.next_membership().expect("epoch 0 is over");
    assert_eq!((next.epoch, next.since, next.learners.len()), (1, 3, 1));
    assert!(
        outputs.iter().all(|o| !matches!(o, Output::Mine(_))),
        "nothing is cut past the epoch"
    );

    // The next epoch's replica: the same member, view 0, block 2 its stable base.
    let durable = Durable::genesis(setup.spec.genesis_block().hash());
    let mut moved = durable.clone();
    let record = durable
        .epoch_record(&next, &last.header)
        .expect("a new epoch");
    moved.apply(&record);
    assert_eq!((moved.epoch, moved.view, moved.stable.height), (1, 0, 2));
    assert!(moved.epoch_record(&next, &last.header).is_none());
    let config = Config::new(&setup.spec, setup.keys[0].clone(), TIMING)
        .expect("member")
        .next_epoch(&next, &last.header)
        .expect("still a member");
    assert_eq!(config.epoch, 1);
    assert_ne!(config.verifier.domain, setup.spec.chain_hash());
    let tip = after(&after(&setup.genesis(), &first), &last);
    let mut successor =
        Replica::new(config, tip, moved, [], setup.now).with_membership(Arc::new(next));
    assert_eq!(
        (successor.view(), successor.height(), successor.epoch()),
        (0, 2, 1)
    );
    let outputs = submit(&mut successor, testing::entries(7, 1, 16).remove(0));
    let outputs = mine(&mut successor, outputs);
    assert!(outputs
        .iter()
        .any(|o| matches!(o, Output::Apply { block, .. } if block.header.height == 3)));
    // A member no longer in the membership has no configuration there.
    let mut without = successor.membership().as_ref().clone();
    without.members = crate::chain::Members::new(vec![crate::chain::Member {
        public_key: testing::key(9).verifying_key(),
        node_id: crate::chain::Hash::digest(testing::key(9).verifying_key().as_bytes()),
        p2p_addr: None,
        api_addr: None,
    }])
    .expect("one member");
    assert!(Config::new(&setup.spec, setup.keys[0].clone(), TIMING)
        .expect("member")
        .next_epoch(&without, &last.header)
        .is_err());
}
