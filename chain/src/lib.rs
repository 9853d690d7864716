//! The ledger's chain: entries, headers, blocks, genesis, commit certificates, the
//! RFC 9162 Merkle log, receipts, snapshots' manifests, membership and validation.
//! Pure: no IO, no clock, no randomness; time arrives as an argument.
//!
//! The node (`ledger`) and its clients (`ledger-client`) share it, so a receipt is
//! checked by the same code that built it. Byte formats are in `docs/FORMAT.md`.

mod block;
mod certificate;
pub mod codec;
mod entry;
mod error;
mod genesis;
mod hash;
mod header;
mod history;
pub mod membership;
pub mod merkle;
mod receipt;
pub mod snapshot;
mod validate;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use block::Block;
pub use certificate::{commit_digest, CommitCertificate, CommitSignature};
pub use entry::{Author, Entry, EntryKind, ENTRY_OVERHEAD};
pub use error::{CertificateError, ChainError, GenesisError, TreeRangeError};
pub use genesis::{
    max_faulty, quorum, Admins, ChainParams, ChainSpec, GenesisFile, GenesisMember, Member, Members,
};
pub use hash::{to_hex, Hash};
pub use header::{Header, HEADER_LEN, HEADER_VERSION, NONCE_OFFSET};
pub use history::{ChangeProof, MembershipHistory};
pub use membership::{
    address_problem, epoch_domain, Change, LearnerProgress, Membership, MembershipError,
    Reconfiguration,
};
pub use merkle::CompactRange;
pub use receipt::Receipt;
pub use validate::{
    fit_block, validate_block, validate_header, EntryIndex, Fit, Policy, ValidationContext,
};
