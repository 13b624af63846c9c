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
        "name = \"test\"\nparameter_set = \"quorate-rlwe128-v1\"\nthreshold = 2\nk_min = 3\n\n",
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

    // The admins sign their own copies at the same time; the file keeps its comments.
    let commented = format!("# Agreed at the kick-off meeting.\n{file}");
    std::fs::write(dir.join("consortium.toml"), &commented).unwrap();
    for member in ["lab-a", "lab-b", "lab-c"] {
        let copy = format!("copy-{member}.toml");
        std::fs::write(dir.join(&copy), &commented).unwrap();
        let out = quorate(
            &[
                "ceremony",
                "sign",
                "--consortium",
                &copy,
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
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("1 of 3 members have approved"), "{said}");
        assert!(
            said.contains("up to 0 site(s) down") && said.contains("warning"),
            "{said}"
        );
    }
    // A copy edited after it was made is another consortium: refused, naming it.
    let edited = std::fs::read_to_string(dir.join("copy-lab-c.toml"))
        .unwrap()
        .replace("name = \"test\"", "name = \"test-2\"");
    std::fs::write(dir.join("copy-edited.toml"), edited).unwrap();
    let refused = quorate(
        &[
            "ceremony",
            "merge-approvals",
            "--consortium",
            "consortium.toml",
            "copy-edited.toml",
        ],
        dir,
        "unused",
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("copy-edited.toml"));
    let merged = quorate(
        &[
            "ceremony",
            "merge-approvals",
            "--consortium",
            "consortium.toml",
            "copy-lab-a.toml",
            "copy-lab-b.toml",
            "copy-lab-c.toml",
        ],
        dir,
        "unused",
    );
    assert!(
        merged.status.success(),
        "{}",
        String::from_utf8_lossy(&merged.stderr)
    );
    assert!(String::from_utf8_lossy(&merged.stdout).contains("3 of 3 members have approved"));
    let signed = std::fs::read_to_string(dir.join("consortium.toml")).unwrap();
    assert!(
        signed.starts_with("# Agreed at the kick-off meeting."),
        "{signed}"
    );
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

#[test]
fn ceremony_verify_accepts_a_real_transcript_and_refuses_a_flipped_byte() {
    use ed25519_dalek::{Signer, SigningKey};
    use rand::SeedableRng;
    let hex_key = |seed: u8| {
        hex::encode(
            SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .to_bytes(),
        )
    };
    let mut text = format!(
        "name = \"cli\"\nparameter_set = \"quorate-rlwe128-v1\"\nthreshold = 2\nk_min = 3\n\n\
         [coordinator]\nname = \"coordinator\"\nsigning_key = \"{}\"\nlog_key = \"{}\"\n\
         peer_id = \"c\"\naddress = \"/ip4/127.0.0.1/tcp/7400\"\n",
        hex_key(90),
        hex_key(91)
    );
    let keys: Vec<SigningKey> = (1..=3u8)
        .map(|i| SigningKey::from_bytes(&[i; 32]))
        .collect();
    for i in 1..=3u8 {
        text.push_str(&format!(
            "\n[[members]]\nname = \"m{i}\"\nsigning_key = \"{}\"\nwitness_key = \"{}\"\npeer_id = \"p{i}\"\naddress = \"/ip4/127.0.0.1/tcp/74{i}0\"\n",
            hex_key(i),
            hex_key(i + 50)
        ));
    }
    let mut consortium = protocol::consortium::Consortium::parse(&text).unwrap();
    let message = protocol::audit::entry::approval_message(&consortium.digest());
    for (i, key) in keys.iter().enumerate() {
        consortium =
            consortium.with_approval(&format!("m{}", i + 1), &key.sign(&message).to_bytes());
    }
    let mut rngs: Vec<rand_chacha::ChaCha20Rng> = (0..3)
        .map(rand_chacha::ChaCha20Rng::seed_from_u64)
        .collect();
    let run = keyceremony::local::run_in_process(&consortium, &keys, &mut rngs, &mut |_, _| true)
        .unwrap();
    let outcome = run.outcomes[0].as_ref().unwrap();
    let transcript = keyceremony::transcript::Transcript {
        consortium_toml: consortium.to_toml(),
        messages: outcome.transcript.clone(),
    };
    let work = tempfile::tempdir().unwrap();
    assert!(
        transcript.encode().starts_with(b"QRTRANS1"),
        "a transcript names its format and version"
    );
    std::fs::write(work.path().join("transcript"), transcript.encode()).unwrap();
    let ok = quorate(&["ceremony", "verify", "transcript"], work.path(), "unused");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("VALID") && stdout.contains("read aloud"),
        "{stdout}"
    );

    let mut bytes = transcript.encode();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(work.path().join("transcript"), bytes).unwrap();
    let bad = quorate(&["ceremony", "verify", "transcript"], work.path(), "unused");
    assert_eq!(
        bad.status.code(),
        Some(20),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
}

#[test]
fn the_example_consortium_file_is_valid_and_awaits_approval() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/consortium.example.toml");
    let consortium =
        protocol::consortium::Consortium::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(consortium.config().parties(), 4);
    assert_eq!(consortium.witness_quorum(), 3);
    assert_eq!(
        consortium.sites_down_tolerated(),
        1,
        "the example rides out one site down"
    );
    assert!(
        consortium.check_approvals().is_err(),
        "the example is not approved by anyone"
    );
}
