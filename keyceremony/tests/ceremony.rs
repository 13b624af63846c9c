//! The ceremony's state machines run together in one process, with a router that can drop,
//! alter or replay messages: an honest run gives every member the same key and a working
//! share; each kind of misbehaviour aborts, names the culprit, and leaves nobody a share.

use ed25519_dalek::{Signer, SigningKey};
use keyceremony::local::{LocalRun, run_in_process};
use keyceremony::machine::{Abort, Incoming, Outcome};
use keyceremony::message::{Body, Message, Phase};
use protocol::audit::entry::approval_message;
use protocol::consortium::Consortium;
use protocol::he::{Budget, BudgetRequest, Decoding, Quorum, combine};
use protocol::wire::BoundCiphertext;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn consortium(n: u8, t: u8) -> (Consortium, Vec<SigningKey>) {
    let hex_key = |seed: u8| {
        hex::encode(
            SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .to_bytes(),
        )
    };
    // k_min = t + 1 where the consortium allows it, else accepted explicitly.
    let small = if t < n {
        format!("k_min = {}", t + 1)
    } else {
        format!("k_min = {n}\naccept_small_aggregates = true")
    };
    let mut text = format!(
        "name = \"ceremony-test\"\nparameter_set = \"quorate-rlwe128-v1\"\nthreshold = {t}\n{small}\n\n\
         [coordinator]\nname = \"coordinator\"\nsigning_key = \"{}\"\nlog_key = \"{}\"\n\
         peer_id = \"peer-c\"\naddress = \"/ip4/127.0.0.1/tcp/7400\"\n",
        hex_key(200),
        hex_key(201)
    );
    let keys: Vec<SigningKey> = (0..n)
        .map(|i| SigningKey::from_bytes(&[i + 1; 32]))
        .collect();
    for i in 0..n {
        text.push_str(&format!(
            "\n[[members]]\nname = \"member-{i}\"\nsigning_key = \"{}\"\nwitness_key = \"{}\"\n\
             peer_id = \"peer-{i}\"\naddress = \"/ip4/127.0.0.1/tcp/{}\"\n",
            hex_key(i + 1),
            hex_key(i + 100),
            7401 + u32::from(i)
        ));
    }
    let mut consortium = Consortium::parse(&text).unwrap();
    let message = approval_message(&consortium.digest());
    for (i, key) in keys.iter().enumerate() {
        consortium =
            consortium.with_approval(&format!("member-{i}"), &key.sign(&message).to_bytes());
    }
    (consortium, keys)
}

/// What the router does with a message on its way to `to`: deliver (possibly altered) or drop.
type Tamper<'a> = dyn FnMut(u8, &mut Incoming) -> bool + 'a;

fn run(n: u8, t: u8, seed: u64, tamper: &mut Tamper<'_>) -> LocalRun {
    let (consortium, keys) = consortium(n, t);
    let mut rngs: Vec<ChaCha20Rng> = (0..n)
        .map(|i| ChaCha20Rng::seed_from_u64(seed * 100 + u64::from(i)))
        .collect();
    run_in_process(&consortium, &keys, &mut rngs, tamper).unwrap()
}

fn honest(_: u8, _: &mut Incoming) -> bool {
    true
}

#[test]
fn an_honest_ceremony_gives_everyone_the_same_key_and_working_shares() {
    for (n, t) in [(3u8, 2u8), (5, 3)] {
        let result = run(n, t, 1, &mut honest);
        assert!(
            result.aborts.iter().all(Option::is_none),
            "{:?}",
            result.aborts
        );
        let outcomes: Vec<&Outcome> = result
            .outcomes
            .iter()
            .map(|o| o.as_ref().unwrap())
            .collect();
        let key = &outcomes[0].public_key;
        assert!(
            outcomes
                .iter()
                .all(|o| o.public_key == *key && o.ceremony == outcomes[0].ceremony)
        );
        assert!(
            outcomes
                .iter()
                .all(|o| o.transcript == outcomes[0].transcript)
        );
        assert_eq!(outcomes[0].transcript.len(), 9 * usize::from(n));
        // Independently of the ceremony's own validation: a fresh message under the new key
        // decrypts with every t-subset.
        let config = *outcomes[0].share.config();
        let budget = Budget::compute(BudgetRequest {
            config,
            max_contributions: 1,
            weight_bound: 1,
            value_bits: 30,
            kappa: 40,
            rounds: 1,
            decoding: Decoding::Absolute,
        })
        .unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let values = vec![12345, -6789, 0, 1 << 29];
        let ciphertext =
            BoundCiphertext::new(key.prepare().encrypt(&values, &budget, &mut rng).unwrap());
        for quorum in keyceremony::machine::t_subsets(config) {
            let members: Vec<u8> = quorum.members().collect();
            let quorum = Quorum::new(&config, members.clone()).unwrap();
            let partials: Vec<_> = members
                .iter()
                .map(|&m| {
                    outcomes[usize::from(m)]
                        .share
                        .partial_decrypt(&ciphertext, &quorum, &budget, &mut rng)
                        .unwrap()
                })
                .collect();
            assert_eq!(
                combine(&ciphertext, &quorum, &partials, &budget).unwrap(),
                values
            );
        }
    }
}

fn assert_aborts_naming(result: &LocalRun, culprit: u8, needle: &str) {
    assert!(
        result.outcomes.iter().all(Option::is_none),
        "somebody kept a share"
    );
    let honest_aborts: Vec<&Abort> = result
        .aborts
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u8 != culprit)
        .map(|(_, a)| a.as_ref().expect("every honest member aborts"))
        .collect();
    assert!(
        honest_aborts
            .iter()
            .any(|a| a.culprit == Some(culprit) && a.reason.contains(needle)),
        "expected an abort naming member {culprit} ({needle}): {honest_aborts:#?}"
    );
}

/// Re-signs an altered message with the sender's own key: what a misbehaving member can do.
fn resign(incoming: &mut Incoming, body: Body) {
    let key = SigningKey::from_bytes(&[incoming.message.sender + 1; 32]);
    incoming.message = Message::sign(
        incoming.message.context,
        incoming.message.sender,
        body,
        &key,
    );
}

#[test]
fn a_wrong_signature_aborts_naming_the_sender() {
    let result = run(3, 2, 2, &mut |_, incoming| {
        if incoming.message.sender == 1 && incoming.message.phase() == Phase::SeedCommit {
            incoming.message.signature[5] ^= 1;
        }
        true
    });
    assert_aborts_naming(&result, 1, "wrong signature");
}

#[test]
fn a_reveal_that_does_not_match_its_commitment_aborts() {
    let result = run(3, 2, 3, &mut |_, incoming| {
        if incoming.message.sender == 2
            && let Body::SeedReveal { view, .. } = &incoming.message.body
        {
            let body = Body::SeedReveal {
                seed: [0xee; 32],
                view: view.clone(),
            };
            resign(incoming, body);
        }
        true
    });
    assert_aborts_naming(&result, 2, "does not match its commitment");
}

#[test]
fn a_subshare_that_does_not_match_aborts_naming_the_dealer() {
    let result = run(3, 2, 4, &mut |to, incoming| {
        if incoming.message.sender == 1
            && to == 0
            && incoming.message.phase() == Phase::KeyReveal
            && let Some(blob) = &mut incoming.attachment
        {
            let last = blob.len() - 1;
            blob[last] ^= 1;
        }
        true
    });
    assert_aborts_naming(&result, 1, "complains");
}

#[test]
fn equivocation_aborts_naming_the_equivocator() {
    // Member 2 sends member 0 a different (validly signed) seed commitment than everyone else.
    let result = run(3, 2, 5, &mut |to, incoming| {
        if incoming.message.sender == 2
            && to == 0
            && let Body::SeedCommit { view, .. } = &incoming.message.body
        {
            let body = Body::SeedCommit {
                commitment: [0x42; 32],
                view: view.clone(),
            };
            resign(incoming, body);
        }
        true
    });
    assert_aborts_naming(&result, 2, "equivocation");
}

#[test]
fn a_missing_member_aborts_naming_it() {
    let result = run(3, 2, 6, &mut |_, incoming| {
        !(incoming.message.sender == 1 && incoming.message.phase() == Phase::KeyReveal)
    });
    assert_aborts_naming(&result, 1, "in time");
}

#[test]
fn a_message_replayed_from_an_earlier_ceremony_aborts() {
    // Record member 1's seed commitment from one ceremony...
    let earlier = run(3, 2, 7, &mut honest);
    let replayed = earlier
        .sent
        .iter()
        .find(|m| m.sender == 1 && m.phase() == Phase::SeedCommit)
        .unwrap()
        .clone();
    // ...and slip it into the next one in place of the real message.
    let result = run(3, 2, 8, &mut |_, incoming| {
        if incoming.message.sender == 1 && incoming.message.phase() == Phase::SeedCommit {
            incoming.message = replayed.clone();
        }
        true
    });
    assert_aborts_naming(&result, 1, "another ceremony");
}

#[test]
fn a_stranger_is_not_heard() {
    let stranger = SigningKey::from_bytes(&[77; 32]);
    let result = run(3, 2, 9, &mut |_, incoming| {
        if incoming.message.sender == 0 && incoming.message.phase() == Phase::Attendance {
            // Someone outside the manifest speaks as member 0.
            let body = incoming.message.body.clone();
            incoming.message = Message::sign(incoming.message.context, 0, body, &stranger);
        }
        true
    });
    assert_aborts_naming(&result, 0, "wrong signature");
    let outsider = run(3, 2, 10, &mut |_, incoming| {
        if incoming.message.sender == 0 && incoming.message.phase() == Phase::Attendance {
            let body = incoming.message.body.clone();
            incoming.message = Message::sign(incoming.message.context, 7, body, &stranger);
        }
        true
    });
    assert!(outsider.outcomes.iter().all(Option::is_none));
    assert!(
        outsider
            .aborts
            .iter()
            .flatten()
            .any(|a| a.reason.contains("not in the manifest"))
    );
}

#[test]
fn the_transcript_verifies_offline_and_any_flipped_byte_breaks_it() {
    use keyceremony::transcript::{Transcript, fingerprint_words, verify};
    let (consortium, _) = consortium(3, 2);
    let result = run(3, 2, 11, &mut honest);
    let outcome = result.outcomes[0].as_ref().unwrap();
    let transcript = Transcript {
        consortium_toml: consortium.to_toml(),
        messages: outcome.transcript.clone(),
    };
    let bytes = transcript.encode();
    let verified = verify(&Transcript::decode(&bytes).unwrap()).unwrap();
    assert_eq!(verified.public_key, outcome.public_key);
    assert_eq!(verified.ceremony, outcome.ceremony);
    assert_eq!(verified.quorums_validated, 3);
    assert_eq!(
        fingerprint_words(&verified.fingerprint, 4)
            .split('-')
            .count(),
        4
    );

    let mut rng = ChaCha20Rng::seed_from_u64(12);
    for _ in 0..300 {
        let mut tampered = bytes.clone();
        let index = rand::Rng::gen_range(&mut rng, 0..tampered.len());
        tampered[index] ^= 1 << rand::Rng::gen_range(&mut rng, 0..8);
        let verdict = Transcript::decode(&tampered)
            .map_err(|e| e.to_string())
            .and_then(|t| verify(&t).map_err(|e| e.to_string()));
        assert!(verdict.is_err(), "a flip at {index} went unnoticed");
    }
}

#[test]
fn share_files_open_only_with_the_passphrase_and_for_their_own_ceremony() {
    use keyceremony::share_file::{ShareFileError, load_share, seal_share};
    use keyceremony::transcript::{Transcript, verify};
    let (consortium, _) = consortium(3, 2);
    let first = run(3, 2, 13, &mut honest);
    let second = run(3, 2, 14, &mut honest);
    let verified = |run: &LocalRun| {
        let outcome = run.outcomes[0].as_ref().unwrap();
        verify(&Transcript {
            consortium_toml: consortium.to_toml(),
            messages: outcome.transcript.clone(),
        })
        .unwrap()
    };
    let (first_transcript, second_transcript) = (verified(&first), verified(&second));
    let outcome = first.outcomes[1].as_ref().unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    let sealed = seal_share(&outcome.share, &outcome.ceremony, b"share pass", &mut rng).unwrap();
    let loaded = load_share(&sealed, b"share pass", &first_transcript).unwrap();
    assert_eq!(loaded.party(), 1);
    assert!(matches!(
        load_share(&sealed, b"wrong", &first_transcript),
        Err(ShareFileError::Seal(_))
    ));
    let mut flipped = sealed.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    assert!(load_share(&flipped, b"share pass", &first_transcript).is_err());
    assert!(matches!(
        load_share(&sealed, b"share pass", &second_transcript),
        Err(ShareFileError::OtherCeremony { .. })
    ));
}

/// A transcript written by the build before ciphertext bodies had windows (3 members,
/// threshold 2, rehearsed): its partials are bound to the validation challenge's digest in the
/// encoding of that time, which the challenge keeps, so every quorum still decrypts it.
#[test]
fn a_transcript_made_before_body_windows_still_verifies() {
    use keyceremony::transcript::{Transcript, verify};
    let bytes = include_bytes!("data/transcript-before-body-windows");
    let verified = verify(&Transcript::decode(bytes).unwrap()).unwrap();
    assert_eq!((verified.parties, verified.threshold), (3, 2));
    assert_eq!(verified.quorums_validated, 3);
    assert_eq!(
        hex::encode(verified.fingerprint),
        "7fb2fe8f666ecc56602022374f568aee5fe7c6bbf9f809fb7734529d95b57a18"
    );
}

/// A key of several secrets is validated secret by secret. A member whose share of the third
/// secret is wrong (as a dealer could make it, dealing well for the others) fails every
/// quorum it is in, though the challenge of the first secret alone, all that a challenge
/// under the whole key would test, decrypts with every quorum.
#[test]
fn a_share_wrong_for_one_secret_alone_fails_that_secrets_validation() {
    use keyceremony::machine::{t_subsets, validation_challenges, validation_failures};
    use protocol::he::{KeyShare, LocalKeySet, Subshare, ThresholdConfig};
    use protocol::wire::encode_partial_decryption;

    let config = ThresholdConfig::new(3, 2).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(70);
    let mut keys = LocalKeySet::generate_with_secrets(&config, 4, &mut rng).unwrap();
    // Member 1's share of secret 2, off by one in one coefficient.
    let share = &keys.shares[1];
    let subshares = share
        .subshares()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut coefficients = s.coefficients().to_vec();
            if i == 0 {
                coefficients[2 * protocol::he::POLYNOMIAL_SIZE + 17] += 1;
            }
            Subshare::from_coefficients(s.subset, coefficients).unwrap()
        })
        .collect();
    keys.shares[1] = KeyShare::from_parts(config, 1, subshares).unwrap();

    let transcript = [7u8; 32];
    let challenges = validation_challenges(config, &transcript, &keys.public_key).unwrap();
    assert_eq!(challenges.len(), 4);
    // Each member's validation shares, as the ceremony sends them: for every quorum it is in,
    // one partial per secret, in order.
    let bodies: Vec<Body> = (0..3u8)
        .map(|me| {
            let share = &keys.shares[usize::from(me)];
            let mut partials = Vec::new();
            for quorum in t_subsets(config).into_iter().filter(|q| q.contains(me)) {
                let quorum_set = Quorum::new(&config, quorum.members().collect()).unwrap();
                for (secret, challenge) in challenges.iter().enumerate() {
                    let partial = share
                        .secret(secret)
                        .unwrap()
                        .partial_decrypt(
                            &challenge.ciphertext,
                            &quorum_set,
                            &challenge.budget,
                            &mut rng,
                        )
                        .unwrap();
                    partials.push((quorum.0, encode_partial_decryption(&partial)));
                }
            }
            Body::ValidationShares { partials }
        })
        .collect();
    let shares: Vec<&Body> = bodies.iter().collect();
    assert!(challenges[0].failures(config, &shares, 0).is_empty());
    assert!(challenges[3].failures(config, &shares, 3).is_empty());
    let with_member_1: Vec<u16> = t_subsets(config)
        .into_iter()
        .filter(|q| q.contains(1))
        .map(|q| q.0)
        .collect();
    assert_eq!(challenges[2].failures(config, &shares, 2), with_member_1);
    assert_eq!(
        validation_failures(&challenges, config, &shares),
        with_member_1
    );
}

/// Every ceremony's key has `SECRETS_PER_KEY` secrets, so a ciphertext carries a mask
/// coefficient per that many values: at the default round plan's budget, 3.75 bytes of mask
/// and 7 of body a value, against 15 and 7 under a key of one secret.
#[test]
fn a_ceremonys_key_makes_ciphertexts_of_under_16_bytes_a_value_at_the_default_plan() {
    use keyceremony::derive::SECRETS_PER_KEY;
    use protocol::he::ThresholdConfig;
    use protocol::round::plan::RoundPlan;
    use protocol::wire::ciphertext_encoded_len;

    let budget = RoundPlan::default()
        .budget(ThresholdConfig::new(5, 3).unwrap())
        .unwrap();
    // A whole number of groups, so that no padding counts.
    let values = 1 << 20;
    let per_value = |secrets| {
        ciphertext_encoded_len(budget.ciphertext_shape_under(values, secrets)) as f64
            / values as f64
    };
    assert_eq!(SECRETS_PER_KEY, 4);
    assert!(
        per_value(SECRETS_PER_KEY) <= 10.76,
        "{}",
        per_value(SECRETS_PER_KEY)
    );
    assert!(per_value(1) >= 22.0, "{}", per_value(1));
}
