#![no_main]
//! Any input: an error or a share that re-encodes to the same bytes, never a panic.
use libfuzzer_sys::fuzz_target;
use protocol::wire::{decode_key_share, encode_key_share};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode_key_share(data) {
        assert_eq!(encode_key_share(&value).as_slice(), data);
    }
});
