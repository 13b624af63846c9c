//! Injected faults, for the resilience suite and `bench soak` (the hidden `--fault` of
//! `node run` and `coordinator run`): an abort as under kill -9 at a chosen step of a chosen
//! round, a member slower than the deadline, a member cut off from another, a wall-clock jump.
//! A process takes at most one; real operators never pass one.

/// Where, or what, a fault strikes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Node: when the round opens, before contributing (abort).
    Contribute,
    /// Node: half way through uploading its contribution (abort).
    Upload,
    /// Node: after the release is recorded in its ledger, before the share leaves (abort).
    Release,
    /// Node: once its release is logged and acted on, before its partial decryption leaves
    /// (abort).
    Send,
    /// Node: with every partial decryption in hand, before the model is stored (abort).
    Combine,
    /// Node, under a server optimizer: once the stepped model is stored, before its server
    /// step is logged (abort).
    ServerStep,
    /// Node: a panic in the task that contributes (not an abort): the process must not carry
    /// on without it.
    Panic,
    /// Node: the round's partial decryptions are lost on their way to this member, until it
    /// asks their authors to send them again.
    LosePartials,
    /// Node: the update takes this long to compute (a member slower than the deadline).
    Slow { seconds: u64 },
    /// Node: when the round opens, every connection with `peer` (a member's name) is refused
    /// for this long, in both directions.
    CutOff { seconds: u64, peer: String },
    /// Coordinator: right after the round's open is logged (abort).
    Open,
    /// Coordinator: right after the round's close is logged (abort).
    Close,
    /// Coordinator: right after the decryption request is logged (abort).
    Request,
    /// Coordinator: once the first share release of the round is logged, the rest of the
    /// quorum's not yet (abort).
    FirstShare,
    /// Coordinator: once the quorum released and results are arriving (abort).
    Results,
    /// Either role: when the round opens, the wall clock jumps by this many seconds.
    ClockJump { seconds: i64 },
}

/// One injected fault: a step, in a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub step: Step,
    pub round: u64,
}

/// Which role a fault is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Node,
    Coordinator,
}

/// A `--fault` argument that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?}: expected STEP:ROUND (STEP contribute, upload, release, send, combine, server-step, \
     panic or lose-partials for a node; open, close, request, first-share or results for the coordinator), \
     slow:ROUND:SECONDS, cut-off:ROUND:SECONDS:MEMBER or clock-jump:ROUND:SECONDS"
)]
pub struct FaultError(String);

/// A fault given to the role it does not apply to.
#[derive(Debug, thiserror::Error)]
#[error("the fault {fault} is not one a {role:?} can take")]
pub struct WrongRole {
    pub fault: String,
    pub role: Role,
}

impl std::str::FromStr for Fault {
    type Err = FaultError;
    fn from_str(s: &str) -> Result<Self, FaultError> {
        let bad = || FaultError(s.to_owned());
        let mut parts = s.splitn(4, ':');
        let name = parts.next().ok_or_else(bad)?;
        let round: u64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let rest: Vec<&str> = parts.collect();
        let seconds = || -> Result<u64, FaultError> {
            rest.first().ok_or_else(bad)?.parse().map_err(|_| bad())
        };
        let step = match (name, rest.len()) {
            ("contribute", 0) => Step::Contribute,
            ("upload", 0) => Step::Upload,
            ("release", 0) => Step::Release,
            ("send", 0) => Step::Send,
            ("combine", 0) => Step::Combine,
            ("server-step", 0) => Step::ServerStep,
            ("panic", 0) => Step::Panic,
            ("lose-partials", 0) => Step::LosePartials,
            ("open", 0) => Step::Open,
            ("close", 0) => Step::Close,
            ("request", 0) => Step::Request,
            ("first-share", 0) => Step::FirstShare,
            ("results", 0) => Step::Results,
            ("slow", 1) => Step::Slow {
                seconds: seconds()?,
            },
            ("cut-off", 2) => Step::CutOff {
                seconds: seconds()?,
                peer: rest[1].to_owned(),
            },
            ("clock-jump", 1) => Step::ClockJump {
                seconds: rest[0].parse().map_err(|_| bad())?,
            },
            _ => return Err(bad()),
        };
        Ok(Fault { step, round })
    }
}

impl Fault {
    /// Refuses a fault meant for the other role, so a test cannot pass by a fault never firing.
    pub fn for_role(self, role: Role) -> Result<Self, WrongRole> {
        let fits = match &self.step {
            Step::Contribute
            | Step::Upload
            | Step::Release
            | Step::Send
            | Step::Combine
            | Step::ServerStep
            | Step::Panic
            | Step::LosePartials
            | Step::Slow { .. }
            | Step::CutOff { .. } => role == Role::Node,
            Step::Open | Step::Close | Step::Request | Step::FirstShare | Step::Results => {
                role == Role::Coordinator
            }
            Step::ClockJump { .. } => true,
        };
        if fits {
            Ok(self)
        } else {
            Err(WrongRole {
                fault: format!("{self:?}"),
                role,
            })
        }
    }

    /// Whether this fault strikes at `step` of `round`.
    pub fn strikes(fault: Option<&Fault>, step: &Step, round: u64) -> bool {
        fault.is_some_and(|f| &f.step == step && f.round == round)
    }
}

/// Aborts the process, as kill -9 would, if the fault strikes at `step` of `round`.
pub fn abort_if(fault: Option<&Fault>, step: Step, round: u64) {
    if Fault::strikes(fault, &step, round) {
        tracing::error!(?step, round, "injected fault: aborting");
        std::process::abort();
    }
}

/// Makes the wall clock jump if the fault is a clock jump at `round`.
pub fn jump_clock_if(fault: Option<&Fault>, round: u64) {
    if let Some(Fault {
        step: Step::ClockJump { seconds },
        round: at,
    }) = fault
        && *at == round
    {
        tracing::warn!(seconds, round, "injected fault: the wall clock jumps");
        crate::clock::jump_wall_clock(seconds * 1000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_with_their_arguments_and_refuse_the_wrong_role() {
        let f: Fault = "release:3".parse().unwrap();
        assert_eq!(
            f,
            Fault {
                step: Step::Release,
                round: 3
            }
        );
        let f: Fault = "cut-off:2:8:member-b".parse().unwrap();
        assert_eq!(
            f.step,
            Step::CutOff {
                seconds: 8,
                peer: "member-b".into()
            }
        );
        let f: Fault = "clock-jump:2:-3600".parse().unwrap();
        assert_eq!(f.step, Step::ClockJump { seconds: -3600 });
        for bad in ["release", "release:x", "slow:1", "open:1:2", "nothing:1"] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
        let open: Fault = "open:1".parse().unwrap();
        assert!(open.clone().for_role(Role::Node).is_err());
        assert!(open.for_role(Role::Coordinator).is_ok());
        let jump: Fault = "clock-jump:1:5".parse().unwrap();
        assert!(jump.clone().for_role(Role::Node).is_ok());
        assert!(jump.for_role(Role::Coordinator).is_ok());
    }
}
