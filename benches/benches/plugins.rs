//! The plugin ABI's cost, each against its baseline in the same run:
//!
//! - one `validate_entry` of tx-policy through the C ABI (loaded with libloading, as
//!   the node does: encode, call through the pointer, the SDK decodes, the policy
//!   checks, the hook is timed) against the same check called directly in Rust, with
//!   and without the encode/decode the ABI needs;
//! - block validation: the plugins' `check_block` on a block of 1000 entries of 100
//!   bytes with the three example plugins loaded, against the node's built-in
//!   validation of the same block.
//!
//! The example plugins are built in release mode into `target/plugin-bench` first.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use ledger::chain::{
    validate_block, ChainError, CompactRange, EntryIndex, Hash, Policy, ValidationContext,
};
use ledger::metrics::Metrics;
use ledger::plugin_host::{PluginConfig, Plugins};
use ledger::testing::{entries, key, next_block, spec};
use ledger_plugin_api::Plugin;

const BLOCK_ENTRIES: usize = 1000;
const ENTRY_BYTES: usize = 100;

fn built_plugins() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root");
    let target = workspace.join("target").join("plugin-bench");
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .args(["build", "--release", "--quiet"])
        .args([
            "-p",
            "tx-policy",
            "-p",
            "difficulty-retarget",
            "-p",
            "jsonl-export",
        ])
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the example plugins failed");
    target.join("release")
}

fn library(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

fn plugin(path: PathBuf, config: &str) -> PluginConfig {
    PluginConfig {
        path,
        config: toml::from_str(config).expect("toml"),
        budget_ms: 1_000,
    }
}

const TX_POLICY: &str = "max_bytes = 1024\ncontent = \"any\"";

fn hook_call(c: &mut Criterion, dir: &Path) {
    let plugins = Plugins::load(
        &[plugin(library(dir, "tx_policy"), TX_POLICY)],
        Arc::new(Metrics::default()),
    )
    .expect("tx-policy loads");
    let direct =
        tx_policy::TxPolicy::init(r#"{"max_bytes": 1024, "content": "any"}"#).expect("same config");
    let entry = entries(1, 1, ENTRY_BYTES).remove(0);
    let encoded = entry.encode();
    let view = ledger_plugin_api::Entry::decode(&encoded).expect("view");

    let mut group = c.benchmark_group("plugins/validate_entry");
    group.throughput(Throughput::Elements(1));
    group.bench_function("direct Rust call", |b| {
        b.iter(|| direct.validate_entry(black_box(&view)))
    });
    group.bench_function("direct, with encode and decode", |b| {
        b.iter(|| {
            let encoded = black_box(&entry).encode();
            let view = ledger_plugin_api::Entry::decode(&encoded).expect("view");
            direct.validate_entry(&view)
        })
    });
    group.bench_function("through the C ABI", |b| {
        b.iter(|| plugins.validate_entry(black_box(&entry)))
    });
    group.finish();
}

struct NoneCommitted;

impl EntryIndex for NoneCommitted {
    fn contains(&self, _: &Hash) -> Result<bool, ChainError> {
        Ok(false)
    }
}

fn block_validation(c: &mut Criterion, dir: &Path) {
    let export = tempfile::NamedTempFile::new().expect("export file");
    let plugins = Plugins::load(
        &[
            plugin(library(dir, "tx_policy"), TX_POLICY),
            plugin(library(dir, "difficulty_retarget"), ""),
            plugin(
                library(dir, "jsonl_export"),
                &format!("path = {:?}", export.path().display().to_string()),
            ),
        ],
        Arc::new(Metrics::default()),
    )
    .expect("the examples load");
    let keys = [key(1)];
    let spec = spec(&keys, 1);
    let genesis = spec.genesis_block();
    let log = CompactRange::new();
    let block = next_block(
        &genesis.header,
        &log,
        entries(2, BLOCK_ENTRIES, ENTRY_BYTES),
        1,
    );
    let chain_hash = spec.chain_hash();
    let context = ValidationContext {
        chain_hash: &chain_hash,
        params: &spec.params,
        parent: &genesis.header,
        required_difficulty: 1,
        now_ms: block.header.timestamp_ms,
    };

    let mut group = c.benchmark_group("plugins/block of 1000 entries");
    group.throughput(Throughput::Elements(BLOCK_ENTRIES as u64));
    group.bench_function("built-in validation", |b| {
        b.iter(|| validate_block(&context, black_box(&block), &log, &NoneCommitted).expect("valid"))
    });
    group.bench_function("example plugins' check_block", |b| {
        b.iter(|| plugins.check_block(black_box(&block)).expect("accepted"))
    });
    group.finish();
}

fn main() {
    let dir = built_plugins();
    let mut criterion = Criterion::default().configure_from_args();
    hook_call(&mut criterion, &dir);
    block_validation(&mut criterion, &dir);
    criterion.final_summary();
}
