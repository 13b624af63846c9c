//! Keys of several secrets: k bins of values share one mask polynomial, each bin's bodies
//! under its own secret.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::keys::SecretContribution;
use super::ntt::NttContext;
use super::*;
use crate::wire::{
    BoundCiphertext, DecodeLimits, WireError, ciphertext_encoded_len, decode_ciphertext,
    decode_key_share, decode_public_key, decode_public_key_contribution, encode_ciphertext,
    encode_key_share, encode_public_key, encode_public_key_contribution, mask_digest,
};

fn budget(config: ThresholdConfig, value_bits: u32, contributions: u32) -> Budget {
    Budget::compute(BudgetRequest {
        config,
        max_contributions: contributions,
        weight_bound: 3,
        value_bits,
        kappa: 40,
        rounds: 1,
        decoding: Decoding::Absolute,
    })
    .unwrap()
}

fn seeded(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn messages(rng: &mut ChaCha20Rng, count: usize, max: i64) -> Vec<i64> {
    (0..count).map(|_| rng.gen_range(-max..=max)).collect()
}

/// Every member's contribution kept, so that a test can add up the collective secrets.
struct Members {
    contributions: Vec<SecretContribution>,
    keys: LocalKeySet,
}

fn members(config: &ThresholdConfig, secrets: usize, seed: u64) -> Members {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mask_seed: u128 = rng.r#gen();
    let contributions: Vec<SecretContribution> = (0..config.parties())
        .map(|_| SecretContribution::generate_with_secrets(secrets, &mut rng).unwrap())
        .collect();
    let public: Vec<_> = contributions
        .iter()
        .enumerate()
        .map(|(party, s)| s.public_key_contribution(party as u8, mask_seed, &mut rng))
        .collect();
    let public_key = PublicKey::combine(config, &public).unwrap();
    let dealings: Vec<_> = contributions
        .iter()
        .map(|s| s.deal_seeded(config, &mut rng))
        .collect();
    let shares = (0..config.parties())
        .map(|party| {
            let mut builder = KeyShareBuilder::with_secrets(*config, party, secrets).unwrap();
            for (dealer, dealing) in dealings.iter().enumerate() {
                let pieces: Vec<Subshare> = dealing
                    .for_party(party)
                    .iter()
                    .map(|(subset, piece)| piece.expand(*subset, secrets))
                    .collect();
                builder.add(dealer as u8, &pieces).unwrap();
            }
            builder.finish().unwrap()
        })
        .collect();
    Members {
        contributions,
        keys: LocalKeySet { public_key, shares },
    }
}

impl Members {
    /// Collective secret `j`: the sum of every member's contribution to it.
    fn collective_secret(&self, j: usize) -> Vec<u128> {
        let mut sum = vec![0u128; POLYNOMIAL_SIZE];
        for contribution in &self.contributions {
            let piece = &contribution.coefficients()[j * POLYNOMIAL_SIZE..][..POLYNOMIAL_SIZE];
            for (acc, v) in sum.iter_mut().zip(piece) {
                *acc = acc.wrapping_add(*v);
            }
        }
        sum
    }
}

/// body - <mask, secret> rounded by Delta, for one bin, as a holder of the whole secret would.
fn decrypt_bin(ciphertext: &Ciphertext, group: usize, bin: usize, secret: &[u128]) -> Vec<i64> {
    let context = NttContext::get();
    let reversed: Vec<u128> = secret.iter().rev().copied().collect();
    let mut form = context.new_full_form();
    context.full_form(&reversed, &mut form);
    let mask = &ciphertext.masks()[group * POLYNOMIAL_SIZE..][..POLYNOMIAL_SIZE];
    let mut product = vec![0u128; POLYNOMIAL_SIZE];
    context.mask_product(mask, &form, &mut context.new_full_form(), &mut product);
    let start = (group * ciphertext.secrets() + bin) * POLYNOMIAL_SIZE;
    let end = (start + POLYNOMIAL_SIZE).min(ciphertext.value_count());
    let top = ciphertext.body_window().top_bit();
    let delta = ciphertext.delta_bits();
    (start..end)
        .map(|index| {
            let body = u128::from(ciphertext.bodies()[index]) << 64;
            let phase = body.wrapping_sub(product[POLYNOMIAL_SIZE - 1 - (index - start)]);
            // The phase is known modulo 2^top: sign-extend from there, then round by Delta.
            let signed = ((phase << (128 - top)) as i128) >> (128 - top);
            (signed.wrapping_add(1i128 << (delta - 1)) >> delta) as i64
        })
        .collect()
}

#[test]
fn each_bin_of_a_group_is_encrypted_under_its_own_secret_and_no_other() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let members = members(&config, 3, 1);
    let key = members.keys.public_key.prepare();
    assert_eq!(key.secrets(), 3);
    let budget = budget(config, 20, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    // Two groups: a full one and one of two bins, the last one not full.
    let count = 3 * POLYNOMIAL_SIZE + POLYNOMIAL_SIZE + 300;
    let values = messages(&mut rng, count, budget.max_value());
    let ciphertext = key.encrypt(&values, &budget, &mut rng).unwrap();
    assert_eq!(ciphertext.masks().len(), 2 * POLYNOMIAL_SIZE);
    assert_eq!(ciphertext.bodies().len(), count);

    let secrets: Vec<Vec<u128>> = (0..3).map(|j| members.collective_secret(j)).collect();
    for (group, bins) in [(0, 3), (1, 2)] {
        for bin in 0..bins {
            let start = (group * 3 + bin) * POLYNOMIAL_SIZE;
            let expected = &values[start..(start + POLYNOMIAL_SIZE).min(count)];
            for (j, secret) in secrets.iter().enumerate() {
                let decrypted = decrypt_bin(&ciphertext, group, bin, secret);
                let right = decrypted
                    .iter()
                    .zip(expected)
                    .filter(|(a, b)| a == b)
                    .count();
                if j == bin {
                    assert_eq!(
                        right,
                        expected.len(),
                        "group {group}, bin {bin}, secret {j}"
                    );
                } else {
                    assert!(
                        right < expected.len() / 100,
                        "group {group}, bin {bin} decrypts under secret {j}: {right} right"
                    );
                }
            }
        }
    }
}

#[test]
fn sums_under_a_key_of_several_secrets_decrypt_exactly_with_every_quorum() {
    let config = ThresholdConfig::new(4, 3).unwrap();
    for secrets in [2, 4] {
        let members = members(&config, secrets, 10 + secrets as u64);
        let key = members.keys.public_key.prepare();
        let budget = budget(config, 30, 3);
        let mut rng = ChaCha20Rng::seed_from_u64(20 + secrets as u64);
        let count = (secrets + 1) * POLYNOMIAL_SIZE + 1234;
        let inputs: Vec<Vec<i64>> = (0..3)
            .map(|_| messages(&mut rng, count, budget.max_value() / 6))
            .collect();
        let weights = [3i64, -2, 1];
        let expected: Vec<i64> = (0..count)
            .map(|i| (0..3).map(|c| weights[c] * inputs[c][i]).sum())
            .collect();
        let ciphertexts: Vec<Ciphertext> = inputs
            .iter()
            .map(|m| key.encrypt(m, &budget, &mut rng).unwrap())
            .collect();
        let terms: Vec<(&Ciphertext, i64)> = ciphertexts.iter().zip(weights).collect();
        let aggregate = BoundCiphertext::new(Ciphertext::weighted_sum(&terms).unwrap());
        // Summed from the encodings, as the coordinator and members do, it is the same.
        let encoded: Vec<Vec<u8>> = ciphertexts.iter().map(encode_ciphertext).collect();
        let views: Vec<_> = encoded
            .iter()
            .zip(weights)
            .map(|(bytes, w)| {
                (
                    crate::wire::decode_ciphertext_view(bytes, DecodeLimits::default()).unwrap(),
                    w,
                )
            })
            .collect();
        assert_eq!(
            &crate::wire::CiphertextView::weighted_sum(&views).unwrap(),
            aggregate.ciphertext()
        );

        for members_of_quorum in [vec![0, 1, 2], vec![1, 2, 3], vec![0, 2, 3]] {
            let quorum = Quorum::new(&config, members_of_quorum.clone()).unwrap();
            let partials: Vec<PartialDecryption> = members_of_quorum
                .iter()
                .map(|&m| {
                    members.keys.shares[usize::from(m)]
                        .partial_decrypt(&aggregate, &quorum, &budget, &mut rng)
                        .unwrap()
                })
                .collect();
            assert_eq!(
                combine(&aggregate, &quorum, &partials, &budget).unwrap(),
                expected,
                "{secrets} secrets, quorum {members_of_quorum:?}"
            );
            // A partial computed into its encoding is the same partial, for the same
            // randomness.
            let share = &members.keys.shares[usize::from(members_of_quorum[0])];
            let encoded = share
                .partial_decrypt_encoded(&aggregate, &quorum, &budget, &mut seeded(5))
                .unwrap();
            let decoded =
                crate::wire::decode_partial_decryption(&encoded, DecodeLimits::default()).unwrap();
            assert_eq!(decoded.values.len(), count);
            let apart = share
                .partial_decrypt(&aggregate, &quorum, &budget, &mut seeded(5))
                .unwrap();
            assert_eq!(crate::wire::encode_partial_decryption(&apart), encoded);
        }

        // Two members alone, with all they hold, get essentially nothing.
        let guess = tests::coalition_guess(
            &members.keys.shares,
            &[0, 1],
            aggregate.ciphertext(),
            &budget,
            &mut rng,
        );
        let right = guess.iter().zip(&expected).filter(|(a, b)| a == b).count();
        assert!(right < count / 1000, "two of four decrypted {right} values");
    }
}

#[test]
fn a_ciphertext_under_k_secrets_carries_one_mask_coefficient_per_k_values() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let budget = budget(config, 32, 5);
    let values = 10 * POLYNOMIAL_SIZE + 5;
    let one = budget.ciphertext_shape(values);
    let body = one.body_window.bytes();
    for secrets in 1..=MAX_SECRETS {
        let shape = budget.ciphertext_shape_under(values, secrets);
        let masks = values.div_ceil(secrets * POLYNOMIAL_SIZE) * POLYNOMIAL_SIZE;
        let header = if secrets == 1 { 36 } else { 37 };
        assert_eq!(
            ciphertext_encoded_len(shape),
            header + masks * 15 + values * body,
            "{secrets} secrets"
        );
    }
    // Four secrets: 15 / 4 bytes of mask a value, against 15.
    let four = budget.ciphertext_shape_under(values, 4);
    let per_value = |shape| ciphertext_encoded_len(shape) as f64 / values as f64;
    assert!(
        per_value(four) < per_value(one) - 10.5,
        "{}",
        per_value(four)
    );
}

#[test]
fn a_ciphertext_under_several_secrets_names_them_in_its_header_and_round_trips() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let members = members(&config, 2, 30);
    let key = members.keys.public_key.prepare();
    let budget = budget(config, 16, 2);
    let mut rng = ChaCha20Rng::seed_from_u64(31);
    let values = messages(&mut rng, POLYNOMIAL_SIZE + 10, budget.max_value());
    let ciphertext = key.encrypt(&values, &budget, &mut rng).unwrap();
    let bytes = encode_ciphertext(&ciphertext);
    assert_eq!(bytes[5], 10, "kind");
    let id_len = usize::from(bytes[6]);
    let secrets_at = 7 + id_len + 8 + 3;
    assert_eq!(bytes[secrets_at], 2, "secrets");
    assert_eq!(bytes.len(), ciphertext_encoded_len(ciphertext.shape()));
    let decoded = decode_ciphertext(&bytes, DecodeLimits::default()).unwrap();
    assert_eq!(decoded, ciphertext);
    assert_eq!(decoded.secrets(), 2);
    assert_eq!(
        BoundCiphertext::new(decoded).digest(),
        crate::wire::encoded_digest(&bytes)
    );

    // One secret has its own kind, and no key has more than MAX_SECRETS.
    for wrong in [0u8, 1, MAX_SECRETS as u8 + 1] {
        let mut edited = bytes.clone();
        edited[secrets_at] = wrong;
        let err = decode_ciphertext(&edited, DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Invalid {
                    field: "secrets",
                    ..
                }
            ),
            "{wrong}: {err}"
        );
    }
}

/// A model stored or held before kinds 9 and 10 is logged under the SHA-256 of its kind 7 or
/// 8 encoding: read from those bytes it keeps that digest, and written again it becomes kind 9
/// or 10, bound by BLAKE3.
#[test]
fn a_ciphertext_written_before_blake3_decodes_from_kinds_7_and_8_keeping_its_sha256_digest() {
    use sha2::Digest as _;
    let config = ThresholdConfig::new(3, 2).unwrap();
    let budget = budget(config, 16, 2);
    for (secrets, kind, before) in [(1, 9u8, 7u8), (2, 10, 8)] {
        let members = members(&config, secrets, 40 + secrets as u64);
        let key = members.keys.public_key.prepare();
        let mut rng = ChaCha20Rng::seed_from_u64(41);
        let values = messages(&mut rng, POLYNOMIAL_SIZE + 10, budget.max_value());
        let ciphertext = key.encrypt(&values, &budget, &mut rng).unwrap();
        let bytes = encode_ciphertext(&ciphertext);
        assert_eq!(bytes[5], kind, "kind written under {secrets} secret(s)");
        assert_eq!(
            crate::wire::encoded_digest(&bytes).0,
            *blake3::hash(&bytes).as_bytes()
        );

        let mut old = bytes.clone();
        old[5] = before;
        let decoded = decode_ciphertext(&old, DecodeLimits::default()).unwrap();
        assert_eq!(decoded, ciphertext);
        let logged: [u8; 32] = sha2::Sha256::digest(&old).into();
        assert_eq!(
            BoundCiphertext::decode(&old, DecodeLimits::default())
                .unwrap()
                .digest()
                .0,
            logged
        );
        // Streamed as a stored model is read, it is bound to that same digest.
        let mut stream =
            crate::round::WholeStream::new(ciphertext.shape(), logged, DecodeLimits::default());
        for piece in old.chunks(7000) {
            stream.push::<std::convert::Infallible>(piece).unwrap();
        }
        let bound = stream.finish::<std::convert::Infallible>().unwrap();
        assert_eq!(
            (bound.digest().0, bound.ciphertext()),
            (logged, &ciphertext)
        );
        // Written again, it is of the kind written now.
        assert_eq!(
            BoundCiphertext::new(decoded).digest(),
            crate::wire::encoded_digest(&bytes)
        );
    }
}

#[test]
fn the_same_masks_under_another_number_of_secrets_have_another_mask_digest() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let budget = budget(config, 16, 2);
    let values = POLYNOMIAL_SIZE;
    let digests: Vec<[u8; 32]> = (1..=3)
        .map(|secrets| {
            let shape = budget.ciphertext_shape_under(values, secrets);
            let zero = Ciphertext::zero(shape);
            assert_eq!(zero.masks().len(), POLYNOMIAL_SIZE);
            mask_digest(&zero)
        })
        .collect();
    assert_ne!(digests[0], digests[1]);
    assert_ne!(digests[1], digests[2]);
    assert_ne!(digests[0], digests[2]);
}

#[test]
fn a_share_or_key_of_another_number_of_secrets_refuses_the_ciphertext_naming_both() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let two = members(&config, 2, 40);
    let one = LocalKeySet::generate(&config, &mut ChaCha20Rng::seed_from_u64(41)).unwrap();
    let budget = budget(config, 16, 2);
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let values = messages(&mut rng, 100, budget.max_value());
    let ciphertext = BoundCiphertext::new(
        one.public_key
            .prepare()
            .encrypt(&values, &budget, &mut rng)
            .unwrap(),
    );
    let quorum = Quorum::new(&config, vec![0, 1]).unwrap();
    let err = two.keys.shares[0]
        .partial_decrypt(&ciphertext, &quorum, &budget, &mut rng)
        .unwrap_err();
    assert!(err.to_string().contains("key of 2 secrets"), "{err}");
    assert!(err.to_string().contains("100 values"), "{err}");

    let mut under_two = two
        .keys
        .public_key
        .prepare()
        .encrypt(&values, &budget, &mut rng)
        .unwrap();
    let err = one
        .public_key
        .prepare()
        .rerandomize(&mut under_two, [1; 32])
        .unwrap_err();
    assert!(err.to_string().contains("under 2 secrets"), "{err}");
    let under_one = ciphertext.ciphertext().clone();
    assert!(under_two.add_assign(&under_one).is_err());
}

#[test]
fn key_material_of_several_secrets_round_trips_and_a_ceremony_refuses_another_number() {
    let config = ThresholdConfig::new(3, 2).unwrap();
    let members = members(&config, 3, 50);
    let public = &members.keys.public_key;
    assert_eq!(public.secrets(), 3);
    let bytes = encode_public_key(public);
    assert_eq!(&decode_public_key(&bytes).unwrap(), public);
    for share in &members.keys.shares {
        let bytes = encode_key_share(share);
        let decoded = decode_key_share(&bytes).unwrap();
        assert_eq!(decoded.secrets(), 3);
        assert_eq!(encode_key_share(&decoded), bytes);
    }

    let mut rng = ChaCha20Rng::seed_from_u64(51);
    let contribution = members.contributions[1].public_key_contribution(1, 7, &mut rng);
    let bytes = encode_public_key_contribution(&contribution);
    assert_eq!(
        decode_public_key_contribution(&bytes, Some(3)).unwrap(),
        contribution
    );
    assert!(matches!(
        decode_public_key_contribution(&bytes, Some(1)),
        Err(WireError::WrongLength { .. })
    ));

    // A public key whose contributions have different numbers of secrets is refused.
    let single = SecretContribution::generate(&mut rng).public_key_contribution(0, 7, &mut rng);
    let mut mixed = vec![single];
    for (party, c) in members.contributions.iter().enumerate().skip(1) {
        mixed.push(c.public_key_contribution(party as u8, 7, &mut rng));
    }
    let err = PublicKey::combine(&config, &mixed).unwrap_err();
    assert!(err.to_string().contains("party 1 sent a body"), "{err}");
    assert!(SecretContribution::generate_with_secrets(MAX_SECRETS + 1, &mut rng).is_err());
    assert!(SecretContribution::generate_with_secrets(0, &mut rng).is_err());
}
