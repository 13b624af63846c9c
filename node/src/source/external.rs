//! The institution's own training command: the global model and the update exchanged as
//! safetensors files, the command killed (with its process group) at its timeout.

use super::*;

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
    pub fn open(
        config: &ExternalConfig,
        values: usize,
        scratch: PathBuf,
    ) -> Result<Self, SourceError> {
        if config.command.is_empty() {
            return Err(SourceError::EmptyCommand);
        }
        let layout: Layout = config
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        for (i, (name, _)) in layout.iter().enumerate() {
            if layout[..i].iter().any(|(n, _)| n == name) {
                return Err(SourceError::DuplicateTensor(name.clone()));
            }
        }
        if config.timeout_secs == 0 || config.timeout_secs > MAX_TRAINER_SECS {
            return Err(SourceError::TrainerTimeout(config.timeout_secs));
        }
        let total = layout
            .iter()
            .try_fold(0usize, |total, (_, shape)| {
                shape
                    .iter()
                    .try_fold(1usize, |n, d| n.checked_mul(*d))
                    .and_then(|n| total.checked_add(n))
            })
            .ok_or(SourceError::ShapesOverflow)?;
        if total != values {
            return Err(SourceError::TensorValues { total, values });
        }
        let initial = match &config.initial_model {
            Some(path) => tensors::read_file(path, &layout)?.0,
            None => vec![0.0; values],
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
            scratch,
        })
    }
}

/// Kills a trainer and everything it started (it leads its own process group, and is not
/// yet reaped, so the group id cannot belong to anyone else).
fn kill_group(child: &mut std::process::Child) {
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

impl UpdateSource for ExternalSource {
    fn update(&mut self, round: u64, global: &[f32]) -> Result<Update, SourceError> {
        // Per-round names: a trainer left over from an earlier round cannot slip its file in.
        let model_path = self.scratch.join(format!("model-{round}.safetensors"));
        let update_path = self.scratch.join(format!("update-{round}.safetensors"));
        let stderr_path = self.scratch.join("trainer.log");
        let _ = std::fs::remove_file(&update_path);
        let start = self.parameters(global);
        let metadata = HashMap::from([("round".to_string(), round.to_string())]);
        let bytes = tensors::encode(&self.layout, &start, metadata)?;
        // The consortium's model: owner-only, like every exported copy.
        runtime::files::write_atomically(&model_path, &bytes, 0o600)
            .map_err(io_error(&model_path))?;
        let stderr = std::fs::File::create(&stderr_path).map_err(io_error(&stderr_path))?;
        let program = &self.config.command[0];
        // Its error output goes to a file, not a pipe: nothing the trainer or its children do
        // with it can block the node. The node's passphrase stays with the node.
        let mut child = Command::new(program)
            .args(&self.config.command[1..])
            .current_dir(&self.config.working_dir)
            .env_remove("QUORATE_PASSPHRASE")
            .env("QUORATE_MODEL", &model_path)
            .env("QUORATE_UPDATE", &update_path)
            .env("QUORATE_ROUND", round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
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
                let _ = std::fs::remove_file(&model_path);
                return Err(SourceError::TimedOut {
                    program: program.clone(),
                    secs: self.config.timeout_secs,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = std::fs::remove_file(&model_path);
        if !status.success() {
            return Err(SourceError::TrainerFailed {
                program: program.clone(),
                status,
                tail: tail(&stderr_path),
            });
        }
        let read = tensors::read_file(&update_path, &self.layout);
        let _ = std::fs::remove_file(&update_path);
        let (update, metadata) = read.map_err(SourceError::BadUpdate)?;
        let samples = metadata
            .get("samples")
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| SourceError::NoSamples(update_path.clone()))?;
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
}
