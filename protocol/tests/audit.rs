//! The auditor's verification: an honest log passes; every kind of tampering and every broken
//! decryption rule is caught and classified.

use protocol::audit::entry::Body;
use protocol::audit::sample::{Author, SampleConsortium, honest_log};
use protocol::audit::verify::{AuditReport, ExportedLog, ViolationClass, audit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn classes(report: &AuditReport) -> Vec<ViolationClass> {
    report.findings.iter().map(|f| f.class).collect()
}

#[test]
fn an_honest_log_passes_every_check() {
    let sample = honest_log(3);
    let report = audit(&sample.export(), None);
    assert!(report.ok(), "{:#?}", report.findings);
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.decryptions.len(), 3);
    assert_eq!(report.latest_size, Some(sample.log.size()));
    assert_eq!(report.cosigners.len(), 5);
    // And an earlier checkpoint is accepted as the trusted starting point.
    let (_, first) = &sample.checkpoints[1];
    assert!(audit(&sample.export(), Some(first)).ok());
}

#[test]
fn thousands_of_single_bit_flips_are_all_detected() {
    let export = honest_log(2).export();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let files = export.entries.len() + export.checkpoints.len();
    for trial in 0..3000 {
        let mut tampered = export.clone();
        let file = rng.gen_range(0..files);
        let bytes = if file < export.entries.len() {
            &mut tampered.entries[file]
        } else {
            &mut tampered.checkpoints[file - export.entries.len()].1
        };
        let index = rng.gen_range(0..bytes.len());
        bytes[index] ^= 1 << rng.gen_range(0..8);
        let report = audit(&tampered, None);
        assert!(
            !report.ok(),
            "trial {trial}: flip in file {file} at {index} went unnoticed"
        );
    }
}

#[test]
fn truncation_reordering_and_removal_are_detected() {
    let export = honest_log(2).export();

    let mut truncated = export.clone();
    truncated.entries.pop();
    let report = audit(&truncated, None);
    assert!(
        classes(&report).contains(&ViolationClass::Completeness),
        "{report:?}"
    );

    let mut reordered = export.clone();
    reordered.entries.swap(3, 4);
    assert!(!audit(&reordered, None).ok());

    let mut removed = export.clone();
    removed.entries.remove(5);
    assert!(!audit(&removed, None).ok());

    let mut no_checkpoints = export.clone();
    no_checkpoints.checkpoints.clear();
    assert_eq!(
        audit(&no_checkpoints, None).exit_code(),
        ViolationClass::Completeness.exit_code()
    );
}

#[test]
fn a_forged_entry_signature_is_a_signature_violation() {
    let mut sample = honest_log(1);
    // The coordinator's entry re-signed by someone else's key, claimed as the coordinator's.
    use ed25519_dalek::Signer;
    let entry = sample.sign(
        Author::Coordinator,
        Body::RoundOpen {
            round: 9,
            model: [0; 32],
            base: [0; 32],
            deadline_ms: 0,
            expected: 1,
        },
        vec![],
    );
    let forger = ed25519_dalek::SigningKey::from_bytes(&[99; 32]);
    let encoded = entry.entry.encode();
    let message = [protocol::audit::entry::ENTRY_LABEL, &[0], &encoded].concat();
    let mut leaf = encoded.clone();
    leaf.extend_from_slice(&forger.sign(&message).to_bytes());
    let mut export = sample.export();
    export.entries.push(leaf);
    let report = audit(&export, None);
    assert_eq!(
        report.exit_code(),
        ViolationClass::Signature.exit_code(),
        "{report:?}"
    );
    sample.now += 1;
}

fn cosigned(
    sample: &SampleConsortium,
    checkpoint: &protocol::audit::checkpoint::Checkpoint,
) -> Vec<u8> {
    let mut note = checkpoint.sign(&sample.log_signer);
    for member in &sample.members {
        note.signatures
            .push(member.witness.cosign(&note.text, sample.now));
    }
    note.encode().into_bytes()
}

#[test]
fn a_fork_is_detected_with_evidence() {
    let sample = honest_log(2);
    let mut export = sample.export();
    // A second checkpoint of an existing size with another root, properly signed: the log
    // showed someone a different history.
    let (size, _) = export.checkpoints[1];
    let mut other = sample.log.checkpoint();
    other.size = size;
    other.root = [0xab; 32];
    export
        .checkpoints
        .insert(2, (size, cosigned(&sample, &other)));
    let report = audit(&export, None);
    assert!(
        classes(&report).contains(&ViolationClass::Fork),
        "{report:?}"
    );
    let evidence = report.evidence.clone().expect("a fork leaves evidence");
    assert_ne!(evidence.first, evidence.second);
    assert_eq!(report.exit_code(), ViolationClass::Fork.exit_code());

    // A trusted checkpoint the export does not extend is a fork too.
    let mut forked = sample.log.checkpoint();
    forked.root = [0xcd; 32];
    let trusted = cosigned(&sample, &forked);
    let report = audit(&sample.export(), Some(&trusted));
    assert_eq!(
        report.exit_code(),
        ViolationClass::Fork.exit_code(),
        "{report:?}"
    );
    assert!(report.evidence.is_some());
}

#[test]
fn a_rollback_is_detected_with_evidence() {
    let sample = honest_log(2);
    let (_, latest) = sample.checkpoints.last().unwrap().clone();
    // The auditor saw the full log before; now it is shown an older, shorter export.
    let mut older = sample.export();
    let keep = older.checkpoints[1].0 as usize;
    older.entries.truncate(keep);
    older.checkpoints.truncate(2);
    let report = audit(&older, Some(&latest));
    assert_eq!(
        report.exit_code(),
        ViolationClass::Rollback.exit_code(),
        "{report:?}"
    );
    assert!(report.evidence.is_some());
}

#[test]
fn too_few_cosignatures_are_flagged() {
    let mut sample = SampleConsortium::new(5, 3, 3, 3);
    sample.publish_checkpoint(&[0, 1, 2, 3]);
    sample.honest_round(1, &[0, 1, 2], &[0, 1, 2]);
    sample.publish_checkpoint(&[0, 1]);
    let report = audit(&sample.export(), None);
    assert_eq!(
        report.exit_code(),
        ViolationClass::Cosignature.exit_code(),
        "{report:?}"
    );
}

fn replay(build: impl FnOnce(&mut SampleConsortium)) -> AuditReport {
    let mut sample = SampleConsortium::new(5, 3, 3, 5);
    build(&mut sample);
    let witnesses = sample.all_witnesses();
    sample.publish_checkpoint(&witnesses);
    audit(&sample.export(), None)
}

#[test]
fn replay_rules_flag_each_kind_of_forbidden_decryption() {
    // The honest baseline passes.
    let report = replay(|s| {
        let (close, aggregate) = s.open_and_close(1, &[0, 1, 2]);
        s.decrypt(1, close, aggregate, &[0, 1, 2], 0);
    });
    assert!(report.ok(), "{:#?}", report.findings);

    // A result without the whole quorum's releases, and a second share from one member: the
    // log's round rules refuse both, so they show up as entry-rule violations.
    for (forged, rule) in [
        (
            Body::DecryptionResult {
                request: 0,
                ciphertext: [0; 32],
                model: [2; 32],
            },
            "before its whole quorum released",
        ),
        (
            Body::ShareReleased {
                request: 0,
                ciphertext: [0; 32],
                share: [1; 32],
            },
            "already released a share",
        ),
    ] {
        let mut s = SampleConsortium::new(5, 3, 3, 5);
        let (close, aggregate) = s.open_and_close(1, &[0, 1, 2]);
        let request = s.request(1, close, aggregate, &[0, 1, 2], 0);
        s.append(
            Author::Member(0),
            Body::ShareReleased {
                request,
                ciphertext: aggregate,
                share: [1; 32],
            },
            vec![request],
        );
        let forged = match forged {
            Body::DecryptionResult { model, .. } => Body::DecryptionResult {
                request,
                ciphertext: aggregate,
                model,
            },
            Body::ShareReleased { share, .. } => Body::ShareReleased {
                request,
                ciphertext: aggregate,
                share,
            },
            other => other,
        };
        let forged = s.forge(vec![(Author::Member(0), forged, vec![request])]);
        let report = audit(&s.export_with(&forged), None);
        assert_eq!(
            report.exit_code(),
            ViolationClass::EntryRule.exit_code(),
            "{:#?}",
            report.findings
        );
        assert!(
            report.findings.iter().any(|f| f.message.contains(rule)),
            "{rule}: {:#?}",
            report.findings
        );
    }

    // A round with fewer than k_min = 3 contributors.
    let report = replay(|s| {
        let (close, aggregate) = s.open_and_close(1, &[0, 1]);
        s.decrypt(1, close, aggregate, &[0, 1, 2], 0);
    });
    assert_policy(&report, "fewer than k_min");

    // A single contribution (or any ciphertext other than the aggregate).
    let report = replay(|s| {
        let (close, _) = s.open_and_close(1, &[0, 1, 2]);
        s.decrypt(
            1,
            close,
            SampleConsortium::contribution_digest(1, 0),
            &[0, 1, 2],
            0,
        );
    });
    assert_policy(&report, "subset or difference");

    // The same round decrypted twice: a "retry" after the first attempt was fully released
    // breaks a round rule of the log.
    let mut s = SampleConsortium::new(5, 3, 3, 5);
    let (close, aggregate) = s.open_and_close(1, &[0, 1, 2]);
    s.decrypt(1, close, aggregate, &[0, 1, 2], 0);
    let forged = s.forge(vec![(
        Author::Coordinator,
        Body::DecryptionRequest {
            round: 1,
            close,
            ciphertext: [77; 32],
            quorum: 0b1110,
            attempt: 1,
            seed: [1; 32],
        },
        vec![close],
    )]);
    let report = audit(&s.export_with(&forged), None);
    assert_eq!(
        report.exit_code(),
        ViolationClass::EntryRule.exit_code(),
        "{:#?}",
        report.findings
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.message.contains("after its decryption was released")),
        "{:#?}",
        report.findings
    );

    // A legitimate retry: the first quorum released only partly, the second attempt succeeds.
    let report = replay(|s| {
        let (close, aggregate) = s.open_and_close(1, &[0, 1, 2]);
        let first = s.request(1, close, aggregate, &[0, 1, 2], 0);
        s.append(
            Author::Member(0),
            Body::ShareReleased {
                request: first,
                ciphertext: aggregate,
                share: [1; 32],
            },
            vec![first],
        );
        s.decrypt(1, close, [77; 32], &[1, 2, 3], 1);
    });
    assert!(report.ok(), "{:#?}", report.findings);

    // A "retry" that targets one member's contribution instead of a re-randomised aggregate.
    let report = replay(|s| {
        let (close, aggregate) = s.open_and_close(1, &[0, 1, 2]);
        s.request(1, close, aggregate, &[0, 1, 2], 0);
        s.decrypt(
            1,
            close,
            SampleConsortium::contribution_digest(1, 0),
            &[1, 2, 3],
            1,
        );
    });
    assert_policy(&report, "subset or difference");

    // Attempts out of order.
    let report = replay(|s| {
        let (close, _) = s.open_and_close(1, &[0, 1, 2]);
        s.decrypt(1, close, [78; 32], &[0, 1, 2], 2);
    });
    assert_policy(&report, "expected 0");

    // A round whose "aggregate" is one member's contribution.
    let report = replay(|s| {
        s.append(
            Author::Coordinator,
            Body::RoundOpen {
                round: 1,
                model: [1; 32],
                base: [0; 32],
                deadline_ms: 0,
                expected: 0b111,
            },
            vec![],
        );
        let leaves: Vec<u64> = (0..3)
            .map(|m| {
                s.append(
                    Author::Member(m),
                    Body::Contribution {
                        round: 1,
                        ciphertext: [m as u8 + 10; 32],
                        samples: 1,
                    },
                    vec![],
                )
            })
            .collect();
        let close = s.append(
            Author::Coordinator,
            Body::RoundClose {
                round: 1,
                base: [0; 32],
                contributions: leaves.clone(),
                aggregate: [10; 32],
            },
            leaves,
        );
        s.decrypt(
            1,
            close,
            SampleConsortium::contribution_digest(1, 0),
            &[0, 1, 2],
            0,
        );
    });
    assert_policy(&report, "single contribution");

    // Members decoding different models is flagged.
    let report = replay(|s| {
        let (close, aggregate) = s.open_and_close(1, &[0, 1, 2]);
        let request = s.request(1, close, aggregate, &[0, 1, 2], 0);
        for m in 0..3 {
            s.append(
                Author::Member(m),
                Body::ShareReleased {
                    request,
                    ciphertext: aggregate,
                    share: [m as u8; 32],
                },
                vec![request],
            );
        }
        for m in 0..2u8 {
            s.append(
                Author::Member(usize::from(m)),
                Body::DecryptionResult {
                    request,
                    ciphertext: aggregate,
                    model: [m; 32],
                },
                vec![request],
            );
        }
    });
    assert_policy(&report, "different models");
}

#[test]
fn a_manifest_whose_keys_changed_after_approval_is_refused() {
    // The coordinator keeps the members' approvals but swaps in witness keys it controls, so
    // that it could cosign its own checkpoints: the approvals no longer verify.
    let sample = honest_log(1);
    let mut export = sample.export();
    let membership_entry = protocol::audit::entry::SignedEntry::open(&export.entries[0]).unwrap();
    let mut entry = membership_entry.entry.clone();
    if let Body::Membership(m) = &mut entry.body {
        m.members[0].witness_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32])
            .verifying_key()
            .to_bytes();
        m.k_min = 5;
    }
    export.entries[0] = entry.sign(&sample.coordinator).leaf().to_vec();
    let report = audit(&export, None);
    assert_eq!(
        report.exit_code(),
        ViolationClass::Format.exit_code(),
        "{:#?}",
        report.findings
    );
    assert!(
        report.findings[0].message.contains("approval"),
        "{:#?}",
        report.findings
    );
}

#[test]
fn a_bad_entry_at_the_end_does_not_hide_other_findings() {
    let sample = honest_log(2);
    let mut export = sample.export();
    export.entries.push(vec![1, 2, 3]);
    let report = audit(&export, None);
    // The junk is a format violation, and the entries beyond the checkpoint are still noticed.
    assert!(
        classes(&report).contains(&ViolationClass::Format),
        "{report:?}"
    );
    assert!(
        report.latest_size.is_some(),
        "checkpoints were still checked"
    );
}

fn assert_policy(report: &AuditReport, needle: &str) {
    assert_eq!(
        report.exit_code(),
        ViolationClass::Policy.exit_code(),
        "{:#?}",
        report.findings
    );
    assert!(
        report.findings.iter().any(|f| f.message.contains(needle)),
        "no finding mentions {needle:?}: {:#?}",
        report.findings
    );
}

#[test]
fn an_empty_export_is_incomplete() {
    let report = audit(&ExportedLog::default(), None);
    assert_eq!(report.exit_code(), ViolationClass::Completeness.exit_code());
}
