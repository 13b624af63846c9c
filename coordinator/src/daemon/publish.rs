//! Publishing the log: every growth is witnessed by the members, and a checkpoint that reached
//! the witness quorum goes out for them to act on.

use super::*;

/// Whenever the log grows, has it witnessed and published: new entries at once, a checkpoint
/// short of the witness quorum again after half a second, and a member that (re)connected
/// behind within a second. Waits on the shared state's changes, never on a polling timer.
pub(super) async fn publisher(ctx: Arc<Context>) -> &'static str {
    let (mut published, mut attempted) = (0, 0);
    let mut last = now_ms();
    loop {
        let due = ctx
            .wait_for(|s, now| {
                let size = s.log.state().size();
                let lagging = (0..s.member_sizes.len()).any(|m| {
                    s.connected & (1 << m) != 0
                        && (s.member_sizes[m] < size || s.acted_connections[m] < s.connections[m])
                });
                let retry_at = (size != published).then_some(last + 500);
                let catch_up_at = lagging.then_some(last + 1000);
                let next = [retry_at, catch_up_at].into_iter().flatten().min();
                if size != attempted || next.is_some_and(|at| now >= at) {
                    Next::Done(size)
                } else {
                    Next::Wait(next)
                }
            })
            .await;
        last = now_ms();
        attempted = due;
        match publish(&ctx).await {
            Ok(true) => published = due,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "publishing the log failed"),
        }
        ctx.changed.notify_waiters();
    }
}

/// Has the members witness the whole log, then publishes the checkpoint with their
/// cosignatures so they can act on it.
/// Returns whether the checkpoint reached the witness quorum and went out for action; one that
/// did not is tried again, since members act (and send partial decryptions) only on
/// checkpoints the quorum cosigned.
async fn publish(ctx: &Arc<Context>) -> Result<bool, CoordinatorError> {
    let _guard = ctx.publish_lock.lock().await;
    let (checkpoint, note, leaves, sizes, connected, connections, quorum) = {
        let s = ctx.lock();
        let (checkpoint, note) = s.log.sign_checkpoint(&ctx.log_signer)?;
        (
            checkpoint,
            note,
            s.log.state().leaves().to_vec(),
            s.member_sizes.clone(),
            s.connected,
            s.connections.clone(),
            s.membership.witness_quorum,
        )
    };
    let note_bytes = note.encode().into_bytes();
    let leaves = Arc::new(leaves);
    let mut tasks = Vec::new();
    for (m, peer) in ctx.peers.iter().enumerate() {
        if connected & (1 << m) == 0 {
            continue;
        }
        let (handle, peer, leaves, note) = (
            ctx.handle.clone(),
            *peer,
            leaves.clone(),
            note_bytes.clone(),
        );
        let mut from = sizes[m].min(leaves.len() as u64);
        tasks.push(tokio::spawn(async move {
            for _ in 0..1000 {
                let end = (from as usize + MAX_ENTRIES_PER_MESSAGE).min(leaves.len());
                let request = Request::Witness {
                    from,
                    entries: leaves[from as usize..end].to_vec(),
                    note: note.clone(),
                };
                match handle.call(peer, &request).await {
                    Ok(Response::Cosigned { size, line }) => return (m, size, Some(line)),
                    Ok(Response::Behind { size }) if size <= leaves.len() as u64 => from = size,
                    Ok(other) => {
                        tracing::warn!(member = m, response = ?other, "witness refused");
                        return (m, from, None);
                    }
                    Err(e) => {
                        tracing::debug!(member = m, error = %e, "witness request failed");
                        return (m, from, None);
                    }
                }
            }
            (m, from, None)
        }));
    }
    let mut lines = Vec::new();
    for task in tasks {
        if let Ok((m, size, line)) = task.await {
            ctx.lock().member_sizes[m] = size;
            if let Some(line) = line.and_then(|l| SignatureLine::parse(l.trim_end()).ok()) {
                lines.push(line);
            }
        }
    }
    let stored = {
        let s = ctx.lock();
        // A line that does not verify is dropped by add_cosignatures' check.
        let valid: Vec<SignatureLine> = lines
            .into_iter()
            .filter(|l| {
                ctx.witnesses.iter().any(|w| {
                    w.name() == l.name && w.key_id() == l.key_id && w.verify(&note.text, l).is_ok()
                })
            })
            .collect();
        s.log
            .add_cosignatures(checkpoint.size, &valid, &ctx.witnesses)?;
        let (_, bytes) = s
            .log
            .store()
            .latest_checkpoint()
            .map_err(AuditLogError::from)?
            .ok_or(AuditLogError::NoSuchCheckpoint(checkpoint.size))?;
        bytes
    };
    let cosigned = Note::parse(&stored)
        .map(|n| n.signatures.len().saturating_sub(1))
        .unwrap_or(0);
    if cosigned < usize::from(quorum) {
        tracing::debug!(cosigned, quorum, "checkpoint short of the witness quorum");
        return Ok(false);
    }
    let (mut tasks, mut reached) = (Vec::new(), Vec::new());
    for (m, peer) in ctx.peers.iter().enumerate() {
        if connected & (1 << m) == 0 {
            continue;
        }
        let (handle, peer, note) = (ctx.handle.clone(), *peer, stored.clone());
        tasks.push(tokio::spawn(async move {
            match handle.call(peer, &Request::Act { note }).await {
                Ok(Response::Ok) => true,
                Ok(other) => {
                    tracing::debug!(member = m, response = ?other, "checkpoint refused");
                    false
                }
                Err(e) => {
                    tracing::debug!(member = m, error = %e, "publishing the checkpoint failed");
                    false
                }
            }
        }));
        reached.push(m);
    }
    for (task, m) in tasks.into_iter().zip(reached) {
        if task.await.unwrap_or(false) {
            let mut s = ctx.lock();
            s.acted_connections[m] = s.acted_connections[m].max(connections[m]);
        }
    }
    Ok(true)
}
