#![no_main]

//! The JSON bodies of `POST /v1/entries` and `/v1/entries/batch`, as the handlers
//! read them: parsed, then turned into entries.

use ledger::api::types::SubmitRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<SubmitRequest>(data) {
        if let Ok(entry) = request.into_entry() {
            let _ = ledger::chain::Entry::decode(&entry.encode()).expect("its own encoding");
        }
    }
    if let Ok(batch) = serde_json::from_slice::<Vec<SubmitRequest>>(data) {
        for request in batch {
            let _ = request.into_entry();
        }
    }
});
