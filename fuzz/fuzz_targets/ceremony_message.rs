#![no_main]
//! Any input: an error or a ceremony message that re-encodes to the same bytes.
use keyceremony::message::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        assert_eq!(message.encode(), data);
    }
});
