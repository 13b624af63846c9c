//! `quorate audit`: export, verify and show the signed audit log. Verification itself lives in
//! `protocol::audit::verify`; this module reads and writes the files around it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use protocol::audit::entry::{Body, MAX_ENTRY_BYTES, Membership, SignedEntry};
use protocol::audit::merkle::leaf_hash;
use protocol::audit::note::MAX_NOTE_BYTES;
use protocol::audit::verify::{
    AuditReport, ExportedLog, Finding, ViolationClass, audit, checkpoint_file_name,
    entry_file_name, parse_format_file,
};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Write the coordinator's log (entries, checkpoints, cosignatures) as plain files: the
    /// final part, that is every checkpoint with the witness quorum of cosignatures and the
    /// entries they cover. Checkpoints short of the quorum are not final and are left out, as
    /// are entries no final checkpoint covers yet; the output says how many.
    Export {
        /// The coordinator's log store.
        #[arg(long)]
        store: PathBuf,
        /// A new, empty directory to write to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an exported log offline: formats, signatures, cosignature quorum, append-only,
    /// completeness, per-entry rules and the decryption rules. Exits 0 only if all hold;
    /// otherwise with the code of the most fundamental violation: 10 format, 11 signature,
    /// 12 fork, 13 rollback, 14 completeness, 15 cosignature quorum, 16 entry rules,
    /// 17 decryption rules, 18 ceremony transcript.
    Verify {
        /// The exported log directory.
        dir: PathBuf,
        /// A checkpoint note kept from an earlier audit: the log must extend it.
        #[arg(long)]
        trusted: Option<PathBuf>,
        /// Print the report as JSON on standard output.
        #[arg(long)]
        json: bool,
        /// Where to write the evidence of a fork or rollback.
        #[arg(long, default_value = "audit-evidence.txt")]
        evidence: PathBuf,
        /// The key ceremony's transcript: it must verify, be the consortium the log's manifest
        /// records, and be certified in the log by every member's final ceremony entry.
        #[arg(long)]
        transcript: Option<PathBuf>,
    },
    /// List the entries of an exported log readably.
    Show {
        /// The exported log directory.
        dir: PathBuf,
    },
    /// Write a small example log (a simulated consortium of five with three decrypted rounds)
    /// to try `verify` and `show` on.
    Example {
        /// A new, empty directory to write to.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: &AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Export { store, out } => {
            let store = coordinator::store::LogStore::open(store)?;
            let summary = coordinator::export::export(&store, out)?;
            println!(
                "exported {} entries and {} checkpoints of {} to {}",
                summary.entries,
                summary.checkpoints,
                summary.origin,
                out.display()
            );
            if summary.checkpoints_short_of_quorum > 0 {
                println!(
                    "left out {} checkpoints short of the witness quorum (not final: signed \
                     while members were connecting or away, superseded by final ones)",
                    summary.checkpoints_short_of_quorum
                );
            }
            if summary.awaiting_witnesses > 0 {
                println!(
                    "left out the last {} entries: no checkpoint with the witness quorum covers \
                     them yet (export again once the members have witnessed them)",
                    summary.awaiting_witnesses
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Example { out } => {
            let sample = protocol::audit::sample::honest_log(3);
            let export = sample.export();
            let summary = coordinator::export::write_export(
                out,
                &export.origin,
                &export.entries,
                &export.checkpoints,
            )?;
            println!(
                "wrote an example log of {} entries and {} checkpoints to {}",
                summary.entries,
                summary.checkpoints,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            dir,
            trusted,
            json,
            evidence,
            transcript,
        } => verify(
            dir,
            trusted.as_deref(),
            transcript.as_deref(),
            *json,
            evidence,
        ),
        AuditCommand::Show { dir } => show(dir),
    }
}

fn read_limited(path: &Path, limit: usize) -> Result<std::result::Result<Vec<u8>, String>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > limit as u64 {
        return Ok(Err(format!("{size} bytes exceed the limit of {limit}")));
    }
    Ok(Ok(
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    ))
}

/// Reads an export directory strictly. Problems with its layout become findings (a missing
/// entry file is a gap in the log, a stray file is a format violation); only I/O failures
/// are errors.
fn read_export(dir: &Path) -> Result<(ExportedLog, Vec<Finding>)> {
    let mut findings = Vec::new();
    let mut flag = |class, location: String, message: String| {
        findings.push(Finding {
            class,
            location,
            message,
        })
    };
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut export = ExportedLog::default();
    for item in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = item?.file_name().to_string_lossy().into_owned();
        if !["FORMAT", "entries", "checkpoints"].contains(&name.as_str()) {
            flag(
                ViolationClass::Format,
                name.clone(),
                "unexpected file in the export".into(),
            );
        }
    }
    match read_limited(&dir.join("FORMAT"), 4096) {
        Err(_) => flag(ViolationClass::Format, "FORMAT".into(), "missing".into()),
        Ok(Err(why)) => flag(ViolationClass::Format, "FORMAT".into(), why),
        Ok(Ok(bytes)) => match parse_format_file(&bytes) {
            Ok(origin) => export.origin = origin,
            Err(why) => flag(ViolationClass::Format, "FORMAT".into(), why.to_string()),
        },
    }

    let mut entries = BTreeMap::new();
    let entries_dir = dir.join("entries");
    if entries_dir.is_dir() {
        for item in std::fs::read_dir(&entries_dir)? {
            let name = item?.file_name().to_string_lossy().into_owned();
            let index = name
                .strip_suffix(".entry")
                .filter(|digits| digits.len() == 20)
                .and_then(|digits| digits.parse::<u64>().ok())
                .filter(|&index| entry_file_name(index) == name);
            match index {
                None => flag(
                    ViolationClass::Format,
                    format!("entries/{name}"),
                    "not an entry file name".into(),
                ),
                Some(index) => match read_limited(&entries_dir.join(&name), MAX_ENTRY_BYTES)? {
                    Ok(bytes) => {
                        entries.insert(index, bytes);
                    }
                    Err(why) => flag(ViolationClass::Format, format!("entries/{name}"), why),
                },
            }
        }
    } else {
        flag(
            ViolationClass::Format,
            "entries".into(),
            "missing directory".into(),
        );
    }
    for (position, (index, bytes)) in entries.into_iter().enumerate() {
        if index != position as u64 {
            flag(
                ViolationClass::Completeness,
                format!("entry {position}"),
                format!("missing (the next file is entry {index})"),
            );
            break;
        }
        export.entries.push(bytes);
    }

    let checkpoints_dir = dir.join("checkpoints");
    if checkpoints_dir.is_dir() {
        let mut checkpoints = BTreeMap::new();
        for item in std::fs::read_dir(&checkpoints_dir)? {
            let name = item?.file_name().to_string_lossy().into_owned();
            let size = name
                .strip_suffix(".checkpoint")
                .filter(|digits| digits.len() == 20)
                .and_then(|digits| digits.parse::<u64>().ok())
                .filter(|&size| checkpoint_file_name(size) == name);
            match size {
                None => flag(
                    ViolationClass::Format,
                    format!("checkpoints/{name}"),
                    "not a checkpoint file name".into(),
                ),
                Some(size) => match read_limited(&checkpoints_dir.join(&name), MAX_NOTE_BYTES)? {
                    Ok(bytes) => {
                        checkpoints.insert(size, bytes);
                    }
                    Err(why) => flag(ViolationClass::Format, format!("checkpoints/{name}"), why),
                },
            }
        }
        export.checkpoints = checkpoints.into_iter().collect();
    } else {
        flag(
            ViolationClass::Format,
            "checkpoints".into(),
            "missing directory".into(),
        );
    }
    Ok((export, findings))
}

/// The ceremony certificate: the transcript verifies, its consortium is the one in the log's
/// manifest, and every member's last ceremony entry names this transcript and key.
fn check_transcript(path: &Path, export: &ExportedLog) -> Result<Vec<Finding>> {
    use keyceremony::transcript::{Transcript, verify};
    let flag = |message: String| Finding {
        class: ViolationClass::Transcript,
        location: path.display().to_string(),
        message,
    };
    let bytes = match read_limited(path, 256 << 20)? {
        Ok(bytes) => bytes,
        Err(why) => return Ok(vec![flag(why)]),
    };
    let transcript = match Transcript::decode(&bytes) {
        Ok(transcript) => transcript,
        Err(err) => return Ok(vec![flag(format!("the transcript is unreadable: {err}"))]),
    };
    let verified = match verify(&transcript) {
        Ok(verified) => verified,
        Err(err) => return Ok(vec![flag(format!("the transcript does not verify: {err}"))]),
    };
    let entries: Vec<SignedEntry> = export
        .entries
        .iter()
        .filter_map(|leaf| SignedEntry::open(leaf).ok())
        .collect();
    let Some(Body::Membership(membership)) = entries.first().map(|e| &e.entry.body) else {
        return Ok(vec![flag("the log has no membership manifest".into())]);
    };
    let consortium = protocol::consortium::Consortium::parse(&transcript.consortium_toml)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if consortium.digest() != membership.digest() {
        return Ok(vec![flag(
            "the transcript's consortium is not the one the log records".into(),
        )]);
    }
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
    let mut findings = Vec::new();
    for member in &membership.members {
        let certified = entries.iter().any(|e| {
            e.entry.author == member.signing_key
                && e.entry.payload == Some(digest)
                && matches!(e.entry.body, Body::CeremonyStep { ceremony, artefact, .. }
                    if ceremony == verified.ceremony && artefact == verified.fingerprint)
        });
        if !certified {
            findings.push(flag(format!(
                "{} has not certified this transcript in the log",
                member.name
            )));
        }
    }
    Ok(findings)
}

fn verify(
    dir: &Path,
    trusted: Option<&Path>,
    transcript: Option<&Path>,
    json: bool,
    evidence_path: &Path,
) -> Result<ExitCode> {
    let (export, mut findings) = read_export(dir)?;
    if let Some(path) = transcript {
        findings.extend(check_transcript(path, &export)?);
    }
    let trusted = trusted
        .map(|path| read_limited(path, MAX_NOTE_BYTES))
        .transpose()?
        .map(|read| read.map_err(|why| anyhow::anyhow!("trusted checkpoint: {why}")))
        .transpose()?;
    let mut report = audit(&export, trusted.as_deref());
    findings.append(&mut report.findings);
    report.findings = findings;
    if let Some(evidence) = &report.evidence {
        let text = format!(
            "Two signed checkpoints of {} that cannot both be honest.\n\n{}\n{}",
            report.origin, evidence.first, evidence.second
        );
        std::fs::write(evidence_path, text)
            .with_context(|| format!("writing {}", evidence_path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(dir, &report, evidence_path)?;
    }
    Ok(ExitCode::from(report.exit_code()))
}

fn print_summary(dir: &Path, report: &AuditReport, evidence_path: &Path) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "Audit of log {:?} ({})", report.origin, dir.display())?;
    let kinds: Vec<String> = report
        .entries_by_kind
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    writeln!(
        out,
        "  entries      {} ({})",
        report.entries,
        kinds.join(", ")
    )?;
    match (report.latest_size, &report.latest_root) {
        (Some(size), Some(root)) => writeln!(
            out,
            "  checkpoints  {}; latest covers {size} entries, root {}..., cosigned by {} of {} (quorum {})",
            report.checkpoints,
            &root[..16],
            report.cosigners.len(),
            report.members.len(),
            report.witness_quorum.unwrap_or(0)
        )?,
        _ => writeln!(out, "  checkpoints  {} (none valid)", report.checkpoints)?,
    }
    writeln!(out, "  members      {}", report.members.join(", "))?;
    for decryption in &report.decryptions {
        writeln!(
            out,
            "  decryption   round {}: {} contributors, released by {}",
            decryption.round,
            decryption.contributors,
            decryption.quorum.join(", ")
        )?;
    }
    if report.ok() {
        writeln!(out, "  result       OK: every check holds")?;
    } else {
        writeln!(
            out,
            "  result       VIOLATIONS (exit code {}):",
            report.exit_code()
        )?;
        for finding in &report.findings {
            writeln!(
                out,
                "    [{:?}] {}: {}",
                finding.class, finding.location, finding.message
            )?;
        }
        if report.evidence.is_some() {
            writeln!(out, "  evidence     {}", evidence_path.display())?;
        }
    }
    Ok(())
}

fn author_name(membership: Option<&Membership>, author: &[u8; 32]) -> String {
    let Some(membership) = membership else {
        return hex::encode(&author[..8]);
    };
    if *author == membership.coordinator.signing_key {
        return membership.coordinator.name.clone();
    }
    membership
        .members
        .iter()
        .find(|m| m.signing_key == *author)
        .map_or_else(|| hex::encode(&author[..8]), |m| m.name.clone())
}

fn show(dir: &Path) -> Result<ExitCode> {
    let (export, findings) = read_export(dir)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Log {:?}: {} entries, {} checkpoints",
        export.origin,
        export.entries.len(),
        export.checkpoints.len()
    )?;
    writeln!(
        out,
        "{:>6}  {:<20} {:<14} {:>6}  leaf hash",
        "index", "kind", "author", "round"
    )?;
    let mut membership = None;
    for (index, leaf) in export.entries.iter().enumerate() {
        match SignedEntry::open(leaf) {
            Ok(signed) => {
                if let Body::Membership(m) = &signed.entry.body {
                    membership = Some(m.clone());
                }
                let body = &signed.entry.body;
                writeln!(
                    out,
                    "{index:>6}  {:<20} {:<14} {:>6}  {}",
                    body.kind_name(),
                    author_name(membership.as_ref(), &signed.entry.author),
                    body.round()
                        .map_or_else(|| "-".to_owned(), |r| r.to_string()),
                    &hex::encode(leaf_hash(leaf))[..16]
                )?;
                if let Body::Incident {
                    code, description, ..
                } = body
                {
                    let meaning = protocol::audit::entry::IncidentCode::from_number(*code)
                        .map_or("a code this version does not know", |c| c.meaning());
                    writeln!(out, "{:>8}incident {code} ({meaning}): {description}", "")?;
                }
            }
            Err(err) => writeln!(out, "{index:>6}  unreadable: {err}")?,
        }
    }
    for finding in findings {
        writeln!(out, "note: {}: {}", finding.location, finding.message)?;
    }
    Ok(ExitCode::SUCCESS)
}
