//! Backups: a snapshot file that holds everything a node needs to rebuild its
//! database, and checks itself against the genesis file when restored.
//!
//! The file (docs/FORMAT.md, "Snapshot file") is a snapshot at height `h` (its
//! manifest and every chunk) followed by the blocks with their commit certificates:
//! block `h` and those above it up to the tip the file was taken at, in ascending
//! order, then those below `h`, in descending order. Restoring reads it once, front
//! to back: the manifest is verified, each chunk checked against its tile root and
//! written (`storage::Restore`), block `h` completes the database, each block above
//! is certified by a quorum and applied on the one before, and each block below is
//! tied by its hash to the one above it and its entries to the log ([`Store::backfill`]).
//!
//! A backup is taken from a stopped node's database (at its tip) or, through its
//! client API, from a running node (at its latest snapshot, with the blocks up to
//! its tip).

use std::io::{Read, Write};
use std::path::Path;

use crate::api::types::SnapshotView;
use crate::chain::snapshot::{Manifest, MAX_MANIFEST_BYTES, MAX_TILE_LEVEL};
use crate::chain::{Block, ChainSpec, CommitCertificate, MembershipHistory};
use crate::consensus::ABSTAIN_UNKNOWN;
use crate::net::Wire;
use crate::storage::{Restore, Store, StoreError, StoreOptions, VerifiedTile};

/// The file's first bytes.
const MAGIC: &[u8; 9] = b"LDGR-SNAP";
/// The file format's version.
const VERSION: u8 = 1;
/// The most bytes of one block record: far above any honest block.
const MAX_BLOCK_RECORD: u32 = 64 << 20;

/// Why a backup could not be taken, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing the file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not a snapshot file, or is cut short or damaged.
    #[error("not a valid snapshot file: {0}")]
    Format(String),
    /// Nothing to do it with: no whole chain to back up, or a database already there.
    #[error("{0}")]
    Cannot(String),
    /// What the file holds fails its checks.
    #[error("the snapshot file fails its checks: {0}")]
    Invalid(String),
    /// The node's database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The running node's API.
    #[error("the node's API at {url}: {reason}")]
    Api {
        /// What was asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// What a snapshot file holds.
#[derive(Clone, Debug)]
pub struct Contents {
    /// The snapshot's manifest.
    pub manifest: Manifest,
    /// The highest block in the file.
    pub tip: u64,
    /// Blocks in the file.
    pub blocks: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

/// Where a backup's parts come from.
trait Source {
    fn chunk(&mut self, manifest: &Manifest, index: u64) -> Result<Vec<u8>, BackupError>;
    fn committed(&mut self, height: u64) -> Result<(Block, CommitCertificate), BackupError>;
}

impl Source for &Store {
    fn chunk(&mut self, manifest: &Manifest, index: u64) -> Result<Vec<u8>, BackupError> {
        Ok(self.snapshot_chunk(manifest, index)?)
    }

    fn committed(&mut self, height: u64) -> Result<(Block, CommitCertificate), BackupError> {
        self.committed_block(height)?
            .ok_or_else(|| BackupError::Invalid(format!("block {height} vanished")))
    }
}

/// A running node's client API.
struct Api {
    agent: ureq::Agent,
    base: String,
}

impl Api {
    fn get(&self, path: &str, limit: u64) -> Result<Vec<u8>, BackupError> {
        let url = format!("{}{path}", self.base);
        let failed = |reason: String| BackupError::Api {
            url: url.clone(),
            reason,
        };
        let mut response =
            crate::join::call(&self.agent, &url).map_err(|error| failed(error.to_string()))?;
        let status = response.status().as_u16();
        let body =
            crate::join::body(&mut response, limit).map_err(|error| failed(error.to_string()))?;
        match status {
            200 => Ok(body),
            _ => Err(failed(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }
}

impl Source for Api {
    fn chunk(&mut self, manifest: &Manifest, index: u64) -> Result<Vec<u8>, BackupError> {
        let path = format!("/v1/snapshots/{}/chunks/{index}", manifest.height());
        let bytes = self.get(&path, 32 << MAX_TILE_LEVEL)?;
        manifest
            .check_chunk(index, &bytes)
            .map_err(|error| BackupError::Invalid(error.to_string()))?;
        Ok(bytes)
    }

    fn committed(&mut self, height: u64) -> Result<(Block, CommitCertificate), BackupError> {
        let bytes = self.get(
            &format!("/v1/blocks/{height}/committed"),
            MAX_BLOCK_RECORD.into(),
        )?;
        Wire::committed_at(&bytes, height).map_err(BackupError::Invalid)
    }
}

/// Writes a backup of a stopped node's `store`, at its tip, to `out`; the policy
/// reads `window` headers.
pub fn save_from_store(
    store: &Store,
    window: u64,
    out: &mut impl Write,
) -> Result<Contents, BackupError> {
    let tip = store.tip()?.height;
    if tip == 0 {
        return Err(BackupError::Cannot(
            "the chain holds only its genesis block; there is nothing to back up".into(),
        ));
    }
    if store.history_from() > 1 {
        return Err(BackupError::Cannot(format!(
            "this database holds blocks from {} up only (it was restored from a snapshot \
             and has not fetched the rest); back up a member that holds them all",
            store.history_from()
        )));
    }
    let manifest = store
        .snapshot_manifest(tip, crate::chain::snapshot::DEFAULT_TILE_LEVEL, window)?
        .ok_or_else(|| BackupError::Invalid("the tip vanished".into()))?;
    write(manifest, tip, store, out)
}

/// Writes a backup of the running node at `base` (`http://host:port`), asked with
/// `agent`: its latest snapshot and every block up to its tip.
pub fn save_from_api(
    spec: &ChainSpec,
    base: &str,
    agent: ureq::Agent,
    out: &mut impl Write,
) -> Result<Contents, BackupError> {
    let api = Api {
        agent,
        base: base.trim_end_matches('/').to_owned(),
    };
    let json = |bytes: Vec<u8>| -> Result<serde_json::Value, BackupError> {
        serde_json::from_slice(&bytes).map_err(|error| BackupError::Format(error.to_string()))
    };
    let view: SnapshotView = serde_json::from_slice(
        &api.get("/v1/snapshots/latest", 2 * MAX_MANIFEST_BYTES as u64 + 4096)?,
    )
    .map_err(|error| BackupError::Format(error.to_string()))?;
    let manifest = hex::decode(&view.manifest)
        .map_err(|error| BackupError::Format(error.to_string()))
        .and_then(|bytes| {
            Manifest::decode(&bytes).map_err(|error| BackupError::Invalid(error.to_string()))
        })?;
    manifest
        .verify(spec)
        .map_err(|error| BackupError::Invalid(error.to_string()))?;
    let status = json(api.get("/v1/status", 1 << 20)?)?;
    let tip = status["height"]
        .as_u64()
        .ok_or_else(|| BackupError::Format("status without a height".into()))?;
    if status["history_from"].as_u64() != Some(1) {
        return Err(BackupError::Cannot(
            "the node does not hold every block yet; back up a member that does".into(),
        ));
    }
    write(manifest, tip.max(view.height), api, out)
}

/// Writes the file: `manifest`, its chunks, blocks `h..=tip`, then `h-1..1`.
fn write(
    manifest: Manifest,
    tip: u64,
    mut source: impl Source,
    out: &mut impl Write,
) -> Result<Contents, BackupError> {
    let mut bytes = 0u64;
    let mut put = |out: &mut dyn Write, part: &[u8]| -> std::io::Result<()> {
        bytes += part.len() as u64;
        out.write_all(part)
    };
    put(out, MAGIC)?;
    put(out, &[VERSION])?;
    let encoded = manifest.encode();
    put(out, &(encoded.len() as u32).to_be_bytes())?;
    put(out, &encoded)?;
    for index in 0..manifest.chunks() {
        let chunk = source.chunk(&manifest, index)?;
        put(out, &(chunk.len() as u32).to_be_bytes())?;
        put(out, &chunk)?;
    }
    let height = manifest.height();
    let order = (height..=tip).chain((1..height).rev());
    put(out, &tip.to_be_bytes())?;
    for at in order {
        let (block, certificate) = source.committed(at)?;
        let record = Wire::Committed { block, certificate }.encode();
        put(out, &(record.len() as u32).to_be_bytes())?;
        put(out, &record)?;
    }
    out.flush()?;
    Ok(Contents {
        manifest,
        tip,
        blocks: tip,
        bytes,
    })
}

/// Reads a snapshot file front to back.
struct Reader<R> {
    input: R,
    bytes: u64,
}

impl<R: Read> Reader<R> {
    fn exact(&mut self, len: usize) -> Result<Vec<u8>, BackupError> {
        let mut buffer = vec![0; len];
        self.input
            .read_exact(&mut buffer)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::UnexpectedEof => BackupError::Format("it is cut short".into()),
                _ => BackupError::Io(error),
            })?;
        self.bytes += len as u64;
        Ok(buffer)
    }

    fn u32(&mut self) -> Result<u32, BackupError> {
        let bytes = self.exact(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, BackupError> {
        let bytes = self.exact(8)?;
        let mut array = [0; 8];
        array.copy_from_slice(&bytes);
        Ok(u64::from_be_bytes(array))
    }

    /// A length-prefixed part of at most `limit` bytes.
    fn part(&mut self, what: &str, limit: u32) -> Result<Vec<u8>, BackupError> {
        let len = self.u32()?;
        if len > limit {
            return Err(BackupError::Format(format!(
                "{what} claims {len} bytes, beyond the limit of {limit}"
            )));
        }
        self.exact(len as usize)
    }

    /// The header and the manifest, decoded and verified against `spec`.
    fn manifest(&mut self, spec: Option<&ChainSpec>) -> Result<Manifest, BackupError> {
        if self.exact(MAGIC.len())? != MAGIC {
            return Err(BackupError::Format(
                "it does not start with LDGR-SNAP".into(),
            ));
        }
        let version = self.exact(1)?[0];
        if version != VERSION {
            return Err(BackupError::Format(format!(
                "format version {version}; this build reads {VERSION}"
            )));
        }
        let bytes = self.part("the manifest", MAX_MANIFEST_BYTES as u32)?;
        let manifest =
            Manifest::decode(&bytes).map_err(|error| BackupError::Invalid(error.to_string()))?;
        if let Some(spec) = spec {
            manifest
                .verify(spec)
                .map_err(|error| BackupError::Invalid(error.to_string()))?;
        }
        Ok(manifest)
    }

    /// One block record.
    fn committed(&mut self, height: u64) -> Result<(Block, CommitCertificate), BackupError> {
        let record = self.part("a block record", MAX_BLOCK_RECORD)?;
        Wire::committed_at(&record, height).map_err(BackupError::Invalid)
    }
}

/// Reads the whole file and says what it holds, checking every part against
/// `spec` when given (otherwise only that it decodes).
pub fn inspect(input: impl Read, spec: Option<&ChainSpec>) -> Result<Contents, BackupError> {
    let mut reader = Reader { input, bytes: 0 };
    let manifest = reader.manifest(spec)?;
    for index in 0..manifest.chunks() {
        let chunk = reader.part("a chunk", 32 << MAX_TILE_LEVEL)?;
        if spec.is_some() {
            manifest
                .check_chunk(index, &chunk)
                .map_err(|error| BackupError::Invalid(error.to_string()))?;
        }
    }
    let tip = reader.u64()?;
    let height = manifest.height();
    if tip < height {
        return Err(BackupError::Format(format!(
            "its tip {tip} is below its snapshot at {height}"
        )));
    }
    // Each block links to the one before it in the file: up from `h`, then down.
    // Certificates are checked against the memberships the manifest proves up to
    // `h`, and those the blocks above it change to.
    let mut history = spec
        .map(|spec| MembershipHistory::verify(spec, &manifest.changes))
        .transpose()
        .map_err(|error| BackupError::Invalid(error.to_string()))?;
    let mut last = manifest.header;
    for at in (height..=tip).chain((1..height).rev()) {
        let (block, certificate) = reader.committed(at)?;
        let (Some(spec), Some(history)) = (spec, history.as_mut()) else {
            continue;
        };
        let membership = history.at(at);
        membership
            .verify_certificate(&spec.chain_hash(), &certificate, at, &block.hash())
            .map_err(|error| BackupError::Invalid(format!("block {at}: {error}")))?;
        if at > height {
            history
                .apply_block(spec, at, &block.entries)
                .map_err(|error| BackupError::Invalid(format!("block {at}: {error}")))?;
        }
        let links = if at == height {
            block.header == manifest.header
        } else if at > height {
            block.header.prev_hash == last.hash()
        } else {
            if at + 1 == height {
                last = manifest.header;
            }
            last.prev_hash == block.hash()
        };
        if !links {
            return Err(BackupError::Invalid(format!(
                "block {at} does not link to the chain around it"
            )));
        }
        last = block.header;
    }
    Ok(Contents {
        manifest,
        tip,
        blocks: tip,
        bytes: reader.bytes,
    })
}

/// Builds the database at `path` (which must not exist) from the snapshot file
/// `input`, checking everything against `spec`; `staging` is the work file.
pub fn restore(
    spec: &ChainSpec,
    input: impl Read,
    path: &Path,
    staging: &Path,
    options: StoreOptions,
) -> Result<Contents, BackupError> {
    if path.exists() {
        return Err(BackupError::Cannot(format!(
            "{} exists; restore builds a new database: move it aside first",
            path.display()
        )));
    }
    let mut reader = Reader { input, bytes: 0 };
    let manifest = reader.manifest(Some(spec))?;
    // A restore starts from nothing: what an earlier attempt left is not trusted.
    match std::fs::remove_file(staging) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
        _ => {}
    }
    // The blocks go into a database beside `path`, moved there only once whole.
    let built = staging.with_extension("built");
    let tip = match build(spec, &mut reader, &manifest, staging, &built, options) {
        Ok(tip) => tip,
        Err(error) => {
            // A restore starts from nothing, so what a failed one wrote is of no use.
            for file in [staging, &built] {
                let _ = std::fs::remove_file(file);
            }
            crate::storage::Store::remove_log(&built);
            return Err(error);
        }
    };
    crate::storage::Store::move_files(&built, path)?;
    Ok(Contents {
        manifest,
        tip,
        blocks: tip,
        bytes: reader.bytes,
    })
}

/// Writes the snapshot `manifest` of `reader` into `staging`, completes it as the
/// database `built`, and applies and fills in the file's blocks there: the tip.
fn build(
    spec: &ChainSpec,
    reader: &mut Reader<impl Read>,
    manifest: &Manifest,
    staging: &Path,
    built: &Path,
    options: StoreOptions,
) -> Result<u64, BackupError> {
    let mut restore = Restore::begin(staging, spec, manifest.clone())?;
    for index in 0..manifest.chunks() {
        let chunk = reader.part("a chunk", 32 << MAX_TILE_LEVEL)?;
        let tile = VerifiedTile::check(manifest, index, &chunk)
            .map_err(|error| BackupError::Invalid(error.to_string()))?;
        restore.write(tile)?;
    }
    let tip = reader.u64()?;
    let height = manifest.height();
    if tip < height {
        return Err(BackupError::Format(format!(
            "its tip {tip} is below its snapshot at {height}"
        )));
    }
    let (block, _) = reader.committed(height)?;
    let _ = std::fs::remove_file(built);
    // Nothing here says where the member last voted: its first start asks the others.
    restore.finish(spec, &block, built, ABSTAIN_UNKNOWN)?;
    fill(spec, reader, built, options, height, tip)?;
    Ok(tip)
}

/// Applies the file's blocks above `height` to the database at `built`, then fills
/// in those below, and checks that nothing follows.
fn fill(
    spec: &ChainSpec,
    reader: &mut Reader<impl Read>,
    built: &Path,
    options: StoreOptions,
    height: u64,
    tip: u64,
) -> Result<(), BackupError> {
    let store = Store::open(built, spec, options)?;
    for at in height + 1..=tip {
        let (block, certificate) = reader.committed(at)?;
        // The restored store knows the memberships up to h, and each block applied
        // tells it of later changes.
        store
            .verify_certificate(&certificate, at, &block.hash())
            .map_err(|error| BackupError::Invalid(format!("block {at}: {error}")))?;
        store.apply_block(&block, &certificate)?;
    }
    // Each block below h needs the header of the one below it, the next record.
    let mut pending = match height {
        1 => None,
        _ => Some(reader.committed(height - 1)?),
    };
    while let Some((block, certificate)) = pending.take() {
        let at = block.header.height;
        pending = match at {
            1 => None,
            _ => Some(reader.committed(at - 1)?),
        };
        let parent = pending
            .as_ref()
            .map_or(spec.genesis_block().header, |(below, _)| below.header);
        store.backfill(&block, &certificate, &parent)?;
    }
    let mut rest = [0u8; 1];
    if reader.input.read(&mut rest)? != 0 {
        return Err(BackupError::Format(
            "trailing bytes after the last block".into(),
        ));
    }
    Ok(())
}
