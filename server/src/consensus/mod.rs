//! PBFT consensus (Castro & Liskov) as a pure state machine: no IO, no clock, no
//! randomness. A driver feeds a [`Replica`] inputs (peer messages, ticks carrying the
//! time, entries, mined and fetched blocks) and performs its outputs in order (send,
//! persist, apply, mine, fetch); the node does so over the network and redb, the
//! deterministic simulator over a hostile virtual network.

mod durable;
#[cfg(test)]
mod harness;
mod message;
mod replica;

pub use durable::{AcceptedBlock, Durable, DurableSlot, Record, ABSTAIN_UNKNOWN};
pub use message::{
    checkpoint_digest, pre_prepare_digest, prepare_digest, CheckpointCertificate, Invalid,
    MemberIndex, Message, NewView, Payload, PreparedCertificate, Proposal, SignatureMemo, Verifier,
    ViewChange, Vote,
};
#[cfg(feature = "testing")]
pub use replica::Flaws;
pub use replica::{
    Config, DropReason, Footprint, Input, NotAMember, Output, Replica, Timing, Tip,
    ViewChangeCause, COMMITTED_BLOCK,
};
