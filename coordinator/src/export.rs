//! Writes the log as plain files an auditor can copy: `FORMAT`, `entries/<index>.entry` and
//! `checkpoints/<size>.checkpoint`. The layout is defined in `protocol::audit::verify`.

use std::io::Write;
use std::path::Path;

use protocol::audit::verify::{checkpoint_file_name, entry_file_name, format_file};

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

/// Exports every entry and checkpoint in `store` into the new directory `out`.
pub fn export(store: &LogStore, out: &Path) -> Result<ExportSummary, ExportError> {
    let origin = store.origin()?.ok_or(ExportError::NoOrigin)?;
    write_export(out, &origin, &store.leaves()?, &store.checkpoints()?)
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
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub origin: String,
    pub entries: u64,
    pub checkpoints: usize,
}
