//! Fixed-point encoding of f32 tensors into the integers the scheme adds exactly.

use rand::Rng;
use rand_core::{CryptoRng, RngCore};

use super::HeError;

/// Values are clipped to [-clip, clip], scaled by 2^fraction_bits and rounded to integers.
/// Sums of encoded values are exact integer sums; only the encoding step loses precision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FixedPointCodec {
    pub clip: f32,
    pub fraction_bits: u32,
}

impl FixedPointCodec {
    pub fn new(clip: f32, fraction_bits: u32) -> Result<Self, HeError> {
        if !(clip.is_finite() && clip > 0.0) {
            return Err(HeError::Config(format!(
                "clip = {clip}: it must be a positive finite number"
            )));
        }
        if fraction_bits > 48 {
            return Err(HeError::Config(format!(
                "fraction_bits = {fraction_bits}: at most 48 are supported"
            )));
        }
        let codec = Self {
            clip,
            fraction_bits,
        };
        if codec.value_bits() > 62 {
            return Err(HeError::Config(format!(
                "clip = {clip} at 2^{fraction_bits} needs {} bits per value, at most 62 fit",
                codec.value_bits()
            )));
        }
        Ok(codec)
    }

    fn scale(&self) -> f64 {
        f64::from(self.fraction_bits).exp2()
    }

    /// Bits one encoded value needs (|v| < 2^value_bits), the `value_bits` of a budget request.
    pub fn value_bits(&self) -> u32 {
        let max = (f64::from(self.clip) * self.scale()).ceil();
        (max + 1.0).log2().ceil() as u32
    }

    /// The largest encoded value: the clip at the codec's scale.
    pub fn max_encoded(&self) -> i64 {
        (f64::from(self.clip) * self.scale()).round() as i64
    }

    /// How many values encoding clamps to [-clip, clip]: a member reports it, since clipping
    /// changes its update without failing.
    pub fn clipped(&self, values: &[f32]) -> usize {
        values.iter().filter(|v| v.abs() > self.clip).count()
    }

    /// Encodes with round-to-nearest. Non-finite input is an error naming the position.
    pub fn encode(&self, values: &[f32]) -> Result<Vec<i64>, HeError> {
        self.encode_with(values, |scaled| scaled.round())
    }

    /// Encodes with stochastic rounding (unbiased in expectation, useful for small updates).
    pub fn encode_stochastic<R: RngCore + CryptoRng>(
        &self,
        values: &[f32],
        rng: &mut R,
    ) -> Result<Vec<i64>, HeError> {
        self.encode_with(values, |scaled| {
            let floor = scaled.floor();
            if rng.r#gen::<f64>() < scaled - floor {
                floor + 1.0
            } else {
                floor
            }
        })
    }

    fn encode_with(
        &self,
        values: &[f32],
        mut round: impl FnMut(f64) -> f64,
    ) -> Result<Vec<i64>, HeError> {
        let clip = f64::from(self.clip);
        let scale = self.scale();
        values
            .iter()
            .enumerate()
            .map(|(index, &value)| {
                if !value.is_finite() {
                    return Err(HeError::NonFinite { index });
                }
                let clipped = f64::from(value).clamp(-clip, clip);
                Ok(round(clipped * scale) as i64)
            })
            .collect()
    }

    /// Decodes integers (possibly sums of many encoded values) back to floats.
    pub fn decode(&self, values: &[i64]) -> Vec<f32> {
        let scale = self.scale();
        values.iter().map(|&v| (v as f64 / scale) as f32).collect()
    }
}
