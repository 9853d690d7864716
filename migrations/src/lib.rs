//! Schema versions of the ledger's redb database and the steps between them.
//!
//! The table definitions live here, not in the server, so the schema and its upgrade
//! steps are one piece of code: [`schema`] is always the newest schema, and each step in
//! [`MIGRATIONS`] turns version `n - 1` into `n`. [`migrate`] runs every pending step
//! in one write transaction and records the new version in the `meta` table in that
//! same transaction, so a crash mid-upgrade leaves the old schema intact.
//!
//! Version history (docs/FORMAT.md, "Database"):
//! 1. chain tables: meta, blocks, block hashes, entry index, Merkle nodes, commit
//!    certificates.
//! 2. consensus tables: consensus log, checkpoint certificates, view state, membership.
//! 3. the entry index becomes append-only: `entry_ids` (log index → id) and
//!    `log_starts` (a block's first log index → height) replace the id-keyed
//!    `entries`, whose random keys cost a page write per committed entry.
//! 4. history may start at a snapshot: a database restored from one holds no blocks
//!    between genesis and the snapshot's height (`meta` `history_from` says where its
//!    blocks start) until they are fetched, and keeps the headers just below it that
//!    the difficulty policy reads in `base_headers`. A build that knew only version 3
//!    would call the missing blocks damage, so it must refuse such a file.
//! 5. the consensus log: a cluster member keeps the votes of its last blocks in
//!    `ledger.redb.wal` beside the file until they are folded into `consensus_log`.
//!    No table changes; a build that does not read the log would forget those votes,
//!    so it must refuse such a file.
//! 6. Merkle nodes below level [`schema::MERKLE_STORED_FROM`] are no longer stored:
//!    they are recomputed from the few `entry_ids` rows they cover, which cuts the
//!    rows written per committed entry from three to about one and an eighth. A
//!    build that reads those nodes from the table would call them missing.
//! 7. the entry index holds [`schema::IDS_PER_ROW`] ids per row: `entry_id_rows`
//!    replaces `entry_ids`, whose one row per entry cost a B-tree insert (and its
//!    page space) for every 32 bytes of id, which dominated restoring a snapshot and
//!    opening a long history.

use redb::{Database, ReadableDatabase, ReadableTable, TableHandle, WriteTransaction};

/// Table definitions of the current schema.
pub mod schema {
    use redb::TableDefinition;

    /// Database-wide facts: format marker, schema version, chain identity.
    pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    /// Height → canonical block encoding.
    pub const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
    /// Block hash → height.
    pub const BLOCK_HASHES: TableDefinition<&[u8; 32], u64> = TableDefinition::new("block_hashes");
    /// Log index / [`IDS_PER_ROW`] → the ids at those log indices, concatenated in
    /// log order; appended in commit order, and only the last row may hold fewer.
    pub const ENTRY_IDS: TableDefinition<u64, &[u8]> = TableDefinition::new("entry_id_rows");
    /// First log index of a block → its height (an empty block is overwritten by the
    /// next block that starts at the same index, which is the one holding entries).
    pub const LOG_STARTS: TableDefinition<u64, u64> = TableDefinition::new("log_starts");
    /// (level, index) → hash of that perfect Merkle subtree, for levels from
    /// [`MERKLE_STORED_FROM`] up.
    pub const MERKLE_NODES: TableDefinition<(u8, u64), &[u8; 32]> =
        TableDefinition::new("merkle_nodes");
    /// Height → canonical commit certificate of that block.
    pub const CERTIFICATES: TableDefinition<u64, &[u8]> = TableDefinition::new("certificates");
    /// Height → the replica's PBFT state for that sequence number (above the stable
    /// checkpoint only).
    pub const CONSENSUS_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("consensus_log");
    /// Height → stable checkpoint certificate.
    pub const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
    /// Key → the replica's view-change state (current view, pending view change).
    pub const VIEW_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("view_state");
    /// Height a membership takes effect → encoded member set.
    pub const MEMBERSHIP: TableDefinition<u64, &[u8]> = TableDefinition::new("membership");
    /// Height → header, for the headers below `history_from` that the difficulty
    /// policy reads (empty unless the database was restored from a snapshot).
    pub const BASE_HEADERS: TableDefinition<u64, &[u8]> = TableDefinition::new("base_headers");
    /// The entry index sorted by id, in runs: (first log index, end log index, first
    /// id prefix of the row) → (id prefix, log index) pairs, 16 bytes each, both u64
    /// big-endian, sorted by prefix; a prefix never spans two rows. A run holds the
    /// ids of its log indices, and the runs in [`ID_RUN_DIR`] cover the log from 0.
    pub const ID_RUNS: TableDefinition<(u64, u64, u64), &[u8]> = TableDefinition::new("id_runs");
    /// First log index → end log index of each run of [`ID_RUNS`] in use.
    pub const ID_RUN_DIR: TableDefinition<u64, u64> = TableDefinition::new("id_run_dir");

    /// The lowest level of `merkle_nodes`: a node below it covers fewer than 16
    /// leaves and is recomputed from their ids (one row of [`ENTRY_IDS`]) instead.
    pub const MERKLE_STORED_FROM: u8 = 4;

    /// Entry ids per row of [`ENTRY_IDS`]: a row is the 16 leaves under one stored
    /// Merkle node of the lowest stored level.
    pub const IDS_PER_ROW: u64 = 1 << MERKLE_STORED_FROM;

    /// `meta` key of the format marker.
    pub const META_FORMAT: &str = "format";
    /// `meta` key of the schema version (u32, big-endian).
    pub const META_SCHEMA_VERSION: &str = "schema_version";
    /// `meta` key of the lowest height above genesis whose block is held (u64,
    /// big-endian); absent when every block is.
    pub const META_HISTORY_FROM: &str = "history_from";
    /// The format marker's value: tells a ledger database from any other redb file.
    pub const FORMAT_MARKER: &[u8] = b"ledger-db";
}

/// Tables of older schemas that upgrade steps still read.
pub mod retired {
    use redb::TableDefinition;

    /// Schemas 1–2: entry id → (height, position in block, log index).
    pub const ENTRIES: TableDefinition<&[u8; 32], (u64, u32, u64)> =
        TableDefinition::new("entries");
    /// Schemas 3–6: log index → entry id.
    pub const ENTRY_IDS: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("entry_ids");
}

/// The schema version this build writes.
pub const CURRENT_VERSION: u32 = 8;

/// One upgrade step.
pub struct Migration {
    /// The version this step produces.
    pub version: u32,
    /// What it changes, for logs and `ledgerd migrate --check`.
    pub description: &'static str,
    apply: fn(&WriteTransaction) -> Result<(), redb::Error>,
}

/// Every step, in order; `MIGRATIONS[i].version == i + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "chain tables: blocks, block hashes, entry index, Merkle nodes, certificates",
        apply: |txn| {
            let mut meta = txn.open_table(schema::META)?;
            meta.insert(schema::META_FORMAT, schema::FORMAT_MARKER)?;
            drop(meta);
            txn.open_table(schema::BLOCKS)?;
            txn.open_table(schema::BLOCK_HASHES)?;
            txn.open_table(retired::ENTRIES)?;
            txn.open_table(schema::MERKLE_NODES)?;
            txn.open_table(schema::CERTIFICATES)?;
            Ok(())
        },
    },
    Migration {
        version: 2,
        description: "consensus tables: consensus log, checkpoints, view state, membership",
        apply: |txn| {
            txn.open_table(schema::CONSENSUS_LOG)?;
            txn.open_table(schema::CHECKPOINTS)?;
            txn.open_table(schema::VIEW_STATE)?;
            txn.open_table(schema::MEMBERSHIP)?;
            Ok(())
        },
    },
    Migration {
        version: 3,
        description: "append-only entry index: entry_ids and log_starts replace entries",
        apply: |txn| {
            let mut ids = txn.open_table(retired::ENTRY_IDS)?;
            let mut starts = txn.open_table(schema::LOG_STARTS)?;
            {
                let entries = txn.open_table(retired::ENTRIES)?;
                for row in entries.iter()? {
                    let (id, location) = row?;
                    let (height, position, log_index) = location.value();
                    ids.insert(log_index, id.value())?;
                    starts.insert(log_index - u64::from(position), height)?;
                }
            }
            drop((ids, starts));
            txn.delete_table(retired::ENTRIES)?;
            Ok(())
        },
    },
    Migration {
        version: 4,
        description: "history may start at a snapshot: base_headers",
        apply: |txn| {
            txn.open_table(schema::BASE_HEADERS)?;
            Ok(())
        },
    },
    Migration {
        version: 5,
        description: "the consensus log beside the database holds a member's latest votes",
        apply: |_| Ok(()),
    },
    Migration {
        version: 6,
        description: "Merkle nodes below level 4 are recomputed from entry_ids, not stored",
        apply: |txn| {
            let below = (0u8, 0u64)..(schema::MERKLE_STORED_FROM, 0u64);
            txn.open_table(schema::MERKLE_NODES)?
                .retain_in(below, |_, _| false)?;
            Ok(())
        },
    },
    Migration {
        version: 7,
        description: "the entry index holds 16 ids per row",
        apply: |txn| {
            {
                let old = txn.open_table(retired::ENTRY_IDS)?;
                let mut rows = txn.open_table(schema::ENTRY_IDS)?;
                let mut row = Vec::with_capacity(32 * schema::IDS_PER_ROW as usize);
                let mut key = 0;
                // Whole rows may be missing: the staging file of a snapshot join that
                // was interrupted holds the tiles it had (each a run of whole rows), in
                // any order. Within a row an id can only follow the one before it: a
                // gap there would move every later id of the row to another log index.
                for entry in old.iter()? {
                    let (log_index, id) = entry?;
                    let log_index = log_index.value();
                    if log_index / schema::IDS_PER_ROW != key {
                        if !row.is_empty() {
                            rows.insert(key, row.as_slice())?;
                            row.clear();
                        }
                        key = log_index / schema::IDS_PER_ROW;
                    }
                    if log_index % schema::IDS_PER_ROW != (row.len() / 32) as u64 {
                        return Err(redb::StorageError::Corrupted(format!(
                            "entry_ids: log index {log_index} does not follow the ids before it \
                             in its row of 16"
                        ))
                        .into());
                    }
                    row.extend_from_slice(id.value());
                }
                if !row.is_empty() {
                    rows.insert(key, row.as_slice())?;
                }
            }
            txn.delete_table(retired::ENTRY_IDS)?;
            Ok(())
        },
    },
    Migration {
        version: 8,
        description: "entry ids sorted into runs on disk: id_runs, id_run_dir",
        // Empty: the node writes the runs as it opens, from the entry index.
        apply: |txn| {
            txn.open_table(schema::ID_RUNS)?;
            txn.open_table(schema::ID_RUN_DIR)?;
            Ok(())
        },
    },
];

/// Why a database cannot be brought to the current schema.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The file is a redb database, but not one of ours.
    #[error("not a ledger database: it holds tables ({tables}) but no ledger format marker")]
    Foreign {
        /// Names of the tables found.
        tables: String,
    },
    /// Written by a newer ledgerd.
    #[error(
        "database schema version {found} is newer than this build supports ({supported}); \
         run a ledgerd at least as new as the one that wrote it"
    )]
    TooNew {
        /// The version in the file.
        found: u32,
        /// [`CURRENT_VERSION`].
        supported: u32,
    },
    /// The meta table holds a value that cannot be a schema version.
    #[error("corrupt meta table: {0}")]
    CorruptMeta(&'static str),
    /// redb failed.
    #[error("database error: {0}")]
    Database(#[from] redb::Error),
}

fn db<E: Into<redb::Error>>(error: E) -> MigrationError {
    MigrationError::Database(error.into())
}

/// The schema version of `database`: 0 for a new, empty file.
pub fn schema_version(database: &impl ReadableDatabase) -> Result<u32, MigrationError> {
    let txn = database.begin_read().map_err(db)?;
    let tables: Vec<String> = txn
        .list_tables()
        .map_err(db)?
        .map(|table| table.name().to_string())
        .collect();
    if tables.is_empty() {
        return Ok(0);
    }
    let foreign = || MigrationError::Foreign {
        tables: tables.join(", "),
    };
    if !tables.iter().any(|name| name == schema::META.name()) {
        return Err(foreign());
    }
    let meta = txn.open_table(schema::META).map_err(db)?;
    match meta.get(schema::META_FORMAT).map_err(db)? {
        Some(marker) if marker.value() == schema::FORMAT_MARKER => {}
        _ => return Err(foreign()),
    }
    let version = meta
        .get(schema::META_SCHEMA_VERSION)
        .map_err(db)?
        .ok_or(MigrationError::CorruptMeta("schema version missing"))?;
    let bytes: [u8; 4] = version
        .value()
        .try_into()
        .map_err(|_| MigrationError::CorruptMeta("schema version is not 4 bytes"))?;
    Ok(u32::from_be_bytes(bytes))
}

/// What [`migrate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// Version before.
    pub from: u32,
    /// Version after.
    pub to: u32,
}

/// Steps that would run to bring `database` to the current version, without running
/// them (for `ledgerd migrate --check`).
pub fn pending(database: &Database) -> Result<Vec<&'static Migration>, MigrationError> {
    let version = checked_version(database, CURRENT_VERSION)?;
    Ok(MIGRATIONS[version as usize..].iter().collect())
}

fn checked_version(database: &Database, target: u32) -> Result<u32, MigrationError> {
    let version = schema_version(database)?;
    if version > CURRENT_VERSION {
        return Err(MigrationError::TooNew {
            found: version,
            supported: CURRENT_VERSION,
        });
    }
    Ok(version.min(target))
}

/// Brings `database` to [`CURRENT_VERSION`] in one write transaction.
pub fn migrate(database: &Database) -> Result<Upgrade, MigrationError> {
    migrate_to(database, CURRENT_VERSION)
}

/// Brings `database` to `target` (at most [`CURRENT_VERSION`]); used by the fixture
/// generator to write databases of older schemas.
pub fn migrate_to(database: &Database, target: u32) -> Result<Upgrade, MigrationError> {
    let target = target.min(CURRENT_VERSION);
    let from = checked_version(database, target)?;
    if from >= target {
        return Ok(Upgrade { from, to: from });
    }
    let txn = database.begin_write().map_err(db)?;
    for step in &MIGRATIONS[from as usize..target as usize] {
        (step.apply)(&txn)?;
    }
    {
        let mut meta = txn.open_table(schema::META).map_err(db)?;
        meta.insert(schema::META_SCHEMA_VERSION, target.to_be_bytes().as_slice())
            .map_err(db)?;
    }
    txn.commit().map_err(db)?;
    Ok(Upgrade { from, to: target })
}

#[cfg(test)]
mod tests {
    use redb::TableDefinition;

    use super::*;

    fn database() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::create(dir.path().join("test.redb")).unwrap();
        (dir, database)
    }

    #[test]
    fn steps_are_numbered_in_order() {
        for (i, step) in MIGRATIONS.iter().enumerate() {
            assert_eq!(step.version as usize, i + 1);
        }
        assert_eq!(MIGRATIONS.len() as u32, CURRENT_VERSION);
    }

    #[test]
    fn fresh_database_upgrades_step_by_step() {
        let (_dir, database) = database();
        assert_eq!(schema_version(&database).unwrap(), 0);
        assert_eq!(pending(&database).unwrap().len(), 8);
        assert_eq!(
            migrate_to(&database, 1).unwrap(),
            Upgrade { from: 0, to: 1 }
        );
        assert_eq!(schema_version(&database).unwrap(), 1);
        assert_eq!(migrate(&database).unwrap(), Upgrade { from: 1, to: 8 });
        assert_eq!(migrate(&database).unwrap(), Upgrade { from: 8, to: 8 });
        assert!(pending(&database).unwrap().is_empty());
        let txn = database.begin_read().unwrap();
        txn.open_table(schema::CONSENSUS_LOG).unwrap();
        txn.open_table(schema::BASE_HEADERS).unwrap();
        txn.open_table(schema::ID_RUNS).unwrap();
        txn.open_table(schema::ID_RUN_DIR).unwrap();
    }

    #[test]
    fn newer_schema_is_refused_and_left_untouched() {
        let (_dir, database) = database();
        migrate(&database).unwrap();
        let txn = database.begin_write().unwrap();
        txn.open_table(schema::META)
            .unwrap()
            .insert(
                schema::META_SCHEMA_VERSION,
                (CURRENT_VERSION + 1).to_be_bytes().as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
        let error = migrate(&database).unwrap_err();
        assert!(matches!(
            error,
            MigrationError::TooNew { found, supported: CURRENT_VERSION }
                if found == CURRENT_VERSION + 1
        ));
        assert!(error.to_string().contains("newer than this build"));
        assert_eq!(schema_version(&database).unwrap(), CURRENT_VERSION + 1);
    }

    #[test]
    fn step_3_moves_the_entry_index_to_append_only_tables() {
        let (_dir, database) = database();
        migrate_to(&database, 2).unwrap();
        // Block 1 holds two entries (log 0..2), block 2 is empty, block 3 holds one.
        let rows = [
            ([1u8; 32], (1u64, 0u32, 0u64)),
            ([2; 32], (1, 1, 1)),
            ([3; 32], (3, 0, 2)),
        ];
        let txn = database.begin_write().unwrap();
        {
            let mut entries = txn.open_table(retired::ENTRIES).unwrap();
            for (id, location) in &rows {
                entries.insert(id, *location).unwrap();
            }
        }
        txn.commit().unwrap();

        assert_eq!(
            migrate_to(&database, 3).unwrap(),
            Upgrade { from: 2, to: 3 }
        );
        let txn = database.begin_read().unwrap();
        let ids = txn.open_table(retired::ENTRY_IDS).unwrap();
        for (id, (_, _, log_index)) in &rows {
            assert_eq!(ids.get(log_index).unwrap().unwrap().value(), id);
        }
        let starts = txn.open_table(schema::LOG_STARTS).unwrap();
        assert_eq!(starts.get(0).unwrap().unwrap().value(), 1);
        assert_eq!(starts.get(2).unwrap().unwrap().value(), 3);
        assert!(
            txn.open_table(retired::ENTRIES).is_err(),
            "the old index is gone"
        );
    }

    #[test]
    fn step_6_drops_the_merkle_nodes_below_the_stored_level() {
        let (_dir, database) = database();
        migrate_to(&database, 5).unwrap();
        let txn = database.begin_write().unwrap();
        {
            let mut nodes = txn.open_table(schema::MERKLE_NODES).unwrap();
            for level in 0..7u8 {
                for index in 0..3u64 {
                    nodes.insert((level, index), &[level; 32]).unwrap();
                }
            }
        }
        txn.commit().unwrap();

        migrate(&database).unwrap();
        let txn = database.begin_read().unwrap();
        let nodes = txn.open_table(schema::MERKLE_NODES).unwrap();
        let levels: Vec<u8> = nodes
            .iter()
            .unwrap()
            .map(|row| row.unwrap().0.value().0)
            .collect();
        assert_eq!(levels, [4, 4, 4, 5, 5, 5, 6, 6, 6]);
    }

    /// 37 ids become two full rows and one of five, in log order; an index missing
    /// whole rows (a join's staging file) keeps the others where they were; one with
    /// a gap inside a row is refused, not packed into a row that would move ids.
    #[test]
    fn step_7_packs_the_entry_index_into_rows() {
        let id = |log_index: u64| [log_index as u8; 32];
        let filled = |skip: std::ops::Range<u64>| {
            let (dir, database) = database();
            migrate_to(&database, 6).unwrap();
            let txn = database.begin_write().unwrap();
            {
                let mut ids = txn.open_table(retired::ENTRY_IDS).unwrap();
                for log_index in (0..37).filter(|i| !skip.contains(i)) {
                    ids.insert(log_index, &id(log_index)).unwrap();
                }
            }
            txn.commit().unwrap();
            (dir, database)
        };
        let packed = |skip: std::ops::Range<u64>| {
            let (_dir, database) = filled(skip);
            migrate(&database).unwrap();
            let txn = database.begin_read().unwrap();
            assert!(
                txn.open_table(retired::ENTRY_IDS).is_err(),
                "the old index is gone"
            );
            let rows = txn.open_table(schema::ENTRY_IDS).unwrap();
            rows.iter()
                .unwrap()
                .map(|row| {
                    let (key, bytes) = row.unwrap();
                    (key.value(), bytes.value().to_vec())
                })
                .collect::<Vec<(u64, Vec<u8>)>>()
        };
        let rows = |keys: &[(u64, std::ops::Range<u64>)]| -> Vec<(u64, Vec<u8>)> {
            keys.iter()
                .map(|(key, range)| (*key, range.clone().flat_map(id).collect()))
                .collect()
        };
        assert_eq!(packed(0..0), rows(&[(0, 0..16), (1, 16..32), (2, 32..37)]));
        assert_eq!(packed(16..32), rows(&[(0, 0..16), (2, 32..37)]));

        let (_dir, database) = filled(20..21);
        let error = migrate(&database).unwrap_err();
        assert!(error.to_string().contains("log index 21"), "{error}");
        assert_eq!(schema_version(&database).unwrap(), 6, "left as it was");
    }

    #[test]
    fn foreign_database_is_refused() {
        let (_dir, database) = database();
        let txn = database.begin_write().unwrap();
        let other: TableDefinition<&str, &str> = TableDefinition::new("users");
        txn.open_table(other).unwrap().insert("alice", "x").unwrap();
        txn.commit().unwrap();
        let error = migrate(&database).unwrap_err();
        assert!(
            error.to_string().contains("not a ledger database"),
            "{error}"
        );
        assert!(error.to_string().contains("users"), "{error}");
    }

    #[test]
    fn meta_without_marker_is_foreign() {
        let (_dir, database) = database();
        let txn = database.begin_write().unwrap();
        txn.open_table(schema::META)
            .unwrap()
            .insert("something", b"else".as_slice())
            .unwrap();
        txn.commit().unwrap();
        assert!(matches!(
            migrate(&database),
            Err(MigrationError::Foreign { .. })
        ));
    }
}
