//! What a run must have produced, computed from its log alone: the plaintext fixed-point
//! model of the rounds the log decrypted (for synthetic updates; FedAvg or the plan's server
//! optimizer), and the releases that
//! would break the release policy. The resilience suite and `bench soak` judge every run with
//! these, whatever faults it went through.

use std::collections::HashSet;

use protocol::audit::entry::{Body, Digest, SignedEntry};
use protocol::round::RoundPlan;
use protocol::round::policy::member_of;
use protocol::round::rules::{RoundRules, ZERO_BASE};

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("the log does not start with the membership")]
    NoMembership,
    #[error("the base {} is no round's logged aggregate", hex::encode(.0))]
    UnknownBase(Digest),
    #[error("leaf {0}, listed by a round's close, is not a member's contribution")]
    NotAContribution(u64),
    #[error(transparent)]
    Round(#[from] protocol::round::RoundError),
}

/// Rounds by number, each with its contributors (member index, declared samples).
pub type Chain = Vec<(u64, Vec<(u8, u64)>)>;

/// The rounds a model is made of: following the bases back from the log's current one (the
/// aggregate of the latest round whose whole quorum released) to zero. Each round by number,
/// with its contributors (member index, declared samples), oldest first.
pub fn decrypted_chain(log: &[SignedEntry]) -> Result<Chain, ReferenceError> {
    let Some(Body::Membership(membership)) = log.first().map(|e| &e.entry.body) else {
        return Err(ReferenceError::NoMembership);
    };
    let rules = RoundRules::replay(membership, log);
    let mut base = rules.base();
    let mut chain = Vec::new();
    while base != ZERO_BASE {
        // Under a server optimizer a base is the members' encryption of a round's stepped
        // model, named by their server steps; that round's aggregate is what was decrypted.
        let aggregate = log
            .iter()
            .find_map(|e| match &e.entry.body {
                Body::ServerStep { request, .. } => rules
                    .request(*request)
                    .filter(|r| {
                        r.agreed_step(membership.threshold)
                            .is_some_and(|(_, agreed)| agreed == base)
                    })
                    .map(|r| r.close),
                _ => None,
            })
            .and_then(
                |close| match log.get(close as usize).map(|e| &e.entry.body) {
                    Some(Body::RoundClose { aggregate, .. }) => Some(*aggregate),
                    _ => None,
                },
            )
            .unwrap_or(base);
        let (round, previous, contributions) = log
            .iter()
            .find_map(|e| match &e.entry.body {
                Body::RoundClose {
                    round,
                    base: previous,
                    contributions,
                    aggregate: a,
                } if *a == aggregate => Some((*round, *previous, contributions.clone())),
                _ => None,
            })
            .ok_or(ReferenceError::UnknownBase(base))?;
        let contributors = contributions
            .iter()
            .map(|&leaf| {
                let entry = log
                    .get(leaf as usize)
                    .ok_or(ReferenceError::NotAContribution(leaf))?;
                match (entry.entry.body.clone(), member_of(membership, entry)) {
                    (Body::Contribution { samples, .. }, Some(member)) => Ok((member, samples)),
                    _ => Err(ReferenceError::NotAContribution(leaf)),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        chain.push((round, contributors));
        base = previous;
    }
    chain.reverse();
    Ok(chain)
}

/// The model every member must hold after the run logged in `log`, if each contributed the
/// synthetic updates of `seed`, and the rounds it is made of.
pub fn synthetic_reference(
    plan: &RoundPlan,
    seed: u64,
    log: &[SignedEntry],
) -> Result<(Vec<i64>, Vec<u64>), ReferenceError> {
    let chain = decrypted_chain(log)?;
    let rounds = chain.iter().map(|(round, _)| *round).collect();
    let model = crate::source::synthetic_fedavg_of_rounds(plan, seed, &chain)?;
    Ok((model, rounds))
}

/// Every share a member released twice for one ciphertext (by author key and ciphertext):
/// there must be none.
pub fn double_releases(log: &[SignedEntry]) -> Vec<([u8; 32], Digest)> {
    let mut seen = HashSet::new();
    log.iter()
        .filter_map(|e| match e.entry.body {
            Body::ShareReleased { ciphertext, .. } => Some((e.entry.author, ciphertext)),
            _ => None,
        })
        .filter(|key| !seen.insert(*key))
        .collect()
}
