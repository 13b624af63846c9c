//! Ceremony messages: every one is signed by its sender's identity over a domain-separated,
//! canonical encoding that names the ceremony (or, for attendance, the consortium), the
//! phase and the sender.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use protocol::bytes::{ReadError, Reader, Writer};
use sha2::{Digest as _, Sha256};

pub type Digest = [u8; 32];

const LABEL: &[u8] = b"quorate/ceremony-message/v1\0";
const MAX_ITEMS: u64 = 1024;
const MAX_BLOB: u64 = 16 * 1024 * 1024;

/// The ceremony's phases, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Attendance = 1,
    SeedCommit = 2,
    SeedReveal = 3,
    KeyCommit = 4,
    KeyReveal = 5,
    Complaints = 6,
    TranscriptSignature = 7,
    ValidationShares = 8,
    ValidationReport = 9,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Attendance,
        Phase::SeedCommit,
        Phase::SeedReveal,
        Phase::KeyCommit,
        Phase::KeyReveal,
        Phase::Complaints,
        Phase::TranscriptSignature,
        Phase::ValidationShares,
        Phase::ValidationReport,
    ];

    fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.get(usize::from(value).checked_sub(1)?).copied()
    }

    pub fn next(self) -> Option<Self> {
        Self::from_u8(self as u8 + 1)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Attendance => "attendance",
            Phase::SeedCommit => "seed commitment",
            Phase::SeedReveal => "seed reveal",
            Phase::KeyCommit => "key commitment",
            Phase::KeyReveal => "key reveal",
            Phase::Complaints => "complaints",
            Phase::TranscriptSignature => "transcript signature",
            Phase::ValidationShares => "validation shares",
            Phase::ValidationReport => "validation report",
        }
    }
}

/// What each phase's message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Attendance {
        nonce: Digest,
        exchange_key: Digest,
    },
    SeedCommit {
        commitment: Digest,
        view: Vec<Digest>,
    },
    SeedReveal {
        seed: Digest,
        view: Vec<Digest>,
    },
    KeyCommit {
        contribution: Digest,
        blobs: Digest,
        view: Vec<Digest>,
    },
    /// The public-key contribution in full; the encrypted subshare blobs by digest only (they
    /// travel as attachments, so the transcript can keep the signed message without them).
    KeyReveal {
        contribution: Vec<u8>,
        blobs: Vec<(u8, Digest)>,
        view: Vec<Digest>,
    },
    Complaints {
        against: Vec<(u8, String)>,
        view: Vec<Digest>,
    },
    TranscriptSignature {
        transcript: Digest,
        share_commitment: Digest,
    },
    ValidationShares {
        partials: Vec<(u16, Vec<u8>)>,
    },
    ValidationReport {
        failures: Vec<u16>,
    },
}

impl Body {
    pub fn phase(&self) -> Phase {
        match self {
            Body::Attendance { .. } => Phase::Attendance,
            Body::SeedCommit { .. } => Phase::SeedCommit,
            Body::SeedReveal { .. } => Phase::SeedReveal,
            Body::KeyCommit { .. } => Phase::KeyCommit,
            Body::KeyReveal { .. } => Phase::KeyReveal,
            Body::Complaints { .. } => Phase::Complaints,
            Body::TranscriptSignature { .. } => Phase::TranscriptSignature,
            Body::ValidationShares { .. } => Phase::ValidationShares,
            Body::ValidationReport { .. } => Phase::ValidationReport,
        }
    }

    /// The sender's digests of the previous phase's messages as it saw them, one per sender
    /// (equivocation shows up here).
    pub fn view(&self) -> Option<&[Digest]> {
        match self {
            Body::SeedCommit { view, .. }
            | Body::SeedReveal { view, .. }
            | Body::KeyCommit { view, .. }
            | Body::KeyReveal { view, .. }
            | Body::Complaints { view, .. } => Some(view.as_slice()),
            _ => None,
        }
    }

    fn encode(&self, w: &mut Writer) {
        w.u8(self.phase() as u8);
        match self {
            Body::Attendance {
                nonce,
                exchange_key,
            } => {
                w.bytes(nonce).bytes(exchange_key);
            }
            Body::SeedCommit { commitment, view } => {
                w.bytes(commitment);
                put_view(w, view);
            }
            Body::SeedReveal { seed, view } => {
                w.bytes(seed);
                put_view(w, view);
            }
            Body::KeyCommit {
                contribution,
                blobs,
                view,
            } => {
                w.bytes(contribution).bytes(blobs);
                put_view(w, view);
            }
            Body::KeyReveal {
                contribution,
                blobs,
                view,
            } => {
                w.u32(contribution.len() as u32).bytes(contribution);
                w.u16(blobs.len() as u16);
                for (recipient, digest) in blobs {
                    w.u8(*recipient).bytes(digest);
                }
                put_view(w, view);
            }
            Body::Complaints { against, view } => {
                w.u16(against.len() as u16);
                for (dealer, reason) in against {
                    w.u8(*dealer).string(reason);
                }
                put_view(w, view);
            }
            Body::TranscriptSignature {
                transcript,
                share_commitment,
            } => {
                w.bytes(transcript).bytes(share_commitment);
            }
            Body::ValidationShares { partials } => {
                w.u16(partials.len() as u16);
                for (quorum, partial) in partials {
                    w.u16(*quorum).u32(partial.len() as u32).bytes(partial);
                }
            }
            Body::ValidationReport { failures } => {
                w.u16(failures.len() as u16);
                for quorum in failures {
                    w.u16(*quorum);
                }
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, ReadError> {
        let phase = r.u8("phase")?;
        let phase = Phase::from_u8(phase).ok_or(ReadError::Invalid {
            field: "phase",
            reason: format!("{phase}"),
        })?;
        Ok(match phase {
            Phase::Attendance => Body::Attendance {
                nonce: r.array("nonce")?,
                exchange_key: r.array("exchange key")?,
            },
            Phase::SeedCommit => Body::SeedCommit {
                commitment: r.array("commitment")?,
                view: read_view(r)?,
            },
            Phase::SeedReveal => Body::SeedReveal {
                seed: r.array("seed")?,
                view: read_view(r)?,
            },
            Phase::KeyCommit => Body::KeyCommit {
                contribution: r.array("contribution digest")?,
                blobs: r.array("blobs digest")?,
                view: read_view(r)?,
            },
            Phase::KeyReveal => {
                let len = r.count("contribution length", 4, MAX_BLOB)?;
                let contribution = r.take("contribution", len)?.to_vec();
                let count = r.count("blobs", 2, MAX_ITEMS)?;
                let mut blobs = Vec::with_capacity(count);
                for _ in 0..count {
                    blobs.push((r.u8("recipient")?, r.array("blob digest")?));
                }
                Body::KeyReveal {
                    contribution,
                    blobs,
                    view: read_view(r)?,
                }
            }
            Phase::Complaints => {
                let count = r.count("complaints", 2, MAX_ITEMS)?;
                let mut against = Vec::with_capacity(count);
                for _ in 0..count {
                    against.push((r.u8("dealer")?, r.string("reason", 1024)?));
                }
                Body::Complaints {
                    against,
                    view: read_view(r)?,
                }
            }
            Phase::TranscriptSignature => Body::TranscriptSignature {
                transcript: r.array("transcript")?,
                share_commitment: r.array("share commitment")?,
            },
            Phase::ValidationShares => {
                let count = r.count("partials", 2, MAX_ITEMS)?;
                let mut partials = Vec::with_capacity(count);
                for _ in 0..count {
                    let quorum = r.u16("quorum")?;
                    let len = r.count("partial length", 4, MAX_BLOB)?;
                    partials.push((quorum, r.take("partial", len)?.to_vec()));
                }
                Body::ValidationShares { partials }
            }
            Phase::ValidationReport => {
                let count = r.count("failures", 2, MAX_ITEMS)?;
                let mut failures = Vec::with_capacity(count);
                for _ in 0..count {
                    failures.push(r.u16("quorum")?);
                }
                Body::ValidationReport { failures }
            }
        })
    }
}

fn put_view(w: &mut Writer, view: &[Digest]) {
    w.u8(view.len() as u8);
    for digest in view {
        w.bytes(digest);
    }
}

fn read_view(r: &mut Reader<'_>) -> Result<Vec<Digest>, ReadError> {
    let count = r.count("view", 1, 16)?;
    (0..count).map(|_| r.array("view digest")).collect()
}

/// A signed ceremony message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The ceremony id; for attendance (before the id exists) the consortium digest.
    pub context: Digest,
    pub sender: u8,
    pub body: Body,
    pub signature: [u8; 64],
}

impl Message {
    fn signed_bytes(context: &Digest, sender: u8, body: &Body) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(LABEL).bytes(context).u8(sender);
        body.encode(&mut w);
        w.into_bytes()
    }

    pub fn sign(context: Digest, sender: u8, body: Body, key: &SigningKey) -> Self {
        let signature = key
            .sign(&Self::signed_bytes(&context, sender, &body))
            .to_bytes();
        Self {
            context,
            sender,
            body,
            signature,
        }
    }

    pub fn phase(&self) -> Phase {
        self.body.phase()
    }

    pub fn verify(&self, key: &VerifyingKey) -> bool {
        key.verify_strict(
            &Self::signed_bytes(&self.context, self.sender, &self.body),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }

    /// The canonical encoding (what the transcript stores).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Self::signed_bytes(&self.context, self.sender, &self.body);
        bytes.extend_from_slice(&self.signature);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ReadError> {
        let mut r = Reader::new(bytes);
        if r.take("label", LABEL.len())? != LABEL {
            return Err(ReadError::Invalid {
                field: "label",
                reason: "not a ceremony message".into(),
            });
        }
        let context = r.array("context")?;
        let sender = r.u8("sender")?;
        let body = Body::decode(&mut r)?;
        let signature = r.array("signature")?;
        r.finish("message")?;
        let message = Self {
            context,
            sender,
            body,
            signature,
        };
        if message.encode() != bytes {
            return Err(ReadError::Invalid {
                field: "message",
                reason: "not in canonical form".into(),
            });
        }
        Ok(message)
    }

    pub fn digest(&self) -> Digest {
        Sha256::digest(self.encode()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_refuse_tampering() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let bodies = vec![
            Body::Attendance {
                nonce: [1; 32],
                exchange_key: [2; 32],
            },
            Body::KeyReveal {
                contribution: vec![5; 40],
                blobs: vec![(1, [6; 32])],
                view: vec![[7; 32]; 3],
            },
            Body::Complaints {
                against: vec![(2, "bad subshare".into())],
                view: vec![[8; 32]; 3],
            },
            Body::ValidationShares {
                partials: vec![(0b11, vec![9; 20])],
            },
            Body::ValidationReport { failures: vec![] },
        ];
        for body in bodies {
            let message = Message::sign([4; 32], 1, body, &key);
            let bytes = message.encode();
            assert_eq!(Message::decode(&bytes).unwrap(), message);
            assert!(message.verify(&key.verifying_key()));
            for index in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[index] ^= 0x20;
                let survives = Message::decode(&bad).is_ok_and(|m| m.verify(&key.verifying_key()));
                assert!(!survives, "flip at {index}");
            }
        }
    }
}
