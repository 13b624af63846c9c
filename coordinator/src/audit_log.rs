//! The coordinator's audit log: entries are checked against the log's rules, stored durably,
//! and only then acknowledged ("log before act"); checkpoints are stored before they are
//! published and gain cosignatures as witnesses reply.

use std::path::Path;

use protocol::audit::checkpoint::Checkpoint;
use protocol::audit::entry::SignedEntry;
use protocol::audit::log::{LogError, LogState};
use protocol::audit::note::{Note, NoteSigner, SignatureLine};

use crate::store::{LogStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("entry refused: {0}")]
    Refused(#[from] LogError),
    #[error("the store belongs to log {stored:?}, not {requested:?}")]
    OtherLog { stored: String, requested: String },
    #[error("no checkpoint of size {0} was published")]
    NoSuchCheckpoint(u64),
}

#[derive(Debug)]
pub struct AuditLog {
    state: LogState,
    store: LogStore,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, re-checking every stored entry.
    pub fn open(path: &Path, origin: &str) -> Result<Self, AuditLogError> {
        let store = LogStore::open(path)?;
        match store.origin()? {
            Some(stored) if stored != origin => {
                return Err(AuditLogError::OtherLog {
                    stored,
                    requested: origin.to_owned(),
                });
            }
            Some(_) => {}
            None => store.set_origin(origin)?,
        }
        let state = LogState::restore(origin, store.leaves()?)?;
        Ok(Self { state, store })
    }

    pub fn state(&self) -> &LogState {
        &self.state
    }

    pub fn store(&self) -> &LogStore {
        &self.store
    }

    /// Checks, stores durably, then applies: when this returns the entry is acknowledged.
    pub fn append(&mut self, entry: SignedEntry) -> Result<u64, AuditLogError> {
        self.state.check(&entry)?;
        let index = self.state.size();
        self.store.append(index, entry.leaf())?;
        self.state.append(entry)?;
        Ok(index)
    }

    /// Signs a checkpoint of the whole log and stores it before returning it for publication.
    pub fn sign_checkpoint(
        &self,
        signer: &NoteSigner,
    ) -> Result<(Checkpoint, Note), AuditLogError> {
        let checkpoint = self.state.checkpoint();
        let note = checkpoint.sign(signer);
        self.store
            .put_checkpoint(checkpoint.size, note.encode().as_bytes())?;
        Ok((checkpoint, note))
    }

    /// Adds witnesses' cosignatures to the stored checkpoint of `size`.
    pub fn add_cosignatures(
        &self,
        size: u64,
        lines: &[SignatureLine],
    ) -> Result<(), AuditLogError> {
        let stored = self
            .store
            .checkpoints()?
            .into_iter()
            .find(|(s, _)| *s == size)
            .ok_or(AuditLogError::NoSuchCheckpoint(size))?;
        let mut note = Note::parse(&stored.1).map_err(|e| StoreError::Corrupt {
            path: format!("{:?}", self.store),
            reason: e.to_string(),
        })?;
        for line in lines {
            if !note.signatures.contains(line) {
                note.signatures.push(line.clone());
            }
        }
        self.store.put_checkpoint(size, note.encode().as_bytes())?;
        Ok(())
    }
}
