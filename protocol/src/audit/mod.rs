//! The signed, append-only audit log: RFC 6962 Merkle tree, signed entries, C2SP checkpoints
//! and witness cosignatures, and the offline verifier.

pub mod merkle;
