//! The coordinator's audit log: entries are checked against the log's rules, stored durably,
//! and only then acknowledged ("log before act"); checkpoints are stored before they are
//! published and gain cosignatures as witnesses reply.

use std::path::Path;

use ed25519_dalek::SigningKey;
use protocol::audit::checkpoint::Checkpoint;
use protocol::audit::entry::{Body, SignedEntry};
use protocol::audit::log::{LogError, LogState};
use protocol::audit::note::{Note, NoteSigner, NoteVerifier, SignatureLine};
use protocol::consortium::Consortium;

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
    #[error(
        "refusing to sign: the log ({size} entries) is not an extension of the checkpoint of size {signed} it signed before"
    )]
    WouldFork { size: u64, signed: u64 },
    #[error("a stored checkpoint is unreadable: {0}")]
    Checkpoint(String),
    #[error("the consortium file: {0}")]
    Consortium(#[from] protocol::consortium::ConsortiumError),
    #[error("the log store belongs to another consortium")]
    OtherConsortium,
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

    /// Opens the consortium's log at `path`; a new one begins with the approved membership,
    /// signed by the coordinator, then every member's ceremony entries. The coordinator's run
    /// and the ceremony's rehearsal start logs here, so they start them the same way.
    pub fn open_or_bootstrap(
        path: &Path,
        consortium: &Consortium,
        coordinator: &SigningKey,
        ceremony_entries: &[SignedEntry],
        now_ms: u64,
    ) -> Result<Self, AuditLogError> {
        let origin = consortium.log_origin();
        let membership = consortium.membership()?;
        let mut log = Self::open(path, &origin)?;
        if log.state().size() == 0 {
            let entry = log
                .state()
                .draft(coordinator, now_ms, Body::Membership(membership.clone()))
                .about(consortium.digest())
                .sign(coordinator);
            log.append(entry)?;
            for entry in ceremony_entries {
                log.append(entry.clone())?;
            }
        }
        if log.state().membership() != Some(&membership) {
            return Err(AuditLogError::OtherConsortium);
        }
        Ok(log)
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

    fn stored_note(&self, size: u64) -> Result<Option<Note>, AuditLogError> {
        self.store
            .checkpoints()?
            .into_iter()
            .find(|(s, _)| *s == size)
            .map(|(_, bytes)| {
                Note::parse(&bytes).map_err(|e| AuditLogError::Checkpoint(e.to_string()))
            })
            .transpose()
    }

    /// Signs a checkpoint of the whole log and stores it before returning it for publication.
    /// Refuses if the log does not extend the latest checkpoint it signed (after a lost or
    /// restored store, say): signing would create a fork. Signing the same tree again returns
    /// the stored note with the cosignatures it already has.
    pub fn sign_checkpoint(
        &self,
        signer: &NoteSigner,
    ) -> Result<(Checkpoint, Note), AuditLogError> {
        let checkpoint = self.state.checkpoint();
        if let Some((signed_size, bytes)) = self.store.latest_checkpoint()? {
            let note = Note::parse(&bytes).map_err(|e| AuditLogError::Checkpoint(e.to_string()))?;
            let signed = Checkpoint::parse_text(&note.text)
                .map_err(|e| AuditLogError::Checkpoint(e.to_string()))?;
            if self.state.root_at(signed_size) != Some(signed.root) {
                return Err(AuditLogError::WouldFork {
                    size: self.state.size(),
                    signed: signed_size,
                });
            }
            if signed_size == checkpoint.size {
                return Ok((checkpoint, note));
            }
        }
        let note = checkpoint.sign(signer);
        self.store
            .put_checkpoint(checkpoint.size, note.encode().as_bytes())?;
        Ok((checkpoint, note))
    }

    /// Adds witnesses' cosignatures to the stored checkpoint of `size`. Each line must verify
    /// under its witness's key; a newer line from the same witness replaces the older one, so
    /// a stored note never carries an invalid or duplicate cosignature that would make the
    /// whole checkpoint fail an audit.
    pub fn add_cosignatures(
        &self,
        size: u64,
        lines: &[SignatureLine],
        witnesses: &[NoteVerifier],
    ) -> Result<(), AuditLogError> {
        let mut note = self
            .stored_note(size)?
            .ok_or(AuditLogError::NoSuchCheckpoint(size))?;
        for line in lines {
            let Some(witness) = witnesses
                .iter()
                .find(|w| w.name() == line.name && w.key_id() == line.key_id)
            else {
                return Err(AuditLogError::Checkpoint(format!(
                    "a cosignature by unknown witness {}",
                    line.name
                )));
            };
            witness
                .verify(&note.text, line)
                .map_err(|e| AuditLogError::Checkpoint(e.to_string()))?;
            note.signatures
                .retain(|old| !(old.name == line.name && old.key_id == line.key_id));
            note.signatures.push(line.clone());
        }
        self.store.put_checkpoint(size, note.encode().as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::audit::entry::SignedEntry;
    use protocol::audit::log::checkpoint_verifiers;
    use protocol::audit::sample::honest_log;

    #[test]
    fn checkpoints_keep_valid_cosignatures_and_never_fork() {
        let sample = honest_log(1);
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), &sample.origin).unwrap();
        for leaf in sample.log.leaves() {
            log.append(SignedEntry::open(leaf).unwrap()).unwrap();
        }
        let membership = log.state().membership().unwrap().clone();
        let (_, witnesses) = checkpoint_verifiers(&sample.origin, &membership).unwrap();
        let (checkpoint, note) = log.sign_checkpoint(&sample.log_signer).unwrap();
        let lines: Vec<_> = sample
            .members
            .iter()
            .map(|m| m.witness.cosign(&note.text, 100))
            .collect();
        log.add_cosignatures(checkpoint.size, &lines, &witnesses)
            .unwrap();
        // A later cosignature by the same witness replaces its earlier one.
        let again = sample.members[0].witness.cosign(&note.text, 200);
        log.add_cosignatures(checkpoint.size, &[again], &witnesses)
            .unwrap();
        let (_, stored) = log.store().latest_checkpoint().unwrap().unwrap();
        let stored = Note::parse(&stored).unwrap();
        assert_eq!(stored.signatures.len(), 1 + sample.members.len());
        // A bogus line is refused and the stored note is untouched.
        let mut bogus = lines[1].clone();
        bogus.signature[10] ^= 1;
        assert!(
            log.add_cosignatures(checkpoint.size, &[bogus], &witnesses)
                .is_err()
        );
        // Signing the same tree again keeps the cosignatures.
        let (_, resigned) = log.sign_checkpoint(&sample.log_signer).unwrap();
        assert_eq!(resigned.signatures.len(), 1 + sample.members.len());

        // A store that lost entries refuses to sign a checkpoint that would fork.
        drop(log);
        let other = tempfile::tempdir().unwrap();
        let lost = AuditLog::open(other.path(), &sample.origin).unwrap();
        let (_, bytes) = sample.checkpoints.last().unwrap();
        lost.store()
            .put_checkpoint(sample.log.size(), bytes)
            .unwrap();
        let mut lost = lost;
        lost.append(SignedEntry::open(sample.log.leaf(0).unwrap()).unwrap())
            .unwrap();
        assert!(matches!(
            lost.sign_checkpoint(&sample.log_signer),
            Err(AuditLogError::WouldFork { .. })
        ));
    }
}
