//! Pooled feature scaling: the consortium's mean and standard deviation of every feature,
//! computed under encryption in the first round, so that a feature means the same thing at
//! every institution (local statistics disagree under a skewed split). Like any round, only
//! the weighted sum over at least `k_min` institutions is ever decrypted; with two
//! institutions, each can subtract its own share and learn the other's moments, as with any
//! aggregate of two.
//!
//! Features first go through sign(x) ln(1 + |x|), a fixed function that bounds them (|t| < 89
//! for any f32), so that their moments fit the plan's clip with public scales. Each moment is
//! sent as a high part on the fixed-point grid and the residual scaled up by 2^16, which
//! carries it at 2^-32 of the scale instead of the codec's 2^-16 (means to about 3e-8,
//! second moments to about 2e-6). Members read the region as f32, so a variance below about
//! 1e-6 of the second moment (a feature whose spread, after the log transform, is under a
//! thousandth of its size) cannot be resolved: it is floored there, which leaves such a
//! feature under-scaled but never blows it up, and every member floors it the same way. A
//! constant 1/2 from every
//! institution sums to half the total weight, so the pooled moments are normalised exactly
//! however the integer weights round.
//!
//! The statistics live in a region of the global model after the network's parameters; no
//! later round touches it, so any member can read the scaling from the model alone (after a
//! restart, or after sitting a round out).

use crate::data::Dataset;

/// Public scale of the means of the transformed features (|t| < 89).
const MEAN_SCALE: f64 = 128.0;
/// Public scale of their second moments (t^2 < 7921).
const SQUARE_SCALE: f64 = 8192.0;
/// The codec's grid (the plan's fraction bits), and the factor a residual is sent at.
const GRID: f64 = 65536.0;

/// How a pooled scaling is applied to a row of features, as an exported model's metadata
/// `scaling` says.
pub const POOLED_FORMULA: &str = "(sign(x) ln(1 + |x|) - scaling.mean) / scaling.std";

/// The tensors a scaling travels as, beside an exported model or to an external trainer:
/// `scaling.mean` and `scaling.std`, one value per feature.
pub fn scaling_tensors(stats: &[(f32, f32)]) -> Vec<(String, Vec<f32>)> {
    vec![
        ("scaling.mean".into(), stats.iter().map(|s| s.0).collect()),
        ("scaling.std".into(), stats.iter().map(|s| s.1).collect()),
    ]
}

/// Values the statistics region takes in the global model for `features` features.
pub fn region_size(features: usize) -> usize {
    4 * features + 1
}

/// (high, residual x 2^16): high is on the codec's grid, so it is encoded exactly.
fn split(value: f64) -> (f32, f32) {
    let high = (value * GRID).round() / GRID;
    (high as f32, ((value - high) * GRID) as f32)
}

/// This institution's contribution to the statistics region, from its transformed rows.
pub fn local_statistics(data: &Dataset) -> Vec<f32> {
    let (rows, width) = (data.rows().max(1) as f64, data.width());
    let mut out = vec![0.0; region_size(width)];
    for c in 0..width {
        let column = (0..data.rows()).map(|r| f64::from(data.row(r)[c]));
        let (sum, squares) = column.fold((0.0, 0.0), |(s, q), v| (s + v, q + v * v));
        let (high, low) = split(sum / rows / MEAN_SCALE);
        out[c] = high;
        out[width + c] = low;
        let (high, low) = split(squares / rows / SQUARE_SCALE);
        out[2 * width + c] = high;
        out[3 * width + c] = low;
    }
    out[4 * width] = 0.5;
    out
}

/// What a global model's statistics region holds, as every member reads it before training.
#[derive(Clone, Debug, PartialEq)]
pub enum Region {
    /// All zeros: no statistics round decrypted yet, so this round is the statistics round.
    Empty,
    /// The consortium's (mean, standard deviation) per feature.
    Pooled(Vec<(f32, f32)>),
    /// Neither: only a member that broke the protocol writes this. Taking it for the first
    /// round would have every honest member send its moments again, aggregated over whichever
    /// members a later round brings together; subtracting such aggregates isolates one
    /// institution's statistics.
    Unreadable,
}

/// Reads the statistics region of a global model (see [`Region`]): one rule for the
/// built-in trainer and external ones.
pub fn read_region(region: &[f32], features: usize) -> Region {
    if region.iter().all(|v| *v == 0.0) {
        return Region::Empty;
    }
    match pooled(region, features) {
        Some(stats) => Region::Pooled(stats),
        None => Region::Unreadable,
    }
}

/// The pooled (mean, standard deviation) per feature from the statistics region, or `None`
/// before the statistics round has been decrypted.
pub fn pooled(region: &[f32], features: usize) -> Option<Vec<(f32, f32)>> {
    let total = 2.0 * f64::from(*region.get(4 * features)?);
    if total <= 0.0 {
        return None;
    }
    let join = |high: f32, low: f32| (f64::from(high) + f64::from(low) / GRID) / total;
    Some(
        (0..features)
            .map(|c| {
                let mean = MEAN_SCALE * join(region[c], region[features + c]);
                let square =
                    SQUARE_SCALE * join(region[2 * features + c], region[3 * features + c]);
                let sd = (square - mean * mean).max(1e-6 * square).sqrt();
                // A constant feature (a category no institution has) is only centred.
                (mean as f32, if sd > 1e-6 { sd as f32 } else { 1.0 })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(rows: &[[f32; 2]]) -> Dataset {
        Dataset {
            columns: vec!["a".into(), "b".into()],
            features: rows.iter().flatten().copied().collect(),
            labels: vec![0; rows.len()],
        }
    }

    /// Two institutions with very different data: the pooled statistics equal those of the
    /// union, far more precisely than the codec's 2^-16 grid would allow, weighted by row
    /// counts with integer weights that do not sum to one.
    #[test]
    fn pooled_statistics_equal_those_of_the_union() {
        let a = dataset(&[[0.1, 6.5], [0.12, 6.0], [0.09, 7.2]]);
        let b = dataset(&[[0.095, 2.0], [0.11, 2.5]]);
        // Integer weights as the plan rounds them (2^12 n_i / N), summing to 4097, and the
        // contributions on the codec's grid, as the encrypted sum sees them.
        let weights = [2458.0, 1639.0];
        let quantise = |v: f32| (f64::from(v) * GRID).round();
        let mut region = vec![0.0f64; region_size(2)];
        for (data, weight) in [(&a, weights[0]), (&b, weights[1])] {
            for (r, v) in region.iter_mut().zip(local_statistics(data)) {
                *r += weight * quantise(v);
            }
        }
        let region: Vec<f32> = region
            .iter()
            .map(|v| (v / (GRID * 4096.0)) as f32)
            .collect();
        let pooled = pooled(&region, 2).unwrap();
        // The union, weighted as the integer weights weigh each institution's rows.
        for (c, &(pooled_mean, pooled_sd)) in pooled.iter().enumerate() {
            let (mut sum, mut squares, mut total) = (0.0, 0.0, 0.0);
            for (data, weight) in [(&a, weights[0]), (&b, weights[1])] {
                let w = weight / data.rows() as f64;
                for r in 0..data.rows() {
                    let v = f64::from(data.row(r)[c]);
                    sum += w * v;
                    squares += w * v * v;
                    total += w;
                }
            }
            let mean = sum / total;
            let sd = (squares / total - mean * mean).sqrt();
            assert!(
                (f64::from(pooled_mean) - mean).abs() < 1e-6,
                "feature {c}: mean {pooled_mean} against {mean}"
            );
            // Second moments carry about 2e-6 absolute (8192 x 2^-32 per contribution): 1 %
            // of a standard deviation as small as 0.01.
            assert!(
                (f64::from(pooled_sd) - sd).abs() < 1e-2 * sd,
                "feature {c}: sd {pooled_sd} against {sd}"
            );
        }
    }

    #[test]
    fn only_an_all_zero_region_asks_for_the_statistics_round() {
        let stats = local_statistics(&dataset(&[[1.0, 2.0], [3.0, 4.0]]));
        assert_eq!(read_region(&[0.0; 9], 2), Region::Empty);
        assert_eq!(
            read_region(&stats, 2),
            Region::Pooled(pooled(&stats, 2).unwrap())
        );
        // A total weight driven to zero or below (a member claiming many rows and sending
        // -clip there): not taken for a first round, so no member sends its moments again.
        let mut poisoned = stats.clone();
        poisoned[8] = -0.25;
        assert_eq!(read_region(&poisoned, 2), Region::Unreadable);
        poisoned[8] = 0.0;
        assert_eq!(read_region(&poisoned, 2), Region::Unreadable);
    }

    #[test]
    fn no_scaling_before_the_statistics_round() {
        assert_eq!(pooled(&vec![0.0; region_size(3)], 3), None);
        let stats = local_statistics(&dataset(&[[1.0, 2.0]]));
        assert!(stats.iter().all(|v| v.abs() <= 1.0), "within the clip");
        assert_eq!(stats[8], 0.5);
    }

    /// A feature nearly constant at a large value: its variance is below what f32 resolves,
    /// so it is floored rather than left at zero (which would blow the feature up).
    #[test]
    fn an_unresolvable_spread_is_floored() {
        let region = local_statistics(&dataset(&[[13.8155, 0.0], [13.8156, 1.0]]));
        let stats = pooled(&region, 2).unwrap();
        assert!((stats[0].0 - 13.81555).abs() < 1e-4, "{stats:?}");
        assert!(stats[0].1 >= 1e-3 * 13.8, "{stats:?}");
        assert!((stats[1].1 - 0.5).abs() < 1e-3, "{stats:?}");
    }
}
