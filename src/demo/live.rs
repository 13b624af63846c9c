//! Following the consortium while it runs: the live table, one row as soon as every
//! institution has decrypted a round, from the nodes' round reports; a process that fails ends
//! the demo with its log's path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use node::daemon::RoundReport;
use training::trainer::Evaluation;

use super::report::{Live, percent};
use crate::local::wait_with_timeout;

/// Child processes, killed if the demo stops early.
pub(super) struct Processes(pub(super) Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub(super) fn read_reports(path: &Path) -> Vec<RoundReport> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Prints the table until every process has exited, and returns what it measured per round.
pub(super) fn follow(
    processes: &mut Processes,
    report_files: &[PathBuf],
    logs: &Path,
    total_rounds: u32,
    statistics_rounds: u32,
    float: &[Evaluation],
    optimizer: &str,
) -> Result<Live> {
    let bar = ProgressBar::new(u64::from(total_rounds)).with_style(
        ProgressStyle::with_template("{bar:30} round {pos}/{len} [{elapsed}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("training, encrypting, aggregating, decrypting");
    bar.suspend(|| {
        println!(
            "{:>5}  {:>9}  {:>7}  {:>16}  {:>9}  {:>8}",
            "round",
            "accuracy",
            "loss",
            format!("float {optimizer}"),
            "MB sent",
            "seconds"
        )
    });
    let deadline = Instant::now() + Duration::from_secs(180 + 300 * u64::from(total_rounds));
    let mut printed = 0u64;
    // Each round's time: from the previous round's last decryption (or the start) to this
    // round's last one, by the nodes' own clocks.
    let mut last_finish = runtime::clock::now_ms();
    let mut bytes_before = vec![0u64; report_files.len()];
    let mut live = Live::new();
    loop {
        // Rounds every institution has reported, matched by round number (a round the
        // consortium failed is never reported and is skipped).
        let reports: Vec<BTreeMap<u64, RoundReport>> = report_files
            .iter()
            .map(|p| read_reports(p).into_iter().map(|r| (r.round, r)).collect())
            .collect();
        let complete: Vec<u64> = reports[0]
            .keys()
            .copied()
            .filter(|round| *round > printed && reports.iter().all(|r| r.contains_key(round)))
            .collect();
        for round in complete {
            let mut evaluation = Evaluation::default();
            let mut bytes = 0;
            for (i, r) in reports.iter().enumerate() {
                let report = &r[&round];
                if let Some(e) = &report.evaluation {
                    evaluation.add(e);
                }
                bytes += report.bytes_sent.saturating_sub(bytes_before[i]);
                bytes_before[i] = report.bytes_sent;
            }
            let finish = reports
                .iter()
                .map(|r| r[&round].unix_millis)
                .max()
                .unwrap_or(last_finish);
            let seconds = finish.saturating_sub(last_finish) as f64 / 1000.0;
            last_finish = finish;
            let float_accuracy = float
                .get(round as usize - 1)
                .map_or(f64::NAN, Evaluation::accuracy);
            bar.suspend(|| {
                if round <= u64::from(statistics_rounds) {
                    println!(
                        "{round:>5}  {:<45}  {:>9.2}  {seconds:>8.1}",
                        "feature statistics pooled under encryption",
                        bytes as f64 / 1e6
                    )
                } else {
                    println!(
                        "{round:>5}  {:>9}  {:>7.4}  {:>16}  {:>9.2}  {seconds:>8.1}",
                        percent(evaluation.accuracy()),
                        evaluation.loss(),
                        percent(float_accuracy),
                        bytes as f64 / 1e6
                    )
                }
            });
            live.insert(round, (evaluation, bytes, seconds));
            printed = round;
            bar.set_position(printed);
        }
        let mut running = false;
        for (name, child) in &mut processes.0 {
            match child.try_wait()? {
                None => running = true,
                Some(status) if !status.success() => {
                    bar.abandon();
                    bail!(
                        "{name} failed ({status}); its log is {}",
                        logs.join(format!("{name}.log")).display()
                    );
                }
                Some(_) => {}
            }
        }
        if !running {
            break;
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!(
                "the consortium did not finish in time; the logs are in {}",
                logs.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
    for (name, child) in &mut processes.0 {
        ensure!(
            wait_with_timeout(child, name, Duration::from_secs(10))?,
            "{name} failed"
        );
    }
    Ok(live)
}
