#![no_main]
//! Any input: an error or a value that re-encodes to the same bytes, never a panic.
use libfuzzer_sys::fuzz_target;
use protocol::wire::{DecodeLimits, decode_ciphertext, encode_ciphertext};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode_ciphertext(
        data,
        DecodeLimits {
            max_values: 1 << 16,
        },
    ) {
        assert_eq!(encode_ciphertext(&value), data);
    }
});
