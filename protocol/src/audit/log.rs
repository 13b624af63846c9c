//! The log itself, sans-IO: the ordered leaves, their Merkle tree, and the entry-level rules
//! every appended entry must satisfy (origin, author authorised for the kind, per-author
//! sequence without gaps, references to earlier leaves only). The coordinator checks an entry
//! with these rules before it acts on it, and the auditor replays them.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use super::checkpoint::Checkpoint;
use super::entry::{Body, Entry, EntryError, KeyBytes, Membership, SignedEntry, approval_message};
use super::merkle::{self, Hash, MerkleError};
use super::note::{COSIGNATURE_V1, ED25519, NoteError, NoteVerifier};
use crate::round::rules::{RoundRules, Writer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("entry {index}: {source}")]
    Entry { index: u64, source: EntryError },
    #[error("entry {index}: {reason}")]
    Rule { index: u64, reason: String },
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    #[error("membership: {0}")]
    Membership(String),
    #[error("entry {index}: {source}")]
    Round {
        index: u64,
        source: crate::round::rules::RuleError,
    },
}

/// Who may author an entry of a given kind.
fn allowed_author(membership: &Membership, author: &KeyBytes, body: &Body) -> bool {
    let coordinator = *author == membership.coordinator.signing_key;
    let member = membership.members.iter().any(|m| m.signing_key == *author);
    match body {
        Body::Membership(_)
        | Body::RoundOpen { .. }
        | Body::RoundClose { .. }
        | Body::DecryptionRequest { .. }
        | Body::ConfigChange { .. } => coordinator,
        Body::CeremonyStep { .. }
        | Body::Contribution { .. }
        | Body::ShareReleased { .. }
        | Body::DecryptionResult { .. }
        | Body::ServerStep { .. } => member,
        Body::Incident { .. } => coordinator || member,
    }
}

/// Checks a membership manifest on its own: parameters in range, names usable as note key
/// names, distinct keys, every member's approval present and valid.
pub fn check_membership(membership: &Membership) -> Result<(), LogError> {
    let fail = |why: String| Err(LogError::Membership(why));
    let n = membership.members.len();
    if n < 2 || n > usize::from(crate::he::MAX_PARTIES) {
        return fail(format!("{n} members; between 2 and 10 are supported"));
    }
    let t = usize::from(membership.threshold);
    if t < 2 || t > n {
        return fail(format!("threshold {t} is not between 2 and {n}"));
    }
    check_k_min(
        n as u8,
        membership.threshold,
        membership.k_min,
        membership.accept_small_aggregates,
    )
    .map_err(|e| LogError::Membership(e.to_string()))?;
    let q = usize::from(membership.witness_quorum);
    if q > n || 2 * q < n + t {
        return fail(format!(
            "witness quorum {q} is unsafe: forks are impossible only if q > (n + f) / 2 with \
             f = t - 1 = {} colluding members, so q must be at least {}",
            t - 1,
            safe_witness_quorum(n as u8, t as u8)
        ));
    }
    let mut keys: Vec<&KeyBytes> = vec![
        &membership.coordinator.signing_key,
        &membership.coordinator.log_key,
    ];
    for member in &membership.members {
        NoteVerifier::new(
            &member.name,
            COSIGNATURE_V1,
            verifying_key(&member.witness_key)?,
        )
        .map_err(|e| LogError::Membership(e.to_string()))?;
        keys.push(&member.signing_key);
        keys.push(&member.witness_key);
    }
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != keys.len() {
        return fail("a key is used twice".into());
    }
    if membership.approvals.len() != n {
        return fail(format!(
            "{} approvals for {n} members",
            membership.approvals.len()
        ));
    }
    let message = approval_message(&membership.digest());
    for (member, approval) in membership.members.iter().zip(&membership.approvals) {
        verifying_key(&member.signing_key)?
            .verify_strict(&message, &Signature::from_bytes(approval))
            .map_err(|_| {
                LogError::Membership(format!("{}'s approval does not verify", member.name))
            })?;
    }
    Ok(())
}

/// Why a consortium's `k_min` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KMinError {
    #[error("k_min = {k_min} must be between 2 and the number of members ({members})")]
    OutOfRange { k_min: u8, members: u8 },
    #[error(
        "k_min = {k_min} must be at least the threshold plus one ({safe}): t - 1 = {colluders} \
         colluding members can contribute known values, so an aggregate of k_min contributions \
         must still hold two honest ones, or the coordinator and the colluders read one \
         member's update exactly{hint}"
    )]
    BelowSafe {
        k_min: u8,
        safe: u8,
        colluders: u8,
        hint: &'static str,
    },
}

/// The `k_min` rule: every decrypted aggregate holds at least two contributions that t - 1
/// colluding members did not write, so `k_min >= t + 1`. A consortium that cannot meet it
/// (t = n, such as any consortium of two) must say so explicitly with `accept_small_aggregates`.
pub fn check_k_min(members: u8, threshold: u8, k_min: u8, accepted: bool) -> Result<(), KMinError> {
    if k_min < 2 || k_min > members {
        return Err(KMinError::OutOfRange { k_min, members });
    }
    let safe = threshold.saturating_add(1);
    if k_min < safe && !accepted {
        return Err(KMinError::BelowSafe {
            k_min,
            safe,
            colluders: threshold.saturating_sub(1),
            hint: if safe > members {
                "; with this many members no k_min is safe: set accept_small_aggregates = true \
                 only if every member accepts that (see SECURITY.md)"
            } else {
                ""
            },
        });
    }
    Ok(())
}

/// The smallest witness quorum that rules out forks with t - 1 colluding members.
pub fn safe_witness_quorum(parties: u8, threshold: u8) -> u8 {
    (parties + threshold - 1) / 2 + 1
}

/// How many members may be down with rounds still completing: members act only on
/// checkpoints with the witness quorum of cosignatures, and a round needs `k_min`
/// contributions (decryption needs t, fewer than `k_min`). With none to spare, one site down
/// stops every round until it returns.
pub fn sites_down_tolerated(parties: u8, k_min: u8, witness_quorum: u8) -> u8 {
    parties.saturating_sub(witness_quorum.max(k_min))
}

fn verifying_key(bytes: &KeyBytes) -> Result<VerifyingKey, LogError> {
    VerifyingKey::from_bytes(bytes).map_err(|_| LogError::Membership("invalid public key".into()))
}

/// The verifiers for a membership's checkpoints: the log key (named after the origin) and
/// each member's witness key (named after the member).
/// Whether a stored checkpoint note is final: it opens under the log's key and carries at least
/// the witness quorum of valid cosignatures. Only final checkpoints are acted on by members and
/// exported for auditors; one short of the quorum (signed while members were still connecting,
/// or during an outage) is a step on the way, superseded by the next final one.
pub fn is_final_checkpoint(
    note: &[u8],
    log: &NoteVerifier,
    witnesses: &[NoteVerifier],
    membership: &Membership,
) -> bool {
    crate::audit::checkpoint::SignedCheckpoint::open(note, log, witnesses)
        .is_ok_and(|signed| signed.cosigners.len() >= usize::from(membership.witness_quorum))
}

pub fn checkpoint_verifiers(
    origin: &str,
    membership: &Membership,
) -> Result<(NoteVerifier, Vec<NoteVerifier>), NoteError> {
    let log_key = VerifyingKey::from_bytes(&membership.coordinator.log_key)
        .map_err(|_| NoteError::BadKeyName("log key".into()))?;
    let log = NoteVerifier::new(origin, ED25519, log_key)?;
    let witnesses = membership
        .members
        .iter()
        .map(|m| {
            let key = VerifyingKey::from_bytes(&m.witness_key)
                .map_err(|_| NoteError::BadKeyName(m.name.clone()))?;
            NoteVerifier::new(&m.name, COSIGNATURE_V1, key)
        })
        .collect::<Result<_, _>>()?;
    Ok((log, witnesses))
}

#[derive(Clone, Debug)]
pub struct LogState {
    origin: String,
    leaves: Vec<Vec<u8>>,
    hashes: Vec<Hash>,
    next_sequence: BTreeMap<KeyBytes, u64>,
    membership: Option<Membership>,
    rounds: Option<RoundRules>,
}

impl LogState {
    pub fn new(origin: &str) -> Self {
        Self {
            origin: origin.to_owned(),
            leaves: Vec::new(),
            hashes: Vec::new(),
            next_sequence: BTreeMap::new(),
            membership: None,
            rounds: None,
        }
    }

    /// Rebuilds the state from stored leaves, re-checking every one.
    pub fn restore(
        origin: &str,
        leaves: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<Self, LogError> {
        let mut state = Self::new(origin);
        for (index, leaf) in leaves.into_iter().enumerate() {
            let entry = SignedEntry::open(&leaf).map_err(|source| LogError::Entry {
                index: index as u64,
                source,
            })?;
            state.append(entry)?;
        }
        Ok(state)
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }

    /// The rounds as far as the log goes (once the membership is known).
    pub fn rounds(&self) -> Option<&RoundRules> {
        self.rounds.as_ref()
    }

    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    pub fn leaf(&self, index: u64) -> Option<&[u8]> {
        self.leaves.get(index as usize).map(Vec::as_slice)
    }

    pub fn leaves(&self) -> &[Vec<u8>] {
        &self.leaves
    }

    /// The sequence number `author`'s next entry must carry.
    /// The next entry `author` may append to this log: its origin and the author's next
    /// sequence number filled in.
    pub fn draft(&self, author: &SigningKey, claimed_time_ms: u64, body: Body) -> Entry {
        let sequence = self.next_sequence(&author.verifying_key().to_bytes());
        Entry::new(self.origin(), author, sequence, claimed_time_ms, body)
    }

    pub fn next_sequence(&self, author: &KeyBytes) -> u64 {
        self.next_sequence.get(author).copied().unwrap_or(0)
    }

    /// Checks the entry-level rules for appending `entry` as the next leaf.
    pub fn check(&self, entry: &SignedEntry) -> Result<(), LogError> {
        let index = self.size();
        let rule = |reason: String| Err(LogError::Rule { index, reason });
        let e = &entry.entry;
        if e.origin != self.origin {
            return rule(format!(
                "origin {:?} is not this log's {:?}",
                e.origin, self.origin
            ));
        }
        let expected = self.next_sequence(&e.author);
        if e.sequence != expected {
            return rule(format!(
                "sequence {} from author {}, expected {expected}",
                e.sequence,
                hex::encode(&e.author[..8])
            ));
        }
        if e.references.windows(2).any(|w| w[0] >= w[1])
            || e.references.last().is_some_and(|&r| r >= index)
        {
            return rule("references must be increasing and point to earlier entries".into());
        }
        match (&self.membership, &e.body) {
            (None, Body::Membership(membership)) => {
                if index != 0 {
                    return rule("the membership manifest must be the first entry".into());
                }
                check_membership(membership)?;
                if membership.coordinator.signing_key != e.author {
                    return rule(
                        "the membership manifest must be authored by its coordinator".into(),
                    );
                }
                Ok(())
            }
            (None, _) => rule("the first entry must be the membership manifest".into()),
            (Some(_), Body::Membership(_)) => rule("a second membership manifest".into()),
            (Some(_), Body::ConfigChange { .. }) => {
                rule("configuration changes are not supported by this version of the log".into())
            }
            (Some(membership), body) => {
                if !allowed_author(membership, &e.author, body) {
                    return rule(format!(
                        "author {} may not write {} entries",
                        hex::encode(&e.author[..8]),
                        body.kind_name()
                    ));
                }
                match &self.rounds {
                    Some(rounds) => rounds
                        .check(Writer::of(membership, &e.author), body)
                        .map_err(|source| LogError::Round { index, source }),
                    None => Ok(()),
                }
            }
        }
    }

    /// Checks and appends; returns the new leaf's index.
    pub fn append(&mut self, entry: SignedEntry) -> Result<u64, LogError> {
        self.check(&entry)?;
        let index = self.size();
        if let Body::Membership(membership) = &entry.entry.body {
            self.membership = Some(membership.clone());
            self.rounds = Some(RoundRules::new(membership));
        }
        if let (Some(membership), Some(rounds)) = (&self.membership, &mut self.rounds) {
            rounds.apply(
                index,
                Writer::of(membership, &entry.entry.author),
                &entry.entry.body,
            );
        }
        self.next_sequence
            .insert(entry.entry.author, entry.entry.sequence + 1);
        self.hashes.push(merkle::leaf_hash(entry.leaf()));
        self.leaves.push(entry.leaf().to_vec());
        Ok(index)
    }

    pub fn root(&self) -> Hash {
        merkle::root(&self.hashes)
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            origin: self.origin.clone(),
            size: self.size(),
            root: self.root(),
        }
    }

    pub fn root_at(&self, size: u64) -> Option<Hash> {
        (size <= self.size()).then(|| merkle::root(&self.hashes[..size as usize]))
    }

    pub fn inclusion_proof(&self, index: u64) -> Result<Vec<Hash>, LogError> {
        Ok(merkle::inclusion_proof(&self.hashes, index as usize)?)
    }

    pub fn consistency_proof(&self, old_size: u64) -> Result<Vec<Hash>, LogError> {
        Ok(merkle::consistency_proof(&self.hashes, old_size as usize)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (n, t) -> sites down the default (fork-safe) witness quorum and k_min = t + 1 allow.
    #[test]
    fn which_consortia_ride_out_a_site_down() {
        let tolerated = |n: u8, t: u8| sites_down_tolerated(n, t + 1, safe_witness_quorum(n, t));
        assert_eq!(
            tolerated(3, 2),
            0,
            "3 members, t = 2: every site must be up"
        );
        assert_eq!(tolerated(4, 2), 1);
        assert_eq!(tolerated(4, 3), 0);
        assert_eq!(tolerated(5, 2), 1);
        assert_eq!(tolerated(5, 3), 1);
        assert_eq!(tolerated(5, 4), 0);
        assert_eq!(tolerated(6, 3), 1);
        assert_eq!(tolerated(7, 3), 2);
        assert_eq!(tolerated(7, 4), 1);
        // A larger k_min than t + 1 can be the binding constraint.
        assert_eq!(sites_down_tolerated(6, 6, 4), 0);
    }
}
