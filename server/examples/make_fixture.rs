//! Writes the database fixture that the upgrade tests open.
//!
//! ```text
//! cargo run -p ledger --example make_fixture -- server/tests/fixtures/schema-vN.redb
//! ```
//!
//! It writes the current schema. The chain is fixed (`ledger::testing::write_fixture`:
//! members from seeds 1..=4, difficulty 4, three blocks of signed and unsigned
//! entries), so `server/tests/migrations.rs` knows what to find after upgrading. A
//! fixture is written once, when its schema is the newest, and committed; later
//! schemas must keep opening it. `schema-v1.redb` was written by this generator at
//! commit 14ec4f2.

use std::path::PathBuf;

use anyhow::bail;
use ledger::testing::write_fixture;

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
    let store = write_fixture(&path)?;
    println!(
        "wrote {} at schema {}, tip height {}",
        path.display(),
        ledger_migrations::CURRENT_VERSION,
        store.tip()?.height
    );
    Ok(())
}
