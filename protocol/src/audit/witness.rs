//! The witness, sans-IO: a member cosigns a checkpoint only if it is consistent with the last
//! checkpoint it cosigned (c2sp.org/tlog-witness). The caller persists the returned state
//! durably before it sends the cosignature back.

use super::checkpoint::SignedCheckpoint;
use super::merkle::{self, Hash};
use super::note::{NoteSigner, NoteVerifier, SignatureLine};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    #[error("checkpoint rejected: {0}")]
    Invalid(String),
    #[error("the log's old size {claimed} is not the last cosigned size {cosigned}")]
    Conflict { claimed: u64, cosigned: u64 },
    #[error("the checkpoint is not consistent with the last one cosigned: {0}")]
    Inconsistent(String),
}

/// The last checkpoint this witness cosigned for one log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessState {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl WitnessState {
    pub fn new(origin: &str) -> Self {
        Self {
            origin: origin.to_owned(),
            size: 0,
            root: merkle::empty_root(),
        }
    }

    /// Checks `note` (signed by `log`) against the stored state with the consistency `proof`
    /// from `old_size`, and returns the new state and the cosignature at `now` (seconds).
    pub fn cosign(
        &self,
        old_size: u64,
        proof: &[Hash],
        note: &[u8],
        log: &NoteVerifier,
        witness: &NoteSigner,
        now: u64,
    ) -> Result<(WitnessState, SignatureLine), WitnessError> {
        // Only the log's signature matters here; cosignatures already on the note are ignored.
        let parsed =
            super::note::Note::parse(note).map_err(|e| WitnessError::Invalid(e.to_string()))?;
        let log_line = parsed
            .signatures
            .iter()
            .find(|line| line.name == log.name() && line.key_id == log.key_id())
            .ok_or_else(|| WitnessError::Invalid("no signature by the log".into()))?;
        log.verify(&parsed.text, log_line)
            .map_err(|e| WitnessError::Invalid(e.to_string()))?;
        let checkpoint = super::checkpoint::Checkpoint::parse_text(&parsed.text)
            .map_err(|e| WitnessError::Invalid(e.to_string()))?;
        if checkpoint.origin != self.origin {
            return Err(WitnessError::Invalid(format!(
                "origin {:?} is not {:?}",
                checkpoint.origin, self.origin
            )));
        }
        if old_size > checkpoint.size {
            return Err(WitnessError::Invalid(format!(
                "old size {old_size} exceeds the new size {}",
                checkpoint.size
            )));
        }
        if old_size != self.size {
            return Err(WitnessError::Conflict {
                claimed: old_size,
                cosigned: self.size,
            });
        }
        if checkpoint.size == 0 && checkpoint.root != merkle::empty_root() {
            return Err(WitnessError::Invalid(
                "an empty tree with a non-empty root".into(),
            ));
        }
        let refs: Vec<&[u8]> = proof.iter().map(|h| h.as_slice()).collect();
        if old_size == 0 {
            if !proof.is_empty() {
                return Err(WitnessError::Inconsistent(
                    "a proof from the empty tree".into(),
                ));
            }
        } else {
            merkle::verify_consistency(
                old_size,
                checkpoint.size,
                &refs,
                &self.root,
                &checkpoint.root,
            )
            .map_err(|e| WitnessError::Inconsistent(e.to_string()))?;
        }
        let state = WitnessState {
            origin: self.origin.clone(),
            size: checkpoint.size,
            root: checkpoint.root,
        };
        Ok((state, witness.cosign(&parsed.text, now)))
    }
}

/// A member acts on a checkpoint only if it is cosigned by at least `quorum` witnesses.
pub fn has_quorum(checkpoint: &SignedCheckpoint, quorum: u8) -> bool {
    checkpoint.cosigners.len() >= usize::from(quorum)
}
