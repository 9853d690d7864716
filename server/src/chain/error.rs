//! The one error type of the pure chain layer.

use super::Hash;

/// Why chain data was refused. Every variant says what was wrong in words an operator
/// or a client can act on; none carries secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// An encoding could not be decoded.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// A hex string had the wrong length or characters.
    #[error("{what} must be {expected_bytes} bytes of hex")]
    BadHex {
        /// What the hex was meant to hold.
        what: &'static str,
        /// Its decoded length.
        expected_bytes: usize,
    },
    /// A format version this build does not know.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which format.
        what: &'static str,
        /// The version found.
        version: u32,
    },
    /// Entry data above the chain's limit.
    #[error("entry data is {size} bytes, the limit is {limit}")]
    EntryTooLarge {
        /// Size of the data.
        size: usize,
        /// The genesis limit.
        limit: u32,
    },
    /// A public key that is not a valid ed25519 point.
    #[error("invalid ed25519 public key")]
    BadPublicKey,
    /// A signature that does not verify.
    #[error("invalid signature on {what}")]
    BadSignature {
        /// What was signed.
        what: &'static str,
    },
    /// Data from another chain.
    #[error("belongs to chain {found}, expected {expected}")]
    WrongChain {
        /// This chain's hash.
        expected: Hash,
        /// The hash the data carries.
        found: Hash,
    },
    /// A block whose height does not follow its parent.
    #[error("block height {found} does not follow parent height (expected {expected})")]
    WrongHeight {
        /// Parent height + 1.
        expected: u64,
        /// The height in the header.
        found: u64,
    },
    /// A block that does not link to the parent it is validated against.
    #[error("block links to parent {found}, expected {expected}")]
    WrongParent {
        /// The parent's hash.
        expected: Hash,
        /// The prev hash in the header.
        found: Hash,
    },
    /// Timestamps must strictly increase along the chain.
    #[error("block timestamp {found} ms is not after its parent's {parent} ms")]
    TimestampNotAfterParent {
        /// The parent's timestamp.
        parent: u64,
        /// The block's timestamp.
        found: u64,
    },
    /// A timestamp further ahead of the validator's clock than the chain allows.
    #[error(
        "block timestamp {found} ms is more than {max_drift_ms} ms ahead of local time {now} ms"
    )]
    TimestampInFuture {
        /// The validator's clock.
        now: u64,
        /// The block's timestamp.
        found: u64,
        /// The genesis tolerance.
        max_drift_ms: u64,
    },
    /// A header claiming less work than the policy requires.
    #[error("block difficulty {found} is below the required {required}")]
    DifficultyTooLow {
        /// What the difficulty policy asks.
        required: u32,
        /// What the header claims.
        found: u32,
    },
    /// A difficulty no SHA-256 hash can meet.
    #[error("difficulty {found} exceeds 256 bits")]
    DifficultyOutOfRange {
        /// What the header claims.
        found: u32,
    },
    /// A hash without the leading zero bits its header claims.
    #[error(
        "block hash has {found_bits} leading zero bits, difficulty {difficulty} requires more"
    )]
    InsufficientWork {
        /// The header's difficulty.
        difficulty: u32,
        /// Leading zero bits of the hash.
        found_bits: u32,
    },
    /// A block above the chain's entry count limit.
    #[error("block holds {count} entries, the limit is {limit}")]
    TooManyEntries {
        /// Entries in the block.
        count: usize,
        /// The genesis limit.
        limit: u32,
    },
    /// A header whose log size is not the parent's plus its entries.
    #[error("header log size {found} does not match the expected {expected}")]
    LogSizeMismatch {
        /// Parent log size + entries.
        expected: u64,
        /// The header's log size.
        found: u64,
    },
    /// A header whose log root is not the Merkle root of the log after its entries.
    #[error("header log root {found} does not match the recomputed {expected}")]
    LogRootMismatch {
        /// The recomputed root.
        expected: Hash,
        /// The header's root.
        found: Hash,
    },
    /// An entry already in the chain or earlier in the same block.
    #[error("duplicate entry {id}")]
    DuplicateEntry {
        /// The entry id.
        id: Hash,
    },
    /// Looking up existing entries failed (storage error, reported as text to keep the
    /// chain layer free of IO types).
    #[error("entry index lookup failed: {0}")]
    Lookup(String),
    /// Refused by the chain's policy (a validation plugin).
    #[error("refused by policy: {0}")]
    Policy(String),
    /// A genesis file that cannot define a chain.
    #[error("invalid genesis: {0}")]
    Genesis(String),
    /// A commit certificate that does not prove its block.
    #[error("invalid commit certificate: {0}")]
    Certificate(String),
    /// A Merkle proof request outside the tree.
    #[error("invalid Merkle tree range: {0}")]
    TreeRange(String),
    /// A Merkle proof that does not verify.
    #[error("Merkle proof does not verify: {0}")]
    Proof(&'static str),
}
