//! `quorate demo` as a newcomer runs it, with small settings: the whole consortium as
//! processes, then the report's checks, the exported models and the plot.

use std::path::Path;
use std::process::{Command, Output};

fn demo(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .arg("demo")
        .args(args)
        .current_dir(cwd)
        .env_remove("QUORATE_PASSPHRASE")
        .env("RUST_LOG", "warn")
        .output()
        .expect("quorate runs")
}

/// Runs the demo, which must succeed; its standard output.
fn demo_succeeds(args: &[&str], cwd: &Path) -> String {
    let out = demo(args, cwd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap()
}

/// The checks a report must pass, and the files beside it.
fn assert_complete(
    out: &Path,
    institutions: &[&str],
    rounds: u64,
    parameters: usize,
    least_accuracy: f64,
) {
    let report = report(out);
    for check in [
        "bitexact_vs_fixed_point",
        "audit_verified",
        "transcript_verified",
        "within_half_point_of_float",
        "all_checks_passed",
    ] {
        assert_eq!(report[check], true, "{check}: {report:#}");
    }
    assert_eq!(report["rounds"], rounds);
    assert_eq!(report["institutions"], institutions.len());
    let per_round = report["per_round"].as_array().unwrap();
    // The first round pools the feature statistics; then the training rounds.
    assert_eq!(per_round.len() as u64, rounds + 1);
    assert_eq!(per_round[0]["phase"], "statistics");
    for (i, round) in per_round.iter().enumerate() {
        assert_eq!(round["round"], i as u64 + 1);
        if i > 0 {
            assert_eq!(round["phase"], "training");
        }
        assert_eq!(round["contributors"], institutions.len());
        assert!(round["bytes"].as_u64().unwrap() > 0, "{round}");
        assert!(round["seconds"].as_f64().unwrap() > 0.0, "{round}");
        let accuracy = round["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{round}");
        assert_eq!(round["accuracy"], round["fixed_point_accuracy"], "{round}");
    }
    let final_accuracy = report["final_accuracy"].as_f64().unwrap();
    assert!(
        final_accuracy >= least_accuracy,
        "final accuracy {final_accuracy}"
    );
    let last_digest = per_round.last().unwrap()["model_digest"].as_str().unwrap();
    // Each institution's final model, as safetensors, is the decrypted model of the last round.
    let mut scaling: Option<Vec<u8>> = None;
    for name in institutions {
        let bytes = std::fs::read(out.join("models").join(format!("{name}.safetensors")))
            .unwrap_or_else(|e| panic!("{name}'s model: {e}"));
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
        assert_eq!(header["__metadata__"]["model_digest"], last_digest);
        assert_eq!(header["__metadata__"]["round"], (rounds + 1).to_string());
        assert!(
            header["__metadata__"]["scaling"]
                .as_str()
                .unwrap()
                .contains("ln(1 + |x|)")
        );
        let values: usize = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.starts_with("__") && !k.starts_with("scaling."))
            .map(|(_, t)| {
                t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .product::<usize>()
            })
            .sum();
        assert_eq!(values, parameters, "{name}");
        // The pooled scaling is the consortium's: the same at every institution.
        let offsets = &header["scaling.mean"]["data_offsets"];
        let (start, end) = (
            8 + header_len + offsets[0].as_u64().unwrap() as usize,
            8 + header_len + offsets[1].as_u64().unwrap() as usize,
        );
        let mean = bytes[start..end].to_vec();
        assert!(!mean.is_empty());
        match &scaling {
            None => scaling = Some(mean),
            Some(first) => assert_eq!(first, &mean, "{name}'s scaling"),
        }
    }
    assert!(out.join("transcript").is_file());
    for exported in ["FORMAT", "entries", "checkpoints"] {
        assert!(
            out.join("audit").join(exported).exists(),
            "audit/{exported}"
        );
    }
    // Each institution alone against the consortium, on its own held-out rows: the
    // consortium's figures are its node's, and pooled they are the final accuracy.
    let per_institution = report["per_institution"].as_array().unwrap();
    let names: Vec<&str> = per_institution
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, institutions);
    let (mut correct, mut rows) = (0.0, 0.0);
    for i in per_institution {
        let alone = i["alone_accuracy"].as_f64().unwrap();
        let consortium = i["consortium_accuracy"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&alone) && (0.0..=1.0).contains(&consortium),
            "{i}"
        );
        let gain = i["gain_points"].as_f64().unwrap();
        assert!((gain - 100.0 * (consortium - alone)).abs() < 1e-9, "{i}");
        let held_out = i["held_out_rows"].as_u64().unwrap() as f64;
        correct += consortium * held_out;
        rows += held_out;
    }
    assert!(
        (correct / rows - final_accuracy).abs() < 1e-9,
        "{per_institution:?}"
    );
    let svg = std::fs::read_to_string(out.join("accuracy.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2, "encrypted and float");
    for bar in ["class=\"alone\"", "class=\"consortium\""] {
        assert_eq!(svg.matches(bar).count(), institutions.len(), "{bar}");
    }
}

#[test]
fn the_demo_trains_exactly_and_verifies_its_log() {
    let work = tempfile::tempdir().unwrap();
    let stdout = demo_succeeds(
        &["--rounds", "3", "--split", "skewed", "--out", "run"],
        work.path(),
    );
    // The live table printed a row per round.
    for round in 1..=4 {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{round} "))),
            "{stdout}"
        );
    }
    let run = work.path().join("run");
    // Under label skew too: the pooled scaling keeps features comparable across institutions.
    assert_complete(&run, &["member-a", "member-b", "member-c"], 3, 62, 0.9);
    assert_eq!(report(&run)["split"], "skewed");

    // Running again replaces an earlier demo's output, and nothing else.
    let again = demo(&["--rounds", "1", "--out", "run"], work.path());
    assert!(again.status.success());
    assert_eq!(report(&run)["rounds"], 1);
    std::fs::create_dir(work.path().join("mine")).unwrap();
    std::fs::write(work.path().join("mine/notes.txt"), "keep").unwrap();
    let refused = demo(&["--rounds", "1", "--out", "mine"], work.path());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not an earlier demo's output"));
    assert!(work.path().join("mine/notes.txt").exists());
    // Files someone added to a demo's directory survive its replacement.
    std::fs::write(run.join("notes.txt"), "keep").unwrap();
    assert!(
        demo(&["--rounds", "1", "--out", "run"], work.path())
            .status
            .success()
    );
    assert!(run.join("notes.txt").exists());
}

/// A server optimizer: every member applies FedAdam to each decrypted average and ends
/// bit-identical to plaintext fixed-point FedAdam, beside float FedAdam.
#[test]
fn the_demo_trains_with_fedadam_exactly_and_reports_it() {
    let work = tempfile::tempdir().unwrap();
    let stdout = demo_succeeds(
        &[
            "--optimizer",
            "adam",
            "--dataset",
            "digits",
            "--split",
            "skewed",
            "--institutions",
            "5",
            "--threshold",
            "3",
            "--rounds",
            "3",
            "--out",
            "adam",
        ],
        work.path(),
    );
    assert!(stdout.contains("float FedAdam"), "{stdout}");
    assert!(
        stdout.contains("bit-identical to plaintext fixed-point FedAdam: yes"),
        "{stdout}"
    );
    let run = work.path().join("adam");
    let members = ["member-a", "member-b", "member-c", "member-d", "member-e"];
    assert_complete(&run, &members, 3, 650, 0.85);
    let report = report(&run);
    assert_eq!(report["optimizer"], "adam");
    assert_eq!(report["server_rate"], 0.1);
    assert!(report["baseline_float_accuracy"].as_f64().unwrap() > 0.85);
}

/// One CSV file per institution (a natural split), an MLP, and a file that does not parse.
#[test]
fn the_demo_trains_on_a_directory_of_institution_files() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("hospitals");
    std::fs::create_dir(&data).unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/data/wdbc.csv"),
    )
    .unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let names = ["north", "south"];
    // With a categorical column, one-hot encoded from the agreed categories.
    let mut files = vec![format!("{header},clinic\n"); 2];
    for (i, line) in lines.enumerate() {
        files[i % 2].push_str(line);
        files[i % 2].push_str(if i % 3 == 0 { ",day\n" } else { ",night\n" });
    }
    for (name, file) in names.iter().zip(&files) {
        std::fs::write(data.join(format!("{name}.csv")), file).unwrap();
    }
    demo_succeeds(
        &[
            "--data-dir",
            "hospitals",
            "--target",
            "benign",
            "--threshold",
            "2",
            "--model",
            "mlp",
            "--hidden",
            "8",
            "--category",
            "clinic=day,night",
            "--rounds",
            "2",
            "--out",
            "natural",
        ],
        work.path(),
    );
    let run = work.path().join("natural");
    assert_complete(&run, &names, 2, 8 * 33 + 2 * 9, 0.9);
    assert_eq!(report(&run)["members"][1]["name"], "south");

    // A ragged row: the error names the institution's file and the row, before anything runs.
    let mut broken = files[1].clone();
    broken.push_str("1.0,2.0\n");
    std::fs::write(data.join("south.csv"), broken).unwrap();
    let out = demo(
        &[
            "--data-dir",
            "hospitals",
            "--target",
            "benign",
            "--category",
            "clinic=day,night",
            "--out",
            "broken",
        ],
        work.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("south.csv, row 286: 2 fields, the header has 32"),
        "{stderr}"
    );
    // A target column the files do not have.
    let out = demo(
        &[
            "--data-dir",
            "hospitals",
            "--target",
            "diagnosis",
            "--out",
            "x",
        ],
        work.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no column named \"diagnosis\""), "{stderr}");
}
