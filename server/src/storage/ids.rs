//! The in-memory map from entry ids to log indices over the append-only
//! entry index (`id_rows.rs`): what makes "is this entry committed?" one B-tree read.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use redb::ReadableTable;

use super::{corrupt, id_rows, StoreError};
use crate::chain::Hash;

/// Entry ids by their first 8 bytes → log index. About 20 bytes of memory per entry;
/// a hit is only a candidate until the entry index confirms the full id, so prefix
/// collisions (and entries of a commit that failed) cost a read, never a wrong answer.
#[derive(Debug, Default)]
pub(super) struct IdMap {
    first: HashMap<u64, u64>,
    /// Further log indices of prefixes that occur more than once.
    more: HashMap<u64, Vec<u64>>,
}

impl IdMap {
    fn prefix(id: &Hash) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&id.0[..8]);
        u64::from_be_bytes(bytes)
    }

    pub(super) fn with_capacity(entries: usize) -> IdMap {
        IdMap {
            first: HashMap::with_capacity(entries),
            more: HashMap::new(),
        }
    }

    pub(super) fn insert(&mut self, id: &Hash, log_index: u64) {
        let prefix = IdMap::prefix(id);
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

    pub(super) fn remove(&mut self, id: &Hash, log_index: u64) {
        let prefix = IdMap::prefix(id);
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

    /// Whether some committed entry shares `id`'s prefix: false means `id` is surely
    /// not committed, true that only the table can tell.
    pub(super) fn may_hold(&self, id: &Hash) -> bool {
        self.first.contains_key(&IdMap::prefix(id))
    }

    /// The log index holding `id`, confirmed in `ids` (the entry index's table). A
    /// candidate whose stored id does not even share the prefix that led to it
    /// means the table changed under the map: damage, not a miss.
    pub(super) fn locate(
        &self,
        ids: &impl ReadableTable<u64, &'static [u8]>,
        id: &Hash,
    ) -> Result<Option<u64>, StoreError> {
        let prefix = IdMap::prefix(id);
        let candidates = self
            .first
            .get(&prefix)
            .into_iter()
            .chain(self.more.get(&prefix).into_iter().flatten());
        for &log_index in candidates {
            let Some(stored) = id_rows::id_at(ids, log_index)? else {
                // An entry of a commit that failed, taken out again below.
                continue;
            };
            if stored == *id {
                return Ok(Some(log_index));
            }
            if IdMap::prefix(&stored) != prefix {
                return Err(corrupt(format!(
                    "entry index: log index {log_index} holds {stored}, which was indexed \
                     under another id"
                )));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, TableDefinition};

    use super::*;

    const IDS: TableDefinition<u64, &[u8]> = TableDefinition::new("ids");

    /// A row that changed under the map after it was built is damage when its id no
    /// longer shares the prefix that led to it, and an ordinary miss when it does (a
    /// prefix collision, or a commit that failed).
    #[test]
    fn a_row_changed_under_the_map_is_damage_not_a_miss() {
        let database = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let kept = Hash([1; 32]);
        let mut same_prefix = Hash([1; 32]);
        same_prefix.0[31] = 9;
        let write = database.begin_write().unwrap();
        {
            let mut table = write.open_table(IDS).unwrap();
            id_rows::append(&mut table, 0, [Hash([2; 32]), same_prefix]).unwrap();
        }
        write.commit().unwrap();
        let mut map = IdMap::default();
        map.insert(&kept, 0);
        map.insert(&kept, 1);
        let read = database.begin_read().unwrap();
        let table = read.open_table(IDS).unwrap();
        let error = map.locate(&table, &kept).unwrap_err();
        assert!(error.damage().is_some(), "{error}");
        let mut collision = IdMap::default();
        collision.insert(&kept, 1);
        assert_eq!(collision.locate(&table, &kept).unwrap(), None);
    }

    /// `may_hold` answers from the prefix alone: an id whose prefix no entry has is
    /// surely absent; one sharing a prefix (here a collision) needs the table.
    #[test]
    fn may_hold_rules_out_only_absent_prefixes() {
        let held = Hash([3; 32]);
        let mut collision = held;
        collision.0[31] = 4;
        let mut map = IdMap::default();
        assert!(!map.may_hold(&held));
        map.insert(&held, 7);
        assert!(map.may_hold(&held));
        assert!(map.may_hold(&collision));
        assert!(!map.may_hold(&Hash([5; 32])));
        map.remove(&held, 7);
        assert!(!map.may_hold(&held));
    }
}
