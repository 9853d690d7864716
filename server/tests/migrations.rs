//! Databases written by older schemas open and upgrade; newer ones are refused.
//! The fixture comes from `examples/make_fixture.rs` (see its docs).

use std::path::{Path, PathBuf};

use ledger::chain::merkle::{leaf_hash, verify_inclusion};
use ledger::chain::Entry;
use ledger::storage::{Store, StoreError, StoreOptions};
use ledger::testing::{fixture_spec, key, write_fixture, FIXTURE_AUTHOR_SEED};
use ledger_migrations::{schema, MigrationError, CURRENT_VERSION};
use redb::{ReadableDatabase, ReadableTableMetadata};

fn fixture_copy(dir: &Path, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let target = dir.join(name);
    std::fs::copy(&source, &target).unwrap();
    target
}

fn version_of(path: &Path) -> u32 {
    let database = redb::Database::open(path).unwrap();
    ledger_migrations::schema_version(&database).unwrap()
}

#[test]
fn schema_1_fixture_opens_upgrades_and_keeps_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_copy(dir.path(), "schema-v1.redb");
    assert_eq!(version_of(&path), 1);
    {
        let database = redb::Database::open(&path).unwrap();
        let pending = ledger_migrations::pending(&database).unwrap();
        assert_eq!(
            pending.iter().map(|step| step.version).collect::<Vec<_>>(),
            [2, 3, 4, 5, 6, 7, 8]
        );
    }

    let spec = fixture_spec();
    // Runs of 2 ids: the upgraded database has none, and the open writes them.
    let options = StoreOptions {
        run_ids: 2,
        ..StoreOptions::default()
    };
    let store = Store::open(&path, &spec, options).unwrap();
    assert_eq!(store.verify_chain().unwrap(), 3);
    let signed = Entry::signed(
        b"fixture entry signed in round 1".to_vec(),
        &key(FIXTURE_AUTHOR_SEED),
        &spec.chain_hash(),
    );
    let location = store
        .entry_location(&signed.id())
        .unwrap()
        .expect("fixture entry present");
    let tip = store.tip().unwrap();
    let proof = store
        .inclusion_proof(location.log_index, tip.log_size)
        .unwrap();
    verify_inclusion(
        &leaf_hash(signed.id().as_bytes()),
        location.log_index,
        tip.log_size,
        &proof,
        &tip.log_root,
    )
    .unwrap();
    drop(store);

    assert_eq!(version_of(&path), CURRENT_VERSION);
    let database = redb::Database::open(&path).unwrap();
    let txn = database.begin_read().unwrap();
    txn.open_table(schema::CONSENSUS_LOG).unwrap();
    // Step 6 dropped the nodes it recomputes from the ids, and the proof above
    // was made without them.
    let nodes = txn.open_table(schema::MERKLE_NODES).unwrap();
    let below = (0u8, 0u64)..(schema::MERKLE_STORED_FROM, 0u64);
    assert!(nodes.range(below).unwrap().next().is_none());
    // Step 7 packed the index into rows, and the lookup above read them.
    let rows = txn.open_table(schema::ENTRY_IDS).unwrap();
    assert_eq!(
        rows.len().unwrap(),
        tip.log_size.div_ceil(schema::IDS_PER_ROW)
    );
}

#[test]
fn a_database_from_a_newer_build_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_copy(dir.path(), "schema-v1.redb");
    {
        let database = redb::Database::open(&path).unwrap();
        let txn = database.begin_write().unwrap();
        txn.open_table(schema::META)
            .unwrap()
            .insert(
                schema::META_SCHEMA_VERSION,
                (CURRENT_VERSION + 1).to_be_bytes().as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
    }
    let error = Store::open(&path, &fixture_spec(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::Schema {
                source: MigrationError::TooNew { .. },
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("newer than this build supports"),
        "{message}"
    );
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert_eq!(
        version_of(&path),
        CURRENT_VERSION + 1,
        "a refused database is left as it was"
    );
}

#[test]
fn the_fixture_generator_reproduces_the_committed_chain() {
    // The generator (`write_fixture`, which `examples/make_fixture.rs` runs) is
    // deterministic: a fresh run (at today's schema) yields the same blocks as the
    // committed file after its upgrade, so the fixture can be audited.
    let dir = tempfile::tempdir().unwrap();
    let committed = fixture_copy(dir.path(), "schema-v1.redb");
    let fresh_path = dir.path().join("fresh.redb");
    let fresh = write_fixture(&fresh_path).unwrap();
    let committed = Store::open(&committed, &fixture_spec(), StoreOptions::default()).unwrap();
    for height in 0..=3 {
        assert_eq!(
            committed.block(height).unwrap(),
            fresh.block(height).unwrap()
        );
    }
    drop(fresh);
    assert_eq!(version_of(&fresh_path), CURRENT_VERSION);
}
