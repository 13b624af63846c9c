//! The node's configuration file (TOML). Relative paths are relative to the file.

use std::path::{Path, PathBuf};

use protocol::round::RoundPlan;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The approved consortium file.
    pub consortium: PathBuf,
    /// This member's sealed identity.
    pub identity: PathBuf,
    /// This member's sealed key share.
    pub key_share: PathBuf,
    /// The ceremony transcript the share is bound to (it carries the public key).
    pub transcript: PathBuf,
    /// The node's state: its copy of the log, its release ledger, its model.
    pub store: PathBuf,
    /// The witness state (kept apart so the ceremony's cosignature carries over).
    pub witness_store: PathBuf,
    /// A file holding the passphrase (else QUORATE_PASSPHRASE or a prompt).
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// Where to keep the latest decrypted model as safetensors, rewritten after every round.
    #[serde(default)]
    pub export_model: Option<PathBuf>,
    /// Where each round's update comes from.
    pub source: SourceConfig,
    pub plan: RoundPlan,
}

/// The pluggable source of a member's update for each round.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Deterministic pseudo-random updates (benchmarks and tests): uniform in
    /// [-clip/2, clip/2], from `seed`, the member and the round.
    Synthetic { seed: u64, samples: u64 },
    /// The built-in trainer on this institution's CSV file.
    BuiltIn(TrainerConfig),
    /// The institution's own training command, exchanging safetensors files.
    External(ExternalConfig),
}

/// Which network the built-in trainer fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Multinomial logistic regression: `values` = classes x (features + 1).
    #[default]
    Logistic,
    /// One hidden ReLU layer of `hidden` units:
    /// `values` = hidden x (features + 1) + classes x (hidden + 1).
    Mlp,
}

/// Feature scaling. Neither kind sends an institution's own statistics anywhere in the clear;
/// pooled scaling decrypts their weighted sum over at least `k_min` institutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scaling {
    /// sign(x) ln(1 + |x|), then the consortium's pooled mean and standard deviation,
    /// computed under encryption in the first round (see `training::scaling`). A feature means
    /// the same at every institution. The plan's `values` grow by 4 x features + 1.
    #[default]
    Pooled,
    /// Each institution's own mean and standard deviation. Fine when institutions hold
    /// similar data; under a skewed split their statistics differ, the features stop meaning
    /// the same thing, and accuracy suffers.
    Local,
}

/// Local training with seeded SGD; the update is the trained model minus the global one.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    #[serde(default)]
    pub model: ModelKind,
    /// Hidden units of the MLP.
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// The institution's training rows (CSV with a header).
    pub data: PathBuf,
    /// Held-out rows: after every round the node measures the global model on them.
    #[serde(default)]
    pub test_data: Option<PathBuf>,
    /// The column holding the class index 0..classes.
    pub target: String,
    /// How features are scaled before training.
    #[serde(default)]
    pub scaling: Scaling,
    pub classes: usize,
    /// Fill missing cells with the column mean instead of refusing the file.
    #[serde(default)]
    pub impute_missing: bool,
    /// Categorical columns, one-hot encoded with the categories listed (the same lists at
    /// every member): `categories = { site = ["north", "south"] }`.
    #[serde(default)]
    pub categories: training::data::Categories,
    #[serde(default = "default_epochs")]
    pub epochs: u32,
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f32,
    /// Seeds this institution's shuffling.
    #[serde(default)]
    pub seed: u64,
    /// Seeds the shared initial model (the MLP's random weights); every member must use the
    /// same value.
    #[serde(default)]
    pub initial_seed: u64,
}

/// A training command run once per round. It finds the global model in the safetensors file
/// named by `QUORATE_MODEL`, and writes its update (trained minus global, same tensors) to
/// `QUORATE_UPDATE` with the number of training rows in the metadata key `samples`.
/// `QUORATE_ROUND` holds the round, and `QUORATE_SCALING`, with `pooled_scaling`, the
/// consortium's feature scaling. It runs in the configuration file's directory.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalConfig {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// The model's tensors, in the order of the flat parameter vector. Leave out with an
    /// initial model: its float tensors are the list, in the file's order.
    #[serde(default)]
    pub tensors: Vec<TensorSpec>,
    /// The consortium's agreed starting model (safetensors), whose digest the plan pins;
    /// zeros of `tensors` if absent. Its integer buffers are handed to the trainer unchanged.
    #[serde(default)]
    pub initial_model: Option<PathBuf>,
    /// How the command runs: started for each round, or once (see [`TrainerMode`]).
    #[serde(default)]
    pub mode: TrainerMode,
    /// The consortium's pooled feature scaling, as the built-in trainer's `pooled`: the node
    /// reads this institution's rows for their moments, the first round pools them under
    /// encryption, and the trainer is handed the result (`QUORATE_SCALING`). The plan's
    /// `values` grow by 4 x features + 1.
    #[serde(default)]
    pub pooled_scaling: Option<PooledScalingConfig>,
    /// The command is killed, and the node sits the round out, after this long (per round in
    /// persistent mode).
    #[serde(default = "default_trainer_timeout")]
    pub timeout_secs: u64,
    /// Where the command runs: the configuration file's directory.
    #[serde(skip)]
    pub working_dir: PathBuf,
}

/// The rows an external trainer's pooled scaling is computed from: the same CSV file the
/// trainer trains on, read by the node for its per-feature moments only.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PooledScalingConfig {
    /// The institution's training rows (CSV with a header), relative to this file.
    pub data: PathBuf,
    /// The column left out of the features (the trainer's target; never read).
    pub target: String,
    /// Fill missing cells with the column mean instead of refusing the file.
    #[serde(default)]
    pub impute_missing: bool,
    /// Categorical columns, one-hot encoded as the built-in trainer does.
    #[serde(default)]
    pub categories: training::data::Categories,
}

/// How an external trainer runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainerMode {
    /// A new process each round, given the files in QUORATE_MODEL, QUORATE_UPDATE and
    /// QUORATE_ROUND: the simplest script works.
    #[default]
    PerRound,
    /// One process for the whole run, sent one request per round on its standard input (see
    /// `node::source::persistent`): imports and data loading are paid once. It is started
    /// again after it exits or overruns its timeout.
    Persistent,
}

impl TrainerMode {
    /// The name in the configuration, also given to the trainer as QUORATE_TRAINER_MODE.
    pub fn name(self) -> &'static str {
        match self {
            TrainerMode::PerRound => "per-round",
            TrainerMode::Persistent => "persistent",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

fn default_hidden() -> usize {
    16
}
fn default_epochs() -> u32 {
    1
}
fn default_batch() -> usize {
    16
}
fn default_learning_rate() -> f32 {
    0.1
}
fn default_trainer_timeout() -> u64 {
    3600
}

pub use runtime::files::ConfigError;

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = runtime::files::read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.consortium,
            &mut config.identity,
            &mut config.key_share,
            &mut config.transcript,
            &mut config.store,
            &mut config.witness_store,
        ] {
            *p = base.join(&*p);
        }
        for p in [&mut config.passphrase_file, &mut config.export_model]
            .into_iter()
            .flatten()
        {
            *p = base.join(&*p);
        }
        match &mut config.source {
            SourceConfig::Synthetic { .. } => {}
            SourceConfig::BuiltIn(trainer) => {
                trainer.data = base.join(&trainer.data);
                if let Some(p) = &mut trainer.test_data {
                    *p = base.join(&*p);
                }
            }
            SourceConfig::External(external) => {
                if let Some(p) = &mut external.initial_model {
                    *p = base.join(&*p);
                }
                if let Some(scaling) = &mut external.pooled_scaling {
                    scaling.data = base.join(&scaling.data);
                }
                external.working_dir = base.to_owned();
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses_with_the_coordinators_plan() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let node = NodeConfig::load(&configs.join("node.example.toml")).unwrap();
        let SourceConfig::BuiltIn(trainer) = &node.source else {
            panic!("the example trains with the built-in trainer");
        };
        assert_eq!(trainer.classes, 2);
        assert_eq!(trainer.model, ModelKind::Logistic);
        assert!(
            trainer.data.ends_with("data/hospital-a.csv"),
            "relative to the file"
        );
        let coordinator: toml::Table =
            std::fs::read_to_string(configs.join("coordinator.example.toml"))
                .unwrap()
                .parse()
                .unwrap();
        let plan: RoundPlan = coordinator["plan"].clone().try_into().unwrap();
        assert_eq!(plan.digest(), node.plan.digest());
        // A plan written from the example reads models against the one each round builds on.
        assert!(plan.relative_decoding && node.plan.relative_decoding);
    }

    /// The commented-out alternatives in the example are valid `[source]` tables too.
    #[test]
    fn the_examples_alternative_sources_parse() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/node.example.toml"),
        )
        .unwrap();
        let mut blocks: Vec<String> = Vec::new();
        for line in text.lines() {
            match line.strip_prefix("#   ") {
                Some("[source]") => blocks.push(String::new()),
                Some(body) => {
                    if let Some(block) = blocks.last_mut() {
                        block.push_str(body);
                        block.push('\n');
                    }
                }
                None => {}
            }
        }
        let kinds: Vec<SourceConfig> = blocks
            .iter()
            .map(|b| toml::from_str(b).unwrap_or_else(|e| panic!("{b}\n{e}")))
            .collect();
        assert!(matches!(
            &kinds[..],
            [SourceConfig::External(e), SourceConfig::Synthetic { .. }]
                if e.tensors.is_empty()
                    && e.initial_model.is_some()
                    && e.mode == TrainerMode::Persistent
                    && e.pooled_scaling.as_ref().is_some_and(|p| p.target == "benign")
        ));
    }
}
