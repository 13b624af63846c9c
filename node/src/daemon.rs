//! `quorate node run`: an institution's node. It keeps its own checked copy of the audit log
//! and witnesses every checkpoint against it; it acts only on entries covered by a checkpoint
//! a quorum of witnesses cosigned (log before act); it contributes an encrypted update to each
//! round it is expected in; and it releases a partial decryption only under the release
//! policy: the agreed aggregate recomputed from the logged contributions, never twice for one
//! ciphertext (the ledger is flushed before the share leaves), and only to other members.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use protocol::audit::checkpoint::{Checkpoint, SignedCheckpoint};
use protocol::audit::entry::{Body, Digest, Entry, IncidentCode, Membership, SignedEntry};
use protocol::audit::log::{LogState, checkpoint_verifiers};
use protocol::audit::note::{COSIGNATURE_V1, Note, NoteSigner, NoteVerifier};
use protocol::audit::witness::WitnessState;
use protocol::consortium::Consortium;
use protocol::he::{Budget, Ciphertext, CombineTarget, EncryptionKey, KeyShare, Quorum};
use protocol::round::message::{CHUNK_BYTES, MAX_MESSAGE_BYTES, PROTOCOL, Request, Response};
use protocol::round::policy::{
    HeldModel, Obtain, Refusal, ReleaseTarget, check_combine, check_request,
};
use protocol::round::{ModelDigest, RoundPlan, model_digest};
use protocol::wire::digest::encoding_digest;
use protocol::wire::{BoundCiphertext, DecodeLimits, encode_ciphertext, encoded_digest};
use rand::SeedableRng;
use runtime::clock::now_ms;
use runtime::identity::Identity;
use runtime::transport::{self, Event, Handle, TransportConfig};
use sha2::{Digest as _, Sha256};

use crate::member::{Action, Member};
use crate::source::UpdateSource;
use crate::state_store::{Recorded, Release, StateStore, StateStoreError};
use crate::witness_store::{WitnessStore, WitnessStoreError};

mod combine;
mod contribute;
mod decrypt;
mod entries;
mod error;
mod fetch;
mod held;
mod incoming;
mod log;
mod preload;
mod report;
mod serve;
mod step;

use combine::*;
use contribute::*;
use decrypt::*;
use entries::*;
pub use error::{MalformedPartial, StepError};
use fetch::*;
use incoming::Incoming;
use log::*;
pub use report::RoundReport;
use report::*;
use runtime::fault::abort_if;
pub use runtime::fault::{Fault, Step};
use serve::*;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("setup: {0}")]
    Setup(String),
    #[error("initial model: {0}")]
    InitialModel(#[from] protocol::round::InitialModelError),
    #[error(transparent)]
    State(#[from] StateStoreError),
    #[error(transparent)]
    Witness(#[from] WitnessStoreError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error(
        "stopping: a store can no longer be written ({0}). Everything recorded before is \
         kept; free space or fix the file system, then restart the node"
    )]
    StoreFailed(String),
}

/// How combining a request's partial decryptions is going.
#[derive(Default)]
struct Combining {
    running: bool,
    /// Combining attempts that failed (a fetch, a file): tried again a few times, since a
    /// member that misses a decryption sits out every later round.
    failures: u8,
    /// A quorum member's logged partial does not fit the request: the request can never be
    /// combined (the log fixes the partial's bytes), and its author was named once.
    malformed: bool,
}

/// Deliveries of a partial decryption to a member that cannot be reached, [`PARTIAL_RETRY`]
/// apart.
const PARTIAL_ATTEMPTS: u32 = 5;
const PARTIAL_RETRY: Duration = Duration::from_secs(1);

/// Failed combining attempts tried again, [`COMBINE_RETRY`] apart.
const COMBINE_ATTEMPTS: u8 = 4;
const COMBINE_RETRY: Duration = Duration::from_secs(2);

/// A partial decryption whose release is logged but which has not arrived is asked for from
/// its author [`RESEND_ATTEMPTS`] times: after [`RESEND_FIRST`], then [`RESEND_WAIT`] apart,
/// doubling every other attempt up to [`RESEND_WAIT_MAX`] (about two minutes in all, so a
/// member cut off from another for a while still gets the partial when the link returns).
const RESEND_ATTEMPTS: u32 = 12;

/// How long a node that is done stays for members still catching up (see `run`).
const LINGER: Duration = Duration::from_secs(5);
const RESEND_FIRST: Duration = Duration::from_millis(500);
const RESEND_WAIT: Duration = Duration::from_secs(2);
const RESEND_WAIT_MAX: Duration = Duration::from_secs(16);

/// How long the chase of a missing partial waits before asking again the `attempt`-th time.
fn resend_wait(attempt: u32) -> Duration {
    if attempt == 0 {
        return RESEND_FIRST;
    }
    (RESEND_WAIT * 2u32.pow((attempt - 1) / 2)).min(RESEND_WAIT_MAX)
}

/// Partial decryptions buffered at most, per member of the consortium: one per attempt the
/// plan allows, for the current round and the previous one (kept for members that ask again).
fn buffered_partials_per_member(plan: &RoundPlan) -> usize {
    2 * (1 + usize::from(plan.max_retries))
}

/// The model a store holds, checked against its record, or the initial zeros before the first
/// decryption.
fn stored_model(store: &StateStore, values: u32) -> Result<(Vec<i64>, HeldModel), StateStoreError> {
    Ok(store
        .model(values.into())?
        .unwrap_or_else(|| (vec![0; values as usize], HeldModel::initial())))
}

struct State {
    log: LogState,
    entries: Vec<SignedEntry>,
    acted: u64,
    witness: WitnessState,
    /// The model this member holds, while it is in memory: from its decryption until this
    /// member contributes from it. Absent, it is read back from the store
    /// ([`Context::held_model`]):
    /// at 100M values it is 800 MB that the round's recomputation and combination need more.
    /// Shared, so that reporting the model does not copy it.
    model: Option<Arc<Vec<i64>>>,
    /// The server optimizer's state after `model` (empty under FedAvg).
    optimizer: protocol::round::OptimizerState,
    /// Requests whose server step is being logged, and those whose step this member logged
    /// (its copy of the log may not show it yet).
    stepping: HashSet<u64>,
    stepped: HashSet<u64>,
    /// The member's decisions: the model it verified and holds (it contributes from, releases
    /// for and builds on nothing else), the decryptions it follows, incidents heard directly.
    member: Member,
    combining: HashMap<u64, Combining>,
    partials: HashMap<(u64, u8), Incoming>,
    /// What combining needs of the ciphertexts this member released for or prepared (their
    /// bodies), by request, and the rounds whose aggregate is being recomputed ahead of
    /// combining.
    targets: HashMap<u64, CombineTarget>,
    preparing: HashSet<u64>,
    /// Requests whose combining waited for a preparation: tried again when it ends.
    deferred: HashSet<u64>,
    /// Requests whose missing partial decryptions this member is asking their authors for.
    chasing: HashSet<u64>,
    /// The coordinator said its run is over after this round: the node leaves once it holds
    /// that round's model or has nothing left to try.
    run_over: Option<u64>,
    /// When this member last sent a partial again, by request and asking member: at most once
    /// per [`RESEND_WAIT`], so a member cannot make it send the same bytes without end.
    resent: HashMap<(u64, u8), std::time::Instant>,
    /// Deliveries of this member's partial decryptions under way, by request and member.
    delivering: HashSet<(u64, u8)>,
    next_sequence: u64,
    rounds_done: u64,
    /// The fraction of this member's latest updates that the plan's clip changed, by round
    /// (a few rounds: the next round's update can come before this round's report).
    clipped: std::collections::BTreeMap<u64, f64>,
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
    /// The encrypted model this member recomputed or fetched last (see `held`), which the next
    /// round builds on once its decryption is combined.
    held: PathBuf,
    /// This member's latest contribution, which its recomputation of the round adds.
    contributed: PathBuf,
    state: Mutex<State>,
    source: Mutex<Box<dyn UpdateSource>>,
    author: tokio::sync::Mutex<()>,
    /// The held encrypted model read ahead of the next request (see `preload`).
    preloaded: tokio::sync::Mutex<Option<preload::Preloaded>>,
    done: tokio::sync::Notify,
    stop_after: Option<u64>,
    fault: Option<Fault>,
    export_model: Option<PathBuf>,
    round_report: Option<PathBuf>,
    /// Ciphertext and partial-decryption bytes this node sent.
    bytes_sent: std::sync::atomic::AtomicU64,
    /// Ciphertext bytes this node fetched from the coordinator: contributions to recompute an
    /// aggregate, or an aggregate outside the quorum.
    bytes_fetched: std::sync::atomic::AtomicU64,
    /// When this member last sent a partial decryption again (ms): a leaving node stays while
    /// peers still catch up.
    last_resend_ms: std::sync::atomic::AtomicU64,
}

impl Context {
    /// The shape of every ciphertext of the plan under the consortium's key: what each
    /// fetched or held one must have.
    fn shape(&self) -> protocol::he::CiphertextShape {
        self.budget
            .ciphertext_shape_under(self.plan.values as usize, self.key.secrets())
    }

    fn sent(&self, bytes: usize) {
        self.bytes_sent
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model this member holds, with the record of how it verified it (zeros and the
    /// initial record before its first decryption): from memory if it is there, taken out of
    /// it if `take`, else read back from the store and checked against its digest, as after a
    /// restart. A caller that decided on a held model compares the record returned: a
    /// combination may have moved the member on meanwhile. Blocking: the read is up to a
    /// gigabyte.
    fn held_model(&self, take: bool) -> Result<(Arc<Vec<i64>>, HeldModel), StateStoreError> {
        let kept = {
            let mut state = self.lock();
            let model = if take {
                state.model.take()
            } else {
                state.model.clone()
            };
            model.map(|model| (model, *state.member.held()))
        };
        if let Some(kept) = kept {
            return Ok(kept);
        }
        let (model, held) = stored_model(&self.store, self.plan.values)?;
        Ok((Arc::new(model), held))
    }

    /// The model this member holds, if it is still `expected`, handed to `each` in
    /// consecutive pieces: whole while it is in memory, else read back from the store a piece
    /// at a time, so that it is never held whole beside what the caller holds (800 MB at
    /// 100M values). `false`, with nothing handed, if the member moved on to another model.
    fn held_model_in_pieces<E: From<StateStoreError>>(
        &self,
        expected: &HeldModel,
        mut each: impl FnMut(&[i64]) -> Result<(), E>,
    ) -> Result<bool, E> {
        let in_memory = {
            let state = self.lock();
            if state.member.held() != expected {
                return Ok(false);
            }
            state.model.clone()
        };
        match in_memory {
            Some(model) => each(&model).map(|()| true),
            None => self
                .store
                .model_in_pieces(u64::from(self.plan.values), expected, each),
        }
    }

    /// The digest of the model this member holds, without reading it back when its record
    /// names it.
    fn held_model_digest(&self) -> ModelDigest {
        let values = self.plan.values as usize;
        let state = self.lock();
        match (&state.model, state.member.held()) {
            (Some(model), _) => model_digest(model),
            (None, held) if held.round > 0 => held.model,
            // Contributed from the initial zeros, and nothing combined since.
            (None, _) => model_digest(&vec![0; values]),
        }
    }

    fn member_of(&self, peer: &PeerId) -> Option<u8> {
        self.peers.iter().position(|p| p == peer).map(|i| i as u8)
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeSummary {
    pub rounds: u64,
    pub model_digest: String,
    pub bytes_sent: u64,
    /// Ciphertext bytes fetched from the coordinator (the other members' contributions, and
    /// the model a round builds on when this member does not hold it).
    #[serde(default)]
    pub bytes_fetched: u64,
    /// The node process's peak resident set size, where the system says.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
    /// The CPU time the node process used, where the system says.
    #[serde(default)]
    pub cpu_seconds: Option<runtime::process::CpuSeconds>,
}

/// Runs the node until its last round (`stop_after`), until the coordinator says its run is
/// over and goes, or until `shutdown` completes. Every step is durable when it is taken, so
/// stopping abandons at most a step in progress, which a restart takes up again.
pub async fn run(
    setup: NodeSetup,
    shutdown: impl Future<Output = ()>,
) -> Result<NodeSummary, NodeError> {
    let bad = |e: &dyn std::fmt::Display| NodeError::Setup(e.to_string());
    let consortium = setup.consortium;
    let membership = consortium.membership().map_err(|e| bad(&e))?;
    let me = consortium
        .member_index(&setup.identity.name)
        .ok_or_else(|| bad(&format!("{} is not a member", setup.identity.name)))?;
    if setup.share.party() != me {
        return Err(bad(&"the key share belongs to another member"));
    }
    // Before any release is recorded: a share of another number of secrets would refuse every
    // ciphertext only after the ledger had used the request up.
    if setup.share.secrets() != setup.public_key.secrets() {
        return Err(bad(&format!(
            "the key share is of a key of {} secrets, the public key has {}",
            setup.share.secrets(),
            setup.public_key.secrets()
        )));
    }
    let budget = setup
        .plan
        .budget(consortium.config())
        .map_err(|e| bad(&e))?;
    // Before anything is logged or contributed: a member that starts from another model than
    // the others would train a different network while the log says they agree.
    let (own, all_zero) = setup.source.initial_model();
    crate::source::check_initial_model(setup.plan.initial_model.as_ref(), own, all_zero)?;
    let origin = consortium.log_origin();
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
    // Read, and checked against its record, at start: a damaged model stops the node here.
    let (model, held) = stored_model(&store, setup.plan.values)?;
    let initial_state = setup.plan.initial_optimizer_state();
    let optimizer = store
        .optimizer_state(&initial_state)?
        .unwrap_or(initial_state);
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
    // Fetched ciphertexts are added as they arrive; earlier versions kept them here.
    let _ = std::fs::remove_dir_all(setup.store.join("fetched"));
    let held_dir = setup.store.join("held");
    let contributed = setup.store.join("contributed");
    held::clear_after_restart(&held_dir);
    held::clear_after_restart(&contributed);
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
        held: held_dir,
        contributed,
        state: Mutex::new(State {
            log,
            entries,
            // After a restart the stored entries are acted on again; the member machine skips
            // what it already did.
            acted: 0,
            witness,
            model: Some(Arc::new(model)),
            optimizer,
            stepping: HashSet::new(),
            stepped: HashSet::new(),
            member,
            combining: HashMap::new(),
            partials: HashMap::new(),
            targets: HashMap::new(),
            preparing: HashSet::new(),
            deferred: HashSet::new(),
            chasing: HashSet::new(),
            run_over: None,
            resent: HashMap::new(),
            delivering: HashSet::new(),
            next_sequence,
            rounds_done: 0,
            clipped: Default::default(),
        }),
        source: Mutex::new(setup.source),
        author: tokio::sync::Mutex::new(()),
        preloaded: tokio::sync::Mutex::new(None),
        done: tokio::sync::Notify::new(),
        stop_after: setup.stop_after,
        fault: setup.fault,
        export_model: setup.export_model,
        round_report: setup.round_report,
        bytes_sent: Default::default(),
        bytes_fetched: Default::default(),
        last_resend_ms: Default::default(),
    });
    ctx.handle.dial(coordinator).await;
    tracing::info!(member = me, "node running");
    let mut finished = false;
    let mut coordinator_connected = false;
    let mut acted_on_stored = false;
    // Once done and the coordinator is gone, the node stays [`LINGER`] longer, and as long as
    // members are still asking it for partial decryptions, so that they can catch up.
    let mut leave_at: Option<tokio::time::Instant> = None;
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    tokio::pin!(shutdown);
    let (state_health, witness_health) = (ctx.store.health(), ctx.witness_store.health());
    let store_failed = async {
        tokio::select! {
            failure = state_health.failed() => failure,
            failure = witness_health.failed() => failure,
        }
    };
    tokio::pin!(store_failed);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("stopping on request");
                break;
            }
            failure = &mut store_failed => {
                tracing::error!(%failure, "a store can no longer be written: stopping");
                return Err(NodeError::StoreFailed(failure));
            }
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
                        coordinator_connected = true;
                        // Once per start: the last final checkpoint it stored, acted on again
                        // now that its actions can reach the coordinator (the member machine
                        // skips what it did before a restart).
                        if !acted_on_stored {
                            acted_on_stored = true;
                            act_on_stored_checkpoint(&ctx);
                        }
                    }
                }
                Some(Event::Disconnected(peer)) => {
                    if peer == coordinator {
                        coordinator_connected = false;
                        if finished {
                            leave_at = Some(tokio::time::Instant::now() + LINGER);
                            continue;
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
                // With the coordinator gone, leave soon; else when it goes (or after a minute).
                let wait = if coordinator_connected { Duration::from_secs(60) } else { LINGER };
                leave_at = Some(tokio::time::Instant::now() + wait);
            }
            () = tokio::time::sleep_until(leave_at.unwrap_or(far)) => {
                let last = ctx.last_resend_ms.load(std::sync::atomic::Ordering::Relaxed);
                let quiet_for = now_ms().saturating_sub(last);
                if quiet_for >= LINGER.as_millis() as u64 {
                    break;
                }
                leave_at = Some(
                    tokio::time::Instant::now() + LINGER
                        - Duration::from_millis(quiet_for),
                );
            }
        }
    }
    ctx.store.flush()?;
    let model_digest = ctx.held_model_digest();
    let state = ctx.lock();
    Ok(NodeSummary {
        rounds: state.rounds_done,
        model_digest: hex::encode(model_digest),
        bytes_sent: ctx.bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
        bytes_fetched: ctx.bytes_fetched.load(std::sync::atomic::Ordering::Relaxed),
        peak_memory_bytes: runtime::process::peak_memory(),
        cpu_seconds: runtime::process::CpuSeconds::of_this_process(),
    })
}

/// Acts on the final checkpoint this node stored before it stopped, if any: a node restarted
/// holding the whole log would otherwise wait for the log to grow (or for the coordinator to
/// send it one), with the partial decryptions it owes unsent.
fn act_on_stored_checkpoint(ctx: &Arc<Context>) {
    let stored = match ctx.store.final_checkpoint() {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(error = %e, "the stored final checkpoint could not be read");
            return;
        }
    };
    if let Some(note) = stored
        && let Err(e) = act(ctx, &note)
    {
        tracing::warn!(error = %e, "the stored final checkpoint was not acted on");
    }
}

/// After the coordinator's run is over, lets the node leave once it holds the last round's
/// model, or once nothing it could still do is in progress (no partial asked for, no
/// combination running): a member that missed decryptions first catches up.
fn leave_if_run_over(ctx: &Context) {
    let leave = {
        let s = ctx.lock();
        // Never while this member's server step is being logged: the next run builds on it.
        s.stepping.is_empty()
            && s.run_over.is_some_and(|last| {
                s.member.held().round >= last
                    || (s.chasing.is_empty()
                        && s.preparing.is_empty()
                        && s.combining.values().all(|c| !c.running))
            })
    };
    if leave {
        ctx.done.notify_one();
    }
}

/// Drops the recomputed ciphertexts and buffered partial decryptions of requests logged before
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_partial_is_asked_for_soon_then_less_often_for_about_two_minutes() {
        let waits: Vec<Duration> = (0..RESEND_ATTEMPTS).map(resend_wait).collect();
        assert_eq!(waits[0], RESEND_FIRST);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), RESEND_WAIT_MAX);
        let total: Duration = waits.iter().sum();
        // Outlasts a link down for a minute, and gives up within three.
        assert!(
            total > Duration::from_secs(60) && total < Duration::from_secs(180),
            "{total:?}"
        );
    }
}
