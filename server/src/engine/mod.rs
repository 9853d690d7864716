//! The seam between a node and its engine. A node runs one engine for its whole
//! life, chosen when it is built: [`Alone`] when it is the chain's only member (it
//! cuts, mines and certifies its own blocks), [`Cluster`] when it is one member of
//! several (the PBFT replica's driver), [`Follower`] when it is not a member (it
//! reads and checks the members' committed blocks). All answer the same small set of
//! operations through [`Engine`] (submit, whether an entry is pending, status, cut
//! a block now, run), and honour the same [`NodeSettings`], so neither the node nor
//! the API asks which one it has. What both engines share lives here: the errors
//! they answer with, the receipts handed to waiting clients, the wall clock.

mod alone;
mod cluster;
mod follower;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

pub use alone::Alone;
pub use cluster::{
    observers, peers, Cluster, ClusterError, ClusterSettings, DEFAULT_MIN_BLOCK_INTERVAL_MS,
};
pub use follower::{Follower, SourcesOf, REQUEST_TIMEOUT as FOLLOWER_TIMEOUT};

use crate::chain::merkle::AppendedNodes;
use crate::chain::{ChainError, CommitCertificate, Entry, Hash, Header, Policy, Receipt};
use crate::consensus::MemberIndex;
use crate::net::PeerState;
use crate::plugin_host::{Plugins, Rejection};
use crate::storage::{Store, StoreError};

/// What every engine is tuned with: each means the same alone and in a cluster
/// (README, "ledgerd.toml").
#[derive(Clone, Copy, Debug)]
pub struct NodeSettings {
    /// Most entries per block (capped by the genesis limit).
    pub max_block_entries: usize,
    /// Longest an entry waits for others to join its block.
    pub max_block_delay: Duration,
    /// Most entries waiting to be committed; beyond it submits are refused with 503.
    pub pool_capacity: usize,
    /// Mining threads.
    pub mining_threads: NonZeroUsize,
}

impl NodeSettings {
    /// These settings with `max_block_entries` within 1 and the genesis `limit`.
    pub fn capped(mut self, limit: u32) -> NodeSettings {
        self.max_block_entries = self.max_block_entries.clamp(1, limit as usize);
        self
    }
}

/// Why an entry was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Above the chain's entry size limit.
    #[error("entry data is {size} bytes, the limit is {limit}")]
    TooLarge {
        /// Data size.
        size: usize,
        /// The genesis limit.
        limit: u32,
    },
    /// Refused by validation (a bad signature or key).
    #[error("{0}")]
    Invalid(ChainError),
    /// Refused by a plugin.
    #[error("{0}")]
    Rejected(Rejection),
    /// Already committed or already pending.
    #[error("entry {0} was already submitted")]
    Duplicate(Hash),
    /// The pool is at capacity.
    #[error("{0} entries wait to be committed, the pool's capacity; retry later")]
    PoolFull(usize),
    /// Starting or stopping.
    #[error("the node is not accepting entries now")]
    NotReady,
    /// The consensus thread is behind on its queue of inputs.
    #[error("the node is behind on its work; retry shortly")]
    Busy,
    /// The database failed (a full disk) or is damaged; the reason says which.
    #[error("{0}")]
    Unavailable(String),
    /// A follower could hand the entry to no member; the reasons, member by member.
    #[error("no member took the entry: {0}")]
    NoMember(String),
    /// A follower's member refused the entry (its plugins differ from the follower's).
    #[error("{0}")]
    RefusedByMember(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a client waiting for its entry is told: the receipt once it is committed,
/// or why no block will hold it (the plugins' block rules refuse it there).
pub type Settled = Result<Receipt, String>;

/// The API's error code for an entry that was accepted, then left the pool
/// uncommitted: `GET /v1/entries/{id}` answers 404 with it.
pub const LEFT_POOL: &str = "left_pool";

/// What a client is told of entry `id` that left the pool uncommitted because `why`.
pub fn left_pool_message(id: &Hash, why: &str) -> String {
    format!("entry {id} left the pool uncommitted: {why}")
}

/// How many entries that left the pool uncommitted [`LeftPool`] remembers.
const LEFT_KEPT: usize = 4096;

/// The latest entries that were accepted, then left the pool uncommitted (the
/// plugins' block rules refuse them in any block, or a membership change the
/// membership no longer takes), each with why: a client that polls an entry's id
/// after a 202 learns what became of it, not only that it is unknown.
#[derive(Default)]
pub(crate) struct LeftPool(Mutex<(HashMap<Hash, String>, VecDeque<Hash>)>);

impl LeftPool {
    /// Remembers that `id` left the pool because `why`, forgetting the oldest beyond
    /// [`LEFT_KEPT`].
    pub(crate) fn note(&self, id: Hash, why: &str) {
        let mut left = lock(&self.0);
        let (whys, order) = &mut *left;
        if whys.insert(id, why.to_owned()).is_none() {
            order.push_back(id);
        }
        while order.len() > LEFT_KEPT {
            if let Some(oldest) = order.pop_front() {
                whys.remove(&oldest);
            }
        }
    }

    /// Why `id` left the pool, if it did lately.
    pub(crate) fn why(&self, id: &Hash) -> Option<String> {
        lock(&self.0).0.get(id).cloned()
    }
}

/// Where a waiting client is told how its entry [`Settled`].
pub type Waiter = oneshot::Sender<Settled>;

/// An accepted entry's id, and with `wait` the receiver of how it settles.
pub type Submitted = (Hash, Option<oneshot::Receiver<Settled>>);

/// Why `POST /mine` produced no block.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MineError {
    /// In a cluster only the primary cuts blocks.
    #[error("this node is not the primary of view {view} (member {primary} is); ask it")]
    NotPrimary {
        /// The view.
        view: u64,
        /// Its primary.
        primary: MemberIndex,
    },
    /// The block was built on one that failed to apply, and was dropped with it.
    #[error("block {height} was dropped: its parent failed to apply")]
    ParentFailed {
        /// The dropped block's height.
        height: u64,
    },
    /// Mining stopped because the node is stopping.
    #[error("mining cancelled: the node is stopping")]
    Cancelled,
    /// No nonce met the difficulty (the next block gets a new timestamp).
    #[error("every nonce tried; the next block gets a new timestamp")]
    Exhausted,
    /// The block could not be built or applied; the node's log says more.
    #[error("{0}")]
    Failed(String),
    /// No block was committed in time.
    #[error("no block committed within {0:?}; see /v1/status")]
    Timeout(Duration),
    /// The engine is not running.
    #[error("the node stopped before the block was cut")]
    Stopped,
    /// A follower never cuts blocks.
    #[error("this node is a follower: it cuts no blocks; ask the primary")]
    Follower,
}

/// What the API shows of the engine (`/v1/status`).
#[derive(Clone, Debug)]
pub struct EngineStatus {
    /// The PBFT view (0 alone).
    pub view: u64,
    /// Whether the view was entered (false while views change).
    pub active: bool,
    /// Its primary (this node alone).
    pub primary: MemberIndex,
    /// The stable checkpoint's height, once there is one.
    pub stable_checkpoint: Option<u64>,
    /// On a member that lost its disk and still abstains from voting, the height its
    /// tip must reach first.
    pub abstaining_until: Option<u64>,
    /// On such a member that votes again but still keeps out of view changes, the
    /// height a stable checkpoint must reach first.
    pub view_changes_from: Option<u64>,
    /// On a follower no member has answered for a while: how long.
    pub unheard_for: Option<Duration>,
    /// Entries waiting to be committed.
    pub pending: usize,
    /// The difficulty the next block needs (the plugins' verdict, or genesis').
    pub next_difficulty: u32,
    /// Each member's connection state, by member index (none alone).
    pub peers: Vec<PeerState>,
    /// The settings in force.
    pub settings: NodeSettings,
    /// A cluster primary's blocks in flight before it waits (a member's only).
    pub max_blocks_in_flight: Option<usize>,
    /// A cluster primary's least time between blocks (a member's only).
    pub min_block_interval_ms: Option<u64>,
    /// Why the engine stopped for good, if it did.
    pub failure: Option<EngineFailure>,
    /// Whether the node knows the others are ahead and is fetching what they
    /// committed (a member's replica only).
    pub catching_up: bool,
    /// On a follower (a learner among them): how many blocks the member it reads
    /// from is ahead of it, as last asked; none until a member answered.
    pub behind: Option<u64>,
    /// On a follower: the member it reads from now (its client API).
    pub reads_from: Option<String>,
    /// Why this node refuses the block after its tip that a quorum of members
    /// committed, until it applies one: its rules (plugins) differ from theirs.
    pub refused_committed: Option<String>,
}

/// Why an engine stopped for good: restarting the process is what helps.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineFailure {
    /// Its thread panicked, with this message.
    #[error("the consensus driver panicked: {0}")]
    Panicked(String),
    /// A membership change removed this node: it orders nothing more (its process
    /// lives on, serving what it holds).
    #[error(
        "a membership change removed this node in epoch {epoch} (from height {since}); it \
         no longer votes: run it as a follower (`follower = true`) or stop it"
    )]
    Removed {
        /// The epoch that no longer has it.
        epoch: u64,
        /// Its first height.
        since: u64,
    },
}

impl EngineFailure {
    /// Whether the engine's thread died (a restart might help), rather than stopped
    /// by design.
    pub fn is_fatal(&self) -> bool {
        matches!(self, EngineFailure::Panicked(_))
    }
}

/// The engine a node runs.
pub enum Engine {
    /// The only member: the node cuts, mines and certifies its own blocks.
    Alone(Arc<Alone>),
    /// One member of several: the PBFT replica's driver.
    Cluster(Cluster),
    /// Not a member: it follows the chain the members commit.
    Follower(Arc<Follower>),
}

impl Engine {
    /// Checks `entry` and takes it; with `wait`, also returns a receiver told when the
    /// entry commits. `Ok` means the entry is pending and will not be dropped while
    /// the engine runs, unless the plugins' block rules refuse it in any block (then
    /// [`Engine::left_pool`] says why).
    pub async fn submit(&self, entry: Entry, wait: bool) -> Result<Submitted, SubmitError> {
        match self {
            Engine::Alone(alone) => alone.submit(entry, wait).await,
            Engine::Cluster(cluster) => cluster.submit(entry, wait).await,
            Engine::Follower(follower) => follower.submit(entry, wait).await,
        }
    }

    /// Whether `id` waits here to be committed.
    pub fn is_pending(&self, id: &Hash) -> bool {
        match self {
            Engine::Alone(alone) => alone.is_pending(id),
            Engine::Cluster(cluster) => cluster.is_pending(id),
            Engine::Follower(follower) => follower.is_pending(id),
        }
    }

    /// Why `id`, accepted here lately, left the pool uncommitted, if it did.
    pub fn left_pool(&self, id: &Hash) -> Option<String> {
        match self {
            Engine::Alone(alone) => alone.left_pool(id),
            Engine::Cluster(cluster) => cluster.left_pool(id),
            Engine::Follower(follower) => follower.left_pool(id),
        }
    }

    /// The engine's state.
    pub fn status(&self) -> EngineStatus {
        match self {
            Engine::Alone(alone) => alone.status(),
            Engine::Cluster(cluster) => cluster.status(),
            Engine::Follower(follower) => follower.status(),
        }
    }

    /// Why the engine stopped, if it did; cheap enough for every request.
    pub fn failure(&self) -> Option<EngineFailure> {
        match self {
            Engine::Alone(_) | Engine::Follower(_) => None,
            Engine::Cluster(cluster) => cluster.failure(),
        }
    }

    /// Asks for a block now, even an empty one; resolves once one is applied.
    pub fn cut(&self) -> oneshot::Receiver<Result<Header, MineError>> {
        match self {
            Engine::Alone(alone) => alone.cut(),
            Engine::Cluster(cluster) => cluster.cut(),
            Engine::Follower(follower) => follower.cut(),
        }
    }

    /// Runs until `shutdown` resolves, then stops after the step in hand.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        match self {
            Engine::Alone(alone) => Arc::clone(alone).run(shutdown).await,
            Engine::Cluster(cluster) => cluster.run(shutdown).await,
            Engine::Follower(follower) => Arc::clone(follower).run(shutdown).await,
        }
    }
}

/// Checks a submitted entry as every member will (its signature and size, the
/// plugins' entry rules) and that it is not committed yet; its id.
pub(crate) async fn check_entry(
    store: &Arc<Store>,
    plugins: &Arc<Plugins>,
    entry: &Entry,
) -> Result<Hash, SubmitError> {
    let id = entry.id();
    // Hashing and at most one signature: cheap enough for an async worker.
    let limit = store.spec().params.max_entry_bytes;
    entry
        .verify(&store.chain_hash(), limit)
        .map_err(SubmitError::Invalid)?;
    // The common case needs no thread hand-off, whose wake-ups cost an API member
    // under waiting clients more than the check (benches/README.md, "2026-12-03,
    // evening"): no plugin to call, which may block, and an id the in-memory map
    // rules out.
    if !plugins.judges_entries() && store.surely_uncommitted(&id) {
        return Ok(id);
    }
    let (store, plugins, entry) = (Arc::clone(store), Arc::clone(plugins), entry.clone());
    let committed = blocking(move || {
        if let Err(rejection) = plugins.validate_entry(&entry) {
            return Ok(Err(SubmitError::Rejected(rejection)));
        }
        Ok(Ok(store.committed(&[id])?))
    })
    .await??;
    if committed.first().copied().unwrap_or(false) {
        return Err(SubmitError::Duplicate(id));
    }
    Ok(id)
}

/// The difficulty of the block after `tip` under `policy`, reading the headers it
/// wants from the store.
pub(crate) fn required_difficulty(
    store: &Store,
    policy: &dyn Policy,
    tip: &Header,
) -> Result<u32, StoreError> {
    let genesis = store.spec().difficulty;
    let window = policy.difficulty_window() as u64;
    if window == 0 {
        return Ok(genesis);
    }
    let first = (tip.height + 1).saturating_sub(window);
    let mut recent = Vec::with_capacity(window as usize);
    for height in first..tip.height {
        let header = store
            .header(height)?
            .ok_or_else(|| StoreError::Corrupt(format!("header {height} missing below the tip")))?;
        recent.push(header);
    }
    recent.push(*tip);
    let required = policy
        .required_difficulty(&recent)
        .map_err(|reason| StoreError::from(ChainError::Policy(reason)))?;
    Ok(required.unwrap_or(genesis))
}

/// Runs blocking store work off the async workers; a task that panicked is a failed
/// store call.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(StoreError::Failed(format!("store task: {error}"))))
}

/// The wall clock, ms since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Locks `mutex`, also after a panic elsewhere: the engines' mutexes guard state
/// changed in single statements, so a panicking holder leaves nothing half-done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Gives each waiter `(entry id, log index, senders)` for an entry of the block with
/// `header` its receipt, proved from `nodes` (no store read).
pub(crate) fn hand_out_receipts(
    header: &Header,
    certificate: &CommitCertificate,
    nodes: &AppendedNodes,
    waiting: impl IntoIterator<Item = (Hash, u64, Vec<Waiter>)>,
) {
    for (entry_id, log_index, senders) in waiting {
        let inclusion_proof = match nodes.inclusion_proof(log_index) {
            Ok(proof) => proof,
            // Cannot happen for an entry of this block; its waiters see the channel
            // close and can read the receipt with GET /v1/entries/{id}.
            Err(error) => {
                tracing::error!(%error, %entry_id, "building a receipt failed");
                continue;
            }
        };
        let receipt = Receipt {
            entry_id,
            log_index,
            header: *header,
            inclusion_proof,
            certificate: certificate.clone(),
        };
        for sender in senders {
            let _ = sender.send(Ok(receipt.clone()));
        }
    }
}

/// [`hand_out_receipts`] on a blocking thread; the caller does not wait for it.
pub(crate) fn send_receipts(
    header: Header,
    certificate: CommitCertificate,
    nodes: AppendedNodes,
    waiting: Vec<(Hash, u64, Vec<Waiter>)>,
) {
    tokio::task::spawn_blocking(move || {
        hand_out_receipts(&header, &certificate, &nodes, waiting);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_left_pool_keeps_the_latest_whys() {
        let left = LeftPool::default();
        let id = |i: usize| Hash::digest(&i.to_be_bytes());
        for i in 0..=LEFT_KEPT {
            left.note(id(i), &format!("reason {i}"));
        }
        // Noted again, the first stays forgotten: one id, one place in the order.
        left.note(id(1), "again");
        assert_eq!(left.why(&id(0)), None);
        assert_eq!(left.why(&id(1)).as_deref(), Some("again"));
        let last = format!("reason {LEFT_KEPT}");
        assert_eq!(left.why(&id(LEFT_KEPT)), Some(last));
        assert_eq!(lock(&left.0).1.len(), LEFT_KEPT);
    }
}
