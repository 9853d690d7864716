//! The PBFT replica: a deterministic state machine from [`Input`]s to [`Output`]s.
//!
//! Section references are to Castro & Liskov, "Practical Byzantine Fault Tolerance and
//! Proactive Recovery", ACM TOCS 20(4), 2002 ("C&L").
//!
//! Quorums: q = ⌈(n + f + 1) / 2⌉ matching votes (DESIGN.md, "Consensus"), so any two
//! quorums share f + 1 members at every n; it is the paper's 2f + 1 when n = 3f + 1.
//! Rules that need one honest voice stay at f + 1.
//!
//! Sequence number = block height. A block is *accepted* at a height when this replica
//! pre-prepares it (primary) or prepares it (backup); *prepared* when it also holds
//! q − 1 matching prepares from backups; *committed* when prepared with q matching
//! commits; *applied* strictly in height order once committed. The chaining rule: a
//! block is accepted at h + 1 only on top of the block prepared at h in the same view
//! (or the applied tip), so a view change can never leave a hole under a prepared block.
//!
//! Liveness leans on retransmission (C&L §5.2): the paper's timer rule (§4.5.2) lets
//! a replica that saw a quorum of VIEW-CHANGEs time out into the next view while others,
//! having lost one of those messages, still wait for a quorum in the view before. A
//! replica no longer resends messages of a view it left, so a request for a past view
//! is answered instead: with the NEW-VIEW if this replica entered that view, else with
//! its VIEW-CHANGE for it (truthful, as nothing is prepared while changing views). The
//! 100,000-seed simulator sweep found the deadlock this closes.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};

use super::durable::{Durable, Record};
use super::message::{
    CheckpointCertificate, Invalid, MemberIndex, Message, NewView, Payload, PreparedCertificate,
    Proposal, Verifier, ViewChange, Vote,
};
use crate::chain::merkle::leaf_hash;
use crate::chain::{
    validate_block, Block, ChainError, ChainParams, ChainSpec, CommitCertificate, CommitSignature,
    CompactRange, Entry, EntryIndex, Hash, Header, Members, Policy, ValidationContext,
};

/// Lagging checks (one per retransmit interval) with an unmoved tip between probes
/// of a peer's chain.
const PROBE_CHECKS: u32 = 4;

/// Timers of one replica, in milliseconds of the time its ticks carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The primary cuts a block this long after the first pending entry arrived.
    pub max_block_delay_ms: u64,
    /// An entry not committed after this long (doubled per consecutive view change)
    /// starts a view change; a view change not completed after it starts the next.
    pub view_change_timeout_ms: u64,
    /// Unanswered protocol messages are sent again this often.
    pub retransmit_ms: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            max_block_delay_ms: 10,
            view_change_timeout_ms: 2_000,
            retransmit_ms: 250,
        }
    }
}

/// Deliberate protocol breaks, for proving that the simulator's checker can fail.
/// Never set outside tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flaws {
    /// Count 2f matching votes as a quorum.
    pub weak_quorum: bool,
    /// Count 2f + 1 matching votes as a quorum at every n, as PBFT's paper does for
    /// n = 3f + 1: at n = 5 two such quorums meet in one member, at n = 6 in none.
    pub classic_quorum: bool,
    /// Accept a block at h + 1 when the block at h is merely accepted, not prepared.
    pub skip_chaining: bool,
    /// Take a NEW-VIEW's re-proposals as given instead of recomputing them.
    pub trust_new_view: bool,
}

/// Everything a replica is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// The membership's keys and the quorum.
    pub verifier: Verifier,
    /// The membership (for commit certificates, which name signers by node id).
    pub members: Members,
    /// This replica's position in the membership.
    pub me: MemberIndex,
    /// This replica's signing key.
    pub key: SigningKey,
    /// The chain's limits.
    pub params: ChainParams,
    /// The genesis difficulty, which blocks meet unless the policy asks for another.
    pub difficulty: u32,
    /// The chain's validation plugins, if any: a difficulty policy and block rules.
    pub policy: Option<Arc<dyn Policy>>,
    /// Heights accepted above the stable checkpoint: the high watermark is
    /// `stable + window` (C&L §4.2). At least twice the checkpoint interval.
    pub window: u64,
    /// The timers.
    pub timing: Timing,
    /// Entries a replica holds while they wait to be committed.
    pub max_pending: usize,
    /// Deliberate breaks (tests only).
    pub flaws: Flaws,
}

/// Why a replica cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The key is not a member of the chain.
    #[error("this node's key is not a member of the chain")]
    NotMember,
}

impl Config {
    /// The configuration of the member holding `key` in `spec`'s chain.
    pub fn new(spec: &ChainSpec, key: SigningKey, timing: Timing) -> Result<Config, ConfigError> {
        let public = key.verifying_key();
        let me = spec
            .members
            .as_slice()
            .iter()
            .position(|member| member.public_key == public)
            .ok_or(ConfigError::NotMember)?;
        let genesis_hash = spec.genesis_block().hash();
        Ok(Config {
            verifier: Verifier::new(spec.chain_hash(), genesis_hash, &spec.members),
            members: spec.members.clone(),
            // Genesis caps the member count well below u16::MAX.
            me: me as MemberIndex,
            key,
            params: spec.params,
            difficulty: spec.difficulty,
            policy: None,
            window: spec.params.checkpoint_interval.saturating_mul(2).max(2),
            timing,
            max_pending: 100_000,
            flaws: Flaws::default(),
        })
    }

    /// Validates and mines under `policy` (the node's plugins).
    pub fn with_policy(mut self, policy: Arc<dyn Policy>) -> Config {
        self.policy = Some(policy);
        self
    }

    /// Applies `flaws` (tests only).
    pub fn with_flaws(mut self, flaws: Flaws) -> Config {
        if flaws.weak_quorum {
            self.verifier.quorum = 2 * self.verifier.max_faulty();
        }
        if flaws.classic_quorum {
            self.verifier.quorum = 2 * self.verifier.max_faulty() + 1;
        }
        self.flaws = flaws;
        self
    }
}

/// The last applied block and the Merkle log after it.
#[derive(Clone, Debug)]
pub struct Tip {
    /// Its header.
    pub header: Header,
    /// The log after it.
    pub log: CompactRange,
}

/// What happens to a replica.
#[derive(Clone, Debug)]
pub enum Input {
    /// A message from a peer, not yet verified.
    Message(Message),
    /// The current time, ms since the Unix epoch.
    Tick {
        /// The time.
        now_ms: u64,
    },
    /// An entry submitted by a client (`forwarded` if another member sent it on).
    Entry {
        /// The entry.
        entry: Entry,
        /// Whether a member forwarded it (it is then verified here).
        forwarded: bool,
    },
    /// Cut a block now, even an empty one (`POST /mine`); primary only.
    Cut,
    /// The block the primary asked to be mined, with its nonce.
    Mined(Arc<Block>),
    /// A block body this replica asked for with [`Output::FetchBlock`].
    Block(Arc<Block>),
    /// A committed block from a peer's chain, for catch-up.
    Committed {
        /// The block.
        block: Arc<Block>,
        /// Its commit certificate.
        certificate: CommitCertificate,
    },
}

/// What a replica asks its driver to do, in order. A [`Output::Persist`] must be
/// durable before any later output is performed.
#[derive(Clone, Debug)]
pub enum Output {
    /// Send to one member.
    Send {
        /// The member.
        to: MemberIndex,
        /// The message.
        message: Message,
    },
    /// Send to every other member.
    Broadcast(Message),
    /// Make this durable before performing anything after it.
    Persist(Record),
    /// Apply a committed block (the next height) with its certificate.
    Apply {
        /// The block.
        block: Arc<Block>,
        /// Its commit certificate.
        certificate: CommitCertificate,
    },
    /// Mine this template (nonce 0) and answer with [`Input::Mined`].
    Mine(Arc<Block>),
    /// Stop mining: the template is stale.
    CancelMining,
    /// Pass a client's entry to the primary.
    Forward {
        /// The primary.
        to: MemberIndex,
        /// The entry.
        entry: Entry,
    },
    /// Find the block with `hash` at `height` and answer with [`Input::Block`].
    FetchBlock {
        /// Its height.
        height: u64,
        /// Its hash.
        hash: Hash,
    },
    /// Find committed blocks above `after` with their certificates and answer with
    /// [`Input::Committed`], in height order. A peer active in a view above
    /// `entered_view` also sends the NEW-VIEW that started it
    /// ([`Replica::new_view_since`]), so a replica that missed it joins.
    FetchCommitted {
        /// The last height this replica applied.
        after: u64,
        /// The last view this replica entered.
        entered_view: u64,
    },
    /// An input was refused; counted for metrics.
    Dropped {
        /// The sender, when a member sent it.
        from: Option<MemberIndex>,
        /// What was refused.
        kind: &'static str,
        /// Why.
        reason: DropReason,
        /// The rule a refused block or entry broke, when one was checked.
        error: Option<ChainError>,
    },
}

/// Why an input was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// The sender is not a member.
    NotMember,
    /// A signature or certificate does not verify.
    BadSignature,
    /// A message for another view than the one this replica is in.
    WrongView,
    /// A message only the primary may send, from someone else.
    NotPrimary,
    /// A height outside the watermarks.
    OutsideWindow,
    /// Already settled (at or below the stable checkpoint, or an older view).
    Stale,
    /// Seen before.
    Duplicate,
    /// Contradicts what the same sender said before (equivocation).
    Conflicting,
    /// A block that fails validation.
    InvalidBlock,
    /// A NEW-VIEW whose re-proposals do not follow from its view changes.
    InvalidNewView,
    /// A block or entry nobody asked for, or one that does not fit.
    Unsolicited,
    /// An entry that fails validation.
    InvalidEntry,
    /// The entry pool is full.
    PoolFull,
}

impl DropReason {
    /// The reason's name, for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NotMember => "not_member",
            DropReason::BadSignature => "bad_signature",
            DropReason::WrongView => "wrong_view",
            DropReason::NotPrimary => "not_primary",
            DropReason::OutsideWindow => "outside_window",
            DropReason::Stale => "stale",
            DropReason::Duplicate => "duplicate",
            DropReason::Conflicting => "conflicting",
            DropReason::InvalidBlock => "invalid_block",
            DropReason::InvalidNewView => "invalid_new_view",
            DropReason::Unsolicited => "unsolicited",
            DropReason::InvalidEntry => "invalid_entry",
            DropReason::PoolFull => "pool_full",
        }
    }
}

/// Sizes of the replica's state, for the boundedness check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Heights with consensus state.
    pub slots: usize,
    /// Block bodies held.
    pub blocks: usize,
    /// Checkpoint votes held.
    pub checkpoint_votes: usize,
    /// View changes held.
    pub view_changes: usize,
    /// Entries waiting to be committed.
    pub pending: usize,
}

/// A pre-prepare for the current view, waiting for its parent, its body or validation.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    header: Header,
    signature: [u8; 64],
}

/// A block this replica accepted in `view`.
#[derive(Clone, Debug)]
struct Accepted {
    view: u64,
    hash: Hash,
    header: Header,
    signature: [u8; 64],
    /// Entry ids and the log after the block; none for a re-proposal at or below the tip.
    ids: Arc<HashSet<Hash>>,
    log: Option<CompactRange>,
}

#[derive(Clone, Debug, Default)]
struct Slot {
    candidate: Option<Candidate>,
    accepted: Option<Accepted>,
    /// Current-view prepares and commits, one per sender.
    prepares: BTreeMap<MemberIndex, (Hash, [u8; 64])>,
    commits: BTreeMap<MemberIndex, (Hash, [u8; 64])>,
    /// The highest-view prepared certificate; kept across views.
    prepared: Option<PreparedCertificate>,
    /// Kept across views: a committed block stays committed.
    certificate: Option<CommitCertificate>,
    applied: Option<Hash>,
    /// This replica's current-view messages for this height, resent until applied.
    sent: Vec<Message>,
    /// The body asked for with [`Output::FetchBlock`], asked again at each retransmit
    /// until it arrives: the peer asked may lack it or the answer may be lost.
    fetching: Option<Hash>,
}

#[derive(Clone, Debug)]
struct Pending {
    entry: Entry,
    /// When the view-change timer for this entry started.
    since_ms: u64,
    /// When it arrived (the batching delay counts from here).
    arrived_ms: u64,
}

/// One PBFT replica.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    view: u64,
    active: bool,
    now_ms: u64,
    tip: Tip,
    stable: CheckpointCertificate,
    slots: BTreeMap<u64, Slot>,
    blocks: HashMap<Hash, Arc<Block>>,
    checkpoint_votes: BTreeMap<u64, BTreeMap<MemberIndex, (Hash, [u8; 64])>>,
    /// The highest checkpoint each member claimed (signature checked).
    claims: Vec<u64>,
    my_checkpoint: Option<Message>,
    /// VIEW-CHANGE messages by (view, sender): per member at most one for the current
    /// view and its latest for a higher view.
    view_changes: BTreeMap<(u64, MemberIndex), Message>,
    /// The NEW-VIEW of the last view entered, kept while changing views.
    new_view: Option<Message>,
    /// When each member was last answered for a stale VIEW-CHANGE.
    answered: Vec<Option<u64>>,
    view_change_deadline: Option<u64>,
    consecutive_view_changes: u32,
    pending: HashMap<Hash, Pending>,
    order: VecDeque<Hash>,
    /// Entries from this replica's own clients not yet sent to every member, in
    /// arrival order.
    unshared: VecDeque<Hash>,
    mining: Option<(u64, Hash)>,
    mined: Option<Arc<Block>>,
    cut_requested: bool,
    last_retransmit_ms: u64,
    /// The highest height any valid message mentioned, and the tip when last checked.
    seen_height: u64,
    tip_at_last_check: u64,
    /// Lagging checks in a row that found the tip where it was.
    quiet_checks: u32,
    /// Whether a block fetched with its certificate was applied since the last check.
    caught_up_since_check: bool,
    /// When a block fetched with its certificate was last applied.
    last_catch_up_ms: Option<u64>,
    drops: BTreeMap<DropReason, u64>,
    /// Entry ids of the blocks applied in this call, which the driver's index learns
    /// only once it performs the outputs: a block validated later in the same call
    /// must still not repeat them.
    applied_now: Vec<Arc<HashSet<Hash>>>,
    /// Headers of the last applied blocks, oldest first, as many as the difficulty
    /// policy reads: like `applied_now`, the driver's index lags by one step.
    recent_applied: VecDeque<Header>,
    out: Vec<Output>,
}

/// The block a new block must extend: its header, the log after it, and the entry
/// ids of the accepted blocks between the applied tip and it.
type Parent = (Header, CompactRange, Vec<Arc<HashSet<Hash>>>);

/// The committed index plus the entries of the accepted blocks a new block builds on.
struct Ancestry<'a> {
    committed: &'a dyn EntryIndex,
    in_flight: Vec<Arc<HashSet<Hash>>>,
}

impl EntryIndex for Ancestry<'_> {
    fn contains(&self, id: &Hash) -> Result<bool, ChainError> {
        if self.in_flight.iter().any(|ids| ids.contains(id)) {
            return Ok(true);
        }
        self.committed.contains(id)
    }

    fn header(&self, height: u64) -> Result<Option<Header>, ChainError> {
        self.committed.header(height)
    }
}

impl Replica {
    /// A replica resuming from `durable` with `tip` applied; `applied` lists the hashes
    /// of the applied blocks above the stable checkpoint (none on a fresh start).
    pub fn new(
        config: Config,
        tip: Tip,
        durable: Durable,
        applied: impl IntoIterator<Item = (u64, Hash)>,
        now_ms: u64,
    ) -> Replica {
        let n = config.verifier.len();
        let mut replica = Replica {
            view: durable.view,
            active: durable.active,
            now_ms,
            stable: durable.stable.clone(),
            slots: BTreeMap::new(),
            blocks: HashMap::new(),
            checkpoint_votes: BTreeMap::new(),
            claims: vec![0; n],
            my_checkpoint: None,
            view_changes: BTreeMap::new(),
            new_view: durable.new_view.clone(),
            answered: vec![None; n],
            view_change_deadline: None,
            consecutive_view_changes: 0,
            pending: HashMap::new(),
            order: VecDeque::new(),
            unshared: VecDeque::new(),
            mining: None,
            mined: None,
            cut_requested: false,
            last_retransmit_ms: now_ms,
            seen_height: tip.header.height,
            tip_at_last_check: tip.header.height,
            // The first check probes: a restarted replica learns at once how far
            // the others got, even when nothing else is sent.
            quiet_checks: PROBE_CHECKS - 1,
            caught_up_since_check: false,
            last_catch_up_ms: None,
            drops: BTreeMap::new(),
            applied_now: Vec::new(),
            recent_applied: VecDeque::new(),
            out: Vec::new(),
            tip,
            config,
        };
        let low = replica.stable.height;
        for (height, hash) in applied {
            if height > low && height <= replica.tip.header.height {
                replica.slots.entry(height).or_default().applied = Some(hash);
            }
        }
        for (height, slot) in durable.slots.range(low + 1..) {
            let state = replica.slots.entry(*height).or_default();
            state.prepared = slot.prepared.clone();
            if let Some(accepted) = &slot.accepted {
                replica
                    .blocks
                    .insert(accepted.block.hash(), accepted.block.clone());
                if accepted.view == durable.view && durable.active {
                    // Accepting the same block again resends the same signed prepare:
                    // nothing this replica said before is contradicted.
                    state.candidate = Some(Candidate {
                        header: accepted.block.header,
                        signature: accepted.signature,
                    });
                }
            }
        }
        if durable.active {
            if let Some(message) = durable.new_view {
                if let Payload::NewView(new_view) = &message.payload {
                    if new_view.view == durable.view {
                        for proposal in &new_view.proposals {
                            let height = proposal.header.height;
                            if height > low {
                                let slot = replica.slots.entry(height).or_default();
                                slot.candidate.get_or_insert(Candidate {
                                    header: proposal.header,
                                    signature: proposal.signature,
                                });
                            }
                        }
                    }
                }
            }
        } else {
            // Sign the same VIEW-CHANGE again: nothing prepared since it was sent.
            replica.send_view_change();
        }
        replica
    }

    /// Feeds one input; returns what to do, in order.
    pub fn handle(&mut self, input: Input, index: &dyn EntryIndex) -> Vec<Output> {
        // The driver performed the previous call's applies: the index now has them.
        self.applied_now.clear();
        match input {
            Input::Message(message) => self.on_message(message),
            Input::Tick { now_ms } => self.on_tick(now_ms),
            Input::Entry { entry, forwarded } => self.on_entry(entry, forwarded, index),
            Input::Cut => self.cut_requested = true,
            Input::Mined(block) => self.on_mined(block),
            Input::Block(block) => self.on_block(block),
            Input::Committed { block, certificate } => self.on_committed(block, certificate, index),
        }
        self.advance(index);
        std::mem::take(&mut self.out)
    }

    /// The current view.
    pub fn view(&self) -> u64 {
        self.view
    }

    /// Whether the current view was entered (false while changing views).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The primary of the current view.
    pub fn primary(&self) -> MemberIndex {
        self.config.verifier.primary(self.view)
    }

    /// This replica's position in the membership.
    pub fn me(&self) -> MemberIndex {
        self.config.me
    }

    /// The height of the last applied block.
    pub fn height(&self) -> u64 {
        self.tip.header.height
    }

    /// The stable checkpoint certificate.
    pub fn stable_checkpoint(&self) -> &CheckpointCertificate {
        &self.stable
    }

    /// The NEW-VIEW that started this replica's view, if it is active in a view above
    /// `entered_view`: for a peer whose catch-up request shows it missed it.
    pub fn new_view_since(&self, entered_view: u64) -> Option<&Message> {
        if !self.active || self.view <= entered_view {
            return None;
        }
        self.new_view
            .as_ref()
            .filter(|_| self.entered() == self.view)
    }

    /// A block body this replica holds in its consensus log, for peers that ask.
    pub fn block(&self, hash: &Hash) -> Option<Arc<Block>> {
        self.blocks.get(hash).cloned()
    }

    /// Signatures this replica verified on the curve so far.
    pub fn signatures_checked(&self) -> u64 {
        self.config.verifier.signatures_checked()
    }

    /// Inputs refused so far, by reason.
    pub fn drops(&self) -> &BTreeMap<DropReason, u64> {
        &self.drops
    }

    /// Whether `id` waits here to be committed.
    pub fn is_pending(&self, id: &Hash) -> bool {
        self.pending.contains_key(id)
    }

    /// The entries waiting here to be committed, oldest first: what a replica
    /// rebuilt from the store (after a database failure) is given again.
    pub fn pending_entries(&self) -> Vec<Entry> {
        let mut seen = HashSet::new();
        self.order
            .iter()
            .filter(|id| seen.insert(**id))
            .filter_map(|id| self.pending.get(id))
            .map(|pending| pending.entry.clone())
            .collect()
    }

    /// Sizes of the state, for boundedness checks.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            slots: self.slots.len(),
            blocks: self.blocks.len(),
            checkpoint_votes: self.checkpoint_votes.values().map(BTreeMap::len).sum(),
            view_changes: self.view_changes.len(),
            pending: self.pending.len(),
        }
    }

    /// One line per height of the consensus log (candidate, accepted block, votes,
    /// certificates, body asked for) and one for the tip, hashes cut to 4 hex digits:
    /// for reading a simulator failure.
    pub fn describe_log(&self) -> String {
        let short = |hash: &Hash| hash.to_hex()[..4].to_string();
        let votes = |votes: &BTreeMap<MemberIndex, (Hash, [u8; 64])>| {
            votes
                .iter()
                .map(|(member, (hash, _))| format!("{member}:{}", short(hash)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut text = String::new();
        for (height, slot) in &self.slots {
            text += &format!(
                "h{height}: candidate {:?} accepted {:?} prepares [{}] commits [{}] prepared {:?} committed {} applied {:?} fetching {:?} sent {}\n",
                slot.candidate.map(|c| short(&c.header.hash())),
                slot.accepted.as_ref().map(|a| (a.view, short(&a.hash))),
                votes(&slot.prepares),
                votes(&slot.commits),
                slot.prepared.as_ref().map(|p| (p.view, short(&p.header.hash()))),
                slot.certificate.is_some(),
                slot.applied.as_ref().map(short),
                slot.fetching.as_ref().map(short),
                slot.sent.len(),
            );
        }
        text += &format!(
            "tip h{} {} mining {:?} view-change deadline {:?} consecutive {} bodies [{}]\n",
            self.tip.header.height,
            short(&self.tip.header.hash()),
            self.mining.map(|(height, _)| height),
            self.view_change_deadline,
            self.consecutive_view_changes,
            self.blocks.keys().map(short).collect::<Vec<_>>().join(" "),
        );
        text
    }

    fn quorum(&self) -> usize {
        self.config.verifier.quorum
    }

    fn low(&self) -> u64 {
        self.stable.height
    }

    fn high(&self) -> u64 {
        self.low().saturating_add(self.config.window)
    }

    fn is_primary(&self) -> bool {
        self.primary() == self.config.me
    }

    /// The hash of the chain this replica runs.
    pub fn chain_hash(&self) -> Hash {
        self.config.verifier.chain_hash
    }

    fn sign(&self, payload: Payload) -> Message {
        Message::sign(
            &self.chain_hash(),
            self.config.me,
            &self.config.key,
            payload,
        )
    }

    fn drop_input(&mut self, from: Option<MemberIndex>, kind: &'static str, reason: DropReason) {
        self.drop_for(from, kind, reason, None);
    }

    /// Drops an input that broke the chain rule `error`.
    fn drop_for(
        &mut self,
        from: Option<MemberIndex>,
        kind: &'static str,
        reason: DropReason,
        error: Option<ChainError>,
    ) {
        *self.drops.entry(reason).or_default() += 1;
        self.out.push(Output::Dropped {
            from,
            kind,
            reason,
            error,
        });
    }

    fn view_change_timeout(&self) -> u64 {
        let doublings = self.consecutive_view_changes.min(10);
        self.config
            .timing
            .view_change_timeout_ms
            .saturating_mul(1 << doublings)
    }

    // ----- inputs -----------------------------------------------------------------

    fn on_message(&mut self, message: Message) {
        let from = message.from;
        let kind = message.kind();
        if usize::from(from) >= self.config.verifier.len() || from == self.config.me {
            return self.drop_input(Some(from), kind, DropReason::NotMember);
        }
        // Cheap filters first: a signature is checked only on a message that matters.
        if let Err(reason) = self.precheck(&message) {
            if matches!(reason, DropReason::Stale | DropReason::WrongView) {
                // A replica out of step with the others' view still learns how far
                // they got, so it fetches their committed blocks. Unverified: a lie
                // costs one fetch per retransmit interval.
                if let Payload::PrePrepare { block, .. } = &message.payload {
                    self.seen_height = self.seen_height.max(block.header.height);
                } else if let Payload::Prepare { height, .. } | Payload::Commit { height, .. } =
                    &message.payload
                {
                    self.seen_height = self.seen_height.max(*height);
                }
            }
            if let (DropReason::Stale, Payload::ViewChange(change)) = (reason, &message.payload) {
                self.answer_stale_view_change(&message, change.new_view);
            }
            return self.drop_input(Some(from), kind, reason);
        }
        if let Err(invalid) = self.config.verifier.check_message(&message) {
            let reason = match invalid {
                Invalid::NotMember(_) => DropReason::NotMember,
                _ => DropReason::BadSignature,
            };
            return self.drop_input(Some(from), kind, reason);
        }
        match message.payload {
            Payload::PrePrepare { view, block } => {
                self.on_pre_prepare(from, view, block, message.signature)
            }
            Payload::Prepare { height, hash, .. } => {
                self.on_vote(from, height, hash, message.signature, false)
            }
            Payload::Commit { height, hash, .. } => {
                self.on_vote(from, height, hash, message.signature, true)
            }
            Payload::Checkpoint { height, hash } => {
                self.on_checkpoint(from, height, hash, message.signature)
            }
            Payload::ViewChange(ref change) => {
                let view = change.new_view;
                self.on_view_change(from, view, message)
            }
            Payload::NewView(_) => self.on_new_view(message),
        }
    }

    /// Refuses messages by their header alone (C&L §4.2: view, watermarks, sender).
    fn precheck(&self, message: &Message) -> Result<(), DropReason> {
        let in_window = |height: u64| {
            if height <= self.low() {
                Err(DropReason::Stale)
            } else if height > self.high() {
                Err(DropReason::OutsideWindow)
            } else {
                Ok(())
            }
        };
        let current_view = |view: u64| {
            if view == self.view && self.active {
                Ok(())
            } else if view < self.view {
                Err(DropReason::Stale)
            } else {
                Err(DropReason::WrongView)
            }
        };
        match &message.payload {
            Payload::PrePrepare { view, block } => {
                current_view(*view)?;
                if message.from != self.config.verifier.primary(*view) {
                    return Err(DropReason::NotPrimary);
                }
                in_window(block.header.height)
            }
            Payload::Prepare { view, height, .. } => {
                current_view(*view)?;
                if message.from == self.config.verifier.primary(*view) {
                    return Err(DropReason::NotPrimary);
                }
                in_window(*height)
            }
            Payload::Commit { view, height, .. } => {
                current_view(*view)?;
                in_window(*height)
            }
            Payload::Checkpoint { height, .. } => {
                let interval = self.config.params.checkpoint_interval.max(1);
                if *height <= self.low() {
                    Err(DropReason::Stale)
                } else if !height.is_multiple_of(interval) {
                    Err(DropReason::OutsideWindow)
                } else {
                    Ok(())
                }
            }
            Payload::ViewChange(change) => {
                if change.new_view < self.view || (change.new_view == self.view && self.active) {
                    return Err(DropReason::Stale);
                }
                // An honest replica holds prepared certificates for one window at
                // most; more would only make this replica check signatures in vain.
                if change.prepared.len() as u64 > self.config.window {
                    return Err(DropReason::OutsideWindow);
                }
                let from = message.from;
                let known = if change.new_view == self.view {
                    self.view_changes.contains_key(&(self.view, from))
                } else {
                    self.view_changes
                        .range((change.new_view, 0)..)
                        .any(|((_, member), _)| *member == from)
                };
                if known {
                    Err(DropReason::Duplicate)
                } else {
                    Ok(())
                }
            }
            Payload::NewView(new_view) => {
                if new_view.view < self.view || (new_view.view == self.view && self.active) {
                    Err(DropReason::Stale)
                } else if message.from != self.config.verifier.primary(new_view.view) {
                    Err(DropReason::NotPrimary)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn on_pre_prepare(
        &mut self,
        from: MemberIndex,
        view: u64,
        block: Arc<Block>,
        signature: [u8; 64],
    ) {
        let height = block.header.height;
        self.seen_height = self.seen_height.max(height);
        let hash = block.hash();
        let slot = self.slots.entry(height).or_default();
        let known = slot
            .accepted
            .as_ref()
            .filter(|accepted| accepted.view == view)
            .map(|accepted| accepted.hash)
            .or_else(|| slot.candidate.map(|candidate| candidate.header.hash()));
        match known {
            Some(known) if known == hash => {
                // A re-proposal from a NEW-VIEW arrives without its body; keep the body.
                if slot.candidate.is_some() {
                    self.blocks.entry(hash).or_insert(block);
                } else {
                    self.drop_input(Some(from), "pre-prepare", DropReason::Duplicate);
                }
            }
            Some(_) => {
                // Two signed pre-prepares for one height in one view: the primary
                // equivocates, which is provable, so the timer need not run out.
                self.drop_input(Some(from), "pre-prepare", DropReason::Conflicting);
                self.start_view_change(view + 1);
            }
            None => {
                slot.candidate = Some(Candidate {
                    header: block.header,
                    signature,
                });
                self.blocks.insert(hash, block);
            }
        }
    }

    /// A PREPARE or COMMIT: one per sender per height per view; a second, different
    /// one is equivocation and is refused (C&L §4.2).
    fn on_vote(
        &mut self,
        from: MemberIndex,
        height: u64,
        hash: Hash,
        signature: [u8; 64],
        commit: bool,
    ) {
        self.seen_height = self.seen_height.max(height);
        let slot = self.slots.entry(height).or_default();
        let votes = if commit {
            &mut slot.commits
        } else {
            &mut slot.prepares
        };
        let kind = if commit { "commit" } else { "prepare" };
        match votes.get(&from) {
            Some((known, _)) if *known == hash => {
                self.drop_input(Some(from), kind, DropReason::Duplicate)
            }
            Some(_) => self.drop_input(Some(from), kind, DropReason::Conflicting),
            None => {
                votes.insert(from, (hash, signature));
            }
        }
    }

    /// A CHECKPOINT (C&L §4.3): a quorum of matching ones make it stable. Votes above the
    /// window are kept too (a bounded number per sender): they tell a lagging replica
    /// how far behind it is.
    fn on_checkpoint(&mut self, from: MemberIndex, height: u64, hash: Hash, signature: [u8; 64]) {
        let slot = usize::from(from);
        self.claims[slot] = self.claims[slot].max(height);
        self.seen_height = self.seen_height.max(height);
        let votes = self.checkpoint_votes.entry(height).or_default();
        match votes.get(&from) {
            Some((known, _)) if *known == hash => {
                return self.drop_input(Some(from), "checkpoint", DropReason::Duplicate)
            }
            Some(_) => return self.drop_input(Some(from), "checkpoint", DropReason::Conflicting),
            None => {
                votes.insert(from, (hash, signature));
            }
        }
        // Each sender holds at most a window's worth of checkpoint votes.
        let limit =
            (self.config.window / self.config.params.checkpoint_interval.max(1)) as usize + 2;
        let held: Vec<u64> = self
            .checkpoint_votes
            .iter()
            .filter(|(_, votes)| votes.contains_key(&from))
            .map(|(height, _)| *height)
            .collect();
        if held.len() > limit {
            if let Some(votes) = self.checkpoint_votes.get_mut(&held[0]) {
                votes.remove(&from);
            }
        }
        self.checkpoint_votes.retain(|_, votes| !votes.is_empty());
        self.try_stabilize(height);
    }

    fn try_stabilize(&mut self, height: u64) {
        if height <= self.low() {
            return;
        }
        let Some(votes) = self.checkpoint_votes.get(&height) else {
            return;
        };
        let mut tally: BTreeMap<Hash, Vec<Vote>> = BTreeMap::new();
        for (member, (hash, signature)) in votes {
            tally.entry(*hash).or_default().push(Vote {
                member: *member,
                signature: *signature,
            });
        }
        let quorum = self.quorum();
        let Some((hash, votes)) = tally.into_iter().find(|(_, votes)| votes.len() >= quorum) else {
            return;
        };
        if let Some(applied) = self.slots.get(&height).and_then(|slot| slot.applied) {
            if applied != hash {
                // A quorum vouches for another block than the one applied here:
                // more than f are faulty. Keep the applied chain; refuse to move on.
                return self.drop_input(None, "checkpoint", DropReason::Conflicting);
            }
        }
        self.adopt_stable(CheckpointCertificate {
            height,
            hash,
            votes,
        });
    }

    /// Moves the low watermark to a certified checkpoint and forgets everything at or
    /// below it (C&L §4.3: garbage collection).
    fn adopt_stable(&mut self, certificate: CheckpointCertificate) {
        if certificate.height <= self.low() {
            return;
        }
        let height = certificate.height;
        self.out
            .push(Output::Persist(Record::Stable(certificate.clone())));
        self.stable = certificate;
        self.slots = self.slots.split_off(&(height + 1));
        self.checkpoint_votes = self.checkpoint_votes.split_off(&(height + 1));
        self.blocks.retain(|_, block| block.header.height > height);
        if self.tip.header.height < height {
            // The cluster moved on without this replica: fetch what it lacks.
            self.fetch_committed();
        }
    }

    fn on_view_change(&mut self, from: MemberIndex, view: u64, message: Message) {
        if view > self.view {
            // Only the sender's latest wish for a higher view counts.
            self.view_changes
                .retain(|(v, member), _| *member != from || *v <= self.view);
        }
        self.view_changes.insert((view, from), message);
        // f + 1 members want a higher view: at least one is honest, so follow the
        // smallest view among the f + 1 highest (C&L §4.5.2, liveness).
        let mut higher: Vec<u64> = self
            .view_changes
            .range((self.view + 1, 0)..)
            .map(|((view, _), _)| *view)
            .collect();
        let f = self.config.verifier.max_faulty();
        if higher.len() > f {
            higher.sort_unstable_by(|a, b| b.cmp(a));
            self.start_view_change(higher[f]);
        }
        self.arm_view_change_timer();
        self.try_send_new_view();
    }

    fn on_new_view(&mut self, message: Message) {
        let from = message.from;
        let Payload::NewView(new_view) = &message.payload else {
            return;
        };
        let checkpoint = if self.config.flaws.trust_new_view {
            highest_checkpoint(&new_view.view_changes)
        } else {
            let (checkpoint, headers) = self.compute_new_view(&new_view.view_changes);
            let given: Vec<Header> = new_view.proposals.iter().map(|p| p.header).collect();
            if headers != given {
                // The new primary's NEW-VIEW does not follow from the view changes it
                // carries: it is faulty, and provably so.
                self.drop_input(Some(from), "new-view", DropReason::InvalidNewView);
                return self.start_view_change(new_view.view + 1);
            }
            checkpoint
        };
        self.enter_view(message, checkpoint);
    }

    fn on_entry(&mut self, entry: Entry, forwarded: bool, index: &dyn EntryIndex) {
        let id = entry.id();
        if self.pending.contains_key(&id) {
            return self.drop_input(None, "entry", DropReason::Duplicate);
        }
        match index.contains(&id) {
            Ok(false) => {}
            Ok(true) => return self.drop_input(None, "entry", DropReason::Duplicate),
            Err(_) => return self.drop_input(None, "entry", DropReason::InvalidEntry),
        }
        if forwarded {
            let chain_hash = self.chain_hash();
            if entry
                .verify(&chain_hash, self.config.params.max_entry_bytes)
                .is_err()
            {
                return self.drop_input(None, "entry", DropReason::InvalidEntry);
            }
        }
        if self.pending.len() >= self.config.max_pending {
            return self.drop_input(None, "entry", DropReason::PoolFull);
        }
        if !forwarded && !self.active {
            // No primary while views change: every member hears of the entry.
            self.forward_to_all(vec![entry.clone()]);
        } else if !forwarded {
            if !self.is_primary() {
                self.out.push(Output::Forward {
                    to: self.primary(),
                    entry: entry.clone(),
                });
            }
            self.unshared.push_back(id);
        }
        self.pending.insert(
            id,
            Pending {
                entry,
                since_ms: self.now_ms,
                arrived_ms: self.now_ms,
            },
        );
        self.order.push_back(id);
    }

    fn on_mined(&mut self, block: Arc<Block>) {
        let header = &block.header;
        if self.mining != Some((header.height, header.prev_hash)) {
            return; // A template from before a view change or a new tip.
        }
        self.mining = None;
        if self.active && self.is_primary() && header.meets_difficulty() {
            self.mined = Some(block);
        }
    }

    fn on_block(&mut self, block: Arc<Block>) {
        let hash = block.hash();
        let height = block.header.height;
        let wanted = self.slots.get(&height).is_some_and(|slot| {
            slot.candidate.is_some_and(|c| c.header.hash() == hash)
                || slot
                    .certificate
                    .as_ref()
                    .is_some_and(|c| c.block_hash == hash)
        });
        if wanted {
            self.blocks.entry(hash).or_insert(block);
        } else {
            self.drop_input(None, "block", DropReason::Unsolicited);
        }
    }

    /// Catch-up: a block another member says is committed, with the certificate that
    /// proves it (C&L §5.3, state transfer, with blocks instead of pages).
    fn on_committed(
        &mut self,
        block: Arc<Block>,
        certificate: CommitCertificate,
        index: &dyn EntryIndex,
    ) {
        let height = block.header.height;
        if height != self.tip.header.height + 1 {
            return self.drop_input(None, "committed block", DropReason::Unsolicited);
        }
        let hash = block.hash();
        if self
            .config
            .verifier
            .check_commit(&certificate, height, &hash)
            .is_err()
        {
            return self.drop_input(None, "committed block", DropReason::BadSignature);
        }
        match self.validate(
            &block,
            &self.tip.header.clone(),
            &self.tip.log.clone(),
            Vec::new(),
            index,
        ) {
            Ok((ids, log)) => {
                self.apply(block, certificate, ids, log);
                self.caught_up_since_check = true;
                self.last_catch_up_ms = Some(self.now_ms);
            }
            Err(error) => self.drop_for(
                None,
                "committed block",
                DropReason::InvalidBlock,
                Some(error),
            ),
        }
    }

    fn on_tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let now = self.now_ms;
        if self.active {
            let timeout = self.view_change_timeout();
            self.share_waiting(now.saturating_sub(timeout / 2));
            // While catching up, entries wait for the blocks being fetched; their
            // timers count from the last one applied.
            let restarted = self.last_catch_up_ms.unwrap_or(0);
            let waited_too_long = !self.catching_up()
                && self.oldest_pending().is_some_and(|pending| {
                    now.saturating_sub(pending.since_ms.max(restarted)) >= timeout
                });
            if waited_too_long {
                self.share_overdue(now.saturating_sub(timeout));
                self.start_view_change(self.view + 1);
            }
        } else if self
            .view_change_deadline
            .is_some_and(|deadline| now >= deadline)
        {
            // The new primary did not deliver a NEW-VIEW in time (C&L §4.5.2).
            self.start_view_change(self.view + 1);
        }
        if now.saturating_sub(self.last_retransmit_ms) >= self.config.timing.retransmit_ms {
            self.last_retransmit_ms = now;
            self.retransmit();
            self.check_lagging();
        }
    }

    /// Entries waiting since before `since` go to every member, as a PBFT client
    /// sends a late request to all replicas (C&L §4.1): each then runs its own timer,
    /// so a primary that censors them faces f + 1 view changes, not one.
    fn share_overdue(&mut self, since: u64) {
        let limit = self.config.params.max_block_entries as usize;
        let overdue: Vec<Entry> = self
            .order
            .iter()
            .filter_map(|id| self.pending.get(id))
            .filter(|pending| pending.since_ms <= since)
            .take(limit)
            .map(|pending| pending.entry.clone())
            .collect();
        self.forward_to_all(overdue);
    }

    /// This replica's own clients' entries still waiting since before `since` (half a
    /// timeout) go to every member, as a PBFT client resends a late request to all
    /// replicas (C&L §4.1): the others' timers then run out soon after this one's,
    /// so a dead or censoring primary is voted out in 1.5 timeouts, not 2.
    fn share_waiting(&mut self, since: u64) {
        let mut late = Vec::new();
        while let Some(id) = self.unshared.front() {
            match self.pending.get(id) {
                Some(pending) if pending.since_ms > since => break,
                Some(pending) => late.push(pending.entry.clone()),
                None => {}
            }
            self.unshared.pop_front();
        }
        self.forward_to_all(late);
    }

    fn forward_to_all(&mut self, entries: Vec<Entry>) {
        let me = self.config.me;
        let members = self.config.verifier.len() as MemberIndex;
        for entry in entries {
            for to in (0..members).filter(|m| *m != me) {
                self.out.push(Output::Forward {
                    to,
                    entry: entry.clone(),
                });
            }
        }
    }

    fn oldest_pending(&mut self) -> Option<&Pending> {
        while let Some(id) = self.order.front() {
            if self.pending.contains_key(id) {
                break;
            }
            self.order.pop_front();
        }
        self.order.front().and_then(|id| self.pending.get(id))
    }

    /// Messages are sent once over a network that may lose them; what is still
    /// needed is sent again (C&L §5.2).
    fn retransmit(&mut self) {
        let tip = self.tip.header.height;
        let mut again: Vec<Message> = Vec::new();
        if self.active {
            for slot in self.slots.range(tip + 1..).map(|(_, slot)| slot) {
                again.extend(slot.sent.iter().cloned());
            }
            // Backups that missed the NEW-VIEW cannot vote in this view.
            let undecided = self.slots.range(tip + 1..).next().is_some();
            if undecided && self.is_primary() {
                if let Some(new_view) = &self.new_view {
                    again.push(new_view.clone());
                }
            }
        } else if let Some(message) = self.view_changes.get(&(self.view, self.config.me)) {
            again.push(message.clone());
        }
        if let Some(checkpoint) = &self.my_checkpoint {
            again.push(checkpoint.clone());
        }
        self.out.extend(again.into_iter().map(Output::Broadcast));
        let missing = self.slots.range(tip + 1..).filter_map(|(height, slot)| {
            let hash = slot
                .fetching
                .filter(|hash| !self.blocks.contains_key(hash))?;
            Some(Output::FetchBlock {
                height: *height,
                hash,
            })
        });
        self.out.extend(missing.collect::<Vec<_>>());
    }

    /// A replica that missed commits cannot prepare above them (the chaining rule), so
    /// when others are ahead and the tip has not moved, it fetches committed blocks.
    /// A catch-up that just applied blocks goes on at once. An idle cluster sends
    /// nothing that would show a restarted replica how far behind it is, so a tip
    /// that has not moved for [`PROBE_CHECKS`] checks asks a peer anyway: an
    /// up-to-date peer answers nothing.
    fn check_lagging(&mut self) {
        let tip = self.tip.header.height;
        let stalled = self.seen_height > tip && self.tip_at_last_check == tip;
        let continuing = self.caught_up_since_check;
        if tip == self.tip_at_last_check {
            self.quiet_checks = self.quiet_checks.saturating_add(1);
        } else {
            self.quiet_checks = 0;
        }
        let probe = self.quiet_checks > 0 && self.quiet_checks.is_multiple_of(PROBE_CHECKS);
        if self.vouched_height() > tip || stalled || continuing || probe {
            self.fetch_committed();
        }
        self.tip_at_last_check = tip;
        self.caught_up_since_check = false;
    }

    /// The highest checkpoint f + 1 members signed: at least one honest member has
    /// applied that far.
    fn vouched_height(&self) -> u64 {
        let f = self.config.verifier.max_faulty();
        let mut claims = self.claims.clone();
        claims.sort_unstable_by(|a, b| b.cmp(a));
        claims.get(f).copied().unwrap_or(0)
    }

    /// Whether this replica knows, from signed evidence, that the others are ahead:
    /// an honest member checkpointed above its tip, or it applied a block fetched
    /// with its certificate within the last view-change timeout. Its own timers then
    /// wait: the others are making progress, and a view change it started alone
    /// would leave it in a view nobody else is in.
    fn catching_up(&self) -> bool {
        self.vouched_height() > self.tip.header.height
            || self.last_catch_up_ms.is_some_and(|at| {
                self.now_ms.saturating_sub(at) < self.config.timing.view_change_timeout_ms
            })
    }

    fn fetch_committed(&mut self) {
        self.out.push(Output::FetchCommitted {
            after: self.tip.header.height,
            entered_view: self.entered(),
        });
    }

    // ----- the normal case ---------------------------------------------------------

    /// Makes every step the state allows, lowest height first, until none does.
    fn advance(&mut self, index: &dyn EntryIndex) {
        loop {
            let mut progressed = false;
            let heights: Vec<u64> = self.slots.keys().copied().collect();
            for height in heights {
                progressed |= self.try_accept(height, index);
                progressed |= self.try_prepared(height);
                progressed |= self.try_committed(height);
            }
            progressed |= self.try_apply(index);
            progressed |= self.try_send_mined(index);
            if !progressed {
                break;
            }
        }
        self.maybe_propose(index);
    }

    /// The parent a block at `height` must extend under the chaining rule: the applied
    /// tip, or the block accepted and prepared at `height - 1` in this view.
    fn parent_for(&self, height: u64) -> Option<Parent> {
        let tip = self.tip.header.height;
        if height <= tip {
            return None; // already decided: nothing may be built at this height
        }
        if height == tip + 1 {
            return Some((
                self.tip.header,
                self.tip.log.clone(),
                self.applied_now.clone(),
            ));
        }
        let slot = self.slots.get(&(height - 1))?;
        let accepted = slot.accepted.as_ref().filter(|a| a.view == self.view)?;
        let prepared = slot
            .prepared
            .as_ref()
            .is_some_and(|p| p.view == self.view && p.header.hash() == accepted.hash);
        if !prepared && !self.config.flaws.skip_chaining {
            return None;
        }
        let log = accepted.log.clone()?;
        let ancestry = self
            .slots
            .range(tip + 1..height)
            .filter_map(|(_, slot)| slot.accepted.as_ref().map(|a| a.ids.clone()))
            .chain(self.applied_now.iter().cloned())
            .collect();
        Some((accepted.header, log, ancestry))
    }

    fn validate(
        &self,
        block: &Block,
        parent: &Header,
        parent_log: &CompactRange,
        in_flight: Vec<Arc<HashSet<Hash>>>,
        index: &dyn EntryIndex,
    ) -> Result<(HashSet<Hash>, CompactRange), ChainError> {
        let chain_hash = self.chain_hash();
        let context = ValidationContext {
            chain_hash: &chain_hash,
            params: &self.config.params,
            parent,
            required_difficulty: self.required_difficulty(parent, index)?,
            now_ms: self.now_ms,
        };
        let ancestry = Ancestry {
            committed: index,
            in_flight,
        };
        let (ids, log) = validate_block(&context, block, parent_log, &ancestry)?;
        if let Some(policy) = &self.config.policy {
            policy.check_block(block).map_err(ChainError::Policy)?;
        }
        Ok((ids.into_iter().collect(), log))
    }

    fn difficulty_window(&self) -> usize {
        self.config
            .policy
            .as_ref()
            .map_or(0, |policy| policy.difficulty_window())
    }

    /// The difficulty of the block after `parent`: the policy's verdict on the
    /// headers up to `parent` (accepted above the tip, applied, then committed in
    /// the index), or the genesis difficulty.
    fn required_difficulty(
        &self,
        parent: &Header,
        index: &dyn EntryIndex,
    ) -> Result<u32, ChainError> {
        let (Some(policy), window) = (&self.config.policy, self.difficulty_window()) else {
            return Ok(self.config.difficulty);
        };
        if window == 0 {
            return Ok(self.config.difficulty);
        }
        let tip = self.tip.header.height;
        // Newest first while collecting; each must be the parent of the one before.
        let mut recent = vec![*parent];
        while recent.len() < window {
            let child = recent[recent.len() - 1];
            let Some(height) = child.height.checked_sub(1) else {
                break; // genesis
            };
            let found = if height > tip {
                self.slots
                    .get(&height)
                    .and_then(|slot| slot.accepted.as_ref())
                    .map(|accepted| accepted.header)
            } else if height == tip {
                Some(self.tip.header)
            } else {
                // `recent_applied` holds consecutive heights ending at the tip.
                let back = (tip - height) as usize;
                match self.recent_applied.len().checked_sub(back + 1) {
                    Some(at) => self.recent_applied.get(at).copied(),
                    None => index.header(height)?,
                }
            };
            match found.filter(|header| header.hash() == child.prev_hash) {
                Some(header) => recent.push(header),
                None => {
                    return Err(ChainError::Policy(format!(
                        "the difficulty policy needs header {height}, which is not at hand"
                    )))
                }
            }
        }
        recent.reverse();
        let required = policy
            .required_difficulty(&recent)
            .map_err(ChainError::Policy)?;
        Ok(required.unwrap_or(self.config.difficulty))
    }

    /// Accepts the current view's candidate at `height` once its parent allows and it
    /// validates; a backup then sends PREPARE (C&L §4.2).
    fn try_accept(&mut self, height: u64, index: &dyn EntryIndex) -> bool {
        if !self.active {
            return false;
        }
        let Some(slot) = self.slots.get(&height) else {
            return false;
        };
        let Some(candidate) = slot.candidate else {
            return false;
        };
        let hash = candidate.header.hash();
        let tip = self.tip.header.height;
        let (ids, log) = if height <= tip {
            // Re-proposed by a NEW-VIEW and already applied here: vote for it again
            // so the others can commit it, but only if it is the block applied.
            if slot.applied != Some(hash) {
                self.forget_candidate(height);
                self.drop_input(Some(self.primary()), "pre-prepare", DropReason::Conflicting);
                return false;
            }
            (Arc::new(HashSet::new()), None)
        } else {
            let Some(block) = self.blocks.get(&hash).cloned() else {
                let slot = self.slots.get_mut(&height).expect("slot exists");
                if slot.fetching != Some(hash) {
                    slot.fetching = Some(hash);
                    self.out.push(Output::FetchBlock { height, hash });
                }
                return false;
            };
            let Some((parent, parent_log, in_flight)) = self.parent_for(height) else {
                return false; // the chaining rule: wait until the parent is prepared
            };
            let parent_hash = parent.hash();
            let verdict = if block.header.prev_hash != parent_hash {
                Err(ChainError::WrongParent {
                    expected: parent_hash,
                    found: block.header.prev_hash,
                })
            } else {
                self.validate(&block, &parent, &parent_log, in_flight, index)
            };
            match verdict {
                Ok((ids, log)) => (Arc::new(ids), Some(log)),
                Err(error) => {
                    self.forget_candidate(height);
                    self.drop_for(
                        Some(self.primary()),
                        "pre-prepare",
                        DropReason::InvalidBlock,
                        Some(error),
                    );
                    return false;
                }
            }
        };
        let view = self.view;
        let block = self.blocks.get(&hash).cloned();
        if let Some(block) = &block {
            self.out.push(Output::Persist(Record::Accepted {
                view,
                block: block.clone(),
                signature: candidate.signature,
            }));
        }
        let prepare =
            (!self.is_primary()).then(|| self.sign(Payload::Prepare { view, height, hash }));
        let me = self.config.me;
        let slot = self.slots.get_mut(&height).expect("slot exists");
        slot.candidate = None;
        slot.accepted = Some(Accepted {
            view,
            hash,
            header: candidate.header,
            signature: candidate.signature,
            ids,
            log,
        });
        if let Some(prepare) = prepare {
            slot.prepares.insert(me, (hash, prepare.signature));
            slot.sent.push(prepare.clone());
            self.out.push(Output::Broadcast(prepare));
        }
        true
    }

    fn forget_candidate(&mut self, height: u64) {
        if let Some(slot) = self.slots.get_mut(&height) {
            slot.candidate = None;
        }
    }

    /// Prepared: the accepted block and q − 1 matching prepares from backups. The
    /// certificate is persisted before COMMIT is sent (C&L §4.2, §6.1).
    fn try_prepared(&mut self, height: u64) -> bool {
        let quorum = self.quorum();
        let view = self.view;
        let primary = self.primary();
        let Some(slot) = self.slots.get(&height) else {
            return false;
        };
        let Some(accepted) = slot.accepted.as_ref().filter(|a| a.view == view) else {
            return false;
        };
        if slot.prepared.as_ref().is_some_and(|p| p.view == view) {
            return false;
        }
        let mut votes = vec![Vote {
            member: primary,
            signature: accepted.signature,
        }];
        votes.extend(
            slot.prepares
                .iter()
                .filter(|(member, (hash, _))| **member != primary && *hash == accepted.hash)
                .map(|(member, (_, signature))| Vote {
                    member: *member,
                    signature: *signature,
                }),
        );
        if votes.len() < quorum {
            return false;
        }
        let certificate = PreparedCertificate {
            view,
            header: accepted.header,
            votes,
        };
        let hash = accepted.hash;
        let commit = self.sign(Payload::Commit { view, height, hash });
        let me = self.config.me;
        self.out
            .push(Output::Persist(Record::Prepared(certificate.clone())));
        let slot = self.slots.get_mut(&height).expect("slot exists");
        slot.prepared = Some(certificate);
        slot.commits.insert(me, (hash, commit.signature));
        slot.sent.push(commit.clone());
        self.out.push(Output::Broadcast(commit));
        true
    }

    /// Committed: prepared here and q matching commits; their signatures are the
    /// block's commit certificate (C&L §4.2).
    fn try_committed(&mut self, height: u64) -> bool {
        let quorum = self.quorum();
        let view = self.view;
        let Some(slot) = self.slots.get(&height) else {
            return false;
        };
        if slot.certificate.is_some() {
            return false;
        }
        let Some(prepared) = slot.prepared.as_ref().filter(|p| p.view == view) else {
            return false;
        };
        let hash = prepared.header.hash();
        let signatures: Vec<CommitSignature> = slot
            .commits
            .iter()
            .filter(|(_, (voted, _))| *voted == hash)
            .filter_map(|(member, (_, signature))| {
                Some(CommitSignature {
                    node_id: self.config.verifier.node_id(*member)?,
                    signature: *signature,
                })
            })
            .collect();
        if signatures.len() < quorum {
            return false;
        }
        let certificate = CommitCertificate {
            view,
            height,
            block_hash: hash,
            signatures,
        };
        self.slots
            .get_mut(&height)
            .expect("slot exists")
            .certificate = Some(certificate);
        true
    }

    /// Applies committed blocks strictly in height order.
    fn try_apply(&mut self, index: &dyn EntryIndex) -> bool {
        let height = self.tip.header.height + 1;
        let Some(slot) = self.slots.get(&height) else {
            return false;
        };
        let Some(certificate) = slot.certificate.clone() else {
            return false;
        };
        let hash = certificate.block_hash;
        let Some(block) = self.blocks.get(&hash).cloned() else {
            let slot = self.slots.get_mut(&height).expect("slot exists");
            if slot.fetching != Some(hash) {
                slot.fetching = Some(hash);
                self.out.push(Output::FetchBlock { height, hash });
            }
            return false;
        };
        let accepted = slot
            .accepted
            .as_ref()
            .filter(|a| a.hash == hash)
            .and_then(|a| Some((a.ids.as_ref().clone(), a.log.clone()?)));
        let (ids, log) = match accepted {
            Some(known) => known,
            // Committed in an earlier view without being accepted here.
            None => match self.validate(
                &block,
                &self.tip.header.clone(),
                &self.tip.log.clone(),
                Vec::new(),
                index,
            ) {
                Ok(known) => known,
                Err(_) => return false,
            },
        };
        self.apply(block, certificate, ids, log);
        true
    }

    fn apply(
        &mut self,
        block: Arc<Block>,
        certificate: CommitCertificate,
        ids: HashSet<Hash>,
        log: CompactRange,
    ) {
        let height = block.header.height;
        let hash = block.hash();
        self.out.push(Output::Apply {
            block: block.clone(),
            certificate: certificate.clone(),
        });
        self.tip = Tip {
            header: block.header,
            log,
        };
        let window = self.difficulty_window();
        if window > 0 {
            self.recent_applied.push_back(block.header);
            while self.recent_applied.len() > window {
                self.recent_applied.pop_front();
            }
        }
        self.consecutive_view_changes = 0;
        for id in &ids {
            self.pending.remove(id);
        }
        self.applied_now.push(Arc::new(ids));
        // Removed ids leave `order` lazily, from the front; one long wait at the front
        // must not let the rest pile up behind it.
        if self.order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.order.retain(|id| pending.contains_key(id));
            self.unshared.retain(|id| pending.contains_key(id));
        }
        if height > self.low() {
            let slot = self.slots.entry(height).or_default();
            slot.applied = Some(hash);
            slot.certificate = Some(certificate);
            slot.sent.clear();
        }
        let interval = self.config.params.checkpoint_interval.max(1);
        if height.is_multiple_of(interval) && height > self.low() {
            let checkpoint = self.sign(Payload::Checkpoint { height, hash });
            let me = self.config.me;
            self.claims[usize::from(me)] = height;
            self.checkpoint_votes
                .entry(height)
                .or_default()
                .insert(me, (hash, checkpoint.signature));
            self.my_checkpoint = Some(checkpoint.clone());
            self.out.push(Output::Broadcast(checkpoint));
            self.try_stabilize(height);
        }
    }

    /// The primary's mined block goes out once its parent is prepared (the chaining
    /// rule binds the primary too: its pre-prepare counts in prepared certificates).
    fn try_send_mined(&mut self, index: &dyn EntryIndex) -> bool {
        let Some(block) = self.mined.clone() else {
            return false;
        };
        let height = block.header.height;
        if !self.active || !self.is_primary() || height <= self.tip.header.height {
            self.mined = None; // stale: the view or the tip moved while it was mined
            return false;
        }
        let Some((parent, _, _)) = self.parent_for(height) else {
            return false;
        };
        self.mined = None;
        if block.header.prev_hash != parent.hash() || height > self.high() {
            return false; // built on a block that is no longer the parent
        }
        let view = self.view;
        let message = self.sign(Payload::PrePrepare {
            view,
            block: block.clone(),
        });
        let hash = block.hash();
        self.blocks.insert(hash, block.clone());
        let slot = self.slots.entry(height).or_default();
        slot.candidate = Some(Candidate {
            header: block.header,
            signature: message.signature,
        });
        slot.sent.push(message.clone());
        // Accepting its own block persists it; the pre-prepare leaves after that.
        let before = self.out.len();
        let accepted = self.try_accept(height, index);
        if accepted {
            self.out.push(Output::Broadcast(message));
        } else {
            self.out.truncate(before);
            if let Some(slot) = self.slots.get_mut(&height) {
                slot.candidate = None;
                slot.sent.clear();
            }
        }
        accepted
    }

    /// The primary cuts a block when enough entries wait, the oldest has waited
    /// `max_block_delay`, nothing of its own is in flight (an idle pipeline gains
    /// nothing from waiting; under load, entries gather while blocks are in flight),
    /// or a cut was asked for. It mines on top of its last proposal.
    fn maybe_propose(&mut self, index: &dyn EntryIndex) {
        if !self.active || !self.is_primary() || self.mining.is_some() || self.mined.is_some() {
            return;
        }
        // An exact shortcut, taken on most inputs: fewer entries than a block holds,
        // the oldest younger than the delay, something in flight and no cut asked
        // for mean no block is due; the full scan below clones entries.
        let limit = self.config.params.max_block_entries as usize;
        let delay = self.config.timing.max_block_delay_ms;
        let now = self.now_ms;
        let tip = self.tip.header.height;
        let idle = self.slots.range(tip + 1..).next().is_none();
        let due = self
            .oldest_pending()
            .is_some_and(|pending| idle || now.saturating_sub(pending.arrived_ms) >= delay);
        if !self.cut_requested && self.pending.len() < limit && !due {
            return;
        }
        let mut parent_height = tip;
        let mut parent = self.tip.header;
        let mut log = self.tip.log.clone();
        let mut in_flight = Vec::new();
        for (height, slot) in self.slots.range(tip + 1..) {
            if *height != parent_height + 1 {
                break;
            }
            if slot.candidate.is_some() {
                return; // a re-proposal still waits for its body or parent
            }
            match slot.accepted.as_ref().filter(|a| a.view == self.view) {
                Some(accepted) => match &accepted.log {
                    Some(accepted_log) => {
                        parent_height = *height;
                        parent = accepted.header;
                        log = accepted_log.clone();
                        in_flight.push(accepted.ids.clone());
                    }
                    None => return,
                },
                None => break,
            }
        }
        let height = parent_height + 1;
        if height > self.high() {
            return;
        }
        let mut entries = Vec::new();
        let mut oldest = None;
        for id in &self.order {
            if entries.len() >= limit {
                break;
            }
            let Some(pending) = self.pending.get(id) else {
                continue;
            };
            if in_flight.iter().any(|ids| ids.contains(id)) {
                continue;
            }
            oldest = Some(oldest.unwrap_or(pending.arrived_ms).min(pending.arrived_ms));
            entries.push(pending.entry.clone());
        }
        let due = entries.len() >= limit
            || (idle && !entries.is_empty())
            || oldest.is_some_and(|arrived| {
                self.now_ms.saturating_sub(arrived) >= self.config.timing.max_block_delay_ms
            });
        if !(due || self.cut_requested) {
            return;
        }
        self.cut_requested = false;
        for entry in &entries {
            log.append(leaf_hash(entry.id().as_bytes()), |_, _, _| {});
        }
        let Ok(difficulty) = self.required_difficulty(&parent, index) else {
            // The policy failed here; the others' timers will replace this primary.
            return;
        };
        let timestamp = self.now_ms.max(parent.timestamp_ms + 1);
        let header = Header::child(&parent, &log, timestamp, difficulty);
        self.mining = Some((height, header.prev_hash));
        self.out
            .push(Output::Mine(Arc::new(Block { header, entries })));
    }

    // ----- view changes ------------------------------------------------------------

    /// Leaves the current view for `target` (C&L §4.4): stop taking part in the old
    /// view, persist that, then send VIEW-CHANGE with the stable checkpoint and every
    /// prepared certificate above it.
    fn start_view_change(&mut self, target: u64) {
        if target <= self.view {
            return;
        }
        self.view = target;
        self.active = false;
        self.mined = None;
        if self.mining.take().is_some() {
            self.out.push(Output::CancelMining);
        }
        for slot in self.slots.values_mut() {
            slot.candidate = None;
            slot.prepares.clear();
            slot.commits.clear();
            slot.sent.clear();
            slot.fetching = None;
        }
        self.view_changes = self.view_changes.split_off(&(target, 0));
        self.view_change_deadline = None;
        self.consecutive_view_changes = self.consecutive_view_changes.saturating_add(1);
        self.out
            .push(Output::Persist(Record::ViewChange { view: target }));
        self.send_view_change();
        self.try_send_new_view();
    }

    /// The timer for the next view starts only once a quorum wants this one: a
    /// replica that timed out alone waits for the others instead of running ahead
    /// through views nobody joins (C&L §4.5.2).
    fn arm_view_change_timer(&mut self) {
        if self.active || self.view_change_deadline.is_some() {
            return;
        }
        if self.wanting(self.view).count() >= self.quorum() {
            self.view_change_deadline =
                Some(self.now_ms.saturating_add(self.view_change_timeout()));
        }
    }

    /// The VIEW-CHANGE messages received for `view`.
    fn wanting(&self, view: u64) -> impl Iterator<Item = &Message> {
        self.view_changes
            .range((view, 0)..=(view, MemberIndex::MAX))
            .map(|(_, message)| message)
    }

    /// The last view this replica entered: it prepared nothing in any view above it.
    fn entered(&self) -> u64 {
        match self.new_view.as_ref().map(|m| &m.payload) {
            Some(Payload::NewView(new_view)) => new_view.view,
            _ => 0,
        }
    }

    /// This replica's VIEW-CHANGE for `view`: its stable checkpoint and every
    /// prepared certificate above it. True for any view above the one it last
    /// entered, since it prepares nothing while changing views.
    fn view_change(&self, view: u64) -> Message {
        let low = self.low();
        self.sign(Payload::ViewChange(ViewChange {
            new_view: view,
            checkpoint: self.stable.clone(),
            prepared: self
                .slots
                .range(low + 1..)
                .filter_map(|(_, slot)| slot.prepared.clone())
                .collect(),
        }))
    }

    fn send_view_change(&mut self) {
        let message = self.view_change(self.view);
        self.view_changes
            .insert((self.view, self.config.me), message.clone());
        self.out.push(Output::Broadcast(message));
        self.arm_view_change_timer();
    }

    /// A member still asks for a view this replica has left or entered: it lost
    /// messages it needs, and the senders no longer resend them. Left alone, a
    /// replica that timed out ahead of the rest and the rest waiting for its
    /// VIEW-CHANGE would wait for each other forever. So it gets the NEW-VIEW of
    /// this view if this replica is in one, else this replica's VIEW-CHANGE for the
    /// view it asks for (C&L §5.2: what a replica lacks is sent again). Verified
    /// and answered at most once per retransmit interval, so replays cost little.
    fn answer_stale_view_change(&mut self, message: &Message, view: u64) {
        let from = message.from;
        let last = self.answered[usize::from(from)];
        let interval = self.config.timing.retransmit_ms / 2;
        if last.is_some_and(|at| self.now_ms.saturating_sub(at) < interval) {
            return;
        }
        let digest = message.digest(&self.chain_hash());
        if self
            .config
            .verifier
            .check(from, &digest, &message.signature)
            .is_err()
        {
            return;
        }
        let answer = if view <= self.entered() {
            self.new_view.clone()
        } else if view < self.view {
            Some(self.view_change(view))
        } else {
            None
        };
        if let Some(answer) = answer {
            self.answered[usize::from(from)] = Some(self.now_ms);
            self.out.push(Output::Send {
                to: from,
                message: answer,
            });
        }
    }

    /// The new primary, holding a quorum of view changes for its view, computes and sends
    /// NEW-VIEW (C&L §4.4).
    fn try_send_new_view(&mut self) {
        if self.active || !self.is_primary() {
            return;
        }
        let view = self.view;
        let changes: Vec<Message> = self.wanting(view).cloned().collect();
        if changes.len() < self.quorum() {
            return;
        }
        let (checkpoint, headers) = self.compute_new_view(&changes);
        let chain_hash = self.chain_hash();
        let proposals = headers
            .into_iter()
            .map(|header| {
                let digest = super::message::pre_prepare_digest(
                    &chain_hash,
                    view,
                    header.height,
                    &header.hash(),
                );
                Proposal {
                    header,
                    signature: self.config.key.sign(digest.as_bytes()).to_bytes(),
                }
            })
            .collect();
        let message = self.sign(Payload::NewView(NewView {
            view,
            view_changes: changes,
            proposals,
        }));
        self.enter_view(message.clone(), checkpoint);
        self.out.push(Output::Broadcast(message));
    }

    /// The re-proposals a NEW-VIEW must carry: from the highest stable checkpoint up,
    /// at each height the prepared certificate of the highest view, while each links
    /// to the one below. Above the first height without one nothing can have been
    /// committed (the chaining rule), so the re-proposals stop there (C&L §4.4,
    /// without null requests, which a hash chain cannot hold).
    pub fn compute_new_view(&self, changes: &[Message]) -> (CheckpointCertificate, Vec<Header>) {
        let checkpoint = highest_checkpoint(changes);
        let mut previous = checkpoint.hash;
        let mut headers = Vec::new();
        let certificates: Vec<&PreparedCertificate> = changes
            .iter()
            .filter_map(|m| match &m.payload {
                Payload::ViewChange(change) => Some(change.prepared.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        let mut height = checkpoint.height + 1;
        while height <= checkpoint.height.saturating_add(self.config.window) {
            let best = certificates
                .iter()
                .filter(|c| c.header.height == height)
                .max_by_key(|c| (c.view, c.header.hash()));
            match best {
                Some(certificate) if certificate.header.prev_hash == previous => {
                    previous = certificate.header.hash();
                    headers.push(certificate.header);
                }
                _ => break,
            }
            height += 1;
        }
        (checkpoint, headers)
    }

    /// Enters the view a NEW-VIEW starts: persist it, adopt its checkpoint, take its
    /// re-proposals as this view's pre-prepares, and restart the entry timers.
    fn enter_view(&mut self, message: Message, checkpoint: CheckpointCertificate) {
        let Payload::NewView(new_view) = &message.payload else {
            return;
        };
        let view = new_view.view;
        let proposals = new_view.proposals.clone();
        self.out
            .push(Output::Persist(Record::NewView(message.clone())));
        if view > self.view {
            for slot in self.slots.values_mut() {
                slot.candidate = None;
                slot.prepares.clear();
                slot.commits.clear();
                slot.sent.clear();
                slot.fetching = None;
            }
            if self.mining.take().is_some() {
                self.out.push(Output::CancelMining);
            }
            self.mined = None;
        }
        self.view = view;
        self.active = true;
        self.view_change_deadline = None;
        self.new_view = Some(message);
        self.view_changes = self.view_changes.split_off(&(view + 1, 0));
        self.adopt_stable(checkpoint);
        let low = self.low();
        for proposal in proposals {
            let height = proposal.header.height;
            if height <= low {
                continue;
            }
            self.slots.entry(height).or_default().candidate = Some(Candidate {
                header: proposal.header,
                signature: proposal.signature,
            });
        }
        // Every waiting entry gets a full timeout under the new primary, which has
        // to hear of it: forward what this replica holds.
        let now = self.now_ms;
        let primary = self.primary();
        let me = self.config.me;
        let mut forward = Vec::new();
        for id in &self.order {
            if let Some(pending) = self.pending.get_mut(id) {
                pending.since_ms = now;
                if primary != me {
                    forward.push(pending.entry.clone());
                }
            }
        }
        self.out.extend(
            forward
                .into_iter()
                .map(|entry| Output::Forward { to: primary, entry }),
        );
    }
}

/// The checkpoint with the highest height among VIEW-CHANGE messages (C&L §4.4: min-s).
fn highest_checkpoint(changes: &[Message]) -> CheckpointCertificate {
    changes
        .iter()
        .filter_map(|m| match &m.payload {
            Payload::ViewChange(change) => Some(&change.checkpoint),
            _ => None,
        })
        .max_by_key(|c| c.height)
        .cloned()
        .unwrap_or(CheckpointCertificate {
            height: 0,
            hash: Hash([0; 32]),
            votes: Vec::new(),
        })
}
