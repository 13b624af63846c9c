//! A member's release policy (threat-model invariants 3 and 4), judged only on the member's
//! own copy of the log: it releases a partial decryption only for the agreed aggregate of the
//! latest round, built from at least `k_min` distinct members' logged contributions, and only
//! once per ciphertext. The caller then recomputes the ciphertext from the [`ReleaseTarget`]
//! (the previous encrypted model plus the weighted contributions, re-randomised from the
//! logged seed on a retry) and compares its digest with the request's before anything leaves.

use std::collections::BTreeSet;

use super::plan::RoundPlan;
use crate::audit::entry::{Body, Digest, Membership, SignedEntry};

/// One weighted contribution of the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub leaf: u64,
    pub member: u8,
    pub ciphertext: Digest,
    pub weight: i64,
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
    /// The encrypted model the round started from: the aggregate of the latest decrypted
    /// round, or `None` (an encryption of zero) before the first.
    pub base: Option<Digest>,
    pub terms: Vec<Term>,
    pub quorum: Vec<u8>,
}

/// Why a member refuses to release; each is logged as an incident with [`Refusal::code`].
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
}

impl Refusal {
    /// The incident code logged for this refusal (100 + variant), stable across versions.
    pub fn code(&self) -> u16 {
        100 + match self {
            Refusal::NotARequest(_) => 0,
            Refusal::NotInQuorum => 1,
            Refusal::BadQuorum(_) => 2,
            Refusal::NoClose(_) => 3,
            Refusal::SecondClose(_) => 4,
            Refusal::OtherPlan(_) => 5,
            Refusal::TooFewContributors { .. } => 6,
            Refusal::BadContribution { .. } => 7,
            Refusal::NotTheAggregate(_) => 8,
            Refusal::Attempt { .. } => 9,
            Refusal::StaleRound(_) => 10,
            Refusal::Superseded(_) => 11,
            Refusal::AlreadyReleased => 12,
            Refusal::Mismatch => 13,
        }
    }
}

fn member_of(membership: &Membership, entry: &SignedEntry) -> Option<u8> {
    membership
        .members
        .iter()
        .position(|m| m.signing_key == entry.entry.author)
        .map(|i| i as u8)
}

/// Judges the request at leaf `request` of `entries` (the member's log, every entry already
/// checked for signature and author) for member `me`.
pub fn check_request(
    entries: &[SignedEntry],
    membership: &Membership,
    plan: &RoundPlan,
    me: u8,
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
    if quorum_bits & (1 << me) == 0 {
        return Err(Refusal::NotInQuorum);
    }
    let Some(Body::RoundClose {
        round: close_round,
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

    // The round: opened once under this plan, closed once, the latest round of the log, and
    // not decrypted before.
    let mut opened_under = None;
    let mut closes = 0;
    let mut requests_for_close = Vec::new();
    // Requests decrypted as far as this log shows: a logged result, or a whole quorum's worth
    // of releases (the auditor's rule), whichever comes first.
    let mut decrypted_requests = BTreeSet::new();
    let mut released_by: std::collections::BTreeMap<u64, BTreeSet<Option<u8>>> =
        std::collections::BTreeMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let index = index as u64;
        match &entry.entry.body {
            Body::RoundOpen { round: r, .. } if *r == round => {
                opened_under = Some((index, entry.entry.payload));
            }
            Body::RoundOpen { round: r, .. } if *r > round => {
                return Err(Refusal::StaleRound(round));
            }
            Body::RoundClose { round: r, .. } if *r == round => closes += 1,
            Body::DecryptionRequest { close: c, .. } if *c == close => {
                requests_for_close.push(index);
            }
            Body::DecryptionResult { request: q, .. } => {
                decrypted_requests.insert(*q);
            }
            Body::ShareReleased {
                request: q,
                ciphertext: released,
                ..
            } => {
                let author = member_of(membership, entry);
                if *released == ciphertext && author == Some(me) {
                    return Err(Refusal::AlreadyReleased);
                }
                let releasers = released_by.entry(*q).or_default();
                releasers.insert(author);
                if releasers.len() >= usize::from(membership.threshold) {
                    decrypted_requests.insert(*q);
                }
            }
            _ => {}
        }
    }
    let Some((open_leaf, open_plan)) = opened_under else {
        return Err(Refusal::NoClose(close));
    };
    if open_plan != Some(plan.digest()) {
        return Err(Refusal::OtherPlan(round));
    }
    if closes != 1 {
        return Err(Refusal::SecondClose(round));
    }
    if requests_for_close
        .iter()
        .any(|q| decrypted_requests.contains(q))
    {
        return Err(Refusal::StaleRound(round));
    }
    if requests_for_close.last() != Some(&request) {
        return Err(Refusal::Superseded(round));
    }
    let position = requests_for_close.len() - 1;
    if usize::from(attempt) != position || attempt > plan.max_retries {
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
        base: base_model(entries, open_leaf),
        terms,
        quorum: (0..members as u8)
            .filter(|m| quorum_bits & (1 << m) != 0)
            .collect(),
    })
}

/// The encrypted model a round opened at leaf `before` builds on: the aggregate of the latest
/// earlier round for which any member released a share, or `None` (an encryption of zero)
/// before any. Building on the latest released round, whether or not its decryption
/// completed, means no two decrypted models ever share a base: otherwise their difference
/// would reveal the difference of two contribution sets, down to a single member's update.
pub fn base_model(entries: &[SignedEntry], before: u64) -> Option<Digest> {
    let entries = &entries[..(before as usize).min(entries.len())];
    entries.iter().rev().find_map(|entry| {
        let Body::ShareReleased { request, .. } = &entry.entry.body else {
            return None;
        };
        let Body::DecryptionRequest { close, .. } = &entries.get(*request as usize)?.entry.body
        else {
            return None;
        };
        let Body::RoundClose { aggregate, .. } = &entries.get(*close as usize)?.entry.body else {
            return None;
        };
        Some(*aggregate)
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
/// it hashes to the digest its author logged. Coordinator and members run this same code,
/// so an honest coordinator's aggregate always matches what members recompute.
pub fn aggregate<E: std::fmt::Display>(
    acc: &mut crate::he::Ciphertext,
    terms: &[(Digest, i64)],
    limits: crate::wire::DecodeLimits,
    mut read: impl FnMut(&Digest) -> Result<Vec<u8>, E>,
) -> Result<(), AggregateError<E>> {
    for &(digest, weight) in terms {
        let bytes = read(&digest).map_err(|source| AggregateError::Read { digest, source })?;
        if crate::wire::encoded_digest(&bytes).0 != digest {
            return Err(AggregateError::Digest { digest });
        }
        let view = crate::wire::decode_ciphertext_view(&bytes, limits)
            .map_err(|source| AggregateError::Decode { digest, source })?;
        view.add_weighted_into(acc, weight)
            .map_err(|source| AggregateError::Shape { digest, source })?;
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
