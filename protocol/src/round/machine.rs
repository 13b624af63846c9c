//! The coordinator's side of one round, sans-IO: time comes in as milliseconds, the log's leaf
//! indexes come back from the caller after each append, and the machine says what to do next.

use std::collections::BTreeMap;

use super::RoundError;
use super::plan::RoundPlan;
use crate::audit::entry::{Digest, Membership};

/// What to do with a round that is collecting contributions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseDecision {
    /// Keep collecting.
    Wait,
    /// Every expected member contributed, or the deadline passed with at least `k_min`.
    Close,
    /// The deadline passed with fewer than `k_min` contributions: nothing may be decrypted.
    Fail { contributors: usize },
}

/// What to do with a round whose decryption was requested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecryptionStatus {
    Waiting,
    /// Every quorum member logged its share release.
    Released,
    /// A quorum member failed: request the re-randomised ciphertext from this new quorum.
    Retry {
        attempt: u8,
        quorum: u16,
    },
    /// No retry is left, or too few members remain.
    GiveUp(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Collecting,
    Closed,
    Decrypting {
        request: u64,
        attempt: u8,
        quorum: u16,
        released: u16,
        since_ms: u64,
    },
    Released,
}

/// What a round's close aggregates: the contribution entries, in log order, and each
/// contribution's digest with its integer weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseTerms {
    pub leaves: Vec<u64>,
    pub terms: Vec<(Digest, i64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Accepted {
    leaf: u64,
    samples: u64,
    ciphertext: Digest,
}

/// One round as the coordinator runs it.
#[derive(Clone, Debug)]
pub struct CoordinatorRound {
    round: u64,
    plan: RoundPlan,
    threshold: u8,
    k_min: u8,
    members: u8,
    expected: u16,
    deadline_ms: u64,
    contributions: BTreeMap<u8, Accepted>,
    /// Members that went away during this round; not waited for, and not asked to decrypt.
    failed: u16,
    phase: Phase,
}

impl CoordinatorRound {
    pub fn open(
        round: u64,
        membership: &Membership,
        plan: RoundPlan,
        expected: u16,
        deadline_ms: u64,
    ) -> Self {
        Self {
            round,
            plan,
            threshold: membership.threshold,
            k_min: membership.k_min,
            members: membership.members.len() as u8,
            expected,
            deadline_ms,
            contributions: BTreeMap::new(),
            failed: 0,
            phase: Phase::Collecting,
        }
    }

    pub fn round(&self) -> u64 {
        self.round
    }

    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    pub fn contributors(&self) -> u16 {
        self.contributions.keys().fold(0, |bits, m| bits | (1 << m))
    }

    fn refuse(member: u8, reason: impl Into<String>) -> RoundError {
        RoundError::Contribution {
            member,
            reason: reason.into(),
        }
    }

    /// Checks a contribution before it is logged.
    pub fn check_contribution(
        &self,
        member: u8,
        round: u64,
        samples: u64,
        now_ms: u64,
    ) -> Result<(), RoundError> {
        if round != self.round {
            return Err(Self::refuse(
                member,
                format!("it is for round {round}, the open round is {}", self.round),
            ));
        }
        if self.phase != Phase::Collecting || now_ms > self.deadline_ms {
            return Err(Self::refuse(
                member,
                "the round no longer takes contributions",
            ));
        }
        if member >= self.members || self.expected & (1 << member) == 0 {
            return Err(Self::refuse(
                member,
                "this member is not expected in the round",
            ));
        }
        if self.contributions.contains_key(&member) {
            return Err(Self::refuse(member, "a second contribution to the round"));
        }
        if samples == 0 || samples > super::plan::MAX_SAMPLES {
            return Err(Self::refuse(
                member,
                format!("it declares {samples} samples"),
            ));
        }
        Ok(())
    }

    /// Records a contribution the log acknowledged at `leaf`.
    pub fn contributed(&mut self, member: u8, leaf: u64, samples: u64, ciphertext: Digest) {
        self.contributions.insert(
            member,
            Accepted {
                leaf,
                samples,
                ciphertext,
            },
        );
    }

    pub fn poll_close(&self, now_ms: u64) -> CloseDecision {
        if self.phase != Phase::Collecting {
            return CloseDecision::Wait;
        }
        let count = self.contributions.len();
        // Members that went away are not waited for: once everyone still there contributed,
        // the round closes (if k_min is met) without waiting for the deadline.
        let still_expected = self.expected & !self.failed;
        if self.contributors() & still_expected == still_expected
            && count >= usize::from(self.k_min)
        {
            return CloseDecision::Close;
        }
        if now_ms >= self.deadline_ms {
            return if count >= usize::from(self.k_min) {
                CloseDecision::Close
            } else {
                CloseDecision::Fail {
                    contributors: count,
                }
            };
        }
        CloseDecision::Wait
    }

    /// The close: the contributions' leaves, and each contribution's digest with its weight.
    pub fn close_terms(&self) -> Result<CloseTerms, RoundError> {
        if self.contributions.len() < usize::from(self.k_min) {
            return Err(RoundError::State {
                round: self.round,
                reason: format!(
                    "{} contributions, fewer than k_min = {}",
                    self.contributions.len(),
                    self.k_min
                ),
            });
        }
        // In log order: a close references earlier leaves in increasing order.
        let mut accepted: Vec<&Accepted> = self.contributions.values().collect();
        accepted.sort_by_key(|a| a.leaf);
        let samples: Vec<u64> = accepted.iter().map(|a| a.samples).collect();
        let weights = self.plan.weights(&samples)?;
        Ok(CloseTerms {
            leaves: accepted.iter().map(|a| a.leaf).collect(),
            terms: accepted
                .iter()
                .zip(weights)
                .map(|(a, w)| (a.ciphertext, w))
                .collect(),
        })
    }

    pub fn closed(&mut self) {
        self.phase = Phase::Closed;
    }

    /// The quorum for the next request: the lowest-indexed `threshold` members among
    /// `available` that have not failed in this round.
    pub fn choose_quorum(&self, available: u16) -> Option<u16> {
        let candidates = available & !self.failed;
        let chosen: Vec<u8> = (0..self.members)
            .filter(|m| candidates & (1 << m) != 0)
            .take(usize::from(self.threshold))
            .collect();
        (chosen.len() == usize::from(self.threshold))
            .then(|| chosen.iter().fold(0, |bits, m| bits | (1 << m)))
    }

    /// Records the decryption request logged at `request`.
    pub fn requested(&mut self, request: u64, attempt: u8, quorum: u16, now_ms: u64) {
        self.phase = Phase::Decrypting {
            request,
            attempt,
            quorum,
            released: 0,
            since_ms: now_ms,
        };
    }

    /// The request in progress, if any.
    pub fn request(&self) -> Option<(u64, u8, u16)> {
        match self.phase {
            Phase::Decrypting {
                request,
                attempt,
                quorum,
                ..
            } => Some((request, attempt, quorum)),
            _ => None,
        }
    }

    /// A quorum member logged its share release for `request`.
    pub fn share_released(&mut self, request_leaf: u64, member: u8) {
        if let Phase::Decrypting {
            request,
            quorum,
            released,
            ..
        } = &mut self.phase
            && *request == request_leaf
            && *quorum & (1 << member) != 0
        {
            *released |= 1 << member;
        }
    }

    /// A member went away (disconnected, refused or timed out).
    pub fn member_failed(&mut self, member: u8) {
        if member < self.members {
            self.failed |= 1 << member;
        }
    }

    /// When the round next needs attention if nothing arrives before then (milliseconds):
    /// the collection deadline, or the end of the quorum's time to release. `None` when only
    /// an arrival can move the round on. A driver waits for the earlier of this and its next
    /// event, then polls.
    pub fn poll_timeout(&self, release_timeout_ms: u64) -> Option<u64> {
        match self.phase {
            Phase::Collecting => Some(self.deadline_ms),
            Phase::Decrypting { since_ms, .. } => Some(since_ms.saturating_add(release_timeout_ms)),
            Phase::Closed | Phase::Released => None,
        }
    }

    pub fn poll_decryption(
        &mut self,
        now_ms: u64,
        available: u16,
        release_timeout_ms: u64,
    ) -> DecryptionStatus {
        let Phase::Decrypting {
            attempt,
            quorum,
            released,
            since_ms,
            ..
        } = self.phase
        else {
            return DecryptionStatus::Waiting;
        };
        if released == quorum {
            self.phase = Phase::Released;
            return DecryptionStatus::Released;
        }
        let pending = quorum & !released;
        let gone = pending & (self.failed | !available);
        let timed_out = now_ms.saturating_sub(since_ms) >= release_timeout_ms;
        if gone == 0 && !timed_out {
            return DecryptionStatus::Waiting;
        }
        self.failed |= if gone != 0 { gone } else { pending };
        if attempt >= self.plan.max_retries {
            return DecryptionStatus::GiveUp(format!(
                "round {}: the quorum did not release after {} retries",
                self.round, self.plan.max_retries
            ));
        }
        match self.choose_quorum(available) {
            Some(quorum) => DecryptionStatus::Retry {
                attempt: attempt + 1,
                quorum,
            },
            None => DecryptionStatus::GiveUp(format!(
                "round {}: fewer than {} members left to form a quorum",
                self.round, self.threshold
            )),
        }
    }
}
