//! `quorate coordinator run` and `quorate node run`: open the files a role needs (asking for
//! the passphrase once), then hand over to the role's library. Also writes the ready-to-run
//! configuration files of a rehearsal's deployment.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use keyceremony::transcript::{Transcript, Verified, verify};
use protocol::consortium::Consortium;
use runtime::identity::Identity;

use crate::args::{ModelArg, PassphraseArgs, parse_categories, passphrase};

#[derive(Debug, clap::Subcommand)]
pub enum CoordinatorCommand {
    /// Run rounds as the configuration says, then exit. Metrics are served if configured.
    Run {
        /// The coordinator's configuration file (see configs/coordinator.example.toml).
        #[arg(long)]
        config: PathBuf,
        /// Write a JSON summary of the run (per-round times, bytes, peak memory) here.
        #[arg(long)]
        summary: Option<PathBuf>,
        /// Resilience testing: abort (as under kill -9) at STEP:ROUND, where STEP is `open`,
        /// `close` or `request` (right after the coordinator logs that step), `first-share`
        /// (once the round's first share release is logged) or `results` (once the quorum
        /// released); or `clock-jump:ROUND:SECONDS`, the wall clock jumping when the round
        /// opens.
        #[arg(long, hide = true)]
        fault: Option<runtime::fault::Fault>,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Run the node: contribute to every round it is expected in, witness the log, release
    /// partial decryptions under the release policy.
    Run {
        /// The node's configuration file (see configs/node.example.toml).
        #[arg(long)]
        config: PathBuf,
        /// Exit after this round's model is decrypted and the coordinator has gone.
        #[arg(long)]
        until_round: Option<u64>,
        /// Write a JSON summary (rounds, model digest, bytes sent) here on exit.
        #[arg(long)]
        summary: Option<PathBuf>,
        /// Append one JSON line per decrypted round here: model digest, the model's accuracy
        /// and loss on the held-out rows (if configured), bytes sent.
        #[arg(long)]
        round_report: Option<PathBuf>,
        /// Resilience testing: abort (as under kill -9) at STEP:ROUND, where STEP is
        /// `contribute` (when the round opens), `upload` (half way through the upload),
        /// `release` (after the ledger records a release, before the share leaves), `send`
        /// (once its logged release is acted on, before the partial leaves) or `combine`
        /// (with every partial in hand, before the model is stored); or `panic` in
        /// the round's contribution task, `lose-partials` (the round's partial decryptions
        /// lost on the way until asked for again), `slow:ROUND:SECONDS` (the update takes that
        /// long), `cut-off:ROUND:SECONDS:MEMBER` (no connection with MEMBER for that long) or
        /// `clock-jump:ROUND:SECONDS`.
        #[arg(long, hide = true)]
        fault: Option<runtime::fault::Fault>,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Train once with the built-in trainer, speaking the external trainer's protocol: read
    /// the global model from QUORATE_MODEL, write the update to QUORATE_UPDATE. A reference
    /// for writing your own trainer (see configs/trainers/), and a way to run the built-in
    /// trainer as an external command.
    Train {
        /// The global model (safetensors).
        #[arg(long, env = "QUORATE_MODEL")]
        model_in: PathBuf,
        /// Where to write the update (safetensors, with `samples` in the metadata).
        #[arg(long, env = "QUORATE_UPDATE")]
        update_out: PathBuf,
        /// The round, which seeds the shuffling with --seed.
        #[arg(long, env = "QUORATE_ROUND")]
        round: u64,
        /// The training rows (CSV with a header).
        #[arg(long)]
        data: PathBuf,
        /// The column holding the class index.
        #[arg(long)]
        target: String,
        /// Number of classes (labels are 0 to classes - 1).
        #[arg(long)]
        classes: usize,
        /// The network; its tensors must be the ones the model file holds.
        #[arg(long, value_enum, default_value_t = ModelArg::Logistic)]
        model: ModelArg,
        /// Hidden units of the MLP.
        #[arg(long, default_value_t = 16)]
        hidden: usize,
        /// Passes over the local rows.
        #[arg(long, default_value_t = 1)]
        epochs: u32,
        /// Rows per SGD step.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// SGD step size.
        #[arg(long, default_value_t = 0.1)]
        learning_rate: f32,
        /// Seeds the shuffling.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Fill missing cells with the column mean instead of refusing the file.
        #[arg(long)]
        impute_missing: bool,
        /// A categorical column and its categories, one-hot encoded: COLUMN=CAT1,CAT2,...
        #[arg(long = "category", value_name = "COLUMN=CATEGORIES")]
        categories: Vec<String>,
    },
}

/// `quorate node train`: one round of the external trainer's protocol, with the built-in
/// trainer.
fn train_once(command: &NodeCommand) -> Result<ExitCode> {
    let NodeCommand::Train {
        model_in,
        update_out,
        round,
        data,
        target,
        classes,
        model,
        hidden,
        epochs,
        batch,
        learning_rate,
        seed,
        impute_missing,
        categories,
    } = command
    else {
        unreachable!("only called for train");
    };
    let trainer = node::config::TrainerConfig {
        model: (*model).into(),
        hidden: *hidden,
        data: data.clone(),
        test_data: None,
        target: target.clone(),
        classes: *classes,
        impute_missing: *impute_missing,
        categories: parse_categories(categories)?,
        epochs: *epochs,
        batch: *batch,
        learning_rate: *learning_rate,
        seed: *seed,
        initial_seed: 0,
        scaling: node::config::Scaling::Local,
    };
    // The incoming file holds the full parameters: no initial model is added here.
    let mut source = node::source::TrainingSource::load(&trainer)?;
    source.initial = vec![0.0; source.model.parameters()];
    let network = source.model;
    let layout = network.layout();
    let (parameters, _) =
        training::tensors::read_file(model_in, &layout, &[]).context("the global model")?;
    if matches!(network, training::trainer::Model::Mlp { .. })
        && parameters.iter().all(|p| *p == 0.0)
    {
        bail!(
            "{}: an MLP of zeros cannot learn (every hidden unit stays the same); give the \
             consortium an initial model (`initial_model` in the node's [source])",
            model_in.display()
        );
    }
    let update = node::source::UpdateSource::update(&mut source, *round, &parameters)?;
    let metadata = std::collections::HashMap::from([
        ("samples".to_string(), update.samples.to_string()),
        ("round".to_string(), round.to_string()),
    ]);
    let bytes = training::tensors::encode(&layout, &update.values, &[], metadata)?;
    runtime::files::write_atomically(update_out, &bytes, 0o600)
        .with_context(|| format!("writing {}", update_out.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn read_consortium(path: &Path) -> Result<Consortium> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the consortium file {}", path.display()))?;
    let consortium = Consortium::parse(&text).with_context(|| format!("{}", path.display()))?;
    consortium
        .check_approvals()
        .with_context(|| format!("{}: approvals", path.display()))?;
    Ok(consortium)
}

fn read_transcript(path: &Path) -> Result<Verified> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the transcript {}", path.display()))?;
    let transcript = Transcript::decode(&bytes).with_context(|| format!("{}", path.display()))?;
    verify(&transcript).with_context(|| format!("{} does not verify", path.display()))
}

fn passphrase_for(
    args: &PassphraseArgs,
    configured: Option<&Path>,
) -> Result<zeroize::Zeroizing<String>> {
    match (&args.passphrase_file, configured) {
        (None, Some(file)) => {
            if std::env::var_os(crate::args::PASSPHRASE_VAR).is_some() {
                tracing::warn!(
                    file = %file.display(),
                    "the configuration's passphrase_file takes precedence over {}",
                    crate::args::PASSPHRASE_VAR
                );
            }
            passphrase(&PassphraseArgs::file(file.to_owned()), false)
        }
        _ => passphrase(args, false),
    }
}

fn write_summary<T: serde::Serialize>(path: Option<&Path>, summary: &T) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// How long a stopping daemon waits for work in its worker threads before it exits anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Completes on SIGINT (Ctrl-C) or SIGTERM, so that a daemon stops cleanly under its service
/// manager as under a terminal. A signal that cannot be listened for is logged and never fires.
async fn stop_requested() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT: stopping"),
        () = terminate => tracing::info!("SIGTERM: stopping"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub fn run_coordinator(command: &CoordinatorCommand) -> Result<ExitCode> {
    let CoordinatorCommand::Run {
        config,
        summary,
        fault,
        passphrase: args,
    } = command;
    let mut config = coordinator::config::CoordinatorConfig::load(config)?;
    config.fault = fault
        .clone()
        .map(|f| f.for_role(runtime::fault::Role::Coordinator))
        .transpose()?;
    let consortium = read_consortium(&config.consortium)?;
    let transcript = read_transcript(&config.transcript)?;
    if transcript.consortium != consortium.file().name {
        bail!(
            "the transcript {} is from consortium {:?}, not {:?}",
            config.transcript.display(),
            transcript.consortium,
            consortium.file().name
        );
    }
    let secret = passphrase_for(args, config.passphrase_file.as_deref())?;
    let identity_bytes = std::fs::read(&config.identity)
        .with_context(|| format!("reading {}", config.identity.display()))?;
    let identity = Identity::open(&identity_bytes, secret.as_bytes())
        .with_context(|| format!("opening {}", config.identity.display()))?;
    let mut entries = Vec::new();
    for path in &config.ceremony_entries {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let decoded = keyceremony::entries_file::decode(&bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        entries.extend(decoded);
    }
    let key = transcript.public_key.prepare();
    let runtime = runtime()?;
    let result = runtime.block_on(coordinator::daemon::run(
        config,
        consortium,
        identity,
        key,
        entries,
        stop_requested(),
    ));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    let result = result?;
    for round in &result.rounds {
        println!(
            "round {}: {} contributors, decrypted {}, {:.2} s",
            round.round, round.contributors, round.decrypted, round.total_seconds
        );
    }
    // A restart of the same run adds its rounds to the summary the earlier run wrote.
    let result = match summary.as_deref().filter(|p| p.exists()) {
        Some(path) => match crate::local::read_json::<coordinator::summary::RunSummary>(path) {
            Ok(earlier) => result.after(earlier),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the earlier summary is replaced");
                result
            }
        },
        None => result,
    };
    write_summary(summary.as_deref(), &result)?;
    let all_decrypted = result.rounds.iter().all(|r| r.decrypted);
    Ok(if all_decrypted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

pub fn run_node(command: &NodeCommand) -> Result<ExitCode> {
    let NodeCommand::Run {
        config: config_path,
        until_round,
        summary,
        round_report,
        fault,
        passphrase: args,
    } = command
    else {
        return train_once(command);
    };
    let config = node::config::NodeConfig::load(config_path)?;
    let consortium = read_consortium(&config.consortium)?;
    let transcript = read_transcript(&config.transcript)?;
    let secret = passphrase_for(args, config.passphrase_file.as_deref())?;
    let identity_bytes = std::fs::read(&config.identity)
        .with_context(|| format!("reading {}", config.identity.display()))?;
    let identity = Identity::open(&identity_bytes, secret.as_bytes())
        .with_context(|| format!("opening {}", config.identity.display()))?;
    let share_bytes = std::fs::read(&config.key_share)
        .with_context(|| format!("reading {}", config.key_share.display()))?;
    let share = keyceremony::share_file::load_share(&share_bytes, secret.as_bytes(), &transcript)
        .with_context(|| format!("opening {}", config.key_share.display()))?;
    let member = consortium
        .member_index(&identity.name)
        .with_context(|| format!("{} is not a member of the consortium", identity.name))?;
    let source = node::source::open_source(
        &config.source,
        member,
        &config.plan,
        config.store.join("trainer"),
    )
    .with_context(|| format!("{}: [source]", config_path.display()))?;
    let setup = node::daemon::NodeSetup {
        consortium,
        identity,
        share,
        public_key: transcript.public_key.prepare(),
        plan: config.plan.clone(),
        store: config.store.clone(),
        witness_store: config.witness_store.clone(),
        source,
        stop_after: *until_round,
        fault: fault
            .clone()
            .map(|f| f.for_role(runtime::fault::Role::Node))
            .transpose()?,
        export_model: config.export_model.clone(),
        round_report: round_report.clone(),
    };
    let runtime = runtime()?;
    let result = runtime.block_on(node::daemon::run(setup, stop_requested()));
    // A step still running in a worker thread (training, say) is abandoned, as under a crash:
    // everything it would have logged is redone after a restart.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    let result = result?;
    println!(
        "node: {} rounds, model {}",
        result.rounds,
        &result.model_digest[..16]
    );
    write_summary(summary.as_deref(), &result)?;
    Ok(ExitCode::SUCCESS)
}
