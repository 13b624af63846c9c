//! Threshold, additively homomorphic RLWE encryption on `tfhe` (parameter set
//! `quorate-rlwe128-v1`).
//!
//! The flow, every step of which lives here:
//! 1. each member draws a ternary [`SecretContribution`] and publishes its
//!    [`PublicKeyContribution`] under the ceremony's common seed; the bodies add up to the
//!    collective [`PublicKey`];
//! 2. each member [`deal`](SecretContribution::deal)s its secret into replicated shares, and
//!    each member assembles its [`KeyShare`] from what it receives ([`KeyShareBuilder`]);
//! 3. anyone encrypts with the prepared [`EncryptionKey`]; ciphertexts add and take integer
//!    weights without growing;
//! 4. an agreed [`Quorum`] of t members each produce a [`PartialDecryption`], and anyone holding
//!    all t [`combine`]s them into the messages.
//!
//! The [`Budget`] decides the message scale Delta and the smudging for a configuration and
//! refuses configurations that would not decrypt exactly.

mod budget;
mod ciphertext;
mod codec;
mod combine;
mod crt;
mod decrypt;
mod keys;
mod keystream;
mod layout;
mod ntt;
mod params;
#[cfg(test)]
mod relative_tests;
pub mod sampling;
#[cfg(test)]
mod several_secrets_tests;
#[cfg(test)]
mod tests;
mod window;

pub use budget::{
    Budget, BudgetRequest, Decoding, LifetimeLedger, SMUDGING_SUMMANDS, TARGET_SECURITY_BITS,
    kappa_for, statistical_security_bits,
};
pub use ciphertext::{Ciphertext, CiphertextShape, MAX_VALUES};
pub use codec::FixedPointCodec;
pub use combine::{Combination, CombineTarget, Reading, check_partials, combine};
pub use decrypt::{CiphertextDigest, PartialDecryption};
pub use keys::{
    Dealing, DealtPiece, EncryptionKey, KeyShare, KeyShareBuilder, LocalKeySet, PublicKey,
    PublicKeyContribution, SecretContribution, SeededDealing, Subshare,
};
pub use params::{
    MAX_PARTIES, MAX_SECRETS, POLYNOMIAL_SIZE, ParameterSet, QUORATE_RLWE128_V1, Quorum, Subset,
    ThresholdConfig,
};
pub use window::Window;

pub(crate) use keys::check_secrets;

/// Everything that can go wrong in the scheme, with the culprit named where there is one.
#[derive(Debug, thiserror::Error)]
pub enum HeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("unknown parameter set {0:?} (this build supports quorate-rlwe128-v1)")]
    UnknownParameterSet(String),
    #[error("noise budget: {0}")]
    Budget(String),
    #[error("mismatch: {0}")]
    Mismatch(String),
    #[error("value {value} at index {index} does not fit in {bits} bits")]
    ValueOutOfRange { index: usize, value: i64, bits: u32 },
    #[error("value at index {index} is not finite")]
    NonFinite { index: usize },
    #[error("partial decryption from party {party} rejected: {reason}")]
    Partial { party: u8, reason: String },
    #[error(
        "mask coefficient {index} has low bits set: no ciphertext of this scheme has them, and \
         partial decryption would ignore them"
    )]
    MaskLowBits { index: usize },
}
