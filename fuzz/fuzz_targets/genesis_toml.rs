#![no_main]

//! A genesis file, as every node and `ledgerctl verify` read it.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = ledger::chain::ChainSpec::from_toml(text) {
        let again = ledger::chain::ChainSpec::from_toml(&spec.to_toml()).expect("its own file");
        assert_eq!(again.chain_hash(), spec.chain_hash());
    }
});
