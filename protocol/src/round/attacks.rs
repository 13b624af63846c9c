//! The attacks of a malicious coordinator colluding with up to t - 1 members on the release
//! policy, each as a deterministic test: the log refuses the entry that mounts it (so honest
//! members never cosign it), a member's policy refuses it on its own, and the auditor flags a
//! log that contains it anyway (exit 16). Members 0 and 1 collude with the coordinator in
//! every test; n = 5, t = 3, k_min = 4.

use super::policy::*;
use super::rules::{RuleError, ZERO_BASE};
use super::tests::held;
use crate::audit::entry::{Body, Digest, SignedEntry};
use crate::audit::log::LogError;
use crate::audit::sample::{Author, SampleConsortium};
use crate::audit::verify::{ViolationClass, audit};

use super::plan::RoundPlan;

fn plan() -> RoundPlan {
    RoundPlan {
        values: 20,
        ..RoundPlan::default()
    }
}

fn consortium() -> SampleConsortium {
    let mut sample = SampleConsortium::new(5, 3, 4, 29);
    sample.round_plan = Some(plan().digest());
    sample
}

fn entries(sample: &SampleConsortium) -> Vec<SignedEntry> {
    sample
        .log
        .leaves()
        .iter()
        .map(|leaf| SignedEntry::open(leaf).unwrap())
        .collect()
}

/// Member `member`'s release for `request` of `ciphertext`, appended to the sample log.
pub(super) fn release(
    s: &mut SampleConsortium,
    member: usize,
    request: u64,
    ciphertext: Digest,
) -> u64 {
    s.append(
        Author::Member(member),
        Body::ShareReleased {
            request,
            ciphertext,
            share: [member as u8; 32],
        },
        vec![request],
    )
}

/// Opens `round` on `base` and logs a contribution from every member; returns their leaves.
fn open_with_everyone(s: &mut SampleConsortium, round: u64, base: Digest) -> Vec<u64> {
    s.append(
        Author::Coordinator,
        Body::RoundOpen {
            round,
            model: [round as u8; 32],
            base,
            deadline_ms: 1,
            expected: 0b11111,
        },
        vec![],
    );
    (0..5)
        .map(|m| {
            s.append(
                Author::Member(m),
                Body::Contribution {
                    round,
                    ciphertext: SampleConsortium::contribution_digest(round, m),
                    samples: 100,
                },
                vec![],
            )
        })
        .collect()
}

/// The log refuses `body` from `author` with this rule.
fn log_refuses(s: &SampleConsortium, author: Author, body: Body, refs: Vec<u64>) -> RuleError {
    let entry = s.sign(author, body, refs);
    match s.log.check(&entry) {
        Err(LogError::Round { source, .. }) => source,
        other => panic!("the log did not refuse by a round rule: {other:?}"),
    }
}

/// The auditor flags a cosigned log holding `forged` as an entry-rule violation naming `rule`.
fn auditor_flags(s: &SampleConsortium, forged: Vec<(Author, Body, Vec<u64>)>, rule: &str) {
    let forged = s.forge(forged);
    let report = audit(&s.export_with(&forged), None);
    assert_eq!(report.exit_code(), 16, "{:#?}", report.findings);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.class == ViolationClass::EntryRule && f.message.contains(rule)),
        "{rule}: {:#?}",
        report.findings
    );
}

/// Attack 1: the coordinator closes round 2 on a crafted ciphertext Y, colluding member 0 (in
/// the quorum) logs a release and sends nothing, the honest quorum members refuse; then the
/// coordinator opens round 3 on Y, hoping members will release Y + their contributions and
/// hand it the key.
#[test]
fn a_round_built_on_an_aggregate_the_whole_quorum_did_not_release_is_refused() {
    let mut s = consortium();
    let first = s.honest_round(1, &[0, 1, 2, 3, 4], &[0, 2, 4]);
    let aggregate1 = match &entries(&s)[first as usize].entry.body {
        Body::DecryptionRequest { ciphertext, .. } => *ciphertext,
        _ => unreachable!(),
    };
    assert_eq!(s.base(), aggregate1);
    let honest = held(&s);
    // Round 2 closes on Y; member 0 alone releases.
    let crafted: Digest = [0x59; 32];
    let open2 = s.log.size();
    let leaves = open_with_everyone(&mut s, 2, aggregate1);
    let close2 = s.append(
        Author::Coordinator,
        Body::RoundClose {
            round: 2,
            base: aggregate1,
            contributions: leaves.clone(),
            aggregate: crafted,
        },
        leaves,
    );
    let request2 = s.request(2, close2, crafted, &[0, 3, 4], 0);
    release(&mut s, 0, request2, crafted);
    // The chain did not move: one release is not a decryption.
    assert_eq!(s.base(), aggregate1);

    // Round 3 on Y: the log refuses the open, naming the base it must have.
    let open3 = Body::RoundOpen {
        round: 3,
        model: [3; 32],
        base: crafted,
        deadline_ms: 1,
        expected: 0b11111,
    };
    assert_eq!(
        log_refuses(&s, Author::Coordinator, open3.clone(), vec![]),
        RuleError::Base {
            round: 3,
            named: crafted,
            expected: aggregate1
        }
    );
    // A member's own policy refuses it as well, whatever its log says: Y is not the model it
    // verified and holds.
    let mut forged_log = entries(&s);
    forged_log.extend(s.forge(vec![(Author::Coordinator, open3.clone(), vec![])]));
    let membership = s.log.membership().unwrap().clone();
    let open3_leaf = forged_log.len() as u64 - 1;
    for member in 2..5 {
        assert_eq!(
            check_contribution(
                &forged_log,
                &membership,
                &plan(),
                member,
                open3_leaf,
                &honest
            ),
            Err(Refusal::UnverifiedBase {
                round: 3,
                named: crafted,
                held: aggregate1,
                held_round: 1
            })
        );
    }
    // And the member that holds round 1's model refuses to combine round 2 on Y: the
    // decryption of a round builds on the model it holds, which the caller then recomputes.
    assert!(check_combine(&entries(&s), &membership, &plan(), request2, &honest).is_ok());
    let rogue = HeldModel {
        round: 1,
        base: [0x77; 32],
        model: [0; 32],
    };
    assert!(matches!(
        check_combine(&entries(&s), &membership, &plan(), request2, &rogue),
        Err(Refusal::UnverifiedBase { .. })
    ));
    // The auditor flags a cosigned log that holds the open anyway.
    auditor_flags(&s, vec![(Author::Coordinator, open3, vec![])], "names base");
    let _ = open2;
}

/// Attack 1, second form: a single member rolls the base back by logging a release for an old
/// request once later rounds have been decrypted.
#[test]
fn a_release_for_an_old_request_is_refused_and_cannot_roll_the_base_back() {
    let mut s = consortium();
    let (close1, aggregate1) = s.open_and_close(1, &[0, 1, 2, 3]);
    let old = s.request(1, close1, aggregate1, &[0, 1, 2], 0);
    release(&mut s, 0, old, aggregate1);
    // A retry supersedes the first request; then the retry completes.
    let retry = s.request(1, close1, [0x44; 32], &[1, 2, 3], 1);
    for m in [1, 2, 3] {
        release(&mut s, m, retry, [0x44; 32]);
    }
    assert_eq!(s.base(), aggregate1);
    let (close2, aggregate2) = s.open_and_close(2, &[0, 1, 2, 4]);
    // Members that contributed to round 1 from the zero model may contribute to round 2,
    // which builds on round 1's aggregate.
    s.decrypt(2, close2, aggregate2, &[0, 2, 4], 0);
    assert_eq!(s.base(), aggregate2);
    // Colluding member 1 logs a release for round 1's first request.
    let late = Body::ShareReleased {
        request: old,
        ciphertext: aggregate1,
        share: [1; 32],
    };
    assert_eq!(
        log_refuses(&s, Author::Member(1), late.clone(), vec![old]),
        RuleError::StaleRelease { request: old }
    );
    auditor_flags(
        &s,
        vec![(Author::Member(1), late, vec![old])],
        "not the latest request",
    );
    assert_eq!(s.base(), aggregate2);
}

/// Attack 2: round 1 closes {C0, C1, H2, H3}; the colluders keep the honest member's partial
/// to themselves and learn the aggregate; the coordinator opens round 2 from the zero model
/// again, hoping the honest members send the same deterministic input a second time.
#[test]
fn a_member_never_contributes_twice_from_a_model_whose_round_was_released() {
    let mut s = consortium();
    let (close1, aggregate1) = s.open_and_close(1, &[0, 1, 2, 3]);
    let request1 = s.request(1, close1, aggregate1, &[0, 1, 2], 0);
    // H2 releases; C0 and C1 release to each other without logging.
    release(&mut s, 2, request1, aggregate1);
    assert_eq!(s.base(), ZERO_BASE);
    let open2 = s.log.size();
    s.append(
        Author::Coordinator,
        Body::RoundOpen {
            round: 2,
            model: [0; 32],
            base: ZERO_BASE,
            deadline_ms: 1,
            expected: 0b11111,
        },
        vec![],
    );
    let membership = s.log.membership().unwrap().clone();
    let log = entries(&s);
    let initial = HeldModel::initial();
    for member in [2, 3] {
        assert_eq!(
            check_contribution(&log, &membership, &plan(), member, open2, &initial),
            Err(Refusal::StaleModel {
                round: 2,
                earlier: 1
            }),
            "member {member}"
        );
    }
    // Member 4 did not contribute to round 1: it may.
    check_contribution(&log, &membership, &plan(), 4, open2, &initial).unwrap();
    // The log refuses the second contribution, and the auditor flags it.
    let again = Body::Contribution {
        round: 2,
        ciphertext: [0x22; 32],
        samples: 100,
    };
    assert_eq!(
        log_refuses(&s, Author::Member(2), again.clone(), vec![]),
        RuleError::StaleModel {
            member: 2,
            earlier: 1
        }
    );
    auditor_flags(
        &s,
        vec![(Author::Member(2), again, vec![])],
        "already contributed from this model",
    );
}

/// Without any release, nothing of the round could have been decrypted (an honest quorum
/// member logs its release before its share leaves), so contributing again is safe.
#[test]
fn a_member_contributes_again_from_a_model_whose_round_nobody_released() {
    let mut s = consortium();
    let (close1, aggregate1) = s.open_and_close(1, &[0, 1, 2, 3]);
    s.request(1, close1, aggregate1, &[0, 1, 2], 0);
    let open2 = s.log.size();
    s.open_and_close(2, &[0, 1, 2, 3]);
    let membership = s.log.membership().unwrap().clone();
    check_contribution(
        &entries(&s),
        &membership,
        &plan(),
        2,
        open2,
        &HeldModel::initial(),
    )
    .unwrap();
}

/// Attack 3: the coordinator closes on the colluders' known inputs and one honest member, or
/// a colluder submits an honest member's ciphertext as its own.
#[test]
fn a_close_lists_every_logged_contribution_and_a_ciphertext_is_contributed_once() {
    let mut s = consortium();
    let leaves = open_with_everyone(&mut s, 1, ZERO_BASE);
    // A close on C0, C1 and H2 (with k_min = t, enough to isolate H2's update).
    let subset = vec![leaves[0], leaves[1], leaves[2]];
    let close = Body::RoundClose {
        round: 1,
        base: ZERO_BASE,
        contributions: subset.clone(),
        aggregate: [0xcc; 32],
    };
    assert_eq!(
        log_refuses(&s, Author::Coordinator, close.clone(), subset.clone()),
        RuleError::IncompleteClose {
            round: 1,
            leaf: leaves[3]
        }
    );
    auditor_flags(
        &s,
        vec![(Author::Coordinator, close, subset)],
        "leaves out contribution entry",
    );
    // A colluder re-submits H2's ciphertext as its own, in this round or any later one.
    let copied = Body::Contribution {
        round: 1,
        ciphertext: SampleConsortium::contribution_digest(1, 2),
        samples: 100,
    };
    assert_eq!(
        log_refuses(&s, Author::Member(0), copied.clone(), vec![]),
        RuleError::DuplicateCiphertext {
            digest: SampleConsortium::contribution_digest(1, 2),
            first: leaves[2]
        }
    );
    auditor_flags(
        &s,
        vec![(Author::Member(0), copied, vec![])],
        "was already contributed",
    );
}

/// A coordinator and one colluding quorum member cannot retire the key by filing request after
/// request, each with the colluder's release only: the key's count takes at most one request
/// per attempt the plan allows in each round.
#[test]
fn endless_requests_with_a_colluders_release_count_at_most_the_plans_attempts() {
    let mut s = consortium();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3]);
    for attempt in 0..20u8 {
        let target = if attempt == 0 {
            aggregate
        } else {
            [attempt; 32]
        };
        let request = s.request(1, close, target, &[0, 2, 3], attempt);
        release(&mut s, 0, request, target);
    }
    let rules = s.log.rounds().unwrap();
    let released = rules.released_requests_by_round();
    assert_eq!(released.get(&1), Some(&20));
    let plan = plan();
    assert_eq!(
        logged_reveals(&released, &plan),
        (1 + u64::from(plan.max_retries)) * u64::from(plan.values)
    );
    // Rounds past the plan count nothing: members refuse them.
    let past: std::collections::BTreeMap<u64, u64> = [(u64::from(plan.rounds) + 1, 1)].into();
    assert_eq!(logged_reveals(&past, &plan), 0);
}

/// The plan's budget covers `plan.rounds` rounds: a later one is refused at every step.
#[test]
fn a_round_past_the_plan_is_neither_contributed_to_nor_released() {
    let short = RoundPlan {
        rounds: 1,
        ..plan()
    };
    let mut s = SampleConsortium::new(5, 3, 4, 31);
    s.round_plan = Some(short.digest());
    let membership = s.log.membership().unwrap().clone();
    s.honest_round(1, &[0, 1, 2, 3, 4], &[0, 2, 4]);
    let held = held(&s);
    let open = s.log.size();
    let (close, aggregate) = s.open_and_close(2, &[0, 1, 2, 3, 4]);
    let request = s.request(2, close, aggregate, &[0, 2, 4], 0);
    let log = entries(&s);
    let past = Refusal::PastPlan {
        round: 2,
        rounds: 1,
    };
    assert_eq!(
        check_contribution(&log, &membership, &short, 0, open, &held),
        Err(past.clone())
    );
    assert_eq!(
        check_request(&log, &membership, &short, 0, request, &held),
        Err(past)
    );
}

/// Attack 4: t - 1 colluders, or a member outside the quorum, log releases and results to make
/// honest members take a request as decrypted (and refuse the legitimate retry as stale).
#[test]
fn releases_count_only_from_the_quorum_and_results_only_after_all_of_them() {
    let mut s = consortium();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3]);
    let first = s.request(1, close, aggregate, &[0, 2, 3], 0);
    // Member 1 is not in the quorum.
    let outside = Body::ShareReleased {
        request: first,
        ciphertext: aggregate,
        share: [1; 32],
    };
    assert_eq!(
        log_refuses(&s, Author::Member(1), outside.clone(), vec![first]),
        RuleError::NotInQuorum {
            member: 1,
            request: first
        }
    );
    auditor_flags(
        &s,
        vec![(Author::Member(1), outside, vec![first])],
        "not in the quorum",
    );
    // Colluder 0 (in the quorum) releases and logs a fake result.
    release(&mut s, 0, first, aggregate);
    let fake = Body::DecryptionResult {
        request: first,
        ciphertext: aggregate,
        model: [0xfa; 32],
    };
    assert_eq!(
        log_refuses(&s, Author::Member(0), fake.clone(), vec![first]),
        RuleError::ResultBeforeRelease { request: first }
    );
    auditor_flags(
        &s,
        vec![(Author::Member(0), fake, vec![first])],
        "before its whole quorum released",
    );
    // A release twice by the same member does not count twice either.
    let twice = Body::ShareReleased {
        request: first,
        ciphertext: aggregate,
        share: [9; 32],
    };
    assert_eq!(
        log_refuses(&s, Author::Member(0), twice, vec![first]),
        RuleError::SecondRelease {
            member: 0,
            request: first
        }
    );
    // So the coordinator's legitimate retry is not stale for an honest member.
    let retry = s.request(1, close, [0x55; 32], &[0, 2, 4], 1);
    let membership = s.log.membership().unwrap().clone();
    let target = check_request(
        &entries(&s),
        &membership,
        &plan(),
        4,
        retry,
        &HeldModel::initial(),
    )
    .unwrap();
    assert_eq!(target.attempt, 1);
}

/// A server step (kind 11) for `request` naming `base`.
fn step_body(request: u64, base: Digest) -> Body {
    Body::ServerStep {
        request,
        model: [base[0] ^ 0x10; 32],
        state: [0x5e; 32],
        base,
    }
}

/// Member `member`'s server step for `request`, appended to the sample log.
fn step(s: &mut SampleConsortium, member: usize, request: u64, base: Digest) -> u64 {
    s.append(
        Author::Member(member),
        step_body(request, base),
        vec![request],
    )
}

/// Under another optimizer than FedAvg the next round builds on the members' encryption of
/// the stepped model. Attack: the two colluders log a server step naming a crafted base Y (say
/// one honest member's contribution), and the coordinator opens the next round on it. Two
/// agreeing steps are fewer than t = 3, so the chain stays on the round's aggregate; the open
/// on Y is refused by the log and flagged by the auditor. Once three members log the honest
/// step, the chain moves to it, and an open on the bare aggregate is refused in turn.
#[test]
fn a_server_step_moves_the_base_only_when_t_members_log_the_same_one() {
    let mut s = consortium();
    let request = s.honest_round(1, &[0, 1, 2, 3, 4], &[0, 2, 4]);
    let aggregate = s.base();
    let crafted: Digest = SampleConsortium::contribution_digest(1, 3);
    step(&mut s, 0, request, crafted);
    step(&mut s, 1, request, crafted);
    let open_on = |base: Digest| Body::RoundOpen {
        round: 2,
        model: [2; 32],
        base,
        deadline_ms: 1,
        expected: 0b11111,
    };
    assert_eq!(s.base(), aggregate, "two colluders cannot move the chain");
    assert_eq!(
        log_refuses(&s, Author::Coordinator, open_on(crafted), vec![]),
        RuleError::Base {
            round: 2,
            named: crafted,
            expected: aggregate
        }
    );
    auditor_flags(
        &s,
        vec![(Author::Coordinator, open_on(crafted), vec![])],
        "names base",
    );
    // A member logs one step per request.
    assert_eq!(
        log_refuses(
            &s,
            Author::Member(0),
            step_body(request, [1; 32]),
            vec![request]
        ),
        RuleError::SecondStep { member: 0, request }
    );

    // The honest members' step: identical at each, since each computed it itself.
    let honest: Digest = [0x42; 32];
    step(&mut s, 2, request, honest);
    step(&mut s, 3, request, honest);
    assert_eq!(s.base(), aggregate, "two honest steps are not t either");
    step(&mut s, 4, request, honest);
    assert_eq!(s.base(), honest);
    assert_eq!(
        log_refuses(&s, Author::Coordinator, open_on(aggregate), vec![]),
        RuleError::Base {
            round: 2,
            named: aggregate,
            expected: honest
        }
    );
    // The coordinator cannot log a step, and no member can step a request not yet released.
    let forged = s.sign(
        Author::Coordinator,
        step_body(request, [9; 32]),
        vec![request],
    );
    assert!(s.log.check(&forged).is_err());
}

#[test]
fn a_server_step_before_the_whole_quorum_released_is_refused() {
    let mut s = consortium();
    s.honest_round(1, &[0, 1, 2, 3, 4], &[0, 2, 4]);
    let base = s.base();
    let leaves = open_with_everyone(&mut s, 2, base);
    let close = s.append(
        Author::Coordinator,
        Body::RoundClose {
            round: 2,
            base,
            contributions: leaves.clone(),
            aggregate: [0x21; 32],
        },
        leaves,
    );
    let request = s.request(2, close, [0x21; 32], &[0, 2, 4], 0);
    release(&mut s, 0, request, [0x21; 32]);
    assert_eq!(
        log_refuses(
            &s,
            Author::Member(0),
            step_body(request, [1; 32]),
            vec![request]
        ),
        RuleError::StepBeforeRelease { request }
    );
}
