//! The node's witness state in sled: the last checkpoint it cosigned for each log. It is
//! written and flushed before the cosignature leaves the node, so after a crash the witness
//! never cosigns a checkpoint inconsistent with one it already vouched for.

use std::path::Path;

use protocol::audit::merkle::Hash;
use protocol::audit::witness::WitnessState;

#[derive(Debug, thiserror::Error)]
pub enum WitnessStoreError {
    #[error("witness store at {path}: {source}")]
    Sled {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("witness store at {path}: the state of {origin} is corrupt")]
    Corrupt { path: String, origin: String },
}

pub struct WitnessStore {
    path: String,
    tree: sled::Tree,
    db: sled::Db,
}

impl std::fmt::Debug for WitnessStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WitnessStore({})", self.path)
    }
}

impl WitnessStore {
    pub fn open(path: &Path) -> Result<Self, WitnessStoreError> {
        let display = path.display().to_string();
        let sled = |source| WitnessStoreError::Sled {
            path: display.clone(),
            source,
        };
        let db = sled::open(path).map_err(sled)?;
        let tree = db.open_tree("witness").map_err(sled)?;
        Ok(Self {
            path: display,
            tree,
            db,
        })
    }

    fn err(&self, source: sled::Error) -> WitnessStoreError {
        WitnessStoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// The stored state for `origin`, or the empty state if this witness never cosigned it.
    pub fn load(&self, origin: &str) -> Result<WitnessState, WitnessStoreError> {
        let Some(value) = self.tree.get(origin).map_err(|e| self.err(e))? else {
            return Ok(WitnessState::new(origin));
        };
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
        self.tree
            .insert(state.origin.as_bytes(), value)
            .map_err(|e| self.err(e))?;
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
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
