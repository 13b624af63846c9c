//! Outages as separate sites meet them, every role a process on loopback: staggered starts, a
//! site killed and restarted mid-run, partial decryptions lost on the way. Every round still
//! decrypts, every site ends with the same model, and the log audits clean.

use std::process::Child;
use std::time::Duration;

use protocol::audit::entry::Body;

mod deployment;

use deployment::*;

#[test]
fn staggered_starts_and_a_site_restarted_mid_run_still_audit_clean() {
    let d = deploy(5, 3, 2_000, 3, 15);
    let node = |name: &str| d.node_until_run_over(name);
    let mut coordinator = d.coordinator();
    // The sites start a little apart, as separate admins start them.
    let mut nodes: Vec<Child> = Vec::new();
    for name in &d.members {
        nodes.push(node(name));
        std::thread::sleep(Duration::from_millis(200));
    }
    // member-e is killed once round 1 is decrypted there, and restarted a moment later.
    d.wait_for_round("member-e", 1);
    nodes[4].kill().unwrap();
    nodes[4].wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    nodes[4] = d.restart_node("member-e", "log-restarted");
    assert!(
        d.wait(&mut coordinator, "the coordinator", 300),
        "{}",
        d.logs()
    );
    for (name, child) in d.members.iter().zip(&mut nodes) {
        assert!(d.wait(child, name, 120), "{name}\n{}", d.logs());
    }
    let summary = d.summary("coordinator");
    for round in summary["rounds"].as_array().unwrap() {
        assert_eq!(round["decrypted"], true, "{round}");
        assert!(round["contributors"].as_u64().unwrap() >= 4, "{round}");
    }
    // Every site ends with the same model, member-e too: after its restart it fetched the
    // partial decryptions it missed from the members who released them.
    let a = d.summary("member-a")["model_digest"].clone();
    for name in &d.members[1..] {
        assert_eq!(d.summary(name)["model_digest"], a, "{name}\n{}", d.logs());
    }
    d.audit_verifies();
}

#[test]
fn a_member_whose_partials_are_lost_asks_for_them_again_and_combines() {
    let d = deploy(5, 3, 2_000, 1, 15);
    let mut coordinator = d.coordinator();
    // member-e is outside the quorum (a, b, c): every partial decryption of round 1 is lost
    // on its way there, as when it was away during the decryption.
    let mut nodes: Vec<Child> = d
        .members
        .iter()
        .map(|m| match m.as_str() {
            "member-e" => d.node(m, 1, &["--fault", "lose-partials:1"]),
            _ => d.node(m, 1, &[]),
        })
        .collect();
    assert!(
        d.wait(&mut coordinator, "the coordinator", 300),
        "{}",
        d.logs()
    );
    for (name, node) in d.members.iter().zip(&mut nodes) {
        assert!(d.wait(node, name, 120), "{name}\n{}", d.logs());
    }
    let expected = d.expected_digest(&[&[0, 1, 2, 3, 4]]);
    for name in &d.members {
        assert_eq!(d.summary(name)["rounds"], 1, "{name}\n{}", d.logs());
        assert_eq!(
            d.summary(name)["model_digest"].as_str(),
            Some(expected.as_str()),
            "{name}"
        );
    }
    let log = std::fs::read_to_string(d.dir.join("member-e/log")).unwrap();
    assert!(log.contains("a partial decryption is lost"), "{log}");
    assert!(
        log.contains("asking for a partial decryption again"),
        "{log}"
    );
    // No member released twice: one release per quorum member in the log.
    let releases = d
        .log()
        .iter()
        .filter(|e| matches!(e.entry.body, Body::ShareReleased { .. }))
        .count();
    assert_eq!(releases, 3);
    d.audit_verifies();
}
