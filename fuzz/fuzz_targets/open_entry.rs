#![no_main]
//! Any input: an error or an entry whose leaf bytes are exactly the input, never a panic.
use libfuzzer_sys::fuzz_target;
use protocol::audit::entry::SignedEntry;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = SignedEntry::open(data) {
        assert_eq!(entry.leaf(), data);
    }
});
