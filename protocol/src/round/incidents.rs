//! Incidents members hear from each other directly. A member that refuses something logs an
//! incident through the coordinator and also sends the same signed entry to every other
//! member, so that a coordinator that drops it does not keep the others from hearing. Members
//! then watch the log: the author's next entry carries the incident's sequence number if the
//! coordinator never appended it (a member signs its next entry with the next sequence the log
//! expects), so a different entry at that sequence proves the incident was dropped.

use std::collections::BTreeMap;

use crate::audit::entry::{Body, Digest, Membership, SignedEntry};

/// The evidence of a member's incident saying it does not contribute to the round opened at
/// leaf `open`: the coordinator reads it to stop waiting for that member at once, instead of
/// until the deadline.
pub fn declining_evidence(open: u64) -> Digest {
    <sha2::Sha256 as sha2::Digest>::digest(open.to_le_bytes()).into()
}

/// Incidents kept per member until the log shows them (or shows them dropped).
pub const HEARD_PER_MEMBER: usize = 32;

/// Why an incident heard directly is not kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeardError {
    #[error("the entry is not an incident")]
    NotAnIncident,
    #[error("the incident is not signed by member {0}, which sent it")]
    NotTheSender(u8),
    #[error("member {0} has {HEARD_PER_MEMBER} incidents waiting for the log already")]
    TooMany(u8),
    #[error("sequence {sequence} is behind the log, which expects {next} from this member")]
    Stale { sequence: u64, next: u64 },
}

/// An incident whose sequence number the log gave to another entry of its author.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub member: u8,
    pub sequence: u64,
    /// The digest of the incident entry as it was heard.
    pub evidence: [u8; 32],
    pub code: u16,
    pub description: String,
}

/// Incidents heard directly from other members, waiting to be seen in the log.
#[derive(Clone, Debug, Default)]
pub struct HeardIncidents {
    waiting: BTreeMap<(u8, u64), SignedEntry>,
}

impl HeardIncidents {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `entry`, sent by member `sender`, until the log accounts for it. `next` is the
    /// sequence number the log expects from the sender now: an incident behind it can only be
    /// an old one or a second entry at a used number (which would only make the coordinator
    /// look guilty), and is refused.
    pub fn hear(
        &mut self,
        membership: &Membership,
        sender: u8,
        entry: SignedEntry,
        next: u64,
    ) -> Result<(), HeardError> {
        if !matches!(entry.entry.body, Body::Incident { .. }) {
            return Err(HeardError::NotAnIncident);
        }
        let key = membership
            .members
            .get(usize::from(sender))
            .map(|m| m.signing_key);
        if key != Some(entry.entry.author) {
            return Err(HeardError::NotTheSender(sender));
        }
        if entry.entry.sequence < next {
            return Err(HeardError::Stale {
                sequence: entry.entry.sequence,
                next,
            });
        }
        let waiting = self.waiting.keys().filter(|(m, _)| *m == sender).count();
        let slot = (sender, entry.entry.sequence);
        if waiting >= HEARD_PER_MEMBER && !self.waiting.contains_key(&slot) {
            return Err(HeardError::TooMany(sender));
        }
        self.waiting.insert(slot, entry);
        Ok(())
    }

    /// Checks the waiting incidents against `log` (checked entries, in order): an incident the
    /// log holds is forgotten; one whose author's sequence number went to another entry was
    /// dropped by the coordinator, and is returned.
    pub fn reconcile(&mut self, membership: &Membership, log: &[SignedEntry]) -> Vec<Dropped> {
        if self.waiting.is_empty() {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        for entry in log {
            let Some(member) = membership
                .members
                .iter()
                .position(|m| m.signing_key == entry.entry.author)
                .map(|i| i as u8)
            else {
                continue;
            };
            let slot = (member, entry.entry.sequence);
            let Some(heard) = self.waiting.remove(&slot) else {
                continue;
            };
            let evidence: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(heard.leaf()).into();
            if heard.leaf() != entry.leaf()
                && let Body::Incident {
                    code, description, ..
                } = heard.entry.body
            {
                dropped.push(Dropped {
                    member,
                    sequence: slot.1,
                    evidence,
                    code,
                    description,
                });
            }
        }
        dropped
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::sample::{Author, SampleConsortium};

    fn incident(s: &SampleConsortium, member: usize, text: &str) -> SignedEntry {
        s.sign(
            Author::Member(member),
            Body::Incident {
                code: 113,
                evidence: [1; 32],
                description: text.into(),
            },
            vec![],
        )
    }

    #[test]
    fn an_incident_the_coordinator_drops_is_caught_by_the_authors_next_entry() {
        let mut s = SampleConsortium::new(3, 2, 3, 5);
        let membership = s.log.membership().unwrap().clone();
        let mut heard = HeardIncidents::new();
        // Member 1 refuses, logs an incident and sends it to the others; the coordinator
        // never appends it.
        let dropped = incident(&s, 1, "refused a crafted aggregate");
        heard.hear(&membership, 1, dropped, 0).unwrap();
        // Member 2's incident reaches the log as sent.
        let kept = incident(&s, 2, "refused a single contribution");
        heard.hear(&membership, 2, kept.clone(), 0).unwrap();
        s.log.append(kept).unwrap();
        let log = |s: &SampleConsortium| -> Vec<SignedEntry> {
            s.log
                .leaves()
                .iter()
                .map(|l| SignedEntry::open(l).unwrap())
                .collect()
        };
        assert!(heard.reconcile(&membership, &log(&s)).is_empty());
        assert_eq!(heard.waiting(), 1);
        // Member 1's next entry takes the sequence number the dropped incident had.
        s.append(
            Author::Member(1),
            Body::Incident {
                code: 140,
                evidence: [2; 32],
                description: "something else".into(),
            },
            vec![],
        );
        let found = heard.reconcile(&membership, &log(&s));
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].member, found[0].sequence, found[0].code),
            (1, 0, 113)
        );
        assert_eq!(found[0].description, "refused a crafted aggregate");
        assert_eq!(heard.waiting(), 0);
    }

    #[test]
    fn only_a_members_own_incidents_are_kept_and_only_so_many() {
        let s = SampleConsortium::new(3, 2, 3, 6);
        let membership = s.log.membership().unwrap().clone();
        let mut heard = HeardIncidents::new();
        let entry = incident(&s, 1, "x");
        assert_eq!(
            heard.hear(&membership, 2, entry.clone(), 0),
            Err(HeardError::NotTheSender(2))
        );
        // An incident at a sequence number the log already used is not evidence of anything.
        assert_eq!(
            heard.hear(&membership, 1, entry.clone(), 1),
            Err(HeardError::Stale {
                sequence: 0,
                next: 1
            })
        );
        let not_incident = s.sign(
            Author::Member(1),
            Body::ShareReleased {
                request: 1,
                ciphertext: [0; 32],
                share: [0; 32],
            },
            vec![],
        );
        assert_eq!(
            heard.hear(&membership, 1, not_incident, 0),
            Err(HeardError::NotAnIncident)
        );
        for sequence in 0..HEARD_PER_MEMBER as u64 {
            let mut e = entry.clone();
            e.entry.sequence = sequence;
            let e = e.entry.sign(&s.members[1].signing);
            heard.hear(&membership, 1, e, 0).unwrap();
        }
        let mut extra = entry.clone();
        extra.entry.sequence = 1000;
        let extra = extra.entry.sign(&s.members[1].signing);
        assert_eq!(
            heard.hear(&membership, 1, extra, 0),
            Err(HeardError::TooMany(1))
        );
    }
}
