//! `ceremony rehearse`: a whole ceremony on this machine, every member its own process, and the
//! ready-to-run deployment it leaves (configurations, and an external trainer's sources).

use super::*;

pub(super) fn rehearse(
    members: u8,
    threshold: u8,
    out: &Path,
    timeout: u64,
    plan: &protocol::round::RoundPlan,
) -> Result<ExitCode> {
    use keyceremony::run::{ENTRIES_FILE, TRANSCRIPT_FILE};
    use protocol::audit::note::{COSIGNATURE_V1, ED25519, NoteSigner};
    use protocol::consortium::ConsortiumFile;

    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!(
            "{} exists and is not empty; rehearse into a new directory",
            out.display()
        );
    }
    let config = protocol::he::ThresholdConfig::new(members, threshold)?;
    let budget = plan
        .budget(config)
        .context("the round plan for these values and rounds")?;
    std::fs::create_dir_all(out)?;
    let secret = match std::env::var(PASSPHRASE_VAR) {
        Ok(value) if !value.is_empty() => Zeroizing::new(value),
        _ => {
            let mut bytes = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            let throwaway = Zeroizing::new(format!("rehearsal-{}", hex::encode(bytes)));
            write_secret(&out.join("passphrase"), throwaway.as_bytes())?;
            throwaway
        }
    };
    let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
    println!(
        "rehearsal: {members} members, threshold {threshold}, in {}",
        out.display()
    );
    let coordinator = Identity::generate(Role::Coordinator, "coordinator", &mut rng)?;
    std::fs::create_dir_all(out.join("coordinator"))?;
    write_secret(
        &out.join("coordinator/identity"),
        &coordinator.seal(secret.as_bytes(), &mut rng)?,
    )?;
    let mut identities = Vec::new();
    let mut entries = Vec::new();
    let mut ports = Ports::new();
    for i in 0..members {
        let name = protocol::consortium::rehearsal_member_name(i);
        let identity = Identity::generate(Role::Member, &name, &mut rng)?;
        std::fs::create_dir_all(out.join(&name))?;
        write_secret(
            &out.join(&name).join("identity"),
            &identity.seal(secret.as_bytes(), &mut rng)?,
        )?;
        let port = ports.next(&mut rng)?;
        entries.push(identity.member_entry(&format!("/ip4/127.0.0.1/tcp/{port}")));
        identities.push(identity);
    }
    // k_min = t + 1: the t - 1 colluders' known inputs still leave two honest contributions in
    // every aggregate. Where no k_min can meet that (t = n), the rehearsal says so.
    let (k_min, accept_small_aggregates) = if threshold < members {
        (threshold + 1, false)
    } else {
        println!(
            "  warning: with threshold {threshold} of {members} members no k_min is at least \
             t + 1; accepting k_min = {members}, under which {} colluding members and the \
             coordinator can read one member's update (see SECURITY.md)",
            threshold - 1
        );
        (members, true)
    };
    println!("  k_min {k_min}: every decrypted aggregate holds at least {k_min} members' updates");
    let file = ConsortiumFile {
        name: "rehearsal".into(),
        parameter_set: protocol::he::QUORATE_RLWE128_V1.id.into(),
        threshold,
        k_min,
        accept_small_aggregates,
        witness_quorum: None,
        coordinator: coordinator
            .coordinator_entry(&format!("/ip4/127.0.0.1/tcp/{}", ports.next(&mut rng)?)),
        members: entries,
        approvals: Default::default(),
    };
    let mut consortium = Consortium::from_file(file)?;
    let message = approval_message(&consortium.digest());
    for identity in &identities {
        consortium =
            consortium.with_approval(&identity.name, &identity.signing.sign(&message).to_bytes());
    }
    let consortium_path = out.join("consortium.toml");
    std::fs::write(&consortium_path, consortium.to_toml())?;
    println!(
        "  consortium file approved by all {members} members: {}",
        consortium_path.display()
    );

    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for identity in &identities {
        let dir = out.join(&identity.name);
        let child = std::process::Command::new(&exe)
            .args(["ceremony", "run", "--consortium"])
            .arg(&consortium_path)
            .arg("--identity")
            .arg(dir.join("identity"))
            .arg("--out")
            .arg(&dir)
            .args(["--timeout", &timeout.to_string()])
            .env(PASSPHRASE_VAR, secret.as_str())
            .spawn()
            .with_context(|| format!("starting {}'s process", identity.name))?;
        children.push((identity.name.clone(), child));
    }
    let mut failed = Vec::new();
    for (name, mut child) in children {
        let status = child.wait()?;
        if !status.success() {
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        for name in &failed {
            if let Ok(text) =
                std::fs::read_to_string(out.join(name).join(keyceremony::run::ABORT_FILE))
            {
                eprint!("{text}");
            }
        }
        bail!("the ceremony failed for {}", failed.join(", "));
    }
    let transcripts: Vec<Vec<u8>> = identities
        .iter()
        .map(|i| std::fs::read(out.join(&i.name).join(TRANSCRIPT_FILE)))
        .collect::<std::io::Result<_>>()?;
    if transcripts.iter().any(|t| *t != transcripts[0]) {
        bail!("the members' transcripts differ");
    }
    std::fs::write(out.join("transcript"), &transcripts[0])?;

    // The ceremony's audit log, with the rehearsal playing the coordinator and each member's
    // witness: the membership manifest, each member's signed ceremony entry, one checkpoint
    // cosigned by all.
    let origin = consortium.log_origin();
    let store = out.join("coordinator/log-store");
    let mut entries = Vec::new();
    for identity in &identities {
        let path = out.join(&identity.name).join(ENTRIES_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        entries.extend(
            keyceremony::entries_file::decode(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
        );
    }
    let log = coordinator::audit_log::AuditLog::open_or_bootstrap(
        &store,
        &consortium,
        &coordinator.signing,
        &entries,
        runtime::clock::now_ms(),
    )?;
    let log_signer = NoteSigner::new(&origin, ED25519, coordinator.second.clone())?;
    let (checkpoint, note) = log.sign_checkpoint(&log_signer)?;
    let (_, witnesses) = protocol::audit::log::checkpoint_verifiers(
        &origin,
        log.state().membership().expect("appended"),
    )?;
    let now = runtime::clock::now_ms() / 1000;
    let mut lines = Vec::new();
    for identity in &identities {
        let witness = NoteSigner::new(&identity.name, COSIGNATURE_V1, identity.second.clone())?;
        let state = node::witness_store::WitnessStore::open(
            &out.join(&identity.name).join("witness-store"),
        )?;
        let (new_state, line) = state.load(&origin)?.cosign(
            0,
            &[],
            note.encode().as_bytes(),
            log_signer.verifier(),
            &witness,
            now,
        )?;
        state.save(&new_state)?;
        lines.push(line);
    }
    log.add_cosignatures(checkpoint.size, &lines, &witnesses)?;
    coordinator::export::export(log.store(), &out.join("audit"))?;
    let names: Vec<String> = identities.iter().map(|i| i.name.clone()).collect();
    crate::local::write_deployment_configs(out, &names, plan, 3, 300)?;
    let reveals = plan.lifetime_reveals();
    println!(
        "  round plan: {} values, {} rounds of up to {} attempts: kappa {}, Delta 2^{}, {} spare \
         bits; statistical security {:.1} bits over the plan's {reveals} decrypted coordinates \
         (the key retires after {})",
        plan.values,
        plan.rounds,
        1 + u32::from(plan.max_retries),
        plan.kappa,
        budget.delta_bits(),
        budget.spare_bits(),
        budget.statistical_security_bits(reveals),
        budget.lifetime_reveal_limit()
    );
    println!(
        "  audit log: {} entries, cosigned by {members}, exported to {}",
        checkpoint.size,
        out.join("audit").display()
    );
    verify_transcript(&out.join("transcript"))
}

/// Points every rehearsed node's `[source]` at the institution's own training command,
/// starting from the agreed initial model.
pub(super) fn external_sources(
    out: &Path,
    members: u8,
    trainer: &str,
    mode: &str,
    initial_model: &Path,
    pooled_scaling: Option<(&Path, &str)>,
) -> Result<()> {
    let command: Vec<toml::Value> = trainer
        .split_whitespace()
        .map(|word| toml::Value::String(word.into()))
        .collect();
    ensure!(!command.is_empty(), "--trainer is empty");
    for i in 0..members {
        let name = protocol::consortium::rehearsal_member_name(i);
        let mut source = toml::Table::new();
        source.insert("kind".into(), "external".into());
        source.insert("mode".into(), mode.into());
        source.insert("command".into(), toml::Value::Array(command.clone()));
        source.insert(
            "initial_model".into(),
            initial_model.to_string_lossy().into_owned().into(),
        );
        if let Some((data, target)) = pooled_scaling {
            let mut scaling = toml::Table::new();
            scaling.insert("data".into(), data.to_string_lossy().into_owned().into());
            scaling.insert("target".into(), target.into());
            source.insert("pooled_scaling".into(), toml::Value::Table(scaling));
        }
        crate::local::edit_config(&out.join(&name).join("node.toml"), |t| {
            t.insert("source".into(), toml::Value::Table(source));
        })?;
    }
    println!(
        "  nodes: each runs {trainer:?} ({mode}) in its own directory from the initial model {}",
        initial_model.display()
    );
    if let Some((data, target)) = pooled_scaling {
        println!(
            "  pooled scaling: each node reads {} in its directory (all but {target:?}); the \
             first round pools the statistics and every later one hands them to the trainer",
            data.display()
        );
    }
    Ok(())
}

/// Ports for a rehearsal's processes to listen on, chosen at random below the kernel's
/// ephemeral range. A port from `bind(0)` is one the kernel also hands out as the source port
/// of outgoing connections: on a machine where many processes connect over loopback, one was
/// sometimes taken between being chosen and its process listening, and that member stayed
/// unreachable until the ceremony timed out. Below the range only another listener takes it.
struct Ports {
    range: std::ops::Range<u16>,
    taken: std::collections::HashSet<u16>,
}

/// The lowest port of those below the ephemeral range that a rehearsal uses.
const REHEARSAL_PORTS_FROM: u16 = 10_000;

impl Ports {
    fn new() -> Self {
        // Linux's default where the kernel does not say (other systems start higher).
        let ephemeral = ephemeral_start().unwrap_or(32_768);
        Self {
            range: REHEARSAL_PORTS_FROM..ephemeral.max(REHEARSAL_PORTS_FROM),
            taken: Default::default(),
        }
    }

    /// A port nothing listens on now and this rehearsal has not handed out yet.
    fn next(&mut self, rng: &mut impl rand::Rng) -> Result<u16> {
        for _ in 0..1000 {
            if self.range.is_empty() {
                break;
            }
            let port = rng.gen_range(self.range.clone());
            if !self.taken.contains(&port)
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                self.taken.insert(port);
                return Ok(port);
            }
        }
        // No room below the ephemeral range: let the kernel choose.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        let port = listener.local_addr()?.port();
        self.taken.insert(port);
        Ok(port)
    }
}

/// The first port of the kernel's ephemeral range, where it says (Linux).
fn ephemeral_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rehearsal_ports_are_distinct_free_and_below_the_ephemeral_range() {
        let mut ports = Ports::new();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let chosen: Vec<u16> = (0..40).map(|_| ports.next(&mut rng).unwrap()).collect();
        let distinct: std::collections::HashSet<u16> = chosen.iter().copied().collect();
        assert_eq!(distinct.len(), chosen.len());
        if let Some(ephemeral) = ephemeral_start().filter(|&e| e > REHEARSAL_PORTS_FROM) {
            assert!(
                chosen
                    .iter()
                    .all(|&p| (REHEARSAL_PORTS_FROM..ephemeral).contains(&p)),
                "{chosen:?} against the ephemeral range from {ephemeral}"
            );
        }
    }
}
