//! What the demo reports: one record per round (the encrypted model beside the baselines, its
//! time, bytes and contributors, whether it is bit-identical), `report.json`, and the closing
//! lines on the terminal.

use std::collections::BTreeMap;

use coordinator::summary::RunSummary;
use node::daemon::RoundReport;
use serde::Serialize;
use training::trainer::Evaluation;

use super::Split;
use super::split::Institution;

#[derive(Debug, Clone, Serialize)]
pub(super) struct RoundRecord {
    pub(super) round: u64,
    /// `statistics` (the pooled feature scaling) or `training`.
    pub(super) phase: &'static str,
    /// The decrypted global model on the institutions' pooled held-out rows (in the
    /// statistics round: the untrained initial model).
    pub(super) accuracy: Option<f64>,
    pub(super) loss: Option<f64>,
    pub(super) fixed_point_accuracy: Option<f64>,
    pub(super) float_accuracy: Option<f64>,
    pub(super) float_loss: Option<f64>,
    /// Open to decrypted, as the coordinator measured it (training included).
    pub(super) seconds: f64,
    /// Ciphertext and partial-decryption bytes the nodes sent in the round.
    pub(super) bytes: u64,
    pub(super) contributors: u64,
    pub(super) model_digest: String,
    pub(super) bitexact_vs_fixed_point: bool,
}

/// What the consortium is worth to one institution: its own held-out rows measured on the
/// model it would have trained alone and on the consortium's final model.
#[derive(Debug, Clone, Serialize)]
pub(super) struct InstitutionRecord {
    pub(super) name: String,
    pub(super) held_out_rows: usize,
    pub(super) alone_accuracy: Option<f64>,
    pub(super) consortium_accuracy: Option<f64>,
    /// consortium_accuracy minus alone_accuracy, in percentage points.
    pub(super) gain_points: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(super) struct DemoReport {
    /// The server optimizer (`--optimizer`), and its server rate.
    pub(super) optimizer: &'static str,
    #[serde(skip)]
    pub(super) optimizer_label: &'static str,
    pub(super) server_rate: f64,
    pub(super) institutions: usize,
    pub(super) threshold: u8,
    pub(super) rounds: u32,
    pub(super) dataset: String,
    pub(super) split: Option<Split>,
    pub(super) model: String,
    pub(super) scaling: String,
    pub(super) parameters: u32,
    pub(super) members: Vec<Institution>,
    pub(super) final_accuracy: f64,
    pub(super) final_loss: f64,
    pub(super) baseline_fixed_point_accuracy: f64,
    pub(super) baseline_float_accuracy: f64,
    /// final_accuracy minus baseline_float_accuracy, in percentage points.
    pub(super) accuracy_gap_points: f64,
    pub(super) within_half_point_of_float: bool,
    pub(super) bitexact_vs_fixed_point: bool,
    pub(super) audit_verified: bool,
    pub(super) transcript_verified: bool,
    pub(super) all_checks_passed: bool,
    pub(super) per_round: Vec<RoundRecord>,
    /// Each institution trained alone against the consortium's model, on its own held-out
    /// rows.
    pub(super) per_institution: Vec<InstitutionRecord>,
    pub(super) wall_seconds: f64,
    pub(super) date: String,
}

pub(super) fn percent(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

/// What the live table measured of a round: the pooled evaluation, the bytes the nodes sent,
/// the seconds by the nodes' clocks.
pub(super) type Live = BTreeMap<u64, (Evaluation, u64, f64)>;

/// One record per round, from the nodes' round reports, the live table, the coordinator's
/// summary and the baselines. A round is bit-identical when every institution decrypted the
/// fixed-point baseline's model and every institution contributed.
#[allow(clippy::too_many_arguments)]
pub(super) fn records(
    total_rounds: u32,
    statistics_rounds: u32,
    institutions: usize,
    reports: &[Vec<RoundReport>],
    live: &Live,
    summary: &RunSummary,
    fixed: &[(String, Evaluation)],
    float: &[Evaluation],
) -> Vec<RoundRecord> {
    // The coordinator's view of each round: contributors and time from open to decrypted.
    let coordinator_rounds: BTreeMap<u64, (u64, f64)> = summary
        .rounds
        .iter()
        .map(|r| (r.round, (u64::from(r.contributors), r.total_seconds)))
        .collect();
    let mut per_round = Vec::new();
    for round in 1..=u64::from(total_rounds) {
        let (fixed_digest, fixed_eval) = &fixed[round as usize - 1];
        let float_eval = float[round as usize - 1];
        let digests: Vec<Option<&String>> = reports
            .iter()
            .map(|r| r.iter().find(|x| x.round == round).map(|x| &x.model_digest))
            .collect();
        let (evaluation, bytes, seconds) =
            live.get(&round)
                .copied()
                .unwrap_or((Evaluation::default(), 0, f64::NAN));
        let (contributors, coordinator_seconds) = coordinator_rounds
            .get(&round)
            .copied()
            .unwrap_or((0, seconds));
        let measured = |e: &Evaluation, f: fn(&Evaluation) -> f64| (e.rows > 0).then(|| f(e));
        per_round.push(RoundRecord {
            round,
            phase: if round <= u64::from(statistics_rounds) {
                "statistics"
            } else {
                "training"
            },
            accuracy: measured(&evaluation, Evaluation::accuracy),
            loss: measured(&evaluation, Evaluation::loss),
            fixed_point_accuracy: measured(fixed_eval, Evaluation::accuracy),
            float_accuracy: measured(&float_eval, Evaluation::accuracy),
            float_loss: measured(&float_eval, Evaluation::loss),
            seconds: coordinator_seconds,
            bytes,
            contributors,
            model_digest: digests
                .first()
                .copied()
                .flatten()
                .cloned()
                .unwrap_or_default(),
            bitexact_vs_fixed_point: digests.iter().all(|d| *d == Some(fixed_digest))
                && contributors == institutions as u64,
        });
    }
    per_round
}

/// One record per institution: its accuracy alone (from the demo's own training) and the
/// consortium's, as its node measured the last round's decrypted model on its held-out rows.
pub(super) fn institution_records(
    institutions: &[Institution],
    alone: &[Option<Evaluation>],
    reports: &[Vec<RoundReport>],
    last_round: u64,
) -> Vec<InstitutionRecord> {
    institutions
        .iter()
        .zip(alone)
        .zip(reports)
        .map(|((institution, alone), reports)| {
            let accuracy = |e: Option<&Evaluation>| e.filter(|e| e.rows > 0).map(|e| e.accuracy());
            let alone_accuracy = accuracy(alone.as_ref());
            let consortium_accuracy = accuracy(
                reports
                    .iter()
                    .find(|r| r.round == last_round)
                    .and_then(|r| r.evaluation.as_ref()),
            );
            InstitutionRecord {
                name: institution.name.clone(),
                held_out_rows: institution.test_rows,
                alone_accuracy,
                consortium_accuracy,
                gain_points: alone_accuracy
                    .zip(consortium_accuracy)
                    .map(|(alone, consortium)| 100.0 * (consortium - alone)),
            }
        })
        .collect()
}

/// The closing lines: final accuracy against the float baseline and each check's outcome.
pub(super) fn print_result(report: &DemoReport, out: &std::path::Path) {
    let mark = |ok: bool| if ok { "yes" } else { "NO" };
    let label = report.optimizer_label;
    println!(
        "Final accuracy {} (float {label} {}, {:+.2} points); loss {:.4}",
        percent(report.final_accuracy),
        percent(report.baseline_float_accuracy),
        report.accuracy_gap_points,
        report.final_loss
    );
    println!(
        "  bit-identical to plaintext fixed-point {label}: {}",
        mark(report.bitexact_vs_fixed_point)
    );
    println!(
        "  within 0.5 points of float {label}: {}",
        mark(report.within_half_point_of_float)
    );
    println!("  audit log verified: {}", mark(report.audit_verified));
    println!(
        "  ceremony transcript verified and certified in the log: {}",
        mark(report.transcript_verified)
    );
    println!("Each institution on its own held-out rows, trained alone against the consortium:");
    println!(
        "  {:<14} {:>5}  {:>9}  {:>10}  {:>7}",
        "institution", "rows", "alone", "consortium", "gain"
    );
    let shown = |a: Option<f64>| a.map_or_else(|| "-".to_owned(), percent);
    for i in &report.per_institution {
        println!(
            "  {:<14} {:>5}  {:>9}  {:>10}  {:>7}",
            i.name,
            i.held_out_rows,
            shown(i.alone_accuracy),
            shown(i.consortium_accuracy),
            i.gain_points
                .map_or_else(|| "-".to_owned(), |g| format!("{g:+.1}"))
        );
    }
    println!(
        "Wrote {0}/report.json, {0}/accuracy.svg, models/, audit/ and transcript in {1:.0} s",
        out.display(),
        report.wall_seconds
    );
}
