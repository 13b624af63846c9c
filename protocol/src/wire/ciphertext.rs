//! The encoding of a ciphertext: its shape (value count, message scale, body window, and the
//! key's secrets where there are several), every mask coefficient's top 120 bits, then every
//! body in its window's bytes. Aggregation reads
//! it in place ([`CiphertextView`]) or piece by piece (`round::TermStream`), with the one
//! multiply-add per coefficient defined here.

use sha2::{Digest, Sha256};

use super::digest::{EncodingHasher, encoding_digest};
use super::{DecodeLimits, Kind, MASK_WIRE_BYTES, WireError, WireReader, header, read_value_count};
use crate::he::{Ciphertext, CiphertextDigest, CiphertextShape, HeError, MAX_SECRETS, Window};

/// Kind 9 under a key of one secret, and kind 10, which also names the secrets, under one of
/// several (kinds 7 and 8, their layouts bound by SHA-256, are only read).
fn ciphertext_header(shape: CiphertextShape) -> Vec<u8> {
    let several = shape.secrets > 1;
    let mut out = header(if several {
        Kind::CiphertextUnderSecrets
    } else {
        Kind::Ciphertext
    });
    out.extend_from_slice(&(shape.values as u64).to_le_bytes());
    out.push(shape.delta_bits as u8);
    out.push(shape.body_window.dropped_bits());
    out.push(shape.body_window.bytes() as u8);
    if several {
        out.push(shape.secrets as u8);
    }
    out
}

/// Runs `$body` with the const `$n` set to `$bytes` (a body window's width, 1 to 8), so that
/// each width gets its own loop with fixed-size loads and stores: a loop over a width known
/// only at run time made the aggregation 2.4 times as slow.
macro_rules! with_width {
    ($bytes:expr, $n:ident => $body:expr) => {
        match $bytes {
            1 => {
                const $n: usize = 1;
                $body
            }
            2 => {
                const $n: usize = 2;
                $body
            }
            3 => {
                const $n: usize = 3;
                $body
            }
            4 => {
                const $n: usize = 4;
                $body
            }
            5 => {
                const $n: usize = 5;
                $body
            }
            6 => {
                const $n: usize = 6;
                $body
            }
            7 => {
                const $n: usize = 7;
                $body
            }
            _ => {
                const $n: usize = 8;
                $body
            }
        }
    };
}

/// Each body's kept value in its window's bytes, little-endian.
fn put_bodies(out: &mut Vec<u8>, bodies: &[u64], window: Window) {
    out.reserve(bodies.len() * window.bytes());
    with_width!(window.bytes(), N => put_bodies_of::<N>(out, bodies, window))
}

#[inline(always)]
fn put_bodies_of<const N: usize>(out: &mut Vec<u8>, bodies: &[u64], window: Window) {
    for body in bodies {
        let word = window.of_top(*body).to_le_bytes();
        out.extend_from_slice(&word[..N]);
    }
}

fn put_masks(out: &mut Vec<u8>, masks: &[u128]) {
    out.reserve(masks.len() * MASK_WIRE_BYTES);
    for mask in masks {
        out.extend_from_slice(&mask.to_le_bytes()[16 - MASK_WIRE_BYTES..]);
    }
}

pub fn encode_ciphertext(ciphertext: &Ciphertext) -> Vec<u8> {
    let shape = ciphertext.shape();
    let mut out = ciphertext_header(shape);
    out.reserve(ciphertext_encoded_len(shape) - out.len());
    put_masks(&mut out, ciphertext.masks());
    put_bodies(&mut out, ciphertext.bodies(), shape.body_window);
    out
}

/// The length of the encoding of a ciphertext of this shape.
pub fn ciphertext_encoded_len(shape: CiphertextShape) -> usize {
    ciphertext_header(shape).len()
        + shape.mask_words() * MASK_WIRE_BYTES
        + shape.values * shape.body_window.bytes()
}

/// The digest of a ciphertext's encoding, computed without materialising the encoding.
pub fn ciphertext_digest(ciphertext: &Ciphertext) -> CiphertextDigest {
    let Ok(digest) = stream_ciphertext(ciphertext, |_| Ok::<_, std::convert::Infallible>(()));
    digest
}

/// The encoding in pieces of about 64 KiB, each hashed and handed to `emit`: a ciphertext
/// written out and bound to its digest in one pass, never encoded whole.
pub fn stream_ciphertext<E>(
    ciphertext: &Ciphertext,
    emit: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<CiphertextDigest, E> {
    stream_after(&ciphertext_header(ciphertext.shape()), ciphertext, emit)
}

/// The digest a ciphertext with all the top 64 bits of its bodies had before body windows:
/// that of its kind-4 encoding, whose header names no window. Only the key ceremony's
/// validation challenge is still bound to it (see [`BoundCiphertext::before_windows`]).
fn digest_before_windows(ciphertext: &Ciphertext) -> CiphertextDigest {
    let mut header = header(Kind::CiphertextTop64);
    header.extend_from_slice(&(ciphertext.value_count() as u64).to_le_bytes());
    header.push(ciphertext.delta_bits() as u8);
    let Ok(digest) = stream_after(&header, ciphertext, |_| {
        Ok::<_, std::convert::Infallible>(())
    });
    digest
}

/// A ciphertext's masks and bodies after `header`, hashed with it piece by piece.
fn stream_after<E>(
    header: &[u8],
    ciphertext: &Ciphertext,
    mut emit: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<CiphertextDigest, E> {
    let mut hasher = EncodingHasher::new();
    let mut piece = |bytes: &[u8]| {
        hasher.update(bytes);
        emit(bytes)
    };
    let shape = ciphertext.shape();
    piece(header)?;
    let mut buffer = Vec::with_capacity(64 * 1024);
    for chunk in ciphertext.masks().chunks(4096) {
        buffer.clear();
        put_masks(&mut buffer, chunk);
        piece(&buffer)?;
    }
    for chunk in ciphertext.bodies().chunks(8192) {
        buffer.clear();
        put_bodies(&mut buffer, chunk, shape.body_window);
        piece(&buffer)?;
    }
    Ok(CiphertextDigest(hasher.finalize()))
}

/// The digest of a ciphertext's masks alone. A partial decryption depends on the masks only
/// (the bodies never meet the key), so a member's ledger refuses a second release for one mask
/// digest, whatever the bodies: two partials of one mask would average their smudging down.
///
/// Under a key of several secrets the digest also names their number: the same masks with
/// another number of secrets would be multiplied by other secrets' shares, or by the same ones
/// for other bins.
pub fn mask_digest(ciphertext: &Ciphertext) -> [u8; 32] {
    let mut hasher = Sha256::new();
    if ciphertext.secrets() == 1 {
        hasher.update(b"quorate/ciphertext-masks/v1\0");
    } else {
        hasher.update(b"quorate/ciphertext-masks/v2\0");
        hasher.update([ciphertext.secrets() as u8]);
    }
    hasher.update((ciphertext.value_count() as u64).to_le_bytes());
    let mut buffer = Vec::with_capacity(64 * 1024);
    for chunk in ciphertext.masks().chunks(4096) {
        buffer.clear();
        put_masks(&mut buffer, chunk);
        hasher.update(&buffer);
    }
    hasher.finalize().into()
}

/// The digest of an encoded ciphertext (equal to [`ciphertext_digest`] of the decoded one
/// where it is of the kind written now): BLAKE3 or, for kinds 7 and 8, SHA-256.
pub fn encoded_digest(bytes: &[u8]) -> CiphertextDigest {
    CiphertextDigest(encoding_digest(bytes))
}

/// A ciphertext together with the digest of its encoding, which partial decryptions are bound
/// to. Built only by hashing, so the digest always belongs to the ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundCiphertext {
    ciphertext: Ciphertext,
    digest: CiphertextDigest,
}

impl BoundCiphertext {
    pub fn new(ciphertext: Ciphertext) -> Self {
        let digest = ciphertext_digest(&ciphertext);
        Self { ciphertext, digest }
    }

    /// Hands the ciphertext's encoding to `emit` piece by piece (about 64 KiB each) and binds
    /// it to its digest, hashed on the way: one pass over the encoding for both, and never the
    /// whole encoding in memory beside the ciphertext.
    pub fn streamed(ciphertext: Ciphertext, mut emit: impl FnMut(&[u8])) -> Self {
        let Ok(digest) = stream_ciphertext(&ciphertext, |piece| {
            emit(piece);
            Ok::<_, std::convert::Infallible>(())
        });
        Self { ciphertext, digest }
    }

    /// A ciphertext with all the top 64 bits of its bodies, bound to the digest its encoding
    /// had before body windows (kind 4). The key ceremony's validation challenge is made this
    /// way: it is never sent, and transcripts made before windows hold partials bound to that
    /// digest, so they still verify.
    pub fn before_windows(ciphertext: Ciphertext) -> Result<Self, HeError> {
        // Kind 4 names no number of secrets: only a ciphertext under one has that digest.
        if ciphertext.secrets() != 1 {
            return Err(HeError::Mismatch(format!(
                "only a ciphertext under a key of one secret has a digest from before body \
                 windows, not one under {}",
                ciphertext.secrets()
            )));
        }
        if ciphertext.body_window() != Window::TOP_64 {
            return Err(HeError::Mismatch(format!(
                "only a ciphertext with 64-bit bodies has a digest from before body windows, not \
                 one with bodies in {}",
                ciphertext.body_window()
            )));
        }
        let digest = digest_before_windows(&ciphertext);
        Ok(Self { ciphertext, digest })
    }

    /// Decodes an encoded ciphertext and binds it to the digest of exactly these bytes.
    pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<Self, WireError> {
        let ciphertext = decode_ciphertext(bytes, limits)?;
        Ok(Self {
            ciphertext,
            digest: encoded_digest(bytes),
        })
    }

    pub fn ciphertext(&self) -> &Ciphertext {
        &self.ciphertext
    }

    /// For a ciphertext decoded from an encoding already hashed to `digest`: encodings are
    /// canonical, so that is the digest of the ciphertext too.
    pub(crate) fn checked(ciphertext: Ciphertext, digest: CiphertextDigest) -> Self {
        Self { ciphertext, digest }
    }

    pub fn digest(&self) -> CiphertextDigest {
        self.digest
    }

    pub fn into_ciphertext(self) -> Ciphertext {
        self.ciphertext
    }
}

/// A validated, borrowed view of an encoded ciphertext: aggregation reads it in place.
#[derive(Clone, Copy, Debug)]
pub struct CiphertextView<'a> {
    shape: CiphertextShape,
    masks: &'a [u8],
    bodies: &'a [u8],
}

/// Bytes of the header of a ciphertext under a key of `secrets` secrets: the common header,
/// the value count, the message scale and the body window, and under several secrets their
/// number. Reading this many bytes of a ciphertext under another number is safe: its header
/// decodes to another shape, or not at all.
pub fn ciphertext_header_len(secrets: usize) -> usize {
    ciphertext_header(CiphertextShape {
        values: 0,
        delta_bits: 1,
        body_window: Window::TOP_64,
        secrets,
    })
    .len()
}

/// A ciphertext header's shape, checked against `limits`; the header must be all of
/// `bytes`'s first [`ciphertext_header_len`] bytes.
pub fn decode_ciphertext_header(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<CiphertextShape, WireError> {
    read_ciphertext_header(&mut WireReader::new(bytes), limits)
}

fn read_ciphertext_header(
    reader: &mut WireReader<'_>,
    limits: DecodeLimits,
) -> Result<CiphertextShape, WireError> {
    let kind = reader.header_of(&[
        Kind::Ciphertext,
        Kind::CiphertextUnderSecrets,
        Kind::CiphertextSha256,
        Kind::CiphertextUnderSecretsSha256,
        Kind::CiphertextTop64,
    ])?;
    if kind == Kind::CiphertextTop64 {
        return Err(WireError::Invalid {
            field: "kind",
            reason: "a ciphertext with 64-bit bodies, written before body windows: it adds up \
                     only with ciphertexts of the build that wrote it"
                .into(),
        });
    }
    let value_count = read_value_count(reader, limits)?;
    let delta_bits = u32::from(reader.u8("message scale")?);
    if !(1..128).contains(&delta_bits) {
        return Err(WireError::Invalid {
            field: "message scale",
            reason: format!("2^{delta_bits} is impossible"),
        });
    }
    let dropped = reader.u8("body window bottom")?;
    let bytes = reader.u8("body window bytes")?;
    let body_window = Window::new(dropped, bytes).map_err(|e| WireError::Invalid {
        field: "body window",
        reason: e.to_string(),
    })?;
    let secrets =
        if kind == Kind::CiphertextUnderSecrets || kind == Kind::CiphertextUnderSecretsSha256 {
            let secrets = usize::from(reader.u8("secrets")?);
            // One secret has its own kind, so that each ciphertext has one encoding.
            if !(2..=MAX_SECRETS).contains(&secrets) {
                return Err(WireError::Invalid {
                    field: "secrets",
                    reason: format!(
                        "{secrets}, but this kind is for keys of 2 to {MAX_SECRETS} secrets"
                    ),
                });
            }
            secrets
        } else {
            1
        };
    Ok(CiphertextShape {
        values: value_count as usize,
        delta_bits,
        body_window,
        secrets,
    })
}

pub fn decode_ciphertext_view(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<CiphertextView<'_>, WireError> {
    let mut reader = WireReader::new(bytes);
    let shape = read_ciphertext_header(&mut reader, limits)?;
    let mask_bytes = shape.mask_words() * MASK_WIRE_BYTES;
    let body_bytes = shape.values * shape.body_window.bytes();
    reader.expect_remaining((mask_bytes + body_bytes) as u64)?;
    let masks = reader.take("masks", mask_bytes)?;
    let bodies = reader.take("bodies", body_bytes)?;
    Ok(CiphertextView {
        shape,
        masks,
        bodies,
    })
}

pub fn decode_ciphertext(bytes: &[u8], limits: DecodeLimits) -> Result<Ciphertext, WireError> {
    decode_ciphertext_view(bytes, limits)?.to_ciphertext()
}

#[inline(always)]
fn read_mask(bytes: &[u8]) -> u128 {
    let mut word = [0u8; 16];
    word[16 - MASK_WIRE_BYTES..].copy_from_slice(&bytes[..MASK_WIRE_BYTES]);
    u128::from_le_bytes(word)
}

/// out[i] += weight * the i-th mask coefficient encoded in `bytes` (mod 2^128): the one
/// multiply-add every aggregation runs, from whole encodings or from pieces.
#[inline]
pub(crate) fn add_masks(out: &mut [u128], bytes: &[u8], weight: i64) {
    let w = weight as i128 as u128;
    for (acc, coefficient) in out.iter_mut().zip(bytes.chunks_exact(MASK_WIRE_BYTES)) {
        *acc = acc.wrapping_add(read_mask(coefficient).wrapping_mul(w));
    }
}

/// out[i] += weight * the i-th body encoded in `bytes` in `window` (mod 2^64, in the top 64
/// bits): the one body addition every aggregation runs.
#[inline]
pub(crate) fn add_bodies(out: &mut [u64], bytes: &[u8], weight: i64, window: Window) {
    let shift = u32::from(window.dropped_bits()) - 64;
    with_width!(window.bytes(), N => add_bodies_of::<N>(out, bytes, weight as u64, shift))
}

#[inline(always)]
fn add_bodies_of<const N: usize>(out: &mut [u64], bytes: &[u8], weight: u64, shift: u32) {
    for (acc, body) in out.iter_mut().zip(bytes.chunks_exact(N)) {
        let mut word = [0u8; 8];
        word[..N].copy_from_slice(body);
        *acc = acc.wrapping_add((u64::from_le_bytes(word) << shift).wrapping_mul(weight));
    }
}

impl CiphertextView<'_> {
    pub fn value_count(&self) -> usize {
        self.shape.values
    }

    pub fn delta_bits(&self) -> u32 {
        self.shape.delta_bits
    }

    pub fn shape(&self) -> CiphertextShape {
        self.shape
    }

    pub fn to_ciphertext(&self) -> Result<Ciphertext, WireError> {
        let masks = self
            .masks
            .chunks_exact(MASK_WIRE_BYTES)
            .map(read_mask)
            .collect();
        let window = self.shape.body_window;
        let bodies = self
            .bodies
            .chunks_exact(window.bytes())
            .map(|body| window.to_top(window.read(body)))
            .collect();
        Ok(Ciphertext::from_parts(self.shape, masks, bodies)?)
    }

    /// acc += weight * self, read straight from the encoded bytes.
    pub fn add_weighted_into(&self, acc: &mut Ciphertext, weight: i64) -> Result<(), HeError> {
        Self::accumulate(acc, &[(*self, weight)])
    }

    /// The weighted sum of encoded ciphertexts, block by block so that the accumulator stays
    /// in cache while each input streams through once.
    pub fn weighted_sum(terms: &[(CiphertextView<'_>, i64)]) -> Result<Ciphertext, HeError> {
        let first = terms
            .first()
            .ok_or_else(|| HeError::Mismatch("a weighted sum needs at least one term".into()))?;
        let mut acc = Ciphertext::zero(first.0.shape);
        Self::accumulate(&mut acc, terms)?;
        Ok(acc)
    }

    fn accumulate(
        acc: &mut Ciphertext,
        terms: &[(CiphertextView<'_>, i64)],
    ) -> Result<(), HeError> {
        use rayon::prelude::*;
        for (term, _) in terms {
            acc.check_same_shape(term.shape)?;
        }
        const BLOCK: usize = 4096;
        let (masks, bodies) = acc.parts_mut();
        masks
            .par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(block, out)| {
                let start = block * BLOCK;
                for (term, weight) in terms {
                    let bytes =
                        &term.masks[start * MASK_WIRE_BYTES..(start + out.len()) * MASK_WIRE_BYTES];
                    add_masks(out, bytes, *weight);
                }
            });
        bodies
            .par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(block, out)| {
                let start = block * BLOCK;
                for (term, weight) in terms {
                    let width = term.shape.body_window.bytes();
                    let bytes = &term.bodies[start * width..(start + out.len()) * width];
                    add_bodies(out, bytes, *weight, term.shape.body_window);
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every width a body window can take: what is put reads back, and the addition from
    /// encoded bytes is the word-wise one, whatever the sum carried above the top.
    #[test]
    fn bodies_of_every_width_put_read_back_and_add_as_words() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for bytes in 1..=8u8 {
            for bottom in [64u8, 65, 77, 128 - 8 * bytes] {
                let Ok(window) = Window::new(bottom, bytes) else {
                    continue;
                };
                let bodies: Vec<u64> = (0..37)
                    .map(|_| window.to_top(window.of_top(next())))
                    .collect();
                let mut encoded = Vec::new();
                put_bodies(&mut encoded, &bodies, window);
                assert_eq!(encoded.len(), bodies.len() * usize::from(bytes));
                let read: Vec<u64> = encoded
                    .chunks_exact(usize::from(bytes))
                    .map(|b| window.to_top(window.read(b)))
                    .collect();
                assert_eq!(read, bodies, "{window:?}");
                let start: Vec<u64> = (0..37).map(|_| next()).collect();
                let mut sum = start.clone();
                add_bodies(&mut sum, &encoded, -1234, window);
                for ((s, a), b) in sum.iter().zip(&start).zip(&bodies) {
                    assert_eq!(
                        *s,
                        a.wrapping_add(b.wrapping_mul(-1234i64 as u64)),
                        "{window:?}"
                    );
                }
            }
        }
    }
}
