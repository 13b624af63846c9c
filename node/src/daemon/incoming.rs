//! Partial decryptions arriving chunk by chunk from other members.

use std::sync::Arc;
use std::time::Duration;

use protocol::audit::entry::Digest;
use protocol::round::message::CHUNK_BYTES;
use protocol::wire::digest::EncodingHasher;

/// A partial decryption arriving in chunks from another member. Chunks are hashed as they
/// arrive, so the digest its author logged is checked without hashing the whole partial again
/// under the state's lock; the bytes are shared with a combination, never copied.
pub(super) struct Incoming {
    /// Chunks received so far, and announced in all.
    pub(super) received: u32,
    pub(super) count: u32,
    pub(super) bytes: Arc<Vec<u8>>,
    pub(super) hasher: EncodingHasher,
    /// The digest of the bytes (`protocol::wire::digest`), once complete.
    pub(super) digest: Option<Digest>,
    /// When the latest chunk arrived.
    pub(super) last_chunk: std::time::Instant,
}

impl Incoming {
    /// Room for `count` chunks, at most `room` bytes (the plan's partial size, or nothing),
    /// taken at once where the memory is there: grown chunk by chunk, an 80 MB partial would
    /// sit in a 128 MiB buffer.
    pub(super) fn new(count: u32, room: usize) -> Self {
        let mut bytes = Vec::new();
        let _ = bytes.try_reserve_exact((count as usize).saturating_mul(CHUNK_BYTES).min(room));
        Self {
            received: 0,
            count,
            bytes: Arc::new(bytes),
            hasher: EncodingHasher::new(),
            digest: None,
            last_chunk: std::time::Instant::now(),
        }
    }

    /// This member's own partial decryption, complete as it is, with its digest.
    pub(super) fn whole(bytes: Arc<Vec<u8>>, digest: Digest) -> Self {
        Self {
            received: 1,
            count: 1,
            bytes,
            hasher: EncodingHasher::new(),
            digest: Some(digest),
            last_chunk: std::time::Instant::now(),
        }
    }

    /// Adds the next chunk; the last one completes the digest.
    pub(super) fn push(&mut self, chunk: &[u8]) {
        Arc::make_mut(&mut self.bytes).extend_from_slice(chunk);
        self.hasher.update(chunk);
        self.received += 1;
        self.last_chunk = std::time::Instant::now();
        self.digest = if self.complete() {
            Some(std::mem::take(&mut self.hasher).finalize())
        } else {
            None
        };
    }

    pub(super) fn complete(&self) -> bool {
        self.received == self.count
    }

    /// Incomplete, with no chunk for `quiet`: worth asking its author for again.
    pub(super) fn stalled(&self, quiet: Duration) -> bool {
        !self.complete() && self.last_chunk.elapsed() >= quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_whose_chunks_keep_arriving_is_not_asked_for_again() {
        let mut arriving = Incoming::new(3, 8);
        // Room for the whole partial from the start, never more than the plan's size.
        assert_eq!(arriving.bytes.capacity(), 8);
        assert_eq!(
            Incoming::new(2, 100 * CHUNK_BYTES).bytes.capacity(),
            2 * CHUNK_BYTES
        );
        // No room ahead for a partial of a request not logged yet.
        assert_eq!(Incoming::new(2, 0).bytes.capacity(), 0);
        assert!(!arriving.stalled(Duration::from_secs(60)), "just begun");
        assert!(
            arriving.stalled(Duration::ZERO),
            "nothing since: worth asking"
        );
        arriving.last_chunk -= Duration::from_secs(5);
        assert!(arriving.stalled(Duration::from_secs(2)));
        for chunk in [&b"par"[..], b"tial", b"!"] {
            assert_eq!(arriving.digest, None);
            arriving.push(chunk);
        }
        assert!(!arriving.stalled(Duration::ZERO), "complete");
        assert_eq!(arriving.bytes.as_slice(), b"partial!");
        let digest: Digest = protocol::wire::digest::encoding_digest(b"partial!");
        assert_eq!(arriving.digest, Some(digest));
        assert!(!Incoming::whole(Arc::new(vec![1]), digest).stalled(Duration::ZERO));
    }
}
