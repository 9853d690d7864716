//! PBFT through four in-memory replicas with real ed25519 signatures: blocks committed
//! per second (every replica applies each block), the share of that time spent
//! verifying signatures, and whether batch verification would pay at quorum sizes.
//!
//! Messages are delivered at once and in order; mining is at difficulty 1 and
//! persistence is not performed, so the figure is the protocol's own CPU cost.

use std::collections::{HashSet, VecDeque};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ledger::chain::{Block, ChainError, CompactRange, EntryIndex, Hash, Header};
use ledger::consensus::{Config, Durable, Input, Message, Output, Replica, Timing, Tip};
use ledger::pow::Template;
use ledger::testing::{entries, key, spec};

const ENTRIES: usize = 100;
const ENTRY_BYTES: usize = 100;

struct Committed(HashSet<Hash>);

impl EntryIndex for Committed {
    fn contains(&self, id: &Hash) -> Result<bool, ChainError> {
        Ok(self.0.contains(id))
    }
}

/// Four replicas and the messages in flight between them.
struct Cluster {
    replicas: Vec<Replica>,
    committed: Vec<Committed>,
    queue: VecDeque<(usize, Message)>,
    heights: Vec<u64>,
    now: u64,
    tag: u64,
}

impl Cluster {
    fn new(members: u8) -> Cluster {
        let keys: Vec<SigningKey> = (1..=members).map(key).collect();
        let spec = spec(&keys, 1);
        let genesis = spec.genesis_block();
        let now = spec.timestamp_ms + 1_000;
        let replicas = keys
            .iter()
            .map(|k| {
                let config = Config::new(&spec, k.clone(), Timing::default()).expect("member");
                let tip = Tip {
                    header: genesis.header,
                    log: CompactRange::new(),
                };
                Replica::new(config, tip, Durable::genesis(genesis.hash()), [], now)
            })
            .collect();
        Cluster {
            replicas,
            committed: (0..members).map(|_| Committed(HashSet::new())).collect(),
            queue: VecDeque::new(),
            heights: vec![0; usize::from(members)],
            now,
            tag: 0,
        }
    }

    fn input(&mut self, replica: usize, input: Input) {
        let outputs = self.replicas[replica].handle(input, &self.committed[replica]);
        let n = self.replicas.len();
        for output in outputs {
            match output {
                Output::Broadcast(message) => {
                    for to in (0..n).filter(|to| *to != replica) {
                        self.queue.push_back((to, message.clone()));
                    }
                }
                Output::Send { to, message } => self.queue.push_back((usize::from(to), message)),
                Output::Apply { block, .. } => {
                    self.heights[replica] = block.header.height;
                    let ids = &mut self.committed[replica].0;
                    ids.extend(block.entries.iter().map(|e| e.id()));
                }
                Output::Mine(template) => {
                    let mut header: Header = template.header;
                    header.nonce = Template::new(&header)
                        .search(0, 1, u64::MAX)
                        .expect("nonce");
                    let block = Block {
                        header,
                        entries: template.entries.clone(),
                    };
                    self.input(replica, Input::Mined(Arc::new(block)));
                }
                _ => {}
            }
        }
    }

    /// Submits a block's worth of entries to the primary and runs until every replica
    /// applied the block.
    fn commit_one(&mut self) {
        self.tag += 1;
        self.now += 1;
        let target = self.heights[0] + 1;
        let primary = usize::from(self.replicas[0].primary());
        for entry in entries(self.tag, ENTRIES, ENTRY_BYTES) {
            self.input(
                primary,
                Input::Entry {
                    entry,
                    forwarded: false,
                },
            );
        }
        self.input(primary, Input::Tick { now_ms: self.now });
        self.input(primary, Input::Cut);
        while let Some((to, message)) = self.queue.pop_front() {
            self.input(to, Input::Message(message));
        }
        assert!(
            self.heights.iter().all(|h| *h == target),
            "block {target} not applied everywhere"
        );
    }

    fn signatures_checked(&self) -> u64 {
        self.replicas.iter().map(Replica::signatures_checked).sum()
    }
}

fn bench_blocks(c: &mut Criterion) {
    let mut group = c.benchmark_group("consensus");
    group.throughput(Throughput::Elements(1));
    group.bench_function("4 replicas, one block of 100 entries", |b| {
        let mut cluster = Cluster::new(4);
        b.iter(|| cluster.commit_one());
    });
    group.finish();

    // Signatures verified per block, counted by the replicas themselves.
    let mut cluster = Cluster::new(4);
    cluster.commit_one();
    let before = cluster.signatures_checked();
    let blocks = 50;
    let started = Instant::now();
    for _ in 0..blocks {
        cluster.commit_one();
    }
    let per_block = started.elapsed() / blocks;
    let checks = (cluster.signatures_checked() - before) as f64 / f64::from(blocks);
    let verify = time_verify();
    println!(
        "consensus: {checks:.1} signature checks per block; {:.1} us per check; \
         {:.0} us per block; verifying = {:.0}% of the time",
        verify.as_secs_f64() * 1e6,
        per_block.as_secs_f64() * 1e6,
        100.0 * checks * verify.as_secs_f64() / per_block.as_secs_f64()
    );
}

/// The cost of one verify_strict, measured here so the share is from one run.
fn time_verify() -> Duration {
    let (keys, digests, signatures) = signed(1);
    let rounds = 2_000u32;
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(keys[0].verify_strict(&digests[0], &signatures[0])).expect("valid");
    }
    started.elapsed() / rounds
}

fn signed(count: usize) -> (Vec<VerifyingKey>, Vec<[u8; 32]>, Vec<Signature>) {
    let keys: Vec<SigningKey> = (0..count).map(|i| key(i as u8 + 1)).collect();
    let digests: Vec<[u8; 32]> = (0..count).map(|i| Hash::digest(&[i as u8]).0).collect();
    let signatures = keys.iter().zip(&digests).map(|(k, d)| k.sign(d)).collect();
    (
        keys.iter().map(SigningKey::verifying_key).collect(),
        digests,
        signatures,
    )
}

/// One by one (what replicas do) against dalek's batch check, at the certificate
/// sizes of n = 4, 10 and 31 members (quorums 3, 7, 21).
fn bench_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("certificate check");
    for count in [3usize, 7, 21] {
        let (keys, digests, signatures) = signed(count);
        let messages: Vec<&[u8]> = digests.iter().map(|d| d.as_slice()).collect();
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(
            BenchmarkId::new("verify_strict each", count),
            &count,
            |b, _| {
                b.iter(|| {
                    for ((key, digest), signature) in keys.iter().zip(&digests).zip(&signatures) {
                        key.verify_strict(digest, signature).expect("valid");
                    }
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("verify_batch", count), &count, |b, _| {
            b.iter(|| ed25519_dalek::verify_batch(&messages, &signatures, &keys).expect("valid"))
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_blocks(&mut criterion);
    bench_batch(&mut criterion);
    criterion.final_summary();
}
