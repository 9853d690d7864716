//! Big-endian, bounds-checked reading of canonical encodings.
//!
//! Every decoder in the chain goes through [`Reader`], so a short or oversized input
//! becomes a [`ChainError::Malformed`] naming what was being read, never a panic.

use super::{ChainError, Hash};

/// A cursor over untrusted bytes.
pub struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `bytes`, naming them `what` in errors.
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }

    fn malformed(&self, reason: &'static str) -> ChainError {
        ChainError::Malformed {
            what: self.what,
            reason,
        }
    }

    /// The next `len` bytes.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], ChainError> {
        if self.bytes.len() < len {
            return Err(self.malformed("truncated"));
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    /// The next `N` bytes.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ChainError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// The next byte.
    pub fn u8(&mut self) -> Result<u8, ChainError> {
        Ok(self.array::<1>()?[0])
    }

    /// The next big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, ChainError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// The next big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, ChainError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// The next big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, ChainError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// The next 32 bytes, as a hash.
    pub fn hash(&mut self) -> Result<Hash, ChainError> {
        Ok(Hash(self.array()?))
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Fails unless every byte was consumed: trailing bytes would make two encodings
    /// of one value, and canonical means one.
    pub fn finish(self) -> Result<(), ChainError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes"))
        }
    }
}
