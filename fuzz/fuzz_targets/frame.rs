#![no_main]

//! Peer frames as they arrive on a connection: a length prefix, then the frame, then
//! its content decoded as the transport does.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut reader = data;
        while let Ok(Some(frame)) = ledger::net::read_frame(&mut reader, 1 << 20).await {
            let _ = ledger::net::Wire::decode(&frame);
        }
    });
});
