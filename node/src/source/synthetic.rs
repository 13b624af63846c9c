//! Deterministic synthetic updates, and the plaintext fixed-point FedAvg they must give, so
//! that benchmarks and tests can recompute the exact expected model.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;

/// Uniform values in [-clip/2, clip/2] drawn from (seed, member, round).
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    pub seed: u64,
    pub member: u8,
    pub samples: u64,
    pub values: usize,
    pub clip: f32,
}

/// The synthetic update of `member` for `round`, as [`SyntheticSource`] produces it.
pub fn synthetic_update(seed: u64, member: u8, round: u64, values: usize, clip: f32) -> Vec<f32> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8] = member;
    key[9..17].copy_from_slice(&round.to_le_bytes());
    let mut rng = ChaCha20Rng::from_seed(key);
    let half = clip / 2.0;
    (0..values).map(|_| rng.gen_range(-half..=half)).collect()
}

/// The model the plan's plaintext fixed-point rounds (FedAvg, or its server optimizer) reach
/// from zero when, in each round, the listed
/// members contribute their synthetic updates with the given sample counts.
pub fn synthetic_fedavg(
    plan: &RoundPlan,
    seed: u64,
    rounds: &[Vec<(u8, u64)>],
) -> Result<Vec<i64>, protocol::round::RoundError> {
    let numbered: Vec<(u64, Vec<(u8, u64)>)> = (1..).zip(rounds.iter().cloned()).collect();
    synthetic_fedavg_of_rounds(plan, seed, &numbered)
}

/// The same, for a chain of rounds that skips some (a round abandoned or never decrypted
/// adds nothing to the model): each round by its number, with its contributors.
pub fn synthetic_fedavg_of_rounds(
    plan: &RoundPlan,
    seed: u64,
    rounds: &[(u64, Vec<(u8, u64)>)],
) -> Result<Vec<i64>, protocol::round::RoundError> {
    let mut model = vec![0i64; plan.values as usize];
    let mut state = plan.initial_optimizer_state();
    for (round, contributors) in rounds {
        let updates: Vec<(Vec<f32>, u64)> = contributors
            .iter()
            .map(|&(member, samples)| {
                let update =
                    synthetic_update(seed, member, *round, plan.values as usize, plan.clip);
                (update, samples)
            })
            .collect();
        plan.reference_round(&mut model, &mut state, &updates)?;
    }
    Ok(model)
}

impl UpdateSource for SyntheticSource {
    fn update(&mut self, round: u64, _model: &[f32]) -> Result<Update, SourceError> {
        Ok(Update {
            values: synthetic_update(self.seed, self.member, round, self.values, self.clip),
            samples: self.samples,
        })
    }

    fn layout(&self) -> Layout {
        vec![("values".into(), vec![self.values])]
    }
}
