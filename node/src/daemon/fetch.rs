//! Ciphertexts fetched from the coordinator by digest, chunk by chunk, and the recomputation
//! of a request's ciphertext from the model this member holds.

use super::*;

/// Chunk requests in flight at once while fetching: enough to keep the connection busy.
const FETCH_WINDOW: usize = 8;

pub(super) async fn fetch_chunk(
    ctx: &Context,
    digest: &Digest,
    index: u32,
) -> Result<(u64, Vec<Digest>, Vec<u8>), StepError> {
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
        Response::Data {
            length,
            chunks,
            bytes,
        } => Ok((length, chunks, bytes)),
        other => Err(StepError::Unexpected {
            request: format!(
                "the fetch of chunk {index} of {}",
                hex::encode(&digest[..8])
            ),
            response: format!("{other:?}"),
        }),
    }
}

/// A ciphertext by digest, from the scratch directory, from the model this member holds
/// (`held`), or from the coordinator (each chunk's size checked on arrival, the whole against
/// the digest before it is kept); returns its path in the scratch directory.
pub(super) async fn fetch(ctx: &Context, digest: &Digest) -> Result<PathBuf, StepError> {
    use futures::StreamExt;
    let path = ctx.scratch.join(hex::encode(digest));
    if path.exists() {
        return Ok(path);
    }
    // Hashed off the event loop (230 MB at 10M values); linked in, so that keeping a later
    // model cannot take it away while it is read.
    let (dir, wanted) = (ctx.held.clone(), *digest);
    let held = tokio::task::spawn_blocking(move || held::find(&dir, &wanted))
        .await
        .ok()
        .flatten();
    if let Some(held) = held {
        match std::fs::hard_link(&held, &path) {
            Ok(()) => return Ok(path),
            Err(_) if path.exists() => return Ok(path),
            Err(e) => tracing::warn!(error = %e, "the held model could not be linked; fetching it"),
        }
    }
    let expected_length = protocol::wire::ciphertext_encoded_len(ctx.plan.values as usize) as u64;
    // The first chunk brings the length and every chunk's digest; the rest come pipelined.
    let (length, chunk_list, first) = fetch_chunk(ctx, digest, 0).await?;
    if length != expected_length {
        return Err(StepError::CiphertextLength {
            digest: *digest,
            length,
            expected: expected_length,
        });
    }
    if chunk_list.len() as u64 != length.div_ceil(CHUNK_BYTES as u64) {
        return Err(StepError::ChunkList {
            digest: *digest,
            chunks: chunk_list.len(),
            length,
        });
    }
    // Each chunk's size is checked as it arrives, the whole's digest once the last is in:
    // nothing is used before that, so hashing every chunk on its own as well would only
    // spend a second pass over every byte.
    let check = |index: usize, chunk: &[u8]| -> Result<(), StepError> {
        let expected = (length as usize - index * CHUNK_BYTES).min(CHUNK_BYTES);
        if chunk.len() != expected {
            return Err(StepError::ChunkSize {
                digest: *digest,
                index,
                size: chunk.len(),
                expected,
            });
        }
        Ok(())
    };
    check(0, &first)?;
    let mut whole = Sha256::new();
    whole.update(&first);
    let mut bytes = Vec::with_capacity(length as usize);
    bytes.extend_from_slice(&first);
    let mut rest = futures::stream::iter(1..chunk_list.len() as u32)
        .map(|index| fetch_chunk(ctx, digest, index))
        .buffered(FETCH_WINDOW);
    let mut index = 1;
    while let Some(chunk) = rest.next().await {
        let (_, _, chunk) = chunk?;
        check(index, &chunk)?;
        whole.update(&chunk);
        bytes.extend_from_slice(&chunk);
        index += 1;
    }
    if whole.finalize().as_slice() != digest {
        return Err(StepError::WholeDigest { digest: *digest });
    }
    ctx.bytes_fetched
        .fetch_add(length, std::sync::atomic::Ordering::Relaxed);
    keep(ctx, digest, &bytes)
}

/// Keeps a ciphertext in the scratch directory under its digest.
pub(super) fn keep(ctx: &Context, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, StepError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = ctx.scratch.join(hex::encode(digest));
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = path.with_extension(format!("part{unique}"));
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| StepError::Io { path, source }
    };
    std::fs::write(&temp, bytes).map_err(io(&temp))?;
    std::fs::rename(&temp, &path).map_err(io(&path))?;
    Ok(path)
}

/// Why a request's ciphertext could not be recomputed (a mismatch is not an error: `None`).
#[derive(Debug, thiserror::Error)]
pub enum RecomputeError {
    #[error("fetching ciphertext {}: {source}", hex::encode(&digest[..8]))]
    Fetch {
        digest: Digest,
        source: Box<StepError>,
    },
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the held encrypted model: {0}")]
    Decode(#[from] protocol::wire::WireError),
    #[error(transparent)]
    Aggregate(#[from] protocol::round::policy::AggregateError<std::io::Error>),
    #[error(transparent)]
    Rerandomize(#[from] protocol::he::HeError),
    #[error("the recomputation stopped: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// Recomputes the ciphertext `target` names from this member's own held encrypted model and the
/// logged contributions (fetched by digest and checked), re-randomised from the logged seed on
/// a retry. `None` if the round's aggregate or the request's ciphertext has another digest: the
/// coordinator asked for something other than the agreed aggregate of the model this member
/// verified.
pub(super) async fn recompute(
    ctx: &Arc<Context>,
    target: &ReleaseTarget,
) -> Result<Option<BoundCiphertext>, RecomputeError> {
    let mut files = HashMap::new();
    for digest in target
        .base
        .iter()
        .chain(target.terms.iter().map(|t| &t.ciphertext))
    {
        let path = fetch(ctx, digest)
            .await
            .map_err(|source| RecomputeError::Fetch {
                digest: *digest,
                source: Box::new(source),
            })?;
        files.insert(*digest, path);
    }
    let worker = ctx.clone();
    let t = target.clone();
    let recomputed = tokio::task::spawn_blocking(move || {
        let mut acc = match t.base {
            Some(digest) => {
                let path = &files[&digest];
                let bytes = std::fs::read(path).map_err(|source| RecomputeError::Read {
                    path: path.clone(),
                    source,
                })?;
                protocol::wire::decode_ciphertext(&bytes, worker.limits)?
            }
            None => Ciphertext::zero(worker.plan.values as usize, worker.budget.delta_bits()),
        };
        protocol::round::policy::aggregate(&mut acc, &t.weighted_terms(), worker.limits, |d| {
            std::fs::read(&files[d])
        })?;
        // Kept for the next round, which builds on it, if it is the agreed aggregate.
        let Some(bound) = held::keep_if(&worker.held, acc, &t.aggregate, t.base.as_ref()) else {
            return Ok(None);
        };
        if t.attempt == 0 {
            return Ok::<_, RecomputeError>(Some(bound));
        }
        let mut acc = bound.into_ciphertext();
        worker.key.rerandomize(&mut acc, t.seed)?;
        Ok(Some(BoundCiphertext::new(acc)))
    })
    .await??;
    Ok(recomputed.filter(|bound| bound.digest().0 == target.ciphertext))
}
