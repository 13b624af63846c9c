//! `quorate ceremony`: identities, approval of the consortium file, and (with later releases)
//! the ceremony itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ed25519_dalek::Signer;
use keyceremony::files::write_secret;
use keyceremony::identity::{Identity, Role};
use protocol::audit::entry::approval_message;
use protocol::consortium::Consortium;
use rand::SeedableRng;
use zeroize::Zeroizing;

/// Environment variable holding the passphrase, for automation.
pub const PASSPHRASE_VAR: &str = "QUORATE_PASSPHRASE";

#[derive(Debug, clap::Args)]
pub struct PassphraseArgs {
    /// Read the passphrase from this file (first line) instead of QUORATE_PASSPHRASE or a
    /// prompt.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

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
    /// record the approval in the file.
    Sign {
        #[arg(long)]
        consortium: PathBuf,
        #[arg(long)]
        identity: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Run the key ceremony at this site. [not available yet]
    Run(crate::Unavailable),
    /// Verify a ceremony transcript offline: approvals, every signature, commitments against
    /// reveals, the public key as the sum of the contributions, the transcript hash signed by
    /// all, and the decryption of the validation challenge by every t-subset. Exits 0 only if
    /// all hold (20 otherwise) and prints the key's fingerprint to compare aloud.
    Verify {
        /// The transcript file.
        transcript: PathBuf,
    },
    /// Rehearse a whole ceremony on this machine. [not available yet]
    Rehearse(crate::Unavailable),
}

fn passphrase(args: &PassphraseArgs, confirm: bool) -> Result<Zeroizing<String>> {
    if let Some(path) = &args.passphrase_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the passphrase file {}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            bail!("the passphrase file {} is empty", path.display());
        }
        return Ok(Zeroizing::new(line.to_owned()));
    }
    if let Ok(value) = std::env::var(PASSPHRASE_VAR) {
        if value.is_empty() {
            bail!("{PASSPHRASE_VAR} is set but empty");
        }
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
            let count = approved.file().approvals.len();
            keyceremony::files::write_atomically(consortium, approved.to_toml().as_bytes(), 0o644)
                .with_context(|| format!("writing {}", consortium.display()))?;
            println!(
                "{} approved consortium {} (digest {}); {count} of {} members have approved",
                me.name,
                approved.file().name,
                hex::encode(digest),
                approved.file().members.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        CeremonyCommand::Verify { transcript } => verify_transcript(transcript),
        CeremonyCommand::Run(_) | CeremonyCommand::Rehearse(_) => {
            eprintln!(
                "this ceremony step is not available in this build yet: the distributed ceremony \
                 arrives with the next release (keygen and sign are available)."
            );
            Ok(ExitCode::from(crate::EXIT_UNAVAILABLE))
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
            println!(
                "  validation   all {} quorums of {} decrypted the challenge",
                verified.quorums_validated, verified.threshold
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            println!("Ceremony transcript {}: INVALID: {err}", path.display());
            Ok(ExitCode::from(EXIT_TRANSCRIPT_INVALID))
        }
    }
}
