//! The key ceremony as a sans-IO state machine: messages and randomness in, messages out.
//! One `Participant` per member; the runner (network or test harness) delivers every
//! broadcast to every other member and calls [`Participant::missing`] when a phase times out.
//!
//! Phases (see `ceremony.md`): attendance; commit-then-reveal of a seed each, whose hash is the
//! common reference (nobody can grind the public key's mask); commit-then-reveal of each
//! member's public-key body and encrypted subshares (nobody can choose the key after seeing
//! the others); complaints; signatures of the transcript hash by all; validation of every
//! t-subset by decrypting a fresh challenge. Any deviation aborts, naming the member.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{SigningKey, VerifyingKey};
use protocol::bytes::{Reader, Writer};
use protocol::consortium::Consortium;
use protocol::he::{
    DealtPiece, KeyShare, KeyShareBuilder, PublicKey, PublicKeyContribution, Quorum,
    SecretContribution, Subset, ThresholdConfig,
};
use protocol::wire::{
    decode_public_key_contribution, encode_partial_decryption, encode_public_key_contribution,
};
use rand::Rng;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};
use x25519_dalek::{PublicKey as ExchangePublic, StaticSecret};
use zeroize::Zeroizing;

use crate::message::{Body, Digest, Message, Phase};

pub use crate::derive::{
    Challenge, VALIDATION_KAPPA, ceremony_id, mask_seed, seed_commitment, share_commitment,
    t_subsets, transcript_hash, validation_challenges, validation_failures,
};
use crate::derive::{SECRETS_PER_KEY, hash};

mod subshares;
mod validation;
use subshares::{SubshareError, blobs_digest};
/// Why a ceremony stopped, and who caused it (when someone did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abort {
    pub culprit: Option<u8>,
    pub phase: Phase,
    pub reason: String,
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.culprit {
            Some(member) => write!(
                f,
                "member {member} at {}: {}",
                self.phase.name(),
                self.reason
            ),
            None => write!(f, "at {}: {}", self.phase.name(), self.reason),
        }
    }
}

/// What a finished ceremony leaves a member with.
pub struct Outcome {
    pub ceremony: Digest,
    pub public_key: PublicKey,
    pub share: KeyShare,
    /// Every signed message of the ceremony, in phase and member order.
    pub transcript: Vec<Message>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Outcome(ceremony {}, <redacted share>)",
            hex_short(&self.ceremony)
        )
    }
}

fn hex_short(digest: &Digest) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a step produced: messages to broadcast (with attachments for their recipients), or
/// the finished ceremony.
#[derive(Debug)]
pub enum Step {
    Send(Vec<Outgoing>),
    Done(Box<Outcome>),
}

/// A message to broadcast, plus encrypted blobs addressed to single members.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub message: Message,
    pub attachments: Vec<(u8, Vec<u8>)>,
}

/// A received message with the attachment meant for this member, if any.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub message: Message,
    pub attachment: Option<Vec<u8>>,
}

pub struct Participant {
    consortium: Consortium,
    config: ThresholdConfig,
    me: u8,
    signing: SigningKey,
    keys: Vec<VerifyingKey>,
    phase: Phase,
    received: BTreeMap<(Phase, u8), Incoming>,
    ceremony: Option<Digest>,
    nonce: Digest,
    exchange: StaticSecret,
    seed: Zeroizing<Digest>,
    mask_seed: u128,
    secret: Option<SecretContribution>,
    contribution: Option<PublicKeyContribution>,
    my_pieces: Vec<(Subset, DealtPiece)>,
    pending_reveal: Option<PendingReveal>,
    public_key: Option<PublicKey>,
    share: Option<KeyShare>,
    transcript_hash: Option<Digest>,
    /// One per secret, set before sending validation shares.
    challenges: Vec<Challenge>,
}

/// The key reveal prepared at the key commitment: the contribution's encoding, the digests
/// of the encrypted blobs, and the blobs themselves.
type PendingReveal = (Vec<u8>, Vec<(u8, Digest)>, Vec<(u8, Vec<u8>)>);

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Participant(member {}, {:?}, <redacted>)",
            self.me, self.phase
        )
    }
}

impl Participant {
    /// Starts a ceremony for member `me` of an approved consortium; returns the attendance
    /// message to broadcast.
    pub fn start<R: RngCore + CryptoRng>(
        consortium: Consortium,
        me: u8,
        signing: SigningKey,
        rng: &mut R,
    ) -> Result<(Self, Outgoing), Abort> {
        let abort = |reason: String| Abort {
            culprit: None,
            phase: Phase::Attendance,
            reason,
        };
        consortium
            .check_approvals()
            .map_err(|e| abort(format!("the manifest is not fully approved: {e}")))?;
        let config = consortium.config();
        if me >= config.parties() || consortium.member_signing_key(me) != signing.verifying_key() {
            return Err(abort(format!(
                "this identity is not member {me} of the consortium"
            )));
        }
        let keys = (0..config.parties())
            .map(|i| consortium.member_signing_key(i))
            .collect();
        let exchange = StaticSecret::random_from_rng(&mut *rng);
        let participant = Self {
            config,
            me,
            keys,
            phase: Phase::Attendance,
            received: BTreeMap::new(),
            ceremony: None,
            nonce: rng.r#gen(),
            seed: Zeroizing::new(rng.r#gen()),
            exchange,
            mask_seed: 0,
            secret: None,
            contribution: None,
            my_pieces: Vec::new(),
            pending_reveal: None,
            public_key: None,
            share: None,
            transcript_hash: None,
            challenges: Vec::new(),
            consortium,
            signing,
        };
        let body = Body::Attendance {
            nonce: participant.nonce,
            exchange_key: ExchangePublic::from(&participant.exchange).to_bytes(),
        };
        let message = participant.sign(participant.consortium.digest(), body);
        Ok((participant, message))
    }

    pub fn me(&self) -> u8 {
        self.me
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn parties(&self) -> u8 {
        self.config.parties()
    }

    fn sign(&self, context: Digest, body: Body) -> Outgoing {
        Outgoing {
            message: Message::sign(context, self.me, body, &self.signing),
            attachments: Vec::new(),
        }
    }

    fn fail(&self, culprit: Option<u8>, reason: impl Into<String>) -> Abort {
        Abort {
            culprit,
            phase: self.phase,
            reason: reason.into(),
        }
    }

    /// Members whose message for the current phase has not arrived: on a timeout the runner
    /// aborts naming them.
    pub fn missing(&self) -> Vec<u8> {
        (0..self.parties())
            .filter(|&m| !self.received.contains_key(&(self.phase, m)))
            .collect()
    }

    /// The abort a timeout causes.
    pub fn timeout(&self) -> Abort {
        let missing = self.missing();
        self.fail(
            missing.first().copied(),
            format!(
                "no {} from member(s) {missing:?} in time",
                self.phase.name()
            ),
        )
    }

    /// Accepts one message (our own broadcasts included) and advances as far as possible.
    pub fn receive<R: RngCore + CryptoRng>(
        &mut self,
        incoming: Incoming,
        rng: &mut R,
    ) -> Result<Step, Abort> {
        let message = &incoming.message;
        let sender = message.sender;
        if sender >= self.parties() {
            return Err(self.fail(
                None,
                format!("a message from {sender}, who is not in the manifest"),
            ));
        }
        if !message.verify(&self.keys[usize::from(sender)]) {
            return Err(self.fail(Some(sender), "wrong signature"));
        }
        let phase = message.phase();
        let expected_context = if phase == Phase::Attendance {
            Some(self.consortium.digest())
        } else {
            self.ceremony
        };
        if let Some(context) = expected_context
            && context != message.context
        {
            return Err(self.fail(
                Some(sender),
                format!(
                    "a {} message from another ceremony (a replay?)",
                    phase.name()
                ),
            ));
        }
        match self.received.get(&(phase, sender)) {
            Some(previous) if previous.message == *message => return Ok(Step::Send(vec![])),
            Some(_) => {
                return Err(self.fail(
                    Some(sender),
                    format!(
                        "sent two different {} messages (equivocation)",
                        phase.name()
                    ),
                ));
            }
            None => {}
        }
        if phase < self.phase {
            return Err(self.fail(Some(sender), format!("a late {} message", phase.name())));
        }
        self.received.insert((phase, sender), incoming);
        let mut out = Vec::new();
        while self.missing().is_empty() {
            match self.advance(rng)? {
                Step::Send(mut messages) => out.append(&mut messages),
                done @ Step::Done(_) => return Ok(done),
            }
        }
        Ok(Step::Send(out))
    }

    fn messages(&self, phase: Phase) -> Vec<&Incoming> {
        (0..self.parties())
            .map(|m| &self.received[&(phase, m)])
            .collect()
    }

    /// This member's digests of a phase's messages, as it received them, one per sender.
    fn view_of(&self, phase: Phase) -> Vec<Digest> {
        self.messages(phase)
            .iter()
            .map(|i| i.message.digest())
            .collect()
    }

    /// Every member must have seen the previous phase exactly as we did. A sender whose
    /// message others saw differently sent different messages to different members
    /// (equivocation); reporters are members and, in this version, assumed to report truly.
    fn check_views(&self, phase: Phase) -> Result<(), Abort> {
        let Some(previous) = Phase::ALL.iter().copied().find(|p| p.next() == Some(phase)) else {
            return Ok(());
        };
        let mine = self.view_of(previous);
        for incoming in self.messages(phase) {
            let Some(view) = incoming.message.body.view() else {
                continue;
            };
            if view.len() != mine.len() {
                return Err(self.fail(Some(incoming.message.sender), "a malformed view"));
            }
            if let Some(culprit) = (0..mine.len()).find(|&i| view[i] != mine[i]) {
                return Err(self.fail(
                    Some(culprit as u8),
                    format!(
                        "sent different {} messages to different members (equivocation, seen by member {})",
                        previous.name(),
                        incoming.message.sender
                    ),
                ));
            }
        }
        Ok(())
    }

    fn advance<R: RngCore + CryptoRng>(&mut self, rng: &mut R) -> Result<Step, Abort> {
        self.check_views(self.phase)?;
        let step = match self.phase {
            Phase::Attendance => self.after_attendance(),
            Phase::SeedCommit => self.after_seed_commit(),
            Phase::SeedReveal => self.after_seed_reveal(rng)?,
            Phase::KeyCommit => self.after_key_commit()?,
            Phase::KeyReveal => self.after_key_reveal()?,
            Phase::Complaints => self.after_complaints()?,
            Phase::TranscriptSignature => self.after_transcript(rng)?,
            Phase::ValidationShares => self.after_validation_shares()?,
            Phase::ValidationReport => return self.finish(),
        };
        self.phase = self.phase.next().expect("not the last phase");
        Ok(Step::Send(step))
    }

    fn ceremony(&self) -> Digest {
        self.ceremony.expect("set after attendance")
    }

    fn after_attendance(&mut self) -> Vec<Outgoing> {
        let attendance: Vec<&Body> = self
            .messages(Phase::Attendance)
            .iter()
            .map(|i| &i.message.body)
            .collect();
        let ceremony = ceremony_id(&self.consortium.digest(), &attendance);
        self.ceremony = Some(ceremony);
        let commitment = self.seed_commitment(self.me, &self.seed);
        let view = self.view_of(Phase::Attendance);
        vec![self.sign(ceremony, Body::SeedCommit { commitment, view })]
    }

    fn seed_commitment(&self, member: u8, seed: &Digest) -> Digest {
        hash(&[
            b"quorate/seed-commitment/v1",
            &self.ceremony(),
            &[member],
            seed,
        ])
    }

    fn after_seed_commit(&mut self) -> Vec<Outgoing> {
        let view = self.view_of(Phase::SeedCommit);
        vec![self.sign(
            self.ceremony(),
            Body::SeedReveal {
                seed: *self.seed,
                view,
            },
        )]
    }

    fn after_seed_reveal<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
    ) -> Result<Vec<Outgoing>, Abort> {
        let mut seeds = Vec::new();
        for member in 0..self.parties() {
            let Body::SeedCommit { commitment, .. } =
                &self.received[&(Phase::SeedCommit, member)].message.body
            else {
                unreachable!("stored by phase");
            };
            let Body::SeedReveal { seed, .. } =
                &self.received[&(Phase::SeedReveal, member)].message.body
            else {
                unreachable!("stored by phase");
            };
            if self.seed_commitment(member, seed) != *commitment {
                return Err(self.fail(
                    Some(member),
                    "its seed reveal does not match its commitment",
                ));
            }
            seeds.push(*seed);
        }
        self.mask_seed = mask_seed(&self.consortium.digest(), &self.ceremony(), &seeds);

        let secret = SecretContribution::generate_with_secrets(SECRETS_PER_KEY, rng)
            .map_err(|e| self.fail(None, e.to_string()))?;
        let contribution = secret.public_key_contribution(self.me, self.mask_seed, rng);
        let dealing = secret.deal_seeded(&self.config, rng);
        let mut attachments = Vec::new();
        for recipient in 0..self.parties() {
            let pieces = dealing.for_party(recipient);
            if recipient == self.me {
                self.my_pieces = pieces;
                continue;
            }
            let blob = self.encrypt_pieces(recipient, &pieces, rng);
            attachments.push((recipient, blob));
        }
        let contribution_bytes = encode_public_key_contribution(&contribution);
        let blob_digests: Vec<(u8, Digest)> = attachments
            .iter()
            .map(|(recipient, blob)| (*recipient, Sha256::digest(blob).into()))
            .collect();
        let commit = Body::KeyCommit {
            contribution: Sha256::digest(&contribution_bytes).into(),
            blobs: blobs_digest(&blob_digests),
            view: self.view_of(Phase::SeedReveal),
        };
        self.secret = Some(secret);
        self.contribution = Some(contribution);
        self.pending_reveal = Some((contribution_bytes, blob_digests, attachments));
        Ok(vec![self.sign(self.ceremony(), commit)])
    }

    fn after_key_commit(&mut self) -> Result<Vec<Outgoing>, Abort> {
        let (contribution, blobs, attachments) = self
            .pending_reveal
            .take()
            .expect("prepared at the seed reveal");
        let body = Body::KeyReveal {
            contribution,
            blobs,
            view: self.view_of(Phase::KeyCommit),
        };
        let mut outgoing = self.sign(self.ceremony(), body);
        outgoing.attachments = attachments;
        Ok(vec![outgoing])
    }

    fn after_key_reveal(&mut self) -> Result<Vec<Outgoing>, Abort> {
        let mut contributions = Vec::new();
        let mut complaints = Vec::new();
        let mut builder = KeyShareBuilder::with_secrets(self.config, self.me, SECRETS_PER_KEY)
            .map_err(|e| self.fail(None, e.to_string()))?;
        for dealer in 0..self.parties() {
            let (
                Body::KeyCommit {
                    contribution: committed,
                    blobs: committed_blobs,
                    ..
                },
                reveal,
            ) = (
                &self.received[&(Phase::KeyCommit, dealer)].message.body,
                &self.received[&(Phase::KeyReveal, dealer)],
            )
            else {
                unreachable!("stored by phase");
            };
            let Body::KeyReveal {
                contribution,
                blobs,
                ..
            } = &reveal.message.body
            else {
                unreachable!("stored by phase");
            };
            let contribution_digest: Digest = Sha256::digest(contribution).into();
            if contribution_digest != *committed || blobs_digest(blobs) != *committed_blobs {
                return Err(self.fail(Some(dealer), "its key reveal does not match its commitment"));
            }
            let recipients: Vec<u8> = blobs.iter().map(|(r, _)| *r).collect();
            let expected: Vec<u8> = (0..self.parties()).filter(|&r| r != dealer).collect();
            if recipients != expected {
                return Err(self.fail(
                    Some(dealer),
                    "its subshares do not address every other member once",
                ));
            }
            let decoded = decode_public_key_contribution(contribution, Some(SECRETS_PER_KEY))
                .map_err(|e| {
                    self.fail(
                        Some(dealer),
                        format!("an unreadable public-key contribution: {e}"),
                    )
                })?;
            if decoded.party != dealer || decoded.mask_seed != self.mask_seed {
                return Err(self.fail(
                    Some(dealer),
                    "a public-key contribution for another party or reference",
                ));
            }
            contributions.push(decoded);
            let pieces = if dealer == self.me {
                Ok(std::mem::take(&mut self.my_pieces))
            } else {
                let listed = blobs.iter().find(|(r, _)| *r == self.me).map(|(_, d)| *d);
                match &reveal.attachment {
                    None => Err(SubshareError::Missing),
                    Some(blob) if Some(Sha256::digest(blob).into()) != listed => {
                        Err(SubshareError::NotCommitted)
                    }
                    Some(blob) => self.decrypt_pieces(dealer, blob),
                }
            };
            match pieces {
                Ok(pieces) => {
                    let subshares: Vec<_> = pieces
                        .iter()
                        .map(|(u, p)| p.expand(*u, SECRETS_PER_KEY))
                        .collect();
                    builder
                        .add(dealer, &subshares)
                        .map_err(|e| self.fail(Some(dealer), e.to_string()))?;
                }
                Err(reason) => complaints.push((dealer, reason.to_string())),
            }
        }
        if complaints.is_empty() {
            let public_key = PublicKey::combine(&self.config, &contributions)
                .map_err(|e| self.fail(None, e.to_string()))?;
            self.public_key = Some(public_key);
            self.share = Some(
                builder
                    .finish()
                    .map_err(|e| self.fail(None, e.to_string()))?,
            );
        }
        let body = Body::Complaints {
            against: complaints,
            view: self.view_of(Phase::KeyReveal),
        };
        Ok(vec![self.sign(self.ceremony(), body)])
    }

    fn transcript_hash(&self) -> Digest {
        let messages: Vec<&Message> = Phase::ALL
            .iter()
            .take_while(|p| **p < Phase::TranscriptSignature)
            .flat_map(|p| self.messages(*p).into_iter().map(|i| &i.message))
            .collect();
        transcript_hash(&messages)
    }

    fn after_complaints(&mut self) -> Result<Vec<Outgoing>, Abort> {
        for incoming in self.messages(Phase::Complaints) {
            if let Body::Complaints { against, .. } = &incoming.message.body
                && let Some((dealer, reason)) = against.first()
            {
                return Err(self.fail(
                    Some(*dealer),
                    format!("member {} complains: {reason}", incoming.message.sender),
                ));
            }
        }
        let transcript = self.transcript_hash();
        self.transcript_hash = Some(transcript);
        let share = self.share.as_ref().expect("built when nobody complains");
        let share_commitment = share_commitment(share);
        Ok(vec![self.sign(
            self.ceremony(),
            Body::TranscriptSignature {
                transcript,
                share_commitment,
            },
        )])
    }

    fn finish(&mut self) -> Result<Step, Abort> {
        for incoming in self.messages(Phase::ValidationReport) {
            if let Body::ValidationReport { failures } = &incoming.message.body
                && let Some(first) = failures.first()
            {
                let members: Vec<u8> = Subset(*first).members().collect();
                return Err(self.fail(
                    None,
                    format!(
                        "member {} could not decrypt the challenge with quorum {members:?}",
                        incoming.message.sender
                    ),
                ));
            }
        }
        let transcript = Phase::ALL
            .iter()
            .flat_map(|p| self.messages(*p).into_iter().map(|i| i.message.clone()))
            .collect();
        Ok(Step::Done(Box::new(Outcome {
            ceremony: self.ceremony(),
            public_key: self.public_key.take().expect("combined"),
            share: self.share.take().expect("built"),
            transcript,
        })))
    }
}
