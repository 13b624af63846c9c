//! The coordinator's configuration file (TOML). Relative paths are relative to the file.

use std::path::{Path, PathBuf};

use protocol::round::RoundPlan;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// The approved consortium file.
    pub consortium: PathBuf,
    /// The coordinator's sealed identity.
    pub identity: PathBuf,
    /// The ceremony transcript (it carries the collective public key).
    pub transcript: PathBuf,
    /// The directory of the log store and the ciphertext store.
    pub store: PathBuf,
    /// The run's total rounds: the coordinator runs up to this round number (a restart resumes
    /// after the last round the log opened) and never past the round plan's `rounds`.
    pub rounds: u64,
    /// Seconds members have to contribute once a round opens.
    #[serde(default = "default_deadline")]
    pub round_deadline_secs: u64,
    /// Seconds a quorum has to release before a retry with another quorum.
    #[serde(default = "default_release_timeout")]
    pub release_timeout_secs: u64,
    /// The least time from one round's opening to the next's, in milliseconds (0: rounds
    /// follow each other at once).
    #[serde(default)]
    pub round_interval_ms: u64,
    /// Seconds to wait for every member to connect before the first round.
    #[serde(default = "default_startup")]
    pub startup_timeout_secs: u64,
    /// Where to serve Prometheus metrics (`127.0.0.1:9464`), if anywhere.
    #[serde(default)]
    pub metrics: Option<String>,
    /// A file holding the identity's passphrase (else QUORATE_PASSPHRASE or a prompt).
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// Each member's `ceremony-entries` file, appended after the membership manifest when the
    /// log is created (a log that already exists keeps its entries).
    #[serde(default)]
    pub ceremony_entries: Vec<PathBuf>,
    pub plan: RoundPlan,
    /// A fault to inject (the hidden `--fault`), never from the file.
    #[serde(skip)]
    pub fault: Option<runtime::fault::Fault>,
}

fn default_deadline() -> u64 {
    300
}
fn default_release_timeout() -> u64 {
    120
}
fn default_startup() -> u64 {
    120
}

pub use runtime::files::ConfigError;

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = runtime::files::read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.consortium,
            &mut config.identity,
            &mut config.transcript,
            &mut config.store,
        ] {
            *p = base.join(&*p);
        }
        if let Some(p) = &mut config.passphrase_file {
            *p = base.join(&*p);
        }
        for p in &mut config.ceremony_entries {
            *p = base.join(&*p);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses_and_its_plan_fits_the_budget() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/coordinator.example.toml");
        let config = CoordinatorConfig::load(&path).unwrap();
        // One ceremony-entries file per member of the example consortium (4, threshold 2).
        assert_eq!(config.ceremony_entries.len(), 4);
        assert!(config.store.ends_with("coordinator-store"));
        config
            .plan
            .budget(protocol::he::ThresholdConfig::new(4, 2).unwrap())
            .unwrap();
    }

    #[test]
    fn an_unknown_field_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/coordinator.example.toml"),
        )
        .unwrap();
        std::fs::write(&path, example.replace("rounds = 20", "roundz = 20")).unwrap();
        let err = CoordinatorConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("roundz") && err.contains("c.toml"), "{err}");
    }
}
