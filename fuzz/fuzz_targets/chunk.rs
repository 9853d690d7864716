#![no_main]

//! A snapshot chunk checked against a manifest: the input is a 4-byte length, that
//! many bytes of manifest, then the chunk.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((length, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let length = u32::from_be_bytes(*length) as usize;
    if length > rest.len() {
        return;
    }
    let (manifest, chunk) = rest.split_at(length);
    let Ok(manifest) = ledger::chain::snapshot::Manifest::decode(manifest) else {
        return;
    };
    for index in [
        0,
        1,
        manifest.chunks().saturating_sub(1),
        manifest.chunks(),
        u64::MAX,
    ] {
        let _ = manifest.check_chunk(index, chunk);
    }
});
