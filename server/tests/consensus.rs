//! The PBFT replica step by step: each test feeds inputs and asserts the exact
//! outputs, in order. Section numbers cite Castro & Liskov, ACM TOCS 20(4), 2002.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use ledger::chain::merkle::leaf_hash;
use ledger::chain::{Block, ChainError, ChainSpec, CompactRange, Entry, EntryIndex, Hash, Header};
use ledger::consensus::{
    Config, DropReason, Durable, Input, MemberIndex, Message, Output, Payload, Record, Replica,
    Timing, Tip,
};
use ledger::testing;

const TIMING: Timing = Timing {
    max_block_delay_ms: 20,
    view_change_timeout_ms: 1_000,
    retransmit_ms: 100_000,
};

struct NoEntries;

impl EntryIndex for NoEntries {
    fn contains(&self, _: &Hash) -> Result<bool, ChainError> {
        Ok(false)
    }
}

struct Setup {
    keys: Vec<SigningKey>,
    spec: ChainSpec,
    now: u64,
}

impl Setup {
    fn new(n: u8) -> Setup {
        let keys: Vec<SigningKey> = (1..=n).map(testing::key).collect();
        let mut spec = testing::spec(&keys, 2);
        spec.params.checkpoint_interval = 2;
        let now = spec.timestamp_ms + 1_000;
        Setup { keys, spec, now }
    }

    fn genesis(&self) -> Tip {
        Tip {
            header: self.spec.genesis_block().header,
            log: CompactRange::new(),
        }
    }

    fn replica(&self, member: usize) -> Replica {
        let config = Config::new(&self.spec, self.keys[member].clone(), TIMING).expect("member");
        let durable = Durable::genesis(self.spec.genesis_block().hash());
        Replica::new(config, self.genesis(), durable, [], self.now)
    }

    fn sign(&self, from: usize, payload: Payload) -> Message {
        Message::sign(
            &self.spec.chain_hash(),
            from as MemberIndex,
            &self.keys[from],
            payload,
        )
    }

    /// A valid block after `parent` with `count` entries tagged `tag`.
    fn block(&self, parent: &Header, log: &CompactRange, tag: u64) -> Arc<Block> {
        let entries = testing::entries(tag, 2, 32);
        Arc::new(testing::next_block(
            parent,
            log,
            entries,
            self.spec.difficulty,
        ))
    }

    fn pre_prepare(&self, view: u64, block: &Arc<Block>) -> Message {
        let primary = (view % self.keys.len() as u64) as usize;
        self.sign(
            primary,
            Payload::PrePrepare {
                view,
                block: block.clone(),
            },
        )
    }
}

fn feed(replica: &mut Replica, input: Input) -> Vec<String> {
    replica
        .handle(input, &NoEntries)
        .iter()
        .map(describe)
        .collect()
}

fn message(replica: &mut Replica, message: Message) -> Vec<String> {
    feed(replica, Input::Message(message))
}

/// One output as a short line: enough to assert the exact sequence.
fn describe(output: &Output) -> String {
    let message = |m: &Message| match &m.payload {
        Payload::PrePrepare { view, block } => {
            format!("pre-prepare v{view} h{}", block.header.height)
        }
        Payload::Prepare { view, height, .. } => format!("prepare v{view} h{height}"),
        Payload::Commit { view, height, .. } => format!("commit v{view} h{height}"),
        Payload::Checkpoint { height, .. } => format!("checkpoint h{height}"),
        Payload::ViewChange(change) => format!(
            "view-change v{} prepared {}",
            change.new_view,
            change.prepared.len()
        ),
        Payload::NewView(new_view) => format!(
            "new-view v{} proposals {}",
            new_view.view,
            new_view.proposals.len()
        ),
    };
    match output {
        Output::Send { to, message: m } => format!("send {to} {}", message(m)),
        Output::Broadcast(m) => format!("broadcast {}", message(m)),
        Output::Persist(record) => match record {
            Record::ViewChange { view } => format!("persist view-change v{view}"),
            Record::NewView(m) => format!("persist {}", message(m)),
            Record::Accepted { view, block, .. } => {
                format!("persist accepted v{view} h{}", block.header.height)
            }
            Record::Prepared(certificate) => format!(
                "persist prepared v{} h{}",
                certificate.view, certificate.header.height
            ),
            Record::Stable(certificate) => format!("persist stable h{}", certificate.height),
        },
        Output::Apply { block, .. } => format!("apply h{}", block.header.height),
        Output::Mine(block) => format!("mine h{}", block.header.height),
        Output::CancelMining => "cancel mining".into(),
        Output::Forward { to, .. } => format!("forward {to}"),
        Output::FetchBlock { height, .. } => format!("fetch block h{height}"),
        Output::FetchCommitted {
            after,
            entered_view,
        } => format!("fetch committed after {after} (entered view {entered_view})"),
        Output::Dropped { reason, .. } => format!("dropped {reason:?}"),
    }
}

/// A client's entry handed to `replica`.
fn client_entry(replica: &mut Replica) -> Vec<String> {
    let entry = testing::entries(9, 1, 32).remove(0);
    feed(
        replica,
        Input::Entry {
            entry,
            forwarded: false,
        },
    )
}

fn vote(setup: &Setup, from: usize, commit: bool, view: u64, block: &Block) -> Message {
    let (height, hash) = (block.header.height, block.hash());
    setup.sign(
        from,
        if commit {
            Payload::Commit { view, height, hash }
        } else {
            Payload::Prepare { view, height, hash }
        },
    )
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
    let mut forged = setup.pre_prepare(0, &block);
    forged.signature[0] ^= 1;
    assert_eq!(message(&mut backup, forged), ["dropped BadSignature"]);
    let mut stranger = vote(&setup, 2, false, 0, &block);
    stranger.from = 9;
    assert_eq!(message(&mut backup, stranger), ["dropped NotMember"]);
    // More prepared certificates than a window holds are refused before any
    // signature is checked.
    let oversized = ledger::consensus::ViewChange {
        new_view: 1,
        checkpoint: other_checkpoint(&setup),
        prepared: (1..=5)
            .map(|height| ledger::consensus::PreparedCertificate {
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

/// A policy (the plugins) for the tests: one more bit of difficulty than the parent,
/// and no entry whose data starts with "forbidden".
#[derive(Debug)]
struct StricterEachBlock;

impl ledger::chain::Policy for StricterEachBlock {
    fn difficulty_window(&self) -> usize {
        1
    }

    fn required_difficulty(&self, recent: &[Header]) -> Result<Option<u32>, String> {
        Ok(recent.last().map(|parent| parent.difficulty + 1))
    }

    fn check_block(&self, block: &Block) -> Result<(), String> {
        match block
            .entries
            .iter()
            .any(|e| e.data.starts_with(b"forbidden"))
        {
            true => Err("forbidden entry".into()),
            false => Ok(()),
        }
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
    let outputs = primary.handle(
        Input::Entry {
            entry: testing::entries(3, 1, 32).remove(0),
            forwarded: false,
        },
        &NoEntries,
    );
    let Some(Output::Mine(template)) = outputs.last() else {
        panic!("expected a template: {outputs:?}");
    };
    assert_eq!(template.header.difficulty, required);
}

/// The chaining rule: a block at h + 1 is prepared only on top of the block prepared
/// at h, so it waits; once h is prepared it is accepted at once.
#[test]
fn chaining_rule_waits_for_the_parent_to_be_prepared() {
    let setup = Setup::new(4);
    let mut backup = setup.replica(1);
    let genesis = setup.genesis();
    let first = setup.block(&genesis.header, &genesis.log, 1);
    let mut log = genesis.log.clone();
    for entry in &first.entries {
        log.append(
            ledger::chain::merkle::leaf_hash(entry.id().as_bytes()),
            |_, _, _| {},
        );
    }
    let second = setup.block(&first.header, &log, 2);

    assert_eq!(
        message(&mut backup, setup.pre_prepare(0, &first)),
        ["persist accepted v0 h1", "broadcast prepare v0 h1"]
    );
    // Height 2 arrives before height 1 is prepared: nothing yet.
    assert!(message(&mut backup, setup.pre_prepare(0, &second)).is_empty());
    let outputs = message(&mut backup, vote(&setup, 2, false, 0, &first));
    assert_eq!(
        outputs,
        [
            "persist prepared v0 h1",
            "broadcast commit v0 h1",
            "persist accepted v0 h2",
            "broadcast prepare v0 h2"
        ]
    );
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

/// Batching is the primary's choice (C&L §5.1.4 batches while requests are in
/// flight): with nothing in flight it cuts a block at once; while a block is in
/// flight, entries gather until `max_block_delay`.
#[test]
fn the_primary_cuts_at_once_when_idle_and_batches_while_busy() {
    let setup = Setup::new(4);
    let mut primary = setup.replica(0);
    let mut entries = testing::entries(5, 2, 32).into_iter();
    let mut submit = |replica: &mut Replica| {
        let entry = entries.next().expect("two entries");
        replica.handle(
            Input::Entry {
                entry,
                forwarded: false,
            },
            &NoEntries,
        )
    };
    let mut outputs = submit(&mut primary);
    assert_eq!(
        outputs.iter().map(describe).collect::<Vec<_>>(),
        ["mine h1"]
    );
    let Some(Output::Mine(template)) = outputs.pop() else {
        unreachable!()
    };
    assert_eq!(template.entries.len(), 1);
    assert!(
        submit(&mut primary).is_empty(),
        "one block is mined at a time"
    );

    let mut mined = Block::clone(&template);
    while !mined.header.meets_difficulty() {
        mined.header.nonce += 1;
    }
    assert_eq!(
        feed(&mut primary, Input::Mined(Arc::new(mined))),
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
}

/// §5.2: what a replica lacks is sent again. One that still asks for a view this
/// replica has entered gets its NEW-VIEW; one that asks for a view this replica
/// left unentered gets this replica's VIEW-CHANGE for it, so a replica that timed
/// out ahead never leaves the others short of a quorum. Answers need a valid
/// signature and come at most once per retransmit interval.
#[test]
fn members_stuck_in_an_older_view_change_get_what_they_lack() {
    let setup = Setup::new(4);
    let change = |from: usize, view: u64| empty_view_change(&setup, from, view);

    // Member 1, primary of view 1, enters it on the view changes of 2 and 3.
    let mut primary = setup.replica(1);
    assert!(message(&mut primary, change(2, 1)).is_empty());
    let outputs = message(&mut primary, change(3, 1));
    assert_eq!(outputs[0], "persist view-change v1");
    assert!(primary.is_active());
    // Member 3 missed the NEW-VIEW and resends its VIEW-CHANGE.
    assert_eq!(
        message(&mut primary, change(3, 1)),
        ["send 3 new-view v1 proposals 0", "dropped Stale"]
    );
    assert_eq!(message(&mut primary, change(3, 1)), ["dropped Stale"]);

    // Member 2 reaches a quorum for view 1, waits in vain, and moves on to view 2.
    let mut ahead = setup.replica(2);
    message(&mut ahead, change(1, 1));
    message(&mut ahead, change(3, 1));
    // The timeout has doubled once (§4.5.2).
    let later = setup.now + 2 * TIMING.view_change_timeout_ms;
    let outputs = feed(&mut ahead, Input::Tick { now_ms: later });
    assert_eq!(
        outputs,
        [
            "persist view-change v2",
            "broadcast view-change v2 prepared 0"
        ]
    );
    // A forgery in member 3's name gets nothing; member 3's own request gets member
    // 2's VIEW-CHANGE for view 1, which member 1 may never have received.
    let mut forged = change(3, 1);
    forged.signature[0] ^= 1;
    assert_eq!(message(&mut ahead, forged), ["dropped Stale"]);
    assert_eq!(
        message(&mut ahead, change(3, 1)),
        ["send 3 view-change v1 prepared 0", "dropped Stale"]
    );
}

/// A VIEW-CHANGE from `from` for `view` with nothing prepared.
fn empty_view_change(setup: &Setup, from: usize, view: u64) -> Message {
    setup.sign(
        from,
        Payload::ViewChange(ledger::consensus::ViewChange {
            new_view: view,
            checkpoint: other_checkpoint(setup),
            prepared: Vec::new(),
        }),
    )
}

fn other_checkpoint(setup: &Setup) -> ledger::consensus::CheckpointCertificate {
    ledger::consensus::CheckpointCertificate {
        height: 0,
        hash: setup.spec.genesis_block().hash(),
        votes: Vec::new(),
    }
}

/// Members 1, 2 and 3 prepare `block` in view 0, each with an entry pending, then
/// time out; returns them and the NEW-VIEW member 1 sends for view 1.
fn prepared_in_view_0_then_new_view(setup: &Setup, block: &Arc<Block>) -> (Vec<Replica>, Message) {
    let mut replicas: Vec<Replica> = (1..4).map(|m| setup.replica(m)).collect();
    let mut changes = Vec::new();
    for replica in &mut replicas {
        let mut all = replica.handle(Input::Message(setup.pre_prepare(0, block)), &NoEntries);
        for from in 1..4usize {
            if from != usize::from(replica.me()) {
                all.extend(replica.handle(
                    Input::Message(vote(setup, from, false, 0, block)),
                    &NoEntries,
                ));
            }
        }
        let later = setup.now + 10 * TIMING.view_change_timeout_ms;
        let entry = testing::entries(u64::from(replica.me()), 1, 32).remove(0);
        replica.handle(
            Input::Entry {
                entry,
                forwarded: false,
            },
            &NoEntries,
        );
        for output in replica.handle(Input::Tick { now_ms: later }, &NoEntries) {
            if let Output::Broadcast(m) = output {
                if matches!(m.payload, Payload::ViewChange(_)) {
                    changes.push(m);
                }
            }
        }
    }
    assert_eq!(changes.len(), 3);
    let primary = &mut replicas[0]; // member 1, primary of view 1
    let mut new_view = None;
    for change in changes.iter().filter(|m| m.from != 1) {
        for output in primary.handle(Input::Message(change.clone()), &NoEntries) {
            if let Output::Broadcast(m) = output {
                if matches!(m.payload, Payload::NewView(_)) {
                    new_view = Some(m);
                }
            }
        }
    }
    let new_view = new_view.expect("a quorum of view changes makes the primary send NEW-VIEW");
    assert!(primary.is_active());
    assert_eq!(primary.view(), 1);
    (replicas, new_view)
}

/// §4.4: the new primary, holding a quorum of view changes, sends NEW-VIEW re-proposing
/// the prepared block; a backup recomputes it, accepts it and prepares again in the
/// new view; a NEW-VIEW whose proposals do not follow is refused and the backup moves
/// on to the next view.
#[test]
fn new_view_is_computed_sent_and_checked() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);
    let (mut replicas, new_view) = prepared_in_view_0_then_new_view(&setup, &block);
    let backups = &mut replicas[1..];

    let backup = &mut backups[0]; // member 2
    let outputs = message(backup, new_view.clone());
    assert_eq!(
        outputs,
        [
            "persist new-view v1 proposals 1",
            "forward 1",
            "persist accepted v1 h1",
            "broadcast prepare v1 h1"
        ]
    );

    let Payload::NewView(mut forged) = new_view.payload.clone() else {
        unreachable!()
    };
    forged.proposals.clear();
    let forged = setup.sign(1, Payload::NewView(forged));
    let backup = &mut backups[1]; // member 3
    let outputs = message(backup, forged);
    assert_eq!(
        outputs,
        [
            "dropped InvalidNewView",
            "persist view-change v2",
            "broadcast view-change v2 prepared 1"
        ]
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
        let mut log = parent.log.clone();
        for entry in &block.entries {
            log.append(
                ledger::chain::merkle::leaf_hash(entry.id().as_bytes()),
                |_, _, _| {},
            );
        }
        parent = Tip {
            header: block.header,
            log,
        };
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

/// §4.2 (a request executes once): a block validated in the same step that applied
/// its parent must not repeat the parent's entries, although the driver's index
/// learns of the parent only after the step.
#[test]
fn a_block_repeating_an_entry_of_a_parent_applied_in_the_same_step_is_refused() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let first = setup.block(&genesis.header, &genesis.log, 1);
    let mut log = genesis.log.clone();
    for entry in &first.entries {
        log.append(leaf_hash(entry.id().as_bytes()), |_, _, _| {});
    }
    let repeat = vec![first.entries[0].clone()];
    let second = Arc::new(testing::next_block(
        &first.header,
        &log,
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

/// Every message kind survives its canonical encoding; damaged bytes are refused.
#[test]
fn messages_round_trip_and_refuse_damage() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);
    let messages = [
        setup.pre_prepare(0, &block),
        vote(&setup, 1, false, 0, &block),
        vote(&setup, 1, true, 0, &block),
        setup.sign(
            1,
            Payload::Checkpoint {
                height: 2,
                hash: block.hash(),
            },
        ),
        setup.sign(
            1,
            Payload::ViewChange(ledger::consensus::ViewChange {
                new_view: 1,
                checkpoint: other_checkpoint(&setup),
                prepared: Vec::new(),
            }),
        ),
    ];
    for original in messages {
        let bytes = original.encode();
        assert_eq!(Message::decode(&bytes).expect("decodes"), original);
        assert!(Message::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Message::decode(&longer).is_err());
    }
    assert!(Message::decode(&[1, 0, 0, 99]).is_err());
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
    let mut log = genesis.log.clone();
    for entry in &first.entries {
        log.append(leaf_hash(entry.id().as_bytes()), |_, _, _| {});
    }
    let second = setup.block(&first.header, &log, 2);
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

/// A replica that entered a later view hands its NEW-VIEW to a peer whose catch-up
/// request shows it never entered that view; the peer, left behind in view 0 by an
/// idle cluster, joins view 1 with it.
#[test]
fn a_peer_behind_in_views_gets_the_new_view_with_its_catch_up() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);
    let (replicas, new_view) = prepared_in_view_0_then_new_view(&setup, &block);
    let primary = &replicas[0];
    assert_eq!(primary.new_view_since(0), Some(&new_view));
    assert_eq!(primary.new_view_since(1), None);
    let mut behind = setup.replica(0);
    let outputs = message(&mut behind, new_view);
    assert_eq!(outputs[0], "persist new-view v1 proposals 1");
    assert!(behind.is_active());
    assert_eq!(behind.view(), 1);
    assert_eq!(behind.new_view_since(0).map(|m| m.from), Some(1));
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
