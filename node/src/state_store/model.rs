//! The node's model as a file beside the store, named by its digest, which the store's
//! record holds (see the parent module for why it is not a store value).

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use protocol::round::{HeldModel, ModelDigest, ModelHasher, OptimizerState};

use super::{HELD, META, MODEL, OPTIMIZER, StateStore, StateStoreError};

/// Values handed at a time when a model is read in pieces: 8 MB.
pub const MODEL_PIECE: usize = 1 << 20;

impl StateStore {
    /// Removes what a crash left: half-written files, and a model whose record was never
    /// committed.
    pub(super) fn clear_unrecorded_models(&self) -> Result<(), StateStoreError> {
        let held = self.held()?;
        self.remove_models_but(held.map(|h| self.model_path(&h.model)).as_deref());
        Ok(())
    }

    /// Removes every file in `model/` but `keep`.
    fn remove_models_but(&self, keep: Option<&Path>) {
        for file in std::fs::read_dir(&self.models)
            .into_iter()
            .flatten()
            .flatten()
        {
            if Some(file.path().as_path()) != keep {
                let _ = std::fs::remove_file(file.path());
            }
        }
    }

    /// The record of how this node verified its model, or `None` before the first decryption.
    fn held(&self) -> Result<Option<HeldModel>, StateStoreError> {
        let tx = self.read()?;
        let table = tx.open_table(META).map_err(|e| self.err(e))?;
        let Some(held) = table.get(HELD).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let held = held.value();
        if held.len() != 72 {
            return Err(StateStoreError::Corrupt {
                path: self.path.clone(),
                what: "the model's verification record".into(),
            });
        }
        Ok(Some(HeldModel {
            round: u64::from_le_bytes(held[..8].try_into().expect("8 bytes")),
            base: held[8..40].try_into().expect("32 bytes"),
            model: held[40..72].try_into().expect("32 bytes"),
        }))
    }

    /// The decrypted model (of the plan's `values`) and the record of how this node verified
    /// it, or `None` before the first decryption.
    pub fn model(&self, values: u64) -> Result<Option<(Vec<i64>, HeldModel)>, StateStoreError> {
        let corrupt = |what: &str| StateStoreError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        };
        // Not beside a save: it removes the file of the model its record no longer names.
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let held = self.held()?;
        let tx = self.read()?;
        let table = tx.open_table(META).map_err(|e| self.err(e))?;
        let model = table.get(MODEL).map_err(|e| self.err(e))?;
        let Some(held) = held else {
            return match model {
                None => Ok(None),
                Some(_) => Err(corrupt(
                    "the model's verification record (from an older version?)",
                )),
            };
        };
        // Versions before the model file kept the model in the store.
        let values = match model {
            Some(model) => {
                let model = model.value();
                if model.len() % 8 != 0 {
                    return Err(corrupt("the model"));
                }
                model
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect()
            }
            None => self.read_model_file(&held.model, values)?,
        };
        Ok(Some((values, held)))
    }

    fn model_path(&self, digest: &ModelDigest) -> PathBuf {
        self.models.join(hex::encode(digest))
    }

    /// The model of `digest` from its file, which must hold `values` values and hash to it.
    fn read_model_file(
        &self,
        digest: &ModelDigest,
        values: u64,
    ) -> Result<Vec<i64>, StateStoreError> {
        let mut model = Vec::with_capacity(values as usize);
        self.read_model_file_in_pieces(digest, values, |piece| {
            model.extend_from_slice(piece);
            Ok::<_, StateStoreError>(())
        })?;
        Ok(model)
    }

    /// The model of `digest` from its file, handed to `each` in consecutive pieces of at most
    /// [`MODEL_PIECE`] values; the digest is checked once the last is handed, so an error
    /// then means the pieces were not the model.
    fn read_model_file_in_pieces<E: From<StateStoreError>>(
        &self,
        digest: &ModelDigest,
        values: u64,
        mut each: impl FnMut(&[i64]) -> Result<(), E>,
    ) -> Result<(), E> {
        let path = self.model_path(digest);
        let io = |source| StateStoreError::ModelFile {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        if length != values.saturating_mul(8) {
            return Err(io(std::io::Error::other(format!(
                "it is {length} bytes long, not the plan's {values} values of 8 bytes"
            )))
            .into());
        }
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut hasher = ModelHasher::new(values);
        let mut bytes = vec![0u8; 8 * MODEL_PIECE];
        let mut piece = Vec::with_capacity(MODEL_PIECE);
        let mut left = values as usize;
        while left > 0 {
            let count = left.min(MODEL_PIECE);
            reader.read_exact(&mut bytes[..8 * count]).map_err(io)?;
            piece.clear();
            piece.extend(
                bytes[..8 * count]
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))),
            );
            hasher.update(&piece);
            each(&piece)?;
            left -= count;
        }
        if hasher.finalize() != *digest {
            return Err(io(std::io::Error::other(
                "it is not the model its record names (damaged on disk?)",
            ))
            .into());
        }
        Ok(())
    }

    /// The model the record names, if it is `held`'s, handed to `each` in consecutive pieces
    /// (zeros before the first decryption), without holding it whole: `false`, with nothing
    /// handed, if the record names another. As for [`Self::model`], its digest is checked,
    /// once the last piece is handed.
    pub fn model_in_pieces<E: From<StateStoreError>>(
        &self,
        values: u64,
        held: &HeldModel,
        mut each: impl FnMut(&[i64]) -> Result<(), E>,
    ) -> Result<bool, E> {
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let recorded = self.held()?;
        if recorded.unwrap_or_else(HeldModel::initial) != *held {
            return Ok(false);
        }
        let legacy = {
            let tx = self.read()?;
            let table = tx.open_table(META).map_err(|e| self.err(e))?;
            table.get(MODEL).map_err(|e| self.err(e))?.is_some()
        };
        if recorded.is_none() {
            let zeros = vec![0; MODEL_PIECE.min(values as usize)];
            let mut left = values as usize;
            while left > 0 {
                let count = left.min(MODEL_PIECE);
                each(&zeros[..count])?;
                left -= count;
            }
        } else if legacy {
            // Kept in the store by versions before the model file: read whole, as `model` does.
            drop(_saving);
            match self.model(values)? {
                Some((model, read)) if read == *held => each(&model)?,
                _ => return Ok(false),
            }
        } else {
            self.read_model_file_in_pieces(&held.model, values, each)?;
        }
        Ok(true)
    }

    /// Keeps a decrypted model with the record of how it was verified and, under a server
    /// optimizer, its state: in one transaction, so a crash never leaves a model beside
    /// another round's state.
    pub fn save_model(
        &self,
        model: &[i64],
        held: &HeldModel,
        optimizer: Option<&OptimizerState>,
    ) -> Result<(), StateStoreError> {
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.model_path(&held.model);
        let written = self.create_models_dir().and_then(|()| {
            runtime::files::write_atomically_with(&path, 0o600, |out| {
                model
                    .iter()
                    .try_for_each(|v| out.write_all(&v.to_le_bytes()))
            })
        });
        if let Err(source) = written {
            self.health.fail(format!("{}: {source}", path.display()));
            return Err(StateStoreError::ModelFile {
                path: path.display().to_string(),
                source,
            });
        }
        let mut record = held.round.to_le_bytes().to_vec();
        record.extend_from_slice(&held.base);
        record.extend_from_slice(&held.model);
        let optimizer = optimizer.map(OptimizerState::encode);
        self.write(|tx| {
            let mut meta = tx.open_table(META)?;
            meta.remove(MODEL)?;
            meta.insert(HELD, record.as_slice())?;
            if let Some(optimizer) = &optimizer {
                meta.insert(OPTIMIZER, optimizer.as_slice())?;
            }
            Ok(())
        })?;
        // Only now is the previous model's file no longer named by the record.
        self.remove_models_but(Some(&path));
        Ok(())
    }

    /// `model/`, made durably: the record of the first model must not outlive the directory
    /// its file is in.
    fn create_models_dir(&self) -> std::io::Result<()> {
        super::create_dir_durably(&self.models)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::round::model_digest;

    fn held(round: u64, model: &[i64]) -> HeldModel {
        HeldModel {
            round,
            base: [round as u8; 32],
            model: model_digest(model),
        }
    }

    #[test]
    fn the_model_is_a_file_named_by_its_digest_and_only_the_latest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let (first, second) = (vec![5, -6, 7], vec![8, 9, -10]);
        store.save_model(&first, &held(1, &first), None).unwrap();
        store.save_model(&second, &held(2, &second), None).unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path().join("model"))
            .unwrap()
            .map(|f| f.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec![hex::encode(model_digest(&second))]);
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(
            store.model(3).unwrap(),
            Some((second.clone(), held(2, &second)))
        );
    }

    #[test]
    fn a_crash_between_the_model_file_and_its_record_leaves_the_previous_model() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (vec![1i64, 2], vec![3i64, 4]);
        {
            let store = StateStore::open(dir.path()).unwrap();
            store.save_model(&first, &held(1, &first), None).unwrap();
            // The next model's file is written, then the process stops before the record,
            // with a half-written temporary beside it.
            let models = dir.path().join("model");
            let bytes: Vec<u8> = second.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(models.join(hex::encode(model_digest(&second))), bytes).unwrap();
            std::fs::write(models.join(".half.tmp-7"), b"half").unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(
            store.model(2).unwrap(),
            Some((first.clone(), held(1, &first)))
        );
        // Opening removed both leftovers: only the file the record names is there.
        let files: Vec<_> = std::fs::read_dir(dir.path().join("model"))
            .unwrap()
            .map(|f| f.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec![hex::encode(model_digest(&first))]);
        store.save_model(&second, &held(2, &second), None).unwrap();
        assert_eq!(
            store.model(2).unwrap(),
            Some((second.clone(), held(2, &second)))
        );
    }

    #[test]
    fn models_saved_at_once_leave_the_file_their_last_record_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        // Two combinations finishing together, some of the same model and some not.
        let models: Vec<Vec<i64>> = (0..8).map(|i| vec![i % 3, 7, -1]).collect();
        std::thread::scope(|scope| {
            for (i, model) in models.iter().enumerate() {
                let store = &store;
                scope.spawn(move || {
                    store
                        .save_model(model, &held(i as u64, model), None)
                        .unwrap()
                });
            }
        });
        let (model, held) = store.model(3).unwrap().unwrap();
        assert_eq!(model_digest(&model), held.model);
        assert_eq!(
            std::fs::read_dir(dir.path().join("model")).unwrap().count(),
            1
        );
    }

    #[test]
    fn a_model_file_damaged_or_missing_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let model = vec![11, 12, 13];
        let path = dir
            .path()
            .join("model")
            .join(hex::encode(model_digest(&model)));
        let store = StateStore::open(dir.path()).unwrap();
        store.save_model(&model, &held(4, &model), None).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let refused = store.model(3).unwrap_err().to_string();
        assert!(refused.contains(&path.display().to_string()), "{refused}");
        assert!(refused.contains("damaged"), "{refused}");
        // A whole file of another plan's size.
        std::fs::write(&path, [0u8; 32]).unwrap();
        let refused = store.model(3).unwrap_err().to_string();
        assert!(refused.contains("not the plan's 3 values"), "{refused}");
        std::fs::remove_file(&path).unwrap();
        let refused = store.model(3).unwrap_err().to_string();
        assert!(refused.contains(&path.display().to_string()), "{refused}");
    }

    #[test]
    fn a_store_from_before_the_model_file_still_gives_its_model() {
        let dir = tempfile::tempdir().unwrap();
        let model = vec![-1, 2, -3];
        let held = held(5, &model);
        let store = StateStore::open(dir.path()).unwrap();
        // What versions before the model file wrote: the model in the store itself.
        let bytes: Vec<u8> = model.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut record = held.round.to_le_bytes().to_vec();
        record.extend_from_slice(&held.base);
        record.extend_from_slice(&held.model);
        store
            .write(|tx| {
                let mut meta = tx.open_table(META)?;
                meta.insert(MODEL, bytes.as_slice())?;
                meta.insert(HELD, record.as_slice())?;
                Ok(())
            })
            .unwrap();
        assert_eq!(store.model(3).unwrap(), Some((model.clone(), held)));
        // Saving the next model moves it out of the store.
        let next = vec![4, 5, 6];
        store
            .save_model(&next, &tests::held(6, &next), None)
            .unwrap();
        let tx = store.read().unwrap();
        assert!(tx.open_table(META).unwrap().get(MODEL).unwrap().is_none());
    }

    /// A member combining under relative decoding reads its model a piece at a time: every
    /// value in order, zeros before the first decryption, nothing for a model it no longer
    /// holds, and a damaged file refused once its last piece is read.
    #[test]
    fn the_held_model_is_read_in_pieces_in_order_and_only_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let values = MODEL_PIECE + 5;
        let collect = |store: &StateStore, held: &HeldModel| {
            let mut pieces = Vec::new();
            store
                .model_in_pieces(values as u64, held, |piece| {
                    pieces.push(piece.to_vec());
                    Ok::<_, StateStoreError>(())
                })
                .map(|read| read.then_some(pieces))
        };
        let zeros = collect(&store, &HeldModel::initial()).unwrap().unwrap();
        assert_eq!(
            zeros.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MODEL_PIECE, 5]
        );
        assert!(zeros.concat().iter().all(|v| *v == 0));

        let model: Vec<i64> = (0..values as i64).map(|i| i * 7 - 3).collect();
        let record = held(2, &model);
        store.save_model(&model, &record, None).unwrap();
        assert_eq!(collect(&store, &record).unwrap().unwrap().concat(), model);
        assert_eq!(collect(&store, &HeldModel::initial()).unwrap(), None);
        assert_eq!(collect(&store, &held(3, &model)).unwrap(), None);

        let path = dir.path().join("model").join(hex::encode(record.model));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8 * (values - 1)] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let refused = collect(&store, &record).unwrap_err().to_string();
        assert!(refused.contains("damaged"), "{refused}");
    }
}
