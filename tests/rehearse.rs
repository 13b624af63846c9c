//! `quorate ceremony rehearse`: a whole ceremony with every member its own process, talking
//! libp2p on loopback; then the transcript and the ceremony's audit log verify, and tampering
//! with either is caught.

use std::path::Path;
use std::process::{Command, Output};

fn quorate(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(args)
        .current_dir(cwd)
        .env_remove("QUORATE_PASSPHRASE")
        .output()
        .expect("quorate runs")
}

#[test]
fn a_rehearsed_ceremony_verifies_and_so_does_its_audit_log() {
    let work = tempfile::tempdir().unwrap();
    let out = quorate(
        &[
            "ceremony",
            "rehearse",
            "--members",
            "3",
            "--threshold",
            "2",
            "--out",
            "rehearsal",
            "--timeout",
            "60",
        ],
        work.path(),
    );
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = work.path().join("rehearsal");
    for member in ["member-a", "member-b", "member-c"] {
        assert!(
            dir.join(member).join("key-share").exists(),
            "{member} has no sealed share"
        );
    }
    assert!(
        dir.join("passphrase").exists(),
        "the throwaway passphrase is kept for the admin"
    );

    let verified = quorate(&["ceremony", "verify", "rehearsal/transcript"], work.path());
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let audited = quorate(&["audit", "verify", "rehearsal/audit"], work.path());
    assert!(
        audited.status.success(),
        "{}",
        String::from_utf8_lossy(&audited.stdout)
    );

    let mut transcript = std::fs::read(dir.join("transcript")).unwrap();
    let middle = transcript.len() / 3;
    transcript[middle] ^= 0x10;
    std::fs::write(dir.join("transcript"), transcript).unwrap();
    let tampered = quorate(&["ceremony", "verify", "rehearsal/transcript"], work.path());
    assert_eq!(tampered.status.code(), Some(20));
}
