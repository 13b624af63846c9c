//! Combining the quorum's partial decryptions into this member's next model: preparing the
//! ciphertext ahead (members outside the quorum), checking what arrived against the log, and
//! the combination itself.

use super::*;

/// Fetches the ciphertext of a request whose quorum this member is not in, as soon as the
/// request is logged (see `fetch::obtain`): the fetch then runs while the quorum releases, not
/// after every partial has arrived, and combining holds the bodies (a third of the ciphertext)
/// while the partials come in. Nothing fetched here is combined before the whole quorum's
/// releases are logged.
///
/// Only a first attempt is prepared, and at most one per round: every first attempt of a round
/// names the round's aggregate, so a coordinator that logs many requests costs one fetch
/// while it succeeds. Retries (re-randomised ciphertexts) and requests this member
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
    let recomputed = obtain(ctx, &target).await;
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
            || !d.released_by_whole_quorum()
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
            let logged = d.logged_shares.get(m).map(|share| &share[..]);
            if incoming.digest.as_ref().map(|d| d.as_slice()) != logged {
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
        &ctx.budget,
        &headers,
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
    // so it combines only a ciphertext it recomputed itself from the model it holds, or, outside
    // the quorum of a first attempt, one that every quorum member logged a release for after
    // recomputing it (`Obtain::Fetch`; `try_combine` comes here only then).
    let (verdict, released, held) = {
        let state = ctx.lock();
        let verdict = check_combine(
            &state.entries[..state.acted as usize],
            &ctx.membership,
            &ctx.plan,
            request,
            state.member.held(),
        );
        let released = state
            .member
            .decryption(request)
            .is_some_and(|d| d.released_by_whole_quorum());
        (verdict, released, *state.member.held())
    };
    // Checked here as well as before coming: a fetched ciphertext is adopted on the word of
    // these releases.
    if !released {
        return Ok(());
    }
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
        _ => match obtain(ctx, &release_target).await? {
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
        // Each partial subtracted from its encoding as it arrived: combining adds nothing of
        // model size to the bodies and the partials it holds.
        for partial in &partials {
            combination.subtract_encoded(&protocol::wire::decode_partial_view(partial, limits)?)?;
        }
        // Under a plan written before relative decoding, values are read from their phase
        // alone, and the model is not read back.
        if worker.budget.request().decoding == protocol::he::Decoding::Absolute {
            return Ok(combination.finish(None)?);
        }
        // The model the aggregate builds on (its base, checked above to be the one this member
        // holds): each value is read against it, a piece at a time.
        let mut reading = combination.into_reading()?;
        let read = worker
            .held_model_in_pieces(&held, |piece| reading.next(piece).map_err(StepError::from))?;
        if !read {
            return Err(StepError::ReferenceMoved {
                request,
                held: held.round,
            });
        }
        Ok(reading.finish()?)
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
        state.model = Some(Arc::new(model));
        if let Some((optimizer, _)) = &stepped {
            state.optimizer = optimizer.clone();
        }
        state.rounds_done += 1;
        // Nothing logged before this request can be combined any more.
        state.targets.retain(|r, _| *r > request);
        state.partials.retain(|(r, _), _| *r != request);
        state.member.combined(&state.entries, held)
    };
    // A model read ahead for this round's request is of no use once the round's is adopted.
    preload::forget(ctx).await;
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
