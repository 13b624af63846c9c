//! A rehearsed deployment on loopback for the multi-process tests: the consortium's files,
//! the coordinator and one node per member as processes, their logs, summaries and the log
//! store, and the auditor's verdict. Each test file uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use protocol::audit::entry::{Body, SignedEntry};
use protocol::round::{RoundPlan, model_digest};

/// The seed rehearsals put in their node configurations.
pub const SYNTHETIC_SEED: u64 = 2026;

pub fn quorate(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(args)
        .current_dir(cwd)
        .env_remove("QUORATE_PASSPHRASE")
        .output()
        .expect("quorate runs")
}

/// A CSV file's rows dealt among `parts` institutions (row i to institution i mod parts), each
/// part with the header.
pub fn split_rows(csv: &Path, parts: usize) -> Vec<String> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let mut split = vec![format!("{header}\n"); parts];
    for (i, line) in lines.enumerate() {
        split[i % parts].push_str(line);
        split[i % parts].push('\n');
    }
    split
}

pub struct Deployment {
    _work: tempfile::TempDir,
    pub dir: PathBuf,
    pub members: Vec<String>,
    pub plan: RoundPlan,
}

pub fn edit_toml(path: &Path, edit: impl FnOnce(&mut toml::Table)) {
    let mut table: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    edit(&mut table);
    std::fs::write(path, toml::to_string(&table).unwrap()).unwrap();
}

/// A rehearsed consortium whose configurations run `rounds` rounds of `values` values.
pub fn deploy(
    members: u8,
    threshold: u8,
    values: u32,
    rounds: u64,
    deadline_secs: i64,
) -> Deployment {
    let plan = RoundPlan {
        values,
        ..RoundPlan::default()
    }
    .sized();
    deploy_rehearsed(
        members,
        threshold,
        &["--values", &values.to_string()],
        rounds,
        deadline_secs,
        plan,
        |_| {},
    )
}

/// A consortium rehearsed with `rehearse` (more arguments of `ceremony rehearse`), whose
/// configurations carry `plan`; `prepare` sees the working directory before the rehearsal.
pub fn deploy_rehearsed(
    members: u8,
    threshold: u8,
    rehearse: &[&str],
    rounds: u64,
    deadline_secs: i64,
    plan: RoundPlan,
    prepare: impl FnOnce(&Path),
) -> Deployment {
    let mut work = tempfile::tempdir().unwrap();
    // QUORATE_KEEP_DEPLOYMENTS=1 keeps each deployment's directory, logs and stores, to read
    // after a failure.
    if std::env::var_os("QUORATE_KEEP_DEPLOYMENTS").is_some() {
        work.disable_cleanup(true);
        eprintln!("deployment kept in {}", work.path().display());
    }
    prepare(work.path());
    let (members_arg, threshold_arg) = (members.to_string(), threshold.to_string());
    let mut args = vec![
        "ceremony",
        "rehearse",
        "--members",
        &members_arg,
        "--threshold",
        &threshold_arg,
        "--out",
        "deployment",
    ];
    args.extend_from_slice(rehearse);
    let out = quorate(&args, work.path());
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
    Deployment {
        _work: work,
        dir,
        members: names,
        plan,
    }
}

impl Deployment {
    /// The same consortium under a server optimizer (by `--optimizer` name) at this server
    /// rate: every configuration's plan names it.
    pub fn with_optimizer(self, name: &str, server_rate_millis: u32) -> Self {
        self.with_plan(|plan| {
            plan.optimizer = protocol::round::Optimizer::named(name).expect("an optimizer");
            plan.server_rate_millis = server_rate_millis;
        })
    }

    /// The plan changed by `edit` in every configuration.
    pub fn with_plan(mut self, edit: impl FnOnce(&mut RoundPlan)) -> Self {
        edit(&mut self.plan);
        let plan = toml::Value::try_from(&self.plan).unwrap();
        let mut configs = vec![self.dir.join("coordinator/coordinator.toml")];
        configs.extend(
            self.members
                .iter()
                .map(|m| self.dir.join(m).join("node.toml")),
        );
        for config in &configs {
            edit_toml(config, |t| {
                t.insert("plan".into(), plan.clone());
            });
        }
        self
    }

    pub fn spawn(&self, args: &[&str], log: &str) -> Child {
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

    /// Starts `quorate ARGS` unable to grow any file past `bytes` (the kernel refuses the
    /// write, as on a full disk: SIGXFSZ is ignored, so the write fails with EFBIG).
    pub fn spawn_on_a_full_disk(&self, args: &[&str], log: &str, bytes: u64) -> Child {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; exec prlimit --fsize=\"$0\" -- \"$@\"")
            .arg(bytes.to_string())
            .arg(env!("CARGO_BIN_EXE_quorate"))
            .args(args)
            .current_dir(&self.dir)
            .env_remove("QUORATE_PASSPHRASE")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn coordinator(&self) -> Child {
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

    pub fn node(&self, name: &str, until: u64, extra: &[&str]) -> Child {
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

    /// A node restarted with its state (no `--until-round`), its log to `log`.
    pub fn restart_node(&self, name: &str, log: &str) -> Child {
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
            &format!("{name}/{log}"),
        )
    }

    /// A node with no `--until-round`: it runs until the coordinator's run is over.
    pub fn node_until_run_over(&self, name: &str) -> Child {
        self.restart_node(name, "log")
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for name in std::iter::once("coordinator").chain(self.members.iter().map(String::as_str)) {
            for log in ["log", "log-restarted"] {
                let Ok(text) = std::fs::read_to_string(self.dir.join(name).join(log)) else {
                    continue;
                };
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                all.push_str(&format!("== {name} ({log})\n"));
                for line in tail.iter().rev() {
                    all.push_str(line);
                    all.push('\n');
                }
            }
        }
        all
    }

    pub fn wait(&self, child: &mut Child, what: &str, seconds: u64) -> bool {
        self.exit_status(child, what, seconds).success()
    }

    /// How the process ended; kills it and fails the test after `seconds`.
    pub fn exit_status(&self, child: &mut Child, what: &str, seconds: u64) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(seconds) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish in {seconds} s\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most two minutes) until `member` has reported round `round` decrypted.
    pub fn wait_for_round(&self, member: &str, round: u64) {
        let report = self.dir.join(member).join("rounds.jsonl");
        let started = Instant::now();
        while !std::fs::read_to_string(&report)
            .unwrap_or_default()
            .lines()
            .any(|line| line.contains(&format!("\"round\":{round},")))
        {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{member} reported no round {round}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the coordinator and every node until `rounds` rounds are done. A member with a
    /// fault injected is expected to crash; everyone else must exit successfully.
    pub fn run(&self, rounds: u64, faulty: Option<(&str, &str)>) {
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

    pub fn summary(&self, name: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join(name).join("summary.json")).unwrap())
            .unwrap()
    }

    /// The model after rounds whose contributors are listed, by member index.
    pub fn expected_digest(&self, rounds: &[&[u8]]) -> String {
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
    pub fn log(&self) -> Vec<SignedEntry> {
        let store =
            coordinator::store::LogStore::open(&self.dir.join("coordinator/log-store")).unwrap();
        store
            .leaves()
            .unwrap()
            .iter()
            .map(|l| SignedEntry::open(l).unwrap())
            .collect()
    }

    pub fn member_key(&self, name: &str) -> [u8; 32] {
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

    pub fn audit_verifies(&self) {
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
    pub fn coordinator_held_only_ciphertexts(&self) {
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

/// Which process of a deployment a fault is injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Coordinator,
    Node(&'a str),
}

impl Deployment {
    fn start(&self, target: Target, fault: Option<&str>, log: &str) -> Child {
        let fault: Vec<&str> = fault.map(|f| vec!["--fault", f]).unwrap_or_default();
        match target {
            Target::Coordinator => {
                let mut args = vec![
                    "coordinator",
                    "run",
                    "--config",
                    "coordinator/coordinator.toml",
                    "--summary",
                    "coordinator/summary.json",
                ];
                args.extend(fault);
                self.spawn(&args, &format!("coordinator/{log}"))
            }
            Target::Node(name) => {
                let config = format!("{name}/node.toml");
                let summary = format!("{name}/summary.json");
                let report = format!("{name}/rounds.jsonl");
                let mut args = vec![
                    "node",
                    "run",
                    "--config",
                    &config,
                    "--summary",
                    &summary,
                    "--round-report",
                    &report,
                ];
                args.extend(fault);
                self.spawn(&args, &format!("{name}/{log}"))
            }
        }
    }

    /// Runs the whole deployment (nodes leave when the coordinator's run is over) with `fault`
    /// injected into `target`. A process the fault takes down (it must go down, unless the
    /// fault only delays or cuts off) is restarted without it a moment later, with its state,
    /// as an operator or a service manager would. Returns whether the target went down.
    pub fn run_through(&self, target: Target, fault: &str) -> bool {
        let targets: Vec<Target> = std::iter::once(Target::Coordinator)
            .chain(self.members.iter().map(|m| Target::Node(m)))
            .collect();
        let mut children: Vec<Child> = targets
            .iter()
            .map(|&t| self.start(t, (t == target).then_some(fault), "log"))
            .collect();
        let mut restarted = false;
        let started = Instant::now();
        let mut done = vec![false; targets.len()];
        while !done.iter().all(|&d| d) {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the run did not finish in 300 s\n{}",
                self.logs()
            );
            for (i, child) in children.iter_mut().enumerate() {
                if done[i] {
                    continue;
                }
                let Some(status) = child.try_wait().unwrap() else {
                    continue;
                };
                if targets[i] == target && !restarted && !status.success() {
                    restarted = true;
                    std::thread::sleep(Duration::from_millis(300));
                    *child = self.start(target, None, "log-restarted");
                    continue;
                }
                assert!(
                    status.success(),
                    "{:?} exited with {status}\n{}",
                    targets[i],
                    self.logs()
                );
                done[i] = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        restarted
    }

    /// The model the log says every member holds, computed in plaintext
    /// (`node::reference`), and the rounds it is made of.
    pub fn expected_from_log(&self) -> (String, Vec<u64>) {
        let (model, rounds) =
            node::reference::synthetic_reference(&self.plan, SYNTHETIC_SEED, &self.log()).unwrap();
        (hex::encode(model_digest(&model)), rounds)
    }

    /// What must hold after any fault: every member ends with the model the log's decrypted
    /// rounds give in plaintext (at least `min_rounds` of them), bit for bit; no member
    /// released a share of a ciphertext twice; every entry a member holds (so every entry it
    /// was told was logged) is still in the coordinator's log; and the exported log verifies.
    pub fn invariants_hold(&self, min_rounds: usize) {
        let (expected, rounds) = self.expected_from_log();
        assert!(
            rounds.len() >= min_rounds,
            "only rounds {rounds:?} decrypted\n{}",
            self.logs()
        );
        for name in &self.members {
            assert_eq!(
                self.summary(name)["model_digest"].as_str(),
                Some(expected.as_str()),
                "{name} (the log decrypted rounds {rounds:?})\n{}",
                self.logs()
            );
        }
        let log = self.log();
        let twice = node::reference::double_releases(&log);
        assert!(twice.is_empty(), "shares released twice: {twice:?}");
        let leaves: Vec<Vec<u8>> = log.iter().map(|e| e.leaf().to_vec()).collect();
        for name in &self.members {
            let store =
                node::state_store::StateStore::open(&self.dir.join(name).join("node-store"))
                    .unwrap();
            let held = store.leaves().unwrap();
            assert!(
                held.len() <= leaves.len() && held[..] == leaves[..held.len()],
                "{name} holds {} entries that are not the coordinator's first ones",
                held.len()
            );
        }
        self.audit_verifies();
    }
}

/// Sends `signal` (TERM, INT) to a process, as a service manager or a terminal would.
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {signal} {}", child.id());
}
