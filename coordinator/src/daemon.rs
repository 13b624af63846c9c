//! `quorate coordinator run`: the coordinator's process. It opens rounds, takes contributions
//! in chunks onto disk, aggregates them into the next encrypted model one contribution at a
//! time, names a quorum, retries with a re-randomised ciphertext when a quorum member fails,
//! and runs the audit log: every step is appended before it takes effect and every growth of
//! the log is witnessed by the members and published with their cosignatures.
//!
//! It never holds a plaintext or a partial decryption: members send partial decryptions only
//! to each other, and a partial-decryption message addressed here is refused unread.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use protocol::audit::entry::{Body, Digest, Entry, Membership, SignedEntry};
use protocol::audit::log::checkpoint_verifiers;
use protocol::audit::note::{ED25519, Note, NoteSigner, NoteVerifier, SignatureLine};
use protocol::consortium::Consortium;
use protocol::he::{Budget, Ciphertext, EncryptionKey};
use protocol::round::message::{MAX_ENTRIES_PER_MESSAGE, MAX_MESSAGE_BYTES, Request, Response};
use protocol::round::rules::ZERO_BASE;
use protocol::round::{CloseDecision, CoordinatorRound, DecryptionStatus, RoundPlan};
use protocol::wire::{DecodeLimits, ciphertext_digest, encode_ciphertext};
use rand::RngCore;
use runtime::clock::now_ms;
use runtime::identity::Identity;
use runtime::transport::{self, Event, Handle, TransportConfig};

use crate::audit_log::{AuditLog, AuditLogError};
use crate::blobs::{BlobError, BlobStore, Upload};
use crate::config::CoordinatorConfig;
use crate::metrics::Metrics;

mod publish;
mod requests;

use publish::publish;
use requests::handle_request;

pub const PROTOCOL: &str = "/quorate/round/1";
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
}

/// What a finished run reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    pub rounds: Vec<RoundSummary>,
    pub log_size: u64,
    /// The process's peak resident memory, where the platform reports it.
    pub peak_memory_bytes: Option<u64>,
    /// Every request members sent, by kind: what the coordinator was ever handed.
    pub requests_received: BTreeMap<String, u64>,
}

/// The peak resident set size of this process (Linux), in bytes.
pub fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RoundSummary {
    pub round: u64,
    pub contributors: u32,
    pub decrypted: bool,
    pub attempts: u8,
    pub model: Option<String>,
    pub collect_seconds: f64,
    pub aggregate_seconds: f64,
    pub decrypt_seconds: f64,
    pub total_seconds: f64,
    pub bytes_received: u64,
}

struct Shared {
    log: AuditLog,
    membership: Membership,
    round: Option<CoordinatorRound>,
    uploads: HashMap<u8, (SignedEntry, Upload)>,
    connected: u16,
    /// How much of the log each member holds, as it last told us.
    member_sizes: Vec<u64>,
    /// Decryption results logged, by request leaf: member -> model digest.
    results: BTreeMap<u64, BTreeMap<u8, Digest>>,
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
    log_verifier: NoteVerifier,
    witnesses: Vec<NoteVerifier>,
    plan: RoundPlan,
    limits: DecodeLimits,
    delta_bits: u32,
    metrics: Metrics,
    publish_lock: tokio::sync::Mutex<()>,
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
        let mut shared = self.lock();
        let author = self.coordinator_key.verifying_key().to_bytes();
        let entry = Entry {
            origin: shared.log.state().origin().to_owned(),
            config_epoch: 1,
            author,
            sequence: shared.log.state().next_sequence(&author),
            subject,
            references,
            payload,
            claimed_time_ms: now_ms(),
            body,
        }
        .sign(&self.coordinator_key);
        Ok(shared.log.append(entry)?)
    }
}

fn round_subject(round: u64) -> Digest {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(b"quorate/round\0");
    h.update(round.to_le_bytes());
    h.finalize().into()
}

/// Runs the coordinator until `config.rounds` rounds have run.
pub async fn run(
    config: CoordinatorConfig,
    consortium: Consortium,
    identity: Identity,
    public_key: EncryptionKey,
    ceremony_entries: Vec<Vec<u8>>,
) -> Result<RunSummary, CoordinatorError> {
    let setup = |e: &dyn std::fmt::Display| CoordinatorError::Setup(e.to_string());
    let membership = consortium.membership().map_err(|e| setup(&e))?;
    let origin = consortium.log_origin();
    std::fs::create_dir_all(&config.store)
        .map_err(|e| setup(&format!("creating {}: {e}", config.store.display())))?;
    let mut log = AuditLog::open(&config.store.join(LOG_STORE), &origin)?;
    if log.state().size() == 0 {
        // A new log: the approved membership, then every member's ceremony entries.
        let entry = Entry {
            origin: origin.clone(),
            config_epoch: 1,
            author: identity.signing.verifying_key().to_bytes(),
            sequence: 0,
            subject: consortium.digest(),
            references: vec![],
            payload: None,
            claimed_time_ms: now_ms(),
            body: Body::Membership(membership.clone()),
        }
        .sign(&identity.signing);
        log.append(entry)?;
        for leaf in &ceremony_entries {
            let entry =
                SignedEntry::open(leaf).map_err(|e| setup(&format!("a ceremony entry: {e}")))?;
            log.append(entry)?;
        }
    }
    if log.state().membership() != Some(&membership) {
        return Err(setup(&"the log store belongs to another consortium"));
    }
    let config_threshold = consortium.config();
    let budget: Budget = config
        .plan
        .budget(config_threshold)
        .map_err(|e| setup(&e))?;
    let log_signer =
        NoteSigner::new(&origin, ED25519, identity.second.clone()).map_err(|e| setup(&e))?;
    let (log_verifier, witnesses) =
        checkpoint_verifiers(&origin, &membership).map_err(|e| setup(&e))?;
    let peers = transport::consortium_peers(&consortium)?;
    let (listen_peer, listen) = peers[0].clone();
    if listen_peer != identity.peer_id() {
        return Err(setup(
            &"the consortium lists another PeerId for the coordinator",
        ));
    }
    let member_peers: Vec<PeerId> = peers[1..].iter().map(|(p, _)| *p).collect();
    let (handle, mut events) = transport::spawn(
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
            uploads: HashMap::new(),
            connected: 0,
            member_sizes: vec![0; members],
            results: BTreeMap::new(),
            bytes_received: 0,
            requests_received: BTreeMap::new(),
        }),
        blobs: BlobStore::open(&config.store.join("ciphertexts"))?,
        handle,
        peers: member_peers,
        coordinator_key: identity.signing.clone(),
        log_signer,
        log_verifier,
        witnesses,
        plan: config.plan.clone(),
        limits: DecodeLimits {
            max_values: u64::from(config.plan.values),
        },
        delta_bits: budget.delta_bits(),
        metrics,
        publish_lock: tokio::sync::Mutex::new(()),
    });

    // Network events: requests are answered in their own tasks; connections are tracked.
    let events_ctx = ctx.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                Event::Request { peer, bytes, reply } => {
                    let ctx = events_ctx.clone();
                    tokio::spawn(async move {
                        transport::answer(bytes, reply, |request| {
                            handle_request(ctx, peer, request)
                        })
                        .await;
                    });
                }
                Event::Connected(peer) => {
                    if let Some(m) = events_ctx.member_of(&peer) {
                        tracing::info!(member = m, %peer, "member connected");
                        events_ctx.lock().connected |= 1 << m;
                    }
                }
                Event::Disconnected(peer) => {
                    if let Some(m) = events_ctx.member_of(&peer) {
                        tracing::warn!(member = m, %peer, "member disconnected");
                        let mut shared = events_ctx.lock();
                        shared.connected &= !(1 << m);
                        if let Some(round) = shared.round.as_mut() {
                            round.member_failed(m);
                        }
                    }
                }
            }
        }
    });
    // The publisher: whenever the log grows, have it witnessed and published.
    let publisher = ctx.clone();
    tokio::spawn(async move {
        let mut published = 0;
        let mut attempted = 0;
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (size, lagging) = {
                let s = publisher.lock();
                let size = s.log.state().size();
                let lagging = (0..s.member_sizes.len())
                    .any(|m| s.connected & (1 << m) != 0 && s.member_sizes[m] < size);
                (size, lagging)
            };
            // New entries at once; a checkpoint short of the witness quorum again within half
            // a second; a member that (re)connected behind, within a second.
            let due = size != attempted
                || (size != published && last.elapsed() > Duration::from_millis(500))
                || (lagging && last.elapsed() > Duration::from_secs(1));
            if due {
                last = Instant::now();
                attempted = size;
                match publish(&publisher).await {
                    Ok(true) => published = size,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "publishing the log failed"),
                }
            }
        }
    });

    // Members dial us, and we dial them.
    let everyone: u16 = ((1u32 << members) - 1) as u16;
    let started = Instant::now();
    loop {
        for peer in &ctx.peers {
            ctx.handle.dial(*peer).await;
        }
        let connected = ctx.lock().connected;
        if connected == everyone
            || started.elapsed() > Duration::from_secs(config.startup_timeout_secs)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connected = ctx.lock().connected;
    tracing::info!(
        connected = connected.count_ones(),
        members,
        "starting rounds"
    );

    let mut summary = RunSummary::default();
    let first_round = next_round(&ctx.lock().log);
    let mut rng = rand::rngs::OsRng;
    // The plan's budget covers `plan.rounds` rounds of one key, and members refuse any later
    // round: never open one.
    let last_round = (first_round + config.rounds)
        .saturating_sub(1)
        .min(u64::from(ctx.plan.rounds));
    if first_round > last_round {
        tracing::warn!(
            plan_rounds = ctx.plan.rounds,
            next = first_round,
            "the round plan's rounds are all done: a new plan (and key) is needed for more"
        );
    }
    for round in first_round..=last_round {
        let result = run_round(&ctx, &config, &budget, &public_key, round, &mut rng).await?;
        ctx.metrics.round_finished(&result);
        summary.rounds.push(result);
    }
    // Let the last entries be witnessed and published: wait (a little) until every member
    // holds the whole log and the log has stopped growing (members append results and
    // incidents after each checkpoint they act on).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stable_since = (Instant::now(), ctx.lock().log.state().size());
    while Instant::now() < deadline {
        let (sizes, size) = {
            let s = ctx.lock();
            (s.member_sizes.clone(), s.log.state().size())
        };
        if size != stable_since.1 {
            stable_since = (Instant::now(), size);
        }
        let synced = sizes.iter().all(|&m| m >= size);
        if synced && stable_since.0.elapsed() > Duration::from_millis(500) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _guard = ctx.publish_lock.lock().await;
    summary.log_size = ctx.lock().log.state().size();
    summary.peak_memory_bytes = peak_memory();
    summary.requests_received = ctx.lock().requests_received.clone();
    Ok(summary)
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

async fn run_round(
    ctx: &Arc<Context>,
    config: &CoordinatorConfig,
    budget: &Budget,
    public_key: &EncryptionKey,
    round: u64,
    rng: &mut impl RngCore,
) -> Result<RoundSummary, CoordinatorError> {
    let started = Instant::now();
    let mut summary = RoundSummary {
        round,
        ..Default::default()
    };
    let (base, model) = base_model(ctx);
    let (expected, membership) = {
        let s = ctx.lock();
        (s.connected, s.membership.clone())
    };
    let deadline_ms = now_ms() + config.round_deadline_secs * 1000;
    let subject = round_subject(round);
    let bytes_before = ctx.lock().bytes_received;
    ctx.lock().round = Some(CoordinatorRound::open(
        round,
        &membership,
        ctx.plan.clone(),
        expected,
        deadline_ms,
    ));
    ctx.append_own(
        subject,
        Body::RoundOpen {
            round,
            model,
            base,
            deadline_ms,
            expected,
        },
        vec![],
        Some(ctx.plan.digest()),
    )?;
    tracing::info!(round, expected = expected.count_ones(), "round open");

    // Collect until everyone contributed or the deadline.
    let decision = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let decision = ctx
            .lock()
            .round
            .as_ref()
            .map_or(CloseDecision::Wait, |r| r.poll_close(now_ms()));
        if decision != CloseDecision::Wait {
            break decision;
        }
    };
    summary.collect_seconds = started.elapsed().as_secs_f64();
    if let CloseDecision::Fail { contributors } = decision {
        tracing::warn!(
            round,
            contributors,
            "round failed: fewer than k_min contributions"
        );
        ctx.append_own(
            subject,
            Body::Incident {
                code: 1,
                evidence: subject,
                description: format!(
                    "round {round} closed with {contributors} contributions, fewer than k_min"
                ),
            },
            vec![],
            None,
        )?;
        summary.contributors = contributors as u32;
        summary.total_seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }

    // Close: aggregate onto the previous encrypted model, store, log.
    let aggregate_started = Instant::now();
    // Closed first, under the same lock, so that no contribution is logged after the terms are
    // taken: the log refuses a close that leaves a logged contribution out.
    let close_terms = {
        let mut s = ctx.lock();
        let round = s.round.as_mut().expect("open");
        round.closed();
        round.close_terms()
    };
    let protocol::round::machine::CloseTerms { leaves, terms } = match close_terms {
        Ok(terms) => terms,
        Err(e) => {
            // The contributions cannot be weighed under the plan (sample counts too uneven):
            // nothing is decrypted this round.
            tracing::warn!(round, error = %e, "round not closed");
            ctx.append_own(
                subject,
                Body::Incident {
                    code: 3,
                    evidence: subject,
                    description: format!("round {round} not closed: {e}"),
                },
                vec![],
                None,
            )?;
            summary.total_seconds = started.elapsed().as_secs_f64();
            return Ok(summary);
        }
    };
    summary.contributors = leaves.len() as u32;
    let aggregate = {
        let ctx = ctx.clone();
        let delta = budget.delta_bits();
        let values = ctx.plan.values as usize;
        tokio::task::spawn_blocking(move || -> Result<Ciphertext, CoordinatorError> {
            let mut acc = match (base != ZERO_BASE).then_some(base) {
                Some(digest) => {
                    protocol::wire::decode_ciphertext(&ctx.blobs.read(&digest)?, ctx.limits)
                        .map_err(|e| CoordinatorError::Round {
                            round,
                            reason: format!("the stored model ciphertext: {e}"),
                        })?
                }
                None => Ciphertext::zero(values, delta),
            };
            protocol::round::policy::aggregate(&mut acc, &terms, ctx.limits, |d| ctx.blobs.read(d))
                .map_err(|e| CoordinatorError::Round {
                    round,
                    reason: e.to_string(),
                })?;
            Ok(acc)
        })
        .await
        .map_err(|e| CoordinatorError::Round {
            round,
            reason: e.to_string(),
        })??
    };
    let aggregate_digest = ctx.blobs.put(&encode_ciphertext(&aggregate))?;
    debug_assert_eq!(ciphertext_digest(&aggregate).0, aggregate_digest);
    let close = ctx.append_own(
        subject,
        Body::RoundClose {
            round,
            base,
            contributions: leaves.clone(),
            aggregate: aggregate_digest,
        },
        leaves,
        Some(aggregate_digest),
    )?;
    summary.aggregate_seconds = aggregate_started.elapsed().as_secs_f64();
    tracing::info!(round, contributors = summary.contributors, "round closed");

    // Decrypt: a quorum of connected members, retried with re-randomised ciphertexts.
    let decrypt_started = Instant::now();
    let release_timeout_ms = config.release_timeout_secs * 1000;
    let mut attempt = 0u8;
    let mut quorum = {
        let s = ctx.lock();
        s.round.as_ref().expect("open").choose_quorum(s.connected)
    }
    .ok_or_else(|| CoordinatorError::Round {
        round,
        reason: "too few members connected to form a quorum".into(),
    })?;
    let mut target = aggregate_digest;
    let mut seed = [0u8; 32];
    let mut request = close;
    let mut requested_quorum = quorum;
    loop {
        let appended = ctx.append_own(
            subject,
            Body::DecryptionRequest {
                round,
                close,
                ciphertext: target,
                quorum,
                attempt,
                seed,
            },
            vec![close],
            Some(target),
        );
        request = match appended {
            Ok(leaf) => leaf,
            // The last release of the previous attempt arrived while the retry was being
            // prepared: the round is decrypted, and the log refuses a retry after that.
            Err(_) if attempt > 0 && previous_attempt_completed(ctx, request) => {
                tracing::info!(round, "the previous attempt completed; no retry");
                attempt -= 1;
                break;
            }
            Err(e) => return Err(e),
        };
        requested_quorum = quorum;
        ctx.lock()
            .round
            .as_mut()
            .expect("open")
            .requested(request, attempt, quorum, now_ms());
        tracing::info!(
            round,
            attempt,
            quorum = format!("{quorum:#b}"),
            "decryption requested"
        );
        let status = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut s = ctx.lock();
            let connected = s.connected;
            let status = s.round.as_mut().expect("open").poll_decryption(
                now_ms(),
                connected,
                release_timeout_ms,
            );
            if status != DecryptionStatus::Waiting {
                break status;
            }
        };
        match status {
            DecryptionStatus::Released => break,
            DecryptionStatus::Retry {
                attempt: next,
                quorum: next_quorum,
            } => {
                tracing::warn!(round, attempt = next, "a quorum member failed: retrying");
                rng.fill_bytes(&mut seed);
                let mut retried = aggregate.clone();
                public_key.rerandomize(&mut retried, seed).map_err(|e| {
                    CoordinatorError::Round {
                        round,
                        reason: e.to_string(),
                    }
                })?;
                target = ctx.blobs.put(&encode_ciphertext(&retried))?;
                attempt = next;
                quorum = next_quorum;
            }
            DecryptionStatus::GiveUp(reason) => {
                tracing::error!(round, %reason, "decryption abandoned");
                ctx.append_own(
                    subject,
                    Body::Incident {
                        code: 2,
                        evidence: target,
                        description: reason,
                    },
                    vec![request],
                    None,
                )?;
                summary.attempts = attempt + 1;
                summary.total_seconds = started.elapsed().as_secs_f64();
                return Ok(summary);
            }
            DecryptionStatus::Waiting => unreachable!("the loop above waits"),
        }
    }
    summary.attempts = attempt + 1;
    // Wait for the members' results (every connected member combines and logs one).
    let wait_until = Instant::now() + Duration::from_millis(release_timeout_ms);
    loop {
        let (results, connected) = {
            let s = ctx.lock();
            (
                s.results.get(&request).cloned().unwrap_or_default(),
                s.connected,
            )
        };
        let quorum_done = (0..16u8)
            .filter(|m| requested_quorum & (1 << m) != 0)
            .all(|m| results.contains_key(&m));
        let everyone_done = (0..16u8)
            .filter(|m| connected & (1 << m) != 0)
            .all(|m| results.contains_key(&m));
        if everyone_done || (quorum_done && Instant::now() > wait_until) {
            summary.decrypted = quorum_done;
            summary.model = results.values().next().map(hex::encode);
            break;
        }
        if Instant::now() > wait_until + Duration::from_millis(release_timeout_ms) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    summary.decrypt_seconds = decrypt_started.elapsed().as_secs_f64();
    summary.total_seconds = started.elapsed().as_secs_f64();
    summary.bytes_received = ctx.lock().bytes_received - bytes_before;
    tracing::info!(
        round,
        decrypted = summary.decrypted,
        seconds = format!("{:.2}", summary.total_seconds),
        "round finished"
    );
    Ok(summary)
}

/// Whether the whole quorum of the request at `leaf` released, by the log's round rules.
fn previous_attempt_completed(ctx: &Context, leaf: u64) -> bool {
    ctx.lock()
        .log
        .state()
        .rounds()
        .and_then(|rules| rules.request(leaf))
        .is_some_and(|r| r.complete())
}
