//! The encrypted model a round builds on, read ahead by a member that expects to release.
//!
//! A quorum member's recomputation starts from the model it holds: reading it back, hashing
//! and decoding it took 0.6 s of a 10M round, on the round's critical path, while the machine
//! idled as the coordinator summed the contributions. So a member that expects to be named
//! (`Member::expects_to_release`) reads it as soon as its own contribution is logged, and the
//! recomputation takes it from here. It is the same check as reading it then (the file must
//! hash to the base the request names, or it is read again or fetched), so nothing is trusted
//! that was not before. A wrong guess costs one read and the memory until the request: it is
//! let go when this member's release for the round ends however it ends, when it turns out to
//! be outside the quorum, when it adopts a model, and when its next contribution starts.

use super::*;

/// A read of the held encrypted model `base` under way or done.
pub(super) struct Preloaded {
    base: Digest,
    loading: tokio::task::JoinHandle<Option<BoundCiphertext>>,
}

/// Starts reading the model this member holds, if it expects to release for `round`, which
/// it just contributed to, the round builds on an encrypted model (not on zero), and no
/// request for the round has come yet (a coordinator that held back the answer to the upload
/// could otherwise leave a model read after the release that would have used it).
pub(super) async fn start(ctx: &Arc<Context>, round: u64) {
    let base = {
        let state = ctx.lock();
        if !state.member.expects_to_release() || state.member.requested(round) {
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

/// Lets go of a model read ahead: see the module's documentation for when.
pub(super) async fn forget(ctx: &Context) {
    ctx.preloaded.lock().await.take();
}
