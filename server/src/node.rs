//! The node: what the API talks to. It holds the store, the plugins, the metrics and
//! the one engine it was built with ([`Engine`]: alone, one member of a cluster, or
//! a follower),
//! and answers for the node as a whole: whether it is ready or alive, what it runs
//! with. Everything about producing blocks is the engine's.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::sync::oneshot;

use crate::chain::snapshot::{Manifest, DEFAULT_TILE_LEVEL};
use crate::chain::Policy;
use crate::chain::{Entry, Hash, Header, LearnerProgress, MembershipError, Reconfiguration};
use crate::consensus::MemberIndex;
use crate::engine::{blocking, Alone, Cluster, Engine, Follower};
pub use crate::engine::{
    left_pool_message, EngineStatus, MineError, NodeSettings, SubmitError, Submitted, LEFT_POOL,
};
use crate::metrics::Metrics;
use crate::net::{Answer, Wire};
use crate::plugin_host::Plugins;
use crate::snapshots::{SnapshotServeError, Snapshots, DEFAULT_TRANSFERS};
use crate::storage::Store;

/// One node: its store, its plugins, its metrics and its engine.
pub struct Node {
    store: Arc<Store>,
    node_id: Hash,
    plugins: Arc<Plugins>,
    metrics: Arc<Metrics>,
    engine: Engine,
    snapshots: Snapshots,
    ready: AtomicBool,
    stopping: AtomicBool,
    /// Places for `GET /chain` streams, each a task that reads the chain a batch at
    /// a time as its client takes it.
    chain_streams: Arc<tokio::sync::Semaphore>,
    /// How this node reaches other nodes' client APIs.
    upstream: ledger_client::Credentials,
    /// A follower's key, which signs its height for a promotion of it.
    key: Option<SigningKey>,
}

/// Longest wait for a learner's status before promoting it.
const LEARNER_PROBE: Duration = Duration::from_secs(5);
/// Longest wait for a learner's status in `GET /v1/members`.
pub const LEARNER_PROGRESS: Duration = Duration::from_secs(2);

/// `GET /chain` streams a node serves at once; more are told to retry.
pub const CHAIN_STREAMS: usize = 16;

/// Why a membership change was refused before it was ordered.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The membership in force refuses it.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The change itself is malformed for this chain.
    #[error("{0}")]
    Refused(String),
    /// This node orders no changes: it runs the chain alone, or follows it.
    #[error(
        "this node's role is {0:?}: membership changes are ordered by the members of a \
         cluster (a chain of one member cannot change its membership yet)"
    )]
    NotOrdered(&'static str),
    /// Too few of the members in force are connected to this one to order anything,
    /// the change among it.
    #[error(
        "only {reached} of the {members} members in force are connected to this member, \
         itself included, and ordering this change takes {quorum} of them: it would wait \
         in the pool until they are back; bring them back first"
    )]
    CannotBeOrdered {
        /// Members in force this node reaches, itself included.
        reached: usize,
        /// The membership in force's size.
        members: usize,
        /// Its quorum.
        quorum: usize,
    },
    /// Too few of the members after the change are connected to this one.
    #[error(
        "only {connected} of the {members} members after this change are connected to this \
         member, and they need {quorum} to order anything: bring the others back first"
    )]
    TooFewConnected {
        /// Members of the new membership this node reaches, itself included.
        connected: usize,
        /// The new membership's size.
        members: usize,
        /// Its quorum.
        quorum: usize,
    },
    /// The learner to promote cannot be asked how far it is.
    #[error("cannot tell how far the learner is: {0}")]
    LearnerUnknown(String),
    /// Handing it to the engine failed.
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

impl Node {
    /// The node of a chain's only member: it cuts, mines and certifies its own
    /// blocks, signing with `key`.
    pub fn alone(
        store: Arc<Store>,
        key: SigningKey,
        settings: NodeSettings,
        plugins: Arc<Plugins>,
        metrics: Arc<Metrics>,
    ) -> Node {
        let node_id = Hash::digest(key.verifying_key().as_bytes());
        let alone = Alone::new(
            Arc::clone(&store),
            key,
            settings,
            Arc::clone(&plugins),
            Arc::clone(&metrics),
        );
        Node::with_engine(
            store,
            node_id,
            Engine::Alone(Arc::new(alone)),
            plugins,
            metrics,
        )
    }

    /// The node of one member of several, `cluster` its running PBFT driver.
    pub fn member(
        store: Arc<Store>,
        node_id: Hash,
        cluster: Cluster,
        plugins: Arc<Plugins>,
        metrics: Arc<Metrics>,
    ) -> Node {
        Node::with_engine(store, node_id, Engine::Cluster(cluster), plugins, metrics)
    }

    /// The node of a follower (not a member) reading the chain from the members at
    /// `sources` (their client API base URLs), identified by `key`'s public half.
    pub fn follower(
        store: Arc<Store>,
        key: &SigningKey,
        (sources, sources_of): (Vec<String>, crate::engine::SourcesOf),
        agent: ureq::Agent,
        settings: NodeSettings,
        plugins: Arc<Plugins>,
        metrics: Arc<Metrics>,
    ) -> Node {
        let node_id = Hash::digest(key.verifying_key().as_bytes());
        let follower = Follower::new(
            Arc::clone(&store),
            sources,
            agent,
            settings,
            Arc::clone(&plugins),
            Arc::clone(&metrics),
        )
        .with_sources_from(sources_of);
        let engine = Engine::Follower(Arc::new(follower));
        let mut node = Node::with_engine(store, node_id, engine, plugins, metrics);
        node.key = Some(key.clone());
        node
    }

    fn with_engine(
        store: Arc<Store>,
        node_id: Hash,
        engine: Engine,
        plugins: Arc<Plugins>,
        metrics: Arc<Metrics>,
    ) -> Node {
        let window = plugins.difficulty_window() as u64;
        Node {
            snapshots: Snapshots::new(
                Arc::clone(&store),
                Arc::clone(&metrics),
                window,
                DEFAULT_TRANSFERS,
                DEFAULT_TILE_LEVEL,
            ),
            store,
            node_id,
            plugins,
            metrics,
            engine,
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            chain_streams: Arc::new(tokio::sync::Semaphore::new(CHAIN_STREAMS)),
            upstream: ledger_client::Credentials::default(),
            key: None,
        }
    }

    /// A place for one more `GET /chain` stream, if one is free.
    pub fn chain_stream(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.chain_streams).try_acquire_owned().ok()
    }

    /// This node serving at most `transfers` snapshot chunks at once, in tiles of
    /// `2^tile_level` ids (`DEFAULT_TILE_LEVEL` but in tests of short chains).
    pub fn with_snapshots(mut self, transfers: usize, tile_level: u8) -> Node {
        let window = self.plugins.difficulty_window() as u64;
        self.snapshots = Snapshots::new(
            Arc::clone(&self.store),
            Arc::clone(&self.metrics),
            window,
            transfers,
            tile_level,
        );
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// SHA-256 of this node's public key.
    pub fn node_id(&self) -> Hash {
        self.node_id
    }

    /// The plugins (none unless the config lists some).
    pub fn plugins(&self) -> &Plugins {
        &self.plugins
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The engine's state.
    pub fn status(&self) -> EngineStatus {
        self.engine.status()
    }

    /// What this node is to its chain: `alone`, `member`, `removed` (a member a change
    /// removed, until it stops), `learner` or `follower`.
    pub fn role(&self) -> &'static str {
        match self.engine {
            Engine::Alone(_) => "alone",
            Engine::Cluster(_) => {
                let members = self.store.membership_in_force().members;
                match members.key_of(&self.node_id).is_some() {
                    true => "member",
                    // Until it stops: it orders nothing more.
                    false => "removed",
                }
            }
            Engine::Follower(_) => {
                let learners = self.store.membership_in_force().learners;
                match learners.iter().any(|l| l.node_id == self.node_id) {
                    true => "learner",
                    false => "follower",
                }
            }
        }
    }

    /// Whether the node serves submits (running, its database healthy).
    pub fn is_ready(&self) -> bool {
        self.unready_reason().is_none()
    }

    /// Whether the node's engine runs: not stopping, and its thread has not died. A
    /// node in a database failure or with damage found is alive (it is reopening the
    /// database, or waiting for an operator) but not ready: restarting it would not
    /// help.
    pub fn is_alive(&self) -> bool {
        !self.stopping.load(Ordering::Relaxed)
            && !self
                .engine
                .failure()
                .is_some_and(|failure| failure.is_fatal())
    }

    /// Why the node is not ready, if it is not: starting or stopping, a database
    /// in an I/O failure (until the node reopens it), damage found in the database
    /// (until an operator repairs it), or an engine that stopped.
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
        let failure = self.engine.failure();
        failure.map(|failure| format!("consensus stopped: {failure}"))
    }

    /// Why the node should not be sent traffic now, beyond [`Node::unready_reason`]
    /// (what `/readyz` answers): a member that reaches fewer members than a quorum, one
    /// that abstains, or one catching up with the others. Submits are still taken
    /// then: they wait.
    pub fn readiness_reason(&self) -> Option<String> {
        if let Some(reason) = self.unready_reason() {
            return Some(reason);
        }
        if let Some((plugin, hook, took)) = self.plugins.stuck() {
            return Some(format!(
                "plugin {plugin}'s {hook} hook has been running for {} s: what waits on it \
                 (submits, blocks) waits too",
                took.as_secs()
            ));
        }
        let status = self.engine.status();
        if let Some(refused) = &status.refused_committed {
            return Some(format!(
                "this node refuses the next block, which a quorum of members committed \
                 ({refused}): it cannot follow the chain until its plugins and their \
                 config match the members' (GET /v1/status, plugins)"
            ));
        }
        if let Some((reached, quorum)) = self.quorum_reach(&status) {
            if reached < quorum {
                return Some(format!(
                    "this member reaches {reached} members, itself included, of the {quorum} \
                     a quorum needs: nothing commits until more are back"
                ));
            }
        }
        // Serving, but the cluster counts one voter fewer: a rolling restart that
        // stopped the next member now could leave fewer voters than a quorum.
        if let Some(height) = status.abstaining_until {
            let tip = self.store.last_tip().map_or(0, |tip| tip.height);
            return Some(format!(
                "this member does not vote yet: it started without the record of what it \
                 signed (its disk lost, or restored from a snapshot or a backup), so it only \
                 follows the chain until height {height}, {} blocks on (blocks come as \
                 entries are submitted, or as POST /mine on the primary cuts empty ones); \
                 the cluster has one voting member fewer meanwhile: stop no other member \
                 until this one is ready",
                height.saturating_sub(tip)
            ));
        }
        if let Some(height) = status.view_changes_from {
            return Some(format!(
                "this member votes again, but joins no view change until a checkpoint at \
                 height {height} or above is stable (one comes every {} blocks): a primary \
                 that failed now would have one member fewer to replace it; stop no other \
                 member until this one is ready",
                self.store.spec().params.checkpoint_interval
            ));
        }
        if status.catching_up
            && status.behind.is_none()
            && matches!(self.engine, Engine::Follower(_))
        {
            return Some(
                "no member has answered this follower yet: check the members' api_addr in \
                 the genesis file and the [upstream] credentials (the log names each member \
                 and why it did not answer)"
                    .into(),
            );
        }
        if let Some(silence) = status.unheard_for {
            return Some(format!(
                "no member has answered this follower for {} s: it serves the chain as it \
                 holds it, which may be behind the members', and its submits get 503 \
                 no_member; check the members and this node's links to them (the log \
                 names each member and why it did not answer)",
                silence.as_secs()
            ));
        }
        status.catching_up.then(|| {
            "catching up with the members, who are ahead; submits wait until it has".into()
        })
    }

    /// Whether this node votes on blocks: a node alone, or a member whose consensus
    /// runs and that does not abstain (one that votes but joins no view change yet
    /// counts: blocks commit with it; [`Node::readiness_reason`] still says so).
    pub fn votes(&self, status: &EngineStatus) -> bool {
        let voter = matches!(self.role(), "alone" | "member");
        voter && status.failure.is_none() && status.abstaining_until.is_none()
    }

    /// For a member of several: the members it reaches (itself included) and the
    /// quorum.
    pub fn quorum_reach(&self, status: &EngineStatus) -> Option<(usize, usize)> {
        match self.engine {
            Engine::Cluster(_) => {
                // The membership the driver's replica and transport are in: a change
                // due at the next height is in force for them.
                let membership = self.store.membership_in_force();
                let members = &membership.members;
                // Observers (numbered after the members) count for no quorum.
                let peers = status.peers.iter().take(members.len());
                let reached = 1 + peers.filter(|p| p.connected()).count();
                Some((reached, members.quorum()))
            }
            Engine::Alone(_) | Engine::Follower(_) => None,
        }
    }

    /// Whether `id` waits here to be committed.
    pub fn is_pending(&self, id: &Hash) -> bool {
        self.engine.is_pending(id)
    }

    /// Why `id`, accepted here lately, left the pool uncommitted, if it did.
    pub fn left_pool(&self, id: &Hash) -> Option<String> {
        self.engine.left_pool(id)
    }

    /// Validates `entry` and hands it to the engine. With `wait`, also returns a
    /// receiver told when the entry commits. An entry this answers `Ok` for is never
    /// dropped while the node runs, unless the plugins' block rules refuse it in any
    /// block (then [`Node::left_pool`] says why).
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
        let submitted = self.engine.submit(entry, wait).await?;
        self.metrics
            .entries_accepted
            .fetch_add(1, Ordering::Relaxed);
        Ok(submitted)
    }

    /// Checks a membership change against the membership in force and what this
    /// member observes, then hands it to the members to order. Refused before it is
    /// ordered: what the membership refuses (another epoch, too few admin
    /// signatures, a change in flight, ...), a chain whose one member runs alone, a
    /// change the members in force could not order now (fewer of them connected to
    /// this one than their quorum), and one that would leave fewer members connected
    /// to this one than the new membership's quorum (adding to a cluster with
    /// members down would stall it).
    pub async fn propose_change(
        &self,
        change: &Reconfiguration,
    ) -> Result<Submitted, ProposeError> {
        if !matches!(self.engine, Engine::Cluster(_)) {
            return Err(ProposeError::NotOrdered(self.role()));
        }
        let spec = self.store.spec();
        let tip = self.store.tip().map_err(SubmitError::Store)?;
        let now = self.store.membership_in_force();
        let next_height = tip.height + 1;
        // A promotion's progress is the learner's word now, asked below: any the
        // request brought is not taken.
        let mut change = change.clone();
        change.progress = None;
        if let Some((kind, addr, problem)) = change.change.undialable() {
            return Err(ProposeError::Refused(format!(
                "the learner's {kind} address {addr:?}: {problem}; an address in a change \
                 stays in the chain, so it is checked before it is ordered"
            )));
        }
        match now.check(spec, &change, next_height) {
            // Asked of the learner below, once the rest holds.
            Err(MembershipError::NoProgress) => {}
            checked => checked?,
        }
        if let crate::chain::Change::Promote { public_key } = &change.change {
            let learner = now.learners.iter().find(|l| l.public_key == *public_key);
            // check() refused a promotion of anything but a learner.
            let Some(learner) = learner else {
                return Err(ProposeError::LearnerUnknown("it is no learner".into()));
            };
            change.progress = Some(self.learner_progress(learner, LEARNER_PROBE).await?);
            // Every replica checks the learner's word in the block as here.
            now.check(spec, &change, next_height)?;
        }
        // The members in force order the change: a change submitted while they cannot
        // would sit pending, answered as if taken (a remove of a member of two that is
        // down, say).
        let status = self.status();
        if let Some((reached, quorum)) = self.quorum_reach(&status) {
            if reached < quorum {
                return Err(ProposeError::CannotBeOrdered {
                    reached,
                    members: now.members.len(),
                    quorum,
                });
            }
        }
        let entry = change.to_entry();
        let mut next = now.clone();
        next.apply_block(spec, next_height, std::slice::from_ref(&entry))
            .map_err(|error| ProposeError::Refused(error.to_string()))?;
        next.advance_to(u64::MAX);
        let peers = status.peers;
        let me = self.node_id();
        let connected = now
            .members
            .as_slice()
            .iter()
            .enumerate()
            .filter(|(index, member)| {
                next.members.key_of(&member.node_id).is_some()
                    && (member.node_id == me || peers.get(*index).is_some_and(|p| p.connected()))
            })
            .count();
        let quorum = next.members.quorum();
        if connected < quorum {
            return Err(ProposeError::TooFewConnected {
                connected,
                members: next.members.len(),
                quorum,
            });
        }
        Ok(self.submit(entry, false).await?)
    }

    /// How far `learner` is, in its own signed word, as its client API (the address
    /// the change that added it named) says, asked with this node's upstream
    /// credentials. A node that answers there under another id, or with a signature
    /// not its key's, is not the learner.
    pub async fn learner_progress(
        &self,
        learner: &crate::chain::Member,
        timeout: Duration,
    ) -> Result<LearnerProgress, ProposeError> {
        let Some(api) = learner.api_addr.clone() else {
            return Err(ProposeError::LearnerUnknown(
                "the change that added it named no api address to ask".into(),
            ));
        };
        let credentials = self.upstream.clone();
        let status = tokio::task::spawn_blocking(move || {
            ledger_client::Client::with_timeout(&api, &credentials, timeout)?
                .with_retry(ledger_client::Retry::never())
                .status()
        })
        .await
        .map_err(|error| ProposeError::LearnerUnknown(error.to_string()))?
        .map_err(|error| ProposeError::LearnerUnknown(crate::cli::describe(&error)))?;
        if status.node_id != learner.node_id.to_hex() {
            return Err(ProposeError::LearnerUnknown(format!(
                "its api address answers as node {}, not {}",
                status.node_id, learner.node_id
            )));
        }
        let signature = status
            .height_signature
            .and_then(|signature| hex::decode(signature).ok())
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok());
        let progress = signature.map(|signature| LearnerProgress {
            height: status.height,
            signature,
        });
        let chain_hash = self.store.spec().chain_hash();
        progress
            .filter(|progress| progress.verify(&learner.public_key, &chain_hash))
            .ok_or_else(|| {
                ProposeError::LearnerUnknown(
                    "its status does not carry its signed height (a node too old to be \
                     promoted?)"
                        .into(),
                )
            })
    }

    /// A follower's signed word that it has applied the chain to `height`, which a
    /// promotion of it carries ([`LearnerProgress`]); members sign none.
    pub fn sign_height(&self, height: u64) -> Option<LearnerProgress> {
        let chain_hash = self.store.spec().chain_hash();
        let key = self.key.as_ref()?;
        Some(LearnerProgress::sign(key, &chain_hash, height))
    }

    /// The credentials this node reaches other nodes' client APIs with (a learner's,
    /// before promoting it): its `[upstream]`.
    pub fn with_upstream(mut self, credentials: ledger_client::Credentials) -> Node {
        self.upstream = credentials;
        self
    }

    /// The manifest of the snapshot at `height`, or of the latest one this node serves.
    pub async fn snapshot_manifest(
        &self,
        height: Option<u64>,
    ) -> Result<Arc<Manifest>, SnapshotServeError> {
        self.snapshots
            .manifest(self.snapshot_ceiling(), height)
            .await
    }

    /// Chunk `index` of the snapshot at `height`.
    pub async fn snapshot_chunk(
        &self,
        height: u64,
        index: u64,
    ) -> Result<Vec<u8>, SnapshotServeError> {
        self.snapshots
            .chunk(self.snapshot_ceiling(), height, index)
            .await
    }

    /// The highest height a snapshot may be taken at: in a cluster the stable
    /// checkpoint (as far as this node has applied); alone, and on a follower (whose
    /// every block came with its certificate), the tip.
    fn snapshot_ceiling(&self) -> u64 {
        let tip = self.store.last_tip().map_or(0, |tip| tip.height);
        match &self.engine {
            Engine::Alone(_) | Engine::Follower(_) => tip,
            Engine::Cluster(_) => self.engine.status().stable_checkpoint.unwrap_or(0).min(tip),
        }
    }

    /// Asks for a block now, even an empty one; resolves once one is applied.
    pub fn request_block(&self) -> oneshot::Receiver<Result<Header, MineError>> {
        self.engine.cut()
    }

    /// Runs the engine until `shutdown` resolves, then stops it after the step in
    /// hand. The node counts as ready from this call, before the future is first
    /// polled, so a server started right after never answers "not ready" to its first
    /// requests.
    pub fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.ready.store(true, Ordering::Relaxed);
        async move {
            let stopping = Arc::clone(&self);
            let shutdown = async move {
                shutdown.await;
                stopping.stopping.store(true, Ordering::Relaxed);
            };
            self.engine.run(shutdown).await;
            self.stopping.store(true, Ordering::Relaxed);
        }
    }
}

/// Answers the request connections of members that join or fill in their history
/// (net::Requester): snapshots, their chunks and committed blocks, as the client API
/// serves them. Holds the node weakly, since the transport it answers for lives
/// inside the node.
#[derive(Debug)]
pub struct Answers(pub Weak<Node>);

impl Answer for Answers {
    fn answer(
        &self,
        _from: MemberIndex,
        request: Wire,
    ) -> Pin<Box<dyn Future<Output = Wire> + Send + '_>> {
        Box::pin(async move {
            // Busy, not "not here": a stopping member has not said it holds nothing.
            let Some(node) = self.0.upgrade() else {
                return Wire::unavailable(true, "this node is stopping");
            };
            // A store that failed says nothing of what is served: ask again later
            // (an asker that keeps hearing it passes this member over).
            let refused = |error: SnapshotServeError| {
                let busy = matches!(
                    error,
                    SnapshotServeError::Busy(_) | SnapshotServeError::Store(_)
                );
                Wire::unavailable(busy, error.to_string())
            };
            match request {
                Wire::FetchSnapshot { height } => {
                    match node.snapshot_manifest((height > 0).then_some(height)).await {
                        Ok(manifest) => Wire::Snapshot(manifest.encode()),
                        Err(error) => refused(error),
                    }
                }
                Wire::FetchChunk { height, index } => {
                    match node.snapshot_chunk(height, index).await {
                        Ok(ids) => Wire::Chunk(ids),
                        Err(error) => refused(error),
                    }
                }
                Wire::FetchCommittedAt { height } => {
                    let store = Arc::clone(&node.store);
                    let read = blocking(move || {
                        let height = match height {
                            0 => store.last_tip().map_or(0, |tip| tip.height),
                            height => height,
                        };
                        store.committed_block(height)
                    });
                    match read.await {
                        Ok(Some((block, certificate))) => Wire::Committed { block, certificate },
                        // At height 0: this member holds no committed block at all.
                        Ok(None) => Wire::unavailable(false, "no such committed block here"),
                        // Not "none": a member whose store failed has not answered.
                        Err(error) => Wire::unavailable(true, error.to_string()),
                    }
                }
                Wire::FetchPrepared => {
                    let store = Arc::clone(&node.store);
                    match blocking(move || store.highest_prepared()).await {
                        Ok(Some(certificate)) => Wire::Prepared(certificate),
                        Ok(None) => Wire::unavailable(false, "no prepared certificate here"),
                        Err(error) => Wire::unavailable(true, error.to_string()),
                    }
                }
                other => {
                    Wire::unavailable(false, format!("a {} frame is not a request", other.kind()))
                }
            }
        })
    }
}
