//! The block header, its fixed 136-byte encoding and the block hash.

use super::codec::Reader;
use super::{ChainError, CompactRange, Hash};

/// Header format version this build writes and accepts.
pub const HEADER_VERSION: u32 = 1;
/// Encoded header length. SHA-256 pads it to three 64-byte blocks.
pub const HEADER_LEN: usize = 136;
/// Offset of the nonce: the first byte of the third (last) SHA-256 block, so a miner
/// hashes the first 128 bytes once and runs one compression per nonce.
pub const NONCE_OFFSET: usize = 128;

// The miner's contract: the nonce starts a SHA-256 block, and the nonce, the 0x80 pad
// byte and the 8-byte bit length fit in that one block, so it is the last.
const _: () = assert!(NONCE_OFFSET.is_multiple_of(64) && HEADER_LEN - NONCE_OFFSET + 9 <= 64);

/// A block header. Block hash = SHA-256 of [`Header::encode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header format version ([`HEADER_VERSION`]).
    pub version: u32,
    /// SHA-256 of the canonical genesis spec: ties the block to one chain.
    pub chain_hash: Hash,
    /// Height; the genesis block is 0. Also the PBFT sequence number.
    pub height: u64,
    /// Proposer's wall clock, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Hash of the parent block.
    pub prev_hash: Hash,
    /// Entries in the Merkle log after this block (all entries since genesis).
    pub log_size: u64,
    /// RFC 9162 Merkle tree hash over the first `log_size` entry ids.
    pub log_root: Hash,
    /// Required leading zero bits of the block hash.
    pub difficulty: u32,
    /// Proof-of-work nonce.
    pub nonce: u64,
}

impl Header {
    /// The canonical encoding (docs/FORMAT.md, "Header").
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.version.to_be_bytes());
        out[4..36].copy_from_slice(self.chain_hash.as_bytes());
        out[36..44].copy_from_slice(&self.height.to_be_bytes());
        out[44..52].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out[52..84].copy_from_slice(self.prev_hash.as_bytes());
        out[84..92].copy_from_slice(&self.log_size.to_be_bytes());
        out[92..124].copy_from_slice(self.log_root.as_bytes());
        out[124..128].copy_from_slice(&self.difficulty.to_be_bytes());
        out[NONCE_OFFSET..HEADER_LEN].copy_from_slice(&self.nonce.to_be_bytes());
        out
    }

    /// Decodes exactly one header.
    pub fn decode(bytes: &[u8]) -> Result<Header, ChainError> {
        let mut reader = Reader::new(bytes, "header");
        let header = Header::read(&mut reader)?;
        reader.finish()?;
        Ok(header)
    }

    /// Reads one header from `reader`, leaving what follows it.
    pub fn read(reader: &mut Reader<'_>) -> Result<Header, ChainError> {
        let version = reader.u32()?;
        if version != HEADER_VERSION {
            return Err(ChainError::UnsupportedVersion {
                what: "header",
                version,
            });
        }
        Ok(Header {
            version,
            chain_hash: reader.hash()?,
            height: reader.u64()?,
            timestamp_ms: reader.u64()?,
            prev_hash: reader.hash()?,
            log_size: reader.u64()?,
            log_root: reader.hash()?,
            difficulty: reader.u32()?,
            nonce: reader.u64()?,
        })
    }

    /// The unmined header of the block after `parent` whose entries bring the log to
    /// `log` (nonce 0): what a primary mines.
    pub fn child(
        parent: &Header,
        log: &CompactRange,
        timestamp_ms: u64,
        difficulty: u32,
    ) -> Header {
        Header {
            version: HEADER_VERSION,
            chain_hash: parent.chain_hash,
            height: parent.height + 1,
            timestamp_ms,
            prev_hash: parent.hash(),
            log_size: log.size(),
            log_root: log.root(),
            difficulty,
            nonce: 0,
        }
    }

    /// The block hash.
    pub fn hash(&self) -> Hash {
        Hash::digest(&self.encode())
    }

    /// Whether the block hash meets the header's own difficulty.
    pub fn meets_difficulty(&self) -> bool {
        self.hash().leading_zero_bits() >= self.difficulty
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Header {
        Header {
            version: HEADER_VERSION,
            chain_hash: Hash([1; 32]),
            height: 0x0102_0304_0506_0708,
            timestamp_ms: 1_700_000_000_000,
            prev_hash: Hash([2; 32]),
            log_size: 42,
            log_root: Hash([3; 32]),
            difficulty: 20,
            nonce: 0x1122_3344_5566_7788,
        }
    }

    #[test]
    fn layout_is_big_endian_with_nonce_in_the_last_sha_block() {
        let bytes = sample().encode();
        assert_eq!(&bytes[0..4], &[0, 0, 0, 1]);
        assert_eq!(&bytes[36..44], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            &bytes[128..136],
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        // The nonce occupies the header's last 8 bytes, inside the third SHA-256 block.
        assert_eq!(NONCE_OFFSET / 64, (HEADER_LEN - 1) / 64);
    }

    #[test]
    fn round_trip_and_refusals() {
        let header = sample();
        assert_eq!(Header::decode(&header.encode()).unwrap(), header);
        assert!(Header::decode(&header.encode()[..135]).is_err());
        let mut bad_version = header.encode();
        bad_version[3] = 2;
        assert!(matches!(
            Header::decode(&bad_version),
            Err(ChainError::UnsupportedVersion {
                what: "header",
                version: 2
            })
        ));
    }
}
