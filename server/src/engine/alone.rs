//! The engine of a node alone (the chain's only member): entries wait in a bounded
//! pool; a block is cut from it (at `max_block_entries`, after `max_block_delay` from
//! its first entry, or on `POST /mine`), mined on blocking threads, certified by this
//! node's own COMMIT signature (n = 1, quorum 1), applied in one durable write
//! transaction, and then the entries' waiters are told. The next block is built on
//! the one being applied and mined meanwhile, so mining and the disk overlap; it
//! applies only after its parent has. A database failure hands the entries of the
//! blocks it cost back to the pool, and the producer reopens the database with a
//! back-off before it goes on.
//!
//! Every store call and the miner run on blocking threads, never on async workers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use tokio::sync::{oneshot, Notify};

use super::{
    blocking, lock, now_ms, required_difficulty, send_receipts, EngineStatus, LeftPool, MineError,
    NodeSettings, SubmitError, Submitted, Waiter,
};
use crate::chain::merkle::{leaf_hash, AppendedNodes, CompactRange};
use crate::chain::{
    commit_digest, fit_block, Block, ChainError, CommitCertificate, CommitSignature, Entry, Fit,
    Hash, Header, Policy,
};
use crate::metrics::Metrics;
use crate::plugin_host::Plugins;
use crate::pow::{self, Outcome};
use crate::storage::{Store, StoreError};

/// How often an idle producer looks at the store, so a failure a read noticed is
/// recovered from without waiting for a submit (submits are refused meanwhile).
const IDLE_LOOK: Duration = Duration::from_secs(1);

/// The answer to a `POST /mine`.
type MineAnswer = oneshot::Sender<Result<Header, MineError>>;

/// A submit on its way to the admission thread.
struct Admission {
    entry: Entry,
    /// Verified and judged by the plugins already, off the admission thread.
    checked: bool,
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
    requests: Vec<MineAnswer>,
}

/// The block the next one builds on, and the log after it.
#[derive(Clone)]
struct BuiltOn {
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
    reason: MineError,
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
    parent: BuiltOn,
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
    waiters: HashMap<Hash, Vec<Waiter>>,
    /// When the oldest queued entry arrived.
    first_pending_at: Option<Instant>,
    /// `POST /mine` callers waiting for the next block.
    mine_requests: Vec<MineAnswer>,
    /// Bumped whenever applied ids leave `ids`.
    generation: u64,
}

impl Pool {
    /// Puts entries taken for a block back in the queue, in arrival order: a block
    /// mined on a failed one hands its entries back after its parent did.
    fn hand_back(&mut self, entries: Vec<Pending>) {
        let mut queue = entries;
        queue.extend(self.queue.drain(..));
        queue.sort_by_key(|pending| pending.accepted_at);
        self.queue = queue.into();
        self.first_pending_at = self.queue.front().map(|pending| pending.accepted_at);
    }
}

/// The engine of a node alone: its store, key, pool, producer and metrics.
pub struct Alone {
    store: Arc<Store>,
    key: SigningKey,
    node_id: Hash,
    settings: NodeSettings,
    pool: Mutex<Pool>,
    wake: Notify,
    stopping: AtomicBool,
    metrics: Arc<Metrics>,
    plugins: Arc<Plugins>,
    /// The admission queue, bounded like the pool: a burst beyond it is a 503.
    admission_tx: SyncSender<Admission>,
    /// Its receiving end, until [`Alone::run`] hands it to the admission thread.
    admission_rx: Mutex<Option<Receiver<Admission>>>,
    /// The admission thread, joined when the producer stops so the store is released.
    admission_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Spaces the producer's attempts to reopen a failed database.
    recovery: Mutex<crate::throttle::Backoff>,
    /// The difficulty the next block needs, as of the last block applied.
    next_difficulty: AtomicU32,
    /// Entries the plugins' block rules refused in any block, with why.
    left: LeftPool,
}

impl Alone {
    /// The engine over `store`, signing with `key` (the chain's only member).
    pub fn new(
        store: Arc<Store>,
        key: SigningKey,
        settings: NodeSettings,
        plugins: Arc<Plugins>,
        metrics: Arc<Metrics>,
    ) -> Alone {
        let settings = settings.capped(store.spec().params.max_block_entries);
        let node_id = Hash::digest(key.verifying_key().as_bytes());
        let (sender, receiver) = sync_channel(settings.pool_capacity);
        let genesis_difficulty = store.spec().difficulty;
        Alone {
            admission_tx: sender,
            admission_rx: Mutex::new(Some(receiver)),
            admission_thread: Mutex::new(None),
            store,
            key,
            node_id,
            settings,
            pool: Mutex::new(Pool::default()),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            metrics,
            plugins,
            recovery: Mutex::new(crate::storage::recovery_backoff()),
            next_difficulty: AtomicU32::new(genesis_difficulty),
            left: LeftPool::default(),
        }
    }

    fn lock_pool(&self) -> MutexGuard<'_, Pool> {
        lock(&self.pool)
    }

    /// Queues `entry` through the admission thread (see [`Admission`]).
    pub async fn submit(&self, entry: Entry, wait: bool) -> Result<Submitted, SubmitError> {
        // Entry hooks run on the blocking pool, several at once, so that a slow or
        // hung plugin holds its own submit and not every other one behind it on
        // the admission thread.
        let checked = self.plugins.judges_entries();
        if checked {
            let limit = self.store.spec().params.max_entry_bytes;
            entry
                .verify(&self.store.chain_hash(), limit)
                .map_err(SubmitError::Invalid)?;
            let (plugins, judged) = (Arc::clone(&self.plugins), entry.clone());
            blocking(move || Ok(plugins.validate_entry(&judged)))
                .await?
                .map_err(SubmitError::Rejected)?;
        }
        let (reply, answer) = oneshot::channel();
        let admission = Admission {
            entry,
            checked,
            wait,
            reply,
        };
        match self.admission_tx.try_send(admission) {
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

    /// Whether `id` is queued or in a block being produced.
    pub fn is_pending(&self, id: &Hash) -> bool {
        self.lock_pool().ids.contains(id)
    }

    /// Why the block rules refused `id` in any block, if they did lately.
    pub fn left_pool(&self, id: &Hash) -> Option<String> {
        self.left.why(id)
    }

    /// The engine's state: always view 0, this node the primary.
    pub fn status(&self) -> EngineStatus {
        EngineStatus {
            view: 0,
            active: true,
            primary: 0,
            stable_checkpoint: None,
            abstaining_until: None,
            view_changes_from: None,
            unheard_for: None,
            pending: self.lock_pool().ids.len(),
            next_difficulty: self.next_difficulty.load(Ordering::Relaxed),
            peers: Vec::new(),
            settings: self.settings,
            max_blocks_in_flight: None,
            min_block_interval_ms: None,
            failure: None,
            catching_up: false,
            behind: None,
            reads_from: None,
            refused_committed: None,
        }
    }

    /// Asks for a block now, even an empty one; resolves once it is applied.
    pub fn cut(&self) -> oneshot::Receiver<Result<Header, MineError>> {
        let (sender, receiver) = oneshot::channel();
        self.lock_pool().mine_requests.push(sender);
        self.wake.notify_one();
        receiver
    }

    /// Starts the admission thread and produces blocks until `shutdown` resolves,
    /// then finishes the block in hand (mining is cancelled; a mined block is still
    /// applied).
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        if !self.plugins.is_empty() {
            // What the plugins ask of the block after the stored tip, for /v1/status
            // until the first block is applied.
            let (store, plugins) = (Arc::clone(&self.store), Arc::clone(&self.plugins));
            let next = blocking(move || {
                let tip = store.tip()?;
                required_difficulty(&store, plugins.as_ref(), &tip)
            })
            .await;
            if let Ok(next) = next {
                self.next_difficulty.store(next, Ordering::Relaxed);
            }
        }
        let queue = lock(&self.admission_rx).take();
        if let Some(queue) = queue {
            let alone = Arc::clone(&self);
            let spawned = std::thread::Builder::new()
                .name("admission".into())
                .spawn(move || alone.admit(queue));
            match spawned {
                Ok(thread) => *lock(&self.admission_thread) = Some(thread),
                Err(error) => {
                    tracing::error!(%error, "cannot start the admission thread; submits will be refused")
                }
            }
        }
        self.produce_blocks(shutdown).await
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
                let verdict = match admission.checked {
                    true => Ok(()),
                    false => admission
                        .entry
                        .verify(&chain_hash, limit)
                        .map_err(SubmitError::Invalid),
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
                } else if pool.ids.len() >= self.settings.pool_capacity {
                    Err(SubmitError::PoolFull(pool.ids.len()))
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
                .store(pool.ids.len() as u64, Ordering::Relaxed);
            drop(pool);
            // The node counts the accepted ones as it answers them.
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

    async fn produce_blocks(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
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
            let mut cut = self.take_batch();
            let parent = applying.as_ref().map(|applying| applying.parent.clone());
            let batch = std::mem::take(&mut cut.batch);
            let mined = {
                let mined = self.build_and_mine(batch, parent, Arc::clone(&cancel), &mut cut.ids);
                tokio::pin!(mined);
                tokio::select! {
                    mined = &mut mined => mined,
                    _ = &mut shutdown => {
                        self.stopping.store(true, Ordering::Relaxed);
                        cancel.store(true, Ordering::Relaxed);
                        stop = true;
                        mined.await
                    }
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
                    let reason = MineError::ParentFailed {
                        height: mined.block.header.height,
                    };
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
    fn unproduced(&self, reason: MineError, batch: Vec<Pending>) -> Unproduced {
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
        Cut {
            ids: batch.iter().map(|pending| pending.id).collect(),
            batch,
            requests: std::mem::take(&mut pool.mine_requests),
        }
    }

    /// Builds the next block from `batch` on `parent` (the block being applied) or
    /// on the stored tip, fits it to the plugins, and mines it. Entries the plugins
    /// take, but not in this block, go back to the pool and leave `ids` (the cut's);
    /// those they refuse even alone leave both, their waiters told why.
    async fn build_and_mine(
        &self,
        mut batch: Vec<Pending>,
        parent: Option<BuiltOn>,
        cancel: Arc<AtomicBool>,
        ids: &mut Vec<Hash>,
    ) -> Result<Mined, Unproduced> {
        let store = Arc::clone(&self.store);
        let plugins = Some(Arc::clone(&self.plugins)).filter(|plugins| !plugins.is_empty());
        // The batch stays here: a block lost to the database hands its entries back.
        let candidates: Vec<(Hash, Entry)> = batch
            .iter()
            .map(|pending| (pending.id, pending.entry.clone()))
            .collect();
        let built = blocking(move || {
            let BuiltOn { header: tip, log } = match parent {
                Some(parent) => parent,
                None => {
                    let (header, log) = store.tip_with_log()?;
                    BuiltOn { header, log }
                }
            };
            // Leave out entries committed since they were queued.
            let candidate_ids: Vec<Hash> = candidates.iter().map(|(id, _)| *id).collect();
            let already = store.committed(&candidate_ids)?;
            let entries: Vec<Entry> = candidates
                .into_iter()
                .zip(&already)
                .filter(|(_, already)| !**already)
                .map(|((_, entry), _)| entry)
                .collect();
            let timestamp_ms = now_ms().max(tip.timestamp_ms + 1);
            // The parent may still be applying, but every header below it is stored.
            let difficulty = match &plugins {
                Some(plugins) => required_difficulty(&store, plugins.as_ref(), &tip)?,
                None => store.spec().difficulty,
            };
            let block_of = |entries: Vec<Entry>| {
                let mut log = log.clone();
                for entry in &entries {
                    log.append(leaf_hash(entry.id().as_bytes()), |_, _, _| {});
                }
                let header = Header::child(&tip, &log, timestamp_ms, difficulty);
                (Block { header, entries }, log)
            };
            let (mut template, mut log) = block_of(entries);
            let mut fit = None;
            if let Some(plugins) = &plugins {
                let refused = |reason| StoreError::from(ChainError::Policy(reason));
                // `Err`: a rule about the block itself, which no fitting meets.
                let found = fit_block(plugins.as_ref(), &template).map_err(refused)?;
                if found.taken.len() < template.entries.len() {
                    let taken = found.taken.iter().map(|&i| template.entries[i].clone());
                    (template, log) = block_of(taken.collect());
                    // Its own header now: checked in full, as the members would.
                    plugins.check_block(&template).map_err(refused)?;
                    fit = Some(found);
                }
            }
            Ok((template, log, already, fit))
        })
        .await;
        let (template, log, already, fit) = match built {
            Ok(built) => built,
            Err(error) => return Err(self.unproduced(MineError::Failed(error.to_string()), batch)),
        };
        let mut already = already.into_iter();
        batch.retain(|_| !already.next().unwrap_or(true));
        if let Some(fit) = fit {
            batch = self.refit(batch, fit, ids);
            if batch.is_empty() {
                let reason = "the plugins refuse every entry of the block".to_owned();
                return Err(self.unproduced(MineError::Failed(reason), batch));
            }
        }
        match self.mine(template.header, template.entries, cancel).await {
            Ok(block) => Ok(Mined { block, log, batch }),
            Err(reason) => Err(self.unproduced(reason, batch)),
        }
    }

    /// Splits `batch` as `fit` says: what the block holds is returned; entries
    /// refused alone leave the pool and the cut's `ids` at once (no longer pending,
    /// they may be submitted again while the block is mined), logged and their
    /// waiters told why; deferred ones go back to the front of the pool, and out of
    /// the cut's `ids`, with their waiters.
    fn refit(&self, batch: Vec<Pending>, fit: Fit, ids: &mut Vec<Hash>) -> Vec<Pending> {
        let mut batch: Vec<Option<Pending>> = batch.into_iter().map(Some).collect();
        let mut pool = self.lock_pool();
        if let Some((_, reason)) = fit.refused.first() {
            tracing::warn!(
                entries = fit.refused.len(),
                %reason,
                "the plugins refuse in any block entries they took at submit; they are \
                 dropped"
            );
        }
        let mut gone = HashSet::new();
        for (i, reason) in fit.refused {
            let Some(pending) = &batch[i] else { continue };
            let why = ChainError::Policy(reason).to_string();
            self.left.note(pending.id, &why);
            pool.ids.remove(&pending.id);
            gone.insert(pending.id);
            for waiter in pool.waiters.remove(&pending.id).unwrap_or_default() {
                let _ = waiter.send(Err(why.clone()));
            }
        }
        let deferred: Vec<Pending> = fit
            .deferred
            .iter()
            .filter_map(|&i| batch[i].take())
            .collect();
        gone.extend(deferred.iter().map(|pending| pending.id));
        ids.retain(|id| !gone.contains(id));
        if !deferred.is_empty() {
            pool.hand_back(deferred);
        }
        fit.taken.iter().filter_map(|&i| batch[i].take()).collect()
    }

    /// Certifies and applies a mined block on a task of its own, then settles its
    /// cut. The caller awaits it before applying the next block.
    fn apply(self: Arc<Self>, mined: Mined, ids: Vec<Hash>, requests: Vec<MineAnswer>) -> Applying {
        let Mined { block, log, batch } = mined;
        let parent = BuiltOn {
            header: block.header,
            log,
        };
        let task = tokio::spawn(async move {
            let block = Arc::new(block);
            let certificate = self.certify(&block);
            let started = Instant::now();
            let store = Arc::clone(&self.store);
            let applied = Arc::clone(&block);
            let plugins = Arc::clone(&self.plugins);
            let result = blocking(move || {
                let nodes = store.apply_block(&applied, &certificate)?;
                // What the block after it needs, for /v1/status.
                let next = match plugins.is_empty() {
                    true => store.spec().difficulty,
                    false => required_difficulty(&store, plugins.as_ref(), &applied.header)?,
                };
                Ok((certificate, nodes, next))
            })
            .await;
            match result {
                Ok((certificate, nodes, next)) => {
                    self.next_difficulty.store(next, Ordering::Relaxed);
                    let header = block.header;
                    self.plugins.committed(&block);
                    self.metrics
                        .block_applied(&header, batch.len(), started.elapsed());
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
                    let unproduced = self.unproduced(MineError::Failed(error.to_string()), batch);
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
    fn settle(&self, ids: &[Hash], result: Result<Applied, Unproduced>, requests: Vec<MineAnswer>) {
        let mut pool = self.lock_pool();
        let (result, requeue) = match result {
            Ok(applied) => (Ok(applied), Vec::new()),
            Err(Unproduced { reason, requeue }) => (Err(reason), requeue),
        };
        let kept: HashSet<Hash> = requeue.iter().map(|pending| pending.id).collect();
        for id in ids.iter().filter(|id| !kept.contains(id)) {
            pool.ids.remove(id);
        }
        self.metrics
            .pool_size
            .store(pool.ids.len() as u64, Ordering::Relaxed);
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
            pool.hand_back(requeue);
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
    ) -> Result<Block, MineError> {
        let threads = self.settings.mining_threads;
        let started = Instant::now();
        let report = tokio::task::spawn_blocking(move || pow::mine(&header, threads, &cancel))
            .await
            .map_err(|error| MineError::Failed(format!("miner task failed: {error}")))?;
        self.metrics.record_mining(report.hashes, started.elapsed());
        match report.outcome {
            Outcome::Found { nonce, .. } => {
                header.nonce = nonce;
                Ok(Block { header, entries })
            }
            Outcome::Cancelled => Err(MineError::Cancelled),
            Outcome::Exhausted => Err(MineError::Exhausted),
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
