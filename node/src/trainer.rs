//! The built-in trainer: multinomial logistic regression with seeded, deterministic local SGD.
//! The same seed, model and data give the same update bit for bit, so runs can be replayed
//! and compared with plaintext baselines.
//!
//! Parameters are laid out as the weight matrix (classes x features, row-major) followed by
//! one bias per class.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

use crate::data::Dataset;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub epochs: u32,
    pub batch: usize,
    pub learning_rate: f32,
    /// L2 penalty on the weights (not the biases).
    pub l2: f32,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch: 16,
            learning_rate: 0.1,
            l2: 1e-4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogisticRegression {
    pub classes: usize,
    pub features: usize,
}

impl LogisticRegression {
    pub fn parameters(&self) -> usize {
        self.classes * (self.features + 1)
    }

    /// Softmax probabilities for one row.
    fn probabilities(&self, params: &[f32], x: &[f32], out: &mut [f32]) {
        let (w, b) = params.split_at(self.classes * self.features);
        for (k, o) in out.iter_mut().enumerate() {
            let row = &w[k * self.features..(k + 1) * self.features];
            *o = b[k] + row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        }
        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for o in out.iter_mut() {
            *o = (*o - max).exp();
            total += *o;
        }
        for o in out.iter_mut() {
            *o /= total;
        }
    }

    /// Trains from `params` on `data` and returns the new parameters.
    pub fn train(&self, params: &[f32], data: &Dataset, config: &SgdConfig, seed: u64) -> Vec<f32> {
        assert_eq!(params.len(), self.parameters());
        assert_eq!(data.width(), self.features);
        let mut params = params.to_vec();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..data.rows()).collect();
        let mut probabilities = vec![0.0; self.classes];
        let mut gradient = vec![0.0f32; params.len()];
        let weights = self.classes * self.features;
        for _ in 0..config.epochs {
            order.shuffle(&mut rng);
            for batch in order.chunks(config.batch.max(1)) {
                gradient.iter_mut().for_each(|g| *g = 0.0);
                for &i in batch {
                    let x = data.row(i);
                    self.probabilities(&params, x, &mut probabilities);
                    for (k, p) in probabilities.iter().enumerate() {
                        let error = p - if data.labels[i] as usize == k {
                            1.0
                        } else {
                            0.0
                        };
                        for (g, xi) in gradient[k * self.features..(k + 1) * self.features]
                            .iter_mut()
                            .zip(x)
                        {
                            *g += error * xi;
                        }
                        gradient[weights + k] += error;
                    }
                }
                let scale = config.learning_rate / batch.len() as f32;
                for (j, (p, g)) in params.iter_mut().zip(&gradient).enumerate() {
                    let decay = if j < weights { config.l2 * *p } else { 0.0 };
                    *p -= scale * g + config.learning_rate * decay;
                }
            }
        }
        params
    }

    /// Accuracy and mean cross-entropy on `data`.
    pub fn evaluate(&self, params: &[f32], data: &Dataset) -> (f64, f64) {
        let mut probabilities = vec![0.0; self.classes];
        let (mut correct, mut loss) = (0usize, 0.0f64);
        for i in 0..data.rows() {
            self.probabilities(params, data.row(i), &mut probabilities);
            let predicted = probabilities
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(k, _)| k);
            let label = data.labels[i] as usize;
            correct += usize::from(predicted == label);
            loss -= f64::from(probabilities[label].max(1e-12)).ln();
        }
        (
            correct as f64 / data.rows() as f64,
            loss / data.rows() as f64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Impute, load_csv};
    use std::path::Path;

    fn wdbc() -> Dataset {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/data/wdbc.csv");
        let mut data = load_csv(&path, "benign", 2, Impute::Refuse).unwrap();
        data.standardise();
        data
    }

    #[test]
    fn training_is_deterministic_and_learns_the_breast_cancer_data() {
        let data = wdbc();
        let model = LogisticRegression {
            classes: 2,
            features: data.width(),
        };
        let start = vec![0.0; model.parameters()];
        let (before, loss_before) = model.evaluate(&start, &data);
        let config = SgdConfig {
            epochs: 5,
            ..SgdConfig::default()
        };
        let trained = model.train(&start, &data, &config, 7);
        assert_eq!(
            trained,
            model.train(&start, &data, &config, 7),
            "same seed, same bits"
        );
        assert_ne!(trained, model.train(&start, &data, &config, 8));
        let (after, loss_after) = model.evaluate(&trained, &data);
        assert!(after > 0.95, "accuracy {after} (from {before})");
        assert!(
            loss_after < loss_before * 0.3,
            "loss {loss_after} from {loss_before}"
        );
    }
}
