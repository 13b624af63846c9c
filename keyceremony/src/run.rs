//! `quorate ceremony run`: one member's side of the ceremony over libp2p. The state machine
//! decides; this loop only moves its messages, enforces the per-phase deadline, and writes the
//! results (transcript, sealed share, public key, the member's ceremony entry for the log).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use ed25519_dalek::Signer;
use protocol::audit::entry::{Body as EntryBody, Entry};
use protocol::consortium::Consortium;
use protocol::wire::encode_public_key;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::machine::{Abort, Incoming, Outcome, Outgoing, Participant, Step};
use crate::network::{MAX_ENVELOPE, PROTOCOL, decode_envelope, encode_envelope};
use crate::share_file::seal_share;
use crate::transcript::{Transcript, verify};
use runtime::identity::Identity;
use runtime::transport::{Event, Handle, TransportConfig};

const ABORT_LABEL: &[u8] = b"quorate/ceremony-abort/v1\0";

/// Files a member's run leaves in its output directory.
pub const TRANSCRIPT_FILE: &str = "transcript";
pub const SHARE_FILE: &str = "key-share";
pub const PUBLIC_KEY_FILE: &str = "public-key";
/// The member's signed audit-log entries, one per ceremony phase (length-prefixed leaves).
pub const ENTRIES_FILE: &str = "ceremony-entries";
pub const ABORT_FILE: &str = "abort";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("ceremony aborted: {0}")]
    Aborted(Abort),
    #[error("{0}")]
    Setup(String),
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<(), RunError> {
    let result = if secret {
        runtime::files::write_secret(path, bytes)
    } else {
        runtime::files::write_atomically(path, bytes, 0o644)
    };
    result.map_err(|source| RunError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Pause before a message that could not be delivered (the peer is not up yet) is sent again.
const RETRY_DELIVERY: Duration = Duration::from_millis(250);

/// Delivers one envelope to `peer`, trying again while it fails and this member is not done;
/// reports on `delivered` when it stops.
async fn deliver(
    handle: Handle,
    peer: libp2p::PeerId,
    envelope: Vec<u8>,
    done: tokio::sync::watch::Receiver<bool>,
    delivered: mpsc::Sender<()>,
) {
    loop {
        match handle.request(peer, envelope.clone()).await {
            Ok(_) => break,
            Err(error) => {
                tracing::debug!(%peer, %error, "delivery failed");
                if *done.borrow() {
                    break;
                }
                tokio::time::sleep(RETRY_DELIVERY).await;
                if *done.borrow() {
                    break;
                }
            }
        }
    }
    let _ = delivered.send(()).await;
}

/// Runs the ceremony for `identity` and writes its results into `out`.
pub async fn run_member(
    consortium: Consortium,
    identity: &Identity,
    share_passphrase: &[u8],
    out: &Path,
    phase_timeout: Duration,
) -> Result<Outcome, RunError> {
    let me = consortium.member_index(&identity.name).ok_or_else(|| {
        RunError::Setup(format!(
            "{} is not a member of this consortium",
            identity.name
        ))
    })?;
    // The ceremony runs among the members over the same transport as the daemons: the same
    // allow-list (a non-member is dropped before any request is read), the same connection
    // limits and frame limit, under the ceremony's own protocol name.
    let peers = runtime::transport::consortium_peers(&consortium)
        .map_err(|e| RunError::Setup(e.to_string()))?;
    let members = &peers[1..];
    if members[usize::from(me)].0 != identity.peer_id() {
        return Err(RunError::Setup(
            "the consortium lists another PeerId for this identity".into(),
        ));
    }
    let index: HashMap<libp2p::PeerId, u8> = members
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (*p, i as u8))
        .collect();
    let others: Vec<_> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != usize::from(me))
        .map(|(_, p)| p.clone())
        .collect();
    let (handle, mut events) = runtime::transport::spawn(
        identity.keypair(),
        TransportConfig {
            protocol: PROTOCOL,
            max_message: MAX_ENVELOPE,
            request_timeout: phase_timeout,
            listen: members[usize::from(me)].1.clone(),
            peers: others,
        },
    )
    .map_err(|e| RunError::Setup(e.to_string()))?;
    let mut rng = ChaCha20Rng::from_entropy();
    let (mut participant, first) =
        Participant::start(consortium.clone(), me, identity.signing.clone(), &mut rng)
            .map_err(RunError::Aborted)?;
    // Each message to each member is delivered by its own task, which tries again while the
    // peer is not up yet (until this member is done: a peer that no longer answers then has
    // finished too, as it could not have without our last message).
    let (done, done_rx) = tokio::sync::watch::channel(false);
    let (delivered_tx, mut delivered) = mpsc::channel::<()>(runtime::transport::CHANNEL_DEPTH);
    let mut in_flight = 0usize;
    let mut local: Vec<Outgoing> = vec![first];
    let mut outcome: Option<Outcome> = None;
    let mut deadline = tokio::time::Instant::now() + phase_timeout;
    let mut phase = participant.phase();

    let result: Result<(), Abort> = 'run: loop {
        // Broadcast what the machine produced, and feed it our own messages.
        while let Some(outgoing) = local.pop() {
            for (i, (peer, _)) in members.iter().enumerate() {
                if i == usize::from(me) {
                    continue;
                }
                let attachment = outgoing
                    .attachments
                    .iter()
                    .find(|(r, _)| usize::from(*r) == i)
                    .map(|(_, b)| b.as_slice());
                let envelope = encode_envelope(&outgoing.message, attachment);
                in_flight += 1;
                tokio::spawn(deliver(
                    handle.clone(),
                    *peer,
                    envelope,
                    done_rx.clone(),
                    delivered_tx.clone(),
                ));
            }
            let own = Incoming {
                message: outgoing.message.clone(),
                attachment: None,
            };
            match participant.receive(own, &mut rng) {
                Ok(Step::Send(more)) => local.extend(more),
                Ok(Step::Done(done)) => outcome = Some(*done),
                Err(abort) => break 'run Err(abort),
            }
        }
        if participant.phase() != phase {
            phase = participant.phase();
            deadline = tokio::time::Instant::now() + phase_timeout;
            tracing::info!(phase = phase.name(), "ceremony phase");
        }
        if outcome.is_some() {
            let _ = done.send(true);
            if in_flight == 0 {
                break Ok(());
            }
        }
        tokio::select! {
            event = events.recv() => match event {
                None => break 'run Err(Abort {
                    culprit: None,
                    phase: participant.phase(),
                    reason: "the network task stopped".into(),
                }),
                Some(Event::Request { peer, bytes, reply }) => {
                    reply.send(Vec::new()).await;
                    // The transport hears members only; the index maps them to their number.
                    let Some(&sender) = index.get(&peer) else { continue };
                    let (message, attachment) = match decode_envelope(&bytes) {
                        Ok(decoded) => decoded,
                        Err(reason) => break 'run Err(Abort { culprit: Some(sender), phase: participant.phase(), reason: format!("an unreadable message: {reason}") }),
                    };
                    if message.sender != sender {
                        break 'run Err(Abort { culprit: Some(sender), phase: participant.phase(), reason: format!("sent a message claiming to be from member {}", message.sender) });
                    }
                    if outcome.is_some() {
                        continue;
                    }
                    match participant.receive(Incoming { message, attachment }, &mut rng) {
                        Ok(Step::Send(more)) => local.extend(more),
                        Ok(Step::Done(done)) => outcome = Some(*done),
                        Err(abort) => break 'run Err(abort),
                    }
                }
                Some(_) => {}
            },
            Some(()) = delivered.recv() => in_flight -= 1,
            _ = tokio::time::sleep_until(deadline) => {
                if outcome.is_none() {
                    break 'run Err(participant.timeout());
                }
                break 'run Ok(());
            }
        }
    };
    // Delivery tasks still trying stop now, whatever the outcome.
    let _ = done.send(true);
    if let Err(abort) = result {
        // A signed statement of why this member stopped, naming the member at fault.
        let text = format!(
            "ceremony aborted by member {me} ({}): {abort}\n",
            identity.name
        );
        let signature = identity
            .signing
            .sign(&[ABORT_LABEL, text.as_bytes()].concat());
        let signed = format!("{text}signature {}\n", hex::encode(signature.to_bytes()));
        write(&out.join(ABORT_FILE), signed.as_bytes(), false)?;
        return Err(RunError::Aborted(abort));
    }
    let outcome = outcome.expect("the loop ends with an outcome or an abort");
    // The transcript first, then the share: a share is only ever written for a ceremony whose
    // transcript all n signed and that verifies.
    let transcript = Transcript {
        consortium_toml: consortium.to_toml(),
        messages: outcome.transcript.clone(),
    };
    let verified = verify(&transcript)
        .map_err(|e| RunError::Setup(format!("the transcript does not verify: {e}")))?;
    write(&out.join(TRANSCRIPT_FILE), &transcript.encode(), false)?;
    let sealed = seal_share(
        &outcome.share,
        &outcome.ceremony,
        share_passphrase,
        &mut rng,
    )
    .map_err(|e| RunError::Setup(e.to_string()))?;
    write(&out.join(SHARE_FILE), &sealed, true)?;
    let reloaded = std::fs::read(out.join(SHARE_FILE)).map_err(|source| RunError::Io {
        path: out.join(SHARE_FILE).display().to_string(),
        source,
    })?;
    crate::share_file::load_share(&reloaded, share_passphrase, &verified)
        .map_err(|e| RunError::Setup(format!("the sealed share does not reload: {e}")))?;
    write(
        &out.join(PUBLIC_KEY_FILE),
        &encode_public_key(&outcome.public_key),
        false,
    )?;
    // This member's audit-log entries: one per phase, naming its own message of that phase by
    // digest; the last one also carries the transcript's digest.
    let now = runtime::clock::now_ms();
    let transcript_digest: [u8; 32] = Sha256::digest(transcript.encode()).into();
    let own: Vec<&crate::message::Message> = outcome
        .transcript
        .iter()
        .filter(|m| m.sender == me)
        .collect();
    let mut entries = Vec::new();
    for (sequence, message) in own.iter().enumerate() {
        let last = sequence + 1 == own.len();
        let body = EntryBody::CeremonyStep {
            ceremony: outcome.ceremony,
            phase: message.phase() as u8,
            artefact: if last {
                verified.fingerprint
            } else {
                message.digest()
            },
        };
        let entry = Entry::new(
            consortium.log_origin(),
            &identity.signing,
            sequence as u64,
            now,
            body,
        )
        .about(outcome.ceremony)
        .with_payload(last.then_some(transcript_digest))
        .sign(&identity.signing);
        entries.push(entry);
    }
    write(
        &out.join(ENTRIES_FILE),
        &crate::entries_file::encode(&entries),
        false,
    )?;
    Ok(outcome)
}
