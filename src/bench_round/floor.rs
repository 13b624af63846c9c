//! The floor under each phase of a round: the bytes the phase must move, at this machine's
//! measured loopback rate, plus the homomorphic work it must do, as CPU time spread over every
//! core. A measured phase far above its floor spends its time elsewhere (copies, hashing,
//! Noise, waiting); one close to it can only get faster with fewer bytes or faster kernels.
//!
//! The floor ignores what a deployment adds on purpose (each byte's Noise encryption and
//! SHA-256 digest at both ends, the log's signatures and witnessing) and assumes the phase's
//! transfers and work never overlap, so it is the time of a round that did only what the
//! scheme needs, on this machine.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use protocol::he::ThresholdConfig;
use protocol::round::RoundPlan;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

/// What the floors are computed from, each measured on this machine for the plan's model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Costs {
    /// Raw TCP over 127.0.0.1, one writer thread and one reader thread.
    pub loopback_bytes_per_second: f64,
    /// Cores the processes share.
    pub cores: u32,
    /// One thread's time for one model: an encryption, adding one term into an aggregate, a
    /// partial decryption (smudging included), combining the quorum's partials.
    pub encrypt_seconds: f64,
    pub aggregate_term_seconds: f64,
    pub partial_decrypt_seconds: f64,
    pub combine_seconds: f64,
    /// One model's ciphertext and one partial decryption, encoded.
    pub ciphertext_bytes: u64,
    pub partial_bytes: u64,
    /// The model size the step times were measured at and scaled from.
    pub sampled_values: u64,
}

/// One phase's floor: the bytes it moves over loopback and the CPU time of its homomorphic
/// work on every core.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Floor {
    pub bytes: u64,
    pub transfer_seconds: f64,
    /// Homomorphic work over every core (its one-thread time divided by the cores).
    pub cpu_seconds: f64,
    pub seconds: f64,
}

/// The floor of each phase of `CriticalPath`, in the same order, and of the whole round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Floors {
    pub encrypt: Floor,
    pub upload_aggregate: Floor,
    pub release: Floor,
    pub combine: Floor,
    pub round_seconds: f64,
}

impl Costs {
    fn floor(&self, bytes: u64, one_thread_seconds: f64) -> Floor {
        let transfer_seconds = bytes as f64 / self.loopback_bytes_per_second;
        let cpu_seconds = one_thread_seconds / f64::from(self.cores.max(1));
        Floor {
            bytes,
            transfer_seconds,
            cpu_seconds,
            seconds: transfer_seconds + cpu_seconds,
        }
    }

    /// The floors of a round where `institutions` members all contribute and a quorum of
    /// `threshold` decrypts, as rounds run today: the coordinator adds every contribution onto
    /// the encrypted model; each quorum member fetches the others' contributions, recomputes
    /// the aggregate onto the model it holds and releases a partial to every other member;
    /// each member outside the quorum fetches the aggregate (one term onto zero), and every
    /// member combines.
    pub fn floors(&self, institutions: u8, threshold: u8) -> Floors {
        let n = u64::from(institutions);
        let t = u64::from(threshold).min(n);
        let others = n.saturating_sub(1);
        // The contributions and the model they are added onto.
        let recompute = (n + 1) as f64 * self.aggregate_term_seconds;
        let encrypt = self.floor(0, n as f64 * self.encrypt_seconds);
        let upload_aggregate = self.floor(n * self.ciphertext_bytes, recompute);
        let release = self.floor(
            t * others * self.ciphertext_bytes,
            t as f64 * (recompute + self.partial_decrypt_seconds),
        );
        let combine = self.floor(
            t * others * self.partial_bytes + (n - t) * self.ciphertext_bytes,
            (n - t) as f64 * self.aggregate_term_seconds + n as f64 * self.combine_seconds,
        );
        let round_seconds =
            encrypt.seconds + upload_aggregate.seconds + release.seconds + combine.seconds;
        Floors {
            encrypt,
            upload_aggregate,
            release,
            combine,
            round_seconds,
        }
    }

    /// Measures the step times on one thread at the plan's budget under a key of `secrets`
    /// secrets, on a model of at most `sample` values, scaled to the plan's size, and the
    /// loopback rate over `loopback` bytes.
    pub fn measure(
        plan: &RoundPlan,
        (config, secrets): (ThresholdConfig, usize),
        sample: u32,
        loopback: u64,
    ) -> Result<Self> {
        let budget = plan.budget(config)?;
        let sampled = plan.values.min(sample).max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .context("building the one-thread pool for the step times")?;
        let mut rng = ChaCha20Rng::from_entropy();
        let steps = pool.install(|| {
            crate::bench::time_steps(config, &budget, (sampled as usize, secrets), 3, &mut rng)
        })?;
        ensure!(
            steps.mismatches == 0,
            "the sample decryption for the floors was not exact ({} values differ)",
            steps.mismatches
        );
        // The work is per bin of the ring's N values (a bin is transformed whole, however
        // full; a mask's transform, once per group of a key's secrets' bins, is the smaller
        // part); the encodings carry a whole mask per group, and partials the plan's window of
        // bytes per value.
        let bins = |values: u32| values.div_ceil(protocol::he::POLYNOMIAL_SIZE as u32);
        let scale = f64::from(bins(plan.values)) / f64::from(bins(sampled));
        let seconds = |ms: f64| ms / 1e3 * scale;
        let extra_values = u64::from(plan.values - sampled);
        Ok(Self {
            loopback_bytes_per_second: loopback_bytes_per_second(loopback)?,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            encrypt_seconds: seconds(steps.encrypt_ms),
            aggregate_term_seconds: seconds(steps.aggregate_ms) / f64::from(config.parties()),
            partial_decrypt_seconds: seconds(steps.partial_decrypt_ms),
            combine_seconds: seconds(steps.combine_ms),
            ciphertext_bytes: protocol::wire::ciphertext_encoded_len(
                budget.ciphertext_shape_under(plan.values as usize, secrets),
            ) as u64,
            partial_bytes: steps.share_bytes as u64
                + budget.share_window().bytes() as u64 * extra_values,
            sampled_values: u64::from(sampled),
        })
    }
}

/// Sends `total` bytes through a TCP connection on 127.0.0.1 and returns the rate at which
/// the reader received them.
pub fn loopback_bytes_per_second(total: u64) -> Result<f64> {
    let (received, seconds) = loopback_transfer(total)?;
    ensure!(
        received == total,
        "loopback: sent {total} bytes, received {received}"
    );
    Ok(total as f64 / seconds.max(1e-9))
}

fn loopback_transfer(total: u64) -> Result<(u64, f64)> {
    const CHUNK: usize = 4 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").context("loopback: binding 127.0.0.1")?;
    let address = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; CHUNK];
        let mut received = 0u64;
        loop {
            match stream.read(&mut buffer)? {
                0 => return Ok(received),
                n => received += n as u64,
            }
        }
    });
    let mut stream = TcpStream::connect(address).context("loopback: connecting")?;
    let chunk = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        stream.write_all(&chunk[..n]).context("loopback: sending")?;
        sent += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let received = reader
        .join()
        .map_err(|_| anyhow::anyhow!("loopback: the reader thread panicked"))?
        .context("loopback: receiving")?;
    Ok((received, started.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> Costs {
        Costs {
            loopback_bytes_per_second: 1e9,
            cores: 2,
            encrypt_seconds: 0.5,
            aggregate_term_seconds: 0.01,
            partial_decrypt_seconds: 1.0,
            combine_seconds: 0.1,
            ciphertext_bytes: 200_000_000,
            partial_bytes: 80_000_000,
            sampled_values: 1_000_000,
        }
    }

    #[test]
    fn each_phases_floor_counts_the_bytes_and_work_a_round_of_five_with_a_quorum_of_three_needs() {
        let floors = costs().floors(5, 3);
        // Five encryptions on two cores.
        assert_eq!(floors.encrypt.bytes, 0);
        assert!((floors.encrypt.cpu_seconds - 1.25).abs() < 1e-12);
        // Five uploads; six terms (the model and five contributions) added.
        assert_eq!(floors.upload_aggregate.bytes, 1_000_000_000);
        assert!((floors.upload_aggregate.transfer_seconds - 1.0).abs() < 1e-12);
        assert!((floors.upload_aggregate.cpu_seconds - 0.03).abs() < 1e-12);
        // Three quorum members fetch four contributions each, recompute and decrypt.
        assert_eq!(floors.release.bytes, 12 * 200_000_000);
        assert!((floors.release.cpu_seconds - 3.0 * (0.06 + 1.0) / 2.0).abs() < 1e-12);
        // Three partials to four members each; two members outside the quorum fetch the
        // aggregate, one term each; five members combine.
        assert_eq!(floors.combine.bytes, 12 * 80_000_000 + 2 * 200_000_000);
        assert!((floors.combine.cpu_seconds - (2.0 * 0.01 + 0.5) / 2.0).abs() < 1e-12);
        let sum = [
            &floors.encrypt,
            &floors.upload_aggregate,
            &floors.release,
            &floors.combine,
        ]
        .iter()
        .map(|f| f.transfer_seconds + f.cpu_seconds)
        .sum::<f64>();
        assert!((floors.round_seconds - sum).abs() < 1e-9);
    }

    #[test]
    fn a_quorum_of_everyone_leaves_no_member_to_fetch_the_aggregate_after_the_release() {
        let floors = costs().floors(3, 3);
        assert_eq!(floors.combine.bytes, 3 * 2 * 80_000_000);
        assert!((floors.combine.cpu_seconds - 0.15).abs() < 1e-12);
    }

    #[test]
    fn the_loopback_measurement_moves_exactly_the_bytes_asked() {
        let (received, seconds) = loopback_transfer(9 << 20 | 123).unwrap();
        assert_eq!(received, 9 << 20 | 123);
        assert!(seconds > 0.0);
        assert!(loopback_bytes_per_second(1 << 20).unwrap() > 0.0);
    }

    #[test]
    fn the_measured_step_times_scale_to_the_plans_model() {
        let plan = RoundPlan {
            values: 20_000,
            rounds: 1,
            ..RoundPlan::default()
        };
        let config = ThresholdConfig::new(3, 2).unwrap();
        let costs = Costs::measure(&plan, (config, 1), 10_000, 1 << 20).unwrap();
        assert_eq!(costs.sampled_values, 10_000);
        // What the plan's model encodes to, not the sample's: a ciphertext of 20,000 values
        // fills three bins where 10,000 fill two, with the plan's body window; a partial is
        // the plan's window (4 bytes a value at 20,000 values over one round, read against
        // the model the round builds on) and a header.
        let budget = plan.budget(config).unwrap();
        let body = budget.body_window().bytes() as u64;
        assert!(body < 8, "{body} bytes a body");
        assert_eq!(
            costs.ciphertext_bytes,
            protocol::wire::ciphertext_header_len(1) as u64 + 3 * 8192 * 15 + 20_000 * body
        );
        assert_eq!(budget.share_window().bytes(), 4);
        let header = costs.partial_bytes - 4 * 20_000;
        assert!(header > 0 && header < 200, "{header}");
        assert!(costs.encrypt_seconds > 0.0 && costs.partial_decrypt_seconds > 0.0);
    }
}
