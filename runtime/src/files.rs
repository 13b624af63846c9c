//! Writing secrets to disk: atomically (a temporary file, fsync, rename, fsync of the
//! directory) and readable by the owner only, so a crash never leaves half a key share and
//! nobody else on the machine can read one.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically with mode 0600.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically(path, bytes, 0o600)
}

/// Writes `bytes` to `path` atomically with the given mode (on Unix).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomically_with(path, mode, |out| out.write_all(bytes))
}

/// A name in `dir` for a file being written towards `name`, hidden (it starts with a dot) and
/// distinct for every writer, threads of one process included: a writer that fails removes its
/// own temporary, never another's, and two writers never rename each other's half-written file.
pub fn temporary_in(dir: &Path, name: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(".{name}.tmp-{}-{unique}", std::process::id()))
}

/// Writes what `write` produces to `path` atomically with the given mode (on Unix), through a
/// buffer: large contents need not be whole in memory first, and go past the page cache
/// ([`crate::bulk`]).
pub fn write_atomically_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} is not a file path", path.display())))?;
    let temporary = temporary_in(dir, &file_name.to_string_lossy());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut out = crate::bulk::BulkWriter::new(options.open(&temporary)?);
        write(&mut out)?;
        let file = out.finish()?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Why a TOML configuration file could not be read; names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

/// Reads and parses a TOML configuration file (unknown fields are the type's to refuse).
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_owner_only_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("share");
        write_secret(&path, b"first").unwrap();
        write_secret(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
