//! Builders of valid chains for tests, benches and the fixture generator (those of
//! [`ledger_chain::testing`]), and a disk that fails on demand. Nothing here is used
//! by a running node.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use ledger_chain::testing::*;

use crate::storage::{Store, StoreError, StoreOptions};

/// Seeds of the members of the upgrade tests' fixture chain.
pub const FIXTURE_MEMBER_SEEDS: [u8; 4] = [1, 2, 3, 4];
/// Seed of the key that signs the fixture chain's authored entries.
pub const FIXTURE_AUTHOR_SEED: u8 = 42;

/// The fixture chain's spec: its four members, difficulty 4.
pub fn fixture_spec() -> crate::chain::ChainSpec {
    spec(&FIXTURE_MEMBER_SEEDS.map(key), 4)
}

/// Writes the fixture chain that the upgrade tests open to a new database at `path`,
/// at the current schema: three blocks of five unsigned entries and one signed by
/// [`FIXTURE_AUTHOR_SEED`]'s key ("fixture entry signed in round R"). The chain is
/// fixed, so a fresh run yields the blocks of a committed fixture
/// (`examples/make_fixture.rs` writes one).
pub fn write_fixture(path: &Path) -> Result<Store, StoreError> {
    let keys = FIXTURE_MEMBER_SEEDS.map(key);
    let spec = fixture_spec();
    let store = Store::open(path, &spec, StoreOptions::default())?;
    for round in 0..3u64 {
        let (tip, log) = store.tip_with_log()?;
        let mut batch = entries(round, 5, 48);
        let text = format!("fixture entry signed in round {round}");
        batch.push(crate::chain::Entry::signed(
            text.into_bytes(),
            &key(FIXTURE_AUTHOR_SEED),
            &spec.chain_hash(),
        ));
        let block = next_block(&tip, &log, batch, 4);
        store.apply_block(&block, &certify(&keys, &block))?;
    }
    Ok(store)
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

/// Puts `id` at `log_index` of the entry index inside `txn`, as damage on disk would:
/// the tests of the store's checks write it under the store's feet.
pub fn overwrite_entry_id(txn: &redb::WriteTransaction, log_index: u64, id: &[u8; 32]) {
    use ledger_migrations::schema::{ENTRY_IDS, IDS_PER_ROW};
    use redb::ReadableTable;
    let mut table = txn.open_table(ENTRY_IDS).expect("entry index");
    let key = log_index / IDS_PER_ROW;
    let mut row = table
        .get(key)
        .expect("read")
        .expect("the row holding that log index")
        .value()
        .to_vec();
    let at = (log_index % IDS_PER_ROW) as usize * 32;
    row[at..at + 32].copy_from_slice(id);
    table.insert(key, row.as_slice()).expect("write");
}

/// A policy (a chain's plugins) with a block rule that entries passing one at a time
/// break together, as a plugin's `validate_block` may (`chain::fit_block`): at most
/// `most` entries a block, and none whose data starts with `blockless`. Its entry
/// rule takes everything. The replica's tests and the simulator run it; the
/// `two_a_block` example plugin is the same rule as a library.
#[derive(Debug)]
pub struct BlockRules {
    /// Most entries a block holds.
    pub most: usize,
    /// How the data of an entry no block holds begins.
    pub blockless: &'static [u8],
}

impl crate::chain::Policy for BlockRules {
    fn difficulty_window(&self) -> usize {
        0
    }

    fn required_difficulty(&self, _: &[crate::chain::Header]) -> Result<Option<u32>, String> {
        Ok(None)
    }

    fn check_block(&self, block: &crate::chain::Block) -> Result<(), String> {
        if block
            .entries
            .iter()
            .any(|e| e.data.starts_with(self.blockless))
        {
            return Err("no block holds a blockless entry".into());
        }
        match block.entries.len() > self.most {
            true => Err(format!("more than {} entries", self.most)),
            false => Ok(()),
        }
    }

    fn check_entry(&self, _: &crate::chain::Entry) -> Result<(), String> {
        Ok(())
    }
}
