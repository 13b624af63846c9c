//! `quorate node run`: an institution's node. It keeps its own checked copy of the audit log
//! and witnesses every checkpoint against it; it acts only on entries covered by a checkpoint
//! a quorum of witnesses cosigned (log before act); it contributes an encrypted update to each
//! round it is expected in; and it releases a partial decryption only under the release
//! policy: the agreed aggregate recomputed from the logged contributions, never twice for one
//! ciphertext (the ledger is flushed before the share leaves), and only to other members.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use keyceremony::identity::Identity;
use keyceremony::transport::{self, Event, Handle, TransportConfig};
use libp2p::PeerId;
use protocol::audit::checkpoint::{Checkpoint, SignedCheckpoint};
use protocol::audit::entry::{Body, Digest, Entry, Membership, SignedEntry};
use protocol::audit::log::{LogState, checkpoint_verifiers};
use protocol::audit::note::{COSIGNATURE_V1, Note, NoteSigner, NoteVerifier};
use protocol::audit::witness::WitnessState;
use protocol::consortium::Consortium;
use protocol::he::{Budget, Ciphertext, EncryptionKey, KeyShare, Quorum};
use protocol::round::message::{CHUNK_BYTES, MAX_MESSAGE_BYTES, Request, Response, chunk_digests};
use protocol::round::policy::{HeldModel, Refusal, ReleaseTarget, check_combine, check_request};
use protocol::round::{ModelDigest, RoundPlan, model_digest};
use protocol::wire::{
    BoundCiphertext, DecodeLimits, ciphertext_digest, encode_ciphertext, encode_partial_decryption,
    encoded_digest,
};
use rand::SeedableRng;
use sha2::{Digest as _, Sha256};

use crate::member::{Action, Member};
use crate::source::UpdateSource;
use crate::state_store::{Recorded, Release, StateStore, StateStoreError};
use crate::witness_store::{WitnessStore, WitnessStoreError};

pub const PROTOCOL: &str = "/quorate/round/1";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("setup: {0}")]
    Setup(String),
    #[error(transparent)]
    State(#[from] StateStoreError),
    #[error(transparent)]
    Witness(#[from] WitnessStoreError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How combining a request's partial decryptions is going.
#[derive(Default)]
struct Combining {
    running: bool,
    /// Combining attempts that failed (a fetch, a file): tried again a few times, since a
    /// member that misses a decryption sits out every later round.
    failures: u8,
}

/// Deliveries of a partial decryption to a member that cannot be reached, [`PARTIAL_RETRY`]
/// apart.
const PARTIAL_ATTEMPTS: u32 = 5;
const PARTIAL_RETRY: Duration = Duration::from_secs(1);

/// Failed combining attempts tried again, [`COMBINE_RETRY`] apart.
const COMBINE_ATTEMPTS: u8 = 4;
const COMBINE_RETRY: Duration = Duration::from_secs(2);

/// A partial decryption arriving in chunks from another member.
#[derive(Default)]
struct Incoming {
    /// Chunks received so far, and announced in all.
    received: u32,
    count: u32,
    bytes: Vec<u8>,
}

impl Incoming {
    /// This member's own partial decryption, complete as it is.
    fn whole(bytes: Vec<u8>) -> Self {
        Self {
            received: 1,
            count: 1,
            bytes,
        }
    }

    fn complete(&self) -> bool {
        self.received == self.count
    }
}

/// Partial decryptions buffered at most, per member of the consortium (a member can only
/// be in the quorum of the current request, and perhaps a retry).
const BUFFERED_PARTIALS_PER_MEMBER: usize = 4;

struct State {
    log: LogState,
    entries: Vec<SignedEntry>,
    acted: u64,
    witness: WitnessState,
    model: Vec<i64>,
    /// The member's decisions: the model it verified and holds (it contributes from, releases
    /// for and builds on nothing else), the decryptions it follows, incidents heard directly.
    member: Member,
    combining: HashMap<u64, Combining>,
    partials: HashMap<(u64, u8), Incoming>,
    targets: HashMap<u64, Arc<BoundCiphertext>>,
    next_sequence: u64,
    rounds_done: u64,
}

struct Context {
    me: u8,
    membership: Membership,
    peers: Vec<PeerId>,
    coordinator: PeerId,
    handle: Handle,
    signing: SigningKey,
    witness_signer: NoteSigner,
    log_verifier: NoteVerifier,
    witnesses: Vec<NoteVerifier>,
    share: KeyShare,
    key: EncryptionKey,
    budget: Budget,
    plan: RoundPlan,
    limits: DecodeLimits,
    store: StateStore,
    witness_store: WitnessStore,
    scratch: PathBuf,
    state: Mutex<State>,
    source: Mutex<Box<dyn UpdateSource>>,
    author: tokio::sync::Mutex<()>,
    done: tokio::sync::Notify,
    stop_after: Option<u64>,
    fault: Option<Fault>,
    export_model: Option<PathBuf>,
    round_report: Option<PathBuf>,
    /// Ciphertext and partial-decryption bytes this node sent.
    bytes_sent: std::sync::atomic::AtomicU64,
}

impl Context {
    fn sent(&self, bytes: usize) {
        self.bytes_sent
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn member_of(&self, peer: &PeerId) -> Option<u8> {
        self.peers.iter().position(|p| p == peer).map(|i| i as u8)
    }
}

/// A deliberate crash, for resilience tests: the process aborts (as under kill -9) at a
/// chosen step of a chosen round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// When the round opens, before contributing.
    Contribute(u64),
    /// After the release is recorded in the ledger, before the share leaves.
    Release(u64),
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (step, round) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected STEP:ROUND"))?;
        let round: u64 = round
            .parse()
            .map_err(|_| format!("{s:?}: the round is not a number"))?;
        match step {
            "contribute" => Ok(Fault::Contribute(round)),
            "release" => Ok(Fault::Release(round)),
            other => Err(format!("unknown step {other:?} (contribute, release)")),
        }
    }
}

fn crash_if(ctx: &Context, fault: Fault) {
    if ctx.fault == Some(fault) {
        tracing::error!(?fault, "injected fault: aborting");
        std::process::abort();
    }
}

/// Everything a node needs, opened by the caller (files, passphrase).
pub struct NodeSetup {
    pub consortium: Consortium,
    pub identity: Identity,
    pub share: KeyShare,
    pub public_key: EncryptionKey,
    pub plan: RoundPlan,
    pub store: PathBuf,
    pub witness_store: PathBuf,
    pub source: Box<dyn UpdateSource>,
    /// Exit once this round's result is logged and the coordinator has gone.
    pub stop_after: Option<u64>,
    pub fault: Option<Fault>,
    /// Keep the latest decrypted model here as safetensors.
    pub export_model: Option<PathBuf>,
    /// Append one JSON line per decrypted round (model digest, evaluation, bytes sent).
    pub round_report: Option<PathBuf>,
}

impl std::fmt::Debug for NodeSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeSetup({})", self.identity.name)
    }
}

/// What a node reports when it stops.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeSummary {
    pub rounds: u64,
    pub model_digest: String,
    pub bytes_sent: u64,
}

pub async fn run(setup: NodeSetup) -> Result<NodeSummary, NodeError> {
    let bad = |e: &dyn std::fmt::Display| NodeError::Setup(e.to_string());
    let consortium = setup.consortium;
    let membership = consortium.membership().map_err(|e| bad(&e))?;
    let me = consortium
        .member_index(&setup.identity.name)
        .ok_or_else(|| bad(&format!("{} is not a member", setup.identity.name)))?;
    if setup.share.party() != me {
        return Err(bad(&"the key share belongs to another member"));
    }
    let budget = setup
        .plan
        .budget(consortium.config())
        .map_err(|e| bad(&e))?;
    let origin = keyceremony::run::log_origin(&consortium);
    let (log_verifier, witnesses) =
        checkpoint_verifiers(&origin, &membership).map_err(|e| bad(&e))?;
    let witness_signer = NoteSigner::new(
        &setup.identity.name,
        COSIGNATURE_V1,
        setup.identity.second.clone(),
    )
    .map_err(|e| bad(&e))?;
    let store = StateStore::open(&setup.store)?;
    let witness_store = WitnessStore::open(&setup.witness_store)?;
    let witness = witness_store.load(&origin)?;
    let mut log = LogState::new(&origin);
    let mut entries = Vec::new();
    for leaf in store.leaves()? {
        let entry = SignedEntry::open(&leaf).map_err(|e| bad(&format!("stored log: {e}")))?;
        log.append(entry.clone())
            .map_err(|e| bad(&format!("stored log: {e}")))?;
        entries.push(entry);
    }
    let (model, held) = store
        .model()?
        .unwrap_or_else(|| (vec![0; setup.plan.values as usize], HeldModel::initial()));
    let peers = transport::consortium_peers(&consortium)?;
    let coordinator = peers[0].0;
    let member_peers: Vec<PeerId> = peers[1..].iter().map(|(p, _)| *p).collect();
    if member_peers[usize::from(me)] != setup.identity.peer_id() {
        return Err(bad(
            &"the consortium lists another PeerId for this identity",
        ));
    }
    let listen = peers[1 + usize::from(me)].1.clone();
    let allowed: Vec<_> = peers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1 + usize::from(me))
        .map(|(_, p)| p.clone())
        .collect();
    let (handle, mut events) = transport::spawn(
        setup.identity.keypair(),
        TransportConfig {
            protocol: PROTOCOL,
            max_message: MAX_MESSAGE_BYTES,
            request_timeout: Duration::from_secs(120),
            listen,
            peers: allowed,
        },
    )?;
    let scratch = setup.store.join("fetched");
    std::fs::create_dir_all(&scratch).map_err(|e| bad(&e))?;
    let next_sequence = log.next_sequence(&setup.identity.signing.verifying_key().to_bytes());
    let acted = log.size();
    let member = Member::new(me, membership.clone(), setup.plan.clone(), held, acted);
    let ctx = Arc::new(Context {
        me,
        membership,
        peers: member_peers,
        coordinator,
        handle,
        signing: setup.identity.signing.clone(),
        witness_signer,
        log_verifier,
        witnesses,
        share: setup.share,
        key: setup.public_key,
        budget,
        limits: DecodeLimits {
            max_values: u64::from(setup.plan.values),
        },
        plan: setup.plan,
        store,
        witness_store,
        scratch,
        state: Mutex::new(State {
            log,
            entries,
            // After a restart the stored entries are acted on again; the member machine skips
            // what it already did.
            acted: 0,
            witness,
            model,
            member,
            combining: HashMap::new(),
            partials: HashMap::new(),
            targets: HashMap::new(),
            next_sequence,
            rounds_done: 0,
        }),
        source: Mutex::new(setup.source),
        author: tokio::sync::Mutex::new(()),
        done: tokio::sync::Notify::new(),
        stop_after: setup.stop_after,
        fault: setup.fault,
        export_model: setup.export_model,
        round_report: setup.round_report,
        bytes_sent: Default::default(),
    });
    ctx.handle.dial(coordinator).await;
    tracing::info!(member = me, "node running");
    let mut finished = false;
    let mut coordinator_seen = false;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                None => break,
                Some(Event::Request { peer, bytes, reply }) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        transport::answer(bytes, reply, |request| handle_request(ctx, peer, request)).await;
                    });
                }
                Some(Event::Connected(peer)) => {
                    if peer == coordinator {
                        coordinator_seen = true;
                    }
                }
                Some(Event::Disconnected(peer)) => {
                    if peer == coordinator {
                        if finished {
                            break;
                        }
                        tracing::warn!("the coordinator disconnected; redialling");
                        let ctx = ctx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            ctx.handle.dial(coordinator).await;
                        });
                    }
                }
            },
            _ = ctx.done.notified() => {
                finished = true;
                if !coordinator_seen {
                    break;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(if finished { 60 } else { 3600 })) => {
                if finished {
                    break;
                }
            }
        }
    }
    let state = ctx.lock();
    Ok(NodeSummary {
        rounds: state.rounds_done,
        model_digest: hex::encode(model_digest(&state.model)),
        bytes_sent: ctx.bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
    })
}

fn refused(reason: impl Into<String>) -> Response {
    Response::Refused {
        reason: reason.into(),
    }
}

async fn handle_request(ctx: Arc<Context>, peer: PeerId, request: Request) -> Response {
    match request {
        Request::Witness {
            from,
            entries,
            note,
        } if peer == ctx.coordinator => witness(&ctx, from, entries, &note).await,
        Request::Act { note } if peer == ctx.coordinator => match act(&ctx, &note) {
            Ok(()) => Response::Ok,
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint refused");
                refused(e)
            }
        },
        Request::Incident { entry } => match ctx.member_of(&peer) {
            Some(member) if member != ctx.me => match hear_incident(&ctx, member, &entry) {
                Ok(()) => Response::Ok,
                Err(e) => refused(e),
            },
            _ => refused("incidents are heard from members only"),
        },
        Request::Partial {
            request,
            index,
            count,
            bytes,
        } => match ctx.member_of(&peer) {
            Some(member) if member != ctx.me => {
                match receive_partial(&ctx, member, request, index, count, bytes) {
                    Ok(()) => Response::Ok,
                    Err(e) => refused(e),
                }
            }
            _ => refused("partial decryptions are taken from members only"),
        },
        _ => refused("not a request this node serves for this peer"),
    }
}

/// Checks the entries against the node's copy of the log, then the checkpoint against the
/// copy and the witness state; stores both before the cosignature leaves.
async fn witness(ctx: &Arc<Context>, from: u64, leaves: Vec<Vec<u8>>, note: &[u8]) -> Response {
    let mut state = ctx.lock();
    let size = state.log.size();
    if from > size {
        return Response::Behind { size };
    }
    let mut fresh = Vec::new();
    for (i, leaf) in leaves.iter().enumerate() {
        let index = from + i as u64;
        if index < state.log.size() {
            if state.log.leaf(index) != Some(leaf.as_slice()) {
                drop(state);
                incident(
                    ctx,
                    200,
                    [0; 32],
                    format!("the coordinator sent a different entry {index}: the log forked"),
                );
                return refused(format!(
                    "entry {index} differs from the one this member holds"
                ));
            }
            continue;
        }
        let entry = match SignedEntry::open(leaf) {
            Ok(e) => e,
            Err(e) => return refused(format!("entry {index}: {e}")),
        };
        if let Err(e) = state.log.append(entry.clone()) {
            if matches!(e, protocol::audit::log::LogError::Round { .. }) {
                // An entry that breaks the round rules (a base no quorum released, a close
                // that leaves a contribution out, a release from outside the quorum) is an
                // attack on the release policy: every member should hear of it.
                drop(state);
                incident(
                    ctx,
                    203,
                    protocol::audit::merkle::leaf_hash(leaf),
                    format!("refused to witness entry {index}, which breaks a round rule: {e}"),
                );
            }
            return refused(format!("entry {index}: {e}"));
        }
        state.entries.push(entry);
        fresh.push(leaf.clone());
    }
    if let Err(e) = ctx.store.append_leaves(size, &fresh) {
        return refused(e.to_string());
    }
    let parsed =
        match Note::parse(note).and_then(|n| Checkpoint::parse_text(&n.text).map(|c| (n, c))) {
            Ok(pair) => pair,
            Err(e) => return refused(format!("checkpoint: {e}")),
        };
    let (_, checkpoint) = parsed;
    if checkpoint.size > state.log.size() {
        return Response::Behind {
            size: state.log.size(),
        };
    }
    if state.log.root_at(checkpoint.size) != Some(checkpoint.root) {
        let size = checkpoint.size;
        drop(state);
        incident(
            ctx,
            201,
            checkpoint.root,
            format!("a checkpoint of size {size} does not match the entries: the log forked"),
        );
        return refused("the checkpoint does not match this member's copy of the log");
    }
    let old = state.witness.size;
    let proof = if old == 0 || old > checkpoint.size {
        Vec::new()
    } else {
        match state.log.consistency_proof(old) {
            Ok(p) => p,
            Err(e) => return refused(e.to_string()),
        }
    };
    let now = now_ms() / 1000;
    let (new_state, line) = match state.witness.cosign(
        old,
        &proof,
        note,
        &ctx.log_verifier,
        &ctx.witness_signer,
        now,
    ) {
        Ok(pair) => pair,
        Err(e) => {
            drop(state);
            incident(ctx, 202, checkpoint.root, format!("refused to cosign: {e}"));
            return refused(e.to_string());
        }
    };
    if let Err(e) = ctx.witness_store.save(&new_state) {
        return refused(e.to_string());
    }
    state.witness = new_state;
    Response::Cosigned {
        size: state.log.size(),
        line: line.encode().trim_end().to_owned(),
    }
}

/// Acts on the entries a quorum-cosigned checkpoint covers, in log order.
fn act(ctx: &Arc<Context>, note: &[u8]) -> Result<(), String> {
    let signed = SignedCheckpoint::open(note, &ctx.log_verifier, &ctx.witnesses)
        .map_err(|e| format!("checkpoint: {e}"))?;
    if signed.cosigners.len() < usize::from(ctx.membership.witness_quorum) {
        return Err(format!(
            "{} cosignatures, the witness quorum is {}",
            signed.cosigners.len(),
            ctx.membership.witness_quorum
        ));
    }
    let size = signed.checkpoint.size;
    let mut actions = Vec::new();
    {
        let mut state = ctx.lock();
        if state.log.root_at(size) != Some(signed.checkpoint.root) {
            return Err("the checkpoint does not match this member's copy of the log".into());
        }
        while state.acted < size {
            let index = state.acted;
            state.acted += 1;
            actions.push((index, state.entries[index as usize].clone()));
        }
    }
    for (index, _) in actions {
        let decided = {
            let mut state = ctx.lock();
            let state = &mut *state;
            state
                .member
                .on_entry(&state.entries[..size as usize], index)
        };
        for action in decided {
            carry_out(ctx, action);
        }
    }
    // An incident a member sent directly whose sequence number the log gave to another of its
    // entries was dropped by the coordinator: say so, to the log and to every member.
    let dropped = {
        let mut state = ctx.lock();
        let state = &mut *state;
        state
            .member
            .after_checkpoint(&state.entries[..size as usize])
    };
    for action in dropped {
        tracing::error!(?action, "the coordinator dropped a member's incident");
        carry_out(ctx, action);
    }
    Ok(())
}

/// Carries out one of the member machine's actions.
fn carry_out(ctx: &Arc<Context>, action: Action) {
    match action {
        Action::Forget { before } => forget_before(ctx, before),
        Action::Contribute { round } => {
            crash_if(ctx, Fault::Contribute(round));
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = contribute(&ctx, round).await {
                    tracing::error!(round, error = %e, "contribution failed");
                }
            });
        }
        Action::Release { request } => {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = release(&ctx, request).await {
                    tracing::warn!(request, error = %e, "no share released");
                }
            });
        }
        Action::SendPartial { request, share } => match ctx.store.released_partial(request) {
            Ok(Some(partial)) if Sha256::digest(&partial).as_slice() == share => {
                ctx.lock()
                    .partials
                    .insert((request, ctx.me), Incoming::whole(partial.clone()));
                let ctx = ctx.clone();
                tokio::spawn(async move { send_partial(&ctx, request, partial).await });
            }
            _ => tracing::warn!(
                request,
                "this member's logged release has no stored partial; it cannot be sent"
            ),
        },
        Action::TryCombine { request } => try_combine(ctx, request),
        Action::Incident {
            code,
            evidence,
            description,
        } => incident(ctx, code, evidence, description),
    }
}

/// Drops the fetched ciphertexts and buffered partial decryptions of requests logged before
/// leaf `index` (a round opened there), so nothing from abandoned attempts piles up.
fn forget_before(ctx: &Context, index: u64) {
    {
        let mut state = ctx.lock();
        state.partials.retain(|(request, _), _| *request > index);
        state.targets.retain(|request, _| *request > index);
    }
    if let Err(e) = ctx.store.forget_partials_before(index) {
        tracing::warn!(error = %e, "old partial decryptions could not be dropped");
    }
    // A combination still running reads its ciphertexts from here.
    if ctx.lock().combining.values().any(|c| c.running) {
        return;
    }
    if let Ok(files) = std::fs::read_dir(&ctx.scratch) {
        for file in files.flatten() {
            let _ = std::fs::remove_file(file.path());
        }
    }
}

/// Signs `body` with the node's next sequence number and appends it through the coordinator.
async fn append(
    ctx: &Context,
    body: Body,
    references: Vec<u64>,
    payload: Option<Digest>,
) -> Result<u64, String> {
    let _author = ctx.author.lock().await;
    let entry = sign(ctx, body, references, payload);
    append_signed(ctx, &entry).await
}

/// Appends a signed entry through the coordinator (the caller holds the author lock).
async fn append_signed(ctx: &Context, entry: &SignedEntry) -> Result<u64, String> {
    let response = ctx
        .handle
        .call(
            ctx.coordinator,
            &Request::Append {
                entry: entry.leaf().to_vec(),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    finish_append(ctx, entry, response)
}

fn sign(ctx: &Context, body: Body, references: Vec<u64>, payload: Option<Digest>) -> SignedEntry {
    let state = ctx.lock();
    let author = ctx.signing.verifying_key().to_bytes();
    let sequence = state.next_sequence.max(state.log.next_sequence(&author));
    Entry {
        origin: state.log.origin().to_owned(),
        config_epoch: 1,
        author,
        sequence,
        subject: [0; 32],
        references,
        payload,
        claimed_time_ms: now_ms(),
        body,
    }
    .sign(&ctx.signing)
}

fn finish_append(ctx: &Context, entry: &SignedEntry, response: Response) -> Result<u64, String> {
    match response {
        Response::Appended { leaf } => {
            ctx.lock().next_sequence = entry.entry.sequence + 1;
            Ok(leaf)
        }
        Response::Refused { reason } => Err(format!("the coordinator refused: {reason}")),
        other => Err(format!("unexpected response {other:?}")),
    }
}

/// Logs an incident (best effort: the node's refusal stands whether or not it is logged).
fn incident(ctx: &Arc<Context>, code: u16, evidence: Digest, description: String) {
    tracing::warn!(code, %description, "incident");
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let body = Body::Incident {
            code,
            evidence,
            description,
        };
        let _author = ctx.author.lock().await;
        let entry = sign(&ctx, body, vec![], None);
        let logged = append_signed(&ctx, &entry).await;
        if let Err(e) = &logged {
            tracing::error!(
                error = %e,
                "the coordinator did not log this member's incident (the other members are sent it directly)"
            );
        }
        // Every other member hears it directly, whatever the coordinator did with it.
        for (m, peer) in ctx.peers.iter().enumerate() {
            if m == usize::from(ctx.me) {
                continue;
            }
            let (handle, peer) = (ctx.handle.clone(), *peer);
            let request = Request::Incident {
                entry: entry.leaf().to_vec(),
            };
            tokio::spawn(async move {
                if let Err(error) = handle.call(peer, &request).await {
                    tracing::debug!(member = m, %error, "the incident did not reach a member");
                }
            });
        }
    });
}

/// An incident another member sent directly: kept until the log shows it, or shows that the
/// coordinator dropped it.
fn hear_incident(ctx: &Arc<Context>, member: u8, bytes: &[u8]) -> Result<(), String> {
    let entry = SignedEntry::open(bytes).map_err(|e| format!("incident: {e}"))?;
    let summary = match &entry.entry.body {
        Body::Incident {
            code, description, ..
        } => Some((*code, description.chars().take(300).collect::<String>())),
        _ => None,
    };
    {
        let mut state = ctx.lock();
        let next = state.log.next_sequence(&entry.entry.author);
        state
            .member
            .hear_incident(member, entry, next)
            .map_err(|e| e.to_string())?;
    }
    if let Some((code, description)) = summary {
        tracing::warn!(member, code, %description, "incident reported by a member directly");
    }
    Ok(())
}

async fn contribute(ctx: &Arc<Context>, round: u64) -> Result<(), String> {
    let model = ctx.plan.decode_model(&ctx.lock().model);
    let worker = ctx.clone();
    let (bytes, samples) =
        tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, u64), String> {
            let (update, samples) = worker
                .source
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .update(round, &model)?;
            if update.len() != worker.plan.values as usize {
                return Err(format!(
                    "the update has {} values, the plan {}",
                    update.len(),
                    worker.plan.values
                ));
            }
            let codec = worker.plan.codec().map_err(|e| e.to_string())?;
            let encoded = codec.encode(&update).map_err(|e| e.to_string())?;
            let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
            let ciphertext = worker
                .key
                .encrypt(&encoded, &worker.budget, &mut rng)
                .map_err(|e| e.to_string())?;
            Ok((encode_ciphertext(&ciphertext), samples))
        })
        .await
        .map_err(|e| e.to_string())??;
    let digest = encoded_digest(&bytes).0;
    let chunks = chunk_digests(&bytes);
    // Kept, so that if this member recomputes the round's aggregate it need not fetch it back.
    keep(ctx, &digest, &bytes)?;
    let _author = ctx.author.lock().await;
    let entry = sign(
        ctx,
        Body::Contribution {
            round,
            ciphertext: digest,
            samples,
        },
        vec![],
        Some(digest),
    );
    let offer = Request::Offer {
        entry: entry.leaf().to_vec(),
        length: bytes.len() as u64,
        chunks,
    };
    match ctx.handle.call(ctx.coordinator, &offer).await {
        Ok(Response::Ok) => {}
        Ok(other) => return Err(format!("offer: {other:?}")),
        Err(e) => return Err(e.to_string()),
    }
    let count = bytes.len().div_ceil(CHUNK_BYTES);
    for (index, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
        ctx.sent(chunk.len());
        let response = ctx
            .handle
            .call(
                ctx.coordinator,
                &Request::Chunk {
                    ciphertext: digest,
                    index: index as u32,
                    bytes: chunk.to_vec(),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        if index + 1 == count {
            let leaf = finish_append(ctx, &entry, response)?;
            tracing::info!(round, leaf, bytes = bytes.len(), "contribution logged");
        } else if response != Response::Ok {
            return Err(format!("chunk {index}: {response:?}"));
        }
    }
    Ok(())
}

/// Fetches a stored ciphertext from the coordinator into the scratch directory, checking each
/// chunk and the whole against their digests; returns its path.
/// Chunk requests in flight at once while fetching: enough to keep the connection busy.
const FETCH_WINDOW: usize = 8;

async fn fetch_chunk(
    ctx: &Context,
    digest: &Digest,
    index: u32,
) -> Result<(u64, Vec<Digest>, Vec<u8>), String> {
    let response = ctx
        .handle
        .call(
            ctx.coordinator,
            &Request::Fetch {
                ciphertext: *digest,
                index,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    match response {
        Response::Data {
            length,
            chunks,
            bytes,
        } => Ok((length, chunks, bytes)),
        other => Err(format!(
            "fetching {} chunk {index}: {other:?}",
            hex::encode(&digest[..8])
        )),
    }
}

async fn fetch(ctx: &Context, digest: &Digest) -> Result<PathBuf, String> {
    use futures::StreamExt;
    let path = ctx.scratch.join(hex::encode(digest));
    if path.exists() {
        return Ok(path);
    }
    let expected_length = protocol::wire::ciphertext_encoded_len(ctx.plan.values as usize) as u64;
    // The first chunk brings the length and every chunk's digest; the rest come pipelined.
    let (length, chunk_list, first) = fetch_chunk(ctx, digest, 0).await?;
    if length != expected_length {
        return Err(format!(
            "a ciphertext of {length} bytes, the plan's have {expected_length}"
        ));
    }
    if chunk_list.len() as u64 != length.div_ceil(CHUNK_BYTES as u64) {
        return Err(format!(
            "{} chunk digests for {length} bytes",
            chunk_list.len()
        ));
    }
    let check = |index: usize, chunk: &[u8]| -> Result<(), String> {
        let size = (length as usize - index * CHUNK_BYTES).min(CHUNK_BYTES);
        if chunk.len() != size || Sha256::digest(chunk).as_slice() != chunk_list[index] {
            return Err(format!("chunk {index} does not match its digest"));
        }
        Ok(())
    };
    check(0, &first)?;
    let mut bytes = Vec::with_capacity(length as usize);
    bytes.extend_from_slice(&first);
    let mut rest = futures::stream::iter(1..chunk_list.len() as u32)
        .map(|index| fetch_chunk(ctx, digest, index))
        .buffered(FETCH_WINDOW);
    let mut index = 1;
    while let Some(chunk) = rest.next().await {
        let (_, _, chunk) = chunk?;
        check(index, &chunk)?;
        bytes.extend_from_slice(&chunk);
        index += 1;
    }
    if encoded_digest(&bytes).0 != *digest {
        return Err("the fetched ciphertext does not match its digest".into());
    }
    keep(ctx, digest, &bytes)
}

/// Keeps a ciphertext in the scratch directory under its digest.
fn keep(ctx: &Context, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, String> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = ctx.scratch.join(hex::encode(digest));
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = path.with_extension(format!("part{unique}"));
    std::fs::write(&temp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&temp, &path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Recomputes the ciphertext `target` names from this member's own held encrypted model and the
/// logged contributions (fetched by digest and checked), re-randomised from the logged seed on
/// a retry. `None` if the round's aggregate or the request's ciphertext has another digest: the
/// coordinator asked for something other than the agreed aggregate of the model this member
/// verified.
async fn recompute(
    ctx: &Arc<Context>,
    target: &ReleaseTarget,
) -> Result<Option<BoundCiphertext>, String> {
    let mut files = HashMap::new();
    for digest in target
        .base
        .iter()
        .chain(target.terms.iter().map(|t| &t.ciphertext))
    {
        files.insert(*digest, fetch(ctx, digest).await?);
    }
    let worker = ctx.clone();
    let t = target.clone();
    let recomputed = tokio::task::spawn_blocking(move || -> Result<Option<Ciphertext>, String> {
        let mut acc = match t.base {
            Some(digest) => protocol::wire::decode_ciphertext(
                &std::fs::read(&files[&digest]).map_err(|e| e.to_string())?,
                worker.limits,
            )
            .map_err(|e| e.to_string())?,
            None => Ciphertext::zero(worker.plan.values as usize, worker.budget.delta_bits()),
        };
        protocol::round::policy::aggregate(&mut acc, &t.weighted_terms(), worker.limits, |d| {
            std::fs::read(&files[d])
        })
        .map_err(|e| e.to_string())?;
        if ciphertext_digest(&acc).0 != t.aggregate {
            return Ok(None);
        }
        if t.attempt > 0 {
            worker
                .key
                .rerandomize(&mut acc, t.seed)
                .map_err(|e| e.to_string())?;
        }
        Ok(Some(acc))
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(recomputed
        .map(BoundCiphertext::new)
        .filter(|bound| bound.digest().0 == target.ciphertext))
}

async fn release(ctx: &Arc<Context>, request: u64) -> Result<(), String> {
    let target = {
        let state = ctx.lock();
        let acted = state.acted as usize;
        check_request(
            &state.entries[..acted],
            &ctx.membership,
            &ctx.plan,
            ctx.me,
            request,
            state.member.held(),
        )
    };
    // Never a second share for one ciphertext, whatever else the log says.
    let named = match ctx
        .lock()
        .entries
        .get(request as usize)
        .map(|e| &e.entry.body)
    {
        Some(Body::DecryptionRequest { ciphertext, .. }) => Some(*ciphertext),
        _ => None,
    };
    if let Some(ciphertext) = named
        && ctx
            .store
            .released(&ciphertext)
            .map_err(|e| e.to_string())?
            .is_some()
    {
        return refuse(ctx, request, Refusal::AlreadyReleased);
    }
    let target = match target {
        Ok(t) => t,
        Err(refusal) => return refuse(ctx, request, refusal),
    };
    let Some(bound) = recompute(ctx, &target).await? else {
        return refuse(ctx, request, Refusal::Mismatch);
    };
    // The ledger, durably, before anything leaves: never a second share for this ciphertext,
    // and never past the key's lifetime budget.
    // Every request any member released for may have been decrypted: the key's reveals are
    // counted from the whole log, this request included.
    let logged = {
        let state = ctx.lock();
        state.log.rounds().map_or(0, |rules| {
            let mut rounds = rules.released_requests_by_round();
            if rules.request(request).is_none_or(|r| r.released == 0) {
                *rounds.entry(target.round).or_default() += 1;
            }
            protocol::round::policy::logged_reveals(&rounds, &ctx.plan)
        })
    };
    let release = Release {
        request,
        ciphertext: target.ciphertext,
        mask: protocol::wire::mask_digest(bound.ciphertext()),
    };
    let recorded = ctx
        .store
        .record_release(
            &release,
            u64::from(ctx.plan.values),
            ctx.budget.lifetime_reveal_limit(),
            logged,
        )
        .map_err(|e| e.to_string())?;
    match recorded {
        Recorded::Fresh => {}
        Recorded::AlreadyReleased => return refuse(ctx, request, Refusal::AlreadyReleased),
        Recorded::LifetimeSpent { revealed, limit } => {
            let reason = format!(
                "the key's lifetime budget is spent: {revealed} values revealed, {} more \
                 requested, limit {limit} (raise kappa at the next ceremony)",
                ctx.plan.values
            );
            incident(ctx, 130, target.ciphertext, reason.clone());
            return Err(reason);
        }
    }
    crash_if(ctx, Fault::Release(target.round));
    let quorum =
        Quorum::new(ctx.share.config(), target.quorum.clone()).map_err(|e| e.to_string())?;
    let worker = ctx.clone();
    let bound = Arc::new(bound);
    let for_partial = bound.clone();
    let partial = tokio::task::spawn_blocking(move || {
        let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
        worker
            .share
            .partial_decrypt(&for_partial, &quorum, &worker.budget, &mut rng)
            .map(|p| encode_partial_decryption(&p))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let share_digest: Digest = Sha256::digest(&partial).into();
    {
        let mut state = ctx.lock();
        state.targets.insert(request, bound);
        state
            .partials
            .insert((request, ctx.me), Incoming::whole(partial.clone()));
    }
    // Kept durably before the release is logged, so that a crash after logging cannot lose
    // a share the log says went out: after a restart the same bytes are sent again.
    ctx.store
        .keep_partial(request, &partial)
        .map_err(|e| e.to_string())?;
    append(
        ctx,
        Body::ShareReleased {
            request,
            ciphertext: target.ciphertext,
            share: share_digest,
        },
        vec![request],
        Some(share_digest),
    )
    .await?;
    tracing::info!(
        round = target.round,
        request,
        attempt = target.attempt,
        "share released"
    );
    // The partial leaves when this release is acted on, from a cosigned checkpoint.
    Ok(())
}

/// Sends this member's partial decryption for `request` to every other member, chunk by
/// chunk: only to members, never to the coordinator.
async fn send_partial(ctx: &Arc<Context>, request: u64, partial: Vec<u8>) {
    let partial = Arc::new(partial);
    let count = partial.len().div_ceil(CHUNK_BYTES) as u32;
    let mut sends = Vec::new();
    for (m, peer) in ctx.peers.iter().enumerate() {
        if m == usize::from(ctx.me) {
            continue;
        }
        let (handle, peer, partial) = (ctx.handle.clone(), *peer, partial.clone());
        ctx.sent(partial.len());
        sends.push(tokio::spawn(async move {
            // A member not reachable yet is tried again a few times, from the first chunk; a
            // member that answers with a refusal is not.
            'attempts: for attempt in 1..=PARTIAL_ATTEMPTS {
                for (index, chunk) in partial.chunks(CHUNK_BYTES).enumerate() {
                    let request = Request::Partial {
                        request,
                        index: index as u32,
                        count,
                        bytes: chunk.to_vec(),
                    };
                    match handle.call(peer, &request).await {
                        Ok(Response::Ok) => {}
                        Ok(other) => {
                            tracing::debug!(member = m, response = ?other, "partial refused");
                            return;
                        }
                        Err(error) => {
                            tracing::debug!(member = m, attempt, %error, "partial not delivered");
                            tokio::time::sleep(PARTIAL_RETRY).await;
                            continue 'attempts;
                        }
                    }
                }
                return;
            }
        }));
    }
    for send in sends {
        let _ = send.await;
    }
    try_combine(ctx, request);
}

fn refuse(ctx: &Arc<Context>, request: u64, refusal: Refusal) -> Result<(), String> {
    let evidence: Digest = Sha256::digest(request.to_le_bytes()).into();
    incident(
        ctx,
        refusal.code(),
        evidence,
        format!("refused to release a share for request {request}: {refusal}"),
    );
    Err(refusal.to_string())
}

fn receive_partial(
    ctx: &Arc<Context>,
    member: u8,
    request: u64,
    index: u32,
    count: u32,
    bytes: Vec<u8>,
) -> Result<(), String> {
    let limit = ctx.plan.values as usize * 8 + 1024;
    if count == 0 || count as usize > limit.div_ceil(CHUNK_BYTES) {
        return Err(format!(
            "{count} chunks do not make a partial decryption of this plan"
        ));
    }
    let complete = {
        let mut state = ctx.lock();
        if let Some(d) = state.member.decryption(request)
            && !d.quorum.contains(&member)
        {
            return Err("the sender is not in the request's quorum".into());
        }
        // A partial may overtake the checkpoint that logs its request, but not by much.
        if request > state.log.size() + 1024 {
            return Err(format!("request {request} is far beyond this member's log"));
        }
        let buffered = state.partials.keys().filter(|(_, m)| *m == member).count();
        if !state.partials.contains_key(&(request, member))
            && buffered >= BUFFERED_PARTIALS_PER_MEMBER
        {
            return Err("too many partial decryptions in flight from this member".into());
        }
        let incoming = state
            .partials
            .entry((request, member))
            .or_insert_with(|| Incoming {
                received: 0,
                count,
                bytes: Vec::new(),
            });
        if incoming.count != count || incoming.received != index {
            // Start over: a sender resends from the first chunk.
            if index != 0 {
                return Err(format!(
                    "chunk {index} of {count} arrived, expected {} of {}",
                    incoming.received, incoming.count
                ));
            }
            *incoming = Incoming {
                received: 0,
                count,
                bytes: Vec::new(),
            };
        }
        if incoming.bytes.len() + bytes.len() > limit {
            return Err("the partial decryption exceeds its size limit".into());
        }
        incoming.bytes.extend_from_slice(&bytes);
        incoming.received += 1;
        incoming.complete()
    };
    if complete {
        try_combine(ctx, request);
    }
    Ok(())
}

/// Combines once every quorum member's share release is logged and its partial decryption,
/// hashing to the logged digest, has arrived.
fn try_combine(ctx: &Arc<Context>, request: u64) {
    let (partials, ciphertext, quorum, round) = {
        let mut state = ctx.lock();
        let state = &mut *state;
        let Some(d) = state.member.decryption(request) else {
            return;
        };
        if state.combining.get(&request).is_some_and(|c| c.running)
            || d.logged_shares.len() < d.quorum.len()
        {
            return;
        }
        let mut partials = Vec::new();
        for m in &d.quorum {
            let Some(incoming) = state.partials.get(&(request, *m)) else {
                return;
            };
            if !incoming.complete() {
                return;
            }
            if Sha256::digest(&incoming.bytes).as_slice() != d.logged_shares[m] {
                tracing::warn!(
                    member = m,
                    request,
                    "a partial decryption does not match the digest its author logged"
                );
                return;
            }
            partials.push(incoming.bytes.clone());
        }
        let (ciphertext, quorum, round) = (d.ciphertext, d.quorum.clone(), d.round);
        state.combining.entry(request).or_default().running = true;
        (partials, ciphertext, quorum, round)
    };
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if let Err(e) = combine(&ctx, request, round, ciphertext, quorum, partials).await {
            tracing::error!(request, error = %e, "combining failed");
            let again = match ctx.lock().combining.get_mut(&request) {
                Some(c) => {
                    c.running = false;
                    c.failures += 1;
                    c.failures < COMBINE_ATTEMPTS
                }
                None => false,
            };
            if again {
                tokio::time::sleep(COMBINE_RETRY).await;
                try_combine(&ctx, request);
            }
        }
    });
}

/// One line of the round report a node appends after each decrypted round.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RoundReport {
    pub round: u64,
    pub model_digest: String,
    /// On this institution's held-out rows, if it has some.
    pub evaluation: Option<crate::trainer::Evaluation>,
    /// Ciphertext and partial-decryption bytes sent since the node started.
    pub bytes_sent: u64,
    pub unix_millis: u64,
}

/// Measures the new global model, exports it and appends the round report: what the people
/// running the node look at, so a failure here is logged and does not stop the node.
fn report_round(ctx: &Context, round: u64, digest: &ModelDigest) -> Result<(), String> {
    let global = ctx.plan.decode_model(&ctx.lock().model);
    let source = ctx.source.lock().unwrap_or_else(|p| p.into_inner());
    let evaluation = source.evaluate(&global);
    if let Some(e) = &evaluation {
        tracing::info!(
            round,
            accuracy = e.accuracy(),
            loss = e.loss(),
            rows = e.rows,
            "global model on the held-out rows"
        );
    }
    if let Some(path) = &ctx.export_model {
        let mut metadata = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            ("round".to_string(), round.to_string()),
            ("model_digest".to_string(), hex::encode(digest)),
            ("plan_digest".to_string(), hex::encode(ctx.plan.digest())),
        ]);
        metadata.extend(source.export_metadata());
        let mut layout = source.layout();
        let mut values = source.parameters(&global);
        for (name, extra) in source.export_extras(&global) {
            layout.push((name, vec![extra.len()]));
            values.extend(extra);
        }
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let written = crate::tensors::encode(&layout, &values, metadata)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                keyceremony::files::write_atomically(path, &bytes, 0o600).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "the model could not be exported");
        }
    }
    if let Some(path) = &ctx.round_report {
        let line = RoundReport {
            round,
            model_digest: hex::encode(digest),
            evaluation,
            bytes_sent: ctx.bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
            unix_millis: now_ms(),
        };
        let mut text = serde_json::to_string(&line).map_err(|e| e.to_string())?;
        text.push('\n');
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
        if let Err(e) = appended {
            tracing::error!(path = %path.display(), error = %e, "the round report could not be written");
        }
    }
    Ok(())
}

async fn combine(
    ctx: &Arc<Context>,
    request: u64,
    round: u64,
    ciphertext: Digest,
    quorum: Vec<u8>,
    partials: Vec<Vec<u8>>,
) -> Result<(), String> {
    // The result becomes this member's model, the base of its next contribution and release:
    // so it combines only a ciphertext it recomputed itself from the model it holds.
    let verdict = {
        let state = ctx.lock();
        check_combine(
            &state.entries[..state.acted as usize],
            &ctx.membership,
            &ctx.plan,
            request,
            state.member.held(),
        )
    };
    let release_target = match verdict {
        Ok(t) if t.ciphertext == ciphertext => t,
        Ok(_) => return Err("the request names another ciphertext".into()),
        Err(refusal) => {
            tracing::warn!(request, %refusal, "not combining");
            return Ok(());
        }
    };
    let recomputed = ctx.lock().targets.get(&request).cloned();
    let target = match recomputed {
        Some(t) => t,
        None => match recompute(ctx, &release_target).await? {
            Some(bound) => Arc::new(bound),
            None => {
                let refusal = Refusal::Mismatch;
                incident(
                    ctx,
                    refusal.code(),
                    ciphertext,
                    format!("not combining request {request}: {refusal}"),
                );
                return Ok(());
            }
        },
    };
    let worker = ctx.clone();
    let decoded = tokio::task::spawn_blocking(move || -> Result<Vec<i64>, String> {
        let limits = DecodeLimits {
            max_values: u64::from(worker.plan.values),
        };
        let partials = partials
            .iter()
            .map(|p| protocol::wire::decode_partial_decryption(p, limits))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let quorum = Quorum::new(worker.share.config(), quorum).map_err(|e| e.to_string())?;
        protocol::he::combine(&target, &quorum, &partials, &worker.budget)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    if decoded.len() != ctx.plan.values as usize {
        return Err("the decrypted model has the wrong size".into());
    }
    let digest = model_digest(&decoded);
    let held = HeldModel {
        round,
        base: release_target.aggregate,
        model: digest,
    };
    ctx.store
        .save_model(&decoded, &held)
        .map_err(|e| e.to_string())?;
    {
        let mut state = ctx.lock();
        state.model = decoded;
        state.member.combined(held);
        state.rounds_done += 1;
        state.targets.remove(&request);
        state.partials.retain(|(r, _), _| *r != request);
    }
    append(
        ctx,
        Body::DecryptionResult {
            request,
            ciphertext,
            model: digest,
        },
        vec![request],
        Some(digest),
    )
    .await?;
    tracing::info!(round, request, model = %hex::encode(&digest[..8]), "model decrypted");
    let worker = ctx.clone();
    let reported = tokio::task::spawn_blocking(move || report_round(&worker, round, &digest)).await;
    if let Err(e) = reported.map_err(|e| e.to_string()).and_then(|r| r) {
        tracing::error!(round, error = %e, "the round could not be reported");
    }
    if ctx.stop_after.is_some_and(|last| round >= last) {
        ctx.done.notify_one();
    }
    Ok(())
}
