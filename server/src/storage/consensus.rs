//! The replica's durable state in redb: what it must not forget across a crash so
//! that it never contradicts what it signed (`consensus::durable`).
//!
//! `view_state` holds the membership epoch, the view and whether it was entered,
//! the NEW-VIEW of the last view entered, on a member restored after losing its
//! disk the height up to which it abstains, and on a database restored above its
//! epoch's start the header that epoch starts above; `consensus_log` one slot per height above the stable checkpoint
//! (the block accepted there and the best prepared certificate); `checkpoints` every
//! stable checkpoint certificate, the highest being the current one. A batch of
//! records is one write transaction: durable before the replica's next send.

use ledger_migrations::schema::{CHECKPOINTS, CONSENSUS_LOG, VIEW_STATE};
use redb::ReadableTable;

use super::wal::{self, LogCheck, Wal};
use super::{corrupt, Store, StoreError};
use crate::consensus::{
    CheckpointCertificate, Durable, DurableSlot, Message, Payload, PreparedCertificate, Record,
};
use crate::engine::lock;

const VIEW: &str = "view";
const NEW_VIEW: &str = "new_view";
/// `Durable::epoch`, 8 bytes big-endian; absent means 0.
const EPOCH: &str = "epoch";
/// `Durable::abstain_through`, 8 bytes big-endian; absent means 0.
const ABSTAIN_THROUGH: &str = "abstain_through";
/// On a database restored from a snapshot above where its epoch started: the header
/// of the block before that epoch ([`Store::epoch_base`]), which it does not hold.
const EPOCH_BASE: &str = "epoch_base";
/// The generation of the consensus write-ahead log whose records are not in these
/// tables yet, 8 bytes big-endian; absent means 0 (`storage::wal`).
const WAL_GENERATION: &str = "wal_generation";
/// The id of this database its write-ahead log names, 16 bytes, written at the log's
/// first start: a log of another database beside it is never replayed.
const WAL_ID: &str = "wal_id";
/// A log this long is written into the tables at the next records, whatever they are.
const WAL_COMPACT_BYTES: u64 = 64 << 20;
/// The public key of the node whose records these are, 32 bytes, claimed when it
/// first opened the database ([`Store::claim_records`]).
const OWNER: &str = "owner";

/// Whose consensus records a database holds ([`Store::claim_records`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordsOwner {
    /// The node that asked: named before, or claimed now.
    This,
    /// Another node, by its public key.
    Other([u8; 32]),
}

/// Records in `txn` the header of the block before the epoch of a restored database
/// ([`Store::epoch_base`]).
pub(super) fn write_epoch_base(
    txn: &redb::WriteTransaction,
    header: &crate::chain::Header,
) -> Result<(), StoreError> {
    txn.open_table(VIEW_STATE)?
        .insert(EPOCH_BASE, header.encode().as_slice())?;
    Ok(())
}

/// Records in `txn` that the replica forgot what it signed up to `height`
/// ([`Durable::abstain_through`]).
pub(super) fn write_abstain_through(
    txn: &redb::WriteTransaction,
    height: u64,
) -> Result<(), StoreError> {
    txn.open_table(VIEW_STATE)?
        .insert(ABSTAIN_THROUGH, height.to_be_bytes().as_slice())?;
    Ok(())
}

/// What [`Store::highest_prepared`] shows: the highest prepared certificate
/// persisted, once the state from before this store opened is folded in.
#[derive(Debug, Default)]
pub(super) struct HighestPrepared {
    loaded: bool,
    best: Option<PreparedCertificate>,
}

impl HighestPrepared {
    fn fold(&mut self, certificate: &PreparedCertificate) {
        let height = |c: &PreparedCertificate| c.header.height;
        if self
            .best
            .as_ref()
            .is_none_or(|best| height(best) < height(certificate))
        {
            self.best = Some(certificate.clone());
        }
    }
}

/// Drops the per-height records a later stable checkpoint or epoch in the same batch
/// forgets anyway (a compaction would write their slots, block bodies and all, only
/// to delete them).
fn settled(records: Vec<Record>) -> Vec<Record> {
    let mut forgotten: Option<u64> = None;
    let mut kept: Vec<Record> = records
        .into_iter()
        .rev()
        .filter(|record| {
            match record {
                Record::Stable(certificate) => {
                    forgotten = Some(forgotten.unwrap_or(0).max(certificate.height))
                }
                Record::Epoch { .. } => forgotten = Some(u64::MAX),
                _ => {}
            }
            !matches!((record.height(), forgotten), (Some(height), Some(below)) if height <= below)
        })
        .collect();
    kept.reverse();
    kept
}

fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(format!("{what} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(bytes))
}

fn decode_epoch(bytes: &[u8]) -> Result<u64, StoreError> {
    decode_u64(bytes, "the consensus epoch")
}

fn encode_view(view: u64, active: bool) -> [u8; 9] {
    let mut out = [0; 9];
    out[..8].copy_from_slice(&view.to_be_bytes());
    out[8] = u8::from(active);
    out
}

fn decode_view(bytes: &[u8]) -> Result<(u64, bool), StoreError> {
    match bytes {
        [view @ .., active] if view.len() == 8 && *active <= 1 => {
            let view = u64::from_be_bytes(view.try_into().map_err(|_| corrupt("view state"))?);
            Ok((view, *active == 1))
        }
        _ => Err(corrupt("view state is not 9 bytes")),
    }
}

impl Store {
    /// Records that this member forgot what it signed up to `height`: its replica
    /// abstains until its tip gets there ([`Durable::abstain_through`]).
    pub fn set_abstain_through(&self, height: u64) -> Result<(), StoreError> {
        self.observe((|| {
            let txn = self.begin_write()?;
            write_abstain_through(&txn, height)?;
            txn.commit()?;
            Ok(())
        })())
    }

    /// Names `key` as the node whose consensus records (what it signed) this database
    /// holds, unless another is named already: then nothing changes and that one is
    /// returned, as a node must not vote on another's records, having forgotten its
    /// own (a follower too: a promotion would make it vote). Restored and new
    /// databases name nobody until their node opens them.
    pub fn claim_records(&self, key: &[u8; 32]) -> Result<RecordsOwner, StoreError> {
        self.observe((|| {
            let txn = self.begin_write()?;
            {
                let mut views = txn.open_table(VIEW_STATE)?;
                if let Some(found) = views.get(OWNER)? {
                    let found = <[u8; 32]>::try_from(found.value())
                        .map_err(|_| corrupt("the records' owner is not 32 bytes"))?;
                    return Ok(match found == *key {
                        true => RecordsOwner::This,
                        false => RecordsOwner::Other(found),
                    });
                }
                views.insert(OWNER, key.as_slice())?;
            }
            txn.commit()?;
            Ok(RecordsOwner::This)
        })())
    }

    /// The header of the block before the membership epoch a restored database
    /// started in, when that block lies below its history: a replica of that epoch
    /// starts above it. Checked by the join that restored it (its certificate under
    /// the membership before), as the blocks it holds were.
    pub fn epoch_base(&self) -> Result<Option<crate::chain::Header>, StoreError> {
        self.observe((|| {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let views = txn.open_table(VIEW_STATE)?;
            let Some(bytes) = views.get(EPOCH_BASE)? else {
                return Ok(None);
            };
            let header = crate::chain::Header::decode(bytes.value())
                .map_err(|error| corrupt(format!("the stored epoch base: {error}")))?;
            Ok(Some(header))
        })())
    }

    /// Makes `records` durable, in order. Per-height records (the hot path: two a
    /// block) are appended to the write-ahead log when the store keeps one; any other
    /// record is written into the tables with everything the log holds, in one
    /// durable transaction that also makes the blocks applied since durable, and the
    /// log starts over.
    pub fn persist(&self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.observe(self.persist_records(records))?;
        let mut cache = lock(&self.prepared);
        for record in records {
            if let Record::Prepared(certificate) = record {
                cache.fold(certificate);
            }
        }
        Ok(())
    }

    fn persist_records(&self, records: &[Record]) -> Result<(), StoreError> {
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let Some(wal) = wal.as_mut() else {
            return self.write_records(records, None);
        };
        if records.iter().all(|r| r.height().is_some()) && wal.len() < WAL_COMPACT_BYTES {
            return wal.append(records);
        }
        self.compact(wal, records)
    }

    /// Writes the log's records and `more` into the tables in one durable
    /// transaction that names the log's next generation, then starts the log over.
    /// A crash between the two leaves a log of the old generation, which the next
    /// open drops: its records are in the tables.
    fn compact(&self, wal: &mut Wal, more: &[Record]) -> Result<(), StoreError> {
        let mut all = wal.records().to_vec();
        all.extend_from_slice(more);
        let next = wal.generation() + 1;
        self.write_records(&settled(all), Some(next))?;
        wal.restart(next)
    }

    /// Opens the write-ahead log beside the database (at start, and after a reopen,
    /// when everything it holds is written into the tables at once: after a failed
    /// `fdatasync` the file's contents cannot be trusted to be on disk).
    pub(super) fn open_wal(&self, after_failure: bool) -> Result<(), StoreError> {
        if let Some(live) = self.wal.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            live.settle();
        }
        let (id, generation) = self.wal_named()?;
        let path = Wal::path_for(&self.path);
        let mut wal = match id {
            Some(id) => Wal::open(&path, id, generation, true)?,
            None => {
                // The log exists before the database names it: a crash in between
                // leaves a log no database names, which the next open replaces.
                let mut id = [0; 16];
                getrandom::fill(&mut id).map_err(|error| {
                    StoreError::Unavailable(format!("no randomness for the log id: {error}"))
                })?;
                let wal = Wal::open(&path, id, generation, false)?;
                let txn = self.begin_write()?;
                txn.open_table(VIEW_STATE)?.insert(WAL_ID, id.as_slice())?;
                txn.commit()?;
                wal
            }
        };
        if after_failure && !wal.records().is_empty() {
            self.compact(&mut wal, &[])?;
        }
        *self.wal.lock().unwrap_or_else(|p| p.into_inner()) = Some(wal);
        Ok(())
    }

    /// The id of the consensus log the database names (none before its first open
    /// by a build that writes one), and the log's generation.
    fn wal_named(&self) -> Result<(Option<[u8; 16]>, u64), StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let views = txn.open_table(VIEW_STATE)?;
        let id = views
            .get(WAL_ID)?
            .map(|bytes| <[u8; 16]>::try_from(bytes.value()))
            .transpose()
            .map_err(|_| corrupt("the consensus log id is not 16 bytes"))?;
        let generation = match views.get(WAL_GENERATION)? {
            Some(bytes) => decode_u64(bytes.value(), "the consensus log generation")?,
            None => 0,
        };
        Ok((id, generation))
    }

    /// Reads the consensus log beside the database as the next start will, without
    /// changing it; `None` when the database names no log yet.
    pub(super) fn check_wal(&self) -> Result<Option<LogCheck>, StoreError> {
        match self.wal_named()? {
            (Some(id), generation) => {
                wal::inspect(&Wal::path_for(&self.path), id, generation).map(Some)
            }
            (None, _) => Ok(None),
        }
    }

    fn write_records(&self, records: &[Record], generation: Option<u64>) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut views = txn.open_table(VIEW_STATE)?;
            if let Some(generation) = generation {
                views.insert(WAL_GENERATION, generation.to_be_bytes().as_slice())?;
            }
            let mut log = txn.open_table(CONSENSUS_LOG)?;
            let mut checkpoints = txn.open_table(CHECKPOINTS)?;
            let mut stable = checkpoints
                .last()?
                .map(|(height, _)| height.value())
                .unwrap_or(0);
            for record in records {
                match record {
                    Record::ViewChange { view } => {
                        views.insert(VIEW, encode_view(*view, false).as_slice())?;
                    }
                    Record::NewView(message) => {
                        let Payload::NewView(new_view) = &message.payload else {
                            return Err(corrupt("a NEW-VIEW record holds another message"));
                        };
                        views.insert(VIEW, encode_view(new_view.view, true).as_slice())?;
                        views.insert(NEW_VIEW, message.encode().as_slice())?;
                    }
                    Record::Accepted { .. } | Record::Prepared(_) => {
                        let Some(height) = record.height().filter(|h| *h > stable) else {
                            continue;
                        };
                        let mut slot = match log.get(height)? {
                            Some(bytes) => DurableSlot::decode(bytes.value())
                                .map_err(|e| corrupt(format!("consensus log at {height}: {e}")))?,
                            None => DurableSlot::default(),
                        };
                        slot.absorb(record);
                        log.insert(height, slot.encode().as_slice())?;
                    }
                    Record::Stable(certificate) => {
                        if certificate.height <= stable {
                            continue;
                        }
                        stable = certificate.height;
                        checkpoints.insert(stable, certificate.encode().as_slice())?;
                        log.retain_in(..=stable, |_, _| false)?;
                    }
                    Record::Epoch {
                        epoch,
                        height,
                        hash,
                    } => {
                        let stored = match views.get(EPOCH)? {
                            Some(bytes) => decode_epoch(bytes.value())?,
                            None => 0,
                        };
                        if *epoch <= stored {
                            continue;
                        }
                        views.insert(EPOCH, epoch.to_be_bytes().as_slice())?;
                        views.insert(VIEW, encode_view(0, true).as_slice())?;
                        views.remove(NEW_VIEW)?;
                        // A certificate the epoch before made stable at its last block
                        // stays; else the base is recorded without votes.
                        let keep = checkpoints
                            .get(*height)?
                            .map(|bytes| CheckpointCertificate::decode(bytes.value()))
                            .transpose()
                            .map_err(|e| corrupt(format!("checkpoint at {height}: {e}")))?
                            .is_some_and(|certificate| certificate.hash == *hash);
                        if !keep {
                            let base = CheckpointCertificate {
                                height: *height,
                                hash: *hash,
                                votes: Vec::new(),
                            };
                            checkpoints.insert(*height, base.encode().as_slice())?;
                        }
                        // Checkpoints above the base would be the old epoch's view of
                        // heights it never ordered: there are none, but none may stay.
                        checkpoints.retain_in(height + 1.., |_, _| false)?;
                        stable = *height;
                        log.retain_in(0u64.., |_, _| false)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The replica state persisted so far; the genesis state in a fresh database.
    pub fn durable(&self) -> Result<Durable, StoreError> {
        self.observe(self.read_durable())
    }

    /// The prepared certificate of the highest height this node persisted one for
    /// since it opened the database, or holds from before ([`Durable::highest_prepared`]):
    /// a block this member may have to carry into a new view, which a member that
    /// lost its disk counts as how far the chain came. One a stable checkpoint let
    /// go of stays shown: the chain got that far all the same.
    pub fn highest_prepared(&self) -> Result<Option<PreparedCertificate>, StoreError> {
        let loaded = lock(&self.prepared).loaded;
        if !loaded {
            // Read once; a certificate persisted meanwhile is in the read or was
            // folded in by `persist`.
            let held = self.durable()?.highest_prepared().cloned();
            let mut cache = lock(&self.prepared);
            if let Some(held) = &held {
                cache.fold(held);
            }
            cache.loaded = true;
        }
        Ok(lock(&self.prepared).best.clone())
    }

    fn read_durable(&self) -> Result<Durable, StoreError> {
        // Held throughout: a compaction moves the log's records into the tables
        // under it, and must not fall between the two reads.
        let wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let mut durable = Durable::genesis(self.genesis_hash());
        let db = self.db()?;
        let txn = db.begin_read()?;
        let views = txn.open_table(VIEW_STATE)?;
        if let Some(bytes) = views.get(VIEW)? {
            (durable.view, durable.active) = decode_view(bytes.value())?;
        }
        if let Some(bytes) = views.get(EPOCH)? {
            durable.epoch = decode_epoch(bytes.value())?;
        }
        if let Some(bytes) = views.get(ABSTAIN_THROUGH)? {
            let bytes: [u8; 8] = bytes
                .value()
                .try_into()
                .map_err(|_| corrupt("abstain_through is not 8 bytes"))?;
            durable.abstain_through = u64::from_be_bytes(bytes);
        }
        if let Some(bytes) = views.get(NEW_VIEW)? {
            let message = Message::decode(bytes.value())
                .map_err(|e| corrupt(format!("stored NEW-VIEW: {e}")))?;
            if !matches!(message.payload, Payload::NewView(_)) {
                return Err(corrupt("the stored NEW-VIEW is another message"));
            }
            durable.new_view = Some(message);
        }
        let checkpoints = txn.open_table(CHECKPOINTS)?;
        if let Some((height, bytes)) = checkpoints.last()? {
            let certificate = CheckpointCertificate::decode(bytes.value())
                .map_err(|e| corrupt(format!("checkpoint at {}: {e}", height.value())))?;
            if certificate.height != height.value() {
                return Err(corrupt(format!(
                    "checkpoint stored at {} certifies height {}",
                    height.value(),
                    certificate.height
                )));
            }
            durable.stable = certificate;
        }
        let log = txn.open_table(CONSENSUS_LOG)?;
        for row in log.range(durable.stable.height + 1..)? {
            let (height, bytes) = row?;
            let slot = DurableSlot::decode(bytes.value())
                .map_err(|e| corrupt(format!("consensus log at {}: {e}", height.value())))?;
            durable.slots.insert(height.value(), slot);
        }
        for record in wal.iter().flat_map(|wal| wal.records()) {
            durable.apply(record);
        }
        Ok(durable)
    }

    /// The stable checkpoint certificate, if one was reached.
    pub fn stable_checkpoint(&self) -> Result<Option<CheckpointCertificate>, StoreError> {
        self.observe((|| {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let checkpoints = txn.open_table(CHECKPOINTS)?;
            let Some((height, bytes)) = checkpoints.last()? else {
                return Ok(None);
            };
            CheckpointCertificate::decode(bytes.value())
                .map(Some)
                .map_err(|e| corrupt(format!("checkpoint at {}: {e}", height.value())))
        })())
    }
}
