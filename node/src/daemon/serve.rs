//! The requests this node answers: from the coordinator, checkpoints to witness and to act on
//! and the end of its run; from members, incidents, partial decryptions and requests to send
//! one again. Anything else, or from anyone else, is refused.

use super::*;

pub(super) fn refused(reason: impl Into<String>) -> Response {
    Response::Refused {
        reason: reason.into(),
    }
}

pub(super) async fn handle_request(ctx: Arc<Context>, peer: PeerId, request: Request) -> Response {
    match request {
        Request::Witness {
            from,
            entries,
            note,
        } if peer == ctx.coordinator => witness(&ctx, from, entries, &note).await,
        Request::Finished { last_round } if peer == ctx.coordinator => {
            tracing::info!(last_round, "the coordinator's run is over");
            ctx.lock().run_over = Some(last_round);
            leave_if_run_over(&ctx);
            Response::Ok
        }
        Request::Act { note } if peer == ctx.coordinator => match act(&ctx, &note) {
            Ok(()) => Response::Ok,
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint refused");
                refused(e.to_string())
            }
        },
        Request::Incident { entry } => match ctx.member_of(&peer) {
            Some(member) if member != ctx.me => match hear_incident(&ctx, member, &entry) {
                Ok(()) => Response::Ok,
                Err(e) => refused(e.to_string()),
            },
            _ => refused("incidents are heard from members only"),
        },
        Request::Resend { request } => match ctx.member_of(&peer) {
            Some(member) if member != ctx.me => match resend_partial(&ctx, member, request) {
                Ok(()) => Response::Ok,
                Err(e) => refused(e.to_string()),
            },
            _ => refused("partial decryptions are sent to members only"),
        },
        Request::Partial {
            request,
            index,
            count,
            bytes,
        } => match ctx.member_of(&peer) {
            Some(member) if member != ctx.me => {
                match receive_partial(&ctx, member, request, index, count, bytes) {
                    Ok(()) => Response::Ok,
                    Err(e) => refused(e.to_string()),
                }
            }
            _ => refused("partial decryptions are taken from members only"),
        },
        _ => refused("not a request this node serves for this peer"),
    }
}
