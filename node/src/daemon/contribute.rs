//! Contributing to a round: the update from the source, encoded and encrypted off the async
//! threads, kept locally, then offered to the coordinator and uploaded chunk by chunk.

use super::*;

pub(super) async fn contribute(ctx: &Arc<Context>, round: u64) -> Result<(), StepError> {
    let model = ctx.plan.decode_model(&ctx.lock().model);
    let worker = ctx.clone();
    let prepared = tokio::task::spawn_blocking(move || -> Result<Prepared, StepError> {
        let update = worker
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(round, &model)?;
        if update.values.len() != worker.plan.values as usize {
            return Err(StepError::UpdateSize {
                got: update.values.len(),
                plan: worker.plan.values,
            });
        }
        let codec = worker.plan.codec()?;
        let clipped = codec.clipped(&update.values);
        let encoded = codec.encode(&update.values)?;
        let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
        let ciphertext = worker.key.encrypt(&encoded, &worker.budget, &mut rng)?;
        Ok((encode_ciphertext(&ciphertext), update.samples, clipped))
    })
    .await;
    let (bytes, samples, clipped) = match prepared.map_err(StepError::from).and_then(|p| p) {
        Ok(prepared) => prepared,
        Err(e) => {
            sit_out(ctx, round, &e);
            return Err(e);
        }
    };
    report_clipping(ctx, round, clipped);
    let digest = encoded_digest(&bytes).0;
    // Kept, so that when this member recomputes the round's aggregate it need not fetch it
    // back; written while the upload runs, and done before its last chunk (which has it logged).
    let bytes = Arc::new(bytes);
    let (dir, for_disk, digest_kept) = (ctx.contributed.clone(), bytes.clone(), digest);
    let keeping =
        tokio::task::spawn_blocking(move || held::keep_only(&dir, &digest_kept, &for_disk));
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
    let leaf = upload(
        ctx,
        &entry,
        digest,
        &bytes,
        &format!("round {round}'s contribution"),
        Some(keeping),
        |ctx| abort_if(ctx.fault.as_ref(), Step::Upload, round),
    )
    .await?;
    tracing::info!(round, leaf, bytes = bytes.len(), "contribution logged");
    Ok(())
}

/// Offers `bytes` (a ciphertext of digest `digest`) to the coordinator with `entry`, which is
/// logged once the whole upload matches, and sends it chunk by chunk (the caller holds the
/// author lock). A coordinator that holds the ciphertext already logs the entry at the offer.
/// `before_last` (a local write of the same bytes) is awaited before the last chunk, so the
/// entry is logged only once it is done; `half_way` runs after half the chunks (a fault step).
pub(super) async fn upload(
    ctx: &Context,
    entry: &SignedEntry,
    digest: Digest,
    bytes: &[u8],
    what: &str,
    before_last: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    half_way: impl Fn(&Context),
) -> Result<u64, StepError> {
    let offer = Request::Offer {
        entry: entry.leaf().to_vec(),
        length: bytes.len() as u64,
        chunks: chunk_digests(bytes),
    };
    let mut before_last = before_last;
    match ctx.handle.call(ctx.coordinator, &offer).await {
        Ok(Response::Ok) => {}
        Ok(Response::Appended { leaf }) => {
            if let Some(keeping) = before_last.take()
                && let Err(e) = keeping.await?
            {
                tracing::warn!(error = %e, "{what} could not be kept on this node's disk");
            }
            finish_append(ctx, entry, Response::Appended { leaf })?;
            return Ok(leaf);
        }
        Ok(other) => {
            return Err(StepError::Unexpected {
                request: format!("the offer of {what}"),
                response: format!("{other:?}"),
            });
        }
        Err(e) => return Err(e.into()),
    }
    let count = bytes.len().div_ceil(CHUNK_BYTES);
    for (index, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
        if index + 1 == count
            && let Some(keeping) = before_last.take()
            && let Err(e) = keeping.await?
        {
            tracing::warn!(error = %e, "{what} could not be kept on this node's disk");
        }
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
            .await?;
        if index + 1 == count.div_ceil(2) {
            half_way(ctx);
        }
        if index + 1 == count {
            return finish_append(ctx, entry, response);
        } else if response != Response::Ok {
            return Err(StepError::Unexpected {
                request: format!("chunk {index} of {what}"),
                response: format!("{response:?}"),
            });
        }
    }
    Err(StepError::Unexpected {
        request: format!("the upload of {what}"),
        response: "no chunks to send".into(),
    })
}

/// The ciphertext of an update, its declared samples, and how many of its values were clipped.
type Prepared = (Vec<u8>, u64, usize);

/// Above this fraction of clipped values a member warns: its updates are being changed, not
/// just rounded (the plan's clip is too small for them, or the trainer writes weights).
pub const CLIP_WARNING_FRACTION: f64 = 0.01;

/// Keeps the fraction of this round's update that the plan's clip changed, for the round
/// report, and warns past [`CLIP_WARNING_FRACTION`].
fn report_clipping(ctx: &Context, round: u64, clipped: usize) {
    let fraction = clipped as f64 / f64::from(ctx.plan.values.max(1));
    {
        let mut state = ctx.lock();
        state.clipped.insert(round, fraction);
        while state.clipped.len() > 8 {
            state.clipped.pop_first();
        }
    }
    if fraction > CLIP_WARNING_FRACTION {
        tracing::warn!(
            round,
            clipped,
            percent = format!("{:.2}", 100.0 * fraction),
            clip = ctx.plan.clip,
            "the update had values beyond the plan's clip, which were clamped to it: raise the \
             plan's clip if they are genuine, or check the trainer writes trained minus global"
        );
    } else if clipped > 0 {
        tracing::info!(
            round,
            clipped,
            "values of the update clamped to the plan's clip"
        );
    }
}

/// Says at once that this member has no update for `round` (its trainer failed, timed out or
/// wrote something unusable), with the reason: the coordinator stops waiting for it instead of
/// holding the round open until the deadline, and the log names who sat out and why.
fn sit_out(ctx: &Arc<Context>, round: u64, error: &StepError) {
    let open = ctx
        .lock()
        .entries
        .iter()
        .rposition(|e| matches!(e.entry.body, Body::RoundOpen { round: r, .. } if r == round));
    let Some(open) = open else {
        return;
    };
    // The whole error stays in this node's log; the consortium's log gets its kind.
    let reason = match error {
        StepError::Source(e) => e.public_reason(),
        other => other.to_string(),
    };
    incident(
        ctx,
        IncidentCode::NoUpdate,
        protocol::round::incidents::declining_evidence(open as u64),
        format!("not contributing to round {round}: no update: {reason}"),
    );
}
