//! Building a database from a snapshot, in a staging file beside the node's database
//! that becomes it only when complete (a rename), so a crash at any moment leaves
//! either no database or a whole one, never half of one.
//!
//! Each verified chunk is one write transaction into the staging file: its ids, the
//! stored Merkle nodes within its tile, and a row saying the tile is done with its root. A
//! restarted join reopens the staging file and fetches only the tiles not done; a
//! newer snapshot keeps every done tile whose root it shares (the log only grows, so
//! every full tile is the same in every later snapshot). [`Restore::finish`] adds the
//! nodes above the tiles, checks the whole log against the certified root, and writes
//! the chain's identity, genesis, block `h` with its certificate and the kept headers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ledger_migrations::schema::{
    BASE_HEADERS, BLOCKS, BLOCK_HASHES, CERTIFICATES, ENTRY_IDS, ID_RUNS, ID_RUN_DIR, LOG_STARTS,
    MEMBERSHIP, MERKLE_NODES, MERKLE_STORED_FROM, META, META_HISTORY_FROM,
};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::id_runs::{self, Run};
use super::ids::IdFilter;
use super::{corrupt, id_rows, write_identity, StoreError, StoredNodes};
use crate::chain::merkle::NodeSource;
use crate::chain::snapshot::{Manifest, SnapshotError};
use crate::chain::{
    Block, ChainError, ChainSpec, CommitCertificate, CompactRange, Entry, Hash, Header,
    MembershipHistory,
};

/// Tile index → its root, for the tiles written so far (staging file only).
const TILES_DONE: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("restore_tiles");
/// The staging database's page cache.
const RESTORE_CACHE_BYTES: usize = 32 << 20;
/// `meta` key of the manifest being restored (staging file only).
const META_RESTORING: &str = "restoring";

/// A database being restored from one snapshot.
pub struct Restore {
    database: Database,
    staging: PathBuf,
    manifest: Manifest,
    /// The tiles written, with their roots.
    done: BTreeMap<u64, Hash>,
    /// The header the epoch at the snapshot's height starts above, when it lies
    /// below the snapshot ([`Restore::keep_epoch_base`]).
    epoch_base: Option<Header>,
    /// The filter of every id written, when [`Restore::finish`] vouches for the
    /// ids: asked for before any tile was written ([`Restore::handing_on_ids`]) and
    /// the staging file held none, so this restore checked every id it holds.
    filter: Option<IdFilter>,
    /// Whether the staging file held no ids when this restore began.
    fresh: bool,
}

/// That [`Restore::finish`] built a database from ids it checked itself against
/// the log root, and wrote each tile's ids as an id run, with the id filter of
/// them all: [`super::Store::open_restored`] then neither reads nor hashes the ids
/// again.
#[derive(Debug)]
pub struct RestoredIds {
    log_size: u64,
    log_root: Hash,
    pub(super) filter: IdFilter,
}

impl RestoredIds {
    /// Whether it vouches for a log of `log_size` ids with root `log_root`.
    pub(super) fn fits(&self, log_size: u64, log_root: &Hash) -> bool {
        self.log_size == log_size && self.log_root == *log_root
    }
}

/// A snapshot chunk checked against its tile root, with the stored Merkle nodes its
/// ids complete: hashed once, where it arrives, and written by [`Restore::write`].
pub struct VerifiedTile {
    index: u64,
    start: u64,
    root: Hash,
    ids: Vec<Hash>,
    /// Sorted by key: in key order each level's rows append to the end of its run of
    /// the table instead of splitting pages.
    nodes: Vec<((u8, u64), Hash)>,
    /// The tile's id run: (prefix, log index) of each id, sorted where the chunk
    /// arrives rather than under the restore's lock.
    pairs: Vec<(u64, u64)>,
}

impl VerifiedTile {
    /// Checks chunk `index` of `manifest` (verified) from its `bytes`: the only way
    /// a chunk reaches the staging database.
    pub fn check(
        manifest: &Manifest,
        index: u64,
        bytes: &[u8],
    ) -> Result<VerifiedTile, SnapshotError> {
        let start = manifest.chunk_range(index).start;
        let mut nodes = Vec::with_capacity((bytes.len() / 32) >> (MERKLE_STORED_FROM - 1));
        let ids = manifest.check_chunk_with(index, bytes, |level, local, hash| {
            // Tiles start at a multiple of their size, so a node `local` places into
            // the tile's own tree sits at `start >> level` plus that in the log's.
            if level >= MERKLE_STORED_FROM {
                nodes.push(((level, (start >> level) + local), *hash));
            }
        })?;
        nodes.sort_unstable_by_key(|(key, _)| *key);
        let mut pairs: Vec<_> = (start..)
            .zip(&ids)
            .map(|(log_index, id)| (id_runs::prefix(id), log_index))
            .collect();
        pairs.sort_unstable();
        // The check found the tile's root, so `index` is a tile of the manifest.
        let root = manifest.tile_roots[index as usize];
        Ok(VerifiedTile {
            index,
            start,
            root,
            ids,
            nodes,
            pairs,
        })
    }
}

impl Restore {
    /// Opens the staging file `staging` (creating it) to restore `manifest`, a
    /// manifest already verified against `spec`. Tiles a previous attempt wrote are
    /// kept where `manifest` has the same tile; the others are removed.
    pub fn begin(
        staging: &Path,
        spec: &ChainSpec,
        manifest: Manifest,
    ) -> Result<Restore, StoreError> {
        // redb keeps what a transaction wrote in its cache; bounded, a join's memory
        // does not grow with the history it restores.
        let open = || {
            Database::builder()
                .set_cache_size(RESTORE_CACHE_BYTES)
                .create(staging)
                .map_err(|error| StoreError::Open {
                    path: staging.to_owned(),
                    reason: error.to_string(),
                })
        };
        let mut database = open()?;
        if finished(&database)? {
            // A restore that completed but was not moved into place (a crash in
            // between): of an unknown snapshot, so it is started again.
            drop(database);
            std::fs::remove_file(staging).map_err(|error| StoreError::Open {
                path: staging.to_owned(),
                reason: format!("removing a finished restore: {error}"),
            })?;
            database = open()?;
        }
        ledger_migrations::migrate(&database).map_err(|source| StoreError::Schema {
            path: staging.to_owned(),
            source,
        })?;
        let chain_hash = spec.chain_hash();
        if manifest.chain_hash != chain_hash {
            return Err(corrupt("the snapshot to restore is of another chain"));
        }
        let mut done = BTreeMap::new();
        let mut stale = Vec::new();
        let fresh;
        {
            let txn = database.begin_write()?;
            {
                let mut tiles = txn.open_table(TILES_DONE)?;
                let previous = txn
                    .open_table(META)?
                    .get(META_RESTORING)?
                    .and_then(|bytes| Manifest::decode(bytes.value()).ok());
                for row in tiles.iter()? {
                    let (index, root) = row?;
                    let (index, root) = (index.value(), Hash(*root.value()));
                    let same_tile = previous.as_ref().is_some_and(|previous| {
                        previous.tile_level == manifest.tile_level
                            && previous.chunk_range(index) == manifest.chunk_range(index)
                    });
                    match same_tile && manifest.tile_roots.get(index as usize) == Some(&root) {
                        true => {
                            done.insert(index, root);
                        }
                        false => {
                            stale.push((index, previous.as_ref().map(|p| p.chunk_range(index))))
                        }
                    }
                }
                for (index, range) in &stale {
                    tiles.remove(index)?;
                    if let Some(range) = range {
                        remove_range(&txn, range.clone())?;
                    }
                }
                txn.open_table(META)?
                    .insert(META_RESTORING, manifest.encode().as_slice())?;
            }
            // Ids an earlier run wrote (kept, or of a tile whose range is unknown and
            // so could not be removed) were not checked by this one, which then
            // vouches for none: the node opens the database as any other.
            fresh = done.is_empty() && txn.open_table(ENTRY_IDS)?.is_empty()?;
            txn.commit()?;
        }
        Ok(Restore {
            database,
            staging: staging.to_owned(),
            manifest,
            done,
            epoch_base: None,
            filter: None,
            fresh,
        })
    }

    /// Hands on to the node that opens the database next ([`Restore::finish`])
    /// that the ids were checked, with their filter (16 MiB, kept from the first
    /// tile on), when this restore starts from no ids: one that resumes holds ids an
    /// earlier process wrote.
    pub fn handing_on_ids(mut self) -> Restore {
        if self.fresh && self.done.is_empty() {
            self.filter = Some(IdFilter::new());
        }
        self
    }

    /// The snapshot being restored.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The tiles still to fetch, in order.
    pub fn missing(&self) -> Vec<u64> {
        (0..self.manifest.chunks())
            .filter(|index| !self.done.contains_key(index))
            .collect()
    }

    /// Writes `tile`, checked against this restore's snapshot, durably in one
    /// transaction.
    pub fn write(&mut self, tile: VerifiedTile) -> Result<(), StoreError> {
        let index = tile.index;
        let range = self.manifest.chunk_range(index);
        if self.manifest.tile_roots.get(index as usize) != Some(&tile.root)
            || tile.start != range.start
            || tile.ids.len() as u64 != range.end - range.start
        {
            return Err(corrupt(format!(
                "tile {index} was checked against another snapshot"
            )));
        }
        let txn = self.database.begin_write()?;
        {
            // A tile starts where a row does (its level is at least the rows'), so
            // tiles written in any order fill disjoint rows.
            id_rows::append(
                &mut txn.open_table(ENTRY_IDS)?,
                range.start,
                tile.ids.iter().copied(),
            )?;
            // Each tile's ids are an id run of their own, which the node's applies
            // merge into larger ones later: the node opens without sorting them.
            id_runs::write(
                &mut txn.open_table(ID_RUNS)?,
                &mut txn.open_table(ID_RUN_DIR)?,
                Run {
                    from: range.start,
                    to: range.end,
                },
                tile.pairs,
            )?;
            let mut table = txn.open_table(MERKLE_NODES)?;
            for (key, hash) in &tile.nodes {
                table.insert(*key, hash.as_bytes())?;
            }
            txn.open_table(TILES_DONE)?
                .insert(index, tile.root.as_bytes())?;
        }
        txn.commit()?;
        self.done.insert(index, tile.root);
        if let Some(filter) = &mut self.filter {
            for id in &tile.ids {
                filter.insert(id);
            }
        }
        Ok(())
    }

    /// Keeps `header`, of the block the membership epoch at the snapshot's height
    /// starts above, when that lies below the snapshot: the node's replica starts
    /// above it. The caller checked its certificate.
    pub fn keep_epoch_base(&mut self, header: Header) {
        self.epoch_base = Some(header);
    }

    /// Completes the database with block `h` (whose hash must be the snapshot's) and
    /// moves it to `path`, which must not exist. Every tile must be written. A member
    /// restored this way forgot what it signed: its replica abstains until its tip
    /// reaches `abstain_through` ([`crate::consensus::Durable::abstain_through`]).
    /// The ids are vouched for when this `Restore` was asked to ([`Restore::handing_on_ids`]).
    pub fn finish(
        self,
        spec: &ChainSpec,
        block: &Block,
        path: &Path,
        abstain_through: u64,
    ) -> Result<Option<RestoredIds>, StoreError> {
        let manifest = &self.manifest;
        let header = &manifest.header;
        if let Some(index) = self.missing().first() {
            return Err(corrupt(format!("tile {index} is still missing")));
        }
        if block.hash() != header.hash() {
            return Err(corrupt(format!(
                "block {} is not the snapshot's block",
                header.height
            )));
        }
        let size = header.log_size;
        // The header below h (verified with the manifest) says where h's entries
        // start: a block with entries left out or added would not end there.
        let parent = manifest
            .recent
            .last()
            .ok_or_else(|| corrupt("the snapshot carries no header below its own"))?;
        let start = parent.log_size;
        if size.checked_sub(start) != Some(block.entries.len() as u64) {
            return Err(corrupt(format!(
                "block {} holds {} entries, where its log grows from {start} to {size}",
                header.height,
                block.entries.len()
            )));
        }
        let txn = self.database.begin_write()?;
        {
            let ids = txn.open_table(ENTRY_IDS)?;
            let stored = id_rows::ids_in(&ids, start..size)?;
            let mut pairs = block.entries.iter().zip(&stored);
            if let Some((entry, _)) = pairs.find(|(entry, stored)| entry.id() != **stored) {
                return Err(corrupt(format!(
                    "the snapshot's block holds entry {} where its log has another",
                    entry.id()
                )));
            }
            // The nodes above the tiles: complete subtrees of complete subtrees. Levels
            // below the stored ones are recomputed from the ids when read.
            let mut nodes = txn.open_table(MERKLE_NODES)?;
            for level in (manifest.tile_level + 1).max(MERKLE_STORED_FROM)..64 {
                let count = size >> level;
                if count == 0 {
                    break;
                }
                for index in 0..count {
                    let stored = StoredNodes::new(&nodes, &ids);
                    let left = stored.node(level - 1, 2 * index)?;
                    let right = stored.node(level - 1, 2 * index + 1)?;
                    let node = crate::chain::merkle::node_hash(&left, &right);
                    nodes.insert((level, index), node.as_bytes())?;
                }
            }
            let stored = StoredNodes::new(&nodes, &ids);
            if CompactRange::load(&stored, size)?.root() != header.log_root {
                return Err(corrupt(
                    "the restored log does not give the snapshot's root",
                ));
            }
            drop((nodes, ids));
            let genesis = spec.genesis_block();
            write_identity(&txn, spec, &genesis)?;
            let hash = block.hash();
            let height = header.height;
            // The memberships up to h, as the store keeps them (a row per epoch from
            // where it is in force, with the change that ended it), from the changes
            // the manifest proved: what certifies the blocks after h.
            let history = MembershipHistory::verify(spec, &manifest.changes)
                .map_err(|error| corrupt(format!("the snapshot's membership changes: {error}")))?;
            let mut rows = txn.open_table(MEMBERSHIP)?;
            for membership in history.epochs().iter().filter(|membership| {
                membership.since <= height && (membership.epoch > 0 || membership.pending.is_some())
            }) {
                rows.insert(membership.since, membership.encode().as_slice())?;
            }
            drop(rows);
            txn.open_table(BLOCKS)?
                .insert(height, block.encode().as_slice())?;
            txn.open_table(BLOCK_HASHES)?
                .insert(hash.as_bytes(), height)?;
            txn.open_table(CERTIFICATES)?
                .insert(height, manifest.certificate.encode().as_slice())?;
            if !block.entries.is_empty() {
                txn.open_table(LOG_STARTS)?.insert(start, height)?;
            }
            let mut kept = txn.open_table(BASE_HEADERS)?;
            // Genesis is a block of its own; only the headers above it are kept.
            for header in manifest.recent.iter().filter(|header| header.height > 0) {
                kept.insert(header.height, header.encode().as_slice())?;
            }
            drop(kept);
            let base = history.epoch_base(height);
            match &self.epoch_base {
                Some(header) if header.height == base => {
                    super::consensus::write_epoch_base(&txn, header)?
                }
                Some(header) => {
                    return Err(corrupt(format!(
                        "block {} is not where the epoch at height {height} starts ({base})",
                        header.height
                    )))
                }
                // A backup file fills in every block below afterwards.
                None => {}
            }
            super::consensus::write_abstain_through(&txn, abstain_through)?;
            // The tiles' runs must cover the log; else (tiles of an earlier run whose
            // range was unknown) the node writes runs from the ids as it opens.
            let covered = id_runs::directory(&txn.open_table(ID_RUN_DIR)?)
                .is_ok_and(|runs| runs.last().map_or(0, |run| run.to) == size);
            if !covered {
                txn.open_table(ID_RUN_DIR)?.retain(|_, _| false)?;
                txn.open_table(ID_RUNS)?.retain(|_, _| false)?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_HISTORY_FROM, height.to_be_bytes().as_slice())?;
            meta.remove(META_RESTORING)?;
        }
        txn.delete_table(TILES_DONE)?;
        txn.commit()?;
        drop(self.database);
        if path.exists() {
            return Err(corrupt(format!(
                "{} appeared while the snapshot was restored; the restored database is \
                 left at {}",
                path.display(),
                self.staging.display()
            )));
        }
        std::fs::rename(&self.staging, path)
            .and_then(|()| sync_parent(path))
            .map_err(|error| StoreError::Open {
                path: path.to_owned(),
                reason: format!("moving the restored database into place: {error}"),
            })?;
        Ok(self.filter.map(|filter| RestoredIds {
            log_size: size,
            log_root: header.log_root,
            filter,
        }))
    }
}

/// Whether the staging file holds a finished restore (its `history_from` is set).
fn finished(database: &Database) -> Result<bool, StoreError> {
    use redb::ReadableDatabase;
    let txn = database.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(error) => return Err(error.into()),
    };
    Ok(meta.get(META_HISTORY_FROM)?.is_some())
}

/// Removes the ids and the Merkle nodes within `range` (a tile that no longer
/// belongs to the snapshot being restored).
fn remove_range(
    txn: &redb::WriteTransaction,
    range: std::ops::Range<u64>,
) -> Result<(), StoreError> {
    id_rows::remove(&mut txn.open_table(ENTRY_IDS)?, range.clone())?;
    let run = Run {
        from: range.start,
        to: range.end,
    };
    let mut dir = txn.open_table(ID_RUN_DIR)?;
    if dir.get(run.from)?.map(|to| to.value()) == Some(run.to) {
        dir.remove(run.from)?;
    }
    id_runs::remove(&mut txn.open_table(ID_RUNS)?, run)?;
    let mut nodes = txn.open_table(MERKLE_NODES)?;
    for level in MERKLE_STORED_FROM..64u8 {
        let (first, end) = (range.start >> level, range.end >> level);
        if first >= end {
            break;
        }
        for index in first..end {
            nodes.remove((level, index))?;
        }
    }
    Ok(())
}

/// Makes a rename in `path`'s directory durable.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

impl super::Store {
    /// Adds the block just below the held history (a database restored from a
    /// snapshot), with its commit certificate, in one durable write transaction. It
    /// must be the block the lowest held one links to, with a valid certificate, and
    /// hold exactly the entry ids the log already has at its place.
    /// `parent` is the header of the block below it (whose hash it links to): its log
    /// size says where the block's entries start, which its own header does not.
    pub fn backfill(
        &self,
        block: &Block,
        certificate: &CommitCertificate,
        parent: &Header,
    ) -> Result<(), StoreError> {
        self.observe(self.backfill_one(block, certificate, parent))
    }

    fn backfill_one(
        &self,
        block: &Block,
        certificate: &CommitCertificate,
        parent: &Header,
    ) -> Result<(), StoreError> {
        let above = self.history_from();
        let header = &block.header;
        let height = header.height;
        if above <= 1 || height.checked_add(1) != Some(above) {
            return Err(ChainError::WrongHeight {
                expected: above.saturating_sub(1),
                found: height,
            }
            .into());
        }
        if parent.height.checked_add(1) != Some(height) || parent.hash() != header.prev_hash {
            return Err(ChainError::WrongParent {
                expected: header.prev_hash,
                found: parent.hash(),
            }
            .into());
        }
        let hash = block.hash();
        self.verify_certificate(certificate, height, &hash)?;
        let txn = self.begin_write()?;
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            let upper = blocks
                .get(above)?
                .map(|bytes| Block::decode(bytes.value()))
                .transpose()
                .map_err(|error| corrupt(format!("block {above}: {error}")))?
                .ok_or_else(|| corrupt(format!("block {above}, the lowest held, is missing")))?;
            if upper.header.prev_hash != hash {
                return Err(ChainError::WrongParent {
                    expected: upper.header.prev_hash,
                    found: hash,
                }
                .into());
            }
            let end = upper
                .header
                .log_size
                .checked_sub(upper.entries.len() as u64)
                .ok_or_else(|| corrupt(format!("block {above} holds more entries than its log")))?;
            let start = parent.log_size;
            if header.log_size != end || end.checked_sub(start) != Some(block.entries.len() as u64)
            {
                return Err(ChainError::LogSizeMismatch {
                    expected: end.saturating_sub(start),
                    found: block.entries.len() as u64,
                }
                .into());
            }
            let held = id_rows::ids_in(&txn.open_table(ENTRY_IDS)?, start..end)?;
            if !block.entries.iter().map(Entry::id).eq(held) {
                return Err(ChainError::Malformed {
                    what: "backfilled block",
                    reason: "its entries are not the ones the log holds at its place",
                }
                .into());
            }
            blocks.insert(height, block.encode().as_slice())?;
            txn.open_table(BLOCK_HASHES)?
                .insert(hash.as_bytes(), height)?;
            txn.open_table(CERTIFICATES)?
                .insert(height, certificate.encode().as_slice())?;
            if !block.entries.is_empty() {
                txn.open_table(LOG_STARTS)?.insert(start, height)?;
            }
            txn.open_table(BASE_HEADERS)?.remove(height)?;
            let mut meta = txn.open_table(META)?;
            match height {
                1 => meta.remove(META_HISTORY_FROM)?,
                _ => meta.insert(META_HISTORY_FROM, height.to_be_bytes().as_slice())?,
            };
        }
        txn.commit()?;
        // After the commit: a reader that sees the lower bound sees the block.
        self.history_from
            .store(height, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}
