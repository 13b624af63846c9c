//! Server optimizers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021) in
//! deterministic fixed point: every member that holds a round's decrypted average applies
//! the same integer step and gets the same bits, which a float reference of the same formulas
//! tracks to the fixed point's precision.
//!
//! The pseudo-gradient of round r is `delta = average - x`: the decrypted weighted average of
//! the members' updates (weights at rate 1) less the model they trained from. Then, with the
//! server rate eta:
//! - FedAvg: `x += eta * delta` (applied in the weights, under encryption; no state);
//! - momentum (FedAvgM): `m = beta * m + delta; x += eta * m`;
//! - FedAdam: `m = b1 * m + (1 - b1) * delta; v = b2 * v + (1 - b2) * delta^2`;
//! - FedYogi: as FedAdam but `v -= (1 - b2) * delta^2 * sign(v - delta^2)`;
//! - FedAdagrad: as FedAdam but `v += delta^2`;
//!
//! and the three adaptive ones step `x += eta * m / (sqrt(v) + tau)`, with `v` starting at
//! tau^2 (Reddi et al., Algorithm 2; no bias correction). Each step is clamped to
//! `eta * clip` per value, the same bound a FedAvg round has, so the plan's noise budget holds
//! for every optimizer.
//!
//! Integers: `x` and `m` at the model's scale 2^s (s = fraction + weight bits), `v` at
//! 2^(2s) in 128 bits so that small gradients keep their precision when squared. Every
//! division rounds half away from zero ([`div_round`]); the square root is the exact floor.

use sha2::{Digest as _, Sha256};

use crate::audit::entry::Digest;

/// Hyperparameters are integers in millionths: a plan's digest covers exact values.
pub const PPM: u32 = 1_000_000;

/// The server optimizer of a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Optimizer {
    /// Weighted averaging at the server rate, entirely under encryption.
    #[default]
    Fedavg,
    /// Server momentum (FedAvgM): `m = beta * m + delta; x += eta * m`.
    Momentum {
        #[serde(default = "default_beta1")]
        beta_ppm: u32,
    },
    /// FedAdam.
    Adam {
        #[serde(default = "default_beta1")]
        beta1_ppm: u32,
        #[serde(default = "default_beta2")]
        beta2_ppm: u32,
        #[serde(default = "default_tau")]
        tau_ppm: u32,
    },
    /// FedYogi.
    Yogi {
        #[serde(default = "default_beta1")]
        beta1_ppm: u32,
        #[serde(default = "default_beta2")]
        beta2_ppm: u32,
        #[serde(default = "default_tau")]
        tau_ppm: u32,
    },
    /// FedAdagrad.
    Adagrad {
        #[serde(default = "default_beta1")]
        beta1_ppm: u32,
        #[serde(default = "default_tau")]
        tau_ppm: u32,
    },
}

/// Reddi et al.'s defaults: beta1 = 0.9, beta2 = 0.99, tau = 1e-3.
fn default_beta1() -> u32 {
    900_000
}
fn default_beta2() -> u32 {
    990_000
}
fn default_tau() -> u32 {
    1_000
}

/// A refused optimizer setting or state, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptimizerError {
    #[error("optimizer {field} = {value}: must be below {PPM} (a fraction in millionths)")]
    Fraction { field: &'static str, value: u32 },
    #[error("optimizer tau_ppm = {0}: must be at least 1 and at most {PPM}")]
    Tau(u32),
    #[error("optimizer state holds {held} values and a model {model}: it belongs to another plan")]
    StateSize { held: usize, model: usize },
    #[error("model of {previous} values and average of {average}: they must be the same size")]
    ModelSize { previous: usize, average: usize },
}

/// The optimizer's state between rounds: first moments at the model's scale, second moments
/// at its square (empty where the optimizer keeps none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptimizerState {
    pub first: Vec<i64>,
    pub second: Vec<u128>,
}

/// The float reference's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FloatState {
    pub first: Vec<f64>,
    pub second: Vec<f64>,
}

/// How the second moment moves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Second {
    Adam,
    Yogi,
    Adagrad,
}

/// The integers one step needs, taken from the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepScale {
    /// Bits of scale of the model's integers.
    pub scale_bits: u32,
    /// The server rate eta, in thousandths.
    pub rate_millis: u32,
    /// Largest step per value, at the model's scale.
    pub bound: i64,
}

impl Optimizer {
    /// Whether the server rate and state live outside the encrypted weights.
    pub fn is_fedavg(&self) -> bool {
        matches!(self, Optimizer::Fedavg)
    }

    /// The name `--optimizer` and reports use.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Fedavg => "fedavg",
            Optimizer::Momentum { .. } => "momentum",
            Optimizer::Adam { .. } => "adam",
            Optimizer::Yogi { .. } => "yogi",
            Optimizer::Adagrad { .. } => "adagrad",
        }
    }

    /// The optimizer of that name with its default hyperparameters.
    pub fn named(name: &str) -> Option<Self> {
        let (beta1_ppm, beta2_ppm, tau_ppm) = (default_beta1(), default_beta2(), default_tau());
        Some(match name {
            "fedavg" => Optimizer::Fedavg,
            "momentum" => Optimizer::Momentum {
                beta_ppm: beta1_ppm,
            },
            "adam" => Optimizer::Adam {
                beta1_ppm,
                beta2_ppm,
                tau_ppm,
            },
            "yogi" => Optimizer::Yogi {
                beta1_ppm,
                beta2_ppm,
                tau_ppm,
            },
            "adagrad" => Optimizer::Adagrad { beta1_ppm, tau_ppm },
            _ => return None,
        })
    }

    /// (beta1, beta2, tau) in millionths, the second moment's rule; None for FedAvg and
    /// momentum.
    fn adaptive(&self) -> Option<(u32, u32, u32, Second)> {
        match *self {
            Optimizer::Adam {
                beta1_ppm,
                beta2_ppm,
                tau_ppm,
            } => Some((beta1_ppm, beta2_ppm, tau_ppm, Second::Adam)),
            Optimizer::Yogi {
                beta1_ppm,
                beta2_ppm,
                tau_ppm,
            } => Some((beta1_ppm, beta2_ppm, tau_ppm, Second::Yogi)),
            Optimizer::Adagrad { beta1_ppm, tau_ppm } => {
                Some((beta1_ppm, 0, tau_ppm, Second::Adagrad))
            }
            Optimizer::Fedavg | Optimizer::Momentum { .. } => None,
        }
    }

    /// Checks the hyperparameters.
    pub fn check(&self) -> Result<(), OptimizerError> {
        let fraction = |field, value: u32| {
            if value >= PPM {
                Err(OptimizerError::Fraction { field, value })
            } else {
                Ok(())
            }
        };
        if let Optimizer::Momentum { beta_ppm } = *self {
            fraction("beta_ppm", beta_ppm)?;
        }
        if let Some((beta1, beta2, tau, _)) = self.adaptive() {
            fraction("beta1_ppm", beta1)?;
            fraction("beta2_ppm", beta2)?;
            if tau == 0 || tau > PPM {
                return Err(OptimizerError::Tau(tau));
            }
        }
        Ok(())
    }

    /// The canonical bytes a plan's digest covers.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![match self {
            Optimizer::Fedavg => 0u8,
            Optimizer::Momentum { .. } => 1,
            Optimizer::Adam { .. } => 2,
            Optimizer::Yogi { .. } => 3,
            Optimizer::Adagrad { .. } => 4,
        }];
        let fields: Vec<u32> = match *self {
            Optimizer::Fedavg => vec![],
            Optimizer::Momentum { beta_ppm } => vec![beta_ppm],
            Optimizer::Adam {
                beta1_ppm,
                beta2_ppm,
                tau_ppm,
            }
            | Optimizer::Yogi {
                beta1_ppm,
                beta2_ppm,
                tau_ppm,
            } => vec![beta1_ppm, beta2_ppm, tau_ppm],
            Optimizer::Adagrad { beta1_ppm, tau_ppm } => vec![beta1_ppm, tau_ppm],
        };
        for field in fields {
            out.extend(field.to_le_bytes());
        }
        out
    }

    /// The state before the first round, for a model of `values` values.
    pub fn initial_state(&self, values: usize, scale_bits: u32) -> OptimizerState {
        match self.adaptive() {
            None if self.is_fedavg() => OptimizerState::default(),
            None => OptimizerState {
                first: vec![0; values],
                second: Vec::new(),
            },
            Some((_, _, tau, _)) => {
                let tau = u128::from(tau_at_scale(tau, scale_bits));
                OptimizerState {
                    first: vec![0; values],
                    second: vec![tau * tau; values],
                }
            }
        }
    }

    /// One server step in fixed point: the model after this round from the model before it
    /// (`previous`) and the round's decrypted average (`average`), updating `state`. FedAvg
    /// returns the average itself (its rate is already in the weights).
    pub fn step(
        &self,
        scale: StepScale,
        previous: &[i64],
        average: &[i64],
        state: &mut OptimizerState,
    ) -> Result<Vec<i64>, OptimizerError> {
        if previous.len() != average.len() {
            return Err(OptimizerError::ModelSize {
                previous: previous.len(),
                average: average.len(),
            });
        }
        if self.is_fedavg() {
            return Ok(average.to_vec());
        }
        let expected = self.initial_state(previous.len(), scale.scale_bits);
        if state.first.len() != expected.first.len() || state.second.len() != expected.second.len()
        {
            return Err(OptimizerError::StateSize {
                held: state.first.len(),
                model: previous.len(),
            });
        }
        let ppm = i128::from(PPM);
        let rate = i128::from(scale.rate_millis);
        let bound = i128::from(scale.bound);
        let mut next = Vec::with_capacity(previous.len());
        for i in 0..previous.len() {
            let delta = i128::from(average[i]) - i128::from(previous[i]);
            let step = match (*self, self.adaptive()) {
                (Optimizer::Momentum { beta_ppm }, _) => {
                    let m = div_round(i128::from(beta_ppm) * i128::from(state.first[i]), ppm)
                        .saturating_add(delta);
                    state.first[i] = saturate(m);
                    div_round(rate * m, 1000)
                }
                (_, Some((beta1, beta2, tau, rule))) => {
                    let (beta1, beta2) = (i128::from(beta1), i128::from(beta2));
                    let m = div_round(
                        beta1 * i128::from(state.first[i]) + (ppm - beta1) * delta,
                        ppm,
                    );
                    state.first[i] = saturate(m);
                    // Saturating: a colluder's contribution may hold any value the message
                    // space does, and a step must never panic on it.
                    let square = delta.unsigned_abs().saturating_mul(delta.unsigned_abs());
                    let v = state.second[i];
                    state.second[i] = match rule {
                        Second::Adam => {
                            let v = (beta2.unsigned_abs().saturating_mul(v)).saturating_add(
                                (ppm - beta2).unsigned_abs().saturating_mul(square),
                            );
                            div_round_unsigned(v, PPM.into())
                        }
                        Second::Yogi => {
                            let change = div_round_unsigned(
                                (ppm - beta2).unsigned_abs().saturating_mul(square),
                                PPM.into(),
                            );
                            if v > square { v - change } else { v + change }
                        }
                        Second::Adagrad => v.saturating_add(square),
                    };
                    let root = state.second[i].isqrt() as i128;
                    let denominator = 1000 * (root + tau_at_scale(tau, scale.scale_bits) as i128);
                    div_round(
                        (rate * i128::from(state.first[i])) << scale.scale_bits,
                        denominator,
                    )
                }
                _ => unreachable!("FedAvg returned above"),
            };
            next.push(saturate(
                i128::from(previous[i]) + step.clamp(-bound, bound),
            ));
        }
        Ok(next)
    }

    /// The same step in floating point, without any rounding: the float baseline a plan's
    /// optimizer is compared with. `previous` and `average` are real values (not scaled).
    pub fn step_float(
        &self,
        rate: f64,
        bound: f64,
        previous: &[f64],
        average: &[f64],
        state: &mut FloatState,
    ) -> Vec<f64> {
        if self.is_fedavg() {
            return average.to_vec();
        }
        if state.first.len() != previous.len() {
            state.first = vec![0.0; previous.len()];
            if let Some((_, _, tau, _)) = self.adaptive() {
                let tau = f64::from(tau) / f64::from(PPM);
                state.second = vec![tau * tau; previous.len()];
            }
        }
        let fraction = |ppm: u32| f64::from(ppm) / f64::from(PPM);
        previous
            .iter()
            .zip(average)
            .enumerate()
            .map(|(i, (&x, &a))| {
                let delta = a - x;
                let step = match (*self, self.adaptive()) {
                    (Optimizer::Momentum { beta_ppm }, _) => {
                        state.first[i] = fraction(beta_ppm) * state.first[i] + delta;
                        rate * state.first[i]
                    }
                    (_, Some((beta1, beta2, tau, rule))) => {
                        let (beta1, beta2) = (fraction(beta1), fraction(beta2));
                        state.first[i] = beta1 * state.first[i] + (1.0 - beta1) * delta;
                        let (v, square) = (state.second[i], delta * delta);
                        state.second[i] = match rule {
                            Second::Adam => beta2 * v + (1.0 - beta2) * square,
                            Second::Yogi => v - (1.0 - beta2) * square * (v - square).signum(),
                            Second::Adagrad => v + square,
                        };
                        rate * state.first[i] / (state.second[i].sqrt() + fraction(tau))
                    }
                    _ => unreachable!("FedAvg returned above"),
                };
                x + step.clamp(-bound, bound)
            })
            .collect()
    }
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

/// tau at the model's scale, at least 1 so that no step divides by zero.
fn tau_at_scale(tau_ppm: u32, scale_bits: u32) -> u64 {
    let scaled = (u128::from(tau_ppm) << scale_bits) / u128::from(PPM);
    (scaled as u64).max(1)
}

/// `n / d` rounded half away from zero (d > 0).
pub fn div_round(n: i128, d: i128) -> i128 {
    let half = d / 2;
    if n >= 0 {
        (n + half) / d
    } else {
        -((-n + half) / d)
    }
}

fn div_round_unsigned(n: u128, d: u128) -> u128 {
    n.saturating_add(d / 2) / d
}

fn saturate(value: i128) -> i64 {
    value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCALE: StepScale = StepScale {
        scale_bits: 28,
        rate_millis: 1000,
        bound: 1 << 28,
    };

    fn all() -> Vec<Optimizer> {
        ["fedavg", "momentum", "adam", "yogi", "adagrad"]
            .iter()
            .map(|n| Optimizer::named(n).unwrap())
            .collect()
    }

    /// A reproducible sequence of averages drifting towards a target, as training does.
    fn rounds(values: usize, count: usize) -> Vec<Vec<f64>> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut noise = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2001) as f64 / 1000.0 - 1.0
        };
        (0..count)
            .map(|_| (0..values).map(|_| 0.05 * noise()).collect())
            .collect()
    }

    #[test]
    fn fedavg_takes_the_average_as_the_model_and_keeps_no_state() {
        let mut state = Optimizer::Fedavg.initial_state(3, 28);
        let next = Optimizer::Fedavg
            .step(SCALE, &[1, 2, 3], &[4, -5, 6], &mut state)
            .unwrap();
        assert_eq!(next, vec![4, -5, 6]);
        assert_eq!(state, OptimizerState::default());
    }

    #[test]
    fn every_optimizer_tracks_its_float_reference_to_the_fixed_points_precision() {
        let scale = f64::from(SCALE.scale_bits).exp2();
        for optimizer in all() {
            let mut state = optimizer.initial_state(50, SCALE.scale_bits);
            let mut float_state = FloatState::default();
            let (mut x, mut y) = (vec![0i64; 50], vec![0.0f64; 50]);
            for deltas in rounds(50, 30) {
                let average: Vec<i64> = x
                    .iter()
                    .zip(&deltas)
                    .map(|(x, d)| x + (d * scale).round() as i64)
                    .collect();
                let float_average: Vec<f64> = average.iter().map(|&a| a as f64 / scale).collect();
                let float_previous: Vec<f64> = x.iter().map(|&v| v as f64 / scale).collect();
                x = optimizer.step(SCALE, &x, &average, &mut state).unwrap();
                y = optimizer.step_float(
                    1.0,
                    1.0,
                    &float_previous,
                    &float_average,
                    &mut float_state,
                );
                // An adaptive step of about eta = 1 carries m's quantisation, 2^-28 / |m| with
                // |m| about 0.01, into the model each round: about 4e-7 a round.
                for (fixed, float) in x.iter().zip(&y) {
                    let gap = (*fixed as f64 / scale - float).abs();
                    assert!(gap < 2e-5, "{}: {gap}", optimizer.name());
                }
            }
            assert!(
                y.iter().any(|v| v.abs() > 1e-3),
                "{} moved",
                optimizer.name()
            );
        }
    }

    /// `count` rounds of `values` values from zero: the model and the state's digest.
    fn run(optimizer: Optimizer, values: usize, count: usize) -> (Vec<i64>, Digest) {
        let mut state = optimizer.initial_state(values, 28);
        let mut x = vec![0i64; values];
        for deltas in rounds(values, count) {
            let average: Vec<i64> = x
                .iter()
                .zip(&deltas)
                .map(|(x, d)| x + (d * 1e8) as i64)
                .collect();
            x = optimizer.step(SCALE, &x, &average, &mut state).unwrap();
        }
        (x, state.digest())
    }

    #[test]
    fn the_same_rounds_give_the_same_bits_and_the_same_state_digest() {
        for optimizer in all().into_iter().skip(1) {
            assert_eq!(
                run(optimizer, 20, 5),
                run(optimizer, 20, 5),
                "{}",
                optimizer.name()
            );
        }
    }

    #[test]
    fn the_adaptive_optimizers_differ_from_one_another_and_from_momentum() {
        let finals: Vec<Vec<i64>> = all().into_iter().map(|o| run(o, 10, 8).0).collect();
        for i in 0..finals.len() {
            for j in i + 1..finals.len() {
                assert_ne!(finals[i], finals[j], "{i} and {j}");
            }
        }
    }

    #[test]
    fn a_step_never_exceeds_the_rate_times_the_clip() {
        let adam = Optimizer::named("adam").unwrap();
        let scale = StepScale {
            rate_millis: 100_000,
            bound: 1000,
            ..SCALE
        };
        let mut state = adam.initial_state(2, 28);
        let next = adam
            .step(scale, &[0, 0], &[1 << 27, -(1 << 27)], &mut state)
            .unwrap();
        assert_eq!(next, vec![1000, -1000]);
    }

    #[test]
    fn hyperparameters_out_of_range_are_refused_naming_the_field() {
        let bad = Optimizer::Adam {
            beta1_ppm: PPM,
            beta2_ppm: 990_000,
            tau_ppm: 1000,
        };
        assert_eq!(
            bad.check(),
            Err(OptimizerError::Fraction {
                field: "beta1_ppm",
                value: PPM
            })
        );
        let no_tau = Optimizer::Yogi {
            beta1_ppm: 0,
            beta2_ppm: 0,
            tau_ppm: 0,
        };
        assert_eq!(no_tau.check(), Err(OptimizerError::Tau(0)));
        assert!(all().iter().all(|o| o.check().is_ok()));
    }

    #[test]
    fn a_state_of_another_size_is_refused() {
        let adam = Optimizer::named("adam").unwrap();
        let mut state = adam.initial_state(3, 28);
        assert_eq!(
            adam.step(SCALE, &[0; 4], &[0; 4], &mut state),
            Err(OptimizerError::StateSize { held: 3, model: 4 })
        );
    }

    #[test]
    fn optimizer_encodings_are_golden() {
        let encodings: Vec<String> = all().iter().map(|o| hex::encode(o.encode())).collect();
        assert_eq!(
            encodings,
            [
                "00",
                "01a0bb0d00",
                "02a0bb0d00301b0f00e8030000",
                "03a0bb0d00301b0f00e8030000",
                "04a0bb0d00e8030000",
            ]
        );
    }

    #[test]
    fn a_stored_state_reads_back_only_with_the_plans_sizes() {
        let adam = Optimizer::named("adam").unwrap();
        let mut state = adam.initial_state(3, 28);
        state.first[1] = -7;
        state.second[2] = u128::MAX - 1;
        let bytes = state.encode();
        let expected = adam.initial_state(3, 28);
        // Golden: the counts, the first moments, the second moments, all little-endian.
        let small = OptimizerState {
            first: vec![-2],
            second: vec![3],
        };
        assert_eq!(
            hex::encode(small.encode()),
            "01000000000000000100000000000000feffffffffffffff03000000000000000000000000000000"
        );
        assert_eq!(OptimizerState::decode(&bytes, &expected), Some(state));
        assert_eq!(
            OptimizerState::decode(&bytes[..bytes.len() - 1], &expected),
            None
        );
        assert_eq!(
            OptimizerState::decode(&bytes, &adam.initial_state(4, 28)),
            None
        );
        let momentum = Optimizer::named("momentum").unwrap();
        assert_eq!(
            OptimizerState::decode(&bytes, &momentum.initial_state(3, 28)),
            None
        );
    }

    #[test]
    fn a_plan_names_an_optimizer_by_kind_with_defaults_and_refuses_unknown_fields() {
        #[derive(serde::Deserialize)]
        struct Plan {
            optimizer: Optimizer,
        }
        let parse = |text: &str| toml::from_str::<Plan>(text).map(|p| p.optimizer);
        assert_eq!(
            parse("optimizer = { kind = \"adam\" }").unwrap(),
            Optimizer::named("adam").unwrap()
        );
        assert_eq!(
            parse("optimizer = { kind = \"momentum\", beta_ppm = 500000 }").unwrap(),
            Optimizer::Momentum { beta_ppm: 500_000 }
        );
        let typo = parse("optimizer = { kind = \"yogi\", beta_1_ppm = 1 }").unwrap_err();
        assert!(typo.to_string().contains("beta_1_ppm"), "{typo}");
        assert!(parse("optimizer = { kind = \"sgd\" }").is_err());
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(div_round(5, 2), 3);
        assert_eq!(div_round(-5, 2), -3);
        assert_eq!(div_round(4, 3), 1);
        assert_eq!(div_round(-4, 3), -1);
    }
}
