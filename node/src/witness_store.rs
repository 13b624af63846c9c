//! The node's witness state (redb, see `runtime::store`): the last checkpoint it cosigned for
//! each log. It is committed with an fsync before the cosignature leaves the node, so after a
//! crash the witness never cosigns a checkpoint inconsistent with one it already vouched for.

use std::path::Path;

use protocol::audit::merkle::Hash;
use protocol::audit::witness::WitnessState;
use redb::{ReadableDatabase, TableDefinition};

const WITNESS: TableDefinition<&str, &[u8]> = TableDefinition::new("witness");

#[derive(Debug, thiserror::Error)]
pub enum WitnessStoreError {
    #[error(transparent)]
    Open(#[from] runtime::store::OpenError),
    #[error("witness store at {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("witness store at {path}: the state of {origin} is corrupt")]
    Corrupt { path: String, origin: String },
}

pub struct WitnessStore {
    path: String,
    db: redb::Database,
    health: std::sync::Arc<runtime::store::Health>,
}

impl std::fmt::Debug for WitnessStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WitnessStore({})", self.path)
    }
}

impl WitnessStore {
    pub fn open(path: &Path) -> Result<Self, WitnessStoreError> {
        let db = runtime::store::open(path, |tx| tx.open_table(WITNESS).map(|_| ()))?;
        Ok(Self {
            path: path.join(runtime::store::FILE).display().to_string(),
            db,
            health: Default::default(),
        })
    }

    /// Fails once a write to this store failed for want of a working file system.
    pub fn health(&self) -> std::sync::Arc<runtime::store::Health> {
        self.health.clone()
    }

    fn err(&self, source: impl Into<redb::Error>) -> WitnessStoreError {
        let source = source.into();
        if runtime::store::is_io(&source) {
            self.health.fail(format!("{}: {source}", self.path));
        }
        WitnessStoreError::Store {
            path: self.path.clone(),
            source,
        }
    }

    /// The stored state for `origin`, or the empty state if this witness never cosigned it.
    pub fn load(&self, origin: &str) -> Result<WitnessState, WitnessStoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(WITNESS).map_err(|e| self.err(e))?;
        let Some(value) = table.get(origin).map_err(|e| self.err(e))? else {
            return Ok(WitnessState::new(origin));
        };
        let value = value.value();
        let corrupt = || WitnessStoreError::Corrupt {
            path: self.path.clone(),
            origin: origin.to_owned(),
        };
        if value.len() != 40 {
            return Err(corrupt());
        }
        let size = u64::from_be_bytes(value[..8].try_into().map_err(|_| corrupt())?);
        let root: Hash = value[8..].try_into().map_err(|_| corrupt())?;
        Ok(WitnessState {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Stores `state` durably; call before sending the cosignature.
    pub fn save(&self, state: &WitnessState) -> Result<(), WitnessStoreError> {
        let mut value = state.size.to_be_bytes().to_vec();
        value.extend_from_slice(&state.root);
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.open_table(WITNESS)
            .map_err(|e| self.err(e))?
            .insert(state.origin.as_str(), value.as_slice())
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let state = WitnessState {
            origin: "quorate.example/log".into(),
            size: 42,
            root: [7; 32],
        };
        {
            let store = WitnessStore::open(dir.path()).unwrap();
            assert_eq!(store.load(&state.origin).unwrap().size, 0);
            store.save(&state).unwrap();
        }
        let store = WitnessStore::open(dir.path()).unwrap();
        assert_eq!(store.load(&state.origin).unwrap(), state);
    }
}
