//! What a replica persists before it sends, and the state a restarted replica resumes
//! from.
//!
//! The replica emits [`Record`]s; the driver makes each durable before it performs any
//! later output, and folds them into a [`Durable`] (the simulator in memory, the node in
//! redb). A replica rebuilt from that state cannot contradict what it signed: it knows
//! the view it left, every block it pre-prepared or prepared, and every prepared
//! certificate it may have to show in a VIEW-CHANGE (C&L TOCS §4.4 and §6.1).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::message::{
    read_count, read_prepared, write_len, write_prepared, CheckpointCertificate, Message, Payload,
    PreparedCertificate,
};
use crate::chain::codec::Reader;
use crate::chain::{Block, ChainError, Hash, Header, Membership};

/// [`Durable::abstain_through`] of a member restored where nobody could say how far
/// the chain had come (from a backup file): its node asks the others at start.
pub const ABSTAIN_UNKNOWN: u64 = u64::MAX;

/// One durable fact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The replica left its view for `view` (a VIEW-CHANGE follows).
    ViewChange {
        /// The view it moves to.
        view: u64,
    },
    /// The replica entered the NEW-VIEW it carries (sent or accepted).
    NewView(Message),
    /// The replica pre-prepared (as primary) or prepared (as backup) `block` in `view`.
    Accepted {
        /// The view.
        view: u64,
        /// The block.
        block: Arc<Block>,
        /// The primary's pre-prepare signature.
        signature: [u8; 64],
    },
    /// The replica holds this prepared certificate (a COMMIT follows).
    Prepared(PreparedCertificate),
    /// A checkpoint became stable; everything at or below it may be forgotten.
    Stable(CheckpointCertificate),
    /// Membership epoch `epoch` starts above the block `hash` at `height`, the last
    /// of the epoch before: its replica starts in view 0, with that block as its
    /// stable checkpoint and nothing accepted above it.
    Epoch {
        /// The epoch.
        epoch: u64,
        /// The height of its base block.
        height: u64,
        /// Its hash.
        hash: Hash,
    },
}

/// What was accepted at one height.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedBlock {
    /// The view it was accepted in.
    pub view: u64,
    /// The block.
    pub block: Arc<Block>,
    /// The primary's pre-prepare signature.
    pub signature: [u8; 64],
}

/// The durable consensus state of one height above the stable checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableSlot {
    /// The latest block accepted at this height.
    pub accepted: Option<AcceptedBlock>,
    /// The highest-view prepared certificate.
    pub prepared: Option<PreparedCertificate>,
}

impl Record {
    /// The height a per-height record is about.
    pub fn height(&self) -> Option<u64> {
        match self {
            Record::Accepted { block, .. } => Some(block.header.height),
            Record::Prepared(certificate) => Some(certificate.header.height),
            _ => None,
        }
    }
}

const SLOT_ACCEPTED: u8 = 1;
const SLOT_PREPARED: u8 = 2;

impl Record {
    /// The stored form of a per-height record, the only kinds a write-ahead log of
    /// the consensus state holds: [`SLOT_ACCEPTED`] and the view, block and signature,
    /// or [`SLOT_PREPARED`] and the certificate. None for the other kinds.
    pub fn encode_slot_record(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Record::Accepted {
                view,
                block,
                signature,
            } => {
                out.push(SLOT_ACCEPTED);
                write_accepted(&mut out, *view, block, signature);
            }
            Record::Prepared(certificate) => {
                out.push(SLOT_PREPARED);
                write_prepared(&mut out, certificate);
            }
            _ => return None,
        }
        Some(out)
    }

    /// Decodes [`Record::encode_slot_record`]'s form.
    pub fn decode_slot_record(bytes: &[u8]) -> Result<Record, ChainError> {
        let mut reader = Reader::new(bytes, "consensus record");
        let record = match reader.u8()? {
            SLOT_ACCEPTED => {
                let accepted = read_accepted(&mut reader)?;
                Record::Accepted {
                    view: accepted.view,
                    block: accepted.block,
                    signature: accepted.signature,
                }
            }
            SLOT_PREPARED => Record::Prepared(read_prepared(&mut reader)?),
            _ => {
                return Err(ChainError::Malformed {
                    what: "consensus record",
                    reason: "unknown kind",
                })
            }
        };
        reader.finish()?;
        Ok(record)
    }
}

fn write_accepted(out: &mut Vec<u8>, view: u64, block: &Block, signature: &[u8; 64]) {
    out.extend_from_slice(&view.to_be_bytes());
    let block = block.encode();
    write_len(out, block.len());
    out.extend_from_slice(&block);
    out.extend_from_slice(signature);
}

fn read_accepted(reader: &mut Reader<'_>) -> Result<AcceptedBlock, ChainError> {
    let view = reader.u64()?;
    let len = read_count(reader, true, 1)?;
    let block = Block::decode(reader.take(len)?)?;
    Ok(AcceptedBlock {
        view,
        block: Arc::new(block),
        signature: reader.array()?,
    })
}

impl DurableSlot {
    /// Folds in an `Accepted` or `Prepared` record for this height.
    pub fn absorb(&mut self, record: &Record) {
        match record {
            Record::Accepted {
                view,
                block,
                signature,
            } => {
                self.accepted = Some(AcceptedBlock {
                    view: *view,
                    block: block.clone(),
                    signature: *signature,
                });
            }
            Record::Prepared(certificate) => self.prepared = Some(certificate.clone()),
            _ => {}
        }
    }

    /// The stored form: a flags byte, then the accepted block (view, length-prefixed
    /// block, signature) and the prepared certificate, each when present.
    pub fn encode(&self) -> Vec<u8> {
        let mut flags = 0;
        if self.accepted.is_some() {
            flags |= SLOT_ACCEPTED;
        }
        if self.prepared.is_some() {
            flags |= SLOT_PREPARED;
        }
        let mut out = vec![flags];
        if let Some(accepted) = &self.accepted {
            write_accepted(
                &mut out,
                accepted.view,
                &accepted.block,
                &accepted.signature,
            );
        }
        if let Some(prepared) = &self.prepared {
            write_prepared(&mut out, prepared);
        }
        out
    }

    /// Decodes the stored form.
    pub fn decode(bytes: &[u8]) -> Result<DurableSlot, ChainError> {
        let mut reader = Reader::new(bytes, "consensus log slot");
        let flags = reader.u8()?;
        if flags & !(SLOT_ACCEPTED | SLOT_PREPARED) != 0 {
            return Err(ChainError::Malformed {
                what: "consensus log slot",
                reason: "unknown flags",
            });
        }
        let mut slot = DurableSlot::default();
        if flags & SLOT_ACCEPTED != 0 {
            slot.accepted = Some(read_accepted(&mut reader)?);
        }
        if flags & SLOT_PREPARED != 0 {
            slot.prepared = Some(read_prepared(&mut reader)?);
        }
        reader.finish()?;
        Ok(slot)
    }
}

/// Everything a replica needs to resume without equivocating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durable {
    /// The current view.
    pub view: u64,
    /// Whether the view was entered (false while changing views).
    pub active: bool,
    /// The NEW-VIEW that started the last view entered (none for view 0); kept while
    /// changing views, for members that missed it.
    pub new_view: Option<Message>,
    /// The stable checkpoint.
    pub stable: CheckpointCertificate,
    /// Per-height state above the stable checkpoint.
    pub slots: BTreeMap<u64, DurableSlot>,
    /// A replica restored from a snapshot after losing its disk forgot what it signed
    /// at heights up to here: it signs no PRE-PREPARE, PREPARE, COMMIT, VIEW-CHANGE
    /// or NEW-VIEW until its tip reaches this height (0: it forgot nothing).
    pub abstain_through: u64,
    /// The membership epoch this state belongs to (views, votes and the log are an
    /// epoch's own).
    pub epoch: u64,
}

impl Durable {
    /// The prepared certificate of the highest height this replica holds one for:
    /// what it shows a member that lost its disk, beside its tip, as a block it
    /// may have to carry into a new view (its apply may not have reached the disk).
    pub fn highest_prepared(&self) -> Option<&PreparedCertificate> {
        self.slots
            .values()
            .rev()
            .find_map(|slot| slot.prepared.as_ref())
    }

    /// The state of a replica that never ran: view 0, checkpoint at genesis.
    pub fn genesis(genesis_hash: Hash) -> Durable {
        Durable {
            view: 0,
            active: true,
            new_view: None,
            stable: CheckpointCertificate {
                height: 0,
                hash: genesis_hash,
                votes: Vec::new(),
            },
            slots: BTreeMap::new(),
            abstain_through: 0,
            epoch: 0,
        }
    }

    /// The record that moves this state into `membership`'s epoch, whose ordering
    /// starts above `base` (the block at `membership.since - 1`), if it is not there
    /// yet.
    pub fn epoch_record(&self, membership: &Membership, base: &Header) -> Option<Record> {
        (membership.epoch > self.epoch).then(|| Record::Epoch {
            epoch: membership.epoch,
            height: base.height,
            hash: base.hash(),
        })
    }

    /// Folds one record in.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::ViewChange { view } => {
                self.view = *view;
                self.active = false;
            }
            Record::NewView(message) => {
                if let Payload::NewView(new_view) = &message.payload {
                    self.view = new_view.view;
                    self.active = true;
                    self.new_view = Some(message.clone());
                }
            }
            Record::Accepted { .. } | Record::Prepared(_) => {
                if let Some(height) = record.height().filter(|h| *h > self.stable.height) {
                    self.slots.entry(height).or_default().absorb(record);
                }
            }
            Record::Stable(certificate) => {
                if certificate.height > self.stable.height {
                    self.stable = certificate.clone();
                    self.slots = self.slots.split_off(&(certificate.height + 1));
                }
            }
            Record::Epoch {
                epoch,
                height,
                hash,
            } => {
                if *epoch <= self.epoch {
                    return;
                }
                self.epoch = *epoch;
                self.view = 0;
                self.active = true;
                self.new_view = None;
                // The epoch before may have made its last block's checkpoint stable
                // with its votes; that certificate is as good a base.
                if self.stable.height != *height || self.stable.hash != *hash {
                    self.stable = CheckpointCertificate {
                        height: *height,
                        hash: *hash,
                        votes: Vec::new(),
                    };
                }
                self.slots.clear();
            }
        }
    }
}
