//! One round, step by step: open on the base the log's rules name, collect until everyone
//! contributed or the deadline, close onto the aggregate, have a quorum decrypt it (retrying
//! with a re-randomised ciphertext when a quorum member fails), and wait for the members'
//! results. Each step waits on the round machine's next deadline and on the members' requests,
//! never on a timer of its own.

use super::*;
use runtime::fault::{Step, abort_if, jump_clock_if};

/// Runs round `round` and reports it. A round with too few contributions, weights the plan
/// cannot express, or no quorum left after the retries is logged as an incident and reported
/// undecrypted; too few members connected to name a first quorum ends the run with an error.
pub(super) async fn run_round(
    ctx: &Arc<Context>,
    config: &CoordinatorConfig,
    public_key: &EncryptionKey,
    round: u64,
    rng: &mut impl RngCore,
) -> Result<RoundSummary, CoordinatorError> {
    let started = Instant::now();
    let mut summary = RoundSummary {
        round,
        ..Default::default()
    };
    enough_members(ctx, round).await;
    await_server_step(ctx, round).await;
    let bytes_before = ctx.lock().bytes_received;
    let (base, subject) = open(ctx, config, round)?;

    let decision = collect(ctx).await;
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
                code: IncidentCode::TooFewContributions.number(),
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

    let aggregate_started = Instant::now();
    ctx.metrics.step(round, RoundStep::Closing, now_ms());
    let Some(closed) = close(ctx, round, base, subject).await? else {
        summary.total_seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    };
    summary.contributors = closed.contributors;
    summary.aggregate_seconds = aggregate_started.elapsed().as_secs_f64();
    tracing::info!(round, contributors = summary.contributors, "round closed");

    let decrypt_started = Instant::now();
    ctx.metrics.step(round, RoundStep::Decrypting, now_ms());
    let release_timeout_ms = config.release_timeout_secs * 1000;
    let outcome = decrypt(ctx, public_key, round, &closed, release_timeout_ms, rng).await?;
    summary.attempts = outcome.attempts;
    if let Some((request, quorum)) = outcome.released {
        abort_if(ctx.fault.as_ref(), Step::Results, round);
        ctx.metrics
            .step(round, RoundStep::AwaitingResults, now_ms());
        let (decrypted, model) = await_results(ctx, request, quorum, release_timeout_ms).await;
        summary.decrypted = decrypted;
        summary.model = model;
        summary.decrypt_seconds = decrypt_started.elapsed().as_secs_f64();
    }
    summary.total_seconds = started.elapsed().as_secs_f64();
    summary.bytes_received = ctx.lock().bytes_received - bytes_before;
    ctx.metrics.step(round, RoundStep::Idle, now_ms());
    tracing::info!(
        round,
        decrypted = summary.decrypted,
        seconds = format!("{:.2}", summary.total_seconds),
        "round finished"
    );
    Ok(summary)
}

/// Members a round needs connected: its checkpoints need the witness quorum of cosignatures
/// before members act on them, and the round needs `k_min` contributions.
fn members_needed(membership: &Membership) -> u32 {
    u32::from(membership.witness_quorum.max(membership.k_min))
}

/// Waits until enough members are connected for a round to complete, saying why it waits: a
/// round opened without them would only throw its contributions away.
async fn enough_members(ctx: &Context, round: u64) {
    let (connected, needed, members) = {
        let s = ctx.lock();
        (
            s.connected.count_ones(),
            members_needed(&s.membership),
            s.membership.members.len(),
        )
    };
    if connected >= needed {
        return;
    }
    ctx.metrics
        .step(round, RoundStep::WaitingForMembers, now_ms());
    tracing::warn!(
        round,
        connected,
        members,
        needed,
        "waiting for members: checkpoints need the witness quorum of cosignatures and a round \
         k_min contributions, so round {round} opens when {needed} of {members} are connected"
    );
    // Members that went away are dialled again every two seconds.
    ctx.dial_until(
        |s| s.connected.count_ones() >= members_needed(&s.membership),
        2000,
        None,
    )
    .await;
    tracing::info!(round, "enough members connected: opening the round");
}

/// Why a decryption was abandoned, with the real cause when too few members were connected
/// for any checkpoint to reach the witness quorum (then no member could act on the request).
fn give_up_reason(ctx: &Context, reason: String) -> String {
    let s = ctx.lock();
    let connected = s.connected.count_ones();
    let quorum = u32::from(s.membership.witness_quorum);
    if connected < quorum {
        format!(
            "{reason}; the cause: only {connected} of {} members are connected and checkpoints \
             need {quorum} cosignatures (the witness quorum), so no member could act on the \
             request",
            s.membership.members.len()
        )
    } else {
        reason
    }
}

/// Under another optimizer than FedAvg, the next round builds on the members' encryption of
/// the stepped model: waits until t members logged the same server step for the latest
/// decryption (the log's rules then name it as the base). A round opened on the bare
/// aggregate would only be refused by every member.
async fn await_server_step(ctx: &Context, round: u64) {
    let stepped = |s: &Shared| {
        s.log
            .state()
            .rounds()
            .is_none_or(|r| r.base_round() == 0 || r.base_stepped())
    };
    if ctx.plan.optimizer.is_fedavg() || stepped(&ctx.lock()) {
        return;
    }
    tracing::info!(
        round,
        "waiting for the members' server step of the last decryption (t alike) before opening"
    );
    // No deadline: a round opened on the bare aggregate would only be refused. Every half
    // minute it says who has not logged a step yet.
    let mut next_warning = now_ms() + STEP_WARNING_MS;
    ctx.wait_for(|s, now| {
        if stepped(s) {
            return Next::Done(());
        }
        if now >= next_warning {
            let last = s.results.keys().max().copied();
            let missing: Vec<String> = (0..s.membership.members.len() as u8)
                .filter(|m| {
                    last.is_none_or(|r| !s.steps.get(&r).is_some_and(|set| set.contains(m)))
                })
                .map(|m| s.membership.members[usize::from(m)].name.clone())
                .collect();
            tracing::warn!(
                round,
                missing = missing.join(", "),
                "still waiting for t members to log the same server step of the last decryption"
            );
            next_warning = now + STEP_WARNING_MS;
        }
        Next::Wait(Some(next_warning))
    })
    .await;
}

/// How often a coordinator waiting for server steps says who it waits for.
const STEP_WARNING_MS: u64 = 30_000;

/// Opens the round on the base the log's rules name, expecting the members connected now.
fn open(
    ctx: &Context,
    config: &CoordinatorConfig,
    round: u64,
) -> Result<(Digest, Digest), CoordinatorError> {
    let (base, model) = base_model(ctx);
    let (expected, membership) = {
        let s = ctx.lock();
        (s.connected, s.membership.clone())
    };
    let deadline_ms = now_ms() + config.round_deadline_secs * 1000;
    let subject = round_subject(round);
    ctx.lock().round = Some(CoordinatorRound::open(
        round,
        &membership,
        ctx.plan.clone(),
        expected,
        deadline_ms,
    ));
    let open_leaf = ctx.append_own(
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
    ctx.lock().open_leaf = Some(open_leaf);
    abort_if(ctx.fault.as_ref(), Step::Open, round);
    jump_clock_if(ctx.fault.as_ref(), round);
    tracing::info!(round, expected = expected.count_ones(), "round open");
    ctx.metrics.step(round, RoundStep::Collecting, now_ms());
    Ok((base, subject))
}

/// Collects until everyone still there contributed, or the deadline.
async fn collect(ctx: &Context) -> CloseDecision {
    ctx.wait_for(|s, now| {
        let round = s.round.as_ref().expect("open");
        match round.poll_close(now) {
            CloseDecision::Wait => Next::Wait(round.poll_timeout(0)),
            decision => Next::Done(decision),
        }
    })
    .await
}

/// A closed round: its close entry and its aggregate's digest, and where its decryption stands.
/// The aggregate itself is in the store, not here: it is one encrypted model (2.3 GB at 100M
/// values), held through the whole decryption, and only a retry reads it again.
struct Closed {
    close: u64,
    digest: Digest,
    contributors: u32,
    /// The attempt the next request takes (0 for a round just closed).
    next_attempt: u8,
    /// The latest request logged for it and its quorum, when a restart finishes it.
    previous: Option<(u64, u16)>,
}

/// Closes the round: aggregates the contributions onto the base, stores the aggregate and
/// logs the close. `None` when the contributions cannot be weighed under the plan (logged as
/// an incident; nothing is decrypted this round).
async fn close(
    ctx: &Arc<Context>,
    round: u64,
    base: Digest,
    subject: Digest,
) -> Result<Option<Closed>, CoordinatorError> {
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
            tracing::warn!(round, error = %e, "round not closed");
            ctx.append_own(
                subject,
                Body::Incident {
                    code: IncidentCode::RoundNotClosed.number(),
                    evidence: subject,
                    description: format!("round {round} not closed: {e}"),
                },
                vec![],
                None,
            )?;
            return Ok(None);
        }
    };
    let round_error = move |reason: String| CoordinatorError::Round { round, reason };
    let aggregate = {
        let ctx = ctx.clone();
        let shape = ctx.shape;
        tokio::task::spawn_blocking(move || -> Result<Ciphertext, CoordinatorError> {
            // The model this round builds on is a term of weight 1 onto zero; each term is
            // read from disk in pieces, so the sum is the one encrypted model held in memory.
            let mut acc = Ciphertext::zero(shape);
            if base != ZERO_BASE {
                ctx.blobs
                    .add_into(&mut acc, &base, 1, ctx.limits)
                    .map_err(|e| round_error(format!("the stored model ciphertext: {e}")))?;
            }
            for (digest, weight) in &terms {
                ctx.blobs
                    .add_into(&mut acc, digest, *weight, ctx.limits)
                    .map_err(|e| round_error(e.to_string()))?;
            }
            Ok(acc)
        })
        .await
        .map_err(|e| round_error(e.to_string()))??
    };
    let digest = ctx.blobs.put_ciphertext(&aggregate)?;
    debug_assert_eq!(ciphertext_digest(&aggregate).0, digest);
    drop(aggregate);
    let contributors = leaves.len() as u32;
    let close = ctx.append_own(
        subject,
        Body::RoundClose {
            round,
            base,
            contributions: leaves.clone(),
            aggregate: digest,
        },
        leaves,
        Some(digest),
    )?;
    abort_if(ctx.fault.as_ref(), Step::Close, round);
    Ok(Some(Closed {
        close,
        digest,
        contributors,
        next_attempt: 0,
        previous: None,
    }))
}

/// How the decryption requests went: the attempts made and, if the whole quorum released,
/// the request and its quorum.
struct Decryption {
    attempts: u8,
    released: Option<(u64, u16)>,
}

/// Names a quorum of connected members and waits for their releases; a failed member leads
/// to a re-randomised ciphertext for another quorum, until the plan's retries run out.
async fn decrypt(
    ctx: &Context,
    public_key: &EncryptionKey,
    round: u64,
    closed: &Closed,
    release_timeout_ms: u64,
    rng: &mut impl RngCore,
) -> Result<Decryption, CoordinatorError> {
    let subject = round_subject(round);
    let round_error = move |reason: String| CoordinatorError::Round { round, reason };
    let mut attempt = closed.next_attempt;
    let mut quorum = {
        let s = ctx.lock();
        s.round.as_ref().expect("open").choose_quorum(s.connected)
    }
    .ok_or_else(|| round_error("too few members connected to form a quorum".into()))?;
    let mut seed = [0u8; 32];
    // The first attempt asks for the aggregate itself, every later one for a re-randomisation.
    let mut target = if attempt == 0 {
        closed.digest
    } else {
        rerandomised(ctx, public_key, round, closed, &mut seed, rng)?
    };
    // The previous request, if its last releases arrive while the next is prepared.
    let (mut request, mut requested_quorum) = closed.previous.unwrap_or((closed.close, quorum));
    loop {
        let appended = ctx.append_own(
            subject,
            Body::DecryptionRequest {
                round,
                close: closed.close,
                ciphertext: target,
                quorum,
                attempt,
                seed,
            },
            vec![closed.close],
            Some(target),
        );
        let previous = request;
        request = match appended {
            Ok(leaf) => leaf,
            // The last release of the previous attempt arrived while the retry was being
            // prepared: the round is decrypted, and the log refuses a retry after that.
            Err(_) if attempt > 0 && previous_attempt_completed(ctx, previous) => {
                tracing::info!(round, "the previous attempt completed; no retry");
                return Ok(Decryption {
                    attempts: attempt,
                    released: Some((previous, requested_quorum)),
                });
            }
            Err(e) => return Err(e),
        };
        abort_if(ctx.fault.as_ref(), Step::Request, round);
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
        let status = ctx
            .wait_for(|s, now| {
                let connected = s.connected;
                let machine = s.round.as_mut().expect("open");
                match machine.poll_decryption(now, connected, release_timeout_ms) {
                    DecryptionStatus::Waiting => {
                        Next::Wait(machine.poll_timeout(release_timeout_ms))
                    }
                    status => Next::Done(status),
                }
            })
            .await;
        match status {
            DecryptionStatus::Released => {
                return Ok(Decryption {
                    attempts: attempt + 1,
                    released: Some((request, quorum)),
                });
            }
            DecryptionStatus::Retry {
                attempt: next,
                quorum: next_quorum,
            } => {
                tracing::warn!(round, attempt = next, "a quorum member failed: retrying");
                target = rerandomised(ctx, public_key, round, closed, &mut seed, rng)?;
                attempt = next;
                quorum = next_quorum;
            }
            DecryptionStatus::GiveUp(reason) => {
                let reason = give_up_reason(ctx, reason);
                tracing::error!(round, %reason, "decryption abandoned");
                ctx.append_own(
                    subject,
                    Body::Incident {
                        code: IncidentCode::DecryptionAbandoned.number(),
                        evidence: target,
                        description: reason,
                    },
                    vec![request],
                    None,
                )?;
                return Ok(Decryption {
                    attempts: attempt + 1,
                    released: None,
                });
            }
            DecryptionStatus::Waiting => unreachable!("wait_for returns only a decision"),
        }
    }
}

/// The round's aggregate re-randomised under a fresh `seed`, stored; its digest.
fn rerandomised(
    ctx: &Context,
    public_key: &EncryptionKey,
    round: u64,
    closed: &Closed,
    seed: &mut [u8; 32],
    rng: &mut impl RngCore,
) -> Result<Digest, CoordinatorError> {
    rng.fill_bytes(seed);
    let mut retried = ctx
        .blobs
        .read_ciphertext(&closed.digest, ctx.shape.secrets, ctx.limits)
        .map_err(|e| CoordinatorError::Round {
            round,
            reason: format!("the stored aggregate: {e}"),
        })?;
    public_key
        .rerandomize(&mut retried, *seed)
        .map_err(|e| CoordinatorError::Round {
            round,
            reason: e.to_string(),
        })?;
    Ok(ctx.blobs.put_ciphertext(&retried)?)
}

/// Finishes the decryption of the log's latest round if a share of it was released but it
/// was never decrypted: the coordinator was restarted half way through it, or its quorum was
/// lost. Until it is decrypted its contributors refuse every round on the same base (a second
/// contribution from one model could be isolated), so no round opens before: this waits for
/// enough members and asks again, with a re-randomised ciphertext, while the plan's retries
/// last. Returns the finished round's summary, if there was one to finish.
pub(super) async fn finish_unfinished(
    ctx: &Arc<Context>,
    config: &CoordinatorConfig,
    public_key: &EncryptionKey,
    rng: &mut impl RngCore,
) -> Result<Option<RoundSummary>, CoordinatorError> {
    let started = Instant::now();
    loop {
        let unfinished = ctx
            .lock()
            .log
            .state()
            .rounds()
            .and_then(|rules| rules.unfinished_decryption());
        let Some(unfinished) = unfinished else {
            return Ok(None);
        };
        let round = unfinished.round;
        if unfinished.next_attempt > ctx.plan.max_retries {
            let (members, k_min) = {
                let s = ctx.lock();
                (s.membership.members.len() as u32, s.membership.k_min)
            };
            let others = members - unfinished.contributors_mask.count_ones();
            let reason = format!(
                "round {round} was partly released and never decrypted, and its {} retries \
                 are spent: its {} contributors will not contribute from the same model again \
                 (a second contribution from one model could be isolated), so later rounds \
                 have {others} possible contributors and need {k_min}",
                ctx.plan.max_retries, unfinished.contributors
            );
            // Rounds that cannot reach k_min would only fail one after the other.
            if others < u32::from(k_min) {
                return Err(CoordinatorError::Round {
                    round,
                    reason: format!("{reason}: the run cannot go on with this key"),
                });
            }
            tracing::error!(round, "{reason}");
            return Ok(None);
        }
        tracing::info!(
            round,
            attempt = unfinished.next_attempt,
            "finishing the decryption of round {round}: a share of it was released, so no round \
             opens before it is decrypted"
        );
        enough_members(ctx, round).await;
        // The stored aggregate is read (and checked) when the retry re-randomises it.
        let closed = Closed {
            close: unfinished.close,
            digest: unfinished.aggregate,
            contributors: unfinished.contributors,
            next_attempt: unfinished.next_attempt,
            previous: unfinished.last_request,
        };
        {
            let mut s = ctx.lock();
            let mut machine = CoordinatorRound::open(
                round,
                &s.membership,
                ctx.plan.clone(),
                s.connected,
                now_ms(),
            );
            machine.closed();
            s.round = Some(machine);
        }
        ctx.metrics.step(round, RoundStep::Decrypting, now_ms());
        let release_timeout_ms = config.release_timeout_secs * 1000;
        let outcome = decrypt(ctx, public_key, round, &closed, release_timeout_ms, rng).await?;
        // Given up (the log then holds one more attempt): try again while retries last.
        let Some((request, quorum)) = outcome.released else {
            continue;
        };
        ctx.metrics
            .step(round, RoundStep::AwaitingResults, now_ms());
        let (decrypted, model) = await_results(ctx, request, quorum, release_timeout_ms).await;
        ctx.metrics.step(round, RoundStep::Idle, now_ms());
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            round,
            decrypted,
            seconds = format!("{seconds:.2}"),
            "round finished"
        );
        return Ok(Some(RoundSummary {
            round,
            contributors: closed.contributors,
            attempts: outcome.attempts,
            decrypted,
            model,
            decrypt_seconds: seconds,
            total_seconds: seconds,
            ..Default::default()
        }));
    }
}

/// Waits for the members' results (every connected member combines and logs one): until all
/// connected members logged one, or the quorum did and the release timeout passed, and at
/// most twice that timeout. Returns whether any member logged a result (the model exists at
/// the members: a quorum member that went down after releasing does not undo that), and a
/// model digest.
async fn await_results(
    ctx: &Context,
    request: u64,
    quorum: u16,
    release_timeout_ms: u64,
) -> (bool, Option<String>) {
    let enough_at = now_ms() + release_timeout_ms;
    let give_up = enough_at + release_timeout_ms;
    ctx.wait_for(|s, now| {
        let results = s.results.get(&request);
        let has = |m: u8| results.is_some_and(|r| r.contains_key(&m));
        let quorum_done = (0..16u8).filter(|m| quorum & (1 << m) != 0).all(has);
        let everyone_done = (0..16u8).filter(|m| s.connected & (1 << m) != 0).all(has);
        let model = || results.and_then(|r| r.values().next()).map(hex::encode);
        if everyone_done || (quorum_done && now >= enough_at) || now >= give_up {
            Next::Done((model().is_some(), model()))
        } else {
            Next::Wait(Some(if quorum_done { enough_at } else { give_up }))
        }
    })
    .await
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
