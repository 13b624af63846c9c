//! `quorate ceremony`: identities, approval of the consortium file, and (with later releases)
//! the ceremony itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use ed25519_dalek::Signer;
use protocol::audit::entry::approval_message;
use protocol::consortium::Consortium;
use rand::SeedableRng;
use runtime::files::write_secret;
use runtime::identity::{Identity, Role};
use zeroize::Zeroizing;

use crate::args::{PASSPHRASE_VAR, PassphraseArgs, passphrase};

mod rehearse;
use rehearse::{external_sources, rehearse};

#[derive(Debug, clap::Subcommand)]
pub enum CeremonyCommand {
    /// Create an identity (signing, witness or log, and network keys), sealed under a
    /// passphrase, and print its public entry for the consortium file.
    Keygen {
        /// The name this member (or the coordinator) goes by in the consortium file.
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value_t = Role::Member)]
        role: Role,
        /// The libp2p address others reach it at, e.g. /ip4/192.0.2.7/tcp/7401.
        #[arg(long)]
        address: String,
        /// Where to write the sealed identity (must not exist).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Approve a consortium file: sign its canonical digest with this member's identity and
    /// record the approval in the file (its comments and layout are kept). Prints how many
    /// members have approved this exact file and how many sites may be down.
    Sign {
        #[arg(long)]
        consortium: PathBuf,
        #[arg(long)]
        identity: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Merge the approvals members recorded in their own copies of the consortium file into
    /// it. Each copy must be the same consortium (the same digest); only approvals that verify
    /// are taken, and the file's comments and layout are kept.
    MergeApprovals {
        /// The consortium file to complete.
        #[arg(long)]
        consortium: PathBuf,
        /// The members' signed copies.
        #[arg(required = true)]
        copies: Vec<PathBuf>,
    },
    /// Run the key ceremony at this site, with the other members over libp2p. Writes the
    /// transcript, the sealed key share (only after all n signed the transcript), the public
    /// key and this member's ceremony entry for the audit log into --out.
    Run {
        /// The consortium file, approved by every member.
        #[arg(long)]
        consortium: PathBuf,
        /// This member's sealed identity.
        #[arg(long)]
        identity: PathBuf,
        /// Directory for the results.
        #[arg(long)]
        out: PathBuf,
        /// Seconds to wait for every member's message in each phase before aborting.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Verify a ceremony transcript offline: approvals, every signature, commitments against
    /// reveals, the public key as the sum of the contributions, the transcript hash signed by
    /// all, and the decryption of the validation challenge by every t-subset. Exits 0 only if
    /// all hold (20 otherwise) and prints the key's fingerprint to compare aloud.
    Verify {
        /// The transcript file.
        transcript: PathBuf,
    },
    /// Rehearse a whole ceremony on this machine: every member its own process, talking libp2p
    /// on loopback. Leaves the consortium file, identities, sealed shares, the transcript
    /// (DIR/transcript) and the ceremony's audit log (DIR/audit) in --out. Uses
    /// QUORATE_PASSPHRASE, or a throwaway passphrase saved in DIR/passphrase.
    Rehearse {
        #[arg(long, default_value_t = 5)]
        members: u8,
        #[arg(long, default_value_t = 3)]
        threshold: u8,
        #[arg(long)]
        out: PathBuf,
        /// Seconds each phase may take.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Values in the model the written configurations' round plan carries (its kappa is
        /// sized so that the plan's whole life keeps 40 bits of statistical security).
        #[arg(long, default_value_t = 1000)]
        values: u32,
        /// Rounds the written round plan allows (the key's budget covers them).
        #[arg(long, default_value_t = 50)]
        plan_rounds: u32,
        /// The consortium's initial model (safetensors): the plan takes its values from it
        /// instead of --values and pins its digest, so every node checks it starts from it.
        #[arg(long, conflicts_with = "values", requires = "trainer")]
        initial_model: Option<PathBuf>,
        /// With --initial-model: the training command every node's configuration runs each
        /// round (split at spaces; it runs in the member's directory, where its data goes), as
        /// an external source starting from the initial model.
        #[arg(long, requires = "initial_model")]
        trainer: Option<String>,
        /// How the nodes run the trainer: started each round (per-round), or once for the
        /// whole run and asked for each round on its standard input (persistent).
        #[arg(long, requires = "trainer", default_value = "per-round",
              value_parser = ["per-round", "persistent"])]
        trainer_mode: String,
        /// With --trainer: give every trainer the consortium's pooled feature scaling over
        /// rows of this many features (after one-hot encoding); the plan takes 4 x features +
        /// 1 values more, and the first round pools the statistics.
        #[arg(long, requires = "trainer")]
        scaling_features: Option<usize>,
        /// With --scaling-features: each member's rows, in its directory (the trainer's own
        /// training file).
        #[arg(long, requires = "scaling_features", default_value = "data.csv")]
        scaling_data: PathBuf,
        /// With --scaling-features: the column left out of the features.
        #[arg(long, requires = "scaling_features", default_value = "label")]
        scaling_target: String,
    },
}

/// Rewrites the `[approvals]` table of the consortium file at `path` with `consortium`'s
/// approvals, keeping everything else in the file as it was (comments, order, layout).
fn write_approvals(path: &Path, consortium: &Consortium) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not a TOML document", path.display()))?;
    let mut table = toml_edit::Table::new();
    for (member, signature) in &consortium.file().approvals {
        table.insert(member, toml_edit::value(signature.as_str()));
    }
    document.insert("approvals", toml_edit::Item::Table(table));
    let written = document.to_string();
    // What is written must still be this consortium.
    let reread = Consortium::parse(&written)
        .with_context(|| format!("the approvals could not be recorded in {}", path.display()))?;
    ensure!(
        reread.digest() == consortium.digest()
            && reread.file().approvals == consortium.file().approvals,
        "the approvals could not be recorded in {} without changing it",
        path.display()
    );
    runtime::files::write_atomically(path, written.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))
}

/// `ceremony merge-approvals`: the approvals members recorded in their own copies, checked
/// and added to the consortium file.
fn merge_approvals(path: &Path, copies: &[PathBuf]) -> Result<ExitCode> {
    let mut merged = read_consortium(path)?;
    for copy in copies {
        let theirs = read_consortium(copy)?;
        ensure!(
            theirs.digest() == merged.digest(),
            "{} is another consortium (digest {}, this file's is {}): it was edited after the \
             copy was made, so its approvals are not for this file",
            copy.display(),
            hex::encode(theirs.digest()),
            hex::encode(merged.digest())
        );
        let valid = theirs.valid_approvals();
        for (member, signature) in &theirs.file().approvals {
            if !valid.contains(member) {
                println!(
                    "  {}: the approval recorded for {member} does not verify; not taken",
                    copy.display()
                );
                continue;
            }
            let bytes: [u8; 64] = hex::decode(signature)
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("a verified approval is 64 hex bytes")?;
            merged = merged.with_approval(member, &bytes);
        }
    }
    write_approvals(path, &merged)?;
    let valid = merged.valid_approvals();
    println!(
        "{}: {} of {} members have approved this file ({})",
        path.display(),
        valid.len(),
        merged.file().members.len(),
        valid.join(", ")
    );
    print_tolerance(&merged);
    Ok(ExitCode::SUCCESS)
}

/// How many sites may be down with rounds still completing, and why; a warning when none.
fn print_tolerance(consortium: &Consortium) {
    let file = consortium.file();
    let n = file.members.len();
    let tolerated = consortium.sites_down_tolerated();
    println!(
        "  {n} members, threshold {}, k_min {}, witness quorum {}: rounds go on with up to \
         {tolerated} site(s) down",
        file.threshold,
        file.k_min,
        consortium.witness_quorum()
    );
    if tolerated == 0 {
        println!(
            "  warning: with every site needed, one site down stops all rounds until it returns \
             (checkpoints need {} cosignatures, rounds {} contributions). To ride out one site \
             down, add members: for example 4 members with threshold 2, or 5 with threshold 3 \
             (see the README's table)",
            consortium.witness_quorum(),
            file.k_min
        );
    }
}

fn read_consortium(path: &Path) -> Result<Consortium> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Consortium::parse(&text).with_context(|| format!("in {}", path.display()))
}

pub fn run(command: &CeremonyCommand) -> Result<ExitCode> {
    match command {
        CeremonyCommand::Keygen {
            name,
            role,
            address,
            out,
            passphrase: args,
        } => {
            if out.exists() {
                bail!("{} exists; an identity is never overwritten", out.display());
            }
            let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
            let identity = Identity::generate(*role, name, &mut rng)?;
            let secret = passphrase(args, true)?;
            let sealed = identity.seal(secret.as_bytes(), &mut rng)?;
            write_secret(out, &sealed).with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "sealed identity written to {} (PeerId {})",
                out.display(),
                identity.peer_id()
            );
            let snippet = match role {
                Role::Member => format!(
                    "[[members]]\n{}",
                    toml::to_string(&identity.member_entry(address))?
                ),
                Role::Coordinator => format!(
                    "[coordinator]\n{}",
                    toml::to_string(&identity.coordinator_entry(address))?
                ),
            };
            println!("{snippet}");
            Ok(ExitCode::SUCCESS)
        }
        CeremonyCommand::Sign {
            consortium,
            identity,
            passphrase: args,
        } => {
            let parsed = read_consortium(consortium)?;
            let sealed = std::fs::read(identity)
                .with_context(|| format!("reading {}", identity.display()))?;
            let secret = passphrase(args, false)?;
            let me = Identity::open(&sealed, secret.as_bytes())
                .with_context(|| format!("opening {}", identity.display()))?;
            let index = parsed
                .member_index(&me.name)
                .with_context(|| format!("{} is not a member of this consortium", me.name))?;
            if parsed.member_signing_key(index) != me.signing.verifying_key() {
                bail!(
                    "the consortium file lists a different signing key for {}: refusing to sign",
                    me.name
                );
            }
            let digest = parsed.digest();
            let signature = me.signing.sign(&approval_message(&digest)).to_bytes();
            let approved = parsed.with_approval(&me.name, &signature);
            // Only approvals of this exact file count: one of an earlier version, or not made
            // with the member's key, is named and does not.
            let valid = approved.valid_approvals();
            write_approvals(consortium, &approved)?;
            let n = approved.file().members.len();
            println!(
                "{} approved consortium {} (digest {}); {} of {n} members have approved this \
                 file",
                me.name,
                approved.file().name,
                hex::encode(digest),
                valid.len(),
            );
            let stale: Vec<&String> = approved
                .file()
                .approvals
                .keys()
                .filter(|name| !valid.contains(name))
                .collect();
            if !stale.is_empty() {
                println!(
                    "  approvals that do not verify against this file (an earlier version, or \
                     not the member's key), not counted: {}",
                    stale
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            print_tolerance(&approved);
            Ok(ExitCode::SUCCESS)
        }
        CeremonyCommand::MergeApprovals {
            consortium: path,
            copies,
        } => merge_approvals(path, copies),
        CeremonyCommand::Verify { transcript } => verify_transcript(transcript),
        CeremonyCommand::Run {
            consortium,
            identity,
            out,
            timeout,
            passphrase: args,
        } => run_ceremony(consortium, identity, out, args, *timeout),
        CeremonyCommand::Rehearse {
            members,
            threshold,
            out,
            timeout,
            values,
            plan_rounds,
            initial_model,
            trainer,
            trainer_mode,
            scaling_features,
            scaling_data,
            scaling_target,
        } => {
            let plan = match initial_model {
                Some(path) => crate::model_cmd::plan_for(
                    &crate::model_cmd::read_initial(path)?,
                    crate::model_cmd::scaling_values(*scaling_features)?,
                    *plan_rounds,
                    protocol::round::RoundPlan::default().max_retries,
                    protocol::he::ThresholdConfig::new(*members, *threshold)?,
                )?,
                None => protocol::round::RoundPlan {
                    values: *values,
                    rounds: *plan_rounds,
                    ..Default::default()
                }
                .sized(),
            };
            let code = rehearse(*members, *threshold, out, *timeout, &plan)?;
            if let (Some(model), Some(trainer)) = (initial_model, trainer) {
                let model = model
                    .canonicalize()
                    .with_context(|| format!("{}", model.display()))?;
                let scaling = scaling_features.map(|_| (scaling_data.as_path(), &**scaling_target));
                external_sources(out, *members, trainer, trainer_mode, &model, scaling)?;
            }
            Ok(code)
        }
    }
}

/// Exit code of a transcript that does not verify.
const EXIT_TRANSCRIPT_INVALID: u8 = 20;
const MAX_TRANSCRIPT_BYTES: u64 = 256 << 20;

fn verify_transcript(path: &Path) -> Result<ExitCode> {
    use keyceremony::transcript::{Transcript, fingerprint_words, verify};
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > MAX_TRANSCRIPT_BYTES {
        bail!(
            "{} is {size} bytes, more than any transcript",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let verdict = Transcript::decode(&bytes).and_then(|t| verify(&t));
    match verdict {
        Ok(verified) => {
            println!("Ceremony transcript {}: VALID", path.display());
            println!(
                "  consortium   {} ({}-of-{})",
                verified.consortium, verified.threshold, verified.parties
            );
            println!("  members      {}", verified.members.join(", "));
            println!("  ceremony     {}", hex::encode(verified.ceremony));
            println!("  public key   {}", hex::encode(verified.fingerprint));
            println!(
                "  read aloud   {}",
                fingerprint_words(&verified.fingerprint, 4)
            );
            let secrets = verified.public_key.secrets();
            if secrets == 1 {
                println!(
                    "  validation   all {} quorums of {} decrypted the challenge",
                    verified.quorums_validated, verified.threshold
                );
            } else {
                println!(
                    "  validation   all {} quorums of {} decrypted the challenge of each of the \
                     key's {secrets} secrets",
                    verified.quorums_validated, verified.threshold
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            println!("Ceremony transcript {}: INVALID: {err}", path.display());
            Ok(ExitCode::from(EXIT_TRANSCRIPT_INVALID))
        }
    }
}

fn run_ceremony(
    consortium_path: &Path,
    identity_path: &Path,
    out: &Path,
    args: &PassphraseArgs,
    timeout: u64,
) -> Result<ExitCode> {
    let consortium = read_consortium(consortium_path)?;
    consortium.check_approvals().with_context(|| {
        format!(
            "{} is not approved by every member",
            consortium_path.display()
        )
    })?;
    let sealed = std::fs::read(identity_path)
        .with_context(|| format!("reading {}", identity_path.display()))?;
    let secret = passphrase(args, false)?;
    let identity = Identity::open(&sealed, secret.as_bytes())
        .with_context(|| format!("opening {}", identity_path.display()))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the network runtime")?;
    let outcome = runtime.block_on(keyceremony::run::run_member(
        consortium,
        &identity,
        secret.as_bytes(),
        out,
        std::time::Duration::from_secs(timeout),
    ));
    match outcome {
        Ok(outcome) => {
            println!(
                "{}: ceremony {} complete; transcript, sealed share and public key in {}",
                identity.name,
                hex::encode(&outcome.ceremony[..8]),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("{}: {err}", identity.name);
            Ok(ExitCode::from(EXIT_CEREMONY_ABORTED))
        }
    }
}

/// Exit code of a ceremony that aborted.
const EXIT_CEREMONY_ABORTED: u8 = 21;
