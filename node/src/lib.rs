//! An institution's node: local training, encryption of updates, witnessing of the audit log,
//! and the release policy that guards its key share.

pub mod config;
pub mod daemon;
pub mod data;
pub mod member;
pub mod scaling;
pub mod source;
pub mod state_store;
pub mod tensors;
pub mod trainer;
pub mod witness_store;
