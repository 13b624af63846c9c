//! Where a member's update comes from each round: the built-in trainer, the institution's own
//! training command, or deterministic synthetic updates (so that benchmarks and tests can
//! recompute the exact expected model).
//!
//! The consortium aggregates the *global model*: the sum of all accepted updates so far, which
//! starts at zero. A network's actual parameters are the shared initial model plus the global
//! model ([`UpdateSource::parameters`]); for logistic regression the initial model is zero.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use protocol::round::RoundPlan;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::config::{ExternalConfig, ModelKind, Scaling, SourceConfig, TrainerConfig};
use crate::data::{Dataset, Impute, load_csv};
use crate::scaling;
use crate::tensors::{self, max_file_bytes};
use crate::trainer::{Evaluation, Layout, Model, SgdConfig};

/// A member's update for one round and the number of samples it stands for.
pub trait UpdateSource: Send {
    fn update(&mut self, round: u64, model: &[f32]) -> Result<(Vec<f32>, u64), String>;

    /// The network's parameters for a global model.
    fn parameters(&self, global: &[f32]) -> Vec<f32> {
        global.to_vec()
    }

    /// The global model measured on this institution's held-out rows, if it has some.
    fn evaluate(&self, _global: &[f32]) -> Option<Evaluation> {
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
}

/// Uniform values in [-clip/2, clip/2] drawn from (seed, member, round).
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    pub seed: u64,
    pub member: u8,
    pub samples: u64,
    pub values: usize,
    pub clip: f32,
}

/// The synthetic update of `member` for `round`, as [`SyntheticSource`] produces it.
pub fn synthetic_update(seed: u64, member: u8, round: u64, values: usize, clip: f32) -> Vec<f32> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8] = member;
    key[9..17].copy_from_slice(&round.to_le_bytes());
    let mut rng = ChaCha20Rng::from_seed(key);
    let half = clip / 2.0;
    (0..values).map(|_| rng.gen_range(-half..=half)).collect()
}

/// The model plaintext fixed-point FedAvg reaches from zero when, in each round, the listed
/// members contribute their synthetic updates with the given sample counts.
pub fn synthetic_fedavg(
    plan: &RoundPlan,
    seed: u64,
    rounds: &[Vec<(u8, u64)>],
) -> Result<Vec<i64>, protocol::round::RoundError> {
    let mut model = vec![0i64; plan.values as usize];
    for (r, contributors) in rounds.iter().enumerate() {
        let updates: Vec<(Vec<f32>, u64)> = contributors
            .iter()
            .map(|&(member, samples)| {
                let update =
                    synthetic_update(seed, member, r as u64 + 1, plan.values as usize, plan.clip);
                (update, samples)
            })
            .collect();
        plan.fedavg_step(&mut model, &updates)?;
    }
    Ok(model)
}

impl UpdateSource for SyntheticSource {
    fn update(&mut self, round: u64, _model: &[f32]) -> Result<(Vec<f32>, u64), String> {
        Ok((
            synthetic_update(self.seed, self.member, round, self.values, self.clip),
            self.samples,
        ))
    }

    fn layout(&self) -> Layout {
        vec![("values".into(), vec![self.values])]
    }
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
    pub fn open(config: &TrainerConfig, values: usize) -> Result<Self, String> {
        let source = Self::load(config)?;
        if source.global_size() != values {
            return Err(format!(
                "{}: {} features and {} classes make a global model of {} values for {:?} \
                 with {:?} scaling, the plan has {values}",
                config.data.display(),
                source.model.features(),
                config.classes,
                source.global_size(),
                config.model,
                config.scaling
            ));
        }
        Ok(source)
    }

    /// Loads the data; the network's size follows from it.
    pub fn load(config: &TrainerConfig) -> Result<Self, String> {
        let impute = if config.impute_missing {
            Impute::Mean
        } else {
            Impute::Refuse
        };
        let mut data = load_csv(&config.data, &config.target, config.classes, impute)
            .map_err(|e| e.to_string())?;
        let scaling = match config.scaling {
            Scaling::Local => SourceScaling::Local(data.standardise()),
            Scaling::Pooled => {
                data.log_transform();
                SourceScaling::Pooled
            }
        };
        let test = match &config.test_data {
            Some(path) => {
                let mut test = load_csv(path, &config.target, config.classes, impute)
                    .map_err(|e| e.to_string())?;
                if test.columns != data.columns {
                    return Err(format!(
                        "{}: the columns differ from {}",
                        path.display(),
                        config.data.display()
                    ));
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
    fn update(&mut self, round: u64, global: &[f32]) -> Result<(Vec<f32>, u64), String> {
        let parameters = self.model.parameters();
        let samples = self.data.rows() as u64;
        let Some(data) = self.scaled(&self.data, global) else {
            // The statistics round: this institution's moments, nothing trained.
            let mut update = vec![0.0; parameters];
            update.extend(scaling::local_statistics(&self.data));
            return Ok((update, samples));
        };
        let start = self.parameters(global);
        let trained = self
            .model
            .train(&start, &data, &self.sgd, self.seed ^ round.rotate_left(32));
        let mut update: Vec<f32> = trained.iter().zip(&start).map(|(t, m)| t - m).collect();
        update.resize(self.global_size(), 0.0);
        Ok((update, samples))
    }

    fn parameters(&self, global: &[f32]) -> Vec<f32> {
        self.initial
            .iter()
            .zip(global)
            .map(|(i, g)| i + g)
            .collect()
    }

    fn evaluate(&self, global: &[f32]) -> Option<Evaluation> {
        let test = self.scaled(self.test.as_ref()?, global)?;
        Some(self.model.evaluate(&self.parameters(global), &test))
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

/// The institution's own training command (see [`ExternalConfig`]).
#[derive(Debug, Clone)]
pub struct ExternalSource {
    pub config: ExternalConfig,
    pub layout: Layout,
    pub initial: Vec<f32>,
    /// Where the model and update files are exchanged.
    pub scratch: PathBuf,
}

impl ExternalSource {
    pub fn open(config: &ExternalConfig, values: usize, scratch: PathBuf) -> Result<Self, String> {
        if config.command.is_empty() {
            return Err("source.command is empty".into());
        }
        let layout: Layout = config
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let total: usize = layout
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        if total != values {
            return Err(format!(
                "source.tensors hold {total} values, the plan has {values}"
            ));
        }
        let initial = match &config.initial_model {
            Some(path) => {
                let bytes = read_bounded(path, max_file_bytes(&layout))?;
                tensors::decode(&bytes, &layout, &path.display().to_string())
                    .map_err(|e| e.to_string())?
                    .0
            }
            None => vec![0.0; values],
        };
        std::fs::create_dir_all(&scratch)
            .map_err(|e| format!("creating {}: {e}", scratch.display()))?;
        // The command runs elsewhere: hand it paths that do not depend on its directory.
        let scratch = scratch
            .canonicalize()
            .map_err(|e| format!("{}: {e}", scratch.display()))?;
        Ok(Self {
            config: config.clone(),
            layout,
            initial,
            scratch,
        })
    }
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size > limit {
        return Err(format!(
            "{}: {size} bytes, more than the {limit} this model can take",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl UpdateSource for ExternalSource {
    fn update(&mut self, round: u64, global: &[f32]) -> Result<(Vec<f32>, u64), String> {
        let model_path = self.scratch.join("model.safetensors");
        let update_path = self.scratch.join("update.safetensors");
        let _ = std::fs::remove_file(&update_path);
        let start = self.parameters(global);
        let metadata = HashMap::from([("round".to_string(), round.to_string())]);
        let bytes = tensors::encode(&self.layout, &start, metadata).map_err(|e| e.to_string())?;
        std::fs::write(&model_path, bytes)
            .map_err(|e| format!("writing {}: {e}", model_path.display()))?;
        let program = &self.config.command[0];
        let mut child = Command::new(program)
            .args(&self.config.command[1..])
            .current_dir(&self.config.working_dir)
            .env("QUORATE_MODEL", &model_path)
            .env("QUORATE_UPDATE", &update_path)
            .env("QUORATE_ROUND", round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the trainer {program:?}: {e}"))?;
        // Read its error output on the side so a chatty trainer cannot block on a full pipe;
        // only the tail is kept for the error message.
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            })
        });
        let deadline = Instant::now() + Duration::from_secs(self.config.timeout_secs);
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the trainer {program:?} ran longer than {} s and was stopped",
                    self.config.timeout_secs
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let tail = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        if !status.success() {
            return Err(format!("the trainer {program:?} failed ({status}): {tail}"));
        }
        let bytes = read_bounded(&update_path, max_file_bytes(&self.layout))
            .map_err(|e| format!("the trainer's update: {e}"))?;
        let (update, metadata) =
            tensors::decode(&bytes, &self.layout, &update_path.display().to_string())
                .map_err(|e| e.to_string())?;
        let samples = metadata
            .get("samples")
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                format!(
                    "{}: the metadata must give the number of training rows as \"samples\"",
                    update_path.display()
                )
            })?;
        Ok((update, samples))
    }

    fn parameters(&self, global: &[f32]) -> Vec<f32> {
        self.initial
            .iter()
            .zip(global)
            .map(|(i, g)| i + g)
            .collect()
    }

    fn layout(&self) -> Layout {
        self.layout.clone()
    }
}

/// The source a node's configuration names. `scratch` is a directory of the node's own.
pub fn open_source(
    config: &SourceConfig,
    member: u8,
    plan: &RoundPlan,
    scratch: PathBuf,
) -> Result<Box<dyn UpdateSource>, String> {
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
                return Err(format!(
                    "pooled scaling needs the plan's clip to be at least 1 (it is {})",
                    plan.clip
                ));
            }
            Box::new(TrainingSource::open(trainer, values)?)
        }
        SourceConfig::External(external) => {
            Box::new(ExternalSource::open(external, values, scratch)?)
        }
    })
}
