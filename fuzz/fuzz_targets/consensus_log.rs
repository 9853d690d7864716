#![no_main]

use libfuzzer_sys::fuzz_target;

// A member's consensus log as found on disk after a crash or damage: read or
// refused, and the whole frames it was read to read back the same on their own.
fuzz_target!(|data: &[u8]| {
    if let Ok((records, end)) = ledger::storage::read_log(data) {
        assert!(end <= data.len());
        let (again, again_end) =
            ledger::storage::read_log(&data[..end]).expect("a log's whole frames read back");
        assert_eq!(again_end, end);
        assert_eq!(again, records);
    }
});
