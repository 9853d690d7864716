//! The entry index sorted by id, on disk: what finds an entry's log index without
//! a map of every id in memory. The ids of a stretch of the log are written as one
//! sorted run of (id prefix, log index) pairs (`id_runs`), listed in `id_run_dir`;
//! together the runs cover the log from 0, and the ids above them are held in
//! memory (`ids.rs`) until there are enough for the next run.
//!
//! A run is written in one transaction and never changed, so it costs its bytes
//! once, appended in key order, instead of a random B-tree page per entry (the
//! schema-3 problem, benches/README.md "store"). A lookup reads one row per run.
//! Nothing here is trusted: an open checks every run against the ids it claims to
//! hold ([`Digest`]), and every log index a run gives is confirmed against the
//! entry index before it is believed.

use redb::{ReadableTable, Table};

use super::{corrupt, StoreError};
use crate::chain::Hash;

/// Pairs a row holds; a row grows past this only to keep a prefix in one row.
pub(super) const PAIRS_PER_ROW: usize = 256;
/// Bytes of one (prefix, log index) pair.
const PAIR: usize = 16;

/// The run table, as read in any transaction.
pub(super) trait RunTable: ReadableTable<(u64, u64, u64), &'static [u8]> {}
impl<T: ReadableTable<(u64, u64, u64), &'static [u8]>> RunTable for T {}

/// One run: the ids of log indices `from..to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Run {
    /// Its first log index.
    pub from: u64,
    /// One past its last log index.
    pub to: u64,
}

impl Run {
    fn keys(&self) -> std::ops::RangeInclusive<(u64, u64, u64)> {
        (self.from, self.to, 0)..=(self.from, self.to, u64::MAX)
    }
}

/// The first 8 bytes of an id, by which runs and the in-memory map sort it.
pub(super) fn prefix(id: &Hash) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&id.0[..8]);
    u64::from_be_bytes(bytes)
}

fn pair_at(row: &[u8], at: usize) -> (u64, u64) {
    let bytes = &row[at * PAIR..(at + 1) * PAIR];
    let mut prefix = [0u8; 8];
    let mut index = [0u8; 8];
    prefix.copy_from_slice(&bytes[..8]);
    index.copy_from_slice(&bytes[8..]);
    (u64::from_be_bytes(prefix), u64::from_be_bytes(index))
}

/// A row's pairs, or damage when it is empty or not a whole number of pairs.
fn pairs_of(run: Run, first: u64, row: &[u8]) -> Result<usize, StoreError> {
    if row.is_empty() || !row.len().is_multiple_of(PAIR) {
        return Err(corrupt(format!(
            "id run {}..{}: the row at prefix {first:#018x} holds {} bytes",
            run.from,
            run.to,
            row.len()
        )));
    }
    Ok(row.len() / PAIR)
}

/// Writes `pairs`, the (prefix, log index) of every id in `run`'s log indices in
/// any order, as `run`, and lists it in the directory.
pub(super) fn write(
    runs: &mut Table<'_, (u64, u64, u64), &'static [u8]>,
    dir: &mut Table<'_, u64, u64>,
    run: Run,
    mut pairs: Vec<(u64, u64)>,
) -> Result<(), StoreError> {
    pairs.sort_unstable();
    let mut rows = RowWriter::new(run);
    for (prefix, index) in pairs {
        rows.push(runs, prefix, index)?;
    }
    rows.close(runs)?;
    dir.insert(run.from, run.to)?;
    Ok(())
}

/// A run's rows as they are written, pairs in key order: a row closes once it
/// holds [`PAIRS_PER_ROW`] pairs and the next pair's prefix is not its last, so a
/// prefix never spans two rows ([`candidates`] reads one row per prefix).
#[derive(Clone, Debug)]
struct RowWriter {
    run: Run,
    row: Vec<u8>,
    /// The row's first prefix, and its last.
    first: u64,
    last: u64,
}

impl RowWriter {
    fn new(run: Run) -> RowWriter {
        RowWriter {
            run,
            row: Vec::with_capacity((PAIRS_PER_ROW + 1) * PAIR),
            first: 0,
            last: 0,
        }
    }

    /// Adds the next pair; whether a full row was written before it.
    fn push(
        &mut self,
        runs: &mut Table<'_, (u64, u64, u64), &'static [u8]>,
        prefix: u64,
        index: u64,
    ) -> Result<bool, StoreError> {
        let closes = self.row.len() >= PAIRS_PER_ROW * PAIR && self.last != prefix;
        if closes {
            self.close(runs)?;
        }
        if self.row.is_empty() {
            self.first = prefix;
        }
        self.last = prefix;
        self.row.extend_from_slice(&prefix.to_be_bytes());
        self.row.extend_from_slice(&index.to_be_bytes());
        Ok(closes)
    }

    /// Writes the row being filled, if it holds any pair.
    fn close(
        &mut self,
        runs: &mut Table<'_, (u64, u64, u64), &'static [u8]>,
    ) -> Result<(), StoreError> {
        if !self.row.is_empty() {
            runs.insert(
                (self.run.from, self.run.to, self.first),
                self.row.as_slice(),
            )?;
            self.row.clear();
        }
        Ok(())
    }
}

/// Pushes onto `out` the log indices `run` gives for ids with prefix `prefix`:
/// candidates, which the entry index confirms.
pub(super) fn candidates(
    runs: &impl RunTable,
    run: Run,
    prefix: u64,
    out: &mut Vec<u64>,
) -> Result<(), StoreError> {
    // The last row starting at or below the prefix: a prefix never spans rows, so
    // no other row can hold it.
    let found = runs
        .range((run.from, run.to, 0)..=(run.from, run.to, prefix))?
        .next_back()
        .transpose()?;
    let Some((key, row)) = found else {
        return Ok(());
    };
    let row = row.value();
    let count = pairs_of(run, key.value().2, row)?;
    let mut at = partition_point(count, |at| pair_at(row, at).0 < prefix);
    while at < count {
        let (found, index) = pair_at(row, at);
        if found != prefix {
            break;
        }
        out.push(index);
        at += 1;
    }
    Ok(())
}

/// The first of `0..count` for which `below` is false (`below` must be true for a
/// prefix of the range and false after).
fn partition_point(count: usize, below: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, count);
    while low < high {
        let middle = low + (high - low) / 2;
        if below(middle) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

/// The runs in use, in log order; damage unless they cover the log from 0 without
/// a gap or an overlap.
pub(super) fn directory(dir: &impl ReadableTable<u64, u64>) -> Result<Vec<Run>, StoreError> {
    let mut runs = Vec::new();
    let mut next = 0;
    for row in dir.iter()? {
        let (from, to) = row?;
        let run = Run {
            from: from.value(),
            to: to.value(),
        };
        if run.from != next || run.to <= run.from {
            return Err(corrupt(format!(
                "id runs: the run {}..{} does not follow the runs before it, which end at {next}",
                run.from, run.to
            )));
        }
        next = run.to;
        runs.push(run);
    }
    Ok(runs)
}

/// An order-free digest of (prefix, log index) pairs: the sum of a 128-bit mix of
/// each. A run and the ids of its log indices give the same digest exactly when
/// (but for a chance of 2^-128 against a damaged file) they hold the same pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Digest(u64, u64);

impl Digest {
    /// Adds one pair.
    pub fn add(&mut self, prefix: u64, log_index: u64) {
        self.0 = self.0.wrapping_add(mix(prefix ^ mix(log_index)));
        self.1 = self.1.wrapping_add(mix(prefix.rotate_left(29)
            ^ log_index
            ^ 0x9e37_79b9_7f4a_7c15));
    }
}

/// The SplitMix64 finaliser: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Reads `run` whole and checks it: rows are whole pairs, keyed by their first
/// prefix and sorted across the run with no prefix split between rows, every log
/// index is the run's, one pair per log index, and their digest is `expected`
/// (the ids' own, from the entry index).
pub(super) fn check(runs: &impl RunTable, run: Run, expected: Digest) -> Result<(), StoreError> {
    let damaged = |what: String| corrupt(format!("id run {}..{}: {what}", run.from, run.to));
    let mut digest = Digest::default();
    let mut pairs = 0u64;
    let mut last: Option<u64> = None;
    for row in runs.range(run.keys())? {
        let (key, row) = row?;
        let first = key.value().2;
        let row = row.value();
        let count = pairs_of(run, first, row)?;
        if pair_at(row, 0).0 != first {
            return Err(damaged(format!(
                "the row at {first:#018x} starts elsewhere"
            )));
        }
        if last.is_some_and(|last| last >= first) {
            return Err(damaged(format!(
                "the row at {first:#018x} does not sort after the row before it"
            )));
        }
        for at in 0..count {
            let (prefix, index) = pair_at(row, at);
            if at > 0 && pair_at(row, at - 1).0 > prefix {
                return Err(damaged(format!("the row at {first:#018x} is not sorted")));
            }
            if !(run.from..run.to).contains(&index) {
                return Err(damaged(format!("it holds log index {index}")));
            }
            digest.add(prefix, index);
        }
        pairs += count as u64;
        last = Some(pair_at(row, count - 1).0);
    }
    if pairs != run.to - run.from || digest != expected {
        return Err(damaged(format!(
            "it holds {pairs} pairs that are not the ids of its {} log indices",
            run.to - run.from
        )));
    }
    Ok(())
}

/// Runs merged at once: four runs of one level make one of the next, so a history
/// of `n` ids is held in at most about 3 log4(n / run size) + 4 runs.
pub(super) const MERGED: usize = 4;

/// A run's level: 0 for a run of about `run_ids` ids, one more for each merge.
fn level(run: Run, run_ids: u64) -> u32 {
    ((run.to - run.from) / run_ids.max(1))
        .max(1)
        .ilog(MERGED as u64)
}

/// The merge due among `runs` (in log order): the newest [`MERGED`] adjacent runs
/// that share a level. Runs written while a merge goes on stay out of it, so the
/// ones it makes are not always the newest.
pub(super) fn merge_due(runs: &[Run], run_ids: u64) -> Option<Merge> {
    runs.windows(MERGED)
        .rev()
        .find(|window| {
            let first = level(window[0], run_ids);
            window.iter().all(|run| level(*run, run_ids) == first)
        })
        .map(|window| Merge::new(window.to_vec()))
}

/// Adjacent runs being merged into one, a few rows at a time. The merged run's rows
/// depend on its inputs alone, so a merge taken back to its state before a step
/// whose commit failed writes the same rows again; the rows a crash leaves of one
/// are not listed, and an open removes them.
#[derive(Clone, Debug)]
pub(super) struct Merge {
    inputs: Vec<Run>,
    /// Per input, the pairs read and not merged yet, in reverse order.
    read: Vec<Vec<(u64, u64)>>,
    /// Per input, the first prefix its next row may start at; none once all is read.
    next_row: Vec<Option<u64>>,
    /// The merged run's rows.
    rows: RowWriter,
    /// Pairs merged so far.
    merged: u64,
}

impl Merge {
    fn new(inputs: Vec<Run>) -> Merge {
        let output = Run {
            from: inputs[0].from,
            to: inputs[inputs.len() - 1].to,
        };
        Merge {
            read: vec![Vec::new(); inputs.len()],
            next_row: vec![Some(0); inputs.len()],
            rows: RowWriter::new(output),
            merged: 0,
            inputs,
        }
    }

    /// The runs it merges, in log order.
    pub fn inputs(&self) -> &[Run] {
        &self.inputs
    }

    /// The run it makes.
    pub fn output(&self) -> Run {
        self.rows.run
    }

    /// Reads input `at`'s next row when all of its last one is merged.
    fn refill(&mut self, runs: &impl RunTable, at: usize) -> Result<(), StoreError> {
        let (Some(from), true) = (self.next_row[at], self.read[at].is_empty()) else {
            return Ok(());
        };
        let run = self.inputs[at];
        let found = runs
            .range((run.from, run.to, from)..=(run.from, run.to, u64::MAX))?
            .next()
            .transpose()?;
        let Some((key, row)) = found else {
            self.next_row[at] = None;
            return Ok(());
        };
        let first = key.value().2;
        let row = row.value();
        let count = pairs_of(run, first, row)?;
        self.read[at] = (0..count).rev().map(|at| pair_at(row, at)).collect();
        self.next_row[at] = first.checked_add(1);
        Ok(())
    }

    /// Writes up to `rows` rows of the merged run. Once it is whole, lists it in the
    /// directory in place of its inputs (whose rows the caller then removes) and
    /// returns true.
    pub fn step(
        &mut self,
        runs: &mut Table<'_, (u64, u64, u64), &'static [u8]>,
        dir: &mut Table<'_, u64, u64>,
        rows: usize,
    ) -> Result<bool, StoreError> {
        let mut written = 0;
        while written < rows {
            for at in 0..self.inputs.len() {
                self.refill(&*runs, at)?;
            }
            let least = (0..self.inputs.len())
                .filter_map(|at| self.read[at].last().map(|pair| (*pair, at)))
                .min();
            let Some(((prefix, index), at)) = least else {
                return self.finish(runs, dir);
            };
            written += usize::from(self.rows.push(runs, prefix, index)?);
            self.read[at].pop();
            self.merged += 1;
        }
        Ok(false)
    }

    fn finish(
        &mut self,
        runs: &mut Table<'_, (u64, u64, u64), &'static [u8]>,
        dir: &mut Table<'_, u64, u64>,
    ) -> Result<bool, StoreError> {
        let output = self.output();
        if self.merged != output.to - output.from {
            return Err(corrupt(format!(
                "id runs {}..{}: merging them gave {} pairs for {} log indices",
                output.from,
                output.to,
                self.merged,
                output.to - output.from
            )));
        }
        self.rows.close(runs)?;
        for input in &self.inputs {
            dir.remove(input.from)?;
        }
        dir.insert(output.from, output.to)?;
        Ok(true)
    }
}

/// Removes every row of `run`, which is no longer in the directory.
pub(super) fn remove(
    runs: &mut Table<'_, (u64, u64, u64), &'static [u8]>,
    run: Run,
) -> Result<(), StoreError> {
    runs.retain_in(run.keys(), |_, _| false)?;
    Ok(())
}

/// Removes up to `rows` rows of `run`, which is no longer in the directory;
/// whether none is left.
pub(super) fn remove_rows(
    runs: &mut Table<'_, (u64, u64, u64), &'static [u8]>,
    run: Run,
    rows: usize,
) -> Result<bool, StoreError> {
    let keys = runs
        .range(run.keys())?
        .take(rows + 1)
        .map(|row| row.map(|(key, _)| key.value()))
        .collect::<Result<Vec<_>, _>>()?;
    for key in keys.iter().take(rows) {
        runs.remove(key)?;
    }
    Ok(keys.len() <= rows)
}

/// The runs that have rows, whether listed in the directory or not, in key order:
/// one seek per run.
pub(super) fn stored(runs: &impl RunTable) -> Result<Vec<Run>, StoreError> {
    let mut found = Vec::new();
    let mut from_key = (0, 0, 0);
    loop {
        let next = runs.range(from_key..)?.next().transpose()?;
        let Some((key, _)) = next else {
            return Ok(found);
        };
        let (from, to, _) = key.value();
        found.push(Run { from, to });
        from_key = match to.checked_add(1) {
            Some(to) => (from, to, 0),
            None => match from.checked_add(1) {
                Some(from) => (from, 0, 0),
                None => return Ok(found),
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use ledger_migrations::schema::{ID_RUNS, ID_RUN_DIR};
    use redb::ReadableDatabase;

    use super::*;
    use crate::storage::memory_database;

    fn written(run: Run, pairs: &[(u64, u64)]) -> redb::Database {
        let database = memory_database();
        let txn = database.begin_write().unwrap();
        {
            let mut runs = txn.open_table(ID_RUNS).unwrap();
            let mut dir = txn.open_table(ID_RUN_DIR).unwrap();
            write(&mut runs, &mut dir, run, pairs.to_vec()).unwrap();
        }
        txn.commit().unwrap();
        database
    }

    fn digest(pairs: &[(u64, u64)]) -> Digest {
        let mut digest = Digest::default();
        for &(prefix, index) in pairs {
            digest.add(prefix, index);
        }
        digest
    }

    /// Pairs of a run of `count` log indices from `from`, with `repeats` of them
    /// sharing one prefix (a prefix collision).
    fn pairs(from: u64, count: u64, repeats: u64) -> Vec<(u64, u64)> {
        (from..from + count)
            .map(|index| {
                let prefix = if index < from + repeats {
                    0x5555
                } else {
                    mix(index + 1)
                };
                (prefix, index)
            })
            .collect()
    }

    /// Every id of runs of several sizes is found, a prefix shared by more pairs
    /// than a row holds gives all its log indices, an absent prefix gives none, and
    /// the run checks out against its own digest.
    #[test]
    fn a_run_finds_every_pair_it_was_written_with() {
        for (count, repeats) in [(1, 0), (255, 0), (256, 0), (257, 0), (3000, 0), (1000, 600)] {
            let run = Run { from: 0, to: count };
            let pairs = pairs(0, count, repeats);
            let database = written(run, &pairs);
            let txn = database.begin_read().unwrap();
            let runs = txn.open_table(ID_RUNS).unwrap();
            for &(prefix, index) in &pairs {
                let mut found = Vec::new();
                candidates(&runs, run, prefix, &mut found).unwrap();
                assert!(found.contains(&index), "{count}: {prefix:#x} → {found:?}");
                let expected = if prefix == 0x5555 {
                    repeats as usize
                } else {
                    1
                };
                assert_eq!(found.len(), expected);
            }
            for absent in [0, 0x5554, 0x5556, u64::MAX] {
                let mut found = Vec::new();
                candidates(&runs, run, absent, &mut found).unwrap();
                assert!(found.is_empty(), "{absent:#x} → {found:?}");
            }
            check(&runs, run, digest(&pairs)).unwrap();
            let dir = txn.open_table(ID_RUN_DIR).unwrap();
            assert_eq!(directory(&dir).unwrap(), [run]);
        }
    }

    /// A run that lost a pair, holds another id at a log index, holds a log index
    /// outside its range or a row cut short fails its check.
    #[test]
    fn a_damaged_run_fails_its_check() {
        let run = Run { from: 0, to: 600 };
        let good = pairs(0, 600, 0);
        let expected = digest(&good);
        let mut other_id = good.clone();
        other_id[17].0 ^= 1;
        let mut outside = good.clone();
        outside[3].1 = 600;
        let mut short = good.clone();
        short.pop();
        for (what, pairs) in [
            ("another id", other_id),
            ("outside", outside),
            ("short", short),
        ] {
            let database = written(run, &pairs);
            let txn = database.begin_read().unwrap();
            let runs = txn.open_table(ID_RUNS).unwrap();
            let error = check(&runs, run, expected).unwrap_err();
            assert!(error.damage().is_some(), "{what}: {error}");
        }
        let database = written(run, &good);
        let txn = database.begin_write().unwrap();
        {
            let mut runs = txn.open_table(ID_RUNS).unwrap();
            let (key, row) = {
                let (key, row) = runs.first().unwrap().unwrap();
                (key.value(), row.value().to_vec())
            };
            runs.insert(key, &row[..row.len() - 3]).unwrap();
            let error = check(&runs, run, expected).unwrap_err();
            assert!(error.to_string().contains("bytes"), "{error}");
            let mut found = Vec::new();
            let error = candidates(&runs, run, key.2, &mut found).unwrap_err();
            assert!(error.damage().is_some(), "{error}");
        }
    }

    /// Four runs merged a row at a time (one of them with a prefix shared across
    /// runs and more pairs than a row holds) make one run that finds every pair and
    /// checks out against all their digests; the directory lists it alone, and the
    /// inputs' rows, once removed, are gone.
    #[test]
    fn four_runs_merged_a_row_at_a_time_make_one() {
        let database = memory_database();
        let inputs = [(0, 300, 0), (300, 700, 280), (700, 710, 0), (710, 1000, 3)];
        let mut all = Vec::new();
        let mut runs = Vec::new();
        let txn = database.begin_write().unwrap();
        {
            let mut table = txn.open_table(ID_RUNS).unwrap();
            let mut dir = txn.open_table(ID_RUN_DIR).unwrap();
            for (from, to, repeats) in inputs {
                let run = Run { from, to };
                let pairs = pairs(from, to - from, repeats);
                write(&mut table, &mut dir, run, pairs.clone()).unwrap();
                all.extend(pairs);
                runs.push(run);
            }
            assert_eq!(stored(&table).unwrap(), runs);
            let mut merge = merge_due(&runs, 250).expect("four runs of level 0");
            assert_eq!(merge.output(), Run { from: 0, to: 1000 });
            let mut steps = 0;
            while !merge.step(&mut table, &mut dir, 1).unwrap() {
                steps += 1;
                assert!(steps < 100, "the merge never ends");
            }
            assert!(steps >= 2, "{steps} steps");
            let output = merge.output();
            assert_eq!(directory(&dir).unwrap(), [output]);
            check(&table, output, digest(&all)).unwrap();
            for &(prefix, index) in &all {
                let mut found = Vec::new();
                candidates(&table, output, prefix, &mut found).unwrap();
                assert!(found.contains(&index));
            }
            let mut shared = Vec::new();
            candidates(&table, output, 0x5555, &mut shared).unwrap();
            assert_eq!(shared.len(), 283);
            for run in merge.inputs() {
                while !remove_rows(&mut table, *run, 1).unwrap() {}
            }
            assert_eq!(stored(&table).unwrap(), [output]);
        }
    }

    /// A merge is due when the newest four runs share a level: four runs of about
    /// a run's worth, then four of four times that.
    #[test]
    fn a_merge_is_due_when_the_newest_four_share_a_level() {
        let runs = |sizes: &[u64]| -> Vec<Run> {
            let mut from = 0;
            sizes
                .iter()
                .map(|size| {
                    from += size;
                    Run {
                        from: from - size,
                        to: from,
                    }
                })
                .collect()
        };
        let due = |sizes: &[u64]| merge_due(&runs(sizes), 100).map(|merge| merge.output());
        assert_eq!(due(&[100, 100, 100]), None);
        assert_eq!(due(&[100, 120, 100, 130]), Some(Run { from: 0, to: 450 }));
        assert_eq!(due(&[400, 100, 100, 100]), None);
        assert_eq!(
            due(&[400, 410, 420, 400, 100]),
            Some(Run { from: 0, to: 1630 }),
            "a run written during the last merge"
        );
        assert_eq!(
            due(&[400, 100, 100, 100, 100]),
            Some(Run { from: 400, to: 800 })
        );
        assert_eq!(due(&[400, 410, 420, 400]), Some(Run { from: 0, to: 1630 }));
        assert_eq!(
            due(&[1600, 400, 410, 420, 400]),
            Some(Run {
                from: 1600,
                to: 3230
            })
        );
    }

    /// The directory must cover the log from 0 without gaps or overlaps.
    #[test]
    fn the_directory_must_cover_the_log_from_zero() {
        for (rows, fine) in [
            (vec![], true),
            (vec![(0, 5), (5, 9)], true),
            (vec![(1, 5)], false),
            (vec![(0, 5), (6, 9)], false),
            (vec![(0, 5), (5, 5)], false),
        ] {
            let database = memory_database();
            let txn = database.begin_write().unwrap();
            {
                let mut dir = txn.open_table(ID_RUN_DIR).unwrap();
                for (from, to) in &rows {
                    dir.insert(from, to).unwrap();
                }
                assert_eq!(directory(&dir).is_ok(), fine, "{rows:?}");
            }
        }
    }
}
