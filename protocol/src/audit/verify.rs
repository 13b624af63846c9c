//! The auditor's offline verification of an exported log. Depends on nothing but this crate.
//!
//! Checks, each reported with its own class (and so its own exit code):
//! checkpoint format and log signature, cosignature quorum, append-only (consistency with a
//! trusted checkpoint; forks and rollbacks yield evidence), completeness (the entries rebuild
//! every signed root), each entry (canonical encoding, signature, author authorised for the
//! kind, sequence without gaps), and a replay of the decryption rules.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::checkpoint::{Checkpoint, SignedCheckpoint};
use super::entry::{Body, Digest, EntryError, Membership, SignedEntry};
use super::log::{LogError, LogState, checkpoint_verifiers};
use super::note::NoteError;

/// First line of an export's FORMAT file.
pub const EXPORT_FORMAT: &str = "quorate audit export v1";
/// Retries of one round's decryption the rules allow (attempts 0..=MAX_ATTEMPT).
pub const MAX_ATTEMPT: u8 = 3;

/// The classes of violation, in the order their exit codes are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViolationClass {
    Format,
    Signature,
    Fork,
    Rollback,
    Completeness,
    Cosignature,
    EntryRule,
    Policy,
    Transcript,
}

impl ViolationClass {
    pub fn exit_code(self) -> u8 {
        match self {
            ViolationClass::Format => 10,
            ViolationClass::Signature => 11,
            ViolationClass::Fork => 12,
            ViolationClass::Rollback => 13,
            ViolationClass::Completeness => 14,
            ViolationClass::Cosignature => 15,
            ViolationClass::EntryRule => 16,
            ViolationClass::Policy => 17,
            ViolationClass::Transcript => 18,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub class: ViolationClass,
    /// Where: `entry 12`, `checkpoint 40`, `FORMAT`, `trusted checkpoint`.
    pub location: String,
    pub message: String,
}

/// Two signed checkpoints that cannot both be honest: the proof of a fork or rollback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub first: String,
    pub second: String,
}

/// One decryption the log records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecryptionRecord {
    pub round: u64,
    pub request: u64,
    pub contributors: usize,
    pub quorum: Vec<String>,
    pub results: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    pub origin: String,
    pub entries: u64,
    pub checkpoints: usize,
    pub latest_size: Option<u64>,
    pub latest_root: Option<String>,
    pub cosigners: Vec<String>,
    pub witness_quorum: Option<u8>,
    pub members: Vec<String>,
    pub entries_by_kind: BTreeMap<String, u64>,
    pub decryptions: Vec<DecryptionRecord>,
    pub findings: Vec<Finding>,
    pub evidence: Option<Evidence>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// 0 when everything holds, else the code of the most fundamental class found.
    pub fn exit_code(&self) -> u8 {
        self.findings
            .iter()
            .map(|f| f.class)
            .min()
            .map_or(0, ViolationClass::exit_code)
    }

    fn flag(
        &mut self,
        class: ViolationClass,
        location: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.findings.push(Finding {
            class,
            location: location.into(),
            message: message.into(),
        });
    }
}

/// An exported log as the auditor reads it: the origin from the FORMAT file, entries in
/// index order, checkpoint notes in increasing size.
#[derive(Clone, Debug, Default)]
pub struct ExportedLog {
    pub origin: String,
    pub entries: Vec<Vec<u8>>,
    pub checkpoints: Vec<(u64, Vec<u8>)>,
}

/// The FORMAT file of an export.
pub fn format_file(origin: &str) -> String {
    format!("{EXPORT_FORMAT}\norigin {origin}\n")
}

/// File names in an export.
pub fn entry_file_name(index: u64) -> String {
    format!("{index:020}.entry")
}

pub fn checkpoint_file_name(size: u64) -> String {
    format!("{size:020}.checkpoint")
}

/// Why an export's FORMAT file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatFileError {
    #[error("FORMAT is not UTF-8")]
    NotUtf8,
    #[error("FORMAT must read {EXPORT_FORMAT:?} then an origin line")]
    Layout,
    #[error("FORMAT is not in canonical form")]
    NotCanonical,
}

/// Parses the FORMAT file, returning the origin.
pub fn parse_format_file(bytes: &[u8]) -> Result<String, FormatFileError> {
    let text = std::str::from_utf8(bytes).map_err(|_| FormatFileError::NotUtf8)?;
    let origin = text
        .strip_prefix(EXPORT_FORMAT)
        .and_then(|rest| rest.strip_prefix("\norigin "))
        .and_then(|rest| rest.strip_suffix('\n'))
        .filter(|origin| !origin.is_empty() && !origin.contains(char::is_whitespace))
        .ok_or(FormatFileError::Layout)?;
    if format_file(origin) != text {
        return Err(FormatFileError::NotCanonical);
    }
    Ok(origin.to_owned())
}

fn entry_class(err: &EntryError) -> ViolationClass {
    match err {
        EntryError::BadSignature | EntryError::BadAuthorKey => ViolationClass::Signature,
        _ => ViolationClass::Format,
    }
}

fn note_class(err: &NoteError) -> ViolationClass {
    match err {
        NoteError::BadSignature { .. }
        | NoteError::UnknownKey { .. }
        | NoteError::MissingSignature(_) => ViolationClass::Signature,
        _ => ViolationClass::Format,
    }
}

/// Runs every check on an export. `trusted` is a checkpoint note the auditor kept from an
/// earlier audit; the export must extend it.
pub fn audit(export: &ExportedLog, trusted: Option<&[u8]>) -> AuditReport {
    let mut report = AuditReport {
        origin: export.origin.clone(),
        entries: export.entries.len() as u64,
        checkpoints: export.checkpoints.len(),
        ..AuditReport::default()
    };

    // The tree over every exported leaf, whatever it holds: completeness and consistency are
    // about the bytes the log signed, and a leaf that breaks a rule is reported on its own.
    let hashes: Vec<_> = export
        .entries
        .iter()
        .map(|leaf| super::merkle::leaf_hash(leaf))
        .collect();
    let root_at = |size: u64| {
        (size <= hashes.len() as u64).then(|| super::merkle::root(&hashes[..size as usize]))
    };

    // Entries: encoding, signatures, entry-level rules.
    let mut log = LogState::new(&export.origin);
    let mut opened = Vec::new();
    for (index, leaf) in export.entries.iter().enumerate() {
        let location = format!("entry {index}");
        // A bad entry ends the replay of entries, but the valid prefix is still checked
        // against the checkpoints, so forks, rollbacks and earlier violations are reported too.
        let entry = match SignedEntry::open(leaf) {
            Ok(entry) => entry,
            Err(err) => {
                report.flag(entry_class(&err), location, err.to_string());
                break;
            }
        };
        *report
            .entries_by_kind
            .entry(entry.entry.body.kind_name().to_owned())
            .or_default() += 1;
        if let Err(err) = log.append(entry.clone()) {
            let class = match err {
                LogError::Membership(_) if index == 0 => ViolationClass::Format,
                _ => ViolationClass::EntryRule,
            };
            report.flag(class, location, err.to_string());
            break;
        }
        opened.push(entry);
    }
    let Some(membership) = log.membership().cloned() else {
        if report.findings.is_empty() {
            report.flag(
                ViolationClass::Completeness,
                "entries",
                "the log is empty: there is no membership manifest",
            );
        }
        return report;
    };
    report.witness_quorum = Some(membership.witness_quorum);
    report.members = membership.members.iter().map(|m| m.name.clone()).collect();

    // Checkpoints: format, signatures, cosignature quorum, agreement with the entries.
    let (log_key, witnesses) = match checkpoint_verifiers(&export.origin, &membership) {
        Ok(keys) => keys,
        Err(err) => {
            report.flag(ViolationClass::Format, "entry 0", err.to_string());
            return report;
        }
    };
    let mut by_size: BTreeMap<u64, (Checkpoint, Vec<u8>)> = BTreeMap::new();
    let mut latest: Option<(SignedCheckpoint, Vec<u8>)> = None;
    for (named_size, bytes) in &export.checkpoints {
        let location = format!("checkpoint {named_size}");
        let signed = match SignedCheckpoint::open(bytes, &log_key, &witnesses) {
            Ok(signed) => signed,
            Err(err) => {
                report.flag(note_class(&err), location, err.to_string());
                continue;
            }
        };
        let checkpoint = &signed.checkpoint;
        if checkpoint.size != *named_size || checkpoint.origin != export.origin {
            report.flag(
                ViolationClass::Format,
                location,
                format!(
                    "the file holds a checkpoint of size {} for {:?}",
                    checkpoint.size, checkpoint.origin
                ),
            );
            continue;
        }
        if signed.cosigners.len() < usize::from(membership.witness_quorum) {
            report.flag(
                ViolationClass::Cosignature,
                &location,
                format!(
                    "{} cosignatures, the quorum is {}",
                    signed.cosigners.len(),
                    membership.witness_quorum
                ),
            );
        }
        if let Some((other, other_bytes)) = by_size.get(&checkpoint.size)
            && other.root != checkpoint.root
        {
            report.flag(
                ViolationClass::Fork,
                &location,
                "two signed checkpoints of one size with different roots",
            );
            report.evidence = Some(Evidence {
                first: String::from_utf8_lossy(other_bytes).into_owned(),
                second: String::from_utf8_lossy(bytes).into_owned(),
            });
        }
        match root_at(checkpoint.size) {
            None => report.flag(
                ViolationClass::Completeness,
                &location,
                format!(
                    "the log signed {} entries but the export holds {}",
                    checkpoint.size,
                    hashes.len()
                ),
            ),
            Some(root) if root != checkpoint.root => report.flag(
                ViolationClass::Completeness,
                &location,
                "the entries do not rebuild the signed root",
            ),
            Some(_) => {}
        }
        by_size.insert(checkpoint.size, (checkpoint.clone(), bytes.clone()));
        if latest
            .as_ref()
            .is_none_or(|(l, _)| l.checkpoint.size <= checkpoint.size)
        {
            latest = Some((signed, bytes.clone()));
        }
    }
    match &latest {
        None => report.flag(
            ViolationClass::Completeness,
            "checkpoints",
            "no valid signed checkpoint",
        ),
        Some((signed, _)) => {
            report.latest_size = Some(signed.checkpoint.size);
            report.latest_root = Some(hex::encode(signed.checkpoint.root));
            report.cosigners = signed.cosigners.clone();
            if signed.checkpoint.size < hashes.len() as u64 {
                report.flag(
                    ViolationClass::Completeness,
                    format!("entry {}", signed.checkpoint.size),
                    format!(
                        "{} entries are not covered by any signed checkpoint",
                        hashes.len() as u64 - signed.checkpoint.size
                    ),
                );
            }
        }
    }

    // Append-only against what the auditor saw before.
    if let Some(trusted) = trusted {
        match SignedCheckpoint::open(trusted, &log_key, &witnesses) {
            Err(err) => report.flag(note_class(&err), "trusted checkpoint", err.to_string()),
            Ok(old) => {
                let newest = latest
                    .as_ref()
                    .map(|(l, bytes)| (l.checkpoint.size, bytes.clone()));
                let evidence = |other: Option<Vec<u8>>| Evidence {
                    first: String::from_utf8_lossy(trusted).into_owned(),
                    second: other
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default(),
                };
                match newest {
                    Some((size, bytes)) if old.checkpoint.size > size => {
                        report.flag(
                            ViolationClass::Rollback,
                            "trusted checkpoint",
                            format!(
                                "the log shrank from {} to {size} entries",
                                old.checkpoint.size
                            ),
                        );
                        report.evidence = Some(evidence(Some(bytes)));
                    }
                    _ => {
                        if root_at(old.checkpoint.size) != Some(old.checkpoint.root) {
                            report.flag(
                                ViolationClass::Fork,
                                "trusted checkpoint",
                                "the log is not an extension of the trusted checkpoint",
                            );
                            let other = by_size
                                .range(old.checkpoint.size..)
                                .next()
                                .map(|(_, (_, bytes))| bytes.clone())
                                .or_else(|| latest.as_ref().map(|(_, b)| b.clone()));
                            report.evidence = Some(evidence(other));
                        }
                    }
                }
            }
        }
    }

    replay_policy(&membership, &opened, &mut report);
    report
}

struct Request {
    round: u64,
    ciphertext: Digest,
    quorum: u16,
    contributors: usize,
    released: BTreeSet<usize>,
    models: BTreeSet<Digest>,
    results: usize,
}

/// Replays the decryption rules over the entries in log order.
///
/// A decryption happens as soon as the quorum's t shares are out, whether or not anyone logs
/// a result, so that is what is counted. A round's aggregate may be requested once per
/// attempt, in order (0, 1, ...), and a retry is allowed only if the previous attempt did not
/// get all its releases; a retry targets a re-randomisation of the aggregate, which can never
/// equal any contribution or any other round's aggregate.
fn replay_policy(membership: &Membership, entries: &[SignedEntry], report: &mut AuditReport) {
    let member_index = |key: &[u8; 32]| {
        membership
            .members
            .iter()
            .position(|m| m.signing_key == *key)
    };
    let threshold = usize::from(membership.threshold);
    let mut opened_rounds = BTreeSet::new();
    let mut closed_rounds = BTreeSet::new();
    let mut contributions: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    let mut contributed: BTreeSet<(u64, usize)> = BTreeSet::new();
    let mut contribution_digests: BTreeSet<Digest> = BTreeSet::new();
    let mut aggregates: BTreeSet<Digest> = BTreeSet::new();
    let mut closes: BTreeMap<u64, (u64, usize, Digest)> = BTreeMap::new();
    let mut requests: BTreeMap<u64, Request> = BTreeMap::new();
    let mut latest_attempt: BTreeMap<u64, (u8, u64)> = BTreeMap::new();
    let mut requested: BTreeSet<Digest> = BTreeSet::new();
    let mut released: BTreeSet<(usize, Digest)> = BTreeSet::new();
    let mut decrypted_rounds: BTreeMap<u64, u64> = BTreeMap::new();

    for (index, signed) in entries.iter().enumerate() {
        let index = index as u64;
        let location = format!("entry {index}");
        let author = member_index(&signed.entry.author);
        let mut violation = |message: String| {
            report.flag(ViolationClass::Policy, location.clone(), message);
        };
        match &signed.entry.body {
            Body::RoundOpen { round, .. } => {
                let first_time = opened_rounds.insert(*round);
                if !first_time {
                    violation(format!("round {round} opened twice"));
                }
            }
            Body::Contribution {
                round, ciphertext, ..
            } => {
                let Some(member) = author else { continue };
                contribution_digests.insert(*ciphertext);
                if !opened_rounds.contains(round) || closed_rounds.contains(round) {
                    violation(format!("contribution to round {round}, which is not open"));
                } else if !contributed.insert((*round, member)) {
                    violation(format!(
                        "a second contribution to round {round} by the same member"
                    ));
                } else {
                    contributions.insert(index, (*round, member));
                }
            }
            Body::RoundClose {
                round,
                contributions: leaves,
                aggregate,
                ..
            } => {
                if !opened_rounds.contains(round) || !closed_rounds.insert(*round) {
                    violation(format!("round {round} closed without being open, or twice"));
                    continue;
                }
                let mut members = BTreeSet::new();
                for leaf in leaves {
                    match contributions.get(leaf) {
                        Some((r, member)) if r == round => {
                            members.insert(*member);
                        }
                        _ => violation(format!(
                            "the close of round {round} lists entry {leaf}, not a contribution to it"
                        )),
                    }
                }
                if members.len() != leaves.len() {
                    violation(format!("the close of round {round} counts a member twice"));
                }
                if contribution_digests.contains(aggregate) || !aggregates.insert(*aggregate) {
                    violation(format!(
                        "the aggregate of round {round} is a single contribution or another round's aggregate"
                    ));
                }
                closes.insert(index, (*round, members.len(), *aggregate));
            }
            Body::DecryptionRequest {
                round,
                close,
                ciphertext,
                quorum,
                attempt,
                seed,
            } => {
                let Some(&(close_round, contributors, aggregate)) = closes.get(close) else {
                    violation(format!(
                        "decryption request for round {round} without its round close"
                    ));
                    continue;
                };
                if close_round != *round {
                    violation(format!(
                        "request for round {round} names the close of round {close_round}"
                    ));
                }
                if contributors < usize::from(membership.k_min) {
                    violation(format!(
                        "decryption of round {round} with {contributors} contributors, fewer than k_min = {}",
                        membership.k_min
                    ));
                }
                let in_range = u32::from(*quorum) >> membership.members.len() == 0;
                if quorum.count_ones() as usize != threshold || !in_range {
                    violation(format!("quorum {quorum:#b} is not {threshold} members"));
                }
                let expected_attempt = latest_attempt.get(close).map_or(0, |(a, _)| a + 1);
                if *attempt != expected_attempt || *attempt > MAX_ATTEMPT {
                    violation(format!(
                        "attempt {attempt} for round {round}, expected {expected_attempt} (at most {MAX_ATTEMPT})"
                    ));
                }
                if let Some((_, previous)) = latest_attempt.get(close)
                    && requests[previous].released.len() >= threshold
                {
                    violation(format!(
                        "a retry of round {round} after the previous attempt was fully released"
                    ));
                }
                let retargeted = if *attempt == 0 {
                    *ciphertext != aggregate
                } else {
                    *seed == [0; 32]
                        || aggregates.contains(ciphertext)
                        || contribution_digests.contains(ciphertext)
                };
                if retargeted {
                    violation(format!(
                        "request {index} targets a ciphertext other than round {round}'s aggregate \
                         (or a logged re-randomisation of it): a subset or difference"
                    ));
                }
                if !requested.insert(*ciphertext) {
                    violation("a second decryption request for the same ciphertext".into());
                }
                latest_attempt.insert(*close, (*attempt, index));
                requests.insert(
                    index,
                    Request {
                        round: *round,
                        ciphertext: *ciphertext,
                        quorum: *quorum,
                        contributors,
                        released: BTreeSet::new(),
                        models: BTreeSet::new(),
                        results: 0,
                    },
                );
            }
            Body::ShareReleased {
                request,
                ciphertext,
                ..
            } => {
                let Some(member) = author else { continue };
                let Some(req) = requests.get_mut(request) else {
                    violation(format!(
                        "share released for entry {request}, which is not a request"
                    ));
                    continue;
                };
                if req.quorum & (1 << member) == 0 {
                    violation(format!(
                        "{} released a share without being in the quorum",
                        membership.members[member].name
                    ));
                }
                if *ciphertext != req.ciphertext {
                    violation("share released for a ciphertext the request does not name".into());
                }
                if !released.insert((member, *ciphertext)) {
                    violation(format!(
                        "{} released two shares for the same ciphertext",
                        membership.members[member].name
                    ));
                }
                req.released.insert(member);
                if req.released.len() == threshold {
                    let first = *decrypted_rounds.entry(req.round).or_insert(*request);
                    if first != *request {
                        violation(format!("round {} decrypted twice", req.round));
                    }
                }
            }
            Body::DecryptionResult {
                request,
                ciphertext,
                model,
            } => {
                let Some(req) = requests.get_mut(request) else {
                    violation(format!(
                        "decryption result for entry {request}, which is not a request"
                    ));
                    continue;
                };
                let complete = (0..membership.members.len())
                    .filter(|m| req.quorum & (1 << m) != 0)
                    .all(|m| req.released.contains(&m));
                if !complete || req.released.is_empty() {
                    violation(
                        "decryption result without the share releases of the whole quorum".into(),
                    );
                }
                if *ciphertext != req.ciphertext {
                    violation(
                        "decryption result for a ciphertext the request does not name".into(),
                    );
                }
                req.models.insert(*model);
                if req.models.len() > 1 {
                    violation(format!(
                        "members decoded different models for round {}",
                        req.round
                    ));
                }
                req.results += 1;
            }
            _ => {}
        }
    }
    report.decryptions = requests
        .iter()
        .filter(|(_, r)| r.released.len() >= threshold)
        .map(|(&leaf, r)| DecryptionRecord {
            round: r.round,
            request: leaf,
            contributors: r.contributors,
            quorum: (0..membership.members.len())
                .filter(|m| r.quorum & (1 << m) != 0)
                .map(|m| membership.members[m].name.clone())
                .collect(),
            results: r.results,
        })
        .collect();
}
