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

mod state;
mod step;
#[cfg(test)]
mod tests;

pub use state::{OptimizerState, base_seed};
use step::tau_at_scale;
pub use step::{FloatState, StepScale, div_round};

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

/// How the second moment moves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Second {
    Adam,
    Yogi,
    Adagrad,
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

    /// The sizes of the state for a model of `values` values: first and second moments.
    pub fn state_sizes(&self, values: usize) -> (usize, usize) {
        match self.adaptive() {
            _ if self.is_fedavg() => (0, 0),
            None => (values, 0),
            Some(_) => (values, values),
        }
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
}
