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
    /// A reconfiguration that may not be ordered where it is.
    #[error("reconfiguration refused: {0}")]
    Membership(#[from] super::membership::MembershipError),
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
    /// Looking up existing entries failed: the storage error's text, which stays text
    /// so that the pure chain layer holds no IO types.
    #[error("entry index lookup failed: {0}")]
    Lookup(String),
    /// Refused by the chain's policy (a validation plugin), in the plugin's own words.
    #[error("refused by policy: {0}")]
    Policy(String),
    /// The difficulty policy needs a header the caller does not have at hand.
    #[error("the difficulty policy needs header {height}, which is not at hand")]
    PolicyHeaderMissing {
        /// The header's height.
        height: u64,
    },
    /// A genesis file that cannot define a chain.
    #[error("invalid genesis: {0}")]
    Genesis(#[from] GenesisError),
    /// A commit certificate that does not prove its block.
    #[error("invalid commit certificate: {0}")]
    Certificate(#[from] CertificateError),
    /// A Merkle proof request outside the tree.
    #[error("invalid Merkle tree range: {0}")]
    TreeRange(#[from] TreeRangeError),
    /// A Merkle proof that does not verify.
    #[error("Merkle proof does not verify: {0}")]
    Proof(&'static str),
    /// A membership proof's change `index` (from 0) does not hold.
    #[error("membership change {index} of the proof (block {height}): {reason}")]
    MembershipProof {
        /// Which change, from 0.
        index: usize,
        /// The height of the block that holds it.
        height: u64,
        /// What is wrong with it.
        reason: Box<ChainError>,
    },
}

/// Why a genesis file cannot define a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    /// Not TOML of the genesis file's shape (the parser's words).
    #[error("{0}")]
    Toml(String),
    /// Too few or too many members.
    #[error("between 1 and {max} members required, found {found}")]
    MemberCount {
        /// Members listed.
        found: usize,
        /// The most a chain takes.
        max: usize,
    },
    /// One key listed twice among the members, or among the admins.
    #[error("{role} {key} listed twice")]
    DuplicateKey {
        /// `member` or `admin`.
        role: &'static str,
        /// The key, hex.
        key: String,
    },
    /// A key that is not 64 hex characters.
    #[error("{role} public key {key:?} is not 64 hex characters")]
    KeyNotHex {
        /// `member` or `admin`.
        role: &'static str,
        /// What the file holds.
        key: String,
    },
    /// A key that is not a valid ed25519 point.
    #[error("{role} key {key} is not a valid ed25519 public key")]
    KeyInvalid {
        /// `member` or `admin`.
        role: &'static str,
        /// The key, hex.
        key: String,
    },
    /// A key of small order, which anyone could sign for.
    #[error("{role} key {key} is a small-order point")]
    KeyWeak {
        /// `member` or `admin`.
        role: &'static str,
        /// The key, hex.
        key: String,
    },
    /// More admin keys than a chain takes.
    #[error("at most {max} admins, found {found}")]
    AdminCount {
        /// Admins listed.
        found: usize,
        /// The most a chain takes.
        max: usize,
    },
    /// A threshold of no admins, or of more than are listed.
    #[error(
        "admin_threshold must be between 1 and the number of admins ({admins}), found {threshold}"
    )]
    AdminThreshold {
        /// Admins listed.
        admins: usize,
        /// The threshold given.
        threshold: u64,
    },
    /// Admins without a threshold.
    #[error("admin_threshold is required with admins: how many of the {admins} must sign a membership change")]
    AdminThresholdMissing {
        /// Admins listed.
        admins: usize,
    },
    /// A threshold without admins.
    #[error("admin_threshold without admins; without admins leave it out (the membership is then fixed)")]
    ThresholdWithoutAdmins,
    /// A chain id that is empty, too long, or holds control characters.
    #[error("chain_id must be 1 to {max} bytes without control characters")]
    ChainId {
        /// The longest allowed.
        max: usize,
    },
    /// A difficulty no hash can meet.
    #[error("difficulty {0} exceeds 256 bits")]
    Difficulty(u32),
    /// An entry size limit out of range.
    #[error("max_entry_bytes must be between 1 and {max}")]
    MaxEntryBytes {
        /// The largest allowed.
        max: u32,
    },
    /// A block size limit out of range.
    #[error("max_block_entries must be between 1 and {max}")]
    MaxBlockEntries {
        /// The largest allowed.
        max: u32,
    },
    /// A checkpoint interval of zero.
    #[error("checkpoint_interval must be at least 1")]
    CheckpointInterval,
}

/// Why a commit certificate does not prove its block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// It names another block or height.
    #[error("certifies block {certified} at height {certified_height}, not {block} at {height}")]
    OtherBlock {
        /// The block it names.
        certified: Hash,
        /// The height it names.
        certified_height: u64,
        /// The block it was checked for.
        block: Hash,
        /// That block's height.
        height: u64,
    },
    /// A signer that is not a member.
    #[error("signer {0} is not a member")]
    NotMember(Hash),
    /// A signer listed twice.
    #[error("signer {0} appears twice")]
    SignedTwice(Hash),
    /// A signature that does not verify.
    #[error("bad signature from {0}")]
    BadSignature(Hash),
    /// Fewer signers than a quorum.
    #[error(
        "{found} signatures, a quorum of {members} members is {quorum}{}",
        if *legacy {
            format!(
                "; it was certified by a ledgerd that counted 2f + 1 = {found}, unsafe for \
                 {members} members (README, \"Upgrading\")"
            )
        } else {
            String::new()
        }
    )]
    TooFew {
        /// Distinct valid signers.
        found: usize,
        /// The quorum.
        quorum: usize,
        /// The members.
        members: usize,
        /// Whether `found` meets the 2f + 1 an older ledgerd counted where n is not
        /// 3f + 1: such a chain was certified under an unsafe rule.
        legacy: bool,
    },
}

/// A Merkle request outside the tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeRangeError {
    /// A leaf beyond the log.
    #[error("leaf {index} is not in a log of size {size}")]
    LeafBeyond {
        /// The leaf.
        index: u64,
        /// The log's size.
        size: u64,
    },
    /// A consistency proof asked from a larger log to a smaller one.
    #[error("old size {old} is larger than new size {new}")]
    Shrinking {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
    /// A size beyond the committed log.
    #[error("log size {size} is beyond the committed log ({committed})")]
    BeyondLog {
        /// The size asked for.
        size: u64,
        /// The committed log's size.
        committed: u64,
    },
    /// A leaf appended before the run a set of appended nodes covers.
    #[error("leaf {index} was appended before this run, which starts at {first}")]
    BeforeRun {
        /// The leaf.
        index: u64,
        /// The run's first leaf.
        first: u64,
    },
    /// A node the nodes at hand do not hold.
    #[error("no node at level {level} index {index} is at hand")]
    MissingNode {
        /// Its level.
        level: u8,
        /// Its index at that level.
        index: u64,
    },
}
