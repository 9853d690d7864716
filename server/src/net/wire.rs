//! What travels in a frame between members: consensus messages, forwarded entries,
//! and catch-up requests and answers. A tag byte, then the item's canonical encoding.

use crate::chain::codec::Reader;
use crate::chain::{Block, ChainError, ChainParams, CommitCertificate, Entry, Hash, HEADER_LEN};
use crate::consensus::Message;

const TAG_CONSENSUS: u8 = 1;
const TAG_ENTRY: u8 = 2;
const TAG_FETCH_COMMITTED: u8 = 3;
const TAG_COMMITTED: u8 = 4;
const TAG_FETCH_BLOCK: u8 = 5;
const TAG_BLOCK: u8 = 6;

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

    /// The kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Wire::Consensus(message) => message.kind(),
            Wire::Entry(_) => "entry",
            Wire::FetchCommitted { .. } => "fetch-committed",
            Wire::Committed { .. } => "committed",
            Wire::FetchBlock { .. } => "fetch-block",
            Wire::Block(_) => "block",
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
            Wire::Block(block),
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
        assert!(Wire::decode(&[]).is_err());
        assert!(Wire::decode(&[99, 0]).is_err());
    }
}
