//! A whole consortium on this machine, as processes: the rehearsed ceremony, the ready-to-run
//! configurations it leaves, and starting and waiting for the coordinator and the nodes. The
//! demo, `bench round` and `ceremony rehearse` share it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use protocol::round::RoundPlan;

/// The seed of the synthetic updates in a rehearsal's node configurations.
pub const SYNTHETIC_SEED: u64 = 2026;

/// Reads a JSON file a role wrote (a summary), naming the file on failure.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
}

/// Starts `quorate ARGS`, its log to `log`.
pub fn spawn(exe: &Path, args: &[&str], log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(exe)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", args.join(" ")))
}

/// Whether the process succeeded; kills it and fails after `timeout`.
pub fn wait_with_timeout(child: &mut Child, name: &str, timeout: Duration) -> Result<bool> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} did not finish within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a rehearsal's coordinator, its summary to `DIR/summary.json`.
pub fn spawn_coordinator(exe: &Path, dir: &Path, log: &Path) -> Result<Child> {
    spawn(
        exe,
        &[
            "coordinator",
            "run",
            "--config",
            &dir.join("coordinator.toml").to_string_lossy(),
            "--summary",
            &dir.join("summary.json").to_string_lossy(),
        ],
        log,
    )
}

/// Starts a rehearsal's node until round `until`, its summary to `DIR/summary.json`.
pub fn spawn_node(
    exe: &Path,
    dir: &Path,
    until: u64,
    round_report: Option<&Path>,
    log: &Path,
) -> Result<Child> {
    let (config, summary) = (dir.join("node.toml"), dir.join("summary.json"));
    let until = until.to_string();
    let mut args = vec![
        "node".to_owned(),
        "run".to_owned(),
        "--config".to_owned(),
        config.to_string_lossy().into_owned(),
        "--until-round".to_owned(),
        until,
        "--summary".to_owned(),
        summary.to_string_lossy().into_owned(),
    ];
    if let Some(report) = round_report {
        args.push("--round-report".to_owned());
        args.push(report.to_string_lossy().into_owned());
    }
    spawn(
        exe,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        log,
    )
}

/// Runs `quorate ceremony rehearse` into `dir` (its errors to `log`, else to this process's
/// standard error) and returns the members' names.
pub fn rehearse(
    exe: &Path,
    members: u8,
    threshold: u8,
    dir: &Path,
    log: Option<&Path>,
) -> Result<Vec<String>> {
    let stderr = match log {
        Some(path) => Stdio::from(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Stdio::inherit(),
    };
    let status = Command::new(exe)
        .args(["ceremony", "rehearse", "--members"])
        .arg(members.to_string())
        .arg("--threshold")
        .arg(threshold.to_string())
        .arg("--out")
        .arg(dir)
        .env_remove(crate::args::PASSPHRASE_VAR)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .status()?;
    ensure!(status.success(), "the rehearsal of the key ceremony failed");
    Ok((0..members)
        .map(protocol::consortium::rehearsal_member_name)
        .collect())
}

/// How long a local deployment's quorum has to release: a member fetches every contribution
/// and recomputes the aggregate first, which took 16-20 s at 10M values and grows with them
/// (2 cores, every process on one machine). A minute, or 6 s per million values for larger
/// models: at 100M a minute's timeout gave up on every member while they were still fetching.
pub fn release_timeout_secs(values: u32) -> u64 {
    60.max(6 * u64::from(values).div_ceil(1_000_000))
}

/// Writes `coordinator/coordinator.toml` and `<member>/node.toml` into a rehearsal's
/// directory, so its deployment runs as is.
pub fn write_deployment_configs(
    dir: &Path,
    members: &[String],
    plan: &RoundPlan,
    rounds: u64,
    round_deadline_secs: u64,
) -> Result<()> {
    let passphrase_file = dir
        .join("passphrase")
        .exists()
        .then(|| PathBuf::from("../passphrase"));
    let coordinator = coordinator::config::CoordinatorConfig {
        consortium: "../consortium.toml".into(),
        identity: "identity".into(),
        transcript: "../transcript".into(),
        store: ".".into(),
        rounds,
        round_deadline_secs,
        release_timeout_secs: release_timeout_secs(plan.values),
        round_interval_ms: 0,
        startup_timeout_secs: 60,
        metrics: None,
        passphrase_file: passphrase_file.clone(),
        ceremony_entries: Vec::new(),
        plan: plan.clone(),
        fault: None,
    };
    std::fs::write(
        dir.join("coordinator/coordinator.toml"),
        toml::to_string(&coordinator)?,
    )?;
    for (i, name) in members.iter().enumerate() {
        let node = node::config::NodeConfig {
            consortium: "../consortium.toml".into(),
            identity: "identity".into(),
            key_share: "key-share".into(),
            transcript: "../transcript".into(),
            store: "node-store".into(),
            witness_store: "witness-store".into(),
            passphrase_file: passphrase_file.clone(),
            export_model: None,
            source: node::config::SourceConfig::Synthetic {
                seed: SYNTHETIC_SEED,
                samples: 100 + 10 * i as u64,
            },
            plan: plan.clone(),
        };
        std::fs::write(dir.join(name).join("node.toml"), toml::to_string(&node)?)?;
    }
    Ok(())
}

/// Edits a rehearsal's `coordinator/coordinator.toml` in place.
pub fn edit_coordinator_config(dir: &Path, edit: impl FnOnce(&mut toml::Table)) -> Result<()> {
    edit_config(&dir.join("coordinator/coordinator.toml"), edit)
}

/// Edits a configuration file in place.
pub fn edit_config(path: &Path, edit: impl FnOnce(&mut toml::Table)) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("reading {}", path.display()))?;
    edit(&mut table);
    std::fs::write(path, toml::to_string(&table)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::release_timeout_secs;

    #[test]
    fn a_local_quorum_has_a_minute_to_release_or_6_s_per_million_values() {
        assert_eq!(release_timeout_secs(1_000), 60);
        assert_eq!(release_timeout_secs(10_000_000), 60);
        assert_eq!(release_timeout_secs(10_000_001), 66);
        assert_eq!(release_timeout_secs(100_000_000), 600);
        assert_eq!(
            release_timeout_secs(protocol::round::plan::MAX_PLAN_VALUES),
            6 * 135
        );
    }
}
