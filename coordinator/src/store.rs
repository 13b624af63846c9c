//! The coordinator's durable log store in sled: leaves by index, checkpoint notes by size.
//!
//! Every write is flushed (fsync) before the call returns, because a caller acknowledges an
//! entry as soon as `append` returns: after a crash at any point, every acknowledged entry is
//! still there and the store reopens.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("log store at {path}: {source}")]
    Sled {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("log store at {path} is inconsistent: {reason}")]
    Corrupt { path: String, reason: String },
}

pub struct LogStore {
    path: String,
    db: sled::Db,
    leaves: sled::Tree,
    checkpoints: sled::Tree,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogStore({})", self.path)
    }
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let display = path.display().to_string();
        let sled = |source| StoreError::Sled {
            path: display.clone(),
            source,
        };
        let db = sled::open(path).map_err(sled)?;
        let leaves = db.open_tree("leaves").map_err(sled)?;
        let checkpoints = db.open_tree("checkpoints").map_err(sled)?;
        Ok(Self {
            path: display,
            db,
            leaves,
            checkpoints,
        })
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// The log's origin, fixed when the store is first used.
    pub fn origin(&self) -> Result<Option<String>, StoreError> {
        let value = self.db.get("origin").map_err(|e| self.err(e))?;
        value
            .map(|v| {
                String::from_utf8(v.to_vec())
                    .map_err(|_| self.corrupt("origin is not UTF-8".into()))
            })
            .transpose()
    }

    pub fn set_origin(&self, origin: &str) -> Result<(), StoreError> {
        self.db
            .insert("origin", origin.as_bytes())
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    /// The number of leaves: one more than the last key (a lookup, not a scan).
    pub fn len(&self) -> Result<u64, StoreError> {
        match self.leaves.last().map_err(|e| self.err(e))? {
            None => Ok(0),
            Some((key, _)) => {
                let key: [u8; 8] = key
                    .as_ref()
                    .try_into()
                    .map_err(|_| self.corrupt("a leaf key is not 8 bytes".into()))?;
                Ok(u64::from_be_bytes(key) + 1)
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// Stores leaf `index` (which must be the next one) durably.
    pub fn append(&self, index: u64, leaf: &[u8]) -> Result<(), StoreError> {
        let expected = self.len()?;
        if index != expected {
            return Err(self.corrupt(format!("append of leaf {index}, the next is {expected}")));
        }
        self.leaves
            .insert(index.to_be_bytes(), leaf)
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    /// Every leaf in index order; a gap means the store is corrupt.
    pub fn leaves(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::with_capacity(self.leaves.len());
        for (position, item) in self.leaves.iter().enumerate() {
            let (key, value) = item.map_err(|e| self.err(e))?;
            let index = u64::from_be_bytes(
                key.as_ref()
                    .try_into()
                    .map_err(|_| self.corrupt("a leaf key is not 8 bytes".into()))?,
            );
            if index != position as u64 {
                return Err(self.corrupt(format!("leaf {position} is missing")));
            }
            out.push(value.to_vec());
        }
        Ok(out)
    }

    /// Stores (or replaces, with more cosignatures) the checkpoint note of `size`, durably,
    /// before it is published: the log must never sign two inconsistent checkpoints, so it
    /// has to remember every one it signed. Callers check consistency first
    /// ([`crate::audit_log::AuditLog::sign_checkpoint`]).
    pub fn put_checkpoint(&self, size: u64, note: &[u8]) -> Result<(), StoreError> {
        self.checkpoints
            .insert(size.to_be_bytes(), note)
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    pub fn checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.checkpoints
            .iter()
            .map(|item| {
                let (key, value) = item.map_err(|e| self.err(e))?;
                let size = u64::from_be_bytes(
                    key.as_ref()
                        .try_into()
                        .map_err(|_| self.corrupt("a checkpoint key is not 8 bytes".into()))?,
                );
                Ok((size, value.to_vec()))
            })
            .collect()
    }

    pub fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self.checkpoints()?.pop())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }
}
