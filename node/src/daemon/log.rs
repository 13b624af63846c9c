//! Witnessing the log and acting on cosigned checkpoints: entries are checked against the
//! member's copy before it cosigns, and the member machine's actions are carried out.

use super::*;

/// Checks the entries against the node's copy of the log, then the checkpoint against the
/// copy and the witness state; stores both before the cosignature leaves.
pub(super) async fn witness(
    ctx: &Arc<Context>,
    from: u64,
    leaves: Vec<Vec<u8>>,
    note: &[u8],
) -> Response {
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
                    IncidentCode::ForkedEntry,
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
                    IncidentCode::BrokenRoundRule,
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
            IncidentCode::ForkedCheckpoint,
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
            incident(
                ctx,
                IncidentCode::RefusedToCosign,
                checkpoint.root,
                format!("refused to cosign: {e}"),
            );
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
pub(super) fn act(ctx: &Arc<Context>, note: &[u8]) -> Result<(), StepError> {
    let signed = SignedCheckpoint::open(note, &ctx.log_verifier, &ctx.witnesses)?;
    if signed.cosigners.len() < usize::from(ctx.membership.witness_quorum) {
        return Err(StepError::UnderQuorum {
            cosigners: signed.cosigners.len(),
            quorum: ctx.membership.witness_quorum,
        });
    }
    let size = signed.checkpoint.size;
    let mut actions = Vec::new();
    {
        let mut state = ctx.lock();
        if state.log.root_at(size) != Some(signed.checkpoint.root) {
            return Err(StepError::CheckpointMismatch { size });
        }
        if size > state.acted {
            ctx.store.keep_final_checkpoint(note)?;
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
pub(super) fn carry_out(ctx: &Arc<Context>, action: Action) {
    match action {
        Action::Forget { before } => forget_before(ctx, before),
        Action::Contribute { round } => {
            abort_if(ctx.fault.as_ref(), Step::Contribute, round);
            runtime::fault::jump_clock_if(ctx.fault.as_ref(), round);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if Fault::strikes(ctx.fault.as_ref(), &Step::Panic, round) {
                    panic!("injected fault: the contribution task of round {round} panics");
                }
                injected_delays(&ctx, round).await;
                if let Err(e) = contribute(&ctx, round).await {
                    tracing::error!(round, error = %e, "contribution failed");
                }
            });
        }
        Action::Release { request } => {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let released = release(&ctx, request).await;
                // Taken by the recomputation, or of no use now.
                preload::forget(&ctx).await;
                if let Err(e) = released {
                    tracing::warn!(request, error = %e, "no share released");
                }
            });
        }
        Action::Prepare { request } => {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = prepare(&ctx, request).await {
                    tracing::warn!(request, error = %e, "not prepared; obtaining it again when combining");
                }
            });
        }
        Action::SendPartial { request, share } => {
            // The bytes this member kept when it released (the store's copy after a restart),
            // whichever hashes to the logged share.
            let held = ctx
                .lock()
                .partials
                .get(&(request, ctx.me))
                .filter(|own| own.digest == Some(share))
                .map(|own| own.bytes.clone());
            let partial = match held {
                Some(partial) => Some(partial),
                None => match ctx.store.released_partial(request) {
                    Ok(Some(partial)) if encoding_digest(&partial) == share => {
                        let partial = Arc::new(partial);
                        ctx.lock()
                            .partials
                            .insert((request, ctx.me), Incoming::whole(partial.clone(), share));
                        Some(partial)
                    }
                    _ => None,
                },
            };
            let Some(partial) = partial else {
                tracing::warn!(
                    request,
                    "this member's logged release has no stored partial; it cannot be sent"
                );
                return;
            };
            let round = ctx.lock().member.decryption(request).map(|d| d.round);
            if let Some(round) = round {
                abort_if(ctx.fault.as_ref(), Step::Send, round);
            }
            let ctx = ctx.clone();
            tokio::spawn(async move { send_partial(&ctx, request, partial).await });
        }
        Action::TryCombine { request } => try_combine(ctx, request),
        Action::Incident {
            code,
            evidence,
            description,
        } => incident(ctx, code, evidence, description),
    }
}

/// Resilience testing: a member cut off from another, or slower than the deadline.
async fn injected_delays(ctx: &Context, round: u64) {
    let Some(fault) = ctx.fault.as_ref().filter(|f| f.round == round) else {
        return;
    };
    match &fault.step {
        Step::CutOff { seconds, peer } => {
            let Some(index) = ctx.membership.members.iter().position(|m| &m.name == peer) else {
                tracing::error!(peer, "injected fault: no such member to cut off");
                return;
            };
            tracing::warn!(peer, seconds, "injected fault: cut off from a member");
            ctx.handle
                .cut_off(ctx.peers[index], Duration::from_secs(*seconds))
                .await;
        }
        Step::Slow { seconds } => {
            tracing::warn!(seconds, round, "injected fault: a slow update");
            tokio::time::sleep(Duration::from_secs(*seconds)).await;
        }
        _ => {}
    }
}
