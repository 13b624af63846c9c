//! What a coordinator's run reports: per-round times, contributors and bytes, the log's size
//! and the process's peak memory. Written as JSON by `quorate coordinator run --summary` and
//! read back, typed, by the demo and the benchmarks.

use std::collections::BTreeMap;

/// What a finished run reports.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSummary {
    pub rounds: Vec<RoundSummary>,
    pub log_size: u64,
    /// The process's peak resident memory, where the platform reports it.
    pub peak_memory_bytes: Option<u64>,
    /// The CPU time the process used (every run of it, after a restart), where the platform
    /// reports it.
    #[serde(default)]
    pub cpu_seconds: Option<runtime::process::CpuSeconds>,
    /// Every request members sent, by kind: what the coordinator was ever handed.
    pub requests_received: BTreeMap<String, u64>,
    /// The run was stopped by a signal before its last round; the round in progress, if any,
    /// was abandoned (everything logged stays logged).
    #[serde(default)]
    pub interrupted: bool,
}

/// One round as the coordinator saw it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoundSummary {
    pub round: u64,
    pub contributors: u32,
    pub decrypted: bool,
    pub attempts: u8,
    /// The decrypted model's digest (hex) a member logged.
    pub model: Option<String>,
    pub collect_seconds: f64,
    pub aggregate_seconds: f64,
    pub decrypt_seconds: f64,
    pub total_seconds: f64,
    pub bytes_received: u64,
}

impl RunSummary {
    /// This run's summary after an earlier run's (of the same log, before a restart): rounds
    /// from both (this run's where both have one), requests added up, the latest log size.
    pub fn after(mut self, earlier: RunSummary) -> RunSummary {
        let mut rounds: Vec<RoundSummary> = earlier
            .rounds
            .into_iter()
            .filter(|old| self.rounds.iter().all(|new| new.round != old.round))
            .collect();
        rounds.append(&mut self.rounds);
        rounds.sort_by_key(|r| r.round);
        self.rounds = rounds;
        for (kind, count) in earlier.requests_received {
            *self.requests_received.entry(kind).or_default() += count;
        }
        self.peak_memory_bytes = self.peak_memory_bytes.max(earlier.peak_memory_bytes);
        self.cpu_seconds = match (self.cpu_seconds, earlier.cpu_seconds) {
            (Some(now), Some(before)) => Some(now.plus(before)),
            (now, before) => now.or(before),
        };
        self
    }
}

pub use runtime::process::peak_memory;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_reads_back_as_it_was_written() {
        let summary = RunSummary {
            rounds: vec![RoundSummary {
                round: 3,
                contributors: 4,
                decrypted: true,
                attempts: 2,
                model: Some("ab".repeat(32)),
                total_seconds: 1.5,
                bytes_received: 99,
                ..Default::default()
            }],
            log_size: 42,
            peak_memory_bytes: Some(1 << 20),
            cpu_seconds: Some(runtime::process::CpuSeconds {
                user: 1.25,
                system: 0.5,
            }),
            requests_received: [("offer".to_owned(), 4)].into(),
            interrupted: false,
        };
        let json = serde_json::to_vec(&summary).unwrap();
        assert_eq!(
            serde_json::from_slice::<RunSummary>(&json).unwrap(),
            summary
        );
    }

    #[test]
    fn a_restarted_run_appends_its_rounds_to_the_earlier_summary() {
        let round = |round| RoundSummary {
            round,
            decrypted: true,
            ..Default::default()
        };
        let earlier = RunSummary {
            rounds: vec![round(1), round(2), round(3)],
            requests_received: [("offer".to_owned(), 3)].into(),
            log_size: 40,
            interrupted: true,
            cpu_seconds: Some(runtime::process::CpuSeconds {
                user: 1.0,
                system: 2.0,
            }),
            ..Default::default()
        };
        let mut retried = round(3);
        retried.attempts = 2;
        let latest = RunSummary {
            rounds: vec![retried.clone(), round(4)],
            requests_received: [("offer".to_owned(), 2), ("fetch".to_owned(), 1)].into(),
            log_size: 60,
            cpu_seconds: Some(runtime::process::CpuSeconds {
                user: 0.5,
                system: 0.25,
            }),
            ..Default::default()
        };
        let merged = latest.after(earlier);
        assert_eq!(merged.rounds, vec![round(1), round(2), retried, round(4)]);
        assert_eq!(merged.requests_received["offer"], 5);
        assert_eq!(merged.requests_received["fetch"], 1);
        assert_eq!((merged.log_size, merged.interrupted), (60, false));
        // Both runs' CPU time counts.
        assert_eq!(
            merged.cpu_seconds,
            Some(runtime::process::CpuSeconds {
                user: 1.5,
                system: 2.25
            })
        );
    }
}
