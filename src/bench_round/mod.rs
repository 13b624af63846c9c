//! `quorate bench round`: whole rounds over loopback with every role in its own process, as a
//! deployment runs them: a rehearsed ceremony, the coordinator, one node per institution,
//! synthetic updates. Reports per-phase times (the coordinator's, and each round's critical
//! path from its log) beside each phase's floor on this machine, bytes each node sent and
//! fetched, each role's peak memory, disk and CPU time, and whether every member decrypted
//! exactly the model integer arithmetic predicts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use protocol::round::{RoundPlan, model_digest};
use serde::Serialize;

mod disk;
mod floor;
mod path;
mod progress;

use crate::local::{
    SYNTHETIC_SEED, edit_coordinator_config, read_json, rehearse, spawn_coordinator, spawn_node,
    wait_with_timeout, write_deployment_configs,
};

/// The step times behind the floors are measured on a model of at most this many values and
/// scaled (they are linear in the values), so the floors cost seconds even at 100M.
const FLOOR_SAMPLE_VALUES: u32 = 1 << 20;
/// Bytes sent through loopback to measure its rate.
const LOOPBACK_BYTES: u64 = 1 << 30;

#[derive(Debug, clap::Args)]
pub struct RoundBenchArgs {
    /// Model parameters (values per update).
    #[arg(long, default_value_t = 1_000_000)]
    params: u32,
    /// Institutions, one node process each.
    #[arg(long, default_value_t = 5)]
    institutions: u8,
    /// Members needed to decrypt.
    #[arg(long, default_value_t = 3)]
    threshold: u8,
    /// Rounds to run.
    #[arg(long, default_value_t = 1)]
    rounds: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Run in this (new) directory and keep it, instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct RoundPhases {
    round: u64,
    contributors: u32,
    collect_seconds: f64,
    aggregate_seconds: f64,
    decrypt_seconds: f64,
    total_seconds: f64,
    attempts: u8,
}

#[derive(Debug, Serialize)]
struct RoundBenchReport {
    params: u32,
    institutions: u8,
    threshold: u8,
    rounds: Vec<RoundPhases>,
    /// Each decrypted round's phases, from the log's entries.
    critical_path: Vec<path::CriticalPath>,
    /// Each phase's floor on this machine (the same every round), and what it is computed from.
    floors: floor::Floors,
    floor_costs: floor::Costs,
    median_round_seconds: f64,
    bytes_sent_per_node: Vec<u64>,
    /// Ciphertext bytes each node fetched: every other contribution of a round whose quorum
    /// it is in (to recompute the aggregate), the aggregate alone of any other round.
    bytes_fetched_per_node: Vec<u64>,
    coordinator_bytes_received: u64,
    coordinator_peak_memory_bytes: Option<u64>,
    /// Each node's peak resident set size, in the order of the byte counts.
    peak_memory_per_node: Vec<Option<u64>>,
    /// The most disk the coordinator's directory, then each node's, took while the rounds ran
    /// (sampled every 250 ms, so short-lived peaks may be missed).
    coordinator_peak_disk_bytes: u64,
    peak_disk_per_node: Vec<u64>,
    /// The CPU time the coordinator, then each node, used over the whole run (user code and
    /// the kernel on its behalf): on a machine whose processes share its cores, where the
    /// work goes.
    coordinator_cpu_seconds: Option<runtime::process::CpuSeconds>,
    cpu_seconds_per_node: Vec<Option<runtime::process::CpuSeconds>>,
    exact: bool,
    wall_seconds: f64,
    machine: String,
    date: String,
}

/// Has the rehearsal's coordinator serve its metrics on a free loopback port, and returns it.
fn serve_metrics(dir: &std::path::Path) -> Result<std::net::SocketAddr> {
    let address = progress::free_loopback_address()?;
    edit_coordinator_config(dir, |table| {
        table.insert("metrics".into(), address.to_string().into());
    })?;
    Ok(address)
}

/// Kills a process of the run, if it still runs, and reaps it.
fn stop(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for the coordinator to finish its rounds, showing their progress from its metrics,
/// and stops the run as soon as a node fails rather than at the timeout: a run at 100M values
/// would otherwise wait many minutes for a round that can no longer close.
fn watch(
    coordinator: &mut std::process::Child,
    nodes: &mut [(String, std::process::Child)],
    dir: &std::path::Path,
    metrics: std::net::SocketAddr,
    rounds: u64,
    timeout: Duration,
) -> Result<bool> {
    let started = Instant::now();
    let mut shown = progress::Progress::new(rounds);
    let mut scraped_at: Option<Instant> = None;
    loop {
        if let Some(status) = coordinator.try_wait()? {
            return Ok(status.success());
        }
        for (name, node) in nodes.iter_mut() {
            if let Some(status) = node.try_wait()?
                && !status.success()
            {
                stop(coordinator);
                bail!(
                    "node {name} failed ({status}) while the coordinator still ran its rounds; \
                     see {}",
                    dir.join(name.as_str()).join("log").display()
                );
            }
        }
        let elapsed = started.elapsed();
        if elapsed > timeout {
            stop(coordinator);
            bail!(
                "the coordinator did not finish within {} s",
                timeout.as_secs()
            );
        }
        if scraped_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            scraped_at = Some(Instant::now());
            if let Some(snapshot) = progress::scrape(metrics)
                && let Some(line) = shown.observe(&snapshot, elapsed.as_secs_f64())
            {
                eprintln!("{line}");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run_round(args: &RoundBenchArgs) -> Result<ExitCode> {
    ensure!(args.params > 0, "--params must be at least 1");
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let temp;
    let dir = match &args.keep {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().join("bench")
        }
    };
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    eprintln!(
        "bench round: {} parameters, {} institutions, threshold {}, {} round(s), in {}",
        args.params,
        args.institutions,
        args.threshold,
        args.rounds,
        dir.display()
    );
    let members = rehearse(&exe, args.institutions, args.threshold, &dir, None)?;
    let mut plan = RoundPlan {
        values: args.params,
        rounds: args.rounds as u32,
        ..RoundPlan::default()
    };
    // The smallest smudging margin whose lifetime covers every round's reveals.
    plan.kappa = plan
        .kappa
        .max(RoundPlan::kappa_for(plan.lifetime_reveals()));
    write_deployment_configs(&dir, &members, &plan, args.rounds, 600)?;
    let metrics = serve_metrics(&dir)?;
    eprintln!(
        "  ceremony done in {:.1} s; starting the coordinator and {} nodes",
        started.elapsed().as_secs_f64(),
        members.len()
    );

    let rounds_started = Instant::now();
    let coordinator_dir = dir.join("coordinator");
    let disk = disk::DiskSampler::start(
        std::iter::once(coordinator_dir.clone())
            .chain(members.iter().map(|name| dir.join(name)))
            .collect(),
        Duration::from_millis(250),
    );
    let mut coordinator = spawn_coordinator(&exe, &coordinator_dir, &coordinator_dir.join("log"))?;
    let mut nodes = Vec::new();
    for name in &members {
        let member_dir = dir.join(name);
        let log = member_dir.join("log");
        nodes.push((
            name.clone(),
            spawn_node(&exe, &member_dir, args.rounds, None, &log)?,
        ));
    }
    // A round at 100M values takes minutes: encryption, uploads, every member's recomputation.
    let per_round = 120.max(15 * u64::from(args.params).div_ceil(1_000_000));
    let timeout = Duration::from_secs(600 + per_round * args.rounds);
    let coordinator_ok = watch(
        &mut coordinator,
        &mut nodes,
        &dir,
        metrics,
        args.rounds,
        timeout,
    );
    let wall_seconds = rounds_started.elapsed().as_secs_f64();
    if coordinator_ok.is_err() {
        // The run is over: nothing is left running, and the nodes would wait for a
        // coordinator that is gone.
        stop(&mut coordinator);
        nodes.iter_mut().for_each(|(_, node)| stop(node));
    }
    let mut nodes_ok = true;
    for (name, child) in &mut nodes {
        let ok = wait_with_timeout(child, name, Duration::from_secs(90));
        nodes_ok &= matches!(ok, Ok(true));
    }
    let mut peak_disk = disk.finish().into_iter();
    let coordinator_peak_disk_bytes = peak_disk.next().unwrap_or(0);
    let peak_disk_per_node: Vec<u64> = peak_disk.collect();
    let coordinator_ok = coordinator_ok?;
    if !coordinator_ok || !nodes_ok {
        bail!(
            "a process failed; see the logs under {} (pass --keep DIR to keep them)",
            dir.display()
        );
    }
    let summary: coordinator::summary::RunSummary =
        read_json(&coordinator_dir.join("summary.json"))?;
    let rounds: Vec<RoundPhases> = summary
        .rounds
        .iter()
        .map(|r| RoundPhases {
            round: r.round,
            contributors: r.contributors,
            collect_seconds: r.collect_seconds,
            aggregate_seconds: r.aggregate_seconds,
            decrypt_seconds: r.decrypt_seconds,
            total_seconds: r.total_seconds,
            attempts: r.attempts,
        })
        .collect();
    let coordinator_bytes_received = summary.rounds.iter().map(|r| r.bytes_received).sum();
    let store = coordinator::store::LogStore::open(&coordinator_dir.join("log-store"))?;
    let entries = store
        .leaves()?
        .iter()
        .map(|leaf| protocol::audit::entry::SignedEntry::open(leaf).map(|s| s.entry))
        .collect::<Result<Vec<_>, _>>()?;
    let critical_path = path::critical_paths(&entries);
    // Every member contributes to every round, declaring the rehearsal's 100 + 10 i samples.
    let everyone: Vec<(u8, u64)> = (0..members.len() as u8)
        .map(|i| (i, 100 + 10 * u64::from(i)))
        .collect();
    let expected = node::source::synthetic_fedavg(
        &plan,
        SYNTHETIC_SEED,
        &vec![everyone; args.rounds as usize],
    )?;
    let expected = hex::encode(model_digest(&expected));
    let mut exact = true;
    let mut bytes_sent_per_node = Vec::new();
    let mut bytes_fetched_per_node = Vec::new();
    let mut peak_memory_per_node = Vec::new();
    let mut cpu_seconds_per_node = Vec::new();
    for name in &members {
        let node: node::daemon::NodeSummary = read_json(&dir.join(name).join("summary.json"))?;
        exact &= node.model_digest == expected;
        bytes_sent_per_node.push(node.bytes_sent);
        bytes_fetched_per_node.push(node.bytes_fetched);
        peak_memory_per_node.push(node.peak_memory_bytes);
        cpu_seconds_per_node.push(node.cpu_seconds);
    }
    eprintln!("  measuring the floors: the loopback rate and each step's time on one thread");
    let config = protocol::he::ThresholdConfig::new(args.institutions, args.threshold)?;
    // The rehearsed ceremony made a key of as many secrets as every ceremony does.
    let floor_costs = floor::Costs::measure(
        &plan,
        (config, keyceremony::derive::SECRETS_PER_KEY),
        FLOOR_SAMPLE_VALUES,
        LOOPBACK_BYTES,
    )?;
    let floors = floor_costs.floors(args.institutions, args.threshold);
    let mut totals: Vec<f64> = rounds.iter().map(|r| r.total_seconds).collect();
    totals.sort_by(f64::total_cmp);
    let report = RoundBenchReport {
        params: args.params,
        institutions: args.institutions,
        threshold: args.threshold,
        median_round_seconds: totals.get(totals.len() / 2).copied().unwrap_or(0.0),
        rounds,
        critical_path,
        floors,
        floor_costs,
        bytes_sent_per_node,
        bytes_fetched_per_node,
        coordinator_bytes_received,
        coordinator_peak_memory_bytes: summary.peak_memory_bytes,
        peak_memory_per_node,
        coordinator_peak_disk_bytes,
        peak_disk_per_node,
        coordinator_cpu_seconds: summary.cpu_seconds,
        cpu_seconds_per_node,
        exact,
        wall_seconds,
        machine: crate::bench::machine(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &report.rounds {
            println!(
                "round {}: {} contributors, collect {:.2} s, aggregate {:.2} s, decrypt {:.2} s, total {:.2} s",
                r.round,
                r.contributors,
                r.collect_seconds,
                r.aggregate_seconds,
                r.decrypt_seconds,
                r.total_seconds
            );
        }
        let f = &report.floors;
        for p in &report.critical_path {
            println!(
                "round {} critical path (floor): encryption {:.2} s ({:.2}), upload and \
                 aggregation {:.2} s ({:.2}), request {:.2} s, recomputation and partial \
                 decryption {:.2} s ({:.2}), partials' exchange and combination {:.2} s ({:.2})",
                p.round,
                p.encrypt,
                f.encrypt.seconds,
                p.upload_aggregate,
                f.upload_aggregate.seconds,
                p.request,
                p.release,
                f.release.seconds,
                p.combine,
                f.combine.seconds
            );
        }
        let c = &report.floor_costs;
        let mb = |bytes: u64| bytes as f64 / 1e6;
        println!(
            "floor of a round: {:.2} s; bytes per phase: upload {:.0} MB, release {:.0} MB, \
             combination {:.0} MB at {:.2} GB/s (loopback); per model on one thread: encryption \
             {:.3} s, one aggregated term {:.3} s, partial decryption {:.3} s, combination \
             {:.3} s, on {} cores; ciphertext {:.1} MB, partial {:.1} MB",
            f.round_seconds,
            mb(f.upload_aggregate.bytes),
            mb(f.release.bytes),
            mb(f.combine.bytes),
            c.loopback_bytes_per_second / 1e9,
            c.encrypt_seconds,
            c.aggregate_term_seconds,
            c.partial_decrypt_seconds,
            c.combine_seconds,
            c.cores,
            mb(c.ciphertext_bytes),
            mb(c.partial_bytes),
        );
        let mib = |bytes: u64| bytes / (1 << 20);
        println!(
            "bytes sent per node: {:?}; fetched per node: {:?}",
            report.bytes_sent_per_node, report.bytes_fetched_per_node,
        );
        println!(
            "peak memory: coordinator {} MiB, nodes {:?} MiB; peak disk: coordinator {} MiB, \
             nodes {:?} MiB; exact: {}",
            mib(report.coordinator_peak_memory_bytes.unwrap_or(0)),
            report
                .peak_memory_per_node
                .iter()
                .map(|m| mib(m.unwrap_or(0)))
                .collect::<Vec<_>>(),
            mib(report.coordinator_peak_disk_bytes),
            report
                .peak_disk_per_node
                .iter()
                .map(|&d| mib(d))
                .collect::<Vec<_>>(),
            report.exact
        );
        let cpu = |c: &Option<runtime::process::CpuSeconds>| {
            c.map_or("?".to_owned(), |c| {
                format!("{:.1} + {:.1}", c.user, c.system)
            })
        };
        println!(
            "CPU time, user + kernel: coordinator {} s, nodes [{}] s",
            cpu(&report.coordinator_cpu_seconds),
            report
                .cpu_seconds_per_node
                .iter()
                .map(cpu)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(if report.exact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn spawn(program: &str, args: &[&str]) -> Child {
        Command::new(program).args(args).spawn().unwrap()
    }

    /// `watch` of one round, its metrics nowhere.
    fn watch_for(
        coordinator: &mut Child,
        nodes: &mut [(String, Child)],
        timeout: Duration,
    ) -> Result<bool> {
        let dir = tempfile::tempdir().unwrap();
        let metrics = progress::free_loopback_address().unwrap();
        watch(coordinator, nodes, dir.path(), metrics, 1, timeout)
    }

    #[test]
    fn the_coordinator_serves_its_metrics_where_the_bench_scrapes_them() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["coordinator", "member-a"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let members = vec!["member-a".to_owned()];
        write_deployment_configs(dir.path(), &members, &RoundPlan::default(), 1, 600).unwrap();
        let address = serve_metrics(dir.path()).unwrap();
        let text =
            std::fs::read_to_string(dir.path().join("coordinator/coordinator.toml")).unwrap();
        let config: coordinator::config::CoordinatorConfig = toml::from_str(&text).unwrap();
        assert_eq!(config.metrics, Some(address.to_string()));
    }

    #[test]
    fn a_failed_node_stops_the_run_naming_its_log_and_the_coordinator_is_killed() {
        let mut coordinator = spawn("sleep", &["600"]);
        let mut nodes = vec![
            ("member-a".to_owned(), spawn("true", &[])),
            ("member-b".to_owned(), spawn("false", &[])),
        ];
        let err = watch_for(&mut coordinator, &mut nodes, Duration::from_secs(600))
            .unwrap_err()
            .to_string();
        assert!(err.contains("node member-b failed"), "{err}");
        assert!(err.contains("member-b/log"), "{err}");
        // Killed, not left to run out its 600 s: its status is in, and it is not a success.
        let status = coordinator
            .try_wait()
            .unwrap()
            .expect("the coordinator was reaped");
        assert!(!status.success());
    }

    #[test]
    fn a_coordinator_past_its_timeout_is_killed_and_the_run_fails() {
        let mut coordinator = spawn("sleep", &["600"]);
        let err = watch_for(&mut coordinator, &mut [], Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish within 1 s"), "{err}");
        assert!(coordinator.try_wait().unwrap().is_some());
    }

    #[test]
    fn a_coordinator_that_finishes_ends_the_watch_with_its_status() {
        for (program, success) in [("true", true), ("false", false)] {
            let mut coordinator = spawn(program, &[]);
            let mut nodes = vec![("member-a".to_owned(), spawn("true", &[]))];
            let finished =
                watch_for(&mut coordinator, &mut nodes, Duration::from_secs(600)).unwrap();
            assert_eq!(finished, success);
        }
    }
}
