//! Joining a running chain from a snapshot: the node asks every member it knows of
//! for its latest snapshot (a member that lost its disk over the peer protocol, a
//! follower through the members' client APIs: [`Source`]), keeps the highest one
//! that verifies against the genesis members, fetches its chunks from every member
//! that offers it at once, checks each chunk on arrival against its tile root, and
//! writes each into a staging database ([`Restore`]) that becomes the node's only
//! when complete. A chunk that fails is fetched again, from whoever is free; a member
//! that fails [`STRIKES`] times is dropped and named in the log. A restart resumes
//! with the chunks already written.
//!
//! Everything here blocks (HTTP with `ureq`, peer requests with a
//! [`Requester`], redb writes): callers run it on a blocking thread.

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::api::types::SnapshotView;
use crate::chain::snapshot::{Manifest, MAX_MANIFEST_BYTES, MAX_TILE_LEVEL};
use crate::chain::{
    Block, ChainSpec, ChangeProof, CommitCertificate, Header, Members, MembershipHistory,
};
use crate::consensus::{Config, MemberIndex, PreparedCertificate, Verifier};
use crate::engine::lock;
use crate::http::Credentials;
use crate::metrics::Metrics;
use crate::net::{Requester, Wire};
use crate::storage::{Restore, RestoredIds, Store, StoreError, VerifiedTile};
use ed25519_dalek::VerifyingKey;

/// Failures after which a member is no longer asked for chunks.
pub const STRIKES: u32 = 3;
/// "Busy" answers in a row (one a second) after which a member counts as failing.
const BUSY_PATIENCE: u32 = 30;

/// A member to fetch from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Its client API at this base URL (`http://host:port`): how a follower fetches.
    Api(String),
    /// Its peer port, over a request connection: how a member fetches, with its own
    /// key, whatever the client APIs require.
    Peer {
        /// Its member index.
        member: MemberIndex,
        /// Its peer address.
        addr: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Api(url) => f.write_str(url),
            Source::Peer { member, addr } => write!(f, "member {member} at {addr}"),
        }
    }
}

/// Where to join from and how patiently.
#[derive(Clone, Debug)]
pub struct JoinConfig {
    /// The members to fetch from.
    pub sources: Vec<Source>,
    /// Asks members over the peer protocol: needed for [`Source::Peer`] sources.
    pub requester: Option<std::sync::Arc<Requester>>,
    /// How a joining node that may have voted asks how far the chain has come
    /// ([`abstain_through`]); none for a key that never voted.
    pub probe: Option<Probe>,
    /// The node's database, which must not exist yet.
    pub path: PathBuf,
    /// The staging file the snapshot is restored into.
    pub staging: PathBuf,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// The client of [`Source::Api`] sources, with the node's `[upstream]`
    /// credentials and `timeout`.
    pub agent: ureq::Agent,
    /// How often a progress line is logged.
    pub progress_every: Duration,
    /// Set when the node is asked to stop: the join gives up at its next step
    /// ([`JoinError::Stopped`]), keeping what it fetched.
    pub stop: Arc<AtomicBool>,
}

/// How a join ended.
#[derive(Debug)]
pub enum Joined {
    /// The database was restored from the snapshot at `height`.
    Restored {
        /// The snapshot's height.
        height: u64,
        /// Chunks fetched in this run (a resumed join fetches fewer).
        chunks: u64,
        /// Bytes of chunks fetched in this run.
        bytes: u64,
        /// Members whose manifest failed its checks.
        refused: Vec<String>,
        /// Members that failed to serve chunks, with how often.
        strikes: Vec<(String, u32)>,
        /// That the restore checked every id, for [`crate::storage::Store::open_restored`].
        ids: Option<Box<RestoredIds>>,
    },
    /// No member offers a verifiable snapshot (a young chain, or none reachable):
    /// the node replays the chain from its peers instead.
    NoSnapshot,
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Every member that offered the snapshot failed before it was complete.
    #[error(
        "no member could serve the rest of the snapshot at height {height} ({missing} of its \
         chunks missing); what was fetched is kept for the next attempt"
    )]
    NoSource {
        /// The snapshot's height.
        height: u64,
        /// Chunks still missing.
        missing: usize,
    },
    /// No member served block `h` itself.
    #[error("no member served block {0}, the snapshot's block")]
    NoBlock(u64),
    /// No member served, with its certificate, the block the snapshot's membership
    /// epoch starts above.
    #[error(
        "no member served block {0} with its certificate: the membership epoch of the \
         snapshot starts above it, and the node's replica needs it"
    )]
    NoEpochBase(u64),
    /// The chosen manifest no longer verifies (it did when offered).
    #[error("the snapshot's manifest: {0}")]
    Manifest(String),
    /// The staging database failed.
    #[error("restoring the snapshot: {0}")]
    Store(#[from] StoreError),
    /// Every member that offered a snapshot offered one that fails its checks.
    #[error(
        "the {refused} members that offered a snapshot offered none that checks out, the \
         first because: {reason} (when they all name another chain, this node's genesis \
         file is not theirs)"
    )]
    AllRefused {
        /// How many offered one.
        refused: usize,
        /// Why the first was refused.
        reason: String,
    },
    /// The node was asked to stop.
    #[error("asked to stop: what was fetched is kept for the next start")]
    Stopped,
}

/// What went wrong with one request to one member.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fetch {
    #[error("{0}")]
    Failed(String),
    /// An answer came, and fails its checks.
    #[error("{0}")]
    Refused(String),
    #[error("busy")]
    Busy,
    #[error("not served there (404)")]
    Gone,
}

/// Snapshots a join takes in turn when the members move on to newer ones before it
/// has every chunk.
const MAX_ATTEMPTS: u32 = 5;

/// Joins from the snapshot the members offer (see the module docs), counting what
/// it fetches in `metrics`.
pub fn join(spec: &ChainSpec, config: &JoinConfig, metrics: &Metrics) -> Result<Joined, JoinError> {
    let client = Client::new(config.agent.clone(), config.requester.clone());
    let (mut attempt, mut chunks, mut bytes) = (0, 0, 0);
    let (best, sources, fetched, refused) = loop {
        if config.stop.load(Ordering::Relaxed) {
            return Err(JoinError::Stopped);
        }
        attempt += 1;
        let mut refused = Vec::new();
        let mut reasons = Vec::new();
        let mut unanswered = Vec::new();
        let offers = offers(&client, spec, &config.sources, &config.stop)?
            .into_iter()
            .filter_map(|(source, offer)| match offer {
                Ok(manifest) => Some((source, manifest)),
                Err(Fetch::Gone) => {
                    tracing::info!(%source, "no snapshot offered there yet");
                    None
                }
                Err(Fetch::Refused(reason)) => {
                    tracing::warn!(%source, %reason, "a snapshot manifest was refused");
                    refused.push(source.to_string());
                    reasons.push(reason);
                    None
                }
                // A member away or still starting (a new cluster starting together,
                // each asking the others): the outcome is told once, below.
                Err(error) => {
                    tracing::debug!(%source, %error, "no snapshot manifest from there");
                    unanswered.push(format!("{source}: {error}"));
                    None
                }
            })
            .collect::<Vec<_>>();
        let Some((best, sources)) = choose(spec, &offers) else {
            if offers.is_empty() && !reasons.is_empty() {
                return Err(JoinError::AllRefused {
                    refused: reasons.len(),
                    reason: reasons.swap_remove(0),
                });
            }
            if let Some(first) = unanswered.first() {
                tracing::info!(
                    unanswered = unanswered.len(),
                    first = %first,
                    "members did not answer the ask for a snapshot (away, or starting \
                     together with this node)"
                );
            }
            return Ok(Joined::NoSnapshot);
        };
        let from: Vec<String> = sources.iter().map(ToString::to_string).collect();
        tracing::info!(
            height = best.height(),
            entries = best.header.log_size,
            chunks = best.chunks(),
            from = from.join(", "),
            "joining from a snapshot"
        );
        let restore = Restore::begin(&config.staging, spec, best.clone())?.handing_on_ids();
        let fetched = fetch_chunks(&client, &sources, restore, config, metrics)?;
        (chunks, bytes) = (chunks + fetched.chunks, bytes + fetched.bytes);
        let missing = fetched.restore.missing().len();
        if missing == 0 {
            break (best, sources, fetched, refused);
        }
        if config.stop.load(Ordering::Relaxed) {
            return Err(JoinError::Stopped);
        }
        // On a busy chain the members stop serving a snapshot two checkpoint
        // intervals on; the newer one keeps every full tile already checked, so
        // taking it costs only the tiles that grew.
        if fetched.moved_on && attempt < MAX_ATTEMPTS {
            tracing::info!(
                height = best.height(),
                missing,
                "the members moved on to a newer snapshot: taking it, keeping the chunks held"
            );
            continue;
        }
        return Err(JoinError::NoSource {
            height: best.height(),
            missing,
        });
    };
    let height = best.height();
    let block = fetch_block(&client, &sources, &best).ok_or(JoinError::NoBlock(height))?;
    let known = best
        .verify(spec)
        .map_err(|error| JoinError::Manifest(error.to_string()))?;
    let mut restore = fetched.restore;
    // The replica of the epoch at h starts above the block before that epoch; below
    // the snapshot (and its recent headers), the node would not hold it yet.
    let base = known.epoch_base(height);
    if base > 0 && base < height && best.recent.iter().all(|header| header.height != base) {
        let header = fetch_certified(&client, &sources, spec, &known, base)
            .ok_or(JoinError::NoEpochBase(base))?;
        restore.keep_epoch_base(header);
    }
    // A member forgot what it signed; how far the others got bounds where it may
    // have voted, and it abstains up to there (README, "Joining from a snapshot").
    let (abstain_through, seen) = match &config.probe {
        None => (0, height),
        Some(probe) => abstain_through(&client, spec, probe, known, height, &config.stop)?,
    };
    let ids = restore.finish(spec, &block, &config.path, abstain_through)?;
    if abstain_through > 0 {
        tracing::warn!(
            chain_height = seen,
            abstaining_until = abstain_through,
            "this member joined without the record of what it signed: it follows the chain \
             and votes again from height {abstain_through} on"
        );
    }
    // What the join itself cost in memory.
    let peak_rss_mib = rss_mib("VmHWM").unwrap_or(0);
    let released_mib = release_freed_memory();
    let manifest_bytes = best.encode().len();
    tracing::info!(
        height,
        chunks,
        bytes,
        manifest_bytes,
        peak_rss_mib,
        released_mib,
        "restored from a snapshot"
    );
    Ok(Joined::Restored {
        height,
        chunks,
        bytes,
        refused,
        strikes: fetched.strikes.into_iter().collect(),
        ids: ids.map(Box::new),
    })
}

/// The snapshot to join from among `offers`, with the members offering it; `None`
/// when none is offered.
fn choose(spec: &ChainSpec, offers: &[(Source, Manifest)]) -> Option<(Manifest, Vec<Source>)> {
    // The same snapshot (block, tiles, headers; certificates may differ) offered by
    // f + 1 members has an honest one behind it: the highest such is preferred, so
    // one member offering a snapshot only it serves cannot stall the join.
    let support = |manifest: &Manifest| {
        offers
            .iter()
            .filter(|(_, other)| manifest.same_snapshot(other))
            .count()
    };
    // f of the membership that certified the snapshot (offers are verified, so its
    // changes hold).
    let backed = |manifest: &Manifest| {
        MembershipHistory::verify(spec, &manifest.changes)
            .map_or(spec.members.max_faulty(), |history| {
                history.at(manifest.height()).members.max_faulty()
            })
            + 1
    };
    let best = offers
        .iter()
        .map(|(_, manifest)| manifest)
        .max_by_key(|manifest| (support(manifest) >= backed(manifest), manifest.height()))?;
    let sources = offers
        .iter()
        .filter(|(_, manifest)| manifest.same_snapshot(best))
        .map(|(source, _)| source.clone())
        .collect();
    Some((best.clone(), sources))
}

/// Each source with what it offers: a manifest that verifies, or why not.
type Offers = Vec<(Source, Result<Manifest, Fetch>)>;

/// What each of the `sources` offers. All are asked at once, so a slow or
/// unreachable member costs one timeout, not one each.
fn offers(
    client: &Client,
    spec: &ChainSpec,
    sources: &[Source],
    stop: &AtomicBool,
) -> Result<Offers, JoinError> {
    let (client, spec) = (client.clone(), spec.clone());
    let offer = move |source: &Source| {
        let bytes = client.manifest(source)?;
        let manifest =
            Manifest::decode(&bytes).map_err(|error| Fetch::Refused(error.to_string()))?;
        manifest
            .verify(&spec)
            .map_err(|error| Fetch::Refused(error.to_string()))?;
        Ok(manifest)
    };
    let answers = at_once(sources, stop, offer)?;
    Ok(sources.iter().cloned().zip(answers).collect())
}

/// `ask` applied to each of `items` at once, each on a thread of its own: the
/// answers, in order, or `Stopped` as soon as `stop` is set. A member that hangs
/// without closing its connections holds a request for its whole timeout; a stop
/// does not wait for it (the thread ends then, its answer unread).
fn at_once<I, T>(
    items: &[I],
    stop: &AtomicBool,
    ask: impl Fn(&I) -> T + Send + Sync + 'static,
) -> Result<Vec<T>, JoinError>
where
    I: Clone + Send + 'static,
    T: Send + 'static,
{
    let ask = Arc::new(ask);
    let (sender, answers) = std::sync::mpsc::channel();
    for (position, item) in items.iter().cloned().enumerate() {
        let (ask, sender) = (Arc::clone(&ask), sender.clone());
        std::thread::spawn(move || {
            let _ = sender.send((position, ask(&item)));
        });
    }
    drop(sender);
    let mut got: Vec<Option<T>> = items.iter().map(|_| None).collect();
    for _ in items {
        let (position, answer) = loop {
            if stop.load(Ordering::Relaxed) {
                return Err(JoinError::Stopped);
            }
            match answers.recv_timeout(Duration::from_millis(100)) {
                Ok(answer) => break answer,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("a thread asking a member panicked")
                }
            }
        };
        got[position] = Some(answer);
    }
    Ok(got.into_iter().flatten().collect())
}

/// The snapshot a join from `sources` would take now, if any of them offers one;
/// members that offer none, or cannot be reached, are passed over without a word.
pub fn offered(
    client: &Client,
    spec: &ChainSpec,
    sources: &[Source],
    stop: &AtomicBool,
) -> Result<Option<Manifest>, JoinError> {
    let offers: Vec<(Source, Manifest)> = offers(client, spec, sources, stop)?
        .into_iter()
        .filter_map(|(source, offer)| offer.ok().map(|manifest| (source, manifest)))
        .collect();
    Ok(choose(spec, &offers).map(|(manifest, _)| manifest))
}

/// Whether a node whose database ends at `tip` gets to `snapshot` sooner by joining
/// from it than by replaying the blocks up to it. Replaying costs about three times
/// per entry what fetching and writing a snapshot costs per id (benches/README.md,
/// `join.sh` run 13: 9.2 against 2.7 us): once the entries it lacks are a third of
/// the snapshot's, the snapshot is the quicker way. But a member that joins leaves
/// behind the record of what it signed and abstains a while, so it also lacks at
/// least `floor` entries: fewer replay in seconds.
pub fn far_behind(tip: &crate::chain::Header, snapshot: &Manifest, floor: u64) -> bool {
    let total = snapshot.header.log_size;
    let missing = total.saturating_sub(tip.log_size);
    snapshot.height() > tip.height && missing * 3 > total && missing >= floor
}

/// The chunks to fetch and what has been fetched, shared by the workers.
struct Transfer {
    queue: VecDeque<u64>,
    in_flight: usize,
    /// Workers still running.
    workers: usize,
    restore: Restore,
    chunks: u64,
    bytes: u64,
    strikes: std::collections::BTreeMap<String, u32>,
    failure: Option<StoreError>,
    moved_on: bool,
}

/// What [`fetch_chunks`] fetched.
struct Fetched {
    restore: Restore,
    chunks: u64,
    bytes: u64,
    strikes: std::collections::BTreeMap<String, u32>,
    /// A member stopped serving the snapshot: the chain moved past it.
    moved_on: bool,
}

/// Counts a chunk worker out when it ends, a panic included: the progress loop of
/// [`fetch_chunks`] waits until every worker is.
struct WorkerDone<'a>(&'a Mutex<Transfer>, &'a Condvar);

impl Drop for WorkerDone<'_> {
    fn drop(&mut self) {
        lock(self.0).workers -= 1;
        self.1.notify_all();
    }
}

/// Fetches missing chunks, one worker per source, until none is missing or no
/// source is left; the restore, and what was fetched.
fn fetch_chunks(
    client: &Client,
    sources: &[Source],
    restore: Restore,
    config: &JoinConfig,
    metrics: &Metrics,
) -> Result<Fetched, JoinError> {
    let manifest = Arc::new(restore.manifest().clone());
    let total = manifest.chunks();
    let queue: VecDeque<u64> = restore.missing().into();
    let already = total - queue.len() as u64;
    metrics
        .join_height
        .store(manifest.height(), Ordering::Relaxed);
    metrics.join_chunks.store(total, Ordering::Relaxed);
    metrics.join_chunks_held.store(already, Ordering::Relaxed);
    if already > 0 {
        tracing::info!(already, total, "resuming a snapshot transfer");
    }
    let transfer = Mutex::new(Transfer {
        queue,
        in_flight: 0,
        workers: sources.len(),
        restore,
        chunks: 0,
        bytes: 0,
        strikes: Default::default(),
        failure: None,
        moved_on: false,
    });
    let changed = Condvar::new();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for source in sources {
            let (transfer, changed, manifest) = (&transfer, &changed, &manifest);
            let stop = &config.stop;
            scope.spawn(move || {
                let _done = WorkerDone(transfer, changed);
                worker(client, source, manifest, (transfer, changed), metrics, stop);
            });
        }
        // Progress at a fixed interval until the workers are done.
        let mut next = Instant::now() + config.progress_every;
        loop {
            let state = lock(&transfer);
            if state.workers == 0 {
                break;
            }
            let (state, _) = changed
                .wait_timeout(state, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner());
            if Instant::now() >= next {
                next += config.progress_every;
                let done = total - state.queue.len() as u64 - state.in_flight as u64;
                let seconds = started.elapsed().as_secs_f64().max(0.001);
                let rate = state.bytes as f64 / seconds;
                let fetched = done.saturating_sub(already).max(1);
                let eta = seconds / fetched as f64 * (total - done) as f64;
                tracing::info!(
                    chunks = done,
                    total,
                    mib = format!("{:.1}", state.bytes as f64 / 1048576.0),
                    mib_per_s = format!("{:.1}", rate / 1048576.0),
                    eta_s = format!("{eta:.0}"),
                    "fetching the snapshot"
                );
            }
            drop(state);
        }
    });
    let state = transfer.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(error) = state.failure {
        return Err(error.into());
    }
    Ok(Fetched {
        restore: state.restore,
        chunks: state.chunks,
        bytes: state.bytes,
        strikes: state.strikes,
        moved_on: state.moved_on,
    })
}

/// Fetches chunks from `source` until none are left, the source has failed
/// [`STRIKES`] times, the store failed or the node is asked to `stop`.
fn worker(
    client: &Client,
    source: &Source,
    manifest: &Arc<Manifest>,
    (transfer, changed): (&Mutex<Transfer>, &Condvar),
    metrics: &Metrics,
    stop: &AtomicBool,
) {
    let height = manifest.height();
    let (mut strikes, mut busy) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let index = {
            let mut state = lock(transfer);
            loop {
                if state.failure.is_some() {
                    return;
                }
                if let Some(index) = state.queue.pop_front() {
                    state.in_flight += 1;
                    break index;
                }
                if state.in_flight == 0 {
                    changed.notify_all();
                    return;
                }
                // Another worker's chunk may still come back to the queue.
                state = changed
                    .wait_timeout(state, Duration::from_millis(100))
                    .map(|(state, _)| state)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        };
        // Checked (and hashed, the one time) outside the lock: the other workers'
        // chunks are written meanwhile. Asked on a thread of its own: a member that
        // never answers holds it for the whole timeout, and a stop does not wait.
        let ask = {
            let (client, source, manifest) = (client.clone(), source.clone(), manifest.clone());
            move |&index: &u64| {
                client.chunk(&source, height, index).and_then(|bytes| {
                    let tile = VerifiedTile::check(&manifest, index, &bytes)
                        .map_err(|error| Fetch::Failed(error.to_string()))?;
                    Ok((tile, bytes.len() as u64))
                })
            }
        };
        let fetched = at_once(&[index], stop, ask).map(|mut answers| answers.pop());
        let mut state = lock(transfer);
        state.in_flight -= 1;
        let Ok(Some(fetched)) = fetched else {
            // Stopped: the chunk stays missing, for the next start.
            state.queue.push_front(index);
            changed.notify_all();
            return;
        };
        match fetched {
            Ok((tile, bytes)) => {
                busy = 0;
                if let Err(error) = state.restore.write(tile) {
                    state.failure = Some(error);
                } else {
                    state.chunks += 1;
                    state.bytes += bytes;
                    metrics
                        .snapshot_chunks_fetched
                        .fetch_add(1, Ordering::Relaxed);
                    metrics.join_chunks_held.fetch_add(1, Ordering::Relaxed);
                    metrics
                        .snapshot_bytes_fetched
                        .fetch_add(bytes, Ordering::Relaxed);
                }
                changed.notify_all();
                continue;
            }
            // A member busy serving others is asked again, but one that stays busy
            // for BUSY_PATIENCE answers in a row counts as failing.
            Err(Fetch::Busy) if busy < BUSY_PATIENCE => {
                busy += 1;
                state.queue.push_back(index);
                changed.notify_all();
                drop(state);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(Fetch::Busy) => {
                busy = 0;
                state.queue.push_front(index);
                changed.notify_all();
                strikes += 1;
                state.strikes.insert(source.to_string(), strikes);
                tracing::warn!(%source, strikes, "a member stayed too busy to serve snapshot chunks");
            }
            Err(Fetch::Gone) => {
                state.queue.push_front(index);
                state.moved_on = true;
                changed.notify_all();
                // The chain moved past it: ordinary on a busy chain (join() retargets).
                tracing::info!(%source, height, "the member no longer serves this snapshot");
                return;
            }
            Err(Fetch::Failed(reason) | Fetch::Refused(reason)) => {
                state.queue.push_front(index);
                changed.notify_all();
                strikes += 1;
                state.strikes.insert(source.to_string(), strikes);
                tracing::warn!(
                    %source, index, %reason, strikes,
                    "a snapshot chunk failed; it is fetched again, from another member if one is free"
                );
            }
        }
        drop(state);
        if strikes >= STRIKES {
            tracing::warn!(%source, strikes, "no more snapshot chunks are asked of this member");
            return;
        }
        // Leave the chunk to another member for a while, longer at each strike: a
        // member away for a moment (a restart) keeps its place in the transfer.
        let wait = Duration::from_millis(500) * 4u32.pow(strikes.saturating_sub(1));
        if pause(stop, wait).is_err() {
            return;
        }
    }
}

/// The header of block `height` from the first source that serves it with a
/// certificate of the membership `history` says certified it.
fn fetch_certified(
    client: &Client,
    sources: &[Source],
    spec: &ChainSpec,
    history: &MembershipHistory,
    height: u64,
) -> Option<Header> {
    sources.iter().find_map(|source| {
        let (block, certificate) = client.committed(source, height).ok()?;
        if certified_under(spec, history, &block, &certificate) {
            return Some(block.header);
        }
        tracing::warn!(%source, height, "a block came with a certificate that does not verify");
        None
    })
}

/// Whether `certificate` certifies `block` under the membership `history` says was
/// in force at its height, in that epoch's signing domain.
fn certified_under(
    spec: &ChainSpec,
    history: &MembershipHistory,
    block: &Block,
    certificate: &CommitCertificate,
) -> bool {
    let height = block.header.height;
    history
        .at(height)
        .verify_certificate(&spec.chain_hash(), certificate, height, &block.hash())
        .is_ok()
}

/// Block `h` of `manifest` from the first source that serves it whole.
fn fetch_block(client: &Client, sources: &[Source], manifest: &Manifest) -> Option<Block> {
    let height = manifest.height();
    let hash = manifest.header.hash();
    for source in sources {
        let block =
            client
                .committed(source, height)
                .and_then(|(block, _)| match block.hash() == hash {
                    true => Ok(block),
                    false => Err(Fetch::Failed(format!("not block {height} of the snapshot"))),
                });
        match block {
            Ok(block) => return Some(block),
            Err(error) => {
                tracing::warn!(%source, %error, height, "the snapshot's block was not served")
            }
        }
    }
    None
}

/// How a node that may have voted, and lost the record of it, asks the members how
/// far the chain has come.
#[derive(Clone, Debug)]
pub struct Probe {
    /// This node's key.
    pub me: VerifyingKey,
    /// Reaches the members' client APIs, at the addresses the genesis file or the
    /// changes that added them name.
    pub credentials: Credentials,
    /// More ways to reach members, by key, tried after their client APIs: the peer
    /// ports of the genesis members, for a genesis member (whose requester knows
    /// them).
    pub ways: Vec<(VerifyingKey, Source)>,
}

impl Probe {
    /// The members of `groups` other than this node, each once, with the ways to
    /// reach it, tried in order: its client API, then the others it has.
    fn members(&self, groups: &[Members]) -> Vec<(VerifyingKey, Vec<Source>)> {
        let mut members: Vec<(VerifyingKey, Vec<Source>)> = Vec::new();
        for member in groups.iter().flat_map(Members::as_slice) {
            let key = member.public_key;
            if key == self.me || members.iter().any(|(known, _)| *known == key) {
                continue;
            }
            let api = member.api_addr.as_deref();
            let api = api.and_then(|addr| self.credentials.base_url(addr).ok());
            let more = self.ways.iter().filter(|(other, _)| *other == key);
            let ways = api.map(Source::Api).into_iter();
            let ways = ways.chain(more.map(|(_, source)| source.clone()));
            members.push((key, ways.collect()));
        }
        members
    }

    /// Whether `answered` holds enough members of each of `groups`
    /// ([`Config::abstain_answers`], at most all its members other than this node):
    /// fewer might all be members that never saw this node's votes.
    fn enough(&self, groups: &[Members], answered: &[VerifyingKey]) -> bool {
        groups.iter().all(|members| {
            let others = || {
                members
                    .as_slice()
                    .iter()
                    .filter(|member| member.public_key != self.me)
            };
            let heard = others()
                .filter(|member| answered.contains(&member.public_key))
                .count();
            heard >= Config::abstain_answers(members).min(others().count())
        })
    }
}

/// The memberships whose members a node that lost its disk asks: the one in force
/// as far as `history` knows, and the one after a change on its way, as either may
/// order the chain by now.
pub(crate) fn asked_memberships(history: &MembershipHistory) -> Vec<Members> {
    let known = history
        .epochs()
        .last()
        .map(|membership| membership.members.clone());
    let after = history.last().members;
    match known {
        Some(known) if known != after => vec![known, after],
        _ => vec![after],
    }
}

/// Whether `key` is a member in any membership of `history`, a change on its way
/// included.
pub(crate) fn ever_member(history: &MembershipHistory, key: &VerifyingKey) -> bool {
    let last = history.last();
    history
        .epochs()
        .iter()
        .chain(std::iter::once(&last))
        .flat_map(|membership| membership.members.as_slice())
        .any(|member| member.public_key == *key)
}

/// How long between two warnings that a node still waits for answers.
const WAIT_WARNING: Duration = Duration::from_secs(10);

/// The height up to which a node that starts without the record of its votes
/// abstains ([`Config::abstain_bound`]), with the chain's height the members showed:
/// 0 when its key was never a member in the memberships the chain went through (a
/// follower, a learner never promoted). `known` is the history the node holds (from
/// a snapshot's manifest, a backup, or genesis), `floor` a height the chain is known
/// to have reached. The members' proofs extend `known` where a change came after it;
/// a key `known` does not name is a member only if enough members' proofs say so,
/// so it asks until they have answered, or until `stop` is set.
pub fn abstain_through(
    client: &Client,
    spec: &ChainSpec,
    probe: &Probe,
    known: MembershipHistory,
    floor: u64,
    stop: &AtomicBool,
) -> Result<(u64, u64), JoinError> {
    let mut history = known;
    let started = Instant::now();
    let mut warned = Instant::now();
    let mut answered: Vec<VerifyingKey> = Vec::new();
    while !ever_member(&history, &probe.me) {
        let groups = asked_memberships(&history);
        if probe.enough(&groups, &answered) {
            return Ok((0, floor));
        }
        let unanswered: Vec<(VerifyingKey, Vec<Source>)> = probe
            .members(&groups)
            .into_iter()
            .filter(|(key, _)| !answered.contains(key))
            .collect();
        let (client, spec) = (client.clone(), spec.clone());
        let asked = at_once(&unanswered, stop, move |(_, ways)| {
            ways.iter()
                .find_map(|source| learn_history(&client, &spec, source))
        })?;
        for ((key, _), learned) in unanswered.iter().zip(asked) {
            if let Some(learned) = learned {
                answered.push(*key);
                history = longer(history, Some(learned));
            }
        }
        if ever_member(&history, &probe.me) || probe.enough(&asked_memberships(&history), &answered)
        {
            continue;
        }
        if warned.elapsed() >= WAIT_WARNING {
            warned = Instant::now();
            tracing::warn!(
                answered = answered.len(),
                waiting_s = started.elapsed().as_secs(),
                "waiting for more members to show the membership changes: this node \
                 starts without a database and its key is not marked new, so whether \
                 the key ever voted decides whether it must abstain"
            );
        }
        pause(stop, Duration::from_secs(1))?;
    }
    let seen = highest_certified(client, spec, probe, &mut history, stop)?.max(floor);
    Ok((
        Config::abstain_bound(spec, &history.last().members, seen),
        seen,
    ))
}

/// Waits `time`, or less if the node is asked to stop meanwhile (then `Stopped`).
fn pause(stop: &AtomicBool, time: Duration) -> Result<(), JoinError> {
    let until = Instant::now() + time;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(JoinError::Stopped);
        }
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            return Ok(());
        };
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// The highest height the members show with a commit certificate, or a prepared
/// certificate above it ([`shown_height`]), that verifies against the membership
/// `history` says certified it (0 when none shows one, or each holds nothing): how
/// far the chain has come, which bounds where a member that
/// lost its disk may have voted. A member cannot raise it beyond the chain, only
/// hide how far it got. The members of [`asked_memberships`] are asked, each by its
/// ways in turn, and asked again, once a second, until enough of each have answered
/// ([`Probe::enough`]), or until `stop` is set. A certificate under a membership
/// the history does not know yet is checked with the proof its sender shows, and
/// the longer history is kept.
pub fn highest_certified(
    client: &Client,
    spec: &ChainSpec,
    probe: &Probe,
    history: &mut MembershipHistory,
    stop: &AtomicBool,
) -> Result<u64, JoinError> {
    let started = Instant::now();
    let mut warned = Instant::now();
    // An answer stays good: anything after this member stopped bounds its votes.
    let mut answers: Vec<(VerifyingKey, u64)> = Vec::new();
    loop {
        let unanswered: Vec<(VerifyingKey, Vec<Source>)> = probe
            .members(&asked_memberships(history))
            .into_iter()
            .filter(|(key, _)| answers.iter().all(|(answered, _)| answered != key))
            .collect();
        let (client, spec, known) = (client.clone(), spec.clone(), history.clone());
        let asked = at_once(&unanswered, stop, move |(_, ways)| {
            ways.iter()
                .find_map(|source| shown_height(&client, &spec, &known, source))
        })?;
        for ((key, _), asked) in unanswered.iter().zip(asked) {
            if let Some((height, learned)) = asked {
                answers.push((*key, height));
                *history = longer(history.clone(), learned);
            }
        }
        let answered: Vec<VerifyingKey> = answers.iter().map(|(key, _)| *key).collect();
        if probe.enough(&asked_memberships(history), &answered) {
            return Ok(answers.iter().map(|(_, height)| *height).max().unwrap_or(0));
        }
        if warned.elapsed() >= WAIT_WARNING {
            warned = Instant::now();
            tracing::warn!(
                answered = answers.len(),
                waiting_s = started.elapsed().as_secs(),
                "waiting for more members to show how far the chain has come: this member \
                 lost the record of what it signed and votes only once it knows"
            );
        }
        pause(stop, Duration::from_secs(1))?;
    }
}

/// The height `source` shows, if it shows it with a commit certificate that verifies
/// under `history`, or under the longer history its proof establishes (returned); 0
/// if it holds no committed block, or no database yet.
fn certified_height(
    client: &Client,
    spec: &ChainSpec,
    history: &MembershipHistory,
    source: &Source,
) -> Option<(u64, Option<MembershipHistory>)> {
    let Some((block, certificate)) = client.latest_committed(source).ok()? else {
        return Some((0, None));
    };
    let height = block.header.height;
    if certified_under(spec, history, &block, &certificate) {
        return Some((height, None));
    }
    // Certified by a membership after what this node knows: its sender's proof
    // says which.
    let learned = learn_history(client, spec, source)?;
    certified_under(spec, &learned, &block, &certificate).then_some((height, Some(learned)))
}

/// How far `source` shows the chain has come: its certified height
/// ([`certified_height`]), or above it the height of a prepared certificate it
/// holds, if that verifies. A block applied since a member's disk last synced is
/// gone after a crash while its prepared certificate stays, and then only the
/// certificate says the chain got there. None until both questions are answered;
/// a certificate that fails its checks counts as none (a liar may hide how far
/// the chain got, not raise it).
fn shown_height(
    client: &Client,
    spec: &ChainSpec,
    history: &MembershipHistory,
    source: &Source,
) -> Option<(u64, Option<MembershipHistory>)> {
    let (height, learned) = certified_height(client, spec, history, source)?;
    let prepared = match client.prepared(source) {
        Ok(certificate) => Some(certificate),
        // It holds none (a build from before the question says so too).
        Err(Fetch::Gone) => None,
        Err(_) => return None,
    };
    let known = learned.as_ref().unwrap_or(history);
    let prepared = prepared
        .filter(|certificate| {
            let membership = known.at(certificate.header.height);
            let domain = membership.signing_domain(&spec.chain_hash());
            let genesis = spec.genesis_block().hash();
            Verifier::new(domain, genesis, &membership.members)
                .check_prepared(certificate)
                .is_ok()
        })
        .map_or(0, |certificate| certificate.header.height);
    Some((height.max(prepared), learned))
}

/// The membership history `source` proves, if it verifies from the genesis file:
/// every change (`GET /v1/members`), or over the peer protocol those its latest
/// snapshot's manifest carries.
fn learn_history(client: &Client, spec: &ChainSpec, source: &Source) -> Option<MembershipHistory> {
    let changes = match source {
        Source::Api(_) => client.changes(source).ok()?,
        Source::Peer { .. } => {
            let manifest = Manifest::decode(&client.manifest(source).ok()?).ok()?;
            manifest.changes
        }
    };
    match MembershipHistory::verify(spec, &changes) {
        Ok(history) => Some(history),
        Err(error) => {
            tracing::warn!(%source, %error, "a member's membership proof was refused");
            None
        }
    }
}

/// The membership history the `sources` show (each asked at once, each proof
/// checked from the genesis file): the longest. `None` when none shows one.
pub fn shown_history(
    client: &Client,
    spec: &ChainSpec,
    sources: &[Source],
    stop: &AtomicBool,
) -> Result<Option<MembershipHistory>, JoinError> {
    let (client, spec) = (client.clone(), spec.clone());
    let shown = at_once(sources, stop, move |source| {
        learn_history(&client, &spec, source)
    })?;
    Ok(shown
        .into_iter()
        .flatten()
        .reduce(|known, learned| longer(known, Some(learned))))
}

/// The longer of two histories of one chain: each verified from genesis, one
/// holds the other's changes and more.
fn longer(known: MembershipHistory, learned: Option<MembershipHistory>) -> MembershipHistory {
    match learned {
        Some(learned) if learned.changes() > known.changes() => learned,
        _ => known,
    }
}

/// A memory figure of this process from /proc (`VmHWM`, its peak resident set so
/// far; `VmRSS`, its resident set now), where /proc tells it.
fn rss_mib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// How often a backfill hands freed memory back ([`release_freed_memory`], about 10 ms
/// each time on a node of 300 MiB).
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Hands memory the process freed back to the system; how many MiB. glibc keeps
/// freed memory in the arena of the thread that allocated it, in holes below what is
/// still live there: a join's chunk buffers and staging cache, and during a backfill
/// the database cache's pages, read on its thread and evicted by others, would stay
/// resident for good (measured: 127 of a restored node's 334 MiB were such holes).
#[allow(unsafe_code)]
fn release_freed_memory() -> u64 {
    let before = rss_mib("VmRSS").unwrap_or(0);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim takes no pointer; it only returns free pages of the
        // allocator's own arenas to the kernel.
        unsafe { malloc_trim(0) };
    }
    before.saturating_sub(rss_mib("VmRSS").unwrap_or(before))
}

/// `GET /v1/members` with every change a manifest may carry, as JSON (hex doubles
/// the binary form's 8 MiB).
const MAX_MEMBERS_BYTES: u64 = 24 << 20;

/// A prepared certificate: a header and a vote of 66 bytes per member, of at most
/// 65,535 members.
const MAX_PREPARED_BYTES: u64 = 8 << 20;

/// A block is at most the chain's limits; 64 MiB bounds any honest one.
const MAX_BLOCK_BYTES: u64 = 64 << 20;

/// The largest chunk: a tile of the largest level.
const MAX_CHUNK_BYTES: u64 = 32 << MAX_TILE_LEVEL;

/// Fetches from [`Source`]s of either kind; what it returns is still to be checked.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    requester: Option<std::sync::Arc<Requester>>,
}

impl Client {
    /// A client calling client APIs with `agent`, asking members with `requester`.
    pub fn new(agent: ureq::Agent, requester: Option<std::sync::Arc<Requester>>) -> Client {
        Client { agent, requester }
    }

    /// The encoded manifest of the latest snapshot `source` serves.
    fn manifest(&self, source: &Source) -> Result<Vec<u8>, Fetch> {
        match source {
            Source::Api(url) => {
                // The JSON around a manifest in hex, with room for its other fields.
                let limit = 2 * MAX_MANIFEST_BYTES as u64 + 4096;
                let body = get(&self.agent, &format!("{url}/v1/snapshots/latest"), limit)?;
                let view: SnapshotView = serde_json::from_slice(&body)
                    .map_err(|error| Fetch::Failed(error.to_string()))?;
                hex::decode(&view.manifest).map_err(|error| Fetch::Failed(error.to_string()))
            }
            Source::Peer { .. } => {
                match self.ask(
                    source,
                    Wire::FetchSnapshot { height: 0 },
                    MAX_MANIFEST_BYTES as u64,
                )? {
                    Wire::Snapshot(bytes) => Ok(bytes),
                    other => Err(unexpected(&other)),
                }
            }
        }
    }

    /// Chunk `index` of the snapshot at `height`.
    fn chunk(&self, source: &Source, height: u64, index: u64) -> Result<Vec<u8>, Fetch> {
        match source {
            Source::Api(url) => {
                let url = format!("{url}/v1/snapshots/{height}/chunks/{index}");
                get(&self.agent, &url, MAX_CHUNK_BYTES)
            }
            Source::Peer { .. } => {
                match self.ask(source, Wire::FetchChunk { height, index }, MAX_CHUNK_BYTES)? {
                    Wire::Chunk(bytes) => Ok(bytes),
                    other => Err(unexpected(&other)),
                }
            }
        }
    }

    /// Block `height` with its commit certificate, unchecked but for its height.
    pub(crate) fn committed(
        &self,
        source: &Source,
        height: u64,
    ) -> Result<(Block, CommitCertificate), Fetch> {
        match source {
            Source::Api(url) => fetch_committed(&self.agent, url, height),
            Source::Peer { .. } => {
                match self.ask(source, Wire::FetchCommittedAt { height }, MAX_BLOCK_BYTES)? {
                    Wire::Committed { block, certificate } if block.header.height == height => {
                        Ok((block, certificate))
                    }
                    other => Err(unexpected(&other)),
                }
            }
        }
    }

    /// The prepared certificate of the highest height `source` holds one for, still
    /// to be checked; [`Fetch::Gone`] when it holds none.
    fn prepared(&self, source: &Source) -> Result<PreparedCertificate, Fetch> {
        let answer = match source {
            Source::Api(url) => {
                let url = format!("{url}/v1/consensus/prepared");
                let bytes = get(&self.agent, &url, MAX_PREPARED_BYTES)?;
                Wire::decode(&bytes).map_err(|error| Fetch::Failed(error.to_string()))?
            }
            Source::Peer { .. } => self.ask(source, Wire::FetchPrepared, MAX_PREPARED_BYTES)?,
        };
        match answer {
            Wire::Prepared(certificate) => Ok(certificate),
            other => Err(unexpected(&other)),
        }
    }

    /// The membership changes `source` lists (`GET /v1/members`), still to be
    /// checked; a peer port lists none.
    fn changes(&self, source: &Source) -> Result<Vec<ChangeProof>, Fetch> {
        let Source::Api(url) = source else {
            return Err(Fetch::Gone);
        };
        let mut response = call(&self.agent, &format!("{url}/v1/members"))?;
        let body = body(&mut response, MAX_MEMBERS_BYTES)?;
        if response.status() != 200 {
            return Err(Fetch::Failed(format!("HTTP {}", response.status())));
        }
        let members: crate::api::types::MembersView =
            serde_json::from_slice(&body).map_err(|error| Fetch::Failed(error.to_string()))?;
        members
            .changes
            .iter()
            .map(ChangeProof::try_from)
            .collect::<Result<_, _>>()
            .map_err(|error| Fetch::Refused(error.to_string()))
    }

    /// The highest committed block `source` holds, with its certificate; `None` at
    /// height 0.
    fn latest_committed(
        &self,
        source: &Source,
    ) -> Result<Option<(Block, CommitCertificate)>, Fetch> {
        match source {
            Source::Api(url) => {
                let mut response = call(&self.agent, &format!("{url}/v1/status"))?;
                let body = body(&mut response, 1 << 20)?;
                let failed = |error: serde_json::Error| Fetch::Failed(error.to_string());
                match response.status().as_u16() {
                    200 => {
                        let status: crate::api::types::StatusView =
                            serde_json::from_slice(&body).map_err(failed)?;
                        match status.height {
                            0 => Ok(None),
                            height => self.committed(source, height).map(Some),
                        }
                    }
                    // A member still starting says whether it holds a chain yet.
                    503 => {
                        let starting: crate::api::starting::StartingView =
                            serde_json::from_slice(&body).map_err(failed)?;
                        match starting.holds_nothing {
                            true => Ok(None),
                            false => Err(Fetch::Busy),
                        }
                    }
                    status => Err(Fetch::Failed(format!("HTTP {status}"))),
                }
            }
            Source::Peer { .. } => match self.ask(
                source,
                Wire::FetchCommittedAt { height: 0 },
                MAX_BLOCK_BYTES,
            ) {
                Ok(Wire::Committed { block, certificate }) => Ok(Some((block, certificate))),
                Err(Fetch::Gone) => Ok(None),
                Ok(other) => Err(unexpected(&other)),
                Err(error) => Err(error),
            },
        }
    }

    /// Sends `request` to a [`Source::Peer`] and reads an answer of at most `limit`
    /// bytes; an `unavailable` answer is [`Fetch::Busy`] or [`Fetch::Gone`].
    fn ask(&self, source: &Source, request: Wire, limit: u64) -> Result<Wire, Fetch> {
        let (Source::Peer { member, addr }, Some(requester)) = (source, &self.requester) else {
            return Err(Fetch::Failed("no peer identity to ask members with".into()));
        };
        // The tag byte before the item.
        let limit = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        match requester.request(*member, addr, &request, limit) {
            Ok(Wire::Unavailable { busy: true, .. }) => Err(Fetch::Busy),
            Ok(Wire::Unavailable { busy: false, .. }) => Err(Fetch::Gone),
            Ok(answer) => Ok(answer),
            Err(error) => Err(Fetch::Failed(error.to_string())),
        }
    }
}

/// A well-formed answer of the wrong kind.
fn unexpected(answer: &Wire) -> Fetch {
    Fetch::Failed(format!("answered with a {} frame", answer.kind()))
}

/// Block `height` with its commit certificate as `source` serves it
/// (`GET /v1/blocks/{height}/committed`), decoded; its certificate is the caller's
/// to check.
pub(crate) fn fetch_committed(
    agent: &ureq::Agent,
    source: &str,
    height: u64,
) -> Result<(Block, CommitCertificate), Fetch> {
    let url = format!("{source}/v1/blocks/{height}/committed");
    get(agent, &url, MAX_BLOCK_BYTES)
        .and_then(|bytes| Wire::committed_at(&bytes, height).map_err(Fetch::Failed))
}

/// GETs `url`, reading at most `limit` bytes of body.
fn get(agent: &ureq::Agent, url: &str, limit: u64) -> Result<Vec<u8>, Fetch> {
    let mut response = call(agent, url)?;
    match response.status().as_u16() {
        200 => body(&mut response, limit),
        404 => Err(Fetch::Gone),
        503 => Err(Fetch::Busy),
        status => Err(Fetch::Failed(format!("HTTP {status}"))),
    }
}

/// GETs `url`, whatever the status of the answer.
pub(crate) fn call(
    agent: &ureq::Agent,
    url: &str,
) -> Result<ureq::http::Response<ureq::Body>, Fetch> {
    agent
        .get(url)
        .call()
        .map_err(|error| Fetch::Failed(error.to_string()))
}

/// The body of `response`, of at most `limit` bytes.
pub(crate) fn body(
    response: &mut ureq::http::Response<ureq::Body>,
    limit: u64,
) -> Result<Vec<u8>, Fetch> {
    response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|error| Fetch::Failed(error.to_string()))
}

/// Fetches the blocks below a restored database's history (newest first, each
/// checked by [`Store::backfill`]: the hash link to the block above, its certificate,
/// its entries against the ids the log holds) from `sources` in turn, until the
/// store holds the whole chain or `stop` is set. A member whose block fails is passed
/// over for the next; when none has it, the next round waits a few seconds. Blocks
/// `previous` holds (the database a node far behind set aside to join) are taken
/// from there instead, checked all the same.
pub fn backfill(
    store: &Store,
    stop: &AtomicBool,
    config: &JoinConfig,
    metrics: &Metrics,
    previous: Option<&Store>,
) {
    let (client, sources) = (
        Client::new(config.agent.clone(), config.requester.clone()),
        &config.sources,
    );
    let first = store.history_from();
    if first > 1 {
        wait_for_the_tip(store, stop, &client, sources);
    }
    let started = Instant::now();
    let mut next_progress = Instant::now() + config.progress_every;
    // What the backfill churns through (blocks, and the database cache's pages it reads
    // and others evict) stays resident unless handed back: within a few seconds the
    // process grew by a hundred MiB without it.
    let mut next_trim = Instant::now() + TRIM_EVERY;
    let mut released_mib = 0;
    let mut turn = 0;
    // A member away fails every block: told once in a while, not once a block.
    let mut failing = crate::throttle::Throttle::new(Duration::from_secs(30));
    if first > 1 {
        tracing::info!(
            history_from = first,
            "fetching the history below the snapshot"
        );
    }
    // The set-aside database's blocks whose parent it holds too (from the lowest up
    // to its tip; itself restored from a snapshot, its lowest block has none), while
    // they pass their checks.
    let mut previous = previous.and_then(|previous| {
        let lowest = match previous.history_from() {
            1 => 1,
            from => from + 1,
        };
        Some((previous, lowest..=previous.tip().ok()?.height))
    });
    let mut copied = 0u64;
    // The block below the one being added: its header says where the added block's
    // entries start, and it is the next one added.
    let mut below: Option<(Block, CommitCertificate)> = None;
    let mut last_added = Instant::now();
    while store.history_from() > 1 && !stop.load(Ordering::Relaxed) {
        let height = store.history_from() - 1;
        let mut held = false;
        if let Some((from, _)) = previous.clone().filter(|(_, held)| held.contains(&height)) {
            let read = |height: u64| match from.committed_block(height) {
                Ok(Some(found)) => Ok(found),
                Ok(None) => Err(Fetch::Gone),
                Err(error) => Err(Fetch::Failed(error.to_string())),
            };
            match add_below(store, &mut below, height, read) {
                Ok(()) => {
                    copied += 1;
                    held = true;
                }
                Err(error) => {
                    tracing::warn!(
                        set_aside = %from.path().display(),
                        height,
                        %error,
                        "a block of the database set aside failed its check: the rest of \
                         the history is fetched from the members"
                    );
                    previous = None;
                }
            }
        }
        for _ in 0..sources.len() {
            if held {
                break;
            }
            let source = &sources[turn % sources.len()];
            turn += 1;
            match add_below(store, &mut below, height, |height| {
                client.committed(source, height)
            }) {
                Ok(()) => {
                    metrics
                        .history_blocks_fetched
                        .fetch_add(1, Ordering::Relaxed);
                    held = true;
                }
                Err(error) => {
                    if let Some(suppressed) = failing.allow(source.to_string()) {
                        tracing::warn!(%source, height, %error, suppressed, "a block of the history was not served or failed its check; asking the next member");
                    }
                }
            }
        }
        if held {
            last_added = Instant::now();
        } else if pause(stop, Duration::from_secs(5)).is_err() {
            return;
        }
        if Instant::now() >= next_trim {
            next_trim = Instant::now() + TRIM_EVERY;
            released_mib += release_freed_memory();
        }
        if Instant::now() >= next_progress {
            next_progress += config.progress_every;
            let done = first - store.history_from();
            let seconds = started.elapsed().as_secs_f64().max(0.001);
            let left = store.history_from() - 1;
            let stalled = last_added.elapsed();
            if stalled >= config.progress_every {
                // No rate or time left to tell: none holds while nothing arrives.
                tracing::info!(
                    history_from = store.history_from(),
                    stalled_s = stalled.as_secs(),
                    "fetching the history below the snapshot: no member has served a block \
                     for a while (the warnings above say why); it goes on once one does"
                );
            } else {
                tracing::info!(
                    history_from = store.history_from(),
                    blocks_per_s = format!("{:.0}", done as f64 / seconds),
                    eta_s = format!("{:.0}", seconds / done.max(1) as f64 * left as f64),
                    released_mib,
                    "fetching the history below the snapshot"
                );
            }
        }
    }
    if store.history_from() == 1 && first > 1 {
        tracing::info!(
            blocks = first - 1,
            from_set_aside = copied,
            released_mib = released_mib + release_freed_memory(),
            "the whole history is held"
        );
    }
}

/// Longest a backfill waits for a node whose tip does not move to catch up first.
const TIP_STILL: Duration = Duration::from_secs(3);

/// Waits (until `stop`, or while the tip stands still for [`TIP_STILL`]) until the
/// store's tip has caught up with the highest certified height the members of
/// `sources` show, asked again each round: the blocks committed while the node
/// joined, and those committed while it caught up, come before the history, as both
/// write the one store and validating new blocks is what the node joined for
/// (measured: with both at once, catching up took 5 s instead of 3; waiting only for
/// the height shown at the start, the node then trailed the chain by a few blocks
/// through the whole backfill).
fn wait_for_the_tip(store: &Store, stop: &AtomicBool, client: &Client, sources: &[Source]) {
    let spec = store.spec();
    let Ok(history) = store.membership_history() else {
        return;
    };
    let tip = || store.last_tip().map_or(0, |tip| tip.height);
    let (mut last, mut moved) = (tip(), Instant::now());
    let mut told = false;
    while moved.elapsed() < TIP_STILL && !stop.load(Ordering::Relaxed) {
        let (client, spec, history) = (client.clone(), spec.clone(), history.clone());
        let Ok(heights) = at_once(sources, stop, move |source| {
            certified_height(&client, &spec, &history, source).map(|(height, _)| height)
        }) else {
            return; // stopped
        };
        let chain = heights.into_iter().flatten().max().unwrap_or(0);
        if tip() >= chain {
            return;
        }
        if tip() > last {
            (last, moved) = (tip(), Instant::now());
        }
        if !told {
            told = true;
            tracing::info!(
                height = tip(),
                chain_height = chain,
                "the history below the snapshot waits until this node has caught up with \
                 the chain"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Adds block `height` below the store's history, fetched with `fetch` (or taken
/// from `below`, where the step before left it), checked against its parent, which
/// is fetched too and left in `below` for the next step.
fn add_below(
    store: &Store,
    below: &mut Option<(Block, CommitCertificate)>,
    height: u64,
    fetch: impl Fn(u64) -> Result<(Block, CommitCertificate), Fetch>,
) -> Result<(), Fetch> {
    let (block, certificate) = match below.take() {
        Some(held) if held.0.header.height == height => held,
        _ => fetch(height)?,
    };
    let parent = match height {
        1 => None,
        _ => Some(fetch(height - 1)?),
    };
    let parent_header = match &parent {
        Some((block, _)) => block.header,
        None => store.spec().genesis_block().header,
    };
    store
        .backfill(&block, &certificate, &parent_header)
        .map_err(|error| Fetch::Failed(error.to_string()))?;
    *below = parent;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Change, LearnerProgress, Reconfiguration};
    use crate::testing::{key, spec_with_admins};

    /// A learner whose promotion is the last change, on its way, is a member to the
    /// rejoin checks, and both memberships are asked while the change may or may not
    /// be in force.
    #[test]
    fn a_promotion_on_its_way_counts() {
        let members = [key(1), key(2), key(3), key(4)];
        let spec = spec_with_admins(&members, 0, 10, &[key(20)], 1);
        let chain_hash = spec.chain_hash();
        let learner = key(9);
        let entry = |epoch, change, progress| {
            let mut change = Reconfiguration::new(epoch, change).unwrap();
            change.sign(&key(20), &chain_hash);
            change.progress = progress;
            change.to_entry()
        };
        let mut history = MembershipHistory::genesis(&spec);
        let add = Change::AddLearner {
            public_key: learner.verifying_key(),
            p2p_addr: "127.0.0.1:9".into(),
            api_addr: None,
        };
        history
            .apply_block(&spec, 3, &[entry(0, add, None)])
            .unwrap();
        assert!(!ever_member(&history, &learner.verifying_key()));
        let promote = Change::Promote {
            public_key: learner.verifying_key(),
        };
        let progress = LearnerProgress::sign(&learner, &chain_hash, 14);
        history
            .apply_block(&spec, 15, &[entry(1, promote, Some(progress))])
            .unwrap();
        assert!(ever_member(&history, &learner.verifying_key()));
        let asked = asked_memberships(&history);
        let sizes: Vec<usize> = asked.iter().map(Members::len).collect();
        assert_eq!(sizes, [4, 5]);
        // Enough of each: 2 of the 3 others of the four, 2 of the 4 others of the five
        // (the learner's answer counts only among the five).
        let probe = Probe {
            me: key(1).verifying_key(),
            credentials: Credentials::default(),
            ways: Vec::new(),
        };
        let answered = |seeds: &[u8]| -> Vec<VerifyingKey> {
            seeds.iter().map(|s| key(*s).verifying_key()).collect()
        };
        assert!(!probe.enough(&asked, &answered(&[2, 9])));
        assert!(probe.enough(&asked, &answered(&[2, 3])));
    }
}
