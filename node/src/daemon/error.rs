//! Why one of the node's steps failed: contributing, fetching a ciphertext, releasing,
//! receiving or combining partial decryptions, acting on a checkpoint, appending to the log.
//! The node logs the error and carries on (a step is retried where that is safe); each variant
//! names what to look at.

use std::path::PathBuf;

use protocol::audit::entry::Digest;
use protocol::round::policy::Refusal;

use super::fetch::RecomputeError;
use crate::source::SourceError;
use crate::state_store::StateStoreError;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Transport(#[from] runtime::transport::TransportError),
    #[error("the coordinator refused: {0}")]
    Refused(String),
    #[error("the coordinator answered {request} with {response}")]
    Unexpected { request: String, response: String },
    #[error(
        "the server step of request {request} is history: this member holds round {held}'s model"
    )]
    NoLongerHeld { request: u64, held: u64 },
    #[error(
        "the server step of request {request} was to start from round {expected}'s model, but \
         round {found}'s was read: a combination moved this member on meanwhile"
    )]
    ModelMoved {
        request: u64,
        expected: u64,
        found: u64,
    },
    #[error(
        "request {request} is read against the model of round {held}, which this member no \
         longer holds: a combination moved it on meanwhile"
    )]
    ReferenceMoved { request: u64, held: u64 },
    #[error(
        "the model saved for request {request} encrypts to another base than the one saved with \
         it: the node store does not match its held model"
    )]
    SavedStepMismatch { request: u64 },
    #[error(transparent)]
    Store(#[from] StateStoreError),
    #[error(transparent)]
    Tensors(#[from] training::tensors::TensorError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    He(#[from] protocol::he::HeError),
    #[error(transparent)]
    Wire(#[from] protocol::wire::WireError),
    #[error(transparent)]
    Round(#[from] protocol::round::RoundError),
    #[error(transparent)]
    Recompute(#[from] RecomputeError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a worker task stopped: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("the update holds {got} values, the plan {plan}")]
    UpdateSize { got: usize, plan: u32 },
    #[error("release refused: {0}")]
    Refusal(#[from] Refusal),
    #[error(
        "the key's lifetime budget is spent: {revealed} values revealed, {requested} more \
         requested, limit {limit} (raise kappa at the next ceremony)"
    )]
    LifetimeSpent {
        revealed: u64,
        requested: u32,
        limit: u64,
    },
    #[error("ciphertext {}: {length} bytes, the plan's have {expected}", hex::encode(&digest[..8]))]
    CiphertextLength {
        digest: Digest,
        length: u64,
        expected: u64,
    },
    #[error(
        "ciphertext {}: chunk {index} holds {size} bytes, not {expected}",
        hex::encode(&digest[..8])
    )]
    ChunkSize {
        digest: Digest,
        index: usize,
        size: usize,
        expected: usize,
    },
    #[error("{count} chunks do not make a partial decryption of this plan")]
    PartialChunks { count: u32 },
    #[error("member {member} is not in request {request}'s quorum")]
    NotInQuorum { member: u8, request: u64 },
    #[error("request {request} is far beyond this member's log")]
    FarAhead { request: u64 },
    #[error("too many partial decryptions in flight from member {member}")]
    TooManyInFlight { member: u8 },
    #[error("chunk {index} of {count} arrived, expected {expected} of {expected_count}")]
    OutOfOrder {
        index: u32,
        count: u32,
        expected: u32,
        expected_count: u32,
    },
    #[error("a partial decryption from member {member} exceeds its size limit")]
    PartialTooLarge { member: u8 },
    #[error("request {request} names another ciphertext than the one this member combines")]
    OtherCiphertext { request: u64 },
    #[error("the decrypted model holds {got} values, the plan {plan}")]
    ModelSize { got: usize, plan: u32 },
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] protocol::audit::note::NoteError),
    #[error("this member logged no release for request {request} that it could send again")]
    NothingToResend { request: u64 },
    #[error(
        "the partial decryption for request {request} was sent to member {member} again moments ago"
    )]
    ResentRecently { request: u64, member: u8 },
    #[error("the checkpoint has {cosigners} cosignatures, the witness quorum is {quorum}")]
    UnderQuorum { cosigners: usize, quorum: u8 },
    #[error("the checkpoint of size {size} does not match this member's copy of the log")]
    CheckpointMismatch { size: u64 },
    #[error("the round report: {0}")]
    Report(#[from] serde_json::Error),
}

/// Why a quorum member's partial decryption, whose digest it logged, cannot be combined: it is
/// fixed by the log, so the request never can be, and its author is named.
#[derive(Debug, thiserror::Error)]
pub enum MalformedPartial {
    #[error("member {author}'s partial decryption does not decode: {source}")]
    Decode {
        author: u8,
        source: protocol::wire::WireError,
    },
    #[error("member {author}'s partial decryption names party {party}")]
    OtherParty { author: u8, party: u8 },
    #[error("a partial decryption does not fit the request: {0}")]
    Fit(#[from] protocol::he::HeError),
}
