//! The 32-byte SHA-256 digest type every other chain type is keyed by.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::ChainError;

/// A SHA-256 digest: block hashes, entry ids, Merkle nodes, the chain hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash (the genesis block's parent).
    pub const ZERO: Hash = Hash([0; 32]);

    /// SHA-256 of `bytes`.
    pub fn digest(bytes: &[u8]) -> Hash {
        Hash(Sha256::digest(bytes).into())
    }

    /// SHA-256 of the concatenation of `parts`, without copying them together.
    pub fn digest_parts(parts: &[&[u8]]) -> Hash {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        Hash(hasher.finalize().into())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, the form used in every API and file.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Number of leading zero bits, the measure of proof of work.
    pub fn leading_zero_bits(&self) -> u32 {
        let mut bits = 0;
        for byte in self.0 {
            if byte == 0 {
                bits += 8;
            } else {
                return bits + byte.leading_zeros();
            }
        }
        bits
    }
}

/// Lowercase hex of `bytes`. Receipts are mostly hex, and the `hex` crate's
/// char-at-a-time iterator was the API's largest cost under load; this writes two
/// bytes per input byte into a buffer of the right size.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0x0f)]);
    }
    // Every byte pushed is an ASCII digit.
    String::from_utf8(out).unwrap_or_default()
}

impl FromStr for Hash {
    type Err = ChainError;

    fn from_str(text: &str) -> Result<Hash, ChainError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|_| ChainError::BadHex {
            what: "hash",
            expected_bytes: 32,
        })?;
        Ok(Hash(out))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zero_bits_counts_across_bytes() {
        let mut h = Hash([0xff; 32]);
        assert_eq!(h.leading_zero_bits(), 0);
        h.0[0] = 0;
        h.0[1] = 0b0001_0000;
        assert_eq!(h.leading_zero_bits(), 11);
        assert_eq!(Hash::ZERO.leading_zero_bits(), 256);
    }

    #[test]
    fn fast_hex_matches_the_hex_crate() {
        let bytes: Vec<u8> = (0..=255u8).chain([0, 0xff, 0x0f, 0xf0]).collect();
        assert_eq!(to_hex(&bytes), hex::encode(&bytes));
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn hex_round_trip_and_rejects_bad_input() {
        let h = Hash::digest(b"abc");
        assert_eq!(h.to_hex().parse::<Hash>().unwrap(), h);
        assert!("zz".parse::<Hash>().is_err());
        assert!(h.to_hex()[..62].parse::<Hash>().is_err());
    }
}
