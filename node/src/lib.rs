//! An institution's node: local training, encryption of updates, witnessing of the audit log,
//! and the release policy that guards its key share.

pub mod config;
pub mod daemon;
pub mod member;
pub mod reference;
pub mod source;
pub mod state_store;
pub mod witness_store;
