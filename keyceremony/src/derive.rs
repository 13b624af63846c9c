//! The derivations the ceremony's state machine and the offline transcript verifier share:
//! the ceremony id, seed commitments, the common reference, the transcript hash, share
//! commitments, and the validation challenge every t-subset decrypts.

use protocol::he::{
    Budget, BudgetRequest, Decoding, KeyShare, PartialDecryption, PublicKey, Quorum, Subset,
    ThresholdConfig, Window, combine,
};
use protocol::wire::{BoundCiphertext, DecodeLimits, decode_partial_decryption, encode_key_share};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest as _, Sha256};

use crate::message::{Body, Digest, Message};

/// The smudging margin of the validation's partial decryptions. They reveal C(n, t) * 16
/// coordinates of a fresh ciphertext for each of the key's secrets; at this margin they add
/// at most 4 * 252 * 16 * 0.3 * 2^-120 < 2^-107 to the squared Hellinger distance the key's
/// lifetime bound allows (at most 2^-106 at 8 secrets), so they need no share of the rounds'
/// budget.
pub const VALIDATION_KAPPA: u32 = 60;

/// The secrets of every key a ceremony makes: its ciphertexts carry one mask coefficient per
/// 4 values, 3.75 bytes of mask a value instead of 15 (`protocol::he::MAX_SECRETS` allows 8,
/// which would save 1.9 bytes more, at twice the key shares' size and key generation's time).
/// A member of another build, whose contribution has another number, is refused by name;
/// transcripts of keys of one secret, made before, still verify.
pub const SECRETS_PER_KEY: usize = 4;

/// Values in the validation challenge.
pub(crate) const CHALLENGE_VALUES: usize = 16;

pub(crate) fn hash(parts: &[&[u8]]) -> Digest {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The validation challenge of one of the key's secrets: values everybody derives from the
/// transcript hash, and their encryption under that secret alone (the same ciphertext for
/// everybody, and for an auditor).
#[derive(Debug)]
pub struct Challenge {
    pub values: Vec<i64>,
    pub ciphertext: BoundCiphertext,
    pub budget: Budget,
}

impl Challenge {
    /// The t-subsets whose partial decryptions (in the members' validation-share messages,
    /// in member order; the `secret`-th of each member's partials for a quorum) fail to
    /// decrypt the challenge.
    pub fn failures(&self, config: ThresholdConfig, shares: &[&Body], secret: usize) -> Vec<u16> {
        let mut failures = Vec::new();
        for quorum in t_subsets(config) {
            let members: Vec<u8> = quorum.members().collect();
            let Ok(quorum_set) = Quorum::new(&config, members.clone()) else {
                failures.push(quorum.0);
                continue;
            };
            let partials: Option<Vec<PartialDecryption>> = members
                .iter()
                .map(|&m| match shares.get(usize::from(m)) {
                    Some(Body::ValidationShares { partials }) => partials
                        .iter()
                        .filter(|(q, _)| *q == quorum.0)
                        .nth(secret)
                        .and_then(|(_, bytes)| {
                            decode_partial_decryption(bytes, DecodeLimits { max_values: 64 }).ok()
                        })
                        .filter(|p| p.party == m),
                    _ => None,
                })
                .collect();
            let decrypted = partials.and_then(|partials| {
                combine(&self.ciphertext, &quorum_set, &partials, &self.budget).ok()
            });
            if decrypted.as_deref() != Some(self.values.as_slice()) {
                failures.push(quorum.0);
            }
        }
        failures
    }
}

/// The ceremony id: a hash of the consortium and every member's attendance (fresh nonces), so
/// each run has a new id and no message of an earlier run fits.
pub fn ceremony_id(manifest: &Digest, attendance: &[&Body]) -> Digest {
    let mut parts: Vec<Vec<u8>> = vec![b"quorate/ceremony-id/v1".to_vec(), manifest.to_vec()];
    for body in attendance {
        if let Body::Attendance {
            nonce,
            exchange_key,
        } = body
        {
            parts.push(nonce.to_vec());
            parts.push(exchange_key.to_vec());
        }
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    hash(&refs)
}

pub fn seed_commitment(ceremony: &Digest, member: u8, seed: &Digest) -> Digest {
    hash(&[b"quorate/seed-commitment/v1", ceremony, &[member], seed])
}

/// The public key's mask seed: the common reference from everyone's revealed seeds.
pub fn mask_seed(manifest: &Digest, ceremony: &Digest, seeds: &[Digest]) -> u128 {
    let mut parts: Vec<&[u8]> = vec![b"quorate/common-reference/v1", manifest, ceremony];
    for seed in seeds {
        parts.push(seed);
    }
    let reference = hash(&parts);
    u128::from_le_bytes(reference[..16].try_into().expect("16 bytes"))
}

/// The transcript hash T: every message of the phases before the signatures, in phase and
/// member order.
pub fn transcript_hash(messages: &[&Message]) -> Digest {
    let encodings: Vec<Vec<u8>> = messages.iter().map(|m| m.encode()).collect();
    let mut parts: Vec<&[u8]> = vec![b"quorate/ceremony-transcript/v1"];
    parts.extend(encodings.iter().map(Vec::as_slice));
    hash(&parts)
}

/// A commitment to a member's key share, published in the transcript and kept in the sealed
/// share file, so a share file can be checked against the ceremony that made it.
pub fn share_commitment(share: &KeyShare) -> Digest {
    hash(&[b"quorate/share-commitment/v1", &encode_key_share(share)])
}

/// The t-subsets that fail to decrypt any of `challenges` (one per secret, as
/// [`validation_challenges`] makes them), each named once.
pub fn validation_failures(
    challenges: &[Challenge],
    config: ThresholdConfig,
    shares: &[&Body],
) -> Vec<u16> {
    if challenges.is_empty() {
        // Nothing was tested, so nothing passed.
        return t_subsets(config).into_iter().map(|q| q.0).collect();
    }
    let mut failures: Vec<u16> = challenges
        .iter()
        .enumerate()
        .flat_map(|(secret, challenge)| challenge.failures(config, shares, secret))
        .collect();
    failures.sort_unstable();
    failures.dedup();
    failures
}

/// The validation challenges for transcript hash `transcript` under `public_key`: one for
/// each of its secrets, encrypted under that secret alone and decrypted with the members'
/// shares of it alone. A challenge under the whole key would test only the first secret (16
/// values fill part of the first bin), so a member dealing well for it and badly for another
/// would pass. The first is the challenge of a key of one secret, unchanged, so transcripts
/// made before keys of several still verify.
pub fn validation_challenges(
    config: ThresholdConfig,
    transcript: &Digest,
    public_key: &PublicKey,
) -> Result<Vec<Challenge>, protocol::he::HeError> {
    (0..public_key.secrets())
        .map(|secret| validation_challenge(config, transcript, &public_key.secret(secret)?, secret))
        .collect()
}

/// The validation challenge of secret `secret`, under `public_key`, that secret's key alone.
fn validation_challenge(
    config: ThresholdConfig,
    transcript: &Digest,
    public_key: &PublicKey,
    secret: usize,
) -> Result<Challenge, protocol::he::HeError> {
    let budget = Budget::compute(BudgetRequest {
        config,
        max_contributions: 1,
        weight_bound: 1,
        value_bits: 20,
        kappa: VALIDATION_KAPPA,
        rounds: 1,
        decoding: Decoding::Absolute,
    })?;
    let mut stream = ChaCha20Rng::from_seed(if secret == 0 {
        hash(&[b"quorate/validation-challenge/v1", transcript])
    } else {
        hash(&[
            b"quorate/validation-challenge/v2",
            transcript,
            &(secret as u64).to_le_bytes(),
        ])
    });
    let values: Vec<i64> = (0..CHALLENGE_VALUES)
        .map(|_| stream.gen_range(-budget.max_value()..=budget.max_value()))
        .collect();
    // In the form every ciphertext had before body windows, so that transcripts made before
    // them, whose partials are bound to this digest, still verify.
    let ciphertext =
        public_key
            .prepare()
            .encrypt_in(&values, &budget, Window::TOP_64, &mut stream)?;
    Ok(Challenge {
        values,
        ciphertext: BoundCiphertext::before_windows(ciphertext)?,
        budget,
    })
}

/// Every t-subset of the members, as bit masks.
pub fn t_subsets(config: ThresholdConfig) -> Vec<Subset> {
    (0u16..(1 << config.parties()))
        .filter(|bits| bits.count_ones() == u32::from(config.threshold()))
        .map(Subset)
        .collect()
}
