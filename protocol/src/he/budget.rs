//! The noise budget: how large Delta and the smudging must be for a configuration, computed
//! from the parameter set, never guessed.
//!
//! Error terms of a decrypted aggregate, per coordinate:
//! - secret-dependent ciphertext noise, at most `L1 * B_ct` where L1 is the L1 norm of all
//!   weights ever applied (weighted sums grow with the L1 norm because every ciphertext shares
//!   the public key's noise) and B_ct bounds one sent ciphertext's noise: the encryption noise
//!   plus the rounding of its mask to a multiple of 2^8 (that error meets the secret, so it is
//!   smudged like the rest);
//! - the rounding of each ciphertext body to its top 64 bits before it is sent, at most 2^63 per
//!   unit of weight (known to the encryptor, independent of the secret, so it needs no smudging);
//! - smudging, uniform in [-2^s, 2^s) per quorum member, with 2^s >= 2^kappa * L1 * B_fresh;
//! - the rounding of each partial decryption to its top 64 bits, at most 2^63 per member.
//!
//! Delta must exceed twice their sum, and the weighted sum of messages must fit in the signed
//! range left above Delta.

use super::{HeError, POLYNOMIAL_SIZE, ParameterSet, QUORATE_RLWE128_V1, ThresholdConfig};

/// Tail bound factor: a Gaussian exceeds 9.42 sigma with probability below 2^-64.
const TAIL_SIGMAS: f64 = 9.42;

/// The smudging lemma bounds the statistical distance per revealed coordinate by 2^-kappa; over
/// the key's life the union bound adds these up. The key is retired before the total reaches
/// 2^-LIFETIME_DISTANCE_BITS.
pub const LIFETIME_DISTANCE_BITS: u32 = 16;

/// Largest smudging margin accepted: beyond it the message space is gone anyway, and the bound
/// keeps every shift and sum below in range.
pub const MAX_KAPPA: u32 = 80;

/// What a consortium intends to do with one key, to be checked before a ceremony or round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetRequest {
    pub config: ThresholdConfig,
    /// Most contributions summed into one decrypted ciphertext per round (members, plus any
    /// re-randomisations).
    pub max_contributions: u32,
    /// Largest absolute integer weight applied to one contribution.
    pub weight_bound: u64,
    /// Every encrypted value v satisfies |v| < 2^value_bits.
    pub value_bits: u32,
    /// Smudging margin in bits (statistical distance 2^-kappa per revealed coordinate).
    pub kappa: u32,
    /// Rounds whose contributions accumulate in one ciphertext before it is decrypted (an
    /// encrypted model updated in place for r rounds has r).
    pub rounds: u32,
}

/// The outcome: where messages sit in the 128-bit word and how much noise each member adds.
/// Only [`Budget::compute`] makes one, so every budget in use has passed its checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    request: BudgetRequest,
    delta_bits: u32,
    smudging_bits: u32,
    spare_bits: u32,
    fresh_noise_bits: f64,
    ciphertext_noise_bits: f64,
}

impl Budget {
    /// Computes the budget or explains which part of the request does not fit.
    pub fn compute(request: BudgetRequest) -> Result<Self, HeError> {
        Self::compute_for(&QUORATE_RLWE128_V1, request)
    }

    fn compute_for(params: &ParameterSet, request: BudgetRequest) -> Result<Self, HeError> {
        let BudgetRequest {
            config,
            max_contributions,
            weight_bound,
            value_bits,
            kappa,
            rounds,
        } = request;
        if kappa < params.min_kappa || kappa > MAX_KAPPA {
            return Err(HeError::Budget(format!(
                "kappa = {kappa}: the smudging margin must be between {} and {MAX_KAPPA} bits",
                params.min_kappa
            )));
        }
        if value_bits == 0 || value_bits > 62 {
            return Err(HeError::Budget(format!(
                "value_bits = {value_bits}: values must take between 1 and 62 bits"
            )));
        }
        if max_contributions == 0 || weight_bound == 0 || rounds == 0 {
            return Err(HeError::Budget(
                "contributions, weight bound and rounds must all be at least 1".into(),
            ));
        }
        let parties = f64::from(config.parties());
        let noise_var = params.noise_std_dev.powi(2) + 1.0 / 12.0;
        // e_pk * rev(r): the summed key noise (variance n * sigma^2) against binary r (E r^2 = 1/2);
        // e1 * rev(s): fresh noise against the summed ternary secret (variance 2n/3); plus e2.
        let fresh_var =
            POLYNOMIAL_SIZE as f64 * noise_var * parties * (0.5 + 2.0 / 3.0) + noise_var;
        let fresh_noise_bits = (TAIL_SIGMAS * fresh_var.sqrt()).log2();
        // Mask rounding error delta (uniform, variance 2^2m / 12) against the summed secret.
        let mask_rounding_var =
            POLYNOMIAL_SIZE as f64 * f64::from(2 * params.mask_dropped_bits).exp2() / 12.0
                * parties
                * 2.0
                / 3.0;
        let ciphertext_noise_bits = (TAIL_SIGMAS * (fresh_var + mask_rounding_var).sqrt()).log2();

        let l1 = f64::from(max_contributions) * weight_bound as f64 * f64::from(rounds);
        let l1_bits = l1.log2();
        let secret_noise_bits = ciphertext_noise_bits + l1_bits;
        // Both terms are bounded (noise below 2^30 per unit weight, L1 below 2^128, kappa <= 80),
        // so the sum cannot overflow; anything past 2^120 leaves no message space.
        let smudging_bits = (secret_noise_bits.ceil() as u32).saturating_add(kappa);
        if smudging_bits >= 120 {
            return Err(HeError::Budget(format!(
                "smudging would need 2^{smudging_bits}: too many contributions or rounds"
            )));
        }
        let threshold = f64::from(config.threshold());
        let body_rounding = f64::from(params.body_dropped_bits - 1).exp2();
        let share_rounding = f64::from(params.share_dropped_bits - 1).exp2();
        let total_error = secret_noise_bits.exp2()
            + l1 * body_rounding
            + threshold * (f64::from(smudging_bits).exp2() + share_rounding);
        // |error| < Delta / 2, with one bit of margin for the floating-point estimate.
        let delta_bits = total_error.log2().ceil() as u32 + 2;
        if delta_bits >= 127 {
            return Err(HeError::Budget(format!(
                "the decryption error would reach 2^{delta_bits}: too many contributions or rounds"
            )));
        }
        let message_bits = i64::from(value_bits) + l1_bits.ceil() as i64;
        // Signed messages live in [-2^(127 - delta), 2^(127 - delta)).
        let available = 127 - i64::from(delta_bits);
        let spare = available - message_bits;
        if spare < 0 {
            return Err(HeError::Budget(format!(
                "values of {value_bits} bits summed with weight L1 norm 2^{:.1} need {message_bits} \
                 message bits, but n = {}, t = {}, kappa = {kappa} leave {available} \
                 (Delta = 2^{delta_bits}); lower value_bits, weights, contributions or rounds",
                l1_bits,
                config.parties(),
                config.threshold(),
            )));
        }
        Ok(Self {
            request,
            delta_bits,
            smudging_bits,
            spare_bits: spare as u32,
            fresh_noise_bits,
            ciphertext_noise_bits,
        })
    }

    pub fn request(&self) -> &BudgetRequest {
        &self.request
    }

    /// Messages are encoded as m * 2^delta_bits.
    pub fn delta_bits(&self) -> u32 {
        self.delta_bits
    }

    /// Each quorum member smudges with noise uniform in [-2^smudging_bits, 2^smudging_bits).
    pub fn smudging_bits(&self) -> u32 {
        self.smudging_bits
    }

    /// Bits to spare between the largest possible aggregate and the top of the message space.
    pub fn spare_bits(&self) -> u32 {
        self.spare_bits
    }

    /// log2 of the high-probability bound of one fresh encryption's noise.
    pub fn fresh_noise_bits(&self) -> f64 {
        self.fresh_noise_bits
    }

    /// log2 of the high-probability bound of the secret-dependent noise of one ciphertext as
    /// sent (fresh noise plus mask rounding), per unit of weight.
    pub fn ciphertext_noise_bits(&self) -> f64 {
        self.ciphertext_noise_bits
    }

    /// Largest absolute value one contribution may hold.
    pub fn max_value(&self) -> i64 {
        (1i64 << self.request.value_bits) - 1
    }

    /// How many decrypted coordinates the key may reveal in its lifetime before the
    /// accumulated smudging distance reaches 2^-LIFETIME_DISTANCE_BITS.
    pub fn lifetime_reveal_limit(&self) -> u64 {
        let bits = self
            .request
            .kappa
            .saturating_sub(LIFETIME_DISTANCE_BITS)
            .min(63);
        1u64 << bits
    }
}

/// Counts what a key has revealed so far and refuses to go past the lifetime limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifetimeLedger {
    pub revealed: u64,
    pub limit: u64,
}

impl LifetimeLedger {
    pub fn new(budget: &Budget) -> Self {
        Self {
            revealed: 0,
            limit: budget.lifetime_reveal_limit(),
        }
    }

    /// Records `values` more revealed coordinates, or refuses if that would exceed the limit.
    pub fn record(&mut self, values: u64) -> Result<(), HeError> {
        let after = self.revealed.saturating_add(values);
        if after > self.limit {
            return Err(HeError::Budget(format!(
                "the key's lifetime budget is spent: {} values revealed, {values} more requested, \
                 limit {} (raise kappa at the next ceremony)",
                self.revealed, self.limit
            )));
        }
        self.revealed = after;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A valid budget for `config` whose Delta differs from the small-value budgets in tests.
    pub(crate) fn budget_with_other_delta(config: ThresholdConfig) -> Budget {
        Budget::compute(BudgetRequest {
            config,
            max_contributions: 1000,
            weight_bound: 1000,
            value_bits: 8,
            kappa: 40,
            rounds: 1,
        })
        .expect("a small request fits")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(value_bits: u32, contributions: u32) -> BudgetRequest {
        BudgetRequest {
            config: ThresholdConfig::new(5, 3).unwrap(),
            max_contributions: contributions,
            weight_bound: 1,
            value_bits,
            kappa: 40,
            rounds: 1,
        }
    }

    #[test]
    fn fresh_noise_matches_the_measured_two_to_the_nine_and_a_half() {
        let budget = Budget::compute(request(20, 5)).unwrap();
        // sigma_fresh ~ 2^9.45 at n = 5; times the 9.42 tail factor ~ 2^12.7.
        assert!(
            (budget.fresh_noise_bits - 12.69).abs() < 0.05,
            "{}",
            budget.fresh_noise_bits
        );
        assert!(budget.smudging_bits >= 40 + 12);
        assert!(budget.delta_bits > budget.smudging_bits);
    }

    #[test]
    fn refuses_exactly_one_bit_past_the_limit() {
        let fits = Budget::compute(request(20, 100)).unwrap();
        let largest = 20 + fits.spare_bits;
        assert!(Budget::compute(request(largest, 100)).is_ok());
        let err = Budget::compute(request(largest + 1, 100)).unwrap_err();
        assert!(err.to_string().contains("message bits"), "{err}");
    }

    #[test]
    fn refuses_small_kappa() {
        let mut req = request(20, 5);
        req.kappa = 39;
        assert!(
            Budget::compute(req)
                .unwrap_err()
                .to_string()
                .contains("kappa")
        );
    }

    #[test]
    fn lifetime_ledger_refuses_past_the_limit() {
        let budget = Budget::compute(request(20, 5)).unwrap();
        let mut ledger = LifetimeLedger::new(&budget);
        assert_eq!(ledger.limit, 1 << 24);
        ledger.record(1 << 23).unwrap();
        ledger.record(1 << 23).unwrap();
        assert!(ledger.record(1).is_err());
        assert_eq!(ledger.revealed, 1 << 24);
    }
}
