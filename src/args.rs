//! Argument types more than one command takes: the passphrase, the built-in trainer's
//! network, and categorical columns.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use zeroize::Zeroizing;

/// Environment variable holding the passphrase, for automation.
pub const PASSPHRASE_VAR: &str = "QUORATE_PASSPHRASE";

#[derive(Debug, clap::Args)]
pub struct PassphraseArgs {
    /// Read the passphrase from this file (first line). The order: this option, then a
    /// `passphrase_file` in the role's configuration, then QUORATE_PASSPHRASE, then a prompt;
    /// the source used is logged.
    #[arg(long)]
    pub(crate) passphrase_file: Option<PathBuf>,
}

impl PassphraseArgs {
    pub fn file(path: PathBuf) -> Self {
        Self {
            passphrase_file: Some(path),
        }
    }
}

/// The passphrase: from `--passphrase-file`, else the environment, else a prompt (twice when
/// `confirm`).
pub fn passphrase(args: &PassphraseArgs, confirm: bool) -> Result<Zeroizing<String>> {
    if let Some(path) = &args.passphrase_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the passphrase file {}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            bail!("the passphrase file {} is empty", path.display());
        }
        tracing::info!(file = %path.display(), "passphrase read from a file");
        return Ok(Zeroizing::new(line.to_owned()));
    }
    if let Ok(value) = std::env::var(PASSPHRASE_VAR) {
        if value.is_empty() {
            bail!("{PASSPHRASE_VAR} is set but empty");
        }
        tracing::info!("passphrase read from {PASSPHRASE_VAR}");
        return Ok(Zeroizing::new(value));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("no passphrase: set {PASSPHRASE_VAR}, pass --passphrase-file, or run in a terminal");
    }
    let first = Zeroizing::new(rpassword::prompt_password("Passphrase: ")?);
    if first.is_empty() {
        bail!("an empty passphrase is not allowed");
    }
    if confirm {
        let second = Zeroizing::new(rpassword::prompt_password("Passphrase again: ")?);
        if *first != *second {
            bail!("the passphrases differ");
        }
    }
    Ok(first)
}

/// The built-in trainer's networks, on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelArg {
    /// Multinomial logistic regression.
    Logistic,
    /// One hidden ReLU layer (--hidden units).
    Mlp,
}

impl From<ModelArg> for node::config::ModelKind {
    fn from(model: ModelArg) -> Self {
        match model {
            ModelArg::Logistic => Self::Logistic,
            ModelArg::Mlp => Self::Mlp,
        }
    }
}

/// The `--category COLUMN=A,B,...` arguments.
pub fn parse_categories(list: &[String]) -> Result<training::data::Categories> {
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
