#![no_main]

//! The plugin SDK's zero-copy views of what the node hands plugins: never a panic,
//! and whatever the node's own decoders accept, the views read the same way. (The
//! views may be more lenient: the node only ever hands them what it accepted.)

use ledger_plugin_api as sdk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let view = sdk::Header::decode(data);
    if let Ok(header) = ledger::chain::Header::decode(data) {
        let view = view.expect("the SDK reads a header the node accepts");
        assert_eq!(
            (
                view.height,
                view.timestamp_ms,
                view.log_size,
                view.difficulty,
                view.nonce
            ),
            (
                header.height,
                header.timestamp_ms,
                header.log_size,
                header.difficulty,
                header.nonce
            )
        );
        assert_eq!(view.prev_hash, *header.prev_hash.as_bytes());
    }
    let view = sdk::Entry::decode(data);
    if let Ok(entry) = ledger::chain::Entry::decode(data) {
        let view = view.expect("the SDK reads an entry the node accepts");
        assert_eq!(view.data, entry.data.as_slice());
    }
    let view = sdk::Block::decode(data);
    if let Ok(block) = ledger::chain::Block::decode(data) {
        let view = view.expect("the SDK reads a block the node accepts");
        assert_eq!(view.entries.len(), block.entries.len());
    }
    let _ = sdk::Entry::decode_list(data);
});
