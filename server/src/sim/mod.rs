//! The deterministic simulator: real [`Replica`]s over a hostile virtual network.
//!
//! One seeded RNG decides everything (delays, losses, duplicates, partitions, crashes,
//! client traffic, Byzantine choices), and time is virtual, so a seed replays exactly.
//! The checker runs after every event: safety (no two honest replicas apply different
//! blocks at one height; every applied block carries a valid quorum certificate and
//! links to its parent), boundedness (the consensus state stays below a fixed size),
//! and at the end liveness (after the network heals, every honest replica commits every
//! entry honest replicas were given) and no view-change storm.

mod byzantine;
mod rng;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use ed25519_dalek::SigningKey;

pub use byzantine::Behaviour;
use byzantine::{Adversary, Collusion};
pub use rng::Rng;

use crate::chain::{
    Block, ChainError, ChainSpec, CommitCertificate, Entry, EntryIndex, Hash, Header,
};
use crate::consensus::{
    Config, Durable, Flaws, Input, MemberIndex, Message, Output, Payload, Replica, SignatureMemo,
    Timing, Tip, Verifier,
};
use crate::pow::Template;

/// The hostile network.
#[derive(Clone, Copy, Debug)]
pub struct Network {
    /// Probability a message is lost before the network heals.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Delivery delay range (reordering follows from it), ms.
    pub delay_ms: (u64, u64),
    /// Whether partitions come and go before the network heals.
    pub partitions: bool,
    /// Whether honest replicas crash and restart from what they persisted.
    pub crashes: bool,
}

/// A targeted fault: messages of one kind to one member are lost for a while.
#[derive(Clone, Copy, Debug)]
pub struct Cut {
    /// The message kind ([`Message::kind`]), or `"committed-blocks"` for catch-up
    /// answers.
    pub kind: &'static str,
    /// Only messages about this height, if set.
    pub height: Option<u64>,
    /// The receiver, or every member if unset.
    pub to: Option<MemberIndex>,
    /// When the cut starts and ends, virtual ms after the start.
    pub from_ms: u64,
    /// See `from_ms`.
    pub until_ms: u64,
}

/// One adversarial setting; a seed fills in the details.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its name, for reports and `--scenario`.
    pub name: String,
    /// Members, n (any size; f = ⌊(n − 1) / 3⌋ of them may be Byzantine).
    pub members: usize,
    /// Byzantine members and what each does.
    pub byzantine: Vec<(MemberIndex, Behaviour)>,
    /// The network.
    pub network: Network,
    /// Deliberate protocol breaks in every honest replica.
    pub flaws: Flaws,
    /// How long faults last before the network heals, virtual ms.
    pub faulty_ms: u64,
    /// How long after healing liveness must be reached, virtual ms.
    pub settle_ms: u64,
    /// Client entries submitted, spread over the run.
    pub entries: usize,
    /// Targeted losses.
    pub cuts: Vec<Cut>,
}

impl Scenario {
    /// A scenario with `members` replicas, a lossy, reordering network, no Byzantine
    /// member and no flaw.
    pub fn new(name: &str, members: usize) -> Scenario {
        Scenario {
            name: name.to_owned(),
            members,
            byzantine: Vec::new(),
            network: Network {
                drop: 0.05,
                duplicate: 0.02,
                delay_ms: (1, 30),
                partitions: false,
                crashes: false,
            },
            flaws: Flaws::default(),
            faulty_ms: 4_000,
            settle_ms: 30_000,
            entries: 40,
            cuts: Vec::new(),
        }
    }

    /// The named scenarios CI runs and the sweep covers: every n from 1 to 10 under
    /// each network fault, and each Byzantine behaviour by f members wherever f ≥ 1
    /// (below n = 4 no member may lie).
    pub fn catalogue() -> Vec<Scenario> {
        let mut all = Vec::new();
        for members in 1..=10 {
            let f = (members - 1) / 3;
            all.push(Scenario::new(&format!("lossy-{members}"), members));
            let mut partitions = Scenario::new(&format!("partitions-{members}"), members);
            partitions.network.partitions = true;
            all.push(partitions);
            let mut crashes = Scenario::new(&format!("crashes-{members}"), members);
            crashes.network.crashes = true;
            all.push(crashes);
            if f == 0 {
                continue;
            }
            for behaviour in Behaviour::ALL {
                let mut scenario =
                    Scenario::new(&format!("{}-{members}", behaviour.name()), members);
                // Member 0 is view 0's primary and member 1 view 1's, the first to
                // send a NEW-VIEW; primaries rotate, so each Byzantine member gets
                // its turn as views change.
                let first = MemberIndex::from(behaviour == Behaviour::BogusNewView);
                scenario.byzantine = (first..first + f as MemberIndex)
                    .map(|m| (m, behaviour))
                    .collect();
                // Partitions with liars where quorums are tightest: at n = 4 the
                // paper's size, at 5 and 6 the sizes where 2f + 1 would be unsafe.
                scenario.network.partitions = (4..=6).contains(&members);
                all.push(scenario);
            }
        }
        all
    }

    /// The catalogue scenario called `name`.
    pub fn named(name: &str) -> Option<Scenario> {
        Scenario::catalogue().into_iter().find(|s| s.name == name)
    }
}

/// A broken property, with where and when it broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two honest replicas applied different blocks at one height.
    Conflict {
        /// The height.
        height: u64,
        /// The replicas.
        nodes: (usize, usize),
    },
    /// An applied block whose commit certificate does not verify.
    BadCertificate {
        /// The replica.
        node: usize,
        /// The height.
        height: u64,
        /// Why.
        reason: String,
    },
    /// An applied block that does not extend the replica's previous block.
    BrokenLink {
        /// The replica.
        node: usize,
        /// The height.
        height: u64,
    },
    /// Consensus state above its bound.
    Unbounded {
        /// The replica.
        node: usize,
        /// What grew.
        what: &'static str,
        /// Its size.
        size: usize,
    },
    /// An honest replica did not commit what it should have after healing.
    NoProgress {
        /// The replica.
        node: usize,
        /// Its height at the end.
        height: u64,
        /// Entries it is missing.
        missing: usize,
    },
    /// A replica panicked.
    Panic {
        /// The panic message.
        message: String,
    },
    /// Views kept changing after the network healed.
    ViewChangeStorm {
        /// View changes after healing.
        changes: u64,
        /// The bound.
        bound: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// How a run went.
#[derive(Clone, Debug)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Virtual time at the end, ms.
    pub end_ms: u64,
    /// Events processed.
    pub events: u64,
    /// The highest height an honest replica applied.
    pub height: u64,
    /// The highest view an honest replica reached.
    pub view: u64,
    /// The first violation, if any.
    pub violation: Option<Violation>,
}

impl Report {
    /// The report of a run that panicked.
    pub fn panicked(scenario: String, seed: u64, message: String) -> Report {
        Report {
            scenario,
            seed,
            end_ms: 0,
            events: 0,
            height: 0,
            view: 0,
            violation: Some(Violation::Panic { message }),
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p ledger --bin ledger-sim -- --scenario {} --seed {}",
            self.scenario, self.seed
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.violation {
            None => write!(
                f,
                "{} seed {}: ok, height {}, view {}, {} events, {} virtual ms",
                self.scenario, self.seed, self.height, self.view, self.events, self.end_ms
            ),
            Some(violation) => write!(
                f,
                "{} seed {}: VIOLATION {} at {} virtual ms\n  replay: {}",
                self.scenario,
                self.seed,
                violation,
                self.end_ms,
                self.replay_command()
            ),
        }
    }
}

/// The committed-entry index of one simulated replica.
struct Ids<'a>(&'a HashSet<Hash>);

impl EntryIndex for Ids<'_> {
    fn contains(&self, id: &Hash) -> Result<bool, ChainError> {
        Ok(self.0.contains(id))
    }
}

/// One simulated process: a replica (none while crashed) and what it persisted.
struct Node {
    member: MemberIndex,
    replica: Option<Replica>,
    durable: Durable,
    chain: Vec<(Arc<Block>, CommitCertificate)>,
    tip: Tip,
    ids: HashSet<Hash>,
    honest: bool,
    adversary: Option<Adversary>,
    mining_token: u64,
}

enum Event {
    Deliver {
        node: usize,
        message: Message,
    },
    Tick {
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
    Partition {
        groups: Vec<u8>,
        until_ms: u64,
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
const MAX_EVENTS: u64 = 3_000_000;

/// A simulation of one scenario under one seed.
pub struct Sim {
    scenario: Scenario,
    seed: u64,
    rng: Rng,
    spec: ChainSpec,
    keys: Vec<SigningKey>,
    timing: Timing,
    nodes: Vec<Node>,
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
    /// The quorum the replicas count with (the real one unless a flaw changes it).
    quorum: usize,
    genesis_hash: Hash,
    events: u64,
    violation: Option<Violation>,
}

impl Sim {
    /// Sets up `scenario` under `seed`.
    pub fn new(scenario: Scenario, seed: u64) -> Sim {
        let rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
        let keys: Vec<SigningKey> = (0..scenario.members)
            .map(|i| {
                SigningKey::from_bytes(
                    &Hash::digest(&[b"sim-key".as_slice(), &[i as u8]].concat()).0,
                )
            })
            .collect();
        let mut spec = crate::testing::spec(&keys, 4);
        spec.params.checkpoint_interval = 4;
        spec.params.max_block_entries = 8;
        let timing = Timing {
            max_block_delay_ms: 20,
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
                let config = replica_config(&spec, key, timing, scenario.flaws, &memo);
                let tip = Tip {
                    header: genesis.header,
                    log: crate::chain::CompactRange::new(),
                };
                let durable = Durable::genesis(genesis.hash());
                let silent = behaviour == Some(Behaviour::Silent);
                let replica = (!silent)
                    .then(|| Replica::new(config, tip.clone(), durable.clone(), [], start));
                nodes.push(Node {
                    member,
                    replica,
                    durable,
                    chain: Vec::new(),
                    tip,
                    ids: HashSet::new(),
                    honest: behaviour.is_none(),
                    adversary: behaviour.map(|b| Adversary::new(b, key.clone())),
                    mining_token: 0,
                });
            }
        }
        let heal_at = start + scenario.faulty_ms;
        let quorum = replica_config(&spec, &keys[0], timing, scenario.flaws, &memo)
            .verifier
            .quorum;
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
            genesis_hash: genesis.hash(),
            events: 0,
            violation: None,
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
                let groups: Vec<u8> = (0..self.scenario.members)
                    .map(|_| self.rng.below(2) as u8)
                    .collect();
                let until_ms = (at + length).min(self.heal_at);
                self.schedule(at, Event::Partition { groups, until_ms });
                at = until_ms + self.rng.below(800);
            }
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
        match event {
            Event::Tick { node } => {
                self.schedule(self.now + TICK_MS, Event::Tick { node });
                let now_ms = self.now;
                self.input(node, Input::Tick { now_ms });
                if let Some(adversary) = &mut self.nodes[node].adversary {
                    let replays = adversary.replays(&mut self.rng, self.scenario.members);
                    for (to, message) in replays {
                        self.send(node, to, message);
                    }
                }
            }
            Event::Deliver { node, message } => {
                if let Some(adversary) = &mut self.nodes[node].adversary {
                    adversary.observe(&message);
                }
                self.input(node, Input::Message(message));
            }
            Event::Mined { node, token, block } => {
                if self.nodes[node].mining_token == token {
                    self.input(node, Input::Mined(block));
                }
            }
            Event::Entry {
                node,
                entry,
                forwarded,
            } => {
                // A client's entry that an honest replica takes after healing must
                // commit; one handed to a replica still down at that instant (its
                // restart is due at the same time) is lost with the request, as a
                // real client's would be.
                let state = &self.nodes[node];
                if !forwarded && self.healed() && state.honest && state.replica.is_some() {
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
            Event::Crash { node } => {
                self.nodes[node].replica = None;
                self.nodes[node].mining_token += 1;
            }
            Event::Restart { node } => self.restart(node),
            Event::Partition { groups, until_ms } => self.partition = Some((groups, until_ms)),
        }
    }

    fn restart(&mut self, node: usize) {
        let state = &self.nodes[node];
        if state.replica.is_some() {
            return;
        }
        let key = self.keys[usize::from(state.member)].clone();
        let config = replica_config(
            &self.spec,
            &key,
            self.timing,
            self.scenario.flaws,
            &self.memo,
        );
        let low = state.durable.stable.height;
        let applied: Vec<(u64, Hash)> = state
            .chain
            .iter()
            .map(|(block, _)| (block.header.height, block.hash()))
            .filter(|(height, _)| *height > low)
            .collect();
        let replica = Replica::new(
            config,
            state.tip.clone(),
            state.durable.clone(),
            applied,
            self.now,
        );
        self.nodes[node].replica = Some(replica);
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
            outputs = adversary.tamper(
                outputs,
                replica,
                &mut self.rng,
                self.scenario.members,
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
                self.nodes[node].replica = None;
                self.nodes[node].mining_token += 1;
                let back = self.now + 50 + self.rng.below(500);
                self.schedule(back.min(self.heal_at), Event::Restart { node });
                return;
            }
            self.perform(node, output);
            if self.violation.is_some() {
                return;
            }
        }
    }

    fn perform(&mut self, node: usize, output: Output) {
        match output {
            Output::Send { to, message } => self.send(node, to, message),
            Output::Broadcast(message) => {
                for to in 0..self.scenario.members as MemberIndex {
                    if to != self.nodes[node].member {
                        self.send(node, to, message.clone());
                    }
                }
            }
            Output::Persist(record) => self.nodes[node].durable.apply(&record),
            Output::Apply { block, certificate } => self.apply(node, block, certificate),
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
                for target in self.members_at(to) {
                    if let Some(delay) = self.delay(node, target) {
                        self.schedule(
                            self.now + delay,
                            Event::Entry {
                                node: target,
                                entry: entry.clone(),
                                forwarded: true,
                            },
                        );
                    }
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
                            .get(height.checked_sub(1)? as usize)
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
                let blocks: Vec<_> = self.nodes[peer]
                    .chain
                    .iter()
                    .skip(after as usize)
                    .take(16)
                    .cloned()
                    .collect();
                if self.cut("committed-blocks", None, node) {
                    return;
                }
                if let (false, Some(delay)) = (blocks.is_empty(), self.round_trip(node, peer)) {
                    self.schedule(self.now + delay, Event::Committed { node, blocks });
                }
            }
            Output::Dropped { .. } => {}
        }
    }

    fn members_at(&self, member: MemberIndex) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|n| self.nodes[*n].member == member)
            .collect()
    }

    fn random_peer(&mut self, node: usize) -> Option<usize> {
        let peers: Vec<usize> = (0..self.nodes.len())
            .filter(|p| {
                self.nodes[*p].member != self.nodes[node].member && self.nodes[*p].replica.is_some()
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
        for target in self.members_at(to) {
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

    /// Performs an apply and checks it: certificate, parent link, agreement.
    fn apply(&mut self, node: usize, block: Arc<Block>, certificate: CommitCertificate) {
        let height = block.header.height;
        let hash = block.hash();
        let state = &mut self.nodes[node];
        let honest = state.honest;
        let links = block.header.prev_hash == state.tip.header.hash()
            && height == state.tip.header.height + 1;
        let mut log = state.tip.log.clone();
        for entry in &block.entries {
            let id = entry.id();
            state.ids.insert(id);
            log.append(crate::chain::merkle::leaf_hash(id.as_bytes()), |_, _, _| {});
        }
        state.tip = Tip {
            header: block.header,
            log,
        };
        state.chain.push((block, certificate.clone()));
        if !honest {
            return;
        }
        if !links {
            self.violation = Some(Violation::BrokenLink { node, height });
            return;
        }
        // The quorum the replicas count with: a flaw that weakens it must show up as
        // the fork it allows, not merely as a certificate one vote short. Signatures
        // go through the run's memo, as most were checked when their COMMIT arrived.
        let mut verifier = Verifier::new(
            self.spec.chain_hash(),
            self.genesis_hash,
            &self.spec.members,
        )
        .with_memo(self.memo.clone());
        verifier.quorum = self.quorum;
        if let Err(error) = verifier.check_commit(&certificate, height, &hash) {
            self.violation = Some(Violation::BadCertificate {
                node,
                height,
                reason: error.to_string(),
            });
            return;
        }
        match self.applied.get(&height) {
            Some((known, other)) if *known != hash => {
                self.violation = Some(Violation::Conflict {
                    height,
                    nodes: (*other, node),
                });
            }
            Some(_) => {}
            None => {
                self.applied.insert(height, (hash, node));
            }
        }
    }

    /// The consensus state of every honest replica stays within fixed bounds.
    fn check_bounds(&mut self) {
        let n = self.scenario.members;
        let window = 2 * self.spec.params.checkpoint_interval as usize;
        for node in 0..self.nodes.len() {
            let state = &self.nodes[node];
            let Some(replica) = state.replica.as_ref().filter(|_| state.honest) else {
                continue;
            };
            let footprint = replica.footprint();
            let limits = [
                ("slots", footprint.slots, 2 * window + 2),
                ("blocks", footprint.blocks, 4 * window * n),
                (
                    "checkpoint votes",
                    footprint.checkpoint_votes,
                    n * (window / 4 + 3),
                ),
                // One for the current view and one for a higher view per member.
                ("view changes", footprint.view_changes, 2 * n),
                ("pending entries", footprint.pending, self.scenario.entries),
            ];
            for (what, size, bound) in limits {
                if size > bound {
                    self.violation = Some(Violation::Unbounded { node, what, size });
                    return;
                }
            }
        }
    }

    /// After healing, every honest replica commits every entry given to an honest
    /// replica, and views settle.
    fn check_liveness(&mut self) {
        for node in self.honest().collect::<Vec<_>>() {
            let state = &self.nodes[node];
            let missing = self
                .must_commit
                .iter()
                .filter(|id| !state.ids.contains(id))
                .count();
            if missing > 0 || state.replica.is_none() {
                self.violation = Some(Violation::NoProgress {
                    node,
                    height: state.tip.header.height,
                    missing,
                });
                return;
            }
        }
        let f = ((self.scenario.members - 1) / 3) as u64;
        let bound = 2 * (f + 1) + 2;
        let changes = self.max_view() - self.view_at_heal.unwrap_or(0);
        if changes > bound {
            self.violation = Some(Violation::ViewChangeStorm { changes, bound });
        }
    }
}

/// A replica's configuration; every replica of one run shares one signature memo.
fn replica_config(
    spec: &ChainSpec,
    key: &SigningKey,
    timing: Timing,
    flaws: Flaws,
    memo: &SignatureMemo,
) -> Config {
    let mut config = Config::new(spec, key.clone(), timing)
        .expect("a member's key")
        .with_flaws(flaws);
    config.verifier = config.verifier.with_memo(memo.clone());
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
