//! The PoW hot path against its two baselines, in one run:
//! (a) the article's miner, (b) raw SHA-256 compressions on one core, one at a time
//! (`sha2`'s limit; our miner interleaves two and passes it), (c) our miner on one
//! thread, (d) our miner on every core.
//! Targets (issue 2): c ≥ 0.9·b, d ≥ 1.8·c, c ≥ 8·a.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use ledger::pow::{default_threads, mine_range};
use ledger::testing::header;
use ledger_benches::article;
use ledger_benches::rate::{human, measure, Contender};
use sha2::block_api::compress256;

/// Nonces per measured call: large enough to hide waking the helpers for (d).
const NONCES: u64 = 1 << 20;

/// Unreachable, so every nonce in a measured range is tried.
const IMPOSSIBLE: u32 = 256;

fn article_hashes(block: &mut article::Block, count: u64) -> u64 {
    // 64 hex zeros never match: every try is a full rehash.
    block.mine(64, count)
}

fn raw_compressions(count: u64) -> u64 {
    let mut block = [0x5au8; 64];
    let mut state = [0u32; 8];
    for i in 0..count {
        block[..8].copy_from_slice(&i.to_be_bytes());
        compress256(&mut state, std::slice::from_ref(&block));
    }
    black_box(state);
    count
}

fn ours(threads: NonZeroUsize, count: u64) -> u64 {
    mine_range(
        &header(IMPOSSIBLE),
        threads,
        0..count,
        &AtomicBool::new(false),
    )
    .hashes
}

fn criterion_suites(c: &mut Criterion) {
    let all = default_threads();
    let mut group = c.benchmark_group("pow");
    group.sample_size(30);
    group.throughput(Throughput::Elements(1 << 16));
    group.bench_function("a_article_miner", |b| {
        let mut block = article::sample();
        b.iter(|| article_hashes(&mut block, 1 << 16));
    });
    group.throughput(Throughput::Elements(NONCES));
    group.bench_function("b_sha256_compress_one_core", |b| {
        b.iter(|| raw_compressions(NONCES))
    });
    group.bench_function("c_ours_one_thread", |b| {
        b.iter(|| ours(NonZeroUsize::MIN, NONCES))
    });
    group.bench_function(format!("d_ours_{all}_threads"), |b| {
        b.iter(|| ours(all, NONCES))
    });
    group.finish();
}

fn ratio_report() {
    let all = default_threads();
    let mut block = article::sample();
    let mut contenders = [
        Contender {
            name: "(a) article miner",
            run: Box::new(|| article_hashes(&mut block, 1 << 14)),
        },
        Contender {
            name: "(b) SHA-256 compress, 1 core",
            run: Box::new(|| raw_compressions(1 << 18)),
        },
        Contender {
            name: "(c) ours, 1 thread",
            run: Box::new(|| ours(NonZeroUsize::MIN, 1 << 18)),
        },
        Contender {
            name: "(d) ours, all cores",
            run: Box::new(|| ours(all, NONCES)),
        },
    ];
    let rates = measure(&mut contenders, 7, Duration::from_millis(400));
    println!("\npow ratios (median of 7 interleaved rounds, {all} cores):");
    for (contender, rate) in contenders.iter().zip(&rates) {
        println!("  {:<32} {:>12}", contender.name, human(*rate));
    }
    let [a, b, c, d] = [rates[0], rates[1], rates[2], rates[3]];
    let verdict = |ok: bool| if ok { "meets target" } else { "BELOW TARGET" };
    println!(
        "  c / b = {:.3}   target >= 0.9   {}",
        c / b,
        verdict(c / b >= 0.9)
    );
    println!(
        "  d / c = {:.3}   target >= 1.8   {}",
        d / c,
        verdict(d / c >= 1.8)
    );
    println!(
        "  c / a = {:.1}    target >= 8     {}",
        c / a,
        verdict(c / a >= 8.0)
    );
}

fn main() {
    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    criterion_suites(&mut criterion);
    criterion.final_summary();
    // `cargo test --benches` runs each bench once as a smoke test; the report is for
    // real runs.
    if !std::env::args().any(|arg| arg == "--test") {
        ratio_report();
    }
}
