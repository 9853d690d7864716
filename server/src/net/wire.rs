//! What travels in a frame between members: consensus messages, forwarded entries,
//! and catch-up requests and answers; on a request connection, the requests of a
//! member that joins and their answers. A tag byte, then the item's canonical
//! encoding.

use crate::chain::codec::Reader;
use crate::chain::{Block, ChainError, ChainParams, CommitCertificate, Entry, Hash, HEADER_LEN};
use crate::consensus::{Message, PreparedCertificate};

const TAG_CONSENSUS: u8 = 1;
const TAG_ENTRY: u8 = 2;
const TAG_FETCH_COMMITTED: u8 = 3;
const TAG_COMMITTED: u8 = 4;
const TAG_FETCH_BLOCK: u8 = 5;
const TAG_BLOCK: u8 = 6;
const TAG_FETCH_SNAPSHOT: u8 = 7;
const TAG_SNAPSHOT: u8 = 8;
const TAG_FETCH_CHUNK: u8 = 9;
const TAG_CHUNK: u8 = 10;
const TAG_FETCH_COMMITTED_AT: u8 = 11;
const TAG_UNAVAILABLE: u8 = 12;
const TAG_FETCH_PREPARED: u8 = 13;
const TAG_PREPARED: u8 = 14;

/// Longest reason an `unavailable` answer carries.
const MAX_REASON: usize = 1024;

/// One frame's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wire {
    /// A signed PBFT message.
    Consensus(Message),
    /// A client's entry, passed on to the primary (or to all, when overdue).
    Entry(Entry),
    /// Asks for committed blocks above `after`, with their certificates, and for the
    /// NEW-VIEW of the answerer's view if it is above `entered_view`.
    FetchCommitted {
        /// The asker's applied height.
        after: u64,
        /// The last view the asker entered.
        entered_view: u64,
    },
    /// One committed block and its commit certificate.
    Committed {
        /// The block.
        block: Block,
        /// Its commit certificate (a quorum's signatures).
        certificate: CommitCertificate,
    },
    /// Asks for the body of the block with `hash` at `height`.
    FetchBlock {
        /// Its height.
        height: u64,
        /// Its hash.
        hash: Hash,
    },
    /// A block body.
    Block(Block),
    /// Asks for the manifest of the snapshot at `height` (0: the latest served).
    FetchSnapshot {
        /// The snapshot's height, or 0.
        height: u64,
    },
    /// A snapshot manifest, encoded (docs/FORMAT.md); the asker decodes and checks it
    /// as it would one served by the client API.
    Snapshot(Vec<u8>),
    /// Asks for chunk `index` of the snapshot at `height`.
    FetchChunk {
        /// The snapshot's height.
        height: u64,
        /// The chunk's index.
        index: u64,
    },
    /// A snapshot chunk: the entry ids of one tile.
    Chunk(Vec<u8>),
    /// Asks for the committed block at `height` with its certificate (0: the
    /// answerer's highest); answered with [`Wire::Committed`].
    FetchCommittedAt {
        /// The block's height, or 0.
        height: u64,
    },
    /// Asks for the prepared certificate of the highest height the answerer holds
    /// one for; answered with [`Wire::Prepared`], or `unavailable` when it holds none.
    FetchPrepared,
    /// A prepared certificate: a block the answerer may have to carry into a new
    /// view, shown to a member that lost its disk beside the answerer's tip, which
    /// may lie below it.
    Prepared(PreparedCertificate),
    /// A request that is not answered: `busy` to ask again shortly, otherwise not
    /// served here; with why.
    Unavailable {
        /// Every transfer slot is taken; the same request may succeed shortly.
        busy: bool,
        /// Why, for the asker's log.
        reason: String,
    },
}

impl Wire {
    /// The largest frame an honest member sends under `params`: a PRE-PREPARE or a
    /// committed block holding the most entries of the largest size, with their
    /// author signatures, plus room for the message around it.
    pub fn max_frame(params: &ChainParams) -> usize {
        const PER_ENTRY: usize = 8 + 32 + 64 + 64;
        const AROUND: usize = 64 * 1024;
        let entries = params.max_block_entries as usize;
        let entry = params.max_entry_bytes as usize + PER_ENTRY;
        entries
            .saturating_mul(entry)
            .saturating_add(HEADER_LEN + AROUND)
    }

    /// An answer saying why a request is not answered; `busy` to ask again shortly.
    pub fn unavailable(busy: bool, reason: impl Into<String>) -> Wire {
        Wire::Unavailable {
            busy,
            reason: reason.into(),
        }
    }

    /// The kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Wire::Consensus(message) => message.kind(),
            Wire::Entry(_) => "entry",
            Wire::FetchCommitted { .. } => "fetch-committed",
            Wire::Committed { .. } => "committed",
            Wire::FetchBlock { .. } => "fetch-block",
            Wire::Block(_) => "block",
            Wire::FetchSnapshot { .. } => "fetch-snapshot",
            Wire::Snapshot(_) => "snapshot",
            Wire::FetchChunk { .. } => "fetch-chunk",
            Wire::Chunk(_) => "chunk",
            Wire::FetchCommittedAt { .. } => "fetch-committed-at",
            Wire::FetchPrepared => "fetch-prepared",
            Wire::Prepared(_) => "prepared",
            Wire::Unavailable { .. } => "unavailable",
        }
    }

    /// The frame bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Wire::Consensus(message) => {
                out.push(TAG_CONSENSUS);
                out.extend(message.encode());
            }
            Wire::Entry(entry) => {
                out.push(TAG_ENTRY);
                entry.encode_into(&mut out);
            }
            Wire::FetchCommitted {
                after,
                entered_view,
            } => {
                out.push(TAG_FETCH_COMMITTED);
                out.extend_from_slice(&after.to_be_bytes());
                out.extend_from_slice(&entered_view.to_be_bytes());
            }
            Wire::Committed { block, certificate } => {
                out.push(TAG_COMMITTED);
                let block = block.encode();
                out.extend_from_slice(&(block.len() as u64).to_be_bytes());
                out.extend(block);
                out.extend(certificate.encode());
            }
            Wire::FetchBlock { height, hash } => {
                out.push(TAG_FETCH_BLOCK);
                out.extend_from_slice(&height.to_be_bytes());
                out.extend_from_slice(hash.as_bytes());
            }
            Wire::Block(block) => {
                out.push(TAG_BLOCK);
                out.extend(block.encode());
            }
            Wire::FetchSnapshot { height } => {
                out.push(TAG_FETCH_SNAPSHOT);
                out.extend_from_slice(&height.to_be_bytes());
            }
            Wire::Snapshot(manifest) => {
                out.push(TAG_SNAPSHOT);
                out.extend_from_slice(manifest);
            }
            Wire::FetchChunk { height, index } => {
                out.push(TAG_FETCH_CHUNK);
                out.extend_from_slice(&height.to_be_bytes());
                out.extend_from_slice(&index.to_be_bytes());
            }
            Wire::Chunk(ids) => {
                out.push(TAG_CHUNK);
                out.extend_from_slice(ids);
            }
            Wire::FetchCommittedAt { height } => {
                out.push(TAG_FETCH_COMMITTED_AT);
                out.extend_from_slice(&height.to_be_bytes());
            }
            Wire::FetchPrepared => out.push(TAG_FETCH_PREPARED),
            Wire::Prepared(certificate) => {
                out.push(TAG_PREPARED);
                out.extend(certificate.encode());
            }
            Wire::Unavailable { busy, reason } => {
                out.push(TAG_UNAVAILABLE);
                out.push(u8::from(*busy));
                let mut cut = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.extend_from_slice(&reason.as_bytes()[..cut]);
            }
        }
        out
    }

    /// The block and certificate of a `committed` frame that must hold block
    /// `height` (what `GET /v1/blocks/{h}/committed` serves and snapshot files hold);
    /// otherwise why not.
    pub fn committed_at(frame: &[u8], height: u64) -> Result<(Block, CommitCertificate), String> {
        match Wire::decode(frame) {
            Ok(Wire::Committed { block, certificate }) if block.header.height == height => {
                Ok((block, certificate))
            }
            Ok(_) => Err(format!("not committed block {height}")),
            Err(error) => Err(format!("block {height}: {error}")),
        }
    }

    /// Parses a frame; anything else than exactly one item is an error.
    pub fn decode(frame: &[u8]) -> Result<Wire, ChainError> {
        let (&tag, rest) = frame.split_first().ok_or(ChainError::Malformed {
            what: "peer frame",
            reason: "empty",
        })?;
        match tag {
            TAG_CONSENSUS => Message::decode(rest).map(Wire::Consensus),
            TAG_ENTRY => Entry::decode(rest).map(Wire::Entry),
            TAG_FETCH_COMMITTED => {
                let mut reader = Reader::new(rest, "fetch request");
                let after = reader.u64()?;
                let entered_view = reader.u64()?;
                reader.finish()?;
                Ok(Wire::FetchCommitted {
                    after,
                    entered_view,
                })
            }
            TAG_COMMITTED => {
                let mut reader = Reader::new(rest, "committed block");
                let len = usize::try_from(reader.u64()?).unwrap_or(usize::MAX);
                if len > reader.remaining() {
                    return Err(ChainError::Malformed {
                        what: "committed block",
                        reason: "block length exceeds the frame",
                    });
                }
                let block = Block::decode(reader.take(len)?)?;
                let certificate = CommitCertificate::decode(reader.take(reader.remaining())?)?;
                Ok(Wire::Committed { block, certificate })
            }
            TAG_FETCH_BLOCK => {
                let mut reader = Reader::new(rest, "block request");
                let height = reader.u64()?;
                let hash = reader.hash()?;
                reader.finish()?;
                Ok(Wire::FetchBlock { height, hash })
            }
            TAG_BLOCK => Block::decode(rest).map(Wire::Block),
            TAG_FETCH_SNAPSHOT | TAG_FETCH_COMMITTED_AT => {
                let mut reader = Reader::new(rest, "request");
                let height = reader.u64()?;
                reader.finish()?;
                Ok(match tag {
                    TAG_FETCH_SNAPSHOT => Wire::FetchSnapshot { height },
                    _ => Wire::FetchCommittedAt { height },
                })
            }
            TAG_SNAPSHOT => Ok(Wire::Snapshot(rest.to_vec())),
            TAG_FETCH_CHUNK => {
                let mut reader = Reader::new(rest, "chunk request");
                let height = reader.u64()?;
                let index = reader.u64()?;
                reader.finish()?;
                Ok(Wire::FetchChunk { height, index })
            }
            TAG_CHUNK => Ok(Wire::Chunk(rest.to_vec())),
            TAG_FETCH_PREPARED => match rest.is_empty() {
                true => Ok(Wire::FetchPrepared),
                false => Err(ChainError::Malformed {
                    what: "prepared request",
                    reason: "bytes after the tag",
                }),
            },
            TAG_PREPARED => PreparedCertificate::decode(rest).map(Wire::Prepared),
            TAG_UNAVAILABLE => match rest.split_first() {
                // Refused rather than repaired: one encoding per answer (found by
                // the `wire` fuzz target).
                Some((&busy @ (0 | 1), reason)) if reason.len() <= MAX_REASON => {
                    match std::str::from_utf8(reason) {
                        Ok(reason) => Ok(Wire::Unavailable {
                            busy: busy == 1,
                            reason: reason.to_owned(),
                        }),
                        Err(_) => Err(ChainError::Malformed {
                            what: "unavailable answer",
                            reason: "the reason is not UTF-8",
                        }),
                    }
                }
                _ => Err(ChainError::Malformed {
                    what: "unavailable answer",
                    reason: "bad flag or reason too long",
                }),
            },
            _ => Err(ChainError::Malformed {
                what: "peer frame",
                reason: "unknown tag",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::Payload;
    use crate::testing;

    #[test]
    fn every_kind_round_trips_and_damage_is_refused() {
        let keys: Vec<_> = (1..=4).map(testing::key).collect();
        let spec = testing::spec(&keys, 2);
        let genesis = spec.genesis_block();
        let block = testing::next_block(
            &genesis.header,
            &crate::chain::CompactRange::new(),
            testing::entries(1, 3, 20),
            2,
        );
        let certificate = testing::certify(&keys[..3], &block);
        let message = Message::sign(
            &spec.chain_hash(),
            1,
            &keys[1],
            Payload::Prepare {
                view: 0,
                height: 1,
                hash: block.hash(),
            },
        );
        let all = [
            Wire::Consensus(message),
            Wire::Entry(block.entries[0].clone()),
            Wire::FetchCommitted {
                after: 7,
                entered_view: 2,
            },
            Wire::Committed {
                block: block.clone(),
                certificate,
            },
            Wire::FetchBlock {
                height: 1,
                hash: block.hash(),
            },
            Wire::Block(block.clone()),
            Wire::FetchSnapshot { height: 0 },
            Wire::FetchChunk {
                height: 64,
                index: 3,
            },
            Wire::FetchCommittedAt { height: 9 },
            Wire::FetchPrepared,
            Wire::Prepared(PreparedCertificate {
                view: 3,
                header: block.header,
                votes: (0..3)
                    .map(|member| crate::consensus::Vote {
                        member,
                        signature: [member as u8; 64],
                    })
                    .collect(),
            }),
        ];
        for wire in all {
            let bytes = wire.encode();
            assert!(bytes.len() <= Wire::max_frame(&spec.params));
            assert_eq!(Wire::decode(&bytes).as_ref(), Ok(&wire));
            assert!(Wire::decode(&bytes[..bytes.len() - 1]).is_err(), "{wire:?}");
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Wire::decode(&longer).is_err(), "{wire:?}");
        }
        // Raw bytes and text, which end with the frame, are checked by the asker.
        let unavailable = Wire::Unavailable {
            busy: true,
            reason: "4 snapshot chunks are being served".into(),
        };
        for wire in [
            Wire::Snapshot(vec![1, 2, 3]),
            Wire::Chunk(vec![7; 64]),
            unavailable,
        ] {
            assert_eq!(Wire::decode(&wire.encode()), Ok(wire));
        }
        let long = Wire::Unavailable {
            busy: false,
            reason: "é".repeat(MAX_REASON),
        };
        let Ok(Wire::Unavailable { reason, .. }) = Wire::decode(&long.encode()) else {
            panic!("a long reason is cut, not refused");
        };
        assert_eq!(reason.len(), MAX_REASON);
        assert!(Wire::decode(&[TAG_UNAVAILABLE, 2]).is_err());
        // Bytes that are not UTF-8 would come back other bytes: refused.
        assert!(Wire::decode(&[TAG_UNAVAILABLE, 1, b'o', 0xff, b'k']).is_err());
        assert!(Wire::decode(&[]).is_err());
        assert!(Wire::decode(&[99, 0]).is_err());
    }
}
