//! Where a member's update comes from each round. Training arrives as another source; the
//! synthetic one gives deterministic updates so that benchmarks and tests can recompute the
//! exact expected model.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A member's update for one round and the number of samples it stands for.
pub trait UpdateSource: Send {
    fn update(&mut self, round: u64, model: &[f32]) -> Result<(Vec<f32>, u64), String>;
}

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

/// The model plaintext fixed-point FedAvg reaches from zero when, in each round, the listed
/// members contribute their synthetic updates with the given sample counts.
pub fn synthetic_fedavg(
    plan: &protocol::round::RoundPlan,
    seed: u64,
    rounds: &[Vec<(u8, u64)>],
) -> Result<Vec<i64>, protocol::round::RoundError> {
    let mut model = vec![0i64; plan.values as usize];
    for (r, contributors) in rounds.iter().enumerate() {
        let updates: Vec<(Vec<f32>, u64)> = contributors
            .iter()
            .map(|&(member, samples)| {
                let update =
                    synthetic_update(seed, member, r as u64 + 1, plan.values as usize, plan.clip);
                (update, samples)
            })
            .collect();
        plan.fedavg_step(&mut model, &updates)?;
    }
    Ok(model)
}

impl UpdateSource for SyntheticSource {
    fn update(&mut self, round: u64, _model: &[f32]) -> Result<(Vec<f32>, u64), String> {
        Ok((
            synthetic_update(self.seed, self.member, round, self.values, self.clip),
            self.samples,
        ))
    }
}

/// Local training with the built-in logistic regression on this institution's own data.
#[derive(Debug, Clone)]
pub struct TrainingSource {
    pub model: crate::trainer::LogisticRegression,
    /// Standardised with this institution's own statistics.
    pub data: crate::data::Dataset,
    pub sgd: crate::trainer::SgdConfig,
    pub seed: u64,
}

impl TrainingSource {
    /// Loads and standardises the data, and checks it against the model's size.
    pub fn open(
        path: &std::path::Path,
        target: &str,
        classes: usize,
        impute: crate::data::Impute,
        sgd: crate::trainer::SgdConfig,
        seed: u64,
        values: usize,
    ) -> Result<Self, String> {
        let mut data =
            crate::data::load_csv(path, target, classes, impute).map_err(|e| e.to_string())?;
        data.standardise();
        let model = crate::trainer::LogisticRegression {
            classes,
            features: data.width(),
        };
        if model.parameters() != values {
            return Err(format!(
                "{}: {} features and {classes} classes make {} parameters, the plan has {values}",
                path.display(),
                data.width(),
                model.parameters()
            ));
        }
        Ok(Self {
            model,
            data,
            sgd,
            seed,
        })
    }
}

impl UpdateSource for TrainingSource {
    fn update(&mut self, round: u64, model: &[f32]) -> Result<(Vec<f32>, u64), String> {
        let trained = self.model.train(
            model,
            &self.data,
            &self.sgd,
            self.seed ^ round.rotate_left(32),
        );
        let update = trained.iter().zip(model).map(|(t, m)| t - m).collect();
        Ok((update, self.data.rows() as u64))
    }
}
