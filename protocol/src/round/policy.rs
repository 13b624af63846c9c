//! A member's release policy (threat-model invariants 3 and 4), judged only on the member's
//! own copy of the log and on the model it verified itself: it contributes from, releases for
//! and builds on only the encrypted model whose decryption it combined ([`HeldModel`]); it
//! releases a partial decryption only for the agreed aggregate of the latest round, built from
//! at least `k_min` distinct members' logged contributions, and only once per ciphertext. The
//! caller then recomputes the ciphertext from the [`ReleaseTarget`] (its own held encrypted
//! model plus the weighted contributions, re-randomised from the logged seed on a retry) and
//! compares its digest with the request's before anything leaves. Combining, a member outside
//! the quorum may take the ciphertext on the whole quorum's releases instead ([`Obtain`]).

use std::collections::BTreeSet;

use super::plan::{ModelDigest, RoundPlan};
use super::rules::{RoundRules, ZERO_BASE};
use crate::audit::entry::{Body, Digest, IncidentCode, Membership, SignedEntry};

/// One weighted contribution of the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub leaf: u64,
    pub member: u8,
    pub ciphertext: Digest,
    pub weight: i64,
}

/// The model a member holds, verified: the aggregate it recomputed from its own earlier model
/// and the logged contributions (or, outside the quorum, took on the whole quorum's releases,
/// see [`Obtain`]), whose decryption it combined and whose plaintext digest it logged. Before the first decryption, the zero model and [`ZERO_BASE`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldModel {
    /// The round whose aggregate this is (0 before the first).
    pub round: u64,
    /// The encrypted model: the digest of that round's aggregate.
    pub base: Digest,
    /// The digest of the decrypted model ([`super::model_digest`]); zero before the first.
    pub model: ModelDigest,
}

impl HeldModel {
    pub fn initial() -> Self {
        Self {
            round: 0,
            base: ZERO_BASE,
            model: [0; 32],
        }
    }
}

/// What a request asks a member to decrypt, as the log defines it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseTarget {
    pub request: u64,
    pub round: u64,
    pub close: u64,
    pub attempt: u8,
    pub seed: Digest,
    /// The digest the request names (the aggregate, or its re-randomisation on a retry).
    pub ciphertext: Digest,
    /// The aggregate the round's close logged.
    pub aggregate: Digest,
    /// The encrypted model the round builds on, as its open and close name it: the aggregate
    /// of an earlier round, or `None` (an encryption of zero) before the first.
    pub base: Option<Digest>,
    pub terms: Vec<Term>,
    pub quorum: Vec<u8>,
}

/// How a member comes by the ciphertext it combines: the one rule of who must recompute it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Obtain {
    /// From the model it holds and the logged contributions (re-randomised from the logged
    /// seed on a retry): a quorum member, which releases on nothing else, and every retry.
    Recompute,
    /// Fetched from the coordinator and checked against the digest the request names: a
    /// member outside the quorum of a round's first attempt. It combines it only once every
    /// quorum member's release is logged, and each quorum member releases only for the
    /// ciphertext it recomputed; with at most t - 1 colluders one of them is honest, so the
    /// ciphertext is the agreed aggregate without this member recomputing it.
    Fetch,
}

impl ReleaseTarget {
    /// How `member` comes by this request's ciphertext to combine it (see [`Obtain`]).
    pub fn obtain(&self, member: u8) -> Obtain {
        if self.attempt == 0 && !self.quorum.contains(&member) {
            Obtain::Fetch
        } else {
            Obtain::Recompute
        }
    }
}

/// Why a member refuses to release, contribute or combine; each is logged as an incident with
/// [`Refusal::code`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("entry {0} is not a decryption request")]
    NotARequest(u64),
    #[error("this member is not in the request's quorum")]
    NotInQuorum,
    #[error("the quorum {0:#b} does not name exactly the threshold of members")]
    BadQuorum(u16),
    #[error("the request names entry {0}, which is not the close of its round")]
    NoClose(u64),
    #[error("round {0} was closed twice: decrypting either could reveal a difference")]
    SecondClose(u64),
    #[error("round {0} was not opened under this member's round plan")]
    OtherPlan(u64),
    #[error("round {round} aggregates {count} members' contributions, fewer than k_min = {k_min}")]
    TooFewContributors { round: u64, count: usize, k_min: u8 },
    #[error("the close of round {round} lists entry {leaf}: {reason}")]
    BadContribution {
        round: u64,
        leaf: u64,
        reason: String,
    },
    #[error(
        "the request targets a ciphertext other than round {0}'s aggregate or its logged re-randomisation"
    )]
    NotTheAggregate(u64),
    #[error("attempt {attempt} of round {round} is out of order or past the cap of {cap} retries")]
    Attempt { round: u64, attempt: u8, cap: u8 },
    #[error("round {0} is not the latest round, or was already decrypted")]
    StaleRound(u64),
    #[error("a later request for round {0} supersedes this one")]
    Superseded(u64),
    #[error("this member already released a share for this ciphertext")]
    AlreadyReleased,
    #[error("the ciphertext recomputed from the logged contributions has another digest")]
    Mismatch,
    #[error(
        "round {round} builds on encrypted model {}, but the model this member verified and \
         holds is {} (from round {held_round})",
        hex::encode(&named[..8]),
        hex::encode(&held[..8])
    )]
    UnverifiedBase {
        round: u64,
        named: Digest,
        held: Digest,
        held_round: u64,
    },
    #[error(
        "this member already contributed from the same model in round {earlier}, whose \
         decryption was released; not contributing to round {round} from it again"
    )]
    StaleModel { round: u64, earlier: u64 },
    #[error("round {round} is not newer than round {held}, whose model this member holds")]
    OlderThanHeld { round: u64, held: u64 },
    #[error(
        "round {round} is past the round plan's {rounds} rounds, which its noise and smudging \
         budget covers"
    )]
    PastPlan { round: u64, rounds: u32 },
}

impl Refusal {
    /// The incident code logged for this refusal (100 + variant), stable across versions.
    pub fn code(&self) -> IncidentCode {
        match self {
            Refusal::NotARequest(_) => IncidentCode::NotARequest,
            Refusal::NotInQuorum => IncidentCode::NotInQuorum,
            Refusal::BadQuorum(_) => IncidentCode::BadQuorum,
            Refusal::NoClose(_) => IncidentCode::NoClose,
            Refusal::SecondClose(_) => IncidentCode::SecondClose,
            Refusal::OtherPlan(_) => IncidentCode::RequestUnderOtherPlan,
            Refusal::TooFewContributors { .. } => IncidentCode::TooFewContributors,
            Refusal::BadContribution { .. } => IncidentCode::BadContribution,
            Refusal::NotTheAggregate(_) => IncidentCode::NotTheAggregate,
            Refusal::Attempt { .. } => IncidentCode::Attempt,
            Refusal::StaleRound(_) => IncidentCode::StaleRound,
            Refusal::Superseded(_) => IncidentCode::Superseded,
            Refusal::AlreadyReleased => IncidentCode::AlreadyReleased,
            Refusal::Mismatch => IncidentCode::Mismatch,
            Refusal::UnverifiedBase { .. } => IncidentCode::UnverifiedBase,
            Refusal::StaleModel { .. } => IncidentCode::StaleModel,
            Refusal::OlderThanHeld { .. } => IncidentCode::OlderThanHeld,
            Refusal::PastPlan { .. } => IncidentCode::PastPlan,
        }
    }
}

/// The index of the member who signed `entry`, if a member did.
pub fn member_of(membership: &Membership, entry: &SignedEntry) -> Option<u8> {
    membership
        .members
        .iter()
        .position(|m| m.signing_key == entry.entry.author)
        .map(|i| i as u8)
}

fn base_of(digest: Digest) -> Option<Digest> {
    (digest != ZERO_BASE).then_some(digest)
}

/// Values the key may have revealed by the log, given how many requests of each round any
/// member logged a release for: every such request counts, but at most one per attempt the
/// plan allows in each round it covers (honest members release for no other), so colluders
/// logging releases for endless requests cannot retire the key.
pub fn logged_reveals(released: &std::collections::BTreeMap<u64, u64>, plan: &RoundPlan) -> u64 {
    let per_round = 1 + u64::from(plan.max_retries);
    released
        .iter()
        .filter(|(round, _)| **round <= u64::from(plan.rounds))
        .map(|(_, count)| (*count).min(per_round))
        .sum::<u64>()
        * u64::from(plan.values)
}

/// Refuses a round the plan's budget does not cover.
fn past_plan(round: u64, plan: &RoundPlan) -> Result<(), Refusal> {
    if round > u64::from(plan.rounds) {
        return Err(Refusal::PastPlan {
            round,
            rounds: plan.rounds,
        });
    }
    Ok(())
}

/// Refuses a round whose base is not the encrypted model `held`, which this member verified
/// itself. (The plaintext follows from the ciphertext, so the base alone decides.)
fn check_base(round: u64, base: Digest, held: &HeldModel) -> Result<(), Refusal> {
    if base != held.base {
        return Err(Refusal::UnverifiedBase {
            round,
            named: base,
            held: held.base,
            held_round: held.round,
        });
    }
    Ok(())
}

/// Whether member `me`, holding `held`, may contribute to the round opened at leaf `open` of
/// `entries` (its log up to and including the open): the round is opened under its plan,
/// builds on the model it verified, and it has not already contributed from that model to a
/// round whose decryption was released (the stale-model replay). The caller skips rounds that
/// do not expect it.
pub fn check_contribution(
    entries: &[SignedEntry],
    membership: &Membership,
    plan: &RoundPlan,
    me: u8,
    open: u64,
    held: &HeldModel,
) -> Result<(), Refusal> {
    let Some(entry) = entries.get(open as usize) else {
        return Err(Refusal::NoClose(open));
    };
    let Body::RoundOpen { round, base, .. } = &entry.entry.body else {
        return Err(Refusal::NoClose(open));
    };
    if entry.entry.payload != Some(plan.digest()) {
        return Err(Refusal::OtherPlan(*round));
    }
    past_plan(*round, plan)?;
    check_base(*round, *base, held)?;
    let rules = RoundRules::replay(membership, &entries[..=open as usize]);
    if let Some(earlier) = rules.contributed_from(me, base, *round) {
        return Err(Refusal::StaleModel {
            round: *round,
            earlier,
        });
    }
    Ok(())
}

/// Judges the request at leaf `request` of `entries` (the member's log, every entry already
/// checked by its `LogState`) for member `me`, which holds `held`.
pub fn check_request(
    entries: &[SignedEntry],
    membership: &Membership,
    plan: &RoundPlan,
    me: u8,
    request: u64,
    held: &HeldModel,
) -> Result<ReleaseTarget, Refusal> {
    let target = resolve_request(entries, membership, plan, request)?;
    if !target.quorum.contains(&me) {
        return Err(Refusal::NotInQuorum);
    }
    let rules = RoundRules::replay(membership, entries);
    let mut requests_for_close = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        match &entry.entry.body {
            Body::RoundOpen { round: r, .. } if *r > target.round => {
                return Err(Refusal::StaleRound(target.round));
            }
            Body::DecryptionRequest { close: c, .. } if *c == target.close => {
                requests_for_close.push(index as u64);
            }
            Body::ShareReleased {
                ciphertext: released,
                ..
            } if *released == target.ciphertext && member_of(membership, entry) == Some(me) => {
                return Err(Refusal::AlreadyReleased);
            }
            _ => {}
        }
    }
    // Decrypted as far as this log shows: the whole quorum of an earlier attempt released.
    if requests_for_close
        .iter()
        .any(|q| rules.request(*q).is_some_and(|r| r.complete()))
    {
        return Err(Refusal::StaleRound(target.round));
    }
    if requests_for_close.last() != Some(&request) {
        return Err(Refusal::Superseded(target.round));
    }
    let position = requests_for_close.len() - 1;
    if usize::from(target.attempt) != position {
        return Err(Refusal::Attempt {
            round: target.round,
            attempt: target.attempt,
            cap: plan.max_retries,
        });
    }
    check_base(target.round, target.base.unwrap_or(ZERO_BASE), held)?;
    Ok(target)
}

/// Whether member `me`, holding `held`, may combine the quorum's partial decryptions for
/// `request` and take the result as its new model: the request is well formed, builds on the
/// model it holds, and is for a later round. The caller obtains the ciphertext as
/// [`ReleaseTarget::obtain`] says, so a member never adopts a ciphertext that nobody honest
/// verified.
pub fn check_combine(
    entries: &[SignedEntry],
    membership: &Membership,
    plan: &RoundPlan,
    request: u64,
    held: &HeldModel,
) -> Result<ReleaseTarget, Refusal> {
    let target = resolve_request(entries, membership, plan, request)?;
    if target.round <= held.round {
        return Err(Refusal::OlderThanHeld {
            round: target.round,
            held: held.round,
        });
    }
    check_base(target.round, target.base.unwrap_or(ZERO_BASE), held)?;
    Ok(target)
}

/// What the request at leaf `request` asks to decrypt, if it is well formed: a threshold
/// quorum, the single close of a round opened under `plan`, an attempt within the cap that
/// targets the aggregate (or a re-randomisation of it), and at least `k_min` distinct members'
/// contributions between the open and the close.
pub fn resolve_request(
    entries: &[SignedEntry],
    membership: &Membership,
    plan: &RoundPlan,
    request: u64,
) -> Result<ReleaseTarget, Refusal> {
    let Some(Body::DecryptionRequest {
        round,
        close,
        ciphertext,
        quorum,
        attempt,
        seed,
    }) = entries.get(request as usize).map(|e| &e.entry.body)
    else {
        return Err(Refusal::NotARequest(request));
    };
    let (round, close, ciphertext, quorum_bits, attempt, seed) =
        (*round, *close, *ciphertext, *quorum, *attempt, *seed);
    let members = membership.members.len();
    if quorum_bits.count_ones() != u32::from(membership.threshold)
        || u32::from(quorum_bits) >> members != 0
    {
        return Err(Refusal::BadQuorum(quorum_bits));
    }
    let Some(Body::RoundClose {
        round: close_round,
        base: close_base,
        contributions,
        aggregate,
    }) = entries
        .get(close as usize)
        .filter(|_| close < request)
        .map(|e| &e.entry.body)
    else {
        return Err(Refusal::NoClose(close));
    };
    if *close_round != round {
        return Err(Refusal::NoClose(close));
    }

    // The round: opened once under this plan and closed once.
    let mut opened_under = None;
    let mut closes = 0;
    for (index, entry) in entries.iter().enumerate() {
        match &entry.entry.body {
            Body::RoundOpen { round: r, base, .. } if *r == round => {
                opened_under = Some((index as u64, entry.entry.payload, *base));
            }
            Body::RoundClose { round: r, .. } if *r == round => closes += 1,
            _ => {}
        }
    }
    let Some((open_leaf, open_plan, open_base)) = opened_under else {
        return Err(Refusal::NoClose(close));
    };
    if open_plan != Some(plan.digest()) {
        return Err(Refusal::OtherPlan(round));
    }
    past_plan(round, plan)?;
    if closes != 1 || *close_base != open_base {
        return Err(Refusal::SecondClose(round));
    }
    if attempt > plan.max_retries {
        return Err(Refusal::Attempt {
            round,
            attempt,
            cap: plan.max_retries,
        });
    }
    let retargeted = if attempt == 0 {
        ciphertext != *aggregate
    } else {
        seed == [0; 32] || ciphertext == *aggregate
    };
    if retargeted {
        return Err(Refusal::NotTheAggregate(round));
    }

    // The contributions: distinct members' contributions to this round, logged between its
    // open and its close, at least k_min of them.
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for &leaf in contributions {
        let bad = |reason: &str| Refusal::BadContribution {
            round,
            leaf,
            reason: reason.into(),
        };
        let entry = entries
            .get(leaf as usize)
            .filter(|_| leaf > open_leaf && leaf < close)
            .ok_or_else(|| bad("not an entry between the round's open and close"))?;
        let Body::Contribution {
            round: r,
            ciphertext,
            samples,
        } = &entry.entry.body
        else {
            return Err(bad("not a contribution"));
        };
        if *r != round {
            return Err(bad("a contribution to another round"));
        }
        let member = member_of(membership, entry).ok_or_else(|| bad("not by a member"))?;
        if !seen.insert(member) {
            return Err(bad("a second contribution by the same member"));
        }
        found.push((leaf, member, *ciphertext, *samples));
    }
    if found.len() < usize::from(membership.k_min) {
        return Err(Refusal::TooFewContributors {
            round,
            count: found.len(),
            k_min: membership.k_min,
        });
    }
    let samples: Vec<u64> = found.iter().map(|f| f.3).collect();
    let weights = plan
        .weights(&samples)
        .map_err(|e| Refusal::BadContribution {
            round,
            leaf: found[0].0,
            reason: e.to_string(),
        })?;
    let terms = found
        .iter()
        .zip(weights)
        .map(|(&(leaf, member, ciphertext, _), weight)| Term {
            leaf,
            member,
            ciphertext,
            weight,
        })
        .collect();

    Ok(ReleaseTarget {
        request,
        round,
        close,
        attempt,
        seed,
        ciphertext,
        aggregate: *aggregate,
        base: base_of(open_base),
        terms,
        quorum: (0..members as u8)
            .filter(|m| quorum_bits & (1 << m) != 0)
            .collect(),
    })
}

/// Why the weighted sum of logged contributions could not be formed.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError<E: std::fmt::Display> {
    #[error("reading contribution {}: {source}", hex::encode(&digest[..8]))]
    Read { digest: Digest, source: E },
    #[error("contribution {}: {source}", hex::encode(&digest[..8]))]
    Decode {
        digest: Digest,
        source: crate::wire::WireError,
    },
    #[error("contribution {} does not hash to its logged digest", hex::encode(&digest[..8]))]
    Digest { digest: Digest },
    #[error("contribution {}: {source}", hex::encode(&digest[..8]))]
    Shape {
        digest: Digest,
        source: crate::he::HeError,
    },
}

/// Adds `weight * contribution` for every term into `acc` (the encrypted model the round
/// builds on), reading one encoded contribution at a time through `read` and checking that
/// it hashes to the digest its author logged: the whole-bytes form of
/// [`TermStream`](super::TermStream), the one aggregation step the coordinator (reading from
/// disk) and members (as they fetch) both run, so an honest coordinator's aggregate always
/// matches what members recompute. On an error `acc` holds part of a term and must be dropped.
pub fn aggregate<E: std::fmt::Display>(
    acc: &mut crate::he::Ciphertext,
    terms: &[(Digest, i64)],
    limits: crate::wire::DecodeLimits,
    mut read: impl FnMut(&Digest) -> Result<Vec<u8>, E>,
) -> Result<(), AggregateError<E>> {
    for &(digest, weight) in terms {
        let bytes = read(&digest).map_err(|source| AggregateError::Read { digest, source })?;
        let mut term = super::TermStream::new(&mut *acc, digest, weight, limits);
        term.push(&bytes)?;
        term.finish()?;
    }
    Ok(())
}

impl ReleaseTarget {
    /// The terms as (digest, weight) pairs, in the close's order.
    pub fn weighted_terms(&self) -> Vec<(Digest, i64)> {
        self.terms
            .iter()
            .map(|t| (t.ciphertext, t.weight))
            .collect()
    }
}
