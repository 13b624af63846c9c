//! Prometheus metrics on a local port, in the text exposition format: rounds, bytes received,
//! contributors and durations, the members connected, and the step the current round is in and
//! for how long (a round stuck waiting shows here first). Served by a tiny HTTP responder (one short response per
//! connection), so no web framework is needed for four numbers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::summary::RoundSummary;

#[derive(Debug, Default, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    rounds: AtomicU64,
    rounds_decrypted: AtomicU64,
    bytes_received: AtomicU64,
    last_contributors: AtomicU64,
    last_round_millis: AtomicU64,
    connected: AtomicU64,
    round: AtomicU64,
    step: AtomicU64,
    step_since_ms: AtomicU64,
}

/// The step the current round is in, for the `quorate_round_step` gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundStep {
    Idle = 0,
    WaitingForMembers = 1,
    Collecting = 2,
    Closing = 3,
    Decrypting = 4,
    AwaitingResults = 5,
}

impl RoundStep {
    /// The step a `quorate_round_step` gauge names, if any.
    pub fn from_gauge(value: u64) -> Option<Self> {
        [
            Self::Idle,
            Self::WaitingForMembers,
            Self::Collecting,
            Self::Closing,
            Self::Decrypting,
            Self::AwaitingResults,
        ]
        .into_iter()
        .find(|step| *step as u64 == value)
    }

    /// What the coordinator is doing in this step, in the words of the gauge's help.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::WaitingForMembers => "waiting for members",
            Self::Collecting => "collecting",
            Self::Closing => "closing",
            Self::Decrypting => "decrypting",
            Self::AwaitingResults => "awaiting results",
        }
    }
}

/// What one scrape of the metrics says, read back by whoever watches a coordinator (`bench
/// round` shows a long round's progress from it).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub members_connected: u64,
    pub round: u64,
    /// `None` when the gauge holds a value this build does not know.
    pub step: Option<RoundStep>,
    pub step_seconds: f64,
    pub rounds: u64,
    pub rounds_decrypted: u64,
    pub bytes_received: u64,
}

/// A scrape that is not this coordinator's metrics.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScrapeError {
    #[error("the metrics have no `{0}` sample")]
    Missing(&'static str),
    #[error("the metrics' `{name}` sample is not a number: {value:?}")]
    NotANumber { name: &'static str, value: String },
}

/// The sample `name`'s value as a number.
fn parsed<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, ScrapeError> {
    value.parse().map_err(|_| ScrapeError::NotANumber {
        name,
        value: value.to_owned(),
    })
}

impl Snapshot {
    /// Reads the samples [`Metrics::render`] writes (the body of a scrape, without HTTP).
    pub fn parse(text: &str) -> Result<Self, ScrapeError> {
        let sample = |name: &'static str| -> Result<&str, ScrapeError> {
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .find_map(|line| {
                    let (key, value) = line.split_once(' ')?;
                    (key == name).then(|| value.trim())
                })
                .ok_or(ScrapeError::Missing(name))
        };
        let number = |name: &'static str| parsed::<u64>(name, sample(name)?);
        // In the order they are rendered, so the first sample missing is the one named.
        Ok(Self {
            members_connected: number("quorate_members_connected")?,
            round: number("quorate_round")?,
            step: RoundStep::from_gauge(number("quorate_round_step")?),
            step_seconds: parsed(
                "quorate_round_step_seconds",
                sample("quorate_round_step_seconds")?,
            )?,
            rounds: number("quorate_rounds_total")?,
            rounds_decrypted: number("quorate_rounds_decrypted_total")?,
            bytes_received: number("quorate_bytes_received_total")?,
        })
    }
}

impl Metrics {
    pub fn add_bytes(&self, bytes: u64) {
        self.inner
            .bytes_received
            .fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn set_connected(&self, members: u32) {
        self.inner
            .connected
            .store(u64::from(members), Ordering::Relaxed);
    }

    /// Round `round` entered `step` at `now_ms`.
    pub fn step(&self, round: u64, step: RoundStep, now_ms: u64) {
        self.inner.round.store(round, Ordering::Relaxed);
        self.inner.step.store(step as u64, Ordering::Relaxed);
        self.inner.step_since_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn round_finished(&self, round: &RoundSummary) {
        self.inner.rounds.fetch_add(1, Ordering::Relaxed);
        if round.decrypted {
            self.inner.rounds_decrypted.fetch_add(1, Ordering::Relaxed);
        }
        self.inner
            .last_contributors
            .store(u64::from(round.contributors), Ordering::Relaxed);
        self.inner
            .last_round_millis
            .store((round.total_seconds * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        self.render_at(runtime::clock::now_ms())
    }

    fn render_at(&self, now_ms: u64) -> String {
        let i = &self.inner;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let stuck = now_ms.saturating_sub(get(&i.step_since_ms)) as f64 / 1000.0;
        let state = format!(
            "# HELP quorate_members_connected Members connected to the coordinator.\n# TYPE quorate_members_connected gauge\nquorate_members_connected {}\n\
             # HELP quorate_round The round in progress or last run.\n# TYPE quorate_round gauge\nquorate_round {}\n\
             # HELP quorate_round_step The round's step: 0 idle, 1 waiting for members, 2 collecting, 3 closing, 4 decrypting, 5 awaiting results.\n# TYPE quorate_round_step gauge\nquorate_round_step {}\n\
             # HELP quorate_round_step_seconds Seconds the round has been in its step.\n# TYPE quorate_round_step_seconds gauge\nquorate_round_step_seconds {stuck:.3}\n",
            get(&i.connected),
            get(&i.round),
            get(&i.step),
        );
        state
            + &format!(
                "# HELP quorate_rounds_total Rounds run.\n# TYPE quorate_rounds_total counter\nquorate_rounds_total {}\n\
             # HELP quorate_rounds_decrypted_total Rounds whose aggregate was decrypted by a quorum.\n# TYPE quorate_rounds_decrypted_total counter\nquorate_rounds_decrypted_total {}\n\
             # HELP quorate_bytes_received_total Ciphertext bytes received from members.\n# TYPE quorate_bytes_received_total counter\nquorate_bytes_received_total {}\n\
             # HELP quorate_round_contributors Contributors of the last round.\n# TYPE quorate_round_contributors gauge\nquorate_round_contributors {}\n\
             # HELP quorate_round_duration_seconds Duration of the last round.\n# TYPE quorate_round_duration_seconds gauge\nquorate_round_duration_seconds {:.3}\n",
                get(&i.rounds),
                get(&i.rounds_decrypted),
                get(&i.bytes_received),
                get(&i.last_contributors),
                get(&i.last_round_millis) as f64 / 1000.0,
            )
    }

    /// Serves the metrics at `address` (say `127.0.0.1:9464`) until the process ends.
    pub async fn serve(&self, address: &str) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        tracing::info!(%address, "serving metrics");
        let metrics = self.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    // The request itself does not matter; read what arrives, bounded.
                    let mut buffer = [0u8; 1024];
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        stream.read(&mut buffer),
                    )
                    .await;
                    let body = metrics.render();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_are_served_in_the_prometheus_text_format() {
        let metrics = Metrics::default();
        metrics.add_bytes(1234);
        metrics.round_finished(&RoundSummary {
            round: 1,
            contributors: 4,
            decrypted: true,
            total_seconds: 2.5,
            ..Default::default()
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        metrics.serve(&address).await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        for line in [
            "quorate_rounds_total 1",
            "quorate_rounds_decrypted_total 1",
            "quorate_bytes_received_total 1234",
            "quorate_round_contributors 4",
            "quorate_round_duration_seconds 2.500",
        ] {
            assert!(body.contains(line), "{line} missing from\n{body}");
        }
    }

    #[test]
    fn the_round_in_progress_shows_its_step_and_how_long_it_has_been_there() {
        let metrics = Metrics::default();
        metrics.set_connected(2);
        metrics.step(7, RoundStep::Decrypting, 10_000);
        let text = metrics.render_at(14_500);
        for line in [
            "quorate_members_connected 2",
            "quorate_round 7",
            "quorate_round_step 4",
            "quorate_round_step_seconds 4.500",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn a_scrape_reads_back_every_sample_the_coordinator_renders() {
        let metrics = Metrics::default();
        metrics.set_connected(5);
        metrics.add_bytes(2_300_000_000);
        metrics.round_finished(&RoundSummary {
            round: 1,
            contributors: 5,
            decrypted: true,
            total_seconds: 346.5,
            ..Default::default()
        });
        metrics.step(2, RoundStep::Collecting, 1_000);
        let snapshot = Snapshot::parse(&metrics.render_at(13_250)).unwrap();
        assert_eq!(
            snapshot,
            Snapshot {
                members_connected: 5,
                round: 2,
                step: Some(RoundStep::Collecting),
                step_seconds: 12.25,
                rounds: 1,
                rounds_decrypted: 1,
                bytes_received: 2_300_000_000,
            }
        );
    }

    #[test]
    fn every_step_reads_back_from_its_gauge_and_nothing_else_does() {
        for step in [
            RoundStep::Idle,
            RoundStep::WaitingForMembers,
            RoundStep::Collecting,
            RoundStep::Closing,
            RoundStep::Decrypting,
            RoundStep::AwaitingResults,
        ] {
            assert_eq!(RoundStep::from_gauge(step as u64), Some(step));
            // The gauge's help names each step by its number and these words.
            let help = format!("{} {}", step as u64, step.describe());
            assert!(
                Metrics::default().render().contains(&help),
                "{help} missing from the gauge's help"
            );
        }
        assert_eq!(RoundStep::from_gauge(6), None);
    }

    #[test]
    fn a_scrape_missing_a_sample_or_with_a_garbled_one_is_refused_naming_it() {
        let text = Metrics::default().render_at(0);
        let without: String = text
            .lines()
            .filter(|line| !line.starts_with("quorate_round_step "))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(
            Snapshot::parse(&without),
            Err(ScrapeError::Missing("quorate_round_step"))
        );
        let garbled = text.replace(
            "quorate_bytes_received_total 0",
            "quorate_bytes_received_total x",
        );
        assert_eq!(
            Snapshot::parse(&garbled),
            Err(ScrapeError::NotANumber {
                name: "quorate_bytes_received_total",
                value: "x".to_owned()
            })
        );
        assert_eq!(
            Snapshot::parse("<html>not found</html>"),
            Err(ScrapeError::Missing("quorate_members_connected"))
        );
    }
}
