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
        "the initial model {path} holds {total} federated values, the plan has {values}: set \
         values = {total} in the plan (`quorate model inspect {path}` prints a plan for it)"
    )]
    InitialValues {
        path: PathBuf,
        total: usize,
        values: usize,
    },
    #[error("source.tensors names {0:?} twice")]
    DuplicateTensor(String),
    #[error("source.timeout_secs = {0}: between 1 and {MAX_TRAINER_SECS}")]
    TrainerTimeout(u64),
    #[error("source.tensors: the shapes overflow")]
    ShapesOverflow,
    #[error("source.tensors hold {total} values, the plan has {values}")]
    TensorValues { total: usize, values: usize },
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
            _ => "the update source failed".into(),
        }
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
        let impute = if config.impute_missing {
            Impute::Mean
        } else {
            Impute::Refuse
        };
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
        let Some(data) = self.scaled(&self.data, global) else {
            // The statistics round: this institution's moments, nothing trained.
            let mut update = vec![0.0; parameters];
            update.extend(scaling::local_statistics(&self.data));
            return Ok(Update {
                values: update,
                samples,
            });
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
        let Some(stats) = self.feature_scaling(global) else {
            return Vec::new();
        };
        vec![
            ("scaling.mean".into(), stats.iter().map(|s| s.0).collect()),
            ("scaling.std".into(), stats.iter().map(|s| s.1).collect()),
        ]
    }

    fn export_metadata(&self) -> Vec<(String, String)> {
        let scaling = match self.scaling {
            SourceScaling::Local(_) => "(x - scaling.mean) / scaling.std",
            SourceScaling::Pooled => "(sign(x) ln(1 + |x|) - scaling.mean) / scaling.std",
        };
        vec![("scaling".into(), scaling.into())]
    }
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
            if trainer.scaling == Scaling::Pooled && plan.clip < 1.0 {
                return Err(SourceError::PooledClip { clip: plan.clip });
            }
            Box::new(TrainingSource::open(trainer, values)?)
        }
        SourceConfig::External(external) => {
            Box::new(ExternalSource::open(external, values, scratch)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TensorSpec;

    fn external(command: &str, timeout_secs: u64, scratch: &Path) -> ExternalSource {
        let config = ExternalConfig {
            command: vec!["sh".into(), "-c".into(), command.into()],
            tensors: vec![TensorSpec {
                name: "w".into(),
                shape: vec![2],
            }],
            initial_model: None,
            mode: Default::default(),
            timeout_secs,
            working_dir: scratch.to_owned(),
        };
        ExternalSource::open(&config, 2, scratch.join("trainer")).unwrap()
    }

    /// What a trainer running `command` makes of `round`.
    fn trainer_error(command: &str, timeout_secs: u64, round: u64) -> String {
        let dir = tempfile::tempdir().unwrap();
        external(command, timeout_secs, dir.path())
            .update(round, &[0.5, 0.25])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_failing_trainer_is_reported_with_its_last_words() {
        let error = trainer_error(
            "echo starting >&2; echo 'no such column' >&2; exit 3",
            60,
            1,
        );
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(error.contains("starting\nno such column"), "{error}");
    }

    #[test]
    fn a_trainer_that_outlives_its_timeout_is_stopped_with_its_children() {
        // A child in the background keeps the error file open; the node must not wait for it.
        let error = trainer_error("sleep 300 & sleep 300", 1, 1);
        assert!(error.contains("ran longer than 1 s"), "{error}");
    }

    #[test]
    fn a_trainer_must_write_the_update_of_this_round() {
        // Writes last round's file name: not accepted as this round's update.
        let error = trainer_error(
            "cp \"$QUORATE_MODEL\" \"$(dirname \"$QUORATE_UPDATE\")/update-$((QUORATE_ROUND - 1)).safetensors\"",
            60,
            2,
        );
        assert!(error.contains("update-2.safetensors"), "{error}");
        // Echoing the model back lacks the sample count.
        let error = trainer_error("cp \"$QUORATE_MODEL\" \"$QUORATE_UPDATE\"", 60, 2);
        assert!(error.contains("\"samples\""), "{error}");
        // The model file it was given is owner-only.
        let error = trainer_error("stat -c %a \"$QUORATE_MODEL\" >&2; exit 1", 60, 3);
        assert!(error.ends_with(": 600"), "{error}");
    }

    #[test]
    fn bad_tensor_lists_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = |name: &str, shape: Vec<usize>| TensorSpec {
            name: name.into(),
            shape,
        };
        let mut config = ExternalConfig {
            command: vec!["true".into()],
            tensors: vec![spec("w", vec![1]), spec("w", vec![1])],
            initial_model: None,
            mode: Default::default(),
            timeout_secs: 60,
            working_dir: dir.path().to_owned(),
        };
        let open = |c: &ExternalConfig| {
            ExternalSource::open(c, 2, dir.path().join("t"))
                .unwrap_err()
                .to_string()
        };
        assert!(open(&config).contains("twice"));
        config.tensors = vec![spec("w", vec![usize::MAX, 2])];
        assert!(open(&config).contains("overflow"));
        config.tensors = vec![spec("w", vec![3])];
        assert!(open(&config).contains("3 values, the plan has 2"));
        config.tensors = vec![spec("w", vec![2])];
        config.timeout_secs = u64::MAX;
        assert!(open(&config).contains("timeout_secs"));
    }

    #[test]
    fn an_update_that_is_the_model_rather_than_a_difference_is_refused() {
        let model: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) / 25.0).collect();
        // Trained weights: the model moved by a few percent.
        let weights: Vec<f32> = model.iter().map(|m| m * 1.05 + 0.01).collect();
        let percent = external::looks_like_weights(&weights, &model).unwrap();
        assert!(percent < 10.0, "{percent}");
        // A real difference, even a large one, is not.
        let difference: Vec<f32> = model.iter().map(|m| 0.3 * m - 0.02).collect();
        assert_eq!(external::looks_like_weights(&difference, &model), None);
        // From a model of zeros, weights and differences are the same thing.
        assert_eq!(external::looks_like_weights(&weights, &[0.0; 100]), None);
        let error = SourceError::LooksLikeWeights { percent };
        assert!(error.to_string().contains("trained minus global"));
        assert_eq!(error.public_reason(), "the trainer's update is unusable");
    }

    #[test]
    fn a_trainers_metrics_come_from_its_updates_metadata() {
        let metadata = HashMap::from([
            ("samples".to_string(), "120".to_string()),
            ("metric.accuracy".to_string(), "0.975".to_string()),
            ("metric.loss".to_string(), "NaN".to_string()),
        ]);
        assert_eq!(
            TrainerMetrics::from_metadata(&metadata),
            Some(TrainerMetrics {
                accuracy: Some(0.975),
                loss: None,
                rows: None,
                seconds: None
            })
        );
        assert_eq!(TrainerMetrics::from_metadata(&HashMap::new()), None);
    }

    /// A source running `script` with `sh` in persistent mode.
    fn persistent(script: &str, timeout_secs: u64, dir: &Path) -> ExternalSource {
        let config = ExternalConfig {
            command: vec!["sh".into(), "-c".into(), script.into()],
            tensors: vec![TensorSpec {
                name: "w".into(),
                shape: vec![2],
            }],
            initial_model: None,
            mode: crate::config::TrainerMode::Persistent,
            timeout_secs,
            working_dir: dir.to_owned(),
        };
        ExternalSource::open(&config, 2, dir.join("trainer")).unwrap()
    }

    #[test]
    fn a_persistent_trainer_is_started_once_and_answers_each_round_on_a_line() {
        let dir = tempfile::tempdir().unwrap();
        // Copies the model to the update (so the node finds no sample count: proof that the
        // request named both files), after a line of chatter that is not an answer.
        let script = r#"echo $$ >> pids; [ "$QUORATE_TRAINER_MODE" = persistent ] || exit 9
            while read -r line; do
              echo "epoch 1 loss 0.5"
              i=$(echo "$line" | sed 's/.*"id":\([0-9]*\).*/\1/')
              m=$(echo "$line" | sed 's/.*"model":"\([^"]*\)".*/\1/')
              u=$(echo "$line" | sed 's/.*"update":"\([^"]*\)".*/\1/')
              # An answer to another request first: not taken for this one's.
              echo "{\"id\": $((i + 100)), \"ok\": true}"
              cp "$m" "$u"; echo "{\"id\": $i, \"ok\": true}"
            done"#;
        let mut source = persistent(script, 60, dir.path());
        for round in 1..=3 {
            let error = source.update(round, &[0.5, 0.25]).unwrap_err().to_string();
            assert!(
                error.contains(&format!("update-{round}.safetensors")),
                "{error}"
            );
            assert!(error.contains("\"samples\""), "{error}");
        }
        let pids = std::fs::read_to_string(dir.path().join("pids")).unwrap();
        assert_eq!(pids.lines().count(), 1, "started once: {pids}");
    }

    #[test]
    fn a_persistent_trainer_that_fails_refuses_or_hangs_is_named_and_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut exits = persistent("echo dying >&2; read -r line; exit 4", 60, dir.path());
        let error = exits.update(1, &[0.0, 0.0]).unwrap_err().to_string();
        assert!(error.contains("exit status: 4"), "{error}");
        assert!(error.contains("dying"), "{error}");
        // Started again for the next round.
        let error = exits.update(2, &[0.0, 0.0]).unwrap_err().to_string();
        assert!(error.contains("exit status: 4"), "{error}");

        let mut refuses = persistent(
            r#"while read -r line; do
                 i=$(echo "$line" | sed 's/.*"id":\([0-9]*\).*/\1/')
                 echo "{\"id\": $i, \"error\": \"no data yet\"}"
               done"#,
            60,
            dir.path(),
        );
        let error = refuses.update(1, &[0.0, 0.0]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("answered with an error: no data yet")
        );
        assert_eq!(error.public_reason(), "the trainer answered with an error");

        let mut hangs = persistent("sleep 300", 1, dir.path());
        let error = hangs.update(1, &[0.0, 0.0]).unwrap_err().to_string();
        assert!(error.contains("ran longer than 1 s"), "{error}");
    }
}
