//! `quorate ceremony keygen` and `sign` as admins run them, in separate processes.

use std::path::Path;
use std::process::{Command, Output};

fn quorate(args: &[&str], cwd: &Path, passphrase: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(args)
        .current_dir(cwd)
        .env("QUORATE_PASSPHRASE", passphrase)
        .output()
        .expect("quorate runs")
}

#[test]
fn admins_create_identities_and_approve_the_consortium_file() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let coordinator = quorate(
        &[
            "ceremony",
            "keygen",
            "--name",
            "coordinator",
            "--role",
            "coordinator",
            "--address",
            "/ip4/127.0.0.1/tcp/7400",
            "--out",
            "coordinator.id",
        ],
        dir,
        "pass-c",
    );
    assert!(
        coordinator.status.success(),
        "{}",
        String::from_utf8_lossy(&coordinator.stderr)
    );
    let mut file = String::from(
        "name = \"test\"\nparameter_set = \"quorate-rlwe128-v1\"\nthreshold = 2\nk_min = 2\n\n",
    );
    file.push_str(&String::from_utf8(coordinator.stdout).unwrap());
    for (i, member) in ["lab-a", "lab-b", "lab-c"].iter().enumerate() {
        let address = format!("/ip4/127.0.0.1/tcp/{}", 7401 + i);
        let out = quorate(
            &[
                "ceremony",
                "keygen",
                "--name",
                member,
                "--address",
                &address,
                "--out",
                &format!("{member}.id"),
            ],
            dir,
            &format!("pass-{member}"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        file.push('\n');
        file.push_str(&String::from_utf8(out.stdout).unwrap());
    }
    // Identities are sealed and owner-only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("lab-a.id"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // An identity is never overwritten.
    let again = quorate(
        &[
            "ceremony",
            "keygen",
            "--name",
            "lab-a",
            "--address",
            "/ip4/127.0.0.1/tcp/1",
            "--out",
            "lab-a.id",
        ],
        dir,
        "x",
    );
    assert!(!again.status.success());

    std::fs::write(dir.join("consortium.toml"), &file).unwrap();
    let parsed = protocol::consortium::Consortium::parse(&file).unwrap();
    assert!(parsed.check_approvals().is_err());

    // A wrong passphrase is refused with a clear error.
    let wrong = quorate(
        &[
            "ceremony",
            "sign",
            "--consortium",
            "consortium.toml",
            "--identity",
            "lab-a.id",
        ],
        dir,
        "nope",
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("passphrase"));

    for member in ["lab-a", "lab-b", "lab-c"] {
        let out = quorate(
            &[
                "ceremony",
                "sign",
                "--consortium",
                "consortium.toml",
                "--identity",
                &format!("{member}.id"),
            ],
            dir,
            &format!("pass-{member}"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let signed = std::fs::read_to_string(dir.join("consortium.toml")).unwrap();
    let consortium = protocol::consortium::Consortium::parse(&signed).unwrap();
    consortium.check_approvals().unwrap();
    assert_eq!(consortium.digest(), parsed.digest());
    protocol::audit::log::check_membership(&consortium.membership().unwrap()).unwrap();

    // The coordinator is not a member and cannot approve.
    let out = quorate(
        &[
            "ceremony",
            "sign",
            "--consortium",
            "consortium.toml",
            "--identity",
            "coordinator.id",
        ],
        dir,
        "pass-c",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a member"));
}
