#![no_main]

//! A saved receipt, as `ledgerctl verify` reads it (anyone may hand an auditor one):
//! parsed, converted, and checked against a fixed chain.

use std::sync::OnceLock;

use ledger::api::types::ReceiptView;
use ledger::chain::{ChainSpec, Receipt};
use libfuzzer_sys::fuzz_target;

fn spec() -> &'static ChainSpec {
    static SPEC: OnceLock<ChainSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let members: Vec<_> = (1..=4).map(ledger::testing::key).collect();
        ledger::testing::spec(&members, 1)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(view) = serde_json::from_slice::<ReceiptView>(data) else {
        return;
    };
    if let Ok(receipt) = Receipt::try_from(&view) {
        let _ = receipt.verify(spec());
    }
});
