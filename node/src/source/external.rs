//! The institution's own training command: the global model and the update exchanged as
//! safetensors files, the command killed (with its process group) at its timeout.

use super::persistent::{Answer, Persistent, Stopped};
use super::*;
use crate::config::{PooledScalingConfig, TrainerMode};
use training::data::load_features;

/// A persistent trainer's error output is started afresh past this size.
const MAX_TRAINER_LOG_BYTES: u64 = 16 << 20;
/// The longest a persistent trainer may take to measure a model.
const MAX_EVALUATE_SECS: u64 = 120;
/// Rounds whose trainer metrics are kept for their round reports.
const KEPT_METRICS: usize = 8;

/// The institution's own training command (see [`ExternalConfig`]).
#[derive(Debug)]
pub struct ExternalSource {
    pub config: ExternalConfig,
    pub layout: Layout,
    pub initial: Vec<f32>,
    /// The initial model's integer buffers, handed over unchanged.
    pub kept: Vec<KeptTensor>,
    /// Where the model and update files are exchanged.
    pub scratch: PathBuf,
    /// The consortium's pooled scaling, if the trainer is given one.
    pooled: Option<PooledScaling>,
    /// The trainer in persistent mode, once started.
    running: Option<Persistent>,
    /// What the trainer reported with its latest updates, by round (a few rounds: the next
    /// round's update can come before this round's report).
    metrics: std::collections::BTreeMap<u64, TrainerMetrics>,
}

/// An external trainer's pooled scaling: this institution's share of the statistics round,
/// computed by the node from its rows with the built-in trainer's functions.
#[derive(Debug)]
struct PooledScaling {
    /// This institution's moments, the statistics region of its first update.
    statistics: Vec<f32>,
    /// The features they are of, in order (handed to the trainer, to check against its own).
    columns: Vec<String>,
    /// The first update's weight.
    rows: u64,
}

impl PooledScaling {
    fn read(config: &PooledScalingConfig) -> Result<Self, SourceError> {
        let impute = Impute::when(config.impute_missing);
        let mut data = load_features(&config.data, &config.target, impute, &config.categories)?;
        data.log_transform();
        Ok(Self {
            statistics: scaling::local_statistics(&data),
            rows: data.rows() as u64,
            columns: data.columns,
        })
    }

    fn region(&self) -> usize {
        self.statistics.len()
    }

    /// What a global model's statistics region holds.
    fn holds(&self, region: &[f32]) -> scaling::Region {
        scaling::read_region(region, self.columns.len())
    }
}

impl ExternalSource {
    pub fn open(
        config: &ExternalConfig,
        values: usize,
        scratch: PathBuf,
    ) -> Result<Self, SourceError> {
        if config.command.is_empty() {
            return Err(SourceError::EmptyCommand);
        }
        let listed: Layout = config
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        for (i, (name, _)) in listed.iter().enumerate() {
            if listed[..i].iter().any(|(n, _)| n == name) {
                return Err(SourceError::DuplicateTensor(name.clone()));
            }
        }
        if config.timeout_secs == 0 || config.timeout_secs > MAX_TRAINER_SECS {
            return Err(SourceError::TrainerTimeout(config.timeout_secs));
        }
        let pooled = config
            .pooled_scaling
            .as_ref()
            .map(PooledScaling::read)
            .transpose()?;
        // The model's values, then the statistics region.
        let region = pooled.as_ref().map_or(0, PooledScaling::region);
        let (layout, initial, kept) = match &config.initial_model {
            Some(path) => {
                let model = tensors::read_model(path)?;
                if model.values.len() + region != values {
                    return Err(SourceError::InitialValues {
                        path: path.clone(),
                        total: model.values.len(),
                        scaling: region,
                        values,
                    });
                }
                if listed.is_empty() {
                    (model.layout, model.values, model.kept)
                } else {
                    let mut sorted = listed.clone();
                    sorted.sort();
                    let mut in_file = model.layout.clone();
                    in_file.sort();
                    if sorted != in_file {
                        return Err(SourceError::TensorsDiffer {
                            path: path.clone(),
                            listed: tensors::describe_layout(&listed),
                            file: tensors::describe_layout(&model.layout),
                        });
                    }
                    // The list's order, as before the list could be left out.
                    let (values, _) = tensors::read_file(path, &listed, &model.kept)?;
                    (listed, values, model.kept)
                }
            }
            None if listed.is_empty() => return Err(SourceError::NoTensors),
            None => {
                let total = listed
                    .iter()
                    .try_fold(0usize, |total, (_, shape)| {
                        shape
                            .iter()
                            .try_fold(1usize, |n, d| n.checked_mul(*d))
                            .and_then(|n| total.checked_add(n))
                    })
                    .ok_or(SourceError::ShapesOverflow)?;
                if total.checked_add(region) != Some(values) {
                    return Err(SourceError::TensorValues {
                        total,
                        scaling: region,
                        values,
                    });
                }
                (listed, vec![0.0; total], Vec::new())
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&scratch)
            .map_err(io_error(&scratch))?;
        // The command runs elsewhere: hand it paths that do not depend on its directory.
        let scratch = scratch.canonicalize().map_err(io_error(&scratch))?;
        Ok(Self {
            config: config.clone(),
            layout,
            initial,
            kept,
            scratch,
            pooled,
            running: None,
            metrics: Default::default(),
        })
    }
}

/// Names the scaling file in a persistent trainer's request, when a pooled scaling is in force.
fn with_scaling(request: &mut serde_json::Map<String, serde_json::Value>, scaling: Option<&Path>) {
    if let Some(path) = scaling {
        request.insert("scaling".into(), path.to_string_lossy().into());
    }
}

/// How near an update is to the model it was computed from, as a fraction of the update's
/// size, when that is under a quarter: a trainer that wrote its trained weights instead of
/// their difference. A real difference that close would mean the trainer doubled the whole
/// model in one round. Never fires on a zero model, where weights and differences agree.
pub fn looks_like_weights(update: &[f32], model: &[f32]) -> Option<f64> {
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let size = norm(&mut update.iter().map(|u| f64::from(*u)));
    let model_size = norm(&mut model.iter().map(|m| f64::from(*m)));
    let distance = norm(
        &mut update
            .iter()
            .zip(model)
            .map(|(u, m)| f64::from(*u) - f64::from(*m)),
    );
    (model_size > 0.0 && distance < 0.25 * size).then(|| 100.0 * distance / size)
}

/// Kills a trainer and everything it started (it leads its own process group, and is not
/// yet reaped, so the group id cannot belong to anyone else).
pub(super) fn kill_group(child: &mut std::process::Child) {
    let group = rustix::process::Pid::from_child(child);
    if let Err(e) = rustix::process::kill_process_group(group, rustix::process::Signal::KILL) {
        tracing::warn!(error = %e, "the trainer's process group could not be killed");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last lines of a trainer's error output, read back from the end of its file (however
/// much the trainer wrote).
fn tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file
            .seek(SeekFrom::End(-2000))
            .or_else(|_| file.rewind().map(|_| 0));
        let _ = file.take(2000).read_to_end(&mut text);
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

impl ExternalSource {
    /// The command with what every mode shares: its directory, its own process group, and no
    /// passphrase (it stays with the node).
    fn command(&self) -> Command {
        let mut command = Command::new(&self.config.command[0]);
        command
            .args(&self.config.command[1..])
            .current_dir(&self.config.working_dir)
            .env_remove("QUORATE_PASSPHRASE")
            // Only what this node sets: a name left in the operator's environment would
            // reach the trainer as if the node had said it.
            .env_remove("QUORATE_MODEL")
            .env_remove("QUORATE_UPDATE")
            .env_remove("QUORATE_ROUND")
            .env_remove("QUORATE_SCALING")
            .env("QUORATE_TRAINER_MODE", self.config.mode.name())
            .process_group(0);
        command
    }

    fn program(&self) -> String {
        self.config.command[0].clone()
    }

    fn stderr_path(&self) -> PathBuf {
        self.scratch.join("trainer.log")
    }

    fn failed(&self, status: std::process::ExitStatus) -> SourceError {
        SourceError::TrainerFailed {
            program: self.program(),
            status,
            tail: tail(&self.stderr_path()),
        }
    }

    fn timed_out(&self) -> SourceError {
        SourceError::TimedOut {
            program: self.program(),
            secs: self.config.timeout_secs,
        }
    }

    /// Per-round mode: one process for this round, given the files in its environment.
    fn run_once(
        &self,
        round: u64,
        model: &Path,
        update: &Path,
        scaling: Option<&Path>,
    ) -> Result<(), SourceError> {
        let stderr_path = self.stderr_path();
        let stderr = std::fs::File::create(&stderr_path).map_err(io_error(&stderr_path))?;
        let program = self.program();
        // Its error output goes to a file, not a pipe: nothing the trainer or its children do
        // with it can block the node.
        let mut command = self.command();
        if let Some(path) = scaling {
            command.env("QUORATE_SCALING", path);
        }
        let mut child = command
            .env("QUORATE_MODEL", model)
            .env("QUORATE_UPDATE", update)
            .env("QUORATE_ROUND", round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| SourceError::Start {
                program: program.clone(),
                source,
            })?;
        let deadline = Instant::now() + Duration::from_secs(self.config.timeout_secs);
        let status = loop {
            let waited = child.try_wait().map_err(|source| SourceError::Wait {
                program: program.clone(),
                source,
            })?;
            if let Some(status) = waited {
                break status;
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                return Err(self.timed_out());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            return Err(self.failed(status));
        }
        Ok(())
    }

    /// The persistent trainer, started if it is not running (again, if it exited).
    fn trainer(&mut self) -> Result<Persistent, SourceError> {
        if let Some(mut trainer) = self.running.take() {
            if trainer.running() {
                self.running = Some(trainer);
            } else if let Some(status) = trainer.stop() {
                tracing::warn!(%status, "the persistent trainer had exited; starting it again");
            }
        }
        match self.running.take() {
            Some(trainer) => Ok(trainer),
            None => {
                let stderr_path = self.stderr_path();
                // Kept across restarts (the last crash's output), but not without end.
                let long =
                    std::fs::metadata(&stderr_path).is_ok_and(|m| m.len() > MAX_TRAINER_LOG_BYTES);
                let stderr = std::fs::OpenOptions::new()
                    .create(true)
                    .append(!long)
                    .write(true)
                    .truncate(long)
                    .open(&stderr_path)
                    .map_err(io_error(&stderr_path))?;
                Persistent::start(self.command(), &self.program(), stderr)
            }
        }
    }

    /// Persistent mode: the running trainer asked for this round.
    fn run_persistent(
        &mut self,
        round: u64,
        model: &Path,
        update: &Path,
        scaling: Option<&Path>,
    ) -> Result<(), SourceError> {
        let mut trainer = self.trainer()?;
        let mut request = serde_json::Map::from_iter([
            ("round".to_string(), round.into()),
            ("model".to_string(), model.to_string_lossy().into()),
            ("update".to_string(), update.to_string_lossy().into()),
        ]);
        with_scaling(&mut request, scaling);
        let deadline = Instant::now() + Duration::from_secs(self.config.timeout_secs);
        match trainer.request(request, deadline) {
            Ok(Answer::Written(_)) => {
                self.running = Some(trainer);
                Ok(())
            }
            Ok(Answer::Refused(reason)) => {
                // It stays up: it said what went wrong and may do better next round.
                self.running = Some(trainer);
                Err(SourceError::TrainerRefused {
                    program: self.program(),
                    reason,
                })
            }
            Err(Stopped::TimedOut) => {
                trainer.stop();
                Err(self.timed_out())
            }
            Err(Stopped::Exited) => {
                // Give a trainer that is exiting a moment to be reaped, for its status.
                let waited = Instant::now() + Duration::from_secs(2);
                while trainer.running() && Instant::now() < waited {
                    std::thread::sleep(Duration::from_millis(20));
                }
                match trainer.stop() {
                    Some(status) => Err(self.failed(status)),
                    None => Err(SourceError::TrainerRefused {
                        program: self.program(),
                        reason: "it closed its output without answering".into(),
                    }),
                }
            }
        }
    }
}

impl UpdateSource for ExternalSource {
    fn update(&mut self, round: u64, global: &[f32]) -> Result<Update, SourceError> {
        let parameters = self.initial.len();
        let stats = match self.region(global) {
            None => None,
            Some((_, scaling::Region::Pooled(stats))) => Some(stats),
            Some((_, scaling::Region::Unreadable)) => return Err(SourceError::UnreadableScaling),
            Some((pooled, scaling::Region::Empty)) => {
                // The statistics round: this institution's moments, the trainer not asked.
                let mut values = vec![0.0; parameters];
                values.extend(&pooled.statistics);
                return Ok(Update {
                    values,
                    samples: pooled.rows,
                });
            }
        };
        let scaling = stats.map(|s| self.write_scaling(&s)).transpose()?;
        // Per-round names: a trainer left over from an earlier round cannot slip its file in.
        let model_path = self.scratch.join(format!("model-{round}.safetensors"));
        let update_path = self.scratch.join(format!("update-{round}.safetensors"));
        let _ = std::fs::remove_file(&update_path);
        let start = self.parameters(global);
        let metadata = HashMap::from([("round".to_string(), round.to_string())]);
        let bytes = tensors::encode(&self.layout, &start, &self.kept, metadata)?;
        // The consortium's model: owner-only, like every exported copy.
        runtime::files::write_atomically(&model_path, &bytes, 0o600)
            .map_err(io_error(&model_path))?;
        let run = match self.config.mode {
            TrainerMode::PerRound => {
                self.run_once(round, &model_path, &update_path, scaling.as_deref())
            }
            TrainerMode::Persistent => {
                self.run_persistent(round, &model_path, &update_path, scaling.as_deref())
            }
        };
        let _ = std::fs::remove_file(&model_path);
        run?;
        let read = tensors::read_file(&update_path, &self.layout, &self.kept);
        let _ = std::fs::remove_file(&update_path);
        let (mut update, metadata) = read.map_err(SourceError::BadUpdate)?;
        let samples = metadata
            .get("samples")
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| SourceError::NoSamples(update_path.clone()))?;
        if let Some(percent) = looks_like_weights(&update, &start) {
            return Err(SourceError::LooksLikeWeights { percent });
        }
        let metrics = TrainerMetrics::from_metadata(&metadata);
        if let Some(m) = &metrics {
            tracing::info!(
                round,
                accuracy = ?m.accuracy,
                loss = ?m.loss,
                rows = ?m.rows,
                seconds = ?m.seconds,
                "the trainer's own metrics"
            );
        }
        match metrics {
            Some(m) => self.metrics.insert(round, m),
            None => self.metrics.remove(&round),
        };
        while self.metrics.len() > KEPT_METRICS {
            self.metrics.pop_first();
        }
        // No round after the first touches the statistics region.
        update.resize(global.len(), 0.0);
        Ok(Update {
            values: update,
            samples,
        })
    }

    fn parameters(&self, global: &[f32]) -> Vec<f32> {
        from_initial(&self.initial, global)
    }

    fn layout(&self) -> Layout {
        self.layout.clone()
    }

    fn kept(&self) -> &[KeptTensor] {
        &self.kept
    }

    /// A persistent trainer measures the model on its own held-out rows, if it does that.
    fn evaluate(&mut self, global: &[f32]) -> Option<Evaluation> {
        if self.config.mode != TrainerMode::Persistent {
            return None;
        }
        let scaling = match self
            .scaling_in_force(global)
            .map(|s| self.write_scaling(&s))
        {
            None => None,
            Some(Ok(path)) => Some(path),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the scaling could not be written to evaluate");
                return None;
            }
        };
        let path = self.scratch.join("evaluate.safetensors");
        let bytes = tensors::encode(
            &self.layout,
            &self.parameters(global),
            &self.kept,
            HashMap::new(),
        )
        .ok()?;
        runtime::files::write_atomically(&path, &bytes, 0o600).ok()?;
        let mut request =
            serde_json::Map::from_iter([("evaluate".to_string(), path.to_string_lossy().into())]);
        with_scaling(&mut request, scaling.as_deref());
        // The node waits for this before its next step: far less than a round's training.
        let secs = self.config.timeout_secs.min(MAX_EVALUATE_SECS);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let answer = match self.trainer() {
            Ok(mut trainer) => {
                let answer = trainer.request(request, deadline);
                if answer.is_ok() {
                    self.running = Some(trainer);
                } else {
                    trainer.stop();
                }
                answer
            }
            Err(e) => {
                tracing::warn!(error = %e, "the trainer could not be started to evaluate");
                return None;
            }
        };
        let _ = std::fs::remove_file(&path);
        match answer {
            Ok(Answer::Written(measured)) => measured.and_then(|m| m.evaluation()),
            Ok(Answer::Refused(reason)) => {
                tracing::warn!(reason, "the trainer did not evaluate the model");
                None
            }
            Err(stopped) => {
                tracing::warn!(?stopped, "the trainer did not answer the evaluation");
                None
            }
        }
    }

    fn trainer_metrics(&self, round: u64) -> Option<TrainerMetrics> {
        self.metrics.get(&round).cloned()
    }

    fn export_extras(&self, global: &[f32]) -> Vec<(String, Vec<f32>)> {
        self.scaling_in_force(global)
            .map(|stats| scaling::scaling_tensors(&stats))
            .unwrap_or_default()
    }

    fn export_metadata(&self) -> Vec<(String, String)> {
        match self.pooled {
            Some(_) => vec![("scaling".into(), scaling::POOLED_FORMULA.into())],
            None => Vec::new(),
        }
    }
}

impl ExternalSource {
    /// What a global model's statistics region holds, if the trainer is given a pooled
    /// scaling.
    fn region(&self, global: &[f32]) -> Option<(&PooledScaling, scaling::Region)> {
        let pooled = self.pooled.as_ref()?;
        let region = global.get(self.initial.len()..).unwrap_or_default();
        Some((pooled, pooled.holds(region)))
    }

    /// The pooled scaling in force for a global model, if the trainer is given one and the
    /// statistics round is decrypted.
    fn scaling_in_force(&self, global: &[f32]) -> Option<Vec<(f32, f32)>> {
        match self.region(global)? {
            (_, scaling::Region::Pooled(stats)) => Some(stats),
            _ => None,
        }
    }

    /// Writes a pooled scaling for the trainer (owner-only, like the model), and gives its
    /// path: `scaling.mean` and `scaling.std` per feature, the formula and the columns in the
    /// metadata.
    fn write_scaling(&self, stats: &[(f32, f32)]) -> Result<PathBuf, SourceError> {
        let columns = self.pooled.as_ref().map_or(&[][..], |p| &p.columns[..]);
        let tensors = scaling::scaling_tensors(stats);
        let layout: Layout = tensors
            .iter()
            .map(|(name, values)| (name.clone(), vec![values.len()]))
            .collect();
        let values: Vec<f32> = tensors.into_iter().flat_map(|(_, v)| v).collect();
        let metadata = HashMap::from([
            ("scaling".to_string(), scaling::POOLED_FORMULA.to_string()),
            (
                "columns".to_string(),
                serde_json::to_string(columns).expect("strings serialise"),
            ),
        ]);
        let bytes = tensors::encode(&layout, &values, &[], metadata)?;
        let path = self.scratch.join("scaling.safetensors");
        runtime::files::write_atomically(&path, &bytes, 0o600).map_err(io_error(&path))?;
        Ok(path)
    }
}
