//! Relative decoding: a round's model read against the model it builds on, from partials and
//! bodies that keep only one round's range of bits.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::wire::BoundCiphertext;

/// The default plan's request (5 members, t = 3, 17-bit updates at weight 2^12 over 50 rounds,
/// kappa 49), read against the previous model: a round moves a value by at most the largest
/// update, 2^16, times the weights, which sum to 4097 plus a unit of rounding per member.
const ROUND_BOUND: u64 = 65_536 * (4097 + 5);

fn default_plans_budget(config: ThresholdConfig) -> Budget {
    Budget::compute(BudgetRequest {
        config,
        max_contributions: 1,
        weight_bound: 4097 + 5 + 3,
        value_bits: 17,
        kappa: 49,
        rounds: 50,
        decoding: Decoding::Relative { bound: ROUND_BOUND },
    })
    .unwrap()
}

#[test]
fn a_model_read_against_the_model_it_builds_on_decrypts_exactly_from_4_byte_partials() {
    let config = ThresholdConfig::new(5, 3).unwrap();
    let budget = default_plans_budget(config);
    assert_eq!(budget.share_window().bytes(), 4);
    assert_eq!(budget.read_bits(), 29);
    let mut rng = ChaCha20Rng::seed_from_u64(71);
    let keys = LocalKeySet::generate_with_secrets(&config, 2, &mut rng).unwrap();
    let key = keys.public_key.prepare();
    let values = 2 * POLYNOMIAL_SIZE + 100;

    // The previous model anywhere in the run's message space, its extremes included.
    let largest = (1i64 << budget.message_bits()) - 1;
    let mut previous: Vec<i64> = (0..values)
        .map(|_| rng.gen_range(-largest..=largest))
        .collect();
    previous[0] = largest;
    previous[1] = -largest;
    previous[2] = 0;
    let base = key.encrypt_model(&previous, &budget, [9; 32]).unwrap();

    // Five updates at weights summing to 4098, every one at the clip for the first three
    // values (the largest changes a round can make, both ways), at random elsewhere.
    let weights = [820i64, 819, 819, 819, 821];
    let mut aggregate = base;
    let mut expected = previous.clone();
    for (member, weight) in weights.iter().enumerate() {
        let mut update: Vec<i64> = (0..values)
            .map(|_| rng.gen_range(-65_536..=65_536))
            .collect();
        update[0] = 65_536;
        update[1] = -65_536;
        update[2] = if member % 2 == 0 { 65_536 } else { -65_536 };
        let ciphertext = key.encrypt(&update, &budget, &mut rng).unwrap();
        aggregate.add_weighted(&ciphertext, *weight).unwrap();
        for (e, u) in expected.iter_mut().zip(&update) {
            *e += weight * u;
        }
    }
    // A retry's encryption of zero adds noise, not message.
    key.rerandomize(&mut aggregate, [3; 32]).unwrap();
    assert_eq!(expected[0] - previous[0], 65_536 * 4098);
    assert_eq!(expected[1] - previous[1], -65_536 * 4098);

    let aggregate = BoundCiphertext::new(aggregate);
    let quorum = Quorum::new(&config, vec![0, 2, 4]).unwrap();
    let partials: Vec<PartialDecryption> = quorum
        .members()
        .iter()
        .map(|&m| {
            keys.shares[usize::from(m)]
                .partial_decrypt(&aggregate, &quorum, &budget, &mut rng)
                .unwrap()
        })
        .collect();
    assert!(partials.iter().all(|p| p.window.bytes() == 4));
    let combined = |reference: Option<&[i64]>| {
        let mut combination =
            Combination::new(CombineTarget::of(&aggregate), quorum.clone(), &budget).unwrap();
        for partial in &partials {
            combination.subtract(partial).unwrap();
        }
        combination.finish(reference)
    };
    assert_eq!(combined(Some(&previous)).unwrap(), expected);
    // Read a piece at a time, as a member reads its model back from disk: the same values;
    // a piece past the end, or too few values read, refused.
    let reading = || {
        let mut combination =
            Combination::new(CombineTarget::of(&aggregate), quorum.clone(), &budget).unwrap();
        for partial in &partials {
            combination.subtract(partial).unwrap();
        }
        combination.into_reading().unwrap()
    };
    let mut pieces = reading();
    for piece in previous.chunks(1000) {
        pieces.next(piece).unwrap();
    }
    assert!(matches!(pieces.next(&[0]), Err(HeError::Mismatch(_))));
    assert_eq!(pieces.finish().unwrap(), expected);
    let mut short = reading();
    short.next(&previous[..values - 1]).unwrap();
    assert!(matches!(short.finish(), Err(HeError::Mismatch(_))));

    // The reference is load-bearing: without it (zeros) the values of a model beyond one
    // round's range come out wrong, and a reference off by 2^30 at one value moves that value
    // alone, by a multiple of 2^30 (the phase holds 30 bits of message).
    let without = combined(None).unwrap();
    let wrong = without
        .iter()
        .zip(&expected)
        .filter(|(a, b)| a != b)
        .count();
    assert!(wrong > values / 2, "{wrong} of {values} wrong");
    let mut off = previous.clone();
    off[7] += 1 << 30;
    let read = combined(Some(&off)).unwrap();
    assert_eq!(read[..7], expected[..7]);
    assert_eq!(read[8..], expected[8..]);
    assert_eq!((read[7] - expected[7]).rem_euclid(1 << 30), 0);
    assert_ne!(read[7], expected[7]);
    // A reference of another length is refused.
    assert!(matches!(
        combined(Some(&previous[1..])),
        Err(HeError::Mismatch(_))
    ));
}

/// Under absolute decoding the reference is not read: the ceremony's challenge and earlier
/// plans decode from the phase alone, whatever a caller passes.
#[test]
fn an_absolute_budget_ignores_the_reference() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let budget = Budget::compute(BudgetRequest {
        decoding: Decoding::Absolute,
        ..*default_plans_budget(config).request()
    })
    .unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(72);
    let keys = LocalKeySet::generate(&config, &mut rng).unwrap();
    let key = keys.public_key.prepare();
    let messages: Vec<i64> = (0..300).map(|_| rng.gen_range(-65_536..=65_536)).collect();
    let ciphertext = BoundCiphertext::new(key.encrypt(&messages, &budget, &mut rng).unwrap());
    let quorum = Quorum::new(&config, vec![0, 2]).unwrap();
    let mut combination =
        Combination::new(CombineTarget::of(&ciphertext), quorum.clone(), &budget).unwrap();
    for m in [0usize, 2] {
        let partial = keys.shares[m]
            .partial_decrypt(&ciphertext, &quorum, &budget, &mut rng)
            .unwrap();
        combination.subtract(&partial).unwrap();
    }
    let nonsense = vec![1i64 << 40; 300];
    assert_eq!(combination.finish(Some(&nonsense)).unwrap(), messages);
}
