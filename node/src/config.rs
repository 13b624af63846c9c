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
    /// Multinomial logistic regression trained on this institution's CSV file, with seeded
    /// local SGD; the update is the trained model minus the global one. The plan's `values`
    /// must be classes x (features + 1).
    Logistic {
        data: PathBuf,
        target: String,
        classes: usize,
        /// Fill missing cells with the column mean instead of refusing the file.
        #[serde(default)]
        impute_missing: bool,
        #[serde(default = "default_epochs")]
        epochs: u32,
        #[serde(default = "default_batch")]
        batch: usize,
        #[serde(default = "default_learning_rate")]
        learning_rate: f32,
        #[serde(default)]
        seed: u64,
    },
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

pub use keyceremony::files::ConfigError;

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = keyceremony::files::read_toml(path)?;
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
        if let Some(p) = &mut config.passphrase_file {
            *p = base.join(&*p);
        }
        if let SourceConfig::Logistic { data, .. } = &mut config.source {
            *data = base.join(&*data);
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
        let SourceConfig::Logistic { data, classes, .. } = &node.source else {
            panic!("the example trains logistic regression");
        };
        assert_eq!(*classes, 2);
        assert!(
            data.ends_with("data/hospital-a.csv"),
            "relative to the file"
        );
        let coordinator: toml::Table =
            std::fs::read_to_string(configs.join("coordinator.example.toml"))
                .unwrap()
                .parse()
                .unwrap();
        let plan: RoundPlan = coordinator["plan"].clone().try_into().unwrap();
        assert_eq!(plan.digest(), node.plan.digest());
    }
}
