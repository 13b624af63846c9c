//! The node's durable state (redb, see `runtime::store`): its copy of the log (every leaf it
//! checked), the release ledger (each ciphertext it released a share for, committed with an
//! fsync before the share leaves), the count of values its key share has revealed, and the
//! record of its current model.
//!
//! The model itself (8 bytes per value) is a file beside the store, named by its digest, which
//! the record holds: redb would give an 80 MB value a 128 MiB page and copy it through its
//! write path, the largest part of a member's peak memory at 10M values. The file is written
//! and synced before the record that names it is committed, so a crash leaves the record of
//! the previous model with its file in place. The partial decryptions it released are files
//! beside the store too, for the same reason (`partial.rs`).

use std::path::{Path, PathBuf};

mod model;
mod partial;

use protocol::audit::entry::Digest;
use protocol::round::OptimizerState;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const LEDGER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ledger");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const PARTIALS: TableDefinition<u64, &[u8]> = TableDefinition::new("partials");
/// The META key of the latest quorum-cosigned checkpoint note acted on.
const FINAL_CHECKPOINT: &str = "final-checkpoint";

#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    #[error(transparent)]
    Open(#[from] runtime::store::OpenError),
    #[error("node store at {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("node store at {path}: {what} is corrupt")]
    Corrupt { path: String, what: String },
    #[error("the node's model file {path}: {source}")]
    ModelFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the node's kept partial decryption {path}: {source}")]
    PartialFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct StateStore {
    path: String,
    /// Where the model files are (`model/` in the store's directory).
    models: PathBuf,
    /// Where the released partial decryptions are (`partial/` in the store's directory).
    partials: PathBuf,
    /// Held while a model is saved: the file, its record and the removal of every other
    /// model file are one step, or two combinations finishing at once could remove the file
    /// the other one's record names.
    saving: std::sync::Mutex<()>,
    db: redb::Database,
    health: std::sync::Arc<runtime::store::Health>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateStore({})", self.path)
    }
}

/// The count of revealed values, kept in the ledger table (whose other keys are 32-byte
/// digests) so that one transaction updates it with the release.
const REVEALED: &[u8] = b"revealed";

/// What a release is recorded under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    pub request: u64,
    /// The digest of the released ciphertext.
    pub ciphertext: Digest,
    /// The digest of its masks ([`protocol::wire::mask_digest`]).
    pub mask: Digest,
}

/// Mask digests live in the ledger table beside ciphertext digests, told apart by a prefix.
fn mask_key(mask: &Digest) -> Vec<u8> {
    [b"mask:".as_slice(), mask].concat()
}

/// The outcome of recording a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Fresh,
    AlreadyReleased,
    LifetimeSpent { revealed: u64, limit: u64 },
}
/// The model itself, where versions before the model file kept it.
const MODEL: &str = "model";
/// The model this node verified itself ([`HeldModel`]): round, base and model digest.
const HELD: &str = "held";
/// The server optimizer's state (under a plan with another optimizer than FedAvg), written in
/// the same transaction as the model it belongs to.
const OPTIMIZER: &str = "optimizer-state";

fn be_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

/// Makes `dir` (owner-only) if it is missing, and syncs its entry in its parent: a record
/// committed, or an entry logged, after a file was kept in `dir` must not outlive the
/// directory the file is in.
fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::File::open(parent)?.sync_all()
}

impl StateStore {
    pub fn open(path: &Path) -> Result<Self, StateStoreError> {
        let db = runtime::store::open(path, |tx| {
            tx.open_table(LOG)?;
            tx.open_table(LEDGER)?;
            tx.open_table(META)?;
            tx.open_table(PARTIALS)?;
            Ok(())
        })?;
        let store = Self {
            path: path.join(runtime::store::FILE).display().to_string(),
            models: path.join("model"),
            partials: path.join("partial"),
            saving: Default::default(),
            db,
            health: Default::default(),
        };
        store.clear_unrecorded_models()?;
        store.clear_unfinished_partials();
        Ok(store)
    }

    /// Fails once a write to this store failed for want of a working file system.
    pub fn health(&self) -> std::sync::Arc<runtime::store::Health> {
        self.health.clone()
    }

    fn err(&self, source: impl Into<redb::Error>) -> StateStoreError {
        let source = source.into();
        if runtime::store::is_io(&source) {
            self.health.fail(format!("{}: {source}", self.path));
        }
        StateStoreError::Store {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes in one durable transaction, returning what `f` decided.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StateStoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let out = f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn read(&self) -> Result<redb::ReadTransaction, StateStoreError> {
        self.db.begin_read().map_err(|e| self.err(e))
    }

    /// Every write is already durable when it returns; kept for a stopping node's last word.
    pub fn flush(&self) -> Result<(), StateStoreError> {
        Ok(())
    }

    pub fn leaves(&self) -> Result<Vec<Vec<u8>>, StateStoreError> {
        let tx = self.read()?;
        let table = tx.open_table(LOG).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for (i, item) in table.iter().map_err(|e| self.err(e))?.enumerate() {
            let (key, value) = item.map_err(|e| self.err(e))?;
            if key.value() != i as u64 {
                return Err(StateStoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("the log copy (a gap at leaf {i})"),
                });
            }
            out.push(value.value().to_vec());
        }
        Ok(out)
    }

    /// Stores leaves from `first` on, durably.
    pub fn append_leaves(&self, first: u64, leaves: &[Vec<u8>]) -> Result<(), StateStoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(LOG)?;
            for (i, leaf) in leaves.iter().enumerate() {
                table.insert(first + i as u64, leaf.as_slice())?;
            }
            Ok(())
        })
    }

    fn ledger_u64(&self, key: &[u8]) -> Result<Option<u64>, StateStoreError> {
        let tx = self.read()?;
        let table = tx.open_table(LEDGER).map_err(|e| self.err(e))?;
        let value = table.get(key).map_err(|e| self.err(e))?;
        Ok(value.and_then(|v| be_u64(v.value())))
    }

    /// The request this node released a share of `ciphertext` for, if it ever did.
    pub fn released(&self, ciphertext: &Digest) -> Result<Option<u64>, StateStoreError> {
        self.ledger_u64(ciphertext)
    }

    /// Values this node's key share has revealed so far.
    pub fn revealed(&self) -> Result<u64, StateStoreError> {
        Ok(self.ledger_u64(REVEALED)?.unwrap_or(0))
    }

    /// Records a release of `values` values, durably and atomically with the count of values
    /// revealed; call before the share leaves. Refuses a second release for one ciphertext or
    /// one mask digest (a partial depends on the masks alone), and a release past the key's
    /// lifetime `limit`. `logged` is the count of values the consortium's logged releases have
    /// revealed, this one included: the key's reveals are counted from every member's
    /// releases, not from this member's alone.
    pub fn record_release(
        &self,
        release: &Release,
        values: u64,
        limit: u64,
        logged: u64,
    ) -> Result<Recorded, StateStoreError> {
        self.write(|tx| {
            let mut ledger = tx.open_table(LEDGER)?;
            let mask = mask_key(&release.mask);
            if ledger.get(release.ciphertext.as_slice())?.is_some()
                || ledger.get(mask.as_slice())?.is_some()
            {
                return Ok(Recorded::AlreadyReleased);
            }
            let revealed = ledger
                .get(REVEALED)?
                .and_then(|v| be_u64(v.value()))
                .unwrap_or(0);
            let after = revealed.saturating_add(values).max(logged);
            if after > limit {
                return Ok(Recorded::LifetimeSpent { revealed, limit });
            }
            let request = release.request.to_be_bytes();
            ledger.insert(release.ciphertext.as_slice(), request.as_slice())?;
            ledger.insert(mask.as_slice(), request.as_slice())?;
            ledger.insert(REVEALED, after.to_be_bytes().as_slice())?;
            Ok(Recorded::Fresh)
        })
    }

    /// Keeps the latest checkpoint note the witness quorum cosigned, which this node acted
    /// on: after a restart the node acts on it again as soon as it reaches the coordinator,
    /// whether or not the log has grown since.
    pub fn keep_final_checkpoint(&self, note: &[u8]) -> Result<(), StateStoreError> {
        self.write(|tx| {
            tx.open_table(META)?.insert(FINAL_CHECKPOINT, note)?;
            Ok(())
        })
    }

    pub fn final_checkpoint(&self) -> Result<Option<Vec<u8>>, StateStoreError> {
        let tx = self.read()?;
        let table = tx.open_table(META).map_err(|e| self.err(e))?;
        let value = table.get(FINAL_CHECKPOINT).map_err(|e| self.err(e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// The server optimizer's state saved with the model, checked against the sizes of the
    /// plan's (`expected`); `None` before the first decryption.
    pub fn optimizer_state(
        &self,
        expected: &OptimizerState,
    ) -> Result<Option<OptimizerState>, StateStoreError> {
        let tx = self.read()?;
        let table = tx.open_table(META).map_err(|e| self.err(e))?;
        let Some(bytes) = table.get(OPTIMIZER).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        OptimizerState::decode(bytes.value(), expected)
            .map(Some)
            .ok_or_else(|| StateStoreError::Corrupt {
                path: self.path.clone(),
                what: "the server optimizer's state (or it belongs to another plan)".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::round::{HeldModel, model_digest};

    #[test]
    fn the_optimizer_state_is_kept_with_its_model_and_read_only_at_the_plans_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let adam = protocol::round::Optimizer::named("adam").unwrap();
        let mut state = adam.initial_state(2, 28);
        state.first[0] = 5;
        let held = HeldModel {
            round: 1,
            base: [1; 32],
            model: model_digest(&[3, 4]),
        };
        {
            let store = StateStore::open(dir.path()).unwrap();
            assert_eq!(store.optimizer_state(&state).unwrap(), None);
            store.save_model(&[3, 4], &held, Some(&state)).unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.optimizer_state(&state).unwrap(), Some(state));
        assert!(matches!(
            store.optimizer_state(&adam.initial_state(3, 28)),
            Err(StateStoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_release_is_recorded_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let held = HeldModel {
            round: 3,
            base: [7; 32],
            model: model_digest(&[1, -2, 3]),
        };
        {
            let store = StateStore::open(dir.path()).unwrap();
            let release = |ciphertext: u8, mask: u8, request: u64| Release {
                request,
                ciphertext: [ciphertext; 32],
                mask: [mask; 32],
            };
            assert_eq!(
                store
                    .record_release(&release(1, 11, 40), 1000, 2500, 0)
                    .unwrap(),
                Recorded::Fresh
            );
            assert_eq!(
                store
                    .record_release(&release(1, 11, 41), 1000, 2500, 0)
                    .unwrap(),
                Recorded::AlreadyReleased
            );
            // Another ciphertext with the same masks: its partial would be the same inner
            // products under fresh smudging, so it is refused too.
            assert_eq!(
                store
                    .record_release(&release(5, 11, 44), 1000, 2500, 0)
                    .unwrap(),
                Recorded::AlreadyReleased
            );
            assert_eq!(
                store
                    .record_release(&release(2, 12, 42), 1000, 2500, 0)
                    .unwrap(),
                Recorded::Fresh
            );
            assert_eq!(
                store
                    .record_release(&release(3, 13, 43), 1000, 2500, 0)
                    .unwrap(),
                Recorded::LifetimeSpent {
                    revealed: 2000,
                    limit: 2500
                }
            );
            // Reveals counted from the whole consortium's logged releases, when they are more.
            assert_eq!(
                store
                    .record_release(&release(6, 16, 45), 100, 2500, 2600)
                    .unwrap(),
                Recorded::LifetimeSpent {
                    revealed: 2000,
                    limit: 2500
                }
            );
            store.append_leaves(0, &[vec![1], vec![2]]).unwrap();
            store.save_model(&[1, -2, 3], &held, None).unwrap();
            store.keep_partial(40, b"partial").unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.released(&[1; 32]).unwrap(), Some(40));
        assert_eq!(store.released(&[2; 32]).unwrap(), Some(42));
        assert_eq!(store.released(&[4; 32]).unwrap(), None);
        assert_eq!(store.revealed().unwrap(), 2000);
        assert_eq!(store.released(&[3; 32]).unwrap(), None);
        assert_eq!(store.leaves().unwrap(), vec![vec![1], vec![2]]);
        assert_eq!(store.model(3).unwrap(), Some((vec![1, -2, 3], held)));
        assert_eq!(
            store.released_partial(40).unwrap(),
            Some(b"partial".to_vec())
        );
        assert_eq!(store.released_partial(41).unwrap(), None);
        store.forget_partials_before(41).unwrap();
        assert_eq!(store.released_partial(40).unwrap(), None);
    }
}
