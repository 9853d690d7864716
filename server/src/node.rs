//! The node: what the API talks to, in front of one of two engines.
//!
//! Alone (one member): a block is cut from the pool (at `max_block_entries`, after
//! `max_block_delay` from its first entry, or on `POST /mine`), mined on blocking
//! threads, certified by this node's own COMMIT signature (n = 1, quorum 1), applied in
//! one durable write transaction, and then the entries' waiters are told. The next
//! block is built on the one being applied and mined meanwhile, so mining and the
//! disk overlap; it applies only after its parent has.
//!
//! In a cluster, submits go to the PBFT replica's driver ([`Cluster`]), which forwards
//! them to the primary and answers waiters once their block is committed and applied
//! here; the pool and the producer are not used.
//!
//! Every store call and the miner run on blocking threads, never on async workers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use tokio::sync::{oneshot, Notify};

use crate::chain::merkle::{leaf_hash, AppendedNodes, CompactRange};
use crate::chain::{
    commit_digest, Block, ChainError, CommitCertificate, CommitSignature, Entry, Hash, Header,
    Policy, Receipt,
};
use crate::cluster::{Cluster, ClusterError};
use crate::metrics::Metrics;
use crate::plugin_host::{Plugins, Rejection};
use crate::pow::{self, Outcome};
use crate::storage::{Store, StoreError};

/// How long `POST /mine` in a cluster waits for the block.
const CUT_WAIT: Duration = Duration::from_secs(30);
/// How often an idle producer looks at the store, so a failure a read noticed is
/// recovered from without waiting for a submit (submits are refused meanwhile).
const IDLE_LOOK: Duration = Duration::from_secs(1);

/// Tuning of the pool and the block producer.
#[derive(Clone, Copy, Debug)]
pub struct NodeSettings {
    /// Most entries per block (capped by the genesis limit).
    pub max_block_entries: usize,
    /// Longest the first pending entry waits for others.
    pub max_block_delay: Duration,
    /// Most entries waiting; beyond it submits are refused with 503.
    pub pool_capacity: usize,
    /// Mining threads.
    pub mining_threads: NonZeroUsize,
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
    #[error("the pool holds {0} entries, its capacity; retry later")]
    PoolFull(usize),
    /// Starting or stopping.
    #[error("the node is not accepting entries now")]
    NotReady,
    /// The database failed (a full disk) or is damaged; the reason says which.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The outcome of a block production run, for `POST /mine`.
pub type MineResult = Result<Header, String>;

/// An accepted entry's id, and with `wait` the receiver of its receipt once committed.
pub type Submitted = (Hash, Option<oneshot::Receiver<Receipt>>);

/// A submit on its way to the admission thread.
struct Admission {
    entry: Entry,
    wait: bool,
    reply: oneshot::Sender<Result<Submitted, SubmitError>>,
}

#[derive(Clone)]
struct Pending {
    id: Hash,
    entry: Entry,
    accepted_at: Instant,
}

/// A batch taken from the pool for one block, with the `POST /mine` calls it answers.
struct Cut {
    batch: Vec<Pending>,
    ids: Vec<Hash>,
    requests: Vec<oneshot::Sender<MineResult>>,
}

/// The block the next one builds on, and the log after it.
#[derive(Clone)]
struct Parent {
    header: Header,
    log: CompactRange,
}

/// A mined block, the log after it, and the pool entries it holds.
struct Mined {
    block: Block,
    log: CompactRange,
    batch: Vec<Pending>,
}

/// Why a block was not produced, and the entries that go back to the pool: those
/// of a block lost to a database failure wait for the database; otherwise none.
struct Unproduced {
    reason: String,
    requeue: Vec<Pending>,
}

/// An applied block's header and certificate, the log nodes that prove its entries,
/// and its entries with when they were accepted.
struct Applied {
    header: Header,
    certificate: CommitCertificate,
    nodes: AppendedNodes,
    committed: Vec<(Hash, Instant)>,
}

/// A block being applied on its own task.
struct Applying {
    parent: Parent,
    /// Whether it was applied.
    task: tokio::task::JoinHandle<bool>,
}

impl Applying {
    /// Waits for the block; true once it is applied.
    async fn finished(self) -> bool {
        match self.task.await {
            Ok(applied) => applied,
            Err(error) => {
                tracing::error!(%error, "the task applying a block failed");
                false
            }
        }
    }
}

#[derive(Default)]
struct Pool {
    /// Entries waiting for a block, oldest first.
    queue: VecDeque<Pending>,
    /// Ids queued or in the block being produced: a second submit is a duplicate.
    ids: HashSet<Hash>,
    /// Clients waiting for an entry's commit.
    waiters: HashMap<Hash, Vec<oneshot::Sender<Receipt>>>,
    /// When the oldest queued entry arrived.
    first_pending_at: Option<Instant>,
    /// `POST /mine` callers waiting for the next block.
    mine_requests: Vec<oneshot::Sender<MineResult>>,
    /// Bumped whenever applied ids leave `ids`.
    generation: u64,
}

/// One node: its store, its key, its pool and its metrics.
pub struct Node {
    store: Arc<Store>,
    key: SigningKey,
    node_id: Hash,
    settings: NodeSettings,
    pool: Mutex<Pool>,
    wake: Notify,
    ready: AtomicBool,
    stopping: AtomicBool,
    metrics: Arc<Metrics>,
    /// The admission queue, bounded like the pool: a burst beyond it is a 503.
    admission_tx: SyncSender<Admission>,
    /// Its receiving end, until [`Node::run`] hands it to the admission thread.
    admission_rx: Mutex<Option<Receiver<Admission>>>,
    /// The admission thread, joined when the producer stops so the store is released.
    admission_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The replica's driver, when this node is one member of several.
    cluster: std::sync::OnceLock<Cluster>,
    /// Validation plugins, when the config lists any.
    plugins: std::sync::OnceLock<Arc<Plugins>>,
    /// Spaces the producer's attempts to reopen a failed database.
    recovery: Mutex<crate::throttle::Backoff>,
}

pub(crate) fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Locks `mutex`, also after a panic elsewhere: the node's mutexes guard state that is
/// changed in single statements, so a panicking holder leaves nothing half-done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs blocking store work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(StoreError::Failed(format!("store task: {error}"))))
}

impl Node {
    /// A node over `store`, signing with `key`. The key must be a member.
    pub fn new(store: Arc<Store>, key: SigningKey, mut settings: NodeSettings) -> Node {
        let limit = store.spec().params.max_block_entries as usize;
        settings.max_block_entries = settings.max_block_entries.clamp(1, limit);
        let node_id = Hash::digest(key.verifying_key().as_bytes());
        let (sender, receiver) = sync_channel(settings.pool_capacity);
        Node {
            admission_tx: sender,
            admission_rx: Mutex::new(Some(receiver)),
            admission_thread: Mutex::new(None),
            cluster: std::sync::OnceLock::new(),
            plugins: std::sync::OnceLock::new(),
            store,
            key,
            node_id,
            settings,
            pool: Mutex::new(Pool::default()),
            wake: Notify::new(),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            metrics: Arc::default(),
            recovery: Mutex::new(crate::storage::recovery_backoff()),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// SHA-256 of this node's public key.
    pub fn node_id(&self) -> Hash {
        self.node_id
    }

    /// Gives the node its plugins, before it serves; a second call is ignored.
    pub fn attach_plugins(&self, plugins: Arc<Plugins>) {
        let _ = self.plugins.set(plugins);
    }

    /// The plugins (none unless attached).
    pub fn plugins(&self) -> &Plugins {
        static NONE: std::sync::OnceLock<Plugins> = std::sync::OnceLock::new();
        match self.plugins.get() {
            Some(plugins) => plugins,
            None => NONE.get_or_init(Plugins::default),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether the node serves submits (recovered, producing blocks or running
    /// consensus, its database healthy).
    pub fn is_ready(&self) -> bool {
        self.unready_reason().is_none()
    }

    /// Whether the node's engine runs: not stopping, and (in a cluster) the consensus
    /// driver has not died. A node in a database failure or with damage found is
    /// alive (it is reopening the database, or waiting for an operator) but not
    /// ready: restarting it would not help.
    pub fn is_alive(&self) -> bool {
        !self.stopping.load(Ordering::Relaxed)
            && self
                .cluster()
                .is_none_or(|cluster| cluster.status().failure.is_none())
    }

    /// Why the node is not ready, if it is not: starting or stopping, a database
    /// in an I/O failure (until the node reopens it), damage found in the database
    /// (until an operator repairs it), or a consensus driver that stopped.
    pub fn unready_reason(&self) -> Option<String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Some("starting up".into());
        }
        if self.stopping.load(Ordering::Relaxed) {
            return Some("shutting down".into());
        }
        if let Some(failure) = self.store.failure() {
            return Some(format!(
                "the database failed ({failure}); the node reopens it once writes succeed again"
            ));
        }
        if let Some(damage) = self.store.damage() {
            return Some(format!(
                "the database is damaged ({damage}); see the node's log and the README, \
                 \"Recovering a damaged database\""
            ));
        }
        let failed = self.cluster().and_then(|cluster| cluster.status().failure);
        failed.map(|failure| format!("consensus stopped: {failure}"))
    }

    /// Makes `cluster` this node's engine: submits go to PBFT from now on. Call
    /// before [`Node::run`]; a second call is ignored.
    pub fn attach_cluster(&self, cluster: Cluster) {
        let _ = self.cluster.set(cluster);
    }

    /// The replica's driver, in a cluster.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    /// Entries waiting for a block.
    pub fn pool_size(&self) -> usize {
        if let Some(cluster) = self.cluster() {
            return cluster.status().pending;
        }
        self.lock_pool().queue.len()
    }

    /// Whether `id` is queued or in the block being produced.
    pub fn is_pending(&self, id: &Hash) -> bool {
        if let Some(cluster) = self.cluster() {
            return cluster.is_pending(id);
        }
        self.lock_pool().ids.contains(id)
    }

    fn lock_pool(&self) -> MutexGuard<'_, Pool> {
        lock(&self.pool)
    }

    /// Validates `entry` and queues it. With `wait`, also returns a receiver told when
    /// the entry commits. The work is done by the admission thread (see [`Admission`]).
    pub async fn submit(&self, entry: Entry, wait: bool) -> Result<Submitted, SubmitError> {
        if let Some(reason) = self.unready_reason() {
            // An entry accepted now could not be committed: say why, never 202.
            if self.store.failure().is_some() || self.store.damage().is_some() {
                return Err(SubmitError::Unavailable(reason));
            }
            return Err(SubmitError::NotReady);
        }
        let limit = self.store.spec().params.max_entry_bytes;
        if entry.data.len() > limit as usize {
            return Err(SubmitError::TooLarge {
                size: entry.data.len(),
                limit,
            });
        }
        if let Some(cluster) = self.cluster() {
            return self.submit_to_cluster(cluster, entry, wait).await;
        }
        let (reply, answer) = oneshot::channel();
        match self.admission_tx.try_send(Admission { entry, wait, reply }) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                return Err(SubmitError::PoolFull(self.settings.pool_capacity))
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                return Err(SubmitError::NotReady)
            }
        }
        answer.await.unwrap_or(Err(SubmitError::NotReady))
    }

    /// A submit in a cluster: checked here as the admission thread would, then handed
    /// to the replica, which forwards it to the primary.
    async fn submit_to_cluster(
        &self,
        cluster: &Cluster,
        entry: Entry,
        wait: bool,
    ) -> Result<Submitted, SubmitError> {
        let id = entry.id();
        let store = Arc::clone(&self.store);
        let limit = store.spec().params.max_entry_bytes;
        let check = entry.clone();
        let plugins = self.plugins.get().cloned();
        let committed = blocking(move || {
            if let Err(error) = check.verify(&store.chain_hash(), limit) {
                return Ok(Err(SubmitError::Invalid(error)));
            }
            if let Some(Err(rejection)) = plugins.map(|p| p.validate_entry(&check)) {
                return Ok(Err(SubmitError::Rejected(rejection)));
            }
            Ok(Ok(store.committed(&[id])?))
        })
        .await??;
        if committed.first().copied().unwrap_or(false) || cluster.is_pending(&id) {
            return Err(SubmitError::Duplicate(id));
        }
        let receiver = cluster.submit(entry, wait).map_err(|error| match error {
            ClusterError::Busy => SubmitError::PoolFull(self.settings.pool_capacity),
            _ => SubmitError::NotReady,
        })?;
        self.metrics
            .entries_accepted
            .fetch_add(1, Ordering::Relaxed);
        Ok((id, receiver))
    }

    /// Which of `ids` are committed, and the pool lock, taken so that no id can move
    /// from pending to committed unseen in between: the store is read without the
    /// lock, and read again if a block was applied meanwhile.
    fn committed_under_pool_lock(
        &self,
        ids: &[Hash],
    ) -> Result<(Vec<bool>, MutexGuard<'_, Pool>), StoreError> {
        loop {
            let generation = self.lock_pool().generation;
            let committed = self.store.committed(ids)?;
            let pool = self.lock_pool();
            if pool.generation == generation {
                return Ok((committed, pool));
            }
        }
    }

    /// The admission thread: takes submits in batches, verifies them, checks them
    /// against the store in one read transaction per batch and against the pool under
    /// one lock, queues the new ones and answers each. One hot thread instead of a
    /// blocking task per submit: under load it never parks, so a submit costs no thread
    /// wake-ups, and redb is still only read off the async workers.
    fn admit(self: Arc<Self>, queue: Receiver<Admission>) {
        const BATCH: usize = 1024;
        let chain_hash = self.store.chain_hash();
        let limit = self.store.spec().params.max_entry_bytes;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            match queue.recv_timeout(Duration::from_millis(100)) {
                Ok(first) => batch.push(first),
                Err(RecvTimeoutError::Timeout) if self.stopping.load(Ordering::Relaxed) => break,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            // Verify each entry on its own; only valid ones reach the store lookup.
            let mut checked = Vec::with_capacity(batch.len());
            for admission in batch.drain(..) {
                let verdict = match admission.entry.verify(&chain_hash, limit) {
                    Ok(()) => self
                        .plugins()
                        .validate_entry(&admission.entry)
                        .map_err(SubmitError::Rejected),
                    Err(error) => Err(SubmitError::Invalid(error)),
                };
                match verdict {
                    Ok(()) => checked.push((admission.entry.id(), admission)),
                    Err(error) => {
                        let _ = admission.reply.send(Err(error));
                    }
                }
            }
            let ids: Vec<Hash> = checked.iter().map(|(id, _)| *id).collect();
            let (committed, mut pool) = match self.committed_under_pool_lock(&ids) {
                Ok(found) => found,
                Err(error) => {
                    tracing::error!(%error, "admission: entry index lookup failed");
                    for (_, admission) in checked {
                        let _ = admission
                            .reply
                            .send(Err(SubmitError::Store(StoreError::Failed(
                                "entry index lookup; see the node's log".into(),
                            ))));
                    }
                    continue;
                }
            };
            let mut answers = Vec::with_capacity(checked.len());
            let mut accepted = 0;
            for ((id, admission), committed) in checked.into_iter().zip(committed) {
                let answer = if committed || pool.ids.contains(&id) {
                    Err(SubmitError::Duplicate(id))
                } else if pool.queue.len() >= self.settings.pool_capacity {
                    Err(SubmitError::PoolFull(pool.queue.len()))
                } else {
                    pool.ids.insert(id);
                    let accepted_at = Instant::now();
                    pool.first_pending_at.get_or_insert(accepted_at);
                    pool.queue.push_back(Pending {
                        id,
                        entry: admission.entry,
                        accepted_at,
                    });
                    accepted += 1;
                    Ok((
                        id,
                        admission.wait.then(|| {
                            let (sender, receiver) = oneshot::channel();
                            pool.waiters.entry(id).or_default().push(sender);
                            receiver
                        }),
                    ))
                };
                answers.push((admission.reply, answer));
            }
            self.metrics
                .pool_size
                .store(pool.queue.len() as u64, Ordering::Relaxed);
            drop(pool);
            self.metrics
                .entries_accepted
                .fetch_add(accepted, Ordering::Relaxed);
            if accepted > 0 {
                // The producer re-reads the pool: idle, it starts the delay; waiting,
                // it checks whether the block is full.
                self.wake.notify_one();
            }
            for (reply, answer) in answers {
                let _ = reply.send(answer);
            }
        }
        tracing::info!("admission stopped");
    }

    /// Asks for a block now, even an empty one; resolves once it is applied.
    pub fn request_block(&self) -> oneshot::Receiver<MineResult> {
        let (sender, receiver) = oneshot::channel();
        if let Some(cluster) = self.cluster() {
            self.cut_in_cluster(cluster, sender);
            return receiver;
        }
        self.lock_pool().mine_requests.push(sender);
        self.wake.notify_one();
        receiver
    }

    /// `POST /mine` in a cluster: only the primary cuts blocks; the answer is the next
    /// block applied here.
    fn cut_in_cluster(&self, cluster: &Cluster, answer: oneshot::Sender<MineResult>) {
        let status = cluster.status();
        if !status.active || status.primary != status.me {
            let _ = answer.send(Err(format!(
                "this node is not the primary of view {} (member {} is); ask it",
                status.view, status.primary
            )));
            return;
        }
        if let Err(error) = cluster.cut() {
            let _ = answer.send(Err(error.to_string()));
            return;
        }
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let deadline = Instant::now() + CUT_WAIT;
            while Instant::now() < deadline {
                let store = Arc::clone(&store);
                match blocking(move || store.tip()).await {
                    Ok(tip) if tip.height > status.height => {
                        let _ = answer.send(Ok(tip));
                        return;
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(error) => {
                        let _ = answer.send(Err(error.to_string()));
                        return;
                    }
                }
            }
            let _ = answer.send(Err(format!(
                "no block committed within {CUT_WAIT:?}; see /v1/status"
            )));
        });
    }

    /// The block producer: runs until `shutdown` resolves, then finishes the block in
    /// hand (mining is cancelled; a mined block is still applied). The node counts as
    /// ready from this call, before the future is first polled, so a server started
    /// right after never answers "not ready" to its first requests.
    pub fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let queue = lock(&self.admission_rx).take();
        if let Some(queue) = queue.filter(|_| self.cluster().is_none()) {
            let node = Arc::clone(&self);
            let spawned = std::thread::Builder::new()
                .name("admission".into())
                .spawn(move || node.admit(queue));
            match spawned {
                Ok(thread) => *lock(&self.admission_thread) = Some(thread),
                Err(error) => {
                    tracing::error!(%error, "cannot start the admission thread; submits will be refused")
                }
            }
        }
        self.ready.store(true, Ordering::Relaxed);
        self.produce_blocks(shutdown)
    }

    async fn produce_blocks(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        if self.cluster().is_some() {
            shutdown.await;
            self.stopping.store(true, Ordering::Relaxed);
            let node = Arc::clone(&self);
            let stopped = tokio::task::spawn_blocking(move || {
                if let Some(cluster) = node.cluster() {
                    cluster.stop();
                }
            });
            if stopped.await.is_err() {
                tracing::warn!("the consensus driver did not stop cleanly");
            }
            tracing::info!("consensus stopped");
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        // Block n applies on its own task while block n+1 is built on top of it and
        // mined; n+1 waits for n before it applies, and is dropped if n failed.
        let mut applying: Option<Applying> = None;
        tokio::pin!(shutdown);
        let mut stop = false;
        while !stop {
            if self.store.failure().is_some() {
                // Nothing can be applied: let the block in hand fail and hand its
                // entries back, then wait for the database.
                if let Some(last) = applying.take() {
                    last.finished().await;
                }
                if !self.recover_store(&mut shutdown).await {
                    break;
                }
            }
            let wait = self.until_block_due();
            tokio::select! {
                _ = &mut shutdown => break,
                due = wait => if !due { continue },
            }
            let cut = self.take_batch();
            let parent = applying.as_ref().map(|applying| applying.parent.clone());
            let mined = self.build_and_mine(cut.batch, parent, Arc::clone(&cancel));
            tokio::pin!(mined);
            let mined = tokio::select! {
                mined = &mut mined => mined,
                _ = &mut shutdown => {
                    self.stopping.store(true, Ordering::Relaxed);
                    cancel.store(true, Ordering::Relaxed);
                    stop = true;
                    mined.await
                }
            };
            let parent_applied = match applying.take() {
                Some(parent) => parent.finished().await,
                None => true,
            };
            match mined {
                Ok(mined) if parent_applied => {
                    applying = Some(Arc::clone(&self).apply(mined, cut.ids, cut.requests));
                }
                Ok(mined) => {
                    let reason = format!(
                        "block {} was dropped: its parent failed to apply",
                        mined.block.header.height
                    );
                    let unproduced = self.unproduced(reason, mined.batch);
                    self.settle(&cut.ids, Err(unproduced), cut.requests);
                }
                Err(unproduced) => self.settle(&cut.ids, Err(unproduced), cut.requests),
            }
        }
        if let Some(last) = applying {
            last.finished().await;
        }
        self.stopping.store(true, Ordering::Relaxed);
        tracing::info!("block producer stopped");
        // The admission thread sees `stopping` within its poll interval.
        let admission = lock(&self.admission_thread).take();
        if let Some(thread) = admission {
            if tokio::task::spawn_blocking(move || thread.join())
                .await
                .is_err()
            {
                tracing::warn!("admission thread did not stop cleanly");
            }
        }
    }

    /// Reopens the failed database with a back-off until it takes writes again;
    /// false if `shutdown` came first.
    async fn recover_store(
        &self,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> bool {
        loop {
            let wait = lock(&self.recovery).wait();
            tokio::select! {
                _ = shutdown.as_mut() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
            let store = Arc::clone(&self.store);
            // Each failed attempt is logged by the store, at a bounded rate.
            if blocking(move || store.recover()).await.is_ok() {
                lock(&self.recovery).succeeded();
                tracing::info!("block production resumes");
                return true;
            }
        }
    }

    /// A block that was not produced: its entries go back to the pool if the
    /// database failed underneath, and are dropped otherwise.
    fn unproduced(&self, reason: String, batch: Vec<Pending>) -> Unproduced {
        let requeue = if self.store.failure().is_some() {
            batch
        } else {
            Vec::new()
        };
        Unproduced { reason, requeue }
    }

    /// Waits until a block is due; false means "look again" (woken early).
    async fn until_block_due(&self) -> bool {
        let wait_for = {
            let pool = self.lock_pool();
            if !pool.mine_requests.is_empty() || pool.queue.len() >= self.settings.max_block_entries
            {
                return true;
            }
            match pool.first_pending_at {
                Some(first) => {
                    let elapsed = first.elapsed();
                    if elapsed >= self.settings.max_block_delay {
                        return true;
                    }
                    Some(self.settings.max_block_delay - elapsed)
                }
                None => None,
            }
        };
        match wait_for {
            Some(delay) => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => true,
                    _ = self.wake.notified() => false,
                }
            }
            None => {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_LOOK) => {}
                }
                false
            }
        }
    }

    fn take_batch(&self) -> Cut {
        let mut pool = self.lock_pool();
        let take = pool.queue.len().min(self.settings.max_block_entries);
        let batch: Vec<Pending> = pool.queue.drain(..take).collect();
        pool.first_pending_at = pool.queue.front().map(|pending| pending.accepted_at);
        self.metrics
            .pool_size
            .store(pool.queue.len() as u64, Ordering::Relaxed);
        Cut {
            ids: batch.iter().map(|pending| pending.id).collect(),
            batch,
            requests: std::mem::take(&mut pool.mine_requests),
        }
    }

    /// Builds the next block from `batch` on `parent` (the block being applied) or
    /// on the stored tip, checks it against the plugins, and mines it.
    async fn build_and_mine(
        &self,
        mut batch: Vec<Pending>,
        parent: Option<Parent>,
        cancel: Arc<AtomicBool>,
    ) -> Result<Mined, Unproduced> {
        let store = Arc::clone(&self.store);
        let plugins = self.plugins.get().cloned();
        // The batch stays here: a block lost to the database hands its entries back.
        let candidates: Vec<(Hash, Entry)> = batch
            .iter()
            .map(|pending| (pending.id, pending.entry.clone()))
            .collect();
        let built = blocking(move || {
            let Parent {
                header: tip,
                mut log,
            } = match parent {
                Some(parent) => parent,
                None => {
                    let (header, log) = store.tip_with_log()?;
                    Parent { header, log }
                }
            };
            // Leave out entries committed since they were queued.
            let ids: Vec<Hash> = candidates.iter().map(|(id, _)| *id).collect();
            let already = store.committed(&ids)?;
            let mut entries = Vec::with_capacity(candidates.len());
            for ((id, entry), already) in candidates.into_iter().zip(&already) {
                if !already {
                    log.append(leaf_hash(id.as_bytes()), |_, _, _| {});
                    entries.push(entry);
                }
            }
            let timestamp_ms = now_ms().max(tip.timestamp_ms + 1);
            // The parent may still be applying, but every header below it is stored.
            let difficulty = match &plugins {
                Some(plugins) => required_difficulty(&store, plugins.as_ref(), &tip)?,
                None => store.spec().difficulty,
            };
            let header = Header::child(&tip, &log, timestamp_ms, difficulty);
            let template = Block { header, entries };
            if let Some(plugins) = &plugins {
                plugins
                    .check_block(&template)
                    .map_err(|reason| StoreError::from(ChainError::Policy(reason)))?;
            }
            Ok((template, log, already))
        })
        .await;
        let (template, log, already) = match built {
            Ok(built) => built,
            Err(error) => return Err(self.unproduced(error.to_string(), batch)),
        };
        let mut already = already.into_iter();
        batch.retain(|_| !already.next().unwrap_or(true));
        match self.mine(template.header, template.entries, cancel).await {
            Ok(block) => Ok(Mined { block, log, batch }),
            Err(reason) => Err(self.unproduced(reason, batch)),
        }
    }

    /// Certifies and applies a mined block on a task of its own, then settles its
    /// cut. The caller awaits it before applying the next block.
    fn apply(
        self: Arc<Self>,
        mined: Mined,
        ids: Vec<Hash>,
        requests: Vec<oneshot::Sender<MineResult>>,
    ) -> Applying {
        let Mined { block, log, batch } = mined;
        let parent = Parent {
            header: block.header,
            log,
        };
        let task = tokio::spawn(async move {
            let block = Arc::new(block);
            let certificate = self.certify(&block);
            let started = Instant::now();
            let store = Arc::clone(&self.store);
            let applied = Arc::clone(&block);
            let result = blocking(move || {
                let nodes = store.apply_block(&applied, &certificate)?;
                Ok((certificate, nodes))
            })
            .await;
            match result {
                Ok((certificate, nodes)) => {
                    let header = block.header;
                    self.plugins().committed(&block);
                    self.metrics.apply_latency.observe(started.elapsed());
                    self.metrics.height.store(header.height, Ordering::Relaxed);
                    self.metrics.blocks_applied.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .entries_committed
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::debug!(
                        height = header.height,
                        entries = batch.len(),
                        "block applied"
                    );
                    let applied = Applied {
                        header,
                        certificate,
                        nodes,
                        committed: batch
                            .iter()
                            .map(|pending| (pending.id, pending.accepted_at))
                            .collect(),
                    };
                    self.settle(&ids, Ok(applied), requests);
                    true
                }
                Err(error) => {
                    let unproduced = self.unproduced(error.to_string(), batch);
                    self.settle(&ids, Err(unproduced), requests);
                    false
                }
            }
        });
        Applying { parent, task }
    }

    /// Ends a cut: its ids leave the pool, its waiters get their receipts (or, if the
    /// block failed, see their channels close) and `POST /mine` callers the outcome.
    /// Entries a failed block hands back stay in the pool, at its front, with their
    /// waiters.
    fn settle(
        &self,
        ids: &[Hash],
        result: Result<Applied, Unproduced>,
        requests: Vec<oneshot::Sender<MineResult>>,
    ) {
        let mut pool = self.lock_pool();
        let (result, requeue) = match result {
            Ok(applied) => (Ok(applied), Vec::new()),
            Err(Unproduced { reason, requeue }) => (Err(reason), requeue),
        };
        let kept: HashSet<Hash> = requeue.iter().map(|pending| pending.id).collect();
        for id in ids.iter().filter(|id| !kept.contains(id)) {
            pool.ids.remove(id);
        }
        // Admission checks the store before it takes this lock; a new generation
        // tells it that ids it saw pending may have been committed meanwhile.
        pool.generation += 1;
        let result = match result {
            Ok(Applied {
                header,
                certificate,
                nodes,
                committed,
            }) => {
                let first_index = header.log_size - committed.len() as u64;
                let mut waiting = Vec::new();
                for (log_index, (id, accepted_at)) in (first_index..).zip(committed) {
                    self.metrics.commit_latency.observe(accepted_at.elapsed());
                    if let Some(senders) = pool.waiters.remove(&id) {
                        waiting.push((id, log_index, senders));
                    }
                }
                if !waiting.is_empty() {
                    send_receipts(header, certificate, nodes, waiting);
                }
                Ok(header)
            }
            Err(error) if kept.is_empty() => {
                tracing::error!(%error, "block production failed; its entries are dropped");
                Err(error)
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    entries = kept.len(),
                    "block production failed; its entries wait in the pool for the database"
                );
                Err(error)
            }
        };
        // Whoever still waits on a dropped entry (its block failed, or the entry was
        // found committed already, as when a commit that reported an error reached
        // the disk anyway) is told by the channel closing; the answer tells the client
        // to look the entry up.
        for id in ids.iter().filter(|id| !kept.contains(id)) {
            pool.waiters.remove(id);
        }
        if !requeue.is_empty() {
            // Back in arrival order: a block mined on a failed one hands its entries
            // back after its parent did.
            let mut queue: Vec<Pending> = requeue;
            queue.extend(pool.queue.drain(..));
            queue.sort_by_key(|pending| pending.accepted_at);
            pool.queue = queue.into();
            pool.first_pending_at = pool.queue.front().map(|pending| pending.accepted_at);
            self.metrics
                .pool_size
                .store(pool.queue.len() as u64, Ordering::Relaxed);
            // The producer looks again: at the failure first, then at the pool.
            self.wake.notify_one();
        }
        drop(pool);
        for request in requests {
            let _ = request.send(result.clone());
        }
    }

    async fn mine(
        &self,
        mut header: Header,
        entries: Vec<Entry>,
        cancel: Arc<AtomicBool>,
    ) -> Result<Block, String> {
        let threads = self.settings.mining_threads;
        let started = Instant::now();
        let report = tokio::task::spawn_blocking(move || pow::mine(&header, threads, &cancel))
            .await
            .map_err(|error| format!("miner task failed: {error}"))?;
        self.metrics.record_mining(report.hashes, started.elapsed());
        match report.outcome {
            Outcome::Found { nonce, .. } => {
                header.nonce = nonce;
                Ok(Block { header, entries })
            }
            Outcome::Cancelled => Err("mining cancelled: the node is stopping".into()),
            Outcome::Exhausted => {
                Err("every nonce tried; the next block gets a new timestamp".into())
            }
        }
    }

    /// Commits a mined block. One node is the whole quorum: its own COMMIT signature
    /// is the certificate. PBFT replaces this step in the cluster.
    fn certify(&self, block: &Block) -> CommitCertificate {
        let hash = block.hash();
        let height = block.header.height;
        let digest = commit_digest(&self.store.chain_hash(), 0, height, &hash);
        CommitCertificate {
            view: 0,
            height,
            block_hash: hash,
            signatures: vec![CommitSignature {
                node_id: self.node_id,
                signature: self.key.sign(digest.as_bytes()).to_bytes(),
            }],
        }
    }
}

/// Proves a block's waiting entries from the log nodes its apply touched on a blocking
/// thread, and hands each waiter its receipt; the producer does not wait for it.
fn send_receipts(
    header: Header,
    certificate: CommitCertificate,
    nodes: AppendedNodes,
    waiting: Vec<(Hash, u64, Vec<oneshot::Sender<Receipt>>)>,
) {
    tokio::task::spawn_blocking(move || {
        hand_out_receipts(&header, &certificate, &nodes, waiting);
    });
}

/// Gives each waiter `(entry id, log index, senders)` for an entry of the block with
/// `header` its receipt, proved from `nodes` (no store read).
pub(crate) fn hand_out_receipts(
    header: &Header,
    certificate: &CommitCertificate,
    nodes: &AppendedNodes,
    waiting: impl IntoIterator<Item = (Hash, u64, Vec<oneshot::Sender<Receipt>>)>,
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
            let _ = sender.send(receipt.clone());
        }
    }
}

/// The difficulty of the block after `tip` under `policy`, reading the headers it
/// wants from the store.
fn required_difficulty(
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
