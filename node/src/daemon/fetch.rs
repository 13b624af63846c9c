//! Ciphertexts fetched from the coordinator by digest, chunk by chunk, and the recomputation
//! of a request's ciphertext from the model this member holds.

use super::*;

/// Chunk requests in flight at once while fetching: enough to keep the connection busy.
const FETCH_WINDOW: usize = 8;

pub(super) async fn fetch_chunk(
    ctx: &Context,
    digest: &Digest,
    index: u32,
) -> Result<(u64, Vec<u8>), StepError> {
    let response = ctx
        .handle
        .call(
            ctx.coordinator,
            &Request::Fetch {
                ciphertext: *digest,
                index,
            },
        )
        .await?;
    match response {
        Response::Data { length, bytes } => Ok((length, bytes)),
        other => Err(StepError::Unexpected {
            request: format!(
                "the fetch of chunk {index} of {}",
                hex::encode(&digest[..8])
            ),
            response: format!("{other:?}"),
        }),
    }
}

/// Adds `weight` times the ciphertext `digest` names, fetched from the coordinator, into `acc`
/// as its chunks arrive: each chunk's size is checked on arrival and the whole against the
/// digest at the end, by one hash over the bytes in flight. Nothing is written to disk and no
/// buffer of the ciphertext's size is made. On an error `acc` is gone with it: it holds part of
/// a term that may not be the logged one.
pub(super) async fn add_fetched(
    ctx: &Context,
    acc: Ciphertext,
    digest: &Digest,
    weight: i64,
) -> Result<Ciphertext, RecomputeError> {
    use futures::StreamExt;
    let fetch_error = |source: StepError| RecomputeError::Fetch {
        digest: *digest,
        source: Box::new(source),
    };
    let expected_length = protocol::wire::ciphertext_encoded_len(ctx.shape()) as u64;
    // The first chunk brings the length; the rest come pipelined.
    let (length, first) = fetch_chunk(ctx, digest, 0).await.map_err(fetch_error)?;
    if length != expected_length {
        return Err(fetch_error(StepError::CiphertextLength {
            digest: *digest,
            length,
            expected: expected_length,
        }));
    }
    let count = length.div_ceil(CHUNK_BYTES as u64) as u32;
    // Each chunk's size is checked as it arrives, the whole's digest once the last is in
    // (`TermStream::finish`): nothing is used before that.
    let check = |index: usize, chunk: &[u8]| -> Result<(), RecomputeError> {
        let expected = (length as usize - index * CHUNK_BYTES).min(CHUNK_BYTES);
        if chunk.len() != expected {
            return Err(fetch_error(StepError::ChunkSize {
                digest: *digest,
                index,
                size: chunk.len(),
                expected,
            }));
        }
        Ok(())
    };
    check(0, &first)?;
    // Hashing and adding run off the event loop, a few chunks behind the fetches.
    let (chunks, mut arriving) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (wanted, limits) = (*digest, ctx.limits);
    let adder = tokio::task::spawn_blocking(move || {
        let mut acc = acc;
        let mut term = protocol::round::TermStream::new(&mut acc, wanted, weight, limits);
        while let Some(chunk) = arriving.blocking_recv() {
            term.push::<std::io::Error>(&chunk)?;
        }
        term.finish::<std::io::Error>()?;
        Ok::<_, RecomputeError>(acc)
    });
    let fetched = async {
        chunks
            .send(first)
            .await
            .map_err(|_| RecomputeError::Interrupted)?;
        let mut rest = futures::stream::iter(1..count)
            .map(|index| fetch_chunk(ctx, digest, index))
            .buffered(FETCH_WINDOW);
        let mut index = 1;
        while let Some(chunk) = rest.next().await {
            let (_, chunk) = chunk.map_err(fetch_error)?;
            check(index, &chunk)?;
            chunks
                .send(chunk)
                .await
                .map_err(|_| RecomputeError::Interrupted)?;
            index += 1;
        }
        Ok::<_, RecomputeError>(())
    }
    .await;
    drop(chunks);
    let added = adder.await?;
    // A fetch that failed says why; a send refused because the adder stopped, the adder does
    // (it refused the encoding).
    let acc = match fetched {
        Err(RecomputeError::Interrupted) | Ok(()) => added?,
        Err(e) => return Err(e),
    };
    ctx.bytes_fetched
        .fetch_add(length, std::sync::atomic::Ordering::Relaxed);
    Ok(acc)
}

/// Why a request's ciphertext could not be recomputed (a mismatch is not an error: `None`).
#[derive(Debug, thiserror::Error)]
pub enum RecomputeError {
    #[error("fetching ciphertext {}: {source}", hex::encode(&digest[..8]))]
    Fetch {
        digest: Digest,
        source: Box<StepError>,
    },
    #[error(transparent)]
    Aggregate(#[from] protocol::round::policy::AggregateError<std::io::Error>),
    #[error(transparent)]
    Rerandomize(#[from] protocol::he::HeError),
    #[error("the recomputation stopped: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("the recomputation stopped before the ciphertext was complete")]
    Interrupted,
    #[error(
        "this member's kept copy of ciphertext {} was damaged on disk; it fetches it next time",
        hex::encode(&digest[..8])
    )]
    DamagedOnDisk { digest: Digest },
}

/// The ciphertext `target` names, come by as `ReleaseTarget::obtain` says for this member:
/// recomputed ([`recompute`]), or, outside the quorum of a first attempt, fetched and checked
/// against the request's digest (recomputed if that fails). Either way it is kept for the next
/// round, which builds on it, and it is `None` if it is not the round's aggregate. A fetched
/// one is combined only once the whole quorum's releases are logged (`combine` checks), and
/// the honest member among them released on a recomputation of this very digest.
pub(super) async fn obtain(
    ctx: &Arc<Context>,
    target: &ReleaseTarget,
) -> Result<Option<BoundCiphertext>, RecomputeError> {
    if target.obtain(ctx.me) == Obtain::Recompute {
        return recompute(ctx, target).await;
    }
    // Outside the quorum a model read ahead is not needed, and would be held beside the fetch.
    preload::forget(ctx).await;
    match fetch_aggregate(ctx, target).await {
        // The contributions are there (the quorum fetched them): recomputing is the stronger
        // check, and costs only time.
        Err(e) => {
            tracing::warn!(
                request = target.request,
                error = %e,
                "the aggregate could not be fetched; recomputing it"
            );
            recompute(ctx, target).await
        }
        fetched => fetched,
    }
}

/// A first attempt's ciphertext, which is the round's aggregate: fetched onto zero as a term of
/// weight 1, so that its chunks are checked as they arrive and the whole against the request's
/// digest, then kept as a recomputed aggregate is. One ciphertext fetched instead of every
/// other member's contribution.
async fn fetch_aggregate(
    ctx: &Arc<Context>,
    target: &ReleaseTarget,
) -> Result<Option<BoundCiphertext>, RecomputeError> {
    if target.ciphertext != target.aggregate {
        return Ok(None);
    }
    let zero = Ciphertext::zero(ctx.shape());
    let fetched = add_fetched(ctx, zero, &target.ciphertext, 1).await?;
    let (dir, expected, base) = (ctx.held.clone(), target.aggregate, target.base);
    Ok(
        tokio::task::spawn_blocking(move || held::keep_if(&dir, fetched, &expected, base.as_ref()))
            .await?,
    )
}

/// Recomputes the ciphertext `target` names from this member's own held encrypted model and the
/// logged contributions (fetched by digest, added as they arrive and checked), re-randomised
/// from the logged seed on a retry. `None` if the round's aggregate or the request's
/// ciphertext has another digest: the coordinator asked for something other than the agreed
/// aggregate of the model this member verified.
pub(super) async fn recompute(
    ctx: &Arc<Context>,
    target: &ReleaseTarget,
) -> Result<Option<BoundCiphertext>, RecomputeError> {
    match recompute_once(ctx, target).await {
        // The damaged file is gone: the second time fetches what it held.
        Err(RecomputeError::DamagedOnDisk { .. }) => recompute_once(ctx, target).await,
        done => done,
    }
}

async fn recompute_once(
    ctx: &Arc<Context>,
    target: &ReleaseTarget,
) -> Result<Option<BoundCiphertext>, RecomputeError> {
    // Never the aggregate the close names taken from the held directory: that digest is the
    // coordinator's word, and only recomputing it from the logged contributions checks it.
    // Only the base is looked up there, a digest this member's verified chain named.
    let mut acc = Ciphertext::zero(ctx.shape());
    if let Some(base) = target.base {
        let kept = match preload::take(ctx, base).await {
            read_ahead @ Some(_) => read_ahead,
            None => load_held(ctx, base).await?,
        };
        acc = match kept {
            Some(kept) => kept.into_ciphertext(),
            // The base is a term of weight 1 onto zero.
            None => add_fetched(ctx, acc, &base, 1).await?,
        };
    }
    for term in &target.terms {
        acc = add_term(ctx, acc, &term.ciphertext, term.weight).await?;
    }
    // Kept for the next round, which builds on it, if it is the agreed aggregate.
    let (dir, expected, base) = (ctx.held.clone(), target.aggregate, target.base);
    let kept =
        tokio::task::spawn_blocking(move || held::keep_if(&dir, acc, &expected, base.as_ref()))
            .await?;
    let Some(aggregate) = kept else {
        return Ok(None);
    };
    let recomputed = if target.attempt == 0 {
        aggregate
    } else {
        let (worker, seed) = (ctx.clone(), target.seed);
        tokio::task::spawn_blocking(move || {
            let mut acc = aggregate.into_ciphertext();
            worker.key.rerandomize(&mut acc, seed)?;
            Ok::<_, RecomputeError>(BoundCiphertext::new(acc))
        })
        .await??
    };
    Ok(Some(recomputed).filter(|bound| bound.digest().0 == target.ciphertext))
}

/// Adds a term from this member's own kept contribution if it is one, or else as fetched. A
/// kept file found damaged part-way has spoilt the accumulator: the recomputation starts
/// again (the file is gone, so it fetches the term then).
async fn add_term(
    ctx: &Arc<Context>,
    acc: Ciphertext,
    digest: &Digest,
    weight: i64,
) -> Result<Ciphertext, RecomputeError> {
    let (dir, wanted, limits) = (ctx.contributed.clone(), *digest, ctx.limits);
    let added =
        tokio::task::spawn_blocking(move || held::add_kept(&dir, acc, &wanted, weight, limits))
            .await?;
    match added {
        held::Kept::Added(acc) => Ok(acc),
        held::Kept::Missing(acc) => add_fetched(ctx, acc, digest, weight).await,
        held::Kept::Damaged => Err(RecomputeError::DamagedOnDisk { digest: *digest }),
    }
}

/// The held model of `digest`, read and hashed off the event loop; `None` if this member does
/// not hold it intact.
async fn load_held(
    ctx: &Context,
    digest: Digest,
) -> Result<Option<BoundCiphertext>, RecomputeError> {
    let (dir, shape, limits) = (ctx.held.clone(), ctx.shape(), ctx.limits);
    Ok(tokio::task::spawn_blocking(move || held::load(&dir, &digest, shape, limits)).await?)
}
