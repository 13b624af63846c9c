//! The coordinator: rounds, streaming aggregation of ciphertexts into the encrypted model, and
//! the audit log it operates. It never holds a key share, a partial decryption or a plaintext.

pub mod audit_log;
pub mod blobs;
pub mod config;
pub mod daemon;
pub mod export;
pub mod metrics;
pub mod store;
pub mod summary;
