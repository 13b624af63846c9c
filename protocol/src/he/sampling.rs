//! Samplers for secrets, encryption randomness and smudging noise.
//!
//! Everything draws from a caller-supplied CSPRNG in bulk (`fill_bytes`), because per-call
//! overhead would dominate: one encryption of 1M values needs 2M noise samples.

use rand_core::{CryptoRng, RngCore};
use std::sync::OnceLock;

/// Entries of the cumulative table; beyond ~13 sigma the probability is below 2^-63.
const CDT_LEN: usize = 48;

/// Low 63 bits of a word: the uniform part of a Gaussian draw (the top bit is the sign).
const MAGNITUDE_BITS: u64 = (1u64 << 63) - 1;

/// A sampler for the rounded continuous Gaussian of a given standard deviation, the same
/// distribution tfhe draws its noise from (a continuous Gaussian rounded to the nearest
/// integer), by inversion of a 63-bit cumulative table. The scan is branch-free, so the time
/// taken does not depend on the sample.
#[derive(Debug)]
pub struct GaussianSampler {
    /// `cumulative[k]` = 2^63 * P(|X| <= k), saturating at 2^63.
    cumulative: [u64; CDT_LEN],
    /// Entries before the first saturated one: the only thresholds a 63-bit draw can pass.
    live: usize,
}

impl GaussianSampler {
    pub fn new(std_dev: f64) -> Self {
        let scale = (1u64 << 63) as f64;
        let mut cumulative = [0u64; CDT_LEN];
        for (k, entry) in cumulative.iter_mut().enumerate() {
            // P(|X| > k) for the rounded Gaussian is P(|Y| >= k + 1/2) = erfc((k + 1/2) / (sigma sqrt 2)).
            let tail = libm::erfc((k as f64 + 0.5) / (std_dev * std::f64::consts::SQRT_2));
            let tail_scaled = (tail * scale).round();
            *entry = (1u64 << 63) - (tail_scaled as u64).min(1u64 << 63);
        }
        let live = cumulative
            .iter()
            .position(|&c| c == 1u64 << 63)
            .unwrap_or(CDT_LEN);
        Self { cumulative, live }
    }

    /// The sampler for the parameter set's noise (sigma = 3.19), built once.
    pub fn standard() -> &'static GaussianSampler {
        static SAMPLER: OnceLock<GaussianSampler> = OnceLock::new();
        SAMPLER.get_or_init(|| GaussianSampler::new(super::QUORATE_RLWE128_V1.noise_std_dev))
    }

    /// Turns one uniform 64-bit word into one sample: the low 63 bits pick the magnitude by
    /// inversion, the top bit the sign.
    #[inline(always)]
    pub fn sample_from_word(&self, word: u64) -> i64 {
        let uniform = word & MAGNITUDE_BITS;
        let magnitude: u64 = self.cumulative[..self.live]
            .iter()
            .map(|&threshold| u64::from(uniform >= threshold))
            .sum();
        apply_sign(magnitude, word)
    }

    /// Fills `out` with samples reduced mod 2^128. Draws are processed in blocks, threshold by
    /// threshold, so the comparisons vectorise (with AVX2 or AVX-512 where the CPU has them).
    pub fn fill_u128<R: RngCore + CryptoRng>(&self, rng: &mut R, out: &mut [u128]) {
        const BLOCK: usize = 512;
        let mut words = vec![0u64; out.len()];
        fill_u64(rng, &mut words);
        let thresholds = &self.cumulative[..self.live];
        pulp::Arch::new().dispatch(
            #[inline(always)]
            || {
                let mut magnitudes = [0u64; BLOCK];
                for (out, words) in out.chunks_mut(BLOCK).zip(words.chunks(BLOCK)) {
                    let magnitudes = &mut magnitudes[..words.len()];
                    magnitudes.fill(0);
                    for &threshold in thresholds {
                        for (magnitude, &word) in magnitudes.iter_mut().zip(words) {
                            *magnitude += u64::from(word & MAGNITUDE_BITS >= threshold);
                        }
                    }
                    for ((value, &magnitude), &word) in out.iter_mut().zip(&*magnitudes).zip(words)
                    {
                        *value = apply_sign(magnitude, word) as i128 as u128;
                    }
                }
            },
        );
        zeroize::Zeroize::zeroize(&mut words);
    }
}

/// Negates `magnitude` when the top bit of `word` is set, without branching.
#[inline(always)]
fn apply_sign(magnitude: u64, word: u64) -> i64 {
    let negative = word >> 63;
    ((magnitude ^ negative.wrapping_neg()).wrapping_add(negative)) as i64
}

/// Fills `out` with uniform 64-bit words.
pub fn fill_u64<R: RngCore + CryptoRng>(rng: &mut R, out: &mut [u64]) {
    rng.fill_bytes(bytemuck::cast_slice_mut(out));
}

/// Fills `out` with uniform bits (as 0 or 1).
pub fn fill_binary<R: RngCore + CryptoRng>(rng: &mut R, out: &mut [u128]) {
    let mut bytes = vec![0u8; out.len().div_ceil(8)];
    rng.fill_bytes(&mut bytes);
    for (index, value) in out.iter_mut().enumerate() {
        *value = u128::from((bytes[index / 8] >> (index % 8)) & 1);
    }
    zeroize::Zeroize::zeroize(&mut bytes);
}

/// Fills `out` with uniform values mod 2^128.
pub fn fill_uniform<R: RngCore + CryptoRng>(rng: &mut R, out: &mut [u128]) {
    let mut bytes = vec![0u8; out.len() * 16];
    rng.fill_bytes(&mut bytes);
    for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(16)) {
        *value = u128::from_le_bytes(chunk.try_into().expect("chunks of 16"));
    }
    zeroize::Zeroize::zeroize(&mut bytes);
}

/// Fills `out` with uniform ternary values {-1, 0, 1} mod 2^128, by rejection from bytes so the
/// three values are exactly equally likely.
pub fn fill_ternary<R: RngCore + CryptoRng>(rng: &mut R, out: &mut [u128]) {
    let mut filled = 0;
    let mut bytes = vec![0u8; out.len() + 64];
    while filled < out.len() {
        rng.fill_bytes(&mut bytes);
        for &byte in &bytes {
            if filled == out.len() {
                break;
            }
            // 255 = 3 * 85: reject the one value that would bias the draw.
            if byte < 255 {
                out[filled] = match byte % 3 {
                    0 => 0,
                    1 => 1,
                    _ => u128::MAX,
                };
                filled += 1;
            }
        }
    }
    zeroize::Zeroize::zeroize(&mut bytes);
}

/// Bits of the fourth word that extend each of three 64-bit draws.
const HIGH_PIECE_BITS: u32 = 21;
const HIGH_PIECE_MASK: u64 = (1 << HIGH_PIECE_BITS) - 1;

/// Adds smudging noise to every value: the sum of [`super::SMUDGING_SUMMANDS`] = 3 independent
/// uniforms in [-2^bits, 2^bits), so in [-3 * 2^bits, 3 * 2^bits). A sum of three is smooth
/// enough that its statistical distance to a shifted copy grows with the square root of the
/// number of coordinates revealed, not linearly (see `budget`). Constant time: every value
/// draws the same words and does the same arithmetic.
pub fn add_smudging<R: RngCore + CryptoRng>(rng: &mut R, values: &mut [u128], bits: u32) {
    assert!(
        bits < 125,
        "smudging bound 3 * 2^{bits} does not fit the modulus"
    );
    let offset = 3u128 << bits;
    let mask = (1u128 << (bits + 1)) - 1;
    if bits < 61 {
        // Three draws below 2^62 add up below 2^64.
        let mut words = vec![0u64; 3 * values.len()];
        fill_u64(rng, &mut words);
        for (value, draws) in values.iter_mut().zip(words.chunks_exact(3)) {
            let sum: u128 = draws.iter().map(|w| u128::from(*w) & mask).sum();
            *value = value.wrapping_add(sum.wrapping_sub(offset));
        }
        // The noise would reveal the unsmudged inner product, hence the share.
        zeroize::Zeroize::zeroize(&mut words);
    } else if bits < 64 + HIGH_PIECE_BITS {
        // Smudging for a key's whole life is about 80 bits wide: three 64-bit words and a
        // fourth split into three 21-bit pieces give each draw its bits + 1 uniform bits, at
        // two thirds of the stream that three 128-bit draws would take.
        let mut words = vec![0u64; 4 * values.len()];
        fill_u64(rng, &mut words);
        for (value, draws) in values.iter_mut().zip(words.chunks_exact(4)) {
            let high = draws[3];
            let sum = draws[..3]
                .iter()
                .enumerate()
                .fold(0u128, |acc, (piece, &low)| {
                    let high = (high >> (HIGH_PIECE_BITS as usize * piece)) & HIGH_PIECE_MASK;
                    acc + ((u128::from(high) << 64 | u128::from(low)) & mask)
                });
            *value = value.wrapping_add(sum.wrapping_sub(offset));
        }
        zeroize::Zeroize::zeroize(&mut words);
    } else {
        let mut noise = vec![0u128; 3 * values.len()];
        fill_uniform(rng, &mut noise);
        for (value, draws) in values.iter_mut().zip(noise.chunks_exact(3)) {
            let sum = draws
                .iter()
                .fold(0u128, |acc, n| acc.wrapping_add(n & mask));
            *value = value.wrapping_add(sum.wrapping_sub(offset));
        }
        zeroize::Zeroize::zeroize(&mut noise);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn gaussian_sampler_matches_the_rounded_gaussian_moments() {
        let sampler = GaussianSampler::new(3.19);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut words = vec![0u64; 400_000];
        fill_u64(&mut rng, &mut words);
        let samples: Vec<f64> = words
            .iter()
            .map(|&w| sampler.sample_from_word(w) as f64)
            .collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / samples.len() as f64;
        let expected_var = 3.19f64.powi(2) + 1.0 / 12.0;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!(
            (var / expected_var - 1.0).abs() < 0.02,
            "variance {var} vs {expected_var}"
        );
        assert!(samples.iter().all(|x| x.abs() < 40.0));
    }

    #[test]
    fn gaussian_table_is_monotone_and_saturates() {
        let sampler = GaussianSampler::new(3.19);
        assert!(sampler.cumulative.windows(2).all(|w| w[0] <= w[1]));
        // The table reaches 2^63 (tail mass below 2^-63) well before its end, around 9 sigma.
        let saturated = sampler.live;
        assert!((25..CDT_LEN).contains(&saturated), "{saturated}");
        assert_eq!(sampler.sample_from_word(0), 0);
        assert_eq!(sampler.sample_from_word(1 << 63), 0);
        assert_eq!(sampler.sample_from_word((1u64 << 63) - 1), saturated as i64);
        assert_eq!(sampler.sample_from_word(u64::MAX), -(saturated as i64));
    }

    #[test]
    fn block_sampling_equals_word_by_word_sampling() {
        let sampler = GaussianSampler::standard();
        let mut out = vec![0u128; 1500];
        sampler.fill_u128(&mut ChaCha20Rng::seed_from_u64(4), &mut out);
        let mut words = vec![0u64; 1500];
        fill_u64(&mut ChaCha20Rng::seed_from_u64(4), &mut words);
        for (value, word) in out.iter().zip(&words) {
            assert_eq!(*value as i128, i128::from(sampler.sample_from_word(*word)));
        }
    }

    #[test]
    fn ternary_and_binary_are_balanced() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut values = vec![0u128; 90_000];
        fill_ternary(&mut rng, &mut values);
        for target in [0u128, 1, u128::MAX] {
            let count = values.iter().filter(|&&v| v == target).count();
            assert!(
                (count as f64 / 30_000.0 - 1.0).abs() < 0.03,
                "{target}: {count}"
            );
        }
        fill_binary(&mut rng, &mut values);
        let ones = values.iter().filter(|&&v| v == 1).count();
        assert!(values.iter().all(|&v| v <= 1));
        assert!((ones as f64 / 45_000.0 - 1.0).abs() < 0.03, "{ones}");
    }

    #[test]
    fn smudging_stays_in_bounds_and_covers_them() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        // One width for each way of drawing: 64-bit words, 64 + 21 bits, 128-bit words.
        for bits in [10u32, 70, 84, 90] {
            let mut values = vec![0u128; 60_000];
            add_smudging(&mut rng, &mut values, bits);
            let width = 1i128 << bits;
            let signed: Vec<i128> = values.iter().map(|&v| v as i128).collect();
            assert!(signed.iter().all(|&v| (-3 * width..3 * width).contains(&v)));
            assert!(signed.iter().any(|&v| v < -3 * width / 2));
            assert!(signed.iter().any(|&v| v > 3 * width / 2));
            // The sum of three uniforms on [-S, S): mean 0, variance S^2.
            let scaled: Vec<f64> = signed.iter().map(|&v| v as f64 / width as f64).collect();
            let n = scaled.len() as f64;
            let mean = scaled.iter().sum::<f64>() / n;
            let variance = scaled.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            assert!(mean.abs() < 0.02, "bits {bits}: mean {mean}");
            assert!(
                (variance - 1.0).abs() < 0.03,
                "bits {bits}: variance {variance}"
            );
        }
    }
}
