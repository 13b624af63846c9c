//! The node's durable state in sled: its copy of the log (every leaf it checked), the release
//! ledger (each ciphertext it released a share for, written and flushed before the share
//! leaves), the count of values its key share has revealed, and its current model.

use std::path::Path;

use protocol::audit::entry::Digest;
use protocol::round::HeldModel;

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
    partials: sled::Tree,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateStore({})", self.path)
    }
}

/// The count of revealed values, kept in the ledger tree (whose other keys are 32-byte
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

/// Mask digests live in the ledger tree beside ciphertext digests, told apart by a prefix.
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
const MODEL: &[u8] = b"model";
/// The model this node verified itself ([`HeldModel`]): round, base and model digest.
const HELD: &[u8] = b"held";

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
            partials: db.open_tree("partials").map_err(sled)?,
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

    /// Makes every write so far durable (each step already does; a stopping node does once
    /// more).
    pub fn flush(&self) -> Result<(), StateStoreError> {
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

    /// Values this node's key share has revealed so far.
    pub fn revealed(&self) -> Result<u64, StateStoreError> {
        Ok(self
            .ledger
            .get(REVEALED)
            .map_err(|e| self.err(e))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
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
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let outcome = self.ledger.transaction(|tx| {
            if tx.get(release.ciphertext)?.is_some() || tx.get(mask_key(&release.mask))?.is_some() {
                return Ok(Recorded::AlreadyReleased);
            }
            let revealed = tx
                .get(REVEALED)?
                .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0);
            let after = revealed.saturating_add(values).max(logged);
            if after > limit {
                return Ok(Recorded::LifetimeSpent { revealed, limit });
            }
            let request = release.request.to_be_bytes();
            tx.insert(&release.ciphertext[..], &request[..])?;
            tx.insert(mask_key(&release.mask), &request[..])?;
            tx.insert(REVEALED, &after.to_be_bytes()[..])?;
            Ok::<_, ConflictableTransactionError<()>>(Recorded::Fresh)
        });
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(TransactionError::Storage(e)) => return Err(self.err(e)),
            Err(TransactionError::Abort(())) => unreachable!("the transaction never aborts"),
        };
        self.flush()?;
        Ok(outcome)
    }

    /// Keeps the partial decryption released for `request`, durably, before it is logged.
    pub fn keep_partial(&self, request: u64, partial: &[u8]) -> Result<(), StateStoreError> {
        self.partials
            .insert(request.to_be_bytes(), partial)
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    /// Drops kept partial decryptions of requests logged before leaf `index`.
    pub fn forget_partials_before(&self, index: u64) -> Result<(), StateStoreError> {
        for key in self.partials.range(..index.to_be_bytes()).keys() {
            let key = key.map_err(|e| self.err(e))?;
            self.partials.remove(key).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    pub fn released_partial(&self, request: u64) -> Result<Option<Vec<u8>>, StateStoreError> {
        Ok(self
            .partials
            .get(request.to_be_bytes())
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    /// The decrypted model and the record of how this node verified it, or `None` before the
    /// first decryption.
    pub fn model(&self) -> Result<Option<(Vec<i64>, HeldModel)>, StateStoreError> {
        let corrupt = |what: &str| StateStoreError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        };
        let model = self.meta.get(MODEL).map_err(|e| self.err(e))?;
        let held = self.meta.get(HELD).map_err(|e| self.err(e))?;
        let (model, held) = match (model, held) {
            (None, None) => return Ok(None),
            (Some(model), Some(held)) => (model, held),
            _ => {
                return Err(corrupt(
                    "the model or its verification record (from an older version?)",
                ));
            }
        };
        if model.len() % 8 != 0 {
            return Err(corrupt("the model"));
        }
        if held.len() != 72 {
            return Err(corrupt("the model's verification record"));
        }
        let held = HeldModel {
            round: u64::from_le_bytes(held[..8].try_into().expect("8 bytes")),
            base: held[8..40].try_into().expect("32 bytes"),
            model: held[40..72].try_into().expect("32 bytes"),
        };
        Ok(Some((
            model
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            held,
        )))
    }

    /// Keeps a decrypted model with the record of how it was verified, in one batch.
    pub fn save_model(&self, model: &[i64], held: &HeldModel) -> Result<(), StateStoreError> {
        let bytes: Vec<u8> = model.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut record = held.round.to_le_bytes().to_vec();
        record.extend_from_slice(&held.base);
        record.extend_from_slice(&held.model);
        let mut batch = sled::Batch::default();
        batch.insert(MODEL, bytes);
        batch.insert(HELD, record);
        self.meta.apply_batch(batch).map_err(|e| self.err(e))?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_recorded_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let held = HeldModel {
            round: 3,
            base: [7; 32],
            model: [8; 32],
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
            store.save_model(&[1, -2, 3], &held).unwrap();
            store.keep_partial(40, b"partial").unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.released(&[1; 32]).unwrap(), Some(40));
        assert_eq!(store.released(&[2; 32]).unwrap(), Some(42));
        assert_eq!(store.released(&[4; 32]).unwrap(), None);
        assert_eq!(store.revealed().unwrap(), 2000);
        assert_eq!(store.released(&[3; 32]).unwrap(), None);
        assert_eq!(store.leaves().unwrap(), vec![vec![1], vec![2]]);
        assert_eq!(store.model().unwrap(), Some((vec![1, -2, 3], held)));
        assert_eq!(
            store.released_partial(40).unwrap(),
            Some(b"partial".to_vec())
        );
        assert_eq!(store.released_partial(41).unwrap(), None);
        store.forget_partials_before(41).unwrap();
        assert_eq!(store.released_partial(40).unwrap(), None);
    }
}
