//! Whole rounds with every role in its own process on loopback: a rehearsed consortium, the
//! coordinator, one node per member. The decrypted models are compared with integer
//! arithmetic, the audit log is verified, and members drop out or crash mid-round.

use std::path::{Path, PathBuf};
use std::process::Child;

use protocol::audit::entry::Body;
use protocol::round::model_digest;

mod deployment;

use deployment::*;

#[test]
fn three_rounds_of_five_members_decrypt_exactly_and_the_log_verifies() {
    let d = deploy(5, 3, 10_000, 3, 120);
    d.run(3, None);
    let everyone: &[u8] = &[0, 1, 2, 3, 4];
    let expected = d.expected_digest(&[everyone, everyone, everyone]);
    // A quorum member recomputes its round's aggregate from the four other contributions, and
    // builds on the model it held from the round before: it never fetches that. A member
    // outside the quorum fetches the aggregate alone, and combines it once the whole quorum,
    // each after recomputing it, logged its release.
    let config = protocol::he::ThresholdConfig::new(5, 3).unwrap();
    let budget = d.plan.budget(config).unwrap();
    // The deployment's ceremony made a key of as many secrets as every ceremony does.
    let shape = budget.ciphertext_shape_under(10_000, keyceremony::derive::SECRETS_PER_KEY);
    let ciphertext = protocol::wire::ciphertext_encoded_len(shape) as u64;
    let log = d.log();
    let Body::Membership(membership) = &log[0].entry.body else {
        panic!("no membership")
    };
    let quorums: Vec<u16> = log
        .iter()
        .filter_map(|e| match e.entry.body {
            Body::DecryptionRequest { quorum, .. } => Some(quorum),
            _ => None,
        })
        .collect();
    assert_eq!(quorums.len(), 3, "one first attempt a round");
    let mut outside = 0;
    for name in &d.members {
        let summary = d.summary(name);
        assert_eq!(summary["rounds"], 3, "{name}");
        assert_eq!(
            summary["model_digest"].as_str(),
            Some(expected.as_str()),
            "{name}"
        );
        let index = membership.members.iter().position(|m| &m.name == name);
        let bit = 1u16 << index.unwrap();
        let fetched: u64 = quorums
            .iter()
            .map(|quorum| if quorum & bit != 0 { 4 } else { 1 })
            .sum();
        outside += quorums.iter().filter(|quorum| *quorum & bit == 0).count();
        assert_eq!(summary["bytes_fetched"], fetched * ciphertext, "{name}");
    }
    assert_eq!(outside, 3 * 2, "two members outside each quorum");
    let coordinator_summary = d.summary("coordinator");
    for round in coordinator_summary["rounds"].as_array().unwrap() {
        assert_eq!(round["contributors"], 5);
        assert_eq!(round["decrypted"], true);
    }
    d.coordinator_held_only_ciphertexts();
    d.audit_verifies();
}

#[test]
fn a_server_optimizer_steps_every_members_model_alike_and_the_next_round_builds_on_it() {
    let d = deploy(5, 3, 2_000, 3, 120).with_optimizer("adam", 100);
    d.run(3, None);
    // Every member holds the plaintext fixed-point FedAdam model of the three rounds...
    let (expected, rounds) = d.expected_from_log();
    assert_eq!(rounds, vec![1, 2, 3]);
    let everyone: Vec<(u8, u64)> = (0..5u8).map(|i| (i, 100 + 10 * u64::from(i))).collect();
    let adam = node::source::synthetic_fedavg(&d.plan, SYNTHETIC_SEED, &vec![everyone.clone(); 3])
        .unwrap();
    assert_eq!(hex::encode(model_digest(&adam)), expected);
    // ...which is not what FedAvg gives.
    let fedavg = protocol::round::RoundPlan {
        optimizer: protocol::round::Optimizer::Fedavg,
        ..d.plan.clone()
    };
    let averaged =
        node::source::synthetic_fedavg(&fedavg, SYNTHETIC_SEED, &vec![everyone; 3]).unwrap();
    assert_ne!(hex::encode(model_digest(&averaged)), expected);
    for name in &d.members {
        assert_eq!(
            d.summary(name)["model_digest"].as_str(),
            Some(expected.as_str()),
            "{name}"
        );
    }
    // Rounds 2 and 3 built on the encryption of the stepped model that every member logged
    // alike, not on the bare aggregate of the round before.
    let log = d.log();
    let steps: Vec<([u8; 32], u64)> = log
        .iter()
        .filter_map(|e| match e.entry.body {
            Body::ServerStep { base, request, .. } => Some((base, request)),
            _ => None,
        })
        .collect();
    for e in &log {
        if let Body::RoundOpen { round, base, .. } = e.entry.body
            && round > 1
        {
            let alike = steps.iter().filter(|(b, _)| *b == base).count();
            assert!(
                alike >= 3,
                "round {round}'s base was stepped by {alike} members"
            );
        }
    }
    d.coordinator_held_only_ciphertexts();
    d.invariants_hold(3);
}

/// Adam at a server rate of 10 moves the model by about 10 a value in its first step, far
/// beyond what one round's aggregate adds to its base (at most the clip, 1, at scale 2^28):
/// rounds 2 and 3 decode exactly only when every member reads them against the model it
/// holds (read against zeros, most values would wrap).
#[test]
fn a_model_beyond_one_rounds_range_is_read_against_the_model_each_round_builds_on() {
    let d = deploy(5, 3, 2_000, 3, 120).with_plan(|plan| {
        plan.optimizer = protocol::round::Optimizer::named("adam").unwrap();
        plan.server_rate_millis = 10_000;
        plan.rounds = 3;
        *plan = plan.clone().sized();
    });
    let budget = d
        .plan
        .budget(protocol::he::ThresholdConfig::new(5, 3).unwrap())
        .unwrap();
    assert!(d.plan.relative_decoding);
    assert_eq!(budget.read_bits(), 29);
    d.run(3, None);
    let (model, rounds) =
        node::reference::synthetic_reference(&d.plan, SYNTHETIC_SEED, &d.log()).unwrap();
    assert_eq!(rounds, vec![1, 2, 3]);
    let beyond = model.iter().filter(|v| v.unsigned_abs() >> 30 != 0).count();
    assert!(beyond > 1_000, "{beyond} values beyond one round's range");
    d.invariants_hold(3);
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
#[test]
fn training_on_real_data_matches_plaintext_fixed_point_fedavg_exactly() {
    const FEATURES: usize = 30;
    let values = (2 * (FEATURES + 1)) as u32;
    let d = deploy(3, 2, values, 3, 120);
    // An IID split: row i goes to institution i mod 3.
    let parts = split_rows(&source_csv(), 3);
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
        let (exported, metadata) = training::tensors::decode(&bytes, &full, &[], name).unwrap();
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

/// Writes a built-in MLP's initial model of `seed` into the deployment, returning its digest.
fn initial_model(d: &Deployment, file: &str, seed: u64) -> String {
    let out = quorate(
        &[
            "model",
            "init",
            "--model",
            "mlp",
            "--features",
            "2",
            "--classes",
            "2",
            "--hidden",
            "2",
            "--seed",
            &seed.to_string(),
            "--out",
            file,
        ],
        &d.dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let digest = text
        .lines()
        .find_map(|l| l.strip_prefix("initial model "))
        .unwrap()
        .to_owned();
    // `inspect` reads the same file to the same digest and plan.
    let out = quorate(&["model", "inspect", file], &d.dir);
    let inspected = String::from_utf8(out.stdout).unwrap();
    assert!(
        inspected.contains(&format!("initial_model = \"{digest}\"")),
        "{inspected}"
    );
    assert!(inspected.contains("values = 12"), "{inspected}");
    digest
}

#[test]
fn a_member_whose_initial_model_is_not_the_plans_does_not_start() {
    // An MLP with 2 features, 2 hidden units and 2 classes: 12 values.
    let d = deploy(3, 2, 12, 1, 60);
    let agreed = initial_model(&d, "agreed.safetensors", 1);
    let other = initial_model(&d, "other-seed.safetensors", 2);
    assert_ne!(agreed, other);
    let source = |file: &str| {
        let mut source = toml::Table::new();
        source.insert("kind".into(), "external".into());
        source.insert("command".into(), toml::Value::Array(vec!["true".into()]));
        source.insert("initial_model".into(), format!("../{file}").into());
        toml::Value::Table(source)
    };
    let start = |name: &str, pinned: Option<&str>, file: Option<&str>| {
        edit_toml(&d.dir.join(name).join("node.toml"), |t| {
            let plan = t["plan"].as_table_mut().unwrap();
            match pinned {
                Some(digest) => plan.insert("initial_model".into(), digest.into()),
                None => plan.remove("initial_model"),
            };
            if let Some(file) = file {
                t.insert("source".into(), source(file));
            }
        });
        let mut node = d.node(name, 1, &[]);
        let status = d.exit_status(&mut node, name, 60);
        assert!(!status.success(), "{name} started");
        std::fs::read_to_string(d.dir.join(name).join("log")).unwrap()
    };
    // Another seed than the plan's: refused before anything is logged, naming both digests.
    let log = start(&d.members[0], Some(&agreed), Some("other-seed.safetensors"));
    assert!(
        log.contains(&format!(
            "this member's initial model is {other}, the plan's is {agreed}"
        )),
        "{log}"
    );
    // Zeros (a synthetic source) against a pinned plan: refused too.
    let log = start(&d.members[1], Some(&agreed), None);
    assert!(log.contains(&format!("the plan's is {agreed}")), "{log}");
    // A model that is not all zeros under a plan that pins none: told what to add.
    let log = start(&d.members[2], None, Some("agreed.safetensors"));
    assert!(
        log.contains(&format!("initial_model = \"{agreed}\"")),
        "{log}"
    );
    // The agreed file under the plan that pins it: the node passes the check and starts.
    edit_toml(&d.dir.join(&d.members[2]).join("node.toml"), |t| {
        let plan = t["plan"].as_table_mut().unwrap();
        plan.insert("initial_model".into(), agreed.as_str().into());
    });
    let mut node = d.node(&d.members[2], 1, &[]);
    let log_path = d.dir.join(&d.members[2]).join("log");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("node running")
    {
        if let Some(status) = node.try_wait().unwrap() {
            panic!(
                "the agreed model was refused ({status}): {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = node.kill();
    let _ = node.wait();
}
