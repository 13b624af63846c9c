//! The fault-injection suite, every role a process on loopback: each role killed (as by
//! kill -9) at each step of a round and restarted with its state, a member cut off from
//! another, a member slower than the deadline, a wall-clock jump. After each, the run ends on
//! its own and everything that must hold after any fault holds (`invariants_hold`): every
//! member's model is the plaintext fixed-point FedAvg of the rounds the log decrypted, bit for
//! bit; no share is released twice; no entry a member was told was logged is lost; the
//! exported log verifies with exit 0.

mod deployment;

use deployment::*;
use protocol::audit::entry::{Body, IncidentCode};
use protocol::round::incidents::declining_evidence;

/// Five members, threshold 3, three rounds of 2,000 values, a 15-second deadline.
fn five_members() -> Deployment {
    deploy(5, 3, 2_000, 3, 15)
}

/// Kills `target` at `fault`, restarts it, and checks the run ended with the invariants and
/// at least `min_rounds` rounds decrypted.
fn killed_and_restarted(target: Target, fault: &str, min_rounds: usize) -> Deployment {
    let d = five_members();
    assert!(
        d.run_through(target, fault),
        "{target:?} did not go down at {fault}\n{}",
        d.logs()
    );
    d.invariants_hold(min_rounds);
    d
}

#[test]
fn a_member_killed_before_contributing_restarts_and_the_run_stays_exact() {
    killed_and_restarted(Target::Node("member-e"), "contribute:2", 3);
}

#[test]
fn a_member_killed_half_way_through_its_upload_restarts_and_the_run_stays_exact() {
    killed_and_restarted(Target::Node("member-e"), "upload:2", 3);
}

#[test]
fn a_quorum_member_killed_after_recording_its_release_never_releases_twice() {
    killed_and_restarted(Target::Node("member-a"), "release:2", 3);
}

#[test]
fn a_quorum_member_killed_before_its_logged_partial_leaves_sends_it_after_a_restart() {
    // Its release is logged and every other release too: the log does not grow again until the
    // round is over, so the restarted member must be sent the final checkpoint to act on.
    killed_and_restarted(Target::Node("member-a"), "send:2", 3);
}

#[test]
fn a_member_killed_before_storing_the_decrypted_model_combines_again_after_a_restart() {
    killed_and_restarted(Target::Node("member-a"), "combine:2", 3);
}

#[test]
fn the_coordinator_killed_right_after_opening_a_round_resumes() {
    killed_and_restarted(Target::Coordinator, "open:2", 2);
}

#[test]
fn the_coordinator_killed_right_after_closing_a_round_resumes() {
    killed_and_restarted(Target::Coordinator, "close:2", 2);
}

#[test]
fn the_coordinator_killed_right_after_requesting_a_decryption_resumes() {
    killed_and_restarted(Target::Coordinator, "request:2", 2);
}

#[test]
fn the_coordinator_killed_after_one_share_of_a_round_is_released_finishes_that_decryption() {
    // Every member contributed to round 2, so none may contribute from its base again: the
    // restarted coordinator must have round 2 decrypted (a retry) before opening round 3.
    let d = killed_and_restarted(Target::Coordinator, "first-share:2", 3);
    // Finished by a retry (a re-randomised ciphertext) before round 3 opened.
    let log = d.log();
    let position = |found: &dyn Fn(&Body) -> bool| log.iter().position(|e| found(&e.entry.body));
    let retry = position(
        &|b| matches!(b, Body::DecryptionRequest { round: 2, attempt, .. } if *attempt >= 1),
    )
    .expect("a retry of round 2's decryption");
    let open3 = position(&|b| matches!(b, Body::RoundOpen { round: 3, .. })).unwrap();
    assert!(retry < open3, "round 3 opened before round 2 was retried");
}

#[test]
fn the_coordinator_killed_while_results_arrive_resumes() {
    killed_and_restarted(Target::Coordinator, "results:2", 2);
}

#[test]
fn a_quorum_member_cut_off_from_another_during_a_decryption_still_delivers() {
    // member-a (in the quorum) refuses every connection with member-b for 20 seconds from
    // round 2's opening, longer than the release timeout's retry.
    let d = five_members();
    assert!(!d.run_through(Target::Node("member-a"), "cut-off:2:20:member-b"));
    d.invariants_hold(3);
}

#[test]
fn a_member_slower_than_the_deadline_sits_the_round_out_and_returns_the_next() {
    let d = five_members();
    assert!(!d.run_through(Target::Node("member-e"), "slow:2:25"));
    let rounds = d.summary("coordinator")["rounds"].clone();
    assert_eq!(rounds[1]["contributors"], 4, "{rounds}");
    assert_eq!(rounds[2]["contributors"], 5, "{rounds}");
    d.invariants_hold(3);
}

#[test]
fn a_wall_clock_jump_at_the_coordinator_moves_no_deadline() {
    // The coordinator's wall clock jumps an hour ahead as round 2 opens: a deadline read from
    // the wall clock would already have passed, and the round would close with nobody in it.
    let d = five_members();
    assert!(!d.run_through(Target::Coordinator, "clock-jump:2:3600"));
    for round in d.summary("coordinator")["rounds"].as_array().unwrap() {
        assert_eq!(round["contributors"], 5, "{round}");
    }
    d.invariants_hold(3);
}

#[test]
fn a_node_store_damaged_on_disk_is_refused_naming_its_file_never_reset() {
    let d = deploy(3, 2, 1_000, 2, 15);
    d.run(2, None);
    let before = d.summary("member-a");
    // Bytes of the stored log copy flipped on disk: every place an entry names the log's
    // origin (old copies of pages included, so the live ones are surely hit).
    let file = d.dir.join("member-a/node-store").join("store.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let consortium = protocol::consortium::Consortium::parse(
        &std::fs::read_to_string(d.dir.join("consortium.toml")).unwrap(),
    )
    .unwrap();
    let origin = consortium.log_origin();
    let places: Vec<usize> = bytes
        .windows(origin.len())
        .enumerate()
        .filter(|(_, w)| *w == origin.as_bytes())
        .map(|(at, _)| at)
        .collect();
    assert!(!places.is_empty(), "no entry in the store");
    for at in places {
        for b in &mut bytes[at..at + origin.len()] {
            *b ^= 0x55;
        }
    }
    std::fs::write(&file, bytes).unwrap();
    let mut node = d.node("member-a", 3, &[]);
    let status = d.exit_status(&mut node, "member-a", 60);
    assert!(!status.success());
    let log = std::fs::read_to_string(d.dir.join("member-a/log")).unwrap();
    assert!(
        log.contains("node-store/store.redb") && log.contains("damaged"),
        "{log}"
    );
    // Nothing was reset: the summary of the last good run still stands.
    assert_eq!(d.summary("member-a"), before);
}

#[test]
fn a_member_away_for_several_rounds_catches_up_and_contributes_again() {
    away_for_several_rounds(five_members_paced(8));
}

/// Under a server optimizer the next base is the members' encryption of the stepped model, so
/// a member that was away combines every decryption it missed, in order, stepping each.
#[test]
fn under_a_server_optimizer_a_member_away_for_several_rounds_catches_up_in_order() {
    away_for_several_rounds(five_members_paced(8).with_optimizer("momentum", 500));
}

#[test]
fn under_a_server_optimizer_a_member_killed_before_logging_its_step_logs_it_after_a_restart() {
    // Killed in the last round: no later round moves it on, so it must log the step itself.
    let d = five_members().with_optimizer("yogi", 100);
    assert!(
        d.run_through(Target::Node("member-a"), "server-step:3"),
        "member-a did not go down\n{}",
        d.logs()
    );
    d.invariants_hold(3);
    let log = d.log();
    let me = d.member_key("member-a");
    let request3 = log
        .iter()
        .rposition(|e| matches!(e.entry.body, Body::DecryptionRequest { round: 3, .. }))
        .unwrap() as u64;
    assert!(
        log.iter().any(|e| e.entry.author == me
            && matches!(e.entry.body, Body::ServerStep { request, .. } if request == request3)),
        "{}",
        d.logs()
    );
}

fn away_for_several_rounds(d: Deployment) {
    let mut coordinator = d.coordinator();
    let mut nodes: Vec<std::process::Child> =
        d.members.iter().map(|m| d.node_until_run_over(m)).collect();
    // member-e goes away after round 1 and comes back after round 4: it missed three
    // decryptions, whose partials the others kept for it.
    d.wait_for_round("member-e", 1);
    nodes[4].kill().unwrap();
    nodes[4].wait().unwrap();
    d.wait_for_round("member-a", 4);
    nodes[4] = d.restart_node("member-e", "log-restarted");
    assert!(
        d.wait(&mut coordinator, "the coordinator", 300),
        "{}",
        d.logs()
    );
    for (name, child) in d.members.iter().zip(&mut nodes) {
        assert!(d.wait(child, name, 120), "{name}\n{}", d.logs());
    }
    // It contributed again before the end.
    let rounds = d.summary("coordinator")["rounds"].clone();
    assert_eq!(rounds[7]["contributors"], 5, "{rounds}");
    d.invariants_hold(8);
}

/// Five members, eight rounds opening at least a second apart.
fn five_members_paced(rounds: u64) -> Deployment {
    let d = deploy(5, 3, 2_000, rounds, 15);
    edit_toml(&d.dir.join("coordinator/coordinator.toml"), |t| {
        t.insert("round_interval_ms".into(), toml::Value::Integer(1000));
    });
    d
}

#[test]
fn a_full_disk_under_a_node_store_stops_the_node_naming_the_file_and_a_restart_recovers() {
    let d = five_members_paced(6);
    let mut coordinator = d.coordinator();
    let mut nodes: Vec<std::process::Child> = d.members[..4]
        .iter()
        .map(|m| d.node_until_run_over(m))
        .collect();
    let args = [
        "node",
        "run",
        "--config",
        "member-e/node.toml",
        "--summary",
        "member-e/summary.json",
        "--round-report",
        "member-e/rounds.jsonl",
    ];
    // member-e's files cannot grow past 100 kB: its store fills up within a few rounds (its
    // log goes to the test's file, opened before the limit).
    let mut e = d.spawn_on_a_full_disk(&args, "member-e/log", 100_000);
    let status = d.exit_status(&mut e, "member-e", 120);
    assert!(!status.success());
    let log = std::fs::read_to_string(d.dir.join("member-e/log")).unwrap();
    assert!(
        log.contains("a store can no longer be written") && log.contains("store.redb"),
        "{log}"
    );
    // With room again it carries on from what it recorded.
    nodes.push(d.spawn(&args, "member-e/log-restarted"));
    assert!(
        d.wait(&mut coordinator, "the coordinator", 300),
        "{}",
        d.logs()
    );
    for (name, child) in d.members.iter().zip(&mut nodes) {
        assert!(d.wait(child, name, 120), "{name}\n{}", d.logs());
    }
    d.invariants_hold(6);
}

#[test]
fn a_member_whose_trainer_fails_says_so_at_once_and_the_round_does_not_wait_for_it() {
    // A two-minute deadline: a round that waited for the failed member would take that long.
    let deadline_secs = 120;
    let d = deploy(5, 3, 2_000, 3, deadline_secs);
    edit_toml(&d.dir.join("member-e/node.toml"), |t| {
        let mut source = toml::Table::new();
        source.insert("kind".into(), "external".into());
        let command = ["sh", "-c", "echo 'CUDA error: out of memory' >&2; exit 1"];
        source.insert(
            "command".into(),
            toml::Value::Array(command.iter().map(|&a| a.into()).collect()),
        );
        let mut tensor = toml::Table::new();
        tensor.insert("name".into(), "w".into());
        tensor.insert("shape".into(), toml::Value::Array(vec![2_000.into()]));
        source.insert(
            "tensors".into(),
            toml::Value::Array(vec![toml::Value::Table(tensor)]),
        );
        t.insert("source".into(), toml::Value::Table(source));
    });
    d.run(3, None);
    d.invariants_hold(3);

    let log = d.log();
    let member_e = d.member_key("member-e");
    for round in 1..=3u64 {
        let open = log
            .iter()
            .position(|e| matches!(e.entry.body, Body::RoundOpen { round: r, .. } if r == round))
            .unwrap();
        let said = log.iter().any(|e| {
            e.entry.author == member_e
                && matches!(&e.entry.body, Body::Incident { code, evidence, description }
                    if *code == IncidentCode::NoUpdate.number()
                        && *evidence == declining_evidence(open as u64)
                        && description.contains(&format!("round {round}"))
                        && description.contains("the trainer failed (exit status: 1)")
                        // What the trainer printed can quote the institution's data: it stays
                        // in the node's own log.
                        && !description.contains("CUDA"))
        });
        assert!(
            said,
            "round {round}: no incident from member-e naming why it sat out"
        );
        let contributed = log.iter().any(|e| {
            e.entry.author == member_e
                && matches!(e.entry.body, Body::Contribution { round: r, .. } if r == round)
        });
        assert!(!contributed, "round {round}");
    }
    let node_log = std::fs::read_to_string(d.dir.join("member-e/log")).unwrap();
    assert!(node_log.contains("CUDA error: out of memory"), "{node_log}");
    // The coordinator stopped waiting for member-e when it said so, not at the deadline.
    let summary = d.summary("coordinator");
    for round in summary["rounds"].as_array().unwrap() {
        let collect = round["collect_seconds"].as_f64().unwrap();
        assert!(
            collect < deadline_secs as f64,
            "round {}: collected for {collect} s, the whole deadline\n{}",
            round["round"],
            d.logs()
        );
    }
}
