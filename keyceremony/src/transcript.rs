//! The ceremony transcript: one file holding the approved consortium file and every signed
//! message of the ceremony. `verify` recomputes everything from it, offline: approvals,
//! signatures, the ceremony id, commitments against reveals, the public key as the sum of the
//! contributions, the transcript hash every member signed, and the decryption of the
//! validation challenge by every t-subset.

use protocol::bytes::{ReadError, Reader, Writer};
use protocol::consortium::Consortium;
use protocol::he::PublicKey;
use protocol::wire::{decode_public_key_contribution, encode_public_key};
use sha2::{Digest as _, Sha256};

use crate::machine::{
    ceremony_id, mask_seed, seed_commitment, t_subsets, transcript_hash, validation_challenges,
    validation_failures,
};
use crate::message::{Body, Digest, Message, Phase};

const MAGIC: &[u8; 8] = b"QRTRANS1";
const MAX_CONSORTIUM: u64 = 1 << 20;
const MAX_MESSAGE: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscriptError {
    #[error("not a readable transcript: {0}")]
    Format(String),
    #[error("the consortium file in the transcript: {0}")]
    Consortium(String),
    #[error("message {index} ({phase} of member {member}): {reason}")]
    Message {
        index: usize,
        phase: &'static str,
        member: u8,
        reason: String,
    },
    #[error("{0}")]
    Check(String),
}

impl From<ReadError> for TranscriptError {
    fn from(err: ReadError) -> Self {
        TranscriptError::Format(err.to_string())
    }
}

/// The transcript as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transcript {
    pub consortium_toml: String,
    pub messages: Vec<Message>,
}

impl Transcript {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(MAGIC)
            .u32(self.consortium_toml.len() as u32)
            .bytes(self.consortium_toml.as_bytes())
            .u16(self.messages.len() as u16);
        for message in &self.messages {
            let bytes = message.encode();
            w.u32(bytes.len() as u32).bytes(&bytes);
        }
        w.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, TranscriptError> {
        let mut r = Reader::new(bytes);
        if r.take("magic", MAGIC.len())? != MAGIC {
            return Err(TranscriptError::Format(
                "not a Quorate ceremony transcript".into(),
            ));
        }
        let len = r.count("consortium length", 4, MAX_CONSORTIUM)?;
        let consortium_toml = String::from_utf8(r.take("consortium", len)?.to_vec())
            .map_err(|_| TranscriptError::Format("the consortium file is not UTF-8".into()))?;
        let count = r.count("messages", 2, 9 * 16)?;
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            let len = r.count("message length", 4, MAX_MESSAGE)?;
            messages.push(Message::decode(r.take("message", len)?)?);
        }
        r.finish("transcript")?;
        Ok(Self {
            consortium_toml,
            messages,
        })
    }
}

/// What a verified transcript establishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub consortium: String,
    pub parties: u8,
    pub threshold: u8,
    pub members: Vec<String>,
    pub ceremony: Digest,
    pub public_key: PublicKey,
    /// SHA-256 of the public key's encoding.
    pub fingerprint: Digest,
    pub share_commitments: Vec<Digest>,
    pub quorums_validated: usize,
}

/// Pronounceable words for reading a fingerprint aloud (proquints: 16 bits per word).
pub fn fingerprint_words(digest: &Digest, words: usize) -> String {
    const CONSONANTS: &[u8; 16] = b"bdfghjklmnprstvz";
    const VOWELS: &[u8; 4] = b"aiou";
    digest
        .chunks(2)
        .take(words)
        .map(|pair| {
            let v = u16::from_be_bytes([pair[0], pair[1]]);
            let c = |shift: u16| CONSONANTS[usize::from((v >> shift) & 0xf)] as char;
            let o = |shift: u16| VOWELS[usize::from((v >> shift) & 0x3)] as char;
            [c(12), o(10), c(6), o(4), c(0)].iter().collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Recomputes every check; the first failure is the error.
pub fn verify(transcript: &Transcript) -> Result<Verified, TranscriptError> {
    let consortium = Consortium::parse(&transcript.consortium_toml)
        .map_err(|e| TranscriptError::Consortium(e.to_string()))?;
    consortium
        .check_approvals()
        .map_err(|e| TranscriptError::Consortium(e.to_string()))?;
    let config = consortium.config();
    let n = usize::from(config.parties());
    if transcript.messages.len() != Phase::ALL.len() * n {
        return Err(TranscriptError::Check(format!(
            "{} messages; a complete ceremony of {n} members has {}",
            transcript.messages.len(),
            Phase::ALL.len() * n
        )));
    }
    // Order, senders, signatures.
    let at = |phase: Phase, member: usize| &transcript.messages[(phase as usize - 1) * n + member];
    for (index, message) in transcript.messages.iter().enumerate() {
        let phase = Phase::ALL[index / n];
        let member = (index % n) as u8;
        let fail = |reason: &str| TranscriptError::Message {
            index,
            phase: phase.name(),
            member,
            reason: reason.to_owned(),
        };
        if message.phase() != phase || message.sender != member {
            return Err(fail("out of place"));
        }
        if !message.verify(&consortium.member_signing_key(member)) {
            return Err(fail("the signature does not verify"));
        }
    }
    let bodies = |phase: Phase| -> Vec<&Body> { (0..n).map(|m| &at(phase, m).body).collect() };
    let manifest = consortium.digest();
    let ceremony = ceremony_id(&manifest, &bodies(Phase::Attendance));
    for (index, message) in transcript.messages.iter().enumerate() {
        let expected = if message.phase() == Phase::Attendance {
            manifest
        } else {
            ceremony
        };
        if message.context != expected {
            return Err(TranscriptError::Message {
                index,
                phase: message.phase().name(),
                member: message.sender,
                reason: "belongs to another ceremony".into(),
            });
        }
    }
    // Seeds, contributions, the public key.
    let mut seeds = Vec::new();
    for member in 0..n {
        match (
            &at(Phase::SeedCommit, member).body,
            &at(Phase::SeedReveal, member).body,
        ) {
            (Body::SeedCommit { commitment, .. }, Body::SeedReveal { seed, .. })
                if seed_commitment(&ceremony, member as u8, seed) == *commitment =>
            {
                seeds.push(*seed)
            }
            _ => {
                return Err(TranscriptError::Check(format!(
                    "member {member}'s seed reveal does not match its commitment"
                )));
            }
        }
    }
    let mask = mask_seed(&manifest, &ceremony, &seeds);
    let mut contributions = Vec::new();
    for member in 0..n {
        let (
            Body::KeyCommit {
                contribution: committed,
                ..
            },
            Body::KeyReveal { contribution, .. },
        ) = (
            &at(Phase::KeyCommit, member).body,
            &at(Phase::KeyReveal, member).body,
        )
        else {
            unreachable!("phases checked above");
        };
        if <[u8; 32]>::from(Sha256::digest(contribution)) != *committed {
            return Err(TranscriptError::Check(format!(
                "member {member}'s public-key contribution does not match its commitment"
            )));
        }
        // Any number of secrets the scheme allows (transcripts of one secret were made
        // before keys of several); the public key below refuses members who differ.
        let decoded = decode_public_key_contribution(contribution, None)
            .map_err(|e| TranscriptError::Check(format!("member {member}'s contribution: {e}")))?;
        if usize::from(decoded.party) != member || decoded.mask_seed != mask {
            return Err(TranscriptError::Check(format!(
                "member {member}'s contribution is for another party or common reference"
            )));
        }
        contributions.push(decoded);
    }
    let public_key = PublicKey::combine(&config, &contributions)
        .map_err(|e| TranscriptError::Check(e.to_string()))?;
    for member in 0..n {
        if let Body::Complaints { against, .. } = &at(Phase::Complaints, member).body
            && !against.is_empty()
        {
            return Err(TranscriptError::Check(format!(
                "member {member} complained"
            )));
        }
    }
    // The transcript hash every member signed.
    let before: Vec<&Message> = transcript
        .messages
        .iter()
        .take((Phase::TranscriptSignature as usize - 1) * n)
        .collect();
    let hash = transcript_hash(&before);
    let mut share_commitments = Vec::new();
    for member in 0..n {
        match &at(Phase::TranscriptSignature, member).body {
            Body::TranscriptSignature {
                transcript,
                share_commitment,
            } if *transcript == hash => share_commitments.push(*share_commitment),
            _ => {
                return Err(TranscriptError::Check(format!(
                    "member {member} signed a different transcript hash"
                )));
            }
        }
    }
    // Validation: recompute the challenge and every t-subset's decryption of it.
    let challenges = validation_challenges(config, &hash, &public_key)
        .map_err(|e| TranscriptError::Check(e.to_string()))?;
    let failures = validation_failures(&challenges, config, &bodies(Phase::ValidationShares));
    if let Some(first) = failures.first() {
        let members: Vec<u8> = protocol::he::Subset(*first).members().collect();
        return Err(TranscriptError::Check(format!(
            "quorum {members:?} does not decrypt the validation challenge"
        )));
    }
    for member in 0..n {
        if let Body::ValidationReport { failures } = &at(Phase::ValidationReport, member).body
            && !failures.is_empty()
        {
            return Err(TranscriptError::Check(format!(
                "member {member} reported failed validations"
            )));
        }
    }
    Ok(Verified {
        consortium: consortium.file().name.clone(),
        parties: config.parties(),
        threshold: config.threshold(),
        members: consortium
            .file()
            .members
            .iter()
            .map(|m| m.name.clone())
            .collect(),
        ceremony,
        fingerprint: Sha256::digest(encode_public_key(&public_key)).into(),
        public_key,
        share_commitments,
        quorums_validated: t_subsets(config).len(),
    })
}
