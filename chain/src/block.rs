//! A block: header plus its entries, and the block encoding.

use super::codec::Reader;
use super::entry::ENTRY_OVERHEAD;
use super::{ChainError, Entry, Hash, Header};

/// A header and the entries it commits to (through `log_root`), in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The header.
    pub header: Header,
    /// The entries appended to the log by this block.
    pub entries: Vec<Entry>,
}

impl Block {
    /// The block hash (the header's hash).
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    /// The canonical encoding: header ‖ u32 entry count ‖ entries (docs/FORMAT.md).
    pub fn encode(&self) -> Vec<u8> {
        let size = self.header.encode().len()
            + 4
            + self.entries.iter().map(Entry::encoded_len).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&self.header.encode());
        let count = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for entry in &self.entries {
            entry.encode_into(&mut out);
        }
        out
    }

    /// Decodes exactly one block. The entry count is checked against the input length
    /// before anything is allocated, so a lying count cannot exhaust memory.
    pub fn decode(bytes: &[u8]) -> Result<Block, ChainError> {
        let mut reader = Reader::new(bytes, "block");
        let header = Header::read(&mut reader)?;
        let count = reader.u32()? as usize;
        if count > reader.remaining() / ENTRY_OVERHEAD {
            return Err(ChainError::Malformed {
                what: "block",
                reason: "entry count exceeds the encoded size",
            });
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(Entry::read(&mut reader)?);
        }
        reader.finish()?;
        Ok(Block { header, entries })
    }

    /// The ids of the entries, in order.
    pub fn entry_ids(&self) -> Vec<Hash> {
        self.entries.iter().map(Entry::id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::header::tests::sample;
    use super::*;

    #[test]
    fn round_trip_and_bounded_decode() {
        let block = Block {
            header: sample(),
            entries: vec![Entry::new(b"a".to_vec()), Entry::new(Vec::new())],
        };
        let bytes = block.encode();
        assert_eq!(Block::decode(&bytes).unwrap(), block);

        let mut lying_count = bytes.clone();
        lying_count[136..140].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Block::decode(&lying_count),
            Err(ChainError::Malformed { what: "block", .. })
        ));
        assert!(Block::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
