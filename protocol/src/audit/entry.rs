//! Audit log entries: canonical binary encoding, kinds with typed bodies, Ed25519 signatures.
//!
//! An entry is signed over `quorate/audit-entry/v1 || 0x00 || encoding`, never over a serde
//! rendering, and decoding re-encodes to check that the input was canonical, so one entry has
//! exactly one byte string and one leaf hash.

mod incident_code;
pub use incident_code::IncidentCode;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::bytes::{ReadError, Reader, Writer};

/// Domain-separation label of entry signatures.
pub const ENTRY_LABEL: &[u8] = b"quorate/audit-entry/v1";
/// Entries stay small; large artefacts are referenced by digest.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Version 2: rounds name the encrypted model they build on; the manifest says whether small
/// aggregates were accepted.
const ENTRY_VERSION: u8 = 2;
const MAX_REFERENCES: u64 = 1024;
const MAX_TEXT: u64 = 4096;
const MAX_MEMBERS: u64 = 16;

pub type Digest = [u8; 32];
/// An Ed25519 public key, as raw bytes.
pub type KeyBytes = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry of {0} bytes exceeds the limit of {MAX_ENTRY_BYTES}")]
    TooLarge(usize),
    #[error("unsupported entry version {0}")]
    Version(u8),
    #[error("unknown entry kind {0}")]
    UnknownKind(u16),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("entry is not in canonical form")]
    NotCanonical,
    #[error("entry signature does not verify")]
    BadSignature,
    #[error("author key is not a valid Ed25519 key")]
    BadAuthorKey,
}

/// One consortium member as the log knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Signs the member's entries and ceremony messages.
    pub signing_key: KeyBytes,
    /// Cosigns checkpoints as a witness.
    pub witness_key: KeyBytes,
    /// libp2p PeerId and address, as in the consortium file.
    pub peer_id: String,
    pub address: String,
}

/// The coordinator as the log knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorKeys {
    pub name: String,
    /// Signs the coordinator's entries.
    pub signing_key: KeyBytes,
    /// Signs checkpoints (a separate key, as a signed-note key must not serve two purposes).
    pub log_key: KeyBytes,
    pub peer_id: String,
    pub address: String,
}

/// The membership manifest: the consortium file as the log records it, with every member's
/// approval. The approvals sign [`Membership::digest`], which covers every field (keys,
/// threshold, `k_min`, witness quorum, addresses), so none can be swapped after approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub name: String,
    pub parameter_set: String,
    pub threshold: u8,
    pub k_min: u8,
    /// The members agreed to a `k_min` of at most the threshold, under which t - 1 colluding
    /// members and the coordinator can isolate one member's contribution (see SECURITY.md).
    pub accept_small_aggregates: bool,
    /// Cosignatures a checkpoint needs before members act on it.
    pub witness_quorum: u8,
    pub coordinator: CoordinatorKeys,
    pub members: Vec<Member>,
    /// Member i's Ed25519 signature over [`approval_message`] of the digest, in member order.
    pub approvals: Vec<[u8; 64]>,
}

impl Membership {
    fn encode_fields(&self, w: &mut Writer) {
        w.string(&self.name)
            .string(&self.parameter_set)
            .u8(self.threshold)
            .u8(self.k_min)
            .u8(u8::from(self.accept_small_aggregates))
            .u8(self.witness_quorum)
            .string(&self.coordinator.name)
            .bytes(&self.coordinator.signing_key)
            .bytes(&self.coordinator.log_key)
            .string(&self.coordinator.peer_id)
            .string(&self.coordinator.address)
            .u8(self.members.len() as u8);
        for member in &self.members {
            w.string(&member.name)
                .bytes(&member.signing_key)
                .bytes(&member.witness_key)
                .string(&member.peer_id)
                .string(&member.address);
        }
    }

    /// The digest every member approves: everything but the approvals.
    pub fn digest(&self) -> Digest {
        let mut w = Writer::default();
        w.bytes(b"quorate/consortium/v1\0");
        self.encode_fields(&mut w);
        <sha2::Sha256 as sha2::Digest>::digest(w.into_bytes()).into()
    }
}

/// What each member signs to approve a consortium.
pub fn approval_message(consortium: &Digest) -> Vec<u8> {
    let mut message = b"quorate/consortium-approval/v1\0".to_vec();
    message.extend_from_slice(consortium);
    message
}

/// The typed body of each kind of entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// kind 1, by the coordinator.
    Membership(Membership),
    /// kind 2, by a member: one step of a key ceremony, its artefact by digest.
    CeremonyStep {
        ceremony: Digest,
        phase: u8,
        artefact: Digest,
    },
    /// kind 3, by the coordinator.
    RoundOpen {
        round: u64,
        /// The digest of the plaintext model the round starts from, as members logged it.
        model: Digest,
        /// The encrypted model the round builds on: the aggregate of the latest round whose
        /// decryption the whole quorum released, or zero (an encryption of zero) before any.
        base: Digest,
        deadline_ms: u64,
        /// Bit i: member i is expected to contribute.
        expected: u16,
    },
    /// kind 4, by a member: its encrypted update (by digest) and declared sample count.
    Contribution {
        round: u64,
        ciphertext: Digest,
        samples: u64,
    },
    /// kind 5, by the coordinator: the contribution entries aggregated, and the digest of the
    /// resulting encrypted model.
    RoundClose {
        round: u64,
        /// The same base as the round's open.
        base: Digest,
        contributions: Vec<u64>,
        aggregate: Digest,
    },
    /// kind 6, by the coordinator: decrypt `ciphertext` with these quorum members. Attempt 0
    /// targets the round's aggregate; a retry targets it re-randomised from `seed`.
    DecryptionRequest {
        round: u64,
        close: u64,
        ciphertext: Digest,
        quorum: u16,
        attempt: u8,
        seed: Digest,
    },
    /// kind 7, by a quorum member: it released its partial decryption (by digest).
    ShareReleased {
        request: u64,
        ciphertext: Digest,
        share: Digest,
    },
    /// kind 8, by a member: the digest of the model it decoded.
    DecryptionResult {
        request: u64,
        ciphertext: Digest,
        model: Digest,
    },
    /// kind 9, by the coordinator: a new consortium file, approved like the first.
    ConfigChange {
        consortium: Digest,
        description: String,
    },
    /// kind 10, by anyone: something refused or suspicious, with evidence by digest.
    Incident {
        code: u16,
        evidence: Digest,
        description: String,
    },
    /// kind 11, by a member, under a plan with another optimizer than FedAvg: after
    /// combining `request`, the model its server step gave (`model`, a model digest), the
    /// optimizer's state (`state`), and the encryption of that model every member computes
    /// alike (`base`, uploaded as the entry's payload), which the next round builds on.
    ServerStep {
        request: u64,
        model: Digest,
        state: Digest,
        base: Digest,
    },
}

impl Body {
    pub fn kind(&self) -> u16 {
        match self {
            Body::Membership(_) => 1,
            Body::CeremonyStep { .. } => 2,
            Body::RoundOpen { .. } => 3,
            Body::Contribution { .. } => 4,
            Body::RoundClose { .. } => 5,
            Body::DecryptionRequest { .. } => 6,
            Body::ShareReleased { .. } => 7,
            Body::DecryptionResult { .. } => 8,
            Body::ConfigChange { .. } => 9,
            Body::Incident { .. } => 10,
            Body::ServerStep { .. } => 11,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Body::Membership(_) => "membership",
            Body::CeremonyStep { .. } => "ceremony-step",
            Body::RoundOpen { .. } => "round-open",
            Body::Contribution { .. } => "contribution",
            Body::RoundClose { .. } => "round-close",
            Body::DecryptionRequest { .. } => "decryption-request",
            Body::ShareReleased { .. } => "share-released",
            Body::DecryptionResult { .. } => "decryption-result",
            Body::ConfigChange { .. } => "config-change",
            Body::Incident { .. } => "incident",
            Body::ServerStep { .. } => "server-step",
        }
    }

    /// The round an entry belongs to, if any.
    pub fn round(&self) -> Option<u64> {
        match self {
            Body::RoundOpen { round, .. }
            | Body::Contribution { round, .. }
            | Body::RoundClose { round, .. }
            | Body::DecryptionRequest { round, .. } => Some(*round),
            _ => None,
        }
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            Body::Membership(m) => {
                m.encode_fields(w);
                w.u8(m.approvals.len() as u8);
                for approval in &m.approvals {
                    w.bytes(approval);
                }
            }
            Body::CeremonyStep {
                ceremony,
                phase,
                artefact,
            } => {
                w.bytes(ceremony).u8(*phase).bytes(artefact);
            }
            Body::RoundOpen {
                round,
                model,
                base,
                deadline_ms,
                expected,
            } => {
                w.u64(*round)
                    .bytes(model)
                    .bytes(base)
                    .u64(*deadline_ms)
                    .u16(*expected);
            }
            Body::Contribution {
                round,
                ciphertext,
                samples,
            } => {
                w.u64(*round).bytes(ciphertext).u64(*samples);
            }
            Body::RoundClose {
                round,
                base,
                contributions,
                aggregate,
            } => {
                w.u64(*round).bytes(base).u16(contributions.len() as u16);
                for leaf in contributions {
                    w.u64(*leaf);
                }
                w.bytes(aggregate);
            }
            Body::DecryptionRequest {
                round,
                close,
                ciphertext,
                quorum,
                attempt,
                seed,
            } => {
                w.u64(*round)
                    .u64(*close)
                    .bytes(ciphertext)
                    .u16(*quorum)
                    .u8(*attempt)
                    .bytes(seed);
            }
            Body::ShareReleased {
                request,
                ciphertext,
                share,
            } => {
                w.u64(*request).bytes(ciphertext).bytes(share);
            }
            Body::DecryptionResult {
                request,
                ciphertext,
                model,
            } => {
                w.u64(*request).bytes(ciphertext).bytes(model);
            }
            Body::ConfigChange {
                consortium,
                description,
            } => {
                w.bytes(consortium).string(description);
            }
            Body::Incident {
                code,
                evidence,
                description,
            } => {
                w.u16(*code).bytes(evidence).string(description);
            }
            Body::ServerStep {
                request,
                model,
                state,
                base,
            } => {
                w.u64(*request).bytes(model).bytes(state).bytes(base);
            }
        }
    }

    fn decode(kind: u16, r: &mut Reader<'_>) -> Result<Self, EntryError> {
        Ok(match kind {
            1 => {
                let name = r.string("consortium name", 64)?;
                let parameter_set = r.string("parameter set", 64)?;
                let threshold = r.u8("threshold")?;
                let k_min = r.u8("k_min")?;
                let accept_small_aggregates = match r.u8("accept small aggregates")? {
                    0 => false,
                    1 => true,
                    _ => return Err(EntryError::NotCanonical),
                };
                let witness_quorum = r.u8("witness quorum")?;
                let coordinator = CoordinatorKeys {
                    name: r.string("coordinator name", 64)?,
                    signing_key: r.array("coordinator signing key")?,
                    log_key: r.array("log key")?,
                    peer_id: r.string("coordinator peer id", 128)?,
                    address: r.string("coordinator address", 256)?,
                };
                let count = r.count("members", 1, MAX_MEMBERS)?;
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    members.push(Member {
                        name: r.string("member name", 64)?,
                        signing_key: r.array("member signing key")?,
                        witness_key: r.array("member witness key")?,
                        peer_id: r.string("member peer id", 128)?,
                        address: r.string("member address", 256)?,
                    });
                }
                let count = r.count("approvals", 1, MAX_MEMBERS)?;
                let mut approvals = Vec::with_capacity(count);
                for _ in 0..count {
                    approvals.push(r.array("approval")?);
                }
                Body::Membership(Membership {
                    name,
                    parameter_set,
                    threshold,
                    k_min,
                    accept_small_aggregates,
                    witness_quorum,
                    coordinator,
                    members,
                    approvals,
                })
            }
            2 => Body::CeremonyStep {
                ceremony: r.array("ceremony id")?,
                phase: r.u8("phase")?,
                artefact: r.array("artefact digest")?,
            },
            3 => Body::RoundOpen {
                round: r.u64("round")?,
                model: r.array("model digest")?,
                base: r.array("base digest")?,
                deadline_ms: r.u64("deadline")?,
                expected: r.u16("expected members")?,
            },
            4 => Body::Contribution {
                round: r.u64("round")?,
                ciphertext: r.array("ciphertext digest")?,
                samples: r.u64("samples")?,
            },
            5 => {
                let round = r.u64("round")?;
                let base = r.array("base digest")?;
                let count = r.count("contributions", 2, MAX_REFERENCES)?;
                let mut contributions = Vec::with_capacity(count);
                for _ in 0..count {
                    contributions.push(r.u64("contribution leaf")?);
                }
                Body::RoundClose {
                    round,
                    base,
                    contributions,
                    aggregate: r.array("aggregate digest")?,
                }
            }
            6 => Body::DecryptionRequest {
                round: r.u64("round")?,
                close: r.u64("round close leaf")?,
                ciphertext: r.array("ciphertext digest")?,
                quorum: r.u16("quorum")?,
                attempt: r.u8("attempt")?,
                seed: r.array("re-randomisation seed")?,
            },
            7 => Body::ShareReleased {
                request: r.u64("request leaf")?,
                ciphertext: r.array("ciphertext digest")?,
                share: r.array("share digest")?,
            },
            8 => Body::DecryptionResult {
                request: r.u64("request leaf")?,
                ciphertext: r.array("ciphertext digest")?,
                model: r.array("model digest")?,
            },
            9 => Body::ConfigChange {
                consortium: r.array("consortium digest")?,
                description: r.string("description", MAX_TEXT)?,
            },
            10 => Body::Incident {
                code: r.u16("incident code")?,
                evidence: r.array("evidence digest")?,
                description: r.string("description", MAX_TEXT)?,
            },
            11 => Body::ServerStep {
                request: r.u64("request leaf")?,
                model: r.array("model digest")?,
                state: r.array("optimizer state digest")?,
                base: r.array("base digest")?,
            },
            other => return Err(EntryError::UnknownKind(other)),
        })
    }
}

/// An audit log entry before signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub origin: String,
    pub config_epoch: u64,
    pub author: KeyBytes,
    /// The author's own counter: 0, 1, 2, ... with no gaps.
    pub sequence: u64,
    /// The ceremony, round or request the entry is about.
    pub subject: Digest,
    /// Leaf indexes of earlier entries this one builds on, increasing.
    pub references: Vec<u64>,
    /// Digest of a payload too large for the log (a ciphertext, a transcript).
    pub payload: Option<Digest>,
    /// When the author says it wrote the entry (informative only).
    pub claimed_time_ms: u64,
    pub body: Body,
}

/// The configuration epoch every entry carries until the consortium can change its membership.
pub const CONFIG_EPOCH: u64 = 1;

impl Entry {
    /// An entry by `author` about nothing in particular (subject zero), with no references and
    /// no payload: the builders below add what a body needs. One constructor, so that the
    /// fields every author fills the same way are filled in one place.
    pub fn new(
        origin: impl Into<String>,
        author: &SigningKey,
        sequence: u64,
        claimed_time_ms: u64,
        body: Body,
    ) -> Self {
        Self {
            origin: origin.into(),
            config_epoch: CONFIG_EPOCH,
            author: author.verifying_key().to_bytes(),
            sequence,
            subject: [0; 32],
            references: Vec::new(),
            payload: None,
            claimed_time_ms,
            body,
        }
    }

    /// The ceremony, round or request the entry is about.
    pub fn about(mut self, subject: Digest) -> Self {
        self.subject = subject;
        self
    }

    /// The earlier leaves the entry builds on, increasing.
    pub fn referencing(mut self, references: Vec<u64>) -> Self {
        self.references = references;
        self
    }

    /// The digest of the payload the entry stands for.
    pub fn with_payload(mut self, payload: Option<Digest>) -> Self {
        self.payload = payload;
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Writer::default();
        self.body.encode(&mut body);
        let mut w = Writer::default();
        w.u8(ENTRY_VERSION)
            .string(&self.origin)
            .u64(self.config_epoch)
            .u16(self.body.kind())
            .bytes(&self.author)
            .u64(self.sequence)
            .bytes(&self.subject)
            .u16(self.references.len() as u16);
        for reference in &self.references {
            w.u64(*reference);
        }
        match &self.payload {
            Some(digest) => w.u8(1).bytes(digest),
            None => w.u8(0),
        };
        w.u64(self.claimed_time_ms)
            .u32(body.bytes.len() as u32)
            .bytes(&body.bytes);
        w.bytes
    }

    fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("entry version")?;
        if version != ENTRY_VERSION {
            return Err(EntryError::Version(version));
        }
        let origin = r.string("origin", 256)?;
        let config_epoch = r.u64("config epoch")?;
        let kind = r.u16("kind")?;
        let author = r.array("author")?;
        let sequence = r.u64("sequence")?;
        let subject = r.array("subject")?;
        let count = r.count("references", 2, MAX_REFERENCES)?;
        let mut references = Vec::with_capacity(count);
        for _ in 0..count {
            references.push(r.u64("reference")?);
        }
        let payload = match r.u8("payload flag")? {
            0 => None,
            1 => Some(r.array("payload digest")?),
            other => {
                return Err(ReadError::Invalid {
                    field: "payload flag",
                    reason: format!("{other}"),
                }
                .into());
            }
        };
        let claimed_time_ms = r.u64("claimed time")?;
        let body_len = r.count("body length", 4, MAX_ENTRY_BYTES as u64)?;
        r.expect_remaining("body", body_len as u64)?;
        let mut body_reader = Reader::new(r.take("body", body_len)?);
        let body = Body::decode(kind, &mut body_reader)?;
        body_reader.finish("body")?;
        Ok(Self {
            origin,
            config_epoch,
            author,
            sequence,
            subject,
            references,
            payload,
            claimed_time_ms,
            body,
        })
    }

    fn signed_message(encoded: &[u8]) -> Vec<u8> {
        let mut message = ENTRY_LABEL.to_vec();
        message.push(0);
        message.extend_from_slice(encoded);
        message
    }

    pub fn sign(self, key: &SigningKey) -> SignedEntry {
        debug_assert_eq!(self.author, key.verifying_key().to_bytes());
        let encoded = self.encode();
        let signature = key.sign(&Self::signed_message(&encoded)).to_bytes();
        let mut leaf = encoded;
        leaf.extend_from_slice(&signature);
        SignedEntry {
            entry: self,
            signature,
            leaf,
        }
    }
}

/// A signed entry and its leaf bytes (encoding followed by the 64-byte signature).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEntry {
    pub entry: Entry,
    pub signature: [u8; 64],
    leaf: Vec<u8>,
}

impl SignedEntry {
    /// The bytes the Merkle tree commits to.
    pub fn leaf(&self) -> &[u8] {
        &self.leaf
    }

    /// Decodes a leaf strictly (canonical form, size limit) and checks the author's signature
    /// with `verify_strict`.
    pub fn open(leaf: &[u8]) -> Result<Self, EntryError> {
        if leaf.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLarge(leaf.len()));
        }
        if leaf.len() < 64 {
            return Err(EntryError::Read(ReadError::Truncated {
                field: "signature",
                needed: 64,
                available: leaf.len(),
            }));
        }
        let (encoded, signature) = leaf.split_at(leaf.len() - 64);
        let entry = Entry::decode(encoded)?;
        if entry.encode() != encoded {
            return Err(EntryError::NotCanonical);
        }
        let signature: [u8; 64] = signature.try_into().expect("64 bytes");
        let author =
            VerifyingKey::from_bytes(&entry.author).map_err(|_| EntryError::BadAuthorKey)?;
        author
            .verify_strict(
                &Entry::signed_message(encoded),
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| EntryError::BadSignature)?;
        Ok(Self {
            entry,
            signature,
            leaf: leaf.to_vec(),
        })
    }
}

#[cfg(test)]
#[path = "entry_tests.rs"]
mod tests;
