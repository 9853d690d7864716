//! Block validation (DESIGN.md, "Validation"): everything a replica checks before it
//! prepares a block, in order of cost so junk is refused cheaply.

use std::collections::HashSet;

use super::merkle::leaf_hash;
use super::{Block, ChainError, ChainParams, CompactRange, Entry, Hash, Header, HEADER_VERSION};

/// Answers whether an entry id is already in the chain (the store's entry index).
pub trait EntryIndex {
    /// Whether `id` was committed before.
    fn contains(&self, id: &Hash) -> Result<bool, ChainError>;

    /// Whether each of `ids` was committed before: one answer per id, in order. A
    /// block's ids are asked in one call, which an index may answer with its lookups
    /// overlapped.
    fn contains_each(&self, ids: &[Hash]) -> Result<Vec<bool>, ChainError> {
        ids.iter().map(|id| self.contains(id)).collect()
    }

    /// The committed header at `height`, for a difficulty [`Policy`] that reads
    /// recent headers. An index that never serves one may keep this default; a
    /// policy then finds the header missing and the block is refused, loudly.
    fn header(&self, _height: u64) -> Result<Option<Header>, ChainError> {
        Ok(None)
    }
}

/// Rules a chain adds to the built-in ones (its validation plugins). Every member
/// must run the same policy and it must be deterministic, or members disagree.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// How many recent headers [`Policy::required_difficulty`] reads; 0 means the
    /// genesis difficulty applies.
    fn difficulty_window(&self) -> usize;

    /// The difficulty of the block after `recent.last()`, given up to
    /// `difficulty_window` headers oldest first (fewer near genesis); `None` keeps the
    /// genesis difficulty.
    fn required_difficulty(&self, recent: &[Header]) -> Result<Option<u32>, String>;

    /// Refuses a block or one of its entries, with the reason.
    fn check_block(&self, block: &Block) -> Result<(), String>;

    /// Refuses an entry on its own, with the reason: what a member asks of the
    /// entries other members forward to it, so that none its rules refuse waits in
    /// its pool to be proposed.
    fn check_entry(&self, entry: &Entry) -> Result<(), String>;
}

/// Which of a cut's entries go in its block under a [`Policy`]: from [`fit_block`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fit {
    /// Indices of the entries the block holds, in order.
    pub taken: Vec<usize>,
    /// Indices of entries the policy takes, but not beside those taken: they wait
    /// for a later block.
    pub deferred: Vec<usize>,
    /// Indices of entries the policy refuses even alone, with its reason: no block
    /// can hold them.
    pub refused: Vec<(usize, String)>,
}

/// Which of `block`'s entries go in the block a producer proposes under `policy`,
/// or, when no block with this header passes whatever it holds, why not (`Err`).
///
/// Entries pass one at a time, yet a policy's block rule can refuse a set of them
/// (a per-block limit, two entries that clash), or a stateful one an entry it took
/// before. A producer that proposed such a block again and again would stop the
/// chain for good, and one that dropped the block's entries would lose those the
/// rule has nothing against. So: all of them when the policy takes the block (one
/// call, the common case); otherwise the entries refused alone are refused, and of
/// the others the longest run from the front the policy takes together goes in
/// (found by halving), the rest deferred. When no entry passes alone and neither
/// does an empty block, the rule is about the block itself (its header, or a
/// failing plugin): nothing is refused, and the policy's reason is returned. The
/// trial blocks keep `block`'s header, whose log fields describe all its entries:
/// a block rule judges entries, and the producer checks the block it builds from
/// those taken again in full.
pub fn fit_block(policy: &dyn Policy, block: &Block) -> Result<Fit, String> {
    let all: Vec<usize> = (0..block.entries.len()).collect();
    let whole = match policy.check_block(block) {
        Ok(()) => {
            return Ok(Fit {
                taken: all,
                ..Fit::default()
            })
        }
        Err(reason) => reason,
    };
    let takes = |indices: &[usize]| {
        let entries = indices.iter().map(|&i| block.entries[i].clone()).collect();
        policy.check_block(&Block {
            header: block.header,
            entries,
        })
    };
    let mut alone = Vec::new();
    let mut refused = Vec::new();
    for i in all {
        match takes(&[i]) {
            Ok(()) => alone.push(i),
            Err(reason) => refused.push((i, reason)),
        }
    }
    if alone.is_empty() && takes(&[]).is_err() {
        return Err(whole);
    }
    // `alone[..taken]` is taken and `alone[..untaken]` is not (or is all of them).
    let (mut taken, mut untaken) = (alone.len().min(1), alone.len());
    if takes(&alone).is_ok() {
        taken = alone.len();
    }
    while untaken - taken > 1 {
        let middle = taken + (untaken - taken) / 2;
        if takes(&alone[..middle]).is_ok() {
            taken = middle;
        } else {
            untaken = middle;
        }
    }
    let deferred = alone.split_off(taken);
    Ok(Fit {
        taken: alone,
        deferred,
        refused,
    })
}

/// What a block is validated against.
#[derive(Clone, Copy, Debug)]
pub struct ValidationContext<'a> {
    /// The chain's hash.
    pub chain_hash: &'a Hash,
    /// The chain's limits.
    pub params: &'a ChainParams,
    /// The block's parent.
    pub parent: &'a Header,
    /// The difficulty policy's verdict for this height.
    pub required_difficulty: u32,
    /// The validator's clock, ms since the Unix epoch (an input: the chain layer reads
    /// no clock).
    pub now_ms: u64,
}

/// Checks the header against its parent and the policy, without looking at entries.
pub fn validate_header(context: &ValidationContext<'_>, header: &Header) -> Result<(), ChainError> {
    if header.version != HEADER_VERSION {
        return Err(ChainError::UnsupportedVersion {
            what: "header",
            version: header.version,
        });
    }
    if header.chain_hash != *context.chain_hash {
        return Err(ChainError::WrongChain {
            expected: *context.chain_hash,
            found: header.chain_hash,
        });
    }
    let expected_height = context.parent.height + 1;
    if header.height != expected_height {
        return Err(ChainError::WrongHeight {
            expected: expected_height,
            found: header.height,
        });
    }
    let parent_hash = context.parent.hash();
    if header.prev_hash != parent_hash {
        return Err(ChainError::WrongParent {
            expected: parent_hash,
            found: header.prev_hash,
        });
    }
    if header.timestamp_ms <= context.parent.timestamp_ms {
        return Err(ChainError::TimestampNotAfterParent {
            parent: context.parent.timestamp_ms,
            found: header.timestamp_ms,
        });
    }
    let max_drift_ms = context.params.max_future_drift_ms;
    if header.timestamp_ms > context.now_ms.saturating_add(max_drift_ms) {
        return Err(ChainError::TimestampInFuture {
            now: context.now_ms,
            found: header.timestamp_ms,
            max_drift_ms,
        });
    }
    if header.difficulty > 256 {
        return Err(ChainError::DifficultyOutOfRange {
            found: header.difficulty,
        });
    }
    if header.difficulty < context.required_difficulty {
        return Err(ChainError::DifficultyTooLow {
            required: context.required_difficulty,
            found: header.difficulty,
        });
    }
    let found_bits = header.hash().leading_zero_bits();
    if found_bits < header.difficulty {
        return Err(ChainError::InsufficientWork {
            difficulty: header.difficulty,
            found_bits,
        });
    }
    Ok(())
}

/// Fully validates `block` on top of `context.parent`, whose log is `parent_log`.
/// Returns the block's entry ids and the log after it, so the caller (the store) need
/// not hash anything twice.
pub fn validate_block(
    context: &ValidationContext<'_>,
    block: &Block,
    parent_log: &CompactRange,
    index: &impl EntryIndex,
) -> Result<(Vec<Hash>, CompactRange), ChainError> {
    let header = &block.header;
    validate_header(context, header)?;
    let limit = context.params.max_block_entries;
    if block.entries.len() > limit as usize {
        return Err(ChainError::TooManyEntries {
            count: block.entries.len(),
            limit,
        });
    }
    let expected_size = context.parent.log_size + block.entries.len() as u64;
    if header.log_size != expected_size || parent_log.size() != context.parent.log_size {
        return Err(ChainError::LogSizeMismatch {
            expected: expected_size,
            found: header.log_size,
        });
    }
    let mut ids = Vec::with_capacity(block.entries.len());
    let mut seen = HashSet::with_capacity(block.entries.len());
    for entry in &block.entries {
        let id = entry.id();
        if !seen.insert(id) {
            return Err(ChainError::DuplicateEntry { id });
        }
        ids.push(id);
    }
    // Replayed entries are refused before any author's signature is checked.
    let known = index.contains_each(&ids)?;
    if known.len() != ids.len() {
        return Err(ChainError::Lookup(format!(
            "the entry index answered for {} of {} ids",
            known.len(),
            ids.len()
        )));
    }
    if let Some(at) = known.iter().position(|&known| known) {
        return Err(ChainError::DuplicateEntry { id: ids[at] });
    }
    for entry in &block.entries {
        entry.verify(context.chain_hash, context.params.max_entry_bytes)?;
    }
    let mut log = parent_log.clone();
    for id in &ids {
        log.append(leaf_hash(id.as_bytes()), |_, _, _| {});
    }
    let root = log.root();
    if root != header.log_root {
        return Err(ChainError::LogRootMismatch {
            expected: root,
            found: header.log_root,
        });
    }
    Ok((ids, log))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{entries, key, next_block, spec};
    use crate::{Entry, Hash};

    struct NoneKnown;
    impl EntryIndex for NoneKnown {
        fn contains(&self, _: &Hash) -> Result<bool, ChainError> {
            Ok(false)
        }
    }

    struct AllKnown;
    impl EntryIndex for AllKnown {
        fn contains(&self, _: &Hash) -> Result<bool, ChainError> {
            Ok(true)
        }
    }

    const DIFFICULTY: u32 = 3;

    /// Validates `block` on the genesis of a one-member chain at time `now`.
    fn check(
        block: &Block,
        required: u32,
        index: &impl EntryIndex,
    ) -> Result<(Vec<Hash>, CompactRange), ChainError> {
        let spec = spec(&[key(1)], DIFFICULTY);
        let genesis = spec.genesis_block().header;
        let context = ValidationContext {
            chain_hash: &spec.chain_hash(),
            params: &spec.params,
            parent: &genesis,
            required_difficulty: required,
            now_ms: genesis.timestamp_ms + 1_000,
        };
        validate_block(&context, block, &CompactRange::new(), index)
    }

    fn good(entries: Vec<Entry>) -> Block {
        let genesis = spec(&[key(1)], DIFFICULTY).genesis_block().header;
        next_block(&genesis, &CompactRange::new(), entries, DIFFICULTY)
    }

    /// Re-mines `block` after a header change, so only the intended rule fails.
    fn remined(mut block: Block, change: impl FnOnce(&mut Header)) -> Block {
        change(&mut block.header);
        crate::testing::mine(&mut block.header);
        block
    }

    #[test]
    fn a_valid_block_returns_its_ids_and_log() {
        let block = good(entries(1, 5, 20));
        let (ids, log) = check(&block, DIFFICULTY, &NoneKnown).unwrap();
        assert_eq!(ids, block.entry_ids());
        assert_eq!((log.size(), log.root()), (5, block.header.log_root));
    }

    #[test]
    fn each_header_rule_has_its_error() {
        let block = good(entries(1, 2, 20));
        let other_chain = remined(block.clone(), |h| h.chain_hash = Hash([5; 32]));
        assert!(matches!(
            check(&other_chain, 0, &NoneKnown),
            Err(ChainError::WrongChain { .. })
        ));
        let skipped = remined(block.clone(), |h| h.height = 2);
        assert_eq!(
            check(&skipped, 0, &NoneKnown).unwrap_err(),
            ChainError::WrongHeight {
                expected: 1,
                found: 2
            }
        );
        let orphan = remined(block.clone(), |h| h.prev_hash = Hash([6; 32]));
        assert!(matches!(
            check(&orphan, 0, &NoneKnown),
            Err(ChainError::WrongParent { .. })
        ));
        let stale = remined(block.clone(), |h| h.timestamp_ms -= 1);
        assert!(matches!(
            check(&stale, 0, &NoneKnown),
            Err(ChainError::TimestampNotAfterParent { .. })
        ));
        let early = remined(block.clone(), |h| h.timestamp_ms += 1_000_000);
        assert!(matches!(
            check(&early, 0, &NoneKnown),
            Err(ChainError::TimestampInFuture { .. })
        ));
        let mut absurd = block.clone();
        absurd.header.difficulty = 257;
        assert_eq!(
            check(&absurd, 0, &NoneKnown).unwrap_err(),
            ChainError::DifficultyOutOfRange { found: 257 }
        );
        assert_eq!(
            check(&block, DIFFICULTY + 1, &NoneKnown).unwrap_err(),
            ChainError::DifficultyTooLow {
                required: DIFFICULTY + 1,
                found: DIFFICULTY
            }
        );
        let mut unworked = block.clone();
        unworked.header.nonce = (0..)
            .find(|&nonce| {
                let mut header = unworked.header;
                header.nonce = nonce;
                header.hash().leading_zero_bits() < DIFFICULTY
            })
            .unwrap_or_default();
        assert!(matches!(
            check(&unworked, 0, &NoneKnown),
            Err(ChainError::InsufficientWork { .. })
        ));
    }

    #[test]
    fn each_body_rule_has_its_error() {
        let block = good(entries(1, 2, 20));
        let short = remined(block.clone(), |h| h.log_size = 3);
        assert_eq!(
            check(&short, 0, &NoneKnown).unwrap_err(),
            ChainError::LogSizeMismatch {
                expected: 2,
                found: 3
            }
        );
        let rerooted = remined(block.clone(), |h| h.log_root = Hash([8; 32]));
        assert!(matches!(
            check(&rerooted, 0, &NoneKnown),
            Err(ChainError::LogRootMismatch { .. })
        ));
        let replayed = check(&block, 0, &AllKnown).unwrap_err();
        assert_eq!(
            replayed,
            ChainError::DuplicateEntry {
                id: block.entries[0].id()
            }
        );
        // An index that answers for fewer ids than asked must not pass the rest.
        struct Short;
        impl EntryIndex for Short {
            fn contains(&self, _: &Hash) -> Result<bool, ChainError> {
                Ok(false)
            }
            fn contains_each(&self, ids: &[Hash]) -> Result<Vec<bool>, ChainError> {
                Ok(vec![false; ids.len() - 1])
            }
        }
        assert!(matches!(
            check(&block, 0, &Short),
            Err(ChainError::Lookup(_))
        ));

        let mut spec = spec(&[key(1)], DIFFICULTY);
        spec.params.max_block_entries = 2;
        let genesis = spec.genesis_block().header;
        let context = ValidationContext {
            chain_hash: &spec.chain_hash(),
            params: &spec.params,
            parent: &genesis,
            required_difficulty: 0,
            now_ms: genesis.timestamp_ms + 1_000,
        };
        let crowded = next_block(
            &genesis,
            &CompactRange::new(),
            entries(2, 3, 20),
            DIFFICULTY,
        );
        assert_eq!(
            validate_block(&context, &crowded, &CompactRange::new(), &NoneKnown).unwrap_err(),
            ChainError::TooManyEntries { count: 3, limit: 2 }
        );
    }

    /// A block rule of the kind that refuses sets of entries that pass alone: at
    /// least `least` and at most `most` entries, none whose data starts with `bad`,
    /// and no block with a timestamp of `refused_at`.
    #[derive(Debug)]
    struct Rules {
        least: usize,
        most: usize,
        bad: u8,
        refused_at: u64,
    }

    impl Policy for Rules {
        fn difficulty_window(&self) -> usize {
            0
        }
        fn required_difficulty(&self, _: &[Header]) -> Result<Option<u32>, String> {
            Ok(None)
        }
        fn check_block(&self, block: &Block) -> Result<(), String> {
            if block.header.timestamp_ms == self.refused_at {
                return Err("not at this time".into());
            }
            block.entries.iter().try_for_each(|e| self.check_entry(e))?;
            match block.entries.len() {
                n if n > self.most => Err(format!("more than {} entries", self.most)),
                n if n < self.least => Err(format!("fewer than {} entries", self.least)),
                _ => Ok(()),
            }
        }
        fn check_entry(&self, entry: &Entry) -> Result<(), String> {
            match entry.data.first() == Some(&self.bad) {
                true => Err("a bad entry".into()),
                false => Ok(()),
            }
        }
    }

    #[test]
    fn fit_block_refuses_what_no_block_holds_and_defers_what_this_one_cannot() {
        let mut cut = entries(1, 7, 20);
        for i in [1, 4] {
            cut[i].data[0] = 0xbb;
        }
        let header = good(cut.clone()).header;
        let block = |entries: &[Entry]| Block {
            header,
            entries: entries.to_vec(),
        };
        let rules = |most| Rules {
            least: 0,
            most,
            bad: 0xbb,
            refused_at: 0,
        };
        let fit = fit_block(&rules(3), &block(&cut)).unwrap();
        assert_eq!(fit.taken, [0, 2, 3]);
        assert_eq!(fit.deferred, [5, 6]);
        let refused: Vec<usize> = fit.refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(refused, [1, 4]);
        assert!(fit
            .refused
            .iter()
            .all(|(_, reason)| reason == "a bad entry"));
        // Every rule met: all of it, in order.
        let clean = entries(2, 5, 20);
        let fit = fit_block(&rules(5), &block(&clean)).unwrap();
        assert_eq!((fit.taken, fit.deferred.len()), ((0..5).collect(), 0));
        // One good entry is a block whatever the limit the rest exceed.
        assert_eq!(fit_block(&rules(1), &block(&clean)).unwrap().taken, [0]);
        // A rule about the header, not the entries: nothing is refused, even in an
        // empty block.
        let timed = Rules {
            refused_at: header.timestamp_ms,
            ..rules(5)
        };
        assert_eq!(
            fit_block(&timed, &block(&cut)),
            Err("not at this time".into())
        );
        assert_eq!(
            fit_block(&timed, &block(&[])),
            Err("not at this time".into())
        );
        // A rule that refuses empty blocks is about entries all the same.
        let fit = fit_block(
            &Rules {
                least: 1,
                ..rules(3)
            },
            &block(&cut),
        )
        .unwrap();
        assert_eq!((fit.taken, fit.refused.len()), (vec![0, 2, 3], 2));
        // Nothing but bad entries: nothing to take.
        let fit = fit_block(&rules(3), &block(&[cut[1].clone(), cut[4].clone()])).unwrap();
        assert_eq!((fit.taken.len(), fit.refused.len()), (0, 2));
    }
}
