//! `quorate demo`: a whole consortium on this machine. It splits a data set across
//! institutions, rehearses the key ceremony, runs the coordinator and one node per institution
//! as separate processes on loopback, and shows the encrypted training round by round beside
//! the plaintext baselines computed in this process from the same local training: fixed-point
//! FedAvg (which the decrypted models must equal bit for bit) and float FedAvg (the accuracy
//! to match), and each institution trained alone (what the consortium is worth to it). Then it
//! verifies the audit log and the ceremony transcript, and writes the models, the log, the
//! transcript, `report.json` and `accuracy.svg` to `--out`.

mod baselines;
mod live;
mod plot;
mod report;
mod split;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use coordinator::summary::RunSummary;
use node::config::{NodeConfig, Scaling, SourceConfig, TrainerConfig};
use node::source::TrainingSource;
use protocol::round::RoundPlan;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::args::{ModelArg, parse_categories};
use crate::local::{read_json, rehearse, spawn_coordinator, spawn_node, write_deployment_configs};
use live::Processes;
use report::DemoReport;
use split::Institution;

/// Marks a directory as a demo's output, which a later run may replace.
const DEMO_MARKER: &str = ".quorate-demo";

/// Everything a demo writes into its output directory (the marker last).
const DEMO_OUTPUTS: [&str; 9] = [
    "data",
    "consortium",
    "logs",
    "models",
    "audit",
    "transcript",
    "report.json",
    "accuracy.svg",
    DEMO_MARKER,
];

/// A check failed: the report says which.
const EXIT_CHECK_FAILED: u8 = 2;

/// The data sets shipped in `configs/data` (see its PROVENANCE.md), built into the binary so
/// the demo runs from anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ShippedData {
    /// Breast cancer diagnosis (Wisconsin), 569 rows, 30 features, 2 classes.
    Wdbc,
    /// Handwritten digits (8x8 pixels), 1797 rows, 64 features, 10 classes.
    Digits,
}

impl ShippedData {
    fn name(self) -> &'static str {
        match self {
            ShippedData::Wdbc => "wdbc",
            ShippedData::Digits => "digits",
        }
    }

    fn text(self) -> &'static str {
        match self {
            ShippedData::Wdbc => include_str!("../../configs/data/wdbc.csv"),
            ShippedData::Digits => include_str!("../../configs/data/digits.csv"),
        }
    }

    fn target(self) -> &'static str {
        match self {
            ShippedData::Wdbc => "benign",
            ShippedData::Digits => "label",
        }
    }
}

/// How the shipped data is dealt to institutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Rows shuffled and dealt evenly: every institution sees the same distribution.
    Iid,
    /// Label skew: 80 % of each class goes to one institution (class c to institution
    /// c mod n), the rest spread evenly over the others.
    Skewed,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The shipped data set to split across the institutions.
    #[arg(long, value_enum, default_value_t = ShippedData::Wdbc)]
    dataset: ShippedData,
    /// How to split it.
    #[arg(long, value_enum, default_value_t = Split::Iid)]
    split: Split,
    /// Use one CSV file per institution from this directory instead of a shipped data set (a
    /// natural split; each file's name is its institution's). Needs --target.
    #[arg(
        long,
        requires = "target",
        conflicts_with_all = ["dataset", "split", "institutions"]
    )]
    data_dir: Option<PathBuf>,
    /// The column of the --data-dir files holding the class index (0, 1, ...).
    #[arg(long, requires = "data_dir")]
    target: Option<String>,
    /// Institutions, one node process each: 2 to 26 (with --data-dir: one per file).
    #[arg(long, default_value_t = 3)]
    institutions: u8,
    /// Members needed to decrypt.
    #[arg(long, default_value_t = 2)]
    threshold: u8,
    /// Training rounds.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// The network each institution trains.
    #[arg(long, value_enum, default_value_t = ModelArg::Logistic)]
    model: ModelArg,
    /// Hidden units of the MLP (with --model mlp).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    hidden: u16,
    /// Local epochs per round.
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    /// Local SGD learning rate.
    #[arg(long, default_value_t = 0.1)]
    learning_rate: f32,
    /// The server optimizer: FedAvg runs wholly under encryption; the others are applied by
    /// every member to each decrypted average, exactly and alike, and the coordinator still
    /// sees nothing (see ARCHITECTURE.md).
    #[arg(long, value_enum, default_value_t = OptimizerArg::Fedavg)]
    optimizer: OptimizerArg,
    /// The server learning rate (default: 1 for FedAvg and momentum, 0.1 for the adaptive
    /// optimizers, whose steps are about the rate in size).
    #[arg(long)]
    server_rate: Option<f64>,
    /// Fraction of each institution's rows held out to measure the global model (between 0
    /// and 1).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Feature scaling: `pooled`, the consortium's statistics computed under encryption in
    /// an extra first round; or `local`, each institution's own (worse under a skewed split).
    #[arg(long, value_enum, default_value_t = ScalingArg::Pooled)]
    scaling: ScalingArg,
    /// Fill missing cells with the column mean instead of refusing the file.
    #[arg(long)]
    impute_missing: bool,
    /// A categorical column of the --data-dir files and its categories, one-hot encoded:
    /// COLUMN=CAT1,CAT2,... (repeat for more columns).
    #[arg(
        long = "category",
        value_name = "COLUMN=CATEGORIES",
        requires = "data_dir"
    )]
    categories: Vec<String>,
    /// Seeds the split, the shuffling and the MLP's initial model.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Where to write the models, audit log, transcript, report and plot: a new or empty
    /// directory, or an earlier demo's output, which is replaced.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
}

/// The server optimizers (Reddi et al., "Adaptive Federated Optimization", 2021), with their
/// default hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerArg {
    /// Weighted averaging at the server rate.
    Fedavg,
    /// Server momentum, beta 0.9.
    Momentum,
    /// FedAdam: beta1 0.9, beta2 0.99, tau 1e-3.
    Adam,
    /// FedYogi: beta1 0.9, beta2 0.99, tau 1e-3.
    Yogi,
    /// FedAdagrad: beta1 0.9, tau 1e-3.
    Adagrad,
}

impl OptimizerArg {
    fn optimizer(self) -> protocol::round::Optimizer {
        let name = match self {
            OptimizerArg::Fedavg => "fedavg",
            OptimizerArg::Momentum => "momentum",
            OptimizerArg::Adam => "adam",
            OptimizerArg::Yogi => "yogi",
            OptimizerArg::Adagrad => "adagrad",
        };
        protocol::round::Optimizer::named(name).expect("every argument names an optimizer")
    }

    /// The name reports and the plot use.
    fn label(self) -> &'static str {
        match self {
            OptimizerArg::Fedavg => "FedAvg",
            OptimizerArg::Momentum => "FedAvgM",
            OptimizerArg::Adam => "FedAdam",
            OptimizerArg::Yogi => "FedYogi",
            OptimizerArg::Adagrad => "FedAdagrad",
        }
    }

    fn default_rate(self) -> f64 {
        match self {
            OptimizerArg::Fedavg | OptimizerArg::Momentum => 1.0,
            OptimizerArg::Adam | OptimizerArg::Yogi | OptimizerArg::Adagrad => 0.1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScalingArg {
    /// The consortium's statistics, computed under encryption in an extra first round.
    Pooled,
    /// Each institution's own statistics.
    Local,
}

impl From<ScalingArg> for Scaling {
    fn from(scaling: ScalingArg) -> Self {
        match scaling {
            ScalingArg::Pooled => Scaling::Pooled,
            ScalingArg::Local => Scaling::Local,
        }
    }
}

/// The `--category COLUMN=A,B,...` arguments.
pub(super) fn categories(args: &DemoArgs) -> Result<training::data::Categories> {
    parse_categories(&args.categories)
}

fn quorate(exe: &Path, args: &[&str]) -> Result<std::process::Output> {
    Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running quorate {}", args.join(" ")))
}

pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    let institutions_wanted = check_args(args)?;
    let out = prepare_output(&args.out)?;
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let mut rng = ChaCha20Rng::seed_from_u64(args.seed);

    let members: Vec<String> = (0..institutions_wanted)
        .map(protocol::consortium::rehearsal_member_name)
        .collect();
    let data_dir = out.join("data");
    let (institutions, target, dataset) = match &args.data_dir {
        Some(dir) => {
            let target = args.target.clone().expect("clap requires --target");
            let institutions = split::split_directory(dir, args, &members, &data_dir, &mut rng)?;
            (institutions, target, dir.display().to_string())
        }
        None => (
            split::split_shipped(args, &members, &data_dir, &mut rng)?,
            args.dataset.target().to_owned(),
            args.dataset.name().to_owned(),
        ),
    };
    let categories = categories(args)?;
    let classes = split::count_classes(&institutions, &target, args.impute_missing, &categories)?;
    let trainer = |i: usize| TrainerConfig {
        model: args.model.into(),
        hidden: usize::from(args.hidden),
        data: institutions[i].train.clone(),
        test_data: Some(institutions[i].test.clone()),
        target: target.clone(),
        classes,
        impute_missing: args.impute_missing,
        categories: categories.clone(),
        epochs: args.epochs,
        batch: 16,
        learning_rate: args.learning_rate,
        seed: args.seed + i as u64,
        initial_seed: args.seed,
        scaling: args.scaling.into(),
    };
    let mut sources = (0..institutions.len())
        .map(|i| {
            TrainingSource::load(&trainer(i))
                .with_context(|| format!("institution {}", institutions[i].name))
        })
        .collect::<Result<Vec<_>>>()?;
    let parameters = sources[0].model.parameters() as u32;
    // Pooled scaling adds a first round that computes the consortium's feature statistics.
    let statistics_rounds = u32::from(args.scaling == ScalingArg::Pooled);
    let total_rounds = args.rounds + statistics_rounds;
    // Every member checks it starts from this model (the MLP's seeded weights).
    let (initial_model, _) = node::source::UpdateSource::initial_model(&sources[0]);
    let server_rate = args
        .server_rate
        .unwrap_or_else(|| args.optimizer.default_rate());
    let mut plan = RoundPlan {
        values: sources[0].global_size() as u32,
        rounds: total_rounds,
        initial_model: Some(initial_model),
        server_rate_millis: (server_rate * 1000.0).round() as u32,
        optimizer: args.optimizer.optimizer(),
        // The optimizer moves the network's parameters, not the pooled statistics after them.
        parameters: Some(parameters),
        ..RoundPlan::default()
    };
    // The smallest smudging margin whose lifetime covers every round's reveals.
    plan.kappa = plan
        .kappa
        .max(RoundPlan::kappa_for(plan.lifetime_reveals()));

    print_setup(args, &institutions, parameters, classes, &dataset);
    let fixed = baselines::fixed_point(&plan, &mut sources, total_rounds)?;
    let float = baselines::float(&plan, &mut sources, total_rounds)?;
    let mut alone_sources = (0..institutions.len())
        .map(|i| {
            TrainingSource::load(&TrainerConfig {
                scaling: Scaling::Local,
                ..trainer(i)
            })
            .with_context(|| format!("institution {}", institutions[i].name))
        })
        .collect::<Result<Vec<_>>>()?;
    let alone = baselines::alone(
        &mut alone_sources,
        u64::from(statistics_rounds) + 1..=u64::from(total_rounds),
    )?;
    println!("Plaintext baselines computed; rehearsing the key ceremony...");

    let consortium_dir = out.join("consortium");
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;
    rehearse(
        &exe,
        institutions.len() as u8,
        args.threshold,
        &consortium_dir,
        Some(&logs.join("ceremony.log")),
    )
    .with_context(|| format!("see {}", logs.join("ceremony.log").display()))?;
    write_deployment_configs(
        &consortium_dir,
        &members,
        &plan,
        u64::from(total_rounds),
        120,
    )?;
    let models = out.join("models");
    std::fs::create_dir_all(&models)?;
    for (i, institution) in institutions.iter().enumerate() {
        let path = consortium_dir.join(&institution.member).join("node.toml");
        let text = std::fs::read_to_string(&path)?;
        let mut config: NodeConfig =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        config.source = SourceConfig::BuiltIn(trainer(i));
        config.export_model = Some(models.join(format!("{}.safetensors", institution.name)));
        std::fs::write(&path, toml::to_string(&config)?)?;
    }

    // The consortium, one process per role, followed live.
    let coordinator_dir = consortium_dir.join("coordinator");
    let report_files: Vec<PathBuf> = institutions
        .iter()
        .map(|i| consortium_dir.join(&i.member).join("rounds.jsonl"))
        .collect();
    let mut processes = Processes(Vec::new());
    processes.0.push((
        "coordinator".into(),
        spawn_coordinator(&exe, &coordinator_dir, &logs.join("coordinator.log"))?,
    ));
    for (institution, report) in institutions.iter().zip(&report_files) {
        let name = format!("node-{}", institution.name);
        let node = spawn_node(
            &exe,
            &consortium_dir.join(&institution.member),
            u64::from(total_rounds),
            Some(report),
            &logs.join(format!("{name}.log")),
        )?;
        processes.0.push((name, node));
    }
    let live = live::follow(
        &mut processes,
        &report_files,
        &logs,
        total_rounds,
        statistics_rounds,
        &float,
        args.optimizer.label(),
    )?;

    let summary: RunSummary = read_json(&coordinator_dir.join("summary.json"))?;
    let reports: Vec<_> = report_files.iter().map(|p| live::read_reports(p)).collect();
    let per_round = report::records(
        total_rounds,
        statistics_rounds,
        institutions.len(),
        &reports,
        &live,
        &summary,
        &fixed,
        &float,
    );
    let per_institution =
        report::institution_records(&institutions, &alone, &reports, u64::from(total_rounds));
    let (audit_verified, transcript_verified) = verify_audit(&exe, &out, &consortium_dir, &logs)?;

    let last = per_round.last().expect("at least one round");
    let (final_accuracy, final_loss, float_accuracy) = (
        last.accuracy.unwrap_or(0.0),
        last.loss.unwrap_or(f64::NAN),
        last.float_accuracy.unwrap_or(0.0),
    );
    let gap = 100.0 * (final_accuracy - float_accuracy);
    let bitexact = per_round.iter().all(|r| r.bitexact_vs_fixed_point);
    let within = gap.abs() <= 0.5;
    let all_checks_passed = bitexact && audit_verified && transcript_verified && within;
    let report = DemoReport {
        optimizer: plan.optimizer.name(),
        optimizer_label: args.optimizer.label(),
        server_rate,
        institutions: institutions.len(),
        threshold: args.threshold,
        rounds: args.rounds,
        dataset,
        split: args.data_dir.is_none().then_some(args.split),
        model: match args.model {
            ModelArg::Logistic => "logistic".into(),
            ModelArg::Mlp => format!("mlp (hidden {})", args.hidden),
        },
        scaling: format!("{:?}", args.scaling).to_lowercase(),
        parameters,
        members: institutions.clone(),
        final_accuracy,
        final_loss,
        baseline_fixed_point_accuracy: last.fixed_point_accuracy.unwrap_or(0.0),
        baseline_float_accuracy: float_accuracy,
        accuracy_gap_points: gap,
        within_half_point_of_float: within,
        bitexact_vs_fixed_point: bitexact,
        audit_verified,
        transcript_verified,
        all_checks_passed,
        per_round,
        per_institution,
        wall_seconds: started.elapsed().as_secs_f64(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(
        out.join("accuracy.svg"),
        plot::accuracy_svg(
            &report.per_round,
            &report.per_institution,
            report.optimizer_label,
        ),
    )?;
    report::print_result(&report, &out);
    Ok(if all_checks_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CHECK_FAILED)
    })
}

/// Checks the arguments before anything is written; returns the number of institutions.
fn check_args(args: &DemoArgs) -> Result<u8> {
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    if let Some(rate) = args.server_rate {
        ensure!(
            rate > 0.0 && rate <= 100.0,
            "--server-rate must be above 0 and at most 100"
        );
    }
    ensure!(
        args.test_fraction > 0.0 && args.test_fraction < 1.0,
        "--test-fraction must be between 0 and 1"
    );
    let institutions_wanted = match &args.data_dir {
        Some(dir) => split::csv_files(dir)?.len() as u8,
        None => args.institutions,
    };
    ensure!(
        (2..=protocol::he::MAX_PARTIES).contains(&institutions_wanted),
        "--institutions must be between 2 and {} (the threshold scheme's limit)",
        protocol::he::MAX_PARTIES
    );
    ensure!(
        args.threshold >= 1 && args.threshold <= institutions_wanted,
        "--threshold must be between 1 and the number of institutions ({institutions_wanted})"
    );
    categories(args)?;
    if let Some(dir) = &args.data_dir
        && let (Ok(dir), Ok(out)) = (dir.canonicalize(), args.out.canonicalize())
    {
        ensure!(
            !dir.starts_with(&out),
            "--data-dir {} lies inside --out {}, which the demo writes to",
            dir.display(),
            out.display()
        );
    }
    Ok(institutions_wanted)
}

/// Makes `out` ready: new, or an earlier demo's output, of which only what a demo writes is
/// removed. Returns it canonicalised.
fn prepare_output(out: &Path) -> Result<PathBuf> {
    if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("{}", out.display()))?
            .next()
            .is_some()
    {
        // An earlier demo's output is replaced; anything else is left alone.
        ensure!(
            out.join(DEMO_MARKER).is_file(),
            "{} exists, is not empty and is not an earlier demo's output; pass --out with a \
             new directory",
            out.display()
        );
        println!("Replacing the earlier demo run in {}", out.display());
        // Only what a demo writes: anything else someone put there stays.
        for entry in DEMO_OUTPUTS {
            let path = out.join(entry);
            let removed = match std::fs::symlink_metadata(&path) {
                Err(_) => Ok(()),
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => std::fs::remove_file(&path),
            };
            removed.with_context(|| format!("removing {}", path.display()))?;
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(
        out.join(DEMO_MARKER),
        "Written by `quorate demo`: a later run replaces what it wrote here.\n",
    )?;
    let out = out
        .canonicalize()
        .with_context(|| format!("{}", out.display()))?;
    Ok(out)
}

fn print_setup(
    args: &DemoArgs,
    institutions: &[Institution],
    parameters: u32,
    classes: usize,
    dataset: &str,
) {
    println!(
        "Quorate demo: {} institutions, threshold {}, {} rounds of {} ({parameters} parameters, \
         {classes} classes) on {dataset}{}",
        institutions.len(),
        args.threshold,
        args.rounds,
        match args.model {
            ModelArg::Logistic => "logistic regression",
            ModelArg::Mlp => "an MLP",
        },
        match (&args.data_dir, args.split) {
            (Some(_), _) => " (one file per institution)".to_owned(),
            (None, split) => format!(" ({split:?} split)").to_lowercase(),
        }
    );
    for institution in institutions {
        println!(
            "  {:<12} {:>5} training rows, {:>4} held out",
            institution.name, institution.train_rows, institution.test_rows
        );
    }
}

/// Exports the audit log and verifies it as an auditor would, without and with the ceremony
/// transcript: (log verified, transcript verified and certified in the log).
fn verify_audit(
    exe: &Path,
    out: &Path,
    consortium_dir: &Path,
    logs: &Path,
) -> Result<(bool, bool)> {
    let audit_dir = out.join("audit");
    let export = quorate(
        exe,
        &[
            "audit",
            "export",
            "--store",
            &consortium_dir
                .join("coordinator/log-store")
                .to_string_lossy(),
            "--out",
            &audit_dir.to_string_lossy(),
        ],
    )?;
    ensure!(
        export.status.success(),
        "exporting the audit log failed: {}",
        String::from_utf8_lossy(&export.stderr)
    );
    let transcript = out.join("transcript");
    std::fs::copy(consortium_dir.join("transcript"), &transcript)?;
    let evidence = logs.join("audit-evidence.txt");
    let verify = |with_transcript: bool| -> Result<bool> {
        let mut verify_args = vec![
            "audit".to_owned(),
            "verify".to_owned(),
            audit_dir.to_string_lossy().into_owned(),
            "--evidence".to_owned(),
            evidence.to_string_lossy().into_owned(),
        ];
        if with_transcript {
            verify_args.push("--transcript".to_owned());
            verify_args.push(transcript.to_string_lossy().into_owned());
        }
        let args: Vec<&str> = verify_args.iter().map(String::as_str).collect();
        let output = quorate(exe, &args)?;
        if !output.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&output.stderr).trim_end());
        }
        Ok(output.status.success())
    };
    Ok((verify(false)?, verify(true)?))
}
