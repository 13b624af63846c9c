#![no_main]
//! Any input: an error or a transcript that re-encodes to the same bytes; verifying it never
//! panics.
use keyceremony::transcript::{Transcript, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(transcript) = Transcript::decode(data) {
        assert_eq!(transcript.encode(), data);
        let _ = verify(&transcript);
    }
});
