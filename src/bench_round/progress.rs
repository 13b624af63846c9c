//! What a long run shows while it runs: at 100M values a round takes minutes, and without this
//! `bench round` printed nothing between the ceremony and the report. It reads the
//! coordinator's own Prometheus metrics (the same an operator scrapes), so the bench learns
//! nothing a deployment would not show.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use coordinator::metrics::{RoundStep, Snapshot};

/// A step that lasts longer than this is shown again, with what has arrived since.
const REPEAT_AFTER_SECS: f64 = 30.0;

/// The lines to show as the coordinator's metrics change; pure, so its rules are tested
/// without a coordinator.
#[derive(Debug)]
pub struct Progress {
    rounds: u64,
    shown: Option<(u64, Option<RoundStep>)>,
    shown_at_secs: f64,
}

impl Progress {
    /// Progress through a run of `rounds` rounds.
    pub fn new(rounds: u64) -> Self {
        Self {
            rounds,
            shown: None,
            shown_at_secs: 0.0,
        }
    }

    /// The line to print for `snapshot`, scraped `elapsed_secs` into the run: one when the
    /// round or its step changes, and again every 30 s while a step lasts.
    pub fn observe(&mut self, snapshot: &Snapshot, elapsed_secs: f64) -> Option<String> {
        let now = (snapshot.round, snapshot.step);
        let changed = self.shown != Some(now);
        if !changed && elapsed_secs - self.shown_at_secs < REPEAT_AFTER_SECS {
            return None;
        }
        self.shown = Some(now);
        self.shown_at_secs = elapsed_secs;
        let step = snapshot
            .step
            .map_or("in an unknown step", RoundStep::describe);
        let since = if changed {
            String::new()
        } else {
            format!(" for {:.0} s", snapshot.step_seconds)
        };
        // Before its first round the coordinator is starting, whatever its step says.
        let what = if snapshot.round == 0 {
            "starting".to_owned()
        } else {
            format!("round {} of {}: {step}{since}", snapshot.round, self.rounds)
        };
        Some(format!(
            "  [{elapsed_secs:>6.1} s] {what}; {} members connected, {:.1} GB received, \
             {} of {} rounds done ({} decrypted)",
            snapshot.members_connected,
            snapshot.bytes_received as f64 / 1e9,
            snapshot.rounds,
            self.rounds,
            snapshot.rounds_decrypted,
        ))
    }
}

/// One scrape of the metrics served at `address`; `None` while the coordinator is not
/// serving them yet (it starts them after opening its store) or answers with something else.
pub fn scrape(address: SocketAddr) -> Option<Snapshot> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut response = Vec::new();
    // The coordinator's responses are a few hundred bytes; more is not its metrics.
    stream.take(64 * 1024).read_to_end(&mut response).ok()?;
    let response = String::from_utf8(response).ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Snapshot::parse(body).ok()
}

/// A loopback port no other process is listening on now, for the coordinator's metrics.
pub fn free_loopback_address() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(round: u64, step: RoundStep, step_seconds: f64, bytes: u64) -> Snapshot {
        Snapshot {
            members_connected: 5,
            round,
            step: Some(step),
            step_seconds,
            rounds: round - 1,
            rounds_decrypted: round - 1,
            bytes_received: bytes,
        }
    }

    #[test]
    fn a_round_is_shown_when_its_step_changes_and_every_30_s_while_it_lasts() {
        let mut progress = Progress::new(2);
        let starting = Snapshot {
            members_connected: 0,
            ..at(1, RoundStep::Idle, 0.0, 0)
        };
        let starting = Snapshot {
            round: 0,
            ..starting
        };
        assert_eq!(
            progress.observe(&starting, 1.0).as_deref(),
            Some(
                "  [   1.0 s] starting; 0 members connected, 0.0 GB received, 0 of 2 rounds \
                 done (0 decrypted)"
            )
        );
        let first = progress.observe(&at(1, RoundStep::Collecting, 0.5, 0), 3.0);
        assert_eq!(
            first.as_deref(),
            Some(
                "  [   3.0 s] round 1 of 2: collecting; 5 members connected, 0.0 GB received, \
                 0 of 2 rounds done (0 decrypted)"
            )
        );
        // The same step within 30 s of the last line: nothing new to say.
        assert_eq!(
            progress.observe(&at(1, RoundStep::Collecting, 20.0, 1_000_000_000), 22.5),
            None
        );
        let again = progress.observe(&at(1, RoundStep::Collecting, 31.0, 2_300_000_000), 33.0);
        assert_eq!(
            again.as_deref(),
            Some(
                "  [  33.0 s] round 1 of 2: collecting for 31 s; 5 members connected, 2.3 GB \
                 received, 0 of 2 rounds done (0 decrypted)"
            )
        );
        // A new step is shown at once, and so is the next round's first.
        assert!(
            progress
                .observe(&at(1, RoundStep::Decrypting, 0.1, 11_500_000_000), 34.0)
                .unwrap()
                .contains("round 1 of 2: decrypting;")
        );
        assert!(
            progress
                .observe(&at(2, RoundStep::Decrypting, 0.1, 11_500_000_000), 35.0)
                .unwrap()
                .contains("round 2 of 2: decrypting; 5 members connected, 11.5 GB received, 1 of 2 rounds done (1 decrypted)")
        );
    }

    #[test]
    fn a_step_this_build_does_not_know_is_shown_as_such() {
        let mut progress = Progress::new(1);
        let snapshot = Snapshot {
            step: None,
            ..at(1, RoundStep::Idle, 0.0, 0)
        };
        assert!(
            progress
                .observe(&snapshot, 1.0)
                .unwrap()
                .contains("round 1 of 1: in an unknown step;")
        );
    }

    #[test]
    fn a_scrape_reads_what_a_coordinators_metrics_serve() {
        let metrics = coordinator::metrics::Metrics::default();
        metrics.set_connected(3);
        metrics.add_bytes(42);
        metrics.step(4, RoundStep::AwaitingResults, runtime::clock::now_ms());
        let address = free_loopback_address().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime
            .block_on(metrics.serve(&address.to_string()))
            .unwrap();
        let snapshot = scrape(address).expect("the served metrics scrape");
        assert_eq!(
            (
                snapshot.members_connected,
                snapshot.round,
                snapshot.step,
                snapshot.bytes_received
            ),
            (3, 4, Some(RoundStep::AwaitingResults), 42)
        );
    }

    #[test]
    fn nothing_is_scraped_where_no_coordinator_serves_metrics() {
        // The port is free once its listener is dropped: the connection is refused.
        let address = free_loopback_address().unwrap();
        assert_eq!(scrape(address), None);
    }
}
