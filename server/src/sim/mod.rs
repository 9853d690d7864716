//! The deterministic simulator: real [`Replica`]s over a hostile virtual network.
//!
//! One seeded RNG decides everything (delays, losses, duplicates, partitions, crashes,
//! client traffic, Byzantine choices), and time is virtual, so a seed replays exactly.
//! The checker runs after every event: safety (no two honest replicas apply different
//! blocks at one height; every applied block carries a valid quorum certificate and
//! links to its parent), boundedness (the consensus state stays below a fixed size),
//! and at the end liveness (after the network heals, every honest replica commits every
//! entry honest replicas were given) and no view-change storm. One seed in three runs
//! a policy with a block rule ([`RULES`]): at most three entries a block, and
//! none of the few "blockless" entries the plan adds, which must cost no view changes.

mod byzantine;
mod checker;
mod rng;
mod scenario;
mod snapshot;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use ed25519_dalek::SigningKey;

pub use byzantine::Behaviour;
#[cfg(feature = "byzantine")]
pub use byzantine::Rogue;
use byzantine::{Adversary, Collusion};
pub use checker::{Report, SnapshotCounts, Violation};
pub use rng::Rng;
pub use scenario::{Cut, Network, Reconfigure, Scenario};

use crate::chain::{
    Block, ChainError, ChainSpec, Change, ChangeProof, CommitCertificate, Entry, EntryIndex, Hash,
    Header, LearnerProgress, Membership, Reconfiguration,
};
use crate::consensus::{
    Config, Durable, Flaws, Input, MemberIndex, Message, Output, Payload, Replica, SignatureMemo,
    Timing, Tip, Verifier,
};
use crate::pow::Template;

/// The committed-entry index of one simulated replica.
struct Ids<'a>(&'a HashSet<Hash>);

impl EntryIndex for Ids<'_> {
    fn contains(&self, id: &Hash) -> Result<bool, ChainError> {
        Ok(self.0.contains(id))
    }
}

/// One simulated process: a replica (none while crashed) and what it persisted.
struct Process {
    /// Its key's position in the genesis file (its identity across epochs).
    member: MemberIndex,
    replica: Option<Replica>,
    durable: Durable,
    /// The blocks held, by height: from 1, or from the snapshot it was restored from.
    chain: BTreeMap<u64, (Arc<Block>, CommitCertificate)>,
    /// The header below a snapshot it was restored from (a real store keeps it).
    base: Option<Header>,
    /// Every entry id of the log, in log order.
    log_ids: Vec<Hash>,
    tip: Tip,
    ids: HashSet<Hash>,
    honest: bool,
    adversary: Option<Adversary>,
    mining_token: u64,
    /// Whether its disk was lost: on restart it joins from a snapshot.
    wiped: bool,
    /// Bumped at each crash, so a restore that finishes after one is dropped.
    lives: u64,
    /// The membership after its tip.
    membership: Membership,
    /// Restored above where its epoch started: the header that epoch starts above,
    /// which the join fetched (a real store keeps it too).
    epoch_base: Option<Header>,
    /// Whether it crashed and has not restarted. Up without a replica, it is a
    /// follower: no vote in the membership after its tip (a newcomer, a learner, a
    /// removed member), it fetches committed blocks and checks their certificates.
    down: bool,
    /// The blocks at the top of `chain` applied without waiting for the disk
    /// (`Store::apply_block_deferred`), and since when: a crash loses them.
    unsynced: (u64, Option<u64>),
    /// When a clock event is due for a block the replica will cut then, as the
    /// node's driver wakes between ticks.
    clock_at: Option<u64>,
}

enum Event {
    Deliver {
        node: usize,
        message: Message,
    },
    Tick {
        node: usize,
    },
    /// The time between ticks, when a block falls due.
    Clock {
        node: usize,
    },
    Mined {
        node: usize,
        token: u64,
        block: Arc<Block>,
    },
    Entry {
        node: usize,
        entry: Entry,
        forwarded: bool,
    },
    Blocks {
        node: usize,
        blocks: Vec<Arc<Block>>,
    },
    Committed {
        node: usize,
        blocks: Vec<(Arc<Block>, CommitCertificate)>,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    /// A join's transfer is over: the node starts from the restored state.
    Restored {
        node: usize,
        life: u64,
        restored: Box<snapshot::Restored>,
    },
    Partition {
        groups: Vec<u8>,
        until_ms: u64,
    },
    /// The admin submits the scenario's next membership change, if it is due.
    Reconfigure,
    /// Committed blocks a follower fetched.
    Followed {
        node: usize,
        life: u64,
        blocks: Vec<(Arc<Block>, CommitCertificate)>,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

const TICK_MS: u64 = 20;
/// How long a block applied stays short of the disk at most (the driver's
/// `SYNC_EVERY`).
const SYNC_MS: u64 = 1_000;
const MAX_EVENTS: u64 = 3_000_000;

/// A simulation of one scenario under one seed.
pub struct Sim {
    scenario: Scenario,
    seed: u64,
    rng: Rng,
    spec: ChainSpec,
    keys: Vec<SigningKey>,
    timing: Timing,
    nodes: Vec<Process>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    now: u64,
    start: u64,
    heal_at: u64,
    partition: Option<(Vec<u8>, u64)>,
    applied: BTreeMap<u64, (Hash, usize)>,
    /// Entries running honest replicas took after healing: all must commit everywhere.
    must_commit: Vec<Hash>,
    view_at_heal: Option<u64>,
    collusion: Collusion,
    memo: SignatureMemo,
    /// The quorum the genesis replicas count with (the real one unless a flaw
    /// changes it).
    quorum: usize,
    /// Node ids by genesis position.
    node_ids: Vec<Hash>,
    /// The chain's admin (threshold 1), who signs the scenario's changes.
    admin: SigningKey,
    /// The membership after the highest block applied anywhere.
    track: Membership,
    /// The verifier of each epoch, by the first height it orders, with the quorum
    /// the replicas count with.
    epochs: BTreeMap<u64, Verifier>,
    /// The scenario's changes ordered so far.
    changes_ordered: usize,
    events: u64,
    violation: Option<Violation>,
    /// Whether a member lost its disk in this run.
    disk_lost: bool,
    /// Each change ordered so far with its receipt, as the first honest replica to
    /// apply it could prove it: what members put in manifests and show joiners.
    change_proofs: Vec<ChangeProof>,
    snapshots: SnapshotCounts,
    /// Blocks applied without waiting for the disk that crashes took back.
    lost_applies: u64,
    /// Print each event to stderr (`LEDGER_SIM_TRACE`), to follow a replayed seed.
    trace: bool,
}

impl Sim {
    /// Sets up `scenario` under `seed`.
    pub fn new(scenario: Scenario, seed: u64) -> Sim {
        let rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
        let keys: Vec<SigningKey> = (0..scenario.members + scenario.newcomers)
            .map(|i| {
                SigningKey::from_bytes(
                    &Hash::digest(&[b"sim-key".as_slice(), &[i as u8]].concat()).0,
                )
            })
            .collect();
        let admin = SigningKey::from_bytes(&Hash::digest(b"sim-admin").0);
        // Only a scenario that changes its membership has an admin, so the chains
        // (and so the runs) of the others stay what they were.
        let members = &keys[..scenario.members];
        let mut spec = if scenario.changes.is_empty() {
            crate::testing::spec_checkpointing(members, 4, 4)
        } else {
            crate::testing::spec_with_admins(members, 4, 4, std::slice::from_ref(&admin), 1)
        };
        spec.params.max_block_entries = 8;
        // The delay is not a whole number of ticks, so that cuts between ticks
        // (`Event::Clock`) happen.
        let timing = Timing {
            max_block_delay_ms: 15,
            view_change_timeout_ms: 600,
            retransmit_ms: 150,
        };
        let genesis = spec.genesis_block();
        let start = spec.timestamp_ms + 1_000;
        let memo = SignatureMemo::default();
        let byzantine: HashMap<MemberIndex, Behaviour> =
            scenario.byzantine.iter().copied().collect();
        let mut nodes = Vec::new();
        for (member, key) in keys.iter().enumerate() {
            let member = member as MemberIndex;
            let behaviour = byzantine.get(&member).copied();
            let copies = if behaviour == Some(Behaviour::Twin) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let newcomer = usize::from(member) >= scenario.members;
                let tip = Tip {
                    header: genesis.header,
                    log: crate::chain::CompactRange::new(),
                };
                let durable = Durable::genesis(genesis.hash());
                let silent = behaviour == Some(Behaviour::Silent);
                let replica = (!silent && !newcomer).then(|| {
                    let config = replica_config(&spec, key, timing, scenario.flaws, &memo, seed);
                    Replica::new(config, tip.clone(), durable.clone(), [], start)
                });
                nodes.push(Process {
                    member,
                    replica,
                    durable,
                    chain: BTreeMap::new(),
                    base: None,
                    log_ids: Vec::new(),
                    tip,
                    ids: HashSet::new(),
                    honest: behaviour.is_none(),
                    adversary: behaviour.map(|b| Adversary::new(b, key.clone())),
                    mining_token: 0,
                    wiped: false,
                    lives: 0,
                    membership: Membership::genesis(&spec),
                    epoch_base: None,
                    down: false,
                    unsynced: (0, None),
                    clock_at: None,
                });
            }
        }
        let heal_at = start + scenario.faulty_ms;
        let genesis_verifier =
            replica_config(&spec, &keys[0], timing, scenario.flaws, &memo, seed).verifier;
        let quorum = genesis_verifier.quorum();
        let track = Membership::genesis(&spec);
        let node_ids = keys
            .iter()
            .map(|key| Hash::digest(key.verifying_key().as_bytes()))
            .collect();
        let mut sim = Sim {
            rng,
            spec,
            keys,
            timing,
            nodes,
            queue: BinaryHeap::new(),
            seq: 0,
            now: start,
            start,
            heal_at,
            partition: None,
            applied: BTreeMap::new(),
            must_commit: Vec::new(),
            view_at_heal: None,
            collusion: Collusion::default(),
            quorum,
            memo,
            node_ids,
            admin,
            track,
            epochs: BTreeMap::from([(1, genesis_verifier)]),
            changes_ordered: 0,
            events: 0,
            violation: None,
            disk_lost: false,
            change_proofs: Vec::new(),
            snapshots: SnapshotCounts::default(),
            lost_applies: 0,
            trace: std::env::var_os("LEDGER_SIM_TRACE").is_some(),
            seed,
            scenario,
        };
        sim.plan();
        sim
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// Schedules ticks, client entries, partitions and crashes for the whole run.
    fn plan(&mut self) {
        for node in 0..self.nodes.len() {
            let offset = self.rng.below(TICK_MS);
            self.schedule(self.start + offset, Event::Tick { node });
        }
        let end = self.heal_at + self.scenario.settle_ms / 2;
        for i in 0..self.scenario.entries {
            let at = self.start + self.rng.below(end - self.start);
            let node = self.rng.below(self.nodes.len() as u64) as usize;
            let mut data = b"sim entry ".to_vec();
            data.extend_from_slice(&(i as u64).to_be_bytes());
            data.extend_from_slice(&self.seed.to_be_bytes());
            let entry = Entry::new(data);
            self.schedule(
                at,
                Event::Entry {
                    node,
                    entry,
                    forwarded: false,
                },
            );
        }
        if self.scenario.network.partitions {
            let mut at = self.start + self.rng.below(500);
            while at < self.heal_at {
                let length = 200 + self.rng.below(1_200);
                let groups: Vec<u8> = (0..self.keys.len())
                    .map(|_| self.rng.below(2) as u8)
                    .collect();
                let until_ms = (at + length).min(self.heal_at);
                self.schedule(at, Event::Partition { groups, until_ms });
                at = until_ms + self.rng.below(800);
            }
        }
        if !self.scenario.changes.is_empty() {
            let at = self.start + 300 + self.rng.below(1_000);
            self.schedule(at, Event::Reconfigure);
        }
        if self.scenario.network.crashes {
            let honest: Vec<usize> = (0..self.nodes.len())
                .filter(|n| self.nodes[*n].honest)
                .collect();
            let mut at = self.start + self.rng.below(400);
            while at < self.heal_at {
                let node = honest[self.rng.below(honest.len() as u64) as usize];
                self.schedule(at, Event::Crash { node });
                let back = (at + 50 + self.rng.below(1_000)).min(self.heal_at);
                self.schedule(back, Event::Restart { node });
                at = back + self.rng.below(600);
            }
        }
        // Only where the seed runs the rules: the other seeds run as they did.
        let blockless = if with_rules(self.seed) { 3 } else { 0 };
        for i in 0..blockless {
            let at = self.start + self.rng.below(end - self.start);
            let node = self.rng.below(self.nodes.len() as u64) as usize;
            let data = [BLOCKLESS, &[i], &self.seed.to_be_bytes()].concat();
            let entry = Entry::new(data);
            let forwarded = false;
            self.schedule(
                at,
                Event::Entry {
                    node,
                    entry,
                    forwarded,
                },
            );
        }
    }

    /// Runs to the end (or the first violation) and reports.
    pub fn run(mut self) -> Report {
        let end = self.heal_at + self.scenario.settle_ms;
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at > end || self.events >= MAX_EVENTS {
                break;
            }
            if self.view_at_heal.is_none() && next.at >= self.heal_at {
                self.view_at_heal = Some(self.max_view());
            }
            self.now = next.at;
            self.events += 1;
            self.step(next.event);
            if self.violation.is_some() {
                break;
            }
            self.check_bounds();
            if self.violation.is_some() {
                break;
            }
        }
        if self.violation.is_none() {
            self.check_liveness();
        }
        if self.violation.is_some() && std::env::var_os("LEDGER_SIM_DEBUG").is_some() {
            for (i, node) in self.nodes.iter().enumerate() {
                match &node.replica {
                    Some(r) => eprintln!(
                        "node {i} member {} honest {}: view {} active {} height {} stable {} {:?} drops {:?}",
                        node.member, node.honest, r.view(), r.is_active(), r.height(),
                        r.stable_checkpoint().height, r.footprint(), r.drops()
                    ),
                    None => eprintln!("node {i}: down"),
                }
                if let Some(replica) = &node.replica {
                    eprint!("{}", replica.describe_log());
                }
            }
        }
        Report {
            scenario: self.scenario.name.clone(),
            seed: self.seed,
            end_ms: self.now - self.start,
            events: self.events,
            height: self
                .honest()
                .map(|n| self.nodes[n].tip.header.height)
                .max()
                .unwrap_or(0),
            view: self.max_view(),
            violation: self.violation,
            snapshots: self.snapshots,
            epoch: self.track.epoch,
            lost_applies: self.lost_applies,
        }
    }

    fn honest(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|n| self.nodes[*n].honest)
    }

    fn max_view(&self) -> u64 {
        self.honest()
            .filter_map(|n| self.nodes[n].replica.as_ref().map(Replica::view))
            .max()
            .unwrap_or(0)
    }

    fn healed(&self) -> bool {
        self.now >= self.heal_at
    }

    fn step(&mut self, event: Event) {
        if self.trace {
            self.trace(&event);
        }
        match event {
            Event::Tick { node } => {
                self.schedule(self.now + TICK_MS, Event::Tick { node });
                if self.nodes[node]
                    .unsynced
                    .1
                    .is_some_and(|since| self.now >= since + SYNC_MS)
                {
                    self.nodes[node].unsynced = (0, None);
                }
                self.follow(node);
                let now_ms = self.now;
                self.input(node, Input::Tick { now_ms });
                let state = &mut self.nodes[node];
                if let (Some(adversary), Some(replica)) = (&mut state.adversary, &state.replica) {
                    // To any member of its epoch.
                    let members = replica.membership().members.len();
                    let replays = adversary.replays(&mut self.rng, members);
                    for (to, message) in replays {
                        self.send(node, to, message);
                    }
                }
            }
            Event::Clock { node } => {
                let now_ms = self.now;
                self.input(node, Input::Clock { now_ms });
            }
            Event::Deliver { node, message } => {
                if let Some(adversary) = &mut self.nodes[node].adversary {
                    adversary.observe(&message);
                }
                self.input(node, Input::Message(message));
            }
            Event::Mined { node, token, block } => {
                // A find of a job cancelled since reaches the replica as well, half
                // the time: the node's miner may have sent it before the cancel.
                if self.nodes[node].mining_token == token || self.rng.below(2) == 0 {
                    self.input(node, Input::Mined(block));
                }
            }
            Event::Entry {
                node,
                entry,
                forwarded,
            } => {
                // Dated as a driver dates it: by the time told at the turn's start.
                let now_ms = self.now;
                self.input(node, Input::Clock { now_ms });
                // A client's entry that an honest replica takes after healing must
                // commit; one handed to a replica still down at that instant (its
                // restart is due at the same time) is lost with the request, as a
                // real client's would be.
                let state = &self.nodes[node];
                let holdable = !entry.data.starts_with(BLOCKLESS);
                if !forwarded
                    && holdable
                    && self.healed()
                    && state.honest
                    && state.replica.is_some()
                {
                    self.must_commit.push(entry.id());
                }
                self.input(node, Input::Entry { entry, forwarded })
            }
            Event::Blocks { node, blocks } => {
                for block in blocks {
                    self.input(node, Input::Block(block));
                }
            }
            Event::Committed { node, blocks } => {
                for (block, certificate) in blocks {
                    self.input(node, Input::Committed { block, certificate });
                }
            }
            Event::Crash { node } => self.crash(node),
            Event::Restart { node } => self.restart(node),
            Event::Restored {
                node,
                life,
                restored,
            } => self.restored(node, life, *restored),
            Event::Partition { groups, until_ms } => self.partition = Some((groups, until_ms)),
            Event::Reconfigure => self.reconfigure(),
            Event::Followed { node, life, blocks } => self.followed(node, life, blocks),
        }
    }

    /// One line per event but ticks and entries: virtual ms since the start, what
    /// happened, block hashes by their first two bytes.
    fn trace(&self, event: &Event) {
        let at = self.now - self.start;
        let short = |hash: &Hash| hex::encode(&hash.as_bytes()[..2]);
        match event {
            Event::Deliver { node, message } => {
                let what = match &message.payload {
                    Payload::PrePrepare { view, block } => {
                        let height = block.header.height;
                        format!("pre-prepare v{view} h{height} {}", short(&block.hash()))
                    }
                    Payload::Prepare { view, height, hash } => {
                        format!("prepare v{view} h{height} {}", short(hash))
                    }
                    Payload::Commit { view, height, hash } => {
                        format!("commit v{view} h{height} {}", short(hash))
                    }
                    Payload::Checkpoint { height, hash } => {
                        format!("checkpoint h{height} {}", short(hash))
                    }
                    Payload::ViewChange(change) => {
                        let prepared: Vec<_> = (change.prepared.iter())
                            .map(|p| {
                                format!(
                                    "h{} v{} {}",
                                    p.header.height,
                                    p.view,
                                    short(&p.header.hash())
                                )
                            })
                            .collect();
                        let stable = change.checkpoint.height;
                        format!(
                            "view-change to v{}, stable {stable}, prepared {prepared:?}",
                            change.new_view
                        )
                    }
                    Payload::NewView(new_view) => format!("new-view v{}", new_view.view),
                };
                eprintln!("{at} {} -> {node}: {what}", message.from);
            }
            Event::Mined { node, block, .. } => {
                let height = block.header.height;
                eprintln!("{at} node {node} mined h{height} {}", short(&block.hash()));
            }
            Event::Blocks { node, blocks } => {
                let heights: Vec<_> = blocks.iter().map(|b| b.header.height).collect();
                eprintln!("{at} node {node} gets block bodies {heights:?}");
            }
            Event::Committed { node, blocks } => {
                let blocks: Vec<_> = (blocks.iter())
                    .map(|(b, _)| format!("h{} {}", b.header.height, short(&b.hash())))
                    .collect();
                eprintln!("{at} node {node} gets committed blocks {blocks:?}");
            }
            Event::Crash { node } => eprintln!("{at} node {node} crashes"),
            Event::Restart { node } => eprintln!("{at} node {node} restarts"),
            Event::Restored { node, .. } => eprintln!("{at} node {node} restored a snapshot"),
            Event::Partition { groups, until_ms } => {
                eprintln!("{at} partition {groups:?} until {until_ms}")
            }
            Event::Followed { node, .. } => eprintln!("{at} node {node} follows"),
            Event::Tick { .. } | Event::Clock { .. } | Event::Entry { .. } | Event::Reconfigure => {
            }
        }
    }

    /// A follower asks a peer for the committed blocks after its tip.
    fn follow(&mut self, node: usize) {
        let state = &self.nodes[node];
        if state.down || state.replica.is_some() || state.wiped || !self.rng.chance(0.15) {
            return;
        }
        let Some(peer) = self.random_peer(node) else {
            return;
        };
        let after = self.nodes[node].tip.header.height;
        let chain = &self.nodes[peer].chain;
        let blocks: Vec<_> = (after + 1..=after + SIM_CATCH_UP_BATCH)
            .map_while(|height| chain.get(&height).cloned())
            .collect();
        if let (false, Some(delay)) = (blocks.is_empty(), self.round_trip(node, peer)) {
            let life = self.nodes[node].lives;
            self.schedule(self.now + delay, Event::Followed { node, life, blocks });
        }
    }

    /// A follower applies the fetched blocks that extend its tip and carry a quorum
    /// of the membership in force at their height, as a node following the chain
    /// does; once the membership makes it a member, it starts a replica.
    fn followed(&mut self, node: usize, life: u64, blocks: Vec<(Arc<Block>, CommitCertificate)>) {
        for (block, certificate) in blocks {
            let state = &self.nodes[node];
            if state.down || state.replica.is_some() || state.lives != life {
                return;
            }
            let height = block.header.height;
            if height != state.tip.header.height + 1
                || block.header.prev_hash != state.tip.header.hash()
            {
                return;
            }
            let mut membership = state.membership.clone();
            membership.advance_to(height);
            let base = self.header_at(node, membership.since - 1);
            let verifier = self.epochs[&1].for_epoch(
                &self.spec.chain_hash(),
                &membership,
                base.height,
                base.hash(),
            );
            if verifier
                .check_commit(&certificate, height, &block.hash())
                .is_err()
            {
                return;
            }
            self.apply(node, block, certificate);
            // A follower applies durably, and with it what was applied before.
            self.nodes[node].unsynced = (0, None);
            if self.violation.is_some() {
                return;
            }
            self.restart(node);
        }
    }

    /// Submits the scenario's next change, signed for the epoch in force, to a
    /// member, unless all are ordered or one is on its way; tries again later until
    /// it is ordered (a member may be down, its pool may lose it with a crash).
    fn reconfigure(&mut self) {
        let Some(next) = self.scenario.changes.get(self.changes_ordered).copied() else {
            return;
        };
        self.schedule(self.now + 1_000, Event::Reconfigure);
        if self.track.pending.is_some() {
            return;
        }
        let key = |node: MemberIndex| self.keys[usize::from(node)].verifying_key();
        let change = match next {
            Reconfigure::Add(node) => Change::AddLearner {
                public_key: key(node),
                p2p_addr: format!("node-{node}:7101"),
                api_addr: None,
            },
            Reconfigure::Promote(node) => Change::Promote {
                public_key: key(node),
            },
            Reconfigure::Remove(node) => Change::Remove {
                public_key: key(node),
            },
        };
        let Ok(mut reconfiguration) = Reconfiguration::new(self.track.epoch, change) else {
            return;
        };
        let chain_hash = self.spec.chain_hash();
        reconfiguration.sign(&self.admin, &chain_hash);
        if let Reconfigure::Promote(learner) = next {
            // The member it goes to asks the learner for its signed height first.
            let Some(state) = self.nodes.iter().find(|state| state.member == learner) else {
                return;
            };
            let height = state.tip.header.height;
            let key = &self.keys[usize::from(learner)];
            reconfiguration.progress = Some(LearnerProgress::sign(key, &chain_hash, height));
        }
        let running: Vec<usize> = self
            .honest()
            .filter(|n| self.nodes[*n].replica.is_some())
            .collect();
        if running.is_empty() {
            return;
        }
        let node = running[self.rng.below(running.len() as u64) as usize];
        self.input(
            node,
            Input::Entry {
                entry: reconfiguration.to_entry(),
                forwarded: false,
            },
        );
    }

    /// Stops `node` where it stands; with disk loss in the scenario, its disk may go
    /// with it.
    fn crash(&mut self, node: usize) {
        self.lose_unsynced(node);
        let state = &mut self.nodes[node];
        state.replica = None;
        state.down = true;
        state.mining_token += 1;
        state.lives += 1;
        // One disk per run: the members that restore it must hold the chain, and a
        // member that forgot what it signed abstains only up to what the others show.
        if self.scenario.network.disk_loss && !self.disk_lost && self.rng.chance(0.5) {
            self.disk_lost = true;
            if self.trace {
                eprintln!("{} node {node} loses its disk", self.now - self.start);
            }
            self.wipe(node);
        }
    }

    /// The blocks applied since the disk last synced are gone, as after reopening
    /// a redb file whose last commits were not durable.
    fn lose_unsynced(&mut self, node: usize) {
        let (count, _) = std::mem::take(&mut self.nodes[node].unsynced);
        if self.trace && count > 0 {
            let at = self.now - self.start;
            eprintln!("{at} node {node} loses {count} blocks applied since its disk synced");
        }
        if count == 0 {
            return;
        }
        let state = &mut self.nodes[node];
        for _ in 0..count {
            let Some((_, (block, _))) = state.chain.pop_last() else {
                break;
            };
            for entry in &block.entries {
                state.ids.remove(&entry.id());
            }
            let kept = state.log_ids.len().saturating_sub(block.entries.len());
            state.log_ids.truncate(kept);
        }
        self.lost_applies += count;
        let height = match self.nodes[node].chain.last_key_value() {
            Some((height, _)) => *height,
            None => self.nodes[node].base.map_or(0, |base| base.height),
        };
        let header = self.header_at(node, height);
        let state = &mut self.nodes[node];
        state.tip = Tip {
            header,
            log: log_of(&state.log_ids),
        };
    }

    fn restart(&mut self, node: usize) {
        let state = &self.nodes[node];
        if state.replica.is_some() {
            return;
        }
        if state.wiped {
            return self.join(node);
        }
        self.nodes[node].down = false;
        let state = &self.nodes[node];
        // A change due at the next height is in force for the replica that orders it.
        let mut membership = state.membership.clone();
        membership.advance_to(state.tip.header.height + 1);
        let base = self.header_at(node, membership.since - 1);
        // It may have crashed between applying its epoch's last block and moving on.
        let state = &mut self.nodes[node];
        if let Some(record) = state.durable.epoch_record(&membership, &base) {
            state.durable.apply(&record);
        }
        let Some(config) = self.config_for(node, &membership, &base) else {
            return; // no vote: it follows
        };
        let state = &self.nodes[node];
        if self.trace {
            let slots: Vec<_> = state.durable.slots.keys().collect();
            let (at, tip) = (self.now - self.start, state.tip.header.height);
            let view = state.durable.view;
            eprintln!("{at} node {node} starts: tip {tip}, view {view}, slots held {slots:?}");
        }
        let low = state.durable.stable.height;
        let applied: Vec<(u64, Hash)> = state
            .chain
            .range(low + 1..)
            .map(|(height, (block, _))| (*height, block.hash()))
            .collect();
        let replica = Replica::new(
            config,
            state.tip.clone(),
            state.durable.clone(),
            applied,
            self.now,
        )
        .with_membership(Arc::new(membership));
        self.nodes[node].replica = Some(replica);
    }

    /// The header `node` holds at `height` (genesis at 0): of a block, or kept by
    /// a restore. A replica of an epoch starts above the block before it; a node
    /// that does not hold that header cannot start one (a real node stops with
    /// "lies below this node's history"), and the run fails as a panic.
    fn header_at(&self, node: usize, height: u64) -> Header {
        let state = &self.nodes[node];
        let kept = [state.base, state.epoch_base];
        match state.chain.get(&height) {
            Some((block, _)) => block.header,
            None if height == 0 => self.spec.genesis_block().header,
            None => kept
                .into_iter()
                .flatten()
                .find(|header| header.height == height)
                .unwrap_or_else(|| panic!("node {node} does not hold the header at {height}")),
        }
    }

    /// The configuration of `node`'s replica in `membership`, whose ordering starts
    /// above `base`; none if it has no vote there.
    fn config_for(&self, node: usize, membership: &Membership, base: &Header) -> Option<Config> {
        let key = &self.keys[usize::from(self.nodes[node].member)];
        let config =
            Config::in_epoch(&self.spec, membership, base, key.clone(), self.timing).ok()?;
        Some(tune(config, self.scenario.flaws, &self.memo, self.seed))
    }

    /// Once `node`'s replica applied its epoch's last block, moves it to the next
    /// epoch's replica, which takes the entries the old one held; a node with no
    /// vote there stops ordering, hands its entries to the new members and follows.
    fn switch_epoch(&mut self, node: usize) {
        let state = &mut self.nodes[node];
        let Some(next) = state.replica.as_ref().and_then(Replica::next_membership) else {
            return;
        };
        let base = state.tip.header;
        if let Some(record) = state.durable.epoch_record(&next, &base) {
            state.durable.apply(&record);
        }
        let held = state
            .replica
            .as_ref()
            .map(Replica::pending_entries)
            .unwrap_or_default();
        match self.config_for(node, &next, &base) {
            Some(config) => {
                let state = &mut self.nodes[node];
                let replica = Replica::new(
                    config,
                    state.tip.clone(),
                    state.durable.clone(),
                    [],
                    self.now,
                )
                .with_membership(Arc::new(next));
                state.replica = Some(replica);
                self.input(node, Input::Entries(held));
            }
            None => {
                self.nodes[node].replica = None;
                let members: Vec<usize> = (0..self.nodes.len())
                    .filter(|n| {
                        next.members
                            .as_slice()
                            .iter()
                            .any(|m| m.node_id == self.node_ids[usize::from(self.nodes[*n].member)])
                    })
                    .collect();
                for target in members {
                    for entry in &held {
                        self.forward(node, target, entry);
                    }
                }
            }
        }
    }

    /// Feeds one input to a node and performs its outputs in order.
    fn input(&mut self, node: usize, input: Input) {
        let state = &mut self.nodes[node];
        let Some(replica) = state.replica.as_mut() else {
            return;
        };
        let mut outputs = replica.handle(input, &Ids(&state.ids));
        if let Some(adversary) = &mut state.adversary {
            let replica = state.replica.as_ref().expect("running");
            let members = replica.membership().members.len();
            outputs = adversary.tamper(
                outputs,
                replica,
                &mut self.rng,
                members,
                &mut self.collusion,
            );
        }
        // A crash may strike between any two outputs: what was persisted stays.
        let crash_at = (self.scenario.network.crashes
            && !self.healed()
            && self.nodes[node].honest
            && self.rng.chance(0.002))
        .then(|| self.rng.below(outputs.len() as u64 + 1) as usize);
        for (position, output) in outputs.into_iter().enumerate() {
            if crash_at == Some(position) {
                self.crash(node);
                let back = self.now + 50 + self.rng.below(500);
                self.schedule(back.min(self.heal_at), Event::Restart { node });
                return;
            }
            self.perform(node, output);
            if self.violation.is_some() {
                return;
            }
        }
        self.wake_for_cut(node);
        self.switch_epoch(node);
    }

    /// Schedules a clock event for the block the replica will cut, unless one comes
    /// sooner.
    fn wake_for_cut(&mut self, node: usize) {
        let now = self.now;
        let state = &mut self.nodes[node];
        let Some(due) = state.replica.as_ref().and_then(|r| r.cut_due_ms()) else {
            return;
        };
        if due > now && state.clock_at.is_none_or(|at| at <= now || due < at) {
            state.clock_at = Some(due);
            self.schedule(due, Event::Clock { node });
        }
    }

    fn perform(&mut self, node: usize, output: Output) {
        match output {
            Output::Send { to, message } => self.send(node, to, message),
            Output::Broadcast(message) => {
                if matches!(message.payload, Payload::Checkpoint { .. }) {
                    // The driver makes its blocks durable before it vouches for them.
                    self.nodes[node].unsynced = (0, None);
                }
                let (members, me) = match &self.nodes[node].replica {
                    Some(replica) => (replica.members(), replica.me()),
                    None => (self.scenario.members, self.nodes[node].member),
                };
                for to in 0..members as MemberIndex {
                    if to != me {
                        self.send(node, to, message.clone());
                    }
                }
            }
            Output::Persist(record) => {
                let state = &mut self.nodes[node];
                if record.height().is_none() {
                    // Written into the tables with a durable commit (`Store::persist`).
                    state.unsynced = (0, None);
                }
                state.durable.apply(&record);
            }
            Output::Apply { block, certificate } => {
                let before = self.nodes[node].membership.clone();
                self.apply(node, block, certificate);
                let state = &mut self.nodes[node];
                state.unsynced = match state.membership != before {
                    // Written durably, and with it every block before.
                    true => (0, None),
                    false => (state.unsynced.0 + 1, state.unsynced.1.or(Some(self.now))),
                };
            }
            Output::Mine(template) => {
                let state = &mut self.nodes[node];
                state.mining_token += 1;
                let token = state.mining_token;
                let block = Arc::new(mine(&template));
                let at = self.now + 1 + self.rng.below(15);
                self.schedule(at, Event::Mined { node, token, block });
            }
            Output::CancelMining => self.nodes[node].mining_token += 1,
            Output::Forward { to, entry } => {
                for target in self.members_at(node, to) {
                    self.forward(node, target, &entry);
                }
            }
            Output::FetchBlock { height, hash } => {
                let Some(peer) = self.random_peer(node) else {
                    return;
                };
                let found = self.nodes[peer]
                    .replica
                    .as_ref()
                    .and_then(|r| r.block(&hash))
                    .or_else(|| {
                        let chain = &self.nodes[peer].chain;
                        chain
                            .get(&height)
                            .filter(|(block, _)| block.hash() == hash)
                            .map(|(block, _)| block.clone())
                    });
                if let (Some(block), Some(delay)) = (found, self.round_trip(node, peer)) {
                    self.schedule(
                        self.now + delay,
                        Event::Blocks {
                            node,
                            blocks: vec![block],
                        },
                    );
                }
            }
            Output::FetchCommitted {
                after,
                entered_view,
            } => {
                let Some(peer) = self.random_peer(node) else {
                    return;
                };
                let new_view = self.nodes[peer]
                    .replica
                    .as_ref()
                    .and_then(|replica| replica.new_view_since(entered_view))
                    .cloned();
                if let (Some(message), Some(delay)) = (new_view, self.round_trip(node, peer)) {
                    self.schedule(self.now + delay, Event::Deliver { node, message });
                }
                // Consecutive blocks after `after`: none from a peer whose history
                // starts above it (restored from a snapshot).
                let chain = &self.nodes[peer].chain;
                let blocks: Vec<_> = (after + 1..=after + SIM_CATCH_UP_BATCH)
                    .map_while(|height| chain.get(&height).cloned())
                    .collect();
                if self.cut("committed-blocks", None, node) {
                    return;
                }
                if let (false, Some(delay)) = (blocks.is_empty(), self.round_trip(node, peer)) {
                    self.schedule(self.now + delay, Event::Committed { node, blocks });
                }
            }
            Output::Dropped { .. } | Output::Unpooled { .. } => {}
        }
    }

    /// Sends `entry` from `node` on to `target` over the network.
    fn forward(&mut self, node: usize, target: usize, entry: &Entry) {
        if let Some(delay) = self.delay(node, target) {
            let entry = entry.clone();
            let forwarded = Event::Entry {
                node: target,
                entry,
                forwarded: true,
            };
            self.schedule(self.now + delay, forwarded);
        }
    }

    /// The nodes holding the key of `member` in `from`'s membership (the genesis
    /// one if `from` runs no replica).
    fn members_at(&self, from: usize, member: MemberIndex) -> Vec<usize> {
        let id = match &self.nodes[from].replica {
            Some(replica) => replica.node_id(member),
            None => self.node_ids.get(usize::from(member)).copied(),
        };
        (0..self.nodes.len())
            .filter(|n| Some(self.node_ids[usize::from(self.nodes[*n].member)]) == id)
            .collect()
    }

    /// A running peer to fetch from: a member, or a follower, which orders nothing
    /// but serves the blocks it holds.
    fn random_peer(&mut self, node: usize) -> Option<usize> {
        let peers: Vec<usize> = (0..self.nodes.len())
            .filter(|p| {
                let peer = &self.nodes[*p];
                peer.member != self.nodes[node].member && !peer.down && !peer.wiped
            })
            .collect();
        (!peers.is_empty()).then(|| peers[self.rng.below(peers.len() as u64) as usize])
    }

    /// The delay of one message from `from` to `to`, or none if it is lost.
    fn delay(&mut self, from: usize, to: usize) -> Option<u64> {
        let network = self.scenario.network;
        if !self.healed() {
            if let Some((groups, until)) = &self.partition {
                let (a, b) = (self.nodes[from].member, self.nodes[to].member);
                if self.now < *until && groups[usize::from(a)] != groups[usize::from(b)] {
                    return None;
                }
            }
            if self.rng.chance(network.drop) {
                return None;
            }
        }
        let (low, high) = network.delay_ms;
        Some(low + self.rng.below(high - low + 1))
    }

    fn round_trip(&mut self, from: usize, to: usize) -> Option<u64> {
        Some(self.delay(from, to)? + self.delay(to, from)?)
    }

    /// Whether a targeted cut loses a message of `kind` about `height` to `node`.
    fn cut(&self, kind: &str, height: Option<u64>, node: usize) -> bool {
        let member = self.nodes[node].member;
        let elapsed = self.now - self.start;
        self.scenario.cuts.iter().any(|cut| {
            cut.kind == kind
                && (cut.height.is_none() || cut.height == height)
                && cut.to.is_none_or(|to| to == member)
                && (cut.from_ms..cut.until_ms).contains(&elapsed)
        })
    }

    fn send(&mut self, from: usize, to: MemberIndex, message: Message) {
        let height = match &message.payload {
            Payload::PrePrepare { block, .. } => Some(block.header.height),
            Payload::Prepare { height, .. }
            | Payload::Commit { height, .. }
            | Payload::Checkpoint { height, .. } => Some(*height),
            _ => None,
        };
        for target in self.members_at(from, to) {
            if self.cut(message.kind(), height, target) {
                continue;
            }
            let Some(delay) = self.delay(from, target) else {
                continue;
            };
            if self.rng.chance(self.scenario.network.duplicate) {
                let again = delay + self.rng.below(50);
                self.schedule(
                    self.now + again,
                    Event::Deliver {
                        node: target,
                        message: message.clone(),
                    },
                );
            }
            self.schedule(
                self.now + delay,
                Event::Deliver {
                    node: target,
                    message: message.clone(),
                },
            );
        }
    }
}

/// Committed blocks a simulated peer sends per catch-up request.
const SIM_CATCH_UP_BATCH: u64 = 16;

/// How the data of an entry that no block may hold under [`RULES`] begins.
const BLOCKLESS: &[u8] = b"sim blockless ";

/// The policy of the seeds that run one: at most three entries a block, and none
/// that starts with [`BLOCKLESS`].
const RULES: crate::testing::BlockRules = crate::testing::BlockRules {
    most: 3,
    blockless: BLOCKLESS,
};

/// Whether the seed's replicas run [`RULES`].
/// The spacing of cuts in the runs that space them: longer than the delay, so
/// that it, not the delay, holds entries back.
const SIM_BLOCK_INTERVAL_MS: u64 = 37;

fn with_rules(seed: u64) -> bool {
    seed % 3 == 2
}

/// The log's right edge after `ids`, in order.
fn log_of(ids: &[Hash]) -> crate::chain::CompactRange {
    let mut log = crate::chain::CompactRange::new();
    for id in ids {
        log.append(crate::chain::merkle::leaf_hash(id.as_bytes()), |_, _, _| {});
    }
    log
}

/// A replica's configuration; every replica of one run shares one signature memo.
fn replica_config(
    spec: &ChainSpec,
    key: &SigningKey,
    timing: Timing,
    flaws: Flaws,
    memo: &SignatureMemo,
    seed: u64,
) -> Config {
    let config = Config::new(spec, key.clone(), timing).expect("a member's key");
    tune(config, flaws, memo, seed)
}

/// A replica's configuration as every replica of a run has it. Odd seeds run the
/// nodes' default of one block in flight, even ones as many as the window holds
/// (the most states to explore); half of each space their cuts
/// (`min_block_interval_ms`, not a whole number of ticks or delays).
fn tune(config: Config, flaws: Flaws, memo: &SignatureMemo, seed: u64) -> Config {
    let mut config = config.with_flaws(flaws);
    config.verifier = config.verifier.with_memo(memo.clone());
    config.catch_up_batch = SIM_CATCH_UP_BATCH;
    config.reconfigurations = true;
    config.max_blocks_in_flight = if seed % 2 == 1 { 1 } else { usize::MAX };
    config.min_block_interval_ms = if seed / 2 % 2 == 1 {
        SIM_BLOCK_INTERVAL_MS
    } else {
        0
    };
    if with_rules(seed) {
        config = config.with_policy(Arc::new(RULES));
    }
    config
}

/// Mines a template at its (small) simulation difficulty.
fn mine(template: &Block) -> Block {
    let mut header: Header = template.header;
    header.nonce = Template::new(&header)
        .search(0, 1, u64::MAX)
        .expect("a nonce exists at simulation difficulty");
    Block {
        header,
        entries: template.entries.clone(),
    }
}

/// Runs `seeds` under `scenario` and returns the reports that found violations.
pub fn sweep(scenario: &Scenario, seeds: std::ops::Range<u64>) -> Vec<Report> {
    seeds
        .map(|seed| Sim::new(scenario.clone(), seed).run())
        .filter(|report| report.violation.is_some())
        .collect()
}
