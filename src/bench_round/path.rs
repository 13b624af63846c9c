//! A round's critical path, read from its log alone: every entry carries the time its author
//! signed it, and every role runs on this one machine, so the entries of a round mark where
//! its time went (encryption, upload and aggregation, the request, the quorum's recomputation
//! and partial decryption, the partials' exchange and combination).

use std::collections::HashMap;

use protocol::audit::entry::{Body, Entry};
use serde::Serialize;

/// Where one decrypted round's time went, in seconds, phase after phase; they add up to the
/// time from its open to the last member's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CriticalPath {
    pub round: u64,
    /// Open to the last aggregated contribution's entry, which its member signs once its
    /// update is encrypted: the members' training and encryption.
    pub encrypt: f64,
    /// That entry to the close: the last upload and the coordinator's aggregation.
    pub upload_aggregate: f64,
    /// Close to the last decryption request (its witnessing included, and any attempt
    /// before it that failed).
    pub request: f64,
    /// Request to the last quorum member's release: fetching the contributions, recomputing
    /// the aggregate, the partial decryption.
    pub release: f64,
    /// Last release to the last member's result: the partials' exchange and combination (and
    /// the recomputation of members outside the quorum).
    pub combine: f64,
}

/// The critical path of every round decrypted in `entries` (the log in order), by its last
/// decryption request.
pub fn critical_paths<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<CriticalPath> {
    let entries: Vec<&Entry> = entries.into_iter().collect();
    let mut opens: HashMap<u64, u64> = HashMap::new();
    let mut requests: HashMap<u64, (u64, u64, u64)> = HashMap::new();
    let mut released: HashMap<u64, u64> = HashMap::new();
    let mut results: HashMap<u64, u64> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let at = entry.claimed_time_ms;
        let index = index as u64;
        match &entry.body {
            Body::RoundOpen { round, .. } => {
                opens.insert(*round, at);
            }
            Body::DecryptionRequest { round, close, .. } => {
                requests.insert(*round, (index, *close, at));
            }
            Body::ShareReleased { request, .. } => {
                let latest = released.entry(*request).or_default();
                *latest = (*latest).max(at);
            }
            Body::DecryptionResult { request, .. } => {
                let latest = results.entry(*request).or_default();
                *latest = (*latest).max(at);
            }
            _ => {}
        }
    }
    let seconds = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
    let mut paths: Vec<CriticalPath> = requests
        .iter()
        .filter_map(|(&round, &(request, close, requested))| {
            let open = *opens.get(&round)?;
            let close_entry = entries.get(close as usize)?;
            let Body::RoundClose { contributions, .. } = &close_entry.body else {
                return None;
            };
            let contributed = contributions
                .iter()
                .filter_map(|&c| entries.get(c as usize))
                .map(|e| e.claimed_time_ms)
                .max()
                .unwrap_or(open);
            let closed = close_entry.claimed_time_ms;
            let released = *released.get(&request)?;
            let result = *results.get(&request)?;
            Some(CriticalPath {
                round,
                encrypt: seconds(open, contributed),
                upload_aggregate: seconds(contributed, closed),
                request: seconds(closed, requested),
                release: seconds(requested, released),
                combine: seconds(released, result),
            })
        })
        .collect();
    paths.sort_by_key(|p| p.round);
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: u64, body: Body) -> Entry {
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        Entry::new("test", &key, 0, at, body)
    }

    #[test]
    fn a_rounds_phases_run_from_its_open_to_the_last_result_of_its_last_request() {
        let d = [0u8; 32];
        let log = [
            entry(
                1_000,
                Body::RoundOpen {
                    round: 1,
                    model: d,
                    base: d,
                    deadline_ms: 0,
                    expected: 3,
                },
            ),
            entry(
                3_000,
                Body::Contribution {
                    round: 1,
                    ciphertext: d,
                    samples: 1,
                },
            ),
            entry(
                4_500,
                Body::Contribution {
                    round: 1,
                    ciphertext: d,
                    samples: 1,
                },
            ),
            entry(
                5_000,
                Body::RoundClose {
                    round: 1,
                    base: d,
                    contributions: vec![1, 2],
                    aggregate: d,
                },
            ),
            // A first attempt that failed, then a retry: the retry's releases and results count.
            entry(
                5_200,
                Body::DecryptionRequest {
                    round: 1,
                    close: 3,
                    ciphertext: d,
                    quorum: 3,
                    attempt: 0,
                    seed: d,
                },
            ),
            entry(
                6_000,
                Body::ShareReleased {
                    request: 4,
                    ciphertext: d,
                    share: d,
                },
            ),
            entry(
                9_000,
                Body::DecryptionRequest {
                    round: 1,
                    close: 3,
                    ciphertext: d,
                    quorum: 3,
                    attempt: 1,
                    seed: d,
                },
            ),
            entry(
                9_700,
                Body::ShareReleased {
                    request: 6,
                    ciphertext: d,
                    share: d,
                },
            ),
            entry(
                9_900,
                Body::ShareReleased {
                    request: 6,
                    ciphertext: d,
                    share: d,
                },
            ),
            entry(
                10_400,
                Body::DecryptionResult {
                    request: 6,
                    ciphertext: d,
                    model: d,
                },
            ),
            entry(
                10_000,
                Body::DecryptionResult {
                    request: 6,
                    ciphertext: d,
                    model: d,
                },
            ),
            // A round never decrypted has no path.
            entry(
                11_000,
                Body::RoundOpen {
                    round: 2,
                    model: d,
                    base: d,
                    deadline_ms: 0,
                    expected: 3,
                },
            ),
        ];
        assert_eq!(
            critical_paths(&log),
            [CriticalPath {
                round: 1,
                encrypt: 3.5,
                upload_aggregate: 0.5,
                request: 4.0,
                release: 0.9,
                combine: 0.5,
            }]
        );
    }
}
