//! `quorate model`: what a model file holds and the plan it needs, and initial models for the
//! built-in networks. The node reads its tensors from the same file, so what `inspect` prints
//! is what the node federates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use clap::Subcommand;
use protocol::he::ThresholdConfig;
use protocol::round::RoundPlan;
use protocol::round::plan::MAX_PLAN_VALUES;
use training::tensors::{MAX_MODEL_FILE_BYTES, ModelFile, read_model};

// A model file of the largest plan's values (F64) is read: the trainer crate's limit, set without
// the protocol, must keep up with the plan's.
const _: () = assert!(MAX_MODEL_FILE_BYTES >= 8 * MAX_PLAN_VALUES as u64);

use crate::args::ModelArg;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print a safetensors model's tensors (name, shape, dtype, values), which of them are
    /// federated (F32 and F64) and which are kept as they are (integer buffers such as
    /// BatchNorm's num_batches_tracked), the initial model's digest, and the `[plan]` a
    /// consortium starting from it needs (values, and kappa sized for the rounds).
    Inspect {
        /// The model (a PyTorch state_dict saved with safetensors' save_file).
        file: PathBuf,
        /// Rounds the plan should allow.
        #[arg(long, default_value_t = 50)]
        rounds: u32,
        /// Re-randomised retries of one round's decryption the plan allows.
        #[arg(long, default_value_t = 3)]
        max_retries: u8,
        /// Members of the consortium (the key's noise budget depends on them).
        #[arg(long, default_value_t = 5)]
        members: u8,
        /// Members needed to decrypt.
        #[arg(long, default_value_t = 3)]
        threshold: u8,
        /// Features of the rows, with the trainer given the consortium's pooled scaling
        /// (`[source.pooled_scaling]`): the plan takes 4 x features + 1 values more for the
        /// statistics.
        #[arg(long)]
        scaling_features: Option<usize>,
    },
    /// Write the initial model of a built-in network (the one the built-in trainer starts
    /// from with the same --seed as its initial_seed), and print its digest.
    Init {
        #[arg(long, value_enum, default_value_t = ModelArg::Mlp)]
        model: ModelArg,
        /// Input features (columns other than the target, after one-hot encoding).
        #[arg(long)]
        features: usize,
        #[arg(long)]
        classes: usize,
        /// Hidden units of the MLP.
        #[arg(long, default_value_t = 16)]
        hidden: usize,
        /// Seeds the weights (the node's initial_seed).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write it (safetensors, owner-only).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: &ModelCommand) -> Result<ExitCode> {
    match command {
        ModelCommand::Inspect {
            file,
            rounds,
            max_retries,
            members,
            threshold,
            scaling_features,
        } => {
            let config = ThresholdConfig::new(*members, *threshold)?;
            inspect(file, *rounds, *max_retries, config, *scaling_features)
        }
        ModelCommand::Init {
            model,
            features,
            classes,
            hidden,
            seed,
            out,
        } => {
            ensure!(
                *features > 0 && *classes > 1,
                "--features > 0 and --classes > 1"
            );
            let network = match model {
                ModelArg::Logistic => training::trainer::Model::Logistic {
                    features: *features,
                    classes: *classes,
                },
                ModelArg::Mlp => training::trainer::Model::Mlp {
                    features: *features,
                    hidden: *hidden,
                    classes: *classes,
                },
            };
            let layout = network.layout();
            let values = network.initial(*seed);
            let bytes = training::tensors::encode(&layout, &values, &[], Default::default())?;
            runtime::files::write_atomically(out, &bytes, 0o600)
                .with_context(|| format!("writing {}", out.display()))?;
            // As a node that names this file as its initial model reads it: in the file's
            // order (a built-in trainer lays the same tensors out in the network's order).
            let written = read_initial(out)?;
            let (digest, _) =
                node::source::initial_model_of(&written.layout, &written.values, &written.kept);
            println!("{}: {} values", out.display(), values.len());
            println!("initial model {digest}");
            // A built-in trainer builds the same network from initial_seed, laid out in the
            // network's order rather than the file's: another flat vector, another digest.
            let (built_in, _) = node::source::initial_model_of(&layout, &values, &[]);
            println!(
                "a built-in trainer with initial_seed = {seed} starts from initial model {built_in}"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads an initial model, naming the file in every error.
pub fn read_initial(path: &Path) -> Result<ModelFile> {
    read_model(path).with_context(|| format!("the initial model {}", path.display()))
}

/// Values the pooled scaling's statistics take after a model's, for rows of `features`
/// features (none without pooled scaling).
pub fn scaling_values(features: Option<usize>) -> Result<usize> {
    match features {
        None => Ok(0),
        Some(0) => bail!("--scaling-features 0: the rows need at least one feature"),
        Some(n) if n > MAX_PLAN_VALUES as usize / 4 => bail!(
            "--scaling-features {n}: the statistics would take more than the \
             {MAX_PLAN_VALUES} values a plan can take"
        ),
        Some(n) => Ok(training::scaling::region_size(n)),
    }
}

/// The plan for a consortium of `config` starting from `model` (and `scaling` values of
/// pooled statistics after it): its values, kappa sized for the plan's whole life, its digest
/// pinned, and the weights' precision lowered (from 2^-12 of the rate, at most to 2^-8) where
/// a larger kappa leaves the noise budget too few bits. One function for `inspect` and the
/// rehearsal.
pub fn plan_for(
    model: &ModelFile,
    scaling: usize,
    rounds: u32,
    max_retries: u8,
    config: ThresholdConfig,
) -> Result<RoundPlan> {
    let values = model.values.len().saturating_add(scaling);
    ensure!(
        values <= MAX_PLAN_VALUES as usize,
        "{values} federated values, more than the {MAX_PLAN_VALUES} a plan can take"
    );
    let (digest, _) = node::source::initial_model_of(&model.layout, &model.values, &model.kept);
    let plan = RoundPlan {
        values: values as u32,
        rounds,
        max_retries,
        initial_model: Some(digest),
        ..RoundPlan::default()
    }
    .sized();
    let mut refused = None;
    for weight_bits in (8..=plan.weight_bits).rev() {
        let candidate = RoundPlan {
            weight_bits,
            ..plan.clone()
        };
        match candidate.budget(config) {
            Ok(_) => return Ok(candidate),
            Err(e) => refused = Some(e),
        }
    }
    bail!(
        "no plan of {} values over {rounds} rounds fits a {}-of-{} key ({}); plan fewer rounds \
         (--rounds) and start a new key when they are spent",
        plan.values,
        config.threshold(),
        config.parties(),
        refused.map(|e| e.to_string()).unwrap_or_default()
    )
}

fn inspect(
    path: &Path,
    rounds: u32,
    max_retries: u8,
    config: ThresholdConfig,
    scaling_features: Option<usize>,
) -> Result<ExitCode> {
    let model = read_initial(path)?;
    let scaling = scaling_values(scaling_features)?;
    // Written as a whole at the end: a reader that goes away (`| head`) is an error `main`
    // takes for success, not a panic in println!.
    let mut out = String::new();
    macro_rules! say {
        () => {
            out.push('\n')
        };
        ($($arg:tt)*) => {{
            out.push_str(&format!($($arg)*));
            out.push('\n');
        }};
    }
    say!("{}", path.display());
    say!(
        "  {:<40} {:<18} {:<5} {:>10}  federated",
        "tensor",
        "shape",
        "dtype",
        "values"
    );
    for ((name, shape), dtype) in model.layout.iter().zip(&model.dtypes) {
        let count: usize = shape.iter().product();
        let shape = format!("{shape:?}");
        let dtype = format!("{dtype:?}");
        say!("  {name:<40} {shape:<18} {dtype:<5} {count:>10}  yes");
    }
    for kept in &model.kept {
        let count: usize = kept.shape.iter().product();
        let shape = format!("{:?}", kept.shape);
        let dtype = format!("{:?}", kept.dtype);
        say!(
            "  {:<40} {shape:<18} {dtype:<5} {count:>10}  no: handed to the trainer unchanged",
            kept.name
        );
    }
    let plan = plan_for(&model, scaling, rounds, max_retries, config)?;
    say!(
        "  {} tensors federated, {} values; {} kept",
        model.layout.len(),
        model.values.len(),
        model.kept.len()
    );
    if let Some(features) = scaling_features {
        say!(
            "  pooled scaling of {features} features: {scaling} values of statistics after the \
             model's"
        );
    }
    let (digest, _) = node::source::initial_model_of(&model.layout, &model.values, &model.kept);
    say!("  initial model {digest}");
    say!();
    say!(
        "Plan limits: a plan takes at most {MAX_PLAN_VALUES} values. {rounds} rounds with up to \
         {max_retries} retries reveal {} values, which kappa = {} covers at 40 bits of \
         statistical security; with a {}-of-{} key that leaves weights 2^{} steps of the rate.",
        plan.lifetime_reveals(),
        plan.kappa,
        config.threshold(),
        config.parties(),
        plan.weight_bits
    );
    if scaling_features.is_some() {
        say!(
            "Each node's [source] names the rows the statistics come from (the trainer's own \
             file; the target column is left out):"
        );
        say!();
        say!("[source.pooled_scaling]");
        say!("data = \"data.csv\"");
        say!("target = \"label\"");
        say!();
    }
    say!(
        "The same [plan] in the coordinator's and every node's configuration (the nodes' \
         [source] names this file as initial_model):"
    );
    say!();
    say!("[plan]");
    out.push_str(&toml::to_string(&plan).context("writing the plan")?);
    std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_for_a_model_counts_its_floats_sizes_kappa_and_pins_its_digest() {
        let network = training::trainer::Model::Mlp {
            features: 64,
            hidden: 300,
            classes: 10,
        };
        let model = ModelFile {
            layout: network.layout(),
            dtypes: vec![training::tensors::Dtype::F32; 4],
            values: network.initial(3),
            kept: vec![training::tensors::KeptTensor {
                name: "bn.num_batches_tracked".into(),
                dtype: training::tensors::Dtype::I64,
                shape: vec![],
                bytes: vec![0; 8],
            }],
        };
        let config = ThresholdConfig::new(5, 3).unwrap();
        let plan = plan_for(&model, 0, 50, 3, config).unwrap();
        assert_eq!(plan.values, 22_510);
        // 22,510 values x 50 rounds x 4 attempts = 4,502,000 reveals, more than the default
        // kappa covers.
        assert!(plan.kappa > RoundPlan::default().kappa, "{plan:?}");
        assert_eq!(plan.kappa, RoundPlan::kappa_for(4_502_000));
        let (digest, all_zero) =
            node::source::initial_model_of(&model.layout, &model.values, &model.kept);
        assert_eq!(plan.initial_model, Some(digest));
        assert!(!all_zero);
        // The larger kappa leaves one bit too few for weights of 2^-12: 2^-11 fits a 3-of-5
        // key.
        assert!(
            RoundPlan {
                weight_bits: 12,
                ..plan.clone()
            }
            .budget(config)
            .is_err()
        );
        assert_eq!(plan.weight_bits, 11);
        plan.budget(config).unwrap();
        // Far too many rounds for any precision: said, with what to change.
        let err = plan_for(&model, 0, 100_000, 3, config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("plan fewer rounds"), "{err}");
        // Pooled scaling of 64 features: 257 values of statistics after the model's, the same
        // digest pinned (the statistics start at zero at every member).
        let scaled = plan_for(&model, scaling_values(Some(64)).unwrap(), 50, 3, config).unwrap();
        assert_eq!(scaled.values, 22_510 + 257);
        assert_eq!(scaled.initial_model, plan.initial_model);
        assert!(scaling_values(Some(0)).is_err());
        assert!(scaling_values(Some(usize::MAX)).is_err());
    }
}
