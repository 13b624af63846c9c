//! The round report and the exported model, after each decrypted round.

use super::*;

/// One line of the round report a node appends after each decrypted round.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RoundReport {
    pub round: u64,
    pub model_digest: String,
    /// On this institution's held-out rows, if it has some.
    pub evaluation: Option<training::trainer::Evaluation>,
    /// What an external trainer reported with its update to this round (its `metric.*`
    /// metadata, measured by the trainer on the model it started from).
    #[serde(default)]
    pub trainer_metrics: Option<crate::source::TrainerMetrics>,
    /// The fraction of this member's update to the round that the plan's clip changed (absent
    /// if it did not contribute, or contributed before the node last started).
    #[serde(default)]
    pub clipped_fraction: Option<f64>,
    /// Ciphertext and partial-decryption bytes sent since the node started.
    pub bytes_sent: u64,
    pub unix_millis: u64,
}

/// Measures the new global model, exports it and appends the round report: what the people
/// running the node look at, so a failure here is logged and does not stop the node.
pub(super) fn report_round(
    ctx: &Context,
    round: u64,
    digest: &ModelDigest,
) -> Result<(), StepError> {
    let global = ctx.plan.decode_model(&ctx.held_model(false)?.0);
    let mut source = ctx.source.lock().unwrap_or_else(|p| p.into_inner());
    let evaluation = source.evaluate(&global);
    if let Some(e) = &evaluation {
        tracing::info!(
            round,
            accuracy = e.accuracy(),
            loss = e.loss(),
            rows = e.rows,
            "global model on the held-out rows"
        );
    }
    if let Some(path) = &ctx.export_model {
        let mut metadata = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            ("round".to_string(), round.to_string()),
            ("model_digest".to_string(), hex::encode(digest)),
            ("plan_digest".to_string(), hex::encode(ctx.plan.digest())),
        ]);
        metadata.extend(source.export_metadata());
        let mut layout = source.layout();
        let mut values = source.parameters(&global);
        for (name, extra) in source.export_extras(&global) {
            layout.push((name, vec![extra.len()]));
            values.extend(extra);
        }
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let written = training::tensors::encode(&layout, &values, source.kept(), metadata)
            .map_err(StepError::from)
            .and_then(|bytes| {
                runtime::files::write_atomically(path, &bytes, 0o600).map_err(|source| {
                    StepError::Io {
                        path: path.clone(),
                        source,
                    }
                })
            });
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "the model could not be exported");
        }
    }
    if let Some(path) = &ctx.round_report {
        let line = RoundReport {
            round,
            model_digest: hex::encode(digest),
            evaluation,
            trainer_metrics: source.trainer_metrics(round),
            clipped_fraction: ctx.lock().clipped.get(&round).copied(),
            bytes_sent: ctx.bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
            unix_millis: now_ms(),
        };
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
        if let Err(e) = appended {
            tracing::error!(path = %path.display(), error = %e, "the round report could not be written");
        }
    }
    Ok(())
}
