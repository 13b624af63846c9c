//! Whole rounds with every role in its own process on loopback: a rehearsed consortium, the
//! coordinator, one node per member. The decrypted models are compared with integer
//! arithmetic, the audit log is verified, and members drop out or crash mid-round.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use protocol::audit::entry::{Body, SignedEntry};
use protocol::round::{RoundPlan, model_digest};

/// The seed rehearsals put in their node configurations.
const SYNTHETIC_SEED: u64 = 2026;

fn quorate(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(args)
        .current_dir(cwd)
        .env_remove("QUORATE_PASSPHRASE")
        .output()
        .expect("quorate runs")
}

struct Deployment {
    _work: tempfile::TempDir,
    dir: PathBuf,
    members: Vec<String>,
    plan: RoundPlan,
}

fn edit_toml(path: &Path, edit: impl FnOnce(&mut toml::Table)) {
    let mut table: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    edit(&mut table);
    std::fs::write(path, toml::to_string(&table).unwrap()).unwrap();
}

/// A rehearsed consortium whose configurations run `rounds` rounds of `values` values.
fn deploy(members: u8, threshold: u8, values: u32, rounds: u64, deadline_secs: i64) -> Deployment {
    let work = tempfile::tempdir().unwrap();
    let out = quorate(
        &[
            "ceremony",
            "rehearse",
            "--members",
            &members.to_string(),
            "--threshold",
            &threshold.to_string(),
            "--values",
            &values.to_string(),
            "--out",
            "deployment",
        ],
        work.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = work.path().join("deployment");
    let names: Vec<String> = (0..members)
        .map(protocol::consortium::rehearsal_member_name)
        .collect();
    // The rehearsal wrote a round plan sized for `values` (its kappa covers the plan's life).
    edit_toml(&dir.join("coordinator/coordinator.toml"), |t| {
        t.insert("rounds".into(), toml::Value::Integer(rounds as i64));
        t.insert(
            "round_deadline_secs".into(),
            toml::Value::Integer(deadline_secs),
        );
        t.insert("release_timeout_secs".into(), toml::Value::Integer(20));
    });
    let plan = RoundPlan {
        values,
        ..RoundPlan::default()
    }
    .sized();
    Deployment {
        _work: work,
        dir,
        members: names,
        plan,
    }
}

impl Deployment {
    fn spawn(&self, args: &[&str], log: &str) -> Child {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_quorate"))
            .args(args)
            .current_dir(&self.dir)
            .env_remove("QUORATE_PASSPHRASE")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn coordinator(&self) -> Child {
        self.spawn(
            &[
                "coordinator",
                "run",
                "--config",
                "coordinator/coordinator.toml",
                "--summary",
                "coordinator/summary.json",
            ],
            "coordinator/log",
        )
    }

    fn node(&self, name: &str, until: u64, extra: &[&str]) -> Child {
        let config = format!("{name}/node.toml");
        let summary = format!("{name}/summary.json");
        let report = format!("{name}/rounds.jsonl");
        let until = until.to_string();
        let mut args = vec![
            "node",
            "run",
            "--config",
            &config,
            "--until-round",
            &until,
            "--summary",
            &summary,
            "--round-report",
            &report,
        ];
        args.extend_from_slice(extra);
        self.spawn(&args, &format!("{name}/log"))
    }

    /// A node with no `--until-round`: it runs until the coordinator's run is over.
    fn node_until_run_over(&self, name: &str) -> Child {
        self.spawn(
            &[
                "node",
                "run",
                "--config",
                &format!("{name}/node.toml"),
                "--summary",
                &format!("{name}/summary.json"),
                "--round-report",
                &format!("{name}/rounds.jsonl"),
            ],
            &format!("{name}/log"),
        )
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for name in std::iter::once("coordinator").chain(self.members.iter().map(String::as_str)) {
            let text = std::fs::read_to_string(self.dir.join(name).join("log")).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            all.push_str(&format!("== {name}\n"));
            for line in tail.iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    fn wait(&self, child: &mut Child, what: &str, seconds: u64) -> bool {
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if start.elapsed() > Duration::from_secs(seconds) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish in {seconds} s\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs the coordinator and every node until `rounds` rounds are done. A member with a
    /// fault injected is expected to crash; everyone else must exit successfully.
    fn run(&self, rounds: u64, faulty: Option<(&str, &str)>) {
        let mut coordinator = self.coordinator();
        let mut nodes: Vec<Child> = self
            .members
            .iter()
            .map(|m| match faulty {
                Some((name, fault)) if name == m => self.node(m, rounds, &["--fault", fault]),
                _ => self.node(m, rounds, &[]),
            })
            .collect();
        assert!(
            self.wait(&mut coordinator, "the coordinator", 300),
            "{}",
            self.logs()
        );
        for (name, node) in self.members.iter().zip(&mut nodes) {
            let crashes = faulty.is_some_and(|(f, _)| f == name);
            let ok = self.wait(node, name, 120);
            assert_eq!(ok, !crashes, "{name}\n{}", self.logs());
        }
    }

    fn summary(&self, name: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join(name).join("summary.json")).unwrap())
            .unwrap()
    }

    /// The model after rounds whose contributors are listed, by member index.
    fn expected_digest(&self, rounds: &[&[u8]]) -> String {
        // Rehearsal nodes declare 100 + 10 i samples.
        let rounds: Vec<Vec<(u8, u64)>> = rounds
            .iter()
            .map(|members| {
                members
                    .iter()
                    .map(|&i| (i, 100 + 10 * u64::from(i)))
                    .collect()
            })
            .collect();
        let model = node::source::synthetic_fedavg(&self.plan, SYNTHETIC_SEED, &rounds).unwrap();
        hex::encode(model_digest(&model))
    }

    /// The coordinator's log, read from its store once it has exited.
    fn log(&self) -> Vec<SignedEntry> {
        let store =
            coordinator::store::LogStore::open(&self.dir.join("coordinator/log-store")).unwrap();
        store
            .leaves()
            .unwrap()
            .iter()
            .map(|l| SignedEntry::open(l).unwrap())
            .collect()
    }

    fn member_key(&self, name: &str) -> [u8; 32] {
        let log = self.log();
        let Body::Membership(membership) = &log[0].entry.body else {
            panic!("no membership")
        };
        membership
            .members
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .signing_key
    }

    fn audit_verifies(&self) {
        let out = quorate(
            &[
                "audit",
                "export",
                "--store",
                "coordinator/log-store",
                "--out",
                "audit-final",
            ],
            &self.dir,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = quorate(
            &[
                "audit",
                "verify",
                "audit-final",
                "--transcript",
                "transcript",
            ],
            &self.dir,
        );
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Everything the coordinator stored is a ciphertext, and it was never sent a partial
    /// decryption.
    fn coordinator_held_only_ciphertexts(&self) {
        let summary = self.summary("coordinator");
        let received = summary["requests_received"].as_object().unwrap();
        assert!(received.get("partial").is_none(), "{received:?}");
        assert!(received["chunk"].as_u64().unwrap() > 0);
        let limits = protocol::wire::DecodeLimits::default();
        let mut blobs = 0;
        for file in std::fs::read_dir(self.dir.join("coordinator/ciphertexts")).unwrap() {
            let path = file.unwrap().path();
            if path.is_dir() || path.extension().is_some() {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            protocol::wire::decode_ciphertext(&bytes, limits)
                .unwrap_or_else(|e| panic!("{} is not a ciphertext: {e}", path.display()));
            blobs += 1;
        }
        assert!(blobs > 0);
    }
}

#[test]
fn three_rounds_of_five_members_decrypt_exactly_and_the_log_verifies() {
    let d = deploy(5, 3, 10_000, 3, 120);
    d.run(3, None);
    let everyone: &[u8] = &[0, 1, 2, 3, 4];
    let expected = d.expected_digest(&[everyone, everyone, everyone]);
    for name in &d.members {
        let summary = d.summary(name);
        assert_eq!(summary["rounds"], 3, "{name}");
        assert_eq!(
            summary["model_digest"].as_str(),
            Some(expected.as_str()),
            "{name}"
        );
    }
    let coordinator_summary = d.summary("coordinator");
    for round in coordinator_summary["rounds"].as_array().unwrap() {
        assert_eq!(round["contributors"], 5);
        assert_eq!(round["decrypted"], true);
    }
    d.coordinator_held_only_ciphertexts();
    d.audit_verifies();
}

#[test]
fn a_member_that_drops_out_mid_round_is_not_waited_for() {
    let d = deploy(5, 3, 3_000, 2, 120);
    // member-e crashes when round 2 opens, before it contributes.
    d.run(2, Some(("member-e", "contribute:2")));
    let rounds = d.summary("coordinator")["rounds"].clone();
    assert_eq!(rounds[1]["contributors"], 4);
    // The round closed once the others had contributed, not at the two-minute deadline.
    assert!(rounds[1]["collect_seconds"].as_f64().unwrap() < 60.0);
    let expected = d.expected_digest(&[&[0, 1, 2, 3, 4], &[0, 1, 2, 3]]);
    for name in &d.members[..4] {
        assert_eq!(
            d.summary(name)["model_digest"].as_str(),
            Some(expected.as_str()),
            "{name}"
        );
    }
    d.audit_verifies();
}

#[test]
fn a_quorum_member_killed_during_release_is_replaced_and_never_releases_twice() {
    let d = deploy(5, 3, 3_000, 2, 15);
    let mut coordinator = d.coordinator();
    let mut a = d.node("member-a", 2, &["--fault", "release:1"]);
    let mut others: Vec<Child> = d.members[1..].iter().map(|m| d.node(m, 2, &[])).collect();
    // member-a records the release in its ledger, then dies before the share leaves.
    assert!(
        !d.wait(&mut a, "member-a", 120),
        "member-a should have crashed"
    );
    // It restarts with its state (whether it catches up with round 2 depends on timing).
    let mut a = d.spawn(
        &["node", "run", "--config", "member-a/node.toml"],
        "member-a/log-restarted",
    );
    assert!(
        d.wait(&mut coordinator, "the coordinator", 200),
        "{}",
        d.logs()
    );
    for (name, node) in d.members[1..].iter().zip(&mut others) {
        assert!(d.wait(node, name, 120), "{name}\n{}", d.logs());
    }
    a.kill().unwrap();
    a.wait().unwrap();

    let rounds = d.summary("coordinator")["rounds"].clone();
    assert_eq!(rounds[0]["attempts"], 2, "round 1 needed a retry");
    assert_eq!(rounds[0]["decrypted"], true);
    assert_eq!(rounds[1]["decrypted"], true);
    // Round 1 had every contribution; member-a missed round 1's model and so sat round 2 out.
    let expected = d.expected_digest(&[&[0, 1, 2, 3, 4], &[1, 2, 3, 4]]);
    for name in &d.members[1..] {
        assert_eq!(
            d.summary(name)["model_digest"].as_str(),
            Some(expected.as_str()),
            "{name}"
        );
    }

    let log = d.log();
    let a_key = d.member_key("member-a");
    let first_request = log
        .iter()
        .position(|e| {
            matches!(
                e.entry.body,
                Body::DecryptionRequest {
                    attempt: 0,
                    round: 1,
                    ..
                }
            )
        })
        .unwrap();
    let Body::DecryptionRequest {
        ciphertext: first_target,
        ..
    } = log[first_request].entry.body
    else {
        unreachable!()
    };
    // No share of the first target from member-a ever reached the log...
    assert!(!log.iter().any(|e| e.entry.author == a_key
        && matches!(e.entry.body, Body::ShareReleased { ciphertext, .. } if ciphertext == first_target)));
    // ...and after the restart member-a refused to release it again, by its ledger.
    assert!(
        log.iter()
            .any(|e| e.entry.author == a_key
                && matches!(e.entry.body, Body::Incident { code: 112, .. })),
        "member-a logged no refusal\n{}\n{}",
        std::fs::read_to_string(d.dir.join("member-a/log-restarted")).unwrap_or_default(),
        d.logs()
    );
    let ledger = node::state_store::StateStore::open(&d.dir.join("member-a/node-store")).unwrap();
    assert_eq!(
        ledger.released(&first_target).unwrap(),
        Some(first_request as u64)
    );
    d.audit_verifies();
}

/// Real local training: three institutions each hold a third of the breast-cancer data and
/// train logistic regression on it, one with the built-in trainer and two through the external
/// trainer protocol (a subprocess exchanging safetensors files each round). Every member's
/// decrypted model equals, bit for bit, the model plaintext fixed-point FedAvg computes from
/// the built-in trainer's updates, so the external path trains the same model; the exported
/// files hold it, and it classifies the data well.
/// Sends `signal` (TERM, INT) to a process, as a service manager or a terminal would.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {signal} {}", child.id());
}

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
    let started = Instant::now();
    while !std::fs::read_to_string(d.dir.join("member-a/rounds.jsonl"))
        .unwrap_or_default()
        .contains("\"round\":4")
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no round 4\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let started = Instant::now();
    while !std::fs::read_to_string(d.dir.join("member-e/rounds.jsonl"))
        .unwrap_or_default()
        .contains("\"round\":1")
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no round 1\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    nodes[4].kill().unwrap();
    nodes[4].wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    nodes[4] = d.spawn(
        &[
            "node",
            "run",
            "--config",
            "member-e/node.toml",
            "--summary",
            "member-e/summary.json",
        ],
        "member-e/log-restarted",
    );
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

#[test]
fn a_task_that_panics_takes_its_node_down_instead_of_dying_unnoticed() {
    let d = deploy(3, 2, 1_000, 1, 15);
    let mut coordinator = d.coordinator();
    let mut a = d.node("member-a", 1, &["--fault", "panic:1"]);
    let mut others: Vec<Child> = d.members[1..].iter().map(|m| d.node(m, 1, &[])).collect();
    let status = {
        let started = Instant::now();
        loop {
            if let Some(status) = a.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{}", d.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
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

#[test]
fn training_on_real_data_matches_plaintext_fixed_point_fedavg_exactly() {
    const FEATURES: usize = 30;
    let values = (2 * (FEATURES + 1)) as u32;
    let d = deploy(3, 2, values, 3, 120);
    // An IID split: row i goes to institution i mod 3.
    let text = std::fs::read_to_string(source_csv()).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let mut parts = vec![format!("{header}\n"); 3];
    for (i, line) in lines.enumerate() {
        parts[i % 3].push_str(line);
        parts[i % 3].push('\n');
    }
    let trainer = |i: usize| node::config::TrainerConfig {
        model: node::config::ModelKind::Logistic,
        hidden: 16,
        data: d.dir.join(&d.members[i]).join("data.csv"),
        test_data: None,
        target: "benign".into(),
        classes: 2,
        impute_missing: false,
        categories: Default::default(),
        epochs: 1,
        batch: 16,
        learning_rate: 0.1,
        seed: 11 + i as u64,
        initial_seed: 0,
        scaling: node::config::Scaling::Local,
    };
    for (i, name) in d.members.iter().enumerate() {
        std::fs::write(d.dir.join(name).join("data.csv"), &parts[i]).unwrap();
        edit_toml(&d.dir.join(name).join("node.toml"), |t| {
            let mut source = toml::Table::new();
            if i == 0 {
                source.insert("kind".into(), "built-in".into());
                // As the external trainer scales: with this institution's own statistics.
                source.insert("scaling".into(), "local".into());
                source.insert("data".into(), "data.csv".into());
                // The whole set as held-out rows: the round report measures the model on it.
                source.insert(
                    "test_data".into(),
                    source_csv().to_string_lossy().into_owned().into(),
                );
                source.insert("target".into(), "benign".into());
                source.insert("classes".into(), toml::Value::Integer(2));
                source.insert("seed".into(), toml::Value::Integer(11));
            } else {
                source.insert("kind".into(), "external".into());
                let command: Vec<toml::Value> = [
                    env!("CARGO_BIN_EXE_quorate"),
                    "node",
                    "train",
                    "--data",
                    "data.csv",
                    "--target",
                    "benign",
                    "--classes",
                    "2",
                    "--seed",
                    &(11 + i).to_string(),
                ]
                .iter()
                .map(|a| toml::Value::String(a.to_string()))
                .collect();
                source.insert("command".into(), toml::Value::Array(command));
                let tensor = |name: &str, shape: &[i64]| {
                    let mut t = toml::Table::new();
                    t.insert("name".into(), name.into());
                    t.insert(
                        "shape".into(),
                        toml::Value::Array(shape.iter().map(|&n| n.into()).collect()),
                    );
                    toml::Value::Table(t)
                };
                source.insert(
                    "tensors".into(),
                    toml::Value::Array(vec![
                        tensor("weight", &[2, FEATURES as i64]),
                        tensor("bias", &[2]),
                    ]),
                );
            }
            t.insert("source".into(), toml::Value::Table(source));
            t.insert("export_model".into(), "model.safetensors".into());
        });
    }
    d.run(3, None);

    // Plaintext fixed-point FedAvg over the built-in trainer's updates.
    let mut sources: Vec<node::source::TrainingSource> = (0..3)
        .map(|i| node::source::TrainingSource::open(&trainer(i), values as usize).unwrap())
        .collect();
    let mut model = vec![0i64; values as usize];
    for round in 1..=3u64 {
        let floats = d.plan.decode_model(&model);
        let updates: Vec<(Vec<f32>, u64)> = sources
            .iter_mut()
            .map(|s| {
                let update = node::source::UpdateSource::update(s, round, &floats).unwrap();
                (update.values, update.samples)
            })
            .collect();
        d.plan.fedavg_step(&mut model, &updates).unwrap();
    }
    let expected = hex::encode(model_digest(&model));
    let floats = d.plan.decode_model(&model);
    let layout = training::trainer::Model::Logistic {
        features: FEATURES,
        classes: 2,
    }
    .layout();
    for name in &d.members {
        assert_eq!(
            d.summary(name)["model_digest"].as_str(),
            Some(expected.as_str()),
            "{name}: not bit-identical to plaintext fixed-point FedAvg"
        );
        // The exported model is that model; the built-in trainer's carries the institution's
        // feature scaling beside it (an external trainer keeps its own).
        let bytes = std::fs::read(d.dir.join(name).join("model.safetensors")).unwrap();
        let mut full = layout.clone();
        if name == "member-a" {
            full.push(("scaling.mean".into(), vec![FEATURES]));
            full.push(("scaling.std".into(), vec![FEATURES]));
        }
        let (exported, metadata) = training::tensors::decode(&bytes, &full, name).unwrap();
        assert_eq!(&exported[..values as usize], floats.as_slice(), "{name}");
        assert_eq!(metadata["model_digest"], expected);
        assert_eq!(metadata["round"], "3");
    }
    // And the model is useful: the round report of the institution with held-out rows.
    let report = std::fs::read_to_string(d.dir.join("member-a/rounds.jsonl")).unwrap();
    let rounds: Vec<node::daemon::RoundReport> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(rounds[2].model_digest, expected);
    let evaluation = rounds[2].evaluation.expect("member-a has held-out rows");
    assert_eq!(evaluation.rows, 569);
    assert!(
        evaluation.accuracy() > 0.93,
        "accuracy {}",
        evaluation.accuracy()
    );
    d.audit_verifies();
}

fn source_csv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/data/wdbc.csv")
}
