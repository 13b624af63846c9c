#![no_main]
//! Any input: the sealed-file header parser returns an error or metadata, never panics and
//! never accepts Argon2 costs beyond its limits (opening is not fuzzed: each try runs Argon2).
use libfuzzer_sys::fuzz_target;
use protocol::seal::{SealKind, peek_metadata};

fuzz_target!(|data: &[u8]| {
    let _ = peek_metadata(data, SealKind::KeyShare);
    let _ = peek_metadata(data, SealKind::Identity);
});
