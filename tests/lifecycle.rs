//! How the daemons start and stop, every role a process on loopback: leaving when the run is
//! over, stopping cleanly on SIGTERM and SIGINT, and a panicking task taking its node down.

use std::process::Child;
use std::time::Duration;

mod deployment;

use deployment::*;

#[test]
fn daemons_leave_when_the_run_is_over_and_stop_cleanly_on_a_signal() {
    let d = deploy(3, 2, 2_000, 2, 15);
    // No --until-round: each node leaves once the coordinator says its run is over.
    let node = |name: &str| d.node_until_run_over(name);
    let mut coordinator = d.coordinator();
    let mut nodes: Vec<Child> = d.members.iter().map(|m| node(m)).collect();
    assert!(
        d.wait(&mut coordinator, "the coordinator", 300),
        "{}",
        d.logs()
    );
    for (name, child) in d.members.iter().zip(&mut nodes) {
        assert!(d.wait(child, name, 60), "{name}\n{}", d.logs());
        assert_eq!(d.summary(name)["rounds"], 2, "{name}");
    }

    // Again, for many rounds, stopped by signals once round 4 is decrypted (so the coordinator
    // has finished round 3, the first of this run): the coordinator by SIGTERM (it publishes
    // what it logged before it goes, and does not send members away, since it will be back),
    // then every node by SIGINT. All exit 0 with their summaries.
    edit_toml(&d.dir.join("coordinator/coordinator.toml"), |t| {
        t.insert("rounds".into(), toml::Value::Integer(40));
    });
    let mut coordinator = d.coordinator();
    let mut nodes: Vec<Child> = d.members.iter().map(|m| node(m)).collect();
    d.wait_for_round("member-a", 4);
    signal(&coordinator, "TERM");
    assert!(
        d.wait(&mut coordinator, "the coordinator", 60),
        "{}",
        d.logs()
    );
    let summary = d.summary("coordinator");
    assert_eq!(summary["interrupted"], true);
    let rounds = summary["rounds"].as_array().unwrap().len();
    assert!(
        (1..38).contains(&rounds),
        "{rounds} rounds in the second run"
    );
    std::thread::sleep(Duration::from_secs(1));
    for (name, child) in d.members.iter().zip(&mut nodes) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{name} left with the coordinator"
        );
        signal(child, "INT");
        assert!(d.wait(child, name, 60), "{name}\n{}", d.logs());
        assert!(
            d.summary(name)["rounds"].is_u64(),
            "{name} wrote its summary"
        );
    }
    // Nothing logged was lost, and the log still verifies.
    d.audit_verifies();
}

#[test]
fn a_task_that_panics_takes_its_node_down_instead_of_dying_unnoticed() {
    let d = deploy(3, 2, 1_000, 1, 15);
    let mut coordinator = d.coordinator();
    let mut a = d.node("member-a", 1, &["--fault", "panic:1"]);
    let mut others: Vec<Child> = d.members[1..].iter().map(|m| d.node(m, 1, &[])).collect();
    let status = d.exit_status(&mut a, "member-a", 60);
    assert_eq!(status.code(), Some(101), "{}", d.logs());
    let log = std::fs::read_to_string(d.dir.join("member-a/log")).unwrap();
    assert!(
        log.contains("the contribution task of round 1 panics"),
        "{log}"
    );
    for child in others.iter_mut().chain([&mut coordinator]) {
        let _ = child.kill();
        let _ = child.wait();
    }
}
