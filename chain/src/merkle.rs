//! The RFC 9162 Merkle log over every entry id since genesis.
//!
//! Leaf hash `SHA-256(0x00 ‖ id)`, node hash `SHA-256(0x01 ‖ left ‖ right)`, the empty
//! tree hashes to `SHA-256("")`. A node is addressed by `(level, index)`: it covers leaves
//! `[index·2^level, (index+1)·2^level)`. Only perfect subtrees are ever stored; once a
//! log reaches a node's right edge the node never changes, so storage is append-only.
//!
//! Proof generation reads nodes through [`NodeSource`] and touches O(log n) of them:
//! every proof element is either a stored perfect subtree or the one right-edge range,
//! itself at most log₂ n stored subtrees (RFC 9162 §2.1.3.1 and §2.1.4.1).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::{ChainError, Hash, TreeRangeError};

/// The hash of the empty log.
pub fn empty_root() -> Hash {
    Hash::digest(&[])
}

/// RFC 9162 leaf hash of `data` (for this ledger, `data` is an entry id).
pub fn leaf_hash(data: &[u8]) -> Hash {
    Hash::digest_parts(&[&[0x00], data])
}

/// RFC 9162 interior node hash.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Hash::digest_parts(&[&[0x01], left.as_bytes(), right.as_bytes()])
}

/// Where proof generation reads perfect-subtree nodes from: the store, or memory.
pub trait NodeSource {
    /// The error reading a node can raise.
    type Error: From<ChainError>;

    /// The node at `(level, index)`; callers only ask for nodes complete in the log.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;

    /// Root of leaves `[start, end)`, where `start` is aligned to a power of two at
    /// least `end - start` (as every range a proof asks for is). A source may answer
    /// from roots it keeps instead of hashing the range's pieces each time.
    fn range(&self, start: u64, end: u64) -> Result<Hash, Self::Error>
    where
        Self: Sized,
    {
        range_root(self, start, end)
    }
}

/// The right edge of a log: one perfect-subtree root per set bit of the size, largest
/// first. Enough to append leaves and compute the root, in O(log n) space.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CompactRange {
    size: u64,
    peaks: Vec<Hash>,
}

impl CompactRange {
    /// The range of an empty log.
    pub fn new() -> CompactRange {
        CompactRange::default()
    }

    /// Reads the peaks of a log of `size` leaves from `source`: one read per set bit.
    pub fn load<S: NodeSource>(source: &S, size: u64) -> Result<CompactRange, S::Error> {
        let mut peaks = Vec::with_capacity(size.count_ones() as usize);
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1 << level) != 0 {
                peaks.push(source.node(level, start >> level)?);
                start += 1 << level;
            }
        }
        Ok(CompactRange { size, peaks })
    }

    /// Leaves in the log.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash, calling `on_node(level, index, hash)` for the leaf and for
    /// every perfect subtree it completes: exactly the nodes a store must persist.
    pub fn append(&mut self, leaf: Hash, mut on_node: impl FnMut(u8, u64, &Hash)) {
        let mut index = self.size;
        let mut level = 0u8;
        let mut node = leaf;
        on_node(level, index, &node);
        while index & 1 == 1 {
            // A set low bit means a left sibling peak of the same level exists.
            let Some(left) = self.peaks.pop() else { break };
            node = node_hash(&left, &node);
            index >>= 1;
            level += 1;
            on_node(level, index, &node);
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// The RFC 9162 tree hash of the log.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(last) = peaks.next() else {
            return empty_root();
        };
        peaks.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// What a run of appends to a log touches: the log's peaks before the run and every
/// node the appends report. It proves any leaf of the run against the log after it
/// without a store: each element of such a proof is a peak from before the run (a
/// left sibling whose parent straddles the run's start), or a node the run completed,
/// or a right-edge range of the run's own nodes. The producer proves a block's
/// entries this way while the block is applied, instead of reading the database.
#[derive(Clone, Debug, Default)]
pub struct AppendedNodes {
    first: u64,
    size: u64,
    nodes: HashMap<(u8, u64), Hash>,
    /// The roots of the ranges from each point of the right edge to the end of the
    /// log, by start, worked out once for all the proofs of the run: every proof
    /// holds some of them, and each is a hash of several nodes.
    edge: OnceLock<HashMap<u64, Hash>>,
}

impl AppendedNodes {
    /// Starts recording appends to `log`, from its current peaks.
    pub fn new(log: &CompactRange) -> AppendedNodes {
        let mut nodes = HashMap::new();
        let mut start = 0u64;
        let mut peaks = log.peaks.iter();
        for level in (0..64u8).rev() {
            if log.size & (1 << level) != 0 {
                if let Some(peak) = peaks.next() {
                    nodes.insert((level, start >> level), *peak);
                }
                start += 1 << level;
            }
        }
        AppendedNodes {
            first: log.size,
            size: log.size,
            nodes,
            edge: OnceLock::new(),
        }
    }

    /// Records a node [`CompactRange::append`] reports (a leaf is level 0).
    pub fn record(&mut self, level: u8, index: u64, hash: &Hash) {
        if level == 0 {
            self.size = self.size.max(index + 1);
        }
        self.nodes.insert((level, index), *hash);
        self.edge.take();
    }

    /// Inclusion proof of leaf `index`, appended since [`AppendedNodes::new`], in the
    /// log of every leaf recorded.
    pub fn inclusion_proof(&self, index: u64) -> Result<Vec<Hash>, ChainError> {
        if index < self.first {
            return Err(TreeRangeError::BeforeRun {
                index,
                first: self.first,
            }
            .into());
        }
        inclusion_proof(self, index, self.size)
    }

    /// The right edge's ranges and their roots, innermost first: a whole subtree is
    /// its node, any other range its left part's node hashed with the next range's
    /// root. Empty where a node is missing: the proofs then hash as they go and say so.
    fn edge_roots(&self) -> HashMap<u64, Hash> {
        let mut starts = Vec::new();
        let (mut start, mut len) = (0u64, self.size);
        while len > 1 {
            let k = split_point(len);
            start += k;
            len -= k;
            starts.push(start);
        }
        let mut roots = HashMap::with_capacity(starts.len());
        let mut inner: Option<Hash> = None;
        for &start in starts.iter().rev() {
            let root = match inner {
                Some(right) if !(self.size - start).is_power_of_two() => {
                    let k = split_point(self.size - start);
                    range_root(self, start, start + k).map(|left| node_hash(&left, &right))
                }
                // A whole subtree, read as its node; the innermost range, one leaf, is.
                _ => range_root(self, start, self.size),
            };
            let Ok(root) = root else {
                return HashMap::new();
            };
            roots.insert(start, root);
            inner = Some(root);
        }
        roots
    }
}

impl NodeSource for AppendedNodes {
    type Error = ChainError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, ChainError> {
        self.nodes
            .get(&(level, index))
            .copied()
            .ok_or_else(|| ChainError::from(TreeRangeError::MissingNode { level, index }))
    }

    fn range(&self, start: u64, end: u64) -> Result<Hash, ChainError> {
        if end == self.size {
            if let Some(root) = self.edge.get_or_init(|| self.edge_roots()).get(&start) {
                return Ok(*root);
            }
        }
        range_root(self, start, end)
    }
}

/// Root of leaves `[start, end)`, where `start` is aligned to a power of two at least
/// `end - start` (true of every range RFC 9162's recursion visits): it decomposes into
/// descending perfect subtrees, hashed right to left.
fn range_root<S: NodeSource>(source: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    if start >= end {
        return Ok(empty_root());
    }
    // The largest piece at `start`; the rest of the range is hashed to its right. No
    // list of pieces: a proof asks for some twenty ranges, most of them one node.
    let mut level = if start == 0 {
        63
    } else {
        start.trailing_zeros()
    };
    while start
        .checked_add(1u64 << level)
        .is_none_or(|piece_end| piece_end > end)
    {
        level -= 1;
    }
    let piece = source.node(level as u8, start >> level)?;
    let next = start + (1 << level);
    if next == end {
        return Ok(piece);
    }
    Ok(node_hash(&piece, &range_root(source, next, end)?))
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Root of a log of `size` leaves read from `source`.
pub fn root_at<S: NodeSource>(source: &S, size: u64) -> Result<Hash, S::Error> {
    range_root(source, 0, size)
}

/// Inclusion proof of leaf `index` in the log of `size` leaves (RFC 9162 §2.1.3.1),
/// leaf side first.
pub fn inclusion_proof<S: NodeSource>(
    source: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    if index >= size {
        return Err(ChainError::from(TreeRangeError::LeafBeyond { index, size }).into());
    }
    let mut proof = Vec::new();
    let (mut start, mut len, mut target) = (0u64, size, index);
    // Walk root to leaf; RFC order is leaf to root, so reverse at the end.
    while len > 1 {
        let k = split_point(len);
        if target < k {
            proof.push(source.range(start + k, start + len)?);
            len = k;
        } else {
            proof.push(source.range(start, start + k)?);
            start += k;
            target -= k;
            len -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Consistency proof from the log of `old_size` leaves to `new_size` leaves
/// (RFC 9162 §2.1.4.1). Empty when `old_size` is 0 or equals `new_size`.
pub fn consistency_proof<S: NodeSource>(
    source: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, S::Error> {
    if old_size > new_size {
        return Err(ChainError::from(TreeRangeError::Shrinking {
            old: old_size,
            new: new_size,
        })
        .into());
    }
    let mut proof = Vec::new();
    if old_size == 0 || old_size == new_size {
        return Ok(proof);
    }
    // SUBPROOF(m, D[start:start+len], complete), unrolled root to leaf.
    let (mut start, mut len, mut m, mut complete) = (0u64, new_size, old_size, true);
    while m != len {
        let k = split_point(len);
        if m <= k {
            proof.push(range_root(source, start + k, start + len)?);
            len = k;
        } else {
            proof.push(range_root(source, start, start + k)?);
            start += k;
            m -= k;
            len -= k;
            complete = false;
        }
    }
    if !complete {
        proof.push(range_root(source, start, start + len)?);
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies that `leaf` (a leaf hash) is at `index` in the log of `size` with `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ChainError> {
    if index >= size {
        return Err(ChainError::Proof("leaf index is not below the log size"));
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ChainError::Proof("inclusion proof is too long"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ChainError::Proof("inclusion proof is too short"));
    }
    if r != *root {
        return Err(ChainError::Proof("inclusion proof leads to another root"));
    }
    Ok(())
}

/// Verifies that the log of `new_size` with `new_root` extends the log of `old_size`
/// with `old_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ChainError> {
    if old_size > new_size {
        return Err(ChainError::Proof("old size is larger than new size"));
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ChainError::Proof("equal sizes need an empty proof"));
        }
        if old_root != new_root {
            return Err(ChainError::Proof("equal sizes with different roots"));
        }
        return Ok(());
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(ChainError::Proof(
                "a proof from the empty log must be empty",
            ));
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(ChainError::Proof("consistency proof is empty"));
    }
    let mut path = proof.iter();
    let seed = if old_size.is_power_of_two() {
        *old_root
    } else {
        *path.next().unwrap_or(old_root)
    };
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in path {
        if sn == 0 {
            return Err(ChainError::Proof("consistency proof is too long"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ChainError::Proof("consistency proof is too short"));
    }
    if fr != *old_root || sr != *new_root {
        return Err(ChainError::Proof("consistency proof leads to other roots"));
    }
    Ok(())
}

/// An in-memory log that stores nodes exactly as the database does: for tests, the
/// simulator and clients that rebuild a tree.
#[derive(Clone, Debug, Default)]
pub struct MemoryLog {
    levels: Vec<Vec<Hash>>,
    range: CompactRange,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> MemoryLog {
        MemoryLog::default()
    }

    /// Appends the leaf for `data`.
    pub fn push(&mut self, data: &[u8]) {
        let levels = &mut self.levels;
        self.range.append(leaf_hash(data), |level, index, hash| {
            let level = usize::from(level);
            if levels.len() <= level {
                levels.resize_with(level + 1, Vec::new);
            }
            debug_assert_eq!(levels[level].len() as u64, index);
            levels[level].push(*hash);
        });
    }

    /// Leaves in the log.
    pub fn size(&self) -> u64 {
        self.range.size()
    }

    /// The current root.
    pub fn root(&self) -> Hash {
        self.range.root()
    }
}

impl NodeSource for MemoryLog {
    type Error = ChainError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, ChainError> {
        self.levels
            .get(usize::from(level))
            .and_then(|nodes| nodes.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or_else(|| ChainError::from(TreeRangeError::MissingNode { level, index }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn h(text: &str) -> Hash {
        text.parse().expect("test vector hex")
    }

    /// The RFC 6962 test leaves published by the Certificate Transparency project and
    /// transparency-dev/merkle (`proof/verify_test.go`).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    /// Roots of the trees over the first 1..=8 leaves.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    /// (leaf index, tree size, proof), from the same source (its indices are 1-based;
    /// these are 0-based).
    const INCLUSION: &[(u64, u64, &[&str])] = &[
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    /// (old size, new size, proof), from the same source.
    const CONSISTENCY: &[(u64, u64, &[&str])] = &[
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn vector_log() -> MemoryLog {
        let mut log = MemoryLog::new();
        for leaf in LEAVES {
            log.push(&hex::decode(leaf).unwrap());
        }
        log
    }

    fn log_of(size: u64) -> MemoryLog {
        let mut log = MemoryLog::new();
        for i in 0..size {
            log.push(&i.to_be_bytes());
        }
        log
    }

    #[test]
    fn empty_tree_hash_is_sha256_of_nothing() {
        assert_eq!(
            empty_root(),
            h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(MemoryLog::new().root(), empty_root());
        assert_eq!(root_at(&MemoryLog::new(), 0).unwrap(), empty_root());
    }

    #[test]
    fn published_roots() {
        let log = vector_log();
        let mut growing = MemoryLog::new();
        for (size, (leaf, root)) in LEAVES.iter().zip(ROOTS).enumerate() {
            growing.push(&hex::decode(leaf).unwrap());
            assert_eq!(growing.root(), h(root), "root of size {}", size + 1);
            assert_eq!(root_at(&log, size as u64 + 1).unwrap(), h(root));
        }
    }

    #[test]
    fn published_inclusion_proofs() {
        let log = vector_log();
        for &(index, size, expected) in INCLUSION {
            let expected: Vec<Hash> = expected.iter().map(|p| h(p)).collect();
            assert_eq!(
                inclusion_proof(&log, index, size).unwrap(),
                expected,
                "{index}/{size}"
            );
            let leaf = leaf_hash(&hex::decode(LEAVES[index as usize]).unwrap());
            let root = h(ROOTS[size as usize - 1]);
            verify_inclusion(&leaf, index, size, &expected, &root).unwrap();
        }
    }

    #[test]
    fn published_consistency_proofs() {
        let log = vector_log();
        for &(old, new, expected) in CONSISTENCY {
            let expected: Vec<Hash> = expected.iter().map(|p| h(p)).collect();
            assert_eq!(
                consistency_proof(&log, old, new).unwrap(),
                expected,
                "{old}->{new}"
            );
            let (old_root, new_root) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
            verify_consistency(old, new, &old_root, &new_root, &expected).unwrap();
        }
    }

    #[test]
    fn published_edge_cases_are_refused() {
        let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        // Out-of-range indices and sizes (verify_test.go, TestVerifyInclusion).
        for (index, size) in [(0, 0), (1, 0), (2, 1)] {
            assert!(verify_inclusion(&some, index, size, &[], &empty_root()).is_err());
        }
        // Time travel, and a non-empty proof between equal sizes.
        assert!(verify_consistency(2, 1, &some, &some, &[]).is_err());
        assert!(verify_consistency(1, 1, &some, &some, &[empty_root()]).is_err());
        assert!(verify_consistency(1, 2, &some, &some, &[]).is_err());
        verify_consistency(0, 5, &some, &empty_root(), &[]).unwrap();
        // Generation refuses ranges outside the log.
        let log = log_of(4);
        assert!(inclusion_proof(&log, 4, 4).is_err());
        assert!(consistency_proof(&log, 5, 4).is_err());
    }

    #[test]
    fn compact_range_reloads_from_stored_nodes() {
        let log = log_of(1000);
        for size in [0, 1, 2, 3, 511, 512, 513, 999, 1000] {
            let range = CompactRange::load(&log, size).unwrap();
            assert_eq!(range.root(), log_of(size).root(), "size {size}");
        }
    }

    /// Counts reads, to show proofs cost O(log n) node reads.
    struct Counting<'a>(&'a MemoryLog, std::cell::Cell<u64>);

    impl NodeSource for Counting<'_> {
        type Error = ChainError;
        fn node(&self, level: u8, index: u64) -> Result<Hash, ChainError> {
            self.1.set(self.1.get() + 1);
            self.0.node(level, index)
        }
    }

    #[test]
    fn proofs_read_logarithmically_many_nodes() {
        let log = log_of(5000);
        let counting = Counting(&log, std::cell::Cell::new(0));
        for (index, size) in [(0, 5000), (4999, 5000), (1234, 4097), (77, 3001)] {
            counting.1.set(0);
            inclusion_proof(&counting, index, size).unwrap();
            assert!(
                counting.1.get() <= 2 * 13,
                "{} reads for {index}/{size}",
                counting.1.get()
            );
        }
        for (old, new) in [(1, 5000), (4097, 5000), (3333, 4999)] {
            counting.1.set(0);
            consistency_proof(&counting, old, new).unwrap();
            assert!(
                counting.1.get() <= 3 * 13,
                "{} reads for {old}->{new}",
                counting.1.get()
            );
        }
    }

    /// Appends leaves `first..first + count` to a log of `first` leaves, recording them.
    fn appended(first: u64, count: u64) -> AppendedNodes {
        let mut range = CompactRange::load(&log_of(first), first).unwrap();
        let mut nodes = AppendedNodes::new(&range);
        for index in first..first + count {
            range.append(leaf_hash(&index.to_be_bytes()), |level, index, hash| {
                nodes.record(level, index, hash)
            });
        }
        nodes
    }

    #[test]
    fn appended_nodes_prove_every_leaf_of_the_run_as_the_store_does() {
        let full = log_of(4400);
        let starts = (0..70).chain([127, 128, 129, 1023, 1024, 1025, 4095, 4096, 4097]);
        for first in starts {
            for count in (1..70).chain([200, 103]) {
                let nodes = appended(first, count);
                let size = first + count;
                for index in first..size {
                    assert_eq!(
                        nodes.inclusion_proof(index).unwrap(),
                        inclusion_proof(&full, index, size).unwrap(),
                        "leaf {index} of the run {first}..{size}"
                    );
                }
            }
        }
    }

    #[test]
    fn appended_nodes_prove_against_the_log_as_it_grows_between_proofs() {
        let full = log_of(300);
        let mut range = CompactRange::load(&log_of(3), 3).unwrap();
        let mut nodes = AppendedNodes::new(&range);
        for index in 3..300u64 {
            range.append(leaf_hash(&index.to_be_bytes()), |level, index, hash| {
                nodes.record(level, index, hash)
            });
            // The right edge's roots are worked out by the first proof of each size.
            for proved in 3..=index {
                assert_eq!(
                    nodes.inclusion_proof(proved).unwrap(),
                    inclusion_proof(&full, proved, index + 1).unwrap(),
                    "leaf {proved} of {}",
                    index + 1
                );
            }
        }
    }

    #[test]
    fn appended_nodes_refuse_leaves_from_before_the_run() {
        let nodes = appended(37, 5);
        assert!(matches!(
            nodes.inclusion_proof(36),
            Err(ChainError::TreeRange(_))
        ));
        assert!(matches!(
            nodes.inclusion_proof(42),
            Err(ChainError::TreeRange(_))
        ));
    }

    fn flip(proof: &[Hash], element: usize, bit: u8) -> Vec<Hash> {
        let mut proof = proof.to_vec();
        proof[element].0[usize::from(bit / 8) % 32] ^= 1 << (bit % 8);
        proof
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_inclusion_proof_verifies_and_tampering_fails(
            size in 1u64..600, index_seed: u64, element_seed: usize, bit: u8,
        ) {
            // One leaf more than the proof's log, so the next size's root is at hand.
            let log = log_of(size + 1);
            let index = index_seed % size;
            let root = root_at(&log, size).unwrap();
            let leaf = leaf_hash(&index.to_be_bytes());
            let proof = inclusion_proof(&log, index, size).unwrap();
            prop_assert!(verify_inclusion(&leaf, index, size, &proof, &root).is_ok());

            if !proof.is_empty() {
                let tampered = flip(&proof, element_seed % proof.len(), bit);
                prop_assert!(verify_inclusion(&leaf, index, size, &tampered, &root).is_err());
                prop_assert!(verify_inclusion(&leaf, index, size, &proof[1..], &root).is_err());
            }
            let mut longer = proof.clone();
            longer.push(root);
            prop_assert!(verify_inclusion(&leaf, index, size, &longer, &root).is_err());
            // A size is bound by the header that carries its root: the proof must fail
            // against the root a header of another size would carry.
            let next_root = log.root();
            prop_assert!(verify_inclusion(&leaf, index, size + 1, &proof, &next_root).is_err());
            if size > 1 {
                let other = (index + 1) % size;
                prop_assert!(verify_inclusion(&leaf, other, size, &proof, &root).is_err());
            }
            let mut wrong_leaf = leaf;
            wrong_leaf.0[bit as usize % 32] ^= 1;
            prop_assert!(verify_inclusion(&wrong_leaf, index, size, &proof, &root).is_err());
        }

        #[test]
        fn every_consistency_proof_verifies_and_tampering_fails(
            new in 1u64..600, old_seed: u64, element_seed: usize, bit: u8,
        ) {
            let old = 1 + old_seed % new;
            let log = log_of(new + 1);
            let (old_root, new_root) = (root_at(&log, old).unwrap(), root_at(&log, new).unwrap());
            let proof = consistency_proof(&log, old, new).unwrap();
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof).is_ok());

            if !proof.is_empty() {
                let tampered = flip(&proof, element_seed % proof.len(), bit);
                prop_assert!(verify_consistency(old, new, &old_root, &new_root, &tampered).is_err());
                prop_assert!(
                    verify_consistency(old, new, &old_root, &new_root, &proof[..proof.len() - 1])
                        .is_err()
                );
                let next_root = log.root();
                prop_assert!(verify_consistency(old, new + 1, &old_root, &next_root, &proof).is_err());
                if old > 1 {
                    let previous_root = root_at(&log, old - 1).unwrap();
                    prop_assert!(
                        verify_consistency(old - 1, new, &previous_root, &new_root, &proof).is_err()
                    );
                }
                prop_assert!(verify_consistency(old, new, &new_root, &old_root, &proof).is_err());
            }
        }
    }
}
