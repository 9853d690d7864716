//! The store end to end: applying, reading, proving, refusing, and surviving crashes.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use ledger::chain::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use ledger::chain::{Block, ChainError, ChainSpec, Entry, Hash};
use ledger::chain::{Change, Membership, MembershipError, Reconfiguration};
use ledger::storage::{Store, StoreError, StoreOptions};
use ledger::testing::{
    certify, certify_under, entries, key, next_block, spec, spec_with_admins, FailingDisk,
};

const DIFFICULTY: u32 = 4;

fn members() -> Vec<SigningKey> {
    (1..=4).map(key).collect()
}

fn open(path: &Path, spec: &ChainSpec) -> Store {
    Store::open(path, spec, StoreOptions::default()).unwrap()
}

/// Builds, certifies and applies the next block holding `entries`, and checks that
/// the log nodes the apply returns prove each entry as the stored log does.
fn append(store: &Store, keys: &[SigningKey], entries: Vec<Entry>) -> Block {
    let (tip, log) = store.tip_with_log().unwrap();
    let block = next_block(&tip, &log, entries, DIFFICULTY);
    store
        .validate_next(&block, DIFFICULTY, tip.timestamp_ms + 1_000)
        .unwrap();
    let nodes = store
        .apply_block(&block, &certify(&keys[..3], &block))
        .unwrap();
    let size = block.header.log_size;
    for index in tip.log_size..size {
        assert_eq!(
            nodes.inclusion_proof(index).unwrap(),
            store.inclusion_proof(index, size).unwrap()
        );
    }
    block
}

#[test]
fn new_database_holds_the_genesis_block_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let spec = spec(&members(), DIFFICULTY);
    let store = open(&path, &spec);
    assert_eq!(store.tip().unwrap(), spec.genesis_block().header);
    assert_eq!(store.genesis_hash(), spec.genesis_block().hash());
    assert_eq!(store.verify_chain().unwrap(), 0);
    drop(store);
    let store = open(&path, &spec);
    assert_eq!(store.tip().unwrap().height, 0);
}

#[test]
fn applied_blocks_are_readable_provable_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let chain_hash = spec.chain_hash();
    let store = open(&path, &spec);

    let author = key(42);
    let mut blocks = Vec::new();
    for round in 0..6u64 {
        let mut batch = entries(round, (round as usize * 7) % 13, 40);
        batch.push(Entry::signed(
            format!("signed {round}").into_bytes(),
            &author,
            &chain_hash,
        ));
        blocks.push(append(&store, &keys, batch));
    }
    blocks.push(append(&store, &keys, Vec::new())); // an empty block is valid
    drop(store);

    let store = open(&path, &spec);
    let tip = store.tip().unwrap();
    assert_eq!(tip, blocks.last().unwrap().header);
    assert_eq!(store.verify_chain().unwrap(), 7);

    for block in &blocks {
        let height = block.header.height;
        assert_eq!(store.block(height).unwrap().as_ref(), Some(block));
        assert_eq!(
            store.block_by_hash(&block.hash()).unwrap().as_ref(),
            Some(block)
        );
        let certificate = store.certificate(height).unwrap().unwrap();
        certificate
            .verify(&chain_hash, &spec.members, height, &block.hash())
            .unwrap();

        for (position, entry) in block.entries.iter().enumerate() {
            let id = entry.id();
            let location = store.entry_location(&id).unwrap().unwrap();
            assert_eq!(
                (location.height, location.position as usize),
                (height, position)
            );
            // Prove the entry against its own block and against the tip.
            for header in [&block.header, &tip] {
                let proof = store
                    .inclusion_proof(location.log_index, header.log_size)
                    .unwrap();
                verify_inclusion(
                    &leaf_hash(id.as_bytes()),
                    location.log_index,
                    header.log_size,
                    &proof,
                    &header.log_root,
                )
                .unwrap();
            }
        }
        let consistency = store
            .consistency(block.header.log_size, tip.log_size)
            .unwrap();
        assert_eq!(
            (consistency.from_root, consistency.to_root),
            (block.header.log_root, tip.log_root)
        );
        verify_consistency(
            block.header.log_size,
            tip.log_size,
            &block.header.log_root,
            &tip.log_root,
            &consistency.proof,
        )
        .unwrap();
        assert_eq!(
            store.log_root(block.header.log_size).unwrap(),
            block.header.log_root
        );
    }
    assert!(store.inclusion_proof(0, tip.log_size + 1).is_err());
    assert!(store.entry_location(&Hash([9; 32])).unwrap().is_none());
    assert!(store.block(99).unwrap().is_none());
}

#[test]
fn invalid_blocks_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let store = open(&dir.path().join("ledger.redb"), &spec);
    let first = append(&store, &keys, entries(1, 3, 32));
    let (tip, log) = store.tip_with_log().unwrap();
    let now = tip.timestamp_ms + 1_000;

    let apply = |block: &Block| store.apply_block(block, &certify(&keys, block)).map(drop);
    let refused = |result: Result<(), StoreError>| match result {
        Err(StoreError::Chain(error)) => error,
        other => panic!("expected a chain error, got {other:?}"),
    };

    // A replayed entry, alone or beside new ones.
    let replay = next_block(
        &tip,
        &log,
        vec![entries(2, 1, 32).remove(0), first.entries[1].clone()],
        DIFFICULTY,
    );
    assert!(matches!(
        refused(store.validate_next(&replay, DIFFICULTY, now)),
        ChainError::DuplicateEntry { .. }
    ));
    assert!(matches!(
        refused(apply(&replay)),
        ChainError::DuplicateEntry { .. }
    ));
    // The same entry twice in one block.
    let twice = next_block(
        &tip,
        &log,
        vec![entries(3, 1, 32)[0].clone(), entries(3, 1, 32)[0].clone()],
        DIFFICULTY,
    );
    assert!(matches!(
        refused(store.validate_next(&twice, DIFFICULTY, now)),
        ChainError::DuplicateEntry { .. }
    ));
    assert!(matches!(
        refused(apply(&twice)),
        ChainError::DuplicateEntry { .. }
    ));

    let good = next_block(&tip, &log, entries(4, 2, 32), DIFFICULTY);
    let mut wrong_root = good.clone();
    wrong_root.header.log_root = Hash([1; 32]);
    assert!(matches!(
        refused(apply(&wrong_root)),
        ChainError::LogRootMismatch { .. }
    ));
    let mut wrong_parent = good.clone();
    wrong_parent.header.prev_hash = Hash([2; 32]);
    assert!(matches!(
        refused(apply(&wrong_parent)),
        ChainError::WrongParent { .. }
    ));
    let mut wrong_height = good.clone();
    wrong_height.header.height += 1;
    assert!(matches!(
        refused(apply(&wrong_height)),
        ChainError::WrongHeight { .. }
    ));
    let other_certificate = certify(&keys, &first);
    assert!(matches!(
        refused(store.apply_block(&good, &other_certificate).map(drop)),
        ChainError::Certificate(_)
    ));

    // Validation refusals that need the policy, the clock or signatures.
    assert!(matches!(
        refused(store.validate_next(&good, DIFFICULTY + 1, now)),
        ChainError::DifficultyTooLow { .. }
    ));
    let mut unworked = good.clone();
    unworked.header.difficulty = 250;
    assert!(matches!(
        refused(store.validate_next(&unworked, DIFFICULTY, now)),
        ChainError::InsufficientWork { .. }
    ));
    let mut future = next_block(&tip, &log, entries(5, 1, 32), DIFFICULTY);
    future.header.timestamp_ms = now + spec.params.max_future_drift_ms + 1;
    assert!(matches!(
        refused(store.validate_next(&future, 0, now)),
        ChainError::TimestampInFuture { .. } | ChainError::InsufficientWork { .. }
    ));
    let mut forged = Entry::signed(b"x".to_vec(), &key(9), &spec.chain_hash());
    forged.data = b"y".to_vec();
    let forged = next_block(&tip, &log, vec![forged], DIFFICULTY);
    assert!(matches!(
        refused(store.validate_next(&forged, DIFFICULTY, now)),
        ChainError::BadSignature { .. }
    ));
    let huge = next_block(
        &tip,
        &log,
        vec![Entry::new(vec![
            0;
            spec.params.max_entry_bytes as usize + 1
        ])],
        DIFFICULTY,
    );
    assert!(matches!(
        refused(store.validate_next(&huge, DIFFICULTY, now)),
        ChainError::EntryTooLarge { .. }
    ));

    // Nothing of the refused blocks reached storage.
    assert_eq!(store.tip().unwrap(), tip);
    assert_eq!(store.verify_chain().unwrap(), 1);
    for entry in entries(2, 1, 32)
        .iter()
        .chain(&entries(3, 1, 32))
        .chain(&entries(4, 2, 32))
    {
        assert!(store.entry_location(&entry.id()).unwrap().is_none());
    }
    store.validate_next(&good, DIFFICULTY, now).unwrap();
    apply(&good).unwrap();
    assert_eq!(store.verify_chain().unwrap(), 2);
}

#[test]
fn a_database_of_another_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    drop(open(&path, &spec(&members(), DIFFICULTY)));
    let other = spec(&[key(7)], DIFFICULTY);
    let error = Store::open(&path, &other, StoreOptions::default()).unwrap_err();
    assert!(matches!(error, StoreError::WrongChain { .. }));
    let message = error.to_string();
    assert!(
        message.contains("belongs to chain") && message.contains(&other.chain_hash().to_hex()),
        "{message}"
    );
}

#[test]
fn damaged_and_foreign_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&members(), DIFFICULTY);
    let good = dir.path().join("good.redb");
    {
        let store = open(&good, &spec);
        append(&store, &members(), entries(1, 50, 100));
    }
    let original = fs::read(&good).unwrap();

    let mut noise = Vec::with_capacity(original.len());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..original.len() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        noise.push(state as u8);
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zeroed", vec![0; original.len()]),
        ("truncated to 100 bytes", original[..100].to_vec()),
        ("truncated by half", original[..original.len() / 2].to_vec()),
        ("random bytes", noise),
        ("text", b"chain_id = \"not a database\"\n".repeat(100)),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(format!("{name}.redb"));
        fs::write(&path, bytes).unwrap();
        let outcome =
            std::panic::catch_unwind(|| Store::open(&path, &spec, StoreOptions::default()));
        match outcome {
            Ok(Err(error)) => assert!(
                error.to_string().contains(&path.display().to_string()),
                "{name}: {error}"
            ),
            Ok(Ok(_)) => panic!("{name}: a damaged file opened as a ledger"),
            Err(_) => panic!("{name}: opening panicked"),
        }
    }

    let foreign = dir.path().join("foreign.redb");
    {
        let database = redb::Database::create(&foreign).unwrap();
        let txn = database.begin_write().unwrap();
        let table: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("sessions");
        txn.open_table(table).unwrap().insert("x", 1).unwrap();
        txn.commit().unwrap();
    }
    let error = Store::open(&foreign, &spec, StoreOptions::default()).unwrap_err();
    assert!(
        error.to_string().contains("not a ledger database"),
        "{error}"
    );
}

#[test]
fn reads_proceed_while_blocks_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let keys = members();
    let store = Arc::new(open(
        &dir.path().join("ledger.redb"),
        &spec(&keys, DIFFICULTY),
    ));
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (store, done, reads) = (Arc::clone(&store), Arc::clone(&done), Arc::clone(&reads));
        std::thread::spawn(move || {
            let mut last = 0;
            while !done.load(Ordering::Relaxed) {
                let tip = store.tip().unwrap();
                assert!(tip.height >= last, "the tip went backwards");
                last = tip.height;
                store.verify_chain().unwrap();
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for round in 0..20 {
        append(&store, &keys, entries(round, 20, 64));
    }
    done.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert_eq!(store.verify_chain().unwrap(), 20);
}

/// An in-memory disk that loses everything not synced when it "loses power", and
/// refuses every operation after a chosen number of writes and syncs.
#[derive(Debug)]
struct CrashingDisk {
    state: Mutex<Disk>,
}

#[derive(Debug, Default)]
struct Disk {
    /// What the OS would return to reads now.
    current: Vec<u8>,
    /// What survives a power loss: `current` as of the last sync.
    synced: Vec<u8>,
    /// Operations left before the crash.
    budget: u64,
    crashed: bool,
}

impl CrashingDisk {
    fn new(image: Vec<u8>, budget: u64) -> CrashingDisk {
        CrashingDisk {
            state: Mutex::new(Disk {
                current: image.clone(),
                synced: image,
                budget,
                crashed: false,
            }),
        }
    }

    fn spend(disk: &mut Disk) -> std::io::Result<()> {
        if disk.budget == 0 {
            disk.crashed = true;
        }
        if disk.crashed {
            return Err(std::io::Error::other("simulated power loss"));
        }
        disk.budget -= 1;
        Ok(())
    }
}

/// The disk, shared so the test can take the image after the database is gone.
#[derive(Debug, Clone)]
struct SharedDisk(Arc<CrashingDisk>);

impl SharedDisk {
    /// A disk holding `image` that fails once `budget` writes and syncs are spent.
    fn new(image: Vec<u8>, budget: u64) -> SharedDisk {
        SharedDisk(Arc::new(CrashingDisk::new(image, budget)))
    }

    /// What a power loss now would leave: the bytes synced so far.
    fn synced(&self) -> Vec<u8> {
        self.0.state.lock().unwrap().synced.clone()
    }

    /// The disk as a power loss now would leave it, failing no more.
    fn after_power_loss(&self) -> SharedDisk {
        SharedDisk::new(self.synced(), u64::MAX)
    }
}

/// Applies `blocks` in turn until one fails: the height of the last applied, if any.
fn apply_until_failure(store: &Store, keys: &[SigningKey], blocks: &[Block]) -> Option<u64> {
    let mut applied = None;
    for block in blocks {
        if store
            .apply_block(block, &certify(&keys[..3], block))
            .is_err()
        {
            break;
        }
        applied = Some(block.header.height);
    }
    applied
}

impl redb::StorageBackend for SharedDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.state.lock().unwrap().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let disk = self.0.state.lock().unwrap();
        let start = offset as usize;
        let bytes = disk.current.get(start..start + out.len()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past end")
        })?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut disk = self.0.state.lock().unwrap();
        CrashingDisk::spend(&mut disk)?;
        disk.current.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut disk = self.0.state.lock().unwrap();
        CrashingDisk::spend(&mut disk)?;
        disk.synced = disk.current.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut disk = self.0.state.lock().unwrap();
        CrashingDisk::spend(&mut disk)?;
        let end = offset as usize + data.len();
        if disk.current.len() < end {
            disk.current.resize(end, 0);
        }
        disk.current[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

fn store_on(
    disk: &SharedDisk,
    spec: &ChainSpec,
    options: StoreOptions,
) -> Result<Store, StoreError> {
    let database = redb::Database::builder()
        .create_with_backend(disk.clone())
        .map_err(|error| StoreError::Open {
            path: "memory".into(),
            reason: error.to_string(),
        })?;
    Store::from_database(database, "memory".into(), spec, options)
}

/// Four consecutive certified blocks of `per_block` entries from genesis, built on a
/// store in memory.
fn four_blocks(keys: &[SigningKey], spec: &ChainSpec, per_block: usize) -> Vec<Block> {
    blocks_of(keys, spec, 4, per_block)
}

/// `count` consecutive certified blocks of `per_block` entries from genesis.
fn blocks_of(keys: &[SigningKey], spec: &ChainSpec, count: u64, per_block: usize) -> Vec<Block> {
    let disk = SharedDisk::new(Vec::new(), u64::MAX);
    let store = store_on(&disk, spec, StoreOptions::default()).unwrap();
    (0..count)
        .map(|round| append(&store, keys, entries(round, per_block, 50)))
        .collect()
}

/// Cuts the power at every disk operation of the two applies a merge of id runs
/// is spread over (its first row with the fourth block, the rest with the fifth),
/// from a disk that holds the first three: after each restart nothing acknowledged
/// is lost, the chain verifies (every id found at its log index), and the next
/// blocks apply on what the crash left.
#[test]
fn a_crash_in_the_middle_of_a_merge_of_id_runs_loses_nothing() {
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    // Runs of 70 ids, one per block; the four merge into 280 pairs, two rows.
    let blocks = blocks_of(&keys, &spec, 6, 70);
    let options = StoreOptions {
        run_ids: 60,
        upkeep_rows: 1,
        merge_passes: 0,
        ..StoreOptions::default()
    };
    let base = {
        let disk = SharedDisk::new(Vec::new(), u64::MAX);
        let store = store_on(&disk, &spec, options).unwrap();
        for block in &blocks[..3] {
            store
                .apply_block(block, &certify(&keys[..3], block))
                .unwrap();
        }
        drop(store);
        disk.synced()
    };
    let mut budget = 0;
    loop {
        let disk = SharedDisk::new(base.clone(), budget);
        let acknowledged = store_on(&disk, &spec, options)
            .ok()
            .and_then(|store| apply_until_failure(&store, &keys, &blocks[3..5]))
            .unwrap_or(3);
        let restarted = disk.after_power_loss();
        let store = store_on(&restarted, &spec, options)
            .unwrap_or_else(|error| panic!("budget {budget}: {error}"));
        let height = store
            .verify_chain()
            .unwrap_or_else(|error| panic!("budget {budget}: {error}"));
        assert!(
            height >= acknowledged,
            "budget {budget}: lost block {acknowledged}"
        );
        for block in &blocks[height as usize..] {
            store
                .apply_block(block, &certify(&keys[..3], block))
                .unwrap_or_else(|error| panic!("budget {budget}: {error}"));
        }
        for entry in blocks.iter().flat_map(|block| &block.entries) {
            assert!(
                store.entry_location(&entry.id()).unwrap().is_some(),
                "budget {budget}"
            );
        }
        if acknowledged == 5 {
            break;
        }
        budget += 1;
        assert!(budget < 10_000, "the workload never completed");
    }
}

/// Cuts the power after every possible number of disk operations while blocks are
/// applied, and checks after each restart that every acknowledged block is there and
/// the chain verifies from genesis. Power loss keeps only synced bytes: the harshest
/// model of a disk that honours fsync.
#[test]
fn a_crash_at_any_disk_operation_loses_no_committed_block() {
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    // Pre-build the blocks so every crash run applies the same writes.
    let blocks = four_blocks(&keys, &spec, 30);
    for two_phase_commit in [true, false] {
        // Every apply writes its block's 30 ids as a run, and the fourth merges the
        // four: crashed at every step like the rest.
        let options = StoreOptions {
            two_phase_commit,
            run_ids: 10,
            ..StoreOptions::default()
        };
        let mut budget = 0;
        let mut completed_runs = 0;
        // Each run crashes one operation later than the last, until a run finishes.
        while completed_runs == 0 {
            let disk = SharedDisk::new(Vec::new(), budget);
            let acknowledged = store_on(&disk, &spec, options)
                .ok()
                .and_then(|store| apply_until_failure(&store, &keys, &blocks))
                .unwrap_or(0);
            if acknowledged == blocks.len() as u64 {
                completed_runs += 1;
            }
            let restarted = disk.after_power_loss();
            match store_on(&restarted, &spec, options) {
                Ok(store) => {
                    let height = store
                        .verify_chain()
                        .unwrap_or_else(|error| panic!("budget {budget}: {error}"));
                    assert!(
                        height >= acknowledged,
                        "budget {budget}: lost block {acknowledged}, tip {height}"
                    );
                    for block in &blocks[..height as usize] {
                        assert_eq!(
                            store.block(block.header.height).unwrap().as_ref(),
                            Some(block)
                        );
                    }
                }
                // A crash before the first sync leaves no database at all; anything
                // later must reopen.
                Err(error) => assert_eq!(acknowledged, 0, "budget {budget}: {error}"),
            }
            budget += 1;
            assert!(budget < 10_000, "the workload never completed");
        }
    }
}

/// The first node to open a database names itself the owner of its consensus
/// records, across a reopen; another node is told whose they are, and nothing
/// changes.
#[test]
fn a_database_names_the_node_whose_records_it_holds() {
    use ledger::storage::RecordsOwner;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let [first, second] = [&keys[0], &keys[1]].map(|key| key.verifying_key().to_bytes());
    let store = open(&path, &spec);
    assert_eq!(store.claim_records(&first).unwrap(), RecordsOwner::This);
    drop(store);
    let store = open(&path, &spec);
    for _ in 0..2 {
        assert_eq!(store.claim_records(&first).unwrap(), RecordsOwner::This);
        assert_eq!(
            store.claim_records(&second).unwrap(),
            RecordsOwner::Other(first)
        );
    }
}

/// The replica's durable state survives a reopen exactly as the in-memory fold of the
/// same records (the simulator's reference), including the truncation at a stable
/// checkpoint.
#[test]
fn consensus_state_persists_as_the_records_fold() {
    use ledger::consensus::{
        CheckpointCertificate, Durable, Message, NewView, Payload, PreparedCertificate, Record,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let store = open(&path, &spec);
    let genesis = spec.genesis_block();
    assert_eq!(store.durable().unwrap(), Durable::genesis(genesis.hash()));
    assert_eq!(store.stable_checkpoint().unwrap(), None);

    let (tip, log) = store.tip_with_log().unwrap();
    let first = Arc::new(next_block(&tip, &log, entries(1, 3, 40), DIFFICULTY));
    let mut log_after = log.clone();
    for entry in &first.entries {
        log_after.append(leaf_hash(entry.id().as_bytes()), |_, _, _| {});
    }
    let second = Arc::new(next_block(
        &first.header,
        &log_after,
        entries(2, 2, 40),
        DIFFICULTY,
    ));
    let prepared = |block: &Block, view| PreparedCertificate {
        view,
        header: block.header,
        votes: Vec::new(),
    };
    let new_view = Message::sign(
        &spec.chain_hash(),
        1,
        &keys[1],
        Payload::NewView(NewView {
            view: 1,
            view_changes: Vec::new(),
            proposals: Vec::new(),
        }),
    );
    let batches = vec![
        vec![Record::Accepted {
            view: 0,
            block: first.clone(),
            signature: [1; 64],
        }],
        vec![
            Record::Prepared(prepared(&first, 0)),
            Record::Accepted {
                view: 0,
                block: second.clone(),
                signature: [2; 64],
            },
        ],
        vec![Record::ViewChange { view: 1 }],
        vec![
            Record::NewView(new_view),
            Record::Prepared(prepared(&second, 1)),
        ],
        vec![Record::Stable(CheckpointCertificate {
            height: 1,
            hash: first.hash(),
            votes: Vec::new(),
        })],
    ];
    let mut expected = Durable::genesis(genesis.hash());
    for batch in &batches {
        store.persist(batch).unwrap();
        for record in batch {
            expected.apply(record);
        }
        assert_eq!(store.durable().unwrap(), expected);
    }
    // The checkpoint dropped height 1 and kept height 2 with both its facts.
    assert_eq!(expected.slots.keys().copied().collect::<Vec<_>>(), [2]);
    assert!(expected.slots[&2].accepted.is_some() && expected.slots[&2].prepared.is_some());
    assert!(expected.active && expected.view == 1);
    // What a member that lost its disk is shown: the highest prepared certificate,
    // as persisted and after a reopen.
    let shown = |store: &Store| {
        let certificate = store.highest_prepared().unwrap();
        certificate.map(|c| (c.header.height, c.view))
    };
    assert_eq!(shown(&store), Some((2, 1)));
    drop(store);
    let store = open(&path, &spec);
    assert_eq!(store.durable().unwrap(), expected);
    assert_eq!(shown(&store), Some((2, 1)));
    assert_eq!(
        store.stable_checkpoint().unwrap().map(|c| c.height),
        Some(1)
    );

    // A membership epoch starting above block 2: view 0, entered, no NEW-VIEW, block
    // 2 the stable checkpoint without votes, nothing accepted; a second record of
    // the same epoch changes nothing, and it all survives a reopen.
    let epoch = Record::Epoch {
        epoch: 1,
        height: 2,
        hash: second.hash(),
    };
    for _ in 0..2 {
        store.persist(std::slice::from_ref(&epoch)).unwrap();
        expected.apply(&epoch);
        assert_eq!(store.durable().unwrap(), expected);
    }
    assert_eq!(
        (expected.epoch, expected.view, expected.active),
        (1, 0, true)
    );
    assert!(expected.new_view.is_none() && expected.slots.is_empty());
    assert_eq!(
        (expected.stable.height, expected.stable.hash),
        (2, second.hash())
    );
    // The epoch let go of the slot; the running store still shows how far the chain
    // came, a reopened one holds nothing to show.
    assert_eq!(shown(&store), Some((2, 1)));
    drop(store);
    let store = open(&path, &spec);
    assert_eq!(store.durable().unwrap(), expected);
    assert_eq!(shown(&store), None);
    assert_eq!(
        store.stable_checkpoint().unwrap().map(|c| c.height),
        Some(2)
    );
}

/// The id runs of the database at `path`, as (first, end) log indices.
struct IdRuns {
    /// Those `id_run_dir` lists.
    listed: Vec<(u64, u64)>,
    /// Those with rows in `id_runs`.
    stored: Vec<(u64, u64)>,
}

fn id_runs(path: &Path) -> IdRuns {
    use ledger_migrations::schema::{ID_RUNS, ID_RUN_DIR};
    use redb::{ReadableDatabase, ReadableTable};
    let database = redb::Database::open(path).unwrap();
    let txn = database.begin_read().unwrap();
    let dir = txn.open_table(ID_RUN_DIR).unwrap();
    let listed = dir
        .iter()
        .unwrap()
        .map(|row| {
            let (from, to) = row.unwrap();
            (from.value(), to.value())
        })
        .collect();
    let rows = txn.open_table(ID_RUNS).unwrap();
    let mut stored: Vec<(u64, u64)> = rows
        .iter()
        .unwrap()
        .map(|row| {
            let (from, to, _) = row.unwrap().0.value();
            (from, to)
        })
        .collect();
    stored.dedup();
    IdRuns { listed, stored }
}

/// Ids the store wrote to disk as sorted runs are found like the ones it holds in
/// memory, across reopens with any run size; a block replaying an id that is in a
/// run is refused; and a run that does not hold exactly the ids of its log indices
/// is refused at open, as damage.
#[test]
fn ids_in_runs_on_disk_are_found_refused_again_and_checked_at_open() {
    use ledger_migrations::schema::ID_RUNS;
    use redb::ReadableTable;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let runs_of = |run_ids| StoreOptions {
        run_ids,
        ..StoreOptions::default()
    };
    let runs_on_disk = || id_runs(&path).listed;
    let all_found = |store: &Store, blocks: &[Block]| {
        for block in blocks {
            for (position, entry) in block.entries.iter().enumerate() {
                let id = entry.id();
                let location = store.entry_location(&id).unwrap().unwrap();
                assert_eq!(
                    (location.height, location.position as usize),
                    (block.header.height, position)
                );
                let (found, _) = store.entry_with_receipt(&id).unwrap().unwrap();
                assert_eq!(found, *entry);
            }
        }
        let stranger = entries(99, 1, 40).remove(0).id();
        assert_eq!(store.entry_location(&stranger).unwrap(), None);
    };

    let blocks: Vec<Block> = {
        let store = Store::open(&path, &spec, runs_of(10)).unwrap();
        let blocks: Vec<Block> = (0..8)
            .map(|round| append(&store, &keys, entries(round, 4, 40)))
            .collect();
        all_found(&store, &blocks);
        // An id of the first run, beside a new one.
        let (tip, log) = store.tip_with_log().unwrap();
        let replay = next_block(
            &tip,
            &log,
            vec![entries(50, 1, 40).remove(0), blocks[0].entries[2].clone()],
            DIFFICULTY,
        );
        let now = tip.timestamp_ms + 1_000;
        let duplicate = |result: Result<(), StoreError>| {
            matches!(
                result,
                Err(StoreError::Chain(ChainError::DuplicateEntry { .. }))
            )
        };
        assert!(duplicate(store.validate_next(&replay, DIFFICULTY, now)));
        assert!(duplicate(
            store
                .apply_block(&replay, &certify(&keys, &replay))
                .map(drop)
        ));
        blocks
    };
    // 32 ids, a run written with the block that brought 10 or more.
    assert_eq!(runs_on_disk(), [(0, 12), (12, 24)]);
    {
        // Smaller runs: the open writes one of the 8 ids above the runs.
        let store = Store::open(&path, &spec, runs_of(5)).unwrap();
        all_found(&store, &blocks);
        assert_eq!(store.verify_chain().unwrap(), 8);
    }
    assert_eq!(runs_on_disk(), [(0, 12), (12, 24), (24, 29)]);
    all_found(&open(&path, &spec), &blocks);

    type Runs<'t> = redb::Table<'t, (u64, u64, u64), &'static [u8]>;
    let damaged_open = |damage: &dyn Fn(&mut Runs)| {
        let copy = dir.path().join("damaged.redb");
        std::fs::copy(&path, &copy).unwrap();
        {
            let database = redb::Database::open(&copy).unwrap();
            let txn = database.begin_write().unwrap();
            damage(&mut txn.open_table(ID_RUNS).unwrap());
            txn.commit().unwrap();
        }
        Store::open(&copy, &spec, StoreOptions::default())
    };
    let first_row = |table: &mut Runs| {
        let (key, row) = table.first().unwrap().unwrap();
        (key.value(), row.value().to_vec())
    };
    // A pair that points at another log index of the run.
    let moved = damaged_open(&|table| {
        let (key, mut row) = first_row(table);
        row[15] ^= 1;
        table.insert(key, row.as_slice()).unwrap();
    });
    // A row gone, with its ids.
    let lost = damaged_open(&|table| {
        let (key, _) = first_row(table);
        table.remove(key).unwrap();
    });
    for (what, result) in [("moved", moved), ("lost", lost)] {
        match result {
            Err(error) => assert!(error.damage().is_some(), "{what}: {error}"),
            Ok(_) => panic!("{what}: a damaged run opened"),
        }
    }
}

/// Runs merge as the history grows (four of a level make one of the next), every
/// id stays findable after each block, the runs stay few, and the rows of merged
/// runs are removed by the next apply, or those of runs no longer listed by the
/// next open.
#[test]
fn runs_merge_as_the_history_grows_and_every_id_stays_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let options = StoreOptions {
        run_ids: 3,
        ..StoreOptions::default()
    };
    let mut blocks = Vec::new();
    {
        let store = Store::open(&path, &spec, options).unwrap();
        for round in 0..25 {
            blocks.push(append(&store, &keys, entries(round, 4, 40)));
            for block in &blocks {
                for entry in &block.entries {
                    let location = store.entry_location(&entry.id()).unwrap();
                    assert_eq!(location.map(|at| at.height), Some(block.header.height));
                }
            }
        }
    }
    // 100 ids: every block wrote a run of 4; four runs of 4 made one of 16, four of
    // 16 one of 64 (the next apply, beside the run it wrote). The apply after each
    // merge removed the rows of the runs it merged.
    let IdRuns { listed, stored } = id_runs(&path);
    assert_eq!(listed, [(0, 64), (64, 80), (80, 96), (96, 100)]);
    assert_eq!(stored, listed);
    let store = Store::open(&path, &spec, options).unwrap();
    assert_eq!(store.verify_chain().unwrap(), 25);
    for entry in blocks.iter().flat_map(|block| &block.entries) {
        assert!(store.entry_location(&entry.id()).unwrap().is_some());
    }
    // Rows of a run no longer listed (as a crash between a merge and the removal
    // of its inputs leaves them): the open removes them.
    drop(store);
    {
        use ledger_migrations::schema::ID_RUNS;
        let database = redb::Database::open(&path).unwrap();
        let txn = database.begin_write().unwrap();
        txn.open_table(ID_RUNS)
            .unwrap()
            .insert((0, 16, 0), [0u8; 16].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    assert_ne!(id_runs(&path).stored, id_runs(&path).listed);
    drop(Store::open(&path, &spec, options).unwrap());
    let IdRuns { listed, stored } = id_runs(&path);
    assert_eq!(stored, listed, "the open removed the rows of unlisted runs");
}

/// A merge step grows with the block it is applied with. Blocks of 512 ids, each
/// sealed as a run, at a step of one row: merges fall behind and the runs pile up.
/// With the 8 passes each entry pays for by default, they stay within the bound
/// docs/FORMAT.md gives (about 3·log4(n / run) + 4 runs).
#[test]
fn merges_keep_up_with_large_blocks() {
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let runs_after = |merge_passes| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let options = StoreOptions {
            run_ids: 512,
            upkeep_rows: 1,
            merge_passes,
            ..StoreOptions::default()
        };
        let store = Store::open(&path, &spec, options).unwrap();
        for round in 0..32 {
            append(&store, &keys, entries(round, 512, 40));
        }
        drop(store);
        id_runs(&path).listed.len()
    };
    // 16 Ki ids in runs of 512: 3·log4(32) + 4 = 11.5.
    let (fixed, grown) = (runs_after(0), runs_after(8));
    assert!(grown <= 11, "{grown} runs");
    assert!(fixed > 11, "{fixed} runs: a one-row step kept up after all");
}

/// Entries in each of [`damaged`]'s three blocks: 36 in all, so the log stores
/// the nodes (4, 0), (4, 1) and (5, 0), and the four leaves above them are
/// recomputed from their ids alone.
const ENTRIES_PER_BLOCK: usize = 12;

/// A chain of three blocks of three entries under `path`, damaged by `damage`
/// (writes straight into redb's tables, as flipped disk bytes would leave them),
/// then opened again: the store, or why it refused to open.
fn damaged(
    path: &Path,
    damage: impl FnOnce(&redb::WriteTransaction, &[Block]),
) -> Result<Store, StoreError> {
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let blocks: Vec<Block> = {
        let store = open(path, &spec);
        (0..3)
            .map(|round| append(&store, &keys, entries(round, ENTRIES_PER_BLOCK, 40)))
            .collect()
    };
    {
        let database = redb::Database::open(path).unwrap();
        let write = database.begin_write().unwrap();
        damage(&write, &blocks);
        write.commit().unwrap();
    }
    Store::open(path, &spec, StoreOptions::default())
}

/// `Store::check` (what `ledgerd check` runs) reads everything once and finds each
/// kind of damage, naming where it is; an entry index that disagrees with the log's
/// stored nodes or the tip's root is refused at open already, since a node could
/// not find its entries.
#[test]
fn the_full_check_finds_every_kind_of_damage() {
    use ledger_migrations::schema::{BLOCKS, BLOCK_HASHES, CERTIFICATES, LOG_STARTS, MERKLE_NODES};
    type Damage = fn(&redb::WriteTransaction, &[Block]);
    let dir = tempfile::tempdir().unwrap();
    let clean = damaged(&dir.path().join("clean.redb"), |_, _| {}).unwrap();
    let report = clean.check(&mut |_| {}).unwrap();
    assert_eq!(
        (report.tip, report.entries, report.merkle_nodes),
        (3, 36, 3)
    );

    let cases: [(&str, Damage, &str); 7] = [
        (
            "entry bytes",
            |write, blocks| {
                let mut block = blocks[1].clone();
                block.entries[0].data[20] ^= 1;
                let mut table = write.open_table(BLOCKS).unwrap();
                table.insert(2, block.encode().as_slice()).unwrap();
            },
            "block 2",
        ),
        (
            "a header",
            |write, blocks| {
                let mut block = blocks[0].clone();
                block.header.nonce ^= 1 << 40;
                let mut table = write.open_table(BLOCKS).unwrap();
                table.insert(1, block.encode().as_slice()).unwrap();
            },
            "block 1",
        ),
        (
            "the hash index",
            |write, blocks| {
                let mut table = write.open_table(BLOCK_HASHES).unwrap();
                table.insert(blocks[1].hash().as_bytes(), 3).unwrap();
            },
            "block 2: its hash is not indexed",
        ),
        (
            "a certificate",
            |write, blocks| {
                let mut certificate = certify(&members()[..3], &blocks[0]);
                certificate.signatures[1].signature[9] ^= 1;
                let mut table = write.open_table(CERTIFICATES).unwrap();
                table.insert(1, certificate.encode().as_slice()).unwrap();
            },
            "block 1: its certificate",
        ),
        (
            "an inner Merkle node",
            |write, _| {
                let mut table = write.open_table(MERKLE_NODES).unwrap();
                table.insert((5u8, 0u64), &[7u8; 32]).unwrap();
            },
            "Merkle node (5, 0)",
        ),
        (
            "the log start index",
            |write, _| {
                let mut table = write.open_table(LOG_STARTS).unwrap();
                table.insert(ENTRIES_PER_BLOCK as u64, 1).unwrap();
            },
            "block 2: the log index",
        ),
        (
            "a Merkle node beyond the log",
            |write, _| {
                let mut table = write.open_table(MERKLE_NODES).unwrap();
                table.insert((0u8, 99u64), &[7u8; 32]).unwrap();
            },
            "Merkle node table",
        ),
    ];
    for (i, (what, damage, found)) in cases.into_iter().enumerate() {
        let store = damaged(&dir.path().join(format!("{i}.redb")), damage)
            .unwrap_or_else(|error| panic!("{what}: refused at open: {error}"));
        let error = store.check(&mut |_| {}).unwrap_err();
        assert!(error.damage().is_some(), "{what}: {error}");
        assert!(error.to_string().contains(found), "{what}: {error}");
        assert!(store.damage().is_some(), "{what}: not recorded");
    }
    // Under a stored node, and among the last ids, which only the tip's root covers.
    for (log_index, found) in [(4u64, "Merkle node (4, 0)"), (34, "log root")] {
        let refused = damaged(
            &dir.path().join(format!("ids-{log_index}.redb")),
            |write, _| {
                ledger::testing::overwrite_entry_id(write, log_index, &[9u8; 32]);
            },
        )
        .expect_err("a damaged entry index is refused at open");
        assert!(refused.to_string().contains(found), "{refused}");
    }
}

/// The full check also reads the consensus log beside the database, as the next
/// start will and without changing it: its records, an append a crash cut short
/// (reported, not damage), and a log missing or with a damaged header (damage).
#[test]
fn the_full_check_reads_the_consensus_log_as_a_start_would() {
    use ledger::consensus::{PreparedCertificate, Record};
    use ledger::storage::LogCheck;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    {
        let store = open(&path, &spec);
        let tip = append(&store, &keys, entries(0, 2, 40));
        let prepared = |view| {
            Record::Prepared(PreparedCertificate {
                view,
                header: tip.header,
                votes: Vec::new(),
            })
        };
        store.persist(&[prepared(0)]).unwrap();
        store.persist(&[prepared(1)]).unwrap();
    }
    let check = || Store::open_read_only(&path, &spec)?.check(&mut |_| {});
    let held = |records, torn| Some(LogCheck { records, torn });
    assert_eq!(check().unwrap().log, held(2, false));

    let log = Store::log_path(&path);
    let whole = fs::read(&log).unwrap();
    let end = whole.iter().rposition(|byte| *byte != 0).unwrap() + 1;
    let mut torn = whole.clone();
    torn[end..end + 5].copy_from_slice(&[0, 0, 0, 40, 7]);
    fs::write(&log, &torn).unwrap();
    assert_eq!(check().unwrap().log, held(2, true));
    assert_eq!(fs::read(&log).unwrap(), torn, "the check changed the log");

    let mut header = whole.clone();
    header[10] ^= 1;
    fs::write(&log, &header).unwrap();
    let error = check().unwrap_err();
    assert!(
        error.damage().is_some() && error.to_string().contains("header"),
        "{error}"
    );
    fs::remove_file(&log).unwrap();
    let error = check().unwrap_err();
    assert!(
        error.damage().is_some() && error.to_string().contains("missing"),
        "{error}"
    );
    fs::write(&log, &whole).unwrap();
    assert_eq!(check().unwrap().log, held(2, false));
}

/// A store on `disk` that reopens on it.
fn failing_store(disk: &FailingDisk, spec: &ChainSpec) -> Store {
    let reopened = disk.clone();
    Store::from_database(
        disk.database().unwrap(),
        "memory".into(),
        spec,
        StoreOptions::default(),
    )
    .unwrap()
    .reopen_with(move || {
        reopened
            .database()
            .map_err(|error| StoreError::Unavailable(error.to_string()))
    })
}

/// A reopen takes the file that is there or none: a database file removed or
/// emptied under the node is not made a new database (its consensus log beside it
/// would then be replaced), and once the file is back the reopen succeeds.
#[test]
fn a_reopen_never_makes_a_new_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let store = open(&path, &spec);
    append(&store, &keys, entries(1, 3, 40));
    let tip = store.tip().unwrap();
    let copy = dir.path().join("copy.redb");
    fs::copy(&path, &copy).unwrap();
    fs::remove_file(&path).unwrap();
    assert!(store.recover().is_err());
    assert!(!path.exists());
    fs::write(&path, b"").unwrap();
    assert!(store.recover().is_err());
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    fs::rename(&copy, &path).unwrap();
    store.recover().unwrap();
    assert_eq!(store.tip().unwrap(), tip);
}

/// A write that fails puts the store in an I/O failure (reported, counted, every
/// later call refused until cured); a reopen while the disk still fails fails too;
/// once it takes writes, a reopen cures it, the block that failed applies, and the
/// chain checks out from genesis.
#[test]
fn an_io_failure_is_reported_and_a_reopen_cures_it() {
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let disk = FailingDisk::default();
    let store = failing_store(&disk, &spec);
    append(&store, &keys, entries(1, 3, 40));
    let (tip, log) = store.tip_with_log().unwrap();
    let block = next_block(&tip, &log, entries(2, 3, 40), DIFFICULTY);
    let certificate = certify(&keys[..3], &block);

    disk.failing_writes.store(true, Ordering::Relaxed);
    let error = store.apply_block(&block, &certificate).unwrap_err();
    assert!(error.is_io_failure(), "{error}");
    assert!(store.failure().is_some());
    assert_eq!(store.damage(), None);
    assert!(store.health().failures >= 1);
    assert!(store.apply_block(&block, &certificate).is_err());
    assert!(
        store.recover().is_err(),
        "recovered while the disk still fails"
    );

    disk.failing_writes.store(false, Ordering::Relaxed);
    store.recover().unwrap();
    assert_eq!(store.failure(), None);
    assert_eq!(store.health().recoveries, 1);
    assert_eq!(store.tip().unwrap(), tip);
    store.apply_block(&block, &certificate).unwrap();
    assert_eq!(store.verify_chain().unwrap(), 2);
}

/// What a write builds on is checked like any read: a stored log that does not give
/// the tip's root makes the next apply fail as damage, not as a block the caller
/// got wrong.
#[test]
fn damage_under_the_tip_fails_the_next_apply_as_damage() {
    use ledger_migrations::schema::MERKLE_NODES;
    let dir = tempfile::tempdir().unwrap();
    let keys = members();
    // 36 entries: the log's right edge is the stored node (5, 0) and the four ids
    // above it.
    let store = damaged(&dir.path().join("edge.redb"), |write, _| {
        let mut table = write.open_table(MERKLE_NODES).unwrap();
        table.insert((5u8, 0u64), &[7u8; 32]).unwrap();
    })
    .unwrap();
    let tip = store.tip().unwrap();
    let error = store.tip_with_log().unwrap_err();
    assert!(error.damage().is_some(), "{error}");
    // The true log, rebuilt from the entries `damaged` committed.
    let mut log = ledger::chain::CompactRange::new();
    for round in 0..3 {
        for entry in entries(round, ENTRIES_PER_BLOCK, 40) {
            log.append(leaf_hash(entry.id().as_bytes()), |_, _, _| {});
        }
    }
    let block = next_block(&tip, &log, entries(90, 1, 40), DIFFICULTY);
    let error = store
        .apply_block(&block, &certify(&keys[..3], &block))
        .unwrap_err();
    assert!(error.damage().is_some(), "{error}");
}

/// The store follows the membership block by block (DESIGN.md, "Membership"): a
/// change is recorded with the block that holds it, in force from the block after the
/// next checkpoint, kept across a reopen; one the membership refuses refuses its block.
/// Blocks are applied here as a replica applies what it committed.
#[test]
fn the_store_follows_membership_changes_block_by_block() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let keys = members();
    let admin = key(30);
    let spec = spec_with_admins(&keys, DIFFICULTY, 4, std::slice::from_ref(&admin), 1);
    let store = open(&path, &spec);
    // Each block certified under the signing domain of the epoch that orders it.
    let apply = |store: &Store, entries: Vec<Entry>| -> Result<Block, StoreError> {
        let (tip, log) = store.tip_with_log().unwrap();
        let block = next_block(&tip, &log, entries, DIFFICULTY);
        let membership = store.membership_at(block.header.height).unwrap();
        let domain = membership.signing_domain(&spec.chain_hash());
        store.apply_block(&block, &certify_under(&keys[..3], &block, &domain))?;
        Ok(block)
    };
    let change = |epoch: u64, change: Change| {
        let mut reconfiguration = Reconfiguration::new(epoch, change).unwrap();
        reconfiguration.sign(&admin, &spec.chain_hash());
        reconfiguration.to_entry()
    };
    let learner = key(9).verifying_key();
    let add = Change::AddLearner {
        public_key: learner,
        p2p_addr: "127.0.0.1:7109".into(),
        api_addr: None,
    };
    assert_eq!(*store.membership(), Membership::genesis(&spec));

    apply(&store, entries(1, 3, 50)).unwrap();
    // Validation checks a change against the membership in force.
    let (tip, log) = store.tip_with_log().unwrap();
    let validate = |change: Entry| {
        let proposal = next_block(&tip, &log, vec![change], DIFFICULTY);
        store.validate_next(&proposal, DIFFICULTY, tip.timestamp_ms + 1_000)
    };
    validate(change(0, add.clone())).unwrap();
    let refused = validate(change(3, add.clone())).unwrap_err();
    assert!(
        refused.to_string().contains("signed for epoch 3"),
        "{refused}"
    );

    // Block 2 holds the change: on its way, in force from height 5 (checkpoint 4).
    apply(
        &store,
        vec![change(0, add.clone()), entries(2, 1, 50).remove(0)],
    )
    .unwrap();
    let pending = store.membership().pending.clone().unwrap();
    assert_eq!((pending.height, pending.in_force_from), (2, 5));
    drop(store);
    let store = open(&path, &spec);
    assert_eq!(store.membership().pending.as_ref(), Some(&pending));
    // A second change while one is in flight refuses its block, which writes nothing.
    let remove = Change::Remove {
        public_key: keys[3].verifying_key(),
    };
    let busy = apply(&store, vec![change(0, remove.clone())]).unwrap_err();
    assert!(
        matches!(
            busy,
            StoreError::Chain(ChainError::Membership(MembershipError::InFlight { .. }))
        ),
        "{busy}"
    );
    assert_eq!(store.tip().unwrap().height, 2);
    apply(&store, vec![]).unwrap();
    apply(&store, vec![]).unwrap();
    assert_eq!(store.membership().epoch, 0);
    assert_eq!(
        store.membership_at(5).unwrap().epoch,
        1,
        "due at the height above the tip"
    );
    apply(&store, vec![]).unwrap();
    let membership = store.membership();
    assert_eq!((membership.epoch, membership.since), (1, 5));
    assert_eq!(membership.learners[0].public_key, learner);
    assert_eq!(membership.members.len(), 4);

    // After a reopen: the same membership, and the one in force at any height.
    drop(store);
    let store = open(&path, &spec);
    assert_eq!(*store.membership(), *membership);
    assert_eq!(store.membership_at(4).unwrap().epoch, 0);
    assert!(store.membership_at(4).unwrap().pending.is_some());
    assert_eq!(store.membership_at(1).unwrap(), Membership::genesis(&spec));
    assert_eq!(store.membership_at(2).unwrap(), Membership::genesis(&spec));
    assert_eq!(store.membership_at(3).unwrap().pending, Some(pending));
    assert_eq!(store.membership_at(9).unwrap(), *membership);

    // The change signed for epoch 0 is a replay now; signed for epoch 1 it is taken.
    let replay = apply(&store, vec![change(0, remove.clone())]).unwrap_err();
    assert!(
        replay.to_string().contains("epoch 1 is in force"),
        "{replay}"
    );
    apply(&store, vec![change(1, remove)]).unwrap();
    for _ in 7..=9 {
        apply(&store, vec![]).unwrap();
    }
    let membership = store.membership();
    assert_eq!((membership.epoch, membership.since), (2, 9));
    assert_eq!(membership.members.len(), 3);
    assert_eq!(store.verify_chain().unwrap(), 9);

    // Address hints may differ (an operator edits them in the genesis file); a stored
    // membership that the chain's changes do not give is damage.
    drop(store);
    let store_row = |row: &Membership| {
        let database = redb::Database::open(&path).unwrap();
        let txn = database.begin_write().unwrap();
        txn.open_table(ledger_migrations::schema::MEMBERSHIP)
            .unwrap()
            .insert(9, row.encode().as_slice())
            .unwrap();
        txn.commit().unwrap();
    };
    let mut moved = (*membership).clone();
    moved.learners[0].p2p_addr = Some("10.9.9.9:7101".into());
    store_row(&moved);
    assert_eq!(open(&path, &spec).verify_chain().unwrap(), 9);
    let mut forged = (*membership).clone();
    forged.learners.clear();
    store_row(&forged);
    let store = open(&path, &spec);
    let damage = store.verify_chain().unwrap_err().to_string();
    assert!(damage.contains("stored membership"), "{damage}");
}

/// A block applied without waiting for the disk reads back at once, survives a
/// power loss only once something synced after it (`Store::sync`, or records
/// written into the tables), and a lost one leaves a chain that verifies.
#[test]
fn a_block_applied_without_waiting_is_durable_at_the_next_sync() {
    use ledger::consensus::Record;
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let blocks = four_blocks(&keys, &spec, 5);
    let disk = SharedDisk::new(Vec::new(), u64::MAX);
    let store = store_on(&disk, &spec, StoreOptions::default()).unwrap();
    let apply = |block: &Block| {
        store
            .apply_block_deferred(block, &certify(&keys[..3], block))
            .unwrap();
    };
    apply(&blocks[0]);
    apply(&blocks[1]);
    assert_eq!(store.verify_chain().unwrap(), 2);
    let mut images = vec![(disk.synced(), 0)];
    store.sync().unwrap();
    images.push((disk.synced(), 2));
    apply(&blocks[2]);
    images.push((disk.synced(), 2));
    store.persist(&[Record::ViewChange { view: 1 }]).unwrap();
    images.push((disk.synced(), 3));
    apply(&blocks[3]);
    images.push((disk.synced(), 3));
    for (at, (image, height)) in images.into_iter().enumerate() {
        let restarted = SharedDisk::new(image, u64::MAX);
        let store = store_on(&restarted, &spec, StoreOptions::default()).unwrap();
        assert_eq!(store.verify_chain().unwrap(), height, "power loss {at}");
        for block in &blocks[..height as usize] {
            assert_eq!(
                store.block(block.header.height).unwrap().as_ref(),
                Some(block)
            );
        }
    }
}

/// The per-height records of a store on a file go to its write-ahead log and come
/// back after a crash; once other records wrote them into the tables, a log left
/// over from before (a crash before it started over) is dropped, not replayed over
/// newer state.
#[test]
fn the_consensus_log_comes_back_and_a_log_already_written_is_dropped() {
    use ledger::consensus::{Durable, Record};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let wal = dir.path().join("ledger.redb.wal");
    let keys = members();
    let spec = spec(&keys, DIFFICULTY);
    let (tip, log) = open(&path, &spec).tip_with_log().unwrap();
    let block = |round| Arc::new(next_block(&tip, &log, entries(round, 2, 40), DIFFICULTY));
    let accepted = |view, block: &Arc<Block>| Record::Accepted {
        view,
        block: block.clone(),
        signature: [view as u8; 64],
    };
    let (old, new) = (block(1), block(2));
    let mut expected = Durable::genesis(spec.genesis_block().hash());

    let store = open(&path, &spec);
    let first = [accepted(0, &old)];
    store.persist(&first).unwrap();
    first.iter().for_each(|record| expected.apply(record));
    let before = fs::read(&wal).unwrap();
    assert!(before.len() > 48, "the record is in the log");
    drop(store);
    assert_eq!(open(&path, &spec).durable().unwrap(), expected);

    // A view change goes into the tables with the log's records, and in the new
    // view another block is accepted at the same height.
    let store = open(&path, &spec);
    let second = [Record::ViewChange { view: 1 }, accepted(1, &new)];
    store.persist(&second).unwrap();
    second.iter().for_each(|record| expected.apply(record));
    assert_eq!(store.durable().unwrap(), expected);
    drop(store);
    // The crash came before the log started over: the old log is back on disk.
    fs::write(&wal, &before).unwrap();
    let store = open(&path, &spec);
    assert_eq!(store.durable().unwrap(), expected);
    let slot = &store.durable().unwrap().slots[&1];
    assert_eq!(slot.accepted.as_ref().map(|a| a.view), Some(1));
}
