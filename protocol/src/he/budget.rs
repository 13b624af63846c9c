//! The noise budget: how large Delta and the smudging must be for a configuration, computed
//! from the parameter set, never guessed.
//!
//! Error terms of a decrypted aggregate, per coordinate:
//! - secret-dependent ciphertext noise, at most `L1 * B_ct` where L1 is the L1 norm of all
//!   weights ever applied (weighted sums grow with the L1 norm because every ciphertext shares
//!   the public key's noise) and B_ct bounds one sent ciphertext's noise: the encryption noise
//!   plus the rounding of its mask to a multiple of 2^8 (that error meets the secret, so it is
//!   smudged like the rest);
//! - the rounding of each ciphertext body before it is sent, at most 2^(d - 1) per unit of
//!   weight for a body window dropping d bits (known to the encryptor, independent of the
//!   secret, so it needs no smudging): Delta is chosen counting d = 64, and the window then
//!   drops as many bits as the room left below Delta / 2 allows (see `body_window`);
//! - smudging, the sum of three independent uniforms in [-2^s, 2^s) per quorum member (so less
//!   than 3 * 2^s), with 2^s >= 2^kappa * L1 * B_ct;
//! - the rounding of each partial decryption at its window's bottom (see `share_window`): at
//!   most 2^63 per member when Delta is chosen, and at most 2^(Delta - 3) for the whole
//!   quorum at the bottom the window then takes.
//!
//! Delta must exceed twice their sum, and the weighted sum of messages must fit in the signed
//! range left above Delta.
//!
//! Where messages are read against a reference ([`Decoding::Relative`]), partials and bodies
//! need only the bits of one round's change above Delta, and Delta may be raised by up to two
//! bits, out of the spare message space, so that partials can be rounded higher (see
//! `layout::relative_layout`); the smudging does not depend on Delta.
//!
//! # Statistical security over the key's life
//!
//! A simulator that knows only the decrypted values can produce every honest partial
//! decryption but one per decrypted coordinate: the one that holds the share the t - 1
//! colluders lack. Its real value differs from the simulated one by the secret-dependent noise
//! e, |e| <= B = L1 * B_ct, under fresh smudging X. With X the sum of three uniforms of width
//! S = 2^s, the squared Hellinger distance between X and X + e is at most c (e / S)^2 with
//! c = I / 8 = 0.1426 (I = 1.1405 the Fisher information of the sum of three uniforms on
//! [-1, 1]; H^2 <= e^2 I / 8 for any location family), which we round up to 0.15. Hellinger
//! affinities multiply over the m decrypted coordinates of the key's life, also when each is
//! chosen adaptively, so H^2 <= c m (B / S)^2, and the statistical distance is at most
//! sqrt(2) H (Le Cam): SD <= sqrt(2 c m) B / S. It grows with sqrt(m), not m as the union bound
//! over one uniform would; with one uniform the Hellinger distance is not quadratic in e, which
//! is why three are summed. The noise bound B itself holds except with probability
//! 2 m exp(-k^2 / 2) for a tail factor k, which is added. See SECURITY.md for the figures.

use super::layout::{Errors, absolute_layout, bit_length, phase_bits, relative_layout};
use super::{HeError, POLYNOMIAL_SIZE, ParameterSet, QUORATE_RLWE128_V1, ThresholdConfig, Window};

/// Tail bound factor: a (sub)Gaussian exceeds 11 sigma with probability below 2^-86, so the
/// noise bound holds over 2^44 coordinates but for 2^-41.
const TAIL_SIGMAS: f64 = 11.0;

/// The statistical distance between real and simulated partial decryptions over a key's whole
/// life stays below 2^-TARGET_SECURITY_BITS: 2^-41 for the smudging, 2^-41 for the noise tail.
pub const TARGET_SECURITY_BITS: u32 = 40;

/// Each quorum member smudges with the sum of this many independent uniforms on [-2^s, 2^s).
pub const SMUDGING_SUMMANDS: u32 = 3;

/// c with H^2(X, X + e) <= c (e / 2^s)^2 for that sum (0.1426, rounded up).
pub const SMUDGING_HELLINGER: f64 = 0.15;

/// -log2 of the statistical distance between real and simulated partial decryptions after
/// `reveals` decrypted coordinates, with smudging `margin_bits` above the noise bound.
pub fn statistical_security_bits(margin_bits: f64, reveals: u64) -> f64 {
    let m = reveals.max(1) as f64;
    let smudging = (2.0 * SMUDGING_HELLINGER * m).sqrt() * (-margin_bits).exp2();
    let tail = 2.0 * m * (-TAIL_SIGMAS * TAIL_SIGMAS / 2.0).exp();
    -(smudging + tail).log2()
}

/// The smallest smudging margin kappa (at least the parameter set's minimum) under which
/// `reveals` decrypted coordinates keep the statistical distance below 2^-TARGET_SECURITY_BITS.
pub fn kappa_for(reveals: u64) -> u32 {
    let m = reveals.max(1) as f64;
    let bits = f64::from(TARGET_SECURITY_BITS) + 1.0 + 0.5 * (2.0 * SMUDGING_HELLINGER * m).log2();
    (bits.ceil() as u32).max(QUORATE_RLWE128_V1.min_kappa)
}

/// Largest smudging margin accepted: beyond it the message space is gone anyway, and the bound
/// keeps every shift and sum below in range.
pub const MAX_KAPPA: u32 = 80;

/// How a combiner reads each decrypted message from its phase, which decides the bits a
/// partial decryption and a ciphertext body must keep above Delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoding {
    /// From the phase alone: any message the budget allows (|m| < 2^message_bits), so the
    /// windows reach above the largest of them.
    Absolute,
    /// Relative to a reference every combiner holds, from which each message differs by at
    /// most `bound` in magnitude: a round's model read against the model the round builds on,
    /// which every member that combines holds (it recomputed the aggregate from it). The
    /// windows then reach only above `bound`, one round's change, whatever the rounds summed.
    Relative { bound: u64 },
}

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
    /// How decrypted messages are read (see [`Decoding`]).
    pub decoding: Decoding,
}

/// The outcome: where messages sit in the 128-bit word and how much noise each member adds.
/// Only [`Budget::compute`] makes one, so every budget in use has passed its checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    request: BudgetRequest,
    delta_bits: u32,
    smudging_bits: u32,
    spare_bits: u32,
    /// Bits of the largest message a combiner must tell apart (see [`Budget::read_bits`]).
    read_bits: u32,
    share_window: Window,
    body_window: Window,
    fresh_noise_bits: f64,
    ciphertext_noise_bits: f64,
    /// log2 of B: the bound of the secret-dependent noise of any decrypted ciphertext.
    secret_noise_bits: f64,
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
            decoding,
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
        // One member's smudging: the sum of its uniforms.
        let smudging = f64::from(SMUDGING_SUMMANDS) * f64::from(smudging_bits).exp2();
        let total_error =
            secret_noise_bits.exp2() + l1 * body_rounding + threshold * (smudging + share_rounding);
        // |error| < Delta / 2 with a bit to spare: the partials' window takes half of it (see
        // `share_window`) and the bodies' window part of the rest (see `body_window`), which
        // leaves an eighth of Delta / 2.
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
        let message_bits = message_bits as u32;
        let errors = Errors {
            secret_noise: secret_noise_bits.exp2(),
            smudging,
            threshold,
            l1,
        };
        let layout = match decoding {
            Decoding::Absolute => {
                absolute_layout(delta_bits, message_bits, config.threshold(), &errors)
            }
            Decoding::Relative { bound } => {
                // Within the message bits, the window's top stays at or below bit 128 whatever
                // Delta the layout takes out of the spare bits.
                if bound == 0 || bit_length(bound) > message_bits {
                    return Err(HeError::Budget(format!(
                        "a relative decoding's bound of {bound} must be at least 1 and take no \
                         more than the {message_bits} message bits"
                    )));
                }
                relative_layout(delta_bits, spare as u32, bit_length(bound), &errors)
            }
        };
        Ok(Self {
            request,
            delta_bits: layout.delta_bits,
            smudging_bits,
            spare_bits: spare as u32 - (layout.delta_bits - delta_bits),
            read_bits: layout.read_bits,
            share_window: layout.share_window,
            body_window: layout.body_window,
            fresh_noise_bits,
            ciphertext_noise_bits,
            secret_noise_bits,
        })
    }

    pub fn request(&self) -> &BudgetRequest {
        &self.request
    }

    /// Messages are encoded as m * 2^delta_bits.
    pub fn delta_bits(&self) -> u32 {
        self.delta_bits
    }

    /// Each quorum member smudges with the sum of [`SMUDGING_SUMMANDS`] uniforms in
    /// [-2^smudging_bits, 2^smudging_bits).
    pub fn smudging_bits(&self) -> u32 {
        self.smudging_bits
    }

    /// Bits to spare between the largest possible aggregate and the top of the message space.
    pub fn spare_bits(&self) -> u32 {
        self.spare_bits
    }

    /// The bits of each partial decryption its member sends: rounded a few bits under Delta,
    /// reduced just above the largest phase (see `share_window` in this module).
    pub fn share_window(&self) -> Window {
        self.share_window
    }

    /// The bits of each ciphertext body its encryptor sends: rounded where the room Delta
    /// leaves covers every body an aggregate sums, reduced just above the largest phase (see
    /// `body_window` in this module).
    pub fn body_window(&self) -> Window {
        self.body_window
    }

    /// Whether a partial kept in `window` combines exactly under this budget: it keeps every
    /// bit the budget's own window keeps from its bottom up to the phase's top, and rounds
    /// no more. A window chosen by an earlier rule (all the top 64 bits, as before windows;
    /// a wider one) still does, so what was released or recorded before stays combinable.
    pub fn admits(&self, window: Window) -> bool {
        window.dropped_bits() <= self.share_window.dropped_bits()
            && window.top_bit() >= self.phase_bits()
    }

    /// Whether ciphertext bodies kept in `window` decrypt exactly under this budget: rounded
    /// no higher than the budget's body window, and kept up to the phase's top. All the top 64
    /// bits (every body before windows) always are. Encryption and combination both ask here.
    pub fn check_body(&self, window: Window) -> Result<(), HeError> {
        if window.dropped_bits() <= self.body_window.dropped_bits()
            && window.top_bit() >= self.phase_bits()
        {
            return Ok(());
        }
        Err(HeError::Mismatch(format!(
            "a ciphertext keeping {window} of its bodies does not decrypt exactly under this \
             budget, which rounds them at bit {} at most and needs them up to bit {}",
            self.body_window.dropped_bits(),
            self.phase_bits()
        )))
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

    /// Bits of the largest message a decrypted ciphertext may hold: values of `value_bits`
    /// summed with the request's whole weight L1 norm.
    pub fn message_bits(&self) -> u32 {
        let r = &self.request;
        let l1 = f64::from(r.max_contributions) * r.weight_bound as f64 * f64::from(r.rounds);
        r.value_bits + l1.log2().ceil() as u32
    }

    /// Bits of the largest message a combiner must tell apart: the message bits when it reads
    /// messages from their phase alone, the bit length of the bound when it reads them against
    /// a reference (see [`Decoding`]).
    pub fn read_bits(&self) -> u32 {
        self.read_bits
    }

    /// The bits a combined phase needs: it is known from its residue modulo 2^phase_bits.
    pub fn phase_bits(&self) -> u32 {
        phase_bits(self.delta_bits, self.read_bits)
    }

    /// log2 of B, the bound of the secret-dependent noise of any decrypted ciphertext.
    #[cfg(test)]
    pub(crate) fn secret_noise_bits(&self) -> f64 {
        self.secret_noise_bits
    }

    /// The smudging's margin over the secret-dependent noise, in bits (at least kappa).
    pub fn margin_bits(&self) -> f64 {
        f64::from(self.smudging_bits) - self.secret_noise_bits
    }

    /// -log2 of the statistical distance of everything the key's partial decryptions reveal
    /// after `reveals` decrypted coordinates (see the module documentation).
    pub fn statistical_security_bits(&self, reveals: u64) -> f64 {
        statistical_security_bits(self.margin_bits(), reveals)
    }

    /// How many decrypted coordinates the key may reveal in its lifetime while the statistical
    /// distance stays below 2^-TARGET_SECURITY_BITS (each of its two terms below 2^-41).
    pub fn lifetime_reveal_limit(&self) -> u64 {
        let target = f64::from(TARGET_SECURITY_BITS) + 1.0;
        let by_smudging = (2.0 * (self.margin_bits() - target)).exp2() / (2.0 * SMUDGING_HELLINGER);
        let by_tail =
            (TAIL_SIGMAS * TAIL_SIGMAS / 2.0 * std::f64::consts::LOG2_E - target - 1.0).exp2();
        let limit = by_smudging.min(by_tail).floor();
        if limit >= u64::MAX as f64 {
            u64::MAX
        } else {
            limit as u64
        }
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
            decoding: Decoding::Absolute,
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
            decoding: Decoding::Absolute,
        }
    }

    #[test]
    fn fresh_noise_matches_the_measured_two_to_the_nine_and_a_half() {
        let budget = Budget::compute(request(20, 5)).unwrap();
        // sigma_fresh ~ 2^9.45 at n = 5; times the 11 tail factor ~ 2^12.9.
        assert!(
            (budget.fresh_noise_bits - 12.91).abs() < 0.05,
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

    /// `bench he`'s plan (5 contributions of weight 1, one round, kappa sized for 10^11
    /// coordinates): bodies of 2, 4 and 5 bytes for 8, 20 and 32 value bits, so ciphertexts of
    /// 17, 19 and 20 bytes a value with 15 of mask.
    #[test]
    fn bodies_take_2_4_and_5_bytes_at_bench_hes_plan_for_8_20_and_32_value_bits() {
        for (value_bits, body) in [(8, 2), (20, 4), (32, 5)] {
            let budget = Budget::compute(BudgetRequest {
                kappa: kappa_for(100_000_000_000),
                ..request(value_bits, 5)
            })
            .unwrap();
            assert_eq!(budget.delta_bits(), 85);
            assert_eq!(
                budget.body_window().bytes(),
                body,
                "{value_bits} value bits"
            );
        }
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
        assert_eq!(ledger.limit, budget.lifetime_reveal_limit());
        ledger.record(ledger.limit - 1).unwrap();
        ledger.record(1).unwrap();
        assert!(ledger.record(1).is_err());
        assert_eq!(ledger.revealed, ledger.limit);
    }

    /// The constant behind the lifetime bound: for the exact discrete sum of three uniforms on
    /// {-S, ..., S - 1}, the squared Hellinger distance to its shift by one is at most
    /// SMUDGING_HELLINGER / S^2, approaching the continuous 0.1426 / S^2 as S grows.
    #[test]
    fn three_summed_uniforms_meet_the_hellinger_constant() {
        let mut previous = f64::INFINITY;
        for bits in 3..=10u32 {
            let width = 1usize << bits;
            let uniform = vec![1.0 / (2 * width) as f64; 2 * width];
            let convolve = |a: &[f64], b: &[f64]| {
                let mut out = vec![0.0; a.len() + b.len() - 1];
                for (i, x) in a.iter().enumerate() {
                    for (j, y) in b.iter().enumerate() {
                        out[i + j] += x * y;
                    }
                }
                out
            };
            let p = convolve(&convolve(&uniform, &uniform), &uniform);
            let affinity: f64 = (0..=p.len())
                .map(|x| {
                    let here = p.get(x).copied().unwrap_or(0.0);
                    let shifted = x
                        .checked_sub(1)
                        .and_then(|y| p.get(y))
                        .copied()
                        .unwrap_or(0.0);
                    (here * shifted).sqrt()
                })
                .sum();
            let scaled = (1.0 - affinity) * (width * width) as f64;
            assert!(scaled <= SMUDGING_HELLINGER, "S = 2^{bits}: {scaled}");
            assert!(scaled >= 0.14, "S = 2^{bits}: {scaled}");
            // It settles from above towards the continuous value as S grows.
            assert!(
                scaled <= previous + 1e-9,
                "S = 2^{bits}: {scaled} after {previous}"
            );
            previous = scaled;
        }
        assert!((previous - 0.1426).abs() < 0.002, "{previous}");
    }

    #[test]
    fn the_lifetime_bound_reaches_forty_bits_over_a_hundred_billion_coordinates() {
        // The sizing rule: kappa_for(m) keeps m coordinates at 40 bits or more.
        for reveals in [1u64, 200_000, 30_000_000, 100_000_000_000, 400_000_000_000] {
            let kappa = kappa_for(reveals);
            assert!(
                statistical_security_bits(f64::from(kappa), reveals) >= 40.0,
                "{reveals}: kappa {kappa}"
            );
            if kappa > 40 {
                assert!(statistical_security_bits(f64::from(kappa - 1), reveals) < 41.0);
            }
        }
        assert_eq!(kappa_for(100_000_000_000), 59);
        assert_eq!(kappa_for(1), 41);
        // A budget sized for 10^11 coordinates allows them.
        let mut req = request(20, 5);
        req.kappa = kappa_for(100_000_000_000);
        let budget = Budget::compute(req).unwrap();
        assert!(budget.lifetime_reveal_limit() >= 100_000_000_000);
        assert!(budget.statistical_security_bits(100_000_000_000) >= 40.0);
        // The same key at kappa = 40 covers far fewer.
        let small = Budget::compute(request(20, 5)).unwrap();
        assert!(small.statistical_security_bits(100_000_000_000) < 30.0);
    }
}
