//! Training rounds, sans-IO.
//!
//! A round turns the members' encrypted updates into the next encrypted global model and has
//! a quorum decrypt it among themselves. The pieces here decide; the node and the coordinator
//! only move bytes and keep state on disk:
//! - [`RoundPlan`]: what every party agrees on (model size, fixed-point codec, aggregation
//!   rule, retries, the initial model's digest), named by its digest in every `round open`;
//! - [`CoordinatorRound`]: the coordinator's side of one round: accept contributions, close
//!   with at least `k_min`, name a quorum, notice failures and retry with a re-randomised
//!   ciphertext, up to the plan's cap;
//! - [`policy`]: a member's release policy (threat-model invariants 3 and 4), judged on the
//!   member's own copy of the log;
//! - [`rules`]: the round rules every appended entry must meet (the model chain, complete
//!   closes, releases from the quorum only), shared by the log, the members and the auditor;
//! - [`message`]: the versioned messages of the round protocol.

#[cfg(test)]
mod attacks;
pub mod incidents;
pub mod initial;
pub mod machine;
pub mod message;
pub mod optimizer;
pub mod plan;
pub mod policy;
pub mod rules;
pub mod stream;
#[cfg(test)]
mod tests;

pub use initial::{InitialModel, InitialModelError, KeptTensor, check_initial_model};
pub use machine::{CloseDecision, CloseTerms, CoordinatorRound, DecryptionStatus};
pub use optimizer::{Optimizer, OptimizerState};
pub use plan::{ModelDigest, ModelHasher, RoundPlan, model_digest};
pub use policy::{
    HeldModel, Obtain, Refusal, ReleaseTarget, Term, check_combine, check_contribution,
    check_request,
};
pub use stream::{TermStream, WholeStream};

/// Why a round step was refused, naming the member where one is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoundError {
    #[error("round plan: {0}")]
    Plan(String),
    #[error("contribution from member {member}: {reason}")]
    Contribution { member: u8, reason: String },
    #[error("round {round}: {reason}")]
    State { round: u64, reason: String },
}
