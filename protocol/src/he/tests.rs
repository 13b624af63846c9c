//! Tests of the scheme against tfhe itself and against plain integer arithmetic.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tfhe::core_crypto::commons::generators::NoiseRandomGenerator;
use tfhe::core_crypto::commons::math::random::{RandomGenerator, Seed};
use tfhe::core_crypto::prelude::{
    CiphertextModulus, ContiguousEntityContainer, DefaultRandomGenerator, LweCiphertextCount,
    LweCompactCiphertextListOwned, LweSecretKey, LweSize, PlaintextList, decrypt_lwe_ciphertext,
    encrypt_lwe_compact_ciphertext_list_with_compact_public_key,
};

use super::ciphertext::{EncryptWork, GroupRandomness, round_mask};
use super::combine::combine_raw;
use super::keys::{SecretContribution, tfhe_noise_distribution};
use super::ntt::{FullForm, NttContext};
use super::*;
use crate::wire::{BoundCiphertext, PartialHeader};

/// Keys with the collective secret kept, which only a test may do.
struct TestKeys {
    public_key: PublicKey,
    shares: Vec<KeyShare>,
    collective_secret: Vec<u128>,
}

impl TestKeys {
    /// Each quorum member's partial decryption of `ciphertext`, in the quorum's order.
    fn partials(
        &self,
        ciphertext: &BoundCiphertext,
        quorum: &Quorum,
        budget: &Budget,
        rng: &mut ChaCha20Rng,
    ) -> Vec<PartialDecryption> {
        quorum
            .members()
            .iter()
            .map(|&m| {
                self.shares[usize::from(m)]
                    .partial_decrypt(ciphertext, quorum, budget, rng)
                    .unwrap()
            })
            .collect()
    }
}

fn test_keys(config: &ThresholdConfig, seed: u64) -> TestKeys {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mask_seed: u128 = rng.r#gen();
    let secrets: Vec<SecretContribution> = (0..config.parties())
        .map(|_| SecretContribution::generate(&mut rng))
        .collect();
    let contributions: Vec<_> = secrets
        .iter()
        .enumerate()
        .map(|(party, s)| s.public_key_contribution(party as u8, mask_seed, &mut rng))
        .collect();
    let public_key = PublicKey::combine(config, &contributions).unwrap();
    let dealings: Vec<_> = secrets.iter().map(|s| s.deal(config, &mut rng)).collect();
    let shares = (0..config.parties())
        .map(|party| {
            let mut builder = KeyShareBuilder::with_secrets(*config, party, 1).unwrap();
            for (dealer, dealing) in dealings.iter().enumerate() {
                builder
                    .add(dealer as u8, &dealing.for_party(party))
                    .unwrap();
            }
            builder.finish().unwrap()
        })
        .collect();
    let mut collective_secret = vec![0u128; POLYNOMIAL_SIZE];
    for secret in &secrets {
        for (acc, v) in collective_secret.iter_mut().zip(secret.coefficients()) {
            *acc = acc.wrapping_add(*v);
        }
    }
    TestKeys {
        public_key,
        shares,
        collective_secret,
    }
}

fn budget(config: ThresholdConfig, value_bits: u32, contributions: u32, weight: u64) -> Budget {
    Budget::compute(BudgetRequest {
        config,
        max_contributions: contributions,
        weight_bound: weight,
        value_bits,
        kappa: 40,
        rounds: 1,
        decoding: Decoding::Absolute,
    })
    .unwrap()
}

/// tfhe's own encryption, and the randomness it drew, replayed from the same seed.
struct TfheReference {
    container: Vec<u128>,
    binary: Vec<u128>,
    mask_noise: Vec<u128>,
    body_noise: Vec<u128>,
}

fn tfhe_reference(public_key: &PublicKey, plaintexts: &[u128], seed: u128) -> TfheReference {
    let count = plaintexts.len();
    let bins = count.div_ceil(POLYNOMIAL_SIZE);
    let tfhe_key = public_key
        .as_tfhe_seeded()
        .decompress_into_lwe_compact_public_key();
    let mut list = LweCompactCiphertextListOwned::new(
        0u128,
        LweSize(POLYNOMIAL_SIZE + 1),
        LweCiphertextCount(count),
        CiphertextModulus::new_native(),
    );
    let mut generator = NoiseRandomGenerator::<DefaultRandomGenerator>::new_from_seed(Seed(seed));
    encrypt_lwe_compact_ciphertext_list_with_compact_public_key(
        &tfhe_key,
        &mut list,
        &PlaintextList::from_container(plaintexts.to_vec()),
        tfhe_noise_distribution(),
        tfhe_noise_distribution(),
        &mut generator,
    );
    // The same draws, in tfhe's order: r, then the mask noise, then the body noise.
    let mut replay = RandomGenerator::<DefaultRandomGenerator>::new(Seed(seed));
    let mut binary = vec![0u128; bins * POLYNOMIAL_SIZE];
    replay.fill_slice_with_random_uniform_binary_bits(&mut binary);
    let mut mask_noise = vec![0u128; bins * POLYNOMIAL_SIZE];
    replay.fill_slice_with_random_from_distribution(&mut mask_noise, tfhe_noise_distribution());
    let mut body_noise = vec![0u128; count];
    replay.fill_slice_with_random_from_distribution(&mut body_noise, tfhe_noise_distribution());
    TfheReference {
        container: list.into_container(),
        binary,
        mask_noise,
        body_noise,
    }
}

#[test]
fn fast_encryption_equals_tfhe_compact_list_encryption_bit_for_bit() {
    let config = ThresholdConfig::new(5, 3).unwrap();
    let keys = test_keys(&config, 10);
    let key = keys.public_key.prepare();
    let count = POLYNOMIAL_SIZE + 777;
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let plaintexts: Vec<u128> = (0..count).map(|_| rng.r#gen()).collect();
    let reference = tfhe_reference(&keys.public_key, &plaintexts, 99);

    let bins = count.div_ceil(POLYNOMIAL_SIZE);
    let mut masks = vec![0u128; bins * POLYNOMIAL_SIZE];
    let mut bodies = vec![0u128; count];
    let mut work = EncryptWork::new();
    for bin in 0..bins {
        let poly = bin * POLYNOMIAL_SIZE..(bin + 1) * POLYNOMIAL_SIZE;
        let values = poly.start..count.min(poly.end);
        key.encrypt_group(
            &plaintexts[values.clone()],
            &GroupRandomness {
                binary: &reference.binary[poly.clone()],
                mask_noise: &reference.mask_noise[poly.clone()],
                body_noise: &reference.body_noise[values.clone()],
            },
            &mut work,
            &mut masks[poly],
            &mut bodies[values],
        );
    }
    let (tfhe_masks, tfhe_bodies) = reference.container.split_at(bins * POLYNOMIAL_SIZE);
    assert_eq!(masks, tfhe_masks, "masks differ from tfhe's");
    assert_eq!(bodies, tfhe_bodies, "bodies differ from tfhe's");
}

#[test]
fn noise_sampler_matches_tfhe_gaussian_in_distribution() {
    let mut replay = RandomGenerator::<DefaultRandomGenerator>::new(Seed(5));
    let mut tfhe_samples = vec![0u128; 200_000];
    replay.fill_slice_with_random_from_distribution(&mut tfhe_samples, tfhe_noise_distribution());
    let mut ours = vec![0u128; 200_000];
    sampling::GaussianSampler::standard().fill_u128(&mut ChaCha20Rng::seed_from_u64(5), &mut ours);
    let moments = |samples: &[u128]| {
        let values: Vec<f64> = samples.iter().map(|&v| v as i128 as f64).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
        let tail = values.iter().filter(|v| v.abs() > 6.0).count() as f64 / values.len() as f64;
        (mean, var, tail)
    };
    let (tfhe_mean, tfhe_var, tfhe_tail) = moments(&tfhe_samples);
    let (mean, var, tail) = moments(&ours);
    assert!((mean - tfhe_mean).abs() < 0.05, "{mean} vs {tfhe_mean}");
    assert!((var / tfhe_var - 1.0).abs() < 0.03, "{var} vs {tfhe_var}");
    assert!((tail - tfhe_tail).abs() < 0.01, "{tail} vs {tfhe_tail}");
}

#[test]
fn fast_ciphertexts_decrypt_under_tfhe_and_partials_match_tfhe_expansion() {
    let config = ThresholdConfig::new(5, 3).unwrap();
    let keys = test_keys(&config, 12);
    let key = keys.public_key.prepare();
    let budget = budget(config, 40, 1, 1);
    let count = POLYNOMIAL_SIZE + 300;
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let max = budget.max_value();
    let messages: Vec<i64> = (0..count).map(|_| rng.gen_range(-max..=max)).collect();
    let ciphertext = key.encrypt(&messages, &budget, &mut rng).unwrap();

    // Into tfhe's layout (bodies back at full width) and through tfhe's own expand + decrypt.
    let mut container = ciphertext.masks().to_vec();
    container.extend(ciphertext.bodies().iter().map(|&b| u128::from(b) << 64));
    let list = LweCompactCiphertextListOwned::from_container(
        container,
        LweSize(POLYNOMIAL_SIZE + 1),
        LweCiphertextCount(count),
        CiphertextModulus::new_native(),
    );
    let expanded = list.expand_into_lwe_ciphertext_list();
    let secret = LweSecretKey::from_container(keys.collective_secret.as_slice());

    let mut exact = ExactInnerProducts::new(&keys.collective_secret);
    let mut inner = Vec::new();

    let half = 1u128 << (budget.delta_bits() - 1);
    // Bodies are sent modulo 2^top (their window's top), so the phase is known modulo that.
    let unknown = 128 - ciphertext.body_window().top_bit();
    assert!(unknown > 0, "the budget's bodies keep fewer than 64 bits");
    for (index, lwe) in expanded.iter().enumerate() {
        let phase = decrypt_lwe_ciphertext(&secret, &lwe).0;
        let signed = (((phase << unknown) as i128) >> unknown) as u128;
        let decoded = ((signed.wrapping_add(half) as i128) >> budget.delta_bits()) as i64;
        assert_eq!(decoded, messages[index], "tfhe decryption of value {index}");

        let bin = index / POLYNOMIAL_SIZE;
        let k = index % POLYNOMIAL_SIZE;
        if k == 0 {
            let mask = &ciphertext.masks()[bin * POLYNOMIAL_SIZE..(bin + 1) * POLYNOMIAL_SIZE];
            inner = exact.of(mask);
        }
        let body = u128::from(ciphertext.bodies()[index]) << 64;
        assert_eq!(
            body.wrapping_sub(inner[k]),
            phase,
            "bin-wise inner product differs from tfhe's expand-then-decrypt at {index}"
        );
    }
}

/// The exact inner products <mask_k, secret> of one bin's mask with a secret polynomial: the
/// reference the fast paths are compared with, computed as (A * rev(secret))[N-1-k].
struct ExactInnerProducts {
    form: FullForm,
    scratch: FullForm,
    product: Vec<u128>,
}

impl ExactInnerProducts {
    fn new(secret: &[u128]) -> Self {
        let context = NttContext::get();
        let reversed: Vec<u128> = secret.iter().rev().copied().collect();
        let mut form = context.new_full_form();
        context.full_form(&reversed, &mut form);
        Self {
            form,
            scratch: context.new_full_form(),
            product: vec![0u128; POLYNOMIAL_SIZE],
        }
    }

    fn of(&mut self, mask: &[u128]) -> Vec<u128> {
        NttContext::get().mask_product(mask, &self.form, &mut self.scratch, &mut self.product);
        (0..POLYNOMIAL_SIZE)
            .map(|k| self.product[POLYNOMIAL_SIZE - 1 - k])
            .collect()
    }
}

fn random_messages(rng: &mut ChaCha20Rng, count: usize, max: i64) -> Vec<i64> {
    (0..count).map(|_| rng.gen_range(-max..=max)).collect()
}

/// What the coalition `members` decrypts of `ciphertext`, doing the best it can with the shares
/// it holds: each share subset any of them holds is used once, by the first member (in
/// `members`' order) that holds it.
pub(super) fn coalition_guess(
    shares: &[KeyShare],
    members: &[u8],
    ciphertext: &Ciphertext,
    budget: &Budget,
    rng: &mut ChaCha20Rng,
) -> Vec<i64> {
    let partials: Vec<Vec<u64>> = members
        .iter()
        .map(|&member| {
            let share = &shares[usize::from(member)];
            let assigned: Vec<Subset> = share
                .subshares()
                .iter()
                .map(|s| s.subset)
                .filter(|u| members.iter().copied().find(|&m| !u.contains(m)) == Some(member))
                .collect();
            share
                .partial_decrypt_subsets(
                    ciphertext,
                    &assigned,
                    budget.smudging_bits(),
                    budget.share_window(),
                    rng,
                )
                .unwrap()
        })
        .collect();
    let refs: Vec<&[u64]> = partials.iter().map(Vec::as_slice).collect();
    combine_raw(
        ciphertext,
        &refs,
        budget.share_window(),
        budget.delta_bits(),
    )
}

fn all_subsets_of_size(n: u8, size: usize) -> Vec<Vec<u8>> {
    (0u16..(1 << n))
        .filter(|bits| bits.count_ones() as usize == size)
        .map(|bits| Subset(bits).members().collect())
        .collect()
}

/// Every t-subset decrypts the aggregate exactly; every (t-1)-subset lacks exactly the share of
/// the subset it forms and, doing the best it can with the shares it holds, gets essentially
/// nothing right.
fn check_threshold(n: u8, t: u8, seed: u64) {
    let config = ThresholdConfig::new(n, t).unwrap();
    let keys = test_keys(&config, seed);
    let key = keys.public_key.prepare();
    let budget = budget(config, 32, u32::from(n), 1);
    let mut rng = ChaCha20Rng::seed_from_u64(seed + 1);
    let count = POLYNOMIAL_SIZE + 1000;
    let inputs: Vec<Vec<i64>> = (0..n)
        .map(|_| random_messages(&mut rng, count, budget.max_value()))
        .collect();
    let expected: Vec<i64> = (0..count)
        .map(|i| inputs.iter().map(|v| v[i]).sum())
        .collect();
    let ciphertexts: Vec<Ciphertext> = inputs
        .iter()
        .map(|m| key.encrypt(m, &budget, &mut rng).unwrap())
        .collect();
    let terms: Vec<(&Ciphertext, i64)> = ciphertexts.iter().map(|c| (c, 1)).collect();
    let aggregate = BoundCiphertext::new(Ciphertext::weighted_sum(&terms).unwrap());

    for members in all_subsets_of_size(n, usize::from(t)) {
        let quorum = Quorum::new(&config, members.clone()).unwrap();
        let partials = keys.partials(&aggregate, &quorum, &budget, &mut rng);
        let decrypted = combine(&aggregate, &quorum, &partials, &budget).unwrap();
        assert_eq!(decrypted, expected, "quorum {members:?} of {t}-of-{n}");
    }

    let subsets = config.share_subsets();
    let mut worst = 0.0f64;
    for members in all_subsets_of_size(n, usize::from(t) - 1) {
        let coalition = Subset(members.iter().fold(0u16, |bits, &m| bits | (1 << m)));
        let held: Vec<Subset> = subsets
            .iter()
            .copied()
            .filter(|u| {
                members.iter().any(|&m| {
                    keys.shares[usize::from(m)]
                        .subshares()
                        .iter()
                        .any(|s| s.subset == *u)
                })
            })
            .collect();
        let missing: Vec<Subset> = subsets
            .iter()
            .copied()
            .filter(|u| !held.contains(u))
            .collect();
        assert_eq!(
            missing,
            vec![coalition],
            "coalition {members:?} must miss exactly its own share"
        );

        let guess = coalition_guess(
            &keys.shares,
            &members,
            aggregate.ciphertext(),
            &budget,
            &mut rng,
        );
        let right = guess.iter().zip(&expected).filter(|(a, b)| a == b).count();
        worst = worst.max(right as f64 / count as f64);
    }
    println!("{t}-of-{n}: best (t-1)-subset decrypted a fraction {worst:.2e} of values right");
    assert!(
        worst < 0.001,
        "a (t-1)-subset decrypted {worst} of the values"
    );
}

#[test]
fn every_quorum_of_5_3_decrypts_and_no_pair_does() {
    check_threshold(5, 3, 20);
}

#[test]
fn every_quorum_of_7_4_decrypts_and_no_triple_does() {
    check_threshold(7, 4, 30);
}

#[test]
fn extreme_values_and_weights_at_the_budget_limit_decrypt_exactly() {
    let config = ThresholdConfig::new(5, 3).unwrap();
    let keys = test_keys(&config, 40);
    let key = keys.public_key.prepare();
    let contributions = 5u32;
    let weight = 1u64 << 10;
    let probe = budget(config, 20, contributions, weight);
    // The largest value width the budget admits for this configuration.
    let budget = budget(config, 20 + probe.spare_bits(), contributions, weight);
    assert_eq!(budget.spare_bits(), 0);
    let max = budget.max_value();
    let count = 2 * POLYNOMIAL_SIZE;
    let mut rng = ChaCha20Rng::seed_from_u64(41);
    // Every third coordinate holds +max in every contribution and the next one -max, so the
    // weighted sums there reach the very top and bottom of what the budget allows.
    let ciphertexts: Vec<(Ciphertext, i64, Vec<i64>)> = (0..contributions)
        .map(|_| {
            let values: Vec<i64> = (0..count)
                .map(|j| match j % 3 {
                    0 => max,
                    1 => -max,
                    _ => rng.gen_range(-max..=max),
                })
                .collect();
            let ct = key.encrypt(&values, &budget, &mut rng).unwrap();
            (ct, weight as i64, values)
        })
        .collect();
    let expected: Vec<i64> = (0..count)
        .map(|j| ciphertexts.iter().map(|(_, w, v)| w * v[j]).sum())
        .collect();
    let top = i64::from(contributions) * weight as i64 * max;
    assert_eq!(expected[0], top);
    assert!(
        top > (1i64 << (126 - budget.delta_bits())),
        "the test must reach the top bit"
    );
    let terms: Vec<(&Ciphertext, i64)> = ciphertexts.iter().map(|(c, w, _)| (c, *w)).collect();
    let aggregate = BoundCiphertext::new(Ciphertext::weighted_sum(&terms).unwrap());
    let quorum = Quorum::new(&config, vec![0, 2, 4]).unwrap();
    let partials = keys.partials(&aggregate, &quorum, &budget, &mut rng);
    assert_eq!(
        combine(&aggregate, &quorum, &partials, &budget).unwrap(),
        expected
    );
    // And a value one past the limit is refused at encryption.
    assert!(matches!(
        key.encrypt(&[max + 1], &budget, &mut rng),
        Err(HeError::ValueOutOfRange { index: 0, .. })
    ));
}

/// The budget's noise bound is neither violated nor vacuous: the secret-dependent noise of
/// real ciphertexts as sent (fresh encryption plus mask rounding) stays below
/// 2^ciphertext_noise_bits and comes within a few bits of it.
#[test]
fn measured_ciphertext_noise_stays_under_the_budget_bound() {
    let config = ThresholdConfig::new(5, 3).unwrap();
    let keys = test_keys(&config, 45);
    let key = keys.public_key.prepare();
    let budget = budget(config, 20, 1, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(46);
    let mut exact = ExactInnerProducts::new(&keys.collective_secret);
    let mut work = EncryptWork::new();
    let mut largest = 0u128;
    for _ in 0..4 {
        let mut binary = vec![0u128; POLYNOMIAL_SIZE];
        let mut mask_noise = vec![0u128; POLYNOMIAL_SIZE];
        let mut body_noise = vec![0u128; POLYNOMIAL_SIZE];
        sampling::fill_binary(&mut rng, &mut binary);
        sampling::GaussianSampler::standard().fill_u128(&mut rng, &mut mask_noise);
        sampling::GaussianSampler::standard().fill_u128(&mut rng, &mut body_noise);
        let plaintexts = vec![0u128; POLYNOMIAL_SIZE];
        let mut mask = vec![0u128; POLYNOMIAL_SIZE];
        let mut body = vec![0u128; POLYNOMIAL_SIZE];
        key.encrypt_group(
            &plaintexts,
            &GroupRandomness {
                binary: &binary,
                mask_noise: &mask_noise,
                body_noise: &body_noise,
            },
            &mut work,
            &mut mask,
            &mut body,
        );
        let mask: Vec<u128> = mask.iter().map(|&m| round_mask(m)).collect();
        let inner = exact.of(&mask);
        for k in 0..POLYNOMIAL_SIZE {
            let noise = body[k].wrapping_sub(inner[k]) as i128;
            largest = largest.max(noise.unsigned_abs());
        }
    }
    let bound = budget.ciphertext_noise_bits().exp2() as u128;
    println!(
        "largest noise 2^{:.2}, bound 2^{:.2}",
        (largest as f64).log2(),
        budget.ciphertext_noise_bits()
    );
    assert!(largest < bound, "noise {largest} exceeds the bound {bound}");
    assert!(
        largest > bound >> 4,
        "the bound {bound} is far from the noise {largest}"
    );
}

/// Partial decryptions carry the smudging the budget asks for: their distance from the exact
/// inner product spreads over +-2^smudging_bits, far beyond the 2^63 of rounding alone.
#[test]
fn partial_decryptions_are_smudged_to_the_budget() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let keys = test_keys(&config, 47);
    let key = keys.public_key.prepare();
    // Many heavy contributions push the smudging above the 64 dropped bits, where it shows.
    let budget = budget(config, 8, 4, 1 << 24);
    let smudging = budget.smudging_bits();
    assert!(smudging >= 70, "{smudging}");
    let mut rng = ChaCha20Rng::seed_from_u64(48);
    let ciphertext = key
        .encrypt(&vec![0; POLYNOMIAL_SIZE], &budget, &mut rng)
        .unwrap();
    let share = &keys.shares[0];
    let subsets = config.subsets_held_by(0);
    let partial = share
        .partial_decrypt_subsets(&ciphertext, &subsets, smudging, Window::TOP_64, &mut rng)
        .unwrap();

    let mut sum = vec![0u128; POLYNOMIAL_SIZE];
    for subshare in share.subshares() {
        for (acc, v) in sum.iter_mut().zip(subshare.coefficients()) {
            *acc = acc.wrapping_add(*v);
        }
    }
    let exact = ExactInnerProducts::new(&sum).of(ciphertext.masks());
    let width = 1i128 << smudging;
    let mut wide = 0;
    for k in 0..POLYNOMIAL_SIZE {
        let sent = u128::from(partial[k]) << 64;
        let diff = sent.wrapping_sub(exact[k]) as i128;
        assert!(diff.abs() <= 3 * width + (1 << 63), "{diff} at {k}");
        if diff.abs() > width {
            wide += 1;
        }
    }
    // The sum of three uniforms on [-S, S) exceeds S in absolute value a third of the time.
    let fraction = f64::from(wide) / POLYNOMIAL_SIZE as f64;
    assert!((0.28..0.39).contains(&fraction), "{fraction}");
}

#[test]
fn a_model_encrypted_from_a_seed_is_the_same_at_every_member_and_decrypts_to_it() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let keys = test_keys(&config, 60);
    let key = keys.public_key.prepare();
    let budget = budget(config, 20, 5, 4096);
    let mut rng = ChaCha20Rng::seed_from_u64(61);
    // A model beyond one contribution's range but within the summed message space.
    let mut model = random_messages(&mut rng, 700, budget.max_value());
    model[3] = (1i64 << budget.message_bits()) - 1;
    model[4] = -model[3];
    let at_one = key.encrypt_model(&model, &budget, [4; 32]).unwrap();
    let at_another = key.encrypt_model(&model, &budget, [4; 32]).unwrap();
    assert_eq!(at_one, at_another);
    assert_ne!(
        at_one,
        key.encrypt_model(&model, &budget, [5; 32]).unwrap(),
        "another seed, another ciphertext"
    );
    let bound = BoundCiphertext::new(at_one);
    let quorum = Quorum::new(&config, vec![0, 2]).unwrap();
    let partials: Vec<_> = [0usize, 2]
        .iter()
        .map(|&m| {
            keys.shares[m]
                .partial_decrypt(&bound, &quorum, &budget, &mut rng)
                .unwrap()
        })
        .collect();
    assert_eq!(combine(&bound, &quorum, &partials, &budget).unwrap(), model);
    // Past the message space it is refused, naming the value.
    model[9] = 1i64 << budget.message_bits();
    assert!(matches!(
        key.encrypt_model(&model, &budget, [4; 32]),
        Err(HeError::ValueOutOfRange { index: 9, .. })
    ));
}

#[test]
fn rerandomized_ciphertext_decrypts_to_the_same_values_with_a_new_digest() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let keys = test_keys(&config, 50);
    let key = keys.public_key.prepare();
    let budget = budget(config, 30, 2, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(51);
    let values = random_messages(&mut rng, 500, budget.max_value());
    let original = key.encrypt(&values, &budget, &mut rng).unwrap();
    let mut retried = original.clone();
    key.rerandomize(&mut retried, [9; 32]).unwrap();
    // Every member recomputes the same retried ciphertext from the public seed.
    let mut recomputed = original.clone();
    key.rerandomize(&mut recomputed, [9; 32]).unwrap();
    assert_eq!(retried, recomputed);
    let retried = BoundCiphertext::new(retried);
    assert_ne!(BoundCiphertext::new(original).digest(), retried.digest());
    let quorum = Quorum::new(&config, vec![1, 2]).unwrap();
    let partials: Vec<_> = [1usize, 2]
        .iter()
        .map(|&m| {
            keys.shares[m]
                .partial_decrypt(&retried, &quorum, &budget, &mut rng)
                .unwrap()
        })
        .collect();
    assert_eq!(
        combine(&retried, &quorum, &partials, &budget).unwrap(),
        values
    );
}

/// A member computes its partial straight into its encoding: the bytes must be those of the
/// partial computed apart and then encoded, for the same randomness, across several bins and
/// a last bin that is not full; and the encoding must combine like the values do.
#[test]
fn a_partial_computed_into_its_encoding_is_the_encoding_of_the_same_partial() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let keys = test_keys(&config, 70);
    let key = keys.public_key.prepare();
    let budget = budget(config, 30, 3, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(71);
    let values = random_messages(&mut rng, 2 * POLYNOMIAL_SIZE + 77, budget.max_value());
    let ciphertext = BoundCiphertext::new(key.encrypt(&values, &budget, &mut rng).unwrap());
    let quorum = Quorum::new(&config, vec![0, 2]).unwrap();
    let mut partials = Vec::new();
    for (member, seed) in [(0usize, 72u64), (2, 73)] {
        let share = &keys.shares[member];
        let apart = share
            .partial_decrypt(
                &ciphertext,
                &quorum,
                &budget,
                &mut ChaCha20Rng::seed_from_u64(seed),
            )
            .unwrap();
        let encoded = share
            .partial_decrypt_encoded(
                &ciphertext,
                &quorum,
                &budget,
                &mut ChaCha20Rng::seed_from_u64(seed),
            )
            .unwrap();
        assert_eq!(encoded, crate::wire::encode_partial_decryption(&apart));
        partials.push(
            crate::wire::decode_partial_decryption(&encoded, crate::wire::DecodeLimits::default())
                .unwrap(),
        );
    }
    assert_eq!(
        combine(&ciphertext, &quorum, &partials, &budget).unwrap(),
        values
    );
    // The same refusals as apart: a member outside the quorum gets none.
    assert!(
        keys.shares[1]
            .partial_decrypt_encoded(&ciphertext, &quorum, &budget, &mut rng)
            .is_err()
    );
}

/// Partial decryption multiplies only a mask's top 120 bits, since every ciphertext's mask has
/// its low 8 at zero. A mask that does not is refused, naming the coefficient, instead of
/// being decrypted as if it did.
#[test]
fn a_mask_with_low_bits_set_is_refused_naming_the_coefficient() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let keys = test_keys(&config, 80);
    let key = keys.public_key.prepare();
    let budget = budget(config, 30, 1, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(81);
    let mut ciphertext = key.encrypt(&[5, 6, 7], &budget, &mut rng).unwrap();
    let quorum = Quorum::new(&config, vec![0, 1]).unwrap();
    let clean = BoundCiphertext::new(ciphertext.clone());
    assert!(
        keys.shares[0]
            .partial_decrypt(&clean, &quorum, &budget, &mut rng)
            .is_ok()
    );
    ciphertext.parts_mut().0[4099] ^= 1 << 7;
    let doctored = BoundCiphertext::new(ciphertext);
    for share in &keys.shares[..2] {
        let err = share
            .partial_decrypt(&doctored, &quorum, &budget, &mut rng)
            .unwrap_err();
        assert!(matches!(err, HeError::MaskLowBits { index: 4099 }), "{err}");
        let err = share
            .partial_decrypt_encoded(&doctored, &quorum, &budget, &mut rng)
            .unwrap_err();
        assert!(matches!(err, HeError::MaskLowBits { index: 4099 }), "{err}");
    }
}

/// A member combines from the partials' encodings as they arrived, without a decoded copy of
/// each: the same messages, and the same refusals, before the sum is touched.
#[test]
fn a_partial_subtracted_from_its_encoding_combines_and_is_refused_as_a_decoded_one() {
    use crate::wire::{DecodeLimits, decode_partial_view, encode_partial_decryption};
    let config = ThresholdConfig::new(4, 3).unwrap();
    let keys = test_keys(&config, 64);
    let key = keys.public_key.prepare();
    let budget = budget(config, 30, 1, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(65);
    let messages = random_messages(&mut rng, POLYNOMIAL_SIZE + 9, budget.max_value());
    let ciphertext = BoundCiphertext::new(key.encrypt(&messages, &budget, &mut rng).unwrap());
    let quorum = Quorum::new(&config, vec![0, 1, 3]).unwrap();
    let partials = keys.partials(&ciphertext, &quorum, &budget, &mut rng);
    let encoded: Vec<Vec<u8>> = partials.iter().map(encode_partial_decryption).collect();
    let limits = DecodeLimits::default();
    let mut wrong = partials[1].clone();
    wrong.values[3] ^= 1;
    wrong.ciphertext = CiphertextDigest([7; 32]);
    let wrong = encode_partial_decryption(&wrong);
    let mut combination =
        Combination::new(CombineTarget::of(&ciphertext), quorum.clone(), &budget).unwrap();
    for bytes in &encoded {
        let err = combination
            .subtract_encoded(&decode_partial_view(&wrong, limits).unwrap())
            .unwrap_err();
        assert!(matches!(err, HeError::Partial { party: 1, .. }), "{err}");
        combination
            .subtract_encoded(&decode_partial_view(bytes, limits).unwrap())
            .unwrap();
        // A second copy of one already subtracted is refused.
        assert!(
            combination
                .subtract_encoded(&decode_partial_view(bytes, limits).unwrap())
                .is_err()
        );
    }
    assert_eq!(combination.finish(None).unwrap(), messages);
    assert_eq!(
        combine(&ciphertext, &quorum, &partials, &budget).unwrap(),
        messages
    );
    // A partial made for another quorum is refused naming its party, as a decoded one is.
    let other = Quorum::new(&config, vec![0, 1, 2]).unwrap();
    let elsewhere = keys.shares[1]
        .partial_decrypt(&ciphertext, &other, &budget, &mut rng)
        .unwrap();
    let mut fresh =
        Combination::new(CombineTarget::of(&ciphertext), quorum.clone(), &budget).unwrap();
    let encoded_err = fresh
        .subtract_encoded(
            &decode_partial_view(&encode_partial_decryption(&elsewhere), limits).unwrap(),
        )
        .unwrap_err();
    let decoded_err = fresh.subtract(&elsewhere).unwrap_err();
    assert!(
        matches!(encoded_err, HeError::Partial { party: 1, .. }),
        "{encoded_err}"
    );
    assert_eq!(encoded_err.to_string(), decoded_err.to_string());
    // Incomplete: two of the three.
    let mut two = Combination::new(CombineTarget::of(&ciphertext), quorum, &budget).unwrap();
    for bytes in &encoded[..2] {
        two.subtract_encoded(&decode_partial_view(bytes, limits).unwrap())
            .unwrap();
    }
    assert!(two.finish(None).is_err());
}

/// Bodies kept in any window the budget admits combine: all the top 64 bits (as the ceremony's
/// validation challenge keeps them) decrypt exactly; bodies rounded higher than the budget
/// rounds them, or cut below the phase's top, are refused before anything is subtracted.
#[test]
fn a_combination_takes_bodies_in_any_window_the_budget_admits_and_refuses_the_rest() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let keys = test_keys(&config, 64);
    let key = keys.public_key.prepare();
    let budget = budget(config, 20, 1, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(65);
    let messages: Vec<i64> = (0..300).map(|i| i * 3 - 450).collect();
    let quorum = Quorum::new(&config, vec![0, 2]).unwrap();
    let top64 = BoundCiphertext::new(
        key.encrypt_in(&messages, &budget, Window::TOP_64, &mut rng)
            .unwrap(),
    );
    let partials = keys.partials(&top64, &quorum, &budget, &mut rng);
    assert_eq!(
        combine(&top64, &quorum, &partials, &budget).unwrap(),
        messages
    );
    let ours = budget.body_window();
    let coarser = Window::new(ours.dropped_bits() + 1, ours.bytes() as u8).unwrap();
    let short = Window::new(ours.dropped_bits(), 1).unwrap();
    assert!(short.top_bit() < budget.phase_bits());
    for window in [coarser, short] {
        let shape = CiphertextShape {
            body_window: window,
            ..budget.ciphertext_shape(messages.len())
        };
        let target = CombineTarget::of(&BoundCiphertext::new(Ciphertext::zero(shape)));
        let err = Combination::new(target, quorum.clone(), &budget).unwrap_err();
        assert!(err.to_string().contains("of its bodies"), "{err}");
        assert!(
            key.encrypt_in(&messages, &budget, window, &mut rng)
                .is_err()
        );
    }
}

#[test]
fn a_combination_fed_one_partial_at_a_time_refuses_a_bad_one_without_touching_the_sum() {
    let config = ThresholdConfig::new(4, 3).unwrap();
    let keys = test_keys(&config, 62);
    let key = keys.public_key.prepare();
    let budget = budget(config, 30, 1, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(63);
    let messages: Vec<i64> = (0..POLYNOMIAL_SIZE as i64 + 5)
        .map(|i| i * 7 - 900)
        .collect();
    let ciphertext = BoundCiphertext::new(key.encrypt(&messages, &budget, &mut rng).unwrap());
    let quorum = Quorum::new(&config, vec![0, 2, 3]).unwrap();
    let partials = keys.partials(&ciphertext, &quorum, &budget, &mut rng);
    // The target is taken out of the ciphertext: its digest stays, its masks go.
    let target = CombineTarget::from_bound(ciphertext.clone());
    assert_eq!(target.digest(), ciphertext.digest());
    let mut combination = Combination::new(target, quorum.clone(), &budget).unwrap();
    let mut wrong = partials[1].clone();
    wrong.values[0] ^= 1;
    wrong.ciphertext = CiphertextDigest([9; 32]);
    for (index, partial) in partials.iter().enumerate().rev() {
        let err = combination.subtract(&wrong).unwrap_err();
        assert!(matches!(err, HeError::Partial { party: 2, .. }), "{err}");
        combination.subtract(partial).unwrap();
        // A second copy of one already subtracted is refused.
        assert!(combination.subtract(&partials[index]).is_err());
    }
    assert_eq!(combination.finish(None).unwrap(), messages);
    // The same checks on the headers alone, before anything is committed to combining.
    let headers = |partials: &[PartialDecryption]| -> Vec<PartialHeader> {
        partials
            .iter()
            .map(|p| PartialHeader {
                party: p.party,
                quorum: p.quorum.clone(),
                ciphertext: p.ciphertext,
                window: p.window,
                value_count: p.values.len() as u64,
            })
            .collect()
    };
    let check = |headers: &[PartialHeader]| {
        check_partials(
            ciphertext.digest(),
            messages.len() as u64,
            &quorum,
            &budget,
            headers,
        )
    };
    let good = headers(&partials);
    check(&good).unwrap();
    let mut short = good.clone();
    short[2].value_count -= 1;
    let err = check(&short).unwrap_err();
    assert!(matches!(err, HeError::Partial { party: 3, .. }), "{err}");
    // A member whose partial rounds away bits the budget's window keeps is refused by name:
    // its rounding would not be what Delta was chosen for. A window holding more of the word
    // is taken: all the top 64 bits, as partials were before windows, or a wider one.
    let ours = budget.share_window();
    let other = Window::new(ours.dropped_bits() + 8, ours.bytes() as u8).unwrap();
    assert!(!budget.admits(other));
    let mut shifted = good.clone();
    shifted[1].window = other;
    let err = check(&shifted).unwrap_err();
    assert!(matches!(err, HeError::Partial { party: 2, .. }), "{err}");
    let named = format!("keeps bits {} to {}", other.dropped_bits(), other.top_bit());
    assert!(err.to_string().contains(&named), "{err}");
    // Nor one that stops below the phase's top.
    shifted[1].window = Window::new(ours.dropped_bits(), ours.bytes() as u8 - 1).unwrap();
    assert!(check(&shifted).is_err());
    let wider = Window::new(ours.dropped_bits(), ours.bytes() as u8 + 1).unwrap();
    shifted[1].window = wider;
    check(&shifted).unwrap();
    shifted[1].window = Window::TOP_64;
    check(&shifted).unwrap();
    let mut elsewhere = partials[1].clone();
    elsewhere.window = other;
    let mut fresh =
        Combination::new(CombineTarget::of(&ciphertext), quorum.clone(), &budget).unwrap();
    let decoded_err = fresh.subtract(&elsewhere).unwrap_err();
    let encoded = crate::wire::encode_partial_decryption(&elsewhere);
    let view = crate::wire::decode_partial_view(&encoded, crate::wire::DecodeLimits::default());
    let encoded_err = fresh.subtract_encoded(&view.unwrap()).unwrap_err();
    assert_eq!(decoded_err.to_string(), err.to_string());
    assert_eq!(encoded_err.to_string(), err.to_string());
    let err = check(&good[..2]).unwrap_err();
    assert!(err.to_string().contains("2 of 3"), "{err}");
    let twice = [good[0].clone(), good[0].clone(), good[1].clone()];
    assert!(check(&twice).is_err());
    assert_eq!(
        combine(&ciphertext, &quorum, &partials, &budget).unwrap(),
        messages
    );
}

#[test]
fn combine_rejects_partials_for_another_ciphertext_quorum_scale_or_a_missing_member() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let keys = test_keys(&config, 60);
    let key = keys.public_key.prepare();
    let budget = budget(config, 30, 1, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(61);
    let ciphertext = BoundCiphertext::new(key.encrypt(&[1, 2, 3], &budget, &mut rng).unwrap());
    let quorum = Quorum::new(&config, vec![0, 1]).unwrap();
    let partial = |m: usize, rng: &mut ChaCha20Rng| {
        keys.shares[m]
            .partial_decrypt(&ciphertext, &quorum, &budget, rng)
            .unwrap()
    };
    let good = vec![partial(0, &mut rng), partial(1, &mut rng)];
    assert_eq!(
        combine(&ciphertext, &quorum, &good, &budget).unwrap(),
        vec![1, 2, 3]
    );

    let mut other_digest = good.clone();
    other_digest[1].ciphertext = CiphertextDigest([7; 32]);
    let err = combine(&ciphertext, &quorum, &other_digest, &budget).unwrap_err();
    assert!(matches!(err, HeError::Partial { party: 1, .. }), "{err}");

    let err = combine(&ciphertext, &quorum, &good[..1], &budget).unwrap_err();
    assert!(err.to_string().contains("1 of 2"), "{err}");

    let twice = vec![good[0].clone(), good[0].clone()];
    assert!(combine(&ciphertext, &quorum, &twice, &budget).is_err());

    let outsider = keys.shares[2].partial_decrypt(&ciphertext, &quorum, &budget, &mut rng);
    assert!(outsider.is_err(), "party 2 is not in the quorum");

    let other_scale = budget::tests_support::budget_with_other_delta(config);
    assert_ne!(other_scale.delta_bits(), budget.delta_bits());
    let err = combine(&ciphertext, &quorum, &good, &other_scale).unwrap_err();
    assert!(err.to_string().contains("2^"), "{err}");

    let foreign = Quorum::new(&ThresholdConfig::new(4, 2).unwrap(), vec![0, 1]).unwrap();
    assert!(
        keys.shares[0]
            .partial_decrypt(&ciphertext, &foreign, &budget, &mut rng)
            .is_err()
    );
}

#[test]
fn secrets_never_show_in_debug_output_and_are_wiped_on_drop() {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<KeyShare>();
    wiped_on_drop::<Subshare>();
    wiped_on_drop::<SecretContribution>();

    let config = ThresholdConfig::new(3, 2).unwrap();
    let keys = test_keys(&config, 70);
    let shown = format!("{:?}", keys.shares[0]);
    assert!(shown.contains("<redacted>"), "{shown}");
    let first = keys.shares[0].subshares()[0].coefficients()[0];
    assert!(!shown.contains(&first.to_string()));
    assert!(!format!("{:?}", keys.shares[0].subshares()[0]).contains(&first.to_string()));
    let mut rng = ChaCha20Rng::seed_from_u64(71);
    let secret = SecretContribution::generate(&mut rng);
    assert_eq!(format!("{secret:?}"), "SecretContribution(<redacted>)");
}

#[test]
fn round_mask_rounds_to_the_nearest_multiple_of_256() {
    assert_eq!(round_mask(0), 0);
    assert_eq!(round_mask(127), 0);
    assert_eq!(round_mask(128), 256);
    assert_eq!(round_mask(0x1234_5680), 0x1234_5700);
    assert_eq!(round_mask(u128::MAX), 0);
}

#[test]
fn seeded_dealings_share_the_same_secret_as_plain_ones() {
    let config = ThresholdConfig::new(4, 2).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(80);
    let secret = SecretContribution::generate(&mut rng);
    let dealing = secret.deal_seeded(&config, &mut rng);
    assert!(matches!(
        dealing.pieces.last(),
        Some((_, DealtPiece::Full(_)))
    ));
    let mut sum = vec![0u128; POLYNOMIAL_SIZE];
    for (subset, piece) in &dealing.pieces {
        for (acc, v) in sum.iter_mut().zip(piece.expand(*subset, 1).coefficients()) {
            *acc = acc.wrapping_add(*v);
        }
    }
    assert_eq!(sum, secret.coefficients());
    assert!(dealing.for_party(0).iter().all(|(u, _)| !u.contains(0)));
}

/// The window's top reduces every partial modulo 2^w with w below 128: sums as large as the
/// budget allows, of either sign, still combine to the exact messages, from decoded partials
/// and from their encodings alike, also beside partials of wider windows (all the top 64 bits,
/// as members sent before windows, and one a bit lower and a byte higher). The first budget's window tops out exactly at Delta + message bits
/// + 1, the least the argument allows.
#[test]
fn the_largest_sums_a_budget_allows_combine_exactly_from_windowed_partials() {
    use crate::wire::{DecodeLimits, decode_partial_view, encode_partial_decryption};
    let config = ThresholdConfig::new(5, 3).unwrap();
    let keys = test_keys(&config, 70);
    let key = keys.public_key.prepare();
    let mut rng = ChaCha20Rng::seed_from_u64(71);
    // L1 = 4 * 8192 = 2^15, so the sums below reach (2^value_bits - 1) * 2^15, the edge of
    // the message bits.
    // At 8 value bits the bodies' window tops out below the partials', so the phase is read at
    // the bodies' top.
    for (value_bits, tight, body_below) in [(20, true, false), (1, false, false), (8, false, true)]
    {
        let budget = budget(config, value_bits, 4, 8192);
        assert_eq!(budget.message_bits(), value_bits + 15);
        let window = budget.share_window();
        assert!(
            window.bytes() < 8 && window.top_bit() < 128,
            "the test needs a window reduced at both ends: {window:?}"
        );
        let least = budget.delta_bits() + budget.message_bits() + 1;
        assert_eq!(window.top_bit() == least, tight, "{window:?}");
        let body = budget.body_window();
        assert!(body.bytes() < 8, "{body:?}");
        assert_eq!(
            body.top_bit() < window.top_bit(),
            body_below,
            "{body:?}, {window:?}"
        );
        assert!(body.top_bit() >= least, "{body:?}");
        let max = budget.max_value();
        let values: Vec<i64> = [max, -max, max - 1, 1 - max, 0, 1, -1]
            .into_iter()
            .cycle()
            .take(POLYNOMIAL_SIZE + 3)
            .collect();
        let one = key.encrypt(&values, &budget, &mut rng).unwrap();
        let mut sum = Ciphertext::zero(budget.ciphertext_shape(values.len()));
        for _ in 0..4 {
            sum.add_weighted(&one, 8192).unwrap();
        }
        let sum = BoundCiphertext::new(sum);
        let expected: Vec<i64> = values.iter().map(|v| v * 32768).collect();
        let edge = (1i64 << budget.message_bits()) - (1 << 15);
        assert!(expected.contains(&edge) && expected.contains(&-edge));
        let quorum = Quorum::new(&config, vec![0, 2, 4]).unwrap();
        let partials = keys.partials(&sum, &quorum, &budget, &mut rng);
        assert!(partials.iter().all(|p| p.window == window));
        assert_eq!(
            combine(&sum, &quorum, &partials, &budget).unwrap(),
            expected
        );
        // The sum as members hold it, decoded from its encoding: its bodies are known only
        // below their window's top, which is where the phase must be read when that top is
        // the lowest (the sum above, made in memory with weights that are powers of two,
        // carries nothing wrong into the bits between the two tops).
        let decoded = BoundCiphertext::decode(
            &crate::wire::encode_ciphertext(sum.ciphertext()),
            DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(decoded.digest(), sum.digest());
        assert_eq!(
            combine(&decoded, &quorum, &partials, &budget).unwrap(),
            expected
        );
        let mut mixed = partials.clone();
        mixed[1] = keys.shares[2]
            .partial_decrypt_in(&sum, &quorum, &budget, Window::TOP_64, &mut rng)
            .unwrap();
        let wider = Window::new(window.dropped_bits() - 1, window.bytes() as u8 + 1).unwrap();
        mixed[2] = keys.shares[4]
            .partial_decrypt_in(&sum, &quorum, &budget, wider, &mut rng)
            .unwrap();
        assert_eq!(combine(&sum, &quorum, &mixed, &budget).unwrap(), expected);
        let encoded: Vec<Vec<u8>> = partials.iter().map(encode_partial_decryption).collect();
        let header = encode_partial_decryption(&PartialDecryption {
            values: Vec::new(),
            ..partials[0].clone()
        })
        .len();
        let mut combination =
            Combination::new(CombineTarget::of(&sum), quorum.clone(), &budget).unwrap();
        for bytes in &encoded {
            assert_eq!(bytes.len(), header + values.len() * window.bytes());
            combination
                .subtract_encoded(&decode_partial_view(bytes, DecodeLimits::default()).unwrap())
                .unwrap();
        }
        assert_eq!(combination.finish(None).unwrap(), expected);
    }
}
