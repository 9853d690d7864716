//! What the replica's step-by-step tests share: a chain of n members, replicas at its
//! genesis, inputs fed one at a time, and outputs described as short lines so a test
//! asserts the exact sequence. Section numbers cite Castro & Liskov, ACM TOCS 20(4),
//! 2002.

use std::sync::Arc;

use ed25519_dalek::SigningKey;

use crate::chain::merkle::leaf_hash;
use crate::chain::{Block, ChainError, ChainSpec, CompactRange, Entry, EntryIndex, Hash, Header};
use crate::consensus::{
    Config, Durable, Input, MemberIndex, Message, Output, Payload, Record, Replica, Timing, Tip,
};
use crate::testing;

pub(super) const TIMING: Timing = Timing {
    max_block_delay_ms: 20,
    view_change_timeout_ms: 1_000,
    retransmit_ms: 100_000,
};

pub(super) struct NoEntries;

impl EntryIndex for NoEntries {
    fn contains(&self, _: &Hash) -> Result<bool, ChainError> {
        Ok(false)
    }
}

pub(super) struct Setup {
    pub(super) keys: Vec<SigningKey>,
    pub(super) spec: ChainSpec,
    pub(super) now: u64,
}

impl Setup {
    pub(super) fn new(n: u8) -> Setup {
        let keys: Vec<SigningKey> = (1..=n).map(testing::key).collect();
        let mut spec = testing::spec(&keys, 2);
        spec.params.checkpoint_interval = 2;
        let now = spec.timestamp_ms + 1_000;
        Setup { keys, spec, now }
    }

    pub(super) fn genesis(&self) -> Tip {
        Tip {
            header: self.spec.genesis_block().header,
            log: CompactRange::new(),
        }
    }

    pub(super) fn replica(&self, member: usize) -> Replica {
        self.replica_with(member, |_| {})
    }

    /// [`Setup::replica`] with its configuration changed by `change`.
    pub(super) fn replica_with(&self, member: usize, change: impl FnOnce(&mut Config)) -> Replica {
        let mut config =
            Config::new(&self.spec, self.keys[member].clone(), TIMING).expect("member");
        change(&mut config);
        let durable = Durable::genesis(self.spec.genesis_block().hash());
        Replica::new(config, self.genesis(), durable, [], self.now)
    }

    pub(super) fn sign(&self, from: usize, payload: Payload) -> Message {
        Message::sign(
            &self.spec.chain_hash(),
            from as MemberIndex,
            &self.keys[from],
            payload,
        )
    }

    /// A valid block after `parent` with `count` entries tagged `tag`.
    pub(super) fn block(&self, parent: &Header, log: &CompactRange, tag: u64) -> Arc<Block> {
        let entries = testing::entries(tag, 2, 32);
        Arc::new(testing::next_block(
            parent,
            log,
            entries,
            self.spec.difficulty,
        ))
    }

    pub(super) fn pre_prepare(&self, view: u64, block: &Arc<Block>) -> Message {
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

/// The tip after `block` is applied on `parent`.
pub(super) fn after(parent: &Tip, block: &Block) -> Tip {
    let mut log = parent.log.clone();
    for entry in &block.entries {
        log.append(leaf_hash(entry.id().as_bytes()), |_, _, _| {});
    }
    Tip {
        header: block.header,
        log,
    }
}

pub(super) fn feed(replica: &mut Replica, input: Input) -> Vec<String> {
    replica
        .handle(input, &NoEntries)
        .iter()
        .map(describe)
        .collect()
}

pub(super) fn message(replica: &mut Replica, message: Message) -> Vec<String> {
    feed(replica, Input::Message(message))
}

/// One output as a short line: enough to assert the exact sequence.
pub(super) fn describe(output: &Output) -> String {
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
            Record::Epoch { epoch, height, .. } => format!("persist epoch {epoch} above h{height}"),
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
        Output::Unpooled { .. } => "unpooled".into(),
        Output::Dropped { reason, .. } => format!("dropped {reason:?}"),
    }
}

/// A client's entry handed to `replica`.
pub(super) fn client_entry(replica: &mut Replica) -> Vec<String> {
    let entry = testing::entries(9, 1, 32).remove(0);
    submit(replica, entry).iter().map(describe).collect()
}

/// `entry`, from a client of `replica`, handed to it: its outputs.
pub(super) fn submit(replica: &mut Replica, entry: Entry) -> Vec<Output> {
    let input = Input::Entry {
        entry,
        forwarded: false,
    };
    replica.handle(input, &NoEntries)
}

/// `template` with a nonce that meets its difficulty, as the miner hands it back.
pub(super) fn mined(template: &Block) -> Arc<Block> {
    let mut block = template.clone();
    testing::mine(&mut block.header);
    Arc::new(block)
}

/// `message` with its signature broken.
pub(super) fn forged(mut message: Message) -> Message {
    message.signature[0] ^= 1;
    message
}

pub(super) fn vote(setup: &Setup, from: usize, commit: bool, view: u64, block: &Block) -> Message {
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

/// A VIEW-CHANGE from `from` for `view` with nothing prepared.
pub(super) fn empty_view_change(setup: &Setup, from: usize, view: u64) -> Message {
    setup.sign(
        from,
        Payload::ViewChange(crate::consensus::ViewChange {
            new_view: view,
            checkpoint: other_checkpoint(setup),
            prepared: Vec::new(),
        }),
    )
}

pub(super) fn other_checkpoint(setup: &Setup) -> crate::consensus::CheckpointCertificate {
    crate::consensus::CheckpointCertificate {
        height: 0,
        hash: setup.spec.genesis_block().hash(),
        votes: Vec::new(),
    }
}

/// Members 1, 2 and 3 prepare `block` in view 0, each with an entry pending, then
/// time out; returns them and the NEW-VIEW member 1 sends for view 1.
pub(super) fn prepared_in_view_0_then_new_view(
    setup: &Setup,
    block: &Arc<Block>,
) -> (Vec<Replica>, Message) {
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
        submit(replica, entry);
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

/// The replica tests' block rules (`testing::BlockRules`), as the `two_a_block`
/// example plugin: at most two entries a block, none whose data starts with
/// "blockless".
pub(super) const TWO_A_BLOCK: testing::BlockRules = testing::BlockRules {
    most: 2,
    blockless: b"blockless",
};
