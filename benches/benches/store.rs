//! The redb store: blocks applied per second (1, 100 and 1000 entries of 100 bytes,
//! two-phase commit on and off, every commit durable), Merkle proofs generated per
//! second from a log of one million entries, what checking every read costs
//! against reading the same bytes unchecked, the steps of a snapshot chunk, and how a
//! block's apply grows with the database.

use std::hint::black_box;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use ledger::chain::{Block, CommitCertificate, CompactRange, Hash, Header};
use ledger::storage::{Restore, Store, StoreOptions, VerifiedTile};
use ledger::testing::{certify, entries, key, next_block, spec};

/// `ledgerd`'s allocator: the store's costs depend on it as the database grows.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ENTRY_BYTES: usize = 100;

/// Builds blocks ahead of time (not measured) so the measurement is the apply alone.
struct Chain {
    keys: Vec<SigningKey>,
    tip: Header,
    log: CompactRange,
    tag: u64,
}

impl Chain {
    fn on(store: &Store, keys: Vec<SigningKey>) -> Chain {
        let (tip, log) = store.tip_with_log().expect("tip");
        Chain {
            keys,
            tip,
            log,
            tag: 0,
        }
    }

    fn next(&mut self, size: usize) -> (Block, CommitCertificate) {
        self.tag += 1;
        let block = next_block(
            &self.tip,
            &self.log,
            entries(self.tag, size, ENTRY_BYTES),
            0,
        );
        for entry in &block.entries {
            self.log.append(
                ledger::chain::merkle::leaf_hash(entry.id().as_bytes()),
                |_, _, _| {},
            );
        }
        self.tip = block.header;
        let certificate = certify(&self.keys[..3], &block);
        (block, certificate)
    }
}

fn members() -> Vec<SigningKey> {
    (1..=4).map(key).collect()
}

fn open(path: &Path, two_phase_commit: bool) -> Store {
    Store::open(
        path,
        &spec(&members(), 0),
        StoreOptions {
            two_phase_commit,
            ..StoreOptions::default()
        },
    )
    .expect("open store")
}

fn apply_suites(c: &mut Criterion) {
    let mut group = c.benchmark_group("store/apply_block");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(6));
    for size in [1usize, 100, 1000] {
        for two_phase_commit in [false, true] {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = open(&dir.path().join("bench.redb"), two_phase_commit);
            let mut chain = Chain::on(&store, members());
            group.throughput(Throughput::Elements(1));
            let label = if two_phase_commit { "2pc" } else { "1pc" };
            group.bench_function(BenchmarkId::new(format!("{size}_entries"), label), |b| {
                b.iter_custom(|iters| {
                    let blocks: Vec<_> = (0..iters).map(|_| chain.next(size)).collect();
                    let started = Instant::now();
                    for (block, certificate) in &blocks {
                        store.apply_block(block, certificate).expect("apply");
                    }
                    started.elapsed()
                })
            });
        }
    }
    group.finish();
}

/// A store holding a log of `size` entries, in blocks of 1000.
fn store_with_log(dir: &Path, size: u64) -> Store {
    let store = open(&dir.join("proofs.redb"), false);
    let mut chain = Chain::on(&store, members());
    let started = Instant::now();
    while chain.tip.log_size < size {
        let (block, certificate) = chain.next(1000);
        store.apply_block(&block, &certificate).expect("apply");
    }
    eprintln!("built a log of {size} entries in {:.1?}", started.elapsed());
    store
}

/// A fixed pseudo-random sequence (xorshift64), the same in every run.
fn walk() -> impl FnMut() -> u64 {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

fn proof_suites(c: &mut Criterion) {
    const LOG_SIZE: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("temp dir");
    // Built on first use, so a filter that skips these suites skips the ~45 s build.
    let store = OnceLock::new();
    let store = || store.get_or_init(|| store_with_log(dir.path(), LOG_SIZE));

    let mut group = c.benchmark_group("store/proofs_at_1m");
    group.throughput(Throughput::Elements(1));
    // A fixed pseudo-random walk over leaf indices and old sizes.
    let mut next = walk();
    group.bench_function("inclusion", |b| {
        let store = store();
        b.iter(|| {
            black_box(
                store
                    .inclusion_proof(next() % LOG_SIZE, LOG_SIZE)
                    .expect("proof"),
            )
        })
    });
    group.bench_function("consistency", |b| {
        let store = store();
        b.iter(|| {
            let old_size = 1 + next() % (LOG_SIZE - 1);
            black_box(store.consistency(old_size, LOG_SIZE).expect("proof"))
        })
    });
    group.finish();
}

/// Per-block commit cost in one run, interleaved so the three see the same machine
/// and the same database growth: (raw) redb durably committing just the block bytes,
/// the engine's floor; (1pc) our apply; (2pc) our apply with two-phase commit.
fn commit_cost_report() {
    const RAW_BLOCKS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("blocks");
    println!("\nstore commit cost per block (median of interleaved applies, 100-byte entries):");
    println!(
        "  {:>7}  {:>10}  {:>10}  {:>10}  {:>9}  {:>9}",
        "entries", "raw redb", "ours 1pc", "ours 2pc", "1pc/raw", "2pc/1pc"
    );
    for (size, rounds) in [(1usize, 300usize), (100, 120), (1000, 40)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let raw = redb::Database::create(dir.path().join("raw.redb")).expect("raw db");
        let one = open(&dir.path().join("1pc.redb"), false);
        let two = open(&dir.path().join("2pc.redb"), true);
        let mut chain = Chain::on(&one, members());
        let blocks: Vec<_> = (0..rounds).map(|_| chain.next(size)).collect();
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for (round, (block, certificate)) in blocks.iter().enumerate() {
            let bytes = block.encode();
            let mut run = |which: usize| {
                let started = Instant::now();
                match which {
                    0 => {
                        let txn = raw.begin_write().expect("txn");
                        txn.open_table(RAW_BLOCKS)
                            .expect("table")
                            .insert(round as u64, bytes.as_slice())
                            .expect("insert");
                        txn.commit().expect("commit");
                    }
                    1 => drop(one.apply_block(block, certificate).expect("apply")),
                    _ => drop(two.apply_block(block, certificate).expect("apply")),
                }
                times[which].push(started.elapsed().as_secs_f64() * 1e3);
            };
            // Rotate who goes first so no contender always follows another's fsync.
            for offset in 0..3 {
                run((round + offset) % 3);
            }
        }
        let [raw_ms, one_ms, two_ms] = times.map(|mut samples| {
            samples.sort_by(f64::total_cmp);
            samples[samples.len() / 2]
        });
        println!(
            "  {size:>7}  {raw_ms:>8.2}ms  {one_ms:>8.2}ms  {two_ms:>8.2}ms  {:>9.2}  {:>9.2}",
            one_ms / raw_ms,
            two_ms / one_ms
        );
    }
}

/// The Merkle log of raw redb tables, for the unchecked baseline: the stored nodes,
/// and the ones below them hashed from their ids as the store does.
struct RawNodes<'a> {
    nodes: &'a redb::ReadOnlyTable<(u8, u64), &'static [u8; 32]>,
    ids: &'a redb::ReadOnlyTable<u64, &'static [u8]>,
}

/// The id at `log_index` of the raw entry index, 16 ids to a row.
fn raw_id(ids: &redb::ReadOnlyTable<u64, &'static [u8]>, log_index: u64) -> Hash {
    use ledger_migrations::schema::IDS_PER_ROW;
    let row = ids
        .get(log_index / IDS_PER_ROW)
        .expect("read")
        .expect("row");
    let at = (log_index % IDS_PER_ROW) as usize * 32;
    Hash(row.value()[at..at + 32].try_into().expect("an id"))
}

impl ledger::chain::merkle::NodeSource for RawNodes<'_> {
    type Error = ledger::chain::ChainError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        if level < ledger_migrations::schema::MERKLE_STORED_FROM {
            let start = index << level;
            let ids: Vec<Hash> = (start..start + (1 << level))
                .map(|log_index| raw_id(self.ids, log_index))
                .collect();
            return Ok(ledger::chain::snapshot::tile_root(&ids));
        }
        let node = self.nodes.get((level, index)).expect("read").expect("node");
        Ok(Hash(*node.value()))
    }
}

/// Microseconds per call of `read` over `inputs`, the median of five passes.
fn per_call<T>(inputs: &[T], mut read: impl FnMut(&T)) -> f64 {
    let mut passes: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for input in inputs {
                read(input);
            }
            started.elapsed().as_secs_f64() * 1e6 / inputs.len() as f64
        })
        .collect();
    passes.sort_by(f64::total_cmp);
    passes[2]
}

/// What the checks on the read paths cost: a block, an entry with its receipt, and
/// a consistency proof read through the store (every check on) against the same
/// bytes read straight from redb and decoded, as the store did before it checked
/// anything. redb lets one handle open the file at a time, so the store runs, then
/// the raw reads, then the store again: two store figures bracket the baseline.
fn read_cost_report() {
    use ledger::chain::merkle;
    use ledger_migrations::schema::{BLOCKS, CERTIFICATES, ENTRY_IDS, MERKLE_NODES};
    use redb::ReadableDatabase;
    const BLOCKS_BUILT: u64 = 200;
    const SAMPLES: usize = 2_000;

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("reads.redb");
    let mut located = Vec::new();
    {
        let store = open(&path, false);
        let mut chain = Chain::on(&store, members());
        for _ in 0..BLOCKS_BUILT {
            let (block, certificate) = chain.next(1000);
            store.apply_block(&block, &certificate).expect("apply");
            let first = block.header.log_size - 1000;
            for (position, entry) in block.entries.iter().enumerate().step_by(97) {
                located.push((
                    entry.id(),
                    block.header.height,
                    position,
                    first + position as u64,
                ));
            }
        }
    }
    let log_size = BLOCKS_BUILT * 1000;
    let mut next = walk();
    let heights: Vec<u64> = (0..SAMPLES).map(|_| 1 + next() % BLOCKS_BUILT).collect();
    let entries: Vec<_> = (0..SAMPLES)
        .map(|_| located[(next() % located.len() as u64) as usize])
        .collect();
    let sizes: Vec<(u64, u64)> = (0..SAMPLES)
        .map(|_| {
            let to = 1 + next() % log_size;
            (1 + next() % to, to)
        })
        .collect();

    let checked = || {
        let store = open(&path, false);
        [
            per_call(&heights, |h| {
                drop(black_box(store.block(*h).expect("block")))
            }),
            per_call(&entries, |(id, ..)| {
                drop(black_box(store.entry_with_receipt(id).expect("entry")))
            }),
            per_call(&sizes, |(from, to)| {
                drop(black_box(store.consistency(*from, *to).expect("proof")))
            }),
        ]
    };
    let before = checked();
    let raw = {
        let database = redb::Database::open(&path).expect("raw open");
        let read = || database.begin_read().expect("txn");
        [
            per_call(&heights, |h| {
                let txn = read();
                let blocks = txn.open_table(BLOCKS).expect("table");
                let bytes = blocks.get(*h).expect("read").expect("block");
                drop(black_box(Block::decode(bytes.value()).expect("decode")));
            }),
            per_call(&entries, |(id, height, position, log_index)| {
                let txn = read();
                let ids = txn.open_table(ENTRY_IDS).expect("table");
                assert_eq!(raw_id(&ids, *log_index), *id);
                let blocks = txn.open_table(BLOCKS).expect("table");
                let bytes = blocks.get(*height).expect("read").expect("block");
                let block = Block::decode(bytes.value()).expect("decode");
                let entry = block.entries[*position].clone();
                let certificates = txn.open_table(CERTIFICATES).expect("table");
                let certificate = certificates
                    .get(*height)
                    .expect("read")
                    .expect("certificate");
                let certificate = CommitCertificate::decode(certificate.value()).expect("decode");
                let nodes = txn.open_table(MERKLE_NODES).expect("table");
                let nodes = RawNodes {
                    nodes: &nodes,
                    ids: &ids,
                };
                let proof = merkle::inclusion_proof(&nodes, *log_index, block.header.log_size)
                    .expect("proof");
                drop(black_box((entry, certificate, proof)));
            }),
            per_call(&sizes, |(from, to)| {
                let txn = read();
                let nodes = txn.open_table(MERKLE_NODES).expect("table");
                let ids = txn.open_table(ENTRY_IDS).expect("table");
                let nodes = RawNodes {
                    nodes: &nodes,
                    ids: &ids,
                };
                let roots = (
                    merkle::root_at(&nodes, *from).expect("root"),
                    merkle::root_at(&nodes, *to).expect("root"),
                );
                let proof = merkle::consistency_proof(&nodes, *from, *to).expect("proof");
                drop(black_box((roots, proof)));
            }),
        ]
    };
    let after = checked();
    println!("\nchecked reads vs the same bytes unchecked ({log_size} entries in blocks of 1000, {SAMPLES} random reads each, µs per read):");
    println!(
        "  {:<22}  {:>9}  {:>9}  {:>9}  {:>7}",
        "read", "raw", "checked", "again", "ratio"
    );
    let names = [
        "block (1000 entries)",
        "entry with receipt",
        "consistency proof",
    ];
    for (i, name) in names.iter().enumerate() {
        let ours = (before[i] + after[i]) / 2.0;
        println!(
            "  {name:<22}  {:>9.1}  {:>9.1}  {:>9.1}  {:>7.2}",
            raw[i],
            before[i],
            after[i],
            ours / raw[i]
        );
    }
}

/// One snapshot chunk of 65,536 ids (the default tile) through each step a join
/// takes: a member reads and checks it, the joiner checks it again on arrival
/// (keeping the Merkle nodes to store) and writes it into the staging database.
fn snapshot_suites(c: &mut Criterion) {
    const TILE_LEVEL: u8 = 16;
    let dir = tempfile::tempdir().expect("temp dir");
    let built = OnceLock::new();
    let fixture = || {
        built.get_or_init(|| {
            let store = store_with_log(dir.path(), 2 << TILE_LEVEL);
            let tip = store.tip().expect("tip").height;
            let manifest = store
                .snapshot_manifest(tip, TILE_LEVEL, 1)
                .expect("read")
                .expect("a manifest at the tip");
            let chunk = store.snapshot_chunk(&manifest, 0).expect("chunk");
            (store, manifest, chunk)
        })
    };
    let mut group = c.benchmark_group("snapshot_chunk");
    group.throughput(Throughput::Elements(1 << TILE_LEVEL));
    group.sample_size(10);
    group.bench_function("serve", |b| {
        let (store, manifest, _) = fixture();
        b.iter(|| black_box(store.snapshot_chunk(manifest, 0).expect("chunk")));
    });
    group.bench_function("check", |b| {
        let (_, manifest, chunk) = fixture();
        b.iter(|| black_box(VerifiedTile::check(manifest, 0, chunk).expect("checks")));
    });
    // Criterion calls the routine more than once: a staging file per iteration,
    // counted across calls.
    let runs = std::sync::atomic::AtomicUsize::new(0);
    group.bench_function("write", |b| {
        let (store, manifest, chunk) = fixture();
        b.iter_batched(
            || {
                let run = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let staging = dir.path().join(format!("staging-{run}.redb"));
                let restore =
                    Restore::begin(&staging, store.spec(), manifest.clone()).expect("begin");
                let tile = VerifiedTile::check(manifest, 0, chunk).expect("checks");
                (restore, tile)
            },
            |(mut restore, tile)| restore.write(tile).expect("write"),
            criterion::BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// How a block's apply grows with the database: 128-entry blocks applied as a cluster
/// member applies them (deferred, made durable every 130 blocks, about once a second
/// at the cluster's pace), to 3 million entries, timed per 512,000 entries.
fn growth_report() {
    const ENTRIES: usize = 128;
    const SYNC_EVERY: u32 = 130;
    const STRETCH: u32 = 4_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("ledger.redb"), true);
    let mut chain = Chain::on(&store, members());
    println!(
        "\ngrowth report: {ENTRIES}-entry blocks applied deferred, durable every {SYNC_EVERY}"
    );
    println!("| entries held | apply per block | durable commit |");
    println!("|---|---|---|");
    let (mut apply, mut sync, mut syncs) = (Duration::ZERO, Duration::ZERO, 0u32);
    for height in 1..=6 * STRETCH {
        let (block, certificate) = chain.next(ENTRIES);
        let start = Instant::now();
        drop(
            store
                .apply_block_deferred(&block, &certificate)
                .expect("apply"),
        );
        apply += start.elapsed();
        if height % SYNC_EVERY == 0 {
            let start = Instant::now();
            store.sync().expect("sync");
            sync += start.elapsed();
            syncs += 1;
        }
        if height % STRETCH == 0 {
            println!(
                "| {} | {:.1} µs | {:.2} ms |",
                height as usize * ENTRIES,
                apply.as_secs_f64() * 1e6 / f64::from(STRETCH),
                sync.as_secs_f64() * 1e3 / f64::from(syncs.max(1))
            );
            (apply, sync, syncs) = (Duration::ZERO, Duration::ZERO, 0);
        }
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    apply_suites(&mut criterion);
    proof_suites(&mut criterion);
    snapshot_suites(&mut criterion);
    criterion.final_summary();
    if !std::env::args().any(|arg| arg == "--test") {
        commit_cost_report();
        read_cost_report();
        growth_report();
    }
}
