//! The subshares a dealer sends each member: encrypted to the pair's X25519 key under the
//! ceremony's id, as seeds where they are uniform and whole where they complete the secret;
//! and the refusal a member complains with when they do not open.

use super::*;

impl Participant {
    pub(super) fn blob_key(&self, dealer: u8, recipient: u8, other: &Digest) -> Zeroizing<Digest> {
        let shared = self.exchange.diffie_hellman(&ExchangePublic::from(*other));
        Zeroizing::new(hash(&[
            b"quorate/subshare-key/v1",
            &self.ceremony(),
            &[dealer, recipient],
            shared.as_bytes(),
        ]))
    }

    pub(super) fn exchange_key_of(&self, member: u8) -> Digest {
        match &self.received[&(Phase::Attendance, member)].message.body {
            Body::Attendance { exchange_key, .. } => *exchange_key,
            _ => unreachable!("stored by phase"),
        }
    }

    /// Encrypts the pieces of `recipient`'s subsets to it (X25519 with its attendance key,
    /// XChaCha20-Poly1305 bound to the ceremony, dealer and recipient).
    pub(super) fn encrypt_pieces<R: RngCore + CryptoRng>(
        &self,
        recipient: u8,
        pieces: &[(Subset, DealtPiece)],
        rng: &mut R,
    ) -> Vec<u8> {
        let mut plain = Writer::default();
        plain.u16(pieces.len() as u16);
        for (subset, piece) in pieces {
            plain.u16(subset.0);
            match piece {
                DealtPiece::Seed(seed) => {
                    plain.u8(0).bytes(seed);
                }
                DealtPiece::Full(coefficients) => {
                    plain.u8(1);
                    for c in coefficients {
                        plain.bytes(&c.to_le_bytes());
                    }
                }
            }
        }
        let plain = Zeroizing::new(plain.into_bytes());
        let key = self.blob_key(self.me, recipient, &self.exchange_key_of(recipient));
        let nonce: [u8; 24] = rng.r#gen();
        let aad = [self.ceremony().as_slice(), &[self.me, recipient]].concat();
        let sealed = XChaCha20Poly1305::new(key.as_ref().into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .expect("encryption of a bounded message succeeds");
        [nonce.as_slice(), &sealed].concat()
    }

    pub(super) fn decrypt_pieces(
        &self,
        dealer: u8,
        blob: &[u8],
    ) -> Result<Vec<(Subset, DealtPiece)>, SubshareError> {
        if blob.len() < 24 {
            return Err(SubshareError::Truncated);
        }
        let key = self.blob_key(dealer, self.me, &self.exchange_key_of(dealer));
        let aad = [self.ceremony().as_slice(), &[dealer, self.me]].concat();
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new(key.as_ref().into())
                .decrypt(
                    XNonce::from_slice(&blob[..24]),
                    Payload {
                        msg: &blob[24..],
                        aad: &aad,
                    },
                )
                .map_err(|_| SubshareError::DoNotDecrypt)?,
        );
        let mut r = Reader::new(&plain);
        let count = r.count("pieces", 2, 1024)?;
        let mut pieces = Vec::with_capacity(count);
        for _ in 0..count {
            let subset = Subset(r.u16("subset")?);
            let piece = match r.u8("piece kind")? {
                0 => DealtPiece::Seed(r.array("seed")?),
                1 => {
                    let bytes = r.take(
                        "coefficients",
                        SECRETS_PER_KEY * protocol::he::POLYNOMIAL_SIZE * 16,
                    )?;
                    DealtPiece::Full(
                        bytes
                            .chunks_exact(16)
                            .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
                            .collect(),
                    )
                }
                other => return Err(SubshareError::PieceKind(other)),
            };
            pieces.push((subset, piece));
        }
        r.finish("subshares")?;
        let held: Vec<Subset> = pieces.iter().map(|(s, _)| *s).collect();
        if held != self.config.subsets_held_by(self.me) {
            return Err(SubshareError::OtherSubsets);
        }
        Ok(pieces)
    }
}

pub(super) fn blobs_digest(blobs: &[(u8, Digest)]) -> Digest {
    let mut parts: Vec<&[u8]> = vec![b"quorate/subshare-blobs/v1"];
    let recipients: Vec<[u8; 1]> = blobs.iter().map(|(r, _)| [*r]).collect();
    for ((_, digest), recipient) in blobs.iter().zip(&recipients) {
        parts.push(recipient);
        parts.push(digest);
    }
    hash(&parts)
}

/// Why a dealer's subshares for this member are refused (the member complains about the
/// dealer with this reason).
#[derive(Debug, thiserror::Error)]
pub(super) enum SubshareError {
    #[error("no subshares arrived for this member")]
    Missing,
    #[error("the subshares received do not match the committed digest")]
    NotCommitted,
    #[error("the subshare blob is truncated")]
    Truncated,
    #[error("the subshares do not decrypt")]
    DoNotDecrypt,
    #[error("malformed subshares: {0}")]
    Malformed(#[from] protocol::bytes::ReadError),
    #[error("unknown piece kind {0}")]
    PieceKind(u8),
    #[error("the subshares are not for the subsets this member holds")]
    OtherSubsets,
}
