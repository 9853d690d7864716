//! Builders of valid chains for tests, benches and the fixture generator: deterministic
//! keys, a genesis spec over them, mined blocks and commit certificates signed by every
//! member. Nothing here is used by a running node.

use std::num::NonZeroUsize;
use std::sync::atomic::AtomicBool;

use ed25519_dalek::{Signer, SigningKey};

use crate::chain::genesis::{
    default_checkpoint_interval, default_max_block_entries, default_max_entry_bytes,
    default_max_future_drift_ms,
};
use crate::chain::merkle::leaf_hash;
use crate::chain::{
    commit_digest, Block, ChainSpec, CommitCertificate, CommitSignature, CompactRange, Entry,
    GenesisFile, GenesisMember, Hash, Header, HEADER_VERSION,
};
use crate::pow::{self, Outcome};

/// A deterministic signing key from a small seed.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A spec over `members` with the given difficulty and default limits.
pub fn spec(members: &[SigningKey], difficulty: u32) -> ChainSpec {
    let file = GenesisFile {
        chain_id: "test-chain".into(),
        timestamp_ms: 1_767_225_600_000,
        difficulty,
        max_entry_bytes: default_max_entry_bytes(),
        max_block_entries: default_max_block_entries(),
        max_future_drift_ms: default_max_future_drift_ms(),
        checkpoint_interval: default_checkpoint_interval(),
        members: members
            .iter()
            .map(|key| GenesisMember {
                public_key: hex::encode(key.verifying_key().as_bytes()),
                p2p_addr: None,
                api_addr: None,
            })
            .collect(),
    };
    // Keys derived from distinct seeds are valid and distinct.
    ChainSpec::from_file(file).expect("valid test spec")
}

/// A header of height 1 on an arbitrary chain, at `difficulty`, for miner tests and
/// benches.
pub fn header(difficulty: u32) -> Header {
    Header {
        version: HEADER_VERSION,
        chain_hash: Hash([7; 32]),
        height: 1,
        timestamp_ms: 1_767_225_600_001,
        prev_hash: Hash([9; 32]),
        log_size: 1000,
        log_root: Hash([3; 32]),
        difficulty,
        nonce: 0,
    }
}

/// Builds the block after `parent` holding `entries`, mined at `difficulty` on one
/// thread, one millisecond after its parent.
pub fn next_block(
    parent: &Header,
    parent_log: &CompactRange,
    entries: Vec<Entry>,
    difficulty: u32,
) -> Block {
    let mut log = parent_log.clone();
    for entry in &entries {
        log.append(leaf_hash(entry.id().as_bytes()), |_, _, _| {});
    }
    let mut header = Header::child(parent, &log, parent.timestamp_ms + 1, difficulty);
    let report = pow::mine(&header, NonZeroUsize::MIN, &AtomicBool::new(false));
    match report.outcome {
        Outcome::Found { nonce, .. } => header.nonce = nonce,
        outcome => panic!("test difficulty {difficulty} could not be mined: {outcome:?}"),
    }
    Block { header, entries }
}

/// A commit certificate for `block` signed by each of `signers` in view 0.
pub fn certify(signers: &[SigningKey], block: &Block) -> CommitCertificate {
    let hash = block.hash();
    let digest = commit_digest(&block.header.chain_hash, 0, block.header.height, &hash);
    CommitCertificate {
        view: 0,
        height: block.header.height,
        block_hash: hash,
        signatures: signers
            .iter()
            .map(|key| CommitSignature {
                node_id: Hash::digest(key.verifying_key().as_bytes()),
                signature: key.sign(digest.as_bytes()).to_bytes(),
            })
            .collect(),
    }
}

/// `count` distinct unsigned entries of `size` bytes, distinguished by `tag`.
pub fn entries(tag: u64, count: usize, size: usize) -> Vec<Entry> {
    (0..count as u64)
        .map(|i| {
            let mut data = vec![0u8; size.max(16)];
            data[..8].copy_from_slice(&tag.to_be_bytes());
            data[8..16].copy_from_slice(&i.to_be_bytes());
            data.truncate(size.max(16));
            Entry::new(data)
        })
        .collect()
}
