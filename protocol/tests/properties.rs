//! Property tests: the codec round-trips, and weighted sums of ciphertexts decrypt to exactly
//! the integer weighted sums, for random sizes, weights and values up to the budget's limits.

mod common;

use proptest::prelude::*;
use protocol::he::{Ciphertext, FixedPointCodec};
use protocol::wire::{CiphertextView, DecodeLimits, decode_ciphertext_view, encode_ciphertext};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn codec_round_trips_within_half_a_step(
        values in prop::collection::vec(-1.0e3f32..1.0e3, 1..200),
        clip in 0.01f32..100.0,
        fraction_bits in 0u32..40,
    ) {
        let codec = FixedPointCodec::new(clip, fraction_bits).unwrap();
        let encoded = codec.encode(&values).unwrap();
        let decoded = codec.decode(&encoded);
        let step = (-(fraction_bits as f64)).exp2();
        for (original, back) in values.iter().zip(&decoded) {
            let clipped = f64::from(original.clamp(-clip, clip));
            // Half a quantisation step, plus f32 rounding of the decoded value.
            let tolerance = step / 2.0 + clipped.abs() * 1e-7 + 1e-12;
            prop_assert!((f64::from(*back) - clipped).abs() <= tolerance,
                "{original} -> {back} (clip {clip}, 2^-{fraction_bits})");
        }
        let bound = 1i64 << codec.value_bits();
        prop_assert!(encoded.iter().all(|v| v.abs() < bound));
    }

    #[test]
    fn encrypted_sums_of_encoded_tensors_decode_to_the_sum_of_their_quantised_values(
        a in prop::collection::vec(-10.0f32..10.0, 1..100),
        seed in any::<u64>(),
    ) {
        let codec = FixedPointCodec::new(10.0, 16).unwrap();
        let b: Vec<f32> = a.iter().map(|x| 0.5 - x / 3.0).collect();
        let budget = common::budget(codec.value_bits(), 2, 1);
        let key = common::keys().public_key.prepare();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let ea = codec.encode(&a).unwrap();
        let eb = codec.encode(&b).unwrap();
        let mut sum = key.encrypt(&ea, &budget, &mut rng).unwrap();
        sum.add_assign(&key.encrypt(&eb, &budget, &mut rng).unwrap()).unwrap();
        let decoded = codec.decode(&common::decrypt(&sum, &budget, &mut rng));
        // Each value lands within half a step of its input, so the sum within one step; and
        // it equals exactly the sum of the individually quantised values.
        let quantised: Vec<f32> = codec
            .decode(&ea)
            .iter()
            .zip(codec.decode(&eb))
            .map(|(x, y)| x + y)
            .collect();
        for i in 0..a.len() {
            prop_assert_eq!(decoded[i], quantised[i]);
            prop_assert!((f64::from(decoded[i]) - f64::from(a[i] + b[i])).abs() <= 1.0 / 65536.0 + 1e-5);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn weighted_sums_decrypt_to_exact_integer_sums(
        count in 1usize..3000,
        weights in prop::collection::vec(0u64..=1000, 1..5),
        value_bits in 1u32..34,
        seed in any::<u64>(),
    ) {
        let budget = common::budget(value_bits, weights.len() as u32, 1000);
        let max = budget.max_value();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let key = common::keys().public_key.prepare();
        use rand::Rng;
        let inputs: Vec<Vec<i64>> = weights
            .iter()
            .map(|_| (0..count).map(|_| rng.gen_range(-max..=max)).collect())
            .collect();
        let encoded: Vec<Vec<u8>> = inputs
            .iter()
            .map(|values| encode_ciphertext(&key.encrypt(values, &budget, &mut rng).unwrap()))
            .collect();
        // Aggregate straight from the encoded bytes, as the coordinator does.
        let terms: Vec<(CiphertextView<'_>, i64)> = encoded
            .iter()
            .zip(&weights)
            .map(|(bytes, &w)| (decode_ciphertext_view(bytes, DecodeLimits::default()).unwrap(), w as i64))
            .collect();
        let aggregate = CiphertextView::weighted_sum(&terms).unwrap();
        let expected: Vec<i64> = (0..count)
            .map(|i| inputs.iter().zip(&weights).map(|(v, &w)| v[i] * w as i64).sum())
            .collect();
        prop_assert_eq!(common::decrypt(&aggregate, &budget, &mut rng), expected);
    }
}

#[test]
fn owned_and_encoded_weighted_sums_agree() {
    let budget = common::budget(20, 3, 5);
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let key = common::keys().public_key.prepare();
    let cts: Vec<Ciphertext> = (0..3)
        .map(|i| key.encrypt(&vec![i; 9000], &budget, &mut rng).unwrap())
        .collect();
    let owned = Ciphertext::weighted_sum(&[(&cts[0], 5), (&cts[1], -3), (&cts[2], 1)]).unwrap();
    let bytes: Vec<Vec<u8>> = cts.iter().map(encode_ciphertext).collect();
    let views: Vec<CiphertextView<'_>> = bytes
        .iter()
        .map(|b| decode_ciphertext_view(b, DecodeLimits::default()).unwrap())
        .collect();
    let encoded =
        CiphertextView::weighted_sum(&[(views[0], 5), (views[1], -3), (views[2], 1)]).unwrap();
    assert_eq!(owned, encoded);
    let mut incremental = cts[0].clone();
    incremental.add_weighted(&cts[0], 4).unwrap();
    incremental.add_weighted(&cts[1], -3).unwrap();
    incremental.add_assign(&cts[2]).unwrap();
    assert_eq!(owned, incremental);
    assert_eq!(common::decrypt(&owned, &budget, &mut rng), vec![-1; 9000]);
}
