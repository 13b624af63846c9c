//! The key ceremony: distributed generation of the consortium's threshold key, its signed
//! transcript and the sealed key shares. The cryptographic steps it drives live in
//! `protocol::he` (secret contributions, public-key contributions, dealing, share assembly).

pub mod derive;
pub mod entries_file;
pub mod local;
pub mod machine;
pub mod message;
pub mod network;
pub mod run;
pub mod share_file;
pub mod transcript;
