//! A complete, correctly signed consortium log built in memory: the membership manifest,
//! rounds with contributions, decryptions and cosigned checkpoints. Tests start from it and
//! then break one thing at a time; it also shows how the pieces fit together.

use ed25519_dalek::{Signer, SigningKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest as _, Sha256};

use super::entry::{
    Body, CoordinatorKeys, Digest, Entry, Member, Membership, SignedEntry, approval_message,
};
use super::log::{LogState, safe_witness_quorum};
use super::note::{COSIGNATURE_V1, ED25519, NoteSigner};
use super::verify::ExportedLog;
use super::witness::WitnessState;

/// Who writes an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Author {
    Coordinator,
    Member(usize),
}

#[derive(Debug)]
pub struct SampleMember {
    pub name: String,
    pub signing: SigningKey,
    pub witness: NoteSigner,
    pub witness_state: WitnessState,
}

pub struct SampleConsortium {
    pub origin: String,
    pub coordinator: SigningKey,
    pub log_signer: NoteSigner,
    pub members: Vec<SampleMember>,
    pub log: LogState,
    pub checkpoints: Vec<(u64, Vec<u8>)>,
    /// Seconds since the epoch used for claimed times and cosignatures.
    pub now: u64,
    /// The round plan digest `round open` entries carry as their payload.
    pub round_plan: Option<Digest>,
}

impl std::fmt::Debug for SampleConsortium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SampleConsortium({}, {} entries)",
            self.origin,
            self.log.size()
        )
    }
}

fn digest(label: &str, n: u64) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(label.as_bytes());
    hasher.update(n.to_le_bytes());
    hasher.finalize().into()
}

impl SampleConsortium {
    /// `parties` members with threshold `threshold`, `k_min` and the smallest safe witness
    /// quorum; keys derived from `seed`.
    pub fn new(parties: u8, threshold: u8, k_min: u8, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let origin = "quorate.example/sample-log".to_owned();
        let coordinator = SigningKey::from_bytes(&rng.r#gen());
        let log_signer = NoteSigner::new(&origin, ED25519, SigningKey::from_bytes(&rng.r#gen()))
            .expect("valid name");
        let members: Vec<SampleMember> = (0..parties)
            .map(|i| {
                let name = crate::consortium::rehearsal_member_name(i);
                SampleMember {
                    signing: SigningKey::from_bytes(&rng.r#gen()),
                    witness: NoteSigner::new(
                        &name,
                        COSIGNATURE_V1,
                        SigningKey::from_bytes(&rng.r#gen()),
                    )
                    .expect("valid name"),
                    witness_state: WitnessState::new(&origin),
                    name,
                }
            })
            .collect();
        let mut membership = Membership {
            name: format!("sample-{seed}"),
            parameter_set: crate::he::QUORATE_RLWE128_V1.id.to_owned(),
            threshold,
            k_min,
            // Older samples use k_min = t; they say so, as a consortium file would have to.
            accept_small_aggregates: k_min <= threshold,
            witness_quorum: safe_witness_quorum(parties, threshold),
            coordinator: CoordinatorKeys {
                name: "coordinator".into(),
                signing_key: coordinator.verifying_key().to_bytes(),
                log_key: log_signer.verifier().key().to_bytes(),
                peer_id: "sample-coordinator-peer".into(),
                address: "/ip4/127.0.0.1/tcp/7400".into(),
            },
            members: members
                .iter()
                .enumerate()
                .map(|(i, m)| Member {
                    name: m.name.clone(),
                    signing_key: m.signing.verifying_key().to_bytes(),
                    witness_key: m.witness.verifier().key().to_bytes(),
                    peer_id: format!("sample-peer-{i}"),
                    address: format!("/ip4/127.0.0.1/tcp/{}", 7401 + i),
                })
                .collect(),
            approvals: Vec::new(),
        };
        let digest = membership.digest();
        membership.approvals = members
            .iter()
            .map(|m| m.signing.sign(&approval_message(&digest)).to_bytes())
            .collect();
        let mut sample = Self {
            log: LogState::new(&origin),
            origin,
            coordinator,
            log_signer,
            members,
            checkpoints: Vec::new(),
            now: 1_800_000_000,
            round_plan: None,
        };
        sample.append(Author::Coordinator, Body::Membership(membership), vec![]);
        sample
    }

    /// Signs `body` as `author` with the right sequence number, without appending it.
    pub fn sign(&self, author: Author, body: Body, references: Vec<u64>) -> SignedEntry {
        let key = match author {
            Author::Coordinator => &self.coordinator,
            Author::Member(i) => &self.members[i].signing,
        };
        let author_key = key.verifying_key().to_bytes();
        let payload = match body {
            Body::RoundOpen { .. } => self.round_plan,
            _ => None,
        };
        let subject = body.round().map_or([0; 32], |r| digest("round", r));
        Entry::new(
            self.origin.clone(),
            key,
            self.log.next_sequence(&author_key),
            self.now * 1000,
            body,
        )
        .about(subject)
        .referencing(references)
        .with_payload(payload)
        .sign(key)
    }

    /// Signs and appends; panics if the log refuses (samples are built correctly).
    pub fn append(&mut self, author: Author, body: Body, references: Vec<u64>) -> u64 {
        let entry = self.sign(author, body, references);
        self.now += 1;
        self.log
            .append(entry)
            .expect("sample entries follow the rules")
    }

    /// Publishes a checkpoint of the whole log, cosigned by `witnesses` through their witness
    /// state machines.
    pub fn publish_checkpoint(&mut self, witnesses: &[usize]) -> Vec<u8> {
        let checkpoint = self.log.checkpoint();
        let mut note = checkpoint.sign(&self.log_signer);
        let encoded = note.encode();
        for &w in witnesses {
            let member = &mut self.members[w];
            let old = member.witness_state.size;
            let proof = if old == 0 {
                vec![]
            } else {
                self.log
                    .consistency_proof(old)
                    .expect("old size within the log")
            };
            let (state, line) = member
                .witness_state
                .cosign(
                    old,
                    &proof,
                    encoded.as_bytes(),
                    self.log_signer.verifier(),
                    &member.witness,
                    self.now,
                )
                .expect("an honest log is consistent");
            member.witness_state = state;
            note.signatures.push(line);
        }
        let bytes = note.encode().into_bytes();
        self.checkpoints.push((checkpoint.size, bytes.clone()));
        bytes
    }

    /// The encrypted model the next round must build on, by the log's round rules.
    pub fn base(&self) -> Digest {
        self.log.rounds().map_or([0; 32], |r| r.base())
    }

    /// The digest member `member`'s contribution to `round` carries in sample logs.
    pub fn contribution_digest(round: u64, member: usize) -> Digest {
        digest("contribution", round * 100 + member as u64)
    }

    /// Opens `round`, appends one contribution per contributor and closes it; returns the
    /// close's leaf and the aggregate's digest.
    pub fn open_and_close(&mut self, round: u64, contributors: &[usize]) -> (u64, Digest) {
        let expected = contributors.iter().fold(0u16, |bits, &m| bits | (1 << m));
        let base = self.base();
        self.append(
            Author::Coordinator,
            Body::RoundOpen {
                round,
                model: digest("model", round),
                base,
                deadline_ms: self.now * 1000 + 60_000,
                expected,
            },
            vec![],
        );
        let leaves: Vec<u64> = contributors
            .iter()
            .map(|&m| {
                self.append(
                    Author::Member(m),
                    Body::Contribution {
                        round,
                        ciphertext: Self::contribution_digest(round, m),
                        samples: 100 + m as u64,
                    },
                    vec![],
                )
            })
            .collect();
        let aggregate = digest("aggregate", round);
        let close = self.append(
            Author::Coordinator,
            Body::RoundClose {
                round,
                base,
                contributions: leaves.clone(),
                aggregate,
            },
            leaves,
        );
        (close, aggregate)
    }

    /// An honest round: open, one contribution per contributor, close, a request to `quorum`,
    /// every quorum member's release, and a result from each of them. Returns the request leaf.
    pub fn honest_round(&mut self, round: u64, contributors: &[usize], quorum: &[usize]) -> u64 {
        let (close, aggregate) = self.open_and_close(round, contributors);
        self.decrypt(round, close, aggregate, quorum, 0)
    }

    /// A decryption request and, from each quorum member, a release and a result.
    pub fn decrypt(
        &mut self,
        round: u64,
        close: u64,
        ciphertext: Digest,
        quorum: &[usize],
        attempt: u8,
    ) -> u64 {
        let request = self.request(round, close, ciphertext, quorum, attempt);
        for &m in quorum {
            self.append(
                Author::Member(m),
                Body::ShareReleased {
                    request,
                    ciphertext,
                    share: digest("share", request * 100 + m as u64),
                },
                vec![request],
            );
        }
        for &m in quorum {
            self.append(
                Author::Member(m),
                Body::DecryptionResult {
                    request,
                    ciphertext,
                    model: digest("model", round + 1),
                },
                vec![request],
            );
        }
        request
    }

    pub fn request(
        &mut self,
        round: u64,
        close: u64,
        ciphertext: Digest,
        quorum: &[usize],
        attempt: u8,
    ) -> u64 {
        self.append(
            Author::Coordinator,
            Body::DecryptionRequest {
                round,
                close,
                ciphertext,
                quorum: quorum.iter().fold(0u16, |bits, &m| bits | (1 << m)),
                attempt,
                seed: if attempt == 0 {
                    [0; 32]
                } else {
                    digest("seed", u64::from(attempt))
                },
            },
            vec![close],
        )
    }

    /// Signs `entries` as if appended after the log, one after the other, without the log's
    /// checks: what a coordinator and colluding members could write.
    pub fn forge(&self, entries: Vec<(Author, Body, Vec<u64>)>) -> Vec<SignedEntry> {
        let mut sequences = std::collections::BTreeMap::new();
        entries
            .into_iter()
            .map(|(author, body, references)| {
                let key = match author {
                    Author::Coordinator => &self.coordinator,
                    Author::Member(i) => &self.members[i].signing,
                };
                let author_key = key.verifying_key().to_bytes();
                let sequence = sequences
                    .entry(author_key)
                    .or_insert_with(|| self.log.next_sequence(&author_key));
                let mut entry = self.sign(author, body, references);
                entry.entry.sequence = *sequence;
                *sequence += 1;
                entry.entry.sign(key)
            })
            .collect()
    }

    /// An export of the log followed by `forged` entries, under a checkpoint over all of them
    /// that every member cosigned (each from a fresh witness state): the log a coordinator
    /// could show an auditor if it got its rule-breaking entries cosigned.
    pub fn export_with(&self, forged: &[SignedEntry]) -> ExportedLog {
        let mut entries = self.log.leaves().to_vec();
        entries.extend(forged.iter().map(|e| e.leaf().to_vec()));
        let hashes: Vec<_> = entries
            .iter()
            .map(|l| super::merkle::leaf_hash(l))
            .collect();
        let checkpoint = super::checkpoint::Checkpoint {
            origin: self.origin.clone(),
            size: entries.len() as u64,
            root: super::merkle::root(&hashes),
        };
        let mut note = checkpoint.sign(&self.log_signer);
        let encoded = note.encode();
        for member in &self.members {
            let (_, line) = WitnessState::new(&self.origin)
                .cosign(
                    0,
                    &[],
                    encoded.as_bytes(),
                    self.log_signer.verifier(),
                    &member.witness,
                    self.now,
                )
                .expect("a fresh witness cosigns any signed checkpoint");
            note.signatures.push(line);
        }
        ExportedLog {
            origin: self.origin.clone(),
            entries,
            checkpoints: vec![(checkpoint.size, note.encode().into_bytes())],
        }
    }

    pub fn all_witnesses(&self) -> Vec<usize> {
        (0..self.members.len()).collect()
    }

    pub fn export(&self) -> ExportedLog {
        ExportedLog {
            origin: self.origin.clone(),
            entries: self.log.leaves().to_vec(),
            checkpoints: self.checkpoints.clone(),
        }
    }
}

/// A sample log of `rounds` honest rounds among five members (t = 3, k_min = 4), with a
/// cosigned checkpoint after each round.
pub fn honest_log(rounds: u64) -> SampleConsortium {
    let mut sample = SampleConsortium::new(5, 3, 4, 7);
    let witnesses = sample.all_witnesses();
    sample.publish_checkpoint(&witnesses);
    for round in 1..=rounds {
        sample.honest_round(round, &[0, 1, 2, 3, 4], &[0, 2, 4]);
        sample.publish_checkpoint(&witnesses);
    }
    sample
}
