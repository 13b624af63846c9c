//! Under a plan with another optimizer than FedAvg: the server step after a decryption. The
//! member applies the optimizer to the decrypted average itself (every member gets the same
//! bits), encrypts the stepped model with randomness derived from that model (so every member
//! gets the same ciphertext and the coordinator, which never holds the model, cannot derive
//! it), keeps it as the base the next round builds on, and logs the step. The coordinator
//! receives the ciphertext with the first member's entry; the log moves its base on once t
//! members logged the same step.

use super::*;
use protocol::round::OptimizerState;
use protocol::round::optimizer::base_seed;

/// A server step being logged: marked in `State::stepping` while this lives, however its
/// owner ends.
pub(super) struct Stepping {
    ctx: Arc<Context>,
    request: u64,
}

impl Stepping {
    pub(super) fn mark(ctx: &Arc<Context>, request: u64) -> Self {
        ctx.lock().stepping.insert(request);
        Self {
            ctx: ctx.clone(),
            request,
        }
    }
}

impl Drop for Stepping {
    fn drop(&mut self) {
        self.ctx.lock().stepping.remove(&self.request);
    }
}

/// The model, state and next base after the server step of a decryption.
pub(super) struct Stepped {
    pub(super) model: Vec<i64>,
    pub(super) state: OptimizerState,
    pub(super) held: HeldModel,
    pub(super) bytes: Vec<u8>,
}

/// Applies the plan's optimizer to the decrypted average of `request` (of `round`), from the
/// model this member holds, and encrypts the result: the next base.
pub(super) async fn step(
    ctx: &Arc<Context>,
    request: u64,
    round: u64,
    average: Vec<i64>,
) -> Result<Stepped, StepError> {
    // The optimizer's state and the model it goes with, as this member holds them now.
    let (mut state, expected) = {
        let s = ctx.lock();
        (s.optimizer.clone(), *s.member.held())
    };
    let worker = ctx.clone();
    tokio::task::spawn_blocking(move || -> Result<Stepped, StepError> {
        let (previous, held) = worker.held_model(false)?;
        if held != expected {
            return Err(StepError::ModelMoved {
                request,
                expected: expected.round,
                found: held.round,
            });
        }
        let plan = &worker.plan;
        let model = plan.server_step(&previous, &average, &mut state)?;
        let bytes = encrypt_stepped(&worker, request, &model, &state)?;
        let held = HeldModel {
            round,
            base: encoded_digest(&bytes).0,
            model: model_digest(&model),
        };
        // The next round's recomputation starts from it: kept here, it is never fetched.
        if let Err(e) = held::keep_only(&worker.held, &held.base, &bytes) {
            tracing::warn!(error = %e, "the stepped model's ciphertext could not be kept");
        }
        Ok(Stepped {
            model,
            state,
            held,
            bytes,
        })
    })
    .await?
}

/// Logs this member's server step for `request`, sending the coordinator the ciphertext it
/// names unless the coordinator holds it already.
pub(super) async fn log_step(
    ctx: &Arc<Context>,
    request: u64,
    stepped: &HeldModel,
    state: &OptimizerState,
    bytes: &[u8],
) -> Result<u64, StepError> {
    let _author = ctx.author.lock().await;
    let entry = sign(
        ctx,
        Body::ServerStep {
            request,
            model: stepped.model,
            state: state.digest(),
            base: stepped.base,
        },
        vec![request],
        Some(stepped.base),
    );
    let leaf = upload(
        ctx,
        &entry,
        &Payload::Bytes {
            bytes: bytes.into(),
            digest: stepped.base,
        },
        &format!("the server step of request {request}"),
        |_| {},
    )
    .await?;
    ctx.lock().stepped.insert(request);
    tracing::info!(
        request,
        leaf,
        base = %hex::encode(&stepped.base[..8]),
        "server step logged"
    );
    Ok(leaf)
}

/// Logs this member's server step for `request` again from what it saved (the model and the
/// optimizer's state, in one transaction), encrypted again from the same seed, so the same
/// ciphertext: after a restart between saving and logging, or when logging failed. Tries until
/// it is logged or this member holds a later model (backing off up to [`STEP_RETRY_CAP`]: a
/// coordinator that was away waits for t steps before it opens another round); runs at most
/// once at a time per request.
pub(super) fn log_step_again(ctx: &Arc<Context>, request: u64) {
    if !ctx.lock().stepping.insert(request) {
        return;
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let mut attempt = 0u32;
        loop {
            if ctx.lock().stepped.contains(&request) {
                break;
            }
            match encrypt_saved_and_log(&ctx, request).await {
                Ok(_) | Err(StepError::NoLongerHeld { .. }) => break,
                Err(e) => {
                    tracing::warn!(request, attempt, error = %e, "the server step could not be logged")
                }
            }
            attempt += 1;
            let pause = Duration::from_secs(1 << attempt.min(5)).min(STEP_RETRY_CAP);
            tokio::time::sleep(pause).await;
        }
        ctx.lock().stepping.remove(&request);
        leave_if_run_over(&ctx);
    });
}

/// The longest pause between attempts at logging a server step.
const STEP_RETRY_CAP: Duration = Duration::from_secs(30);

async fn encrypt_saved_and_log(ctx: &Arc<Context>, request: u64) -> Result<u64, StepError> {
    let (held, state, round) = {
        let s = ctx.lock();
        let round = s.member.decryption(request).map(|d| d.round);
        (*s.member.held(), s.optimizer.clone(), round)
    };
    // Only the step of the model this member holds: once it holds a later one, this step is
    // history (and t other members' steps moved the chain on, or it would not have).
    if round != Some(held.round) {
        return Err(StepError::NoLongerHeld {
            request,
            held: held.round,
        });
    }
    let worker = ctx.clone();
    let for_seed = state.clone();
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, StepError> {
        encrypt_stepped(&worker, request, &worker.held_model(false)?.0, &for_seed)
    })
    .await??;
    if encoded_digest(&bytes).0 != held.base {
        return Err(StepError::SavedStepMismatch { request });
    }
    log_step(ctx, request, &held, &state, &bytes).await
}

/// The encoded encryption of a stepped model, from the seed every holder of the model derives
/// alike: the same bytes at every member, and again after a restart.
fn encrypt_stepped(
    ctx: &Context,
    request: u64,
    model: &[i64],
    state: &OptimizerState,
) -> Result<Vec<u8>, StepError> {
    let seed = base_seed(
        &ctx.key.fingerprint(),
        &ctx.plan.digest(),
        request,
        model,
        state,
    );
    let base = ctx.key.encrypt_model(model, &ctx.budget, seed)?;
    Ok(encode_ciphertext(&base))
}
