#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ledger_fuzz::round_trip(
        data,
        ledger::chain::snapshot::Manifest::decode,
        ledger::chain::snapshot::Manifest::encode,
    );
});
