//! Versioned binary encodings of every key, ciphertext and partial decryption.
//!
//! Every encoding starts with the same header: the magic `QRAT`, a format version, a kind byte
//! and the parameter-set id. Integers are little-endian. Decoders reject an unknown version,
//! kind or parameter set, check every declared count against a limit and the exact input length
//! *before* allocating, and reject trailing bytes, so each object has exactly one encoding of
//! each kind, and is written in one kind only (a ciphertext or partial decryption read from a
//! kind bound by SHA-256, 6, 7 or 8, is written again as 11, 9 or 10: see [`digest`]).

mod ciphertext;
pub mod digest;
mod partial;
pub use ciphertext::{
    BoundCiphertext, CiphertextView, ciphertext_digest, ciphertext_encoded_len,
    ciphertext_header_len, decode_ciphertext, decode_ciphertext_header, decode_ciphertext_view,
    encode_ciphertext, encoded_digest, mask_digest, stream_ciphertext,
};
pub(crate) use ciphertext::{add_bodies, add_masks};
pub(crate) use partial::encode_partial_header;
pub use partial::{
    PartialHeader, PartialView, decode_partial_decryption, decode_partial_header,
    decode_partial_view, encode_partial_decryption,
};

use zeroize::Zeroizing;

use crate::bytes::{ReadError, Reader};
use crate::he::{
    HeError, KeyShare, MAX_SECRETS, MAX_VALUES, POLYNOMIAL_SIZE, PublicKey, PublicKeyContribution,
    QUORATE_RLWE128_V1, Subset, Subshare, ThresholdConfig,
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
    /// A ciphertext whose bodies are their top 64 bits, as every ciphertext was before body
    /// windows. Never written, and refused with a reason: its bodies are rounded at bit 64,
    /// where the budget's window rounds them higher, so it adds up with no ciphertext of a
    /// later build.
    CiphertextTop64 = 4,
    /// A partial decryption of the top 64 bits of every value, as every partial was before
    /// windows: still read (as the window `Window::TOP_64`), so that a ceremony transcript
    /// made before windows still verifies. Never written.
    PartialDecryptionTop64 = 5,
    /// A partial decryption that names its window, bound by SHA-256 as every partial was
    /// before kind 11: still read (a partial released before keeps its logged digest), never
    /// written.
    PartialDecryptionSha256 = 6,
    /// A ciphertext that names its body window, under a key of one secret, bound by SHA-256
    /// as every ciphertext was before kind 9: still read (a model stored or held from then
    /// keeps its logged digest), never written.
    CiphertextSha256 = 7,
    /// Kind 8 is to kind 10 what kind 7 is to kind 9.
    CiphertextUnderSecretsSha256 = 8,
    /// A ciphertext that names its body window, under a key of one secret; kind 7's layout,
    /// bound by BLAKE3 (see [`digest`]).
    Ciphertext = 9,
    /// A ciphertext under a key of several secrets: kind 9's header, then the number of
    /// secrets (2 to `MAX_SECRETS`), which fixes how many masks there are.
    CiphertextUnderSecrets = 10,
    /// A partial decryption that names its window; kind 6's layout, bound by BLAKE3.
    PartialDecryption = 11,
}

/// Where the kind byte sits in every encoding: after the magic and the format version.
pub(crate) const KIND_OFFSET: usize = MAGIC.len() + 1;

impl Kind {
    /// Read for what earlier builds stored, logged or transcribed, and never written now.
    fn written_before(self) -> bool {
        matches!(
            self,
            Kind::CiphertextTop64
                | Kind::PartialDecryptionTop64
                | Kind::PartialDecryptionSha256
                | Kind::CiphertextSha256
                | Kind::CiphertextUnderSecretsSha256
        )
    }

    /// Ciphertexts and partial decryptions of the kinds written now are bound by BLAKE3
    /// ([`digest`]); every other encoding by SHA-256.
    pub(crate) fn bound_by_blake3(self) -> bool {
        matches!(
            self,
            Kind::Ciphertext | Kind::CiphertextUnderSecrets | Kind::PartialDecryption
        )
    }

    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Kind::PublicKeyContribution,
            2 => Kind::PublicKey,
            3 => Kind::KeyShare,
            4 => Kind::CiphertextTop64,
            5 => Kind::PartialDecryptionTop64,
            6 => Kind::PartialDecryptionSha256,
            7 => Kind::CiphertextSha256,
            8 => Kind::CiphertextUnderSecretsSha256,
            9 => Kind::Ciphertext,
            10 => Kind::CiphertextUnderSecrets,
            11 => Kind::PartialDecryption,
            _ => return None,
        })
    }
}

/// The kind of an encoding (or of its header) if it is one this build reads but no longer
/// writes (before body windows, or bound by SHA-256 before BLAKE3); `None` for any other
/// bytes.
pub fn kind_written_before(encoding: &[u8]) -> Option<u8> {
    let byte = *encoding.get(KIND_OFFSET)?;
    let kind = Kind::from_byte(byte)?;
    (encoding.starts_with(&MAGIC) && kind.written_before()).then_some(byte)
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

    fn remaining(&self) -> usize {
        self.inner.remaining()
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

/// Reads `secrets` polynomials of N coefficients, end to end.
fn read_polynomials(
    reader: &mut WireReader<'_>,
    field: &'static str,
    secrets: usize,
) -> Result<Vec<u128>, WireError> {
    let bytes = reader.take(field, secrets * POLYNOMIAL_SIZE * 16)?;
    Ok(bytes
        .chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
        .collect())
}

/// The number of secrets of key material whose `per` runs of polynomials, each run after
/// `fixed` bytes of other fields, fill the `remaining` bytes: the length decides it, so keys
/// of one secret keep the encoding they always had.
fn secrets_from_length(remaining: usize, fixed: usize, per: usize) -> Result<usize, WireError> {
    let run = POLYNOMIAL_SIZE * 16;
    let invalid = || WireError::Invalid {
        field: "length",
        reason: format!(
            "{remaining} bytes after the header hold no whole number of 1 to {MAX_SECRETS} \
             secrets"
        ),
    };
    let per = per.max(1);
    if !remaining.is_multiple_of(per) {
        return Err(invalid());
    }
    let polynomials = (remaining / per).checked_sub(fixed).ok_or_else(invalid)?;
    let secrets = polynomials / run;
    if !polynomials.is_multiple_of(run) || !(1..=MAX_SECRETS).contains(&secrets) {
        return Err(invalid());
    }
    Ok(secrets)
}

pub fn encode_public_key_contribution(contribution: &PublicKeyContribution) -> Vec<u8> {
    let mut out = header(Kind::PublicKeyContribution);
    out.push(contribution.party);
    out.extend_from_slice(&contribution.mask_seed.to_le_bytes());
    put_u128s(&mut out, &contribution.body);
    out
}

/// Decodes a contribution to a key of `secrets` secrets, and refuses one of any other number
/// (a ceremony fixes the number before anyone contributes); with `None`, of any number the
/// scheme allows, read from the length.
pub fn decode_public_key_contribution(
    bytes: &[u8],
    secrets: Option<usize>,
) -> Result<PublicKeyContribution, WireError> {
    let mut reader = WireReader::new(bytes);
    reader.header(Kind::PublicKeyContribution)?;
    let secrets = match secrets {
        Some(secrets) => {
            crate::he::check_secrets(secrets)?;
            secrets
        }
        None => secrets_from_length(reader.remaining(), 1 + 16, 1)?,
    };
    reader.expect_remaining(1 + 16 + (secrets * POLYNOMIAL_SIZE) as u64 * 16)?;
    let party = reader.u8("party")?;
    let mask_seed = reader.u128("mask seed")?;
    let body = read_polynomials(&mut reader, "public key body", secrets)?;
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
    let secrets = secrets_from_length(reader.remaining(), 16, 1)?;
    let mask_seed = reader.u128("mask seed")?;
    let body = read_polynomials(&mut reader, "public key body", secrets)?;
    reader.finish()?;
    Ok(PublicKey { mask_seed, body })
}

/// The plaintext encoding of a key share, to be sealed before it touches a disk. The buffer is
/// allocated once at its final size, so no reallocation leaves share bytes behind.
pub fn encode_key_share(share: &KeyShare) -> Zeroizing<Vec<u8>> {
    let head = header(Kind::KeyShare);
    let size =
        head.len() + 5 + share.subshares().len() * (2 + share.secrets() * POLYNOMIAL_SIZE * 16);
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
    let secrets = secrets_from_length(reader.remaining(), 2, usize::from(count))?;
    let mut subshares = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let subset = Subset(reader.u16("subset")?);
        let coefficients = read_polynomials(&mut reader, "subshare", secrets)?;
        subshares.push(Subshare::from_coefficients(subset, coefficients)?);
    }
    reader.finish()?;
    Ok(KeyShare::from_parts(config, party, subshares)?)
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
