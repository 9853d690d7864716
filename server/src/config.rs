//! The node's TOML configuration, its key file, and the files `ledgerd dev init` writes.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::chain::{ChainSpec, GenesisFile, GenesisMember};
use crate::plugin_host::PluginConfig;

/// Why a configuration, genesis or key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not what it must be.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words an operator can act on.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    }
}

fn invalid(path: &Path, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `ledgerd.toml`. Relative paths are relative to the file's own directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Address of the client HTTP API.
    pub api_listen: SocketAddr,
    /// Address peers connect to (used once the cluster transport lands).
    pub p2p_listen: SocketAddr,
    /// Directory of the database (`ledger.redb`).
    pub data_dir: PathBuf,
    /// The chain's genesis file.
    #[serde(default = "default_genesis")]
    pub genesis: PathBuf,
    /// This node's ed25519 secret key (64 hex characters, mode 0600).
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Most entries the node puts in one block (at most the genesis limit).
    #[serde(default = "default_max_block_entries")]
    pub max_block_entries: u32,
    /// Longest an entry waits for more to join its block, in milliseconds
    /// [default: 10 for a node alone, 2 for a cluster member].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_block_delay_ms: Option<u64>,
    /// A cluster primary's blocks in flight (proposed, not yet prepared) before it
    /// waits for one to prepare rather than cut at `max_block_delay_ms` (a full
    /// block is cut regardless).
    #[serde(default = "default_max_blocks_in_flight")]
    pub max_blocks_in_flight: u32,
    /// A cluster primary's least time between two blocks while entries keep coming,
    /// in milliseconds (0: a block as soon as the last one prepared).
    #[serde(default = "default_min_block_interval_ms")]
    pub min_block_interval_ms: u64,
    /// Most entries waiting for a block; beyond it submits get 503.
    #[serde(default = "default_pool_capacity")]
    pub pool_capacity: usize,
    /// Whether a cluster member that starts without a database, or far below the
    /// chain, joins from a snapshot (else it replays the chain from its peers).
    #[serde(default = "default_true")]
    pub join_from_snapshot: bool,
    /// Entries a member that has its database must lack, beside a third of the
    /// chain's, before it joins from a snapshot rather than replay
    /// ([`crate::join::far_behind`]; a follower needs only the third).
    #[serde(default = "default_join_behind_entries")]
    pub join_behind_entries: u64,
    /// Run as a follower: the key is not a member's; the node checks and applies the
    /// blocks the members commit (read through their client APIs), serves reads,
    /// proofs and snapshots, forwards submits, and never votes.
    #[serde(default)]
    pub follower: bool,
    /// Most snapshot chunks served to joining nodes at once; more are told to retry.
    #[serde(default = "default_snapshot_transfers")]
    pub snapshot_transfers: usize,
    /// Entry ids per snapshot chunk this node serves: a power of two from 16 to
    /// 65,536 (fewer make smaller, more numerous chunks, for slow links).
    #[serde(default = "default_snapshot_chunk_ids")]
    pub snapshot_chunk_ids: u32,
    /// Mining threads; every core when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mining_threads: Option<usize>,
    /// redb two-phase commit (see the store's docs); on unless turned off.
    #[serde(default = "default_true")]
    pub two_phase_commit: bool,
    /// MiB of the database's page cache; redb's default (1,024) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_mib: Option<u32>,
    /// Client API connections open at once; beyond it new ones wait in the listen
    /// backlog while the open ones are served. Half the process's descriptor limit
    /// when absent, so the other half stays for members, the database and plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_max_connections: Option<usize>,
    /// Milliseconds a client has to send a request's headers (from when it connects or
    /// got its previous answer); a slower or idle connection is closed.
    #[serde(default = "default_api_header_timeout_ms")]
    pub api_header_timeout_ms: u64,
    /// Milliseconds an answer may wait for a client that reads nothing before the
    /// connection is closed.
    #[serde(default = "default_api_write_timeout_ms")]
    pub api_write_timeout_ms: u64,
    /// Origins whose browser pages may call the API (CORS), e.g.
    /// `"https://explorer.example.com"`, or `"*"` for any; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_origins: Vec<String>,
    /// Serve the API on an address other than loopback with neither tokens nor TLS:
    /// anyone who reaches it may then submit and cut blocks. Refused unless set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub api_insecure: bool,
    /// Log format.
    #[serde(default)]
    pub log_format: LogFormat,
    /// TLS, tokens and rate limit of the client API (`[api]`).
    #[serde(default, skip_serializing_if = "ApiSecurity::is_open")]
    pub api: ApiSecurity,
    /// How this node calls other nodes' client APIs (`[upstream]`): a follower
    /// following the members, a node fetching from them.
    #[serde(default, skip_serializing_if = "Upstream::is_plain")]
    pub upstream: Upstream,
    /// Validation plugins (`[[plugins]]`), called in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginConfig>,
}

/// `[api]` of ledgerd.toml: who may call the client API, and how.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSecurity {
    /// PEM certificate chain to serve the API over TLS with (with `tls_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate one of them issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// Requests per second each caller may make (per token, or per address when
    /// no token is configured); beyond it, 429 with `Retry-After`. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Requests a caller may make at once after a quiet spell; `rate_limit` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_burst: Option<u32>,
    /// Bearer tokens (`[[api.tokens]]`, from `ledgerd token new`); the API is open
    /// to anyone when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<crate::api::auth::TokenConfig>,
}

impl ApiSecurity {
    fn is_open(&self) -> bool {
        *self == ApiSecurity::default()
    }

    /// The TLS files, if the API is served over TLS.
    pub fn tls(&self) -> Option<crate::api::tls::TlsFiles> {
        Some(crate::api::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// The rate limit, if one is set.
    pub fn rate(&self) -> Option<crate::api::auth::RateLimit> {
        let per_second = std::num::NonZeroU32::new(self.rate_limit?)?;
        let burst = self
            .rate_burst
            .and_then(std::num::NonZeroU32::new)
            .unwrap_or(per_second);
        Some(crate::api::auth::RateLimit { per_second, burst })
    }

    fn check(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("[api]: tls_cert and tls_key go together".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err("[api]: tls_client_ca needs tls_cert and tls_key".into());
        }
        if self.rate_limit == Some(0) || self.rate_burst == Some(0) {
            return Err("[api]: rate_limit and rate_burst must be at least 1".into());
        }
        if self.rate_burst.is_some() && self.rate_limit.is_none() {
            return Err("[api]: rate_burst needs rate_limit".into());
        }
        crate::api::auth::Tokens::new(&self.tokens).map(drop)
    }
}

/// `[upstream]` of ledgerd.toml: the credentials this node shows other nodes' client
/// APIs when they ask for them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// PEM CA certificates that issued their API certificates: talk https to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// A file holding a token secret (role `read` is enough), mode 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM client certificate, for APIs that verify clients (with `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl Upstream {
    fn is_plain(&self) -> bool {
        *self == Upstream::default()
    }
}

fn default_api_header_timeout_ms() -> u64 {
    10_000
}
fn default_api_write_timeout_ms() -> u64 {
    30_000
}
fn default_genesis() -> PathBuf {
    "genesis.toml".into()
}
fn default_key_file() -> PathBuf {
    "node.key".into()
}
fn default_max_block_entries() -> u32 {
    1000
}
/// A node alone mines the next block while it applies one, so a longer delay costs
/// its waiting clients little and saves proofs of work. A cluster's primary gathers
/// only entries that come together while nothing of its own is in flight: beyond
/// the burst they come in, waiting holds the whole cluster's round back.
const ALONE_BLOCK_DELAY_MS: u64 = 10;
const CLUSTER_BLOCK_DELAY_MS: u64 = 2;
/// A member that joins from a snapshot leaves its record of what it signed behind,
/// and abstains from voting for two checkpoint intervals; replaying keeps it, and
/// this many entries replay in about 7 s on the project's 2-core machine in blocks
/// of a few hundred (benches/README.md, `join.sh`; small blocks replay slower).
fn default_join_behind_entries() -> u64 {
    1_000_000
}
fn default_max_blocks_in_flight() -> u32 {
    1
}
fn default_min_block_interval_ms() -> u64 {
    crate::engine::DEFAULT_MIN_BLOCK_INTERVAL_MS
}
fn default_pool_capacity() -> usize {
    100_000
}
fn default_snapshot_chunk_ids() -> u32 {
    1 << crate::chain::snapshot::DEFAULT_TILE_LEVEL
}
fn default_snapshot_transfers() -> usize {
    crate::snapshots::DEFAULT_TRANSFERS
}
fn default_true() -> bool {
    true
}

impl NodeConfig {
    /// Reads and checks `path`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = fs::read_to_string(path).map_err(io(path))?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|error| invalid(path, error))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let plugins = config.plugins.iter_mut().map(|plugin| &mut plugin.path);
        let api = &mut config.api;
        let upstream = &mut config.upstream;
        let optional = [
            &mut api.tls_cert,
            &mut api.tls_key,
            &mut api.tls_client_ca,
            &mut upstream.cacert,
            &mut upstream.token_file,
            &mut upstream.cert,
            &mut upstream.key,
        ];
        for file in [
            &mut config.data_dir,
            &mut config.genesis,
            &mut config.key_file,
        ]
        .into_iter()
        .chain(plugins)
        .chain(optional.into_iter().flatten())
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        if config.max_block_entries == 0
            || config.max_blocks_in_flight == 0
            || config.pool_capacity == 0
        {
            return Err(invalid(
                path,
                "max_block_entries, max_blocks_in_flight and pool_capacity must be at least 1",
            ));
        }
        if config.mining_threads == Some(0) {
            return Err(invalid(
                path,
                "mining_threads must be at least 1 (or absent for every core)",
            ));
        }
        config
            .snapshot_tile_level()
            .map_err(|reason| invalid(path, reason))?;
        crate::api::cors(&config.cors_origins).map_err(|reason| invalid(path, reason))?;
        config.api.check().map_err(|reason| invalid(path, reason))?;
        if config.upstream.cert.is_some() != config.upstream.key.is_some() {
            return Err(invalid(path, "[upstream]: cert and key go together"));
        }
        // TLS alone hides the traffic but lets anyone in: tokens or client
        // certificates say who may call.
        if !config.api_listen.ip().is_loopback()
            && config.api.tokens.is_empty()
            && config.api.tls_client_ca.is_none()
            && !config.api_insecure
        {
            return Err(invalid(
                path,
                format!(
                    "api_listen {} is reachable from other machines, and the API checks \
                     no caller (no tokens, no client certificates): anyone could submit \
                     and cut blocks. Add a token (`ledgerd token new --role admin --name \
                     NAME` prints the lines), or client certificates (`[api]` \
                     tls_client_ca), or set `api_insecure = true` if the network itself \
                     is trusted",
                    config.api_listen
                ),
            ));
        }
        Ok(config)
    }

    /// The tile level of the snapshots this node serves: log2 of `snapshot_chunk_ids`.
    pub fn snapshot_tile_level(&self) -> Result<u8, String> {
        use crate::chain::snapshot::{MAX_TILE_LEVEL, MIN_TILE_LEVEL};
        let ids = self.snapshot_chunk_ids;
        let level = ids.trailing_zeros() as u8;
        if !ids.is_power_of_two() || !(MIN_TILE_LEVEL..=MAX_TILE_LEVEL).contains(&level) {
            return Err(format!(
                "snapshot_chunk_ids is {ids}; it must be a power of two from {} to {}",
                1u32 << MIN_TILE_LEVEL,
                1u32 << MAX_TILE_LEVEL
            ));
        }
        Ok(level)
    }

    /// A config with every default, for `ledgerd init`.
    pub fn example(api_listen: SocketAddr, p2p_listen: SocketAddr) -> NodeConfig {
        NodeConfig {
            api_listen,
            p2p_listen,
            data_dir: "data".into(),
            genesis: default_genesis(),
            key_file: default_key_file(),
            max_block_entries: default_max_block_entries(),
            max_block_delay_ms: None,
            max_blocks_in_flight: default_max_blocks_in_flight(),
            min_block_interval_ms: default_min_block_interval_ms(),
            pool_capacity: default_pool_capacity(),
            join_from_snapshot: true,
            join_behind_entries: default_join_behind_entries(),
            follower: false,
            snapshot_transfers: default_snapshot_transfers(),
            snapshot_chunk_ids: default_snapshot_chunk_ids(),
            mining_threads: None,
            two_phase_commit: true,
            cache_mib: None,
            api_max_connections: None,
            api_header_timeout_ms: default_api_header_timeout_ms(),
            api_write_timeout_ms: default_api_write_timeout_ms(),
            cors_origins: Vec::new(),
            api_insecure: false,
            log_format: LogFormat::Text,
            api: ApiSecurity::default(),
            upstream: Upstream::default(),
            plugins: Vec::new(),
        }
    }

    /// How the node's database is opened.
    pub fn store_options(&self) -> crate::storage::StoreOptions {
        crate::storage::StoreOptions {
            two_phase_commit: self.two_phase_commit,
            cache_bytes: self.cache_mib.map(|mib| (mib as usize) << 20),
            ..crate::storage::StoreOptions::default()
        }
    }

    /// The block delay as a duration, for a node alone or a cluster member.
    pub fn max_block_delay(&self, cluster: bool) -> Duration {
        let default = match cluster {
            true => CLUSTER_BLOCK_DELAY_MS,
            false => ALONE_BLOCK_DELAY_MS,
        };
        Duration::from_millis(self.max_block_delay_ms.unwrap_or(default))
    }

    /// The database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("ledger.redb")
    }

    /// The client API's connection limits.
    pub fn serve_limits(&self) -> crate::api::serve::ServeLimits {
        crate::api::serve::ServeLimits {
            max_connections: self
                .api_max_connections
                .or_else(|| {
                    crate::metrics::max_open_files()
                        .map(|limit| usize::try_from(limit / 2).unwrap_or(usize::MAX))
                })
                .unwrap_or(1024)
                .max(1),
            header_timeout: Duration::from_millis(self.api_header_timeout_ms.max(1)),
            write_timeout: Duration::from_millis(self.api_write_timeout_ms.max(1)),
        }
    }

    /// Reads the genesis file this config names.
    pub fn chain_spec(&self) -> Result<ChainSpec, ConfigError> {
        let text = fs::read_to_string(&self.genesis).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => invalid(
                &self.genesis,
                "no such file: write the chain's genesis file with `ledgerd genesis` \
                     (or lay out a local cluster with `ledgerd dev init`), or point \
                     `genesis` in ledgerd.toml at it",
            ),
            _ => io(&self.genesis)(error),
        })?;
        ChainSpec::from_toml(&text).map_err(|error| invalid(&self.genesis, error))
    }

    /// Reads the key file this config names.
    pub fn signing_key(&self) -> Result<SigningKey, ConfigError> {
        read_key(&self.key_file)
    }
}

/// Reads a key file: 64 hex characters of ed25519 secret key, whitespace ignored.
pub fn read_key(path: &Path) -> Result<SigningKey, ConfigError> {
    check_private(path)?;
    let text = fs::read_to_string(path).map_err(io(path))?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret)
        .map_err(|_| invalid(path, "a key file holds 64 hex characters"))?;
    Ok(SigningKey::from_bytes(&secret))
}

fn check_private(path: &Path) -> Result<(), ConfigError> {
    // As ssh does with private keys: a secret others can read is no longer secret,
    // so it is refused, not used with a warning nobody reads.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(invalid(
                path,
                format!(
                    "the file has mode {mode:04o}, readable by group or others; \
                     make it private with `chmod 600 {}`",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// A new key from the OS's random source.
pub fn generate_key() -> Result<SigningKey, ConfigError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|error| ConfigError::Io {
        path: "<os random source>".into(),
        source: std::io::Error::other(error.to_string()),
    })?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes `key` to a new file readable only by its owner; never overwrites.
pub fn write_key(path: &Path, key: &SigningKey) -> Result<(), ConfigError> {
    write_secret(path, &hex::encode(key.to_bytes()))
}

/// Writes `secret` and a newline to a new file readable only by its owner; never
/// overwrites.
pub fn write_secret(path: &Path, secret: &str) -> Result<(), ConfigError> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    writeln!(file, "{secret}").map_err(io(path))
}

/// Reads a secret [`write_secret`] wrote, refusing a file others can read.
pub fn read_secret(path: &Path) -> Result<String, ConfigError> {
    check_private(path)?;
    let text = fs::read_to_string(path).map_err(io(path))?;
    match text.trim() {
        "" => Err(invalid(path, "the file is empty")),
        secret => Ok(secret.to_owned()),
    }
}

/// The file beside a node key that says the key is new: the node holding it never
/// had a database, so it never signed a vote. The node removes it when it creates
/// its database; a member that later starts without one (its disk lost) finds no
/// such file and learns from the others how far it may have voted.
pub fn new_key_mark(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// Writes a new node key to `path`, with its [`new_key_mark`].
pub fn write_node_key(path: &Path, key: &SigningKey) -> Result<(), ConfigError> {
    write_key(path, key)?;
    let mark = new_key_mark(path);
    fs::write(
        &mark,
        "This node key has never voted: ledgerd removes this file when it creates its \
         database. Never copy it back.\n",
    )
    .map_err(io(&mark))
}

/// One `--member` of `ledgerd genesis`: a public key in hex, then optionally
/// `,p2p=HOST:PORT` and `,api=HOST:PORT`.
pub fn member_arg(text: &str) -> Result<GenesisMember, String> {
    let mut parts = text.split(',');
    let public_key = parts.next().unwrap_or_default().trim().to_owned();
    let mut member = GenesisMember {
        public_key,
        p2p_addr: None,
        api_addr: None,
    };
    for part in parts {
        let (slot, value) = match part.trim().split_once('=') {
            Some(("p2p", value)) => (&mut member.p2p_addr, value),
            Some(("api", value)) => (&mut member.api_addr, value),
            _ => {
                return Err(format!(
                    "{part:?}: expected p2p=HOST:PORT or api=HOST:PORT after the key"
                ))
            }
        };
        if value.is_empty() || slot.is_some() {
            return Err(format!("{part:?}: an empty or repeated address"));
        }
        *slot = Some(value.to_owned());
    }
    Ok(member)
}

/// What `ledgerd dev init` lays out.
#[derive(Clone, Debug)]
pub struct DevLayout {
    /// The cluster's directory.
    pub dir: PathBuf,
    /// Config file of each node, in member order.
    pub configs: Vec<PathBuf>,
    /// The key file of the chain's one admin, which signs membership changes.
    pub admin_key: PathBuf,
}

/// Where the nodes of a `ledgerd dev init` layout run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Processes on 127.0.0.1: node i's API on `base_port + 2i`, its peers on the next.
    Loopback {
        /// The first node's API port.
        base_port: u16,
    },
    /// One container each (`compose.yaml`, the image of `ops/Dockerfile`): node i is
    /// service `node<i>`, its API published on the host at `base_port + 2i`.
    Containers {
        /// The host port of the first node's API.
        base_port: u16,
    },
}

/// The container ports of [`Placement::Containers`].
const CONTAINER_API: u16 = 7100;
const CONTAINER_P2P: u16 = 7101;

/// Writes keys, one genesis file and a config per node under `dir`:
/// `dir/genesis.toml`, `dir/admin.key` (the one admin, threshold 1, so the cluster can
/// be reconfigured), `dir/node<i>/{ledgerd.toml,node.key}`. Node i listens on
/// `base_port + 2i` (API) and `base_port + 2i + 1` (peers), on 127.0.0.1.
pub fn dev_init(
    dir: &Path,
    nodes: usize,
    base_port: u16,
    difficulty: u32,
) -> Result<DevLayout, ConfigError> {
    lay_out(dir, nodes, difficulty, Placement::Loopback { base_port })
}

/// [`dev_init`] for `placement`; for containers it also writes `dir/compose.yaml`.
pub fn lay_out(
    dir: &Path,
    nodes: usize,
    difficulty: u32,
    placement: Placement,
) -> Result<DevLayout, ConfigError> {
    if nodes == 0 {
        return Err(invalid(dir, "a cluster needs at least one node"));
    }
    let base_port = match placement {
        Placement::Loopback { base_port } | Placement::Containers { base_port } => base_port,
    };
    let port = |offset: usize| -> Result<u16, ConfigError> {
        u16::try_from(usize::from(base_port) + offset)
            .map_err(|_| invalid(dir, "base port too high for this many nodes"))
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let genesis_path = dir.join("genesis.toml");
    if genesis_path.exists() {
        return Err(invalid(
            &genesis_path,
            "already exists; remove the directory to start over",
        ));
    }
    let mut members = Vec::with_capacity(nodes);
    let mut configs = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let node_dir = dir.join(format!("node{i}"));
        fs::create_dir_all(&node_dir).map_err(io(&node_dir))?;
        let key = generate_key()?;
        write_node_key(&node_dir.join("node.key"), &key)?;
        let (config, p2p_addr, api_addr) = match placement {
            Placement::Loopback { .. } => {
                let config = NodeConfig {
                    genesis: "../genesis.toml".into(),
                    ..NodeConfig::example(
                        SocketAddr::from(([127, 0, 0, 1], port(2 * i)?)),
                        SocketAddr::from(([127, 0, 0, 1], port(2 * i + 1)?)),
                    )
                };
                let addrs = (config.p2p_listen.to_string(), config.api_listen.to_string());
                (config, addrs.0, addrs.1)
            }
            // Mounted at /etc/ledger with the genesis file beside it; the others
            // dial a node by its service name. The API listens on the containers'
            // own network and is published on the host's loopback only.
            Placement::Containers { .. } => (
                NodeConfig {
                    data_dir: "/var/lib/ledger".into(),
                    api_insecure: true,
                    ..NodeConfig::example(
                        SocketAddr::from(([0, 0, 0, 0], CONTAINER_API)),
                        SocketAddr::from(([0, 0, 0, 0], CONTAINER_P2P)),
                    )
                },
                format!("node{i}:{CONTAINER_P2P}"),
                format!("node{i}:{CONTAINER_API}"),
            ),
        };
        members.push(GenesisMember {
            public_key: hex::encode(key.verifying_key().as_bytes()),
            p2p_addr: Some(p2p_addr),
            api_addr: Some(api_addr),
        });
        let text = toml::to_string(&config).map_err(|error| invalid(&node_dir, error))?;
        let config_path = node_dir.join("ledgerd.toml");
        fs::write(&config_path, text).map_err(io(&config_path))?;
        configs.push(config_path);
    }
    let admin_path = dir.join("admin.key");
    let admin = generate_key()?;
    let genesis = GenesisFile {
        admins: vec![hex::encode(admin.verifying_key().as_bytes())],
        admin_threshold: Some(1),
        ..GenesisFile::new("ledger-dev", 1_767_225_600_000, difficulty, members)
    };
    // Validate before writing, so a bad layout never reaches disk as a genesis file.
    let spec = ChainSpec::from_file(genesis).map_err(|error| invalid(&genesis_path, error))?;
    write_key(&admin_path, &admin)?;
    fs::write(&genesis_path, spec.to_toml()).map_err(io(&genesis_path))?;
    if let Placement::Containers { .. } = placement {
        write_compose(dir, nodes, &port)?;
    }
    Ok(DevLayout {
        dir: dir.to_owned(),
        configs,
        admin_key: admin_path,
    })
}

/// `dir/compose.yaml` for [`Placement::Containers`]: the containers run as the user
/// who owns the layout, so they can read its keys (mode 0600) and write its data.
fn write_compose(
    dir: &Path,
    nodes: usize,
    port: &dyn Fn(usize) -> Result<u16, ConfigError>,
) -> Result<(), ConfigError> {
    use std::fmt::Write as _;
    #[cfg(unix)]
    let user = {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(dir).map_err(io(dir))?;
        format!("{}:{}", meta.uid(), meta.gid())
    };
    #[cfg(not(unix))]
    let user = String::from("65532:65532");
    let mut text = String::from(
        "# Written by `ledgerd dev init --compose`: one member per container, the image\n\
         # of ops/Dockerfile. From the repository: podman build -f ops/Dockerfile -t ledger .\n\
         # Then here: podman compose up -d  (or docker compose up -d)\n\
         name: ledger-dev\nservices:\n",
    );
    for i in 0..nodes {
        let data = dir.join("data").join(format!("node{i}"));
        fs::create_dir_all(&data).map_err(io(&data))?;
        let _ = write!(
            text,
            "  node{i}:\n    image: ledger:latest\n    user: \"{user}\"\n    \
             ports: [\"127.0.0.1:{host}:{CONTAINER_API}\"]\n    volumes:\n      \
             - ./node{i}:/etc/ledger\n      - ./genesis.toml:/etc/ledger/genesis.toml:ro\n      \
             - ./data/node{i}:/var/lib/ledger\n    restart: unless-stopped\n",
            host = port(2 * i)?
        );
    }
    let path = dir.join("compose.yaml");
    fs::write(&path, text).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_init_writes_configs_that_load() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dev_init(&dir.path().join("cluster"), 4, 17000, 8).unwrap();
        assert_eq!(layout.configs.len(), 4);
        let mut keys = Vec::new();
        for (i, path) in layout.configs.iter().enumerate() {
            let config = NodeConfig::load(path).unwrap();
            assert_eq!(config.api_listen.port(), 17000 + 2 * i as u16);
            assert_eq!(config.p2p_listen.port(), 17001 + 2 * i as u16);
            let spec = config.chain_spec().unwrap();
            let key = config.signing_key().unwrap();
            assert_eq!(spec.members.as_slice()[i].public_key, key.verifying_key());
            keys.push(key.to_bytes());
        }
        keys.dedup();
        assert_eq!(keys.len(), 4, "every node has its own key");
        // One admin, enough alone, whose key is private to its owner like a node's.
        let spec = NodeConfig::load(&layout.configs[0])
            .unwrap()
            .chain_spec()
            .unwrap();
        let admins = spec.admins.expect("a dev cluster can be reconfigured");
        assert_eq!(admins.threshold(), 1);
        let admin = read_key(&layout.admin_key).unwrap();
        assert_eq!(admins.keys(), [admin.verifying_key()]);
        // Each new key says it never voted; the cache is redb's unless set.
        let config = NodeConfig::load(&layout.configs[0]).unwrap();
        assert!(new_key_mark(&config.key_file).exists());
        assert_eq!(config.store_options().cache_bytes, None);
        let mut text = fs::read_to_string(&layout.configs[0]).unwrap();
        text.push_str("cache_mib = 64\n");
        fs::write(&layout.configs[0], text).unwrap();
        let config = NodeConfig::load(&layout.configs[0]).unwrap();
        assert_eq!(config.store_options().cache_bytes, Some(64 << 20));
        // The block delay is the engine's unless set.
        assert_eq!(config.max_block_delay(false), Duration::from_millis(10));
        assert_eq!(config.max_block_delay(true), Duration::from_millis(2));
        let mut text = fs::read_to_string(&layout.configs[0]).unwrap();
        text.push_str("max_block_delay_ms = 7\n");
        fs::write(&layout.configs[0], text).unwrap();
        let config = NodeConfig::load(&layout.configs[0]).unwrap();
        assert_eq!(config.max_block_delay(false), Duration::from_millis(7));
        assert_eq!(config.max_block_delay(true), Duration::from_millis(7));
        let again = dev_init(&dir.path().join("cluster"), 4, 17000, 8).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
    }

    #[test]
    fn a_container_layout_names_services_and_writes_compose() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = dir.path().join("cluster");
        let layout = lay_out(&cluster, 3, 8, Placement::Containers { base_port: 17000 }).unwrap();
        let compose = fs::read_to_string(cluster.join("compose.yaml")).unwrap();
        for (i, path) in layout.configs.iter().enumerate() {
            let config = NodeConfig::load(path).unwrap();
            assert_eq!(config.api_listen, "0.0.0.0:7100".parse().unwrap());
            assert_eq!(config.data_dir, PathBuf::from("/var/lib/ledger"));
            // The genesis file is mounted beside the config, where it names the others.
            assert_eq!(
                config.genesis,
                cluster.join(format!("node{i}/genesis.toml"))
            );
            let spec =
                ChainSpec::from_toml(&fs::read_to_string(cluster.join("genesis.toml")).unwrap())
                    .unwrap();
            let member = &spec.members.as_slice()[i];
            assert_eq!(
                member.p2p_addr.as_deref(),
                Some(format!("node{i}:7101").as_str())
            );
            assert!(compose.contains(&format!("  node{i}:\n")), "{compose}");
            let published = format!("127.0.0.1:{}:7100", 17000 + 2 * i);
            assert!(compose.contains(&published), "{compose}");
            assert!(
                compose.contains(&format!("./node{i}:/etc/ledger\n")),
                "{compose}"
            );
            assert!(cluster.join(format!("data/node{i}")).is_dir());
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn api_connections_default_to_half_the_descriptor_limit() {
        let any = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut config = NodeConfig::example(any, any);
        let limit = crate::metrics::max_open_files().expect("Linux says");
        assert_eq!(config.serve_limits().max_connections as u64, limit / 2);
        config.api_max_connections = Some(7);
        assert_eq!(config.serve_limits().max_connections, 7);
    }

    #[test]
    fn member_arguments_take_a_key_and_optional_addresses() {
        let key = "ab".repeat(32);
        let member = member_arg(&format!("{key},p2p=10.0.0.1:7101,api=10.0.0.1:7100")).unwrap();
        assert_eq!(member.public_key, key);
        assert_eq!(member.p2p_addr.as_deref(), Some("10.0.0.1:7101"));
        assert_eq!(member.api_addr.as_deref(), Some("10.0.0.1:7100"));
        let bare = member_arg(&key).unwrap();
        assert_eq!((bare.p2p_addr, bare.api_addr), (None, None));
        for bad in [
            format!("{key},p2p=a:1,p2p=b:2"),
            format!("{key},peer=a:1"),
            format!("{key},api="),
        ] {
            assert!(member_arg(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_configs_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledgerd.toml");
        fs::write(&path, "api_listen = \"127.0.0.1:1\"\np2p_listen = \"127.0.0.1:2\"\ndata_dir = \"d\"\ncolour = 1\n").unwrap();
        let error = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("ledgerd.toml") && error.contains("colour"),
            "{error}"
        );
        let key = dir.path().join("node.key");
        fs::write(&key, "not hex").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
            let error = read_key(&key).unwrap_err().to_string();
            assert!(
                error.contains("mode 0644") && error.contains("chmod 600"),
                "{error}"
            );
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(read_key(&key).unwrap_err().to_string().contains("64 hex"));
        for zero in ["max_block_entries", "max_blocks_in_flight", "pool_capacity"] {
            let text = format!(
                "api_listen = \"127.0.0.1:1\"\np2p_listen = \"127.0.0.1:2\"\ndata_dir = \"d\"\n{zero} = 0\n"
            );
            fs::write(&path, text).unwrap();
            let error = NodeConfig::load(&path).unwrap_err().to_string();
            assert!(error.contains(zero), "{error}");
        }
    }

    #[test]
    fn api_security_settings_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledgerd.toml");
        let load = |listen: &str, rest: &str| {
            let text = format!(
                "api_listen = \"{listen}\"\np2p_listen = \"127.0.0.1:2\"\ndata_dir = \"d\"\n{rest}"
            );
            fs::write(&path, text).unwrap();
            NodeConfig::load(&path).map_err(|error| error.to_string())
        };
        let token = crate::api::auth::TokenConfig::generate("ops", crate::api::auth::Role::Admin)
            .unwrap()
            .1
            .to_toml();
        // Reachable: tokens, TLS or an explicit insecure; loopback: open is fine.
        assert!(load("0.0.0.0:1", "").unwrap_err().contains("api_insecure"));
        assert!(load("0.0.0.0:1", "api_insecure = true\n").is_ok());
        assert!(load("0.0.0.0:1", &token).is_ok());
        // TLS alone lets anyone in; with client certificates it does not.
        let tls = "[api]\ntls_cert = \"a.crt\"\ntls_key = \"a.key\"\n";
        assert!(load("[::]:1", tls).unwrap_err().contains("tls_client_ca"));
        let clients = format!("{tls}tls_client_ca = \"ca.pem\"\n");
        let loaded = load("[::]:1", &clients).unwrap();
        assert_eq!(loaded.api.tls().unwrap().cert, dir.path().join("a.crt"));
        assert!(load("127.0.0.1:1", "").is_ok());
        // Halves and nonsense are refused with the fix.
        for (rest, words) in [
            ("[api]\ntls_cert = \"a.crt\"\n", "go together"),
            ("[api]\ntls_client_ca = \"ca.pem\"\n", "needs tls_cert"),
            ("[api]\nrate_limit = 0\n", "at least 1"),
            ("[api]\nrate_burst = 5\n", "needs rate_limit"),
            ("[upstream]\ncert = \"c.pem\"\n", "go together"),
            (
                "[[api.tokens]]\nname = \"x\"\nrole = \"read\"\nsha256 = \"secret\"\n",
                "64 hex",
            ),
            (
                "[[api.tokens]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"00\"\n",
                "root",
            ),
        ] {
            let error = load("127.0.0.1:1", rest).unwrap_err();
            assert!(error.contains(words), "{rest}: {error}");
        }
        let rate = load("127.0.0.1:1", "[api]\nrate_limit = 10\n").unwrap();
        assert_eq!(rate.api.rate().unwrap().burst.get(), 10);
    }
}
