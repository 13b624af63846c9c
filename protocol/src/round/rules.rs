//! The round rules of the log: what a round, a contribution, a close, a share release and a
//! result must be, given every entry before them. [`RoundRules::check`] is the one function
//! that decides; the coordinator runs it before it appends (through `LogState`), every member
//! before it witnesses a checkpoint (the same way), and the auditor when it replays an export,
//! so a log that breaks one of these rules is never cosigned by an honest member and never
//! passes `quorate audit verify` (exit 16).
//!
//! The rules close the attacks a malicious coordinator with up to t - 1 colluding members could
//! otherwise mount on the release policy:
//! - **the model chain**: a round builds on the aggregate of the latest round whose decryption
//!   the *whole quorum* released, named in its open and its close; a release by one colluder
//!   (or a release for an old request) cannot move the chain to a crafted ciphertext;
//! - **releases count only from the request's quorum**, once per member, for the ciphertext
//!   the request names, and only for the latest request; a result counts only once the
//!   quorum's t releases are logged;
//! - **complete closes**: a close lists every contribution logged for its round, so the
//!   coordinator cannot pick a subset around the colluders' known inputs;
//! - **one contribution per ciphertext, ever**, so no member can pass another's ciphertext off
//!   as its own;
//! - **no stale-model replay**: a member contributes from one model at most once once any share
//!   of that round was released, so no two decryptable aggregates differ by its update alone;
//! - **server steps by agreement**: under an optimizer other than FedAvg, the base moves on
//!   from a decrypted round's aggregate to the encryption of its server step once t members
//!   logged the same step (at least one of them honest), never on one member's word.

use std::collections::{BTreeMap, BTreeSet};

use crate::audit::entry::{Body, Digest, Membership};

/// The digest a round names as its base before any round was decrypted: an encryption of zero.
pub const ZERO_BASE: Digest = [0; 32];

/// Who wrote an entry, as the round rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    Coordinator,
    Member(u8),
    Unknown,
}

impl Writer {
    pub fn of(membership: &Membership, author: &[u8; 32]) -> Self {
        if *author == membership.coordinator.signing_key {
            return Writer::Coordinator;
        }
        membership
            .members
            .iter()
            .position(|m| m.signing_key == *author)
            .map_or(Writer::Unknown, |i| Writer::Member(i as u8))
    }
}

/// A broken round rule; each names the entry or member at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(
        "round {round} names base {}, but the latest round the whole quorum released builds {}",
        short(named),
        short(expected)
    )]
    Base {
        round: u64,
        named: Digest,
        expected: Digest,
    },
    #[error("round {round} is not after the latest round opened ({latest}; rounds start at 1)")]
    RoundOrder { round: u64, latest: u64 },
    #[error("member {member} already contributed to round {round}")]
    SecondContribution { member: u8, round: u64 },
    #[error("a close of round {round}, which is not the open round or was closed already")]
    CloseWithoutOpen { round: u64 },
    #[error("the quorum {quorum:#b} is not {threshold} of the {members} members")]
    BadQuorum {
        quorum: u16,
        threshold: u8,
        members: u8,
    },
    #[error("a request for round {round} names entry {close}, which is not that round's close")]
    WrongClose { round: u64, close: u64 },
    #[error("a request for round {round} after its decryption was released by a whole quorum")]
    RetryAfterRelease { round: u64 },
    #[error("a contribution to round {round}, which is not the open round")]
    NotOpen { round: u64 },
    #[error(
        "ciphertext {} was already contributed at entry {first}",
        short(digest)
    )]
    DuplicateCiphertext { digest: Digest, first: u64 },
    #[error(
        "member {member} already contributed from this model in round {earlier}, whose \
         decryption was released: a second contribution from it could be isolated"
    )]
    StaleModel { member: u8, earlier: u64 },
    #[error("the close of round {round} leaves out contribution entry {leaf}")]
    IncompleteClose { round: u64, leaf: u64 },
    #[error("the close of round {round} lists entry {leaf}, not a contribution to it")]
    ForeignContribution { round: u64, leaf: u64 },
    #[error("entry {request} is not a decryption request")]
    NotARequest { request: u64 },
    #[error("member {member} is not in the quorum of request {request}")]
    NotInQuorum { member: u8, request: u64 },
    #[error("the entry names another ciphertext than request {request}")]
    WrongCiphertext { request: u64 },
    #[error("member {member} already released a share for request {request}")]
    SecondRelease { member: u8, request: u64 },
    #[error("a share released for request {request}, which is not the latest request")]
    StaleRelease { request: u64 },
    #[error("a result for request {request} before its whole quorum released")]
    ResultBeforeRelease { request: u64 },
    #[error("member {member} already logged a result for request {request}")]
    SecondResult { member: u8, request: u64 },
    #[error("a server step for request {request} before its whole quorum released")]
    StepBeforeRelease { request: u64 },
    #[error("member {member} already logged a server step for request {request}")]
    SecondStep { member: u8, request: u64 },
}

fn short(digest: &Digest) -> String {
    hex::encode(&digest[..8])
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct RoundRecord {
    open: u64,
    base: Digest,
    /// Contribution entries logged for the round since its open, with their authors.
    contributions: BTreeMap<u64, u8>,
    close: Option<(u64, Digest)>,
    /// Whether any quorum member released a share for a request of this round.
    released: bool,
}

/// One decryption request as the rules track it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub round: u64,
    pub close: u64,
    pub attempt: u8,
    pub ciphertext: Digest,
    pub quorum: u16,
    /// Quorum members whose release is logged.
    pub released: u16,
    /// Members whose result is logged.
    pub results: u16,
    /// The server steps members logged after combining it: member -> (model, base).
    pub steps: BTreeMap<u8, (Digest, Digest)>,
}

impl RequestRecord {
    /// The server step at least `threshold` members logged alike, if any: with at most
    /// t - 1 colluders, one of them is honest and computed it from the decryption itself.
    pub fn agreed_step(&self, threshold: u8) -> Option<(Digest, Digest)> {
        let mut counts: BTreeMap<(Digest, Digest), u8> = BTreeMap::new();
        for step in self.steps.values() {
            *counts.entry(*step).or_default() += 1;
        }
        counts
            .into_iter()
            .find(|(_, count)| *count >= threshold)
            .map(|(step, _)| step)
    }
}

impl RequestRecord {
    /// Whether every quorum member's release is logged: the decryption happened.
    pub fn complete(&self) -> bool {
        self.quorum != 0 && self.released == self.quorum
    }
}

/// A round whose decryption was started, partly released and not finished
/// ([`RoundRules::unfinished_decryption`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfinished {
    pub round: u64,
    /// The leaf of its close, and the aggregate the close names.
    pub close: u64,
    pub aggregate: Digest,
    pub contributors: u32,
    /// Members who contributed to it (bits): the ones who may not contribute from its base
    /// again.
    pub contributors_mask: u16,
    /// The attempt number the next request for it takes.
    pub next_attempt: u8,
    /// Its latest request: the leaf and the quorum named.
    pub last_request: Option<(u64, u16)>,
}

/// The rounds of a log as far as it goes, kept by `LogState` beside the leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundRules {
    members: u8,
    threshold: u8,
    contributions: BTreeMap<Digest, u64>,
    rounds: BTreeMap<u64, RoundRecord>,
    requests: BTreeMap<u64, RequestRecord>,
    latest_round: Option<u64>,
    latest_request: Option<u64>,
    /// The aggregate the next round must build on, and the round it came from.
    base: Digest,
    base_round: u64,
    /// The plaintext model the base encrypts, where a server step named it.
    base_model: Option<Digest>,
}

impl RoundRules {
    pub fn new(membership: &Membership) -> Self {
        Self {
            members: membership.members.len() as u8,
            threshold: membership.threshold,
            contributions: BTreeMap::new(),
            rounds: BTreeMap::new(),
            requests: BTreeMap::new(),
            latest_round: None,
            latest_request: None,
            base: ZERO_BASE,
            base_round: 0,
            base_model: None,
        }
    }

    /// The encrypted model the next round must build on ([`ZERO_BASE`] before any decryption).
    pub fn base(&self) -> Digest {
        self.base
    }

    /// The model digest the base encrypts, when it is a server step's (under FedAvg the
    /// members' decryption results name it instead).
    pub fn base_model(&self) -> Option<Digest> {
        self.base_model
    }

    /// Whether the base is the server step of the round it came from (always false under
    /// FedAvg, whose members log none).
    pub fn base_stepped(&self) -> bool {
        self.base_model.is_some()
    }

    /// The round whose aggregate [`RoundRules::base`] is (0 before any decryption).
    pub fn base_round(&self) -> u64 {
        self.base_round
    }

    /// The base round `round` named in its open.
    pub fn round_base(&self, round: u64) -> Option<Digest> {
        self.rounds.get(&round).map(|r| r.base)
    }

    pub fn request(&self, leaf: u64) -> Option<&RequestRecord> {
        self.requests.get(&leaf)
    }

    /// Requests for which any quorum member logged a release, per round: each may have been
    /// decrypted, so each counts against the key's lifetime, whoever released.
    pub fn released_requests_by_round(&self) -> BTreeMap<u64, u64> {
        let mut rounds = BTreeMap::new();
        for r in self.requests.values().filter(|r| r.released != 0) {
            *rounds.entry(r.round).or_default() += 1;
        }
        rounds
    }

    /// The round in which `member` already contributed from `base` and some quorum member
    /// released a share, if any: a second contribution from `base` must then be refused.
    pub fn contributed_from(&self, member: u8, base: &Digest, before_round: u64) -> Option<u64> {
        self.rounds.range(..before_round).find_map(|(&round, r)| {
            (r.base == *base && r.released && r.contributions.values().any(|&m| m == member))
                .then_some(round)
        })
    }

    /// The rules after `entries`, which a `LogState` already checked (a member's own copy of
    /// the log, or a prefix of it).
    pub fn replay(membership: &Membership, entries: &[crate::audit::entry::SignedEntry]) -> Self {
        let mut rules = Self::new(membership);
        for (index, entry) in entries.iter().enumerate() {
            let writer = Writer::of(membership, &entry.entry.author);
            rules.apply(index as u64, writer, &entry.entry.body);
        }
        rules
    }

    /// Checks `body`, written by `writer`, as the next entry of the log.
    pub fn check(&self, writer: Writer, body: &Body) -> Result<(), RuleError> {
        match body {
            Body::RoundOpen { round, base, .. } => {
                let latest = self.latest_round.unwrap_or(0);
                if *round <= latest {
                    return Err(RuleError::RoundOrder {
                        round: *round,
                        latest,
                    });
                }
                if *base != self.base {
                    return Err(RuleError::Base {
                        round: *round,
                        named: *base,
                        expected: self.base,
                    });
                }
            }
            Body::Contribution {
                round, ciphertext, ..
            } => {
                if let Some(&first) = self.contributions.get(ciphertext) {
                    return Err(RuleError::DuplicateCiphertext {
                        digest: *ciphertext,
                        first,
                    });
                }
                let open = self
                    .rounds
                    .get(round)
                    .filter(|r| r.close.is_none() && self.latest_round == Some(*round))
                    .ok_or(RuleError::NotOpen { round: *round })?;
                if let Writer::Member(member) = writer {
                    if open.contributions.values().any(|&m| m == member) {
                        return Err(RuleError::SecondContribution {
                            member,
                            round: *round,
                        });
                    }
                    if let Some(earlier) = self.contributed_from(member, &open.base, *round) {
                        return Err(RuleError::StaleModel { member, earlier });
                    }
                }
            }
            Body::RoundClose {
                round,
                base,
                contributions,
                ..
            } => {
                let open = self
                    .rounds
                    .get(round)
                    .filter(|r| r.close.is_none() && self.latest_round == Some(*round))
                    .ok_or(RuleError::CloseWithoutOpen { round: *round })?;
                if *base != open.base {
                    return Err(RuleError::Base {
                        round: *round,
                        named: *base,
                        expected: open.base,
                    });
                }
                let listed: BTreeSet<u64> = contributions.iter().copied().collect();
                if let Some(&leaf) = open.contributions.keys().find(|l| !listed.contains(l)) {
                    return Err(RuleError::IncompleteClose {
                        round: *round,
                        leaf,
                    });
                }
                if let Some(&leaf) = listed.iter().find(|l| !open.contributions.contains_key(l)) {
                    return Err(RuleError::ForeignContribution {
                        round: *round,
                        leaf,
                    });
                }
            }
            Body::DecryptionRequest {
                round,
                close,
                quorum,
                ..
            } => {
                if quorum.count_ones() != u32::from(self.threshold)
                    || u32::from(*quorum) >> self.members != 0
                {
                    return Err(RuleError::BadQuorum {
                        quorum: *quorum,
                        threshold: self.threshold,
                        members: self.members,
                    });
                }
                let record = self.rounds.get(round);
                if record.and_then(|r| r.close).map(|(leaf, _)| leaf) != Some(*close) {
                    return Err(RuleError::WrongClose {
                        round: *round,
                        close: *close,
                    });
                }
                if self
                    .requests
                    .values()
                    .any(|r| r.round == *round && r.complete())
                {
                    return Err(RuleError::RetryAfterRelease { round: *round });
                }
            }
            Body::ShareReleased {
                request,
                ciphertext,
                ..
            } => {
                let record = self.named_request(*request, ciphertext)?;
                let Writer::Member(member) = writer else {
                    return Ok(());
                };
                if record.quorum & (1 << member) == 0 {
                    return Err(RuleError::NotInQuorum {
                        member,
                        request: *request,
                    });
                }
                if record.released & (1 << member) != 0 {
                    return Err(RuleError::SecondRelease {
                        member,
                        request: *request,
                    });
                }
                if self.latest_request != Some(*request) || self.latest_round != Some(record.round)
                {
                    return Err(RuleError::StaleRelease { request: *request });
                }
            }
            Body::ServerStep { request, .. } => {
                let record = self
                    .requests
                    .get(request)
                    .ok_or(RuleError::NotARequest { request: *request })?;
                if !record.complete() {
                    return Err(RuleError::StepBeforeRelease { request: *request });
                }
                if let Writer::Member(member) = writer
                    && record.steps.contains_key(&member)
                {
                    return Err(RuleError::SecondStep {
                        member,
                        request: *request,
                    });
                }
            }
            Body::DecryptionResult {
                request,
                ciphertext,
                ..
            } => {
                let record = self.named_request(*request, ciphertext)?;
                if !record.complete() {
                    return Err(RuleError::ResultBeforeRelease { request: *request });
                }
                if let Writer::Member(member) = writer
                    && record.results & (1 << member) != 0
                {
                    return Err(RuleError::SecondResult {
                        member,
                        request: *request,
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn named_request(
        &self,
        request: u64,
        ciphertext: &Digest,
    ) -> Result<&RequestRecord, RuleError> {
        let record = self
            .requests
            .get(&request)
            .ok_or(RuleError::NotARequest { request })?;
        if record.ciphertext != *ciphertext {
            return Err(RuleError::WrongCiphertext { request });
        }
        Ok(record)
    }

    /// The latest round, if it was closed and a share of it released but no request of it
    /// completed: a coordinator stopped (or left without a quorum) half way through its
    /// decryption. Its contributors may not contribute from its base again (the stale-model
    /// rule), and the base moves only when it is decrypted, so its decryption must be finished
    /// before another round opens.
    pub fn unfinished_decryption(&self) -> Option<Unfinished> {
        let round = self.latest_round?;
        let record = self.rounds.get(&round)?;
        let (close, aggregate) = record.close?;
        if !record.released {
            return None;
        }
        let (mut next_attempt, mut last_request) = (0u8, None);
        for (&leaf, request) in self.requests.iter().filter(|(_, r)| r.round == round) {
            if request.complete() {
                return None;
            }
            next_attempt = next_attempt.max(request.attempt.saturating_add(1));
            last_request = Some((leaf, request.quorum));
        }
        Some(Unfinished {
            round,
            close,
            aggregate,
            contributors: record.contributions.len() as u32,
            contributors_mask: record
                .contributions
                .values()
                .fold(0, |bits, &m| bits | (1 << m)),
            next_attempt,
            last_request,
        })
    }

    /// Records the entry at `index`, which [`RoundRules::check`] accepted.
    pub fn apply(&mut self, index: u64, writer: Writer, body: &Body) {
        match body {
            Body::RoundOpen { round, base, .. } => {
                self.latest_round = Some(*round);
                self.rounds.insert(
                    *round,
                    RoundRecord {
                        open: index,
                        base: *base,
                        contributions: BTreeMap::new(),
                        close: None,
                        released: false,
                    },
                );
            }
            Body::Contribution {
                round, ciphertext, ..
            } => {
                self.contributions.insert(*ciphertext, index);
                if let (Writer::Member(member), Some(r)) = (writer, self.rounds.get_mut(round)) {
                    r.contributions.insert(index, member);
                }
            }
            Body::RoundClose {
                round, aggregate, ..
            } => {
                if let Some(r) = self.rounds.get_mut(round)
                    && r.close.is_none()
                {
                    r.close = Some((index, *aggregate));
                }
            }
            Body::DecryptionRequest {
                round,
                close,
                ciphertext,
                quorum,
                attempt,
                ..
            } => {
                let in_range = (*quorum as u32) >> self.members == 0;
                self.latest_request = Some(index);
                self.requests.insert(
                    index,
                    RequestRecord {
                        round: *round,
                        close: *close,
                        attempt: *attempt,
                        ciphertext: *ciphertext,
                        quorum: if in_range { *quorum } else { 0 },
                        released: 0,
                        results: 0,
                        steps: BTreeMap::new(),
                    },
                );
            }
            Body::ShareReleased { request, .. } => {
                let Writer::Member(member) = writer else {
                    return;
                };
                let Some(record) = self.requests.get_mut(request) else {
                    return;
                };
                record.released |= 1 << member;
                let (round, close, complete) = (record.round, record.close, record.complete());
                let Some(r) = self.rounds.get_mut(&round) else {
                    return;
                };
                r.released = true;
                // The chain moves only when the whole quorum released a request that names
                // the round's own close; the round's aggregate is then the next base.
                if complete
                    && let Some((close_leaf, aggregate)) = r.close
                    && close_leaf == close
                    && round > self.base_round
                {
                    self.base = aggregate;
                    self.base_round = round;
                    self.base_model = None;
                }
            }
            Body::DecryptionResult { request, .. } => {
                if let (Writer::Member(member), Some(record)) =
                    (writer, self.requests.get_mut(request))
                {
                    record.results |= 1 << member;
                }
            }
            Body::ServerStep {
                request,
                model,
                base,
                ..
            } => {
                let (Writer::Member(member), Some(record)) =
                    (writer, self.requests.get_mut(request))
                else {
                    return;
                };
                record.steps.entry(member).or_insert((*model, *base));
                // The chain moves on to the step once t members agree on it, for the request
                // that moved the base to its round's aggregate, and only once.
                let round = record.round;
                if let Some((model, base)) = record.agreed_step(self.threshold)
                    && record.complete()
                    && round == self.base_round
                    && self.base_model.is_none()
                    && self
                        .rounds
                        .get(&round)
                        .and_then(|r| r.close)
                        .map(|(leaf, _)| leaf)
                        == Some(record.close)
                {
                    self.base = base;
                    self.base_model = Some(model);
                }
            }
            _ => {}
        }
    }
}
