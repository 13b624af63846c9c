//! Injected faults for resilience tests (the hidden `--fault STEP:ROUND`): an abort as under
//! kill -9 at a chosen step, a panic in a task, partial decryptions lost on the way.

use super::*;

/// A deliberate crash, for resilience tests: the process aborts (as under kill -9) at a
/// chosen step of a chosen round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// When the round opens, before contributing.
    Contribute(u64),
    /// After the release is recorded in the ledger, before the share leaves.
    Release(u64),
    /// A panic in the task that contributes to the round (not an abort): the process must
    /// not carry on without it.
    Panic(u64),
    /// The round's partial decryptions are lost on their way to this member, until it asks
    /// their authors to send them again.
    LosePartials(u64),
}

/// A `--fault` argument that is not `STEP:ROUND`.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?}: expected STEP:ROUND with STEP contribute, release, panic or lose-partials and ROUND \
     a number"
)]
pub struct FaultError(String);

impl std::str::FromStr for Fault {
    type Err = FaultError;
    fn from_str(s: &str) -> Result<Self, FaultError> {
        let bad = || FaultError(s.to_owned());
        let (step, round) = s.split_once(':').ok_or_else(bad)?;
        let round: u64 = round.parse().map_err(|_| bad())?;
        match step {
            "contribute" => Ok(Fault::Contribute(round)),
            "release" => Ok(Fault::Release(round)),
            "panic" => Ok(Fault::Panic(round)),
            "lose-partials" => Ok(Fault::LosePartials(round)),
            _ => Err(bad()),
        }
    }
}

pub(super) fn crash_if(ctx: &Context, fault: Fault) {
    if ctx.fault == Some(fault) {
        tracing::error!(?fault, "injected fault: aborting");
        std::process::abort();
    }
}
