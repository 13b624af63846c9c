//! The members' requests: offers and chunks of contributions (checked before they are
//! logged), appends, fetches; partial decryptions and witness requests are refused unread.

use super::*;
use protocol::round::incidents::declining_evidence;

/// Why a member's request is refused (the reason goes back to the member).
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestRefusal {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("the contribution is not a ciphertext: {0}")]
    NotACiphertext(#[from] protocol::wire::WireError),
    #[error(
        "the contribution is of kind {0}, which only builds before BLAKE3 digests wrote: \
         contribute from an upgraded node"
    )]
    EarlierKind(u8),
    #[error("the contribution holds {found}, the plan {plan}")]
    Shape {
        found: CiphertextShape,
        plan: CiphertextShape,
    },
    #[error("entry: {0}")]
    Entry(#[from] protocol::audit::entry::EntryError),
    #[error("the entry is not signed by the member that sent it")]
    NotTheSender,
}

/// Checks that a stored ciphertext decodes with the plan's shape (size, message scale, body
/// window): its header says so and its length is what that shape takes (the body is read only
/// when it is aggregated, where every coefficient is decoded and the whole hashed again).
pub(super) fn check_shape(ctx: &Context, digest: &Digest) -> Result<(), RequestRefusal> {
    let (header, length) = ctx.blobs.head(
        digest,
        protocol::wire::ciphertext_header_len(ctx.shape.secrets),
    )?;
    shape_of(&header, length, ctx.shape, ctx.limits)
}

fn shape_of(
    header: &[u8],
    length: u64,
    plan: CiphertextShape,
    limits: DecodeLimits,
) -> Result<(), RequestRefusal> {
    let found = protocol::wire::decode_ciphertext_header(header, limits)?;
    // Read, but never written now: an honest member never uploads one, and a copy of another
    // member's ciphertext re-encoded in it would have another digest than the original.
    if let Some(kind) = protocol::wire::kind_written_before(header) {
        return Err(RequestRefusal::EarlierKind(kind));
    }
    if found != plan {
        return Err(RequestRefusal::Shape { found, plan });
    }
    let expected = protocol::wire::ciphertext_encoded_len(found) as u64;
    if length != expected {
        return Err(protocol::wire::WireError::WrongLength {
            expected,
            actual: length,
        }
        .into());
    }
    Ok(())
}

pub(super) fn refused(reason: impl Into<String>) -> Response {
    Response::Refused {
        reason: reason.into(),
    }
}

/// Opens a member's signed entry and checks that the member sending it wrote it.
pub(super) fn member_entry(
    ctx: &Context,
    member: u8,
    bytes: &[u8],
) -> Result<SignedEntry, RequestRefusal> {
    let entry = SignedEntry::open(bytes)?;
    let shared = ctx.lock();
    if shared.membership.members[usize::from(member)].signing_key != entry.entry.author {
        return Err(RequestRefusal::NotTheSender);
    }
    Ok(entry)
}

pub(super) async fn handle_request(ctx: Arc<Context>, peer: PeerId, request: Request) -> Response {
    let Some(member) = ctx.member_of(&peer) else {
        return refused("not a member");
    };
    *ctx.lock()
        .requests_received
        .entry(request.kind_name().to_owned())
        .or_default() += 1;
    match request {
        Request::Offer { entry, length } => {
            let entry = match member_entry(&ctx, member, &entry) {
                Ok(entry) => entry,
                Err(e) => return refused(e.to_string()),
            };
            if let Body::ServerStep { base, .. } = entry.entry.body {
                return offer_step(&ctx, member, entry, base, length);
            }
            let Body::Contribution {
                round,
                ciphertext,
                samples,
            } = entry.entry.body
            else {
                return refused("an offer must carry a contribution or a server step entry");
            };
            let expected_length = protocol::wire::ciphertext_encoded_len(ctx.shape) as u64;
            if length != expected_length {
                return refused(format!(
                    "a contribution is {expected_length} bytes under this plan, not {length}"
                ));
            }
            let check = {
                let s = ctx.lock();
                match s.round.as_ref() {
                    Some(r) => r.check_contribution(member, round, samples, now_ms()),
                    None => return refused("no round is open"),
                }
            };
            if let Err(e) = check {
                return refused(e.to_string());
            }
            match ctx.blobs.begin_upload(ciphertext, length) {
                Ok(upload) => {
                    ctx.lock().uploads.insert(member, (entry, upload));
                    Response::Ok
                }
                Err(e) => refused(e.to_string()),
            }
        }
        Request::Chunk {
            ciphertext,
            index,
            bytes,
        } => {
            let taken = ctx.lock().uploads.remove(&member);
            let Some((entry, mut upload)) = taken else {
                return refused("no upload in progress");
            };
            if upload.digest != ciphertext {
                return refused("a chunk of another ciphertext than the one offered");
            }
            let len = bytes.len() as u64;
            let ctx2 = ctx.clone();
            let written = tokio::task::spawn_blocking(move || {
                let done = upload.write(index, &bytes);
                (done, upload)
            })
            .await;
            let (done, upload) = match written {
                Ok(pair) => pair,
                Err(e) => return refused(e.to_string()),
            };
            ctx2.lock().bytes_received += len;
            ctx2.metrics.add_bytes(len);
            match done {
                Err(e) => refused(e.to_string()),
                Ok(false) => {
                    ctx.lock().uploads.insert(member, (entry, upload));
                    Response::Ok
                }
                Ok(true) => {
                    let digest = match ctx.blobs.finish_upload(upload) {
                        Ok(digest) => digest,
                        Err(e) => return refused(e.to_string()),
                    };
                    // A contribution is logged only if it is a ciphertext of this plan's
                    // shape, so one malformed upload cannot break the round's aggregation.
                    if let Err(reason) = check_shape(&ctx, &digest) {
                        ctx.blobs.remove(&digest);
                        return refused(reason.to_string());
                    }
                    if let Body::ServerStep { .. } = entry.entry.body {
                        return append_step(&ctx, member, entry);
                    }
                    let Body::Contribution {
                        round,
                        ciphertext,
                        samples,
                    } = entry.entry.body.clone()
                    else {
                        unreachable!("checked at the offer")
                    };
                    let mut s = ctx.lock();
                    let still_open = s
                        .round
                        .as_ref()
                        .map(|r| r.check_contribution(member, round, samples, now_ms()));
                    match still_open {
                        Some(Ok(())) => {}
                        Some(Err(e)) => return refused(e.to_string()),
                        None => return refused("no round is open"),
                    }
                    match s.log.append(entry) {
                        Ok(leaf) => {
                            s.round
                                .as_mut()
                                .expect("checked")
                                .contributed(member, leaf, samples, ciphertext);
                            tracing::info!(round, member, leaf, "contribution logged");
                            Response::Appended { leaf }
                        }
                        Err(e) => refused(e.to_string()),
                    }
                }
            }
        }
        Request::Append { entry } => {
            let entry = match member_entry(&ctx, member, &entry) {
                Ok(entry) => entry,
                Err(e) => return refused(e.to_string()),
            };
            let body = entry.entry.body.clone();
            if !matches!(
                body,
                Body::ShareReleased { .. } | Body::DecryptionResult { .. } | Body::Incident { .. }
            ) {
                return refused(format!(
                    "members append only share releases, results and incidents, not {}",
                    body.kind_name()
                ));
            }
            let mut s = ctx.lock();
            match s.log.append(entry) {
                Ok(leaf) => {
                    match body {
                        Body::ShareReleased { request, .. } => {
                            if let Some(r) = s.round.as_mut() {
                                r.share_released(request, member);
                                let round = r.round();
                                runtime::fault::abort_if(
                                    ctx.fault.as_ref(),
                                    runtime::fault::Step::FirstShare,
                                    round,
                                );
                            }
                        }
                        Body::DecryptionResult { request, model, .. } => {
                            s.results.entry(request).or_default().insert(member, model);
                        }
                        Body::Incident {
                            description,
                            evidence,
                            ..
                        } => {
                            tracing::warn!(member, %description, "incident reported");
                            // A member that says it does not contribute to this round is not
                            // waited for.
                            let open = s.open_leaf;
                            if let (Some(open), Some(r)) = (open, s.round.as_mut())
                                && evidence == declining_evidence(open)
                            {
                                r.member_failed(member);
                            }
                        }
                        _ => {}
                    }
                    Response::Appended { leaf }
                }
                Err(e) => refused(e.to_string()),
            }
        }
        Request::Fetch { ciphertext, index } => {
            let ctx2 = ctx.clone();
            match tokio::task::spawn_blocking(move || ctx2.blobs.read_chunk(&ciphertext, index))
                .await
            {
                Ok(Ok((length, bytes))) => Response::Data { length, bytes },
                Ok(Err(e)) => refused(e.to_string()),
                Err(e) => refused(e.to_string()),
            }
        }
        // The coordinator must never hold a partial decryption: refuse it unread.
        Request::Partial { .. } => refused("partial decryptions go to members, never here"),
        Request::Witness { .. } | Request::Act { .. } => {
            refused("the coordinator does not witness")
        }
        Request::Incident { .. } => refused("incidents reach the coordinator as entries to append"),
        Request::Finished { .. } => refused("the coordinator says when a run is over"),
        Request::Resend { .. } => refused("partial decryptions go to members, never here"),
    }
}

/// A member's server step with the ciphertext it names: logged at once if that ciphertext is
/// stored already (another member sent it: every member computes the same bytes), or else once
/// it is uploaded and found of the plan's shape. The log's rules decide whether the step may
/// be logged; whether the next round builds on it is theirs too (t members alike).
fn offer_step(
    ctx: &Context,
    member: u8,
    entry: SignedEntry,
    base: Digest,
    length: u64,
) -> Response {
    if ctx.plan.optimizer.is_fedavg() {
        return refused("this plan's optimizer is FedAvg: there are no server steps");
    }
    if let Err(e) = ctx.lock().log.state().check(&entry) {
        return refused(e.to_string());
    }
    if ctx.blobs.contains(&base) {
        return append_step(ctx, member, entry);
    }
    let expected = protocol::wire::ciphertext_encoded_len(ctx.shape) as u64;
    if length != expected {
        return refused(format!(
            "a server step's ciphertext is {expected} bytes under this plan, not {length}"
        ));
    }
    match ctx.blobs.begin_upload(base, length) {
        Ok(upload) => {
            ctx.lock().uploads.insert(member, (entry, upload));
            Response::Ok
        }
        Err(e) => refused(e.to_string()),
    }
}

fn append_step(ctx: &Context, member: u8, entry: SignedEntry) -> Response {
    let Body::ServerStep { request, .. } = entry.entry.body else {
        return refused("not a server step");
    };
    let mut s = ctx.lock();
    match s.log.append(entry) {
        Ok(leaf) => {
            s.steps.entry(request).or_default().insert(member);
            tracing::info!(member, leaf, "server step logged");
            Response::Appended { leaf }
        }
        Err(e) => refused(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::wire::{WireError, ciphertext_header_len, encode_ciphertext};

    #[test]
    fn only_a_ciphertext_of_the_plans_shape_and_length_is_logged_as_a_contribution() {
        let plan = CiphertextShape {
            values: 1000,
            delta_bits: 80,
            body_window: protocol::he::Window::new(72, 6).unwrap(),
            secrets: 1,
        };
        let bytes = encode_ciphertext(&Ciphertext::zero(plan));
        let header = &bytes[..ciphertext_header_len(1)];
        let length = bytes.len() as u64;
        let limits = DecodeLimits::default();
        assert!(shape_of(header, length, plan, limits).is_ok());
        let others = [
            CiphertextShape {
                values: 1001,
                ..plan
            },
            CiphertextShape {
                delta_bits: 81,
                ..plan
            },
            CiphertextShape {
                body_window: protocol::he::Window::new(64, 7).unwrap(),
                ..plan
            },
        ];
        for other in others {
            let refused = shape_of(header, length, other, limits).unwrap_err();
            assert!(
                matches!(refused, RequestRefusal::Shape { found, .. } if found == plan),
                "{refused}"
            );
            assert!(refused.to_string().contains("bits 72..120"), "{refused}");
        }
        assert!(matches!(
            shape_of(header, length - 1, plan, limits),
            Err(RequestRefusal::NotACiphertext(
                WireError::WrongLength { .. }
            ))
        ));
        assert!(matches!(
            shape_of(&header[..10], 10, plan, limits),
            Err(RequestRefusal::NotACiphertext(_))
        ));
        assert!(matches!(
            shape_of(&bytes[1..=ciphertext_header_len(1)], length, plan, limits),
            Err(RequestRefusal::NotACiphertext(WireError::BadMagic))
        ));
        // The same ciphertext in the kind written before BLAKE3 (another digest) is refused.
        let mut earlier = header.to_vec();
        earlier[5] = 7;
        let refused = shape_of(&earlier, length, plan, limits).unwrap_err();
        assert!(
            matches!(refused, RequestRefusal::EarlierKind(7)),
            "{refused}"
        );
    }

    /// Under a key of four secrets the plan's ciphertexts are of kind 10: one of kind 9 is
    /// refused as another shape, and a plan of one secret refuses one of kind 10, whose header
    /// it reads one byte short.
    #[test]
    fn a_ciphertext_under_another_number_of_secrets_than_the_keys_is_refused() {
        let one = CiphertextShape {
            values: 40_000,
            delta_bits: 80,
            body_window: protocol::he::Window::new(72, 6).unwrap(),
            secrets: 1,
        };
        let four = CiphertextShape { secrets: 4, ..one };
        let limits = DecodeLimits::default();
        let under_one = encode_ciphertext(&Ciphertext::zero(one));
        let under_four = encode_ciphertext(&Ciphertext::zero(four));
        let (len_one, len_four) = (under_one.len() as u64, under_four.len() as u64);
        assert!(
            shape_of(
                &under_four[..ciphertext_header_len(4)],
                len_four,
                four,
                limits
            )
            .is_ok()
        );
        let refused = shape_of(
            &under_one[..ciphertext_header_len(4)],
            len_one,
            four,
            limits,
        )
        .unwrap_err();
        assert!(
            matches!(refused, RequestRefusal::Shape { found, .. } if found == one),
            "{refused}"
        );
        assert!(refused.to_string().contains("under 4 secrets"), "{refused}");
        let refused = shape_of(
            &under_four[..ciphertext_header_len(1)],
            len_four,
            one,
            limits,
        )
        .unwrap_err();
        assert!(
            matches!(
                refused,
                RequestRefusal::NotACiphertext(WireError::Truncated {
                    field: "secrets",
                    ..
                })
            ),
            "{refused}"
        );
    }
}
