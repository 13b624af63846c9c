//! The signed, append-only audit log: RFC 6962 Merkle tree, signed entries, C2SP checkpoints
//! and witness cosignatures, and the offline verifier.

pub mod checkpoint;
pub mod entry;
pub mod log;
pub mod merkle;
pub mod note;
pub mod sample;
pub mod verify;
pub mod witness;
