//! Sealed key-share files: the share encrypted under a passphrase, with the ceremony id, the
//! party, the parameter set and the share's commitment as authenticated metadata, checked
//! against the ceremony's transcript when the share is loaded.

use protocol::he::{KeyShare, QUORATE_RLWE128_V1};
use protocol::seal::{SealError, SealKind, open, seal};
use protocol::wire::{decode_key_share, encode_key_share};
use rand_core::{CryptoRng, RngCore};

use crate::machine::share_commitment;
use crate::message::Digest;
use crate::transcript::Verified;

#[derive(Debug, thiserror::Error)]
pub enum ShareFileError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the share file is malformed: {0}")]
    Malformed(String),
    #[error("this share belongs to ceremony {found}, not {expected}")]
    OtherCeremony { found: String, expected: String },
    #[error("the share does not match member {0}'s commitment in the transcript")]
    Commitment(u8),
}

fn metadata(ceremony: &Digest, party: u8, commitment: &Digest) -> String {
    format!(
        "ceremony {}\nparty {party}\nparameter-set {}\ncommitment {}\n",
        hex::encode(ceremony),
        QUORATE_RLWE128_V1.id,
        hex::encode(commitment)
    )
}

pub fn seal_share<R: RngCore + CryptoRng>(
    share: &KeyShare,
    ceremony: &Digest,
    passphrase: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, ShareFileError> {
    let meta = metadata(ceremony, share.party(), &share_commitment(share));
    Ok(seal(
        SealKind::KeyShare,
        meta.as_bytes(),
        &encode_key_share(share),
        passphrase,
        rng,
    )?)
}

/// Opens a share file and checks it against the verified transcript of its ceremony.
pub fn load_share(
    bytes: &[u8],
    passphrase: &[u8],
    transcript: &Verified,
) -> Result<KeyShare, ShareFileError> {
    let (meta, plaintext) = open(bytes, SealKind::KeyShare, passphrase)?;
    let meta = String::from_utf8(meta)
        .map_err(|_| ShareFileError::Malformed("metadata is not UTF-8".into()))?;
    let ceremony = meta
        .lines()
        .find_map(|l| l.strip_prefix("ceremony "))
        .ok_or_else(|| ShareFileError::Malformed("no ceremony id".into()))?;
    let expected = hex::encode(transcript.ceremony);
    if ceremony != expected {
        return Err(ShareFileError::OtherCeremony {
            found: ceremony.to_owned(),
            expected,
        });
    }
    let share =
        decode_key_share(&plaintext).map_err(|e| ShareFileError::Malformed(e.to_string()))?;
    let party = share.party();
    if meta != metadata(&transcript.ceremony, party, &share_commitment(&share))
        || transcript.share_commitments.get(usize::from(party)) != Some(&share_commitment(&share))
    {
        return Err(ShareFileError::Commitment(party));
    }
    Ok(share)
}
