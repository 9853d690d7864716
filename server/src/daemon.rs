//! Running a node as a process: logging, start-up checks, the API server and the
//! producer, and a graceful stop. `ledgerd run` and `ledgerd dev` both come here.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;

use crate::api::auth::{Access, Tokens};
use crate::api::starting::Starting;
use crate::api::tls::ApiTls;
use crate::config::{LogFormat, NodeConfig};
use crate::consensus::MemberIndex;
use crate::engine::{Cluster, ClusterSettings};
use crate::join::{JoinConfig, JoinError, Joined, Source};
use crate::net::{Hello, Requester, Roster, Transport, TransportConfig, Wire, PROTOCOL_VERSION};
use crate::node::{Node, NodeSettings};
use crate::plugin_host::Plugins;
use crate::storage::{CheckProgress, CheckReport, RecordsOwner, RestoredIds, Store, StoreError};

/// Frames queued per peer, each way.
const PEER_QUEUE: usize = 8192;

/// Connections the API listener queues before they are accepted. After a restart
/// every client reconnects at once; each one an overflowing queue drops costs that
/// client a SYN retransmit (1 s) or a reset on its first request. tokio's default is
/// 1024, which a thousand clients overflowed here; the kernel caps it at
/// `net.core.somaxconn` (4096 by default).
const API_BACKLOG: u32 = 4096;

/// How long in-flight requests get to finish once a stop is asked for.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Installs the `tracing` subscriber: `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    // A second call (tests, dev mode) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the node");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Opens the store of `config`, checking that its key is a member (or, on a
/// follower, that it is not).
pub fn open(config: &NodeConfig) -> anyhow::Result<(Arc<Store>, ed25519_dalek::SigningKey)> {
    open_restored(config, None)
}

/// [`open`] of a database a join just restored, with what the restore vouched for.
fn open_restored(
    config: &NodeConfig,
    restored: Option<RestoredIds>,
) -> anyhow::Result<(Arc<Store>, ed25519_dalek::SigningKey)> {
    let spec = config.chain_spec()?;
    let path = config.database_path();
    let store = open_at(config, &spec, &path, restored)?;
    let key = check_key(config, &spec, Some(&store.membership_in_force().members))?;
    let public = key.verifying_key().to_bytes();
    if let RecordsOwner::Other(owner) = store.claim_records(&public)? {
        bail!(
            "{} holds what node {} signed, not this node's key {} ({}): a data directory \
             copied from another node would let this one vote having forgotten its own \
             votes. Put this node's own data directory back, or empty it: the node then \
             joins from a snapshot and, as a member that lost its disk, votes again once \
             the chain has passed where it may have voted",
            path.display(),
            hex::encode(owner),
            hex::encode(public),
            config.key_file.display()
        );
    }
    Ok((Arc::new(store), key))
}

/// Opens (creating if need be) a database of `config`'s chain at `path` in its data
/// directory, with its store options (and what a restore that built it vouched for).
fn open_at(
    config: &NodeConfig,
    spec: &crate::chain::ChainSpec,
    path: &Path,
    restored: Option<RestoredIds>,
) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    Store::open_restored(path, spec, config.store_options(), restored)
        .map_err(|error| with_recovery(path, error))
}

/// `error`, and for damage which file (unless it says) and what to do about it.
fn with_recovery(path: &Path, error: StoreError) -> anyhow::Error {
    if error.damage().is_none() {
        return anyhow::Error::new(error);
    }
    let (path, what) = (path.display().to_string(), error.to_string());
    let file = match what.contains(&path) {
        true => String::new(),
        false => format!("{path}: "),
    };
    anyhow::anyhow!(
        "{file}{what}; move the data directory aside and start again to rejoin from the \
         peers (README, \"Recovering a damaged database\")"
    )
}

/// The key of `config`, checked to be a member's, or on a follower not to be: as
/// the genesis file says before the node has a database, and once it has one as
/// the members in force there (`in_force`) say. A member's key runs as a follower
/// once a change removed it; a
/// learner's runs as a member once promoted (its `follower = true` may stay); a
/// genesis member's key that is still a member never runs as a follower, which
/// would be two nodes voting with one key.
fn check_key(
    config: &NodeConfig,
    spec: &crate::chain::ChainSpec,
    in_force: Option<&crate::chain::Members>,
) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let key = config.signing_key()?;
    let node_id = crate::chain::Hash::digest(key.verifying_key().as_bytes());
    let genesis_member = spec.members.key_of(&node_id).is_some();
    let member = in_force.map_or(genesis_member, |members| members.key_of(&node_id).is_some());
    // A genesis member a change removed is refused when the engine is chosen.
    if !member && !genesis_member && !config.follower {
        bail!(
            "{}: key {} is not a member of chain {:?} ({}); to follow the chain without \
             voting, set `follower = true` in ledgerd.toml",
            config.key_file.display(),
            hex::encode(key.verifying_key().as_bytes()),
            spec.chain_id,
            config.genesis.display()
        );
    }
    if member && genesis_member && config.follower {
        bail!(
            "{}: key {} is a member of chain {:?}: a member votes, it cannot be a follower; \
             remove `follower = true` or give the follower a key of its own (so too for a \
             member a change removed that starts without its database)",
            config.key_file.display(),
            hex::encode(key.verifying_key().as_bytes()),
            spec.chain_id
        );
    }
    Ok(key)
}

/// Restores the database of a cluster member or a follower that has none from a snapshot the
/// other members serve (their API addresses in the genesis file). Unless `required`,
/// a chain with no snapshot yet, or a join that fails, leaves the node to replay the
/// chain from its peers, as it always could: from the database it set aside to join
/// ([`join_if_far_behind`]), put back, if it had one.
fn join_if_new(
    config: &NodeConfig,
    required: bool,
    metrics: &crate::metrics::Metrics,
    starting: &Starting,
) -> anyhow::Result<Option<RestoredIds>> {
    if set_aside_path(config).exists() && !config.database_path().exists() {
        tracing::info!(
            set_aside = %set_aside_path(config).display(),
            "a switch to a snapshot was interrupted: it goes on (the database set aside \
             stays there until the join completes, and comes back if it does not)"
        );
    }
    let joined = join_into_new(config, required, metrics, starting);
    settle_set_aside(config)?;
    joined
}

/// Where a database far below the members' snapshot waits while the node joins from
/// the snapshot instead.
fn set_aside_path(config: &NodeConfig) -> std::path::PathBuf {
    config.data_dir.join("ledger.redb.behind")
}

/// Puts the database set aside for a join back if the join built none (it failed, was
/// interrupted and then turned off, or no snapshot was offered after all). Beside a
/// database the join built, it stays until the history below the snapshot is copied
/// from it ([`crate::join::backfill`]).
fn settle_set_aside(config: &NodeConfig) -> anyhow::Result<()> {
    let (path, aside) = (config.database_path(), set_aside_path(config));
    if aside.exists() && !path.exists() {
        Store::move_files(&aside, &path)
            .with_context(|| format!("putting {} back as {}", aside.display(), path.display()))?;
        tracing::warn!(
            database = %path.display(),
            "no snapshot join completed: the database set aside for it is back in place, \
             and the node replays the blocks it lacks from its peers"
        );
    }
    Ok(())
}

/// The database set aside for a join, to copy the history below the snapshot from;
/// removed once `store` holds the whole history, or when it cannot be read.
fn set_aside_history(config: &NodeConfig, store: &Store) -> Option<Store> {
    let aside = set_aside_path(config);
    if !aside.exists() {
        return None;
    }
    let previous = match store.history_from() {
        1 => None,
        _ => Store::open_blocks_read_only(&aside, store.spec())
            .inspect_err(|error| {
                tracing::warn!(set_aside = %aside.display(), %error, "the database set aside for the join cannot be read: the history is fetched from the members")
            })
            .ok(),
    };
    if previous.is_none() {
        remove_set_aside(&aside);
    }
    previous
}

/// Removes the database set aside for a join, no longer needed.
fn remove_set_aside(aside: &Path) {
    Store::remove_log(aside);
    match std::fs::remove_file(aside) {
        Ok(()) => {
            tracing::info!(set_aside = %aside.display(), "the database set aside for the join is removed")
        }
        Err(error) => {
            tracing::warn!(set_aside = %aside.display(), %error, "cannot remove the database set aside for the join")
        }
    }
}

/// Sets the database in `store` aside and joins from the members' snapshot instead,
/// if it ends so far below that snapshot that joining is quicker than replaying up to
/// it ([`crate::join::far_behind`]); the store to run with. `node_id` is this node's.
/// Asking takes one round to the other members, each answer awaited a few seconds
/// at most.
fn join_if_far_behind(
    config: &NodeConfig,
    store: Arc<Store>,
    node_id: &crate::chain::Hash,
    metrics: &crate::metrics::Metrics,
    starting: &Starting,
) -> anyhow::Result<Arc<Store>> {
    if !config.join_from_snapshot {
        return Ok(store);
    }
    let tip = store.tip()?;
    let spec = store.spec().clone();
    let mut join = join_config(config, &spec, Duration::from_secs(5), starting)?;
    add_members_in_force(&mut join, config, &store.membership_in_force().members);
    let client = crate::join::Client::new(join.agent.clone(), join.requester.clone());
    let snapshot = crate::join::offered(&client, &spec, &join.sources, &join.stop)?;
    // A member that joins abstains a while; a follower loses nothing by joining.
    let member = store
        .membership_in_force()
        .members
        .key_of(node_id)
        .is_some();
    let floor = if member {
        config.join_behind_entries
    } else {
        0
    };
    let far = |snapshot: &crate::chain::snapshot::Manifest| {
        crate::join::far_behind(&tip, snapshot, floor)
    };
    let Some(snapshot) = snapshot.filter(far) else {
        return Ok(store);
    };
    tracing::warn!(
        height = tip.height,
        snapshot = snapshot.height(),
        entries_missing = snapshot.header.log_size - tip.log_size,
        "this node is far below the members' latest snapshot: it joins from the snapshot \
         instead of replaying, its database set aside until the join is complete"
    );
    // The database closes before it moves: nothing else holds the store yet.
    drop(store);
    let (path, aside) = (config.database_path(), set_aside_path(config));
    Store::move_files(&path, &aside)
        .with_context(|| format!("setting {} aside as {}", path.display(), aside.display()))?;
    // Not `join_if_new`, which takes the set-aside database for an interrupted switch.
    let joined = join_into_new(config, false, metrics, starting);
    settle_set_aside(config)?;
    Ok(open_restored(config, joined?)?.0)
}

/// [`join_if_new`] but for what becomes of a database set aside.
fn join_into_new(
    config: &NodeConfig,
    required: bool,
    metrics: &crate::metrics::Metrics,
    starting: &Starting,
) -> anyhow::Result<Option<RestoredIds>> {
    let path = config.database_path();
    if !required && !config.join_from_snapshot {
        return Ok(None);
    }
    if path.exists() {
        if required {
            bail!(
                "{} exists: `ledgerd join` builds a new database; move the data directory \
                 aside first",
                path.display()
            );
        }
        return Ok(None);
    }
    let spec = config.chain_spec()?;
    let mut join = join_config(config, &spec, JOIN_TIMEOUT, starting)?;
    // The genesis members may be gone: the members in force, as those reached show.
    let client = crate::join::Client::new(join.agent.clone(), join.requester.clone());
    if let Some(history) = crate::join::shown_history(&client, &spec, &join.sources, &join.stop)? {
        add_members_in_force(&mut join, config, &history.last().members);
    }
    if join.sources.is_empty() {
        if required {
            bail!(
                "the genesis file names no other member to join from (a member joins from \
                 the others' p2p_addr, a follower from their api_addr)"
            );
        }
        return Ok(None);
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    starting.set_phase("joining from a snapshot");
    match crate::join::join(&spec, &join, metrics) {
        Ok(Joined::Restored { ids, .. }) => Ok(ids.map(|ids| *ids)),
        Ok(Joined::NoSnapshot) if required => bail!(
            "no member offers a snapshot (the chain is younger than one checkpoint interval, \
             or no member answered); `ledgerd run` replays the chain from the peers instead"
        ),
        Ok(Joined::NoSnapshot) => {
            tracing::info!("no member offers a snapshot yet: the chain is replayed from the peers");
            Ok(None)
        }
        Err(error @ JoinError::Stopped) => Err(error.into()),
        Err(error) if required => Err(error.into()),
        Err(error) => {
            tracing::warn!(
                %error,
                "joining from a snapshot failed: this start replays the chain from the \
                 peers instead"
            );
            Ok(None)
        }
    }
}

/// A member that starts without its own database (replaying the chain, or restored
/// from a backup file into `store`) lost what it signed: if the chain has come
/// anywhere, it abstains from voting until it has caught up past where it may have
/// voted ([`crate::consensus::Durable::abstain_through`]). A replaying member's
/// database is created here for that record, before the replica can run. A node
/// whose key was never a member of the chain has nothing to abstain from.
fn abstain_if_rejoining(
    config: &NodeConfig,
    store: Option<&Store>,
    starting: &Starting,
) -> anyhow::Result<()> {
    let spec = config.chain_spec()?;
    let join = join_config(config, &spec, Duration::from_secs(10), starting)?;
    let Some(probe) = &join.probe else {
        return Ok(());
    };
    let client = crate::join::Client::new(join.agent.clone(), join.requester.clone());
    let (known, floor) = match store {
        Some(store) => (store.membership_history()?, store.tip()?.height),
        None => (crate::chain::MembershipHistory::genesis(&spec), 0),
    };
    let (bound, seen) =
        crate::join::abstain_through(&client, &spec, probe, known, floor, &join.stop)?;
    if let Some(store) = store {
        // Restored from a backup: the mark says to ask, and asking settles it.
        store.set_abstain_through(bound)?;
    } else if bound > 0 {
        // Built beside its path and renamed into place: no crash leaves a database
        // without the mark, which would let the replica vote at once on a restart.
        let building = config.data_dir.join("ledger.redb.creating");
        let _ = std::fs::remove_file(&building);
        open_at(config, &spec, &building, None)?.set_abstain_through(bound)?;
        Store::move_files(&building, &config.database_path())
            .with_context(|| format!("moving {} into place", building.display()))?;
    }
    if bound > 0 {
        tracing::warn!(
            chain_height = seen,
            abstaining_until = bound,
            "this member lost the record of what it signed (it started without its own \
             database): it follows the chain and votes again from height {bound} on"
        );
    }
    Ok(())
}

/// How long a joining node waits for one answer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a node joins from, waiting `timeout` for each answer: a member (one that
/// lost its disk) asks the other members over the peer protocol, with its key; a
/// follower, whose key no member's transport admits, through their client APIs.
fn join_config(
    config: &NodeConfig,
    spec: &crate::chain::ChainSpec,
    timeout: Duration,
    starting: &Starting,
) -> anyhow::Result<JoinConfig> {
    let key = config.signing_key()?;
    let public = key.verifying_key();
    let me = spec
        .members
        .as_slice()
        .iter()
        .position(|member| member.public_key == public)
        .filter(|_| !config.follower);
    let credentials = crate::http::upstream(&config.upstream)?;
    // A key that never voted has nothing to learn about its own votes.
    let new_key = crate::config::new_key_mark(&config.key_file).exists();
    let (sources, requester, ways) = match me {
        None => (
            api_sources(spec.members.as_slice(), &public, &credentials)?
                .into_iter()
                .map(Source::Api)
                .collect(),
            None,
            Vec::new(),
        ),
        Some(me) => {
            let sources = others(spec, me)
                .filter_map(|(index, member)| peer_source(index, member))
                .collect();
            // Answering requests does not depend on plugins.
            let hello = member_hello(spec, me, String::new());
            let requester = Requester::new(&key, Roster::new(&spec.members, &[]), hello, timeout)
                .context("setting up the peer protocol to join by")?;
            let ways = others(spec, me)
                .filter_map(|(index, member)| {
                    Some((member.public_key, peer_source(index, member)?))
                })
                .collect();
            (sources, Some(Arc::new(requester)), ways)
        }
    };
    // How far the chain has come is asked through the client APIs first, which
    // answer from a member's first instant: one still starting without a database
    // says it holds nothing, so members that all start new count each other (a new
    // chain) instead of waiting for each other. A key made for this node never
    // voted: it has nothing to ask.
    let probe = (!new_key).then(|| crate::join::Probe {
        me: public,
        credentials: credentials.clone(),
        ways,
    });
    Ok(JoinConfig {
        sources,
        requester,
        probe,
        path: config.database_path(),
        staging: config.data_dir.join("ledger.redb.restoring"),
        timeout,
        agent: credentials.agent(timeout)?,
        progress_every: Duration::from_secs(5),
        stop: starting.stopping(),
    })
}

/// The members other than member `me`, with their indexes.
fn others(
    spec: &crate::chain::ChainSpec,
    me: usize,
) -> impl Iterator<Item = (usize, &crate::chain::Member)> {
    spec.members
        .as_slice()
        .iter()
        .enumerate()
        .filter(move |&(index, _)| index != me)
}

/// Member `index` at its peer port, if the genesis file names one.
fn peer_source(index: usize, member: &crate::chain::Member) -> Option<Source> {
    Some(Source::Peer {
        member: index as MemberIndex,
        addr: member.p2p_addr.clone()?,
    })
}

/// The client API base URLs of `members` other than `me`, as the genesis file or
/// the changes that added them name them; refused if one would carry the
/// `[upstream]` token in clear.
fn api_sources(
    members: &[crate::chain::Member],
    me: &ed25519_dalek::VerifyingKey,
    credentials: &crate::http::Credentials,
) -> anyhow::Result<Vec<String>> {
    let urls = members
        .iter()
        .filter(move |member| member.public_key != *me)
        .filter_map(|member| member.api_addr.as_ref())
        .map(|addr| credentials.base_url(addr))
        .collect::<Result<_, _>>()
        .context("[upstream]: token_file needs cacert")?;
    Ok(urls)
}

/// Adds to `join`'s sources the client APIs of the `members` (in force, other than
/// this node) that the genesis file does not name: a chain whose first members were
/// replaced is still joined from the members it has. Over the API, with the node's
/// `[upstream]` credentials: the peer protocol knows the genesis members only.
/// Credentials that cannot reach them are told, and the join goes on without them.
fn add_members_in_force(
    join: &mut JoinConfig,
    config: &NodeConfig,
    members: &crate::chain::Members,
) {
    let newer = || -> anyhow::Result<Vec<String>> {
        let spec = config.chain_spec()?;
        let public = config.signing_key()?.verifying_key();
        let credentials = crate::http::upstream(&config.upstream)?;
        let genesis: Vec<_> = spec
            .members
            .as_slice()
            .iter()
            .map(|m| m.public_key)
            .collect();
        let newer: Vec<_> = members
            .as_slice()
            .iter()
            .filter(|member| !genesis.contains(&member.public_key))
            .cloned()
            .collect();
        api_sources(&newer, &public, &credentials)
    };
    match newer() {
        Ok(urls) => {
            for source in urls.into_iter().map(Source::Api) {
                if !join.sources.contains(&source) {
                    join.sources.push(source);
                }
            }
        }
        // The genesis members may still serve the join.
        Err(error) => tracing::warn!(
            error = %crate::cli::describe(error.as_ref()),
            "the members changes added cannot be asked for a snapshot; joining from the \
             genesis file's members alone"
        ),
    }
}

/// What a full database check found.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Everything checked out.
    Clean(CheckReport),
    /// Damage, and what it is.
    Damaged(String),
}

/// Checks the database of `config` offline, without changing a byte of it (the
/// node must not be running, and the file must have been closed cleanly): every
/// block, link, proof of work, certificate, entry, index row and Merkle node
/// ([`Store::check`]). An error means the check could not run.
pub fn check_database(
    config: &NodeConfig,
    progress: &mut dyn FnMut(&CheckProgress),
) -> anyhow::Result<Verdict> {
    let spec = config.chain_spec()?;
    let path = config.database_path();
    if !path.exists() {
        bail!("{}: no database here", path.display());
    }
    let store = match Store::open_read_only(&path, &spec) {
        Ok(store) => store,
        Err(error) if error.damage().is_some() => return Ok(Verdict::Damaged(error.to_string())),
        Err(error) => return Err(error.into()),
    };
    // redb makes no promise not to panic on pages damaged outside it.
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.check(progress)));
    match checked {
        Ok(Ok(report)) => Ok(Verdict::Clean(report)),
        Ok(Err(error)) if error.damage().is_some() => Ok(Verdict::Damaged(error.to_string())),
        Ok(Err(error)) => Err(error.into()),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Ok(Verdict::Damaged(format!(
                "redb could not read its own pages: {message}"
            )))
        }
    }
}

/// What member `me` of `spec`'s chain, running `plugins`, says when it connects.
fn member_hello(spec: &crate::chain::ChainSpec, me: usize, plugins: String) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        chain_id: spec.chain_id.clone(),
        genesis_hash: spec.genesis_block().hash(),
        member: me as MemberIndex,
        plugins,
    }
}

/// Binds the peer listener on `p2p_listen`.
async fn bind_peers(path: &Path, config: &NodeConfig) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.p2p_listen)
        .await
        .with_context(|| {
            format!(
                "{}: cannot listen on p2p_listen {}",
                path.display(),
                config.p2p_listen
            )
        })
}

/// A member's start refused because a membership change removed its key: starting it
/// again cannot help (`ledgerd` exits with [`Removed::EXIT_CODE`], which the systemd
/// unit does not restart).
#[derive(Debug, thiserror::Error)]
#[error(
    "this node's key is not a member of membership epoch {epoch} (in force from height \
     {since}): a membership change removed it; run it as a follower (`follower = true`) \
     or stop it (and disable its unit)"
)]
pub struct Removed {
    /// The epoch in force.
    pub epoch: u64,
    /// Its first height.
    pub since: u64,
}

impl Removed {
    /// `EX_CONFIG` of sysexits.h: the configuration no longer fits the chain.
    pub const EXIT_CODE: u8 = 78;
}

/// Starts the member transport on `listener` and the PBFT replica over `store`.
#[allow(clippy::too_many_arguments)]
async fn start_cluster(
    path: &Path,
    config: &NodeConfig,
    listener: tokio::net::TcpListener,
    store: &Arc<Store>,
    key: ed25519_dalek::SigningKey,
    node_settings: NodeSettings,
    metrics: Arc<crate::metrics::Metrics>,
    plugins: Arc<Plugins>,
) -> anyhow::Result<(Cluster, Arc<Transport>)> {
    let spec = store.spec();
    let public = key.verifying_key();
    // The membership in force after the tip, a change due at the next height
    // included: the genesis members until a change came into force.
    let membership = store.membership_in_force();
    let members = membership.members.as_slice();
    let Some(me) = members
        .iter()
        .position(|member| member.public_key == public)
    else {
        return Err(Removed {
            epoch: membership.epoch,
            since: membership.since,
        }
        .into());
    };
    let me = me as MemberIndex;
    if let Some((index, member)) = members
        .iter()
        .enumerate()
        .find(|(index, member)| *index != usize::from(me) && member.p2p_addr.is_none())
    {
        bail!(
            "{}: member {index} ({}) has no p2p_addr; every member needs one so the \
             others can reach it",
            config.genesis.display(),
            member.node_id
        );
    }
    let observers = crate::engine::observers(store, &membership)?;
    let peers = crate::engine::peers(&membership, &observers, me);
    let hello = member_hello(spec, usize::from(me), plugins.fingerprint_line());
    hello
        .check_fits()
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
    let transport_config = TransportConfig {
        key: key.clone(),
        roster: Roster::new(&membership.members, &observers),
        members: membership.members.len(),
        hello,
        peers,
        frame_limit: Wire::max_frame(&spec.params),
        queue_capacity: PEER_QUEUE,
        inbound_capacity: PEER_QUEUE,
        backoff: crate::net::Backoff::DEFAULT,
    };
    let (transport, inbound) = Transport::start(listener, transport_config)?;
    let store = Arc::clone(store);
    let transport = Arc::new(transport);
    let engine_transport = Arc::clone(&transport);
    let cluster_settings = ClusterSettings {
        max_blocks_in_flight: config.max_blocks_in_flight as usize,
        min_block_interval_ms: config.min_block_interval_ms,
        ..ClusterSettings::default()
    };
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start(
            store,
            key,
            engine_transport,
            inbound,
            node_settings,
            cluster_settings,
            metrics,
            plugins,
        )
    })
    .await??;
    tracing::info!(
        member = me,
        members = members.len(),
        p2p = %config.p2p_listen,
        "consensus started"
    );
    Ok((cluster, transport))
}

/// How a node starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// From its database; a cluster member without one joins from a snapshot if a
    /// member offers one, and replays the chain from its peers otherwise.
    #[default]
    Run,
    /// As `Run`, after checking the whole database; damage refuses the start.
    Check,
    /// From a snapshot, which must succeed (`ledgerd join`): the database must not
    /// exist yet.
    Join,
}

/// Runs the node of `config` (read from `path`, which names it in messages) until
/// `stop` resolves, starting as `start` says.
pub async fn run(
    path: &Path,
    config: NodeConfig,
    start: Start,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let mut start = start;
    loop {
        match run_once(path, config.clone(), start, stop_rx.clone()).await? {
            Ended::Stopped => return Ok(()),
            Ended::Promoted => {
                tracing::info!(
                    "a membership change made this node a member: starting again as one"
                );
                start = Start::Run;
            }
        }
    }
}

/// Why [`run_once`] ended.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// A follower the membership in force names as a member: it must vote now.
    Promoted,
}

/// How often a follower looks whether the membership has made it a member.
const PROMOTION_CHECK: Duration = Duration::from_millis(200);

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A start-up step's outcome; `None` if it gave up because the node was asked to stop.
fn unless_stopped<T>(outcome: anyhow::Result<T>) -> anyhow::Result<Option<T>> {
    match outcome {
        Err(error) if matches!(error.downcast_ref(), Some(JoinError::Stopped)) => {
            tracing::info!(
                "asked to stop while starting: stopped (a join resumes at the next start)"
            );
            Ok(None)
        }
        outcome => outcome.map(Some),
    }
}

/// [`run`] until the node stops or, on a follower, until it is promoted.
async fn run_once(
    path: &Path,
    config: NodeConfig,
    start: Start,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Ended> {
    let check = start == Start::Check;
    // A key in the wrong role is refused before anything is fetched or written.
    if !config.database_path().exists() {
        check_key(&config, &config.chain_spec()?, None)?;
    }
    // Made first: a join counts what it fetched, and /metrics shows it once serving.
    let metrics = Arc::new(crate::metrics::Metrics::default());
    // A certificate or token that cannot be used stops the start before anything else.
    let (tls, access) = api_security(path, &config, &metrics)?;
    // From here on SIGHUP reloads them (and no longer ends the process).
    let _reloads = AbortOnDrop(tokio::spawn(reload_on_hangup(
        path.to_owned(),
        tls.clone(),
        Arc::clone(&access),
    )));
    // Every listener is bound before consensus starts: a busy port stops start-up at
    // once, not after the peers have connected. Until the node serves, its address
    // answers why it does not yet (a join's progress among it).
    let listener = listen(config.api_listen, API_BACKLOG)
        .and_then(tokio::net::TcpListener::into_std)
        .with_context(|| {
            format!(
                "{}: cannot listen on api_listen {}",
                path.display(),
                config.api_listen
            )
        })?;
    let notifier = crate::systemd::Notifier::from_env().map(Arc::new);
    let starting = Starting::new(Arc::clone(&metrics));
    // A stop while starting: the steps that wait on the members give up.
    let _stopping = AbortOnDrop(tokio::spawn({
        let (stop, stopping) = (stop.clone(), starting.stopping());
        async move {
            stopped(stop).await;
            stopping.store(true, Ordering::Relaxed);
        }
    }));
    // A member without a database lost what it signed, unless the chain is new (or
    // it set its database aside to join from a snapshot).
    let empty = !config.database_path().exists() && !set_aside_path(&config).exists();
    starting.set_holds_nothing(empty);
    let starting_api = StartingApi::serve(
        &listener,
        &starting,
        (config.serve_limits(), tls.clone()),
        notifier.clone(),
    )?;
    let restored = tokio::task::spawn_blocking({
        let (config, metrics, starting) =
            (config.clone(), Arc::clone(&metrics), Arc::clone(&starting));
        move || join_if_new(&config, start == Start::Join, &metrics, &starting)
    })
    .await?;
    let Some(restored) = unless_stopped(restored)? else {
        return Ok(Ended::Stopped);
    };
    let new_key = crate::config::new_key_mark(&config.key_file).exists();
    if empty && !config.database_path().exists() && !new_key {
        starting.set_phase("asking the other members how far the chain has come");
        let (config, starting) = (config.clone(), Arc::clone(&starting));
        let asked =
            tokio::task::spawn_blocking(move || abstain_if_rejoining(&config, None, &starting));
        if unless_stopped(asked.await?)?.is_none() {
            return Ok(Ended::Stopped);
        }
    }
    starting.set_phase("opening the database");
    starting.set_holds_nothing(false);
    let (store, key) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || open_restored(&config, restored)
    })
    .await??;
    let node_id = crate::chain::Hash::digest(key.verifying_key().as_bytes());
    let store = match start {
        Start::Run => {
            starting.set_phase("asking the other members for their latest snapshot");
            let (config, metrics, starting) =
                (config.clone(), Arc::clone(&metrics), Arc::clone(&starting));
            let joined = tokio::task::spawn_blocking(move || {
                join_if_far_behind(&config, store, &node_id, &metrics, &starting)
            });
            let Some(store) = unless_stopped(joined.await?)? else {
                return Ok(Ended::Stopped);
            };
            store
        }
        Start::Check | Start::Join => store,
    };
    // From here on this key may vote: the mark that says it never did goes first.
    let mark = crate::config::new_key_mark(&config.key_file);
    match std::fs::remove_file(&mark) {
        // A read-only directory (a mounted Secret) answers EROFS even for a file it
        // does not hold: only a mark still there is a problem.
        Err(error)
            if error.kind() != std::io::ErrorKind::NotFound && mark.symlink_metadata().is_ok() =>
        {
            return Err(error).with_context(|| {
                format!(
                    "cannot remove {}, which says this key never voted: left in place, a \
                     member that later lost its disk would take itself for new",
                    mark.display()
                )
            });
        }
        _ => {}
    }
    if store.durable()?.abstain_through == crate::consensus::ABSTAIN_UNKNOWN {
        starting.set_phase("asking the other members how far the chain has come");
        let (config, restored) = (config.clone(), Arc::clone(&store));
        let starting = Arc::clone(&starting);
        let asked = tokio::task::spawn_blocking(move || {
            abstain_if_rejoining(&config, Some(&restored), &starting)
        });
        if unless_stopped(asked.await?)?.is_none() {
            return Ok(Ended::Stopped);
        }
    }
    if check {
        starting.set_phase("checking the database");
        let checked = Arc::clone(&store);
        let report = tokio::task::spawn_blocking(move || {
            checked.check(&mut |progress| {
                tracing::info!(
                    height = progress.height,
                    tip = progress.tip,
                    entries = progress.entries,
                    "checking the database"
                );
            })
        })
        .await?
        .map_err(|error| with_recovery(store.path(), error))?;
        tracing::info!(
            blocks = report.tip + 1,
            entries = report.entries,
            "the database checked out"
        );
    }
    let tip = store.tip()?;
    // The engine is chosen here for the node's life: a follower the membership has
    // made a member (a promoted learner) starts again as one.
    let membership = store.membership_in_force();
    let follows = config.follower && membership.members.key_of(&node_id).is_none();
    // A key the membership no longer names orders nothing, alone least of all: a
    // member removed from a chain of two would otherwise certify its own fork.
    if !follows && membership.members.key_of(&node_id).is_none() {
        return Err(Removed {
            epoch: membership.epoch,
            since: membership.since,
        }
        .into());
    }
    // (A database restored from a snapshot may not hold the blocks of the changes
    // yet: then the genesis members say it.)
    let was_member = || {
        store.spec().members.key_of(&node_id).is_some()
            || (store.membership_history())
                .is_ok_and(|history| crate::join::ever_member(&history, &key.verifying_key()))
    };
    if follows && was_member() {
        // Said once: a member that comes back a follower should not look like one
        // that lost its way.
        tracing::info!(
            epoch_in_force = membership.epoch,
            in_force_since = membership.since,
            "this key was a member and a membership change removed it: it runs as a \
             follower (follower = true), reading and forwarding, never voting"
        );
    }
    let cluster = !follows && membership.members.len() > 1;
    let settings = NodeSettings {
        max_block_entries: config.max_block_entries as usize,
        max_block_delay: config.max_block_delay(cluster),
        pool_capacity: config.pool_capacity,
        mining_threads: config
            .mining_threads
            .and_then(NonZeroUsize::new)
            .unwrap_or_else(crate::pow::default_threads),
    };
    starting.set_phase("loading the plugins");
    let plugins = Plugins::load(&config.plugins, Arc::clone(&metrics))
        .with_context(|| format!("{}: a listed plugin cannot be used", path.display()))?;
    let plugins = Arc::new(plugins);
    starting.set_phase("starting the engine");
    let mut transport = None;
    let node = if follows {
        let credentials = crate::http::upstream(&config.upstream)?;
        let sources = api_sources(
            membership.members.as_slice(),
            &key.verifying_key(),
            &credentials,
        )?;
        if sources.is_empty() {
            bail!(
                "{}: no member has an api_addr to follow the chain from",
                config.genesis.display()
            );
        }
        tracing::info!(members = sources.len(), "following the chain");
        let agent = credentials.agent(crate::engine::FOLLOWER_TIMEOUT)?;
        let me = key.verifying_key();
        let sources_of: crate::engine::SourcesOf = Box::new(move |members| {
            api_sources(members.as_slice(), &me, &credentials).unwrap_or_default()
        });
        Node::follower(
            Arc::clone(&store),
            &key,
            (sources, sources_of),
            agent,
            settings,
            plugins,
            metrics,
        )
    } else if cluster {
        let peers = bind_peers(path, &config).await?;
        let (cluster, peer_transport) = start_cluster(
            path,
            &config,
            peers,
            &store,
            key,
            settings,
            Arc::clone(&metrics),
            Arc::clone(&plugins),
        )
        .await?;
        transport = Some(peer_transport);
        Node::member(Arc::clone(&store), node_id, cluster, plugins, metrics)
            .with_upstream(crate::http::upstream(&config.upstream)?)
    } else {
        Node::alone(Arc::clone(&store), key, settings, plugins, metrics)
    };
    let tile_level = config
        .snapshot_tile_level()
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
    let node = Arc::new(node.with_snapshots(config.snapshot_transfers, tile_level));
    if let Some(transport) = transport {
        transport.answer_with(Arc::new(crate::node::Answers(Arc::downgrade(&node))));
    }
    starting_api.finish().await;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    node.metrics().height.store(tip.height, Ordering::Relaxed);
    tracing::info!(
        api = %listener.local_addr()?,
        node_id = %node.node_id(),
        chain = %store.spec().chain_id,
        height = tip.height,
        database = %store.path().display(),
        "node ready"
    );

    // One stop signal, fanned out to the server and the producer.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    tokio::spawn({
        let (notifier, stop_tx) = (notifier.clone(), Arc::clone(&stop_tx));
        async move {
            stopped(stop).await;
            if let Some(notifier) = notifier {
                notifier.notify("STOPPING=1\nSTATUS=stopping: finishing the block in hand");
            }
            let _ = stop_tx.send(true);
        }
    });
    // A learner stops following once the membership in force names it a member, and
    // starts again as one.
    let promoted = Arc::new(AtomicBool::new(false));
    if follows {
        let (store, promoted, stop_tx) = (
            Arc::clone(&store),
            Arc::clone(&promoted),
            Arc::clone(&stop_tx),
        );
        let mut stopping = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                let wake = tokio::time::timeout(PROMOTION_CHECK, stopping.changed());
                if wake.await.is_ok() {
                    return;
                }
                if store
                    .membership_in_force()
                    .members
                    .key_of(&node_id)
                    .is_some()
                {
                    promoted.store(true, Ordering::Relaxed);
                    let _ = stop_tx.send(true);
                    return;
                }
            }
        });
    }
    let producer = tokio::spawn(Arc::clone(&node).run(stopped(stop_rx.clone())));
    // A node restored from a snapshot fetches the blocks below it meanwhile, until
    // the node stops, on any path out of here.
    let history = Arc::new(AtomicBool::new(false));
    let _stop_history = SetOnDrop(Arc::clone(&history));
    let previous = set_aside_history(&config, &store);
    let backfill = (store.history_from() > 1)
        .then(|| -> anyhow::Result<_> {
            let join = join_config(&config, store.spec(), Duration::from_secs(10), &starting)?;
            let (store, stop) = (Arc::clone(&store), Arc::clone(&history));
            let metrics = Arc::clone(node.metrics());
            Ok(tokio::task::spawn_blocking(move || {
                crate::join::backfill(&store, &stop, &join, &metrics, previous.as_ref());
                if let Some(previous) = previous.filter(|_| store.history_from() == 1) {
                    let aside = previous.path().to_owned();
                    drop(previous);
                    remove_set_aside(&aside);
                }
            }))
        })
        .transpose()?;
    // The database is open and checked, consensus started, the API listening.
    if let Some(notifier) = notifier {
        notifier.notify(&format!("READY=1\nSTATUS=serving at height {}", tip.height));
        tokio::spawn(watchdog(notifier, Arc::clone(&node), stop_rx.clone()));
    }
    if access.is_open() {
        // On loopback (ledgerd dev) that is the point; elsewhere an operator must know.
        let open = match config.api.tls_client_ca.is_some() {
            true => {
                "with no [[api.tokens]] configured, any client showing a certificate the \
                 tls_client_ca issued may do everything: submit entries, cut blocks and \
                 propose membership changes (tokens give narrower roles)"
            }
            false => {
                "the client API is open: with no [[api.tokens]] configured, anyone who \
                 reaches it may submit entries and cut blocks"
            }
        };
        match config.api_listen.ip().is_loopback() {
            true => tracing::info!(api = %config.api_listen, "{open}"),
            false => tracing::warn!(api = %config.api_listen, "{open}"),
        }
    }
    let router = crate::api::guarded_router(Arc::clone(&node), access);
    let router = match crate::api::cors(&config.cors_origins)
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?
    {
        Some(cors) => router.layer(cors),
        None => router,
    };
    crate::api::serve::serve(
        listener,
        router,
        config.serve_limits(),
        tls,
        stopped(stop_rx.clone()),
    )
    .await;
    tracing::info!("API closed; finishing the block in hand");
    history.store(true, Ordering::Relaxed);
    match tokio::time::timeout(STOP_GRACE, producer).await {
        Ok(result) => result.context("block producer failed")?,
        Err(_) => tracing::warn!("block producer did not stop within {STOP_GRACE:?}"),
    }
    if let Some(backfill) = backfill {
        if tokio::time::timeout(STOP_GRACE, backfill).await.is_err() {
            tracing::warn!("fetching the history did not stop within {STOP_GRACE:?}");
        }
    }
    drop(node);
    let promoted = promoted.load(Ordering::Relaxed);
    // A promoted node opens the database again at once: tasks that still hold it
    // (an answer being written) get a moment to let go.
    let mut store = store;
    let deadline = std::time::Instant::now() + STOP_GRACE;
    loop {
        match Arc::try_unwrap(store) {
            Ok(store) => break drop(store),
            Err(held) if promoted && std::time::Instant::now() < deadline => {
                store = held;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => {
                break tracing::warn!(
                    "store still referenced at exit; redb closes it with the process"
                )
            }
        }
    }
    if promoted {
        return Ok(Ended::Promoted);
    }
    tracing::info!("stopped");
    Ok(Ended::Stopped)
}

/// How often a starting node tells systemd what it is doing, and the start timeout
/// it asks for each time: a join of a long chain may outlast `TimeoutStartSec`, but
/// not a minute without progress.
const STARTING_REPORT: Duration = Duration::from_secs(5);
const STARTING_EXTEND: Duration = Duration::from_secs(60);

/// The API of a starting node ([`crate::api::starting`]) on a clone of the node's
/// listener, and its reports to systemd; both end at [`StartingApi::finish`] or
/// when dropped on a failed start.
struct StartingApi {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    reports: tokio::task::JoinHandle<()>,
}

impl StartingApi {
    fn serve(
        listener: &std::net::TcpListener,
        starting: &Arc<Starting>,
        (limits, tls): (crate::api::serve::ServeLimits, Option<Arc<ApiTls>>),
        notifier: Option<Arc<crate::systemd::Notifier>>,
    ) -> anyhow::Result<StartingApi> {
        let listener = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = crate::api::starting::router(Arc::clone(starting));
        let server = tokio::spawn(crate::api::serve::serve(
            listener,
            router,
            limits,
            tls,
            async move {
                let _ = stopped.await;
            },
        ));
        let starting = Arc::clone(starting);
        let reports = tokio::spawn(async move {
            let Some(notifier) = notifier else {
                return;
            };
            // A quick start says nothing before READY=1.
            let first = tokio::time::Instant::now() + STARTING_REPORT;
            let mut ticks = tokio::time::interval_at(first, STARTING_REPORT);
            // The start timeout is extended only while the start makes progress: a
            // start stuck for STARTING_EXTEND is left to systemd's timeout.
            let (mut last, mut moved) = (starting.progress(), tokio::time::Instant::now());
            loop {
                ticks.tick().await;
                let message = starting.view().message;
                let progress = starting.progress();
                if progress != last {
                    (last, moved) = (progress, tokio::time::Instant::now());
                }
                let extend = match moved.elapsed() < STARTING_EXTEND {
                    true => format!("\nEXTEND_TIMEOUT_USEC={}", STARTING_EXTEND.as_micros()),
                    false => String::new(),
                };
                notifier.notify(&format!("STATUS={message}{extend}\nWATCHDOG=1"));
            }
        });
        Ok(StartingApi {
            stop: Some(stop),
            server: Some(server),
            reports,
        })
    }

    /// Stops the starting API (requests in flight finish) before the node's own takes
    /// the listener over; connections waiting to be accepted wait for the new one.
    async fn finish(mut self) {
        drop(self.stop.take());
        if let Some(mut server) = self.server.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
    }
}

impl Drop for StartingApi {
    fn drop(&mut self) {
        self.reports.abort();
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// The API's TLS (if configured) and access rules, from `config` read at `path`.
fn api_security(
    path: &Path,
    config: &NodeConfig,
    metrics: &Arc<crate::metrics::Metrics>,
) -> anyhow::Result<(Option<Arc<ApiTls>>, Arc<Access>)> {
    let tls = config
        .api
        .tls()
        .map(|files| ApiTls::load(&files).map(Arc::new))
        .transpose()
        .with_context(|| format!("{}: [api] TLS cannot be used", path.display()))?;
    let tokens = Tokens::new(&config.api.tokens)
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
    let access = Access::new(
        &crate::api::openapi(),
        tokens,
        config.api.rate(),
        Arc::clone(metrics),
    );
    Ok((tls, Arc::new(access)))
}

/// On each SIGHUP, reads the config at `path` again and puts its tokens and the TLS
/// files' current content in force for new requests and connections; a file that
/// cannot be used is logged and what was in force stays. Other settings need a
/// restart.
async fn reload_on_hangup(path: std::path::PathBuf, tls: Option<Arc<ApiTls>>, access: Arc<Access>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; tokens and certificates reload only with a restart");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            let config = match NodeConfig::load(&path) {
                Ok(config) => config,
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: the config cannot be read; nothing reloaded");
                    continue;
                }
            };
            match Tokens::new(&config.api.tokens) {
                // Withdrawing a leaked last token must not open the API to everyone.
                Ok(tokens) if tokens.is_empty() && !access.is_open() => tracing::error!(
                    "SIGHUP: the config lists no tokens any more, which would open the API \
                     to anyone; the tokens in force stay (restart to run open, or add a \
                     token before removing the last one)"
                ),
                Ok(tokens) => {
                    let count = config.api.tokens.len();
                    access.replace_tokens(tokens);
                    tracing::info!(tokens = count, "SIGHUP: API tokens reloaded");
                }
                Err(reason) => tracing::error!(%reason, "SIGHUP: tokens kept as they were"),
            }
            match (&tls, config.api.tls()) {
                (Some(tls), Some(files)) => match tls.reload(&files) {
                    Ok(()) => tracing::info!("SIGHUP: API certificate reloaded"),
                    Err(error) => {
                        tracing::error!(%error, "SIGHUP: the certificate in force stays")
                    }
                },
                (None, None) => {}
                _ => tracing::warn!("SIGHUP: turning the API's TLS on or off takes a restart"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, tls, access);
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A listening socket with room for `backlog` connections not yet accepted.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's bind does on Unix: a restarted node takes its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Pings systemd's watchdog while the node is alive ([`Node::is_alive`]), with the
/// height, or why it is not ready, in the unit's status line. A node whose consensus
/// driver died goes quiet, and systemd restarts it; one that is reopening a failed
/// database or holds a damaged one keeps pinging, as a restart would not help. Ends
/// when the node starts stopping.
async fn watchdog(
    notifier: Arc<crate::systemd::Notifier>,
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(period) = notifier.watchdog_period() else {
        return;
    };
    let mut ticks = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let height = node.metrics().height.load(Ordering::Relaxed);
        let status = match node.unready_reason() {
            None => format!("serving at height {height}"),
            Some(reason) => format!("not ready at height {height}: {reason}"),
        };
        if node.is_alive() {
            notifier.notify(&format!("WATCHDOG=1\nSTATUS={status}"));
        } else {
            notifier.notify(&format!("STATUS={status}"));
        }
    }
}
