#![no_main]
//! Any input: an error or a value that re-encodes to the same bytes, never a panic.
use libfuzzer_sys::fuzz_target;
use protocol::wire::{decode_public_key_contribution, encode_public_key_contribution};

fuzz_target!(|data: &[u8]| {
    // Of any number of secrets, read from the length, and of the number a ceremony fixes.
    for secrets in [None, Some(1), Some(4)] {
        if let Ok(value) = decode_public_key_contribution(data, secrets) {
            assert_eq!(encode_public_key_contribution(&value), data);
        }
    }
});
