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
//! replica is prepared at h + 1 only on top of the block it prepared at h in the same
//! view (or the applied tip), so a view change can never leave a hole under a block
//! that may have committed. It *accepts* at h + 1 on the block it accepted at h,
//! prepared or not, so the blocks of a pipeline are voted on together.
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

use super::durable::Durable;
use super::message::{CheckpointCertificate, MemberIndex, Message, Payload, PreparedCertificate};
use crate::chain::{
    Block, ChainError, CommitCertificate, CompactRange, Entry, EntryIndex, Hash, Header, Membership,
};

mod inputs;
#[cfg(test)]
mod inputs_tests;
mod normal;
#[cfg(test)]
mod normal_tests;
mod types;
mod view_change;
#[cfg(test)]
mod view_change_tests;

#[cfg(feature = "testing")]
pub use types::Flaws;
pub use types::{
    Config, DropReason, Footprint, Input, NotAMember, Output, Timing, Tip, ViewChangeCause,
    COMMITTED_BLOCK,
};

/// What a build without the `testing` feature has of the deliberate breaks: none.
#[cfg(not(feature = "testing"))]
#[derive(Clone, Copy, Default)]
struct Flaws {
    skip_chaining: bool,
    trust_new_view: bool,
    early_change: bool,
}

/// Lagging checks (one per retransmit interval) with an unmoved tip between probes
/// of a peer's chain.
const PROBE_CHECKS: u32 = 4;

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
    /// Whether the block holds a membership change.
    reconfiguration: bool,
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
    /// A primary restarted with its proposal persisted: the PRE-PREPARE goes out
    /// again once the block is accepted again ([`Replica::say_again`]).
    propose_again: bool,
}

#[derive(Clone, Debug)]
struct Waiting {
    entry: Entry,
    /// When the view-change timer for this entry started.
    since_ms: u64,
    /// When it arrived (the batching delay counts from here).
    arrived_ms: u64,
}

/// A primary's last cut: whether entries come together, and so wait for each other,
/// and how fast they came.
#[derive(Clone, Copy, Debug, Default)]
struct LastCut {
    /// `arrivals` at the cut.
    arrivals: u64,
    /// When it was cut.
    at_ms: u64,
    /// Entries that arrived between the cut before and this one, and in how long.
    gathered: u64,
    span_ms: u64,
}

impl LastCut {
    /// More than one entry arrived between this cut and the one before.
    fn together(&self) -> bool {
        self.gathered > 1
    }

    /// How many entries arrive in `interval_ms` at the rate of the last cut's.
    fn expected_in(&self, interval_ms: u64) -> u64 {
        self.gathered
            .saturating_mul(interval_ms)
            .div_ceil(self.span_ms.max(1))
    }
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
    /// See [`Durable::abstain_through`].
    abstain_through: u64,
    /// VIEW-CHANGE messages by (view, sender): per member at most one for the current
    /// view and its latest for a higher view.
    view_changes: BTreeMap<(u64, MemberIndex), Message>,
    /// The NEW-VIEW of the last view entered, kept while changing views.
    new_view: Option<Message>,
    /// When each member was last answered for a stale VIEW-CHANGE.
    answered: Vec<Option<u64>>,
    view_change_deadline: Option<u64>,
    consecutive_view_changes: u32,
    /// Why this replica last asked for a view, and which.
    view_change_cause: Option<(u64, ViewChangeCause)>,
    pending: HashMap<Hash, Waiting>,
    order: VecDeque<Hash>,
    /// Entries from this replica's own clients not yet sent to every member, in
    /// arrival order.
    unshared: VecDeque<Hash>,
    /// The template being mined: only a block of exactly it (any nonce) is taken.
    mining: Option<Header>,
    mined: Option<Arc<Block>>,
    cut_requested: bool,
    last_cut: LastCut,
    /// When the entries waiting for a cut fall due, as the last look found.
    cut_due_ms: Option<u64>,
    /// Whether the last call left the slots where no step can progress. Entries do
    /// not touch the slots, so a call that only adds entries need not look at them:
    /// under load the primary takes one call per forwarded entry.
    settled: bool,
    /// Entries put in the pool so far, ever.
    arrivals: u64,
    /// After a scan for a block that found too few entries: the view and tip it ran
    /// at, and the count `arrivals` must reach before a full block can wait.
    cut_scan: Option<(u64, u64, u64)>,
    last_retransmit_ms: u64,
    /// The highest height any valid message mentioned, and the tip when last checked.
    seen_height: u64,
    tip_at_last_check: u64,
    /// Lagging checks in a row that found the tip where it was.
    quiet_checks: u32,
    /// Whether a block fetched with its certificate was applied since the last check.
    caught_up_since_check: bool,
    /// The height the last catch-up request asked for blocks after.
    fetching_after: Option<u64>,
    /// When a block fetched with its certificate was last applied.
    last_catch_up_ms: Option<u64>,
    /// Since when the others' checkpoints have shown this replica behind.
    behind_since_ms: Option<u64>,
    drops: BTreeMap<DropReason, u64>,
    /// Entry ids of the blocks applied in this call, which the driver's index learns
    /// only once it performs the outputs: a block validated later in the same call
    /// must still not repeat them.
    applied_now: Vec<Arc<HashSet<Hash>>>,
    /// Headers of the last applied blocks, oldest first, as many as the difficulty
    /// policy reads: like `applied_now`, the driver's index lags by one step.
    recent_applied: VecDeque<Header>,
    out: Vec<Output>,
    /// The membership after the tip: the epoch in force, and a change on its way.
    membership: Arc<Membership>,
    /// When the tip last moved or a view was entered: while the epoch's last blocks
    /// are due, a primary that cuts none is replaced after a timeout from here.
    progress_ms: u64,
    /// The chain's hash (blocks and entries name it; messages are signed under the
    /// epoch's domain).
    chain_hash: Hash,
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

    fn contains_each(&self, ids: &[Hash]) -> Result<Vec<bool>, ChainError> {
        let mut known = self.committed.contains_each(ids)?;
        for (id, known) in ids.iter().zip(&mut known) {
            *known |= self
                .in_flight
                .iter()
                .any(|in_flight| in_flight.contains(id));
        }
        Ok(known)
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
            abstain_through: durable.abstain_through,
            view_changes: BTreeMap::new(),
            new_view: durable.new_view.clone(),
            answered: vec![None; n],
            view_change_deadline: None,
            consecutive_view_changes: 0,
            view_change_cause: None,
            pending: HashMap::new(),
            order: VecDeque::new(),
            unshared: VecDeque::new(),
            mining: None,
            mined: None,
            cut_requested: false,
            last_cut: LastCut::default(),
            cut_due_ms: None,
            settled: false,
            arrivals: 0,
            cut_scan: None,
            last_retransmit_ms: now_ms,
            seen_height: tip.header.height,
            tip_at_last_check: tip.header.height,
            // The first check probes: a restarted replica learns at once how far
            // the others got, even when nothing else is sent.
            quiet_checks: PROBE_CHECKS - 1,
            caught_up_since_check: false,
            fetching_after: None,
            last_catch_up_ms: None,
            behind_since_ms: None,
            drops: BTreeMap::new(),
            applied_now: Vec::new(),
            recent_applied: VecDeque::new(),
            out: Vec::new(),
            membership: Arc::new(Membership::genesis(&config.spec)),
            progress_ms: now_ms,
            chain_hash: config.spec.chain_hash(),
            tip,
            config,
        };
        let low = replica.stable.height;
        let interval = replica.config.params.checkpoint_interval.max(1);
        let mut last_checkpoint = None;
        for (height, hash) in applied {
            if height > low && height <= replica.tip.header.height {
                replica.slots.entry(height).or_default().applied = Some(hash);
                if height.is_multiple_of(interval) {
                    last_checkpoint = last_checkpoint.max(Some((height, hash)));
                }
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
        // What it said in this view before it stopped may never have left (the
        // process died between persisting and sending): said again, and resent
        // until decided. A backup's PREPARE comes back as it accepts its candidate
        // again (above).
        if durable.active && !replica.abstaining() {
            replica.say_again();
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
        // The CHECKPOINT signed before the restart may never have left: without it
        // again, a cluster that needs this vote for its quorum stops at the window.
        if let Some((height, hash)) = last_checkpoint {
            replica.vote_checkpoint(height, hash);
        }
        // A member restored from a snapshot is a checkpoint interval behind or more:
        // it asks for the blocks since at once, not a retransmit interval later.
        if replica.abstaining() {
            replica.fetch_committed();
        }
        replica
    }

    /// Feeds one input; returns what to do, in order.
    pub fn handle(&mut self, input: Input, index: &dyn EntryIndex) -> Vec<Output> {
        // The driver performed the previous call's applies: the index now has them.
        self.applied_now.clear();
        let entries_only = matches!(
            input,
            Input::Entry { .. } | Input::Entries(_) | Input::Clock { .. }
        );
        match input {
            Input::Message(message) => self.on_message(message),
            Input::Tick { now_ms } => self.on_tick(now_ms),
            Input::Clock { now_ms } => self.now_ms = self.now_ms.max(now_ms),
            Input::Entry { entry, forwarded } => self.on_entry(entry, forwarded, index),
            Input::Entries(entries) => {
                for entry in entries {
                    self.on_entry(entry, false, index);
                }
            }
            Input::Cut => self.cut_requested = true,
            Input::Mined(block) => self.on_mined(block),
            Input::Block(block) => self.on_block(block),
            Input::Committed { block, certificate } => self.on_committed(block, certificate, index),
        }
        if entries_only && self.settled {
            #[cfg(any(test, feature = "testing"))]
            self.assert_settled(index);
            self.maybe_propose(index);
        } else {
            self.advance(index);
        }
        std::mem::take(&mut self.out)
    }

    /// The current view.
    pub fn view(&self) -> u64 {
        self.view
    }

    /// The view this replica last asked for and why. A view entered without asking
    /// (a NEW-VIEW arrived first) leaves the last ask, for an older view, in place.
    pub fn view_change_cause(&self) -> Option<(u64, ViewChangeCause)> {
        self.view_change_cause
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

    /// The difficulty the block after the applied tip needs: the policy's verdict, or
    /// the genesis difficulty.
    pub fn next_difficulty(&self, index: &dyn EntryIndex) -> Result<u32, ChainError> {
        self.required_difficulty(&self.tip.header, index)
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
            "tip h{} {} mining {:?} view-change deadline {:?} consecutive {} claims {:?} catching up {} bodies [{}]\n",
            self.tip.header.height,
            short(&self.tip.header.hash()),
            self.mining.map(|template| template.height),
            self.view_change_deadline,
            self.consecutive_view_changes,
            self.claims,
            self.catching_up(),
            self.blocks.keys().map(short).collect::<Vec<_>>().join(" "),
        );
        text
    }

    /// The deliberate breaks this replica runs with: none outside `testing` builds.
    fn flaws(&self) -> Flaws {
        #[cfg(feature = "testing")]
        return self.config.flaws;
        #[cfg(not(feature = "testing"))]
        Flaws::default()
    }

    fn quorum(&self) -> usize {
        self.config.verifier.quorum
    }

    /// Whether this replica may have signed, before it lost its disk, votes at
    /// heights it has not applied yet: it then only follows what the others commit.
    pub fn abstaining(&self) -> bool {
        self.tip.header.height < self.abstain_through
    }

    /// The height this replica abstains up to while [`Replica::abstaining`].
    pub fn abstain_through(&self) -> u64 {
        self.abstain_through
    }

    /// Whether this replica still keeps out of view changes: until a checkpoint
    /// above what it forgot is stable, its VIEW-CHANGE could not show the prepared
    /// certificates it forgot.
    pub fn abstains_from_views(&self) -> bool {
        self.stable.height < self.abstain_through
    }

    fn low(&self) -> u64 {
        self.stable.height
    }

    /// The high watermark: a window above the stable checkpoint, and never past the
    /// last height of this replica's epoch once the change that ends it committed.
    /// (The next epoch's replica starts with that change still pending after its tip:
    /// the cap is not its own.)
    fn high(&self) -> u64 {
        let high = self.low().saturating_add(self.config.window);
        match &self.membership.pending {
            Some(pending) if self.membership.epoch == self.config.epoch => {
                high.min(pending.in_force_from.saturating_sub(1))
            }
            _ => high,
        }
    }

    /// Starts from `membership`, the one after the tip the driver resumes from (the
    /// genesis membership unless the chain changed it).
    pub fn with_membership(mut self, membership: Arc<Membership>) -> Replica {
        self.membership = membership;
        self
    }

    /// The membership after the tip.
    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    /// Whether a change that ends this replica's epoch committed and the epoch's
    /// last blocks are still to be ordered: the primary cuts them, empty if need
    /// be, so that the change comes into force without waiting for clients.
    fn epoch_ending(&self) -> bool {
        self.membership.pending.is_some() && self.membership.epoch == self.config.epoch
    }

    /// The membership of the next epoch once this replica applied its epoch's last
    /// block: the driver then moves to a replica of that epoch (or, if this node has
    /// no vote in it, stops ordering).
    pub fn next_membership(&self) -> Option<Membership> {
        let after_tip = self.tip.header.height + 1;
        let pending = self.membership.pending.as_ref()?;
        let due = if self.flaws().early_change {
            pending.height + 1
        } else {
            pending.in_force_from
        };
        if due != after_tip || self.membership.epoch != self.config.epoch {
            return None;
        }
        let mut next = Membership::clone(&self.membership);
        next.advance_to(pending.in_force_from);
        next.since = after_tip;
        Some(next)
    }

    /// The membership epoch this replica orders.
    pub fn epoch(&self) -> u64 {
        self.config.epoch
    }

    /// The node id of `member` in this replica's membership.
    pub fn node_id(&self, member: MemberIndex) -> Option<Hash> {
        self.config.verifier.node_id(member)
    }

    /// The index of the member whose node id is `id` in this replica's membership.
    pub fn index_of(&self, id: &Hash) -> Option<MemberIndex> {
        self.config.verifier.index_of(id)
    }

    /// The number of voting members, n.
    pub fn members(&self) -> usize {
        self.config.verifier.len()
    }

    fn is_primary(&self) -> bool {
        self.primary() == self.config.me
    }

    /// The hash of the chain this replica runs.
    pub fn chain_hash(&self) -> Hash {
        self.chain_hash
    }

    /// What this replica's epoch signs under (`Verifier::domain`).
    pub fn signing_domain(&self) -> Hash {
        self.config.verifier.domain
    }

    fn sign(&self, payload: Payload) -> Message {
        Message::sign(
            &self.signing_domain(),
            self.config.me,
            &self.config.key,
            payload,
        )
    }

    fn drop_input(&mut self, from: Option<MemberIndex>, kind: &'static str, reason: DropReason) {
        self.drop_for(from, kind, reason, None);
    }

    /// `id` leaves the pool without a block, and the driver is told why.
    fn unpool(&mut self, id: &Hash, why: String) {
        if self.pending.remove(id).is_some() {
            self.out.push(Output::Unpooled { id: *id, why });
        }
    }

    /// An entry the rules refuse in a block of its own leaves the pool, told and
    /// counted.
    fn refuse_pooled(&mut self, id: &Hash, reason: String) {
        let error = ChainError::Policy(reason);
        self.unpool(id, error.to_string());
        self.drop_for(None, "pooled entry", DropReason::InvalidEntry, Some(error));
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
}
