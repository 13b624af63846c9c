//! Releasing and exchanging partial decryptions: a quorum member's release, sending and
//! receiving partials, and asking their authors again for those that did not arrive.

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
    // Combining later needs only the bodies: the masks go once the partial is made. The
    // partial is computed straight into the encoding that is kept and sent.
    let (partial, combine_target) = tokio::task::spawn_blocking(move || {
        let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
        worker
            .share
            .partial_decrypt_encoded(&bound, &quorum, &worker.budget, &mut rng)
            .map(|encoded| (encoded, CombineTarget::from_bound(bound)))
    })
    .await??;
    let share_digest: Digest = encoding_digest(&partial);
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
    let (worker, kept) = (ctx.clone(), partial.clone());
    tokio::task::spawn_blocking(move || worker.store.keep_partial(request, &kept)).await??;
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
    if logged.is_none_or(|share| encoding_digest(&partial) != share) {
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
pub(super) fn chase(ctx: &Arc<Context>, request: u64) {
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
        let decryption = state.member.decryption(request);
        if let Some(d) = decryption
            && !d.quorum.contains(&member)
        {
            return Err(StepError::NotInQuorum { member, request });
        }
        // Room for a whole partial is taken at once only from a quorum member of a logged
        // request: anyone else's must first send the bytes it would occupy.
        let room = if decryption.is_some() { limit } else { 0 };
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
            .or_insert_with(|| Incoming::new(count, room));
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
            *incoming = Incoming::new(count, room);
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
