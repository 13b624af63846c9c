//! Round-protocol requests and responses: decoding never panics, and whatever decodes
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::round::message::{Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok((id, request)) = Request::decode(data) {
        assert_eq!(request.encode(id), data);
    }
    if let Ok((id, response)) = Response::decode(data) {
        assert_eq!(response.encode(id), data);
    }
});
