//! The digest that binds an encoded ciphertext or partial decryption, chosen by the
//! encoding's own kind.
//!
//! These digests are what a round hashes most: every contribution is hashed where it is made,
//! where it lands, wherever it is fetched, and in every recomputed aggregate, and every
//! partial where it is made and wherever it arrives; about 50 ciphertexts' worth a round.
//! SHA-256 (with the SHA extensions) took 13 % of every process's CPU time at 10M values;
//! BLAKE3 hashes the same bytes 3.5 times as fast on one core. Kinds 9, 10 (ciphertexts) and
//! 11 (partial decryptions), which are written now, are bound by BLAKE3; kinds 6, 7 and 8,
//! written before, keep the SHA-256 digests logs already name, so a model held or stored, or
//! a partial released, before still verifies against its logged digest. Everything else
//! (keys, the ceremony's challenge of kind 4, mask digests) stays SHA-256: a member's ledger
//! keys releases by mask digest, so that one must never change.
//!
//! The kind is part of the hashed bytes, so it cannot be changed without changing the digest:
//! choosing another kind only chooses another collision-resistant hash of other bytes.

use sha2::{Digest as _, Sha256};

use super::{KIND_OFFSET, Kind};

/// Hashes an encoding given in pieces of any size; the first `KIND_OFFSET + 1` bytes decide
/// the hash (see the module's documentation).
pub struct EncodingHasher {
    state: State,
}

enum State {
    /// Fewer bytes than reach the kind have come.
    Head(Vec<u8>),
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl std::fmt::Debug for EncodingHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Head(ref head) => return write!(f, "EncodingHasher({} bytes in)", head.len()),
            State::Sha256(_) => "SHA-256",
            State::Blake3(_) => "BLAKE3",
        };
        write!(f, "EncodingHasher({state})")
    }
}

impl Default for EncodingHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl EncodingHasher {
    pub fn new() -> Self {
        Self {
            state: State::Head(Vec::with_capacity(KIND_OFFSET + 1)),
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        if let State::Head(head) = &mut self.state {
            let take = (KIND_OFFSET + 1 - head.len()).min(bytes.len());
            head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if head.len() <= KIND_OFFSET {
                return;
            }
            let head = std::mem::take(head);
            self.state = choose(head[KIND_OFFSET]);
            self.feed(&head);
        }
        self.feed(bytes);
    }

    fn feed(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Head(_) => unreachable!("the hash is chosen before bytes are fed"),
            State::Sha256(hasher) => hasher.update(bytes),
            State::Blake3(hasher) => {
                hasher.update(bytes);
            }
        }
    }

    pub fn finalize(self) -> [u8; 32] {
        match self.state {
            // Too short to name a kind: no encoding, but it still gets a digest.
            State::Head(head) => Sha256::digest(head).into(),
            State::Sha256(hasher) => hasher.finalize().into(),
            State::Blake3(hasher) => *hasher.finalize().as_bytes(),
        }
    }
}

fn choose(kind: u8) -> State {
    if Kind::from_byte(kind).is_some_and(Kind::bound_by_blake3) {
        State::Blake3(Box::default())
    } else {
        State::Sha256(Sha256::new())
    }
}

/// The digest of a whole encoding, as [`EncodingHasher`] computes it.
pub fn encoding_digest(bytes: &[u8]) -> [u8; 32] {
    let mut hasher = EncodingHasher::new();
    hasher.update(bytes);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoding(kind: u8, len: usize) -> Vec<u8> {
        let mut bytes = super::super::MAGIC.to_vec();
        bytes.push(super::super::FORMAT_VERSION);
        bytes.push(kind);
        bytes.extend((0..len).map(|i| (i * 7 + 3) as u8));
        bytes
    }

    #[test]
    fn kinds_9_10_and_11_are_bound_by_blake3_and_every_other_encoding_by_sha256() {
        for kind in 1..=12u8 {
            let bytes = encoding(kind, 5000);
            let expected: [u8; 32] = if (9..=11).contains(&kind) {
                *blake3::hash(&bytes).as_bytes()
            } else {
                Sha256::digest(&bytes).into()
            };
            assert_eq!(encoding_digest(&bytes), expected, "kind {kind}");
        }
        // Shorter than a header: SHA-256 of what there is.
        assert_eq!(
            encoding_digest(b"QRAT"),
            <[u8; 32]>::from(Sha256::digest(b"QRAT"))
        );
    }

    #[test]
    fn kinds_4_to_8_are_the_ones_read_and_no_longer_written() {
        for kind in 0..=12u8 {
            let found = super::super::kind_written_before(&encoding(kind, 10));
            assert_eq!(
                found,
                (4..=8).contains(&kind).then_some(kind),
                "kind {kind}"
            );
        }
        let mut not_ours = encoding(7, 10);
        not_ours[0] = b'X';
        assert_eq!(super::super::kind_written_before(&not_ours), None);
        assert_eq!(super::super::kind_written_before(b"QRAT\x01"), None);
    }

    #[test]
    fn pieces_of_any_size_hash_to_the_whole_encodings_digest() {
        for kind in [6u8, 7, 9, 10, 11] {
            let bytes = encoding(kind, 3000);
            let whole = encoding_digest(&bytes);
            for size in [1, 2, 5, 6, 7, 64, 1000] {
                let mut hasher = EncodingHasher::new();
                for piece in bytes.chunks(size) {
                    hasher.update(piece);
                }
                hasher.update(&[]);
                assert_eq!(hasher.finalize(), whole, "kind {kind}, pieces of {size}");
            }
        }
    }
}
