//! The chain: entries, headers, blocks, genesis, the Merkle log and validation. Pure:
//! no IO, no clock, no randomness; time arrives as an argument.

mod block;
mod certificate;
pub(crate) mod codec;
mod entry;
mod error;
pub(crate) mod genesis;
mod hash;
mod header;
pub mod membership;
pub mod merkle;
mod receipt;
pub mod snapshot;
mod validate;

pub use block::Block;
pub use certificate::{commit_digest, CommitCertificate, CommitSignature};
pub use entry::{Author, Entry, EntryKind, ENTRY_OVERHEAD};
pub use error::{CertificateError, ChainError, GenesisError, TreeRangeError};
pub use genesis::{
    quorum, Admins, ChainParams, ChainSpec, GenesisFile, GenesisMember, Member, Members,
};
pub use hash::{to_hex, Hash};
pub use header::{Header, HEADER_LEN, HEADER_VERSION, NONCE_OFFSET};
pub use membership::{epoch_domain, Change, Membership, MembershipError, Reconfiguration};
pub use merkle::CompactRange;
pub use receipt::Receipt;
pub use validate::{validate_block, validate_header, EntryIndex, Policy, ValidationContext};
