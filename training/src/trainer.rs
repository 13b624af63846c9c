//! The built-in trainer: multinomial logistic regression and a one-hidden-layer MLP, with
//! seeded, deterministic local SGD. The same seed, model and data give the same parameters bit
//! for bit, so runs can be replayed and compared with plaintext baselines.
//!
//! Parameters are one flat vector laid out as PyTorch's `state_dict` of the same network
//! (`nn.Linear(features, classes)`, or `nn.Sequential(nn.Linear(features, hidden), nn.ReLU(),
//! nn.Linear(hidden, classes))`): each weight matrix row-major as (out, in), then its bias.
//! [`Model::layout`] names the pieces, so exported files load straight into PyTorch.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
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

/// The networks the built-in trainer knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// Multinomial logistic regression: softmax(W x + b).
    Logistic { features: usize, classes: usize },
    /// softmax(W2 relu(W1 x + b1) + b2).
    Mlp {
        features: usize,
        hidden: usize,
        classes: usize,
    },
}

/// Named tensors (name, shape) in the order they sit in the flat parameter vector.
pub type Layout = Vec<(String, Vec<usize>)>;

/// Accuracy and cross-entropy counted over rows, so that several institutions' held-out sets
/// pool by addition.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub rows: u64,
    pub correct: u64,
    pub loss_sum: f64,
}

impl Evaluation {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.rows.max(1) as f64
    }

    pub fn loss(&self) -> f64 {
        self.loss_sum / self.rows.max(1) as f64
    }

    pub fn add(&mut self, other: &Evaluation) {
        self.rows += other.rows;
        self.correct += other.correct;
        self.loss_sum += other.loss_sum;
    }
}

/// Activations of one forward pass, kept for the backward pass.
struct Pass {
    hidden: Vec<f32>,
    probabilities: Vec<f32>,
}

fn softmax(out: &mut [f32]) {
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

/// out = W x + b, with W row-major (out.len() x x.len()).
fn affine(w: &[f32], b: &[f32], x: &[f32], out: &mut [f32]) {
    for (k, o) in out.iter_mut().enumerate() {
        let row = &w[k * x.len()..(k + 1) * x.len()];
        *o = b[k] + row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
    }
}

impl Model {
    pub fn features(&self) -> usize {
        match *self {
            Model::Logistic { features, .. } | Model::Mlp { features, .. } => features,
        }
    }

    pub fn classes(&self) -> usize {
        match *self {
            Model::Logistic { classes, .. } | Model::Mlp { classes, .. } => classes,
        }
    }

    pub fn layout(&self) -> Layout {
        match *self {
            Model::Logistic { features, classes } => vec![
                ("weight".into(), vec![classes, features]),
                ("bias".into(), vec![classes]),
            ],
            Model::Mlp {
                features,
                hidden,
                classes,
            } => vec![
                ("0.weight".into(), vec![hidden, features]),
                ("0.bias".into(), vec![hidden]),
                ("2.weight".into(), vec![classes, hidden]),
                ("2.bias".into(), vec![classes]),
            ],
        }
    }

    pub fn parameters(&self) -> usize {
        self.layout()
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }

    /// The starting point every member shares: zeros for logistic regression (convex, so any
    /// start works), and for the MLP Glorot-uniform weights from `seed` (zeros would leave
    /// every hidden unit identical forever).
    pub fn initial(&self, seed: u64) -> Vec<f32> {
        let mut params = vec![0.0; self.parameters()];
        if let Model::Mlp {
            features,
            hidden,
            classes,
        } = *self
        {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let mut offset = 0;
            for (fan_in, fan_out) in [(features, hidden), (hidden, classes)] {
                let bound = (6.0 / (fan_in + fan_out) as f32).sqrt();
                for p in &mut params[offset..offset + fan_in * fan_out] {
                    *p = rng.gen_range(-bound..bound);
                }
                offset += fan_in * fan_out + fan_out;
            }
        }
        params
    }

    fn pass(&self) -> Pass {
        Pass {
            hidden: vec![
                0.0;
                match *self {
                    Model::Logistic { .. } => 0,
                    Model::Mlp { hidden, .. } => hidden,
                }
            ],
            probabilities: vec![0.0; self.classes()],
        }
    }

    fn forward(&self, params: &[f32], x: &[f32], pass: &mut Pass) {
        match *self {
            Model::Logistic { features, classes } => {
                let (w, b) = params.split_at(classes * features);
                affine(w, b, x, &mut pass.probabilities);
            }
            Model::Mlp {
                features, hidden, ..
            } => {
                let (w1, rest) = params.split_at(hidden * features);
                let (b1, rest) = rest.split_at(hidden);
                let (w2, b2) = rest.split_at(self.classes() * hidden);
                affine(w1, b1, x, &mut pass.hidden);
                pass.hidden.iter_mut().for_each(|h| *h = h.max(0.0));
                affine(w2, b2, &pass.hidden, &mut pass.probabilities);
            }
        }
        softmax(&mut pass.probabilities);
    }

    /// Adds the cross-entropy gradient of one row to `gradient`, after `forward`.
    fn backward(&self, params: &[f32], x: &[f32], label: usize, pass: &Pass, gradient: &mut [f32]) {
        let classes = self.classes();
        let error = |k: usize| pass.probabilities[k] - if k == label { 1.0 } else { 0.0 };
        // Gradient of an affine layer with input `input` and output error `delta`.
        let affine_grad = |g: &mut [f32], input: &[f32], delta: &[f32]| {
            let (gw, gb) = g.split_at_mut(delta.len() * input.len());
            for (k, d) in delta.iter().enumerate() {
                for (gi, xi) in gw[k * input.len()..(k + 1) * input.len()]
                    .iter_mut()
                    .zip(input)
                {
                    *gi += d * xi;
                }
                gb[k] += d;
            }
        };
        let delta: Vec<f32> = (0..classes).map(error).collect();
        match *self {
            Model::Logistic { .. } => affine_grad(gradient, x, &delta),
            Model::Mlp {
                features, hidden, ..
            } => {
                let first = hidden * features + hidden;
                let w2 = &params[first..first + classes * hidden];
                affine_grad(&mut gradient[first..], &pass.hidden, &delta);
                let hidden_delta: Vec<f32> = (0..hidden)
                    .map(|j| {
                        if pass.hidden[j] > 0.0 {
                            (0..classes).map(|k| w2[k * hidden + j] * delta[k]).sum()
                        } else {
                            0.0
                        }
                    })
                    .collect();
                affine_grad(&mut gradient[..first], x, &hidden_delta);
            }
        }
    }

    /// Which parameters are weights (penalised by L2) rather than biases.
    fn is_weight(&self) -> Vec<bool> {
        self.layout()
            .iter()
            .flat_map(|(name, shape)| {
                let n: usize = shape.iter().product();
                std::iter::repeat_n(name.ends_with("weight"), n)
            })
            .collect()
    }

    /// Trains from `params` on `data` and returns the new parameters.
    pub fn train(&self, params: &[f32], data: &Dataset, config: &SgdConfig, seed: u64) -> Vec<f32> {
        assert_eq!(params.len(), self.parameters());
        assert_eq!(data.width(), self.features());
        let mut params = params.to_vec();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..data.rows()).collect();
        let mut pass = self.pass();
        let mut gradient = vec![0.0f32; params.len()];
        let decays = self.is_weight();
        for _ in 0..config.epochs {
            order.shuffle(&mut rng);
            for batch in order.chunks(config.batch.max(1)) {
                gradient.iter_mut().for_each(|g| *g = 0.0);
                for &i in batch {
                    let x = data.row(i);
                    self.forward(&params, x, &mut pass);
                    self.backward(&params, x, data.labels[i] as usize, &pass, &mut gradient);
                }
                let scale = config.learning_rate / batch.len() as f32;
                for ((p, g), decays) in params.iter_mut().zip(&gradient).zip(&decays) {
                    let decay = if *decays { config.l2 * *p } else { 0.0 };
                    *p -= scale * g + config.learning_rate * decay;
                }
            }
        }
        params
    }

    /// Correct predictions and summed cross-entropy on `data`.
    pub fn evaluate(&self, params: &[f32], data: &Dataset) -> Evaluation {
        let mut pass = self.pass();
        let mut evaluation = Evaluation::default();
        for i in 0..data.rows() {
            self.forward(params, data.row(i), &mut pass);
            let predicted = pass
                .probabilities
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(k, _)| k);
            let label = data.labels[i] as usize;
            evaluation.rows += 1;
            evaluation.correct += u64::from(predicted == label);
            evaluation.loss_sum -= f64::from(pass.probabilities[label].max(1e-12)).ln();
        }
        evaluation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Impute, load_csv};
    use std::path::Path;

    fn wdbc() -> Dataset {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/data/wdbc.csv");
        let mut data = load_csv(&path, "benign", 2, Impute::Refuse, &Default::default()).unwrap();
        data.standardise();
        data
    }

    fn learns(model: Model, data: &Dataset, epochs: u32, at_least: f64) {
        let start = model.initial(3);
        let before = model.evaluate(&start, data);
        let config = SgdConfig {
            epochs,
            ..SgdConfig::default()
        };
        let trained = model.train(&start, data, &config, 7);
        assert_eq!(
            trained,
            model.train(&start, data, &config, 7),
            "same seed, same bits"
        );
        assert_ne!(trained, model.train(&start, data, &config, 8));
        let after = model.evaluate(&trained, data);
        assert!(
            after.accuracy() > at_least,
            "{model:?}: accuracy {} (from {})",
            after.accuracy(),
            before.accuracy()
        );
        assert!(
            after.loss() < before.loss() * 0.3,
            "{model:?}: loss {} from {}",
            after.loss(),
            before.loss()
        );
    }

    #[test]
    fn training_is_deterministic_and_learns_the_breast_cancer_data() {
        let data = wdbc();
        let features = data.width();
        learns(
            Model::Logistic {
                features,
                classes: 2,
            },
            &data,
            5,
            0.95,
        );
        learns(
            Model::Mlp {
                features,
                hidden: 16,
                classes: 2,
            },
            &data,
            5,
            0.95,
        );
    }

    /// The analytic gradient of each model matches central finite differences of the loss.
    #[test]
    fn backpropagation_matches_finite_differences() {
        let data = Dataset {
            columns: vec!["a".into(), "b".into(), "c".into()],
            features: vec![0.5, -1.0, 2.0, -0.3, 0.8, 0.1],
            labels: vec![2, 0],
        };
        for model in [
            Model::Logistic {
                features: 3,
                classes: 3,
            },
            Model::Mlp {
                features: 3,
                hidden: 4,
                classes: 3,
            },
        ] {
            let mut params = model.initial(5);
            // Non-zero biases, so that no ReLU sits exactly at its kink.
            for (i, p) in params.iter_mut().enumerate() {
                *p += 0.01 * (i % 7) as f32;
            }
            let mut gradient = vec![0.0; params.len()];
            let mut pass = model.pass();
            for i in 0..data.rows() {
                model.forward(&params, data.row(i), &mut pass);
                model.backward(
                    &params,
                    data.row(i),
                    data.labels[i] as usize,
                    &pass,
                    &mut gradient,
                );
            }
            for j in 0..params.len() {
                let mut up = params.clone();
                let mut down = params.clone();
                up[j] += 1e-2;
                down[j] -= 1e-2;
                let numeric = (model.evaluate(&up, &data).loss_sum
                    - model.evaluate(&down, &data).loss_sum)
                    / 2e-2;
                assert!(
                    (numeric - f64::from(gradient[j])).abs() < 2e-3,
                    "{model:?} parameter {j}: analytic {} numeric {numeric}",
                    gradient[j]
                );
            }
        }
    }

    #[test]
    fn the_layout_is_pytorchs_and_covers_every_parameter() {
        let mlp = Model::Mlp {
            features: 30,
            hidden: 16,
            classes: 2,
        };
        assert_eq!(
            mlp.layout(),
            vec![
                ("0.weight".to_string(), vec![16, 30]),
                ("0.bias".to_string(), vec![16]),
                ("2.weight".to_string(), vec![2, 16]),
                ("2.bias".to_string(), vec![2]),
            ]
        );
        assert_eq!(mlp.parameters(), 16 * 31 + 2 * 17);
        let initial = mlp.initial(1);
        assert!(initial[..480].iter().all(|w| w.abs() < 0.41 && *w != 0.0));
        assert!(initial[480..496].iter().all(|b| *b == 0.0));
        assert_eq!(initial, mlp.initial(1));
        let logistic = Model::Logistic {
            features: 30,
            classes: 2,
        };
        assert_eq!(logistic.parameters(), 62);
        assert!(logistic.initial(1).iter().all(|p| *p == 0.0));
    }
}
