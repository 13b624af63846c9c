//! Quorate's protocol core.
//!
//! Everything here is sans-IO: no sockets, files, clocks or global randomness. Callers hand in
//! randomness (`rand_core::CryptoRng`) and bytes, and get values and bytes back, so every step
//! can be tested deterministically and reused by the node, the coordinator, the key ceremony and
//! the offline auditor alike.
#![forbid(unsafe_code)]

pub mod audit;
pub mod bytes;
pub mod consortium;
pub mod he;
pub mod round;
pub mod seal;
pub mod wire;
