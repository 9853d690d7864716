//! The node's redb database behind one [`Store`].
//!
//! Tables are defined by the `ledger-migrations` crate (the schema and its upgrade
//! steps in one place). Applying a block is one write transaction with immediate
//! durability: the block, its hash index, its entries' index, the Merkle nodes it
//! completes and its commit certificate become durable together or not at all, and
//! [`Store::apply_block`] returns only after the commit. Reads use read transactions,
//! which never block the single writer.
//!
//! Entries are indexed append-only: `entry_id_rows` holds the entry ids in log order,
//! 16 to a row (`id_rows.rs`), so a block's index writes land on the table's last
//! pages instead of one random B-tree page per entry (benches/README.md, "store").
//! Lookups by id go through `IdIndex` (`ids.rs`): a fixed-size filter in memory,
//! the log's last ids in a map, and sorted runs of the ids below them on disk
//! (`id_runs.rs`), so memory does not grow with the history. Every hit is confirmed
//! against the rows.
//! The Merkle log keeps only its nodes over 16 leaves or more; one below is hashed
//! from the ids it covers (one row) when a proof needs it, which saves two rows per
//! entry on every apply and restore.
//!
//! Every call blocks on disk IO: async callers use `spawn_blocking`.

mod consensus;
mod health;
mod id_rows;
mod id_runs;
mod ids;
mod restore;
mod snapshot;
mod verify;
mod wal;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use ledger_migrations::schema::{
    BLOCKS, BLOCK_HASHES, CERTIFICATES, ENTRY_IDS, ID_RUNS, ID_RUN_DIR, LOG_STARTS, MEMBERSHIP,
    MERKLE_NODES, MERKLE_STORED_FROM, META, META_HISTORY_FROM,
};
use ledger_migrations::MigrationError;

pub use consensus::RecordsOwner;
use health::Health;
pub use health::{recovery_backoff, HealthCounters};
use ids::{IdIndex, IdTables, ReadIdTables};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
pub(crate) use restore::sync_parent;
pub use restore::{Restore, RestoredIds, VerifiedTile};
use verify::CertificateMemo;
pub use verify::{CheckProgress, CheckReport, ConsistencyProof};
#[cfg(feature = "testing")]
pub use wal::read_log;
pub use wal::LogCheck;

use crate::chain::merkle::{self, leaf_hash, AppendedNodes, NodeSource};
use crate::chain::{
    validate_block, Block, CertificateError, ChainError, ChainSpec, ChangeProof, CommitCertificate,
    CompactRange, Entry, EntryIndex, Hash, Header, Membership, MembershipHistory, Receipt,
    TreeRangeError, ValidationContext, HEADER_LEN,
};

const META_CHAIN_HASH: &str = "chain_hash";
const META_GENESIS_HASH: &str = "genesis_hash";
const META_CHAIN_SPEC: &str = "chain_spec";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened as a database at all.
    #[error("cannot open database {path}: {reason}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// redb's explanation, e.g. a corrupt or foreign file.
        reason: String,
    },
    /// The schema could not be brought up to date.
    #[error("database {path}: {source}")]
    Schema {
        /// The database file.
        path: PathBuf,
        /// What the migration step found.
        #[source]
        source: MigrationError,
    },
    /// The database holds another chain than the genesis file describes.
    #[error(
        "database {path} belongs to chain {found} but the genesis file defines chain {expected} \
         ({chain_id:?}); point data_dir at this chain's database or use the right genesis file"
    )]
    WrongChain {
        /// The database file.
        path: PathBuf,
        /// Chain hash in the database.
        found: Hash,
        /// Chain hash of the genesis file.
        expected: Hash,
        /// The genesis file's chain id.
        chain_id: String,
    },
    /// Stored data that does not decode or does not fit together: the file was
    /// damaged (README, "Recovering a damaged database").
    #[error("damaged database: {0}")]
    Corrupt(String),
    /// The database is closed after an I/O failure, until a reopen succeeds.
    #[error("the database is unavailable: {0}; the node reopens it once writes succeed again")]
    Unavailable(String),
    /// A store call that did not complete (its task panicked), or an error already
    /// logged and reported again to each caller it failed.
    #[error("store call failed: {0}")]
    Failed(String),
    /// Something below where this node's history starts: it was restored from a
    /// snapshot at `from` and has not fetched what lies below.
    #[error(
        "{what} lies below this node's history, which starts at block {from} (it was \
         restored from a snapshot and is fetching the blocks below); retry later, or ask \
         another member"
    )]
    NotHeld {
        /// What was asked for.
        what: String,
        /// The lowest height above genesis whose block is held.
        from: u64,
    },
    /// A block refused by the chain rules.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// redb failed.
    #[error("database error: {0}")]
    Database(#[from] redb::Error),
}

/// Why redb would not open `path`: damage it found (its own checks fail, or the
/// file is no redb database), or what to do first.
pub fn open_refused(path: &Path, error: redb::DatabaseError) -> StoreError {
    use redb::{DatabaseError, StorageError};
    let damaged = |what: String| StoreError::Corrupt(format!("{}: {what}", path.display()));
    let reason = match error {
        DatabaseError::Storage(StorageError::Corrupted(what)) => return damaged(what),
        DatabaseError::Storage(StorageError::Io(error))
            if error.kind() == std::io::ErrorKind::InvalidData =>
        {
            return damaged(error.to_string())
        }
        DatabaseError::RepairAborted => "it needs the recovery redb runs after an unclean \
             shutdown (or it is damaged), which a read-only open cannot run: stop the node, \
             or start it once, which recovers the file or says what is damaged; or check a \
             copy"
            .to_owned(),
        DatabaseError::DatabaseAlreadyOpen => {
            "a running node holds it: stop that node first (or check a copy)".to_owned()
        }
        error => error.to_string(),
    };
    StoreError::Open {
        path: path.to_owned(),
        reason,
    }
}

/// Converts each redb error type through `redb::Error`.
macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(error: $error) -> StoreError {
                StoreError::Database(error.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl StoreError {
    /// What is damaged, if this error found stored data that does not check out
    /// (ours, or redb's own checks).
    pub fn damage(&self) -> Option<String> {
        match self {
            StoreError::Corrupt(what) => Some(what.clone()),
            StoreError::Database(redb::Error::Corrupted(what)) => Some(what.clone()),
            _ => None,
        }
    }

    /// Whether the storage failed underneath (a full disk, a failed write or fsync,
    /// a handle poisoned or closed by such a failure, a reopen that failed): what
    /// closing and reopening may cure. A misused table or an oversized value is a
    /// bug, not this.
    pub fn is_io_failure(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Open { .. } => true,
            StoreError::Database(error) => matches!(
                error,
                redb::Error::Io(_)
                    | redb::Error::PreviousIo
                    | redb::Error::Backend(_)
                    | redb::Error::DatabaseClosed
                    | redb::Error::TransactionPoisoned
            ),
            _ => false,
        }
    }

    /// Whether this error only follows from the store's own handle having been
    /// closed for a reopen: a consequence of a failure already noted, not a new one.
    fn is_closed_handle(&self) -> bool {
        matches!(self, StoreError::Database(redb::Error::DatabaseClosed))
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Where an entry sits in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryLocation {
    /// Height of its block.
    pub height: u64,
    /// Position within the block.
    pub position: u32,
    /// Position in the Merkle log (leaf index).
    pub log_index: u64,
}

/// Options fixed when the store is opened.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// redb two-phase commit: a commit is only trusted after a second fsync, instead of
    /// by its XXH3 checksum. Entries come from untrusted clients and XXH3 is not
    /// collision-resistant, so it is on by default (its cost: benches/README.md).
    pub two_phase_commit: bool,
    /// Bytes of redb's page cache, the bulk of a node's memory on a long chain;
    /// redb's default (1 GiB) when `None`.
    pub cache_bytes: Option<usize>,
    /// Ids held in memory before they are written to disk as a sorted run; tests
    /// lower it to exercise runs on short chains.
    pub run_ids: usize,
    /// Rows of id runs an apply merges, and rows of merged runs it removes, at
    /// least (16 rows: about 64 KiB each); tests lower it to spread a merge over
    /// applies.
    pub upkeep_rows: usize,
    /// Merge passes each applied entry pays for on top of `upkeep_rows`: an id is
    /// merged once per level, and 8 levels of fours above a run of 256 Ki ids hold
    /// 2^34 ids, so the merges keep up with any load. Tests set 0 to spread a merge
    /// over applies.
    pub merge_passes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            two_phase_commit: true,
            cache_bytes: None,
            run_ids: ids::RUN_IDS,
            upkeep_rows: 16,
            merge_passes: 8,
        }
    }
}

/// The id runs' upkeep, a bounded step inside each block's apply: the merge under
/// way, and the runs it merged whose rows are still to be removed. Only the writer
/// touches it; an open starts it afresh.
#[derive(Clone, Debug, Default)]
struct Upkeep {
    merge: Option<id_runs::Merge>,
    retired: Vec<id_runs::Run>,
}

impl Upkeep {
    /// Removes rows of merged runs, and merges on or begins the merge due among
    /// `runs`, with the apply of a block of `entries` entries: up to
    /// `options.upkeep_rows` rows each, and more for a large block. A fixed step
    /// large enough for the busiest chain would cost every small block as much
    /// (a node catching up, as one restored from a snapshot does, applies many in
    /// a row). Returns the merge this step completed.
    fn step(
        &mut self,
        rows: &mut redb::Table<'_, (u64, u64, u64), &'static [u8]>,
        dir: &mut redb::Table<'_, u64, u64>,
        runs: &[id_runs::Run],
        entries: usize,
        options: &StoreOptions,
    ) -> Result<Option<id_runs::Merge>, StoreError> {
        let paid = (entries * options.merge_passes).div_ceil(id_runs::PAIRS_PER_ROW);
        let budget = options.upkeep_rows.max(1) + paid;
        while let Some(&run) = self.retired.first() {
            if !id_runs::remove_rows(rows, run, budget)? {
                break;
            }
            self.retired.remove(0);
        }
        if self.merge.is_none() {
            self.merge = id_runs::merge_due(runs, options.run_ids as u64);
        }
        let Some(merge) = &mut self.merge else {
            return Ok(None);
        };
        if !merge.step(rows, dir, budget)? {
            return Ok(None);
        }
        let done = self.merge.take();
        self.retired
            .extend(done.iter().flat_map(|merge| merge.inputs().iter().copied()));
        Ok(done)
    }
}

/// Opens the database file again after an I/O failure.
type Reopen = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// How an opening store loads its id index.
enum Ids {
    /// Not at all: a store that reads blocks only.
    Skip,
    /// From the entry index, every id checked.
    Load,
    /// As `Load`, but when a restore vouches for the tip's log its ids are not
    /// hashed again, and not read at all when its tiles' runs cover the log.
    Given(Option<RestoredIds>),
}

/// The open database: writable for a node, read-only for `ledgerd check`, which
/// must leave the file exactly as it found it.
enum Handle {
    Writable(Database),
    ReadOnly(redb::ReadOnlyDatabase),
}

impl Handle {
    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(match self {
            Handle::Writable(database) => database.begin_read()?,
            Handle::ReadOnly(database) => database.begin_read()?,
        })
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        match self {
            Handle::Writable(database) => Ok(database.begin_write()?),
            Handle::ReadOnly(_) => Err(StoreError::Unavailable(
                "the database is open read-only".into(),
            )),
        }
    }

    /// Closes the file now; reads still alive on it fail.
    fn close(self) {
        // Its errors belong to the failure being recovered from.
        let _ = match self {
            Handle::Writable(database) => database.close(),
            Handle::ReadOnly(database) => database.close(),
        };
    }
}

/// The ledger database of one node.
pub struct Store {
    /// The open database; none while it is being reopened after a failure. Every
    /// call holds a clone for as long as its transaction lives, so a reopen finds it
    /// unshared once the calls in flight are done.
    database: RwLock<Option<Arc<Handle>>>,
    /// How to open it again after an I/O failure (none: it cannot be).
    reopen: Option<Reopen>,
    path: PathBuf,
    spec: ChainSpec,
    chain_hash: Hash,
    genesis_hash: Hash,
    options: StoreOptions,
    /// Readers take it before they begin their transaction: a writer that wrote a
    /// run empties the map only after the commit, so a reader holding it sees the
    /// ids either in the map or in a run its transaction can read.
    ids: RwLock<IdIndex>,
    /// The writer's: held by each apply from its write transaction until the index
    /// has taken what it wrote, and by an open or a recovery while it reloads.
    upkeep: std::sync::Mutex<Upkeep>,
    health: Health,
    /// Commit certificates already verified, so reads check each once.
    certificates: CertificateMemo,
    /// The last tip read or applied, for status while the database is unavailable.
    last_tip: std::sync::Mutex<Option<Header>>,
    /// The lowest height above genesis whose block is held: 1 unless the database
    /// was restored from a snapshot.
    history_from: std::sync::atomic::AtomicU64,
    /// The membership after the tip, as the `membership` table's last row says.
    membership: RwLock<Arc<Membership>>,
    /// The membership changes with their receipts, as of how many changes there were.
    changes: std::sync::Mutex<Option<(u64, Arc<Vec<ChangeProof>>)>>,
    /// The consensus write-ahead log, kept by a store opened on a file
    /// ([`Store::open`]); without one, every record goes into redb.
    wal: std::sync::Mutex<Option<wal::Wal>>,
    /// The highest prepared certificate persisted, for [`Store::highest_prepared`]
    /// (which clients may call at any rate) without reading the consensus state
    /// under the log's lock the driver writes through.
    prepared: std::sync::Mutex<consensus::HighestPrepared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("chain_hash", &self.chain_hash)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the database at `path` for the chain `spec`: upgrades its
    /// schema, writes the genesis block into a new database, and refuses a database of
    /// another chain, a newer schema, or a file that is not a ledger database.
    pub fn open(path: &Path, spec: &ChainSpec, options: StoreOptions) -> Result<Store, StoreError> {
        Store::open_restored(path, spec, options, None)
    }

    /// [`Store::open`] of a database [`Restore::finish`] built, with what it
    /// vouched for (if anything): the ids were checked against the snapshot's root as
    /// they arrived, moments ago in this process, and written as id runs with the
    /// tiles, so they are not read again. A word for another log than the
    /// database's tip is ignored and the ids are checked as at any open.
    pub fn open_restored(
        path: &Path,
        spec: &ChainSpec,
        options: StoreOptions,
        restored: Option<RestoredIds>,
    ) -> Result<Store, StoreError> {
        let cache = options.cache_bytes;
        // A file that exists (an empty one too, or a link to none) is opened, never
        // made a new database: the log beside it holds what this member signed.
        let create = std::fs::symlink_metadata(path)
            .is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound);
        let database = open_file(path, cache, create)?;
        let reopen_path = path.to_owned();
        let ids = Ids::Given(restored);
        let store = Store::migrated(database, path.to_owned(), spec, options, ids)?;
        store.open_wal(false)?;
        Ok(store.reopen_with(move || {
            // The file system must take writes again before the file is touched: a
            // database reopened on a full disk fails its next commit at once.
            health::probe_writes(&reopen_path)?;
            // A file gone or emptied meanwhile is not the database: nothing new here.
            open_file(&reopen_path, cache, false)
        }))
    }

    /// Where the consensus write-ahead log of the database at `database` is kept.
    pub fn log_path(database: &Path) -> PathBuf {
        wal::Wal::path_for(database)
    }

    /// Removes the consensus log of the database at `database`, and the file made
    /// ahead for its next start-over, where they exist.
    pub fn remove_log(database: &Path) {
        let log = Store::log_path(database);
        let _ = std::fs::remove_file(wal::Wal::spare_path(&log));
        let _ = std::fs::remove_file(log);
    }

    /// Renames a closed database file and the consensus log beside it, durably. A
    /// crash between the two renames leaves the database without its log, which it
    /// then refuses to open without, naming the log it expects; a log never goes to
    /// another database, as it names its own.
    pub fn move_files(from: &Path, to: &Path) -> std::io::Result<()> {
        let log = Store::log_path(from);
        // The file made ahead for the log's next start-over is not worth moving.
        let _ = std::fs::remove_file(wal::Wal::spare_path(&log));
        std::fs::rename(from, to)?;
        if log.exists() {
            std::fs::rename(&log, Store::log_path(to))?;
        }
        sync_parent(to)
    }

    /// Lets [`Store::recover`] reopen the database with `reopen` after an I/O
    /// failure (tests reopen on a fault-injecting backend this way).
    pub fn reopen_with(
        mut self,
        reopen: impl Fn() -> Result<Database, StoreError> + Send + Sync + 'static,
    ) -> Store {
        self.reopen = Some(Box::new(reopen));
        self
    }

    /// Like [`Store::open`] over a database already opened by the caller, on any redb
    /// storage backend (tests inject faults this way); `path` names it in errors.
    pub fn from_database(
        database: Database,
        path: PathBuf,
        spec: &ChainSpec,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        Store::migrated(database, path, spec, options, Ids::Load)
    }

    fn migrated(
        database: Database,
        path: PathBuf,
        spec: &ChainSpec,
        options: StoreOptions,
        ids: Ids,
    ) -> Result<Store, StoreError> {
        ledger_migrations::migrate(&database).map_err(|source| StoreError::Schema {
            path: path.clone(),
            source,
        })?;
        Store::over(Handle::Writable(database), path, spec, options, ids)
    }

    /// Opens the database at `path` without changing a byte of it, for checking:
    /// no schema upgrade, no genesis written, no recovery of an unclean shutdown
    /// (such a file is refused: start the node once, or check a copy). Writes fail.
    pub fn open_read_only(path: &Path, spec: &ChainSpec) -> Result<Store, StoreError> {
        Store::read_only(path, spec, true)
    }

    /// [`Store::open_read_only`] for reading blocks alone: the id index, which only
    /// entry lookups and new blocks need, is not loaded (what a backfill copies
    /// blocks from, beside the node's own store).
    pub fn open_blocks_read_only(path: &Path, spec: &ChainSpec) -> Result<Store, StoreError> {
        Store::read_only(path, spec, false)
    }

    fn read_only(path: &Path, spec: &ChainSpec, ids: bool) -> Result<Store, StoreError> {
        let database = redb::Builder::new()
            .open_read_only(path)
            .map_err(|error| open_refused(path, error))?;
        let version =
            ledger_migrations::schema_version(&database).map_err(|source| StoreError::Schema {
                path: path.to_owned(),
                source,
            })?;
        if version != ledger_migrations::CURRENT_VERSION {
            return Err(StoreError::Open {
                path: path.to_owned(),
                reason: format!(
                    "schema version {version}, not this build's {}; run `ledgerd migrate` \
                     first",
                    ledger_migrations::CURRENT_VERSION
                ),
            });
        }
        let ids = if ids { Ids::Load } else { Ids::Skip };
        Store::over(
            Handle::ReadOnly(database),
            path.to_owned(),
            spec,
            StoreOptions::default(),
            ids,
        )
    }

    fn over(
        handle: Handle,
        path: PathBuf,
        spec: &ChainSpec,
        options: StoreOptions,
        ids: Ids,
    ) -> Result<Store, StoreError> {
        let genesis = spec.genesis_block();
        let store = Store {
            database: RwLock::new(Some(Arc::new(handle))),
            reopen: None,
            path,
            spec: spec.clone(),
            chain_hash: spec.chain_hash(),
            genesis_hash: genesis.hash(),
            options,
            ids: RwLock::new(IdIndex::new(options.run_ids)),
            upkeep: Default::default(),
            health: Health::default(),
            certificates: CertificateMemo::default(),
            last_tip: std::sync::Mutex::new(None),
            history_from: std::sync::atomic::AtomicU64::new(1),
            membership: RwLock::new(Arc::new(Membership::genesis(spec))),
            changes: std::sync::Mutex::new(None),
            wal: std::sync::Mutex::new(None),
            prepared: Default::default(),
        };
        store.initialise(&genesis)?;
        store.history_from.store(
            store.read_history_from()?,
            std::sync::atomic::Ordering::Release,
        );
        // Reading the tip now turns a damaged file into an error at start-up rather
        // than at the first request.
        store.load_cached(ids)?;
        Ok(store)
    }

    /// Reads what the store keeps in memory from the file: the tip, the membership
    /// after it and the id index as `ids` says. At open, and after a reopen, when blocks
    /// applied without waiting for the disk may be gone.
    fn load_cached(&self, ids: Ids) -> Result<(), StoreError> {
        let mut upkeep = self.upkeep.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = self.ids.write().unwrap_or_else(|p| p.into_inner());
        self.load_cached_into(ids, &mut upkeep, &mut index)
    }

    /// [`Store::load_cached`] with the writer's upkeep and the id index locked by
    /// the caller, in that order (the writer's).
    fn load_cached_into(
        &self,
        ids: Ids,
        upkeep: &mut Upkeep,
        index: &mut IdIndex,
    ) -> Result<(), StoreError> {
        let tip = self.tip()?;
        *self.last_tip.lock().unwrap_or_else(|p| p.into_inner()) = Some(tip);
        let membership = self.membership_row(u64::MAX)?;
        *self.membership.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(membership);
        let restored = match ids {
            Ids::Skip => return Ok(()),
            Ids::Load => None,
            Ids::Given(restored) => {
                restored.filter(|restored| restored.fits(tip.log_size, &tip.log_root))
            }
        };
        (*upkeep, *index) = (Upkeep::default(), self.load_ids(&tip, restored)?);
        Ok(())
    }

    /// Rebuilds the id index from the entry index: one sequential scan. The ids must
    /// rebuild every stored node of the Merkle log's lowest stored level and the
    /// tip's log root, unless `restored` vouches for them (a restore checked them
    /// against that root moments ago): a damaged row would otherwise make its entry
    /// unfindable, and the node would answer 404 for an entry it committed (and
    /// take it again if resubmitted). A second thread hashes the ids while this one
    /// reads them. Every run must hold exactly the ids of its log indices. The ids
    /// above the runs go into new runs while a run's worth remains (a database
    /// upgraded, or opened by an older build), the rest into the map. A restore
    /// whose tiles' runs cover the log hands on their filter: nothing is read.
    fn load_ids(&self, tip: &Header, restored: Option<RestoredIds>) -> Result<IdIndex, StoreError> {
        const BATCH: usize = 8192;
        let db = self.db()?;
        let txn = db.begin_read()?;
        let rows = txn.open_table(ENTRY_IDS)?;
        let mut runs = id_runs::directory(&txn.open_table(ID_RUN_DIR)?)?;
        let sealed_to = runs.last().map_or(0, |run| run.to);
        let checked = match restored {
            Some(restored) if sealed_to == tip.log_size => {
                return Ok(IdIndex::restored(
                    self.options.run_ids,
                    restored.filter,
                    runs,
                ));
            }
            restored => restored.is_some(),
        };
        let mut index = IdIndex::new(self.options.run_ids);
        if sealed_to > tip.log_size {
            return Err(corrupt(format!(
                "id runs: they hold log indices up to {sealed_to}, the log {}",
                tip.log_size
            )));
        }
        let run_ids = index.run_ids() as u64;
        if let Handle::Writable(_) = &*db {
            // Rows of no listed run: of a merge a crash interrupted, or merged runs
            // not yet removed.
            let orphans: Vec<_> = id_runs::stored(&txn.open_table(ID_RUNS)?)?
                .into_iter()
                .filter(|run| !runs.contains(run))
                .collect();
            if !orphans.is_empty() {
                remove_runs(&db, &orphans)?;
            }
        }
        // A read-only store cannot write runs; it holds what has none in the map.
        let write_to = match &*db {
            Handle::Writable(_) => sealed_to + (tip.log_size - sealed_to) / run_ids * run_ids,
            Handle::ReadOnly(_) => sealed_to,
        };
        let mut digests = vec![id_runs::Digest::default(); runs.len()];
        let mut built = Vec::new();
        let mut pairs = Vec::new();
        let (held, hashed) = std::thread::scope(|scope| {
            let (batches, to_hash) = std::sync::mpsc::sync_channel::<Vec<Hash>>(4);
            let hashing = (!checked)
                .then(|| {
                    std::thread::Builder::new()
                        .name("open-hash".into())
                        .spawn_scoped(scope, move || {
                            let mut log = CompactRange::new();
                            let mut nodes = Vec::new();
                            for batch in to_hash {
                                for id in &batch {
                                    log.append(leaf_hash(id.as_bytes()), |level, _, node| {
                                        if level == MERKLE_STORED_FROM {
                                            nodes.push(*node);
                                        }
                                    });
                                }
                            }
                            (nodes, log.root())
                        })
                        .map_err(|error| StoreError::Failed(format!("starting a thread: {error}")))
                })
                .transpose()?;
            let mut batch = Vec::with_capacity(BATCH);
            let mut run = 0;
            let read = id_rows::scan(&rows, |first, row| {
                for (log_index, id) in (first..).zip(row) {
                    if log_index < sealed_to {
                        while runs[run].to <= log_index {
                            run += 1;
                        }
                        digests[run].add(id_runs::prefix(&id), log_index);
                        index.insert_sealed(&id);
                    } else if log_index < write_to {
                        pairs.push((id_runs::prefix(&id), log_index));
                        index.insert_sealed(&id);
                        if pairs.len() as u64 == run_ids {
                            let run = id_runs::Run {
                                from: log_index + 1 - run_ids,
                                to: log_index + 1,
                            };
                            write_run(&db, run, std::mem::take(&mut pairs))?;
                            built.push(run);
                        }
                    } else {
                        index.insert(&id, log_index);
                    }
                    if hashing.is_some() {
                        batch.push(id);
                    }
                }
                if batch.len() >= BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    // The hashing thread is gone: its join says why, and is reported first.
                    batches
                        .send(full)
                        .map_err(|_| StoreError::Failed("the hashing thread stopped".into()))?;
                }
                Ok(())
            });
            let _ = batches.send(batch);
            // The hashing thread ends once the sender is gone.
            drop(batches);
            let hashed = hashing
                .map(|hashing| {
                    hashing.join().map_err(|panic| {
                        let why = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        StoreError::Failed(format!("hashing the entry index panicked: {why}"))
                    })
                })
                .transpose()?;
            Ok::<_, StoreError>((read?, hashed))
        })?;
        if held != tip.log_size {
            return Err(corrupt(format!(
                "the entry index holds {held} entries, the log {}",
                tip.log_size
            )));
        }
        if let Some((nodes, root)) = hashed {
            check_lowest_nodes(&txn, &nodes)?;
            if root != tip.log_root {
                return Err(corrupt(format!(
                    "entry index: its ids do not give block {}'s log root",
                    tip.height
                )));
            }
        }
        let stored = txn.open_table(ID_RUNS)?;
        for (run, digest) in runs.iter().zip(digests) {
            id_runs::check(&stored, *run, digest)?;
        }
        runs.extend(built);
        index.set_runs(runs);
        Ok(index)
    }

    /// The open database, or why there is none. Hold it for as long as the
    /// transaction begun on it lives.
    fn db(&self) -> Result<Arc<Handle>, StoreError> {
        let slot = self.database.read().unwrap_or_else(|p| p.into_inner());
        slot.clone().ok_or_else(|| {
            StoreError::Unavailable(
                self.health
                    .failure()
                    .unwrap_or_else(|| "it is being reopened".into()),
            )
        })
    }

    /// Takes note of damage or an I/O failure in `result` before returning it: every
    /// public call goes through here, so none can slip past `/readyz`.
    fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(error) = &result {
            self.health.saw(error);
        }
        result
    }

    /// The I/O failure the store is in (a full disk, a failed write), until
    /// [`Store::recover`] cures it.
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// The first damage any read found since the node started. Damage is not cured
    /// by reopening: the node stays not ready until an operator repairs it.
    pub fn damage(&self) -> Option<String> {
        self.health.damage()
    }

    /// How often the store failed, found damage, and recovered.
    pub fn health(&self) -> HealthCounters {
        self.health.counters()
    }

    /// Recovers from an I/O failure: checks that the file system takes writes again,
    /// closes the failed handle, reopens the file (redb repairs an interrupted
    /// commit), and rebuilds the id index from what is durable. Nothing half-applied
    /// survives: redb keeps the last commit that completed. The engine that writes
    /// calls this with a back-off until it succeeds.
    pub fn recover(&self) -> Result<(), StoreError> {
        let Some(reopen) = &self.reopen else {
            return Err(StoreError::Unavailable(
                "this database cannot be reopened in place; restart the node".into(),
            ));
        };
        // Readers wait for the reload: the index of the failed file may name runs
        // or hold ids the reopened one lost, or miss ones it holds.
        let mut upkeep = self.upkeep.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = self.ids.write().unwrap_or_else(|p| p.into_inner());
        {
            let mut slot = self.database.write().unwrap_or_else(|p| p.into_inner());
            if let Some(database) = slot.take() {
                match Arc::try_unwrap(database) {
                    Ok(database) => database.close(),
                    Err(shared) => {
                        *slot = Some(shared);
                        return Err(StoreError::Unavailable(
                            "a read still holds the failed database; retrying".into(),
                        ));
                    }
                }
            }
            *slot = Some(Arc::new(Handle::Writable(self.observe(reopen())?)));
        }
        let loaded = self.load_cached_into(Ids::Load, &mut upkeep, &mut index);
        if loaded.is_err() {
            // No reads of a file the index does not describe: the next recovery
            // reopens it.
            let taken = self
                .database
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(Ok(database)) = taken.map(Arc::try_unwrap) {
                database.close();
            }
        }
        self.observe(loaded)?;
        drop((index, upkeep));
        let keeps_log = self.wal.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        if keeps_log {
            self.observe(self.open_wal(true))?;
        }
        self.health.recovered();
        Ok(())
    }

    fn id_map(&self) -> RwLockReadGuard<'_, IdIndex> {
        // The map is only ever extended or trimmed whole-entry at a time.
        self.ids.read().unwrap_or_else(|p| p.into_inner())
    }

    fn initialise(&self, genesis: &Block) -> Result<(), StoreError> {
        let db = self.db()?;
        let read = db.begin_read()?;
        let found = read
            .open_table(META)?
            .get(META_CHAIN_HASH)?
            .map(|value| value.value().to_vec());
        drop(read);
        match found {
            Some(found) => {
                let found = Hash(
                    found
                        .try_into()
                        .map_err(|_| corrupt("chain hash is not 32 bytes"))?,
                );
                if found != self.chain_hash {
                    return Err(StoreError::WrongChain {
                        path: self.path.clone(),
                        found,
                        expected: self.chain_hash,
                        chain_id: self.spec.chain_id.clone(),
                    });
                }
                Ok(())
            }
            None if matches!(*db, Handle::ReadOnly(_)) => Err(corrupt(
                "the database holds no chain: its meta table is empty",
            )),
            None => {
                let txn = self.begin_write()?;
                write_identity(&txn, &self.spec, genesis)?;
                txn.commit()?;
                Ok(())
            }
        }
    }

    fn read_history_from(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let Some(value) = meta.get(META_HISTORY_FROM)? else {
            return Ok(1);
        };
        let bytes: [u8; 8] = value
            .value()
            .try_into()
            .map_err(|_| corrupt("meta history_from is not 8 bytes"))?;
        match u64::from_be_bytes(bytes) {
            0 => Err(corrupt("meta history_from is 0")),
            from => Ok(from),
        }
    }

    /// The lowest height above genesis whose block this database holds: 1, unless
    /// it was restored from a snapshot at a later height.
    pub fn history_from(&self) -> u64 {
        self.history_from.load(std::sync::atomic::Ordering::Acquire)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_two_phase_commit(self.options.two_phase_commit);
        Ok(txn)
    }

    /// The chain this database holds.
    pub fn spec(&self) -> &ChainSpec {
        &self.spec
    }

    /// SHA-256 of the chain spec.
    pub fn chain_hash(&self) -> Hash {
        self.chain_hash
    }

    /// Hash of block 0.
    pub fn genesis_hash(&self) -> Hash {
        self.genesis_hash
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Header of the highest applied block, its certificate verified.
    pub fn tip(&self) -> Result<Header, StoreError> {
        let tip = self.observe(self.read(|store, tables| store.checked_tip(tables)))?;
        self.remember_tip(tip);
        Ok(tip)
    }

    /// The last tip this store read or applied, without reading: what status shows
    /// while the database is unavailable.
    pub fn last_tip(&self) -> Option<Header> {
        *self.last_tip.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember_tip(&self, tip: Header) {
        let mut last = self.last_tip.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|last| last.height <= tip.height) {
            *last = Some(tip);
        }
    }

    /// The tip's header and the log's right edge at the tip, from one snapshot: what
    /// the next block is built on. The edge must give the tip's log root.
    pub fn tip_with_log(&self) -> Result<(Header, CompactRange), StoreError> {
        self.observe(self.read(|store, tables| {
            let tip = store.checked_tip(tables)?;
            let log = CompactRange::load(&tables.stored_nodes(), tip.log_size)?;
            if log.root() != tip.log_root {
                return Err(corrupt(format!(
                    "block {}: the stored log does not give its log root",
                    tip.height
                )));
            }
            Ok((tip, log))
        }))
    }

    /// Runs `read` over the tables of one read transaction.
    fn read<T>(
        &self,
        read: impl FnOnce(&Store, &verify::Tables) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Read before the transaction begins: it then holds every block from there.
        let history_from = self.history_from();
        let db = self.db()?;
        let txn = db.begin_read()?;
        let tables = verify::Tables::open(&txn, history_from)?;
        read(self, &tables)
    }

    /// The block at `height`, checked against the chain around it.
    pub fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        self.observe(self.read(|store, tables| store.checked_block(tables, height)))
    }

    /// The block with `hash`, checked against the chain around it.
    pub fn block_by_hash(&self, hash: &Hash) -> Result<Option<Block>, StoreError> {
        self.observe(self.read(|store, tables| {
            let Some(height) = tables.hashes.get(hash.as_bytes())?.map(|h| h.value()) else {
                return Ok(None);
            };
            let block = store.checked_block(tables, height)?.ok_or_else(|| {
                corrupt(format!(
                    "the hash index puts block {hash} at height {height}, which is empty"
                ))
            })?;
            if block.hash() != *hash {
                return Err(corrupt(format!(
                    "the hash index puts block {hash} at height {height}, which holds \
                     block {}",
                    block.hash()
                )));
            }
            Ok(Some(block))
        }))
    }

    /// A committed block and its certificate, both checked: what a lagging peer is
    /// sent. Genesis is no committed block: it has no certificate.
    pub fn committed_block(
        &self,
        height: u64,
    ) -> Result<Option<(Block, CommitCertificate)>, StoreError> {
        self.observe(self.read(|store, tables| {
            if height == 0 {
                return Ok(None);
            }
            let Some(block) = store.checked_block(tables, height)? else {
                return Ok(None);
            };
            let certificate = store.checked_certificate(tables, &block.header)?;
            Ok(Some((block, certificate)))
        }))
    }

    /// Where the entry `id` was committed.
    pub fn entry_location(&self, id: &Hash) -> Result<Option<EntryLocation>, StoreError> {
        self.observe((|| {
            let history_from = self.history_from();
            let map = self.id_map();
            let db = self.db()?;
            let txn = db.begin_read()?;
            location_in(&txn, &map, id, history_from)
        })())
    }

    /// The header of the block at `height`, checked against the chain around it,
    /// without decoding its entries.
    /// Below the held history (a database restored from a snapshot), the headers
    /// the difficulty policy reads are kept; others are [`StoreError::NotHeld`].
    pub fn header(&self, height: u64) -> Result<Option<Header>, StoreError> {
        self.observe(self.read(|store, tables| {
            // Below the history a kept header, unless the block was added since this
            // read's `history_from` was taken.
            if height > 0 && height < tables.history_from && tables.blocks.get(height)?.is_none() {
                return store.checked_base_header(tables, height).map(Some);
            }
            store.checked_header(tables, height, verify::Anchor::Successor)
        }))
    }

    /// A committed entry and its receipt (its inclusion proof under the header of its
    /// block, and that block's certificate), read from one snapshot and checked as a
    /// client would check it.
    pub fn entry_with_receipt(&self, id: &Hash) -> Result<Option<(Entry, Receipt)>, StoreError> {
        self.observe((|| {
            let history_from = self.history_from();
            let map = self.id_map();
            let db = self.db()?;
            let txn = db.begin_read()?;
            self.checked_receipt(&txn, &map, id, history_from)
        })())
    }

    /// For each id, whether it is committed, read in one transaction (the admission
    /// stage checks a batch of submits at once).
    pub fn committed(&self, ids: &[Hash]) -> Result<Vec<bool>, StoreError> {
        self.observe((|| {
            let map = self.id_map();
            let db = self.db()?;
            // A fresh id is ruled out by the filter; opening a read transaction and
            // the id tables for it cost a backup's consensus thread about 5% of its
            // time, once per entry of every block it validates. A failing store
            // still reads, so that its failure shows (as `surely_uncommitted`).
            if self.failure().is_none() && map.surely_new(ids) {
                return Ok(vec![false; ids.len()]);
            }
            let txn = db.begin_read()?;
            let tables = ReadIdTables::open(&txn)?;
            let tables = tables.tables();
            ids.iter()
                .map(|id| Ok(map.locate(&tables, id)?.is_some()))
                .collect()
        })())
    }

    /// Whether `id` is surely not committed, from memory alone: the id filter rules
    /// it out and the store is not failing. False means "ask
    /// [`Store::committed`]", also when the map is locked: an async caller must not
    /// wait behind an apply, or behind readers that read the disk under the lock.
    pub fn surely_uncommitted(&self, id: &Hash) -> bool {
        let Ok(map) = self.ids.try_read() else {
            return false;
        };
        self.failure().is_none() && !map.may_hold(id)
    }

    /// The commit certificate of the block at `height` (none for genesis), verified.
    pub fn certificate(&self, height: u64) -> Result<Option<CommitCertificate>, StoreError> {
        self.observe(self.read(|store, tables| {
            if height == 0 {
                return Ok(None);
            }
            match store.checked_header(tables, height, verify::Anchor::Certificate)? {
                Some(header) => store.checked_certificate(tables, &header).map(Some),
                None => Ok(None),
            }
        }))
    }

    /// Inclusion proof of log leaf `log_index` in the log of `log_size` leaves,
    /// checked against the certified root at that size.
    pub fn inclusion_proof(&self, log_index: u64, log_size: u64) -> Result<Vec<Hash>, StoreError> {
        self.observe(self.read(|store, tables| {
            store.within_log(tables, log_size)?;
            let nodes = tables.stored_nodes();
            let proof = merkle::inclusion_proof(&nodes, log_index, log_size)?;
            let root = store.checked_root(tables, log_size)?;
            let leaf = nodes.node(0, log_index)?;
            merkle::verify_inclusion(&leaf, log_index, log_size, &proof, &root).map_err(|_| {
                corrupt(format!(
                    "the stored log does not prove log index {log_index} at size {log_size}"
                ))
            })?;
            Ok(proof)
        }))
    }

    /// The roots of the log at two sizes and the consistency proof between them, each
    /// checked against the certified headers above them.
    pub fn consistency(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, StoreError> {
        self.observe(self.read(|store, tables| {
            store.within_log(tables, new_size)?;
            let from_root = store.checked_root(tables, old_size)?;
            let to_root = store.checked_root(tables, new_size)?;
            let proof = merkle::consistency_proof(&tables.stored_nodes(), old_size, new_size)?;
            merkle::verify_consistency(old_size, new_size, &from_root, &to_root, &proof).map_err(
                |_| {
                    corrupt(format!(
                        "the stored log gives no valid consistency proof from {old_size} to \
                         {new_size}"
                    ))
                },
            )?;
            Ok(ConsistencyProof {
                from_root,
                to_root,
                proof,
            })
        }))
    }

    /// Root of the log at `log_size` (any size up to the tip's, not only block ends),
    /// checked against the certified header above it.
    pub fn log_root(&self, log_size: u64) -> Result<Hash, StoreError> {
        self.observe(self.read(|store, tables| {
            store.within_log(tables, log_size)?;
            store.checked_root(tables, log_size)
        }))
    }

    /// Refuses sizes beyond the committed log.
    fn within_log(&self, tables: &verify::Tables, log_size: u64) -> Result<(), StoreError> {
        let tip = self.checked_tip(tables)?;
        if log_size > tip.log_size {
            return Err(ChainError::from(TreeRangeError::BeyondLog {
                size: log_size,
                committed: tip.log_size,
            })
            .into());
        }
        Ok(())
    }

    /// The membership after the tip: the one in force, and a change ordered but not
    /// yet in force.
    pub fn membership(&self) -> Arc<Membership> {
        Arc::clone(&self.membership.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The membership that orders the block after the tip: [`Store::membership`] with
    /// a change due there put in force.
    pub fn membership_in_force(&self) -> Membership {
        let mut membership = Membership::clone(&self.membership());
        let tip = self.last_tip().or_else(|| self.tip().ok());
        if let Some(tip) = tip {
            membership.advance_to(tip.height + 1);
        }
        membership
    }

    /// Checks `certificate` for the block `hash` at `height` against the membership
    /// that certifies that height, under its epoch's signing domain.
    pub fn verify_certificate(
        &self,
        certificate: &CommitCertificate,
        height: u64,
        hash: &Hash,
    ) -> Result<(), StoreError> {
        // A chain without admins never reconfigures: its genesis members certify
        // every height.
        let membership = match self.spec.admins {
            None => Membership::genesis(&self.spec),
            Some(_) => self.membership_at(height)?,
        };
        membership
            .verify_certificate(&self.chain_hash, certificate, height, hash)
            .map_err(StoreError::Chain)
    }

    /// The membership that orders and certifies the block at `height`, from the
    /// `membership` table: its row of the epoch in force there, with a change that
    /// is due by then put in force (for the height above the tip).
    pub fn membership_at(&self, height: u64) -> Result<Membership, StoreError> {
        Ok(self.membership_row(height)?.as_of(height))
    }

    /// The memberships the chain went through, as far as this store knows.
    pub fn membership_history(&self) -> Result<MembershipHistory, StoreError> {
        Ok(MembershipHistory::verify(
            &self.spec,
            &self.membership_changes()?,
        )?)
    }

    /// The membership changes ordered since genesis, in block order, each with the
    /// receipt of its entry: what a client needs to check a receipt certified after
    /// them ([`crate::chain::MembershipHistory::verify`]). Built once per change.
    pub fn membership_changes(&self) -> Result<Arc<Vec<ChangeProof>>, StoreError> {
        let membership = self.membership();
        let count = membership.epoch + u64::from(membership.pending.is_some());
        let mut cached = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, changes)) = cached.as_ref().filter(|(known, _)| *known == count) {
            debug_assert_eq!(*known, changes.len() as u64);
            return Ok(Arc::clone(changes));
        }
        let mut changes = Vec::new();
        for height in self.change_heights()? {
            let block = self.block(height)?.ok_or_else(|| {
                corrupt(format!(
                    "the membership names a change in block {height}, which is not held"
                ))
            })?;
            let Some(entry) = block.entries.iter().find(|e| e.is_reconfiguration()) else {
                return Err(corrupt(format!(
                    "the membership names a change in block {height}, which holds none"
                )));
            };
            let (entry, receipt) = self
                .entry_with_receipt(&entry.id())?
                .ok_or_else(|| corrupt(format!("the change in block {height} has no receipt")))?;
            changes.push(ChangeProof { entry, receipt });
        }
        let changes = Arc::new(changes);
        *cached = Some((count, Arc::clone(&changes)));
        Ok(changes)
    }

    /// The heights of the blocks that hold membership changes, in order: each stored
    /// epoch's change on its way.
    fn change_heights(&self) -> Result<Vec<u64>, StoreError> {
        self.observe((|| {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = match txn.open_table(MEMBERSHIP) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(error) => return Err(error.into()),
            };
            let mut heights = Vec::new();
            for row in table.iter()? {
                let (since, bytes) = row?;
                let membership = Membership::decode(bytes.value()).map_err(|error| {
                    corrupt(format!(
                        "the membership from height {}: {error}",
                        since.value()
                    ))
                })?;
                heights.extend(membership.pending.map(|pending| pending.height));
            }
            Ok(heights)
        })())
    }

    /// The `membership` table's row of the epoch in force at `height`, as stored.
    pub(super) fn membership_row(&self, height: u64) -> Result<Membership, StoreError> {
        self.observe((|| {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = match txn.open_table(MEMBERSHIP) {
                Ok(table) => table,
                // A read-only database of a chain that never reconfigured, created
                // before the table was.
                Err(redb::TableError::TableDoesNotExist(_)) => {
                    return Ok(Membership::genesis(&self.spec))
                }
                Err(error) => return Err(error.into()),
            };
            let row = table.range(..=height)?.next_back().transpose()?;
            match row {
                None => Ok(Membership::genesis(&self.spec)),
                Some((since, bytes)) => {
                    let membership = Membership::decode(bytes.value()).map_err(|error| {
                        corrupt(format!(
                            "the membership from height {}: {error}",
                            since.value()
                        ))
                    })?;
                    if membership.since != since.value() {
                        return Err(corrupt(format!(
                            "the membership stored at height {} says it starts at {}",
                            since.value(),
                            membership.since
                        )));
                    }
                    Ok(membership)
                }
            }
        })())
    }

    /// The membership after `block` on the current one, when the block changes it;
    /// a reconfiguration the membership in force refuses refuses the block.
    fn membership_after(&self, block: &Block) -> Result<Option<Membership>, ChainError> {
        let current = self.membership();
        if current.pending.is_none() && !block.entries.iter().any(Entry::is_reconfiguration) {
            return Ok(None);
        }
        let mut next = (*current).clone();
        next.apply_block(&self.spec, block.header.height, &block.entries)?;
        Ok(Some(next).filter(|next| *next != *current))
    }

    /// Validates `block` as the next block on the current tip (DESIGN.md,
    /// "Validation"), reading the tip, the log's right edge and the entry index from
    /// one consistent snapshot.
    pub fn validate_next(
        &self,
        block: &Block,
        required_difficulty: u32,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.observe((|| {
            let map = self.id_map();
            let db = self.db()?;
            let txn = db.begin_read()?;
            let (parent, range) = tip_and_log_in(&txn)?;
            let context = ValidationContext {
                chain_hash: &self.chain_hash,
                params: &self.spec.params,
                parent: &parent,
                required_difficulty,
                now_ms,
            };
            let tables = ReadIdTables::open(&txn)?;
            validate_block(&context, block, &range, &ReadIndex(&map, &tables.tables()))?;
            self.membership_after(block)?;
            Ok(())
        })())
    }

    /// Appends `block` and its commit certificate in one durable write transaction.
    ///
    /// The caller has validated the block (PoW, signatures, policy); this re-checks,
    /// for free, everything the write touches anyway: it must extend the tip, its
    /// entries must be new, its log root must match the nodes written, and the
    /// certificate must name this block. On any error nothing is written. Returns the
    /// log nodes the block's entries touched, which prove them without a read.
    pub fn apply_block(
        &self,
        block: &Block,
        certificate: &CommitCertificate,
    ) -> Result<AppendedNodes, StoreError> {
        self.applied(block, certificate, true)
    }

    /// [`Store::apply_block`] without waiting for the disk: the block is durable with
    /// the next durable write ([`Store::sync`], or records [`Store::persist`] writes
    /// into the tables). A crash before loses it here, not in the cluster: a quorum
    /// committed it, and a member that lost it fetches it again. A block that changes
    /// the membership is written durably all the same.
    pub fn apply_block_deferred(
        &self,
        block: &Block,
        certificate: &CommitCertificate,
    ) -> Result<AppendedNodes, StoreError> {
        self.applied(block, certificate, false)
    }

    fn applied(
        &self,
        block: &Block,
        certificate: &CommitCertificate,
        durable: bool,
    ) -> Result<AppendedNodes, StoreError> {
        let nodes = self.observe(self.append(block, certificate, durable))?;
        self.remember_tip(block.header);
        Ok(nodes)
    }

    /// Makes every block applied so far durable (one empty durable commit).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.observe((|| {
            self.begin_write()?.commit()?;
            Ok(())
        })())
    }

    fn append(
        &self,
        block: &Block,
        certificate: &CommitCertificate,
        durable: bool,
    ) -> Result<AppendedNodes, StoreError> {
        let header = &block.header;
        let hash = header.hash();
        if certificate.height != header.height || certificate.block_hash != hash {
            return Err(ChainError::from(CertificateError::OtherBlock {
                certified: certificate.block_hash,
                certified_height: certificate.height,
                block: hash,
                height: header.height,
            })
            .into());
        }
        if header.chain_hash != self.chain_hash {
            return Err(ChainError::WrongChain {
                expected: self.chain_hash,
                found: header.chain_hash,
            }
            .into());
        }
        let membership = self.membership_after(block)?;
        // Held until the id index has taken what this block wrote: the next writer
        // must not begin before (a run or merge it did not see), and recovery
        // reloads nothing under it.
        let mut upkeep = self.upkeep.lock().unwrap_or_else(|p| p.into_inner());
        let mut txn = self.begin_write()?;
        if !durable && membership.is_none() {
            without_waiting(&mut txn)?;
        }
        let mut new_ids = Vec::with_capacity(block.entries.len());
        let mut appended;
        let sealed;
        let merged;
        let upkeep_before;
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            let tip = tip_in(&blocks)?;
            let tip_hash = tip.hash();
            // What the write builds on is checked like any read: a damaged tip is
            // damage, not a block the caller got wrong.
            let indexed = txn
                .open_table(BLOCK_HASHES)?
                .get(tip_hash.as_bytes())?
                .map(|height| height.value());
            if indexed != Some(tip.height) {
                return Err(corrupt(format!(
                    "block {}: its hash {tip_hash} is not indexed at its height",
                    tip.height
                )));
            }
            if header.height != tip.height + 1 {
                return Err(ChainError::WrongHeight {
                    expected: tip.height + 1,
                    found: header.height,
                }
                .into());
            }
            if header.prev_hash != tip_hash {
                return Err(ChainError::WrongParent {
                    expected: tip_hash,
                    found: header.prev_hash,
                }
                .into());
            }
            let expected_size = tip.log_size + block.entries.len() as u64;
            if header.log_size != expected_size {
                return Err(ChainError::LogSizeMismatch {
                    expected: expected_size,
                    found: header.log_size,
                }
                .into());
            }

            let mut nodes = txn.open_table(MERKLE_NODES)?;
            let mut ids = txn.open_table(ENTRY_IDS)?;
            let mut runs = txn.open_table(ID_RUNS)?;
            let mut range = CompactRange::load(&StoredNodes::new(&nodes, &ids), tip.log_size)?;
            if range.root() != tip.log_root {
                return Err(corrupt(format!(
                    "block {}: the stored log does not give its log root",
                    tip.height
                )));
            }
            appended = AppendedNodes::new(&range);
            let mut completed = Vec::new();
            let mut in_block = HashSet::with_capacity(block.entries.len());
            // The read guard ends with this block, before the write lock below.
            let map = self.id_map();
            let tables = IdTables {
                rows: &ids,
                runs: &runs,
            };
            let block_ids: Vec<Hash> = block.entries.iter().map(Entry::id).collect();
            // Almost always every id is new: one pass over the filter says so, and
            // no id is looked up one by one.
            let fresh = map.surely_new(&block_ids);
            for (log_index, id) in (tip.log_size..).zip(block_ids) {
                if !in_block.insert(id) || (!fresh && map.locate(&tables, &id)?.is_some()) {
                    return Err(ChainError::DuplicateEntry { id }.into());
                }
                new_ids.push((id, log_index));
                range.append(leaf_hash(id.as_bytes()), |level, index, node| {
                    appended.record(level, index, node);
                    if level >= MERKLE_STORED_FROM {
                        completed.push(((level, index), *node));
                    }
                });
            }
            for (key, node) in &completed {
                nodes.insert(*key, node.as_bytes())?;
            }
            // Appended in log order: these writes fill the table's last pages.
            id_rows::append(&mut ids, tip.log_size, new_ids.iter().map(|(id, _)| *id))?;
            if !block.entries.is_empty() {
                txn.open_table(LOG_STARTS)?
                    .insert(tip.log_size, header.height)?;
            }
            let root = range.root();
            if root != header.log_root {
                return Err(ChainError::LogRootMismatch {
                    expected: root,
                    found: header.log_root,
                }
                .into());
            }
            blocks.insert(header.height, block.encode().as_slice())?;
            txn.open_table(BLOCK_HASHES)?
                .insert(hash.as_bytes(), header.height)?;
            txn.open_table(CERTIFICATES)?
                .insert(header.height, certificate.encode().as_slice())?;
            if let Some(membership) = &membership {
                // One row per epoch, from where it is in force; a change recorded
                // on its way rewrites the epoch's row.
                txn.open_table(MEMBERSHIP)?
                    .insert(membership.since, membership.encode().as_slice())?;
            }
            // Enough ids in memory: they go to disk as a run, with the block.
            sealed = match map.run_due(&new_ids, header.log_size) {
                Some((run, pairs)) => {
                    id_runs::write(&mut runs, &mut txn.open_table(ID_RUN_DIR)?, run, pairs)?;
                    Some(run)
                }
                None => None,
            };
            // Last, as nothing after it may fail: a bounded step of the runs' upkeep,
            // which may merge the run just written. Should the commit fail, it is
            // undone with the transaction.
            let mut current = map.runs().to_vec();
            current.extend(sealed);
            let before = upkeep.clone();
            let stepped = upkeep.step(
                &mut runs,
                &mut txn.open_table(ID_RUN_DIR)?,
                &current,
                block.entries.len(),
                &self.options,
            );
            merged = stepped.inspect_err(|_| *upkeep = before.clone())?;
            upkeep_before = before;
        }
        // The map learns the ids before the commit, under the write lock, so the next
        // writer cannot miss them; should the commit fail they are taken out again
        // (and until then they are candidates that the entry index does not confirm).
        {
            let mut map = self.ids.write().unwrap_or_else(|p| p.into_inner());
            for (id, log_index) in &new_ids {
                map.insert(id, *log_index);
            }
        }
        if let Err(error) = txn.commit() {
            let mut map = self.ids.write().unwrap_or_else(|p| p.into_inner());
            for (id, log_index) in &new_ids {
                map.remove(id, *log_index);
            }
            // The merge goes on from where it was: its rows are written again.
            *upkeep = upkeep_before;
            return Err(error.into());
        }
        if sealed.is_some() || merged.is_some() {
            let mut map = self.ids.write().unwrap_or_else(|p| p.into_inner());
            if let Some(run) = sealed {
                map.sealed(run);
            }
            if let Some(merge) = merged {
                map.merged(merge.inputs(), merge.output());
            }
        }
        if let Some(membership) = membership {
            *self.membership.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(membership);
        }
        Ok(appended)
    }

    /// [`Store::check`] without progress reports: the tip's height once everything
    /// checked out. For tests and tools that only need the verdict.
    pub fn verify_chain(&self) -> Result<u64, StoreError> {
        self.check(&mut |_| {}).map(|report| report.tip)
    }
}

/// Makes `txn` commit without waiting for the disk: the next durable commit takes
/// it along.
fn without_waiting(txn: &mut redb::WriteTransaction) -> Result<(), StoreError> {
    txn.set_durability(redb::Durability::None)
        .map_err(|error| StoreError::Failed(error.to_string()))
}

/// Writes `pairs` as `run` in a transaction of its own, without waiting for the
/// disk: the next durable commit takes it along, and an open after a crash
/// before then writes it again.
fn write_run(db: &Handle, run: id_runs::Run, pairs: Vec<(u64, u64)>) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    without_waiting(&mut txn)?;
    id_runs::write(
        &mut txn.open_table(ID_RUNS)?,
        &mut txn.open_table(ID_RUN_DIR)?,
        run,
        pairs,
    )?;
    txn.commit()?;
    Ok(())
}

/// Removes the rows of `orphans`, runs no longer listed, in a transaction of its
/// own without waiting for the disk (what a crash undoes, the next open removes).
fn remove_runs(db: &Handle, orphans: &[id_runs::Run]) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    without_waiting(&mut txn)?;
    {
        let mut rows = txn.open_table(ID_RUNS)?;
        for run in orphans {
            id_runs::remove(&mut rows, *run)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Checks the stored Merkle nodes of the lowest stored level against `nodes`,
/// recomputed from the ids.
fn check_lowest_nodes(txn: &ReadTransaction, nodes: &[Hash]) -> Result<(), StoreError> {
    let level = MERKLE_STORED_FROM;
    let stored = txn.open_table(MERKLE_NODES)?;
    let mut stored = stored.range((level, 0u64)..(level + 1, 0u64))?;
    for (index, node) in (0u64..).zip(nodes) {
        let found = stored.next().transpose()?;
        if !found
            .is_some_and(|(key, found)| key.value() == (level, index) && *found.value() == node.0)
        {
            return Err(corrupt(format!(
                "entry index: the ids up to log index {} do not give the Merkle node \
                 ({level}, {index}) stored over them",
                ((index + 1) << level) - 1
            )));
        }
    }
    Ok(())
}

/// The highest block's header, decoding only its first [`HEADER_LEN`] bytes.
fn tip_in(blocks: &impl ReadableTable<u64, &'static [u8]>) -> Result<Header, StoreError> {
    let (height, bytes) = blocks.last()?.ok_or_else(|| corrupt("no genesis block"))?;
    let bytes = bytes.value();
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| corrupt(format!("block {} is truncated", height.value())))
        .and_then(|bytes| Header::decode(bytes).map_err(corrupt))?;
    if header.height != height.value() {
        return Err(corrupt(format!(
            "block stored at {} claims height {}",
            height.value(),
            header.height
        )));
    }
    Ok(header)
}

/// Writes what makes a database this chain's: its identity in `meta` and the genesis
/// block.
fn write_identity(
    txn: &redb::WriteTransaction,
    spec: &ChainSpec,
    genesis: &Block,
) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    meta.insert(META_CHAIN_HASH, spec.chain_hash().as_bytes().as_slice())?;
    meta.insert(META_GENESIS_HASH, genesis.hash().as_bytes().as_slice())?;
    meta.insert(META_CHAIN_SPEC, spec.encode().as_slice())?;
    txn.open_table(BLOCKS)?
        .insert(0, genesis.encode().as_slice())?;
    txn.open_table(BLOCK_HASHES)?
        .insert(genesis.hash().as_bytes(), 0)?;
    Ok(())
}

/// Opens the redb file at `path`, or with `create` makes a new one there; redb's
/// reason (not a database, empty, truncated, locked by another process) is kept for
/// the operator.
fn open_file(
    path: &Path,
    cache_bytes: Option<usize>,
    create: bool,
) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    if let Some(bytes) = cache_bytes {
        builder.set_cache_size(bytes);
    }
    match create {
        true => builder.create(path),
        false => builder.open(path),
    }
    .map_err(|error| {
        if std::fs::metadata(path).is_ok_and(|metadata| metadata.len() == 0) {
            return StoreError::Open {
                path: path.to_owned(),
                reason: "it is empty (0 bytes), not a database. If the node lost its disk, \
                     remove the file: a member then joins from the others and votes again \
                     once the chain has passed where it may have voted. If it should hold \
                     the chain, restore it from a backup (`ledgerd snapshot restore`)"
                    .to_owned(),
            };
        }
        open_refused(path, error)
    })
}

/// The tip's header and the log's right edge, read in one transaction.
fn tip_and_log_in(txn: &ReadTransaction) -> Result<(Header, CompactRange), StoreError> {
    let tip = tip_in(&txn.open_table(BLOCKS)?)?;
    let nodes = txn.open_table(MERKLE_NODES)?;
    let ids = txn.open_table(ENTRY_IDS)?;
    let range = CompactRange::load(&StoredNodes::new(&nodes, &ids), tip.log_size)?;
    Ok((tip, range))
}

/// The Merkle log as stored (read-only or inside the write transaction): nodes from
/// level [`MERKLE_STORED_FROM`] up from their table, the ones below recomputed from
/// the at most eight entry ids they cover, all in one row.
struct StoredNodes<'a, N, I> {
    nodes: &'a N,
    ids: &'a I,
}

impl<'a, N, I> StoredNodes<'a, N, I> {
    fn new(nodes: &'a N, ids: &'a I) -> Self {
        StoredNodes { nodes, ids }
    }
}

impl<N, I> NodeSource for StoredNodes<'_, N, I>
where
    N: ReadableTable<(u8, u64), &'static [u8; 32]>,
    I: ReadableTable<u64, &'static [u8]>,
{
    type Error = StoreError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        if level < MERKLE_STORED_FROM {
            let start = index << level;
            return Ok(crate::chain::snapshot::tile_root(&id_rows::ids_in(
                self.ids,
                start..start + (1 << level),
            )?));
        }
        let node = self.nodes.get((level, index))?;
        node.map(|value| Hash(*value.value()))
            .ok_or_else(|| corrupt(format!("Merkle node ({level}, {index}) is missing")))
    }
}

/// The entry index as seen by one read transaction.
struct ReadIndex<'a, R, S>(&'a IdIndex, &'a IdTables<'a, R, S>);

impl<R, S> EntryIndex for ReadIndex<'_, R, S>
where
    R: ReadableTable<u64, &'static [u8]>,
    S: id_runs::RunTable,
{
    fn contains(&self, id: &Hash) -> Result<bool, ChainError> {
        self.0
            .locate(self.1, id)
            .map(|found| found.is_some())
            .map_err(|error| ChainError::Lookup(error.to_string()))
    }

    fn contains_each(&self, ids: &[Hash]) -> Result<Vec<bool>, ChainError> {
        if self.0.surely_new(ids) {
            return Ok(vec![false; ids.len()]);
        }
        ids.iter().map(|id| self.contains(id)).collect()
    }
}

/// Where `id` sits, read in `txn`; an entry committed below `history_from` (the
/// first held block) is [`StoreError::NotHeld`]: its block is not known.
fn location_in(
    txn: &ReadTransaction,
    map: &IdIndex,
    id: &Hash,
    history_from: u64,
) -> Result<Option<EntryLocation>, StoreError> {
    let Some(log_index) = map.locate(&ReadIdTables::open(txn)?.tables(), id)? else {
        return Ok(None);
    };
    let starts = txn.open_table(LOG_STARTS)?;
    let (start, height) = match starts.range(..=log_index)?.next_back().transpose()? {
        Some((start, height)) => (start.value(), height.value()),
        None if history_from > 1 => {
            return Err(StoreError::NotHeld {
                what: format!("the block of entry {id} (log index {log_index})"),
                from: history_from,
            })
        }
        None => {
            return Err(corrupt(format!(
                "no block starts at or before log index {log_index}"
            )))
        }
    };
    let position = u32::try_from(log_index - start).map_err(|_| {
        corrupt(format!(
            "log index {log_index} is far beyond its block start {start}"
        ))
    })?;
    Ok(Some(EntryLocation {
        height,
        position,
        log_index,
    }))
}

/// A database in memory, for the storage modules' unit tests.
#[cfg(test)]
fn memory_database() -> Database {
    Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .expect("a database in memory")
}
