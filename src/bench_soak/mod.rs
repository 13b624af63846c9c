//! `quorate bench soak`: a long run of a rehearsed consortium on loopback, every role a
//! process, under a stream of injected faults (kill -9 of any process at any moment or at a
//! chosen step, a member frozen past the deadline, two members cut off from each other), one at
//! a time, each followed by the wait until every member has decrypted two more rounds. Every
//! consortium's run is then ended cleanly and judged from its log alone: every member's model
//! is the plaintext FedAvg of the rounds the log decrypted, no share was released twice, every
//! entry a member holds is in the coordinator's log, and `audit verify` exits 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use protocol::audit::entry::SignedEntry;
use protocol::round::{RoundPlan, model_digest};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::local::{SYNTHETIC_SEED, read_json, rehearse, spawn, write_deployment_configs};

mod run;

use run::Run;

#[derive(Debug, clap::Args)]
pub struct SoakBenchArgs {
    /// Faults to inject in all.
    #[arg(long, default_value_t = 1000)]
    faults: u32,
    /// Faults per consortium: each consortium's run is ended and judged after this many, and a
    /// fresh one takes over (so that no single log grows without bound).
    #[arg(long, default_value_t = 25)]
    faults_per_run: u32,
    /// Institutions (n).
    #[arg(long, default_value_t = 5)]
    institutions: u8,
    /// Decryption threshold (t).
    #[arg(long, default_value_t = 3)]
    threshold: u8,
    /// Values per update.
    #[arg(long, default_value_t = 1000)]
    values: u32,
    /// Seconds members have to contribute once a round opens.
    #[arg(long, default_value_t = 2)]
    deadline_secs: u64,
    /// Seconds to wait for recovery after a fault before the run counts as stuck.
    #[arg(long, default_value_t = 120)]
    recovery_timeout_secs: u64,
    /// Seed of the fault schedule (which fault, where, when).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the deployments and their logs here (default: a temporary directory).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Rounds open at most this often, so that a consortium's rounds last through its faults.
const ROUND_INTERVAL_MS: u64 = 500;

/// A consortium's run ends once its rounds come this close to the plan's (the rest of the
/// faults go to the next consortium).
const PLAN_MARGIN: u64 = 40;

/// Kinds of injected fault, as the reliability table names them.
const KINDS: [&str; 8] = [
    "kill -9 node",
    "kill -9 coordinator",
    "node abort at a step",
    "coordinator abort at a step",
    "node frozen past the deadline",
    "two members cut off",
    "armed step not reached",
    "unexpected exit",
];

#[derive(Debug, Default, Serialize)]
struct KindReport {
    faults: u32,
    recoveries: u32,
    recover_seconds: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct SoakReport {
    faults: u32,
    consortia: u32,
    institutions: u8,
    threshold: u8,
    values: u32,
    deadline_secs: u64,
    seed: u64,
    /// Rounds whose model every member holds (the logs' decrypted chains), over all consortia.
    rounds_decrypted: u64,
    /// Rounds opened, over all consortia.
    rounds_opened: u64,
    by_kind: BTreeMap<String, KindSummary>,
    /// Faults after which the consortium did not recover in time.
    unrecovered: u32,
    /// Acknowledged entries, models or releases lost or broken: must be 0.
    losses: u32,
    loss_details: Vec<String>,
    wall_seconds: f64,
    machine: String,
    date: String,
}

#[derive(Debug, Serialize)]
struct KindSummary {
    faults: u32,
    recoveries: u32,
    median_recover_seconds: f64,
    max_recover_seconds: f64,
}

/// One process of the deployment, restartable.
pub fn run_soak(args: &SoakBenchArgs) -> Result<ExitCode> {
    ensure!(args.faults > 0, "--faults must be at least 1");
    ensure!(
        args.faults_per_run > 0,
        "--faults-per-run must be at least 1"
    );
    ensure!(
        args.institutions > args.threshold + 1,
        "the soak takes one member down at a time: it needs more than t + 1 institutions"
    );
    let temp;
    let root = match &args.keep {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(args.seed);
    let mut kinds: BTreeMap<&'static str, KindReport> =
        KINDS.iter().map(|k| (*k, KindReport::default())).collect();
    let mut totals = Totals::default();
    let mut injected = 0;
    let mut consortium = 0;
    while injected < args.faults {
        consortium += 1;
        let faults = args.faults_per_run.min(args.faults - injected);
        let dir = root.join(format!("consortium-{consortium}"));
        eprintln!(
            "soak: consortium {consortium}, {faults} faults ({injected} of {} so far, {:.0} s)",
            args.faults,
            started.elapsed().as_secs_f64()
        );
        let mut run = Run::start(&exe, args, &dir)?;
        let outcome = run.inject(args, faults, &mut rng, &mut kinds);
        let ended = run.end(args);
        let (count, stuck) = outcome?;
        ended?;
        run.judge(&mut totals)?;
        totals.unrecovered += u32::from(stuck);
        injected += count;
    }
    let by_kind = kinds
        .into_iter()
        .filter(|(_, k)| k.faults > 0)
        .map(|(name, mut k)| {
            k.recover_seconds.sort_by(f64::total_cmp);
            let median = k
                .recover_seconds
                .get(k.recover_seconds.len() / 2)
                .copied()
                .unwrap_or(0.0);
            let max = k.recover_seconds.last().copied().unwrap_or(0.0);
            (
                name.to_owned(),
                KindSummary {
                    faults: k.faults,
                    recoveries: k.recoveries,
                    median_recover_seconds: median,
                    max_recover_seconds: max,
                },
            )
        })
        .collect();
    let report = SoakReport {
        faults: injected,
        consortia: consortium,
        institutions: args.institutions,
        threshold: args.threshold,
        values: args.values,
        deadline_secs: args.deadline_secs,
        seed: args.seed,
        rounds_decrypted: totals.rounds_decrypted,
        rounds_opened: totals.rounds_opened,
        by_kind,
        unrecovered: totals.unrecovered,
        losses: totals.losses.len() as u32,
        loss_details: totals.losses,
        wall_seconds: started.elapsed().as_secs_f64(),
        machine: crate::bench::machine(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("| fault | injected | recoveries | median recovery | max recovery |");
        println!("|---|---|---|---|---|");
        for (name, k) in &report.by_kind {
            println!(
                "| {name} | {} | {} | {:.1} s | {:.1} s |",
                k.faults, k.recoveries, k.median_recover_seconds, k.max_recover_seconds
            );
        }
        println!(
            "{} faults over {} consortia; {} of {} rounds decrypted; unrecovered {}; losses {}; {:.0} s",
            report.faults,
            report.consortia,
            report.rounds_decrypted,
            report.rounds_opened,
            report.unrecovered,
            report.losses,
            report.wall_seconds
        );
    }
    Ok(if report.losses == 0 && report.unrecovered == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

#[derive(Default)]
struct Totals {
    rounds_decrypted: u64,
    rounds_opened: u64,
    unrecovered: u32,
    losses: Vec<String>,
}
