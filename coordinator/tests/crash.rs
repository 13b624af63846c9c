//! kill -9 at random points while the coordinator appends to its log: every entry that was
//! acknowledged (append returned) must be there after restart, and the store must reopen.
//!
//! The test binary plays both roles: run normally it is the supervisor; with
//! QUORATE_CRASH_STORE set, `crash_child` is the appender that gets killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use coordinator::audit_log::AuditLog;
use protocol::audit::entry::{Body, Entry};
use protocol::audit::sample::SampleConsortium;
use rand::{Rng, SeedableRng};

const STORE_VAR: &str = "QUORATE_CRASH_STORE";

fn sample() -> SampleConsortium {
    SampleConsortium::new(3, 2, 2, 11)
}

/// Entry `index` of the crash test's log: the sample membership, then incidents. Signatures
/// are deterministic, so the supervisor can rebuild every acknowledged leaf byte for byte.
fn expected_leaf(sample: &SampleConsortium, index: u64) -> Vec<u8> {
    if index == 0 {
        return sample.log.leaf(0).unwrap().to_vec();
    }
    Entry::new(
        sample.origin.clone(),
        &sample.coordinator,
        index,
        0,
        Body::Incident {
            code: 0,
            evidence: [1; 32],
            description: "crash test".into(),
        },
    )
    .sign(&sample.coordinator)
    .leaf()
    .to_vec()
}

/// The appender: appends entries forever, printing `ack <index>` after each durable append.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(STORE_VAR) else {
        return;
    };
    let sample = sample();
    let mut log = AuditLog::open(path.as_ref(), &sample.origin).expect("store opens");
    if log.state().size() == 0 {
        let membership =
            protocol::audit::entry::SignedEntry::open(sample.log.leaf(0).unwrap()).unwrap();
        log.append(membership).unwrap();
    }
    loop {
        let next = log.state().size();
        let entry =
            protocol::audit::entry::SignedEntry::open(&expected_leaf(&sample, next)).unwrap();
        let index = log.append(entry).unwrap();
        println!("ack {index}");
    }
}

#[test]
fn kill_9_at_random_points_loses_no_acknowledged_entry() {
    if std::env::var(STORE_VAR).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("log");
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let mut acknowledged: Option<u64> = None;
    let trials = 100;
    for trial in 0..trials {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(STORE_VAR, &store)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(index) = line.strip_prefix("ack ") {
                    let _ = tx.send(index.parse::<u64>().unwrap());
                }
            }
        });
        // Kill somewhere between start-up and a few dozen appends.
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..60_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        for index in rx.try_iter() {
            acknowledged = Some(acknowledged.map_or(index, |a| a.max(index)));
        }
        let sample = sample();
        let log = AuditLog::open(&store, &sample.origin)
            .unwrap_or_else(|e| panic!("trial {trial}: the store does not reopen: {e}"));
        if let Some(last) = acknowledged {
            assert!(
                log.state().size() > last,
                "trial {trial}: entry {last} was acknowledged but the log has {} entries",
                log.state().size()
            );
            for index in 0..=last {
                assert_eq!(
                    log.state().leaf(index).unwrap(),
                    expected_leaf(&sample, index).as_slice(),
                    "trial {trial}: acknowledged entry {index} changed"
                );
            }
        }
    }
    assert!(
        acknowledged.is_some_and(|a| a > 10),
        "the appender made too little progress: {acknowledged:?}"
    );
}
