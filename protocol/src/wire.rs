//! Versioned binary encodings of every key, ciphertext and partial decryption.
//!
//! Every encoding starts with the same header: the magic `QRAT`, a format version, a kind byte
//! and the parameter-set id. Integers are little-endian. Decoders reject an unknown version,
//! kind or parameter set, check every declared count against a limit and the exact input length
//! *before* allocating, and reject trailing bytes, so each object has exactly one encoding.

mod partial;
pub(crate) use partial::encode_partial_header;
pub use partial::{
    PartialHeader, PartialView, decode_partial_decryption, decode_partial_header,
    decode_partial_view, encode_partial_decryption,
};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::bytes::{ReadError, Reader};
use crate::he::{
    Ciphertext, CiphertextDigest, HeError, KeyShare, MAX_VALUES, POLYNOMIAL_SIZE, PublicKey,
    PublicKeyContribution, QUORATE_RLWE128_V1, Subset, Subshare, ThresholdConfig,
};

pub const MAGIC: [u8; 4] = *b"QRAT";
pub const FORMAT_VERSION: u8 = 1;

/// Bytes of one ciphertext mask coefficient on the wire: its top 120 bits (the encryptor
/// rounded the low 8 away).
pub const MASK_WIRE_BYTES: usize = 15;

/// What an encoding holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    PublicKeyContribution = 1,
    PublicKey = 2,
    KeyShare = 3,
    Ciphertext = 4,
    /// A partial decryption of the top 64 bits of every value, as every partial was before
    /// windows: still read (as the window `ShareWindow::TOP_64`), so that a partial released
    /// before an upgrade, or a ceremony transcript made before it, still combines. Never
    /// written.
    PartialDecryptionTop64 = 5,
    /// A partial decryption that names its window.
    PartialDecryption = 6,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Kind::PublicKeyContribution,
            2 => Kind::PublicKey,
            3 => Kind::KeyShare,
            4 => Kind::Ciphertext,
            5 => Kind::PartialDecryptionTop64,
            6 => Kind::PartialDecryption,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not a Quorate object (bad magic bytes)")]
    BadMagic,
    #[error("format version {0} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    #[error("expected a {expected:?}, found kind byte {found}")]
    WrongKind { expected: Kind, found: u8 },
    #[error("parameter set {0:?} is not supported (this build uses quorate-rlwe128-v1)")]
    UnknownParameterSet(String),
    #[error("input truncated: {field} needs {needed} bytes, {available} left")]
    Truncated {
        field: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{field} = {value} exceeds the limit of {limit}")]
    TooLarge {
        field: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("input has the wrong length for its header: expected {expected} bytes, got {actual}")]
    WrongLength { expected: u64, actual: u64 },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl From<HeError> for WireError {
    fn from(err: HeError) -> Self {
        WireError::Invalid {
            field: "content",
            reason: err.to_string(),
        }
    }
}

/// Limits a decoder enforces before allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_values: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_values: MAX_VALUES,
        }
    }
}

fn header(kind: Kind) -> Vec<u8> {
    let id = QUORATE_RLWE128_V1.id.as_bytes();
    let mut out = Vec::with_capacity(7 + id.len());
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind as u8);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out
}

impl From<ReadError> for WireError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Truncated {
                field,
                needed,
                available,
            } => WireError::Truncated {
                field,
                needed,
                available,
            },
            ReadError::TooLarge {
                field,
                value,
                limit,
            } => WireError::TooLarge {
                field,
                value,
                limit,
            },
            ReadError::Invalid { field, reason } => WireError::Invalid { field, reason },
        }
    }
}

/// The shared reader plus the checks every Quorate encoding starts with.
struct WireReader<'a> {
    inner: Reader<'a>,
}

impl<'a> WireReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            inner: Reader::new(bytes),
        }
    }

    fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], WireError> {
        Ok(self.inner.take(field, len)?)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.inner.u8(field)?)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(self.inner.u16(field)?)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(self.inner.u64(field)?)
    }

    fn u128(&mut self, field: &'static str) -> Result<u128, WireError> {
        Ok(self.inner.u128(field)?)
    }

    fn header(&mut self, expected: Kind) -> Result<(), WireError> {
        self.header_of(&[expected]).map(|_| ())
    }

    /// The header of any of `expected` kinds (the first is named if none is found), and the
    /// kind found.
    fn header_of(&mut self, expected: &[Kind]) -> Result<Kind, WireError> {
        if self.take("magic", 4).map_err(|_| WireError::BadMagic)? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = self.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let byte = self.u8("kind")?;
        let Some(kind) = Kind::from_byte(byte).filter(|kind| expected.contains(kind)) else {
            return Err(WireError::WrongKind {
                expected: expected[0],
                found: byte,
            });
        };
        let id_len = self.u8("parameter set id length")?;
        let id = self.take("parameter set id", usize::from(id_len))?;
        if id != QUORATE_RLWE128_V1.id.as_bytes() {
            return Err(WireError::UnknownParameterSet(
                String::from_utf8_lossy(id).into_owned(),
            ));
        }
        Ok(kind)
    }

    /// Requires the rest of the input to be exactly `expected` bytes, checked before the
    /// caller allocates anything of that size.
    fn expect_remaining(&self, expected: u64) -> Result<(), WireError> {
        let actual = self.inner.remaining() as u64;
        if actual != expected {
            return Err(WireError::WrongLength { expected, actual });
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), WireError> {
        self.expect_remaining(0)
    }
}

fn put_u128s(out: &mut Vec<u8>, values: &[u128]) {
    out.reserve(values.len() * 16);
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn read_polynomial(
    reader: &mut WireReader<'_>,
    field: &'static str,
) -> Result<Vec<u128>, WireError> {
    let bytes = reader.take(field, POLYNOMIAL_SIZE * 16)?;
    Ok(bytes
        .chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
        .collect())
}

pub fn encode_public_key_contribution(contribution: &PublicKeyContribution) -> Vec<u8> {
    let mut out = header(Kind::PublicKeyContribution);
    out.push(contribution.party);
    out.extend_from_slice(&contribution.mask_seed.to_le_bytes());
    put_u128s(&mut out, &contribution.body);
    out
}

pub fn decode_public_key_contribution(bytes: &[u8]) -> Result<PublicKeyContribution, WireError> {
    let mut reader = WireReader::new(bytes);
    reader.header(Kind::PublicKeyContribution)?;
    reader.expect_remaining(1 + 16 + POLYNOMIAL_SIZE as u64 * 16)?;
    let party = reader.u8("party")?;
    let mask_seed = reader.u128("mask seed")?;
    let body = read_polynomial(&mut reader, "public key body")?;
    reader.finish()?;
    Ok(PublicKeyContribution {
        party,
        mask_seed,
        body,
    })
}

pub fn encode_public_key(key: &PublicKey) -> Vec<u8> {
    let mut out = header(Kind::PublicKey);
    out.extend_from_slice(&key.mask_seed.to_le_bytes());
    put_u128s(&mut out, &key.body);
    out
}

pub fn decode_public_key(bytes: &[u8]) -> Result<PublicKey, WireError> {
    let mut reader = WireReader::new(bytes);
    reader.header(Kind::PublicKey)?;
    reader.expect_remaining(16 + POLYNOMIAL_SIZE as u64 * 16)?;
    let mask_seed = reader.u128("mask seed")?;
    let body = read_polynomial(&mut reader, "public key body")?;
    reader.finish()?;
    Ok(PublicKey { mask_seed, body })
}

/// The plaintext encoding of a key share, to be sealed before it touches a disk. The buffer is
/// allocated once at its final size, so no reallocation leaves share bytes behind.
pub fn encode_key_share(share: &KeyShare) -> Zeroizing<Vec<u8>> {
    let head = header(Kind::KeyShare);
    let size = head.len() + 5 + share.subshares().len() * (2 + POLYNOMIAL_SIZE * 16);
    let mut out = Zeroizing::new(Vec::with_capacity(size));
    out.extend_from_slice(&head);
    out.push(share.config().parties());
    out.push(share.config().threshold());
    out.push(share.party());
    out.extend_from_slice(&(share.subshares().len() as u16).to_le_bytes());
    for subshare in share.subshares() {
        out.extend_from_slice(&subshare.subset.0.to_le_bytes());
        for value in subshare.coefficients() {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    out
}

pub fn decode_key_share(bytes: &[u8]) -> Result<KeyShare, WireError> {
    let mut reader = WireReader::new(bytes);
    reader.header(Kind::KeyShare)?;
    let parties = reader.u8("parties")?;
    let threshold = reader.u8("threshold")?;
    let config = ThresholdConfig::new(parties, threshold)?;
    let party = reader.u8("party")?;
    let count = reader.u16("subshare count")?;
    let expected = config
        .subsets_held_by(party.min(parties.saturating_sub(1)))
        .len();
    if usize::from(count) != expected {
        return Err(WireError::Invalid {
            field: "subshare count",
            reason: format!("{count}, but a {threshold}-of-{parties} member holds {expected}"),
        });
    }
    reader.expect_remaining(u64::from(count) * (2 + POLYNOMIAL_SIZE as u64 * 16))?;
    let mut subshares = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let subset = Subset(reader.u16("subset")?);
        let coefficients = read_polynomial(&mut reader, "subshare")?;
        subshares.push(Subshare::from_coefficients(subset, coefficients)?);
    }
    reader.finish()?;
    Ok(KeyShare::from_parts(config, party, subshares)?)
}

fn ciphertext_header(value_count: usize, delta_bits: u32) -> Vec<u8> {
    let mut out = header(Kind::Ciphertext);
    out.extend_from_slice(&(value_count as u64).to_le_bytes());
    out.push(delta_bits as u8);
    out
}

fn put_masks(out: &mut Vec<u8>, masks: &[u128]) {
    out.reserve(masks.len() * MASK_WIRE_BYTES);
    for mask in masks {
        out.extend_from_slice(&mask.to_le_bytes()[16 - MASK_WIRE_BYTES..]);
    }
}

pub fn encode_ciphertext(ciphertext: &Ciphertext) -> Vec<u8> {
    let mut out = ciphertext_header(ciphertext.value_count(), ciphertext.delta_bits());
    out.reserve(ciphertext.masks().len() * MASK_WIRE_BYTES + ciphertext.bodies().len() * 8);
    put_masks(&mut out, ciphertext.masks());
    for body in ciphertext.bodies() {
        out.extend_from_slice(&body.to_le_bytes());
    }
    out
}

/// The length of the encoding of a ciphertext of `value_count` values.
pub fn ciphertext_encoded_len(value_count: usize) -> usize {
    let bins = value_count.div_ceil(POLYNOMIAL_SIZE);
    ciphertext_header(value_count, 1).len()
        + bins * POLYNOMIAL_SIZE * MASK_WIRE_BYTES
        + value_count * 8
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
    mut emit: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<CiphertextDigest, E> {
    let mut hasher = Sha256::new();
    let mut piece = |bytes: &[u8]| {
        hasher.update(bytes);
        emit(bytes)
    };
    piece(&ciphertext_header(
        ciphertext.value_count(),
        ciphertext.delta_bits(),
    ))?;
    let mut buffer = Vec::with_capacity(64 * 1024);
    for chunk in ciphertext.masks().chunks(4096) {
        buffer.clear();
        put_masks(&mut buffer, chunk);
        piece(&buffer)?;
    }
    for chunk in ciphertext.bodies().chunks(8192) {
        buffer.clear();
        for body in chunk {
            buffer.extend_from_slice(&body.to_le_bytes());
        }
        piece(&buffer)?;
    }
    Ok(CiphertextDigest(hasher.finalize().into()))
}

/// The digest of a ciphertext's masks alone. A partial decryption depends on the masks only
/// (the bodies never meet the key), so a member's ledger refuses a second release for one mask
/// digest, whatever the bodies: two partials of one mask would average their smudging down.
pub fn mask_digest(ciphertext: &Ciphertext) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"quorate/ciphertext-masks/v1\0");
    hasher.update((ciphertext.value_count() as u64).to_le_bytes());
    let mut buffer = Vec::with_capacity(64 * 1024);
    for chunk in ciphertext.masks().chunks(4096) {
        buffer.clear();
        put_masks(&mut buffer, chunk);
        hasher.update(&buffer);
    }
    hasher.finalize().into()
}

/// The digest of an encoded ciphertext (equal to [`ciphertext_digest`] of the decoded one).
pub fn encoded_digest(bytes: &[u8]) -> CiphertextDigest {
    CiphertextDigest(Sha256::digest(bytes).into())
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
    value_count: usize,
    delta_bits: u32,
    masks: &'a [u8],
    bodies: &'a [u8],
}

/// Bytes of a ciphertext's header: the common header, the value count and the message scale.
pub fn ciphertext_header_len() -> usize {
    ciphertext_header(0, 1).len()
}

/// A ciphertext header's value count and message scale, checked against `limits`; the
/// header must be all of `bytes`'s first [`ciphertext_header_len`] bytes.
pub fn decode_ciphertext_header(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<(usize, u32), WireError> {
    let mut reader = WireReader::new(bytes);
    let (value_count, delta_bits) = read_ciphertext_header(&mut reader, limits)?;
    Ok((value_count as usize, delta_bits))
}

/// A declared value count, refused past the limits before anything is allocated for it.
fn read_value_count(reader: &mut WireReader<'_>, limits: DecodeLimits) -> Result<u64, WireError> {
    let value_count = reader.u64("value count")?;
    let limit = limits.max_values.min(MAX_VALUES);
    if value_count > limit {
        return Err(WireError::TooLarge {
            field: "value count",
            value: value_count,
            limit,
        });
    }
    Ok(value_count)
}

fn read_ciphertext_header(
    reader: &mut WireReader<'_>,
    limits: DecodeLimits,
) -> Result<(u64, u32), WireError> {
    reader.header(Kind::Ciphertext)?;
    let value_count = read_value_count(reader, limits)?;
    let delta_bits = u32::from(reader.u8("message scale")?);
    if !(1..128).contains(&delta_bits) {
        return Err(WireError::Invalid {
            field: "message scale",
            reason: format!("2^{delta_bits} is impossible"),
        });
    }
    Ok((value_count, delta_bits))
}

pub fn decode_ciphertext_view(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<CiphertextView<'_>, WireError> {
    let mut reader = WireReader::new(bytes);
    let (value_count, delta_bits) = read_ciphertext_header(&mut reader, limits)?;
    let bins = value_count.div_ceil(POLYNOMIAL_SIZE as u64);
    let mask_bytes = bins * POLYNOMIAL_SIZE as u64 * MASK_WIRE_BYTES as u64;
    reader.expect_remaining(mask_bytes + value_count * 8)?;
    let masks = reader.take("masks", mask_bytes as usize)?;
    let bodies = reader.take("bodies", value_count as usize * 8)?;
    Ok(CiphertextView {
        value_count: value_count as usize,
        delta_bits,
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

/// out[i] += weight * the i-th body encoded in `bytes` (mod 2^64).
#[inline]
pub(crate) fn add_bodies(out: &mut [u64], bytes: &[u8], weight: i64) {
    let w = weight as u64;
    for (acc, body) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let value = u64::from_le_bytes(body.try_into().expect("8 bytes"));
        *acc = acc.wrapping_add(value.wrapping_mul(w));
    }
}

#[inline]
fn body_at(bytes: &[u8], index: usize) -> u64 {
    u64::from_le_bytes(bytes[index * 8..index * 8 + 8].try_into().expect("8 bytes"))
}

impl CiphertextView<'_> {
    pub fn value_count(&self) -> usize {
        self.value_count
    }

    pub fn delta_bits(&self) -> u32 {
        self.delta_bits
    }

    pub fn to_ciphertext(&self) -> Result<Ciphertext, WireError> {
        let masks = self
            .masks
            .chunks_exact(MASK_WIRE_BYTES)
            .map(read_mask)
            .collect();
        let bodies = (0..self.value_count)
            .map(|i| body_at(self.bodies, i))
            .collect();
        Ok(Ciphertext::from_parts(
            self.value_count,
            self.delta_bits,
            masks,
            bodies,
        )?)
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
        let mut acc = Ciphertext::zero(first.0.value_count, first.0.delta_bits);
        Self::accumulate(&mut acc, terms)?;
        Ok(acc)
    }

    fn accumulate(
        acc: &mut Ciphertext,
        terms: &[(CiphertextView<'_>, i64)],
    ) -> Result<(), HeError> {
        use rayon::prelude::*;
        for (term, _) in terms {
            acc.check_same_shape(term.value_count, term.delta_bits)?;
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
                    let bytes = &term.bodies[start * 8..(start + out.len()) * 8];
                    add_bodies(out, bytes, *weight);
                }
            });
        Ok(())
    }
}
