//! Finding an entry by its id: [`IdIndex`], over the entry index (`id_rows.rs`).
//! A fixed-size filter rules out almost every id never committed from memory
//! alone; the ids of the log's last stretch are in a map in memory; the ones below
//! it in sorted runs on disk (`id_runs.rs`). Memory stays the same whatever the
//! history's length: the filter's 16 MiB and a map of at most a run's ids.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use ledger_migrations::schema::{ENTRY_IDS, ID_RUNS};
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable};

use super::id_runs::{self, prefix, Run, RunTable};
use super::{corrupt, id_rows, StoreError};
use crate::chain::Hash;

/// Ids the map holds before they are written as a run: 256 Ki ids keep the map
/// near 9 MiB, and a run of them takes one apply about 4 MiB of writes.
pub(super) const RUN_IDS: usize = 1 << 18;

/// The entry index as one transaction sees it: the ids in log order, and the runs.
pub(super) struct IdTables<'a, R, S> {
    /// `entry_id_rows`.
    pub rows: &'a R,
    /// `id_runs`.
    pub runs: &'a S,
}

/// The entry index's tables, opened in a read transaction.
pub(super) struct ReadIdTables {
    rows: ReadOnlyTable<u64, &'static [u8]>,
    runs: ReadOnlyTable<(u64, u64, u64), &'static [u8]>,
}

impl ReadIdTables {
    pub(super) fn open(txn: &ReadTransaction) -> Result<ReadIdTables, StoreError> {
        Ok(ReadIdTables {
            rows: txn.open_table(ENTRY_IDS)?,
            runs: txn.open_table(ID_RUNS)?,
        })
    }

    /// Them, as [`IdIndex::locate`] reads them.
    pub(super) fn tables(
        &self,
    ) -> IdTables<'_, impl ReadableTable<u64, &'static [u8]>, impl RunTable> {
        IdTables {
            rows: &self.rows,
            runs: &self.runs,
        }
    }
}

/// Where every committed id is: the filter, the recent ids in memory, the runs on
/// disk below them.
#[derive(Debug)]
pub(super) struct IdIndex {
    filter: IdFilter,
    recent: IdMap,
    /// The runs, in log order: together they hold the ids of `0..sealed_to()`.
    runs: Vec<Run>,
    run_ids: usize,
}

impl IdIndex {
    /// An index of no ids, which writes a run every `run_ids` ids.
    pub(super) fn new(run_ids: usize) -> IdIndex {
        IdIndex::with_filter(run_ids, IdFilter::new())
    }

    fn with_filter(run_ids: usize, filter: IdFilter) -> IdIndex {
        IdIndex {
            filter,
            recent: IdMap::with_capacity(run_ids.min(RUN_IDS) + 1024),
            runs: Vec::new(),
            run_ids: run_ids.max(1),
        }
    }

    /// The log index up to which the runs hold the ids.
    pub(super) fn sealed_to(&self) -> u64 {
        self.runs.last().map_or(0, |run| run.to)
    }

    /// Ids per run.
    pub(super) fn run_ids(&self) -> usize {
        self.run_ids
    }

    /// Takes `runs` (checked against the ids) as those on disk.
    pub(super) fn set_runs(&mut self, runs: Vec<Run>) {
        self.runs = runs;
    }

    /// An index of ids all in `runs`, whose filter is `filter`: a restore's.
    pub(super) fn restored(run_ids: usize, filter: IdFilter, runs: Vec<Run>) -> IdIndex {
        IdIndex {
            runs,
            ..IdIndex::with_filter(run_ids, filter)
        }
    }

    /// Learns that `id` is at `log_index`, in the recent map.
    pub(super) fn insert(&mut self, id: &Hash, log_index: u64) {
        self.filter.insert(id);
        self.recent.insert(id, log_index);
    }

    /// Learns of `id` in a run: only the filter hears of it.
    pub(super) fn insert_sealed(&mut self, id: &Hash) {
        self.filter.insert(id);
    }

    /// Forgets `id` at `log_index`, of a commit that failed. The filter keeps it:
    /// it only ever makes a lookup read what it would have skipped.
    pub(super) fn remove(&mut self, id: &Hash, log_index: u64) {
        self.recent.remove(id, log_index);
    }

    /// The run the recent ids and `more` (about to be inserted) should be written as
    /// once their log reaches `to`, with its pairs; none while they are too few.
    pub(super) fn run_due(&self, more: &[(Hash, u64)], to: u64) -> Option<(Run, Vec<(u64, u64)>)> {
        if self.recent.len() + more.len() < self.run_ids {
            return None;
        }
        let mut pairs = self.recent.pairs();
        pairs.extend(more.iter().map(|(id, log_index)| (prefix(id), *log_index)));
        Some((
            Run {
                from: self.sealed_to(),
                to,
            },
            pairs,
        ))
    }

    /// Takes `run`, now committed, as holding every recent id.
    pub(super) fn sealed(&mut self, run: Run) {
        self.runs.push(run);
        self.recent.clear();
    }

    /// The runs, in log order.
    pub(super) fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Takes `output`, now committed, in place of the runs it merged.
    pub(super) fn merged(&mut self, inputs: &[Run], output: Run) {
        self.runs.retain(|run| !inputs.contains(run));
        let at = self.runs.partition_point(|run| run.from < output.from);
        self.runs.insert(at, output);
    }

    /// Whether some committed id may be `id`: false means surely not.
    pub(super) fn may_hold(&self, id: &Hash) -> bool {
        self.filter.may_hold(id)
    }

    /// Whether no committed id may be any of `ids`: a block's fresh ids are ruled
    /// out in one pass whose filter reads do not wait for one another.
    pub(super) fn surely_new(&self, ids: &[Hash]) -> bool {
        // No early exit: a branch on each answer would stall the reads behind it.
        !ids.iter()
            .fold(false, |held, id| held | self.filter.may_hold(id))
    }

    /// The log index holding `id`, confirmed in the entry index. A candidate whose
    /// stored id does not even share the prefix that led to it means the index
    /// changed under the map or a run lies: damage, not a miss.
    pub(super) fn locate<R, S>(
        &self,
        tables: &IdTables<'_, R, S>,
        id: &Hash,
    ) -> Result<Option<u64>, StoreError>
    where
        R: ReadableTable<u64, &'static [u8]>,
        S: RunTable,
    {
        if !self.filter.may_hold(id) {
            return Ok(None);
        }
        let prefix = prefix(id);
        let mut candidates: Vec<u64> = self.recent.candidates(prefix).collect();
        // Newest first: a resubmitted entry is most likely a recent one.
        for run in self.runs.iter().rev() {
            if let Some(found) = confirm(tables.rows, id, prefix, &candidates)? {
                return Ok(Some(found));
            }
            candidates.clear();
            id_runs::candidates(tables.runs, *run, prefix, &mut candidates)?;
        }
        confirm(tables.rows, id, prefix, &candidates)
    }
}

/// The first of `candidates` whose stored id is `id`.
fn confirm(
    rows: &impl ReadableTable<u64, &'static [u8]>,
    id: &Hash,
    prefix: u64,
    candidates: &[u64],
) -> Result<Option<u64>, StoreError> {
    for &log_index in candidates {
        let Some(stored) = id_rows::id_at(rows, log_index)? else {
            // An entry of a commit that failed, taken out again by the writer.
            continue;
        };
        if stored == *id {
            return Ok(Some(log_index));
        }
        if id_runs::prefix(&stored) != prefix {
            return Err(corrupt(format!(
                "entry index: log index {log_index} holds {stored}, which was indexed \
                 under another id"
            )));
        }
    }
    Ok(None)
}

/// A blocked Bloom filter of every committed id, of a fixed 16 MiB: four bits in
/// one 64-byte block per id, so an insert or a lookup is one cache miss. Ids are
/// SHA-256 digests, so their bytes serve as the hashes. The share of absent ids it
/// cannot rule out grows with the history: about 10^-6 at a million ids, 0.5% at
/// ten million; each costs a read per run, never a wrong answer.
#[derive(Debug)]
pub(super) struct IdFilter {
    blocks: Vec<[u64; 8]>,
}

impl IdFilter {
    const BLOCK_BITS: u32 = 18;

    pub(super) fn new() -> IdFilter {
        // Zeroed pages are not resident until an id lands in them.
        IdFilter {
            blocks: vec![[0; 8]; 1 << IdFilter::BLOCK_BITS],
        }
    }

    /// The block and the four bits of `id`, from bytes the map and runs do not sort by.
    fn bits(id: &Hash) -> (usize, [u32; 4]) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&id.0[8..16]);
        let word = u64::from_be_bytes(bytes);
        let block = (word >> (64 - IdFilter::BLOCK_BITS)) as usize;
        let bits = [0, 9, 18, 27].map(|shift| ((word >> shift) & 511) as u32);
        (block, bits)
    }

    pub(super) fn insert(&mut self, id: &Hash) {
        let (block, bits) = IdFilter::bits(id);
        let block = &mut self.blocks[block];
        for bit in bits {
            block[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    fn may_hold(&self, id: &Hash) -> bool {
        let (block, bits) = IdFilter::bits(id);
        let block = &self.blocks[block];
        // No branch on the words read: in a pass over a block's ids, a mispredicted
        // one would throw away the reads already issued for the ids after it.
        bits.iter().fold(true, |all, bit| {
            all & (block[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
        })
    }
}

/// Entry ids by their first 8 bytes → log index. About 30 bytes of memory per entry;
/// a hit is only a candidate until the entry index confirms the full id, so prefix
/// collisions (and entries of a commit that failed) cost a read, never a wrong answer.
#[derive(Debug, Default)]
struct IdMap {
    first: HashMap<u64, u64>,
    /// Further log indices of prefixes that occur more than once.
    more: HashMap<u64, Vec<u64>>,
}

impl IdMap {
    fn with_capacity(entries: usize) -> IdMap {
        IdMap {
            first: HashMap::with_capacity(entries),
            more: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.first.len() + self.more.values().map(Vec::len).sum::<usize>()
    }

    /// Every (prefix, log index) it holds.
    fn pairs(&self) -> Vec<(u64, u64)> {
        let mut pairs = Vec::with_capacity(self.len());
        pairs.extend(self.first.iter().map(|(&prefix, &index)| (prefix, index)));
        for (&prefix, indices) in &self.more {
            pairs.extend(indices.iter().map(|&index| (prefix, index)));
        }
        pairs
    }

    /// Empties it, keeping its memory for the next run's ids.
    fn clear(&mut self) {
        self.first.clear();
        self.more.clear();
    }

    fn insert(&mut self, id: &Hash, log_index: u64) {
        let prefix = prefix(id);
        // One probe of the table: at a million entries and more each is a cache miss.
        match self.first.entry(prefix) {
            Entry::Occupied(existing) if *existing.get() != log_index => {
                self.more.entry(prefix).or_default().push(log_index);
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(slot) => {
                slot.insert(log_index);
            }
        }
    }

    fn remove(&mut self, id: &Hash, log_index: u64) {
        let prefix = prefix(id);
        if let Some(more) = self.more.get_mut(&prefix) {
            more.retain(|&index| index != log_index);
            if more.is_empty() {
                self.more.remove(&prefix);
            }
        }
        if self.first.get(&prefix) == Some(&log_index) {
            match self.more.get_mut(&prefix).and_then(Vec::pop) {
                Some(next) => {
                    self.first.insert(prefix, next);
                }
                None => {
                    self.first.remove(&prefix);
                }
            }
        }
    }

    /// The log indices of ids with `prefix`.
    fn candidates(&self, prefix: u64) -> impl Iterator<Item = u64> + '_ {
        self.first
            .get(&prefix)
            .into_iter()
            .chain(self.more.get(&prefix).into_iter().flatten())
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use ledger_migrations::schema::ID_RUN_DIR;
    use redb::ReadableDatabase;

    use super::*;
    use crate::storage::memory_database;

    fn id(seed: u64) -> Hash {
        use sha2::Digest;
        Hash(sha2::Sha256::digest(seed.to_be_bytes()).into())
    }

    fn located(
        database: &redb::Database,
        index: &IdIndex,
        id: &Hash,
    ) -> Result<Option<u64>, StoreError> {
        let txn = database.begin_read().unwrap();
        index.locate(&ReadIdTables::open(&txn)?.tables(), id)
    }

    /// Ids appended as a writer does (a run whenever `run_ids` are in memory) are
    /// found at their log index whether in memory or in any run, a prefix shared
    /// across runs gives each its own, and absent ids are not found.
    #[test]
    fn ids_are_found_in_memory_and_in_every_run() {
        let database = memory_database();
        let mut index = IdIndex::new(7);
        let mut ids: Vec<Hash> = (0..40).map(id).collect();
        // Ids 3 and 30 share a prefix, in different runs.
        let shared = ids[3].0;
        ids[30].0[..8].copy_from_slice(&shared[..8]);
        for (block, chunk) in ids.chunks(3).enumerate() {
            let from = block as u64 * 3;
            let more: Vec<(Hash, u64)> = chunk.iter().copied().zip(from..).collect();
            let txn = database.begin_write().unwrap();
            let due = index.run_due(&more, from + chunk.len() as u64);
            {
                id_rows::append(
                    &mut txn.open_table(ENTRY_IDS).unwrap(),
                    from,
                    chunk.iter().copied(),
                )
                .unwrap();
                let mut runs = txn.open_table(ID_RUNS).unwrap();
                let mut dir = txn.open_table(ID_RUN_DIR).unwrap();
                if let Some((run, pairs)) = &due {
                    id_runs::write(&mut runs, &mut dir, *run, pairs.clone()).unwrap();
                }
            }
            for (id, log_index) in &more {
                index.insert(id, *log_index);
            }
            txn.commit().unwrap();
            if let Some((run, _)) = due {
                index.sealed(run);
            }
        }
        assert_eq!(index.sealed_to(), 36);
        assert_eq!(index.runs.len(), 4);
        for (log_index, id) in (0..).zip(&ids) {
            assert!(index.may_hold(id));
            assert_eq!(located(&database, &index, id).unwrap(), Some(log_index));
        }
        let absent: Vec<Hash> = (100..200).map(id).collect();
        for absent in &absent {
            assert_eq!(located(&database, &index, absent).unwrap(), None);
        }
        assert!(index.surely_new(&absent));
        for held in [&ids[0], &ids[39]] {
            let mut batch = absent.clone();
            batch.insert(50, *held);
            assert!(!index.surely_new(&batch));
        }
    }

    /// A row changed under the map after it was built is damage when its id no
    /// longer shares the prefix that led to it, and an ordinary miss when it does (a
    /// prefix collision, or a commit that failed).
    #[test]
    fn a_row_changed_under_the_map_is_damage_not_a_miss() {
        let database = memory_database();
        let kept = Hash([1; 32]);
        let mut same_prefix = Hash([1; 32]);
        same_prefix.0[31] = 9;
        let write = database.begin_write().unwrap();
        {
            let mut table = write.open_table(ENTRY_IDS).unwrap();
            id_rows::append(&mut table, 0, [Hash([2; 32]), same_prefix]).unwrap();
            write.open_table(ID_RUNS).unwrap();
        }
        write.commit().unwrap();
        let mut index = IdIndex::new(100);
        index.insert(&kept, 0);
        index.insert(&kept, 1);
        let error = located(&database, &index, &kept).unwrap_err();
        assert!(error.damage().is_some(), "{error}");
        let mut collision = IdIndex::new(100);
        collision.insert(&kept, 1);
        assert_eq!(located(&database, &collision, &kept).unwrap(), None);
    }

    /// The filter never forgets an id it was given, and rules out nearly every other.
    #[test]
    fn the_filter_rules_out_ids_it_never_saw() {
        let mut filter = IdFilter::new();
        for seed in 0..100_000 {
            filter.insert(&id(seed));
        }
        assert!((0..100_000).all(|seed| filter.may_hold(&id(seed))));
        let false_positives = (100_000..300_000)
            .filter(|&seed| filter.may_hold(&id(seed)))
            .count();
        // Well under 1 in 10^6 expected at 100,000 ids in 16 MiB.
        assert!(false_positives < 3, "{false_positives} of 200,000");
    }
}
