//! The member's decisions, entry by entry, on sample logs.

use super::*;
use protocol::audit::sample::{Author, SampleConsortium};

fn plan() -> RoundPlan {
    RoundPlan {
        values: 20,
        ..RoundPlan::default()
    }
}

fn consortium() -> SampleConsortium {
    let mut sample = SampleConsortium::new(5, 3, 4, 41);
    sample.round_plan = Some(plan().digest());
    sample
}

fn log(s: &SampleConsortium) -> Vec<SignedEntry> {
    s.log
        .leaves()
        .iter()
        .map(|l| SignedEntry::open(l).unwrap())
        .collect()
}

/// Feeds every entry from `from` on; returns the actions in order.
fn feed(member: &mut Member, s: &SampleConsortium, from: u64) -> Vec<Action> {
    let log = log(s);
    (from..log.len() as u64)
        .flat_map(|i| member.on_entry(&log, i))
        .collect()
}

fn member(s: &SampleConsortium, me: u8) -> Member {
    let membership = s.log.membership().unwrap().clone();
    Member::new(me, membership, plan(), HeldModel::initial(), 0)
}

#[test]
fn an_honest_round_asks_to_contribute_release_send_and_combine_in_log_order() {
    let mut s = consortium();
    let mut m = member(&s, 2);
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3, 4]);
    let request = s.request(1, close, aggregate, &[0, 2, 4], 0);
    let actions = feed(&mut m, &s, 0);
    assert_eq!(
        actions,
        vec![
            // The first round open: no previous round to retire.
            Action::Forget { before: 0 },
            Action::Contribute { round: 1 },
            Action::Release { request },
        ]
    );
    let released = s.log.size();
    // A member outside the quorum, which combines on the quorum's word: not before the last
    // of the quorum's releases is logged.
    let mut watcher = member(&s, 1);
    let mut fed = 0;
    for q in [0usize, 2, 4] {
        feed(&mut watcher, &s, fed);
        fed = s.log.size();
        let d = watcher.decryption(request).unwrap();
        assert!(!d.released_by_whole_quorum(), "before member {q}'s release");
        s.append(
            Author::Member(q),
            Body::ShareReleased {
                request,
                ciphertext: aggregate,
                share: [q as u8; 32],
            },
            vec![request],
        );
    }
    let actions = feed(&mut m, &s, released);
    assert_eq!(
        actions,
        vec![
            Action::TryCombine { request },
            Action::SendPartial {
                request,
                share: [2; 32]
            },
            Action::TryCombine { request },
            Action::TryCombine { request },
        ]
    );
    assert_eq!(m.decryption(request).unwrap().logged_shares.len(), 3);
    assert!(m.decryption(request).unwrap().released_by_whole_quorum());
    feed(&mut watcher, &s, fed);
    assert!(
        watcher
            .decryption(request)
            .unwrap()
            .released_by_whole_quorum()
    );
    // A member outside the quorum follows the decryption and prepares to combine it (its
    // fetch of the aggregate runs while the quorum releases), but does not release.
    let mut outside = member(&s, 1);
    let actions = feed(&mut outside, &s, 0);
    assert!(!actions.iter().any(|a| matches!(a, Action::Release { .. })));
    let prepare = actions
        .iter()
        .position(|a| *a == Action::Prepare { request });
    let combine = actions
        .iter()
        .position(|a| *a == Action::TryCombine { request });
    assert!(prepare.unwrap() < combine.unwrap(), "{actions:?}");
}

#[test]
fn a_member_expects_to_release_where_the_latest_quorum_named_it_and_before_any_if_among_the_lowest()
{
    let mut s = consortium();
    // Before any request: the lowest-indexed threshold (3) members.
    let expected: Vec<bool> = (0..5)
        .map(|me| member(&s, me).expects_to_release())
        .collect();
    assert_eq!(expected, [true, true, true, false, false]);
    // Then whoever the latest request named, round after round.
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3, 4]);
    s.request(1, close, aggregate, &[0, 2, 4], 0);
    let mut members: Vec<Member> = (0..5).map(|me| member(&s, me)).collect();
    let expected: Vec<bool> = members
        .iter_mut()
        .map(|m| {
            feed(m, &s, 0);
            m.expects_to_release()
        })
        .collect();
    assert_eq!(expected, [true, false, true, false, true]);
    // Reading ahead is for a round whose request has not come yet.
    assert!(members[0].requested(1) && !members[0].requested(2));
    // A retry under another quorum replaces it.
    let at = s.log.size();
    s.request(1, close, [7; 32], &[1, 2, 3], 1);
    let expected: Vec<bool> = members
        .iter_mut()
        .map(|m| {
            feed(m, &s, at);
            m.expects_to_release()
        })
        .collect();
    assert_eq!(expected, [false, true, true, true, false]);
}

/// Attack 1 as the member sees it: the chain moved to an aggregate this member never
/// combined; it sits the round out and says why, and never asks to release for it.
#[test]
fn a_member_that_does_not_hold_the_base_sits_out_with_an_incident() {
    let mut s = consortium();
    let mut m = member(&s, 3);
    s.honest_round(1, &[0, 1, 2, 3, 4], &[0, 1, 2]);
    let before = s.log.size();
    // Member 3 missed round 1 entirely: it follows no decryption of it.
    let (close, aggregate) = s.open_and_close(2, &[0, 1, 2, 3, 4]);
    s.request(2, close, aggregate, &[1, 3, 4], 0);
    let actions = feed(&mut m, &s, before);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Contribute { .. }))
    );
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Incident { code: IncidentCode::UnverifiedBase, description, .. } if description.contains("not contributing to round 2")
        )),
        "{actions:?}"
    );
}

/// Members 3 and 4 never log a result (they are away): what a round open retires keeps
/// the decryptions they still need, but no more than MAX_LAG_ROUNDS rounds back; members
/// that all combined let everything before the previous round go.
#[test]
fn partials_stay_for_a_member_that_is_behind_but_not_forever() {
    let mut s = consortium();
    let mut m = member(&s, 2);
    let mut opens = Vec::new();
    let mut forgets = Vec::new();
    for round in 1..=12 {
        let at = s.log.size();
        s.honest_round(round, &[0, 1, 2, 3, 4], &[0, 1, 2]);
        opens.push(at);
        forgets.extend(feed(&mut m, &s, at).into_iter().filter_map(|a| match a {
            Action::Forget { before } => Some(before),
            _ => None,
        }));
    }
    // Up to round 9 everything from round 1 on is kept; then 8 rounds back.
    assert_eq!(
        forgets[..9],
        [
            0, opens[0], opens[0], opens[0], opens[0], opens[0], opens[0], opens[0], opens[0]
        ]
    );
    assert_eq!(forgets[11], opens[3]);
    // Once the away members log their results of round 12, round 13's open lets go of
    // everything before round 12's.
    let (request, ciphertext) = s
        .log
        .leaves()
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, l)| match SignedEntry::open(l).unwrap().entry.body {
            Body::DecryptionRequest {
                round: 12,
                ciphertext,
                ..
            } => Some((i as u64, ciphertext)),
            _ => None,
        })
        .unwrap();
    let at = s.log.size();
    for away in [3usize, 4] {
        s.append(
            Author::Member(away),
            Body::DecryptionResult {
                request,
                ciphertext,
                model: [0; 32],
            },
            vec![request],
        );
    }
    s.open_and_close(13, &[0, 1, 2, 3, 4]);
    let actions = feed(&mut m, &s, at);
    assert!(
        actions.contains(&Action::Forget { before: opens[11] }),
        "{actions:?}"
    );
}

/// A coordinator restarted between the quorum's releases and the members' results opens
/// the next round at once: a member still combining the round it builds on waits for that
/// model and then contributes, and says it sat the round out only if a later round opens
/// first.
#[test]
fn a_member_still_combining_the_base_contributes_once_it_holds_it() {
    let mut s = consortium();
    let mut m = member(&s, 3);
    s.honest_round(1, &[0, 1, 2, 3, 4], &[0, 1, 2]);
    let before = s.log.size();
    feed(&mut m, &s, 0);
    // Member 3 follows round 1's decryption but has not combined it yet.
    let (close, aggregate) = s.open_and_close(2, &[0, 1, 2, 3, 4]);
    s.request(2, close, aggregate, &[1, 3, 4], 0);
    let actions = feed(&mut m, &s, before);
    // Round 2's open retires only what came before round 1's: round 1's partial
    // decryptions stay, so that this member can still ask for them.
    let round_one_open = s
        .log
        .leaves()
        .iter()
        .position(|l| {
            matches!(
                SignedEntry::open(l).unwrap().entry.body,
                Body::RoundOpen { round: 1, .. }
            )
        })
        .unwrap() as u64;
    assert!(
        actions.contains(&Action::Forget {
            before: round_one_open
        }),
        "{actions:?}"
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Contribute { .. } | Action::Incident { .. })),
        "{actions:?}"
    );
    // Once it combines round 1, it contributes from that model.
    let held = HeldModel {
        round: 1,
        base: s.log.rounds().unwrap().round_base(2).unwrap(),
        model: [0; 32],
    };
    let mut waiting = m.clone();
    assert_eq!(
        waiting.combined(&log(&s), held),
        vec![Action::Contribute { round: 2 }]
    );
    // If round 3 opens before it combined, it logs why it sat round 2 out.
    let at = s.log.size();
    s.open_and_close(3, &[0, 1, 2, 4]);
    let actions = feed(&mut m, &s, at);
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Incident { code: IncidentCode::UnverifiedBase, description, .. } if description.contains("not contributing to round 2")
        )),
        "{actions:?}"
    );
}

#[test]
fn after_a_restart_nothing_already_done_is_asked_again_but_requests_are_followed() {
    let mut s = consortium();
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3, 4]);
    let request = s.request(1, close, aggregate, &[0, 2, 4], 0);
    s.append(
        Author::Member(2),
        Body::ShareReleased {
            request,
            ciphertext: aggregate,
            share: [2; 32],
        },
        vec![request],
    );
    let membership = s.log.membership().unwrap().clone();
    let mut restarted = Member::new(2, membership, plan(), HeldModel::initial(), s.log.size());
    let actions = feed(&mut restarted, &s, 0);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Contribute { .. } | Action::Release { .. }))
    );
    // Its own logged release is sent again (the same bytes), and the request followed.
    assert!(actions.contains(&Action::SendPartial {
        request,
        share: [2; 32]
    }));
    assert!(restarted.decryption(request).is_some());
}

#[test]
fn a_round_under_another_plan_and_a_different_decoded_model_are_incidents() {
    let mut s = consortium();
    s.round_plan = Some([9; 32]);
    let mut m = member(&s, 0);
    s.open_and_close(1, &[0, 1, 2, 3]);
    let actions = feed(&mut m, &s, 0);
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Incident {
            code: IncidentCode::RoundUnderOtherPlan,
            ..
        }
    )));

    let mut s = consortium();
    let mut m = member(&s, 0);
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2, 3]);
    let request = s.request(1, close, aggregate, &[0, 1, 2], 0);
    for q in [0usize, 1, 2] {
        s.append(
            Author::Member(q),
            Body::ShareReleased {
                request,
                ciphertext: aggregate,
                share: [q as u8; 32],
            },
            vec![request],
        );
    }
    for (q, model) in [(0usize, [1u8; 32]), (1, [2; 32])] {
        s.append(
            Author::Member(q),
            Body::DecryptionResult {
                request,
                ciphertext: aggregate,
                model,
            },
            vec![request],
        );
    }
    let actions = feed(&mut m, &s, 0);
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Incident {
            code: IncidentCode::OtherModel,
            ..
        }
    )));
}

/// Under a server optimizer a round builds on the members' step: a member still combining the
/// round before waits for it as it would for an aggregate, and after a restart with its result
/// logged but not its step, it is asked to try again (which logs the step).
#[test]
fn under_a_server_optimizer_a_member_waits_for_the_step_and_logs_a_missing_one_after_a_restart() {
    let plan = RoundPlan {
        values: 20,
        optimizer: protocol::round::Optimizer::named("adam").unwrap(),
        ..RoundPlan::default()
    };
    let mut s = SampleConsortium::new(5, 3, 4, 43);
    s.round_plan = Some(plan.digest());
    let membership = s.log.membership().unwrap().clone();
    let fresh = |me: u8, held: HeldModel, replay_until: u64| {
        Member::new(me, membership.clone(), plan.clone(), held, replay_until)
    };
    // Quorum 0, 1, 2 release and log results; members 0, 1 and 3 log the same step (t = 3),
    // member 2 stopped before logging its own.
    let request = s.honest_round(1, &[0, 1, 2, 3, 4], &[0, 1, 2]);
    let stepped: Digest = [0x5e; 32];
    for q in [0usize, 1, 3] {
        s.append(
            Author::Member(q),
            Body::ServerStep {
                request,
                model: [1; 32],
                state: [2; 32],
                base: stepped,
            },
            vec![request],
        );
    }
    assert_eq!(s.base(), stepped);
    let held = HeldModel {
        round: 1,
        base: stepped,
        model: [1; 32],
    };

    // Member 4 has not combined round 1 when round 2 opens on the step: it waits.
    let mut m = fresh(4, HeldModel::initial(), 0);
    let before = s.log.size();
    feed(&mut m, &s, 0);
    s.open_and_close(2, &[0, 1, 2, 3, 4]);
    let actions = feed(&mut m, &s, before);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Contribute { .. } | Action::Incident { .. })),
        "{actions:?}"
    );
    assert_eq!(
        m.combined(&log(&s), held),
        vec![Action::Contribute { round: 2 }]
    );

    // Restarted: member 2 (result, no step) is asked to try again; member 0 (both) is not.
    let tries = |me: u8| {
        let mut restarted = fresh(me, held, s.log.size());
        feed(&mut restarted, &s, 0).contains(&Action::TryCombine { request })
    };
    assert!(tries(2), "member 2 logged no step");
    assert!(!tries(0), "member 0 logged its step");

    // A member that logs another step than member 0's for the same request is named.
    let mut zero = fresh(0, held, 0);
    feed(&mut zero, &s, 0);
    let at = s.log.size();
    s.append(
        Author::Member(4),
        Body::ServerStep {
            request,
            model: [1; 32],
            state: [2; 32],
            base: [0x66; 32],
        },
        vec![request],
    );
    let actions = feed(&mut zero, &s, at);
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Incident { code: IncidentCode::OtherStep, description, .. }
                if description.contains("member 4")
        )),
        "{actions:?}"
    );
}
