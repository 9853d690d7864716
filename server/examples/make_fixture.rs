//! Writes the database fixture that the upgrade tests open.
//!
//! ```text
//! cargo run -p ledger --example make_fixture -- server/tests/fixtures/schema-vN.redb
//! ```
//!
//! It writes the current schema. The chain is fixed (members from seeds 1..=4,
//! difficulty 4, three blocks of signed and unsigned entries), so
//! `server/tests/migrations.rs` knows what to find after upgrading. A fixture is
//! written once, when its schema is the newest, and committed; later schemas must keep
//! opening it. `schema-v1.redb` was written by this generator at commit 14ec4f2.

use std::path::PathBuf;

use anyhow::bail;
use ledger::chain::Entry;
use ledger::storage::{Store, StoreOptions};
use ledger::testing::{certify, entries, key, next_block, spec};

/// Members of the fixture chain.
pub const MEMBER_SEEDS: [u8; 4] = [1, 2, 3, 4];
/// Seed of the key that signs the fixture's authored entries.
pub const AUTHOR_SEED: u8 = 42;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        bail!("usage: make_fixture OUTPUT.redb");
    };
    let path = PathBuf::from(path);
    if path.exists() {
        bail!(
            "{} exists; a fixture is only written to a new file",
            path.display()
        );
    }

    let keys: Vec<_> = MEMBER_SEEDS.iter().map(|&seed| key(seed)).collect();
    let spec = spec(&keys, 4);
    let store = Store::open(&path, &spec, StoreOptions::default())?;
    for round in 0..3u64 {
        let (tip, log) = store.tip_with_log()?;
        let mut batch = entries(round, 5, 48);
        let text = format!("fixture entry signed in round {round}");
        batch.push(Entry::signed(
            text.into_bytes(),
            &key(AUTHOR_SEED),
            &spec.chain_hash(),
        ));
        let block = next_block(&tip, &log, batch, 4);
        store.apply_block(&block, &certify(&keys, &block))?;
    }
    println!(
        "wrote {} at schema {}, tip height {}",
        path.display(),
        ledger_migrations::CURRENT_VERSION,
        store.tip()?.height
    );
    Ok(())
}
