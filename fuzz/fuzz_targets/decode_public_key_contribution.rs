#![no_main]
//! Any input: an error or a value that re-encodes to the same bytes, never a panic.
use libfuzzer_sys::fuzz_target;
use protocol::wire::{decode_public_key_contribution, encode_public_key_contribution};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode_public_key_contribution(data) {
        assert_eq!(encode_public_key_contribution(&value), data);
    }
});
