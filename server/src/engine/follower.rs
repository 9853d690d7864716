//! The engine of a follower: a node with its own key that is not a member. It reads
//! the chain through the members' client APIs (`GET /v1/blocks/{h}/committed`, the
//! genesis file's `api_addr`s), so the members need no change to serve it. Every
//! block is checked as a replica checks a committed block it fetched: a commit
//! certificate of a quorum of the genesis members, then the chain rules and the
//! plugins' policy, then applied. It never votes and never cuts a block; entries
//! submitted to it are checked here, then forwarded to a member, and their waiters
//! get their receipts once the follower applies the block that holds them.
//!
//! One member is read from at a time; it is left for the next when it fails, serves
//! a block that fails its checks (named in the log), or says it has no next block
//! while another has it (a member that lags or withholds blocks costs at most one
//! probe interval).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{
    lock, now_ms, required_difficulty, send_receipts, EngineStatus, LeftPool, MineError,
    NodeSettings, SubmitError, Submitted, Waiter, LEFT_POOL,
};
use crate::api::types::SubmitRequest;
use crate::chain::{fit_block, Block, ChainError, CommitCertificate, Entry, Hash, Header, Policy};
use crate::consensus::MemberIndex;
use crate::join::{self, Fetch};
use crate::metrics::Metrics;
use crate::plugin_host::Plugins;
use crate::storage::{Store, StoreError};

/// How long a caught-up follower waits before asking for the next block again.
const POLL: Duration = Duration::from_millis(50);
/// How often a caught-up follower asks the other members whether they are ahead of
/// the one it reads from.
const PROBE_OTHERS: Duration = Duration::from_secs(1);
/// Longest wait for one member's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forwarded entry is tracked for its receipt. One its member lost, or
/// whose member stopped answering, is forwarded again ([`Follower::ask_left`]);
/// while no member can be reached, or they lie, its waiter is told after this.
const FORWARD_PATIENCE: Duration = Duration::from_secs(600);
/// How long no member has answered before a follower says so (readiness): it
/// reads from one every [`POLL`] and asks one's height every [`PROBE_OTHERS`], and
/// a member that drops what it is sent holds a pass of its loop up to two
/// [`REQUEST_TIMEOUT`]s, so this is many unanswered requests, not one slow member.
const UNHEARD: Duration = Duration::from_secs(30);
/// Blocks applied back to back, with never a poll finding nothing new, that make a
/// follower one catching up: more than the members commit between two polls.
const CATCHING_UP_BLOCKS: u64 = 16;

/// How old a forwarded entry is before the member that took it is asked whether it
/// let it go: a commit takes far less.
const ASK_AFTER: Duration = Duration::from_secs(2);
/// How often one entry is asked about.
const ASK_AGAIN: Duration = Duration::from_secs(5);
/// Most entries asked about in one round.
const ASK_AT_MOST: usize = 32;
/// Longest wait for a member's answer about one entry.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Asks in a row the member that took an entry leaves unanswered before the entry
/// is forwarded again: that member may be gone for good (stopped, or removed by a
/// change) with the entry in its pool, and the follower would answer its client's
/// resubmits 409 until [`FORWARD_PATIENCE`] ran out. A member only slow to answer
/// costs a second copy, which the chain's id index keeps from committing twice.
const SILENT_ASKS: u32 = 2;

/// What the member that took a forwarded entry says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Said {
    /// It let the entry go uncommitted (404 `left_pool`).
    Left,
    /// It knows nothing of the entry (404 `not_found`): it lost its pool, as in a
    /// restart, or forgot that it let the entry go, and orders it no more.
    Unknown,
    /// Anything else: it holds the entry, or committed it.
    Holds,
}

/// What the member at `taker` says of `id`; `None` if it could not be asked.
fn asked(agent: &ureq::Agent, taker: &str, id: &Hash) -> Option<Said> {
    let url = format!("{taker}/v1/entries/{}", id.to_hex());
    let mut response = agent
        .get(&url)
        .config()
        .timeout_global(Some(ASK_TIMEOUT))
        .build()
        .call()
        .ok()?;
    if response.status().as_u16() != 404 {
        return Some(Said::Holds);
    }
    let body = join::body(&mut response, 4 << 10).ok()?;
    let Ok(body) = serde_json::from_slice::<crate::api::ErrorBody>(&body) else {
        return Some(Said::Holds);
    };
    Some(match body.error.as_str() {
        LEFT_POOL => Said::Left,
        "not_found" => Said::Unknown,
        _ => Said::Holds,
    })
}

/// A member that took a forwarded entry.
struct Taken {
    /// Its base URL.
    by: String,
    /// Whether it held the entry already (409).
    before: bool,
}

/// Posts `entry` to `sources` in turn, from the one at `first`, each given `timeout`,
/// until one takes it or holds it already, or refuses it for a reason another would
/// share.
fn forward(
    agent: &ureq::Agent,
    sources: &[String],
    first: usize,
    timeout: Duration,
    entry: &Entry,
) -> Result<Taken, SubmitError> {
    let body = serde_json::to_string(&SubmitRequest::from_entry(entry))
        .map_err(|error| SubmitError::NoMember(error.to_string()))?;
    let mut failures = Vec::new();
    let mut timed_out = false;
    for turn in 0..sources.len() {
        let source = &sources[(first + turn) % sources.len()];
        let answer = agent
            .post(&format!("{source}/v1/entries"))
            .header("content-type", "application/json")
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send(body.as_str());
        let mut response = match answer {
            Ok(response) => response,
            Err(error) => {
                timed_out |= matches!(error, ureq::Error::Timeout(_));
                failures.push(format!("{source}: {error}"));
                continue;
            }
        };
        let status = response.status().as_u16();
        let message = response
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .ok()
            .and_then(|body| serde_json::from_str::<crate::api::ErrorBody>(&body).ok())
            .map(|body| body.message)
            .unwrap_or_default();
        match status {
            200 | 202 | 409 => {
                let before = status == 409;
                let by = source.clone();
                return Ok(Taken { by, before });
            }
            413 | 422 => {
                return Err(SubmitError::RefusedByMember(format!(
                    "{source} refused the entry: {message}"
                )))
            }
            _ => failures.push(format!("{source}: HTTP {status} {message}")),
        }
    }
    let mut reason = failures.join("; ");
    if timed_out {
        // The entry may be on its way all the same: its id tells.
        reason.push_str(
            "; a member that timed out may have taken the entry: submit it again, or \
             ask for it by id, to learn what became of it",
        );
    }
    Err(SubmitError::NoMember(reason))
}

/// The answers of one round of [`Follower::ask_left`].
#[derive(Debug, Default)]
struct Answers {
    /// Entries their member said it let go.
    left: Vec<Hash>,
    /// Entries their member knew nothing of or left unanswered, with the member
    /// that took them again or holds them, and why they went again.
    forwarded_again: Vec<(Hash, String, &'static str)>,
    /// Entries still with the member that took them, and how many asks in a row it
    /// has left unanswered now.
    silent: Vec<(Hash, u32)>,
}

/// A forwarded entry waiting to be committed.
struct Forwarded {
    /// The entry, judged here again if a member says it let it go.
    entry: Entry,
    since: Instant,
    waiters: Vec<Waiter>,
    /// The base URL of the member that took it, once one did.
    taker: Option<String>,
    /// When that member was last asked whether it let the entry go.
    asked: Option<Instant>,
    /// Asks in a row that member left unanswered.
    silent: u32,
}

/// The engine of a follower (see the module docs).
pub struct Follower {
    store: Arc<Store>,
    plugins: Arc<Plugins>,
    metrics: Arc<Metrics>,
    settings: NodeSettings,
    /// The members' client API base URLs, in member order; replaced when a change
    /// brings another membership into force (see [`Follower::with_sources_from`]).
    sources: std::sync::RwLock<Arc<Vec<String>>>,
    /// The base URLs of a membership's members, and the epoch they were last made for.
    resolve: Option<(SourcesOf, AtomicU64)>,
    agent: ureq::Agent,
    /// The member read from and forwarded to first.
    preferred: AtomicU64,
    forwarded: Mutex<HashMap<Hash, Forwarded>>,
    /// Forwarded entries the member that took them let go, with why.
    left: LeftPool,
    /// The answers of the round of [`Follower::ask_left`] under way, if one is.
    asking: Mutex<Option<std::sync::mpsc::Receiver<Answers>>>,
    next_difficulty: AtomicU32,
    /// From the start until a member first says it has no block after the tip, and
    /// again after [`CATCHING_UP_BLOCKS`] applied back to back: readiness says so.
    /// A follower that reaches no member, or is refused, stays so.
    catching_up: AtomicBool,
    /// The highest height a member was seen to hold ([`UNKNOWN`] until one answered).
    members_height: AtomicU64,
    /// When a member last answered (the start, before one did).
    heard: Mutex<Instant>,
    /// Why this node refuses the block after its tip that the members certified,
    /// until it applies one (readiness says so).
    refused: Mutex<Option<String>>,
    /// Warnings of members that serve blocks failing their checks (a chain of
    /// another genesis file) or serve none, by member and kind, at a bounded rate.
    bad_blocks: Mutex<crate::throttle::Throttle<String>>,
}

/// The client API base URLs of a membership's members (this node left out).
pub type SourcesOf = Box<dyn Fn(&crate::chain::Members) -> Vec<String> + Send + Sync>;

/// [`Follower::members_height`] before any member answered.
const UNKNOWN: u64 = u64::MAX;

impl Follower {
    /// A follower of `store`'s chain reading from the members at `sources` with
    /// `agent` (whose timeout should be [`REQUEST_TIMEOUT`]).
    pub fn new(
        store: Arc<Store>,
        sources: Vec<String>,
        agent: ureq::Agent,
        settings: NodeSettings,
        plugins: Arc<Plugins>,
        metrics: Arc<Metrics>,
    ) -> Follower {
        let next_difficulty = AtomicU32::new(store.spec().difficulty);
        Follower {
            store,
            plugins,
            metrics,
            settings,
            sources: std::sync::RwLock::new(Arc::new(sources)),
            resolve: None,
            agent,
            preferred: AtomicU64::new(0),
            forwarded: Mutex::new(HashMap::new()),
            left: LeftPool::default(),
            asking: Mutex::new(None),
            next_difficulty,
            catching_up: AtomicBool::new(true),
            members_height: AtomicU64::new(UNKNOWN),
            heard: Mutex::new(Instant::now()),
            refused: Mutex::new(None),
            bad_blocks: Mutex::new(crate::throttle::Throttle::new(Duration::from_secs(10))),
        }
    }

    /// Checks `entry` as a member would, then hands it to a member; with `wait`, the
    /// receiver is told once this follower applies the block that holds it.
    pub async fn submit(
        self: &Arc<Self>,
        entry: Entry,
        wait: bool,
    ) -> Result<Submitted, SubmitError> {
        let id = super::check_entry(&self.store, &self.plugins, &entry).await?;
        let (waiter, receiver) = match wait {
            true => {
                let (sender, receiver) = oneshot::channel();
                (Some(sender), Some(receiver))
            }
            false => (None, None),
        };
        // Held before it is forwarded: the block that holds it may be applied here
        // before the member's answer arrives.
        {
            let mut forwarded = lock(&self.forwarded);
            if forwarded.contains_key(&id) {
                return Err(SubmitError::Duplicate(id));
            }
            if forwarded.len() >= self.settings.pool_capacity {
                return Err(SubmitError::PoolFull(self.settings.pool_capacity));
            }
            let since = Instant::now();
            let waiters = waiter.into_iter().collect();
            let held = Forwarded {
                entry: entry.clone(),
                since,
                waiters,
                taker: None,
                asked: None,
                silent: 0,
            };
            forwarded.insert(id, held);
        }
        // Its block may have been applied here between the check and the insert: then
        // no apply would ever hand its waiter a receipt.
        let store = Arc::clone(&self.store);
        match super::blocking(move || store.committed(&[id])).await {
            Ok(committed) if !committed.first().copied().unwrap_or(false) => {}
            outcome => {
                lock(&self.forwarded).remove(&id);
                return Err(match outcome {
                    Err(error) => error.into(),
                    Ok(_) => SubmitError::Duplicate(id),
                });
            }
        }
        let follower = Arc::clone(self);
        let outcome = tokio::task::spawn_blocking(move || follower.forward(&entry))
            .await
            .unwrap_or_else(|error| Err(SubmitError::NoMember(format!("forwarding: {error}"))));
        match outcome {
            Ok(taker) => {
                if let Some(held) = lock(&self.forwarded).get_mut(&id) {
                    held.taker = Some(taker);
                }
            }
            Err(error) => {
                lock(&self.forwarded).remove(&id);
                return Err(error);
            }
        }
        Ok((id, receiver))
    }

    /// [`forward`]s `entry` to the members, from the preferred one; a member that
    /// holds it already makes it a duplicate.
    fn forward(&self, entry: &Entry) -> Result<String, SubmitError> {
        let first = self.preferred.load(Ordering::Relaxed) as usize;
        match forward(&self.agent, &self.sources(), first, REQUEST_TIMEOUT, entry)? {
            Taken { before: true, .. } => Err(SubmitError::Duplicate(entry.id())),
            Taken { by, .. } => Ok(by),
        }
    }

    /// Whether `id` was forwarded from here and is not committed yet.
    pub fn is_pending(&self, id: &Hash) -> bool {
        lock(&self.forwarded).contains_key(id)
    }

    /// Why the member that took `id` from here let it go uncommitted, if it did
    /// lately.
    pub fn left_pool(&self, id: &Hash) -> Option<String> {
        self.left.why(id)
    }

    /// The follower's state: no view, no primary, no peers of its own.
    pub fn status(&self) -> EngineStatus {
        EngineStatus {
            view: 0,
            active: false,
            primary: MemberIndex::MAX,
            stable_checkpoint: None,
            abstaining_until: None,
            view_changes_from: None,
            unheard_for: Some(lock(&self.heard).elapsed()).filter(|silence| *silence >= UNHEARD),
            pending: lock(&self.forwarded).len(),
            next_difficulty: self.next_difficulty.load(Ordering::Relaxed),
            peers: Vec::new(),
            settings: self.settings,
            max_blocks_in_flight: None,
            min_block_interval_ms: None,
            failure: None,
            catching_up: self.catching_up.load(Ordering::Relaxed),
            behind: self.behind(),
            reads_from: {
                let (sources, index) = self.preferred_source();
                sources.get(index).cloned()
            },
            refused_committed: lock(&self.refused).clone(),
        }
    }

    /// How many blocks the members are ahead, as last seen.
    fn behind(&self) -> Option<u64> {
        let members = self.members_height.load(Ordering::Relaxed);
        let tip = self.store.last_tip()?.height;
        (members != UNKNOWN).then(|| members.saturating_sub(tip))
    }

    /// Notes that a member holds the block at `height` (every member's answer comes
    /// here).
    fn seen(&self, height: u64) {
        *lock(&self.heard) = Instant::now();
        let known = self.members_height.load(Ordering::Relaxed);
        if known == UNKNOWN || height > known {
            self.members_height.store(height, Ordering::Relaxed);
        }
    }

    /// Asks the preferred member how high its chain is.
    fn ask_height(&self) {
        let (sources, index) = self.preferred_source();
        let answer = self
            .agent
            .get(&format!("{}/v1/status", sources[index]))
            .call()
            .ok()
            .filter(|response| response.status().is_success())
            .and_then(|mut response| {
                response
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_json::<crate::api::types::StatusView>()
                    .ok()
            });
        if let Some(status) = answer {
            self.seen(status.height);
        }
    }

    /// A follower cuts no blocks.
    pub fn cut(&self) -> oneshot::Receiver<Result<Header, MineError>> {
        let (answer, receiver) = oneshot::channel();
        let _ = answer.send(Err(MineError::Follower));
        receiver
    }

    /// Follows the chain until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let follower = Arc::clone(&self);
        let stopping = Arc::clone(&stop);
        let follow = tokio::task::spawn_blocking(move || follower.follow(&stopping));
        shutdown.await;
        stop.store(true, Ordering::Relaxed);
        let _ = follow.await;
    }

    /// The loop of [`Follower::run`], on a blocking thread.
    fn follow(&self, stop: &AtomicBool) {
        let mut last_probe = Instant::now();
        let mut last_asked: Option<Instant> = None;
        let mut back_to_back = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Some(failure) = self.store.failure() {
                tracing::warn!(%failure, "the database failed; reopening it before following on");
                if self.store.recover().is_err() {
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
            if self.store.damage().is_some() {
                // Nothing more is applied to a damaged database; /readyz says why.
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            if last_asked.is_none_or(|asked| asked.elapsed() >= PROBE_OTHERS) {
                last_asked = Some(Instant::now());
                self.ask_height();
            }
            let applied = match self.next_block() {
                Ok(applied) => applied,
                Err(error) => {
                    tracing::warn!(%error, "following the chain failed; trying again");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if applied {
                back_to_back += 1;
                if back_to_back >= CATCHING_UP_BLOCKS {
                    self.catching_up.store(true, Ordering::Relaxed);
                }
            } else {
                back_to_back = 0;
                if last_probe.elapsed() >= PROBE_OTHERS {
                    last_probe = Instant::now();
                    self.expire_forwarded();
                    self.ask_left();
                    if self.probe_others() {
                        continue;
                    }
                }
                std::thread::sleep(POLL);
            }
        }
    }

    /// Fetches, checks and applies the block after the tip from the preferred
    /// member; whether one was applied. A member that fails is left for the next.
    fn next_block(&self) -> Result<bool, StoreError> {
        let height = self.store.tip()?.height + 1;
        let (sources, index) = self.preferred_source();
        let source = &sources[index];
        match self.fetch(source, height) {
            Ok((block, certificate)) => match self.check(&block, &certificate) {
                Ok(()) => {
                    self.seen(height);
                    self.apply(block, certificate)?;
                    *lock(&self.refused) = None;
                    Ok(true)
                }
                Err(CheckFailed::Store(error)) => Err(error),
                Err(CheckFailed::Block(error)) => {
                    if let Some(suppressed) = lock(&self.bad_blocks).allow(source.clone()) {
                        tracing::warn!(
                            %source, height, %error, suppressed,
                            "a member served a block that fails its checks (if every member \
                             does, check that this node's genesis file is the chain's); \
                             reading from the next member"
                        );
                    }
                    self.next_source(index);
                    Ok(false)
                }
                // Every member would serve this block: asking another changes nothing.
                Err(CheckFailed::Here(error)) => {
                    *lock(&self.refused) = Some(error.to_string());
                    tracing::error!(
                        height, %error,
                        "the members certified a block this node refuses: its clock, plugins \
                         or their settings differ from the members'; it follows on once they \
                         agree"
                    );
                    // Asked again at once, the same block would be fetched and refused.
                    std::thread::sleep(Duration::from_secs(5));
                    Ok(false)
                }
            },
            // The member has nothing after the tip: caught up (with it, at least; the
            // probe of the others finds one that is ahead).
            Err(Fetch::Gone) => {
                self.seen(height - 1);
                self.catching_up.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(error) => {
                // Told at a bounded rate: a follower that reaches no member (wrong
                // addresses, credentials) must not look like one that waits.
                match lock(&self.bad_blocks).allow(format!("unreached {source}")) {
                    Some(suppressed) => tracing::warn!(
                        %source, height, %error, suppressed,
                        "a member did not serve the next block; asking the next member"
                    ),
                    None => {
                        tracing::debug!(%source, height, %error, "a member did not serve the next block")
                    }
                }
                self.next_source(index);
                Ok(false)
            }
        }
    }

    /// Asks the other members for the block after the tip; whether one has it (it
    /// becomes the preferred member).
    fn probe_others(&self) -> bool {
        let Ok(tip) = self.store.tip() else {
            return false;
        };
        let (sources, current) = self.preferred_source();
        for (index, source) in sources.iter().enumerate() {
            if index != current && self.fetch(source, tip.height + 1).is_ok() {
                self.preferred.store(index as u64, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    fn next_source(&self, after: usize) {
        let next = (after + 1) % self.sources().len();
        self.preferred.store(next as u64, Ordering::Relaxed);
    }

    /// The members read from now.
    fn sources(&self) -> Arc<Vec<String>> {
        Arc::clone(&self.sources.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The members read from now, and the position of the one read from first.
    fn preferred_source(&self) -> (Arc<Vec<String>>, usize) {
        let sources = self.sources();
        let index = self.preferred.load(Ordering::Relaxed) as usize % sources.len().max(1);
        (sources, index)
    }

    /// Reads from the members of the membership in force, made into base URLs by
    /// `sources_of`, from now on and after each change: a follower started before
    /// a change follows the members after it, not only those it started with.
    pub fn with_sources_from(mut self, sources_of: SourcesOf) -> Follower {
        self.resolve = Some((sources_of, AtomicU64::new(u64::MAX)));
        self.follow_membership();
        self
    }

    /// Takes the membership in force's members as sources, if it changed since.
    fn follow_membership(&self) {
        let Some((sources_of, epoch)) = &self.resolve else {
            return;
        };
        let membership = self.store.membership_in_force();
        if epoch.swap(membership.epoch, Ordering::Relaxed) == membership.epoch {
            return;
        }
        let fresh = sources_of(&membership.members);
        // None reachable is no better than the members known.
        if !fresh.is_empty() && fresh != **self.sources() {
            tracing::info!(
                epoch = membership.epoch,
                members = fresh.len(),
                "following the members in force"
            );
            *self.sources.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        }
    }

    fn fetch(&self, source: &str, height: u64) -> Result<(Block, CommitCertificate), Fetch> {
        join::fetch_committed(&self.agent, source, height)
    }

    /// A committed block's checks, as a replica makes them on a fetched block: its
    /// certificate, then the chain rules and the plugins' policy on the tip.
    fn check(&self, block: &Block, certificate: &CommitCertificate) -> Result<(), CheckFailed> {
        let spec = self.store.spec();
        match self
            .store
            .verify_certificate(certificate, block.header.height, &block.hash())
        {
            Err(StoreError::Chain(error)) => return Err(CheckFailed::Block(error.to_string())),
            other => other?,
        }
        let tip = self.store.tip()?;
        if block.header.height != tip.height + 1 {
            return Err(CheckFailed::Block(format!(
                "block {} is not the next one, {}",
                block.header.height,
                tip.height + 1
            )));
        }
        // A quorum certified this block as the chain's next: refusing it is this
        // node's own doing.
        let difficulty = match self.plugins.is_empty() {
            true => spec.difficulty,
            false => required_difficulty(&self.store, self.plugins.as_ref(), &tip)?,
        };
        self.store
            .validate_next(block, difficulty, now_ms())
            .map_err(|error| match error {
                StoreError::Chain(error) => CheckFailed::Here(error.to_string()),
                error => CheckFailed::Store(error),
            })?;
        self.plugins
            .check_block(block)
            .map_err(|reason| CheckFailed::Here(ChainError::Policy(reason).to_string()))
    }

    /// Applies a checked block and hands its forwarded entries their receipts.
    fn apply(&self, block: Block, certificate: CommitCertificate) -> Result<(), StoreError> {
        let started = Instant::now();
        let nodes = self.store.apply_block(&block, &certificate)?;
        let header = block.header;
        let first = header.log_size - block.entries.len() as u64;
        let waiting: Vec<_> = {
            let mut forwarded = lock(&self.forwarded);
            (first..)
                .zip(&block.entries)
                .filter_map(|(log_index, entry)| {
                    let id = entry.id();
                    let held = forwarded.remove(&id)?;
                    Some((id, log_index, held.waiters))
                })
                .collect()
        };
        if !self.plugins.is_empty() {
            let next = required_difficulty(&self.store, self.plugins.as_ref(), &header)?;
            self.next_difficulty.store(next, Ordering::Relaxed);
        }
        self.metrics
            .block_applied(&header, block.entries.len(), started.elapsed());
        self.plugins.committed(&Arc::new(block));
        send_receipts(header, certificate, nodes, waiting);
        self.follow_membership();
        Ok(())
    }

    /// Asks the members that took entries a while ago, a few entries a round, whether
    /// they let them go, and forwards again those a member knows nothing of (it lost
    /// its pool, as in a restart) or left unanswered [`SILENT_ASKS`] times in a row
    /// (it may be gone): on a thread of its own, so a member that hangs holds no
    /// block back, and one round at a time. Takes the answers of the round before.
    fn ask_left(&self) {
        let mut round = lock(&self.asking);
        if let Some(answers) = round.as_ref() {
            match answers.try_recv() {
                Ok(answers) => self.settle(answers),
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {}
            }
        }
        *round = None;
        let asking: Vec<(Hash, String, Entry, u32)> = {
            let mut forwarded = lock(&self.forwarded);
            let mut due: Vec<(&Hash, &mut Forwarded)> = forwarded
                .iter_mut()
                .filter(|(_, held)| {
                    held.taker.is_some()
                        && held.since.elapsed() >= ASK_AFTER
                        && held.asked.is_none_or(|asked| asked.elapsed() >= ASK_AGAIN)
                })
                .collect();
            // The longest unasked first: a member that never answers keeps no
            // other's entries waiting.
            due.sort_by_key(|(_, held)| held.asked);
            due.into_iter()
                .take(ASK_AT_MOST)
                .filter_map(|(id, held)| {
                    held.asked = Some(Instant::now());
                    let taker = held.taker.clone()?;
                    Some((*id, taker, held.entry.clone(), held.silent))
                })
                .collect()
        };
        if asking.is_empty() {
            return;
        }
        let (tell, answers) = std::sync::mpsc::channel();
        let agent = self.agent.clone();
        let sources = self.sources();
        let preferred = self.preferred.load(Ordering::Relaxed) as usize;
        let spawned = std::thread::Builder::new()
            .name("follower-ask".into())
            .spawn(move || {
                let mut unreached: Vec<String> = Vec::new();
                let mut answers = Answers::default();
                // Forwards again until one finds no member: the others wait for a
                // later round rather than hold this one up.
                let mut failed: Option<(usize, SubmitError)> = None;
                for (id, taker, entry, silent) in asking {
                    // A member that did not answer this round is not asked again in it.
                    let said = match unreached.contains(&taker) {
                        true => None,
                        false => asked(&agent, &taker, &id),
                    };
                    let why = match said {
                        Some(Said::Left) => {
                            answers.left.push(id);
                            continue;
                        }
                        Some(Said::Holds) => {
                            answers.silent.push((id, 0));
                            continue;
                        }
                        Some(Said::Unknown) => "knew nothing of it (it lost its pool)",
                        None => {
                            if !unreached.contains(&taker) {
                                unreached.push(taker.clone());
                            }
                            answers.silent.push((id, silent + 1));
                            if silent + 1 < SILENT_ASKS {
                                continue;
                            }
                            "left asks about it unanswered (it may be gone)"
                        }
                    };
                    if let Some((count, _)) = failed.as_mut() {
                        *count += 1;
                        continue;
                    }
                    // From the member after the one that forgot it or is silent, which
                    // may lie: a member takes it anew, or answers that it holds it. One
                    // member's word costs a forward per `ASK_AGAIN` at most.
                    let first = sources
                        .iter()
                        .position(|source| *source == taker)
                        .map_or(preferred, |at| at + 1);
                    match forward(&agent, &sources, first, ASK_TIMEOUT, &entry) {
                        Ok(taken) => answers.forwarded_again.push((id, taken.by, why)),
                        // Refused by the members' rules: judged here as one let go.
                        Err(SubmitError::RefusedByMember(_)) => answers.left.push(id),
                        Err(error) => failed = Some((1, error)),
                    }
                }
                if let Some((count, error)) = failed {
                    tracing::warn!(
                        %error,
                        "{count} forwarded entries their members know nothing of, or left \
                         unanswered, could not be forwarded again: they are asked about \
                         again later"
                    );
                }
                let _ = tell.send(answers);
            });
        if spawned.is_ok() {
            *round = Some(answers);
        }
    }

    /// Takes a round's answers: the entries forwarded again wait on the member that
    /// took them now, each keeps count of its member's silence, and those let go are
    /// settled.
    fn settle(&self, answers: Answers) {
        {
            let mut forwarded = lock(&self.forwarded);
            for (id, silent) in answers.silent {
                if let Some(held) = forwarded.get_mut(&id) {
                    held.silent = silent;
                }
            }
            for (id, taker, why) in answers.forwarded_again {
                if let Some(held) = forwarded.get_mut(&id) {
                    tracing::info!(
                        %id, %taker,
                        "the member that took this entry {why}: forwarded again"
                    );
                    held.taker = Some(taker);
                    held.silent = 0;
                }
            }
        }
        self.settle_left(answers.left);
    }

    /// Of the entries members said they let go, those this node's own rules refuse
    /// in a block of their own leave here too, their waiters told why: one member's
    /// word is no proof, and a member that lies, or runs other plugins, must not
    /// have a client told that an entry the others would commit never commits.
    fn settle_left(&self, said: Vec<Hash>) {
        for id in said {
            let Some(entry) = lock(&self.forwarded)
                .get(&id)
                .map(|held| held.entry.clone())
            else {
                continue;
            };
            let Some(why) = self.refused_alone(entry) else {
                tracing::warn!(
                    %id,
                    "a member says it let go an entry this node's plugins take in a block of \
                     its own: it is still waited for"
                );
                continue;
            };
            self.left.note(id, &why);
            let held = lock(&self.forwarded).remove(&id);
            for waiter in held.map(|held| held.waiters).unwrap_or_default() {
                let _ = waiter.send(Err(why.clone()));
            }
        }
    }

    /// Why this node's plugins refuse `entry` in a block of its own on the tip, if
    /// they do (as a member judges an entry it lets go).
    fn refused_alone(&self, entry: Entry) -> Option<String> {
        let (tip, log) = self.store.tip_with_log().ok()?;
        let timestamp = now_ms().max(tip.timestamp_ms + 1);
        let difficulty = self.next_difficulty.load(Ordering::Relaxed);
        let block = Block {
            header: Header::child(&tip, &log, timestamp, difficulty),
            entries: vec![entry],
        };
        let fit = fit_block(self.plugins.as_ref(), &block).ok()?;
        let (_, reason) = fit.refused.into_iter().next()?;
        Some(ChainError::Policy(reason).to_string())
    }

    /// Forgets entries forwarded longer ago than [`FORWARD_PATIENCE`]; their waiters
    /// see their channels close.
    fn expire_forwarded(&self) {
        lock(&self.forwarded).retain(|_, held| held.since.elapsed() < FORWARD_PATIENCE);
    }
}

/// Why a fetched block was not applied.
enum CheckFailed {
    /// The block (or its certificate) is not the chain's next block.
    Block(String),
    /// A certified next block that this node's own rules refuse.
    Here(String),
    /// The store could not say.
    Store(StoreError),
}

impl From<StoreError> for CheckFailed {
    fn from(error: StoreError) -> CheckFailed {
        CheckFailed::Store(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::CompactRange;
    use crate::storage::StoreOptions;
    use crate::testing;

    /// A follower with no plugins over `store`, reading from `sources`.
    fn follower(store: Arc<Store>, sources: Vec<String>) -> Follower {
        let metrics = Arc::new(Metrics::default());
        let plugins = Arc::new(Plugins::load(&[], Arc::clone(&metrics)).unwrap());
        let settings = NodeSettings {
            max_block_entries: 10,
            max_block_delay: Duration::from_millis(10),
            pool_capacity: 10,
            mining_threads: std::num::NonZeroUsize::MIN,
        };
        let agent = crate::http::Credentials::default()
            .agent(REQUEST_TIMEOUT)
            .unwrap();
        Follower::new(store, sources, agent, settings, plugins, metrics)
    }

    /// A fresh store of a four-member chain, in a directory that lives as long as
    /// the guard returned with it.
    fn fresh_store() -> (tempfile::TempDir, Arc<Store>) {
        let keys: Vec<_> = (1..=4).map(testing::key).collect();
        let spec = testing::spec(&keys, 4);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ledger.redb"), &spec, Default::default());
        (dir, Arc::new(store.unwrap()))
    }

    /// A follower applies a fetched block only with a certificate from a quorum of
    /// the genesis members, for exactly that block, and only if the block is the
    /// chain's next; a waiter on one of its entries gets its receipt.
    #[tokio::test]
    async fn only_a_certified_next_block_is_applied() {
        let keys: Vec<_> = (1..=4).map(testing::key).collect();
        let spec = testing::spec(&keys, 4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let store = Arc::new(Store::open(&path, &spec, StoreOptions::default()).unwrap());
        let follower = follower(Arc::clone(&store), vec!["http://127.0.0.1:9".to_owned()]);

        let genesis = spec.genesis_block().header;
        let block = testing::next_block(
            &genesis,
            &CompactRange::new(),
            testing::entries(1, 3, 32),
            4,
        );
        let other = testing::next_block(
            &genesis,
            &CompactRange::new(),
            testing::entries(2, 3, 32),
            4,
        );
        let refused = |certificate: &CommitCertificate, block: &Block| match follower
            .check(block, certificate)
        {
            Err(CheckFailed::Block(reason)) => reason,
            Err(CheckFailed::Here(reason)) => panic!("refused here: {reason}"),
            Err(CheckFailed::Store(error)) => panic!("store: {error}"),
            Ok(()) => panic!("accepted"),
        };
        // Two of four signatures: short of the quorum of three.
        let short = testing::certify(&keys[..2], &block);
        assert!(
            refused(&short, &block).contains("quorum"),
            "{}",
            refused(&short, &block)
        );
        // A quorum's certificate for another block.
        let elsewhere = testing::certify(&keys[..3], &other);
        refused(&elsewhere, &block);
        // Signatures by keys that are not members.
        let strangers: Vec<_> = (11..=14).map(testing::key).collect();
        refused(&testing::certify(&strangers, &block), &block);
        // The certified block two heights up is not the next one.
        let certificate = testing::certify(&keys[..3], &block);
        let (_, log) = store.tip_with_log().unwrap();
        let mut after = log.clone();
        for entry in &block.entries {
            after.append(
                crate::chain::merkle::leaf_hash(entry.id().as_bytes()),
                |_, _, _| {},
            );
        }
        let grandchild = testing::next_block(&block.header, &after, Vec::new(), 4);
        refused(&testing::certify(&keys[..3], &grandchild), &grandchild);
        // A certified next block that breaks this node's rules (its difficulty is not
        // the one required) is refused here: no member is to blame.
        let mut easier = block.clone();
        easier.header.difficulty = 3;
        let certified = testing::certify(&keys[..3], &easier);
        assert!(matches!(
            follower.check(&easier, &certified),
            Err(CheckFailed::Here(reason)) if reason.contains("difficulty")
        ));

        let (sender, receiver) = oneshot::channel();
        let id = block.entries[1].id();
        lock(&follower.forwarded).insert(
            id,
            Forwarded {
                entry: block.entries[1].clone(),
                since: Instant::now(),
                waiters: vec![sender],
                taker: None,
                asked: None,
                silent: 0,
            },
        );
        follower
            .check(&block, &certificate)
            .map_err(|_| ())
            .unwrap();
        follower.apply(block, certificate).unwrap();
        assert_eq!(store.tip().unwrap().height, 1);
        let receipt = receiver.await.unwrap().unwrap();
        assert_eq!((receipt.entry_id, receipt.log_index), (id, 1));
        receipt.verify(&spec).unwrap();
        assert!(!follower.is_pending(&id));
    }

    /// A member that takes the forwarded entry and never answers: the submit fails
    /// with `no_member`, saying the entry may have got through all the same.
    #[test]
    fn a_forward_that_times_out_says_the_entry_may_have_got_through() {
        let (_dir, store) = fresh_store();
        // Connections queue in its backlog; nothing ever answers them.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sources = vec![format!("http://{}", silent.local_addr().unwrap())];
        let follower = follower(store, sources);
        let entry = testing::entries(7, 1, 16).remove(0);
        match follower.forward(&entry) {
            Err(SubmitError::NoMember(reason)) => {
                assert!(reason.contains("may have taken the entry"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A member that answers every request with `status` and the JSON `body`, for at
    /// most `connections` connections: its base URL, and how many requests it read.
    fn fake_member(
        status: &'static str,
        body: &'static str,
        connections: usize,
    ) -> (String, Arc<AtomicU64>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&requests);
        std::thread::spawn(move || {
            use std::io::{BufRead, Read, Write};
            for connection in listener.incoming().take(connections) {
                let Ok(mut connection) = connection else {
                    return;
                };
                let mut reader = std::io::BufReader::new(connection.try_clone().unwrap());
                let (mut line, mut length) = (String::new(), 0usize);
                while reader.read_line(&mut line).is_ok_and(|read| read > 2) {
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                // Read whole, so that closing the connection resets nothing.
                let _ = reader.read_exact(&mut vec![0; length]);
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    connection,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, requests)
    }

    /// Runs [`Follower::ask_left`] until its round is over and its answers taken.
    fn ask_round(follower: &Follower) {
        follower.ask_left();
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&follower.asking).is_some() {
            assert!(Instant::now() < deadline, "the round did not end");
            std::thread::sleep(Duration::from_millis(20));
            follower.ask_left();
        }
    }

    /// Holds `entry` as forwarded a while ago to `taker`, with a waiter: the
    /// waiter's receiver.
    fn hold(
        follower: &Follower,
        entry: Entry,
        taker: &str,
    ) -> oneshot::Receiver<crate::engine::Settled> {
        let (sender, receiver) = oneshot::channel();
        let held = Forwarded {
            entry: entry.clone(),
            since: Instant::now().checked_sub(ASK_AFTER).unwrap(),
            waiters: vec![sender],
            taker: Some(taker.to_owned()),
            asked: None,
            silent: 0,
        };
        lock(&follower.forwarded).insert(entry.id(), held);
        receiver
    }

    /// Makes `id` due to be asked about again, as [`ASK_AGAIN`] later would.
    fn due_again(follower: &Follower, id: &Hash) {
        if let Some(held) = lock(&follower.forwarded).get_mut(id) {
            held.asked = held.asked.and_then(|asked| asked.checked_sub(ASK_AGAIN));
        }
    }

    /// How many asks in a row `id`'s member left unanswered.
    fn silence_of(follower: &Follower, id: &Hash) -> u32 {
        lock(&follower.forwarded)[id].silent
    }

    /// The member `id` waits on.
    fn taker_of(follower: &Follower, id: &Hash) -> Option<String> {
        lock(&follower.forwarded)
            .get(id)
            .and_then(|held| held.taker.clone())
    }

    /// Whether nothing was sent to the waiter yet.
    fn untold(receiver: &mut oneshot::Receiver<crate::engine::Settled>) -> bool {
        receiver
            .try_recv()
            .is_err_and(|error| error == oneshot::error::TryRecvError::Empty)
    }

    /// A member that says it let an entry go (404 `left_pool`) is asked on a thread of
    /// its own, and not taken at its word: this node's own rules take the entry, so it
    /// stays forwarded and its waiter is not told.
    #[test]
    fn a_member_saying_it_let_an_entry_go_is_not_taken_at_its_word() {
        let (_dir, store) = fresh_store();
        let body = r#"{"error":"left_pool","message":"no block holds it"}"#;
        let (taker, asked_there) = fake_member("404 Not Found", body, 4);
        let follower = follower(store, vec![taker.clone()]);
        let entry = testing::entries(7, 1, 16).remove(0);
        let id = entry.id();
        assert_eq!(asked(&follower.agent, &taker, &id), Some(Said::Left));

        let mut receiver = hold(&follower, entry, &taker);
        ask_round(&follower);
        assert_eq!(asked_there.load(Ordering::SeqCst), 2);
        assert!(follower.is_pending(&id));
        assert_eq!(follower.left_pool(&id), None);
        assert!(untold(&mut receiver));
    }

    /// A member that knows nothing of an entry it took (404 `not_found`: it lost its
    /// pool, as in a restart) would never order it: the entry is forwarded again, and
    /// waits on the member that took it this time.
    #[test]
    fn an_entry_its_member_lost_is_forwarded_again() {
        let (_dir, store) = fresh_store();
        let lost = r#"{"error":"not_found","message":"no entry"}"#;
        let (forgetful, asked_there) = fake_member("404 Not Found", lost, 4);
        let (other, posted) = fake_member("202 Accepted", r#"{"status":"pending"}"#, 4);
        // The forgetful member is asked first, and skipped: it may lie.
        let follower = follower(store, vec![forgetful.clone(), other.clone()]);
        let entry = testing::entries(7, 1, 16).remove(0);
        let id = entry.id();
        assert_eq!(asked(&follower.agent, &forgetful, &id), Some(Said::Unknown));

        let mut receiver = hold(&follower, entry, &forgetful);
        ask_round(&follower);
        assert_eq!(asked_there.load(Ordering::SeqCst), 2);
        assert_eq!(posted.load(Ordering::SeqCst), 1);
        assert!(follower.is_pending(&id));
        assert_eq!(taker_of(&follower, &id), Some(other));
        assert!(untold(&mut receiver));
    }

    /// An entry its member lost that another member holds already (409) waits on
    /// that member: it is the one to ask whether the entry was let go.
    #[test]
    fn an_entry_its_member_lost_waits_on_the_member_that_holds_it() {
        let (_dir, store) = fresh_store();
        let lost = r#"{"error":"not_found","message":"no entry"}"#;
        let (forgetful, _) = fake_member("404 Not Found", lost, 4);
        let held_there = r#"{"error":"duplicate","message":"pending"}"#;
        let (holder, posted) = fake_member("409 Conflict", held_there, 4);
        let follower = follower(store, vec![forgetful.clone(), holder.clone()]);
        let entry = testing::entries(8, 1, 16).remove(0);
        let id = entry.id();
        let _receiver = hold(&follower, entry, &forgetful);
        ask_round(&follower);
        assert_eq!(posted.load(Ordering::SeqCst), 1);
        assert_eq!(taker_of(&follower, &id), Some(holder));
        assert!(follower.is_pending(&id));
    }

    /// A member that took an entry and no longer answers (stopped for good, say) is
    /// not waited on for ever: after [`SILENT_ASKS`] unanswered asks in a row the
    /// entry is forwarded again, to the next member, and waits on it. An answer in
    /// between starts the count again.
    #[test]
    fn an_entry_whose_member_is_silent_is_forwarded_again() {
        let (_dir, store) = fresh_store();
        // Nothing listens there any more: every ask is refused at once.
        let gone = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let (holder, asked_there) = fake_member("200 OK", r#"{"status":"pending"}"#, 4);
        let (other, posted) = fake_member("202 Accepted", r#"{"status":"pending"}"#, 4);
        let follower = follower(store, vec![gone.clone(), other.clone()]);
        let entry = testing::entries(9, 1, 16).remove(0);
        let id = entry.id();
        let mut receiver = hold(&follower, entry.clone(), &gone);
        for silence in 1..SILENT_ASKS {
            ask_round(&follower);
            assert_eq!(silence_of(&follower, &id), silence);
            assert_eq!(taker_of(&follower, &id), Some(gone.clone()));
            due_again(&follower, &id);
        }
        assert_eq!(posted.load(Ordering::SeqCst), 0);
        ask_round(&follower);
        assert_eq!(posted.load(Ordering::SeqCst), 1);
        assert_eq!(taker_of(&follower, &id), Some(other));
        assert_eq!(silence_of(&follower, &id), 0);
        assert!(follower.is_pending(&id));
        assert!(untold(&mut receiver));

        // A member that answers once in a while is not left.
        let other_entry = testing::entries(10, 1, 16).remove(0);
        let other_id = other_entry.id();
        let _receiver = hold(&follower, other_entry, &holder);
        if let Some(held) = lock(&follower.forwarded).get_mut(&other_id) {
            held.silent = SILENT_ASKS - 1;
        }
        ask_round(&follower);
        assert_eq!(asked_there.load(Ordering::SeqCst), 1);
        assert_eq!(silence_of(&follower, &other_id), 0);
        assert_eq!(taker_of(&follower, &other_id), Some(holder));
        assert_eq!(posted.load(Ordering::SeqCst), 1);
    }

    /// A follower reads from the members of the membership in force as its store
    /// holds it, and takes them anew after a change; none to reach keeps those known.
    #[test]
    fn a_follower_reads_from_the_members_in_force() {
        let (_dir, store) = fresh_store();
        let started = vec!["http://started".to_owned()];
        let of_members: SourcesOf = Box::new(|members| {
            (0..members.len())
                .map(|i| format!("http://member{i}"))
                .collect()
        });
        let reading = follower(Arc::clone(&store), started.clone()).with_sources_from(of_members);
        assert_eq!(reading.sources().len(), 4);
        assert_eq!(reading.sources()[3], "http://member3");
        let none: SourcesOf = Box::new(|_| Vec::new());
        let reading = follower(store, started.clone()).with_sources_from(none);
        assert_eq!(*reading.sources(), started);
    }
}
