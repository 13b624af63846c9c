#![no_main]
//! Any input: an error or a value that re-encodes to the same bytes (or, for a partial from
//! before windows, to bytes that decode to the same value), never a panic; and the
//! header alone, and the view a combination subtracts from, decode exactly when the whole
//! partial does, with the same fields and values.
use libfuzzer_sys::fuzz_target;
use protocol::wire::{
    DecodeLimits, decode_partial_decryption, decode_partial_header, decode_partial_view,
    encode_partial_decryption,
};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_values: 1 << 16,
    };
    let header = decode_partial_header(data, limits);
    let view = decode_partial_view(data, limits);
    match decode_partial_decryption(data, limits) {
        Ok(value) => {
            let again = encode_partial_decryption(&value);
            if data[5] == 5 {
                // A partial from before windows re-encodes as one naming its window.
                assert_eq!(decode_partial_decryption(&again, limits).unwrap(), value);
            } else {
                assert_eq!(again, data);
            }
            let header = header.expect("the header of a partial that decodes");
            assert_eq!(header.party, value.party);
            assert_eq!(header.quorum, value.quorum);
            assert_eq!(header.ciphertext, value.ciphertext);
            assert_eq!(header.window, value.window);
            assert_eq!(header.value_count, value.values.len() as u64);
            let view = view.expect("the view of a partial that decodes");
            assert_eq!(view.header, header);
            assert!(view.values().eq(value.values.iter().copied()));
        }
        Err(_) => assert!(header.is_err() && view.is_err()),
    }
});
