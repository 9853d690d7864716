//! Inputs step by step: refusals, timers, retransmission and catch-up (C&L §4.2,
//! §4.5, §5.2, §5.3), with exact outputs.

use std::sync::Arc;

use crate::chain::{Block, ChainError, Entry, Header};
use crate::consensus::harness::*;
use crate::consensus::{
    Config, DropReason, Durable, Input, Message, Output, Payload, Replica, ViewChangeCause,
};
use crate::testing;

/// §4.2: messages for another view, from a member who may not send them, outside the
/// watermarks, or with a bad signature are dropped with a reason and nothing else.
#[test]
fn out_of_place_messages_are_dropped_with_a_reason() {
    let setup = Setup::new(4);
    let mut backup = setup.replica(1);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);

    let not_primary = setup.sign(
        2,
        Payload::PrePrepare {
            view: 0,
            block: block.clone(),
        },
    );
    assert_eq!(message(&mut backup, not_primary), ["dropped NotPrimary"]);
    assert_eq!(
        message(&mut backup, setup.pre_prepare(2, &block)),
        ["dropped WrongView"]
    );
    let far = Payload::Prepare {
        view: 0,
        height: 1_000,
        hash: block.hash(),
    };
    assert_eq!(
        message(&mut backup, setup.sign(2, far)),
        ["dropped OutsideWindow"]
    );
    let forged_pre_prepare = forged(setup.pre_prepare(0, &block));
    assert_eq!(
        message(&mut backup, forged_pre_prepare),
        ["dropped BadSignature"]
    );
    let mut stranger = vote(&setup, 2, false, 0, &block);
    stranger.from = 9;
    assert_eq!(message(&mut backup, stranger), ["dropped NotMember"]);
    // More prepared certificates than a window holds are refused before any
    // signature is checked.
    let oversized = crate::consensus::ViewChange {
        new_view: 1,
        checkpoint: other_checkpoint(&setup),
        prepared: (1..=5)
            .map(|height| crate::consensus::PreparedCertificate {
                view: 0,
                header: Header {
                    height,
                    ..genesis.header
                },
                votes: Vec::new(),
            })
            .collect(),
    };
    let change = setup.sign(2, Payload::ViewChange(oversized));
    assert_eq!(message(&mut backup, change), ["dropped OutsideWindow"]);
    assert_eq!(backup.drops().values().sum::<u64>(), 6);
}

/// A vote the replica has no use for is not checked: a retransmitted one it holds,
/// a PREPARE once this view's prepared certificate is complete, any vote once the
/// height's commit certificate is. A forged signature there changes nothing.
#[test]
fn needless_votes_are_not_checked() {
    let setup = Setup::new(4);
    let mut backup = setup.replica(1);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);
    assert_eq!(
        message(&mut backup, setup.pre_prepare(0, &block)),
        ["persist accepted v0 h1", "broadcast prepare v0 h1"]
    );
    let forged_prepare = forged(vote(&setup, 3, false, 0, &block));
    assert_eq!(
        message(&mut backup, forged_prepare.clone()),
        ["dropped BadSignature"],
        "needed, so checked"
    );
    let prepare = vote(&setup, 2, false, 0, &block);
    assert_eq!(
        message(&mut backup, prepare.clone()),
        ["persist prepared v0 h1", "broadcast commit v0 h1"]
    );
    assert!(message(&mut backup, prepare).is_empty(), "held already");
    assert!(message(&mut backup, forged_prepare).is_empty(), "prepared");
    let commit = vote(&setup, 0, true, 0, &block);
    assert!(message(&mut backup, commit.clone()).is_empty());
    assert!(message(&mut backup, commit).is_empty(), "held already");
    assert_eq!(
        message(&mut backup, vote(&setup, 2, true, 0, &block)),
        ["apply h1"]
    );
    assert!(message(&mut backup, forged(vote(&setup, 3, true, 0, &block))).is_empty());
    assert!(message(&mut backup, forged(vote(&setup, 3, false, 0, &block))).is_empty());
    assert_eq!(backup.drops().values().sum::<u64>(), 1);
}

/// §4.4: two signed pre-prepares for one height in one view prove the primary faulty;
/// the backup leaves the view at once: persist, then VIEW-CHANGE.
#[test]
fn an_equivocating_primary_starts_a_view_change() {
    let setup = Setup::new(4);
    let mut backup = setup.replica(1);
    let genesis = setup.genesis();
    let one = setup.block(&genesis.header, &genesis.log, 1);
    let other = setup.block(&genesis.header, &genesis.log, 2);
    message(&mut backup, setup.pre_prepare(0, &one));
    let outputs = message(&mut backup, setup.pre_prepare(0, &other));
    assert_eq!(
        outputs,
        [
            "dropped Conflicting",
            "persist view-change v1",
            "broadcast view-change v1 prepared 0"
        ]
    );
    assert!(!backup.is_active());
}

/// An entry no block can hold under this replica's rules (a block rule its entry
/// hook does not see, a stateful plugin that took it and refuses it now) leaves
/// the pool when its timer runs out, instead of changing views for it without end;
/// one the rules take still starts a view change, so a censoring primary does not
/// escape the timers.
#[test]
fn an_entry_no_block_can_hold_leaves_the_pool_at_its_timeout() {
    let setup = Setup::new(4);
    let mut backup = setup.replica_with(1, |config| config.policy = Some(Arc::new(TWO_A_BLOCK)));
    let blockless = Entry::new(&b"blockless"[..]);
    assert_eq!(submit(&mut backup, blockless.clone()).len(), 1, "forwarded");
    let later = setup.now + TIMING.view_change_timeout_ms;
    let outputs = backup.handle(Input::Tick { now_ms: later }, &NoEntries);
    let lines: Vec<String> = outputs.iter().map(describe).collect();
    assert_eq!(
        lines[lines.len() - 2..],
        ["unpooled", "dropped InvalidEntry"]
    );
    let unpooled = &outputs[outputs.len() - 2];
    assert!(matches!(unpooled, Output::Unpooled { id, .. } if *id == blockless.id()));
    assert!(matches!(
        outputs.last(),
        Some(Output::Dropped { error: Some(ChainError::Policy(reason)), .. })
            if reason == "no block holds a blockless entry"
    ));
    assert!(!backup.is_pending(&blockless.id()) && backup.is_active());

    assert_eq!(client_entry(&mut backup), ["forward 0"]);
    let later = later + TIMING.view_change_timeout_ms;
    let outputs = feed(&mut backup, Input::Tick { now_ms: later });
    assert!(
        outputs.contains(&"broadcast view-change v1 prepared 0".to_owned()),
        "{outputs:?}"
    );
}

/// §4.1, §4.5.2: an entry waiting half a timeout goes to every member (as a client
/// retransmits to all); one not committed in time starts a view change; f + 1 view
/// changes for a higher view pull a replica along.
#[test]
fn timers_and_the_f_plus_one_rule_start_view_changes() {
    let setup = Setup::new(4);
    let mut backup = setup.replica(1);
    assert_eq!(client_entry(&mut backup), ["forward 0"]);
    // Half a timeout on, the entry goes to every member, which start their timers;
    // at the timeout it goes again (a retry, the first copies may be lost).
    let half = setup.now + TIMING.view_change_timeout_ms / 2;
    assert!(feed(&mut backup, Input::Tick { now_ms: half - 1 }).is_empty());
    assert_eq!(
        feed(&mut backup, Input::Tick { now_ms: half }),
        ["forward 0", "forward 2", "forward 3"]
    );
    let later = setup.now + TIMING.view_change_timeout_ms;
    let outputs = feed(&mut backup, Input::Tick { now_ms: later });
    assert_eq!(
        outputs,
        [
            "forward 0",
            "forward 2",
            "forward 3",
            "persist view-change v1",
            "broadcast view-change v1 prepared 0"
        ]
    );
    // The operator's log says why: one entry, waiting the whole timeout.
    assert_eq!(
        backup.view_change_cause(),
        Some((
            1,
            ViewChangeCause::EntryWaited {
                waited_ms: TIMING.view_change_timeout_ms,
                pending: 1
            }
        ))
    );

    let mut other = setup.replica(2);
    let change = |from: usize, view: u64| empty_view_change(&setup, from, view);
    assert!(message(&mut other, change(1, 3)).is_empty());
    // The second (f + 1 = 2) pulls member 2 to the smaller of the two views.
    let outputs = message(&mut other, change(3, 2));
    assert_eq!(
        outputs,
        [
            "persist view-change v2",
            "broadcast view-change v2 prepared 0"
        ]
    );
    assert_eq!(
        other.view_change_cause(),
        Some((2, ViewChangeCause::Followed))
    );
}

/// §5.2: a replica re-proposed a block it never received asks for the body, and asks
/// again at every retransmit until it arrives (the peer asked may lack it, or the
/// answer may be lost); then it prepares and stops asking.
#[test]
fn a_missing_block_is_asked_for_until_it_arrives() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);
    let (_, new_view) = prepared_in_view_0_then_new_view(&setup, &block);

    // Member 0 missed view 0's pre-prepare.
    let mut late = setup.replica(0);
    assert_eq!(
        message(&mut late, new_view),
        ["persist new-view v1 proposals 1", "fetch block h1"]
    );
    let mut now = setup.now;
    let mut retransmit = || {
        now += TIMING.retransmit_ms;
        now
    };
    // The first lagging check also probes a peer's chain (see
    // `catch_up_needs_no_traffic_and_holds_the_view_change_timer`).
    assert_eq!(
        feed(
            &mut late,
            Input::Tick {
                now_ms: retransmit()
            }
        ),
        ["fetch block h1", "fetch committed after 0 (entered view 1)"]
    );
    assert_eq!(
        feed(&mut late, Input::Block(block.clone())),
        ["persist accepted v1 h1", "broadcast prepare v1 h1"]
    );
    assert_eq!(
        feed(
            &mut late,
            Input::Tick {
                now_ms: retransmit()
            }
        ),
        ["broadcast prepare v1 h1"]
    );
}

/// §6.1 (persist before send): a replica rebuilt from what it persisted signs the same
/// PREPARE again, byte for byte, and cannot be made to prepare another block.
#[test]
fn a_restarted_replica_repeats_itself_and_nothing_else() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);
    let other = setup.block(&genesis.header, &genesis.log, 2);
    let mut backup = setup.replica(1);
    let mut durable = Durable::genesis(setup.spec.genesis_block().hash());
    let mut sent = None;
    for output in backup.handle(Input::Message(setup.pre_prepare(0, &block)), &NoEntries) {
        match output {
            Output::Persist(record) => durable.apply(&record),
            Output::Broadcast(m) => sent = Some(m),
            _ => {}
        }
    }
    let config = Config::new(&setup.spec, setup.keys[1].clone(), TIMING).expect("member");
    let mut restarted = Replica::new(config, genesis, durable, [], setup.now);
    let again: Vec<Message> = restarted
        .handle(Input::Tick { now_ms: setup.now }, &NoEntries)
        .into_iter()
        .filter_map(|o| match o {
            Output::Broadcast(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(again, [sent.expect("a prepare was sent")]);
    let outputs = message(&mut restarted, setup.pre_prepare(0, &other));
    assert_eq!(
        outputs,
        [
            "dropped Conflicting",
            "persist view-change v1",
            "broadcast view-change v1 prepared 0"
        ]
    );
}

/// §6.1 again, for a whole cluster stopped at once: nobody's words may have left. A
/// primary restarted with its block persisted sends the same PRE-PREPARE again once it
/// has accepted the block again, and a backup restarted prepared the same COMMIT, each
/// until the slot is decided; with only what the four restarted members say, they
/// commit the block in the same view. Without them it waits for a view change: two
/// COMMITs of the three needed, and a member that never saw the block.
#[test]
fn a_cluster_restarted_whole_says_again_what_it_had_persisted() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let mut durables: Vec<Durable> = (0..4)
        .map(|_| Durable::genesis(setup.spec.genesis_block().hash()))
        .collect();
    let mut members: Vec<Replica> = (0..4).map(|m| setup.replica(m)).collect();
    let broadcasts = |outputs: Vec<Output>| -> Vec<Message> {
        outputs
            .into_iter()
            .filter_map(|o| match o {
                Output::Broadcast(m) => Some(m),
                _ => None,
            })
            .collect()
    };
    let mut persist_and_send = |member: usize, outputs: Vec<Output>| -> Vec<Message> {
        for output in &outputs {
            if let Output::Persist(record) = output {
                durables[member].apply(record);
            }
        }
        broadcasts(outputs)
    };
    // The primary mines and proposes; members 1 and 2 accept and prepare; member 1
    // hears member 2's prepare and is prepared. Nothing else arrives: all four stop.
    let entry = testing::entries(5, 1, 32).remove(0);
    let Some(Output::Mine(template)) = submit(&mut members[0], entry).pop() else {
        panic!("an idle primary cuts at once")
    };
    let outputs = members[0].handle(Input::Mined(mined(&template)), &NoEntries);
    let pre_prepare = persist_and_send(0, outputs).pop().expect("a pre-prepare");
    let mut prepares = Vec::new();
    for member in [1, 2] {
        let outputs = members[member].handle(Input::Message(pre_prepare.clone()), &NoEntries);
        prepares.extend(persist_and_send(member, outputs));
    }
    let outputs = members[1].handle(Input::Message(prepares[1].clone()), &NoEntries);
    let commit = persist_and_send(1, outputs).pop().expect("a commit");
    assert!(matches!(commit.payload, Payload::Commit { .. }));

    let mut members: Vec<Replica> = (0..4)
        .map(|m| {
            let config = Config::new(&setup.spec, setup.keys[m].clone(), TIMING).expect("member");
            Replica::new(config, genesis.clone(), durables[m].clone(), [], setup.now)
        })
        .collect();
    let mut said: Vec<Vec<Message>> = members
        .iter_mut()
        .map(|replica| broadcasts(replica.handle(Input::Tick { now_ms: setup.now }, &NoEntries)))
        .collect();
    assert_eq!(said[0], std::slice::from_ref(&pre_prepare));
    assert_eq!(said[1], [commit.clone(), prepares[0].clone()]);
    assert_eq!(said[2], std::slice::from_ref(&prepares[1]));
    assert!(said[3].is_empty());
    // Resent at the next retransmit, until decided.
    let later = setup.now + TIMING.retransmit_ms;
    let again = broadcasts(members[1].handle(Input::Tick { now_ms: later }, &NoEntries));
    assert_eq!(again, [commit, prepares[0].clone()]);

    // Only what the restarted members say, delivered to all in rounds: the block
    // commits in view 0 everywhere.
    let mut inbox: Vec<Message> = said.drain(..).flatten().collect();
    for _ in 0..4 {
        let mut next = Vec::new();
        for message in &inbox {
            for (member, replica) in members.iter_mut().enumerate() {
                if usize::from(message.from) != member {
                    let outputs = replica.handle(Input::Message(message.clone()), &NoEntries);
                    next.extend(broadcasts(outputs));
                }
            }
        }
        inbox = next;
    }
    for replica in &members {
        assert_eq!((replica.height(), replica.view()), (1, 0));
    }

    // A primary whose rules now refuse its own block (changed while it was down)
    // does not propose it again.
    let refusing = testing::BlockRules {
        most: 0,
        blockless: b"",
    };
    let config = Config::new(&setup.spec, setup.keys[0].clone(), TIMING)
        .expect("member")
        .with_policy(Arc::new(refusing));
    let mut stricter = Replica::new(config, genesis, durables[0].clone(), [], setup.now);
    for now_ms in [setup.now, later] {
        let outputs = stricter.handle(Input::Tick { now_ms }, &NoEntries);
        assert!(broadcasts(outputs).is_empty());
    }
}

/// §5.3 (state transfer): an idle cluster sends nothing that shows a restarted
/// replica it is behind, so its first lagging check asks a peer, and it asks again
/// every fourth quiet check; a fetch that brought a block goes on at once. While it
/// applies fetched blocks its own entries wait without starting a view change: the
/// others are making progress, and a view change it started alone would strand it
/// in a view nobody else is in.
#[test]
fn catch_up_needs_no_traffic_and_holds_the_view_change_timer() {
    let setup = Setup::new(4);
    let mut backup = setup.replica(1);
    let mut now = setup.now;
    let mut check = |replica: &mut Replica| {
        now += TIMING.retransmit_ms;
        feed(replica, Input::Tick { now_ms: now })
    };
    let probe = "fetch committed after 0 (entered view 0)";
    assert_eq!(check(&mut backup), [probe]);
    for _ in 0..3 {
        assert!(check(&mut backup).is_empty());
    }
    assert_eq!(check(&mut backup), [probe]);

    // A peer answers with the chain it committed while this replica was away.
    let genesis = setup.genesis();
    let first = setup.block(&genesis.header, &genesis.log, 1);
    let second = setup.block(&first.header, &after(&genesis, &first).log, 2);
    let committed = |block: &Arc<Block>| Input::Committed {
        block: block.clone(),
        certificate: testing::certify(&setup.keys[..3], block),
    };
    let arrived = setup.now + 5 * TIMING.retransmit_ms;
    assert_eq!(client_entry(&mut backup), ["forward 0"]);
    let timeout = TIMING.view_change_timeout_ms;
    let no_view_change = |outputs: Vec<String>| {
        assert!(
            !outputs.iter().any(|o| o.contains("view-change")),
            "{outputs:?}"
        );
    };
    no_view_change(feed(
        &mut backup,
        Input::Tick {
            now_ms: arrived + timeout - 1,
        },
    ));
    assert_eq!(feed(&mut backup, committed(&first)), ["apply h1"]);
    // The entry has now waited a whole timeout, but a block just came by catch-up.
    no_view_change(feed(
        &mut backup,
        Input::Tick {
            now_ms: arrived + timeout,
        },
    ));
    assert_eq!(
        feed(&mut backup, committed(&second)),
        ["apply h2", "broadcast checkpoint h2"]
    );
    no_view_change(feed(
        &mut backup,
        Input::Tick {
            now_ms: arrived + 2 * timeout - 1,
        },
    ));
    // The next lagging check fetches again at once, as the last one brought blocks;
    // the last block fetched is a timeout old, so the timer is its own again.
    let outputs = feed(
        &mut backup,
        Input::Tick {
            now_ms: arrived + TIMING.retransmit_ms,
        },
    );
    for expected in [
        "fetch committed after 2 (entered view 0)",
        "persist view-change v1",
    ] {
        assert!(outputs.contains(&expected.to_owned()), "{outputs:?}");
    }
}

/// A catch-up answer that brought a whole batch is followed by the next request at
/// once: waiting for the next lagging check would pace catch-up at a batch per
/// check. One that brought less (the peer's tip) waits for the check.
#[test]
fn a_whole_catch_up_batch_asks_for_the_next_at_once() {
    let setup = Setup::new(4);
    let mut backup = setup.replica_with(1, |config| config.catch_up_batch = 2);
    let probe = "fetch committed after 0 (entered view 0)";
    let now = setup.now + TIMING.retransmit_ms;
    assert_eq!(feed(&mut backup, Input::Tick { now_ms: now }), [probe]);
    let genesis = setup.genesis();
    let first = setup.block(&genesis.header, &genesis.log, 1);
    let after_first = after(&genesis, &first);
    let second = setup.block(&first.header, &after_first.log, 2);
    let third = setup.block(&second.header, &after(&after_first, &second).log, 3);
    let committed = |block: &Arc<Block>| Input::Committed {
        block: block.clone(),
        certificate: testing::certify(&setup.keys[..3], block),
    };
    assert_eq!(feed(&mut backup, committed(&first)), ["apply h1"]);
    assert_eq!(
        feed(&mut backup, committed(&second)),
        [
            "apply h2",
            "broadcast checkpoint h2",
            "fetch committed after 2 (entered view 0)"
        ]
    );
    assert_eq!(feed(&mut backup, committed(&third)), ["apply h3"]);
}

/// Refusals are counted by reason for metrics.
#[test]
fn drop_reasons_are_counted() {
    let setup = Setup::new(4);
    let mut backup = setup.replica(1);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);
    message(&mut backup, setup.pre_prepare(2, &block));
    message(&mut backup, setup.pre_prepare(2, &block));
    assert_eq!(backup.drops().get(&DropReason::WrongView), Some(&2));
}
