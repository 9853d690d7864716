//! The node's redb database behind one [`Store`].
//!
//! Tables are defined by the `ledger-migrations` crate (the schema and its upgrade
//! steps in one place). Applying a block is one write transaction with immediate
//! durability: the block, its hash index, its entries' index, the Merkle nodes it
//! completes and its commit certificate become durable together or not at all, and
//! [`Store::apply_block`] returns only after the commit. Reads use read transactions,
//! which never block the single writer.
//!
//! Entries are indexed append-only: `entry_ids` maps each log index to its entry id,
//! so a block's index writes land on the table's last pages instead of one random
//! B-tree page per entry (benches/README.md, "store"). Lookups by id go through
//! [`IdMap`], an in-memory map from an id's first 8 bytes to log indices, rebuilt at
//! open and confirmed against `entry_ids` on every hit.
//!
//! Every call blocks on disk IO: async callers use `spawn_blocking`.

mod consensus;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use ledger_migrations::schema::{
    BLOCKS, BLOCK_HASHES, CERTIFICATES, ENTRY_IDS, LOG_STARTS, MERKLE_NODES, META,
};
use ledger_migrations::MigrationError;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::chain::merkle::{self, leaf_hash, AppendedNodes, NodeSource};
use crate::chain::{
    validate_block, Block, ChainError, ChainSpec, CommitCertificate, CompactRange, Entry,
    EntryIndex, Hash, Header, Receipt, ValidationContext, HEADER_LEN,
};

type MerkleTable = redb::ReadOnlyTable<(u8, u64), &'static [u8; 32]>;

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
    /// Stored data that does not decode or does not fit together.
    #[error("corrupt database: {0}")]
    Corrupt(String),
    /// A store call that did not complete (its task panicked), or an error already
    /// logged and reported again to each caller it failed.
    #[error("store call failed: {0}")]
    Failed(String),
    /// A block refused by the chain rules.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// redb failed.
    #[error("database error: {0}")]
    Database(#[from] redb::Error),
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

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Entry ids by their first 8 bytes → log index. About 20 bytes of memory per entry;
/// a hit is only a candidate until `entry_ids` confirms the full id, so prefix
/// collisions (and entries of a commit that failed) cost a read, never a wrong answer.
#[derive(Debug, Default)]
struct IdMap {
    first: HashMap<u64, u64>,
    /// Further log indices of prefixes that occur more than once.
    more: HashMap<u64, Vec<u64>>,
}

impl IdMap {
    fn prefix(id: &Hash) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&id.0[..8]);
        u64::from_be_bytes(bytes)
    }

    fn insert(&mut self, id: &Hash, log_index: u64) {
        let prefix = IdMap::prefix(id);
        if let Some(&existing) = self.first.get(&prefix) {
            if existing != log_index {
                self.more.entry(prefix).or_default().push(log_index);
            }
        } else {
            self.first.insert(prefix, log_index);
        }
    }

    fn remove(&mut self, id: &Hash, log_index: u64) {
        let prefix = IdMap::prefix(id);
        if let Some(more) = self.more.get_mut(&prefix) {
            more.retain(|&index| index != log_index);
            if more.is_empty() {
                self.more.remove(&prefix);
            }
        }
        if self.first.get(&prefix) == Some(&log_index) {
            match self.more.get_mut(&prefix).and_then(Vec::pop) {
                Some(next) => {
                    self.first.insert(prefix, next);
                }
                None => {
                    self.first.remove(&prefix);
                }
            }
        }
    }

    /// The log index holding `id`, confirmed in `ids` (a table of `entry_ids`).
    fn locate(
        &self,
        ids: &impl ReadableTable<u64, &'static [u8; 32]>,
        id: &Hash,
    ) -> Result<Option<u64>, StoreError> {
        let prefix = IdMap::prefix(id);
        let candidates = self
            .first
            .get(&prefix)
            .into_iter()
            .chain(self.more.get(&prefix).into_iter().flatten());
        for &log_index in candidates {
            if ids
                .get(log_index)?
                .is_some_and(|stored| stored.value() == id.as_bytes())
            {
                return Ok(Some(log_index));
            }
        }
        Ok(None)
    }
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            two_phase_commit: true,
        }
    }
}

/// The ledger database of one node.
pub struct Store {
    database: Database,
    path: PathBuf,
    spec: ChainSpec,
    chain_hash: Hash,
    genesis_hash: Hash,
    options: StoreOptions,
    ids: RwLock<IdMap>,
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
        let database = create_file(path)?;
        Store::from_database(database, path.to_owned(), spec, options)
    }

    /// Like [`Store::open`] over a database already opened by the caller, on any redb
    /// storage backend (tests inject faults this way); `path` names it in errors.
    pub fn from_database(
        database: Database,
        path: PathBuf,
        spec: &ChainSpec,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        ledger_migrations::migrate(&database).map_err(|source| StoreError::Schema {
            path: path.clone(),
            source,
        })?;
        let genesis = spec.genesis_block();
        let store = Store {
            database,
            path,
            spec: spec.clone(),
            chain_hash: spec.chain_hash(),
            genesis_hash: genesis.hash(),
            options,
            ids: RwLock::new(IdMap::default()),
        };
        store.initialise(&genesis)?;
        // Reading the tip now turns a damaged file into an error at start-up rather
        // than at the first request.
        let tip = store.tip()?;
        store.load_ids(tip.log_size)?;
        Ok(store)
    }

    /// Rebuilds the id map from `entry_ids`: one sequential scan.
    fn load_ids(&self, log_size: u64) -> Result<(), StoreError> {
        let txn = self.database.begin_read()?;
        let ids = txn.open_table(ENTRY_IDS)?;
        let mut map = IdMap::default();
        map.first.reserve(usize::try_from(log_size).unwrap_or(0));
        for row in ids.iter()? {
            let (log_index, id) = row?;
            map.insert(&Hash(*id.value()), log_index.value());
        }
        if ids.len()? != log_size {
            return Err(corrupt(format!(
                "the entry index holds {} entries, the log {log_size}",
                ids.len()?
            )));
        }
        *self.ids.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    fn id_map(&self) -> RwLockReadGuard<'_, IdMap> {
        // The map is only ever extended or trimmed whole-entry at a time.
        self.ids.read().unwrap_or_else(|p| p.into_inner())
    }

    fn initialise(&self, genesis: &Block) -> Result<(), StoreError> {
        let read = self.database.begin_read()?;
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
            None => {
                let txn = self.begin_write()?;
                {
                    let mut meta = txn.open_table(META)?;
                    meta.insert(META_CHAIN_HASH, self.chain_hash.as_bytes().as_slice())?;
                    meta.insert(META_GENESIS_HASH, self.genesis_hash.as_bytes().as_slice())?;
                    meta.insert(META_CHAIN_SPEC, self.spec.encode().as_slice())?;
                    txn.open_table(BLOCKS)?
                        .insert(0, genesis.encode().as_slice())?;
                    txn.open_table(BLOCK_HASHES)?
                        .insert(self.genesis_hash.as_bytes(), 0)?;
                }
                txn.commit()?;
                Ok(())
            }
        }
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.database.begin_write()?;
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

    /// Header of the highest applied block.
    pub fn tip(&self) -> Result<Header, StoreError> {
        let txn = self.database.begin_read()?;
        tip_in(&txn.open_table(BLOCKS)?)
    }

    /// The tip's header and the log's right edge at the tip, from one snapshot: what
    /// the next block is built on.
    pub fn tip_with_log(&self) -> Result<(Header, CompactRange), StoreError> {
        tip_and_log_in(&self.database.begin_read()?)
    }

    /// The block at `height`.
    pub fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        self.decode_at(BLOCKS, height, "block", Block::decode)
    }

    /// [`decode_in`] in a read transaction of its own.
    fn decode_at<T>(
        &self,
        table: redb::TableDefinition<u64, &[u8]>,
        height: u64,
        what: &str,
        decode: fn(&[u8]) -> Result<T, ChainError>,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.database.begin_read()?;
        decode_in(&txn.open_table(table)?, height, what, decode)
    }

    /// Height of the block with `hash`.
    pub fn height_of(&self, hash: &Hash) -> Result<Option<u64>, StoreError> {
        let txn = self.database.begin_read()?;
        let height = txn
            .open_table(BLOCK_HASHES)?
            .get(hash.as_bytes())?
            .map(|v| v.value());
        Ok(height)
    }

    /// Where the entry `id` was committed.
    pub fn entry_location(&self, id: &Hash) -> Result<Option<EntryLocation>, StoreError> {
        let txn = self.database.begin_read()?;
        location_in(&txn, &self.id_map(), id)
    }

    /// The header of the block at `height`, without decoding its entries.
    pub fn header(&self, height: u64) -> Result<Option<Header>, StoreError> {
        self.decode_at(BLOCKS, height, "block header", |bytes| {
            Header::decode(bytes.get(..HEADER_LEN).unwrap_or(bytes))
        })
    }

    /// A committed entry and its receipt (its inclusion proof under the header of its
    /// block, and that block's certificate), read from one snapshot.
    pub fn entry_with_receipt(&self, id: &Hash) -> Result<Option<(Entry, Receipt)>, StoreError> {
        let txn = self.database.begin_read()?;
        let Some(location) = location_in(&txn, &self.id_map(), id)? else {
            return Ok(None);
        };
        let EntryLocation {
            height,
            position,
            log_index,
        } = location;
        // Blocks and the index are written in one transaction: a miss is damage.
        let damaged = |what: &str| {
            corrupt(format!(
                "the entry index puts {id} at log index {log_index} in block {height}, {what}"
            ))
        };
        let block = decode_in(&txn.open_table(BLOCKS)?, height, "block", Block::decode)?
            .ok_or_else(|| damaged("which is missing"))?;
        let certificate = decode_in(
            &txn.open_table(CERTIFICATES)?,
            height,
            "certificate",
            CommitCertificate::decode,
        )?
        .ok_or_else(|| damaged("whose certificate is missing"))?;
        let entry = block
            .entries
            .get(position as usize)
            .filter(|entry| entry.id() == *id)
            .cloned()
            .ok_or_else(|| damaged("which does not hold it"))?;
        let nodes = txn.open_table(MERKLE_NODES)?;
        let inclusion_proof =
            merkle::inclusion_proof(&StoredNodes(&nodes), log_index, block.header.log_size)?;
        let receipt = Receipt {
            entry_id: *id,
            log_index,
            header: block.header,
            inclusion_proof,
            certificate,
        };
        Ok(Some((entry, receipt)))
    }

    /// For each id, whether it is committed, read in one transaction (the admission
    /// stage checks a batch of submits at once).
    pub fn committed(&self, ids: &[Hash]) -> Result<Vec<bool>, StoreError> {
        let txn = self.database.begin_read()?;
        let table = txn.open_table(ENTRY_IDS)?;
        let map = self.id_map();
        ids.iter()
            .map(|id| Ok(map.locate(&table, id)?.is_some()))
            .collect()
    }

    /// The commit certificate of the block at `height` (none for genesis).
    pub fn certificate(&self, height: u64) -> Result<Option<CommitCertificate>, StoreError> {
        self.decode_at(
            CERTIFICATES,
            height,
            "certificate",
            CommitCertificate::decode,
        )
    }

    /// Inclusion proof of log leaf `log_index` in the log of `log_size` leaves.
    pub fn inclusion_proof(&self, log_index: u64, log_size: u64) -> Result<Vec<Hash>, StoreError> {
        let nodes = self.nodes_at(log_size)?;
        merkle::inclusion_proof(&StoredNodes(&nodes), log_index, log_size)
    }

    /// Consistency proof between two log sizes.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
        let nodes = self.nodes_at(new_size)?;
        merkle::consistency_proof(&StoredNodes(&nodes), old_size, new_size)
    }

    /// Root of the log at `log_size` (any size up to the tip's, not only block ends).
    pub fn log_root(&self, log_size: u64) -> Result<Hash, StoreError> {
        let nodes = self.nodes_at(log_size)?;
        merkle::root_at(&StoredNodes(&nodes), log_size)
    }

    /// The Merkle node table of one read transaction, refusing sizes beyond the log.
    fn nodes_at(&self, log_size: u64) -> Result<MerkleTable, StoreError> {
        let txn = self.database.begin_read()?;
        let tip = tip_in(&txn.open_table(BLOCKS)?)?;
        if log_size > tip.log_size {
            return Err(ChainError::TreeRange(format!(
                "log size {log_size} is beyond the committed log ({})",
                tip.log_size
            ))
            .into());
        }
        Ok(txn.open_table(MERKLE_NODES)?)
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
        let txn = self.database.begin_read()?;
        let (parent, range) = tip_and_log_in(&txn)?;
        let context = ValidationContext {
            chain_hash: &self.chain_hash,
            params: &self.spec.params,
            parent: &parent,
            required_difficulty,
            now_ms,
        };
        let ids = txn.open_table(ENTRY_IDS)?;
        validate_block(&context, block, &range, &ReadIndex(&self.id_map(), &ids))?;
        Ok(())
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
        let header = &block.header;
        let hash = header.hash();
        if certificate.height != header.height || certificate.block_hash != hash {
            return Err(ChainError::Certificate(format!(
                "certifies block {} at height {}, not {hash} at {}",
                certificate.block_hash, certificate.height, header.height
            ))
            .into());
        }
        if header.chain_hash != self.chain_hash {
            return Err(ChainError::WrongChain {
                expected: self.chain_hash,
                found: header.chain_hash,
            }
            .into());
        }
        let txn = self.begin_write()?;
        let mut new_ids = Vec::with_capacity(block.entries.len());
        let mut appended;
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            let tip = tip_in(&blocks)?;
            if header.height != tip.height + 1 {
                return Err(ChainError::WrongHeight {
                    expected: tip.height + 1,
                    found: header.height,
                }
                .into());
            }
            let tip_hash = tip.hash();
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
            let mut range = CompactRange::load(&StoredNodes(&nodes), tip.log_size)?;
            appended = AppendedNodes::new(&range);
            let mut ids = txn.open_table(ENTRY_IDS)?;
            let mut completed = Vec::new();
            let mut in_block = HashSet::with_capacity(block.entries.len());
            // The read guard ends with this block, before the write lock below.
            let map = self.id_map();
            for (log_index, entry) in (tip.log_size..).zip(&block.entries) {
                let id = entry.id();
                if !in_block.insert(id) || map.locate(&ids, &id)?.is_some() {
                    return Err(ChainError::DuplicateEntry { id }.into());
                }
                // Appended in log order: these writes fill the table's last pages.
                ids.insert(log_index, id.as_bytes())?;
                new_ids.push((id, log_index));
                range.append(leaf_hash(id.as_bytes()), |level, index, node| {
                    appended.record(level, index, node);
                    completed.push(((level, index), *node));
                });
            }
            for (key, node) in &completed {
                nodes.insert(*key, node.as_bytes())?;
            }
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
        }
        // The map learns the ids before the commit, under the write lock, so the next
        // writer cannot miss them; should the commit fail they are taken out again
        // (and until then they are candidates that `entry_ids` does not confirm).
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
            return Err(error.into());
        }
        Ok(appended)
    }

    /// Re-verifies the whole chain from genesis: every block decodes, links to its
    /// parent, meets its own difficulty, advances time, rebuilds the stored log root,
    /// has its entries indexed and a certificate for it that verifies against the
    /// members. Returns the tip height. For audits and crash tests; reads everything.
    pub fn verify_chain(&self) -> Result<u64, StoreError> {
        let txn = self.database.begin_read()?;
        let blocks = txn.open_table(BLOCKS)?;
        let entry_ids = txn.open_table(ENTRY_IDS)?;
        let map = self.id_map();
        let certificates = txn.open_table(CERTIFICATES)?;
        let nodes = txn.open_table(MERKLE_NODES)?;
        let nodes = StoredNodes(&nodes);
        let mut range = CompactRange::new();
        let mut parent: Option<Header> = None;
        for (expected_height, item) in (0u64..).zip(blocks.iter()?) {
            let (height, bytes) = item?;
            let height = height.value();
            let fail = |reason: String| corrupt(format!("block {height}: {reason}"));
            let block = Block::decode(bytes.value()).map_err(|error| fail(error.to_string()))?;
            let header = &block.header;
            if height != expected_height || header.height != height {
                return Err(fail(format!(
                    "stored out of order (expected {expected_height})"
                )));
            }
            match &parent {
                None if *header != self.spec.genesis_block().header => {
                    return Err(fail("is not this chain's genesis block".into()));
                }
                None => {}
                Some(parent) => {
                    if header.prev_hash != parent.hash()
                        || header.timestamp_ms <= parent.timestamp_ms
                        || !header.meets_difficulty()
                        || header.chain_hash != self.chain_hash
                    {
                        return Err(fail("does not extend its parent validly".into()));
                    }
                    let certificate = certificates
                        .get(height)?
                        .ok_or_else(|| fail("has no commit certificate".into()))?;
                    CommitCertificate::decode(certificate.value())
                        .and_then(|certificate| {
                            certificate.verify(
                                &self.chain_hash,
                                &self.spec.members,
                                height,
                                &header.hash(),
                            )
                        })
                        .map_err(|error| fail(error.to_string()))?;
                }
            }
            for (position, entry) in block.entries.iter().enumerate() {
                let id = entry.id();
                let log_index = range.size();
                let indexed = location_in(&txn, &map, &id)?;
                let expected = EntryLocation {
                    height,
                    position: position as u32,
                    log_index,
                };
                if indexed != Some(expected) {
                    return Err(fail(format!("entry {id} is not indexed at its position")));
                }
                range.append(leaf_hash(id.as_bytes()), |_, _, _| {});
            }
            if range.root() != header.log_root || range.size() != header.log_size {
                return Err(fail("log root does not match its entries".into()));
            }
            if merkle::root_at(&nodes, header.log_size)? != header.log_root {
                return Err(fail("stored Merkle nodes do not match the log root".into()));
            }
            parent = Some(block.header);
        }
        let tip = parent.ok_or_else(|| corrupt("no genesis block"))?;
        if entry_ids.len()? != tip.log_size {
            return Err(corrupt("entry index holds entries outside the chain"));
        }
        Ok(tip.height)
    }
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

/// Opens or creates the redb file at `path`; redb's reason (not a database, truncated,
/// locked by another process) is kept for the operator.
fn create_file(path: &Path) -> Result<Database, StoreError> {
    Database::builder()
        .create(path)
        .map_err(|error| StoreError::Open {
            path: path.to_owned(),
            reason: error.to_string(),
        })
}

/// The tip's header and the log's right edge, read in one transaction.
fn tip_and_log_in(txn: &ReadTransaction) -> Result<(Header, CompactRange), StoreError> {
    let tip = tip_in(&txn.open_table(BLOCKS)?)?;
    let nodes = txn.open_table(MERKLE_NODES)?;
    let range = CompactRange::load(&StoredNodes(&nodes), tip.log_size)?;
    Ok((tip, range))
}

/// Merkle nodes read from a table (read-only or inside the write transaction).
struct StoredNodes<'a, T>(&'a T);

impl<T: ReadableTable<(u8, u64), &'static [u8; 32]>> NodeSource for StoredNodes<'_, T> {
    type Error = StoreError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        let node = self.0.get((level, index))?;
        node.map(|value| Hash(*value.value()))
            .ok_or_else(|| corrupt(format!("Merkle node ({level}, {index}) is missing")))
    }
}

/// The entry index as seen by one read transaction.
struct ReadIndex<'a, T>(&'a IdMap, &'a T);

impl<T: ReadableTable<u64, &'static [u8; 32]>> EntryIndex for ReadIndex<'_, T> {
    fn contains(&self, id: &Hash) -> Result<bool, ChainError> {
        self.0
            .locate(self.1, id)
            .map(|found| found.is_some())
            .map_err(|error| ChainError::Lookup(error.to_string()))
    }
}

/// Reads and decodes the value at `height` of a height-keyed table; a value that does
/// not decode is corruption, reported with `what` and the height.
fn decode_in<T>(
    table: &impl ReadableTable<u64, &'static [u8]>,
    height: u64,
    what: &str,
    decode: fn(&[u8]) -> Result<T, ChainError>,
) -> Result<Option<T>, StoreError> {
    let Some(bytes) = table.get(height)? else {
        return Ok(None);
    };
    decode(bytes.value())
        .map(Some)
        .map_err(|error| corrupt(format!("{what} {height}: {error}")))
}

/// Where `id` sits, read in `txn`.
fn location_in(
    txn: &ReadTransaction,
    map: &IdMap,
    id: &Hash,
) -> Result<Option<EntryLocation>, StoreError> {
    let ids = txn.open_table(ENTRY_IDS)?;
    let Some(log_index) = map.locate(&ids, id)? else {
        return Ok(None);
    };
    let starts = txn.open_table(LOG_STARTS)?;
    let (start, height) = starts
        .range(..=log_index)?
        .next_back()
        .transpose()?
        .map(|(start, height)| (start.value(), height.value()))
        .ok_or_else(|| {
            corrupt(format!(
                "no block starts at or before log index {log_index}"
            ))
        })?;
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
