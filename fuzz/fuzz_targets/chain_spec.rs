#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ledger_fuzz::round_trip(
        data,
        ledger::chain::ChainSpec::decode,
        ledger::chain::ChainSpec::encode,
    );
});
