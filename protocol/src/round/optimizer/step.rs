//! The server step itself: in fixed point, as every member applies it, and in floating point,
//! as the float baseline does.

use super::{Optimizer, OptimizerError, OptimizerState, PPM, Second};

/// The float reference's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FloatState {
    pub first: Vec<f64>,
    pub second: Vec<f64>,
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
        // Sizes only: the initial state itself would be an allocation the size of the model
        // on every step.
        let (first, second) = self.state_sizes(previous.len());
        if state.first.len() != first || state.second.len() != second {
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

/// tau at the model's scale, at least 1 so that no step divides by zero.
pub(super) fn tau_at_scale(tau_ppm: u32, scale_bits: u32) -> u64 {
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
