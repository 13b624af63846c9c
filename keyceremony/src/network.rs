//! The ceremony's messages on the wire: length-limited envelopes (a signed message and the
//! attachment for the receiving member), carried by the shared transport
//! ([`runtime::transport`]) under the ceremony's own protocol name, so the ceremony has the
//! daemons' allow-list and connection limits.

use protocol::bytes::{ReadError, Reader, Writer};

use crate::message::Message;

/// Largest envelope accepted: a message plus the biggest subshare blob (one full polynomial
/// for each subset a member holds, at most 126 at n = 10).
pub const MAX_ENVELOPE: usize = 24 * 1024 * 1024;
pub const PROTOCOL: &str = "/quorate/ceremony/1";

/// A message and the attachment for its receiver.
pub fn encode_envelope(message: &Message, attachment: Option<&[u8]>) -> Vec<u8> {
    let mut w = Writer::default();
    let bytes = message.encode();
    w.u32(bytes.len() as u32).bytes(&bytes);
    match attachment {
        Some(blob) => w.u8(1).u32(blob.len() as u32).bytes(blob),
        None => w.u8(0),
    };
    w.into_bytes()
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("attachment flag {0} (0 or 1)")]
    AttachmentFlag(u8),
}

pub fn decode_envelope(bytes: &[u8]) -> Result<(Message, Option<Vec<u8>>), EnvelopeError> {
    let mut r = Reader::new(bytes);
    let len = r.count("message length", 4, MAX_ENVELOPE as u64)?;
    let message = Message::decode(r.take("message", len)?)?;
    let attachment = match r.u8("attachment flag")? {
        0 => None,
        1 => {
            let len = r.count("attachment length", 4, MAX_ENVELOPE as u64)?;
            Some(r.take("attachment", len)?.to_vec())
        }
        other => return Err(EnvelopeError::AttachmentFlag(other)),
    };
    r.finish("envelope")?;
    Ok((message, attachment))
}
