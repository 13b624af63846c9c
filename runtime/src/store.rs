//! Opening the roles' durable stores: one redb file per store directory, every page checksum
//! verified when it is opened, so that a store damaged on disk is refused naming its file
//! instead of being read as an older or empty state (a node that forgot a release, a log that
//! forgot an entry). A store cut short by a crash reopens with every committed write: each
//! write the roles acknowledge is committed with immediate durability (an fsync) first.

use std::path::{Path, PathBuf};

use redb::Database;

/// The store's file inside its directory.
pub const FILE: &str = "store.redb";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "{}: the store is damaged on disk ({reason}); it was not opened. Restore the \
         directory from a backup, or ask the consortium how to rebuild it: a node's store \
         holds the ledger of the shares it released",
        path.display()
    )]
    Corrupted { path: PathBuf, reason: String },
    #[error(
        "{}: this store was written by an earlier version of quorate (sled); it is not read. \
         Finish the run with that version, or start a new run in a new store",
        path.display()
    )]
    EarlierVersion { path: PathBuf },
    #[error("creating the store directory {}: {source}", path.display())]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
}

/// Opens (creating if need be) the store in directory `dir`, checking every page, and makes
/// sure the tables `create` opens exist.
pub fn open(
    dir: &Path,
    create: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::TableError>,
) -> Result<Database, OpenError> {
    std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
        path: dir.to_owned(),
        source,
    })?;
    if dir.join("conf").exists() && dir.join("db").exists() {
        return Err(OpenError::EarlierVersion {
            path: dir.to_owned(),
        });
    }
    let path = dir.join(FILE);
    let failed = |source: redb::Error| match source {
        redb::Error::Corrupted(reason) => OpenError::Corrupted {
            path: path.clone(),
            reason,
        },
        source => OpenError::Open {
            path: path.clone(),
            source,
        },
    };
    let db = Database::builder()
        .set_check_integrity_on_open(true)
        // redb keeps every page it wrote in its cache (1 GiB by default). A member writes its
        // model and partial decryptions, 80 MB each at 10M values, and rarely reads them back:
        // cached, they would hold as much memory as the round's own buffers.
        .set_cache_size(STORE_CACHE_BYTES)
        .create(&path)
        .map_err(|e| failed(e.into()))?;
    let tx = db.begin_write().map_err(|e| failed(e.into()))?;
    create(&tx).map_err(|e| failed(e.into()))?;
    tx.commit().map_err(|e| failed(e.into()))?;
    Ok(db)
}

/// redb's page cache per store: the log's entries and the ledger fit many times over.
const STORE_CACHE_BYTES: usize = 32 << 20;

/// Whether a store error is the file system's (a full disk, a read-only file system, a
/// failing device). After one, redb refuses every later write until the store is reopened.
pub fn is_io(error: &redb::Error) -> bool {
    matches!(error, redb::Error::Io(_) | redb::Error::PreviousIo)
}

/// A store that could not write: the process must stop (and say why) rather than carry on
/// without recording what it does. Everything committed before stays; a restart once the file
/// system is fixed carries on from there.
#[derive(Debug, Default)]
pub struct Health {
    failure: std::sync::OnceLock<String>,
    notify: tokio::sync::Notify,
}

impl Health {
    /// Records the first write failure, naming the store.
    pub fn fail(&self, message: String) {
        if self.failure.set(message).is_ok() {
            self.notify.notify_waiters();
        }
    }

    /// Completes with the failure once a write failed.
    pub async fn failed(&self) -> String {
        loop {
            let notified = self.notify.notified();
            if let Some(message) = self.failure.get() {
                return message.clone();
            }
            notified.await;
        }
    }
}
