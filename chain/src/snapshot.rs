//! Snapshots: what a node needs to validate the block after height `h` and to prove
//! any entry up to it, without the blocks below `h`.
//!
//! A [`Manifest`] carries header `h`, the commit certificate of block `h` (a quorum
//! of members signed its hash, as a receipt's certificate does), the headers below `h`
//! that the difficulty policy reads, and the **tile roots**: the log's entry ids cut
//! into tiles of `2^tile_level` ids, each tile's RFC 9162 root. Tiles start at
//! multiples of their size, so the tile roots fold by the same rule as leaves into
//! the log root of header `h` ([`fold`]). A joiner checks the certificate against the
//! members it trusts, then the fold, and from then on each chunk (one tile of ids) on
//! arrival against its own root: no manifest field and no chunk is taken on trust.
//!
//! Every count a peer controls is capped before anything is allocated for it.

use super::codec::Reader;
use super::merkle::{empty_root, leaf_hash, node_hash, CompactRange};
use super::{
    ChainError, ChainSpec, ChangeProof, CommitCertificate, Hash, Header, MembershipHistory,
    HEADER_LEN,
};

/// The manifest encoding's version.
pub const MANIFEST_VERSION: u8 = 1;
/// The tile level members serve: 2^16 ids, 2 MiB a chunk.
pub const DEFAULT_TILE_LEVEL: u8 = 16;
/// The smallest tile a joiner accepts (2^4 ids): a smaller one only multiplies requests.
pub const MIN_TILE_LEVEL: u8 = 4;
/// The largest tile a joiner accepts: its chunk, 2 MiB, is the largest it reads.
pub const MAX_TILE_LEVEL: u8 = 16;
/// Most tiles in a manifest: 2^32 ids at the default level, 2 MiB of roots.
pub const MAX_TILES: u32 = 1 << 16;
/// Most headers below `h` a manifest carries for the difficulty policy.
pub const MAX_RECENT_HEADERS: u16 = 4096;
/// Most signatures a manifest's certificate may carry (the most members a chain has).
const MAX_SIGNATURES: usize = 1024;
/// Most bytes of an encoded certificate: its fixed part and [`MAX_SIGNATURES`].
const MAX_CERTIFICATE_BYTES: usize = 1 + 8 + 8 + 32 + 2 + MAX_SIGNATURES * 96;
/// Most membership changes a manifest carries.
pub const MAX_CHANGES: u16 = 1024;
/// Most bytes of one encoded membership change: a reconfiguration of up to 64 KiB,
/// its receipt's fixed part, an inclusion proof of 64 hashes and a certificate.
const MAX_CHANGE_BYTES: usize =
    4 + 65_536 + 8 + HEADER_LEN + 1 + 64 * 32 + 4 + MAX_CERTIFICATE_BYTES;
/// Most bytes of all of a manifest's membership changes together.
const MAX_CHANGES_BYTES: usize = 8 << 20;
/// Most bytes of an encoded manifest; a peer's longer answer is refused unread.
pub const MAX_MANIFEST_BYTES: usize = 1
    + 32
    + HEADER_LEN
    + 4
    + MAX_CERTIFICATE_BYTES
    + 2
    + 4 * MAX_CHANGES as usize
    + MAX_CHANGES_BYTES
    + 2
    + MAX_RECENT_HEADERS as usize * HEADER_LEN
    + 1
    + 4
    + MAX_TILES as usize * 32;
/// Bytes of one entry id in a chunk.
const ID_LEN: usize = 32;

/// Why a manifest or a chunk was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes do not decode.
    #[error("snapshot manifest: {0}")]
    Malformed(#[source] ChainError),
    /// A size or count beyond what a joiner reads.
    #[error("snapshot manifest: {what} is {found}, beyond the limit of {limit}")]
    OverCap {
        /// What was counted.
        what: &'static str,
        /// Its size or count.
        found: u64,
        /// The most accepted.
        limit: u64,
    },
    /// The manifest is of another chain.
    #[error("snapshot of chain {found}, not of this chain {expected}")]
    WrongChain {
        /// The chain the manifest names.
        found: Hash,
        /// This chain.
        expected: Hash,
    },
    /// Header `h` is not a certified block of this chain.
    #[error("snapshot at height {height}: {reason}")]
    Header {
        /// The snapshot's height.
        height: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The membership changes it carries do not hold.
    #[error("snapshot at height {height}: its membership changes: {source}")]
    Membership {
        /// The snapshot's height.
        height: u64,
        /// Why they do not hold.
        #[source]
        source: ChainError,
    },
    /// The certificate does not prove block `h` committed.
    #[error("snapshot at height {height}: its certificate: {source}")]
    Certificate {
        /// The snapshot's height.
        height: u64,
        /// Why the certificate fails.
        #[source]
        source: ChainError,
    },
    /// The headers below `h` do not link up to it.
    #[error("snapshot at height {height}: the header at {at} does not link to the one above it")]
    BrokenLink {
        /// The snapshot's height.
        height: u64,
        /// The header that fails to link.
        at: u64,
    },
    /// The tile roots do not fold into header `h`'s log root.
    #[error("snapshot at height {height}: its tile roots do not fold into the log root")]
    Fold {
        /// The snapshot's height.
        height: u64,
    },
    /// A chunk that is not the tile the manifest promises.
    #[error("snapshot at height {height}, chunk {index}: {reason}")]
    Chunk {
        /// The snapshot's height.
        height: u64,
        /// The chunk's index.
        index: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// What a node needs to take over a chain at height `h` (module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The chain.
    pub chain_hash: Hash,
    /// Header `h`.
    pub header: Header,
    /// Block `h`'s commit certificate.
    pub certificate: CommitCertificate,
    /// The membership changes ordered up to block `h`, each with its receipt: how a
    /// joiner that trusts only the genesis file learns who certified block `h`.
    pub changes: Vec<ChangeProof>,
    /// The headers just below `h`, oldest first, that the difficulty policy reads.
    pub recent: Vec<Header>,
    /// Each tile holds `2^tile_level` ids (the last one fewer).
    pub tile_level: u8,
    /// Each tile's RFC 9162 root, in log order.
    pub tile_roots: Vec<Hash>,
}

impl Manifest {
    /// Ids per tile.
    pub fn tile_ids(&self) -> u64 {
        1 << self.tile_level
    }

    /// The snapshot's height.
    pub fn height(&self) -> u64 {
        self.header.height
    }

    /// Whether `other` offers the same snapshot: block, tiles and headers (the
    /// certificates, any quorum's signatures, may differ).
    pub fn same_snapshot(&self, other: &Manifest) -> bool {
        self.header == other.header
            && self.tile_level == other.tile_level
            && self.tile_roots == other.tile_roots
            && self.recent == other.recent
    }

    /// How many chunks the snapshot has.
    pub fn chunks(&self) -> u64 {
        self.tile_roots.len() as u64
    }

    /// The log indices chunk `index` holds.
    pub fn chunk_range(&self, index: u64) -> std::ops::Range<u64> {
        tile_range(self.header.log_size, self.tile_level, index)
    }

    /// The canonical encoding (docs/FORMAT.md, "Snapshot").
    pub fn encode(&self) -> Vec<u8> {
        let certificate = self.certificate.encode();
        let changes: Vec<Vec<u8>> = self.changes.iter().map(ChangeProof::encode).collect();
        let mut out = Vec::with_capacity(
            1 + 32
                + HEADER_LEN
                + 4
                + certificate.len()
                + 2
                + changes.iter().map(|change| 4 + change.len()).sum::<usize>()
                + 2
                + self.recent.len() * HEADER_LEN
                + 5
                + self.tile_roots.len() * 32,
        );
        out.push(MANIFEST_VERSION);
        out.extend_from_slice(self.chain_hash.as_bytes());
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&(certificate.len() as u32).to_be_bytes());
        out.extend_from_slice(&certificate);
        // Capped when the manifest is built, as a joiner caps them.
        out.extend_from_slice(&(changes.len() as u16).to_be_bytes());
        for change in &changes {
            out.extend_from_slice(&(change.len() as u32).to_be_bytes());
            out.extend_from_slice(change);
        }
        out.extend_from_slice(&(self.recent.len() as u16).to_be_bytes());
        for header in &self.recent {
            out.extend_from_slice(&header.encode());
        }
        out.push(self.tile_level);
        out.extend_from_slice(&(self.tile_roots.len() as u32).to_be_bytes());
        for root in &self.tile_roots {
            out.extend_from_slice(root.as_bytes());
        }
        out
    }

    /// Decodes one manifest, refusing any size beyond the caps before reading it.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, SnapshotError> {
        cap(
            "manifest bytes",
            bytes.len() as u64,
            MAX_MANIFEST_BYTES as u64,
        )?;
        let mut reader = Reader::new(bytes, "snapshot manifest");
        let malformed = SnapshotError::Malformed;
        let version = reader.u8().map_err(malformed)?;
        if version != MANIFEST_VERSION {
            return Err(malformed(ChainError::UnsupportedVersion {
                what: "snapshot manifest",
                version: version.into(),
            }));
        }
        let chain_hash = reader.hash().map_err(malformed)?;
        let header =
            Header::decode(reader.take(HEADER_LEN).map_err(malformed)?).map_err(malformed)?;
        let certificate_len = reader.u32().map_err(malformed)?;
        cap(
            "certificate bytes",
            certificate_len.into(),
            MAX_CERTIFICATE_BYTES as u64,
        )?;
        let certificate = reader
            .take(certificate_len as usize)
            .and_then(CommitCertificate::decode)
            .map_err(malformed)?;
        let count = reader.u16().map_err(malformed)?;
        cap("membership changes", count.into(), MAX_CHANGES.into())?;
        let mut changes = Vec::with_capacity(usize::from(count));
        let mut total = 0usize;
        for _ in 0..count {
            let len = reader.u32().map_err(malformed)? as usize;
            cap(
                "membership change bytes",
                len as u64,
                MAX_CHANGE_BYTES as u64,
            )?;
            total += len;
            cap(
                "membership changes' bytes",
                total as u64,
                MAX_CHANGES_BYTES as u64,
            )?;
            let bytes = reader.take(len).map_err(malformed)?;
            changes.push(ChangeProof::decode(bytes).map_err(malformed)?);
        }
        let recent_count = reader.u16().map_err(malformed)?;
        cap(
            "recent headers",
            recent_count.into(),
            MAX_RECENT_HEADERS.into(),
        )?;
        let mut recent = Vec::with_capacity(usize::from(recent_count));
        for _ in 0..recent_count {
            let bytes = reader.take(HEADER_LEN).map_err(malformed)?;
            recent.push(Header::decode(bytes).map_err(malformed)?);
        }
        let tile_level = reader.u8().map_err(malformed)?;
        if !(MIN_TILE_LEVEL..=MAX_TILE_LEVEL).contains(&tile_level) {
            return Err(SnapshotError::OverCap {
                what: "tile level",
                found: tile_level.into(),
                limit: MAX_TILE_LEVEL.into(),
            });
        }
        let tiles = reader.u32().map_err(malformed)?;
        cap("tile count", tiles.into(), MAX_TILES.into())?;
        let expected = tile_count(header.log_size, tile_level);
        if u64::from(tiles) != expected {
            return Err(SnapshotError::Header {
                height: header.height,
                reason: format!(
                    "{tiles} tile roots for a log of {} ids in tiles of {}, which needs {expected}",
                    header.log_size,
                    1u64 << tile_level
                ),
            });
        }
        let mut tile_roots = Vec::with_capacity(tiles as usize);
        for _ in 0..tiles {
            tile_roots.push(reader.hash().map_err(malformed)?);
        }
        reader.finish().map_err(malformed)?;
        Ok(Manifest {
            chain_hash,
            header,
            certificate,
            changes,
            recent,
            tile_level,
            tile_roots,
        })
    }

    /// Checks the manifest against what the joiner trusts, the genesis `spec`: header
    /// `h` is of this chain with its proof of work; its membership changes hold from
    /// genesis, each below or at `h`; a quorum of the membership in force at `h`
    /// certified it; the recent headers link up to it; the tile roots fold into its
    /// log root. Only then may its chunks be checked against the tile roots. Answers
    /// the memberships the changes establish.
    pub fn verify(&self, spec: &ChainSpec) -> Result<MembershipHistory, SnapshotError> {
        let chain_hash = &spec.chain_hash();
        let height = self.header.height;
        if self.chain_hash != *chain_hash || self.header.chain_hash != *chain_hash {
            return Err(SnapshotError::WrongChain {
                found: self.header.chain_hash,
                expected: *chain_hash,
            });
        }
        let refuse = |reason: &str| SnapshotError::Header {
            height,
            reason: reason.to_string(),
        };
        if height == 0 {
            return Err(refuse("a snapshot of the genesis block holds nothing"));
        }
        if !self.header.meets_difficulty() {
            return Err(refuse("its hash does not meet its difficulty"));
        }
        if self
            .changes
            .iter()
            .any(|c| c.receipt.header.height > height)
        {
            return Err(refuse(
                "it carries a membership change from above its height",
            ));
        }
        let history = MembershipHistory::verify(spec, &self.changes)
            .map_err(|source| SnapshotError::Membership { height, source })?;
        let membership = history.at(height);
        let hash = self.header.hash();
        membership
            .verify_certificate(chain_hash, &self.certificate, height, &hash)
            .map_err(|source| SnapshotError::Certificate { height, source })?;
        if self.recent.is_empty() {
            // Without the header below h, block h's first entry is unknown.
            return Err(refuse("it carries no header below its own"));
        }
        let mut above = self.header;
        for header in self.recent.iter().rev() {
            if header.height.checked_add(1) != Some(above.height)
                || header.hash() != above.prev_hash
                || header.chain_hash != *chain_hash
            {
                return Err(SnapshotError::BrokenLink {
                    height,
                    at: header.height,
                });
            }
            above = *header;
        }
        let root = match self.tile_roots.is_empty() {
            true => empty_root(),
            false => fold(&self.tile_roots),
        };
        if root != self.header.log_root {
            return Err(SnapshotError::Fold { height });
        }
        Ok(history)
    }

    /// The ids of chunk `index`, checked against its tile root: the only way a
    /// chunk's bytes become ids. Call on a verified manifest.
    pub fn check_chunk(&self, index: u64, bytes: &[u8]) -> Result<Vec<Hash>, SnapshotError> {
        self.check_chunk_with(index, bytes, |_, _, _| {})
    }

    /// [`Manifest::check_chunk`], telling `on_node` each perfect subtree of the tile
    /// as its hash is worked out: (level, index within the tile's own tree, hash). A
    /// store keeps them without hashing the tile again; they are only true once the
    /// check succeeded.
    pub fn check_chunk_with(
        &self,
        index: u64,
        bytes: &[u8],
        mut on_node: impl FnMut(u8, u64, &Hash),
    ) -> Result<Vec<Hash>, SnapshotError> {
        let refuse = |reason: String| SnapshotError::Chunk {
            height: self.height(),
            index,
            reason,
        };
        let Some(expected_root) = self.tile_roots.get(index as usize) else {
            return Err(refuse(format!("the snapshot has {} chunks", self.chunks())));
        };
        let range = self.chunk_range(index);
        let expected_len = (range.end - range.start) as usize * ID_LEN;
        if bytes.len() != expected_len {
            return Err(refuse(format!(
                "{} bytes where its {} ids take {expected_len}",
                bytes.len(),
                range.end - range.start
            )));
        }
        let ids: Vec<Hash> = bytes
            .chunks_exact(ID_LEN)
            .map(|id| Hash(id.try_into().unwrap_or([0; 32])))
            .collect();
        let mut tile = CompactRange::new();
        for id in &ids {
            tile.append(leaf_hash(id.as_bytes()), &mut on_node);
        }
        if tile.root() != *expected_root {
            return Err(refuse("its ids do not give its tile root".into()));
        }
        Ok(ids)
    }
}

/// Fails when `found` is beyond `limit`.
fn cap(what: &'static str, found: u64, limit: u64) -> Result<(), SnapshotError> {
    match found > limit {
        true => Err(SnapshotError::OverCap { what, found, limit }),
        false => Ok(()),
    }
}

/// How many tiles of `2^tile_level` ids a log of `log_size` ids makes.
pub fn tile_count(log_size: u64, tile_level: u8) -> u64 {
    log_size.div_ceil(1 << tile_level)
}

/// The log indices of tile `index` in a log of `log_size` ids (empty past its end).
pub fn tile_range(log_size: u64, tile_level: u8, index: u64) -> std::ops::Range<u64> {
    let size = 1u64 << tile_level;
    let start = index.saturating_mul(size).min(log_size);
    start..start.saturating_add(size).min(log_size)
}

/// The RFC 9162 root of a tile's ids.
pub fn tile_root(ids: &[Hash]) -> Hash {
    let mut log = CompactRange::new();
    for id in ids {
        log.append(leaf_hash(id.as_bytes()), |_, _, _| {});
    }
    log.root()
}

/// The log root from its tiles' roots. RFC 9162 splits a tree of `n` leaves at the
/// largest power of two below `n`; with aligned tiles of a power-of-two size that
/// split always falls on a tile boundary, at the largest power of two below the tile
/// count, so the tile roots fold by the same rule as leaves.
pub fn fold(roots: &[Hash]) -> Hash {
    match roots.len() {
        0 => empty_root(),
        1 => roots[0],
        n => {
            let split = largest_power_of_two_below(n);
            node_hash(&fold(&roots[..split]), &fold(&roots[split..]))
        }
    }
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn largest_power_of_two_below(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::MemoryLog;
    use crate::testing::{certify, entries, key, next_block, spec};
    use crate::CompactRange;

    fn ids(count: u64) -> Vec<Hash> {
        (0..count).map(|i| Hash::digest(&i.to_be_bytes())).collect()
    }

    fn log_root(ids: &[Hash]) -> Hash {
        let mut log = MemoryLog::new();
        for id in ids {
            log.push(id.as_bytes());
        }
        log.root()
    }

    /// The fold gives the RFC 9162 root for every log size around tile boundaries.
    #[test]
    fn tile_roots_fold_into_the_log_root() {
        let all = ids(16 * 9 + 5);
        for level in [4u8, 5] {
            for size in 1..=all.len() as u64 {
                let roots: Vec<Hash> = (0..tile_count(size, level))
                    .map(|i| {
                        let range = tile_range(size, level, i);
                        tile_root(&all[range.start as usize..range.end as usize])
                    })
                    .collect();
                assert_eq!(
                    fold(&roots),
                    log_root(&all[..size as usize]),
                    "size {size}, level {level}"
                );
            }
        }
    }

    /// A chain of four members and `blocks` blocks of 7 entries, and the manifest of
    /// its tip in tiles of 16 ids, with `recent` headers below it.
    fn chain_manifest(blocks: usize, recent: usize) -> (crate::ChainSpec, Manifest) {
        let keys: Vec<_> = (1..=4).map(key).collect();
        let spec = spec(&keys, 1);
        let mut headers = vec![spec.genesis_block().header];
        let mut log = CompactRange::new();
        let mut all = Vec::new();
        let mut last = None;
        for tag in 0..blocks as u64 {
            let block = next_block(&headers[headers.len() - 1], &log, entries(tag, 7, 20), 1);
            for entry in &block.entries {
                log.append(leaf_hash(entry.id().as_bytes()), |_, _, _| {});
                all.push(entry.id());
            }
            headers.push(block.header);
            last = Some(block);
        }
        let block = last.expect("at least one block");
        let tip = block.header;
        let level = MIN_TILE_LEVEL;
        let tile_roots = (0..tile_count(tip.log_size, level))
            .map(|i| {
                let range = tile_range(tip.log_size, level, i);
                tile_root(&all[range.start as usize..range.end as usize])
            })
            .collect();
        let below = &headers[..headers.len() - 1];
        let manifest = Manifest {
            chain_hash: spec.chain_hash(),
            header: tip,
            certificate: certify(&keys[..3], &block),
            changes: Vec::new(),
            recent: below[below.len() - recent..].to_vec(),
            tile_level: level,
            tile_roots,
        };
        (spec, manifest)
    }

    fn chunk_bytes(manifest: &Manifest, index: u64, all: &[Hash]) -> Vec<u8> {
        let range = manifest.chunk_range(index);
        all[range.start as usize..range.end as usize]
            .iter()
            .flat_map(|id| id.0)
            .collect()
    }

    /// The ids of the chain `chain_manifest` builds, in log order.
    fn chain_ids(blocks: usize) -> Vec<Hash> {
        (0..blocks as u64)
            .flat_map(|tag| entries(tag, 7, 20))
            .map(|entry| entry.id())
            .collect()
    }

    #[test]
    fn a_manifest_round_trips_verifies_and_checks_its_chunks() {
        let (spec, manifest) = chain_manifest(5, 3);
        let bytes = manifest.encode();
        let decoded = Manifest::decode(&bytes).expect("decodes");
        assert_eq!(decoded, manifest);
        decoded.verify(&spec).expect("verifies");
        assert_eq!(decoded.chunks(), 3, "35 ids in tiles of 16");
        let all = chain_ids(5);
        let mut rebuilt = Vec::new();
        for index in 0..decoded.chunks() {
            let ids = decoded
                .check_chunk(index, &chunk_bytes(&decoded, index, &all))
                .expect("chunk checks");
            rebuilt.extend(ids);
        }
        assert_eq!(rebuilt, all);
        assert!(decoded.check_chunk(3, &[]).is_err(), "past the last chunk");
    }

    #[test]
    fn a_wrong_chunk_is_refused() {
        let (_, manifest) = chain_manifest(5, 1);
        let all = chain_ids(5);
        let mut bytes = chunk_bytes(&manifest, 1, &all);
        bytes[40] ^= 1;
        let error = manifest.check_chunk(1, &bytes).unwrap_err().to_string();
        assert!(error.contains("do not give its tile root"), "{error}");
        // Another chunk's (valid) ids in this chunk's place.
        let other = chunk_bytes(&manifest, 0, &all);
        assert!(manifest.check_chunk(1, &other).is_err());
        // Short, and one id too long.
        let short = &chunk_bytes(&manifest, 2, &all)[32..];
        let error = manifest.check_chunk(2, short).unwrap_err().to_string();
        assert!(error.contains("bytes where its 3 ids take 96"), "{error}");
    }

    #[test]
    fn a_forged_or_short_certificate_is_refused() {
        let (spec, manifest) = chain_manifest(2, 1);
        let verify = |manifest: &Manifest| manifest.verify(&spec);
        let mut short = manifest.clone();
        short.certificate.signatures.truncate(2);
        assert!(matches!(
            verify(&short),
            Err(SnapshotError::Certificate { .. })
        ));
        let mut forged = manifest.clone();
        forged.certificate.signatures[1].signature[5] ^= 1;
        assert!(matches!(
            verify(&forged),
            Err(SnapshotError::Certificate { .. })
        ));
        // A certificate of another block: the header was swapped for a sibling.
        let mut other = manifest.clone();
        other.header.timestamp_ms += 1;
        assert!(verify(&other).is_err());
        let outsiders: Vec<_> = (10..=13).map(key).collect();
        let foreign = crate::testing::spec(&outsiders, 1);
        assert!(matches!(
            manifest.verify(&foreign),
            Err(SnapshotError::WrongChain { .. })
        ));
    }

    #[test]
    fn tile_roots_that_do_not_fold_are_refused() {
        let (spec, manifest) = chain_manifest(5, 1);
        let mut lying = manifest.clone();
        lying.tile_roots[1] = Hash([1; 32]);
        assert!(matches!(
            lying.verify(&spec),
            Err(SnapshotError::Fold { height: 5 })
        ));
        let mut swapped = manifest;
        swapped.tile_roots.swap(0, 1);
        assert!(swapped.verify(&spec).is_err());
    }

    #[test]
    fn recent_headers_must_link_up_to_the_snapshot() {
        let (spec, manifest) = chain_manifest(5, 3);
        let mut gap = manifest.clone();
        gap.recent.remove(1);
        assert!(matches!(
            gap.verify(&spec),
            Err(SnapshotError::BrokenLink { .. })
        ));
        let mut altered = manifest;
        altered.recent[0].nonce ^= 1;
        assert!(altered.verify(&spec).is_err());
    }

    #[test]
    fn sizes_beyond_the_caps_are_refused_before_reading() {
        let (_, manifest) = chain_manifest(2, 1);
        let bytes = manifest.encode();
        let over = vec![0u8; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::decode(&over),
            Err(SnapshotError::OverCap {
                what: "manifest bytes",
                ..
            })
        ));
        // The tile count claims more than the cap; the bytes are not there either.
        let tiles_at = bytes.len() - manifest.tile_roots.len() * 32 - 4;
        let mut many = bytes.clone();
        many[tiles_at..tiles_at + 4].copy_from_slice(&(MAX_TILES + 1).to_be_bytes());
        assert!(matches!(
            Manifest::decode(&many),
            Err(SnapshotError::OverCap {
                what: "tile count",
                ..
            })
        ));
        let mut level = bytes.clone();
        level[tiles_at - 1] = MAX_TILE_LEVEL + 1;
        assert!(matches!(
            Manifest::decode(&level),
            Err(SnapshotError::OverCap {
                what: "tile level",
                ..
            })
        ));
        // A count within the caps that the bytes do not hold is malformed, not a panic.
        let recent_at = 1 + 32 + HEADER_LEN + 4 + manifest.certificate.encode().len() + 2;
        let mut headers = bytes.clone();
        headers[recent_at..recent_at + 2].copy_from_slice(&MAX_RECENT_HEADERS.to_be_bytes());
        assert!(matches!(
            Manifest::decode(&headers),
            Err(SnapshotError::Malformed(_))
        ));
        let mut trailing = bytes;
        trailing.push(0);
        assert!(Manifest::decode(&trailing).is_err());
        for cut in 0..manifest.encode().len() {
            assert!(
                Manifest::decode(&manifest.encode()[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }
}
