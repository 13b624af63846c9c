//! The partial decryptions this member released, each a file beside the store (`partial/`,
//! named by the request), kept until a later round opens. Not store values, for the model's
//! reason (see the parent module): redb wrote an 80 MB partial through a 128 MiB page, which
//! at 10M values took a quorum member 1.2 to 1.4 s of CPU, more than the partial decryption.

use std::path::{Path, PathBuf};

use super::{PARTIALS, StateStore, StateStoreError};

impl StateStore {
    /// Removes what a crash left half-written in `partial/` (hidden temporary files).
    pub(super) fn clear_unfinished_partials(&self) {
        for file in std::fs::read_dir(&self.partials)
            .into_iter()
            .flatten()
            .flatten()
        {
            if file.file_name().to_string_lossy().starts_with('.') {
                let _ = std::fs::remove_file(file.path());
            }
        }
    }

    fn partial_path(&self, request: u64) -> PathBuf {
        self.partials.join(request.to_string())
    }

    /// A file of `partial/` that could not be read, written or removed: the store's health
    /// fails, as it does for an I/O error of redb's.
    fn partial_failed(&self, path: &Path, source: std::io::Error) -> StateStoreError {
        self.health.fail(format!("{}: {source}", path.display()));
        StateStoreError::PartialFile {
            path: path.display().to_string(),
            source,
        }
    }

    /// Keeps the partial decryption released for `request`, durably (written, synced and
    /// renamed into place, owner-only), before it is logged.
    pub fn keep_partial(&self, request: u64, partial: &[u8]) -> Result<(), StateStoreError> {
        let path = self.partial_path(request);
        let written = super::create_dir_durably(&self.partials)
            .and_then(|()| runtime::files::write_secret(&path, partial));
        written.map_err(|source| self.partial_failed(&path, source))
    }

    /// The partial decryption kept for `request`, if any. Stores written before partials were
    /// files kept them in a table, which is read when there is no file.
    pub fn released_partial(&self, request: u64) -> Result<Option<Vec<u8>>, StateStoreError> {
        let path = self.partial_path(request);
        match std::fs::read(&path) {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.partial_failed(&path, e)),
        }
        let tx = self.read()?;
        let table = tx.open_table(PARTIALS).map_err(|e| self.err(e))?;
        let value = table.get(request).map_err(|e| self.err(e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Drops kept partial decryptions of requests logged before leaf `index`. Files whose
    /// names are not request numbers (a write in progress) are left.
    pub fn forget_partials_before(&self, index: u64) -> Result<(), StateStoreError> {
        let files = match std::fs::read_dir(&self.partials) {
            Ok(files) => Some(files),
            // Nothing released yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.partial_failed(&self.partials, e)),
        };
        for file in files.into_iter().flatten() {
            let file = file.map_err(|e| self.partial_failed(&self.partials, e))?;
            let request = file.file_name().to_string_lossy().parse::<u64>();
            if request.is_ok_and(|request| request < index)
                && let Err(e) = std::fs::remove_file(file.path())
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(self.partial_failed(&file.path(), e));
            }
        }
        // Only a store from before partials were files has anything here to drop.
        let stale = {
            let tx = self.read()?;
            let table = tx.open_table(PARTIALS).map_err(|e| self.err(e))?;
            table
                .range(..index)
                .map_err(|e| self.err(e))?
                .next()
                .is_some()
        };
        if stale {
            self.write(|tx| {
                tx.open_table(PARTIALS)?.retain_in(..index, |_, _| false)?;
                Ok(())
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_partial_is_an_owner_only_file_that_outlives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            store.keep_partial(40, b"partial of 40").unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(
            store.released_partial(40).unwrap(),
            Some(b"partial of 40".to_vec())
        );
        let path = dir.path().join("partial").join("40");
        assert_eq!(std::fs::read(&path).unwrap(), b"partial of 40");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&dir.path().join("partial")), 0o700);
        }
    }

    #[test]
    fn what_a_crash_left_half_written_is_cleared_on_opening() {
        let dir = tempfile::tempdir().unwrap();
        let partials = dir.path().join("partial");
        std::fs::create_dir_all(&partials).unwrap();
        let half = partials.join(".40.tmp-7-0");
        std::fs::write(&half, b"half").unwrap();
        StateStore::open(dir.path()).unwrap();
        assert!(!half.exists());
    }

    #[test]
    fn forgetting_drops_the_partials_of_earlier_requests_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        for request in [38, 40, 41, 45] {
            store.keep_partial(request, &request.to_le_bytes()).unwrap();
        }
        // A write in progress (a temporary) is not a request's partial.
        let writing = dir.path().join("partial").join(".40.tmp-7-0");
        std::fs::write(&writing, b"half").unwrap();
        store.forget_partials_before(41).unwrap();
        assert!(writing.exists());
        assert_eq!(store.released_partial(38).unwrap(), None);
        assert_eq!(store.released_partial(40).unwrap(), None);
        assert_eq!(
            store.released_partial(41).unwrap(),
            Some(41u64.to_le_bytes().to_vec())
        );
        assert_eq!(
            store.released_partial(45).unwrap(),
            Some(45u64.to_le_bytes().to_vec())
        );
    }

    #[test]
    fn a_partial_an_older_version_kept_in_the_store_is_still_read_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store
            .write(|tx| {
                tx.open_table(PARTIALS)?
                    .insert(40, b"kept in the table".as_slice())?;
                Ok(())
            })
            .unwrap();
        assert_eq!(
            store.released_partial(40).unwrap(),
            Some(b"kept in the table".to_vec())
        );
        store.forget_partials_before(40).unwrap();
        assert!(store.released_partial(40).unwrap().is_some());
        store.forget_partials_before(41).unwrap();
        assert_eq!(store.released_partial(40).unwrap(), None);
    }

    #[test]
    fn a_partial_that_cannot_be_written_fails_the_store_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        // A file where the directory of partials should be.
        std::fs::write(dir.path().join("partial"), b"").unwrap();
        let error = store.keep_partial(40, b"partial").unwrap_err();
        let StateStoreError::PartialFile { path, .. } = &error else {
            panic!("{error}");
        };
        assert!(path.ends_with("partial/40"), "{path}");
        // Failed already: the wait for the failure ends at once, naming the file.
        let failure = futures::executor::block_on(store.health().failed());
        assert!(failure.contains("partial/40"), "{failure}");
    }
}
