//! Real PyTorch trainers on loopback: a CNN with BatchNorm, each institution's own process in
//! persistent mode, from an initial model whose digest the plan pins, with the consortium's
//! pooled feature scaling. The test installs PyTorch with the project's own script and fails,
//! never skips, when it cannot.

use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::round::{RoundPlan, model_digest};

mod deployment;

use deployment::*;

/// The Python that runs the trainers, from `scripts/setup-pytorch` (CPU-only torch, reused).
fn pytorch() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-pytorch");
    let out = Command::new(&script)
        .output()
        .expect("scripts/setup-pytorch runs");
    assert!(
        out.status.success(),
        "this test needs PyTorch, which {} installs; it failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The statistics round, then three rounds of training.
const ROUNDS: u64 = 4;
const FEATURES: usize = 64;
const HELD_OUT: usize = 60;

#[test]
fn pytorch_cnns_with_batchnorm_and_pooled_scaling_in_persistent_mode_match_plaintext_fedavg() {
    let python = pytorch();
    let trainers = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/trainers");
    let cnn = trainers.join("pytorch_cnn.py");
    let trainer = format!(
        "{} {} --data data.csv --test-data test.csv --keep-updates kept",
        python.display(),
        cnn.display()
    );
    let mut d = deploy_rehearsed(
        3,
        2,
        &[
            "--initial-model",
            "initial.safetensors",
            "--trainer",
            &trainer,
            "--trainer-mode",
            "persistent",
            "--scaling-features",
            "64",
        ],
        ROUNDS,
        120,
        RoundPlan::default(),
        |work| {
            let status = Command::new(&python)
                .arg(&cnn)
                .args(["--init", "initial.safetensors", "--seed", "4"])
                .current_dir(work)
                .status()
                .unwrap();
            assert!(status.success());
        },
    );
    // The plan the rehearsal wrote: values and the initial model's digest from the file.
    let coordinator: toml::Table =
        std::fs::read_to_string(d.dir.join("coordinator/coordinator.toml"))
            .unwrap()
            .parse()
            .unwrap();
    d.plan = coordinator["plan"].clone().try_into().unwrap();
    let initial = training::tensors::read_model(&d.dir.join("../initial.safetensors")).unwrap();
    let region = training::scaling::region_size(FEATURES);
    let parameters = initial.values.len();
    assert_eq!(d.plan.values as usize, parameters + region);
    assert!(d.plan.initial_model.is_some());
    // BatchNorm's counter is kept, not federated; its running statistics are federated.
    assert_eq!(initial.kept.len(), 1);
    assert!(initial.kept[0].name.ends_with("num_batches_tracked"));
    assert!(
        initial
            .layout
            .iter()
            .any(|(n, _)| n.ends_with("running_var"))
    );

    // Digits, split by row among the three institutions; each holds out its last 60 rows.
    let parts = split_rows(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/data/digits.csv"),
        3,
    );
    for (i, name) in d.members.iter().enumerate() {
        let rows: Vec<&str> = parts[i].lines().collect();
        let header = rows[0];
        let (train, test) = rows[1..].split_at(rows.len() - 1 - HELD_OUT);
        std::fs::write(
            d.dir.join(name).join("data.csv"),
            format!("{header}\n{}\n", train.join("\n")),
        )
        .unwrap();
        std::fs::write(
            d.dir.join(name).join("test.csv"),
            format!("{header}\n{}\n", test.join("\n")),
        )
        .unwrap();
        edit_toml(&d.dir.join(name).join("node.toml"), |t| {
            let source = t["source"].as_table_mut().unwrap();
            assert_eq!(source["mode"].as_str(), Some("persistent"));
            // No tensor list: the node reads it from the initial model.
            assert!(!source.contains_key("tensors"));
            assert_eq!(source["pooled_scaling"]["data"].as_str(), Some("data.csv"));
            assert_eq!(source["pooled_scaling"]["target"].as_str(), Some("label"));
            t.insert("export_model".into(), "export.safetensors".into());
        });
    }
    d.run(ROUNDS, None);

    // The reference: plaintext fixed-point FedAvg over the rounds and contributors the log
    // decrypted, of each member's moments of its log-transformed pixels in the statistics
    // round, then of the very updates each trainer wrote (kept copies).
    let chain = node::reference::decrypted_chain(&d.log()).unwrap();
    assert_eq!(chain.len() as u64, ROUNDS, "{chain:?}");
    assert_eq!(chain[0].0, 1);
    let mut model = vec![0i64; d.plan.values as usize];
    for (round, contributors) in &chain {
        let updates: Vec<(Vec<f32>, u64)> = contributors
            .iter()
            .map(|&(member, samples)| {
                let dir = d.dir.join(&d.members[usize::from(member)]);
                let mut values = if *round == 1 {
                    let mut rows = training::data::load_features(
                        &dir.join("data.csv"),
                        "label",
                        training::data::Impute::Refuse,
                        &Default::default(),
                    )
                    .unwrap();
                    assert_eq!(rows.rows() as u64, samples);
                    rows.log_transform();
                    let mut values = vec![0.0; parameters];
                    values.extend(training::scaling::local_statistics(&rows));
                    values
                } else {
                    let path = dir.join(format!("kept/update-{round}.safetensors"));
                    let (values, _) =
                        training::tensors::read_file(&path, &initial.layout, &initial.kept)
                            .unwrap();
                    values
                };
                values.resize(parameters + region, 0.0);
                (values, samples)
            })
            .collect();
        d.plan.fedavg_step(&mut model, &updates).unwrap();
    }
    let expected = hex::encode(model_digest(&model));
    let global = d.plan.decode_model(&model);
    let trained: Vec<f32> = initial
        .values
        .iter()
        .zip(&global)
        .map(|(i, g)| i + g)
        .collect();
    // The scaling every trainer was handed, and every export carries.
    let stats = training::scaling::pooled(&global[parameters..], FEATURES).unwrap();
    let scaling: Vec<f32> = training::scaling::scaling_tensors(&stats)
        .into_iter()
        .flat_map(|(_, v)| v)
        .collect();
    let mut export_layout = initial.layout.clone();
    export_layout.push(("scaling.mean".into(), vec![FEATURES]));
    export_layout.push(("scaling.std".into(), vec![FEATURES]));
    for name in &d.members {
        assert_eq!(d.summary(name)["model_digest"], expected.as_str(), "{name}");
        // The export loads with a strict load_state_dict: every tensor, the counter included.
        let export =
            training::tensors::read_model(&d.dir.join(name).join("export.safetensors")).unwrap();
        assert_eq!(export.kept, initial.kept, "{name}");
        let (values, metadata) = training::tensors::read_file(
            &d.dir.join(name).join("export.safetensors"),
            &export_layout,
            &initial.kept,
        )
        .unwrap();
        assert_eq!(
            values[..parameters],
            trained[..],
            "{name}: the export is initial + FedAvg"
        );
        assert_eq!(
            values[parameters..],
            scaling[..],
            "{name}: the pooled scaling"
        );
        assert_eq!(metadata["scaling"], training::scaling::POOLED_FORMULA);
        // As the README loads it: the scaling popped, the rest strictly the network's.
        let check = Command::new(&python)
            .arg("-c")
            .arg(format!(
                "import sys; sys.path.insert(0, {trainers:?}); import pytorch_cnn, torch; \
                 from safetensors.torch import load_file; \
                 s = load_file({:?}); mean, std = s.pop('scaling.mean'), s.pop('scaling.std'); \
                 assert mean.shape == (64,) and bool((std > 0).all()); \
                 m = pytorch_cnn.network(); m.load_state_dict(s, strict=True); \
                 import quorate_trainer as q; q._load_scaling({:?}); sc = q.scaling(); \
                 assert torch.equal(sc['mean'], mean) and torch.equal(sc['std'], std); \
                 x, y, cols = q.load_csv({:?}, 'label', columns=True); \
                 z = (torch.sign(x) * torch.log1p(x.abs()) - mean) / std; \
                 assert torch.allclose(q.scale(x, cols), z); \
                 refused = False\n\
                 try: q.scale(x, cols[::-1])\n\
                 except ValueError: refused = True\n\
                 assert refused, 'columns in another order were taken'",
                d.dir.join(name).join("export.safetensors"),
                d.dir
                    .join(name)
                    .join("node-store/trainer/scaling.safetensors"),
                d.dir.join(name).join("data.csv"),
            ))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        // The trainer measured each decrypted model on its held-out rows, for the round report.
        let report = std::fs::read_to_string(d.dir.join(name).join("rounds.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(report.lines().last().unwrap()).unwrap();
        assert_eq!(last["round"], ROUNDS);
        assert_eq!(last["evaluation"]["rows"], HELD_OUT as u64, "{last}");
        let correct = last["evaluation"]["correct"].as_u64().unwrap();
        // Ten classes: chance is 6 of 60; a trained CNN gets most right.
        assert!(
            correct > 30,
            "{name}: {correct} of {HELD_OUT} correct\n{report}"
        );
        assert!(
            last["trainer_metrics"]["seconds"].as_f64().is_some(),
            "{last}"
        );
        let clipped = last["clipped_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&clipped), "{last}");
        // Each institution's trainer was started once for the whole run.
        let trainer_log =
            std::fs::read_to_string(d.dir.join(name).join("node-store/trainer/trainer.log"))
                .unwrap();
        assert_eq!(
            trainer_log.matches("serving requests").count(),
            1,
            "{trainer_log}"
        );
        // It scaled its pixels with the consortium's statistics, handed over with the requests.
        assert!(
            trainer_log.contains("pooled scaling of 64 features is in force"),
            "{trainer_log}"
        );
    }
    d.audit_verifies();
}
