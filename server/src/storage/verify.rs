//! Reads that check what they return, and the full offline check.
//!
//! redb checksums its pages only when it recovers or is asked to check itself, so a
//! byte flipped on disk after a commit is read back as if it were true. Nothing read
//! here reaches a caller unless it fits the rest of the chain: a header must hash
//! to the index entry of its height, meet its own proof of work, and be tied to the
//! chain either by the next block's `prev_hash` or by its commit certificate
//! (verified once, then remembered by the certificate's digest); a block's entries
//! must rebuild its `log_root` from the stored log before them; a receipt's proof
//! must lead to its certified header's root; a log root at any size must be
//! consistent with the certified header above it. Any mismatch is a
//! [`StoreError::Corrupt`] naming the height, never data.
//!
//! [`Store::check`] reads everything once: every block, link, proof of work,
//! certificate, entry, index row and stored Merkle node.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use ledger_migrations::schema::{
    BASE_HEADERS, BLOCKS, BLOCK_HASHES, CERTIFICATES, ENTRY_IDS, ID_RUNS, LOG_STARTS, MERKLE_NODES,
    MERKLE_STORED_FROM,
};
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata};

use super::ids::{IdIndex, IdTables};
use super::{corrupt, id_rows, location_in, LogCheck, Store, StoreError, StoredNodes};
use crate::chain::merkle::{self, leaf_hash, verify_consistency, verify_inclusion, NodeSource};
use crate::chain::{
    Block, CommitCertificate, CompactRange, Entry, Hash, Header, Membership, Receipt, HEADER_LEN,
};

/// Certificates remembered as verified before the memo starts over (about 3 MB).
const MEMO_LIMIT: usize = 1 << 16;

/// Commit certificates already verified, by height: the digest of the certificate's
/// bytes and the block hash it was checked against. A read presenting the same bytes
/// for the same block skips the signature checks; anything else is checked again.
#[derive(Debug, Default)]
pub(super) struct CertificateMemo(Mutex<HashMap<u64, Hash>>);

impl CertificateMemo {
    fn key(bytes: &[u8], block_hash: &Hash) -> Hash {
        Hash::digest_parts(&[bytes, block_hash.as_bytes()])
    }

    fn knows(&self, height: u64, key: &Hash) -> bool {
        let memo = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        memo.get(&height) == Some(key)
    }

    fn remember(&self, height: u64, key: Hash) {
        let mut memo = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if memo.len() >= MEMO_LIMIT {
            memo.clear();
        }
        memo.insert(height, key);
    }
}

/// The tables a checked read needs, from one read transaction.
pub(super) struct Tables {
    pub(super) blocks: ReadOnlyTable<u64, &'static [u8]>,
    pub(super) hashes: ReadOnlyTable<&'static [u8; 32], u64>,
    pub(super) certificates: ReadOnlyTable<u64, &'static [u8]>,
    pub(super) nodes: ReadOnlyTable<(u8, u64), &'static [u8; 32]>,
    pub(super) ids: ReadOnlyTable<u64, &'static [u8]>,
    pub(super) starts: ReadOnlyTable<u64, u64>,
    pub(super) base_headers: ReadOnlyTable<u64, &'static [u8]>,
    /// The store's `history_from`, read before the transaction began: the
    /// transaction holds every block from there up.
    pub(super) history_from: u64,
}

impl Tables {
    pub(super) fn open(txn: &ReadTransaction, history_from: u64) -> Result<Tables, StoreError> {
        Ok(Tables {
            blocks: txn.open_table(BLOCKS)?,
            hashes: txn.open_table(BLOCK_HASHES)?,
            certificates: txn.open_table(CERTIFICATES)?,
            nodes: txn.open_table(MERKLE_NODES)?,
            ids: txn.open_table(ENTRY_IDS)?,
            starts: txn.open_table(LOG_STARTS)?,
            base_headers: txn.open_table(BASE_HEADERS)?,
            history_from,
        })
    }

    /// The Merkle log as these tables hold it.
    pub(super) fn stored_nodes(&self) -> impl NodeSource<Error = StoreError> + '_ {
        StoredNodes::new(&self.nodes, &self.ids)
    }
}

/// What ties a header read from disk to the rest of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Anchor {
    /// The next block's `prev_hash` (or, at the tip, the certificate): enough for a
    /// block served on its own, and cheap along a run of blocks.
    Successor,
    /// Its own commit certificate: what a receipt carries and a client checks.
    Certificate,
}

/// A consistency proof between two log sizes, with both roots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The root of the log at the old size.
    pub from_root: Hash,
    /// The root of the log at the new size.
    pub to_root: Hash,
    /// The RFC 9162 proof from the one to the other.
    pub proof: Vec<Hash>,
}

/// How far a full check has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckProgress {
    /// The last height checked.
    pub height: u64,
    /// The tip's height.
    pub tip: u64,
    /// Entries checked so far.
    pub entries: u64,
}

/// What a full check read, when it found nothing wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The tip's height.
    pub tip: u64,
    /// Entries in the log.
    pub entries: u64,
    /// Stored Merkle nodes, each recomputed from the entries.
    pub merkle_nodes: u64,
    /// The consensus log beside the database; `None` when the database names none yet.
    pub log: Option<LogCheck>,
}

/// Blocks between two progress reports of a full check.
const PROGRESS_EVERY: u64 = 1_000;

fn damage_at(height: u64, what: impl std::fmt::Display) -> StoreError {
    corrupt(format!("block {height}: {what}"))
}

impl Store {
    /// The header at `height`, checked and tied to the chain by `anchor`.
    pub(super) fn checked_header(
        &self,
        tables: &Tables,
        height: u64,
        anchor: Anchor,
    ) -> Result<Option<Header>, StoreError> {
        let Some(bytes) = tables.blocks.get(height)? else {
            if height > 0 && height < tables.history_from {
                return Err(StoreError::NotHeld {
                    what: format!("block {height}"),
                    from: tables.history_from,
                });
            }
            return Ok(None);
        };
        let header = decode_header(height, bytes.value())?;
        drop(bytes);
        let hash = header.hash();
        if height == 0 {
            if hash != self.genesis_hash {
                return Err(damage_at(0, "is not this chain's genesis block"));
            }
            return Ok(Some(header));
        }
        if header.chain_hash != self.chain_hash {
            return Err(damage_at(height, "names another chain"));
        }
        if !header.meets_difficulty() {
            return Err(damage_at(
                height,
                format!("its hash {hash} does not meet its difficulty"),
            ));
        }
        match tables.hashes.get(hash.as_bytes())?.map(|h| h.value()) {
            Some(indexed) if indexed == height => {}
            Some(indexed) => {
                return Err(damage_at(
                    height,
                    format!("its hash {hash} is indexed at height {indexed}"),
                ))
            }
            None => {
                return Err(damage_at(
                    height,
                    format!("its hash {hash} is not in the hash index"),
                ))
            }
        }
        let next = match anchor {
            Anchor::Successor => tables.blocks.get(height + 1)?,
            Anchor::Certificate => None,
        };
        match next {
            Some(next) => {
                let next = decode_header(height + 1, next.value())?;
                if next.prev_hash != hash {
                    return Err(corrupt(format!(
                        "block {} does not link to block {height}: one of them is damaged",
                        height + 1
                    )));
                }
            }
            None => {
                self.checked_certificate(tables, &header)?;
            }
        }
        Ok(Some(header))
    }

    /// A header below the held history, kept for the difficulty policy, tied to the
    /// chain by the next header's link (the next base header, or the first held
    /// block's).
    pub(super) fn checked_base_header(
        &self,
        tables: &Tables,
        height: u64,
    ) -> Result<Header, StoreError> {
        let not_held = || StoreError::NotHeld {
            what: format!("block {height}"),
            from: tables.history_from,
        };
        let bytes = tables.base_headers.get(height)?.ok_or_else(not_held)?;
        let header = decode_header(height, bytes.value())?;
        drop(bytes);
        // The next kept header, or the block above (the first held one, or one added
        // since this read's `history_from` was taken).
        let next = match tables.base_headers.get(height + 1)? {
            Some(bytes) => decode_header(height + 1, bytes.value())?,
            None if tables.blocks.get(height + 1)?.is_some() => self
                .checked_header(tables, height + 1, Anchor::Successor)?
                .ok_or_else(|| damage_at(height + 1, "vanished while it was read"))?,
            None => {
                return Err(damage_at(
                    height + 1,
                    "a kept header below the history is missing",
                ))
            }
        };
        if next.prev_hash != header.hash() {
            return Err(corrupt(format!(
                "kept header {height} does not link to the header above it"
            )));
        }
        Ok(header)
    }

    /// The commit certificate of `header`'s block, verified against the members.
    pub(super) fn checked_certificate(
        &self,
        tables: &Tables,
        header: &Header,
    ) -> Result<CommitCertificate, StoreError> {
        let height = header.height;
        let bytes = tables
            .certificates
            .get(height)?
            .ok_or_else(|| damage_at(height, "its commit certificate is missing"))?;
        let bytes = bytes.value();
        let hash = header.hash();
        let key = CertificateMemo::key(bytes, &hash);
        let certificate = CommitCertificate::decode(bytes)
            .map_err(|error| damage_at(height, format!("its certificate: {error}")))?;
        if !self.certificates.knows(height, &key) {
            self.verify_certificate(&certificate, height, &hash)
                .map_err(|error| match error {
                    StoreError::Chain(error) => {
                        damage_at(height, format!("its certificate: {error}"))
                    }
                    other => other,
                })?;
            self.certificates.remember(height, key);
        }
        Ok(certificate)
    }

    /// The highest block's header, tied to the chain by its certificate.
    pub(super) fn checked_tip(&self, tables: &Tables) -> Result<Header, StoreError> {
        let height = tables
            .blocks
            .last()?
            .map(|(height, _)| height.value())
            .ok_or_else(|| corrupt("no genesis block"))?;
        self.checked_header(tables, height, Anchor::Successor)?
            .ok_or_else(|| corrupt("the tip vanished while it was read"))
    }

    /// The block at `height`, its header checked and its entries rebuilding its log
    /// root from the stored log before them.
    pub(super) fn checked_block(
        &self,
        tables: &Tables,
        height: u64,
    ) -> Result<Option<Block>, StoreError> {
        let Some(header) = self.checked_header(tables, height, Anchor::Successor)? else {
            return Ok(None);
        };
        let bytes = tables
            .blocks
            .get(height)?
            .ok_or_else(|| damage_at(height, "vanished while it was read"))?;
        let block = Block::decode(bytes.value()).map_err(|error| damage_at(height, error))?;
        if block.header != header {
            return Err(damage_at(height, "its header changed while it was read"));
        }
        if height > 0 {
            self.check_entries(tables, &block)?;
        }
        Ok(Some(block))
    }

    /// `block`'s entries, appended to the stored log before them, give its root.
    fn check_entries(&self, tables: &Tables, block: &Block) -> Result<(), StoreError> {
        let header = &block.header;
        let start = header
            .log_size
            .checked_sub(block.entries.len() as u64)
            .ok_or_else(|| damage_at(header.height, "holds more entries than its log"))?;
        let mut log = CompactRange::load(&tables.stored_nodes(), start)?;
        for entry in &block.entries {
            log.append(leaf_hash(entry.id().as_bytes()), |_, _, _| {});
        }
        if log.root() != header.log_root {
            return Err(damage_at(
                header.height,
                "its entries and the stored log do not rebuild its log root",
            ));
        }
        Ok(())
    }

    /// The root of the log at `size`, consistent with the certified header of the
    /// block that holds leaf `size - 1`.
    pub(super) fn checked_root(&self, tables: &Tables, size: u64) -> Result<Hash, StoreError> {
        if size == 0 {
            return Ok(merkle::empty_root());
        }
        // Below the held history no block start is indexed: the first held block's
        // certified header, whose log holds every older leaf, anchors the root.
        let height = match tables.starts.range(..size)?.next_back().transpose()? {
            Some((_, height)) => height.value(),
            None if tables.history_from > 1 => tables.history_from,
            None => return Err(corrupt(format!("no block holds log index {}", size - 1))),
        };
        let header = self
            .checked_header(tables, height, Anchor::Certificate)?
            .ok_or_else(|| {
                corrupt(format!(
                    "the log index says block {height} holds log index {}, but there is no \
                     such block",
                    size - 1
                ))
            })?;
        if header.log_size < size {
            return Err(damage_at(
                height,
                format!("the log index says it holds log index {}", size - 1),
            ));
        }
        let nodes = tables.stored_nodes();
        let root = merkle::root_at(&nodes, size)?;
        let proof = merkle::consistency_proof(&nodes, size, header.log_size)?;
        verify_consistency(size, header.log_size, &root, &header.log_root, &proof).map_err(
            |_| {
                damage_at(
                    height,
                    format!("the stored log at size {size} is not consistent with its root"),
                )
            },
        )?;
        Ok(root)
    }

    /// The receipt of the entry `id` at `location` in `txn`: the entry from its block,
    /// the proof checked against the certified header.
    pub(super) fn checked_receipt(
        &self,
        txn: &ReadTransaction,
        map: &IdIndex,
        id: &Hash,
        history_from: u64,
    ) -> Result<Option<(Entry, Receipt)>, StoreError> {
        let Some(location) = location_in(txn, map, id, history_from)? else {
            return Ok(None);
        };
        let (height, position, log_index) =
            (location.height, location.position, location.log_index);
        let tables = Tables::open(txn, history_from)?;
        // Blocks and the index are written in one transaction: a miss is damage.
        let damaged = |what: &str| {
            corrupt(format!(
                "the entry index puts {id} at log index {log_index} in block {height}, {what}"
            ))
        };
        let header = self
            .checked_header(&tables, height, Anchor::Certificate)?
            .ok_or_else(|| damaged("which is missing"))?;
        let certificate = self.checked_certificate(&tables, &header)?;
        let bytes = tables
            .blocks
            .get(height)?
            .ok_or_else(|| damaged("which is missing"))?;
        let block = Block::decode(bytes.value()).map_err(|error| damage_at(height, error))?;
        let entry = block
            .entries
            .get(position as usize)
            .filter(|entry| entry.id() == *id)
            .cloned()
            .ok_or_else(|| damaged("which does not hold it"))?;
        let inclusion_proof =
            merkle::inclusion_proof(&tables.stored_nodes(), log_index, header.log_size)?;
        verify_inclusion(
            &leaf_hash(id.as_bytes()),
            log_index,
            header.log_size,
            &inclusion_proof,
            &header.log_root,
        )
        .map_err(|_| damaged("and the stored log does not prove it under that block's root"))?;
        let receipt = Receipt {
            entry_id: *id,
            log_index,
            header,
            inclusion_proof,
            certificate,
        };
        Ok(Some((entry, receipt)))
    }

    /// Reads the whole database once and checks everything it holds: each block
    /// decodes, is this chain's, follows its parent (height, hash link, time), meets
    /// its proof of work, is in the hash index at its height and has a certificate
    /// that verifies; each entry is indexed at its log position and nowhere else;
    /// every stored Merkle node equals the one recomputed from the entries, and
    /// every log root matches; the indexes hold nothing beyond the chain; the
    /// consensus state decodes and its stable checkpoint names a block of this chain;
    /// the consensus log beside the database is the one it names, of its generation,
    /// and its frames chain and decode (a last one cut short is reported, not damage).
    /// `progress` hears of every thousandth block. Stops at the first damage.
    pub fn check(
        &self,
        progress: &mut dyn FnMut(&CheckProgress),
    ) -> Result<CheckReport, StoreError> {
        let result = self.check_all(progress);
        self.observe(result)
    }

    fn check_all(
        &self,
        progress: &mut dyn FnMut(&CheckProgress),
    ) -> Result<CheckReport, StoreError> {
        let history_from = self.history_from();
        let map = self.id_map();
        let db = self.db()?;
        let txn = db.begin_read()?;
        let tables = Tables::open(&txn, history_from)?;
        let entry_ids = &tables.ids;
        let runs = txn.open_table(ID_RUNS)?;
        let id_tables = IdTables {
            rows: entry_ids,
            runs: &runs,
        };
        let tip = tables
            .blocks
            .last()?
            .map(|(height, _)| height.value())
            .ok_or_else(|| corrupt("no genesis block"))?;
        let mut log = CompactRange::new();
        let mut merkle_nodes = 0u64;
        let mut starts = 0u64;
        let mut parent: Option<Header> = None;
        let mut completed = Vec::new();
        // Every leaf appended to `log` is checked against the entry index, the id index
        // and the stored Merkle nodes.
        let mut append = |log: &mut CompactRange, id: Hash, height: u64| {
            let log_index = log.size();
            if id_rows::id_at(entry_ids, log_index)? != Some(id) {
                return Err(damage_at(
                    height,
                    format!("entry {id} is not in the entry index at {log_index}"),
                ));
            }
            if map.locate(&id_tables, &id)? != Some(log_index) {
                return Err(damage_at(
                    height,
                    format!("entry {id} is found elsewhere than at log index {log_index}"),
                ));
            }
            completed.clear();
            log.append(leaf_hash(id.as_bytes()), |level, index, node| {
                if level >= MERKLE_STORED_FROM {
                    completed.push((level, index, *node));
                }
            });
            for &(level, index, node) in &completed {
                merkle_nodes += 1;
                let stored = tables.nodes.get((level, index))?.map(|v| Hash(*v.value()));
                if stored != Some(node) {
                    return Err(damage_at(
                        height,
                        format!(
                            "stored Merkle node ({level}, {index}) is not the one its entries \
                             give"
                        ),
                    ));
                }
            }
            Ok::<(), StoreError>(())
        };
        // The membership each block is certified by, derived from the chain's own
        // reconfigurations (from the stored one where a restored history starts).
        let mut membership = match tables.history_from {
            1 => Membership::genesis(&self.spec),
            from => self.membership_at(from)?,
        };
        let mut expected = 0;
        let mut held = 0u64;
        for row in tables.blocks.iter()? {
            let (height, bytes) = row?;
            let height = height.value();
            let block = Block::decode(bytes.value()).map_err(|error| damage_at(height, error))?;
            let header = &block.header;
            let hash = header.hash();
            if height != expected || header.height != height {
                return Err(damage_at(
                    height,
                    format!("stored out of order (expected height {expected})"),
                ));
            }
            if tables.hashes.get(hash.as_bytes())?.map(|h| h.value()) != Some(height) {
                return Err(damage_at(height, "its hash is not indexed at its height"));
            }
            match &parent {
                None => {
                    if hash != self.genesis_hash {
                        return Err(damage_at(0, "is not this chain's genesis block"));
                    }
                }
                Some(parent) => {
                    if height == tables.history_from && height > 1 {
                        // Restored from a snapshot: the kept headers link up to it, and
                        // the log below it is rebuilt from the entry index alone.
                        self.check_base_headers(&tables, header)?;
                        let start = header
                            .log_size
                            .checked_sub(block.entries.len() as u64)
                            .ok_or_else(|| damage_at(height, "holds more entries than its log"))?;
                        // A tile's worth at a time: memory stays flat at any length.
                        let mut next = 0;
                        while next < start {
                            let end = start.min(next + (1 << 16));
                            for id in id_rows::ids_in(entry_ids, next..end)? {
                                append(&mut log, id, height)?;
                            }
                            next = end;
                        }
                    } else if header.prev_hash != parent.hash() {
                        return Err(damage_at(height, "does not link to its parent"));
                    } else if header.timestamp_ms <= parent.timestamp_ms {
                        return Err(damage_at(height, "is not later than its parent"));
                    }
                    if header.chain_hash != self.chain_hash {
                        return Err(damage_at(height, "names another chain"));
                    }
                    if !header.meets_difficulty() {
                        return Err(damage_at(height, "does not meet its difficulty"));
                    }
                    let bytes = tables
                        .certificates
                        .get(height)?
                        .ok_or_else(|| damage_at(height, "has no commit certificate"))?;
                    membership.advance_to(height);
                    CommitCertificate::decode(bytes.value())
                        .and_then(|certificate| {
                            membership.verify_certificate(
                                &self.chain_hash,
                                &certificate,
                                height,
                                &hash,
                            )
                        })
                        .map_err(|error| damage_at(height, format!("its certificate: {error}")))?;
                    membership
                        .apply_block(&self.spec, height, &block.entries)
                        .map_err(|error| damage_at(height, error))?;
                }
            }
            let start = log.size();
            if !block.entries.is_empty() {
                starts += 1;
                if tables.starts.get(start)?.map(|h| h.value()) != Some(height) {
                    return Err(damage_at(
                        height,
                        format!("the log index does not start it at log index {start}"),
                    ));
                }
            }
            for entry in &block.entries {
                append(&mut log, entry.id(), height)?;
            }
            if log.root() != header.log_root || log.size() != header.log_size {
                return Err(damage_at(height, "its entries do not rebuild its log root"));
            }
            if height % PROGRESS_EVERY == 0 || height == tip {
                progress(&CheckProgress {
                    height,
                    tip,
                    entries: log.size(),
                });
            }
            parent = Some(block.header);
            held += 1;
            expected = match height {
                0 => tables.history_from,
                _ => height + 1,
            };
        }
        if tables.history_from == 1 && !tables.base_headers.is_empty()? {
            return Err(corrupt(
                "headers are kept below the history, but the database holds every block",
            ));
        }
        let tip_header = parent.ok_or_else(|| corrupt("no genesis block"))?;
        if !self.membership_row(u64::MAX)?.same_order(&membership) {
            return Err(corrupt(
                "the stored membership is not the one the chain's reconfigurations give",
            ));
        }
        let counts = [
            ("block hash index", "rows", tables.hashes.len()?, held),
            (
                "certificate table",
                "rows",
                tables.certificates.len()?,
                held - 1,
            ),
            (
                "entry index",
                "ids",
                id_rows::held(entry_ids)?,
                tip_header.log_size,
            ),
            ("log start index", "rows", tables.starts.len()?, starts),
            (
                "Merkle node table",
                "rows",
                tables.nodes.len()?,
                merkle_nodes,
            ),
        ];
        for (what, unit, found, expected) in counts {
            if found != expected {
                return Err(corrupt(format!(
                    "the {what} holds {found} {unit}, the chain {expected}"
                )));
            }
        }
        drop(map);
        drop(tables);
        drop(txn);
        let durable = self.durable()?;
        let stable = &durable.stable;
        if stable.height > tip_header.height {
            return Err(corrupt(format!(
                "the stable checkpoint is at height {}, above the tip {}",
                stable.height, tip_header.height
            )));
        }
        let history_from = self.history_from();
        let db = self.db()?;
        let txn = db.begin_read()?;
        let tables = Tables::open(&txn, history_from)?;
        let at_checkpoint = self.checked_header(&tables, stable.height, Anchor::Successor)?;
        if at_checkpoint.map(|header| header.hash()) != Some(stable.hash) {
            return Err(corrupt(format!(
                "the stable checkpoint names another block than block {}",
                stable.height
            )));
        }
        Ok(CheckReport {
            tip: tip_header.height,
            entries: tip_header.log_size,
            merkle_nodes,
            log: self.check_wal()?,
        })
    }
}

impl Store {
    /// The headers kept below the first held block `first` are consecutive, name
    /// this chain and link up to it.
    fn check_base_headers(&self, tables: &Tables, first: &Header) -> Result<(), StoreError> {
        let mut above = *first;
        for row in tables.base_headers.iter()?.rev() {
            let (height, bytes) = row?;
            let header = decode_header(height.value(), bytes.value())?;
            if header.height + 1 != above.height
                || header.hash() != above.prev_hash
                || header.chain_hash != self.chain_hash
            {
                return Err(corrupt(format!(
                    "kept header {} does not link to the header above it",
                    header.height
                )));
            }
            above = header;
        }
        Ok(())
    }
}

/// The header in a stored block's first bytes, at the height it is stored under.
fn decode_header(height: u64, bytes: &[u8]) -> Result<Header, StoreError> {
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| damage_at(height, "is truncated"))
        .and_then(|bytes| Header::decode(bytes).map_err(|error| damage_at(height, error)))?;
    if header.height != height {
        return Err(damage_at(
            height,
            format!("is stored at height {height} but claims {}", header.height),
        ));
    }
    Ok(header)
}
