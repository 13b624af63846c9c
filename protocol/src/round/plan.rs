//! The round plan: the agreement every member and the coordinator share for a training run.

use sha2::{Digest as _, Sha256};

use super::RoundError;
use super::initial::InitialModel;
use super::optimizer::{Optimizer, OptimizerState, StepScale};
use crate::audit::entry::Digest;
use crate::bytes::Writer;
use crate::he::{Budget, BudgetRequest, Decoding, FixedPointCodec, ThresholdConfig};

/// The digest of a decoded model, as `decryption result` entries carry it.
pub type ModelDigest = Digest;

/// Largest sample count a contribution may declare: weights are computed in 128-bit integers.
pub const MAX_SAMPLES: u64 = 1 << 40;
/// Largest model a plan may describe (values per contribution): the most a ciphertext may hold.
/// One limit, not two: a plan larger than the wire takes would have every member encrypt its
/// update only for the coordinator to refuse it.
pub const MAX_PLAN_VALUES: u32 = crate::he::MAX_VALUES as u32;
const _: () = assert!(crate::he::MAX_VALUES <= u32::MAX as u64);
/// Largest scale of the model's integers under a server optimizer.
pub const MAX_OPTIMIZER_SCALE_BITS: u32 = 40;

/// What a training run agrees on. Members refuse a round whose `round open` names another
/// plan digest, so the coordinator cannot change the codec, the aggregation rule or the
/// retry cap on its own.
///
/// The encrypted global model holds integers at scale 2^(fraction_bits + weight_bits): a
/// contribution (an update at scale 2^fraction_bits) enters with the integer weight
/// round(2^weight_bits * rate * n_i / sum n_j), so every round keeps one scale and a dropout
/// only renormalises the weights of those who did contribute.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundPlan {
    /// Values in the model (and in every update).
    pub values: u32,
    /// Updates are clipped to [-clip, clip] before encoding.
    pub clip: f32,
    /// Fixed-point fraction bits of an update.
    pub fraction_bits: u8,
    /// Extra scale 2^weight_bits at which the aggregation weights are integers.
    pub weight_bits: u8,
    /// The server learning rate, in thousandths (1000 = plain FedAvg).
    pub server_rate_millis: u32,
    /// Rounds one key serves; the noise budget grows with them.
    pub rounds: u32,
    /// Re-randomised retries of one round's decryption, at most.
    pub max_retries: u8,
    /// Smudging margin in bits.
    pub kappa: u8,
    /// Largest ratio between two contributions' declared sample counts in one aggregate. A
    /// member declaring far more samples than the others would dominate the weighted sum and
    /// make it reveal little more than its own update and one other's; this bounds that.
    #[serde(default = "default_sample_ratio")]
    pub max_sample_ratio: u32,
    /// The digest of the model every member starts from (see [`InitialModel`]); absent, only
    /// the all-zero model is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_model: Option<InitialModel>,
    /// The server optimizer. FedAvg runs entirely under encryption; the others are applied
    /// by every member to each decrypted average (see [`super::optimizer`]), and the next
    /// round builds on the result encrypted by the members.
    #[serde(default, skip_serializing_if = "Optimizer::is_fedavg")]
    pub optimizer: Optimizer,
    /// How many leading values are the network's parameters, which the optimizer moves; the
    /// rest (the pooled feature statistics) take each round's average as it is. Absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u32>,
    /// Members read each decrypted model against the model the round builds on, which every
    /// member that combines holds (see [`crate::he::Decoding`]): partial decryptions and
    /// bodies then keep one round's range of bits, not the whole run's. Plans written before
    /// it lack it (false), so their keys' ciphertexts and partials keep the layout they had.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relative_decoding: bool,
}

fn default_sample_ratio() -> u32 {
    100
}

impl Default for RoundPlan {
    fn default() -> Self {
        Self {
            values: 1000,
            clip: 1.0,
            fraction_bits: 16,
            weight_bits: 12,
            server_rate_millis: 1000,
            rounds: 50,
            max_retries: 3,
            // Sized for 1000 values over 50 rounds of up to 4 attempts (see `sized`).
            kappa: 49,
            max_sample_ratio: default_sample_ratio(),
            initial_model: None,
            optimizer: Optimizer::Fedavg,
            parameters: None,
            relative_decoding: true,
        }
    }
}

impl RoundPlan {
    /// Checks the plan against itself and the threshold configuration, returning its budget.
    pub fn budget(&self, config: ThresholdConfig) -> Result<Budget, RoundError> {
        let plan = |reason: String| RoundError::Plan(reason);
        if self.values == 0 || self.values > MAX_PLAN_VALUES {
            return Err(plan(format!(
                "values = {}: a model has between 1 and {MAX_PLAN_VALUES} values",
                self.values
            )));
        }
        if self.weight_bits > 30 {
            return Err(plan(format!(
                "weight_bits = {}: at most 30",
                self.weight_bits
            )));
        }
        if self.server_rate_millis == 0 || self.server_rate_millis > 100_000 {
            return Err(plan(format!(
                "server_rate_millis = {}: between 1 and 100000",
                self.server_rate_millis
            )));
        }
        if self.max_retries > crate::audit::verify::MAX_ATTEMPT {
            return Err(plan(format!(
                "max_retries = {}: at most {}",
                self.max_retries,
                crate::audit::verify::MAX_ATTEMPT
            )));
        }
        self.optimizer.check().map_err(|e| plan(e.to_string()))?;
        if let Some(parameters) = self.parameters
            && parameters > self.values
        {
            return Err(plan(format!(
                "parameters = {parameters}: more than the model's {} values",
                self.values
            )));
        }
        // The fixed-point step shifts first moments by the model's scale in 128 bits, and
        // squares values at that scale: 40 bits of scale leave room for both.
        if !self.optimizer.is_fedavg() && self.model_scale_bits() > MAX_OPTIMIZER_SCALE_BITS {
            return Err(plan(format!(
                "fraction_bits + weight_bits = {}: a server optimizer needs at most \
                 {MAX_OPTIMIZER_SCALE_BITS}",
                self.model_scale_bits()
            )));
        }
        let codec = self.codec()?;
        let budget = Budget::compute(BudgetRequest {
            config,
            // The weights of one round sum to the rate at scale 2^weight_bits, plus at most
            // one unit of rounding per member, plus one encryption of zero per retry: that
            // sum bounds the L1 norm of everything added to the model in a round.
            max_contributions: 1,
            weight_bound: self.weight_bound()
                + u64::from(config.parties())
                + u64::from(self.max_retries),
            value_bits: codec.value_bits(),
            kappa: u32::from(self.kappa),
            rounds: self.rounds,
            decoding: if self.relative_decoding {
                Decoding::Relative {
                    bound: self.round_bound(config, &codec),
                }
            } else {
                Decoding::Absolute
            },
        })
        .map_err(|e| plan(e.to_string()))?;
        // Every round reveals the model once per attempt: the key's lifetime must cover that,
        // or members would refuse mid-run.
        let reveals = self.lifetime_reveals();
        if reveals > budget.lifetime_reveal_limit() {
            return Err(plan(format!(
                "{} rounds of {} values with up to {} retries reveal {reveals} values, more than \
                 the {} that kappa = {} allows; raise kappa to {}",
                self.rounds,
                self.values,
                self.max_retries,
                budget.lifetime_reveal_limit(),
                self.kappa,
                Self::kappa_for(reveals)
            )));
        }
        Ok(budget)
    }

    /// Values a key may reveal over the plan: every round, every attempt.
    pub fn lifetime_reveals(&self) -> u64 {
        u64::from(self.values) * u64::from(self.rounds) * (1 + u64::from(self.max_retries))
    }

    /// The smallest smudging margin whose lifetime covers `reveals` values at the target
    /// statistical security (see `he::budget`).
    pub fn kappa_for(reveals: u64) -> u8 {
        crate::he::kappa_for(reveals).min(u32::from(u8::MAX)) as u8
    }

    /// This plan with kappa raised, where needed, to cover its own lifetime: what a plan for a
    /// model of `values` parameters over `rounds` rounds should use.
    pub fn sized(mut self) -> Self {
        self.kappa = self.kappa.max(Self::kappa_for(self.lifetime_reveals()));
        self
    }

    pub fn codec(&self) -> Result<FixedPointCodec, RoundError> {
        FixedPointCodec::new(self.clip, u32::from(self.fraction_bits))
            .map_err(|e| RoundError::Plan(e.to_string()))
    }

    /// The largest weight any contribution can receive: the whole rate, rounded up. Under
    /// another optimizer than FedAvg this also bounds a step (at most the rate times the clip
    /// per value, see [`RoundPlan::step_scale`]), so the larger of the two rates counts.
    pub fn weight_bound(&self) -> u64 {
        let rate = self.aggregation_rate_millis().max(self.server_rate_millis);
        ((u64::from(rate) << self.weight_bits) / 1000) + 1
    }

    /// The rate in the aggregation weights: the server rate under FedAvg; 1 under any other
    /// optimizer, whose step applies the server rate to the decrypted average.
    pub fn aggregation_rate_millis(&self) -> u32 {
        if self.optimizer.is_fedavg() {
            self.server_rate_millis
        } else {
            1000
        }
    }

    /// The integers a server step takes: the model's scale, the server rate, and the largest
    /// step per value (the rate times the clip at the model's scale).
    pub fn step_scale(&self) -> Result<StepScale, RoundError> {
        let clip = self.codec()?.max_encoded();
        let bound =
            (i128::from(clip) << self.weight_bits) * i128::from(self.server_rate_millis) / 1000;
        Ok(StepScale {
            scale_bits: self.model_scale_bits(),
            rate_millis: self.server_rate_millis,
            bound: bound.min(i128::from(i64::MAX)) as i64,
        })
    }

    /// Values the optimizer moves: the parameters, not the statistics region after them.
    pub fn optimized_values(&self) -> usize {
        self.parameters.unwrap_or(self.values).min(self.values) as usize
    }

    /// The optimizer's state before the first round.
    pub fn initial_optimizer_state(&self) -> OptimizerState {
        self.optimizer
            .initial_state(self.optimized_values(), self.model_scale_bits())
    }

    /// The model after a round from the model before it and the round's decrypted average:
    /// the optimizer's step on the parameters, the average as it is on the rest.
    pub fn server_step(
        &self,
        previous: &[i64],
        average: &[i64],
        state: &mut OptimizerState,
    ) -> Result<Vec<i64>, RoundError> {
        let split = self
            .optimized_values()
            .min(previous.len())
            .min(average.len());
        let mut next = self
            .optimizer
            .step(
                self.step_scale()?,
                &previous[..split],
                &average[..split],
                state,
            )
            .map_err(|e| RoundError::Plan(e.to_string()))?;
        next.extend_from_slice(&average[split..]);
        // Every value within what an honest run can reach, so the members' encryption of the
        // model always fits the message space: a colluder's malformed contribution may put
        // anything into an average (FedAvg would only decode a bad model from it), and an
        // encryption refused at every member would stop the chain for good.
        let bound = self.model_bound();
        for value in &mut next {
            *value = (*value).clamp(-bound, bound);
        }
        Ok(next)
    }

    /// The largest absolute value of the model an honest run reaches: every round adds at
    /// most the weight bound times the largest encoded value. Under the plan's budget this
    /// lies within the message space.
    pub fn model_bound(&self) -> i64 {
        let largest = self.codec().map_or(0, |c| (1i128 << c.value_bits()) - 1);
        (largest * i128::from(self.weight_bound()) * i128::from(self.rounds)).min((1 << 62) - 1)
            as i64
    }

    /// The most one round's decryption differs from the model it builds on, per value: the
    /// largest encoded update times the aggregation weights, which sum to the aggregation
    /// rate at scale 2^weight_bits plus a unit of rounding per member (an encryption of zero
    /// added for a retry moves nothing). Under a server optimizer the model then moves by
    /// its step, which the next round's base holds, so the step's size does not count here.
    /// A malformed contribution can move a value further; it then wraps within the bound's
    /// bits instead of the run's, and is as wrong either way.
    fn round_bound(&self, config: ThresholdConfig, codec: &FixedPointCodec) -> u64 {
        let rate = u128::from(self.aggregation_rate_millis());
        let weights = ((rate << self.weight_bits) / 1000 + 1) + u128::from(config.parties());
        let largest = u128::from(codec.max_encoded().unsigned_abs());
        (largest * weights).min(u128::from(u64::MAX)) as u64
    }

    /// Bits of scale of the global model's integers.
    pub fn model_scale_bits(&self) -> u32 {
        u32::from(self.fraction_bits) + u32::from(self.weight_bits)
    }

    /// The integer weight of each contribution from the declared sample counts:
    /// round(2^weight_bits * rate * n_i / sum n_j), computed exactly. A zero count gets no
    /// weight and is refused, since it would count towards `k_min` without being in the sum.
    pub fn weights(&self, samples: &[u64]) -> Result<Vec<i64>, RoundError> {
        if let Some(i) = samples.iter().position(|&n| n == 0 || n > MAX_SAMPLES) {
            return Err(RoundError::Plan(format!(
                "contribution {i} declares {} samples (1 to {MAX_SAMPLES})",
                samples[i]
            )));
        }
        let total: u128 = samples.iter().map(|&n| u128::from(n)).sum();
        if total == 0 {
            return Err(RoundError::Plan("no contributions to weigh".into()));
        }
        let (least, most) = (
            samples.iter().min().copied().unwrap_or(0),
            samples.iter().max().copied().unwrap_or(0),
        );
        if u128::from(most) > u128::from(least) * u128::from(self.max_sample_ratio.max(1)) {
            return Err(RoundError::Plan(format!(
                "declared sample counts from {least} to {most} differ by more than the plan's \
                 ratio of {}",
                self.max_sample_ratio
            )));
        }
        let denominator = 1000 * total;
        let weights: Vec<i64> = samples
            .iter()
            .map(|&n| {
                let numerator = (u128::from(self.aggregation_rate_millis()) << self.weight_bits)
                    * u128::from(n);
                ((2 * numerator + denominator) / (2 * denominator)) as i64
            })
            .collect();
        // A contribution weighted zero would count towards k_min without being in the sum.
        if let Some(i) = weights.iter().position(|&w| w == 0) {
            return Err(RoundError::Plan(format!(
                "contribution {i} would get weight 0 at 2^{} (too many contributions or too \
                 few weight bits)",
                self.weight_bits
            )));
        }
        Ok(weights)
    }

    /// The global model as floats: its integers divided by the model's scale.
    pub fn decode_model(&self, model: &[i64]) -> Vec<f32> {
        let scale = f64::from(self.model_scale_bits()).exp2();
        model.iter().map(|&v| (v as f64 / scale) as f32).collect()
    }

    /// One round's plaintext fixed-point aggregation: `model += sum of weight_i *
    /// encode(update_i)` with this plan's codec and weights. Under FedAvg this is the round;
    /// under another optimizer, [`RoundPlan::reference_round`] applies its step after it.
    pub fn fedavg_step(
        &self,
        model: &mut [i64],
        updates: &[(Vec<f32>, u64)],
    ) -> Result<(), RoundError> {
        let codec = self.codec()?;
        let samples: Vec<u64> = updates.iter().map(|(_, n)| *n).collect();
        let weights = self.weights(&samples)?;
        for ((update, _), weight) in updates.iter().zip(weights) {
            let encoded = codec
                .encode(update)
                .map_err(|e| RoundError::Plan(e.to_string()))?;
            for (m, u) in model.iter_mut().zip(encoded) {
                *m += weight * u;
            }
        }
        Ok(())
    }

    /// One whole round of the plaintext fixed-point reference: the aggregation, then the
    /// server step. The encrypted rounds must match it bit for bit.
    pub fn reference_round(
        &self,
        model: &mut Vec<i64>,
        state: &mut OptimizerState,
        updates: &[(Vec<f32>, u64)],
    ) -> Result<(), RoundError> {
        let mut average = model.clone();
        self.fedavg_step(&mut average, updates)?;
        *model = self.server_step(model, &average, state)?;
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(b"quorate/round-plan/v1\0")
            .u32(self.values)
            .u32(self.clip.to_bits())
            .u8(self.fraction_bits)
            .u8(self.weight_bits)
            .u32(self.server_rate_millis)
            .u32(self.rounds)
            .u8(self.max_retries)
            .u8(self.kappa)
            .u32(self.max_sample_ratio);
        // Appended only when pinned, so that the digests of plans without one are unchanged.
        if let Some(initial) = &self.initial_model {
            w.bytes(b"initial-model").bytes(&initial.0);
        }
        // Likewise only under another optimizer than FedAvg.
        if !self.optimizer.is_fedavg() {
            w.bytes(b"optimizer")
                .bytes(&self.optimizer.encode())
                .u32(self.optimized_values() as u32);
        }
        // Likewise only when set.
        if self.relative_decoding {
            w.bytes(b"relative-decoding");
        }
        w.into_bytes()
    }

    /// The digest `round open` entries carry (as their payload).
    pub fn digest(&self) -> Digest {
        Sha256::digest(self.encode()).into()
    }
}

/// The digest of a decoded global model (integers at the model's scale), as members log it.
pub fn model_digest(model: &[i64]) -> ModelDigest {
    let mut hasher = ModelHasher::new(model.len() as u64);
    for chunk in model.chunks(8192) {
        hasher.update(chunk);
    }
    hasher.finalize()
}

/// [`model_digest`] over a model given in consecutive pieces, for a model read from disk a
/// piece at a time.
pub struct ModelHasher(Sha256);

impl std::fmt::Debug for ModelHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelHasher")
    }
}

impl ModelHasher {
    /// A model of `values` values in all.
    pub fn new(values: u64) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"quorate/model/v1\0");
        hasher.update(values.to_le_bytes());
        Self(hasher)
    }

    pub fn update(&mut self, piece: &[i64]) {
        for chunk in piece.chunks(8192) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.0.update(&bytes);
        }
    }

    pub fn finalize(self) -> ModelDigest {
        self.0.finalize().into()
    }
}
