//! The entry index on disk: `entry_id_rows` holds the ids of [`IDS_PER_ROW`]
//! consecutive log indices per row, keyed by the first of them over
//! [`IDS_PER_ROW`], so that appending, restoring and scanning cost a B-tree row per
//! 16 ids. Every row but the last is full.

use ledger_migrations::schema::IDS_PER_ROW;
use redb::{ReadableTable, Table};

use super::{corrupt, StoreError};
use crate::chain::Hash;

const ID: usize = 32;
const FULL_ROW: usize = ID * IDS_PER_ROW as usize;

/// The row holding `log_index`, and the id's place within it.
fn place(log_index: u64) -> (u64, usize) {
    (log_index / IDS_PER_ROW, (log_index % IDS_PER_ROW) as usize)
}

/// The ids of row `key`, refused unless it holds whole ids and at most a row's worth.
fn checked(key: u64, bytes: &[u8]) -> Result<&[u8], StoreError> {
    if !bytes.len().is_multiple_of(ID) || bytes.len() > FULL_ROW || bytes.is_empty() {
        return Err(corrupt(format!(
            "entry index: row {key} holds {} bytes, not a row of ids",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn id_in(row: &[u8], slot: usize) -> Option<Hash> {
    let bytes = row.get(slot * ID..(slot + 1) * ID)?;
    let mut id = [0; ID];
    id.copy_from_slice(bytes);
    Some(Hash(id))
}

/// The id at `log_index`, if the index holds one there.
pub(super) fn id_at(
    table: &impl ReadableTable<u64, &'static [u8]>,
    log_index: u64,
) -> Result<Option<Hash>, StoreError> {
    let (key, slot) = place(log_index);
    let Some(row) = table.get(key)? else {
        return Ok(None);
    };
    Ok(id_in(checked(key, row.value())?, slot))
}

/// The ids at `range` of log indices, which the index must hold every one of.
pub(super) fn ids_in(
    table: &impl ReadableTable<u64, &'static [u8]>,
    range: std::ops::Range<u64>,
) -> Result<Vec<Hash>, StoreError> {
    let wanted = range.end.saturating_sub(range.start);
    let mut ids = Vec::with_capacity(usize::try_from(wanted).unwrap_or(0));
    if wanted == 0 {
        return Ok(ids);
    }
    let (first, _) = place(range.start);
    let (last, _) = place(range.end - 1);
    for (expected, row) in (first..).zip(table.range(first..=last)?) {
        let (key, bytes) = row?;
        let key = key.value();
        let next = range.start + ids.len() as u64;
        if key != expected {
            return Err(corrupt(format!(
                "entry index: log index {next} is missing (the next row starts at {})",
                key * IDS_PER_ROW
            )));
        }
        let row = checked(key, bytes.value())?;
        let from = (next - key * IDS_PER_ROW) as usize;
        let to = (range.end.min((key + 1) * IDS_PER_ROW) - key * IDS_PER_ROW) as usize;
        for slot in from..to {
            let id = id_in(row, slot).ok_or_else(|| {
                corrupt(format!(
                    "entry index: it ends before log index {}",
                    key * IDS_PER_ROW + slot as u64
                ))
            })?;
            ids.push(id);
        }
    }
    if ids.len() as u64 != wanted {
        return Err(corrupt(format!(
            "entry index: it ends before log index {}",
            range.start + ids.len() as u64
        )));
    }
    Ok(ids)
}

/// Every id of the index in log order, each row checked to follow the one before:
/// `each` hears the ids of one row at a time with the log index of the first.
pub(super) fn scan(
    table: &impl ReadableTable<u64, &'static [u8]>,
    mut each: impl FnMut(u64, &mut dyn Iterator<Item = Hash>) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let mut held = 0u64;
    for row in table.iter()? {
        let (key, bytes) = row?;
        let key = key.value();
        if key * IDS_PER_ROW != held {
            // Also a row after a short one: only the last row may be short.
            return Err(corrupt(format!(
                "entry index: log index {held} is missing (the next row starts at {})",
                key * IDS_PER_ROW
            )));
        }
        let row = checked(key, bytes.value())?;
        let count = row.len() / ID;
        each(held, &mut (0..count).filter_map(|slot| id_in(row, slot)))?;
        held += count as u64;
    }
    Ok(held)
}

/// How many ids the index holds, from its last row alone; [`scan`] checks the rest.
pub(super) fn held(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, StoreError> {
    let Some((key, bytes)) = table.last()? else {
        return Ok(0);
    };
    let key = key.value();
    Ok(key * IDS_PER_ROW + (checked(key, bytes.value())?.len() / ID) as u64)
}

/// Appends `ids` at log indices from `first`, which must be where the index ends:
/// the last row is completed in place, then full rows follow.
pub(super) fn append(
    table: &mut Table<'_, u64, &'static [u8]>,
    first: u64,
    ids: impl IntoIterator<Item = Hash>,
) -> Result<(), StoreError> {
    let (mut key, slot) = place(first);
    let mut row = Vec::with_capacity(FULL_ROW);
    if slot > 0 {
        let held = table.get(key)?;
        match held {
            Some(bytes) if bytes.value().len() == slot * ID => row.extend_from_slice(bytes.value()),
            _ => {
                return Err(corrupt(format!(
                    "entry index: row {key} does not end at log index {first}, where the log \
                     does"
                )))
            }
        }
    }
    let mut changed = false;
    for id in ids {
        row.extend_from_slice(id.as_bytes());
        changed = true;
        if row.len() == FULL_ROW {
            table.insert(key, row.as_slice())?;
            row.clear();
            key += 1;
            changed = false;
        }
    }
    if changed {
        table.insert(key, row.as_slice())?;
    }
    Ok(())
}

/// Removes the ids from `range.start` (where a row starts) up to `range.end`, which
/// must be where a row starts or the index ends.
pub(super) fn remove(
    table: &mut Table<'_, u64, &'static [u8]>,
    range: std::ops::Range<u64>,
) -> Result<(), StoreError> {
    for key in range.start / IDS_PER_ROW..range.end.div_ceil(IDS_PER_ROW) {
        table.remove(key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    use super::*;
    use crate::storage::memory_database;

    const ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("rows");

    fn id(log_index: u64) -> Hash {
        let mut id = [0; 32];
        id[..8].copy_from_slice(&log_index.to_be_bytes());
        Hash(id)
    }

    fn write(database: &redb::Database, change: impl FnOnce(&mut Table<'_, u64, &'static [u8]>)) {
        let txn = database.begin_write().unwrap();
        change(&mut txn.open_table(ROWS).unwrap());
        txn.commit().unwrap();
    }

    /// Appends of every size, starting anywhere in a row, read back by index, by
    /// range and by scan as the ids appended, 16 to a row.
    #[test]
    fn appended_ids_read_back_in_log_order() {
        let database = memory_database();
        let mut size = 0;
        for count in [0u64, 1, 5, 10, 16, 40, 3, 17] {
            write(&database, |table| {
                append(table, size, (size..size + count).map(id)).unwrap();
            });
            size += count;
        }
        let txn = database.begin_read().unwrap();
        let table = txn.open_table(ROWS).unwrap();
        assert_eq!(table.len().unwrap(), size.div_ceil(IDS_PER_ROW));
        assert_eq!(held(&table).unwrap(), size);
        for log_index in 0..size {
            assert_eq!(id_at(&table, log_index).unwrap(), Some(id(log_index)));
        }
        assert_eq!(id_at(&table, size).unwrap(), None);
        for (start, end) in [(0, size), (3, 4), (15, 17), (16, 32), (7, 70), (size, size)] {
            let expected: Vec<Hash> = (start..end).map(id).collect();
            assert_eq!(
                ids_in(&table, start..end).unwrap(),
                expected,
                "{start}..{end}"
            );
        }
        let error = ids_in(&table, 80..size + 1).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("before log index {size}")),
            "{error}"
        );
        let mut scanned = Vec::new();
        let total = scan(&table, |first, row| {
            scanned.extend((first..).zip(row));
            Ok(())
        })
        .unwrap();
        assert_eq!(total, size);
        assert_eq!(scanned, (0..size).map(|i| (i, id(i))).collect::<Vec<_>>());
    }

    /// An append must start where the index ends, and a row that is not whole ids,
    /// a short row before another, or a missing row is damage to every reader.
    #[test]
    fn rows_that_do_not_follow_are_damage() {
        let short = memory_database();
        write(&short, |table| append(table, 0, (0..20).map(id)).unwrap());
        write(&short, |table| {
            let error = append(table, 21, [id(21)]).unwrap_err();
            assert!(error.damage().is_some(), "{error}");
            let error = append(table, 19, [id(19)]).unwrap_err();
            assert!(error.to_string().contains("row 1"), "{error}");
        });
        let damaged = |change: fn(&mut Table<'_, u64, &'static [u8]>), found: &str| {
            let database = memory_database();
            write(&database, |table| {
                append(table, 0, (0..40).map(id)).unwrap()
            });
            write(&database, change);
            let txn = database.begin_read().unwrap();
            let table = txn.open_table(ROWS).unwrap();
            let error = scan(&table, |_, _| Ok(())).unwrap_err();
            assert!(error.damage().is_some(), "{error}");
            assert!(error.to_string().contains(found), "{found}: {error}");
            let error = ids_in(&table, 0..40).unwrap_err();
            assert!(error.damage().is_some(), "{error}");
        };
        damaged(
            |table| {
                table.insert(1, [7u8; 33].as_slice()).unwrap();
            },
            "row 1 holds 33 bytes",
        );
        damaged(
            |table| {
                table.insert(0, [7u8; 64].as_slice()).unwrap();
            },
            "log index 2 is missing",
        );
        damaged(
            |table| {
                table.remove(1).unwrap();
            },
            "log index 16 is missing",
        );
    }

    /// Removing a tile's range takes its rows, the last one short, and nothing else.
    #[test]
    fn removing_a_range_takes_its_rows() {
        let database = memory_database();
        write(&database, |table| {
            append(table, 0, (0..50).map(id)).unwrap()
        });
        write(&database, |table| remove(table, 32..50).unwrap());
        let txn = database.begin_read().unwrap();
        let table = txn.open_table(ROWS).unwrap();
        assert_eq!(held(&table).unwrap(), 32);
        assert_eq!(
            ids_in(&table, 0..32).unwrap(),
            (0..32).map(id).collect::<Vec<_>>()
        );
    }
}
