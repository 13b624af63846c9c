//! The node's own log entries: signed with its next sequence number and appended through the
//! coordinator, its incidents (also sent to every member directly), and the incidents other
//! members send it.

use super::*;

/// Signs `body` with the node's next sequence number and appends it through the coordinator.
pub(super) async fn append(
    ctx: &Context,
    body: Body,
    references: Vec<u64>,
    payload: Option<Digest>,
) -> Result<u64, StepError> {
    let _author = ctx.author.lock().await;
    let entry = sign(ctx, body, references, payload);
    append_signed(ctx, &entry).await
}

/// Appends a signed entry through the coordinator (the caller holds the author lock).
pub(super) async fn append_signed(ctx: &Context, entry: &SignedEntry) -> Result<u64, StepError> {
    let response = ctx
        .handle
        .call(
            ctx.coordinator,
            &Request::Append {
                entry: entry.leaf().to_vec(),
            },
        )
        .await?;
    finish_append(ctx, entry, response)
}

pub(super) fn sign(
    ctx: &Context,
    body: Body,
    references: Vec<u64>,
    payload: Option<Digest>,
) -> SignedEntry {
    let state = ctx.lock();
    let author = ctx.signing.verifying_key().to_bytes();
    let sequence = state.next_sequence.max(state.log.next_sequence(&author));
    Entry::new(state.log.origin(), &ctx.signing, sequence, now_ms(), body)
        .referencing(references)
        .with_payload(payload)
        .sign(&ctx.signing)
}

pub(super) fn finish_append(
    ctx: &Context,
    entry: &SignedEntry,
    response: Response,
) -> Result<u64, StepError> {
    match response {
        Response::Appended { leaf } => {
            ctx.lock().next_sequence = entry.entry.sequence + 1;
            Ok(leaf)
        }
        Response::Refused { reason } => Err(StepError::Refused(reason)),
        other => Err(StepError::Unexpected {
            request: format!("the append of {}", entry.entry.body.kind_name()),
            response: format!("{other:?}"),
        }),
    }
}

/// Logs an incident (best effort: the node's refusal stands whether or not it is logged).
pub(super) fn incident(
    ctx: &Arc<Context>,
    code: IncidentCode,
    evidence: Digest,
    description: String,
) {
    let code = code.number();
    tracing::warn!(code, %description, "incident");
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let body = Body::Incident {
            code,
            evidence,
            description,
        };
        let _author = ctx.author.lock().await;
        let entry = sign(&ctx, body, vec![], None);
        let logged = append_signed(&ctx, &entry).await;
        if let Err(e) = &logged {
            tracing::error!(
                error = %e,
                "the coordinator did not log this member's incident (the other members are sent it directly)"
            );
        }
        // Every other member hears it directly, whatever the coordinator did with it.
        for (m, peer) in ctx.peers.iter().enumerate() {
            if m == usize::from(ctx.me) {
                continue;
            }
            let (handle, peer) = (ctx.handle.clone(), *peer);
            let request = Request::Incident {
                entry: entry.leaf().to_vec(),
            };
            tokio::spawn(async move {
                if let Err(error) = handle.call(peer, &request).await {
                    tracing::debug!(member = m, %error, "the incident did not reach a member");
                }
            });
        }
    });
}

/// Why an incident another member sent is not kept.
#[derive(Debug, thiserror::Error)]
pub(super) enum HearError {
    #[error("incident: {0}")]
    Entry(#[from] protocol::audit::entry::EntryError),
    #[error(transparent)]
    Heard(#[from] protocol::round::incidents::HeardError),
}

/// An incident another member sent directly: kept until the log shows it, or shows that the
/// coordinator dropped it.
pub(super) fn hear_incident(ctx: &Arc<Context>, member: u8, bytes: &[u8]) -> Result<(), HearError> {
    let entry = SignedEntry::open(bytes)?;
    let summary = match &entry.entry.body {
        Body::Incident {
            code, description, ..
        } => Some((*code, description.chars().take(300).collect::<String>())),
        _ => None,
    };
    {
        let mut state = ctx.lock();
        let next = state.log.next_sequence(&entry.entry.author);
        state.member.hear_incident(member, entry, next)?;
    }
    if let Some((code, description)) = summary {
        tracing::warn!(member, code, %description, "incident reported by a member directly");
    }
    Ok(())
}
