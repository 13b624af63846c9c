//! The coordinator's durable log store (redb, see `runtime::store`): leaves by index,
//! checkpoint notes by size.
//!
//! Every write is committed with an fsync before the call returns, because a caller
//! acknowledges an entry as soon as `append` returns: after a crash at any point, every
//! acknowledged entry is still there and the store reopens; a store damaged on disk is refused
//! naming its file.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const LEAVES: TableDefinition<u64, &[u8]> = TableDefinition::new("leaves");
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Open(#[from] runtime::store::OpenError),
    #[error("log store at {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("log store at {path} is inconsistent: {reason}")]
    Corrupt { path: String, reason: String },
}

pub struct LogStore {
    path: String,
    db: redb::Database,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogStore({})", self.path)
    }
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = runtime::store::open(path, |tx| {
            tx.open_table(LEAVES)?;
            tx.open_table(CHECKPOINTS)?;
            tx.open_table(META)?;
            Ok(())
        })?;
        Ok(Self {
            path: path.join(runtime::store::FILE).display().to_string(),
            db,
        })
    }

    fn err(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Store {
            path: self.path.clone(),
            source: source.into(),
        }
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// Writes in one durable transaction.
    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db.begin_read().map_err(|e| self.err(e))
    }

    /// The log's origin, fixed when the store is first used.
    pub fn origin(&self) -> Result<Option<String>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(META).map_err(|e| self.err(e))?;
        let value = table.get("origin").map_err(|e| self.err(e))?;
        value
            .map(|v| {
                String::from_utf8(v.value().to_vec())
                    .map_err(|_| self.corrupt("origin is not UTF-8".into()))
            })
            .transpose()
    }

    pub fn set_origin(&self, origin: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(META)?.insert("origin", origin.as_bytes())?;
            Ok(())
        })
    }

    /// The number of leaves: one more than the last key (a lookup, not a scan).
    pub fn len(&self) -> Result<u64, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(LEAVES).map_err(|e| self.err(e))?;
        let last = table.last().map_err(|e| self.err(e))?;
        Ok(last.map_or(0, |(key, _)| key.value() + 1))
    }

    pub fn is_empty(&self) -> bool {
        self.len().is_ok_and(|n| n == 0)
    }

    /// Stores leaf `index` (which must be the next one) durably.
    pub fn append(&self, index: u64, leaf: &[u8]) -> Result<(), StoreError> {
        let expected = self.len()?;
        if index != expected {
            return Err(self.corrupt(format!("append of leaf {index}, the next is {expected}")));
        }
        self.write(|tx| {
            tx.open_table(LEAVES)?.insert(index, leaf)?;
            Ok(())
        })
    }

    /// Every leaf in index order; a gap means the store is corrupt.
    pub fn leaves(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(LEAVES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for (position, item) in table.iter().map_err(|e| self.err(e))?.enumerate() {
            let (key, value) = item.map_err(|e| self.err(e))?;
            if key.value() != position as u64 {
                return Err(self.corrupt(format!("leaf {position} is missing")));
            }
            out.push(value.value().to_vec());
        }
        Ok(out)
    }

    /// Stores (or replaces, with more cosignatures) the checkpoint note of `size`, durably,
    /// before it is published: the log must never sign two inconsistent checkpoints, so it
    /// has to remember every one it signed. Callers check consistency first
    /// ([`crate::audit_log::AuditLog::sign_checkpoint`]).
    pub fn put_checkpoint(&self, size: u64, note: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(CHECKPOINTS)?.insert(size, note)?;
            Ok(())
        })
    }

    pub fn checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(CHECKPOINTS).map_err(|e| self.err(e))?;
        table
            .iter()
            .map_err(|e| self.err(e))?
            .map(|item| {
                let (key, value) = item.map_err(|e| self.err(e))?;
                Ok((key.value(), value.value().to_vec()))
            })
            .collect()
    }

    pub fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(CHECKPOINTS).map_err(|e| self.err(e))?;
        let last = table.last().map_err(|e| self.err(e))?;
        Ok(last.map(|(key, value)| (key.value(), value.value().to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_and_checkpoints_survive_reopening_and_appends_stay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(dir.path()).unwrap();
            assert!(store.is_empty());
            store.set_origin("quorate.example/log").unwrap();
            store.append(0, b"first").unwrap();
            store.append(1, b"second").unwrap();
            assert!(store.append(3, b"gap").is_err());
            store.put_checkpoint(2, b"note").unwrap();
        }
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            store.origin().unwrap().as_deref(),
            Some("quorate.example/log")
        );
        assert_eq!(store.len().unwrap(), 2);
        assert_eq!(
            store.leaves().unwrap(),
            vec![b"first".to_vec(), b"second".to_vec()]
        );
        assert_eq!(
            store.latest_checkpoint().unwrap(),
            Some((2, b"note".to_vec()))
        );
    }

    #[test]
    fn a_store_damaged_on_disk_is_refused_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(dir.path()).unwrap();
            for i in 0..200u64 {
                store.append(i, &[i as u8; 300]).unwrap();
            }
        }
        let file = dir.path().join(runtime::store::FILE);
        let mut bytes = std::fs::read(&file).unwrap();
        // Every byte of the leaves' pages flipped: the data, not the file's header.
        let at = bytes.windows(300).position(|w| w == [7u8; 300]).unwrap();
        for b in &mut bytes[at..at + 300] {
            *b ^= 0xff;
        }
        std::fs::write(&file, bytes).unwrap();
        let error = LogStore::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains(&file.display().to_string()), "{error}");
        assert!(error.contains("damaged"), "{error}");
    }
}
