#![no_main]
//! Any input: an error or entries that encode back to exactly the input, never a panic.
use keyceremony::entries_file::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = decode(data) {
        assert_eq!(encode(&entries), data);
    }
});
