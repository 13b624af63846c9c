//! Releasing, exchanging and combining partial decryptions.

use super::*;

pub(super) async fn release(ctx: &Arc<Context>, request: u64) -> Result<(), StepError> {
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
        && ctx.store.released(&ciphertext)?.is_some()
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
    let recorded = ctx.store.record_release(
        &release,
        u64::from(ctx.plan.values),
        ctx.budget.lifetime_reveal_limit(),
        logged,
    )?;
    match recorded {
        Recorded::Fresh => {}
        Recorded::AlreadyReleased => return refuse(ctx, request, Refusal::AlreadyReleased),
        Recorded::LifetimeSpent { revealed, limit } => {
            let spent = StepError::LifetimeSpent {
                revealed,
                requested: ctx.plan.values,
                limit,
            };
            incident(
                ctx,
                IncidentCode::LifetimeSpent,
                target.ciphertext,
                spent.to_string(),
            );
            return Err(spent);
        }
    }
    abort_if(ctx.fault.as_ref(), Step::Release, target.round);
    let quorum = Quorum::new(ctx.share.config(), target.quorum.clone())?;
    let worker = ctx.clone();
    // Combining later needs only the bodies: the masks go once the partial is made.
    let (partial, combine_target) = tokio::task::spawn_blocking(move || {
        let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
        worker
            .share
            .partial_decrypt(&bound, &quorum, &worker.budget, &mut rng)
            .map(|p| {
                (
                    encode_partial_decryption(&p),
                    CombineTarget::from_bound(bound),
                )
            })
    })
    .await??;
    let share_digest: Digest = Sha256::digest(&partial).into();
    let partial = Arc::new(partial);
    {
        let mut state = ctx.lock();
        state.targets.insert(request, combine_target);
        state.partials.insert(
            (request, ctx.me),
            Incoming::whole(partial.clone(), share_digest),
        );
    }
    // Kept durably before the release is logged, so that a crash after logging cannot lose
    // a share the log says went out: after a restart the same bytes are sent again.
    ctx.store.keep_partial(request, &partial)?;
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

/// Recomputes the ciphertext of a request whose quorum this member is not in, as soon as the
/// request is logged: the recomputation then runs while the quorum releases, not after every
/// partial has arrived, and combining holds the bodies (a third of the ciphertext) while the
/// partials come in.
///
/// Only a first attempt is prepared, and at most one per round: every first attempt of a round
/// names the round's aggregate, so a coordinator that logs many requests costs one
/// recomputation, as before. Retries (re-randomised ciphertexts) and requests this member
/// cannot combine yet (its base not held, a combination under way or done) are left to
/// combining, which judges them again.
pub(super) async fn prepare(ctx: &Arc<Context>, request: u64) -> Result<(), StepError> {
    let target = {
        let mut state = ctx.lock();
        let state = &mut *state;
        let verdict = check_combine(
            &state.entries[..state.acted as usize],
            &ctx.membership,
            &ctx.plan,
            request,
            state.member.held(),
        );
        let Ok(target) = verdict else {
            return Ok(());
        };
        let aggregate = target.ciphertext;
        let combining = state.combining.get(&request).is_some_and(|c| c.running);
        let prepared = state.targets.values().any(|t| t.digest().0 == aggregate);
        if target.attempt != 0 || combining || prepared || !state.preparing.insert(target.round) {
            return Ok(());
        }
        target
    };
    let recomputed = recompute(ctx, &target).await;
    let failed = {
        let mut state = ctx.lock();
        state.preparing.remove(&target.round);
        // Kept only while it can still be combined: not once this member holds the round, nor
        // while a combination (which recomputes for itself) runs.
        let wanted = state.member.held().round < target.round
            && !state.combining.get(&request).is_some_and(|c| c.running);
        match recomputed {
            Ok(Some(bound)) if wanted => {
                state
                    .targets
                    .insert(request, CombineTarget::from_bound(bound));
                None
            }
            // Another ciphertext than the request names: left to combining, which refuses
            // it and says so.
            Ok(_) => None,
            Err(e) => Some(e),
        }
    };
    // Requests whose partials arrived meanwhile were left for this (another attempt of the
    // round among them).
    let deferred: Vec<u64> = ctx.lock().deferred.drain().collect();
    for waiting in deferred.into_iter().chain([request]) {
        try_combine(ctx, waiting);
    }
    leave_if_run_over(ctx);
    failed.map_or(Ok(()), |e| Err(e.into()))
}

/// Sends this member's partial decryption for `request` to every other member, chunk by
/// chunk: only to members, never to the coordinator.
pub(super) async fn send_partial(ctx: &Arc<Context>, request: u64, partial: Arc<Vec<u8>>) {
    let mut sends = Vec::new();
    for m in 0..ctx.peers.len() {
        if m == usize::from(ctx.me) {
            continue;
        }
        let (ctx, partial) = (ctx.clone(), partial.clone());
        sends.push(tokio::spawn(async move {
            deliver_once_at_a_time(&ctx, m as u8, request, &partial, PARTIAL_ATTEMPTS).await
        }));
    }
    for send in sends {
        let _ = send.await;
    }
    try_combine(ctx, request);
}

/// A delivery's entry in `delivering`, removed however the delivery ends (a panic, a
/// cancelled task), so that a member's requests to send again are never ignored for good.
struct Delivering<'a>(&'a Context, u64, u8);

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        self.0.lock().delivering.remove(&(self.1, self.2));
    }
}

/// Delivers a partial decryption to one member unless a delivery of it to that member is
/// already under way: a second one would start the member's copy over from the first chunk and
/// throw away what had arrived. Returns whether it delivered.
async fn deliver_once_at_a_time(
    ctx: &Arc<Context>,
    member: u8,
    request: u64,
    partial: &[u8],
    attempts: u32,
) -> bool {
    if !ctx.lock().delivering.insert((request, member)) {
        return false;
    }
    let _entry = Delivering(ctx, request, member);
    ctx.sent(partial.len());
    let peer = ctx.peers[usize::from(member)];
    deliver(
        &ctx.handle,
        peer,
        usize::from(member),
        request,
        partial,
        attempts,
    )
    .await;
    true
}

/// Delivers a partial decryption to one member, chunk by chunk. A member not reachable yet is
/// tried again a few times, from the first chunk; a member that answers with a refusal is not.
async fn deliver(
    handle: &Handle,
    peer: PeerId,
    member: usize,
    request: u64,
    partial: &[u8],
    attempts: u32,
) {
    let count = partial.len().div_ceil(CHUNK_BYTES) as u32;
    'attempts: for attempt in 1..=attempts {
        for (index, chunk) in partial.chunks(CHUNK_BYTES).enumerate() {
            let message = Request::Partial {
                request,
                index: index as u32,
                count,
                bytes: chunk.to_vec(),
            };
            match handle.call(peer, &message).await {
                Ok(Response::Ok) => {}
                Ok(other) => {
                    tracing::debug!(member, response = ?other, "partial refused");
                    return;
                }
                Err(error) => {
                    tracing::debug!(member, attempt, %error, "partial not delivered");
                    tokio::time::sleep(PARTIAL_RETRY).await;
                    continue 'attempts;
                }
            }
        }
        return;
    }
}

/// Sends `member` again this member's partial decryption for `request`: only one whose release
/// the log holds (a cosigned checkpoint covers it) with the same digest, so the bytes are the
/// ones every member was sent already and nothing new is revealed.
pub(super) fn resend_partial(
    ctx: &Arc<Context>,
    member: u8,
    request: u64,
) -> Result<(), StepError> {
    // At most once per RESEND_WAIT per asking member and request, checked before any work.
    {
        let mut state = ctx.lock();
        let now = std::time::Instant::now();
        state
            .resent
            .retain(|_, last| now.duration_since(*last) < RESEND_WAIT);
        if state.resent.contains_key(&(request, member)) {
            return Err(StepError::ResentRecently { request, member });
        }
        state.resent.insert((request, member), now);
    }
    // The release this member logged for the request, in the part of the log it acted on
    // (covered by a cosigned checkpoint): read from the log itself, so it holds after a
    // restart too.
    let logged = {
        let state = ctx.lock();
        let me = ctx.signing.verifying_key().to_bytes();
        state.entries[..state.acted as usize]
            .iter()
            .find_map(|e| match &e.entry.body {
                Body::ShareReleased {
                    request: r, share, ..
                } if *r == request && e.entry.author == me => Some(*share),
                _ => None,
            })
    };
    let partial = ctx
        .store
        .released_partial(request)?
        .ok_or(StepError::NothingToResend { request })?;
    if logged.is_none_or(|share| Sha256::digest(&partial).as_slice() != share) {
        return Err(StepError::NothingToResend { request });
    }
    if ctx.lock().delivering.contains(&(request, member)) {
        tracing::debug!(
            member,
            request,
            "the partial decryption is on its way already"
        );
        return Ok(());
    }
    tracing::info!(member, request, "sending a partial decryption again");
    ctx.last_resend_ms
        .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    let ctx = ctx.clone();
    // One attempt: the member asks again if it still lacks it.
    tokio::spawn(async move {
        deliver_once_at_a_time(&ctx, member, request, &partial, 1).await;
    });
    Ok(())
}

/// Asks the authors of logged releases whose partial decryptions have not arrived to send them
/// again, until they arrive or this member holds a later model: a partial lost on the way, or
/// sent while this member was away, is fetched instead of costing the member every later round.
fn chase(ctx: &Arc<Context>, request: u64) {
    if !ctx.lock().chasing.insert(request) {
        return;
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        for attempt in 0..RESEND_ATTEMPTS {
            // A partial on its way normally arrives within moments: ask soon, then less often.
            tokio::time::sleep(resend_wait(attempt)).await;
            // Partials not complete, and of those the ones worth asking for again: a partial
            // whose chunks are still arriving is on its way, and asking would only start it
            // over; it is looked at again next time.
            let (incomplete, missing): (usize, Vec<u8>) = {
                let state = ctx.lock();
                match state.member.decryption(request) {
                    Some(d) if state.member.held().round < d.round => {
                        let incomplete: Vec<(u8, bool)> = d
                            .quorum
                            .iter()
                            .copied()
                            .filter(|m| *m != ctx.me && d.logged_shares.contains_key(m))
                            .filter_map(|m| match state.partials.get(&(request, m)) {
                                None => Some((m, true)),
                                Some(incoming) if incoming.complete() => None,
                                Some(incoming) => Some((m, incoming.stalled(resend_wait(attempt)))),
                            })
                            .collect();
                        let missing = incomplete.iter().filter(|(_, s)| *s).map(|(m, _)| *m);
                        (incomplete.len(), missing.collect())
                    }
                    _ => (0, Vec::new()),
                }
            };
            if incomplete == 0 {
                try_combine(&ctx, request);
                break;
            }
            for m in missing {
                tracing::info!(member = m, request, "asking for a partial decryption again");
                let asked = ctx
                    .handle
                    .call(ctx.peers[usize::from(m)], &Request::Resend { request })
                    .await;
                if let Err(e) = asked {
                    tracing::debug!(member = m, error = %e, "the request to send again failed");
                }
            }
        }
        ctx.lock().chasing.remove(&request);
        leave_if_run_over(&ctx);
    });
}

pub(super) fn refuse(ctx: &Arc<Context>, request: u64, refusal: Refusal) -> Result<(), StepError> {
    let evidence: Digest = Sha256::digest(request.to_le_bytes()).into();
    incident(
        ctx,
        refusal.code(),
        evidence,
        format!("refused to release a share for request {request}: {refusal}"),
    );
    Err(refusal.into())
}

pub(super) fn receive_partial(
    ctx: &Arc<Context>,
    member: u8,
    request: u64,
    index: u32,
    count: u32,
    bytes: Vec<u8>,
) -> Result<(), StepError> {
    let limit = ctx.plan.values as usize * 8 + 1024;
    if count == 0 || count as usize > limit.div_ceil(CHUNK_BYTES) {
        return Err(StepError::PartialChunks { count });
    }
    // A chunk past the announced count would reopen a complete partial.
    if index >= count {
        return Err(StepError::OutOfOrder {
            index,
            count,
            expected: count - 1,
            expected_count: count,
        });
    }
    if lost_by_fault(ctx, request) {
        tracing::warn!(
            member,
            request,
            "injected fault: a partial decryption is lost"
        );
        return Ok(());
    }
    let complete = {
        let mut state = ctx.lock();
        if let Some(d) = state.member.decryption(request)
            && !d.quorum.contains(&member)
        {
            return Err(StepError::NotInQuorum { member, request });
        }
        // A partial may overtake the checkpoint that logs its request, but not by much.
        if request > state.log.size() + 1024 {
            return Err(StepError::FarAhead { request });
        }
        let buffered = state.partials.keys().filter(|(_, m)| *m == member).count();
        if !state.partials.contains_key(&(request, member))
            && buffered >= buffered_partials_per_member(&ctx.plan)
        {
            return Err(StepError::TooManyInFlight { member });
        }
        let incoming = state
            .partials
            .entry((request, member))
            .or_insert_with(|| Incoming::new(count));
        if incoming.count != count || incoming.received != index {
            // Start over: a sender resends from the first chunk.
            if index != 0 {
                return Err(StepError::OutOfOrder {
                    index,
                    count,
                    expected: incoming.received,
                    expected_count: incoming.count,
                });
            }
            *incoming = Incoming::new(count);
        }
        if incoming.bytes.len() + bytes.len() > limit {
            return Err(StepError::PartialTooLarge { member });
        }
        incoming.push(&bytes);
        incoming.complete()
    };
    if complete {
        try_combine(ctx, request);
    }
    Ok(())
}

/// Resilience testing: the partial decryptions of the chosen round are lost on the way until
/// this member asks for them again.
fn lost_by_fault(ctx: &Context, request: u64) -> bool {
    let Some(Fault {
        step: Step::LosePartials,
        round,
    }) = ctx.fault
    else {
        return false;
    };
    let state = ctx.lock();
    let of_round = matches!(
        state.entries.get(request as usize).map(|e| &e.entry.body),
        Some(Body::DecryptionRequest { round: r, .. }) if *r == round
    );
    of_round && !state.chasing.contains(&request)
}

/// Combines once every quorum member's share release is logged and its partial decryption,
/// hashing to the logged digest, has arrived.
pub(super) fn try_combine(ctx: &Arc<Context>, request: u64) {
    // A member restarted after saving this round's stepped model and before logging its server
    // step logs it now.
    let unlogged_step = {
        let state = ctx.lock();
        !ctx.plan.optimizer.is_fedavg()
            && state
                .member
                .decryption(request)
                .is_some_and(|d| state.member.held().round == d.round)
            // The request the whole quorum released: an earlier attempt of the round has no
            // step (its seed would name another request).
            && state
                .log
                .rounds()
                .and_then(|rules| rules.request(request))
                .is_some_and(|r| r.complete())
            && !step_logged(ctx, &state, request)
    };
    if unlogged_step {
        step::log_step_again(ctx, request);
        return;
    }
    let ready = 'ready: {
        let mut state = ctx.lock();
        let state = &mut *state;
        let Some(d) = state.member.decryption(request) else {
            return;
        };
        // A recomputation ahead of combining tries again when it is done.
        if state.preparing.contains(&d.round) {
            state.deferred.insert(request);
            return;
        }
        // Nothing to do while it runs, before every release is logged, or once this member
        // holds this round's model (or a later one).
        if state
            .combining
            .get(&request)
            .is_some_and(|c| c.running || c.malformed)
            || d.logged_shares.len() < d.quorum.len()
            || state.member.held().round >= d.round
        {
            return;
        }
        let missing = d.quorum.iter().any(|m| {
            state
                .partials
                .get(&(request, *m))
                .is_none_or(|incoming| !incoming.complete())
        });
        if missing {
            break 'ready None;
        }
        let mut partials = Vec::new();
        for m in &d.quorum {
            let incoming = &state.partials[&(request, *m)];
            if incoming.digest.as_ref().map(|d| d.as_slice()) != Some(&d.logged_shares[m][..]) {
                tracing::warn!(
                    member = m,
                    request,
                    "a partial decryption does not match the digest its author logged"
                );
                return;
            }
            partials.push(Arc::clone(&incoming.bytes));
        }
        let (ciphertext, quorum, round) = (d.ciphertext, d.quorum.clone(), d.round);
        state.combining.entry(request).or_default().running = true;
        Some((partials, ciphertext, quorum, round))
    };
    // Some partial decryption has not arrived: ask its author (the lock is released here).
    let Some((partials, ciphertext, quorum, round)) = ready else {
        chase(ctx, request);
        return;
    };
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let combined = combine(&ctx, request, round, ciphertext, quorum, partials).await;
        // Done either way: a request not combined now (this member did not hold its base yet)
        // may be tried again once it does.
        let again = {
            let mut state = ctx.lock();
            let c = state.combining.entry(request).or_default();
            c.running = false;
            if combined.is_err() {
                c.failures += 1;
            }
            combined.is_err() && c.failures < COMBINE_ATTEMPTS
        };
        if let Err(e) = combined {
            tracing::error!(request, error = %e, "combining failed");
        }
        if again {
            tokio::time::sleep(COMBINE_RETRY).await;
            try_combine(&ctx, request);
        }
        leave_if_run_over(&ctx);
    });
}

/// Whether this member's server step for `request` is in its log.
fn step_logged(ctx: &Context, state: &State, request: u64) -> bool {
    let me = ctx.signing.verifying_key().to_bytes();
    state.stepped.contains(&request)
        || state.entries.iter().any(|e| {
            matches!(e.entry.body, Body::ServerStep { request: r, .. } if r == request)
                && e.entry.author == me
        })
}

/// Whether each of the quorum's partials (in the quorum's order) decodes and fits the request.
fn check_received(
    ctx: &Context,
    target: &ReleaseTarget,
    quorum: &[u8],
    partials: &[Arc<Vec<u8>>],
) -> Result<(), MalformedPartial> {
    let limits = DecodeLimits {
        max_values: u64::from(ctx.plan.values),
    };
    let mut headers = Vec::new();
    for (&author, partial) in quorum.iter().zip(partials) {
        let header = protocol::wire::decode_partial_header(partial, limits)
            .map_err(|source| MalformedPartial::Decode { author, source })?;
        if header.party != author {
            return Err(MalformedPartial::OtherParty {
                author,
                party: header.party,
            });
        }
        headers.push(header);
    }
    let quorum = Quorum::new(ctx.share.config(), quorum.to_vec())?;
    protocol::he::check_partials(
        protocol::he::CiphertextDigest(target.ciphertext),
        u64::from(ctx.plan.values),
        &quorum,
        headers
            .iter()
            .map(|h| (h.party, h.quorum.as_slice(), h.ciphertext, h.value_count)),
    )?;
    Ok(())
}

pub(super) async fn combine(
    ctx: &Arc<Context>,
    request: u64,
    round: u64,
    ciphertext: Digest,
    quorum: Vec<u8>,
    partials: Vec<Arc<Vec<u8>>>,
) -> Result<(), StepError> {
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
        Ok(_) => return Err(StepError::OtherCiphertext { request }),
        Err(refusal) => {
            tracing::warn!(request, %refusal, "not combining");
            return Ok(());
        }
    };
    // Every partial must decode and fit the request before this member commits its target or
    // a recomputation to them: a quorum member who logged the digest of a malformed partial
    // costs one look at the headers, and is named once.
    if let Err(reason) = check_received(ctx, &release_target, &quorum, &partials) {
        ctx.lock().combining.entry(request).or_default().malformed = true;
        incident(
            ctx,
            IncidentCode::MalformedPartial,
            ciphertext,
            format!("not combining request {request}: {reason}"),
        );
        return Ok(());
    }
    // Taken, not copied: the combination subtracts into it. Should combining fail, a later
    // attempt recomputes it.
    // Prepared or kept under this request, or prepared under another first attempt of the
    // round (every first attempt names the round's aggregate).
    let recomputed = {
        let mut state = ctx.lock();
        let kept = state
            .targets
            .iter()
            .find(|(r, t)| **r == request || t.digest().0 == release_target.ciphertext)
            .map(|(r, _)| *r);
        kept.and_then(|r| state.targets.remove(&r))
    };
    let target = match recomputed {
        Some(t) if t.digest().0 == release_target.ciphertext => t,
        _ => match recompute(ctx, &release_target).await? {
            Some(bound) => CombineTarget::from_bound(bound),
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
    let decoded = tokio::task::spawn_blocking(move || -> Result<Vec<i64>, StepError> {
        let limits = DecodeLimits {
            max_values: u64::from(worker.plan.values),
        };
        let quorum = Quorum::new(worker.share.config(), quorum)?;
        let mut combination = protocol::he::Combination::new(target, quorum, &worker.budget)?;
        // One decoded partial at a time: combining holds the bodies and one partial.
        for partial in &partials {
            combination.subtract(&protocol::wire::decode_partial_decryption(partial, limits)?)?;
        }
        Ok(combination.finish()?)
    })
    .await??;
    if decoded.len() != ctx.plan.values as usize {
        return Err(StepError::ModelSize {
            got: decoded.len(),
            plan: ctx.plan.values,
        });
    }
    let digest = model_digest(&decoded);
    // Under a server optimizer the model is its step from the decrypted average, and the next
    // round builds on the members' encryption of that.
    let mut marked = None;
    let (model, held, stepped) = if ctx.plan.optimizer.is_fedavg() {
        let held = HeldModel {
            round,
            base: release_target.aggregate,
            model: digest,
        };
        (decoded, held, None)
    } else {
        let stepped = step::step(ctx, request, round, decoded).await?;
        // Marked before the model is saved, so that a combine attempt meanwhile, which finds
        // this round's model held and its step not logged, does not log it a second time.
        marked = Some(step::Stepping::mark(ctx, request));
        let held = stepped.held;
        (stepped.model, held, Some((stepped.state, stepped.bytes)))
    };
    abort_if(ctx.fault.as_ref(), Step::Combine, round);
    ctx.store
        .save_model(&model, &held, stepped.as_ref().map(|(state, _)| state))?;
    let waited = {
        let mut state = ctx.lock();
        let state = &mut *state;
        state.model = model;
        if let Some((optimizer, _)) = &stepped {
            state.optimizer = optimizer.clone();
        }
        state.rounds_done += 1;
        // Nothing logged before this request can be combined any more.
        state.targets.retain(|r, _| *r > request);
        state.partials.retain(|(r, _), _| *r != request);
        state.member.combined(&state.entries, held)
    };
    for action in waited {
        carry_out(ctx, action);
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
    if let Some((optimizer, bytes)) = stepped {
        abort_if(ctx.fault.as_ref(), Step::ServerStep, round);
        let logged = step::log_step(ctx, request, &held, &optimizer, &bytes).await;
        drop(marked);
        if let Err(e) = logged {
            tracing::warn!(request, error = %e, "the server step could not be logged; trying again");
            step::log_step_again(ctx, request);
        }
    }
    let (worker, reported_digest) = (ctx.clone(), held.model);
    let reported =
        tokio::task::spawn_blocking(move || report_round(&worker, round, &reported_digest)).await;
    if let Err(e) = reported.map_err(StepError::from).and_then(|r| r) {
        tracing::error!(round, error = %e, "the round could not be reported");
    }
    if ctx.stop_after.is_some_and(|last| round >= last) {
        ctx.done.notify_one();
    }
    // A decryption of a later round that waited for this model may be combinable now.
    let later = ctx.lock().member.later_decryptions();
    for request in later {
        try_combine(ctx, request);
    }
    leave_if_run_over(ctx);
    Ok(())
}
