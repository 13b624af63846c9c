use super::attacks::release;
use super::machine::*;
use super::message::*;
use super::plan::*;
use super::policy::*;
use super::rules::{RuleError, Unfinished};
use crate::audit::entry::{Body, Digest, SignedEntry};
use crate::audit::sample::{Author, SampleConsortium};
use crate::he::{Ciphertext, LocalKeySet, ThresholdConfig};
use crate::wire::{DecodeLimits, ciphertext_digest, encode_ciphertext};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn plan() -> RoundPlan {
    RoundPlan {
        values: 20,
        ..RoundPlan::default()
    }
}

#[test]
fn weights_are_exact_rounded_shares_of_the_rate() {
    let plan = plan();
    let w = plan.weights(&[100, 100, 200]).unwrap();
    assert_eq!(w, vec![1024, 1024, 2048]);
    // Rounding half up, computed in integers: 2^12 / 3 = 1365.33, 2^12 * 2 / 3 = 2730.67.
    assert_eq!(plan.weights(&[1, 1, 1]).unwrap(), vec![1365; 3]);
    assert_eq!(plan.weights(&[1, 2]).unwrap(), vec![1365, 2731]);
    let half = RoundPlan {
        server_rate_millis: 500,
        ..plan.clone()
    };
    assert_eq!(half.weights(&[1]).unwrap(), vec![2048]);
    assert!(plan.weights(&[5, 0]).is_err());
    assert!(plan.weights(&[MAX_SAMPLES + 1]).is_err());
    assert!(
        plan.weights(&[MAX_SAMPLES; 5])
            .unwrap()
            .iter()
            .all(|&w| w > 0)
    );
    assert!(plan.weights(&[]).is_err());
    // One member cannot dominate: sample counts differ by at most the plan's ratio, and no
    // contribution is weighted zero.
    assert!(plan.weights(&[100, 10_000]).is_ok());
    assert!(plan.weights(&[100, 10_001]).is_err());
    let coarse = RoundPlan {
        weight_bits: 2,
        ..plan.clone()
    };
    assert!(coarse.weights(&[1; 10]).is_err());
}

proptest::proptest! {
    #[test]
    fn weights_sum_to_the_rate_within_rounding(
        base in 1u64..10_000,
        factors in proptest::collection::vec(1u64..=100, 1..10),
    ) {
        // Any sample counts within the plan's ratio of 100 get positive weights.
        let samples: Vec<u64> = factors.iter().map(|f| base * f).collect();
        let plan = plan();
        let weights = plan.weights(&samples).unwrap();
        proptest::prop_assert!(weights.iter().all(|&w| w > 0));
        let total: i64 = weights.iter().sum();
        let target = 1i64 << plan.weight_bits;
        proptest::prop_assert!((total - target).abs() <= samples.len() as i64);
        proptest::prop_assert!(weights.iter().all(|&w| w as u64 <= plan.weight_bound()));
    }

    #[test]
    fn message_decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
        let _ = Request::decode(&bytes);
        let _ = Response::decode(&bytes);
        let mut framed = b"QRND\x01".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = Request::decode(&framed);
        let _ = Response::decode(&framed);
    }
}

#[test]
fn plan_digest_covers_every_field_and_the_budget_fits() {
    let base = plan();
    let variants = [
        RoundPlan {
            values: 21,
            ..base.clone()
        },
        RoundPlan {
            clip: 2.0,
            ..base.clone()
        },
        RoundPlan {
            fraction_bits: 12,
            ..base.clone()
        },
        RoundPlan {
            weight_bits: 10,
            ..base.clone()
        },
        RoundPlan {
            server_rate_millis: 900,
            ..base.clone()
        },
        RoundPlan {
            rounds: 7,
            ..base.clone()
        },
        RoundPlan {
            max_retries: 1,
            ..base.clone()
        },
        RoundPlan {
            kappa: 41,
            ..base.clone()
        },
        RoundPlan {
            max_sample_ratio: 7,
            ..base.clone()
        },
        RoundPlan {
            initial_model: Some(crate::round::InitialModel([7; 32])),
            ..base.clone()
        },
        RoundPlan {
            optimizer: crate::round::Optimizer::named("adam").unwrap(),
            ..base.clone()
        },
        RoundPlan {
            optimizer: crate::round::Optimizer::named("adam").unwrap(),
            parameters: Some(10),
            ..base.clone()
        },
        RoundPlan {
            relative_decoding: false,
            ..base.clone()
        },
    ];
    for (i, variant) in variants.iter().enumerate() {
        assert_ne!(variant.digest(), base.digest(), "{variant:?}");
        for other in &variants[i + 1..] {
            assert_ne!(variant.digest(), other.digest(), "{variant:?}");
        }
    }
    // Under FedAvg the parameter count moves nothing, and is not in the digest.
    assert_eq!(
        RoundPlan {
            parameters: Some(10),
            ..base.clone()
        }
        .digest(),
        base.digest()
    );
    // Golden: a plan that pins no initial model and reads models absolutely keeps the digest
    // it had before plans could do either.
    let before = RoundPlan {
        relative_decoding: false,
        ..RoundPlan::default()
    };
    assert_eq!(
        hex::encode(before.digest()),
        "28655e00b999874d7524fe5a0c4ccf4ef713fc0d09996b5105b16032a011d744"
    );
    // The default plan reads them relatively: the same bytes followed by "relative-decoding".
    assert_eq!(
        hex::encode(RoundPlan::default().digest()),
        "3008e65f54d9a369ee08d19d97e8daf25b56db9375c7d40246b09b379a4d0db6"
    );
    let config = ThresholdConfig::new(5, 3).unwrap();
    base.budget(config).unwrap();
    assert!(
        RoundPlan {
            values: 0,
            ..base.clone()
        }
        .budget(config)
        .is_err()
    );
    assert!(
        RoundPlan {
            max_retries: 9,
            ..base.clone()
        }
        .budget(config)
        .is_err()
    );
    assert!(
        RoundPlan {
            rounds: 0,
            ..base.clone()
        }
        .budget(config)
        .is_err()
    );
    // A plan whose reveals outlive the key's smudging budget is refused up front, with the
    // kappa that would do.
    let big = RoundPlan {
        values: 10_000_000,
        rounds: 2,
        ..base
    };
    let err = big.budget(config).unwrap_err().to_string();
    assert!(err.contains("raise kappa to 54"), "{err}");
    assert_eq!(RoundPlan::kappa_for(big.lifetime_reveals()), 54);
    RoundPlan {
        kappa: 54,
        ..big.clone()
    }
    .budget(config)
    .unwrap();
    assert_eq!(big.sized().kappa, 54);
    assert_eq!(RoundPlan::kappa_for(1), 41);
    // The default plan is sized for itself.
    assert_eq!(RoundPlan::default().sized(), RoundPlan::default());
}

/// What a partial decryption and a ciphertext body weigh at the default plan, and at the plan
/// `bench round` runs (10M values over 2 rounds). Read against the model each round builds on,
/// a round's change takes 29 bits whatever the rounds, and partials 4 bytes: Delta goes up two
/// bits, from the message space the plans spare, so that three partials rounded two bits
/// under it still decrypt exactly. A plan written before relative decoding keeps its Delta and
/// its 5 bytes, so that what its key encrypted and released keeps its meaning.
#[test]
fn partials_take_4_bytes_a_value_read_against_the_model_and_5_in_plans_written_before() {
    let config = ThresholdConfig::new(5, 3).unwrap();
    let short = RoundPlan {
        values: 10_000_000,
        rounds: 2,
        ..RoundPlan::default()
    }
    .sized();
    for (plan, message_bits, delta, body) in [(RoundPlan::default(), 35, 90, 7), (short, 31, 91, 6)]
    {
        let budget = plan.budget(config).unwrap();
        assert_eq!(budget.message_bits(), message_bits);
        assert_eq!(budget.read_bits(), 29, "{plan:?}");
        assert_eq!(budget.delta_bits(), delta + 2);
        assert_eq!(budget.share_window().bytes(), 4);
        assert_eq!(budget.share_window().dropped_bits(), (delta + 2 - 2) as u8);
        // Bodies carry the rounding of every weighted contribution, so they keep about log2
        // of the weights' L1 norm more bits than partials.
        assert_eq!(budget.body_window().bytes(), body);

        let before = RoundPlan {
            relative_decoding: false,
            ..plan
        };
        let budget = before.budget(config).unwrap();
        assert_eq!(budget.read_bits(), message_bits);
        assert_eq!(budget.delta_bits(), delta);
        assert_eq!(budget.share_window().bytes(), 5);
        assert_eq!(budget.body_window().bytes(), body);
    }
}

/// The one rule of who recomputes: every quorum member (it releases on nothing else), every
/// retry, and nobody else. A member outside the quorum of a first attempt fetches the
/// ciphertext the request names and combines it once the whole quorum's releases are logged.
#[test]
fn a_member_outside_the_quorum_of_a_first_attempt_fetches_and_everyone_else_recomputes() {
    let mut s = sample();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3, 4]);
    let request = s.request(1, close, aggregate, &[0, 2, 4], 0);
    let membership = s.log.membership().unwrap().clone();
    let target = |s: &SampleConsortium, request| {
        check_combine(&entries(s), &membership, &plan(), request, &held(s)).unwrap()
    };
    let first = target(&s, request);
    let obtained: Vec<Obtain> = (0..5).map(|m| first.obtain(m)).collect();
    use Obtain::{Fetch, Recompute};
    assert_eq!(obtained, [Recompute, Fetch, Recompute, Fetch, Recompute]);
    let retry = s.request(1, close, [0xee; 32], &[1, 2, 3], 1);
    let retried = target(&s, retry);
    assert!((0..5).all(|m| retried.obtain(m) == Recompute));
}

fn entries(sample: &SampleConsortium) -> Vec<SignedEntry> {
    sample
        .log
        .leaves()
        .iter()
        .map(|leaf| SignedEntry::open(leaf).unwrap())
        .collect()
}

fn sample() -> SampleConsortium {
    let mut sample = SampleConsortium::new(5, 3, 3, 11);
    sample.round_plan = Some(plan().digest());
    sample
}

/// The model an honest member holds after following `sample`'s log: the base the log's chain
/// has reached (the aggregate of the latest round its whole quorum released).
pub(super) fn held(sample: &SampleConsortium) -> HeldModel {
    let rules = sample.log.rounds().unwrap();
    HeldModel {
        round: rules.base_round(),
        base: rules.base(),
        model: [0; 32],
    }
}

fn check(sample: &SampleConsortium, me: u8, request: u64) -> Result<ReleaseTarget, Refusal> {
    let membership = sample.log.membership().unwrap().clone();
    check_request(
        &entries(sample),
        &membership,
        &plan(),
        me,
        request,
        &held(sample),
    )
}

#[test]
fn an_honest_request_names_the_aggregate_and_its_weighted_terms() {
    let mut s = sample();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3, 4]);
    let request = s.request(1, close, aggregate, &[0, 2, 4], 0);
    let target = check(&s, 2, request).unwrap();
    assert_eq!(target.round, 1);
    assert_eq!(target.ciphertext, aggregate);
    assert_eq!(target.base, None);
    assert_eq!(target.quorum, vec![0, 2, 4]);
    assert_eq!(target.terms.len(), 5);
    let samples: Vec<u64> = (0..5).map(|m| 100 + m).collect();
    let weights: Vec<i64> = target.terms.iter().map(|t| t.weight).collect();
    assert_eq!(weights, plan().weights(&samples).unwrap());
    assert_eq!(
        target.terms[3].ciphertext,
        SampleConsortium::contribution_digest(1, 3)
    );
    // Not in the quorum.
    assert_eq!(check(&s, 1, request), Err(Refusal::NotInQuorum));

    // After round 1 is decrypted, round 2 builds on round 1's aggregate.
    for m in [0usize, 2, 4] {
        s.append(
            Author::Member(m),
            Body::ShareReleased {
                request,
                ciphertext: aggregate,
                share: [m as u8; 32],
            },
            vec![request],
        );
    }
    s.append(
        Author::Member(0),
        Body::DecryptionResult {
            request,
            ciphertext: aggregate,
            model: [9; 32],
        },
        vec![request],
    );
    // A member that released never releases again for the same ciphertext.
    assert_eq!(check(&s, 2, request), Err(Refusal::AlreadyReleased));
    let (close2, aggregate2) = s.open_and_close(2, &[0, 1, 2]);
    let request2 = s.request(2, close2, aggregate2, &[1, 2, 3], 0);
    assert_eq!(check(&s, 3, request2).unwrap().base, Some(aggregate));

    // A round whose decryption never completed (one share released, no result) is not the
    // base of the next: only the whole quorum's releases move the chain, so one colluding
    // member's release cannot make a crafted aggregate the next base. Members who contributed
    // to round 2 do not contribute from round 1's model again (see `attacks`), so round 3's
    // contributors are others.
    s.append(
        Author::Member(1),
        Body::ShareReleased {
            request: request2,
            ciphertext: aggregate2,
            share: [7; 32],
        },
        vec![request2],
    );
    let (close3, aggregate3) = s.open_and_close(3, &[3, 4]);
    let request3 = s.request(3, close3, aggregate3, &[0, 2, 4], 0);
    assert_eq!(
        check(&s, 0, request3),
        Err(Refusal::TooFewContributors {
            round: 3,
            count: 2,
            k_min: 3
        })
    );
    assert_eq!(s.base(), aggregate);
}

#[test]
fn a_round_partly_released_and_not_decrypted_is_named_so_its_decryption_is_finished_first() {
    let mut s = sample();
    let unfinished = |s: &SampleConsortium| s.log.rounds().unwrap().unfinished_decryption();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3, 4]);
    // Closed, or requested, with nothing released: nothing was revealed, the next round may
    // build on the same base.
    assert_eq!(unfinished(&s), None);
    let request = s.request(1, close, aggregate, &[0, 2, 4], 0);
    assert_eq!(unfinished(&s), None);
    // One share released, then the coordinator stops: every contributor would refuse a round
    // on the same base (stale model), so the round's decryption is what comes next.
    release(&mut s, 0, request, aggregate);
    let expected = Unfinished {
        round: 1,
        close,
        aggregate,
        contributors: 5,
        contributors_mask: 0b11111,
        next_attempt: 1,
        last_request: Some((request, 0b10101)),
    };
    assert_eq!(unfinished(&s), Some(expected.clone()));
    // The next attempt, a re-randomised ciphertext for another quorum, is one members take.
    let retried: Digest = [0xee; 32];
    let retry = s.request(1, close, retried, &[1, 2, 3], expected.next_attempt);
    assert_eq!(check(&s, 1, retry).unwrap().attempt, 1);
    let now = unfinished(&s).unwrap();
    assert_eq!(
        (now.next_attempt, now.last_request),
        (2, Some((retry, 0b1110)))
    );
    for m in [1, 2, 3] {
        release(&mut s, m, retry, retried);
    }
    assert_eq!(unfinished(&s), None);
    assert_eq!(s.base(), aggregate);

    // Only the latest round counts: once a later round opened (by a coordinator that did not
    // finish the earlier one), members refuse requests for the earlier round anyway.
    let (close2, aggregate2) = s.open_and_close(2, &[0, 1, 2]);
    let request2 = s.request(2, close2, aggregate2, &[0, 1, 2], 0);
    release(&mut s, 0, request2, aggregate2);
    assert_eq!(unfinished(&s).unwrap().round, 2);
    s.open_and_close(3, &[3, 4]);
    assert_eq!(unfinished(&s), None);
}

/// The log refuses `body` from `author` with this round rule.
fn refused_by_log(s: &SampleConsortium, author: Author, body: Body, refs: Vec<u64>) -> RuleError {
    match s.log.check(&s.sign(author, body, refs)) {
        Err(crate::audit::log::LogError::Round { source, .. }) => source,
        other => panic!("the log did not refuse by a round rule: {other:?}"),
    }
}

/// The sample's log followed by entries written past the log's rules.
fn forged(s: &SampleConsortium, extra: Vec<(Author, Body, Vec<u64>)>) -> Vec<SignedEntry> {
    let mut log = entries(s);
    log.extend(s.forge(extra));
    log
}

fn request_body(close: u64, ciphertext: [u8; 32], quorum: u16, attempt: u8) -> Body {
    Body::DecryptionRequest {
        round: 1,
        close,
        ciphertext,
        quorum,
        attempt,
        seed: if attempt == 0 { [0; 32] } else { [attempt; 32] },
    }
}

/// The malicious coordinator's table: every request a member must refuse, whether the log
/// refuses it first (then a forged log shows the policy refuses it too) or not.
#[test]
fn members_refuse_everything_but_the_agreed_aggregate() {
    let k_min = 3;
    // A single contribution as the target.
    let mut s = sample();
    let (close, _) = s.open_and_close(1, &[0, 1, 2]);
    let single = SampleConsortium::contribution_digest(1, 0);
    let request = s.request(1, close, single, &[0, 1, 2], 0);
    assert_eq!(check(&s, 0, request), Err(Refusal::NotTheAggregate(1)));

    // A set below k_min.
    let mut s = sample();
    let (close, aggregate) = s.open_and_close(1, &[0, 1]);
    let request = s.request(1, close, aggregate, &[0, 1, 2], 0);
    assert_eq!(
        check(&s, 0, request),
        Err(Refusal::TooFewContributors {
            round: 1,
            count: 2,
            k_min
        })
    );

    // A difference of two aggregates of the same round: a second close of the round is
    // refused for either close (a close over a subset never reaches the log at all).
    let mut s = sample();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3]);
    let all: Vec<u64> = match &entries(&s)[close as usize].entry.body {
        Body::RoundClose { contributions, .. } => contributions.clone(),
        _ => unreachable!(),
    };
    let second = Body::RoundClose {
        round: 1,
        base: [0; 32],
        contributions: all.clone(),
        aggregate: [0xdd; 32],
    };
    assert_eq!(
        refused_by_log(&s, Author::Coordinator, second.clone(), all.clone()),
        RuleError::CloseWithoutOpen { round: 1 }
    );
    // The member's policy refuses it too, should a log hold it.
    let second_leaf = s.log.size();
    let log = forged(
        &s,
        vec![
            (Author::Coordinator, second, all),
            (
                Author::Coordinator,
                request_body(close, aggregate, 0b111, 0),
                vec![close],
            ),
            (
                Author::Coordinator,
                request_body(second_leaf, [0xdd; 32], 0b111, 0),
                vec![second_leaf],
            ),
        ],
    );
    let membership = s.log.membership().unwrap().clone();
    for request in [second_leaf + 1, second_leaf + 2] {
        assert_eq!(
            check_request(&log, &membership, &plan(), 0, request, &held(&s)),
            Err(Refusal::SecondClose(1))
        );
    }

    // A ciphertext other than the logged aggregate.
    let mut s = sample();
    let (close, _) = s.open_and_close(1, &[0, 1, 2]);
    let request = s.request(1, close, [0xee; 32], &[0, 1, 2], 0);
    assert_eq!(check(&s, 0, request), Err(Refusal::NotTheAggregate(1)));

    // An old round again, once a later round is open.
    let mut s = sample();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2]);
    s.open_and_close(2, &[0, 1, 2]);
    let request = s.request(1, close, aggregate, &[0, 1, 2], 0);
    assert_eq!(check(&s, 0, request), Err(Refusal::StaleRound(1)));

    // An old round again, after its decryption produced a result.
    let mut s = sample();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2]);
    let first = s.decrypt(1, close, aggregate, &[0, 1, 2], 0);
    let again = request_body(close, [0xab; 32], 0b11001, 1);
    assert_eq!(
        refused_by_log(&s, Author::Coordinator, again.clone(), vec![close]),
        RuleError::RetryAfterRelease { round: 1 }
    );
    let log = forged(&s, vec![(Author::Coordinator, again, vec![close])]);
    let membership = s.log.membership().unwrap().clone();
    assert_eq!(
        check_request(&log, &membership, &plan(), 3, s.log.size(), &held(&s)),
        Err(Refusal::StaleRound(1))
    );
    assert_eq!(check(&s, 0, first), Err(Refusal::AlreadyReleased));

    // A round opened under another plan.
    let mut s = sample();
    s.round_plan = Some([1; 32]);
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2]);
    let request = s.request(1, close, aggregate, &[0, 1, 2], 0);
    assert_eq!(check(&s, 0, request), Err(Refusal::OtherPlan(1)));

    // A quorum that is not the threshold, and an entry that is not a request.
    let mut s = sample();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2]);
    let pair = request_body(close, aggregate, 0b11, 0);
    assert_eq!(
        refused_by_log(&s, Author::Coordinator, pair.clone(), vec![close]),
        RuleError::BadQuorum {
            quorum: 0b11,
            threshold: 3,
            members: 5
        }
    );
    let log = forged(&s, vec![(Author::Coordinator, pair, vec![close])]);
    let membership = s.log.membership().unwrap().clone();
    assert_eq!(
        check_request(&log, &membership, &plan(), 0, s.log.size(), &held(&s)),
        Err(Refusal::BadQuorum(0b11))
    );
    assert_eq!(check(&s, 0, close), Err(Refusal::NotARequest(close)));

    // Retries: in order, superseding earlier attempts, re-randomised, and capped.
    let mut s = sample();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3]);
    let r0 = s.request(1, close, aggregate, &[0, 1, 2], 0);
    let r1 = s.request(1, close, [0x11; 32], &[0, 1, 3], 1);
    assert_eq!(check(&s, 0, r0), Err(Refusal::Superseded(1)));
    assert_eq!(check(&s, 3, r1).unwrap().attempt, 1);
    // A retry after a whole quorum released the previous attempt, result logged or not.
    let mut s = sample();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3]);
    let first = s.request(1, close, aggregate, &[0, 1, 2], 0);
    for m in [0usize, 1, 2] {
        s.append(
            Author::Member(m),
            Body::ShareReleased {
                request: first,
                ciphertext: aggregate,
                share: [m as u8; 32],
            },
            vec![first],
        );
    }
    let second_decryption = request_body(close, [0x33; 32], 0b1110, 1);
    assert_eq!(
        refused_by_log(
            &s,
            Author::Coordinator,
            second_decryption.clone(),
            vec![close]
        ),
        RuleError::RetryAfterRelease { round: 1 }
    );
    let log = forged(
        &s,
        vec![(Author::Coordinator, second_decryption, vec![close])],
    );
    let membership = s.log.membership().unwrap().clone();
    assert_eq!(
        check_request(&log, &membership, &plan(), 3, s.log.size(), &held(&s)),
        Err(Refusal::StaleRound(1))
    );
    let mut s = sample();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3]);
    s.request(1, close, aggregate, &[0, 1, 2], 0);
    let reused = s.request(1, close, aggregate, &[0, 1, 3], 1);
    assert_eq!(check(&s, 3, reused), Err(Refusal::NotTheAggregate(1)));
    let mut s = sample();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3]);
    let skipped = s.request(1, close, aggregate, &[0, 1, 2], 0);
    let _ = skipped;
    let mut last = 0;
    for attempt in 1..=3u8 {
        last = s.request(1, close, [attempt; 32], &[0, 1, 3], attempt);
    }
    let capped = RoundPlan {
        max_retries: 2,
        ..plan()
    };
    let membership = s.log.membership().unwrap().clone();
    let mut s2 = SampleConsortium::new(5, 3, 3, 11);
    s2.round_plan = Some(capped.digest());
    assert!(check_request(&entries(&s), &membership, &plan(), 3, last, &held(&s)).is_ok());
    let (close, aggregate) = s2.open_and_close(1, &[0, 1, 2, 3]);
    s2.request(1, close, aggregate, &[0, 1, 2], 0);
    let mut last = 0;
    for attempt in 1..=3u8 {
        last = s2.request(1, close, [attempt; 32], &[0, 1, 3], attempt);
    }
    let membership = s2.log.membership().unwrap().clone();
    assert_eq!(
        check_request(&entries(&s2), &membership, &capped, 3, last, &held(&s2)),
        Err(Refusal::Attempt {
            round: 1,
            attempt: 3,
            cap: 2
        })
    );
}

#[test]
fn members_recompute_the_coordinators_aggregate_exactly() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let config = ThresholdConfig::new(3, 2).unwrap();
    let keys = LocalKeySet::generate(&config, &mut rng).unwrap();
    let key = keys.public_key.prepare();
    let plan = plan();
    let budget = plan.budget(config).unwrap();
    let updates: Vec<Vec<i64>> = (0..3)
        .map(|m| (0..20).map(|i| (i * 7 + m * 1000) - 50).collect())
        .collect();
    let blobs: Vec<Vec<u8>> = updates
        .iter()
        .map(|u| encode_ciphertext(&key.encrypt(u, &budget, &mut rng).unwrap()))
        .collect();
    let digests: Vec<[u8; 32]> = blobs
        .iter()
        .map(|b| crate::wire::encoded_digest(b).0)
        .collect();
    let weights = plan.weights(&[10, 20, 30]).unwrap();
    let terms: Vec<_> = digests.iter().copied().zip(weights.clone()).collect();
    let read = |d: &[u8; 32]| -> Result<Vec<u8>, String> {
        let i = digests.iter().position(|x| x == d).ok_or("unknown")?;
        Ok(blobs[i].clone())
    };
    let mut coordinator = Ciphertext::zero(budget.ciphertext_shape(20));
    aggregate(&mut coordinator, &terms, DecodeLimits::default(), read).unwrap();
    let mut member = Ciphertext::zero(budget.ciphertext_shape(20));
    aggregate(&mut member, &terms, DecodeLimits::default(), read).unwrap();
    assert_eq!(ciphertext_digest(&coordinator), ciphertext_digest(&member));

    // A contribution whose bytes do not hash to the logged digest is refused.
    let tampered = |d: &[u8; 32]| -> Result<Vec<u8>, String> {
        let mut bytes = read(d)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        Ok(bytes)
    };
    let mut acc = Ciphertext::zero(budget.ciphertext_shape(20));
    assert!(matches!(
        aggregate(&mut acc, &terms, DecodeLimits::default(), tampered),
        Err(AggregateError::Digest { .. })
    ));

    // Decrypting the aggregate gives the integer weighted sum, exactly.
    let quorum = crate::he::Quorum::new(&config, vec![0, 2]).unwrap();
    let bound = crate::wire::BoundCiphertext::new(coordinator);
    let partials: Vec<_> = [0usize, 2]
        .iter()
        .map(|&p| {
            keys.shares[p]
                .partial_decrypt(&bound, &quorum, &budget, &mut rng)
                .unwrap()
        })
        .collect();
    let decoded = crate::he::combine(&bound, &quorum, &partials, &budget).unwrap();
    let expected: Vec<i64> = (0..20)
        .map(|i| (0..3).map(|m| weights[m] * updates[m][i]).sum())
        .collect();
    assert_eq!(decoded, expected);
}

fn membership() -> crate::audit::entry::Membership {
    sample().log.membership().unwrap().clone()
}

#[test]
fn the_coordinator_closes_on_all_or_at_the_deadline_with_k_min() {
    let mut round = CoordinatorRound::open(1, &membership(), plan(), 0b11111, 1000);
    assert_eq!(round.poll_close(0), CloseDecision::Wait);
    for m in 0..3u8 {
        round.check_contribution(m, 1, 10, 5).unwrap();
        round.contributed(m, 10 + u64::from(m), 10, [m; 32]);
    }
    assert!(
        round.check_contribution(0, 1, 10, 5).is_err(),
        "second contribution"
    );
    assert!(
        round.check_contribution(3, 2, 10, 5).is_err(),
        "other round"
    );
    assert!(
        round.check_contribution(3, 1, 0, 5).is_err(),
        "zero samples"
    );
    assert!(round.check_contribution(3, 1, 10, 1001).is_err(), "late");
    assert_eq!(round.poll_close(999), CloseDecision::Wait);
    assert_eq!(round.poll_close(1000), CloseDecision::Close);
    let close = round.close_terms().unwrap();
    assert_eq!(close.leaves, vec![10, 11, 12]);
    assert_eq!(close.terms.len(), 3);

    let mut short = CoordinatorRound::open(2, &membership(), plan(), 0b11111, 1000);
    short.contributed(4, 20, 10, [4; 32]);
    assert_eq!(
        short.poll_close(1000),
        CloseDecision::Fail { contributors: 1 }
    );
    assert!(short.close_terms().is_err());

    // A member that goes away is not waited for once the others have contributed.
    let mut dropout = CoordinatorRound::open(4, &membership(), plan(), 0b11111, 1000);
    for m in 0..4u8 {
        dropout.contributed(m, u64::from(m), 1, [m; 32]);
    }
    assert_eq!(dropout.poll_close(1), CloseDecision::Wait);
    dropout.member_failed(4);
    assert_eq!(dropout.poll_close(1), CloseDecision::Close);

    let mut all = CoordinatorRound::open(3, &membership(), plan(), 0b00111, 1000);
    assert!(
        all.check_contribution(4, 3, 10, 0).is_err(),
        "unexpected member"
    );
    for m in 0..3u8 {
        all.contributed(m, u64::from(m), 1, [m; 32]);
    }
    assert_eq!(all.poll_close(1), CloseDecision::Close);
}

#[test]
fn the_round_names_its_next_deadline_so_the_driver_never_polls() {
    let mut round = CoordinatorRound::open(1, &membership(), plan(), 0b11111, 1000);
    // Collecting: the close deadline, whatever arrives.
    assert_eq!(round.poll_timeout(10_000), Some(1000));
    round.contributed(0, 10, 10, [0; 32]);
    assert_eq!(round.poll_timeout(10_000), Some(1000));
    for m in 1..5u8 {
        round.contributed(m, 10 + u64::from(m), 10, [m; 32]);
    }
    // Closed, before a request: nothing is due until the driver requests.
    round.closed();
    assert_eq!(round.poll_timeout(10_000), None);
    // Decrypting: the quorum's time to release, from the request.
    round.requested(50, 0, 0b111, 2000);
    assert_eq!(round.poll_timeout(10_000), Some(12_000));
    round.share_released(50, 0);
    round.share_released(50, 1);
    assert_eq!(
        round.poll_decryption(11_999, 0b11111, 10_000),
        DecryptionStatus::Waiting
    );
    assert_eq!(
        round.poll_decryption(12_000, 0b11111, 10_000),
        DecryptionStatus::Retry {
            attempt: 1,
            quorum: 0b01011
        }
    );
    round.requested(60, 1, 0b01011, 12_100);
    assert_eq!(round.poll_timeout(10_000), Some(22_100));
    for m in [0, 1, 3] {
        round.share_released(60, m);
    }
    assert_eq!(
        round.poll_decryption(12_200, 0b11111, 10_000),
        DecryptionStatus::Released
    );
    assert_eq!(round.poll_timeout(10_000), None);
}

#[test]
fn a_failed_quorum_member_leads_to_a_retry_with_another_quorum_then_a_cap() {
    let everyone = 0b11111;
    let mut round = CoordinatorRound::open(1, &membership(), plan(), everyone, 1000);
    for m in 0..5u8 {
        round.contributed(m, u64::from(m), 10, [m; 32]);
    }
    round.closed();
    let quorum = round.choose_quorum(everyone).unwrap();
    assert_eq!(quorum, 0b00111);
    round.requested(50, 0, quorum, 2000);
    round.share_released(50, 0);
    round.share_released(50, 4); // not in the quorum: ignored
    assert_eq!(
        round.poll_decryption(2100, everyone, 10_000),
        DecryptionStatus::Waiting
    );
    // Member 1 disconnects: retry without it.
    let available = everyone & !0b10;
    assert_eq!(
        round.poll_decryption(2200, available, 10_000),
        DecryptionStatus::Retry {
            attempt: 1,
            quorum: 0b01101
        }
    );
    round.requested(60, 1, 0b01101, 2300);
    // A release for the old request does not count for the new one.
    round.share_released(50, 2);
    round.share_released(60, 0);
    round.share_released(60, 2);
    // Member 3 times out.
    assert_eq!(
        round.poll_decryption(12_300, everyone, 10_000),
        DecryptionStatus::Retry {
            attempt: 2,
            quorum: 0b10101
        }
    );
    round.requested(70, 2, 0b10101, 12_400);
    for m in [0, 2, 4] {
        round.share_released(70, m);
    }
    assert_eq!(
        round.poll_decryption(12_500, everyone, 10_000),
        DecryptionStatus::Released
    );

    // With the cap reached, or too few members left, the round gives up.
    let capped = RoundPlan {
        max_retries: 0,
        ..plan()
    };
    let mut round = CoordinatorRound::open(1, &membership(), capped, everyone, 1000);
    round.requested(50, 0, 0b111, 0);
    assert!(matches!(
        round.poll_decryption(1, 0b11110, 10),
        DecryptionStatus::GiveUp(_)
    ));
    let mut round = CoordinatorRound::open(1, &membership(), plan(), everyone, 1000);
    round.requested(50, 0, 0b111, 0);
    assert!(matches!(
        round.poll_decryption(1, 0b00110, 10),
        DecryptionStatus::GiveUp(_)
    ));
}

#[test]
fn messages_round_trip_with_their_id_and_refuse_oversize() {
    let requests = vec![
        Request::Witness {
            from: 3,
            entries: vec![vec![1, 2, 3], vec![]],
            note: b"note".to_vec(),
        },
        Request::Act {
            note: b"cosigned".to_vec(),
        },
        Request::Offer {
            entry: vec![9; 10],
            length: 12345,
        },
        Request::Chunk {
            ciphertext: [3; 32],
            index: 1,
            bytes: vec![7; 100],
        },
        Request::Append { entry: vec![4; 8] },
        Request::Fetch {
            ciphertext: [5; 32],
            index: 2,
        },
        Request::Partial {
            request: 77,
            index: 0,
            count: 3,
            bytes: vec![8; 16],
        },
        Request::Incident { entry: vec![6; 12] },
    ];
    for (id, request) in requests.into_iter().enumerate() {
        let bytes = request.encode(id as u64);
        assert_eq!(Request::decode(&bytes).unwrap(), (id as u64, request));
        for cut in 0..bytes.len() {
            assert!(Request::decode(&bytes[..cut]).is_err());
        }
    }
    let responses = vec![
        Response::Ok,
        Response::Cosigned {
            size: 9,
            line: "— member-a abc".into(),
        },
        Response::Behind { size: 4 },
        Response::Appended { leaf: 12 },
        Response::Data {
            length: 99,
            bytes: vec![1; 99],
        },
        Response::Refused {
            reason: "no".into(),
        },
    ];
    for (id, response) in responses.into_iter().enumerate() {
        let bytes = response.encode(id as u64 + 100);
        assert_eq!(
            Response::decode(&bytes).unwrap(),
            (id as u64 + 100, response)
        );
    }
    // Over the limit before anything is read; an oversized declared chunk is refused.
    assert!(matches!(
        Request::decode(&vec![0; MAX_MESSAGE_BYTES + 1]),
        Err(MessageError::TooLarge(_))
    ));
    let mut big = Request::Chunk {
        ciphertext: [0; 32],
        index: 0,
        bytes: vec![],
    }
    .encode(1);
    let at = big.len() - 4;
    big[at..].copy_from_slice(&(CHUNK_BYTES as u32 + 1).to_le_bytes());
    assert!(Request::decode(&big).is_err());
    // Version 1 carried chunk digests in offers and data: refused, naming the version.
    let mut version = Request::Act { note: vec![] }.encode(1);
    version[4] = 1;
    assert_eq!(Request::decode(&version), Err(MessageError::Version(1)));
    version[4] = 3;
    assert_eq!(Request::decode(&version), Err(MessageError::Version(3)));
}

#[test]
fn under_an_optimizer_weights_average_and_the_step_moves_only_the_parameters() {
    let plan = RoundPlan {
        values: 3,
        server_rate_millis: 500,
        optimizer: crate::round::Optimizer::named("momentum").unwrap(),
        parameters: Some(2),
        ..RoundPlan::default()
    };
    // The weights are a plain average (rate 1): the server rate is the step's.
    assert_eq!(plan.weights(&[10, 10]).unwrap(), vec![2048, 2048]);
    let mut model = vec![0i64; 3];
    let mut state = plan.initial_optimizer_state();
    let updates = [(vec![0.5, -0.25, 1.0], 10), (vec![0.5, -0.25, 1.0], 10)];
    plan.reference_round(&mut model, &mut state, &updates)
        .unwrap();
    let unit = 1i64 << plan.model_scale_bits();
    // Momentum's first step is rate x average on the parameters; the statistics value takes
    // the average as it is.
    assert_eq!(model, vec![unit / 4, -unit / 8, unit]);
    plan.reference_round(&mut model, &mut state, &updates)
        .unwrap();
    // m = 0.9 m + delta, then the step 0.5 m, each rounded half away from zero.
    let m = (9 * (unit / 2) + 5) / 10 + unit / 2;
    assert_eq!(model[0], unit / 4 + (m + 1) / 2);
    assert_eq!(model[2], 2 * unit);
}

/// A colluder's malformed contribution can put any value into a decrypted average. The step
/// clamps the model to what an honest run reaches, which the budget's message space holds, so
/// every member can always encrypt it (an encryption refused everywhere would stop the chain).
#[test]
fn a_malformed_average_is_clamped_so_every_member_can_encrypt_the_stepped_model() {
    let plan = RoundPlan {
        values: 3,
        optimizer: crate::round::Optimizer::named("adam").unwrap(),
        parameters: Some(2),
        ..RoundPlan::default()
    };
    let budget = plan.budget(ThresholdConfig::new(5, 3).unwrap()).unwrap();
    let bound = plan.model_bound();
    assert!(bound > 0 && (bound as u64) >> budget.message_bits() == 0);
    let mut state = plan.initial_optimizer_state();
    let next = plan
        .server_step(&[0, 0, 0], &[i64::MAX, i64::MIN, i64::MIN], &mut state)
        .unwrap();
    assert!(next.iter().all(|v| v.abs() <= bound), "{next:?}");
    assert_eq!(next[2], -bound, "the statistics value, clamped");
    // A plan whose scale the fixed-point step cannot carry is refused up front.
    let fine = RoundPlan {
        fraction_bits: 30,
        weight_bits: 12,
        ..plan.clone()
    };
    let err = fine
        .budget(ThresholdConfig::new(5, 3).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 40"), "{err}");
}

#[test]
fn plaintext_fedavg_adds_weighted_encoded_updates_and_decodes_at_the_model_scale() {
    let plan = plan();
    let mut model = vec![5i64, -5];
    // Equal samples: weights 2048 each at 2^12; updates encoded at 2^16.
    plan.fedavg_step(&mut model, &[(vec![1.0, 0.5], 10), (vec![-0.25, 0.0], 10)])
        .unwrap();
    assert_eq!(
        model,
        vec![5 + 2048 * 65536 - 2048 * 16384, -5 + 2048 * 32768]
    );
    let floats = plan.decode_model(&[1 << 28, -(1 << 27)]);
    assert_eq!(floats, vec![1.0, -0.5]);
    assert!(
        plan.fedavg_step(&mut model, &[(vec![1.0, 1.0], 0)])
            .is_err()
    );
}

/// A model read back in pieces is checked against the digest of the whole: pieces of any
/// size hash alike, to the golden sha256("quorate/model/v1\0" || count as u64 || each value as
/// i64, little-endian).
#[test]
fn a_model_hashed_in_pieces_of_any_size_has_its_whole_digest() {
    assert_eq!(
        hex::encode(model_digest(&[5, -6, 7])),
        "d56801516c6659c0e7d25f4ab8997059a15f798185008ba77ad26453fb390ce2"
    );
    let model: Vec<i64> = (0..20_000).map(|i| i * i - 7).collect();
    for piece in [1, 7, 8192, 8193, 20_000] {
        let mut hasher = ModelHasher::new(model.len() as u64);
        for chunk in model.chunks(piece) {
            hasher.update(chunk);
        }
        assert_eq!(hasher.finalize(), model_digest(&model), "pieces of {piece}");
    }
}
