//! The engine of one member of several: one PBFT replica run against the store and
//! the member transport.
//!
//! One thread owns the replica, which is pure and synchronous, and performs its
//! outputs in order. Persist records are gathered and written in one transaction
//! before the next output that leaves the thread (a send, an apply, a mining job), so
//! a crash can never make the node forget something it said (C&L TOCS §6.1). Mining
//! runs on the miner thread and comes back as an input; a task on the runtime puts
//! the transport's frames on the driver's queue; catch-up requests are answered from
//! the store. A store failure stops the replica where it is: continuing could mean
//! speaking without having persisted. The driver then reopens the database with a
//! back-off and rebuilds the replica from what is durable, exactly as a restarted
//! process would, and carries on; the entries it held and the clients waiting on
//! them are kept.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::sync::oneshot;

use super::{
    blocking, hand_out_receipts, lock, now_ms, EngineFailure, EngineStatus, LeftPool, MineError,
    NodeSettings, SubmitError, Submitted, Waiter,
};
use crate::chain::merkle::AppendedNodes;
use crate::chain::{
    Block, ChainError, CommitCertificate, Entry, EntryIndex, Hash, Header, Member, Membership,
    Policy,
};
use crate::consensus::{
    Config, DropReason, Input, MemberIndex, NotAMember, Output, Payload, Record, Replica, Timing,
    Tip, COMMITTED_BLOCK,
};
use crate::metrics::Metrics;
use crate::net::{Inbound, Outbox, SendError, Transport, Wire};
use crate::plugin_host::Plugins;
use crate::pow::{self, Outcome};
use crate::storage::{Store, StoreError};
use crate::throttle::{Backoff, Throttle};

/// Events queued for the driver before submits are refused.
const EVENT_CAPACITY: usize = 65_536;
/// Frames the driver's `Outbox` holds before it drops them: far more than a turn
/// sends, so only a stalled runtime fills it.
const OUTBOX_CAPACITY: usize = 4_096;
/// How long `POST /mine` waits for the block.
const CUT_WAIT: Duration = Duration::from_secs(30);
/// Most client submits queued back to back that the replica takes in one step.
const SUBMIT_BATCH: usize = 512;
/// Most queued events handled in one turn, whose records one write makes durable.
const TURN_EVENTS: usize = 64;
/// Longest a block applied stays short of the disk (`Store::apply_block_deferred`).
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Shortest interval between two warnings about one sender's refused inputs.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long a removed member hands its entries on, and how often it sends them.
const DEPART_FOR: Duration = Duration::from_secs(10);
const DEPART_RESEND: Duration = Duration::from_millis(500);
/// How long a window the commit rate that admission reads is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// The primary's least time between blocks while entries keep coming, unless set
/// (`min_block_interval_ms`). On the project's 2-core machine a block costs the
/// four members about 3 ms of CPU whatever it holds, and without it a paced load of
/// 3,000 entries a second took blocks of 8 entries, 375 a second; at 6 ms the
/// cluster spent a third less CPU per entry there and a fifth less at 12,000
/// (`benches/README.md`).
pub const DEFAULT_MIN_BLOCK_INTERVAL_MS: u64 = 6;

/// How the driver runs, beyond the [`NodeSettings`] every engine honours.
#[derive(Clone, Copy, Debug)]
pub struct ClusterSettings {
    /// The replica's timers; `max_block_delay_ms` comes from the node's settings.
    pub timing: Timing,
    /// How often the replica's timers run; it is also told the time at each turn
    /// and when a block falls due.
    pub tick: Duration,
    /// Committed blocks sent per catch-up request.
    pub catch_up_batch: u64,
    /// The primary's own blocks in flight (not yet prepared) before it waits for
    /// one to prepare (`max_blocks_in_flight`).
    pub max_blocks_in_flight: usize,
    /// The primary's least time between blocks while entries keep coming
    /// (`min_block_interval_ms`).
    pub min_block_interval_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> ClusterSettings {
        ClusterSettings {
            timing: Timing::default(),
            tick: Duration::from_millis(10),
            catch_up_batch: 32,
            max_blocks_in_flight: 1,
            min_block_interval_ms: DEFAULT_MIN_BLOCK_INTERVAL_MS,
        }
    }
}

/// Why the cluster driver refused something.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The key is not a member.
    #[error(transparent)]
    Config(#[from] NotAMember),
    /// The store could not be read at start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The driver is not running (stopped, or failed: see the log).
    #[error("the consensus driver is not running")]
    Stopped,
    /// Too many events are queued.
    #[error("the consensus driver is overloaded; retry later")]
    Busy,
    /// A thread could not be started.
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    /// Started outside a tokio runtime, which carries the peers' frames to it.
    #[error("the cluster engine must start inside a tokio runtime")]
    NoRuntime,
    /// The Byzantine behaviour asked for is not one (test-only build).
    #[cfg(feature = "byzantine")]
    #[error("{0}")]
    Byzantine(String),
}

/// What the driver reports of its replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ClusterStatus {
    /// This node's member index.
    pub me: MemberIndex,
    /// The current view.
    pub view: u64,
    /// Its primary.
    pub primary: MemberIndex,
    /// Whether the view was entered (false during a view change).
    pub active: bool,
    /// The last applied height.
    pub height: u64,
    /// The stable checkpoint's height.
    pub stable_checkpoint: u64,
    /// While the replica abstains, the height it abstains up to.
    pub abstaining_until: Option<u64>,
    /// While the replica keeps out of view changes (after it abstained), the height
    /// a stable checkpoint must reach first.
    pub view_changes_from: Option<u64>,
    /// Why this member refuses the block after its tip that a quorum committed
    /// (certificate checked), until it applies one.
    pub refused_committed: Option<String>,
    /// Entries waiting here to be committed, admitted ones included.
    pub pending: usize,
    /// The difficulty the block after the tip needs.
    pub next_difficulty: u32,
    /// Why the driver stopped for good (it panicked), if it did.
    pub failure: Option<EngineFailure>,
    /// Whether the replica knows the others are ahead and fetches their blocks.
    pub catching_up: bool,
    /// Whether the pool takes no new entries for now (see `Driver::shedding`).
    pub shedding: bool,
}

enum DriverEvent {
    Frame(Inbound),
    /// A client's entry, its place in the pool already taken.
    Submit {
        entry: Entry,
        waiter: Option<Waiter>,
    },
    Cut,
    Mined(Block),
    Stop,
}

/// A block for the miner thread to mine, and the flag that cancels it.
type MiningJob = (Arc<Block>, Arc<AtomicBool>);

/// A client's submit on its way to the replica: the entry and who waits for its
/// receipt.
type Submission = (Entry, Option<Waiter>);

/// An entry the replica holds: since when, and whether a client of this node gave
/// it (its commit latency is this node's to report).
#[derive(Clone, Copy, Debug)]
struct Held {
    since: Instant,
    own: bool,
}

/// What stops the driver: its halt flag, its queue and its thread.
#[derive(Clone)]
struct Stopper {
    events: SyncSender<DriverEvent>,
    halt: Arc<AtomicBool>,
    driver: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Stopper {
    /// Stops the driver after the step in hand (mining is cancelled) and waits for
    /// it. Blocks.
    fn stop(&self) {
        self.halt.store(true, Ordering::Relaxed);
        // Wakes the driver at once when the queue has room; else it sees the flag
        // within a tick.
        let _ = self.events.try_send(DriverEvent::Stop);
        let driver = lock(&self.driver).take();
        if let Some(driver) = driver {
            if driver.join().is_err() {
                tracing::error!("the consensus driver panicked");
            }
        }
    }
}

/// A running replica; [`Cluster::run`] returning, or dropping it, stops the driver.
pub struct Cluster {
    store: Arc<Store>,
    plugins: Arc<Plugins>,
    settings: NodeSettings,
    /// The replica's `max_blocks_in_flight` and `min_block_interval_ms`, as it
    /// runs with them.
    max_blocks_in_flight: usize,
    min_block_interval_ms: u64,
    status: Arc<Mutex<ClusterStatus>>,
    /// Every entry this member is to commit: those the replica holds, and the
    /// client entries admitted but not yet taken (queued for the driver or held).
    /// The one answer to "is it pending?", and what `pool_capacity` bounds.
    pending: Arc<Mutex<HashMap<Hash, Held>>>,
    /// Entries the replica let go, with why.
    left: Arc<LeftPool>,
    transport: Arc<Transport>,
    stopper: Stopper,
}

/// Puts `entry` straight into `to`'s queue, beside the driver's `Outbox`.
fn queue_entry(transport: &Transport, to: MemberIndex, entry: &Entry) -> Result<(), SendError> {
    transport.send(to, Arc::from(Wire::Entry(entry.clone()).encode()))
}

/// The store as the replica's index of committed entries.
struct Committed<'a>(&'a Store);

impl EntryIndex for Committed<'_> {
    fn contains(&self, id: &Hash) -> Result<bool, ChainError> {
        let found = self.contains_each(std::slice::from_ref(id))?;
        found
            .first()
            .copied()
            .ok_or_else(|| ChainError::Lookup("the entry index gave no answer".into()))
    }

    fn contains_each(&self, ids: &[Hash]) -> Result<Vec<bool>, ChainError> {
        self.0
            .committed(ids)
            .map_err(|error| ChainError::Lookup(error.to_string()))
    }

    fn header(&self, height: u64) -> Result<Option<Header>, ChainError> {
        self.0
            .header(height)
            .map_err(|error| ChainError::Lookup(error.to_string()))
    }
}

impl Cluster {
    /// Starts the replica of the member holding `key` over `store`, resuming from
    /// what it persisted, talking through `transport` and hearing from `inbound`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        store: Arc<Store>,
        key: SigningKey,
        transport: Arc<Transport>,
        mut inbound: tokio::sync::mpsc::Receiver<Inbound>,
        node_settings: NodeSettings,
        mut settings: ClusterSettings,
        metrics: Arc<Metrics>,
        plugins: Arc<Plugins>,
    ) -> Result<Cluster, ClusterError> {
        let node_settings = node_settings.capped(store.spec().params.max_block_entries);
        settings.timing.max_block_delay_ms =
            u64::try_from(node_settings.max_block_delay.as_millis()).unwrap_or(u64::MAX);
        let mut config = Config::template(store.spec(), key, settings.timing);
        config.max_pending = node_settings.pool_capacity;
        config.max_block_entries = node_settings.max_block_entries;
        config.catch_up_batch = settings.catch_up_batch;
        // Zero would leave entries waiting behind any slot above the tip.
        config.max_blocks_in_flight = settings.max_blocks_in_flight.max(1);
        config.reconfigurations = true;
        config.min_block_interval_ms = settings.min_block_interval_ms;
        if !plugins.is_empty() {
            config = config.with_policy(Arc::clone(&plugins) as Arc<dyn Policy>);
        }
        #[cfg(feature = "byzantine")]
        let rogue = crate::sim::Rogue::from_env(&config.key).map_err(ClusterError::Byzantine)?;
        #[cfg(feature = "byzantine")]
        if let Some(rogue) = &rogue {
            tracing::warn!(
                behaviour = rogue.name(),
                "this member is Byzantine (test build)"
            );
        }
        #[cfg(feature = "byzantine")]
        if let Some(flaws) = crate::sim::Rogue::flaw_from_env().map_err(ClusterError::Byzantine)? {
            tracing::warn!(
                ?flaws,
                "this member's replica is broken on purpose (test build)"
            );
            config = config.with_flaws(flaws);
        }
        let replica = resume(&store, &config)?.ok_or(NotAMember)?;
        let (events, queue) = sync_channel(EVENT_CAPACITY);
        let status = Arc::new(Mutex::new(ClusterStatus::default()));
        // Frames go from the transport's tasks to the driver's queue on the runtime,
        // not through a thread of their own: a relay thread cost every frame one
        // more wake-up and context switch on the commit path.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClusterError::NoRuntime)?;
        let forward = events.clone();
        runtime.spawn(async move {
            // Ends when the transport is dropped or the driver is gone.
            while let Some(frame) = inbound.recv().await {
                let event = match forward.try_send(DriverEvent::Frame(frame)) {
                    Ok(()) => continue,
                    Err(TrySendError::Full(event)) => event,
                    Err(TrySendError::Disconnected(_)) => break,
                };
                // The queue is full: wait for room off the runtime, frames in order.
                let forward = forward.clone();
                match tokio::task::spawn_blocking(move || forward.send(event).is_ok()).await {
                    Ok(true) => {}
                    Ok(false) | Err(_) => break,
                }
            }
        });
        // What status reports is read back from the replica's configuration, so a
        // setting that did not reach the replica shows.
        let in_force = NodeSettings {
            max_block_entries: config.max_block_entries,
            max_block_delay: Duration::from_millis(config.timing.max_block_delay_ms),
            pool_capacity: config.max_pending,
            mining_threads: node_settings.mining_threads,
        };
        let max_blocks_in_flight = config.max_blocks_in_flight;
        let min_block_interval_ms = config.min_block_interval_ms;
        let pending = Arc::new(Mutex::new(HashMap::new()));
        let left = Arc::new(LeftPool::default());
        let halt = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            halt: halt.clone(),
            config,
            replica,
            store: Arc::clone(&store),
            transport: transport.clone(),
            sends: {
                let metrics = Arc::clone(&metrics);
                transport.outbox(OUTBOX_CAPACITY, move |refused| {
                    metrics.messages_dropped.add("send_queue_full", refused)
                })
            },
            events: events.clone(),
            status: status.clone(),
            pending: pending.clone(),
            left: left.clone(),
            metrics,
            plugins: Arc::clone(&plugins),
            settings,
            mining_threads: node_settings.mining_threads,
            deferred: None,
            clock_ms: 0,
            published_height: None,
            told_view: None,
            waiters: HashMap::new(),
            persist: Vec::new(),
            outbox: Vec::new(),
            unsynced: None,
            unforwarded: HashMap::new(),
            rate_window: (0, Instant::now()),
            commit_rate: 0.0,
            held: Vec::new(),
            recovery: crate::storage::recovery_backoff(),
            mining: None,
            miner: None,
            next_peer: 0,
            drop_warnings: Throttle::new(WARN_EVERY),
            departing: None,
            #[cfg(feature = "byzantine")]
            rogue,
        };
        let mut driver = driver;
        driver.publish();
        let panicked = status.clone();
        let driver = std::thread::Builder::new()
            .name("consensus".into())
            .spawn(move || {
                let run =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run(queue)));
                if let Err(panic) = run {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    tracing::error!(%message, "the consensus driver panicked");
                    lock(&panicked).failure = Some(EngineFailure::Panicked(message));
                }
            })
            .map_err(|error| ClusterError::Thread("consensus", error))?;
        Ok(Cluster {
            store,
            plugins,
            settings: in_force,
            max_blocks_in_flight,
            min_block_interval_ms,
            status,
            pending,
            left,
            transport,
            stopper: Stopper {
                events,
                halt,
                driver: Arc::new(Mutex::new(Some(driver))),
            },
        })
    }

    fn post(&self, event: DriverEvent) -> Result<(), ClusterError> {
        self.stopper
            .events
            .try_send(event)
            .map_err(|error| match error {
                TrySendError::Full(_) => ClusterError::Busy,
                TrySendError::Disconnected(_) => ClusterError::Stopped,
            })
    }

    /// Checks a client's entry as a replica would (signature, plugins, not committed,
    /// not pending), takes its place in the pool and hands it to the driver without
    /// waiting for the replica: an admitted entry is held until the replica takes
    /// it, so nothing answered 202 is dropped while the node runs. With `wait`, the
    /// receiver gets its receipt once it is committed and applied here.
    pub async fn submit(&self, entry: Entry, wait: bool) -> Result<Submitted, SubmitError> {
        // An entry that waits a view-change timeout makes its member vote the primary
        // out, so a pool deeper than the primary commits within that time makes an
        // honest, busy primary look faulty: under a flood the views changed again and
        // again and the pool never drained (benches/README.md, "overload").
        if lock(&self.status).shedding {
            return Err(SubmitError::Busy);
        }
        let id = super::check_entry(&self.store, &self.plugins, &entry).await?;
        // The entry's place is taken here, under the pool's one lock: what is
        // admitted is what the capacity allows, and the driver keeps retrying one
        // its replica could not take at once rather than drop it.
        {
            let mut pending = lock(&self.pending);
            if pending.contains_key(&id) {
                return Err(SubmitError::Duplicate(id));
            }
            if pending.len() >= self.settings.pool_capacity {
                return Err(SubmitError::PoolFull(self.settings.pool_capacity));
            }
            pending.insert(
                id,
                Held {
                    since: Instant::now(),
                    own: true,
                },
            );
        }
        let (waiter, receiver) = if wait {
            let (sender, receiver) = oneshot::channel();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        if let Err(error) = self.post(DriverEvent::Submit { entry, waiter }) {
            lock(&self.pending).remove(&id);
            return Err(match error {
                ClusterError::Busy => SubmitError::Busy,
                _ => SubmitError::NotReady,
            });
        }
        Ok((id, receiver))
    }

    /// `POST /mine`: only the primary cuts blocks; the answer is the next block
    /// applied here.
    pub fn cut(&self) -> oneshot::Receiver<Result<Header, MineError>> {
        let (answer, receiver) = oneshot::channel();
        let status = lock(&self.status).clone();
        if !status.active || status.primary != status.me {
            let _ = answer.send(Err(MineError::NotPrimary {
                view: status.view,
                primary: status.primary,
            }));
            return receiver;
        }
        if self.post(DriverEvent::Cut).is_err() {
            let _ = answer.send(Err(MineError::Stopped));
            return receiver;
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
                        let _ = answer.send(Err(MineError::Failed(error.to_string())));
                        return;
                    }
                }
            }
            let _ = answer.send(Err(MineError::Timeout(CUT_WAIT)));
        });
        receiver
    }

    /// The replica's state as last reported, with each member's connection.
    pub fn status(&self) -> EngineStatus {
        let status = lock(&self.status).clone();
        EngineStatus {
            view: status.view,
            active: status.active,
            primary: status.primary,
            stable_checkpoint: (status.stable_checkpoint > 0).then_some(status.stable_checkpoint),
            abstaining_until: status.abstaining_until,
            view_changes_from: status.view_changes_from,
            unheard_for: None,
            pending: status.pending,
            next_difficulty: status.next_difficulty,
            peers: self.transport.peers(),
            settings: self.settings,
            max_blocks_in_flight: Some(self.max_blocks_in_flight),
            min_block_interval_ms: Some(self.min_block_interval_ms),
            failure: status.failure,
            catching_up: status.catching_up,
            behind: None,
            reads_from: None,
            refused_committed: status.refused_committed,
        }
    }

    /// Why the driver stopped, if it did.
    pub fn failure(&self) -> Option<EngineFailure> {
        lock(&self.status).failure.clone()
    }

    /// Whether `id` waits here to be committed (from a client of this node or
    /// another member's).
    pub fn is_pending(&self, id: &Hash) -> bool {
        lock(&self.pending).contains_key(id)
    }

    /// Why the replica let `id` go uncommitted, if it did lately.
    pub fn left_pool(&self, id: &Hash) -> Option<String> {
        self.left.why(id)
    }

    /// Stops the driver after the step in hand (mining is cancelled) and waits for
    /// it. Blocks: async callers use [`Cluster::run`]'s shutdown, or
    /// `spawn_blocking`.
    pub fn stop(&self) {
        self.stopper.stop();
    }

    /// Waits for `shutdown`, then stops the driver after the step in hand.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
        let stopper = self.stopper.clone();
        if tokio::task::spawn_blocking(move || stopper.stop())
            .await
            .is_err()
        {
            tracing::warn!("the consensus driver did not stop cleanly");
        }
        tracing::info!("consensus stopped");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stopper.stop();
    }
}

/// A replica resuming from what `store` holds: its durable consensus state, the
/// applied tip and the blocks applied above the stable checkpoint, in the membership
/// epoch in force after the tip, configured as `template` is for this node; none
/// if this node has no vote in that membership.
///
/// Moving to a new epoch is a resume too: once the replica applied its epoch's last
/// block, the membership after the tip is the next one, and the state is moved into
/// it first (`Record::Epoch`), so a driver that crashed in between does the same.
fn resume(store: &Store, template: &Config) -> Result<Option<Replica>, StoreError> {
    let mut durable = store.durable()?;
    let (header, log) = store.tip_with_log()?;
    let mut membership = Membership::clone(&store.membership());
    membership.advance_to(header.height + 1);
    let base_height = membership.since.saturating_sub(1);
    let base = match base_height {
        0 => Some(store.spec().genesis_block().header),
        // Restored from a snapshot above the epoch's start, before the history below
        // reached it: the join kept that header.
        height => match store.header(height) {
            Err(StoreError::NotHeld { .. }) | Ok(None) => {
                store.epoch_base()?.filter(|header| header.height == height)
            }
            held => held?,
        },
    };
    let base = base.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "membership epoch {} starts above height {base_height}, which this database \
             does not hold",
            membership.epoch
        ))
    })?;
    if let Some(record) = durable.epoch_record(&membership, &base) {
        store.persist(std::slice::from_ref(&record))?;
        durable.apply(&record);
    }
    let Ok(config) = template.next_epoch(&membership, &base) else {
        return Ok(None);
    };
    // The stable checkpoint goes into every VIEW-CHANGE this replica sends: check it
    // as the others will.
    if let Err(invalid) = config.verifier.check_checkpoint(&durable.stable) {
        return Err(StoreError::Corrupt(format!(
            "the stable checkpoint at height {}: {invalid}",
            durable.stable.height
        )));
    }
    let mut applied = Vec::new();
    // A database restored from a snapshot holds no blocks below its history.
    let first = (durable.stable.height + 1).max(store.history_from());
    for height in first..=header.height {
        if let Some(header) = store.header(height)? {
            applied.push((height, header.hash()));
        }
    }
    Ok(Some(
        Replica::new(config, Tip { header, log }, durable, applied, now_ms())
            .with_membership(Arc::new(membership)),
    ))
}

/// Who a member of `membership`, in force in `store`, talks to besides the members:
/// its learners, and the members the change that started it removed (read from the
/// membership before it), which fetch the blocks that tell them so.
pub fn observers(store: &Store, membership: &Membership) -> Result<Vec<Member>, StoreError> {
    let before = match membership.since {
        0 | 1 => None,
        since => Some(store.membership_at(since - 1)?),
    };
    let removed = before
        .iter()
        .flat_map(|before| before.members.as_slice())
        .filter(|member| membership.members.key_of(&member.node_id).is_none())
        .filter(|member| {
            !membership
                .learners
                .iter()
                .any(|l| l.node_id == member.node_id)
        });
    Ok(membership.learners.iter().chain(removed).cloned().collect())
}

/// The other members of `membership` that have a peer address, by member index,
/// then `observers` with one, numbered after the members.
pub fn peers(
    membership: &Membership,
    observers: &[Member],
    me: MemberIndex,
) -> Vec<(MemberIndex, String)> {
    let all = membership.members.as_slice().iter().chain(observers);
    all.enumerate()
        .filter(|(index, _)| *index != usize::from(me))
        .filter_map(|(index, member)| Some((index as MemberIndex, member.p2p_addr.clone()?)))
        .collect()
}

struct Driver {
    halt: Arc<AtomicBool>,
    /// The replica's configuration, to rebuild it after a database failure.
    config: Config,
    replica: Replica,
    store: Arc<Store>,
    transport: Arc<Transport>,
    /// The frames for peers, in order (`Outbox`); entries go straight to the queues.
    sends: Outbox,
    events: SyncSender<DriverEvent>,
    status: Arc<Mutex<ClusterStatus>>,
    pending: Arc<Mutex<HashMap<Hash, Held>>>,
    left: Arc<LeftPool>,
    metrics: Arc<Metrics>,
    plugins: Arc<Plugins>,
    settings: ClusterSettings,
    mining_threads: std::num::NonZeroUsize,
    /// An event taken from the queue while gathering submits, handled next.
    deferred: Option<DriverEvent>,
    /// The time last told to the replica, ms.
    clock_ms: u64,
    /// The height the next difficulty was last worked out for.
    published_height: Option<u64>,
    /// The view and whether it was in force, as last counted and told in the log.
    told_view: Option<(u64, bool)>,
    waiters: HashMap<Hash, Vec<Waiter>>,
    /// Records not yet durable; written before the next output leaves the thread.
    persist: Vec<Record>,
    /// Messages for peers decided during this turn, sent once its records are
    /// durable (one write covers every input of the turn).
    outbox: Vec<Output>,
    /// Since when blocks were applied that are not durable yet, if any.
    unsynced: Option<Instant>,
    /// Entries committed here by the start of the current rate window, and when it
    /// started; the rate over the last whole window (entries a second).
    rate_window: (u64, Instant),
    commit_rate: f64,
    /// Forwards of entries that found the peer's send queue full, by peer, oldest
    /// first: sent again after each turn while the replica still holds the entry.
    /// Lost, they would wait out a view-change timeout with the primary blamed for
    /// it. By peer, so that a peer that is down holds back no other's.
    unforwarded: HashMap<MemberIndex, VecDeque<Entry>>,
    /// Client entries admitted to the pool that the replica has not taken yet: its
    /// pool was full, or the database was failing. Offered again at every tick.
    held: Vec<Entry>,
    /// Spaces the attempts to reopen a failed database.
    recovery: Backoff,
    /// The cancel flag of the block being mined.
    mining: Option<Arc<AtomicBool>>,
    /// The miner thread's jobs: one thread for the driver's life, started at the
    /// first block (and again should it have died), rather than one per block.
    miner: Option<std::sync::mpsc::Sender<MiningJob>>,
    /// The peer the next catch-up request goes to (rotating over members).
    next_peer: usize,
    /// Warnings about refused inputs, by reason and sender, at a bounded rate.
    drop_warnings: Throttle<(DropReason, Option<MemberIndex>)>,
    /// Once a change removed this node: the members that stay (by index in its last
    /// membership), to hand its entries to.
    departing: Option<Vec<MemberIndex>>,
    /// The behaviour this member's outputs are rewritten with (test-only build).
    #[cfg(feature = "byzantine")]
    rogue: Option<crate::sim::Rogue>,
}

impl Driver {
    fn run(mut self, queue: Receiver<DriverEvent>) {
        while let Err(error) = self.drive(&queue) {
            self.cancel_mining();
            let what = if error.is_io_failure() {
                "the database failed"
            } else if error.damage().is_some() {
                "the database is damaged"
            } else {
                "the store refused a step"
            };
            tracing::error!(
                %error,
                "consensus paused: {what}; the replica is rebuilt from what is durable \
                 once the database serves again"
            );
            if !self.recover(&queue) {
                break;
            }
        }
        self.cancel_mining();
        // A clean stop leaves nothing to fetch again at the next start.
        if let Err(error) = self.sync() {
            tracing::warn!(%error, "the last blocks applied could not be made durable");
        }
    }

    /// Runs the replica until a stop (`Ok`) or a store failure (`Err`).
    fn drive(&mut self, queue: &Receiver<DriverEvent>) -> Result<(), StoreError> {
        let mut next_tick = Instant::now();
        loop {
            if self.halt.load(Ordering::Relaxed) {
                return Ok(());
            }
            if self.departing.is_some() {
                self.depart(queue);
                return Ok(());
            }
            let wait = self
                .wake_at(next_tick)
                .saturating_duration_since(Instant::now());
            let next = match self.deferred.take() {
                Some(event) => Ok(event),
                None => queue.recv_timeout(wait),
            };
            match next {
                Ok(DriverEvent::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    return self.end_turn()
                }
                Ok(mut event) => {
                    // Entries are dated by the replica's clock, and a tick is longer
                    // than the block delay: the turn starts with the time.
                    self.clock()?;
                    // What queued behind the first event joins its turn: under load,
                    // one durable write then covers the votes of several messages
                    // and blocks instead of one write each.
                    let mut taken = 1;
                    loop {
                        if matches!(event, DriverEvent::Stop) {
                            return self.end_turn();
                        }
                        self.on_event(event, queue)?;
                        if taken == TURN_EVENTS {
                            break;
                        }
                        match self.deferred.take().map_or_else(|| queue.try_recv(), Ok) {
                            Ok(next) => event = next,
                            Err(_) => break,
                        }
                        taken += 1;
                    }
                    self.end_turn()?;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() < next_tick {
                // Woken for a block falling due (a turn told the time at its start).
                let due = self.replica.cut_due_ms();
                if due.is_some_and(|due| due > self.clock_ms && due <= now_ms()) && self.clock()? {
                    self.end_turn()?;
                }
            } else {
                next_tick = Instant::now() + self.settings.tick;
                // A failure any read noticed (serving a peer, the API) stops the
                // replica too: its next write would fail, and it must not speak
                // on state it could not keep.
                if let Some(failure) = self.store.failure() {
                    return Err(StoreError::Unavailable(failure));
                }
                self.forget_gone_waiters();
                if self
                    .unsynced
                    .is_some_and(|since| since.elapsed() >= SYNC_EVERY)
                {
                    self.sync()?;
                }
                let now = now_ms();
                self.clock_ms = self.clock_ms.max(now);
                self.step(Input::Tick { now_ms: now })?;
                if !self.held.is_empty() {
                    self.offer(Vec::new())?;
                }
                self.end_turn()?;
                #[cfg(feature = "byzantine")]
                if let Some(rogue) = &mut self.rogue {
                    for (to, message) in rogue.replays(&self.replica) {
                        self.send(to, &Wire::Consensus(message));
                    }
                }
            }
        }
    }

    /// Tells the replica the time if it moved since last told; whether it did.
    fn clock(&mut self) -> Result<bool, StoreError> {
        let now = now_ms();
        if now <= self.clock_ms {
            return Ok(false);
        }
        self.clock_ms = now;
        self.step(Input::Clock { now_ms: now })?;
        Ok(true)
    }

    /// The next tick, or sooner the time a block falls due, if the replica has not
    /// been told that time yet (told it and not cut, the block waits for an input).
    fn wake_at(&self, next_tick: Instant) -> Instant {
        match self.replica.cut_due_ms() {
            Some(due) if due > self.clock_ms => {
                let ahead = Duration::from_millis(due.saturating_sub(now_ms()));
                next_tick.min(Instant::now() + ahead)
            }
            _ => next_tick,
        }
    }

    fn cancel_mining(&mut self) {
        if let Some(cancel) = self.mining.take() {
            cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Waits with a back-off until the database is reopened and a replica rebuilt
    /// from it, handing it the entries the old one held; false if stopped first.
    /// Meanwhile frames are dropped (peers resend what matters) and new submits are
    /// refused by the node, which sees the store's failure.
    fn recover(&mut self, queue: &Receiver<DriverEvent>) -> bool {
        loop {
            let until = Instant::now() + self.recovery.wait();
            while let Some(wait) = until.checked_duration_since(Instant::now()) {
                if self.halt.load(Ordering::Relaxed) {
                    return false;
                }
                match queue.recv_timeout(wait) {
                    Ok(DriverEvent::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
                    Ok(DriverEvent::Submit { entry, waiter }) => {
                        // Admitted before the failure was seen: kept for the rebuilt
                        // replica, like the entries the old one held.
                        if let Some(waiter) = waiter {
                            self.waiters.entry(entry.id()).or_default().push(waiter);
                        }
                        self.held.push(entry);
                    }
                    Ok(DriverEvent::Frame(_)) => {
                        self.metrics.messages_dropped.add("store_failed", 1)
                    }
                    Ok(DriverEvent::Cut | DriverEvent::Mined(_))
                    | Err(RecvTimeoutError::Timeout) => {}
                }
            }
            // Each failed attempt is logged by the store, at a bounded rate.
            let reopens = self.store.failure().is_some();
            if reopens && self.store.recover().is_err() {
                continue;
            }
            let replica = match resume(&self.store, &self.config) {
                Ok(Some(replica)) => replica,
                Ok(None) => {
                    self.removed();
                    self.depart(queue);
                    return false;
                }
                Err(error) => {
                    tracing::debug!(%error, "the replica cannot be rebuilt yet");
                    continue;
                }
            };
            let mut held = self.replica.pending_entries();
            held.append(&mut self.held);
            let epoch = self.replica.epoch();
            self.replica = replica;
            // A failure at an epoch's end leaves the switch to the rebuilt replica.
            if self.replica.epoch() != epoch {
                self.reconfigure_transport();
            }
            // What the old replica decided but could not make durable was never
            // sent; the rebuilt one decides afresh.
            self.persist.clear();
            self.outbox.clear();
            if reopens {
                // The reopened database holds what was durable; the rest is fetched
                // again.
                self.unsynced = None;
            }
            self.forget_gone_waiters();
            self.held = held;
            if self
                .offer(Vec::new())
                .and_then(|()| self.end_turn())
                .is_err()
            {
                continue;
            }
            self.settle_applied_elsewhere();
            self.recovery.succeeded();
            tracing::info!(
                height = self.replica.height(),
                view = self.replica.view(),
                "consensus resumes"
            );
            return true;
        }
    }

    /// Handles one event; submits queued right behind a submit join it in one step.
    fn on_event(
        &mut self,
        event: DriverEvent,
        queue: &Receiver<DriverEvent>,
    ) -> Result<(), StoreError> {
        match event {
            DriverEvent::Frame(Inbound { from, frame }) => match Wire::decode(&frame) {
                Ok(wire) => {
                    self.metrics.messages_in.add(wire.kind(), 1);
                    self.on_wire(from, wire)
                }
                Err(error) => {
                    // Only a faulty or foreign peer sends this: its frames cannot be
                    // trusted to resynchronise, so the connection goes.
                    self.metrics.messages_dropped.add("undecodable", 1);
                    self.transport
                        .cut_off(from, &format!("undecodable frame: {error}"));
                    Ok(())
                }
            },
            DriverEvent::Submit { entry, waiter } => {
                let mut batch = vec![(entry, waiter)];
                while batch.len() < SUBMIT_BATCH {
                    match queue.try_recv() {
                        Ok(DriverEvent::Submit { entry, waiter }) => batch.push((entry, waiter)),
                        Ok(other) => {
                            self.deferred = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.submit_batch(batch)
            }
            DriverEvent::Cut => self.step(Input::Cut),
            DriverEvent::Mined(block) => self.step(Input::Mined(Arc::new(block))),
            DriverEvent::Stop => Ok(()),
        }
    }

    /// Gives the replica a batch of client submits in one step.
    fn submit_batch(&mut self, batch: Vec<Submission>) -> Result<(), StoreError> {
        let mut entries = Vec::with_capacity(batch.len());
        for (entry, waiter) in batch {
            if let Some(waiter) = waiter {
                self.waiters.entry(entry.id()).or_default().push(waiter);
            }
            entries.push(entry);
        }
        self.offer(entries)
    }

    /// Offers the replica, in one step, the held entries it has room for (oldest
    /// first), then `fresh` client entries as far as room remains; the rest are
    /// held, in arrival order, and offered again at the next tick. Admission
    /// reserved their places, so none is dropped for want of room. The replica
    /// refuses one it has room for only when it is committed already (another
    /// member's client gave it too: it leaves the pool, its waiters get the receipt
    /// from the store) or when its index cannot be read (held: the store is
    /// failing, and recovery offers it to the rebuilt replica); it lets go at once
    /// of one its plugins' block rules refuse in any block (`Output::Unpooled`,
    /// its waiters told why). When the step fails, whatever the replica did not
    /// take is held too.
    fn offer(&mut self, fresh: Vec<Entry>) -> Result<(), StoreError> {
        let mut room = self
            .config
            .max_pending
            .saturating_sub(self.replica.footprint().pending);
        let older = room.min(self.held.len());
        room -= older;
        let mut entries: Vec<Entry> = self.held.drain(..older).collect();
        let mut fresh = fresh.into_iter();
        entries.extend(fresh.by_ref().take(room));
        let mut later: Vec<Entry> = std::mem::take(&mut self.held);
        later.extend(fresh);
        if entries.is_empty() {
            self.held = later;
            return Ok(());
        }
        let ids: Vec<Hash> = entries.iter().map(Entry::id).collect();
        let stepped = self.step(Input::Entries(entries.clone()));
        let mut again = Vec::new();
        for (position, (entry, id)) in entries.into_iter().zip(ids).enumerate() {
            if self.replica.is_pending(&id) {
                continue;
            }
            if stepped.is_ok() && self.settle_if_committed(&id) {
                continue;
            }
            if stepped.is_ok() && !lock(&self.pending).contains_key(&id) {
                continue; // taken, and let go at once (`Output::Unpooled`)
            }
            // Held entries offered again keep their place ahead of what waited
            // behind them; fresh ones go after.
            if position < older {
                again.push(entry);
            } else {
                later.push(entry);
            }
        }
        again.append(&mut later);
        self.held = again;
        stepped
    }

    /// After a rebuild: entries in the pool that neither the new replica nor the
    /// held list has are in blocks the old replica applied. Those the store has
    /// (their apply reported an error after the block reached the disk) leave the
    /// pool and their waiters get receipts; the others are in blocks a quorum
    /// certified, which catch-up brings back and applies.
    fn settle_applied_elsewhere(&mut self) {
        let held: HashSet<Hash> = self.held.iter().map(Entry::id).collect();
        let unaccounted: Vec<Hash> = lock(&self.pending)
            .keys()
            .filter(|id| !held.contains(*id) && !self.replica.is_pending(id))
            .copied()
            .collect();
        for id in unaccounted {
            self.settle_if_committed(&id);
        }
    }

    /// If the store has `id` committed: it leaves the pool and its waiters get the
    /// receipt. False when it is not committed or cannot be read.
    fn settle_if_committed(&mut self, id: &Hash) -> bool {
        let Ok(Some((_, receipt))) = self.store.entry_with_receipt(id) else {
            return false;
        };
        lock(&self.pending).remove(id);
        for waiter in self.waiters.remove(id).unwrap_or_default() {
            let _ = waiter.send(Ok(receipt.clone()));
        }
        true
    }

    /// Gives the replica an entry another member forwarded, and mirrors it if
    /// taken (the replica counts what it refuses).
    fn take_forwarded(&mut self, entry: Entry) -> Result<(), StoreError> {
        let id = entry.id();
        self.step(Input::Entry {
            entry,
            forwarded: true,
        })?;
        if self.replica.is_pending(&id) {
            lock(&self.pending).entry(id).or_insert(Held {
                since: Instant::now(),
                own: false,
            });
        }
        Ok(())
    }

    fn on_wire(&mut self, from: MemberIndex, wire: Wire) -> Result<(), StoreError> {
        // An observer (a learner, a member just removed) fetches and forwards entries.
        let observer = usize::from(from) >= self.replica.members();
        let fetch_or_entry = matches!(
            wire,
            Wire::FetchCommitted { .. } | Wire::FetchBlock { .. } | Wire::Entry(_)
        );
        if observer && !fetch_or_entry {
            self.metrics.messages_dropped.add("from_observer", 1);
            return Ok(());
        }
        match wire {
            Wire::Consensus(message) => {
                #[cfg(feature = "byzantine")]
                if let Some(rogue) = &mut self.rogue {
                    rogue.observe(&message);
                }
                self.step(Input::Message(message))
            }
            Wire::Entry(entry) => self.take_forwarded(entry),
            Wire::Committed { block, certificate } => self.step(Input::Committed {
                block: Arc::new(block),
                certificate,
            }),
            Wire::Block(block) => self.step(Input::Block(Arc::new(block))),
            // Serving a peer reads, never writes: a read that fails (the store has
            // logged the damage or the failure) leaves this peer unanswered, and
            // it asks another. What it serves from the replica (a NEW-VIEW, a
            // block it proposed) may have been decided earlier in this turn: the
            // turn's records are made durable first.
            Wire::FetchCommitted {
                after,
                entered_view,
            } => {
                self.end_turn()?;
                let _ = self.serve_committed(from, after, entered_view);
                Ok(())
            }
            Wire::FetchBlock { height, hash } => {
                self.end_turn()?;
                let block = match self.replica.block(&hash) {
                    Some(block) => Some(Block::clone(&block)),
                    None => self.store.block(height).ok().flatten(),
                };
                if let Some(block) = block.filter(|block| block.hash() == hash) {
                    self.send(from, &Wire::Block(block));
                }
                Ok(())
            }
            // These travel on request connections only (net::Requester).
            Wire::FetchSnapshot { .. }
            | Wire::Snapshot(_)
            | Wire::FetchChunk { .. }
            | Wire::Chunk(_)
            | Wire::FetchCommittedAt { .. }
            | Wire::FetchPrepared
            | Wire::Prepared(_)
            | Wire::Unavailable { .. } => {
                self.metrics.messages_dropped.add("misplaced_request", 1);
                Ok(())
            }
        }
    }

    /// Answers a catch-up request with up to a batch of committed blocks, and with
    /// the NEW-VIEW of this view if the asker has not entered it.
    fn serve_committed(
        &mut self,
        to: MemberIndex,
        after: u64,
        entered_view: u64,
    ) -> Result<(), StoreError> {
        if let Some(new_view) = self.replica.new_view_since(entered_view) {
            self.send(to, &Wire::Consensus(new_view.clone()));
        }
        let tip = self.replica.height();
        let last = tip.min(after.saturating_add(self.settings.catch_up_batch));
        for height in after.saturating_add(1)..=last {
            let Some((block, certificate)) = self.store.committed_block(height)? else {
                break;
            };
            self.send(to, &Wire::Committed { block, certificate });
        }
        Ok(())
    }

    /// Sends `wire` to `to` behind this driver's earlier sends and broadcasts
    /// (`Outbox`). A full queue means the peer is slow or away; the replica resends
    /// what matters.
    fn send(&self, to: MemberIndex, wire: &Wire) {
        self.metrics.messages_out.add(wire.kind(), 1);
        if !self.sends.send(to, Arc::from(wire.encode())) {
            self.metrics.messages_dropped.add("send_queue_full", 1);
        }
    }

    /// Whether an entry went straight into `to`'s queue, as its sender needs to
    /// know (entries keep no order with the driver's other frames).
    fn send_entry(&self, to: MemberIndex, entry: &Entry) -> bool {
        self.metrics.messages_out.add("entry", 1);
        let queued = queue_entry(&self.transport, to, entry).is_ok();
        if !queued {
            self.metrics.messages_dropped.add("send_queue_full", 1);
        }
        queued
    }

    fn broadcast(&self, wire: &Wire) {
        let peers = self.replica.members().saturating_sub(1) as u64;
        self.metrics.messages_out.add(wire.kind(), peers);
        if !self.sends.broadcast(Arc::from(wire.encode())) {
            self.metrics.messages_dropped.add("send_queue_full", peers);
        }
    }

    /// Feeds one input and performs the outputs; once they applied the epoch's last
    /// block, moves to the next epoch.
    fn step(&mut self, input: Input) -> Result<(), StoreError> {
        let outputs = self.replica.handle(input, &Committed(&self.store));
        #[cfg(feature = "byzantine")]
        let outputs = match &mut self.rogue {
            Some(rogue) => rogue.tamper(outputs, &self.replica),
            None => outputs,
        };
        // Done first: a write that fails below must not leave an entry the replica
        // let go pending here, and its waiters waiting, for good.
        for output in &outputs {
            if let Output::Unpooled { id, why } = output {
                self.let_go(id, why);
            }
        }
        for output in outputs {
            match output {
                Output::Persist(record) => self.persist.push(record),
                Output::Send { .. }
                | Output::Broadcast(_)
                | Output::Forward { .. }
                | Output::FetchBlock { .. }
                | Output::FetchCommitted { .. } => self.outbox.push(output),
                Output::Apply { .. } => {
                    // The records decided before it are durable before the block.
                    self.flush()?;
                    self.perform(output)?;
                }
                // Neither leaves the node: a mined block comes back as an input,
                // whose proposal is persisted before it is sent.
                Output::Mine(_) | Output::CancelMining | Output::Dropped { .. } => {
                    self.perform(output)?
                }
                Output::Unpooled { .. } => {}
            }
        }
        // Once removed, the old replica still names the next epoch: no second switch
        // (and no second word of the removal) before the driver departs.
        if self.replica.next_membership().is_some() && self.departing.is_none() {
            self.end_turn()?;
            return self.switch_epoch();
        }
        self.publish();
        Ok(())
    }

    /// The replica applied its epoch's last block: the replica of the next epoch
    /// resumes from the store (which moves its state into that epoch) and takes the
    /// entries the old one held, and the transport dials the new members. A node the
    /// change removed stops ordering.
    fn switch_epoch(&mut self) -> Result<(), StoreError> {
        self.cancel_mining();
        let Some(replica) = resume(&self.store, &self.config)? else {
            self.removed();
            return Ok(());
        };
        let mut held = self.replica.pending_entries();
        self.replica = replica;
        self.reconfigure_transport();
        let membership = Arc::clone(self.replica.membership());
        tracing::info!(
            epoch = membership.epoch,
            since = membership.since,
            members = membership.members.len(),
            learners = membership.learners.len(),
            member = self.replica.me(),
            quorum = membership.members.quorum(),
            "membership epoch {} in force from height {}",
            membership.epoch,
            membership.since
        );
        held.append(&mut self.held);
        self.held = held;
        self.offer(Vec::new())?;
        self.end_turn()?;
        self.publish();
        Ok(())
    }

    /// Points the transport at the replica's membership, once the frames given
    /// before are in the queues of the membership they were for.
    fn reconfigure_transport(&self) {
        self.sends.flush();
        let membership = Arc::clone(self.replica.membership());
        // Unread, the members the last change removed are left out: they catch up
        // no further than their removal, and learners still observe.
        let observers =
            observers(&self.store, &membership).unwrap_or_else(|_| membership.learners.clone());
        self.transport.reconfigure(
            &membership.members,
            &observers,
            self.replica.me(),
            peers(&membership, &observers, self.replica.me()),
        );
    }

    /// A membership change removed this node: it hands the entries it held to the
    /// members that stay (clients were told they were accepted), orders nothing
    /// more, and says so in its log, its status and `/readyz`.
    fn removed(&mut self) {
        self.cancel_mining();
        let membership = self.store.membership_in_force();
        // Through this epoch's connections: the members that stay take this node as
        // an observer, whose forwarded entries they take.
        let staying: Vec<MemberIndex> = membership
            .members
            .as_slice()
            .iter()
            .filter_map(|member| self.replica.index_of(&member.node_id))
            .collect();
        let failure = EngineFailure::Removed {
            epoch: membership.epoch,
            since: membership.since,
        };
        tracing::error!("{failure}");
        lock(&self.status).failure = Some(failure);
        self.departing = Some(staying);
    }

    /// After a removal: sends the entries this node held to the members that stay,
    /// again every [`DEPART_RESEND`] for [`DEPART_FOR`] (the others reconnect to it
    /// as an observer at their own switch, and a frame sent in between is lost;
    /// they drop what they hold or committed already), with any submit that was
    /// still queued; then the driver ends.
    fn depart(&mut self, queue: &Receiver<DriverEvent>) {
        let Some(staying) = self.departing.take() else {
            return;
        };
        // Collected now, not at the removal: the rest of the turn that removed this
        // node may have given the replica submits (an entry accepted then was lost).
        let mut held = self.replica.pending_entries();
        held.append(&mut self.held);
        let until = Instant::now() + DEPART_FOR;
        while Instant::now() < until && !self.halt.load(Ordering::Relaxed) {
            for entry in &held {
                for &to in &staying {
                    self.send_entry(to, entry);
                }
            }
            let resend = Instant::now() + DEPART_RESEND;
            while let Some(wait) = resend.checked_duration_since(Instant::now()) {
                match queue.recv_timeout(wait) {
                    Ok(DriverEvent::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    Ok(DriverEvent::Submit { entry, .. }) => held.push(entry),
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                }
            }
        }
        tracing::info!(
            entries = held.len(),
            "handed the entries this node held to the members that stay"
        );
    }

    /// Clients that gave up waiting are forgotten (a client asking again and again
    /// for an entry that cannot commit yet would otherwise leave a waiter per try);
    /// the rest are answered when their entries' blocks apply, here or through
    /// catch-up.
    fn forget_gone_waiters(&mut self) {
        self.waiters.retain(|_, senders| {
            senders.retain(|sender| !sender.is_closed());
            !senders.is_empty()
        });
    }

    /// Makes the blocks applied so far durable, if some are not.
    fn sync(&mut self) -> Result<(), StoreError> {
        if self.unsynced.is_some() {
            self.store.sync()?;
            self.unsynced = None;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if !self.persist.is_empty() {
            self.store.persist(&self.persist)?;
            self.persist.clear();
        }
        Ok(())
    }

    /// Ends a turn: its records are made durable, then its messages leave (C&L
    /// TOCS §6.1: nothing is said that a crash could make the node forget). When
    /// the write fails nothing is sent, as if the node had crashed before it.
    fn end_turn(&mut self) -> Result<(), StoreError> {
        let vouches = self.outbox.iter().any(|output| {
            matches!(output, Output::Broadcast(message)
                if matches!(message.payload, Payload::Checkpoint { .. }))
        });
        let written = self.flush().and_then(|()| match vouches {
            true => self.sync(),
            false => Ok(()),
        });
        if let Err(error) = written {
            self.outbox.clear();
            return Err(error);
        }
        for output in std::mem::take(&mut self.outbox) {
            self.perform(output)?;
        }
        self.forward_again();
        Ok(())
    }

    /// Sends again, in order, the forwards a full queue refused, to each peer until
    /// one is refused again; those whose entry the replica no longer holds, or whose
    /// peer is gone from the roster, are dropped.
    fn forward_again(&mut self) {
        let (replica, transport, metrics) = (&self.replica, &self.transport, &self.metrics);
        self.unforwarded.retain(|to, queue| {
            while let Some(entry) = queue.front() {
                if replica.is_pending(&entry.id()) {
                    match queue_entry(transport, *to, entry) {
                        Ok(()) => metrics.messages_out.add("entry", 1),
                        Err(SendError::QueueFull) => return true,
                        Err(SendError::UnknownPeer) => return false,
                    }
                }
                queue.pop_front();
            }
            false
        });
    }

    fn perform(&mut self, output: Output) -> Result<(), StoreError> {
        match output {
            Output::Send { to, message } => {
                self.send(to, &Wire::Consensus(message));
            }
            Output::Broadcast(message) => self.broadcast(&Wire::Consensus(message)),
            Output::Forward { to, entry } => {
                // Behind earlier refused ones to the same peer, in arrival order, and
                // bounded: past a pool's worth the oldest go (the replica shares what
                // still waits).
                let queued = self.unforwarded.contains_key(&to);
                if !queued && self.send_entry(to, &entry) {
                    return Ok(());
                }
                let queue = self.unforwarded.entry(to).or_default();
                if queue.len() >= self.config.max_pending {
                    queue.pop_front();
                }
                queue.push_back(entry);
            }
            Output::Apply { block, certificate } => {
                let started = Instant::now();
                // Durable before this member's checkpoint vouches for it (`end_turn`),
                // and within `SYNC_EVERY`: until then the Prepared records hold it.
                let nodes = self.store.apply_block_deferred(&block, &certificate)?;
                self.unsynced.get_or_insert(started);
                lock(&self.status).refused_committed = None;
                let metrics = &self.metrics;
                metrics.block_applied(&block.header, block.entries.len(), started.elapsed());
                if !(lock(&self.pending).is_empty() && self.waiters.is_empty()) {
                    // Each id hashes the whole entry: once for both maps, and before the
                    // lock the API's admission takes too.
                    let ids: Vec<Hash> = block.entries.iter().map(Entry::id).collect();
                    let mut pending = lock(&self.pending);
                    for id in &ids {
                        match pending.remove(id) {
                            Some(held) if held.own => {
                                metrics.commit_latency.observe(held.since.elapsed())
                            }
                            _ => {}
                        }
                    }
                    crate::shrink_sparse(&mut pending);
                    drop(pending);
                    self.answer_waiters(&block, &ids, &certificate, &nodes);
                }
                self.plugins.committed(&block);
            }
            Output::Mine(template) => self.mine(template),
            Output::CancelMining => self.cancel_mining(),
            Output::FetchBlock { height, hash } => {
                self.broadcast(&Wire::FetchBlock { height, hash });
            }
            Output::FetchCommitted {
                after,
                entered_view,
            } => {
                let peer = self.next_catch_up_peer();
                self.send(
                    peer,
                    &Wire::FetchCommitted {
                        after,
                        entered_view,
                    },
                );
            }
            Output::Dropped {
                from,
                kind,
                reason,
                error,
            } => self.count_drop(from, kind, reason, error),
            Output::Unpooled { id, why } => self.let_go(&id, &why),
            Output::Persist(_) => {}
        }
        Ok(())
    }

    fn next_catch_up_peer(&mut self) -> MemberIndex {
        let members = self.replica.members();
        let me = usize::from(self.replica.me());
        self.next_peer = (self.next_peer + 1) % members;
        if self.next_peer == me {
            self.next_peer = (self.next_peer + 1) % members;
        }
        self.next_peer as MemberIndex
    }

    /// Counts a refused input. What only a faulty or misconfigured peer sends (an
    /// invalid block, a bad signature, equivocation, a bogus NEW-VIEW) is logged at
    /// warn with the rule it broke, at most once per sender and reason per
    /// [`WARN_EVERY`]; the rest (stale, duplicate, out-of-window messages) is the
    /// normal noise of an asynchronous network.
    fn count_drop(
        &mut self,
        from: Option<MemberIndex>,
        kind: &'static str,
        reason: DropReason,
        error: Option<ChainError>,
    ) {
        self.metrics.messages_dropped.add(reason.name(), 1);
        if kind == COMMITTED_BLOCK && reason == DropReason::InvalidBlock {
            // Its certificate checked out: a quorum took what this member refuses.
            lock(&self.status).refused_committed = error.as_ref().map(ToString::to_string);
        }
        // An entry refused with a reason is one this member's rules refuse and
        // another member's took: members that run different plugins.
        let faulty = matches!(
            reason,
            DropReason::InvalidBlock
                | DropReason::BadSignature
                | DropReason::Conflicting
                | DropReason::InvalidNewView
        ) || (reason == DropReason::InvalidEntry && error.is_some());
        if !faulty {
            tracing::trace!(?from, kind, ?reason, "input dropped");
            return;
        }
        if let Some(suppressed) = self.drop_warnings.allow((reason, from)) {
            // An entry has no sender to name: a member forwarded it, or it is in
            // this member's pool.
            let sender = from.map_or_else(String::new, |m| format!(" from member {m}"));
            match error {
                Some(error) => tracing::warn!(
                    from = ?from, kind, reason = reason.name(), rule = %error, suppressed,
                    "refused a {kind}{sender}: {error}"
                ),
                None => tracing::warn!(
                    from = ?from, kind, reason = reason.name(), suppressed,
                    "refused a {kind}{sender}: {}", reason.name()
                ),
            }
        }
    }

    /// An entry the replica let go leaves the pool here too; its waiters are told why.
    fn let_go(&mut self, id: &Hash, why: &str) {
        // Noted before it leaves `pending`: a reader sees it pending or gone with why.
        self.left.note(*id, why);
        lock(&self.pending).remove(id);
        for waiter in self.waiters.remove(id).unwrap_or_default() {
            let _ = waiter.send(Err(why.to_owned()));
        }
    }

    /// Mines `template` on the miner thread; the result comes back as an input.
    fn mine(&mut self, template: Arc<Block>) {
        self.cancel_mining();
        let cancel = Arc::new(AtomicBool::new(false));
        self.mining = Some(cancel.clone());
        let mut job = (template, cancel);
        if let Some(jobs) = &self.miner {
            match jobs.send(job) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(refused)) => job = refused,
            }
        }
        let (jobs, queue) = std::sync::mpsc::channel::<MiningJob>();
        let threads = self.mining_threads;
        let events = self.events.clone();
        let metrics = self.metrics.clone();
        // Ends once the driver, and with it the sender, is gone.
        let spawned = std::thread::Builder::new()
            .name("miner".into())
            .spawn(move || {
                while let Ok((template, cancel)) = queue.recv() {
                    if cancel.load(Ordering::Relaxed) {
                        continue; // replaced while it queued: no hashing, no rate
                    }
                    let mut block = Block::clone(&template);
                    let started = Instant::now();
                    let report = pow::mine(&block.header, threads, &cancel);
                    metrics.record_mining(report.hashes, started.elapsed());
                    if let Outcome::Found { nonce, .. } = report.outcome {
                        block.header.nonce = nonce;
                        let _ = events.send(DriverEvent::Mined(block));
                    }
                }
            });
        match spawned {
            Ok(_) => {
                // The thread holds the receiver, so this send cannot fail.
                let _ = jobs.send(job);
                self.miner = Some(jobs);
            }
            // The entries wait; their timers move the view on if this persists.
            Err(error) => tracing::error!(%error, "cannot start a miner thread"),
        }
    }

    /// Hands receipts to the clients waiting here for entries of `block`, whose ids
    /// are `ids`.
    fn answer_waiters(
        &mut self,
        block: &Block,
        ids: &[Hash],
        certificate: &CommitCertificate,
        nodes: &AppendedNodes,
    ) {
        if self.waiters.is_empty() {
            return;
        }
        let first = block.header.log_size - ids.len() as u64;
        let waiting = (first..).zip(ids).filter_map(|(log_index, id)| {
            self.waiters
                .remove(id)
                .map(|senders| (*id, log_index, senders))
        });
        hand_out_receipts(&block.header, certificate, nodes, waiting);
        crate::shrink_sparse(&mut self.waiters);
    }

    /// Whether admission refuses new entries: while the pool would take a quarter of
    /// the view-change timeout to commit at the rate of the last second (at least
    /// ten full blocks, and 1,000 entries, a second assumed: the rate of an idle
    /// cluster says nothing of what it can do, and a stalled one still takes that
    /// many). A quarter, not a half: an entry that waits half a timeout goes to
    /// every member (`Replica::share_waiting`), and with the pool at half a timeout
    /// a flood sent four in ten entries three more times, slowed the cluster and
    /// made it change views (benches/README.md, "2026-12-05, a flood").
    fn shedding(&mut self, pending: usize) -> bool {
        let committed = self.metrics.entries_committed.load(Ordering::Relaxed);
        let (from, since) = self.rate_window;
        let elapsed = since.elapsed();
        if elapsed >= RATE_WINDOW {
            self.commit_rate = committed.saturating_sub(from) as f64 / elapsed.as_secs_f64();
            self.rate_window = (committed, Instant::now());
        }
        let floor = (10.0 * self.config.max_block_entries as f64).max(1_000.0);
        let drain_ms = pending as f64 * 1000.0 / self.commit_rate.max(floor);
        drain_ms >= self.config.timing.view_change_timeout_ms as f64 / 4.0
    }

    /// Counts the views this member left and tells the operator why (its own ask
    /// with the cause, or a quorum's) and, once a view is in force, its primary. A
    /// view resumed at start, or a new epoch's (whose views count from 0 again), is
    /// no view change: it is told once in force.
    fn track_view(&mut self) {
        let (view, active) = (self.replica.view(), self.replica.is_active());
        let told = self.told_view.replace((view, active));
        self.metrics.view.store(view, Ordering::Relaxed);
        let entered = match told {
            Some((last, _)) if view > last => {
                self.metrics
                    .view_changes
                    .fetch_add(view - last, Ordering::Relaxed);
                match self.replica.view_change_cause() {
                    Some((asked, cause)) if asked == view => {
                        tracing::warn!(%cause, "asking for view {view}")
                    }
                    _ => {
                        tracing::warn!("moved to view {view}, which a quorum of members asked for")
                    }
                }
                active
            }
            Some((last, was_active)) if view == last => active && !was_active,
            // Start, or a new epoch (its views count from 0 again).
            _ => active && view > 0,
        };
        if entered {
            tracing::info!(primary = self.replica.primary(), "view {view} in force");
        }
    }

    fn publish(&mut self) {
        let height = self.replica.height();
        let next_difficulty = (self.published_height != Some(height)).then(|| {
            self.published_height = Some(height);
            // A policy that cannot answer now is asked again at the next block.
            self.replica
                .next_difficulty(&Committed(&self.store))
                .unwrap_or(self.store.spec().difficulty)
        });
        let view = self.replica.view();
        // The pool as admission counts it, reservations included.
        let pending = lock(&self.pending).len();
        self.track_view();
        self.metrics
            .pool_size
            .store(pending as u64, Ordering::Relaxed);
        let waiting = self.waiters.values().map(Vec::len).sum::<usize>();
        self.metrics
            .commit_waiters
            .store(waiting as u64, Ordering::Relaxed);
        let shedding = self.shedding(pending);
        let mut status = lock(&self.status);
        status.me = self.replica.me();
        status.view = view;
        status.primary = self.replica.primary();
        status.active = self.replica.is_active();
        status.height = self.replica.height();
        status.stable_checkpoint = self.replica.stable_checkpoint().height;
        status.catching_up = self.replica.catching_up();
        status.abstaining_until = self
            .replica
            .abstaining()
            .then(|| self.replica.abstain_through());
        status.view_changes_from = self
            .replica
            .abstains_from_views()
            .then(|| self.replica.abstain_through());
        status.pending = pending;
        status.shedding = shedding;
        if let Some(next) = next_difficulty {
            status.next_difficulty = next;
        }
    }
}
