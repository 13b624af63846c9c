//! `quorate audit` as a user runs it: real processes on real files.

use std::path::Path;
use std::process::{Command, Output};

fn quorate(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("quorate runs")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited normally")
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).unwrap() {
        let path = item.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn verify_accepts_an_intact_log_and_rejects_a_flipped_byte_in_any_file() {
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("log");
    let made = quorate(&["audit", "example", "--out", "log"], work.path());
    assert_eq!(code(&made), 0, "{}", String::from_utf8_lossy(&made.stderr));
    let verified = quorate(&["audit", "verify", "log"], work.path());
    assert_eq!(
        code(&verified),
        0,
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains("OK: every check holds"));

    let json = quorate(&["audit", "verify", "log", "--json"], work.path());
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["findings"].as_array().unwrap().len(), 0);
    assert_eq!(report["decryptions"].as_array().unwrap().len(), 3);

    // One flipped byte in every file of the export, one file at a time.
    for file in files_under(&log) {
        let original = std::fs::read(&file).unwrap();
        let mut tampered = original.clone();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 0x04;
        std::fs::write(&file, &tampered).unwrap();
        let result = quorate(&["audit", "verify", "log"], work.path());
        assert_ne!(
            code(&result),
            0,
            "a flip in {} went unnoticed",
            file.display()
        );
        assert_ne!(
            code(&result),
            1,
            "tampering is a violation, not a crash: {}",
            file.display()
        );
        std::fs::write(&file, &original).unwrap();
    }

    // A missing entry file is a gap; a stray file is a format violation.
    let entry = log.join("entries").join("00000000000000000007.entry");
    let saved = std::fs::read(&entry).unwrap();
    std::fs::remove_file(&entry).unwrap();
    assert_eq!(code(&quorate(&["audit", "verify", "log"], work.path())), 14);
    std::fs::write(&entry, saved).unwrap();
    std::fs::write(log.join("notes.txt"), "hello").unwrap();
    assert_eq!(code(&quorate(&["audit", "verify", "log"], work.path())), 10);
}

#[test]
fn a_rollback_against_a_trusted_checkpoint_writes_evidence() {
    let work = tempfile::tempdir().unwrap();
    assert_eq!(
        code(&quorate(&["audit", "example", "--out", "log"], work.path())),
        0
    );
    let checkpoints = files_under(&work.path().join("log").join("checkpoints"));
    let latest = checkpoints.last().unwrap().clone();
    std::fs::copy(&latest, work.path().join("trusted")).unwrap();
    // Show the auditor an older state of the log: drop the newest checkpoint and entries.
    std::fs::remove_file(&latest).unwrap();
    let keep: u64 = checkpoints[checkpoints.len() - 2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    for entry in files_under(&work.path().join("log").join("entries")) {
        let index: u64 = entry
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if index >= keep {
            std::fs::remove_file(entry).unwrap();
        }
    }
    let result = quorate(
        &[
            "audit",
            "verify",
            "log",
            "--trusted",
            "trusted",
            "--evidence",
            "evidence.txt",
        ],
        work.path(),
    );
    assert_eq!(
        code(&result),
        13,
        "{}",
        String::from_utf8_lossy(&result.stdout)
    );
    let evidence = std::fs::read_to_string(work.path().join("evidence.txt")).unwrap();
    assert_eq!(
        evidence
            .matches("\u{2014} quorate.example/sample-log")
            .count(),
        2
    );
}

#[test]
fn export_writes_what_the_coordinator_stored() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let sample = protocol::audit::sample::honest_log(1);
    {
        let mut log = coordinator::audit_log::AuditLog::open(&store, &sample.origin).unwrap();
        for leaf in sample.log.leaves() {
            log.append(protocol::audit::entry::SignedEntry::open(leaf).unwrap())
                .unwrap();
        }
        for (size, note) in &sample.checkpoints {
            log.store().put_checkpoint(*size, note).unwrap();
        }
    }
    let exported = quorate(
        &["audit", "export", "--store", "store", "--out", "audit"],
        work.path(),
    );
    assert_eq!(
        code(&exported),
        0,
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    assert_eq!(
        code(&quorate(&["audit", "verify", "audit"], work.path())),
        0
    );
    // Exporting over an existing export is refused rather than mixing two logs.
    let again = quorate(
        &["audit", "export", "--store", "store", "--out", "audit"],
        work.path(),
    );
    assert_eq!(code(&again), 1);
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}
