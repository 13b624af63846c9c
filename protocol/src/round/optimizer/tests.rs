//! The optimizers against their float reference, their determinism, bounds and formats.

use super::*;
use crate::audit::entry::Digest;

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
            y = optimizer.step_float(1.0, 1.0, &float_previous, &float_average, &mut float_state);
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
