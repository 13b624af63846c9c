//! Incident codes: what an incident entry says went wrong, one number per cause. The number is
//! what the log stores (auditors read logs years later, so a code never changes meaning and a
//! code this version does not know still reads as a number); the enum is how code names them.

/// Why an incident was logged. `1..=99` are the coordinator's, `100..=199` a member's refusal
/// to act on what the log asks (the release policy's refusals are `100 + variant`), `200..`
/// a member's refusal to witness or a fault it saw in others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum IncidentCode {
    /// The round's deadline passed with fewer than k_min contributions.
    TooFewContributions = 1,
    /// No quorum released the round's aggregate within the retries the plan allows.
    DecryptionAbandoned = 2,
    /// The contributions could not be weighed under the plan; the round was not closed.
    RoundNotClosed = 3,
    /// Release policy: the entry named is not a decryption request.
    NotARequest = 100,
    NotInQuorum = 101,
    BadQuorum = 102,
    NoClose = 103,
    SecondClose = 104,
    /// Release policy: the request's round ran under another round plan.
    RequestUnderOtherPlan = 105,
    TooFewContributors = 106,
    BadContribution = 107,
    NotTheAggregate = 108,
    Attempt = 109,
    StaleRound = 110,
    Superseded = 111,
    AlreadyReleased = 112,
    Mismatch = 113,
    UnverifiedBase = 114,
    StaleModel = 115,
    OlderThanHeld = 116,
    PastPlan = 117,
    /// A round opened under another round plan: the member does not contribute to it.
    RoundUnderOtherPlan = 118,
    /// The member has no update for the round (its trainer failed, timed out or wrote
    /// something unusable): it sits the round out, and says so at once.
    NoUpdate = 119,
    /// Releasing would reveal more values than the key's lifetime budget allows.
    LifetimeSpent = 130,
    /// Another member logged a different model for the same request.
    OtherModel = 140,
    /// Another member logged a different server step (model or encrypted base) for the same
    /// request than this member computed.
    OtherStep = 141,
    /// A quorum member's partial decryption, whose digest it logged, does not decode or is
    /// not for the request's ciphertext, quorum or length.
    MalformedPartial = 142,
    /// The coordinator sent a different entry at an index the member already holds.
    ForkedEntry = 200,
    /// A checkpoint's root does not match the entries the member holds.
    ForkedCheckpoint = 201,
    /// A checkpoint the member was asked to cosign does not extend what it witnessed.
    RefusedToCosign = 202,
    /// An entry the member was asked to witness breaks a round rule.
    BrokenRoundRule = 203,
    /// The coordinator dropped an incident another member sent directly.
    DroppedIncident = 204,
}

impl IncidentCode {
    /// Every code, in numeric order.
    pub const ALL: [IncidentCode; 32] = [
        Self::TooFewContributions,
        Self::DecryptionAbandoned,
        Self::RoundNotClosed,
        Self::NotARequest,
        Self::NotInQuorum,
        Self::BadQuorum,
        Self::NoClose,
        Self::SecondClose,
        Self::RequestUnderOtherPlan,
        Self::TooFewContributors,
        Self::BadContribution,
        Self::NotTheAggregate,
        Self::Attempt,
        Self::StaleRound,
        Self::Superseded,
        Self::AlreadyReleased,
        Self::Mismatch,
        Self::UnverifiedBase,
        Self::StaleModel,
        Self::OlderThanHeld,
        Self::PastPlan,
        Self::RoundUnderOtherPlan,
        Self::NoUpdate,
        Self::LifetimeSpent,
        Self::OtherModel,
        Self::OtherStep,
        Self::MalformedPartial,
        Self::ForkedEntry,
        Self::ForkedCheckpoint,
        Self::RefusedToCosign,
        Self::BrokenRoundRule,
        Self::DroppedIncident,
    ];

    /// The number the log stores.
    pub fn number(self) -> u16 {
        self as u16
    }

    /// What the code means, in a few words (for `audit show` and logs).
    pub fn meaning(self) -> &'static str {
        match self {
            Self::TooFewContributions => "the round closed with fewer than k_min contributions",
            Self::DecryptionAbandoned => "no quorum released within the plan's retries",
            Self::RoundNotClosed => "the contributions could not be weighed under the plan",
            Self::NotARequest => "refused: the entry named is not a decryption request",
            Self::NotInQuorum => "refused: this member is not in the request's quorum",
            Self::BadQuorum => "refused: the quorum is not t members",
            Self::NoClose => "refused: the request names no round close",
            Self::SecondClose => "refused: the round was closed twice",
            Self::RequestUnderOtherPlan => "refused: the request's round ran under another plan",
            Self::TooFewContributors => "refused: fewer than k_min contributors",
            Self::BadContribution => "refused: a contribution breaks the rules",
            Self::NotTheAggregate => "refused: the ciphertext is not the round's aggregate",
            Self::Attempt => "refused: an attempt the plan does not allow",
            Self::StaleRound => "refused: the request is for an old round",
            Self::Superseded => "refused: a later request superseded this one",
            Self::AlreadyReleased => "refused: a share of this ciphertext was released before",
            Self::Mismatch => "refused: the recomputed ciphertext differs",
            Self::UnverifiedBase => {
                "refused: the round builds on a model this member did not verify"
            }
            Self::StaleModel => "refused: a second contribution from a model already released",
            Self::OlderThanHeld => "refused: older than the model this member holds",
            Self::PastPlan => "refused: past the round plan's rounds",
            Self::RoundUnderOtherPlan => "not contributing: the round opened under another plan",
            Self::NoUpdate => "not contributing: no update (the trainer failed)",
            Self::LifetimeSpent => "refused: the key's lifetime reveal budget is spent",
            Self::OtherModel => "another member logged a different model for the request",
            Self::OtherStep => "another member logged a different server step for the request",
            Self::MalformedPartial => {
                "a quorum member's logged partial decryption does not fit the request"
            }
            Self::ForkedEntry => "the coordinator sent a different entry at a known index",
            Self::ForkedCheckpoint => "a checkpoint's root does not match the entries",
            Self::RefusedToCosign => "refused to cosign a checkpoint",
            Self::BrokenRoundRule => "refused to witness an entry that breaks a round rule",
            Self::DroppedIncident => "the coordinator dropped another member's incident",
        }
    }

    /// The code a stored number stands for, if this version knows it.
    pub fn from_number(number: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.number() == number)
    }
}

impl From<IncidentCode> for u16 {
    fn from(code: IncidentCode) -> u16 {
        code.number()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Auditors read logs written by older versions: a code's number never changes.
    #[test]
    fn incident_numbers_are_stable_and_each_means_one_thing() {
        let numbers: Vec<u16> = IncidentCode::ALL.iter().map(|c| c.number()).collect();
        assert_eq!(
            numbers,
            [
                1, 2, 3, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114,
                115, 116, 117, 118, 119, 130, 140, 141, 142, 200, 201, 202, 203, 204
            ]
        );
        let mut unique = numbers.clone();
        unique.dedup();
        assert_eq!(unique, numbers, "increasing, so no number is used twice");
        for code in IncidentCode::ALL {
            assert_eq!(IncidentCode::from_number(code.number()), Some(code));
        }
        assert_eq!(IncidentCode::from_number(150), None);
    }
}
