//! Builders of valid chains for tests, benches and the fixture generator: deterministic
//! keys, a genesis spec over them, mined blocks and commit certificates signed by every
//! member; and a disk that fails on demand. Nothing here is used by a running node.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    spec_checkpointing(members, difficulty, default_checkpoint_interval())
}

/// Like [`spec`], with checkpoints (and snapshots) every `interval` blocks.
pub fn spec_checkpointing(members: &[SigningKey], difficulty: u32, interval: u64) -> ChainSpec {
    let file = GenesisFile {
        chain_id: "test-chain".into(),
        timestamp_ms: 1_767_225_600_000,
        difficulty,
        max_entry_bytes: default_max_entry_bytes(),
        max_block_entries: default_max_block_entries(),
        max_future_drift_ms: default_max_future_drift_ms(),
        checkpoint_interval: interval,
        admins: Vec::new(),
        admin_threshold: None,
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

/// An in-memory disk for redb that refuses writes while `failing_writes` is set (a
/// full or dying disk) and reads while `failing_reads` is: clones share the bytes
/// and the switches, so a test can reopen a database on it and fail it at will.
#[derive(Debug, Clone, Default)]
pub struct FailingDisk {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Writes, resizes and syncs fail while set.
    pub failing_writes: Arc<AtomicBool>,
    /// Reads fail while set.
    pub failing_reads: Arc<AtomicBool>,
}

impl FailingDisk {
    fn refuse(switch: &AtomicBool) -> std::io::Result<()> {
        if switch.load(Ordering::Relaxed) {
            return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
        }
        Ok(())
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new redb database on this disk (a second one opens what the first wrote).
    pub fn database(&self) -> Result<redb::Database, redb::DatabaseError> {
        redb::Database::builder().create_with_backend(self.clone())
    }
}

impl redb::StorageBackend for FailingDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.bytes().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        FailingDisk::refuse(&self.failing_reads)?;
        let bytes = self.bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let found = start
            .checked_add(out.len())
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past end")
            })?;
        out.copy_from_slice(found);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        FailingDisk::refuse(&self.failing_writes)?;
        self.bytes()
            .resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        FailingDisk::refuse(&self.failing_writes)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        FailingDisk::refuse(&self.failing_writes)?;
        let mut bytes = self.bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(data.len());
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(data);
        Ok(())
    }
}
