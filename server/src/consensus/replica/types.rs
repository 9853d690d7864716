//! What a replica is configured with, what it is fed and what it asks for: the
//! types a driver and the simulator speak to it in.

use std::sync::Arc;

use ed25519_dalek::SigningKey;

use super::super::durable::Record;
use super::super::message::{MemberIndex, Message, Verifier};
use crate::chain::{
    Block, ChainError, ChainParams, ChainSpec, CommitCertificate, CompactRange, Entry, Hash,
    Header, Members, Membership, Policy,
};

/// Timers of one replica, in milliseconds of the time its inputs carry (ticks, and
/// the clock between them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Longest the primary holds entries that come together for others to join
    /// them, from the oldest one's arrival.
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
/// Only in builds with the `testing` feature.
#[cfg(feature = "testing")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flaws {
    /// Count 2f matching votes as a quorum.
    pub weak_quorum: bool,
    /// Count 2f + 1 matching votes as a quorum at every n, as PBFT's paper does for
    /// n = 3f + 1: at n = 5 two such quorums meet in one member, at n = 6 in none.
    pub classic_quorum: bool,
    /// Be prepared at h + 1 while not prepared at h (the chaining rule).
    pub skip_chaining: bool,
    /// Take a NEW-VIEW's re-proposals as given instead of recomputing them.
    pub trust_new_view: bool,
    /// Put a membership change in force at the block after the one that holds it,
    /// not after the next checkpoint.
    pub early_change: bool,
}

#[cfg(feature = "testing")]
impl Flaws {
    /// The quorum a replica with these flaws counts with for `verifier`'s members.
    pub fn quorum(&self, verifier: &Verifier) -> usize {
        let f = verifier.max_faulty();
        if self.weak_quorum {
            2 * f
        } else if self.classic_quorum {
            2 * f + 1
        } else {
            verifier.quorum()
        }
    }
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
    /// Entries a replica holds while they wait to be committed: beyond it a client's
    /// entry is refused (`pool_capacity`).
    pub max_pending: usize,
    /// Most entries the primary puts in a block (`max_block_entries`, at most the
    /// genesis limit, which is what it defaults to).
    pub max_block_entries: usize,
    /// Blocks of its own the primary keeps in flight (proposed in this view and not
    /// yet prepared here) before it waits for one to prepare rather than cut at
    /// `max_block_delay` (a full block is cut regardless). Every block costs each
    /// member a proof of work's share, signatures and writes whatever it holds, so
    /// where CPU is the limit fewer, larger blocks commit more; counting only
    /// unprepared blocks lets the next one be mined while a prepared one commits.
    /// Unbounded by default; a node sets its `max_blocks_in_flight`.
    pub max_blocks_in_flight: usize,
    /// Least time between two of the primary's cuts while entries come together,
    /// unless as many have come as arrived in that long before the last cut (a
    /// closed loop of waiting clients is back). The cut otherwise follows the
    /// last block's prepare, so at any rate the blocks come as fast as the
    /// members can vote, and every block costs each member its proof of work's
    /// share, signatures and writes however few entries it holds. 0: no such
    /// spacing (a node sets its `min_block_interval_ms`).
    pub min_block_interval_ms: u64,
    /// Committed blocks a peer sends per catch-up request: once that many arrived, a
    /// lagging replica asks for the next batch at once instead of at its next check.
    pub catch_up_batch: u64,
    /// The chain (its admins and checkpoint interval decide which membership changes
    /// a block may hold).
    pub spec: Arc<ChainSpec>,
    /// The membership epoch this replica orders: it accepts and cuts no block at a
    /// height another epoch orders.
    pub epoch: u64,
    /// Whether the replica orders membership changes: only under a driver that
    /// switches to the next epoch's replica (docs/ARCHITECTURE.md, "Membership
    /// changes"), as a replica orders nothing past its epoch. Off by default.
    pub reconfigurations: bool,
    /// Deliberate breaks (tests only).
    #[cfg(feature = "testing")]
    pub flaws: Flaws,
}

/// Why a replica cannot be configured: its key is not one of the chain's members.
#[derive(Debug, thiserror::Error)]
#[error("this node's key is not a member of the chain")]
pub struct NotAMember;

impl Config {
    /// The configuration of the member holding `key` in `spec`'s chain.
    pub fn new(spec: &ChainSpec, key: SigningKey, timing: Timing) -> Result<Config, NotAMember> {
        let genesis = spec.genesis_block().header;
        Config::in_epoch(spec, &Membership::genesis(spec), &genesis, key, timing)
    }

    /// The configuration of the member holding `key` in `membership`, whose ordering
    /// starts above `base` (genesis, or the last block of the epoch before).
    pub fn in_epoch(
        spec: &ChainSpec,
        membership: &Membership,
        base: &Header,
        key: SigningKey,
        timing: Timing,
    ) -> Result<Config, NotAMember> {
        Config::template(spec, key, timing).next_epoch(membership, base)
    }

    /// The settings of the node holding `key` in `spec`'s chain, in no membership yet:
    /// [`Config::next_epoch`] places it in one (a driver keeps it to rebuild its
    /// replica in whatever epoch its store is in).
    pub fn template(spec: &ChainSpec, key: SigningKey, timing: Timing) -> Config {
        let genesis = Verifier::new(
            spec.chain_hash(),
            spec.genesis_block().hash(),
            &spec.members,
        );
        Config {
            verifier: genesis,
            members: spec.members.clone(),
            me: 0,
            key,
            params: spec.params,
            difficulty: spec.difficulty,
            policy: None,
            window: Config::window_of(spec),
            timing,
            max_pending: 100_000,
            max_block_entries: spec.params.max_block_entries as usize,
            max_blocks_in_flight: usize::MAX,
            min_block_interval_ms: 0,
            catch_up_batch: 32,
            spec: Arc::new(spec.clone()),
            epoch: 0,
            reconfigurations: false,
            #[cfg(feature = "testing")]
            flaws: Flaws::default(),
        }
    }

    /// The configuration of this node in `membership`, whose ordering starts above
    /// `base` (genesis, or the last block of the epoch before), with these settings;
    /// `NotAMember` if the node has no vote in it.
    pub fn next_epoch(&self, membership: &Membership, base: &Header) -> Result<Config, NotAMember> {
        let mut config = self.clone();
        config.enter(membership, base)?;
        Ok(config)
    }

    /// Takes this node's place in `membership`, whose ordering starts above `base`.
    fn enter(&mut self, membership: &Membership, base: &Header) -> Result<(), NotAMember> {
        let public = self.key.verifying_key();
        let me = membership
            .members
            .as_slice()
            .iter()
            .position(|member| member.public_key == public)
            .ok_or(NotAMember)?;
        self.verifier = self.verifier.for_epoch(
            &self.spec.chain_hash(),
            membership,
            base.height,
            base.hash(),
        );
        self.members = membership.members.clone();
        // Genesis caps the member count well below u16::MAX.
        self.me = me as MemberIndex;
        self.epoch = membership.epoch;
        #[cfg(feature = "testing")]
        {
            self.verifier.quorum = self.flaws.quorum(&self.verifier);
        }
        Ok(())
    }

    /// The watermark window of `spec`'s replicas: two checkpoint intervals, so one
    /// checkpoint can become stable while the next interval fills.
    pub fn window_of(spec: &ChainSpec) -> u64 {
        spec.params.checkpoint_interval.saturating_mul(2).max(2)
    }

    /// The height up to which a member of `members` (those in force now) that lost
    /// its disk may have signed votes it no longer knows of, given `seen`, the
    /// highest height the others show certified (committed, or prepared above their
    /// tip): its votes lay within a window above the checkpoint it last had stable,
    /// which a quorum had applied, so which is at most `seen`.
    pub fn abstain_bound(spec: &ChainSpec, members: &Members, seen: u64) -> u64 {
        // Nothing committed anywhere yet (a new chain: every member starts empty) leaves
        // nothing to contradict. A block committed above every stable checkpoint had a
        // quorum prepare it, and one of the answers comes from an honest member of
        // that quorum, which still holds the block or its prepared certificate (only
        // a stable checkpoint lets go of one, and that is covered as above), so it
        // shows a height. At n = 2 the other member alone is no quorum.
        if seen == 0 || members.len().saturating_sub(1) < members.quorum() {
            return 0;
        }
        seen.saturating_add(Config::window_of(spec))
    }

    /// How many of the other `members` a member that lost its disk must hear from
    /// (each showing its certified height, or that it holds nothing) before
    /// [`Config::abstain_bound`] of the highest is safe: a quorum applied the
    /// checkpoint it last had stable and, counting it as one of the f faults,
    /// q − 1 − (f − 1) honest others did, so this many answers include one of them
    /// (and likewise one of the quorum that prepared any block committed since).
    /// A checkpoint it had stable in an earlier membership lies below the blocks
    /// every honest member of this one applied to enter it.
    pub fn abstain_answers(members: &Members) -> usize {
        let n = members.len();
        let f = members.max_faulty();
        (n + 1 + f.saturating_sub(1))
            .saturating_sub(members.quorum())
            .clamp(1, n.saturating_sub(1).max(1))
    }

    /// Validates and mines under `policy` (the node's plugins).
    pub fn with_policy(mut self, policy: Arc<dyn Policy>) -> Config {
        self.policy = Some(policy);
        self
    }

    /// Applies `flaws` (tests only).
    #[cfg(feature = "testing")]
    pub fn with_flaws(mut self, flaws: Flaws) -> Config {
        self.verifier.quorum = flaws.quorum(&self.verifier);
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
    /// The current time between ticks: it dates arrivals and lets a block due by it
    /// be cut; the timers wait for the next tick.
    Clock {
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
    /// Entries this replica's clients submitted, taken in one step: each as an
    /// [`Input::Entry`] that is not forwarded, then one pass over the state instead
    /// of one per entry.
    Entries(Vec<Entry>),
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
    /// An entry left the pool without a block (no block the rules take can hold
    /// it, or a change that no longer fits): whoever waits for it is told why.
    Unpooled {
        /// The entry's id.
        id: Hash,
        /// Why, for the client.
        why: String,
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

/// Why a replica asked for a view above its own: told to the operator when it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewChangeCause {
    /// An entry waited a whole view-change timeout without committing.
    EntryWaited {
        /// How long the oldest entry had waited, ms: since it arrived, or since this
        /// view began or this replica last caught up, whichever came last.
        waited_ms: u64,
        /// Entries waiting at that moment.
        pending: usize,
    },
    /// The blocks that close a membership epoch made no progress for a timeout.
    EpochStalled,
    /// The new view's primary sent no NEW-VIEW in time.
    NewViewLate,
    /// f + 1 members asked for a higher view, so at least one honest member did.
    Followed,
    /// The primary signed two pre-prepares for one height.
    Equivocation,
    /// The new primary's NEW-VIEW did not follow from the view changes it carried.
    InvalidNewView,
}

impl std::fmt::Display for ViewChangeCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ViewChangeCause::EntryWaited { waited_ms, pending } => write!(
                f,
                "an entry waited {waited_ms} ms in this view without committing ({pending} \
                 entries waiting)"
            ),
            ViewChangeCause::EpochStalled => {
                f.write_str("the blocks closing the membership epoch stalled")
            }
            ViewChangeCause::NewViewLate => f.write_str("the new primary sent no NEW-VIEW in time"),
            ViewChangeCause::Followed => f.write_str("f + 1 members asked for a higher view"),
            ViewChangeCause::Equivocation => {
                f.write_str("the primary signed two pre-prepares for one height")
            }
            ViewChangeCause::InvalidNewView => {
                f.write_str("the new primary's NEW-VIEW did not follow from its view changes")
            }
        }
    }
}

/// The `kind` of a [`Output::Dropped`] committed block, one a quorum certified:
/// refused as [`DropReason::InvalidBlock`], this member's rules differ from theirs.
pub const COMMITTED_BLOCK: &str = "committed block";

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
