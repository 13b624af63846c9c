//! `quorate bench he`: times each step of the threshold scheme on this machine and checks that
//! the decrypted aggregate is exact.

use anyhow::{Context, Result, ensure};
use protocol::he::{
    Budget, BudgetRequest, Ciphertext, Decoding, LocalKeySet, Quorum, ThresholdConfig, combine,
};
use protocol::wire::{
    BoundCiphertext, DecodeLimits, decode_ciphertext_view, encode_ciphertext,
    encode_partial_decryption,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct HeBenchArgs {
    /// Values per party (one model update each).
    #[arg(long, default_value_t = 1_000_000)]
    values: usize,
    /// Number of parties n (at most 10).
    #[arg(long, default_value_t = 5)]
    parties: u8,
    /// Decryption threshold t.
    #[arg(long, default_value_t = 3)]
    threshold: u8,
    /// Worker threads (the goals are stated for 1).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Repetitions of each timed step; the median is reported.
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Magnitude of the random test values: |v| < 2^value_bits.
    #[arg(long, default_value_t = 32)]
    value_bits: u32,
    /// Secrets of the key (1 to 8): a key of k secrets encrypts k * 8192 values under one mask
    /// polynomial, so ciphertexts carry 15 / k bytes of mask a value instead of 15. The default
    /// is what key ceremonies make; rounds take any key's number.
    #[arg(long, default_value_t = keyceremony::derive::SECRETS_PER_KEY)]
    secrets: usize,
    /// Smudging margin kappa in bits (default: the smallest that keeps --lifetime-reveals
    /// decrypted coordinates at 40 bits of statistical security).
    #[arg(long)]
    kappa: Option<u32>,
    /// Decrypted coordinates over the key's whole life that the statistical security figure
    /// assumes (default: 10^11, 100M parameters times 1,000 rounds).
    #[arg(long, default_value_t = 100_000_000_000)]
    lifetime_reveals: u64,
    /// Seed for reproducible inputs and randomness (default: fresh from the OS).
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct HeBenchReport {
    parameter_set: &'static str,
    values: usize,
    parties: u8,
    threshold: u8,
    threads: usize,
    repetitions: usize,
    secrets: usize,
    delta_bits: u32,
    smudging_bits: u32,
    kappa: u32,
    /// Decrypted coordinates over the key's life that `statistical_security_bits` assumes.
    lifetime_reveals: u64,
    /// -log2 of the statistical distance between real and simulated partial decryptions
    /// after `lifetime_reveals` decrypted coordinates.
    statistical_security_bits: f64,
    keygen_ms: f64,
    encrypt_ms: f64,
    aggregate_ms: f64,
    memcpy_floor_ms: f64,
    partial_decrypt_ms: f64,
    combine_ms: f64,
    ciphertext_bytes_per_value: f64,
    share_bytes_per_value: f64,
    exact: bool,
    mismatches: usize,
    machine: String,
    date: String,
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64() * 1e3)
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

pub fn run_he(args: &HeBenchArgs) -> Result<ExitCode> {
    ensure!(args.values > 0, "--values must be at least 1");
    ensure!(args.repetitions > 0, "--repetitions must be at least 1");
    ensure!(args.threads > 0, "--threads must be at least 1");
    ensure!(
        (1..=protocol::he::MAX_SECRETS).contains(&args.secrets),
        "--secrets must be 1 to {}",
        protocol::he::MAX_SECRETS
    );
    let config = ThresholdConfig::new(args.parties, args.threshold)?;
    let budget = Budget::compute(BudgetRequest {
        config,
        max_contributions: u32::from(args.parties),
        weight_bound: 1,
        value_bits: args.value_bits,
        kappa: args
            .kappa
            .unwrap_or_else(|| protocol::he::kappa_for(args.lifetime_reveals)),
        rounds: 1,
        decoding: Decoding::Absolute,
    })?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("building the worker pool")?;
    let report = pool.install(|| measure(args, config, &budget))?;

    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "quorate bench he: {} values, {}-of-{}, {} secret(s), {} thread(s), median of {} ({}, {})",
            report.values,
            report.threshold,
            report.parties,
            report.secrets,
            report.threads,
            report.repetitions,
            report.machine,
            report.date
        );
        println!(
            "  key generation (all parties)  {:>9.1} ms",
            report.keygen_ms
        );
        println!(
            "  encrypt, per party            {:>9.1} ms",
            report.encrypt_ms
        );
        println!(
            "  aggregate {} ciphertexts       {:>9.1} ms",
            report.parties, report.aggregate_ms
        );
        println!(
            "  memcpy of the same bytes      {:>9.1} ms",
            report.memcpy_floor_ms
        );
        println!(
            "  partial decryption, per party {:>9.1} ms",
            report.partial_decrypt_ms
        );
        println!(
            "  combine {} partials + decode   {:>9.1} ms",
            report.threshold, report.combine_ms
        );
        println!(
            "  ciphertext                    {:>9.2} B/value",
            report.ciphertext_bytes_per_value
        );
        println!(
            "  partial decryption            {:>9.2} B/value",
            report.share_bytes_per_value
        );
        println!(
            "  exact                         {:>9} ({} mismatches; Delta = 2^{}, smudging 2^{})",
            report.exact, report.mismatches, report.delta_bits, report.smudging_bits
        );
        println!(
            "  statistical security          {:>9.1} bits over {} decrypted coordinates (kappa {})",
            report.statistical_security_bits, report.lifetime_reveals, report.kappa
        );
    }
    Ok(if report.exact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn measure(args: &HeBenchArgs, config: ThresholdConfig, budget: &Budget) -> Result<HeBenchReport> {
    let mut rng = match args.seed {
        Some(seed) => ChaCha20Rng::seed_from_u64(seed),
        None => ChaCha20Rng::from_entropy(),
    };
    let steps = time_steps(
        config,
        budget,
        (args.values, args.secrets),
        args.repetitions,
        &mut rng,
    )?;
    Ok(HeBenchReport {
        parameter_set: protocol::he::QUORATE_RLWE128_V1.id,
        values: args.values,
        parties: args.parties,
        threshold: args.threshold,
        threads: args.threads,
        repetitions: args.repetitions,
        secrets: args.secrets,
        delta_bits: budget.delta_bits(),
        smudging_bits: budget.smudging_bits(),
        kappa: budget.request().kappa,
        lifetime_reveals: args.lifetime_reveals,
        statistical_security_bits: budget.statistical_security_bits(args.lifetime_reveals),
        keygen_ms: steps.keygen_ms,
        encrypt_ms: steps.encrypt_ms,
        aggregate_ms: steps.aggregate_ms,
        memcpy_floor_ms: steps.memcpy_floor_ms,
        partial_decrypt_ms: steps.partial_decrypt_ms,
        combine_ms: steps.combine_ms,
        ciphertext_bytes_per_value: steps.ciphertext_bytes as f64 / args.values as f64,
        share_bytes_per_value: steps.share_bytes as f64 / args.values as f64,
        exact: steps.mismatches == 0,
        mismatches: steps.mismatches,
        machine: machine(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    })
}

/// Every step of the scheme, timed on this thread pool: the medians over `repetitions`, and
/// what one party's ciphertext and partial decryption of `values` values weigh encoded.
#[derive(Debug)]
pub(crate) struct StepTimes {
    pub keygen_ms: f64,
    /// One party's encryption of `values` values.
    pub encrypt_ms: f64,
    /// The weighted sum of every party's ciphertext, read from its encoding.
    pub aggregate_ms: f64,
    pub memcpy_floor_ms: f64,
    /// One quorum member's partial decryption of the aggregate, smudging included.
    pub partial_decrypt_ms: f64,
    /// Combining the quorum's partials and decoding.
    pub combine_ms: f64,
    pub ciphertext_bytes: usize,
    pub share_bytes: usize,
    /// Decrypted values that differ from the plaintext sum (0 when the scheme is exact).
    pub mismatches: usize,
}

/// Encrypts random values within the budget for every party of `config` under a key of
/// `secrets` secrets, aggregates them, decrypts with the first `t` parties and checks the
/// result, timing each step.
pub(crate) fn time_steps(
    config: ThresholdConfig,
    budget: &Budget,
    (values, secrets): (usize, usize),
    repetitions: usize,
    rng: &mut ChaCha20Rng,
) -> Result<StepTimes> {
    tracing::info!(
        values,
        secrets,
        parties = config.parties(),
        "generating keys"
    );
    let (keys, keygen_ms) =
        time(|| LocalKeySet::generate_with_secrets(&config, secrets, &mut *rng));
    let keys = keys?;
    let encryption_key = keys.public_key.prepare();

    let bound = budget.max_value();
    let inputs: Vec<Vec<i64>> = (0..config.parties())
        .map(|_| (0..values).map(|_| rng.gen_range(-bound..=bound)).collect())
        .collect();
    let expected: Vec<i64> = (0..values)
        .map(|i| inputs.iter().map(|v| v[i]).sum())
        .collect();

    tracing::info!("encrypting");
    let mut encrypt_times = Vec::new();
    let mut encoded = Vec::new();
    for (party, values) in inputs.iter().enumerate() {
        for repetition in 0..repetitions {
            let (ciphertext, ms) = time(|| encryption_key.encrypt(values, budget, &mut *rng));
            let ciphertext = ciphertext?;
            encrypt_times.push(ms);
            if repetition == 0 {
                encoded.push(encode_ciphertext(&ciphertext));
            }
        }
        tracing::debug!(party, "encrypted");
    }
    let total_bytes: usize = encoded.iter().map(Vec::len).sum();

    tracing::info!("aggregating");
    let views = encoded
        .iter()
        .map(|bytes| decode_ciphertext_view(bytes, DecodeLimits::default()).map(|v| (v, 1i64)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut aggregate_times = Vec::new();
    let mut memcpy_times = Vec::new();
    let mut aggregate = Ciphertext::zero(budget.ciphertext_shape_under(values, secrets));
    let mut copy = vec![0u8; total_bytes];
    for _ in 0..repetitions {
        let (sum, ms) = time(|| protocol::wire::CiphertextView::weighted_sum(&views));
        aggregate = sum?;
        aggregate_times.push(ms);
        let ((), ms) = time(|| {
            let mut offset = 0;
            for bytes in &encoded {
                copy[offset..offset + bytes.len()].copy_from_slice(bytes);
                offset += bytes.len();
            }
            std::hint::black_box(&copy);
        });
        memcpy_times.push(ms);
    }
    let aggregate = BoundCiphertext::new(aggregate);

    tracing::info!("decrypting");
    let quorum = Quorum::new(&config, (0..config.threshold()).collect())?;
    let mut partial_times = Vec::new();
    let mut partials = Vec::new();
    for &member in quorum.members() {
        let share = &keys.shares[usize::from(member)];
        for repetition in 0..repetitions {
            let (partial, ms) =
                time(|| share.partial_decrypt(&aggregate, &quorum, budget, &mut *rng));
            partial_times.push(ms);
            if repetition == 0 {
                partials.push(partial?);
            }
        }
    }
    let share_bytes = encode_partial_decryption(&partials[0]).len();

    let mut combine_times = Vec::new();
    let mut decrypted = Vec::new();
    for _ in 0..repetitions {
        let (result, ms) = time(|| combine(&aggregate, &quorum, &partials, budget));
        decrypted = result?;
        combine_times.push(ms);
    }
    let mismatches = decrypted
        .iter()
        .zip(&expected)
        .filter(|(a, b)| a != b)
        .count()
        + expected.len().abs_diff(decrypted.len());
    Ok(StepTimes {
        keygen_ms,
        encrypt_ms: median(encrypt_times),
        aggregate_ms: median(aggregate_times),
        memcpy_floor_ms: median(memcpy_times),
        partial_decrypt_ms: median(partial_times),
        combine_ms: median(combine_times),
        ciphertext_bytes: encoded[0].len(),
        share_bytes,
        mismatches,
    })
}
