//! Block validation (DESIGN.md, "Validation"): everything a replica checks before it
//! prepares a block, in order of cost so junk is refused cheaply.

use std::collections::HashSet;

use super::merkle::leaf_hash;
use super::{Block, ChainError, ChainParams, CompactRange, Hash, Header, HEADER_VERSION};

/// Answers whether an entry id is already in the chain (the store's entry index).
pub trait EntryIndex {
    /// Whether `id` was committed before.
    fn contains(&self, id: &Hash) -> Result<bool, ChainError>;
}

/// What a block is validated against.
#[derive(Clone, Copy, Debug)]
pub struct ValidationContext<'a> {
    /// The chain's hash.
    pub chain_hash: &'a Hash,
    /// The chain's limits.
    pub params: &'a ChainParams,
    /// The block's parent.
    pub parent: &'a Header,
    /// The difficulty policy's verdict for this height.
    pub required_difficulty: u32,
    /// The validator's clock, ms since the Unix epoch (an input: the chain layer reads
    /// no clock).
    pub now_ms: u64,
}

/// Checks the header against its parent and the policy, without looking at entries.
pub fn validate_header(context: &ValidationContext<'_>, header: &Header) -> Result<(), ChainError> {
    if header.version != HEADER_VERSION {
        return Err(ChainError::UnsupportedVersion {
            what: "header",
            version: header.version,
        });
    }
    if header.chain_hash != *context.chain_hash {
        return Err(ChainError::WrongChain {
            expected: *context.chain_hash,
            found: header.chain_hash,
        });
    }
    let expected_height = context.parent.height + 1;
    if header.height != expected_height {
        return Err(ChainError::WrongHeight {
            expected: expected_height,
            found: header.height,
        });
    }
    let parent_hash = context.parent.hash();
    if header.prev_hash != parent_hash {
        return Err(ChainError::WrongParent {
            expected: parent_hash,
            found: header.prev_hash,
        });
    }
    if header.timestamp_ms <= context.parent.timestamp_ms {
        return Err(ChainError::TimestampNotAfterParent {
            parent: context.parent.timestamp_ms,
            found: header.timestamp_ms,
        });
    }
    let max_drift_ms = context.params.max_future_drift_ms;
    if header.timestamp_ms > context.now_ms.saturating_add(max_drift_ms) {
        return Err(ChainError::TimestampInFuture {
            now: context.now_ms,
            found: header.timestamp_ms,
            max_drift_ms,
        });
    }
    if header.difficulty > 256 {
        return Err(ChainError::DifficultyOutOfRange {
            found: header.difficulty,
        });
    }
    if header.difficulty < context.required_difficulty {
        return Err(ChainError::DifficultyTooLow {
            required: context.required_difficulty,
            found: header.difficulty,
        });
    }
    let found_bits = header.hash().leading_zero_bits();
    if found_bits < header.difficulty {
        return Err(ChainError::InsufficientWork {
            difficulty: header.difficulty,
            found_bits,
        });
    }
    Ok(())
}

/// Fully validates `block` on top of `context.parent`, whose log is `parent_log`.
/// Returns the block's entry ids and the log after it, so the caller (the store) need
/// not hash anything twice.
pub fn validate_block(
    context: &ValidationContext<'_>,
    block: &Block,
    parent_log: &CompactRange,
    index: &impl EntryIndex,
) -> Result<(Vec<Hash>, CompactRange), ChainError> {
    let header = &block.header;
    validate_header(context, header)?;
    let limit = context.params.max_block_entries;
    if block.entries.len() > limit as usize {
        return Err(ChainError::TooManyEntries {
            count: block.entries.len(),
            limit,
        });
    }
    let expected_size = context.parent.log_size + block.entries.len() as u64;
    if header.log_size != expected_size || parent_log.size() != context.parent.log_size {
        return Err(ChainError::LogSizeMismatch {
            expected: expected_size,
            found: header.log_size,
        });
    }
    let mut ids = Vec::with_capacity(block.entries.len());
    let mut seen = HashSet::with_capacity(block.entries.len());
    let mut log = parent_log.clone();
    for entry in &block.entries {
        entry.verify(context.chain_hash, context.params.max_entry_bytes)?;
        let id = entry.id();
        if !seen.insert(id) || index.contains(&id)? {
            return Err(ChainError::DuplicateEntry { id });
        }
        log.append(leaf_hash(id.as_bytes()), |_, _, _| {});
        ids.push(id);
    }
    let root = log.root();
    if root != header.log_root {
        return Err(ChainError::LogRootMismatch {
            expected: root,
            found: header.log_root,
        });
    }
    Ok((ids, log))
}
