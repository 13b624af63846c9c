//! The optimizer's state between rounds: its storage format, its digest, and the seed of the
//! members' encryption of a stepped model.

use sha2::{Digest as _, Sha256};

use crate::audit::entry::Digest;

/// The optimizer's state between rounds: first moments at the model's scale, second moments
/// at its square (empty where the optimizer keeps none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptimizerState {
    pub first: Vec<i64>,
    pub second: Vec<u128>,
}

impl OptimizerState {
    /// The bytes a member stores: the counts, then the first and second moments.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * self.first.len() + 16 * self.second.len());
        out.extend((self.first.len() as u64).to_le_bytes());
        out.extend((self.second.len() as u64).to_le_bytes());
        for value in &self.first {
            out.extend(value.to_le_bytes());
        }
        for value in &self.second {
            out.extend(value.to_le_bytes());
        }
        out
    }

    /// Decodes a stored state, which must have exactly the counts of `expected` (the plan's
    /// initial state); `None` for anything else.
    pub fn decode(bytes: &[u8], expected: &OptimizerState) -> Option<Self> {
        let count = |at: usize| -> Option<usize> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?) as usize)
        };
        let (first, second) = (count(0)?, count(8)?);
        if first != expected.first.len()
            || second != expected.second.len()
            || bytes.len() != 16 + 8 * first + 16 * second
        {
            return None;
        }
        let (firsts, seconds) = bytes[16..].split_at(8 * first);
        Some(Self {
            first: firsts
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            second: seconds
                .chunks_exact(16)
                .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
                .collect(),
        })
    }

    /// The digest of the state, which members who decrypted the same rounds share.
    pub fn digest(&self) -> Digest {
        let mut hasher = Sha256::new();
        hasher.update(b"quorate/optimizer-state/v1\0");
        hasher.update((self.first.len() as u64).to_le_bytes());
        for value in &self.first {
            hasher.update(value.to_le_bytes());
        }
        hasher.update((self.second.len() as u64).to_le_bytes());
        for value in &self.second {
            hasher.update(value.to_le_bytes());
        }
        hasher.finalize().into()
    }
}

/// The seed of the encryption of a stepped model that the next round builds on: hashed from
/// the key's fingerprint, the plan, the request and the model and the optimizer's state
/// themselves, which every member that combined the round
/// holds and the coordinator never does. So every member encrypts the same bits, and whoever
/// lacks the model cannot derive the randomness that would let it decrypt them.
pub fn base_seed(
    key: &Digest,
    plan: &Digest,
    request: u64,
    model: &[i64],
    state: &OptimizerState,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"quorate/server-step-seed/v1\0");
    // The key too: a later run under another key never reuses this randomness.
    hasher.update(key);
    hasher.update(plan);
    hasher.update(request.to_le_bytes());
    hasher.update((model.len() as u64).to_le_bytes());
    for chunk in model.chunks(8192) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        hasher.update(&bytes);
    }
    hasher.update(state.digest());
    hasher.finalize().into()
}
