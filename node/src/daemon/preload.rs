//! The encrypted model a round builds on, read ahead by a member that expects to release.
//!
//! A quorum member's recomputation starts from the model it holds: reading it back, hashing
//! and decoding it took 0.6 s of a 10M round, on the round's critical path, while the machine
//! idled as the coordinator summed the contributions. So a member that expects to be named
//! (`Member::expects_to_release`) reads it as soon as its own contribution is logged, and the
//! recomputation takes it from here. It is the same check as reading it then (the file must
//! hash to the base the request names, or it is read again or fetched), so nothing is trusted
//! that was not before; a wrong guess costs one read and the memory until the next request.

use super::*;

/// A read of the held encrypted model `base` under way or done.
pub(super) struct Preloaded {
    base: Digest,
    loading: tokio::task::JoinHandle<Option<BoundCiphertext>>,
}

/// Starts reading the model this member holds, if it expects to release for the round it
/// just contributed to and the round builds on an encrypted model (not on zero).
pub(super) async fn start(ctx: &Arc<Context>) {
    let base = {
        let state = ctx.lock();
        if !state.member.expects_to_release() {
            return;
        }
        state.member.held().base
    };
    if base == protocol::round::rules::ZERO_BASE {
        return;
    }
    let (dir, shape, limits) = (ctx.held.clone(), ctx.shape(), ctx.limits);
    let loading = tokio::task::spawn_blocking(move || held::load(&dir, &base, shape, limits));
    *ctx.preloaded.lock().await = Some(Preloaded { base, loading });
}

/// The model `base` if it was read ahead (waiting for the read to end), otherwise `None`.
/// Taken: a second recomputation reads it again.
pub(super) async fn take(ctx: &Context, base: Digest) -> Option<BoundCiphertext> {
    let preloaded = ctx.preloaded.lock().await.take()?;
    if preloaded.base != base {
        return None;
    }
    preloaded.loading.await.ok().flatten()
}

/// Lets go of a model read ahead: this member is not in the request's quorum, or a new
/// round's encryption is about to need the memory.
pub(super) async fn forget(ctx: &Context) {
    ctx.preloaded.lock().await.take();
}
