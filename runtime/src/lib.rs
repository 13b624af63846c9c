//! What every long-running role shares with the others and with the ceremony: the libp2p
//! transport (one allow-list, one set of limits, one event loop owning the `Swarm`), the
//! identities that sign and authenticate, the clock, what a process reports of itself, and the
//! file helpers (atomic owner-only writes, large files written past the page cache, TOML
//! configuration with errors naming the file and field).
//!
//! Nothing here knows what a round or a ceremony is: the roles give the transport their own
//! protocol names and message limits.

pub mod bulk;
pub mod clock;
pub mod fault;
pub mod files;
pub mod identity;
pub mod pending;
pub mod process;
pub mod store;
pub mod transport;
