//! Where a member's update comes from each round: the built-in trainer, the institution's own
//! training command, or deterministic synthetic updates (so that benchmarks and tests can
//! recompute the exact expected model).
//!
//! The consortium aggregates the *global model*: the sum of all accepted updates so far, which
//! starts at zero. A network's actual parameters are the shared initial model plus the global
//! model ([`UpdateSource::parameters`]); for logistic regression the initial model is zero.

use std::borrow::Cow;
use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use protocol::round::check_initial_model;
use protocol::round::{InitialModel, RoundPlan};

use crate::config::{ExternalConfig, ModelKind, Scaling, SourceConfig, TrainerConfig};
use training::data::{Dataset, Impute, load_csv};
use training::scaling;
use training::tensors::{self, KeptTensor};
use training::trainer::{Evaluation, Layout, Model, SgdConfig};

/// The longest a trainer may be given: a week.
const MAX_TRAINER_SECS: u64 = 7 * 24 * 3600;

mod external;
pub mod persistent;
mod synthetic;

pub use external::ExternalSource;
pub use synthetic::{
    SyntheticSource, synthetic_fedavg, synthetic_fedavg_of_rounds, synthetic_update,
};

/// A member's update for one round: the difference to the global model, and the number of
/// training rows it stands for (its weight in the average).
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub values: Vec<f32>,
    pub samples: u64,
}

/// Numbers an external trainer reports with its update, as its update's metadata
/// `metric.accuracy`, `metric.loss`, `metric.rows` and `metric.seconds`: the node records them in the round
/// report and does not check them.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerMetrics {
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    pub rows: Option<f64>,
    /// How long the trainer's own training took (the helper measures it).
    pub seconds: Option<f64>,
}

impl TrainerMetrics {
    /// The metrics in an update's metadata, if it has any (non-finite values are left out).
    pub fn from_metadata(metadata: &HashMap<String, String>) -> Option<Self> {
        let get = |key: &str| {
            metadata
                .get(&format!("metric.{key}"))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
        };
        let metrics = Self {
            accuracy: get("accuracy"),
            loss: get("loss"),
            rows: get("rows"),
            seconds: get("seconds"),
        };
        (metrics != Self::default()).then_some(metrics)
    }
}

/// Why a source could not be opened or could not give an update, naming the file, the field
/// or the trainer at fault.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Data(#[from] training::data::DataError),
    #[error(transparent)]
    Tensors(#[from] tensors::TensorError),
    #[error("{path}: the columns differ from {training}")]
    TestColumns { path: PathBuf, training: PathBuf },
    #[error(
        "{data}: {features} features and {classes} classes make a global model of {size} values \
         for {model:?} with {scaling:?} scaling, the plan has {values}"
    )]
    PlanSize {
        data: PathBuf,
        features: usize,
        classes: usize,
        size: usize,
        model: ModelKind,
        scaling: Scaling,
        values: usize,
    },
    #[error("pooled scaling needs the plan's clip to be at least 1 (it is {clip})")]
    PooledClip { clip: f32 },
    #[error(
        "the global model's statistics region holds no pooled scaling, and is not the zeros of \
         a first round either: a member wrote it against the protocol. This member sits the \
         round out rather than send its statistics again"
    )]
    UnreadableScaling,
    #[error("source.command is empty")]
    EmptyCommand,
    #[error(
        "source: name the agreed initial_model (its tensors are read from it), or list the \
         tensors to start from zeros"
    )]
    NoTensors,
    #[error(
        "source.tensors list {listed}, the initial model {path} holds {file}: drop the list \
         (the node reads it from the file) or make them agree"
    )]
    TensorsDiffer {
        path: PathBuf,
        listed: String,
        file: String,
    },
    #[error(
        "the initial model {path} holds {total} federated values{}, the plan has {values}: set \
         values = {} in the plan (`quorate model inspect {path}{}` prints a plan for it)",
        scaling_note(*.scaling), .total + .scaling, scaling_features_arg(*.scaling)
    )]
    InitialValues {
        path: PathBuf,
        total: usize,
        /// Values of the pooled scaling's statistics region, after the model's.
        scaling: usize,
        values: usize,
    },
    #[error("source.tensors names {0:?} twice")]
    DuplicateTensor(String),
    #[error("source.timeout_secs = {0}: between 1 and {MAX_TRAINER_SECS}")]
    TrainerTimeout(u64),
    #[error("source.tensors: the shapes overflow")]
    ShapesOverflow,
    #[error(
        "source.tensors hold {total} values{}, the plan has {values}",
        scaling_note(*.scaling)
    )]
    TensorValues {
        total: usize,
        scaling: usize,
        values: usize,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the trainer {program:?}: {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for the trainer {program:?}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
    #[error("the trainer {program:?} ran longer than {secs} s and was stopped")]
    TimedOut { program: String, secs: u64 },
    #[error("the trainer {program:?} failed ({status}): {tail}")]
    TrainerFailed {
        program: String,
        status: std::process::ExitStatus,
        tail: String,
    },
    #[error("the trainer {program:?} answered with an error: {reason}")]
    TrainerRefused { program: String, reason: String },
    #[error("the trainer's update: {0}")]
    BadUpdate(tensors::TensorError),
    #[error(
        "the trainer's update looks like model weights, not a difference: it is within \
         {percent:.1} % of the global model it was given. Write trained minus global (the \
         helper's save_update does); the plan clips every value to its clip, so weights would \
         be damaged silently"
    )]
    LooksLikeWeights { percent: f64 },
    #[error("{0}: the metadata must give the number of training rows as \"samples\"")]
    NoSamples(PathBuf),
}

impl SourceError {
    /// What the consortium's log may say about this failure: its kind, never a data value, a
    /// path or the trainer's output (an error message can quote a row), which stay in this
    /// node's own log.
    pub fn public_reason(&self) -> String {
        match self {
            SourceError::TrainerFailed { status, .. } => format!("the trainer failed ({status})"),
            SourceError::TrainerRefused { .. } => "the trainer answered with an error".into(),
            SourceError::TimedOut { secs, .. } => {
                format!("the trainer ran longer than {secs} s and was stopped")
            }
            SourceError::Start { .. } | SourceError::Wait { .. } => {
                "the trainer could not be run".into()
            }
            SourceError::BadUpdate(_)
            | SourceError::NoSamples(_)
            | SourceError::Tensors(_)
            | SourceError::LooksLikeWeights { .. } => "the trainer's update is unusable".into(),
            SourceError::Data(_) => "the training data could not be read".into(),
            SourceError::UnreadableScaling => {
                "the global model's pooled scaling is unreadable".into()
            }
            _ => "the update source failed".into(),
        }
    }
}

/// The statistics region's share of a plan's values, for a message.
fn scaling_note(scaling: usize) -> String {
    match scaling {
        0 => String::new(),
        n => format!(" and the pooled scaling {n} more"),
    }
}

/// The `model inspect` option that counts a statistics region of `scaling` values.
fn scaling_features_arg(scaling: usize) -> String {
    match scaling {
        0 => String::new(),
        n => format!(" --scaling-features {}", (n - 1) / 4),
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where a member's updates come from.
pub trait UpdateSource: Send {
    fn update(&mut self, round: u64, model: &[f32]) -> Result<Update, SourceError>;

    /// The network's parameters for a global model.
    fn parameters(&self, global: &[f32]) -> Vec<f32> {
        global.to_vec()
    }

    /// The global model measured on this institution's held-out rows, if it has some (by the
    /// built-in trainer, or by a persistent external trainer asked to).
    fn evaluate(&mut self, _global: &[f32]) -> Option<Evaluation> {
        None
    }

    /// The named tensors of the parameters, for export.
    fn layout(&self) -> Layout;

    /// Extra tensors an exported model carries (the feature scaling in force).
    fn export_extras(&self, _global: &[f32]) -> Vec<(String, Vec<f32>)> {
        Vec::new()
    }

    /// Extra metadata of an exported model (how to apply its scaling).
    fn export_metadata(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// What the trainer itself reported with its update to `round` (an external trainer's
    /// `metric.*` metadata: measured by it, on the model it started from).
    fn trainer_metrics(&self, _round: u64) -> Option<TrainerMetrics> {
        None
    }

    /// Tensors handed to the trainer unchanged with every model, and never federated
    /// (integer buffers; see [`KeptTensor`]).
    fn kept(&self) -> &[KeptTensor] {
        &[]
    }

    /// The digest of the model this member starts from, and whether that model is all zeros
    /// (which a plan need not pin): what [`check_initial_model`] compares with the plan.
    fn initial_model(&self) -> (InitialModel, bool) {
        let layout = self.layout();
        let size = layout
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        initial_model_of(&layout, &self.parameters(&vec![0.0; size]), self.kept())
    }
}

/// The digest of an initial model (see [`InitialModel`]) and whether it is all zeros: one
/// function for the node's check, `quorate model inspect` and the rehearsal's plan.
pub fn initial_model_of(
    layout: &Layout,
    initial: &[f32],
    kept: &[KeptTensor],
) -> (InitialModel, bool) {
    let dtypes: Vec<String> = kept.iter().map(|k| format!("{:?}", k.dtype)).collect();
    let kept: Vec<protocol::round::KeptTensor> = kept
        .iter()
        .zip(&dtypes)
        .map(|(k, dtype)| protocol::round::KeptTensor {
            name: &k.name,
            dtype,
            shape: &k.shape,
            bytes: &k.bytes,
        })
        .collect();
    let all_zero = kept.is_empty() && initial.iter().all(|v| *v == 0.0);
    (InitialModel::of(layout, initial, &kept), all_zero)
}

/// The network's parameters: the shared initial model plus the global model (which may
/// carry more values after the parameters, such as the pooled statistics).
fn from_initial(initial: &[f32], global: &[f32]) -> Vec<f32> {
    initial.iter().zip(global).map(|(i, g)| i + g).collect()
}

/// Local training with the built-in trainer on this institution's own data.
#[derive(Debug, Clone)]
pub struct TrainingSource {
    pub model: Model,
    /// The training rows: standardised already under local scaling, log-transformed and
    /// waiting for the pooled statistics under pooled scaling.
    pub data: Dataset,
    /// Held-out rows, prepared the same way.
    pub test: Option<Dataset>,
    pub scaling: SourceScaling,
    pub sgd: SgdConfig,
    pub seed: u64,
    pub initial: Vec<f32>,
}

/// How a [`TrainingSource`] scales its features.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceScaling {
    /// This institution's (mean, standard deviation) per feature, already applied.
    Local(Vec<(f32, f32)>),
    /// From the statistics region of the global model.
    Pooled,
}

impl TrainingSource {
    /// Loads the data and checks the global model's size against the plan.
    pub fn open(config: &TrainerConfig, values: usize) -> Result<Self, SourceError> {
        let source = Self::load(config)?;
        if source.global_size() != values {
            return Err(SourceError::PlanSize {
                data: config.data.clone(),
                features: source.model.features(),
                classes: config.classes,
                size: source.global_size(),
                model: config.model,
                scaling: config.scaling,
                values,
            });
        }
        Ok(source)
    }

    /// Loads the data; the network's size follows from it.
    pub fn load(config: &TrainerConfig) -> Result<Self, SourceError> {
        let impute = Impute::when(config.impute_missing);
        let mut data = load_csv(
            &config.data,
            &config.target,
            config.classes,
            impute,
            &config.categories,
        )?;
        let scaling = match config.scaling {
            Scaling::Local => SourceScaling::Local(data.standardise()),
            Scaling::Pooled => {
                data.log_transform();
                SourceScaling::Pooled
            }
        };
        let test = match &config.test_data {
            Some(path) => {
                let mut test = load_csv(
                    path,
                    &config.target,
                    config.classes,
                    impute,
                    &config.categories,
                )?;
                if test.columns != data.columns {
                    return Err(SourceError::TestColumns {
                        path: path.clone(),
                        training: config.data.clone(),
                    });
                }
                match &scaling {
                    SourceScaling::Local(stats) => test.apply(stats),
                    SourceScaling::Pooled => test.log_transform(),
                }
                Some(test)
            }
            None => None,
        };
        let (features, classes) = (data.width(), config.classes);
        let model = match config.model {
            ModelKind::Logistic => Model::Logistic { features, classes },
            ModelKind::Mlp => Model::Mlp {
                features,
                hidden: config.hidden,
                classes,
            },
        };
        Ok(Self {
            initial: model.initial(config.initial_seed),
            model,
            data,
            test,
            scaling,
            sgd: SgdConfig {
                epochs: config.epochs,
                batch: config.batch,
                learning_rate: config.learning_rate,
                ..SgdConfig::default()
            },
            seed: config.seed,
        })
    }

    /// Values of the global model: the parameters, then any statistics region.
    pub fn global_size(&self) -> usize {
        self.model.parameters()
            + match self.scaling {
                SourceScaling::Local(_) => 0,
                SourceScaling::Pooled => scaling::region_size(self.model.features()),
            }
    }

    /// The (mean, standard deviation) in force for a global model, if known yet.
    pub fn feature_scaling(&self, global: &[f32]) -> Option<Vec<(f32, f32)>> {
        match &self.scaling {
            SourceScaling::Local(stats) => Some(stats.clone()),
            SourceScaling::Pooled => scaling::pooled(
                global.get(self.model.parameters()..)?,
                self.model.features(),
            ),
        }
    }

    /// The global model measured on the held-out rows, if there are some.
    pub fn held_out(&self, global: &[f32]) -> Option<Evaluation> {
        let test = self.scaled(self.test.as_ref()?, global)?;
        Some(self.model.evaluate(&self.parameters(global), &test))
    }

    /// `rows` scaled for a global model (borrowed when nothing is left to apply).
    fn scaled<'a>(&self, rows: &'a Dataset, global: &[f32]) -> Option<Cow<'a, Dataset>> {
        match &self.scaling {
            SourceScaling::Local(_) => Some(Cow::Borrowed(rows)),
            SourceScaling::Pooled => {
                let stats = self.feature_scaling(global)?;
                let mut scaled = rows.clone();
                scaled.apply(&stats);
                Some(Cow::Owned(scaled))
            }
        }
    }
}

impl UpdateSource for TrainingSource {
    fn update(&mut self, round: u64, global: &[f32]) -> Result<Update, SourceError> {
        let parameters = self.model.parameters();
        let samples = self.data.rows() as u64;
        let data = match &self.scaling {
            SourceScaling::Local(_) => Cow::Borrowed(&self.data),
            SourceScaling::Pooled => {
                let region = global.get(parameters..).unwrap_or_default();
                match scaling::read_region(region, self.model.features()) {
                    scaling::Region::Empty => {
                        // The statistics round: this institution's moments, nothing trained.
                        let mut update = vec![0.0; parameters];
                        update.extend(scaling::local_statistics(&self.data));
                        return Ok(Update {
                            values: update,
                            samples,
                        });
                    }
                    scaling::Region::Unreadable => return Err(SourceError::UnreadableScaling),
                    scaling::Region::Pooled(stats) => {
                        let mut scaled = self.data.clone();
                        scaled.apply(&stats);
                        Cow::Owned(scaled)
                    }
                }
            }
        };
        let start = self.parameters(global);
        let trained = self
            .model
            .train(&start, &data, &self.sgd, self.seed ^ round.rotate_left(32));
        let mut update: Vec<f32> = trained.iter().zip(&start).map(|(t, m)| t - m).collect();
        update.resize(self.global_size(), 0.0);
        Ok(Update {
            values: update,
            samples,
        })
    }

    fn parameters(&self, global: &[f32]) -> Vec<f32> {
        from_initial(&self.initial, global)
    }

    fn evaluate(&mut self, global: &[f32]) -> Option<Evaluation> {
        self.held_out(global)
    }

    fn layout(&self) -> Layout {
        self.model.layout()
    }

    fn export_extras(&self, global: &[f32]) -> Vec<(String, Vec<f32>)> {
        self.feature_scaling(global)
            .map(|stats| scaling::scaling_tensors(&stats))
            .unwrap_or_default()
    }

    fn export_metadata(&self) -> Vec<(String, String)> {
        let scaling = match self.scaling {
            SourceScaling::Local(_) => "(x - scaling.mean) / scaling.std",
            SourceScaling::Pooled => scaling::POOLED_FORMULA,
        };
        vec![("scaling".into(), scaling.into())]
    }
}

/// The statistics region's moments are scaled to fit a clip of 1 (see `training::scaling`):
/// a smaller clip would clamp them.
fn check_pooled_clip(pooled: bool, plan: &RoundPlan) -> Result<(), SourceError> {
    if pooled && plan.clip < 1.0 {
        return Err(SourceError::PooledClip { clip: plan.clip });
    }
    Ok(())
}

/// The source a node's configuration names. `scratch` is a directory of the node's own.
pub fn open_source(
    config: &SourceConfig,
    member: u8,
    plan: &RoundPlan,
    scratch: PathBuf,
) -> Result<Box<dyn UpdateSource>, SourceError> {
    let values = plan.values as usize;
    Ok(match config {
        SourceConfig::Synthetic { seed, samples } => Box::new(SyntheticSource {
            seed: *seed,
            member,
            samples: *samples,
            values,
            clip: plan.clip,
        }),
        SourceConfig::BuiltIn(trainer) => {
            check_pooled_clip(trainer.scaling == Scaling::Pooled, plan)?;
            Box::new(TrainingSource::open(trainer, values)?)
        }
        SourceConfig::External(external) => {
            check_pooled_clip(external.pooled_scaling.is_some(), plan)?;
            Box::new(ExternalSource::open(external, values, scratch)?)
        }
    })
}

#[cfg(test)]
mod tests;
