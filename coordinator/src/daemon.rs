//! `quorate coordinator run`: the coordinator's process. It opens rounds, takes contributions
//! in chunks onto disk, aggregates them into the next encrypted model one contribution at a
//! time, names a quorum, retries with a re-randomised ciphertext when a quorum member fails,
//! and runs the audit log: every step is appended before it takes effect and every growth of
//! the log is witnessed by the members and published with their cosignatures.
//!
//! It never holds a plaintext or a partial decryption: members send partial decryptions only
//! to each other, and a partial-decryption message addressed here is refused unread.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use protocol::audit::entry::{Body, Digest, IncidentCode, Membership, SignedEntry};
use protocol::audit::log::checkpoint_verifiers;
use protocol::audit::note::{ED25519, Note, NoteSigner, NoteVerifier, SignatureLine};
use protocol::consortium::Consortium;
use protocol::he::{Budget, Ciphertext, CiphertextShape, EncryptionKey};
use protocol::round::message::{
    MAX_ENTRIES_PER_MESSAGE, MAX_MESSAGE_BYTES, PROTOCOL, Request, Response,
};
use protocol::round::rules::ZERO_BASE;
use protocol::round::{CloseDecision, CoordinatorRound, DecryptionStatus, RoundPlan};
use protocol::wire::{DecodeLimits, ciphertext_digest};
use rand::RngCore;
use runtime::clock::now_ms;
use runtime::identity::Identity;
use runtime::transport::{self, Event, Handle, TransportConfig};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::audit_log::{AuditLog, AuditLogError};
use crate::blobs::{BlobError, BlobStore, Upload};
use crate::config::CoordinatorConfig;
use crate::metrics::{Metrics, RoundStep};
use crate::summary::{RoundSummary, RunSummary, peak_memory};

mod publish;
mod requests;
mod round;

use publish::publisher;
use requests::handle_request;
use round::run_round;

/// The log store's directory inside the coordinator's store.
pub const LOG_STORE: &str = "log-store";

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("setup: {0}")]
    Setup(String),
    #[error(transparent)]
    Log(#[from] AuditLogError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error("round {round}: {reason}")]
    Round { round: u64, reason: String },
    #[error("the coordinator's {task} stopped unexpectedly: {reason}")]
    TaskEnded { task: &'static str, reason: String },
}

struct Shared {
    log: AuditLog,
    membership: Membership,
    round: Option<CoordinatorRound>,
    /// The leaf of the current round's open.
    open_leaf: Option<u64>,
    uploads: HashMap<u8, (SignedEntry, Upload)>,
    connected: u16,
    /// How much of the log each member holds, as it last told us.
    member_sizes: Vec<u64>,
    /// Each member's connections so far, and how many of them a final checkpoint reached: a
    /// node acts only on a checkpoint it is sent, so one restarted holding the whole log would
    /// otherwise wait, its partial decryptions unsent, until the log grows again.
    connections: Vec<u64>,
    acted_connections: Vec<u64>,
    /// Decryption results logged, by request leaf: member -> model digest.
    results: BTreeMap<u64, BTreeMap<u8, Digest>>,
    /// Server steps logged (under an optimizer other than FedAvg), by request leaf.
    steps: BTreeMap<u64, std::collections::BTreeSet<u8>>,
    bytes_received: u64,
    requests_received: BTreeMap<String, u64>,
}

struct Context {
    shared: Mutex<Shared>,
    blobs: BlobStore,
    handle: Handle,
    peers: Vec<PeerId>,
    coordinator_key: SigningKey,
    log_signer: NoteSigner,
    witnesses: Vec<NoteVerifier>,
    plan: RoundPlan,
    limits: DecodeLimits,
    /// The shape of every ciphertext of the plan: contributions, steps and aggregates.
    shape: CiphertextShape,
    metrics: Metrics,
    publish_lock: tokio::sync::Mutex<()>,
    /// A fault to inject, for the resilience suite.
    fault: Option<runtime::fault::Fault>,
    /// Woken whenever a member's request, a connection or an append may have changed `shared`:
    /// the round and the publisher wait on it instead of polling.
    changed: Notify,
}

impl Context {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn member_of(&self, peer: &PeerId) -> Option<u8> {
        self.peers.iter().position(|p| p == peer).map(|i| i as u8)
    }

    /// Signs and appends a coordinator entry; it is acknowledged when this returns.
    fn append_own(
        &self,
        subject: Digest,
        body: Body,
        references: Vec<u64>,
        payload: Option<Digest>,
    ) -> Result<u64, CoordinatorError> {
        let leaf = {
            let mut shared = self.lock();
            let entry = shared
                .log
                .state()
                .draft(&self.coordinator_key, now_ms(), body)
                .about(subject)
                .referencing(references)
                .with_payload(payload)
                .sign(&self.coordinator_key);
            shared.log.append(entry)?
        };
        self.changed.notify_waiters();
        Ok(leaf)
    }

    /// Waits until `check` is done, checking again whenever the shared state may have
    /// changed and at the deadline `check` names: a driver with no sleep-polling.
    async fn wait_for<T>(&self, mut check: impl FnMut(&mut Shared, u64) -> Next<T>) -> T {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next = check(&mut self.lock(), now_ms());
            match next {
                Next::Done(value) => return value,
                Next::Wait(None) => changed.await,
                Next::Wait(Some(deadline_ms)) => {
                    let pause = Duration::from_millis(deadline_ms.saturating_sub(now_ms()));
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

impl Context {
    /// Dials every member not connected, again every `redial_ms`, until `enough` holds (true)
    /// or `give_up` passes (false). Members dial the coordinator too, but a node redials only
    /// once after losing the connection.
    async fn dial_until(
        &self,
        enough: impl Fn(&Shared) -> bool,
        redial_ms: u64,
        give_up: Option<u64>,
    ) -> bool {
        loop {
            let connected = self.lock().connected;
            for (m, peer) in self.peers.iter().enumerate() {
                if connected & (1 << m) == 0 {
                    self.handle.dial(*peer).await;
                }
            }
            let redial = give_up.map_or(now_ms() + redial_ms, |g| (now_ms() + redial_ms).min(g));
            let done = self
                .wait_for(|s, now| {
                    if enough(s) {
                        Next::Done(true)
                    } else if now >= redial {
                        Next::Done(false)
                    } else {
                        Next::Wait(Some(redial))
                    }
                })
                .await;
            if done {
                return true;
            }
            if give_up.is_some_and(|g| now_ms() >= g) {
                return false;
            }
        }
    }
}

/// What a wait's check found: done, or wait for a change or until the deadline (ms).
enum Next<T> {
    Done(T),
    Wait(Option<u64>),
}

fn round_subject(round: u64) -> Digest {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(b"quorate/round\0");
    h.update(round.to_le_bytes());
    h.finalize().into()
}

/// Runs the coordinator until `config.rounds` rounds have run, or until `shutdown` completes:
/// then the round in progress is abandoned (everything logged stays logged, and a restart
/// resumes after it, so members are not told the run is over). Either way the log's last growth
/// is published (for at most ten seconds) and the summary is returned.
pub async fn run(
    config: CoordinatorConfig,
    consortium: Consortium,
    identity: Identity,
    public_key: EncryptionKey,
    ceremony_entries: Vec<SignedEntry>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, CoordinatorError> {
    let setup = |e: &dyn std::fmt::Display| CoordinatorError::Setup(e.to_string());
    let membership = consortium.membership().map_err(|e| setup(&e))?;
    let origin = consortium.log_origin();
    std::fs::create_dir_all(&config.store)
        .map_err(|e| setup(&format!("creating {}: {e}", config.store.display())))?;
    let log = AuditLog::open_or_bootstrap(
        &config.store.join(LOG_STORE),
        &consortium,
        &identity.signing,
        &ceremony_entries,
        now_ms(),
    )?;
    let config_threshold = consortium.config();
    let budget: Budget = config
        .plan
        .budget(config_threshold)
        .map_err(|e| setup(&e))?;
    let log_signer =
        NoteSigner::new(&origin, ED25519, identity.second.clone()).map_err(|e| setup(&e))?;
    let (_, witnesses) = checkpoint_verifiers(&origin, &membership).map_err(|e| setup(&e))?;
    let peers = transport::consortium_peers(&consortium)?;
    let (listen_peer, listen) = peers[0].clone();
    if listen_peer != identity.peer_id() {
        return Err(setup(
            &"the consortium lists another PeerId for the coordinator",
        ));
    }
    let member_peers: Vec<PeerId> = peers[1..].iter().map(|(p, _)| *p).collect();
    let (handle, events) = transport::spawn(
        identity.keypair(),
        TransportConfig {
            protocol: PROTOCOL,
            max_message: MAX_MESSAGE_BYTES,
            request_timeout: Duration::from_secs(120),
            listen,
            peers: peers[1..].to_vec(),
        },
    )?;
    let members = membership.members.len();
    let metrics = Metrics::default();
    if let Some(address) = &config.metrics {
        metrics.serve(address).await.map_err(|e| setup(&e))?;
    }
    let ctx = Arc::new(Context {
        shared: Mutex::new(Shared {
            log,
            membership: membership.clone(),
            round: None,
            open_leaf: None,
            uploads: HashMap::new(),
            connected: 0,
            member_sizes: vec![0; members],
            connections: vec![0; members],
            acted_connections: vec![0; members],
            results: BTreeMap::new(),
            steps: BTreeMap::new(),
            bytes_received: 0,
            requests_received: BTreeMap::new(),
        }),
        blobs: BlobStore::open(&config.store.join("ciphertexts"))?,
        handle,
        peers: member_peers,
        coordinator_key: identity.signing.clone(),
        log_signer,
        witnesses,
        plan: config.plan.clone(),
        limits: DecodeLimits {
            max_values: u64::from(config.plan.values),
        },
        shape: budget.ciphertext_shape_under(config.plan.values as usize, public_key.secrets()),
        metrics,
        publish_lock: tokio::sync::Mutex::new(()),
        changed: Notify::new(),
        fault: config.fault.clone(),
    });

    // The background tasks: network events (requests answered in their own tasks,
    // connections tracked) and the publisher. If either ends, the run ends with an error.
    let mut background = JoinSet::new();
    background.spawn(serve_events(ctx.clone(), events));
    background.spawn(publisher(ctx.clone()));
    let result = drive(&ctx, &config, &public_key, &mut background, shutdown).await;
    background.abort_all();
    result
}

/// Network events: each request is answered in its own task (a task that panics is logged,
/// never lost silently); connections and disconnections update the round.
async fn serve_events(
    ctx: Arc<Context>,
    mut events: tokio::sync::mpsc::Receiver<Event>,
) -> &'static str {
    let mut answering = JoinSet::new();
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return "network event loop" };
                on_event(&ctx, event, &mut answering);
            }
            Some(done) = answering.join_next(), if !answering.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "answering a request failed");
                }
            }
        }
    }
}

fn on_event(ctx: &Arc<Context>, event: Event, answering: &mut JoinSet<()>) {
    match event {
        Event::Request { peer, bytes, reply } => {
            let ctx = ctx.clone();
            answering.spawn(async move {
                transport::answer(bytes, reply, |request| {
                    handle_request(ctx.clone(), peer, request)
                })
                .await;
                ctx.changed.notify_waiters();
            });
        }
        Event::Connected(peer) => {
            if let Some(m) = ctx.member_of(&peer) {
                tracing::info!(member = m, %peer, "member connected");
                let connected = {
                    let mut s = ctx.lock();
                    s.connected |= 1 << m;
                    s.connections[usize::from(m)] += 1;
                    s.connected.count_ones()
                };
                ctx.metrics.set_connected(connected);
                ctx.changed.notify_waiters();
            }
        }
        Event::Disconnected(peer) => {
            if let Some(m) = ctx.member_of(&peer) {
                tracing::warn!(member = m, %peer, "member disconnected");
                let connected = {
                    let mut shared = ctx.lock();
                    shared.connected &= !(1 << m);
                    if let Some(round) = shared.round.as_mut() {
                        round.member_failed(m);
                    }
                    shared.connected.count_ones()
                };
                ctx.metrics.set_connected(connected);
                ctx.changed.notify_waiters();
            }
        }
    }
}

/// Connects, runs the rounds and lets the log settle; stops early on `shutdown` or when a
/// background task ends.
async fn drive(
    ctx: &Arc<Context>,
    config: &CoordinatorConfig,
    public_key: &EncryptionKey,
    background: &mut JoinSet<&'static str>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, CoordinatorError> {
    tokio::pin!(shutdown);
    let mut summary = RunSummary::default();
    let work = async {
        connect(ctx, config).await;
        run_rounds(ctx, config, public_key, &mut summary.rounds).await?;
        settle(ctx).await;
        Ok::<_, CoordinatorError>(())
    };
    tokio::select! {
        done = work => done?,
        () = &mut shutdown => {
            tracing::warn!("stopping on request: the round in progress, if any, is abandoned");
            summary.interrupted = true;
            // What was logged is witnessed and published before the coordinator goes.
            settle(ctx).await;
        }
        Some(ended) = background.join_next() => {
            return Err(CoordinatorError::TaskEnded {
                task: ended.as_ref().map_or("background task", |name| name),
                reason: match ended {
                    Ok(_) => "it returned".into(),
                    Err(e) => e.to_string(),
                },
            });
        }
    }
    let _guard = ctx.publish_lock.lock().await;
    // A coordinator stopped by a signal will be back: members keep waiting for it.
    if !summary.interrupted {
        announce_finished(ctx).await;
    }
    summary.log_size = ctx.lock().log.state().size();
    summary.peak_memory_bytes = peak_memory();
    summary.cpu_seconds = runtime::process::CpuSeconds::of_this_process();
    summary.requests_received = ctx.lock().requests_received.clone();
    Ok(summary)
}

/// Tells every connected member that the run is over (all its rounds done), so that members
/// exit instead of waiting for rounds that will not come; best effort: a member that misses it
/// keeps waiting for a coordinator to come back, as before.
async fn announce_finished(ctx: &Context) {
    let last_round = next_round(&ctx.lock().log) - 1;
    let connected = ctx.lock().connected;
    let finished = Request::Finished { last_round };
    let calls = ctx
        .peers
        .iter()
        .enumerate()
        .filter(|(m, _)| connected & (1 << m) != 0)
        .map(|(_, peer)| ctx.handle.call(*peer, &finished));
    let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(calls)).await;
}

/// Dials every member until all are connected or the startup timeout passes (members dial
/// us too).
async fn connect(ctx: &Context, config: &CoordinatorConfig) {
    let members = ctx.peers.len();
    let everyone: u16 = ((1u32 << members) - 1) as u16;
    let give_up = now_ms() + config.startup_timeout_secs * 1000;
    ctx.dial_until(|s| s.connected == everyone, 1000, Some(give_up))
        .await;
    let connected = ctx.lock().connected;
    tracing::info!(
        connected = connected.count_ones(),
        members,
        "starting rounds"
    );
}

/// The rounds up to the configured total, from the one after the last the log opened (so a
/// restart resumes), never past the round plan's.
async fn run_rounds(
    ctx: &Arc<Context>,
    config: &CoordinatorConfig,
    public_key: &EncryptionKey,
    done: &mut Vec<RoundSummary>,
) -> Result<(), CoordinatorError> {
    let first_round = next_round(&ctx.lock().log);
    let mut rng = rand::rngs::OsRng;
    let plan = RunPlan::new(first_round, config.rounds, ctx.plan.rounds);
    for message in plan.messages() {
        tracing::info!("{message}");
    }
    let last_round = plan.last;
    let interval = Duration::from_millis(config.round_interval_ms);
    let mut opened: Option<tokio::time::Instant> = None;
    finish_unfinished_round(ctx, config, public_key, &mut rng, done).await?;
    for round in first_round..=last_round {
        if let Some(at) = opened {
            tokio::time::sleep_until(at + interval).await;
        }
        opened = Some(tokio::time::Instant::now());
        let result = run_round(ctx, config, public_key, round, &mut rng).await?;
        ctx.metrics.round_finished(&result);
        done.push(result);
        finish_unfinished_round(ctx, config, public_key, &mut rng, done).await?;
    }
    Ok(())
}

/// Finishes a round left partly released (`round::finish_unfinished`); its summary replaces
/// the one this run wrote for it, if any.
async fn finish_unfinished_round(
    ctx: &Arc<Context>,
    config: &CoordinatorConfig,
    public_key: &EncryptionKey,
    rng: &mut impl RngCore,
    done: &mut Vec<RoundSummary>,
) -> Result<(), CoordinatorError> {
    let Some(finished) = round::finish_unfinished(ctx, config, public_key, rng).await? else {
        return Ok(());
    };
    // A round this run already counted (it gave up on it live) is not counted twice.
    if done.iter().all(|r| r.round != finished.round) {
        ctx.metrics.round_finished(&finished);
    }
    done.retain(|r| r.round != finished.round);
    done.push(finished);
    Ok(())
}

/// Which rounds a run takes: up to the configured total `rounds`, resuming after the last
/// round the log opened, never past the round plan's (its noise and smudging budget covers
/// that many rounds of one key, and members refuse any later round).
#[derive(Clone, Debug, PartialEq, Eq)]
struct RunPlan {
    first: u64,
    last: u64,
    configured: u64,
    plan_rounds: u64,
}

impl RunPlan {
    fn new(first: u64, configured: u64, plan_rounds: u32) -> Self {
        let plan_rounds = u64::from(plan_rounds);
        Self {
            first,
            last: configured.min(plan_rounds),
            configured,
            plan_rounds,
        }
    }

    /// What the coordinator tells its admin before it starts.
    fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.configured > self.plan_rounds {
            out.push(format!(
                "rounds = {} but the round plan covers {} rounds of one key: stopping after \
                 round {}",
                self.configured, self.plan_rounds, self.plan_rounds
            ));
        }
        if self.first > self.last {
            out.push(if self.first > self.plan_rounds {
                format!(
                    "the round plan's {} rounds are all done: more rounds need a new plan and a \
                     new key (a new ceremony)",
                    self.plan_rounds
                )
            } else {
                format!(
                    "all {} rounds of this run are done (the log's last round is {}): raise \
                     `rounds` to run more",
                    self.last,
                    self.first - 1
                )
            });
        } else if self.first > 1 {
            out.push(format!(
                "resuming at round {} (rounds 1 to {} are in the log), up to round {}",
                self.first,
                self.first - 1,
                self.last
            ));
        }
        out
    }
}

/// Lets the last entries be witnessed and published: waits (at most ten seconds) until every
/// member holds the whole log, every connected member logged its result of the last
/// decryption (and its server step, under an optimizer other than FedAvg), and half a second has passed since then with no growth (members append results
/// and incidents after each checkpoint they act on, which reaches them after they cosigned it).
async fn settle(ctx: &Context) {
    let give_up = now_ms() + 10_000;
    // Since when the log has been whole at every member without growing.
    let mut quiet_since: Option<(u64, u64)> = None;
    ctx.wait_for(|s, now| {
        let size = s.log.state().size();
        // Every member holds the whole log, and every connected member logged its result of
        // the last decryption (one catching up after a restart fetches what it needs from here).
        let last_request = s.results.keys().max().copied();
        // Under a server optimizer a member's part ends with its step: a later run builds on
        // the step t members logged alike.
        let stepped = |r: u64, m: u8| {
            ctx.plan.optimizer.is_fedavg() || s.steps.get(&r).is_some_and(|set| set.contains(&m))
        };
        let combined = |m: usize| {
            last_request
                .is_none_or(|r| s.results[&r].contains_key(&(m as u8)) && stepped(r, m as u8))
        };
        let synced = s.member_sizes.iter().all(|&m| m >= size)
            && (0..s.member_sizes.len()).all(|m| s.connected & (1 << m) == 0 || combined(m));
        quiet_since = match quiet_since {
            Some((since, at_size)) if synced && at_size == size => Some((since, at_size)),
            _ if synced => Some((now, size)),
            _ => None,
        };
        match quiet_since {
            _ if now >= give_up => Next::Done(()),
            Some((since, _)) if now >= since + 500 => Next::Done(()),
            Some((since, _)) => Next::Wait(Some((since + 500).min(give_up))),
            None => Next::Wait(Some(give_up)),
        }
    })
    .await
}

fn next_round(log: &AuditLog) -> u64 {
    log.state()
        .leaves()
        .iter()
        .filter_map(|leaf| SignedEntry::open(leaf).ok())
        .filter_map(|e| match e.entry.body {
            Body::RoundOpen { round, .. } => Some(round),
            _ => None,
        })
        .max()
        .map_or(1, |r| r + 1)
}

/// The encrypted model the next round builds on (by the log's round rules: the aggregate of
/// the latest round whose whole quorum released), and the decoded model's digest members
/// logged for it.
fn base_model(ctx: &Context) -> (Digest, Digest) {
    let shared = ctx.lock();
    let state = shared.log.state();
    let Some(rules) = state.rounds() else {
        return (ZERO_BASE, [0; 32]);
    };
    let (base, base_round) = (rules.base(), rules.base_round());
    if let Some(model) = rules.base_model() {
        return (base, model);
    }
    let model = state
        .leaves()
        .iter()
        .filter_map(|l| SignedEntry::open(l).ok())
        .find_map(|e| match e.entry.body {
            Body::DecryptionResult { request, model, .. }
                if rules
                    .request(request)
                    .is_some_and(|r| r.round == base_round) =>
            {
                Some(model)
            }
            _ => None,
        })
        .unwrap_or([0; 32]);
    (base, model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_is_a_total_that_resumes_and_stops_at_the_plan() {
        // A fresh run of 30 under a plan of 50.
        let fresh = RunPlan::new(1, 30, 50);
        assert_eq!((fresh.first, fresh.last), (1, 30));
        assert!(fresh.messages().is_empty());
        // Restarted after round 5 with rounds = 30: rounds 6 to 30, not 6 to 35.
        let resumed = RunPlan::new(6, 30, 50);
        assert_eq!((resumed.first, resumed.last), (6, 30));
        assert_eq!(
            resumed.messages(),
            ["resuming at round 6 (rounds 1 to 5 are in the log), up to round 30"]
        );
        // Never past the plan, whatever `rounds` says.
        let capped = RunPlan::new(49, 60, 50);
        assert_eq!((capped.first, capped.last), (49, 50));
        assert!(capped.messages()[0].contains("stopping after round 50"));
        let spent = RunPlan::new(51, 60, 50);
        assert!(spent.first > spent.last);
        assert!(spent.messages()[1].contains("all done"));
        // Everything configured already ran.
        let done = RunPlan::new(31, 30, 50);
        assert!(done.messages()[0].contains("raise `rounds`"));
    }
}
