//! Builders of valid chains for tests, benches and fixtures: deterministic keys, a
//! genesis spec over them, mined blocks and commit certificates signed by every member.
//! Nothing here is used by a running node or a client.

use ed25519_dalek::{Signer, SigningKey};

use crate::genesis::default_checkpoint_interval;
use crate::merkle::{inclusion_proof, leaf_hash, MemoryLog};
use crate::{
    commit_digest, Block, ChainSpec, CommitCertificate, CommitSignature, CompactRange, Entry,
    GenesisFile, GenesisMember, Hash, Header, Receipt, HEADER_VERSION,
};

/// A deterministic signing key from a small seed.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A spec over `members` with the given difficulty and default limits.
pub fn spec(members: &[SigningKey], difficulty: u32) -> ChainSpec {
    spec_checkpointing(members, difficulty, default_checkpoint_interval())
}

/// Like [`spec`], with checkpoints (and snapshots) every `interval` blocks.
pub fn spec_checkpointing(members: &[SigningKey], difficulty: u32, interval: u64) -> ChainSpec {
    let members = members
        .iter()
        .map(|key| GenesisMember {
            public_key: hex::encode(key.verifying_key().as_bytes()),
            p2p_addr: None,
            api_addr: None,
        })
        .collect();
    let file = GenesisFile {
        checkpoint_interval: interval,
        ..GenesisFile::new("test-chain", 1_767_225_600_000, difficulty, members)
    };
    // Keys derived from distinct seeds are valid and distinct.
    ChainSpec::from_file(file).expect("valid test spec")
}

/// Like [`spec_checkpointing`], with `admins` of whom `threshold` sign a change.
pub fn spec_with_admins(
    members: &[SigningKey],
    difficulty: u32,
    interval: u64,
    admins: &[SigningKey],
    threshold: u32,
) -> ChainSpec {
    let mut file = spec_checkpointing(members, difficulty, interval).to_file();
    file.admins = admins
        .iter()
        .map(|key| hex::encode(key.verifying_key().as_bytes()))
        .collect();
    file.admin_threshold = Some(threshold);
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

/// Builds the block after `parent` holding `entries`, mined at `difficulty`, one
/// millisecond after its parent.
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
    mine(&mut header);
    Block { header, entries }
}

/// A commit certificate for `block` signed by each of `signers` in view 0.
pub fn certify(signers: &[SigningKey], block: &Block) -> CommitCertificate {
    certify_under(signers, block, &block.header.chain_hash)
}

/// [`certify`] under the signing `domain` of a membership epoch.
pub fn certify_under(signers: &[SigningKey], block: &Block, domain: &Hash) -> CommitCertificate {
    let hash = block.hash();
    let digest = commit_digest(domain, 0, block.header.height, &hash);
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

/// A four-member chain (seeds 1-4, difficulty 6), its first block of five entries,
/// and the receipt of entry `index` (below 5) certified by three members, the quorum.
pub fn receipt(index: u64) -> (ChainSpec, Block, Receipt) {
    let keys: Vec<_> = (1..=4).map(key).collect();
    let spec = spec(&keys, 6);
    let block = next_block(
        &spec.genesis_block().header,
        &CompactRange::new(),
        entries(1, 5, 30),
        6,
    );
    let mut log = MemoryLog::new();
    for id in block.entry_ids() {
        log.push(id.as_bytes());
    }
    let receipt = Receipt {
        entry_id: block.entry_ids()[index as usize],
        log_index: index,
        header: block.header,
        inclusion_proof: inclusion_proof(&log, index, 5).expect("index below 5"),
        certificate: certify(&keys[..3], &block),
    };
    (spec, block, receipt)
}

/// Finds a nonce that meets the header's difficulty, counting from zero: the plain
/// search, fine for test difficulties (the node's miner is `ledger::pow`).
pub fn mine(header: &mut Header) {
    header.nonce = 0;
    while !header.meets_difficulty() {
        header.nonce = header
            .nonce
            .checked_add(1)
            .unwrap_or_else(|| panic!("difficulty {} cannot be mined", header.difficulty));
    }
}
