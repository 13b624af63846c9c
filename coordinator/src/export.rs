//! Writes the log as plain files an auditor can copy: `FORMAT`, `entries/<index>.entry` and
//! `checkpoints/<size>.checkpoint`. The layout is defined in `protocol::audit::verify`.

use std::io::Write;
use std::path::Path;

use protocol::audit::entry::{Body, SignedEntry};
use protocol::audit::log::{checkpoint_verifiers, is_final_checkpoint};
use protocol::audit::verify::{ExportedLog, checkpoint_file_name, entry_file_name, format_file};

use crate::store::{LogStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} exists and is not empty; export into a new directory")]
    NotEmpty(String),
    #[error("the store has no origin: it was never used by a log")]
    NoOrigin,
    #[error("the log does not begin with its membership manifest")]
    NoMembership,
    #[error("the membership's checkpoint keys: {0}")]
    Keys(protocol::audit::note::NoteError),
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let io = |source| ExportError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::create(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Exports the final part of the log in `store` into the new directory `out`: every checkpoint
/// that reached the witness quorum, and the entries the latest of them covers. A checkpoint
/// short of the quorum is not final (members do not act on it), so it is left out, and so are
/// the entries only it covers: they are exported once a final checkpoint covers them, and the
/// summary says how many wait.
pub fn export(store: &LogStore, out: &Path) -> Result<ExportSummary, ExportError> {
    let origin = store.origin()?.ok_or(ExportError::NoOrigin)?;
    let part = final_part(&origin, store.leaves()?, store.checkpoints()?)?;
    let mut summary = write_export(out, &origin, &part.log.entries, &part.log.checkpoints)?;
    summary.awaiting_witnesses = part.awaiting_witnesses;
    summary.checkpoints_short_of_quorum = part.checkpoints_short_of_quorum;
    Ok(summary)
}

/// The final part of a log: what an export holds.
#[derive(Debug, Clone)]
pub struct FinalPart {
    pub log: ExportedLog,
    pub awaiting_witnesses: u64,
    pub checkpoints_short_of_quorum: usize,
}

/// The checkpoints with the witness quorum and the entries the latest of them covers.
pub fn final_part(
    origin: &str,
    leaves: Vec<Vec<u8>>,
    checkpoints: Vec<(u64, Vec<u8>)>,
) -> Result<FinalPart, ExportError> {
    let membership = leaves
        .first()
        .and_then(|leaf| SignedEntry::open(leaf).ok())
        .and_then(|entry| match entry.entry.body {
            Body::Membership(membership) => Some(membership),
            _ => None,
        })
        .ok_or(ExportError::NoMembership)?;
    let (log_key, witnesses) =
        checkpoint_verifiers(origin, &membership).map_err(ExportError::Keys)?;
    let stored = checkpoints.len();
    let finals: Vec<(u64, Vec<u8>)> = checkpoints
        .into_iter()
        .filter(|(_, note)| is_final_checkpoint(note, &log_key, &witnesses, &membership))
        .collect();
    let covered = finals.iter().map(|(size, _)| *size).max().unwrap_or(0);
    let covered = (covered as usize).min(leaves.len());
    let mut entries = leaves;
    let awaiting_witnesses = (entries.len() - covered) as u64;
    entries.truncate(covered);
    Ok(FinalPart {
        checkpoints_short_of_quorum: stored - finals.len(),
        awaiting_witnesses,
        log: ExportedLog {
            origin: origin.to_owned(),
            entries,
            checkpoints: finals,
        },
    })
}

/// Writes an export directory from its parts.
pub fn write_export(
    out: &Path,
    origin: &str,
    leaves: &[Vec<u8>],
    checkpoints: &[(u64, Vec<u8>)],
) -> Result<ExportSummary, ExportError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ExportError::Io { path, source }
    };
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(ExportError::NotEmpty(out.display().to_string()));
    }
    let entries_dir = out.join("entries");
    let checkpoints_dir = out.join("checkpoints");
    std::fs::create_dir_all(&entries_dir).map_err(io(&entries_dir))?;
    std::fs::create_dir_all(&checkpoints_dir).map_err(io(&checkpoints_dir))?;
    write_file(&out.join("FORMAT"), format_file(origin).as_bytes())?;
    for (index, leaf) in leaves.iter().enumerate() {
        write_file(&entries_dir.join(entry_file_name(index as u64)), leaf)?;
    }
    for (size, note) in checkpoints {
        write_file(&checkpoints_dir.join(checkpoint_file_name(*size)), note)?;
    }
    Ok(ExportSummary {
        origin: origin.to_owned(),
        entries: leaves.len() as u64,
        checkpoints: checkpoints.len(),
        awaiting_witnesses: 0,
        checkpoints_short_of_quorum: 0,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub origin: String,
    pub entries: u64,
    pub checkpoints: usize,
    /// Entries no final checkpoint covers yet, left out of this export.
    pub awaiting_witnesses: u64,
    /// Stored checkpoints short of the witness quorum, left out as not final.
    pub checkpoints_short_of_quorum: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::audit::sample::SampleConsortium;
    use protocol::audit::verify::audit;

    /// An honest run with staggered starts and an outage: checkpoints signed while only some
    /// members were connected, then final ones, then a tail not yet witnessed by the quorum.
    #[test]
    fn an_honest_log_with_checkpoints_short_of_the_quorum_exports_to_a_passing_audit() {
        // Five members, t = 3: the witness quorum is 4.
        let mut sample = SampleConsortium::new(5, 3, 4, 11);
        sample.publish_checkpoint(&[0]); // only member-a connected yet
        sample.publish_checkpoint(&[0, 1, 2, 3, 4]);
        sample.honest_round(1, &[0, 1, 2, 3, 4], &[0, 2, 4]);
        sample.publish_checkpoint(&[0, 1]); // an outage: two of five
        sample.publish_checkpoint(&[0, 1, 2, 3]);
        sample.honest_round(2, &[0, 1, 2, 3, 4], &[0, 2, 4]);
        sample.publish_checkpoint(&[1, 2]); // the last growth, short of the quorum
        let whole = sample.export();
        // The whole store, as exported before: an auditor sees violations.
        assert_ne!(audit(&whole, None).exit_code(), 0);

        let part = final_part(
            &whole.origin,
            whole.entries.clone(),
            whole.checkpoints.clone(),
        )
        .unwrap();
        let report = audit(&part.log, None);
        assert_eq!(report.exit_code(), 0, "{:?}", report.findings);
        assert_eq!(part.checkpoints_short_of_quorum, 3);
        assert_eq!(part.log.checkpoints.len(), 2);
        let covered = part.log.checkpoints.iter().map(|(s, _)| *s).max().unwrap();
        assert_eq!(part.log.entries.len() as u64, covered);
        assert_eq!(
            part.awaiting_witnesses,
            whole.entries.len() as u64 - covered,
            "round 2 waits for a final checkpoint"
        );
        assert!(part.awaiting_witnesses > 0);
    }
}
