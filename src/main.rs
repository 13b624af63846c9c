//! `quorate`: one binary for every role. This file only parses the command line and dispatches;
//! the work lives in the workspace libraries (and `bench.rs` for measurements).

mod args;
mod audit_cmd;
mod bench;
mod bench_round;
mod bench_soak;
mod ceremony_cmd;
mod demo;
mod local;
mod model_cmd;
mod round_cmd;

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

/// Federated learning under threshold homomorphic encryption.
///
/// Institutions train one model together: each node encrypts its update under a key shared
/// among the members, the coordinator adds ciphertexts without being able to read them, and
/// only a quorum of t of the n members can decrypt an agreed aggregate. Every step is recorded
/// in a signed, append-only audit log.
#[derive(Debug, Parser)]
#[command(name = "quorate", version, propagate_version = true)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter (tracing's EnvFilter syntax), also read from RUST_LOG.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole consortium on this machine: key ceremony, coordinator and one node per
    /// institution as separate processes, training on the shipped data (or one CSV file per
    /// institution), beside plaintext FedAvg baselines; then verify the audit log and the
    /// ceremony transcript. Exits 2 if a check fails.
    Demo(demo::DemoArgs),
    /// Run an institution's node: encrypt local updates, witness the log, release partial
    /// decryptions under the release policy.
    #[command(subcommand)]
    Node(round_cmd::NodeCommand),
    /// Run the coordinator: aggregate ciphertexts, keep the encrypted model, operate the audit
    /// log.
    #[command(subcommand)]
    Coordinator(round_cmd::CoordinatorCommand),
    /// Identities, approval of the consortium file, and the key ceremony that creates the
    /// consortium's threshold key with no trusted dealer.
    #[command(subcommand)]
    Ceremony(ceremony_cmd::CeremonyCommand),
    /// Model files: what one holds and the plan it needs (`inspect`), and initial models of
    /// the built-in networks (`init`).
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Export, verify and show the signed audit log, offline.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Measure performance on this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Threshold encryption: encrypt, aggregate, partial decryption and combination of one
    /// vector per party, checked for exactness against integer sums.
    He(bench::HeBenchArgs),
    /// Whole federated rounds over loopback: a rehearsed consortium, the coordinator and one
    /// node per institution as processes, synthetic updates, checked for exactness.
    Round(bench_round::RoundBenchArgs),
    /// Reliability: a long run of a rehearsed consortium under a stream of injected faults
    /// (kill -9 of any process, at any moment or at a chosen step; a member frozen past the
    /// deadline; two members cut off), each followed by the wait for recovery; every run is
    /// judged from its log (models exact, no share released twice, no acknowledged entry
    /// lost, audit verify exit 0). Exit 3 if anything was lost or a run got stuck.
    Soak(bench_soak::SoakBenchArgs),
}

fn init_tracing(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A panic anywhere, in any task or thread, ends the process (exit 101) after the usual
/// message: a daemon never carries on with one of its tasks silently gone. Every step it takes
/// is durable, so a restart takes up where it stopped.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, &cli.log);
    exit_on_panic();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Node(command) => round_cmd::run_node(&command),
        Command::Coordinator(command) => round_cmd::run_coordinator(&command),
        Command::Bench(BenchCommand::Round(args)) => bench_round::run_round(&args),
        Command::Bench(BenchCommand::He(args)) => bench::run_he(&args),
        Command::Bench(BenchCommand::Soak(args)) => bench_soak::run_soak(&args),
        Command::Audit(command) => audit_cmd::run(&command),
        Command::Model(command) => model_cmd::run(&command),
        Command::Ceremony(command) => ceremony_cmd::run(&command),
    };
    match result {
        Ok(code) => code,
        // A reader that went away (`quorate audit show | head`) is not an error.
        Err(err)
            if err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
