//! Contributing to a round: the update from the source, encoded and encrypted off the async
//! threads, kept locally, then offered to the coordinator and uploaded chunk by chunk.

use super::*;

pub(super) async fn contribute(ctx: &Arc<Context>, round: u64) -> Result<(), StepError> {
    // A model read ahead for an earlier round's request that never came: the encryption
    // needs the memory.
    preload::forget(ctx).await;
    let worker = ctx.clone();
    let prepared = tokio::task::spawn_blocking(move || -> Result<Prepared, StepError> {
        // Taken out of memory: the rest of the round does not need it.
        let model = worker.plan.decode_model(&worker.held_model(true)?.0);
        let update = worker
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(round, &model)?;
        drop(model);
        if update.values.len() != worker.plan.values as usize {
            return Err(StepError::UpdateSize {
                got: update.values.len(),
                plan: worker.plan.values,
            });
        }
        let codec = worker.plan.codec()?;
        let clipped = codec.clipped(&update.values);
        let encoded = codec.encode(&update.values)?;
        let samples = update.samples;
        drop(update);
        let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
        let ciphertext = worker.key.encrypt(&encoded, &worker.budget, &mut rng)?;
        drop(encoded);
        // Kept, so that when this member recomputes the round's aggregate it need not fetch
        // it back, and uploaded from the file: the encoding is never whole in memory.
        let payload = match held::keep_encoding(&worker.contributed, ciphertext) {
            Ok(kept) => Payload::File(kept),
            Err(failed) => {
                tracing::warn!(
                    error = %failed.error,
                    dir = %worker.contributed.display(),
                    "the contribution could not be kept on this node's disk; uploading it \
                     from memory, and fetching it back to recompute the aggregate"
                );
                Payload::Bytes {
                    bytes: encode_ciphertext(failed.ciphertext.ciphertext()).into(),
                    digest: failed.ciphertext.digest().0,
                }
            }
        };
        Ok((payload, samples, clipped))
    })
    .await;
    let (payload, samples, clipped) = match prepared.map_err(StepError::from).and_then(|p| p) {
        Ok(prepared) => prepared,
        Err(e) => {
            sit_out(ctx, round, &e);
            return Err(e);
        }
    };
    report_clipping(ctx, round, clipped);
    let digest = payload.digest();
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
        &payload,
        &format!("round {round}'s contribution"),
        |ctx| abort_if(ctx.fault.as_ref(), Step::Upload, round),
    )
    .await?;
    tracing::info!(round, leaf, bytes = payload.length(), "contribution logged");
    // While the coordinator sums the round, a member expecting to release reads the model
    // its recomputation starts from.
    preload::start(ctx, round).await;
    Ok(())
}

/// What an upload sends: an encoding in memory, or one kept in a file and read back chunk by
/// chunk as it is sent.
pub(super) enum Payload<'a> {
    /// The encoding and its digest, which the caller computed already.
    Bytes {
        bytes: std::borrow::Cow<'a, [u8]>,
        digest: Digest,
    },
    File(held::KeptEncoding),
}

impl Payload<'_> {
    fn digest(&self) -> Digest {
        match self {
            Payload::Bytes { digest, .. } => *digest,
            Payload::File(kept) => kept.digest,
        }
    }

    fn length(&self) -> u64 {
        match self {
            Payload::Bytes { bytes, .. } => bytes.len() as u64,
            Payload::File(kept) => kept.length,
        }
    }

    async fn chunk(&self, index: usize) -> Result<Vec<u8>, StepError> {
        match self {
            Payload::Bytes { bytes, .. } => Ok(bytes
                .chunks(CHUNK_BYTES)
                .nth(index)
                .unwrap_or_default()
                .to_vec()),
            Payload::File(kept) => {
                let (file, length) = (kept.file.clone(), kept.length);
                let read =
                    tokio::task::spawn_blocking(move || held::read_chunk(&file, length, index))
                        .await?;
                read.map_err(|source| StepError::Io {
                    path: kept.path.clone(),
                    source,
                })
            }
        }
    }
}

/// Offers `payload` (a ciphertext's encoding) to the coordinator with `entry`, which is logged
/// once the whole upload matches, and sends it chunk by chunk (the caller holds the author
/// lock). A coordinator that holds the ciphertext already logs the entry at the offer.
/// `half_way` runs after half the chunks (a fault step).
pub(super) async fn upload(
    ctx: &Context,
    entry: &SignedEntry,
    payload: &Payload<'_>,
    what: &str,
    half_way: impl Fn(&Context),
) -> Result<u64, StepError> {
    let digest = payload.digest();
    let offer = Request::Offer {
        entry: entry.leaf().to_vec(),
        length: payload.length(),
    };
    match ctx.handle.call(ctx.coordinator, &offer).await {
        Ok(Response::Ok) => {}
        Ok(Response::Appended { leaf }) => {
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
    let count = payload.length().div_ceil(CHUNK_BYTES as u64) as usize;
    for index in 0..count {
        let chunk = payload.chunk(index).await?;
        ctx.sent(chunk.len());
        let response = ctx
            .handle
            .call(
                ctx.coordinator,
                &Request::Chunk {
                    ciphertext: digest,
                    index: index as u32,
                    bytes: chunk,
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
type Prepared = (Payload<'static>, u64, usize);

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
