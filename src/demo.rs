//! `quorate demo`: a whole consortium on this machine. It splits a data set across
//! institutions, rehearses the key ceremony, runs the coordinator and one node per institution
//! as separate processes on loopback, and shows the encrypted training round by round beside
//! the plaintext baselines computed in this process from the same local training: fixed-point
//! FedAvg (which the decrypted models must equal bit for bit) and float FedAvg (the accuracy
//! to match). Then it verifies the audit log and the ceremony transcript, and writes the
//! models, the log, the transcript, `report.json` and `accuracy.svg` to `--out`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use node::config::{NodeConfig, Scaling, SourceConfig, TrainerConfig};
use node::daemon::RoundReport;
use node::source::{TrainingSource, UpdateSource};
use protocol::round::{RoundPlan, model_digest};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use training::trainer::Evaluation;

use crate::bench_round::{rehearse, spawn_coordinator, spawn_node, wait_with_timeout};
use crate::round_cmd::{ModelArg, write_deployment_configs};

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
            ShippedData::Wdbc => include_str!("../configs/data/wdbc.csv"),
            ShippedData::Digits => include_str!("../configs/data/digits.csv"),
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

/// One institution's share of the data, as files in the output directory.
#[derive(Debug, Clone, Serialize)]
struct Institution {
    name: String,
    member: String,
    #[serde(skip)]
    train: PathBuf,
    #[serde(skip)]
    test: PathBuf,
    train_rows: usize,
    test_rows: usize,
}

#[derive(Debug, Clone, Serialize)]
struct RoundRecord {
    round: u64,
    /// `statistics` (the pooled feature scaling) or `training`.
    phase: &'static str,
    /// The decrypted global model on the institutions' pooled held-out rows (in the
    /// statistics round: the untrained initial model).
    accuracy: Option<f64>,
    loss: Option<f64>,
    fixed_point_accuracy: Option<f64>,
    float_accuracy: Option<f64>,
    float_loss: Option<f64>,
    /// Open to decrypted, as the coordinator measured it (training included).
    seconds: f64,
    /// Ciphertext and partial-decryption bytes the nodes sent in the round.
    bytes: u64,
    contributors: u64,
    model_digest: String,
    bitexact_vs_fixed_point: bool,
}

#[derive(Debug, Serialize)]
struct DemoReport {
    institutions: usize,
    threshold: u8,
    rounds: u32,
    dataset: String,
    split: Option<Split>,
    model: String,
    scaling: String,
    parameters: u32,
    members: Vec<Institution>,
    final_accuracy: f64,
    final_loss: f64,
    baseline_fixed_point_accuracy: f64,
    baseline_float_accuracy: f64,
    /// final_accuracy minus baseline_float_accuracy, in percentage points.
    accuracy_gap_points: f64,
    within_half_point_of_float: bool,
    bitexact_vs_fixed_point: bool,
    audit_verified: bool,
    transcript_verified: bool,
    all_checks_passed: bool,
    per_round: Vec<RoundRecord>,
    wall_seconds: f64,
    date: String,
}

/// Header and data lines of a CSV text (empty lines dropped).
fn lines(text: &str, file: &str) -> Result<(String, Vec<String>)> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .with_context(|| format!("{file}: no header line"))?
        .to_owned();
    Ok((header, lines.map(str::to_owned).collect()))
}

fn write_csv(path: &Path, header: &str, rows: &[&String]) -> Result<()> {
    let mut text = String::with_capacity(rows.len() * 128);
    text.push_str(header);
    text.push('\n');
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Holds out `test_fraction` of an institution's rows (after a seeded shuffle) and writes
/// both parts.
fn write_institution(
    dir: &Path,
    name: &str,
    member: &str,
    header: &str,
    mut rows: Vec<&String>,
    test_fraction: f64,
    rng: &mut ChaCha20Rng,
) -> Result<Institution> {
    rows.shuffle(rng);
    let test_rows = ((rows.len() as f64 * test_fraction).round() as usize).max(1);
    ensure!(
        rows.len() > test_rows,
        "institution {name} has {} rows: too few to hold out {test_rows} for testing",
        rows.len()
    );
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let (test, train) = rows.split_at(test_rows);
    let institution = Institution {
        name: name.to_owned(),
        member: member.to_owned(),
        train: dir.join("train.csv"),
        test: dir.join("test.csv"),
        train_rows: train.len(),
        test_rows: test.len(),
    };
    write_csv(&institution.train, header, train)?;
    write_csv(&institution.test, header, test)?;
    Ok(institution)
}

/// Splits a shipped data set across `members` as `--split` says.
fn split_shipped(
    args: &DemoArgs,
    members: &[String],
    dir: &Path,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<Institution>> {
    let (header, rows) = lines(args.dataset.text(), args.dataset.name())?;
    let target = header
        .split(',')
        .position(|c| c == args.dataset.target())
        .context("the shipped data has no target column")?;
    let n = members.len();
    let mut parts: Vec<Vec<&String>> = vec![Vec::new(); n];
    let mut order: Vec<&String> = rows.iter().collect();
    order.shuffle(rng);
    for (k, row) in order.into_iter().enumerate() {
        let institution = match args.split {
            Split::Iid => k % n,
            Split::Skewed => {
                let label: usize = row
                    .split(',')
                    .nth(target)
                    .and_then(|l| l.trim().parse().ok())
                    .context("the shipped data has a bad label")?;
                let home = label % n;
                if n == 1 || rng.gen_bool(0.8) {
                    home
                } else {
                    (home + rng.gen_range(1..n)) % n
                }
            }
        };
        parts[institution].push(row);
    }
    members
        .iter()
        .zip(parts)
        .map(|(member, rows)| {
            write_institution(dir, member, member, &header, rows, args.test_fraction, rng)
        })
        .collect()
}

/// One institution per CSV file of `--data-dir`, in file-name order.
fn split_directory(
    data_dir: &Path,
    args: &DemoArgs,
    members: &[String],
    dir: &Path,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<Institution>> {
    let files = csv_files(data_dir)?;
    let mut institutions = Vec::new();
    let mut first_header: Option<(String, PathBuf)> = None;
    for (file, member) in files.iter().zip(members) {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let display = file.display().to_string();
        // Refuse a bad file here, with errors naming its own rows, not a split's.
        let impute = if args.impute_missing {
            training::data::Impute::Mean
        } else {
            training::data::Impute::Refuse
        };
        let target = args.target.as_deref().unwrap_or_default();
        training::data::parse_csv(&text, &display, target, 1 << 16, impute, &categories(args)?)?;
        let (header, rows) = lines(&text, &display)?;
        match &first_header {
            Some((first, path)) if *first != header => bail!(
                "{}: the header differs from {}'s",
                file.display(),
                path.display()
            ),
            Some(_) => {}
            None => first_header = Some((header.clone(), file.clone())),
        }
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| member.clone());
        if institutions
            .iter()
            .any(|i: &Institution| i.name.eq_ignore_ascii_case(&name))
        {
            bail!(
                "{}: another file in {} names the same institution",
                file.display(),
                data_dir.display()
            );
        }
        institutions.push(write_institution(
            dir,
            &name,
            member,
            &header,
            rows.iter().collect(),
            args.test_fraction,
            rng,
        )?);
    }
    Ok(institutions)
}

fn csv_files(data_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir)
        .with_context(|| format!("reading the directory {}", data_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")))
        .collect();
    files.sort();
    ensure!(
        files.len() >= 2,
        "{}: {} CSV file(s); one per institution and at least two are needed",
        data_dir.display(),
        files.len()
    );
    ensure!(
        files.len() <= 26,
        "{}: {} CSV files; at most 26 institutions",
        data_dir.display(),
        files.len()
    );
    Ok(files)
}

/// The number of classes: one more than the largest label in any institution's file.
fn count_classes(
    institutions: &[Institution],
    target: &str,
    impute: bool,
    categories: &training::data::Categories,
) -> Result<usize> {
    let impute = if impute {
        training::data::Impute::Mean
    } else {
        training::data::Impute::Refuse
    };
    let mut classes = 0;
    for institution in institutions {
        for path in [&institution.train, &institution.test] {
            let data = training::data::load_csv(path, target, 1 << 16, impute, categories)?;
            classes = classes.max(data.labels.iter().max().map_or(0, |&l| l as usize + 1));
        }
    }
    ensure!(classes >= 2, "the target {target:?} holds a single class");
    Ok(classes)
}

/// The pooled measure of a global model over every institution's held-out rows.
fn pooled(sources: &[TrainingSource], global: &[f32]) -> Evaluation {
    let mut total = Evaluation::default();
    for source in sources {
        if let Some(e) = source.evaluate(global) {
            total.add(&e);
        }
    }
    total
}

/// Per round: the model digest and pooled measure of plaintext fixed-point FedAvg, which the
/// encrypted rounds must match bit for bit.
fn fixed_point_fedavg(
    plan: &RoundPlan,
    sources: &mut [TrainingSource],
    rounds: u32,
) -> Result<Vec<(String, Evaluation)>> {
    let mut model = vec![0i64; plan.values as usize];
    let mut out = Vec::new();
    for round in 1..=u64::from(rounds) {
        let global = plan.decode_model(&model);
        let updates = sources
            .iter_mut()
            .map(|s| s.update(round, &global))
            .collect::<Result<Vec<_>, String>>()
            .map_err(anyhow::Error::msg)?;
        plan.fedavg_step(&mut model, &updates)?;
        out.push((
            hex::encode(model_digest(&model)),
            pooled(sources, &plan.decode_model(&model)),
        ));
    }
    Ok(out)
}

/// Per round: the pooled measure of float FedAvg over the same local training, with the same
/// clipping and server rate but exact sample weights and no quantisation.
fn float_fedavg(
    plan: &RoundPlan,
    sources: &mut [TrainingSource],
    rounds: u32,
) -> Result<Vec<Evaluation>> {
    let mut model = vec![0.0f64; plan.values as usize];
    let rate = f64::from(plan.server_rate_millis) / 1000.0;
    let clip = f64::from(plan.clip);
    let mut out = Vec::new();
    for round in 1..=u64::from(rounds) {
        let global: Vec<f32> = model.iter().map(|&v| v as f32).collect();
        let updates = sources
            .iter_mut()
            .map(|s| s.update(round, &global))
            .collect::<Result<Vec<_>, String>>()
            .map_err(anyhow::Error::msg)?;
        let total: u64 = updates.iter().map(|(_, n)| n).sum();
        for (update, samples) in &updates {
            let weight = rate * *samples as f64 / total as f64;
            for (m, u) in model.iter_mut().zip(update) {
                *m += weight * f64::from(*u).clamp(-clip, clip);
            }
        }
        let global: Vec<f32> = model.iter().map(|&v| v as f32).collect();
        out.push(pooled(sources, &global));
    }
    Ok(out)
}

/// The `--category COLUMN=A,B,...` arguments.
fn categories(args: &DemoArgs) -> Result<training::data::Categories> {
    parse_categories(&args.categories)
}

pub(crate) fn parse_categories(list: &[String]) -> Result<training::data::Categories> {
    let mut categories = training::data::Categories::new();
    for arg in list {
        let (column, values) = arg
            .split_once('=')
            .with_context(|| format!("--category {arg:?}: expected COLUMN=CAT1,CAT2,..."))?;
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_owned()).collect();
        ensure!(
            values.iter().all(|v| !v.is_empty()),
            "--category {arg:?}: an empty category"
        );
        ensure!(
            categories
                .insert(column.trim().to_owned(), values)
                .is_none(),
            "--category names the column {column:?} twice"
        );
    }
    Ok(categories)
}

/// Child processes, killed if the demo stops early.
struct Processes(Vec<(String, Child)>);

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

fn read_reports(path: &Path) -> Vec<RoundReport> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn quorate(exe: &Path, args: &[&str]) -> Result<std::process::Output> {
    Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running quorate {}", args.join(" ")))
}

fn percent(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    ensure!(
        args.test_fraction > 0.0 && args.test_fraction < 1.0,
        "--test-fraction must be between 0 and 1"
    );
    let institutions_wanted = match &args.data_dir {
        Some(dir) => csv_files(dir)?.len() as u8,
        None => args.institutions,
    };
    ensure!(
        (2..=26).contains(&institutions_wanted),
        "--institutions must be between 2 and 26"
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
    let out = &args.out;
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
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let mut rng = ChaCha20Rng::seed_from_u64(args.seed);

    let members: Vec<String> = (0..institutions_wanted)
        .map(|i| format!("member-{}", (b'a' + i) as char))
        .collect();
    let data_dir = out.join("data");
    let (institutions, target, dataset) = match &args.data_dir {
        Some(dir) => {
            let target = args.target.clone().expect("clap requires --target");
            let institutions = split_directory(dir, args, &members, &data_dir, &mut rng)?;
            (institutions, target, dir.display().to_string())
        }
        None => (
            split_shipped(args, &members, &data_dir, &mut rng)?,
            args.dataset.target().to_owned(),
            args.dataset.name().to_owned(),
        ),
    };
    let categories = categories(args)?;
    let classes = count_classes(&institutions, &target, args.impute_missing, &categories)?;
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
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("institution {}", institutions[i].name))
        })
        .collect::<Result<Vec<_>>>()?;
    let parameters = sources[0].model.parameters() as u32;
    // Pooled scaling adds a first round that computes the consortium's feature statistics.
    let statistics_rounds = u32::from(args.scaling == ScalingArg::Pooled);
    let total_rounds = args.rounds + statistics_rounds;
    let mut plan = RoundPlan {
        values: sources[0].global_size() as u32,
        rounds: total_rounds,
        ..RoundPlan::default()
    };
    // The smallest smudging margin whose lifetime covers every round's reveals.
    plan.kappa = plan
        .kappa
        .max(RoundPlan::kappa_for(plan.lifetime_reveals()));

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
    for institution in &institutions {
        println!(
            "  {:<12} {:>5} training rows, {:>4} held out",
            institution.name, institution.train_rows, institution.test_rows
        );
    }
    let fixed = fixed_point_fedavg(&plan, &mut sources, total_rounds)?;
    let float = float_fedavg(&plan, &mut sources, total_rounds)?;
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

    // The consortium, one process per role.
    let coordinator_dir = consortium_dir.join("coordinator");
    let coordinator_summary = coordinator_dir.join("summary.json");
    let mut processes = Processes(Vec::new());
    processes.0.push((
        "coordinator".into(),
        spawn_coordinator(&exe, &coordinator_dir, &logs.join("coordinator.log"))?,
    ));
    let report_files: Vec<PathBuf> = institutions
        .iter()
        .map(|i| consortium_dir.join(&i.member).join("rounds.jsonl"))
        .collect();
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

    // The live table: a row as soon as every institution has decrypted a round.
    let bar = ProgressBar::new(u64::from(total_rounds)).with_style(
        ProgressStyle::with_template("{bar:30} round {pos}/{len} [{elapsed}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("training, encrypting, aggregating, decrypting");
    bar.suspend(|| {
        println!(
            "{:>5}  {:>9}  {:>7}  {:>13}  {:>9}  {:>8}",
            "round", "accuracy", "loss", "float FedAvg", "MB sent", "seconds"
        )
    });
    let deadline = Instant::now() + Duration::from_secs(180 + 300 * u64::from(total_rounds));
    let mut printed = 0u64;
    // Each round's time: from the previous round's last decryption (or the start) to this
    // round's last one, by the nodes' own clocks.
    let mut last_finish = runtime::clock::now_ms();
    let mut bytes_before = vec![0u64; institutions.len()];
    let mut live: BTreeMap<u64, (Evaluation, u64, f64)> = BTreeMap::new();
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
                        "{round:>5}  {:<42}  {:>9.2}  {seconds:>8.1}",
                        "feature statistics pooled under encryption",
                        bytes as f64 / 1e6
                    )
                } else {
                    println!(
                        "{round:>5}  {:>9}  {:>7.4}  {:>13}  {:>9.2}  {seconds:>8.1}",
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

    // The coordinator's view of each round: contributors and time from open to decrypted.
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&coordinator_summary)
            .with_context(|| format!("reading {}", coordinator_summary.display()))?,
    )?;
    let coordinator_rounds: BTreeMap<u64, (u64, f64)> = summary["rounds"]
        .as_array()
        .map(|rounds| {
            rounds
                .iter()
                .filter_map(|r| {
                    Some((
                        r["round"].as_u64()?,
                        (
                            r["contributors"].as_u64().unwrap_or(0),
                            r["total_seconds"].as_f64().unwrap_or(0.0),
                        ),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let reports: Vec<Vec<RoundReport>> = report_files.iter().map(|p| read_reports(p)).collect();
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
                && contributors == institutions.len() as u64,
        });
    }

    // The audit log and the ceremony transcript, checked as an auditor would.
    let audit_dir = out.join("audit");
    let export = quorate(
        &exe,
        &[
            "audit",
            "export",
            "--store",
            &coordinator_dir.join("log-store").to_string_lossy(),
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
        let output = quorate(&exe, &args)?;
        if !output.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&output.stderr).trim_end());
        }
        Ok(output.status.success())
    };
    let audit_verified = verify(false)?;
    let transcript_verified = verify(true)?;

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
        wall_seconds: started.elapsed().as_secs_f64(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("accuracy.svg"), accuracy_svg(&report.per_round))?;

    let mark = |ok: bool| if ok { "yes" } else { "NO" };
    println!(
        "Final accuracy {} (float FedAvg {}, {gap:+.2} points); loss {final_loss:.4}",
        percent(final_accuracy),
        percent(float_accuracy)
    );
    println!(
        "  bit-identical to plaintext fixed-point FedAvg: {}",
        mark(bitexact)
    );
    println!("  within 0.5 points of float FedAvg: {}", mark(within));
    println!("  audit log verified: {}", mark(audit_verified));
    println!(
        "  ceremony transcript verified and certified in the log: {}",
        mark(transcript_verified)
    );
    println!(
        "Wrote {0}/report.json, {0}/accuracy.svg, models/, audit/ and transcript in {1:.0} s",
        out.display(),
        report.wall_seconds
    );
    Ok(if all_checks_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CHECK_FAILED)
    })
}

/// Accuracy per round, encrypted against float FedAvg, as a small self-contained SVG.
fn accuracy_svg(rounds: &[RoundRecord]) -> String {
    let (width, height, margin) = (640.0, 360.0, 50.0);
    let values = rounds
        .iter()
        .flat_map(|r| [r.accuracy, r.float_accuracy])
        .flatten();
    let low = values.fold(1.0f64, f64::min);
    let low = ((low * 20.0).floor() / 20.0).clamp(0.0, 0.95);
    let x = |round: u64| {
        let span = (rounds.len().max(2) - 1) as f64;
        margin + (round.saturating_sub(1)) as f64 / span * (width - 2.0 * margin)
    };
    let y = |v: f64| height - margin - (v - low) / (1.0 - low) * (height - 2.0 * margin);
    let line = |pick: fn(&RoundRecord) -> Option<f64>| {
        rounds
            .iter()
            .filter_map(|r| Some(format!("{:.1},{:.1}", x(r.round), y(pick(r)?))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{margin}\" y=\"24\" font-size=\"14\">Test accuracy per round: encrypted \
         FedAvg against float FedAvg</text>\n"
    );
    let mut tick = low;
    while tick <= 1.0 + 1e-9 {
        let (right, at, label) = (width - margin, y(tick), tick * 100.0);
        svg.push_str(&format!(
            "<line x1=\"{margin}\" x2=\"{right:.1}\" y1=\"{at:.1}\" y2=\"{at:.1}\" \
             stroke=\"#ddd\"/><text x=\"8\" y=\"{:.1}\">{label:.0} %</text>\n",
            at + 4.0
        ));
        tick += 0.05;
    }
    for r in rounds {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            x(r.round),
            height - margin + 18.0,
            r.round
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">round</text>\n\
         <polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" stroke-dasharray=\"6 4\" \
         points=\"{}\"/>\n\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1f77b4\">encrypted (Quorate)</text>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d62728\">float FedAvg (plaintext)</text>\n\
         </svg>\n",
        width / 2.0,
        height - 12.0,
        line(|r| r.float_accuracy),
        line(|r| r.accuracy),
        width - margin - 170.0,
        height - margin - 40.0,
        width - margin - 170.0,
        height - margin - 22.0,
    ));
    svg
}
