//! The node's durable state in sled: its copy of the log (every leaf it checked), the release
//! ledger (each ciphertext it released a share for, written and flushed before the share
//! leaves), the count of values its key share has revealed, and its current model.

use std::path::Path;

use protocol::audit::entry::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    #[error("node store at {path}: {source}")]
    Sled {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("node store at {path}: {what} is corrupt")]
    Corrupt { path: String, what: String },
}

pub struct StateStore {
    path: String,
    db: sled::Db,
    leaves: sled::Tree,
    ledger: sled::Tree,
    meta: sled::Tree,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateStore({})", self.path)
    }
}

const REVEALED: &[u8] = b"revealed";
const MODEL: &[u8] = b"model";

impl StateStore {
    pub fn open(path: &Path) -> Result<Self, StateStoreError> {
        let display = path.display().to_string();
        let sled = |source| StateStoreError::Sled {
            path: display.clone(),
            source,
        };
        let db = sled::open(path).map_err(sled)?;
        Ok(Self {
            leaves: db.open_tree("log").map_err(sled)?,
            ledger: db.open_tree("ledger").map_err(sled)?,
            meta: db.open_tree("meta").map_err(sled)?,
            db,
            path: display,
        })
    }

    fn err(&self, source: sled::Error) -> StateStoreError {
        StateStoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn flush(&self) -> Result<(), StateStoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }

    pub fn leaves(&self) -> Result<Vec<Vec<u8>>, StateStoreError> {
        let mut out = Vec::new();
        for (i, item) in self.leaves.iter().enumerate() {
            let (key, value) = item.map_err(|e| self.err(e))?;
            if key.as_ref() != (i as u64).to_be_bytes() {
                return Err(StateStoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("the log copy (a gap at leaf {i})"),
                });
            }
            out.push(value.to_vec());
        }
        Ok(out)
    }

    /// Stores leaves from `first` on, durably.
    pub fn append_leaves(&self, first: u64, leaves: &[Vec<u8>]) -> Result<(), StateStoreError> {
        for (i, leaf) in leaves.iter().enumerate() {
            self.leaves
                .insert((first + i as u64).to_be_bytes(), leaf.as_slice())
                .map_err(|e| self.err(e))?;
        }
        self.flush()
    }

    /// The request this node released a share of `ciphertext` for, if it ever did.
    pub fn released(&self, ciphertext: &Digest) -> Result<Option<u64>, StateStoreError> {
        Ok(self
            .ledger
            .get(ciphertext)
            .map_err(|e| self.err(e))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    pub fn revealed(&self) -> Result<u64, StateStoreError> {
        Ok(self
            .meta
            .get(REVEALED)
            .map_err(|e| self.err(e))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Records a release, and the values it reveals, durably; call before the share leaves.
    /// Refuses if a share of this ciphertext was already released.
    pub fn record_release(
        &self,
        ciphertext: &Digest,
        request: u64,
        revealed_total: u64,
    ) -> Result<bool, StateStoreError> {
        let fresh = self
            .ledger
            .compare_and_swap(
                ciphertext,
                None as Option<&[u8]>,
                Some(&request.to_be_bytes()[..]),
            )
            .map_err(|e| self.err(e))?
            .is_ok();
        if fresh {
            self.meta
                .insert(REVEALED, &revealed_total.to_be_bytes())
                .map_err(|e| self.err(e))?;
        }
        self.flush()?;
        Ok(fresh)
    }

    pub fn model(&self) -> Result<Option<Vec<i64>>, StateStoreError> {
        let Some(bytes) = self.meta.get(MODEL).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        if bytes.len() % 8 != 0 {
            return Err(StateStoreError::Corrupt {
                path: self.path.clone(),
                what: "the model".into(),
            });
        }
        Ok(Some(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ))
    }

    pub fn save_model(&self, model: &[i64]) -> Result<(), StateStoreError> {
        let bytes: Vec<u8> = model.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.meta.insert(MODEL, bytes).map_err(|e| self.err(e))?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_recorded_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            assert!(store.record_release(&[1; 32], 40, 1000).unwrap());
            assert!(!store.record_release(&[1; 32], 41, 2000).unwrap());
            store.append_leaves(0, &[vec![1], vec![2]]).unwrap();
            store.save_model(&[1, -2, 3]).unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.released(&[1; 32]).unwrap(), Some(40));
        assert_eq!(store.released(&[2; 32]).unwrap(), None);
        assert_eq!(store.revealed().unwrap(), 1000);
        assert_eq!(store.leaves().unwrap(), vec![vec![1], vec![2]]);
        assert_eq!(store.model().unwrap(), Some(vec![1, -2, 3]));
    }
}
