//! Passphrase-sealed files for key shares and identities: Argon2id derives a key from the
//! passphrase, XChaCha20-Poly1305 encrypts, and the whole header (parameters, salt, nonce and
//! the metadata the loader checks) is authenticated as associated data, so no byte of the
//! file can change without the open failing.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::bytes::{ReadError, Reader, Writer};

const MAGIC: &[u8; 6] = b"QRSEAL";
const VERSION: u8 = 1;
/// Argon2id cost: 64 MiB, 3 passes, 1 lane (the RFC 9106 second recommendation).
const MEMORY_KIB: u32 = 64 * 1024;
const PASSES: u32 = 3;
const LANES: u8 = 1;
/// Bounds on what a file may ask for, so a crafted file cannot make opening it ruinous.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_PASSES: u32 = 16;
const MAX_METADATA: u64 = 4096;
const MAX_PLAINTEXT: usize = 256 * 1024 * 1024;

/// What a sealed file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SealKind {
    Identity = 1,
    KeyShare = 2,
}

impl SealKind {
    fn name(byte: u8) -> &'static str {
        match byte {
            1 => "an identity",
            2 => "a key share",
            _ => "an unknown kind of sealed file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a Quorate sealed file")]
    BadMagic,
    #[error("sealed-file version {0} is not supported")]
    Version(u8),
    #[error("this file holds {found}, not {expected}")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error("the file asks for Argon2 parameters beyond the allowed limits")]
    Parameters,
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("cannot open: the passphrase is wrong, or the file was altered")]
    Open,
    #[error("an empty passphrase is not allowed")]
    EmptyPassphrase,
}

fn derive_key(
    passphrase: &[u8],
    salt: &[u8; 16],
    memory_kib: u32,
    passes: u32,
    lanes: u8,
) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let params = Params::new(memory_kib, passes, u32::from(lanes), Some(32))
        .map_err(|_| SealError::Parameters)?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, key.as_mut())
        .map_err(|_| SealError::Parameters)?;
    Ok(key)
}

/// Seals `plaintext` under `passphrase`. `metadata` stays readable without the passphrase
/// but is authenticated.
pub fn seal<R: RngCore + CryptoRng>(
    kind: SealKind,
    metadata: &[u8],
    plaintext: &[u8],
    passphrase: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    if passphrase.is_empty() {
        return Err(SealError::EmptyPassphrase);
    }
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let mut header = Writer::default();
    header
        .bytes(MAGIC)
        .u8(VERSION)
        .u8(kind as u8)
        .u32(MEMORY_KIB)
        .u32(PASSES)
        .u8(LANES)
        .bytes(&salt)
        .bytes(&nonce)
        .u16(metadata.len() as u16)
        .bytes(metadata);
    let key = derive_key(passphrase, &salt, MEMORY_KIB, PASSES, LANES)?;
    let cipher = XChaCha20Poly1305::new(key.as_ref().into());
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &header.bytes,
            },
        )
        .map_err(|_| SealError::Open)?;
    let mut out = header.bytes;
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

struct Header<'a> {
    kind: u8,
    memory_kib: u32,
    passes: u32,
    lanes: u8,
    salt: [u8; 16],
    nonce: [u8; 24],
    metadata: &'a [u8],
    header_len: usize,
}

fn read_header(bytes: &[u8]) -> Result<Header<'_>, SealError> {
    let mut r = Reader::new(bytes);
    if r.take("magic", MAGIC.len())
        .map_err(|_| SealError::BadMagic)?
        != MAGIC
    {
        return Err(SealError::BadMagic);
    }
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(SealError::Version(version));
    }
    let kind = r.u8("kind")?;
    let memory_kib = r.u32("memory cost")?;
    let passes = r.u32("passes")?;
    let lanes = r.u8("lanes")?;
    if memory_kib > MAX_MEMORY_KIB || passes > MAX_PASSES || lanes == 0 || lanes > 8 {
        return Err(SealError::Parameters);
    }
    let salt = r.array("salt")?;
    let nonce = r.array("nonce")?;
    let metadata_len = r.count("metadata length", 2, MAX_METADATA)?;
    let metadata = r.take("metadata", metadata_len)?;
    if r.remaining() > MAX_PLAINTEXT + 16 {
        return Err(ReadError::TooLarge {
            field: "sealed content",
            value: r.remaining() as u64,
            limit: MAX_PLAINTEXT as u64,
        }
        .into());
    }
    Ok(Header {
        kind,
        memory_kib,
        passes,
        lanes,
        salt,
        nonce,
        metadata,
        header_len: bytes.len() - r.remaining(),
    })
}

/// The metadata of a sealed file, readable without the passphrase (but not yet authenticated).
pub fn peek_metadata(bytes: &[u8], kind: SealKind) -> Result<Vec<u8>, SealError> {
    let header = read_header(bytes)?;
    if header.kind != kind as u8 {
        return Err(SealError::WrongKind {
            expected: SealKind::name(kind as u8),
            found: SealKind::name(header.kind),
        });
    }
    Ok(header.metadata.to_vec())
}

/// Opens a sealed file: returns its authenticated metadata and the plaintext.
pub fn open(
    bytes: &[u8],
    kind: SealKind,
    passphrase: &[u8],
) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), SealError> {
    let header = read_header(bytes)?;
    if header.kind != kind as u8 {
        return Err(SealError::WrongKind {
            expected: SealKind::name(kind as u8),
            found: SealKind::name(header.kind),
        });
    }
    let key = derive_key(
        passphrase,
        &header.salt,
        header.memory_kib,
        header.passes,
        header.lanes,
    )?;
    let cipher = XChaCha20Poly1305::new(key.as_ref().into());
    let plaintext = cipher
        .decrypt(
            XNonce::from_slice(&header.nonce),
            Payload {
                msg: &bytes[header.header_len..],
                aad: &bytes[..header.header_len],
            },
        )
        .map_err(|_| SealError::Open)?;
    Ok((header.metadata.to_vec(), Zeroizing::new(plaintext)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn seals_and_refuses_every_kind_of_tampering() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let sealed = seal(
            SealKind::KeyShare,
            b"ceremony 1, party 2",
            b"secret share",
            b"correct horse",
            &mut rng,
        )
        .unwrap();
        assert!(
            sealed.starts_with(b"QRSEAL"),
            "a sealed file names its format"
        );
        let (metadata, plaintext) = open(&sealed, SealKind::KeyShare, b"correct horse").unwrap();
        assert_eq!(metadata, b"ceremony 1, party 2");
        assert_eq!(plaintext.as_slice(), b"secret share");
        assert_eq!(
            peek_metadata(&sealed, SealKind::KeyShare).unwrap(),
            metadata
        );

        assert_eq!(
            open(&sealed, SealKind::KeyShare, b"wrong").unwrap_err(),
            SealError::Open
        );
        assert!(matches!(
            open(&sealed, SealKind::Identity, b"correct horse"),
            Err(SealError::WrongKind { .. })
        ));
        // A flipped bit anywhere but in the cost parameters fails authentication; in the
        // parameters it fails too (different key, or refused parameters).
        for index in (0..sealed.len()).step_by(7) {
            let mut bad = sealed.clone();
            bad[index] ^= 0x01;
            assert!(
                open(&bad, SealKind::KeyShare, b"correct horse").is_err(),
                "flip at {index}"
            );
        }
        assert!(seal(SealKind::KeyShare, b"", b"x", b"", &mut rng).is_err());
    }
}
