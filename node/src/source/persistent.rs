//! A trainer that stays up between rounds: started once, then sent one request per round on
//! its standard input and answering with one line on its standard output. Importing PyTorch
//! and loading data take seconds; a per-round process pays them every round.
//!
//! The exchange, one JSON object per line, every request numbered by `id` and every answer
//! echoing it:
//! - node to trainer: `{"id": 7, "round": 3, "model": "/…/model-3.safetensors", "update": "/…/update-3.safetensors"}`,
//!   with `"scaling": "/…/scaling.safetensors"` (the consortium's pooled scaling) in this and
//!   the evaluation request when the node's source has `pooled_scaling`;
//! - trainer to node: `{"id": 7, "ok": true}` once the update file is written, or
//!   `{"id": 7, "error": "why"}`;
//! - node to trainer, after each decrypted round: `{"id": 8, "evaluate": "/…/evaluate.safetensors"}`;
//! - trainer to node: `{"id": 8, "ok": true, "metrics": {"accuracy": 0.97, "loss": 0.08, "rows": 360}}`
//!   (its held-out rows), or `{"id": 8, "ok": true}` when it does not evaluate.
//!
//! Lines that are not the answer to the request in hand are ignored (a stray `print`, a line
//! some library writes, an answer to an earlier request), each cut at [`MAX_LINE_BYTES`], so a
//! trainer cannot make the node buffer without end, and no line can be taken for another
//! request's answer. A trainer that exits, answers with an error or overruns its timeout is
//! stopped with its process group and started again for the next round.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant};

use super::SourceError;

/// The longest answer line read; longer lines are read in pieces and ignored.
pub const MAX_LINE_BYTES: u64 = 64 << 10;

/// The running trainer.
#[derive(Debug)]
pub struct Persistent {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// The number of the next request.
    next_id: u64,
}

/// What the trainer answered to one request.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Done, with its measure of the model on its held-out rows when it was asked for one.
    Written(Option<Measured>),
    Refused(String),
}

/// A trainer's measure of a model on its own held-out rows.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
pub struct Measured {
    pub accuracy: f64,
    pub loss: f64,
    pub rows: u64,
}

impl Measured {
    /// As the node's own evaluations are kept (counts over rows, which pool by addition).
    pub fn evaluation(&self) -> Option<training::trainer::Evaluation> {
        let valid = self.rows > 0
            && (0.0..=1.0).contains(&self.accuracy)
            && self.loss.is_finite()
            && self.loss >= 0.0;
        valid.then(|| training::trainer::Evaluation {
            rows: self.rows,
            correct: (self.accuracy * self.rows as f64).round() as u64,
            loss_sum: self.loss * self.rows as f64,
        })
    }
}

#[derive(serde::Deserialize)]
struct AnswerLine {
    id: u64,
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    metrics: Option<Measured>,
}

/// The answer to request `id` a line carries, if it is one.
pub fn parse_answer(line: &str, id: u64) -> Option<Answer> {
    let answer: AnswerLine = serde_json::from_str(line.trim()).ok()?;
    if answer.id != id {
        return None;
    }
    match (answer.ok, answer.error) {
        (_, Some(error)) => Some(Answer::Refused(error)),
        (true, None) => Some(Answer::Written(answer.metrics)),
        (false, None) => None,
    }
}

impl Persistent {
    /// Starts `command` (already configured with its directory and environment), its error
    /// output going to `stderr`.
    pub fn start(
        mut command: Command,
        program: &str,
        stderr: std::fs::File,
    ) -> Result<Self, SourceError> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| SourceError::Start {
                program: program.to_owned(),
                source,
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (send, lines) = sync_channel(16);
        std::thread::Builder::new()
            .name("trainer-stdout".into())
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                loop {
                    let mut line = Vec::new();
                    match (&mut reader)
                        .take(MAX_LINE_BYTES)
                        .read_until(b'\n', &mut line)
                    {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&line).into_owned();
                            if send.send(line).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(|source| SourceError::Start {
                program: program.to_owned(),
                source,
            })?;
        Ok(Self {
            child,
            stdin,
            lines,
            next_id: 1,
        })
    }

    /// Sends one request (its fields; the id is added here) and waits for its answer until
    /// `deadline`. `Err` means the trainer is gone or must go: the caller stops it and starts
    /// another next round. A request line is under a kilobyte and each waits for its answer,
    /// so writing it cannot fill the pipe.
    pub fn request(
        &mut self,
        mut request: serde_json::Map<String, serde_json::Value>,
        deadline: Instant,
    ) -> Result<Answer, Stopped> {
        let id = self.next_id;
        self.next_id += 1;
        request.insert("id".into(), id.into());
        // Whatever came before this request is not its answer.
        while self.lines.try_recv().is_ok() {}
        let mut line = serde_json::Value::Object(request).to_string();
        line.push('\n');
        if self
            .stdin
            .write_all(line.as_bytes())
            .and_then(|()| self.stdin.flush())
            .is_err()
        {
            return Err(Stopped::Exited);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    if let Some(answer) = parse_answer(&line, id) {
                        return Ok(answer);
                    }
                    tracing::debug!(line = line.trim_end(), "trainer output ignored");
                }
                Err(RecvTimeoutError::Timeout) => return Err(Stopped::TimedOut),
                Err(RecvTimeoutError::Disconnected) => return Err(Stopped::Exited),
            }
        }
    }

    /// Whether the trainer is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the trainer and its children; its exit status, if it had one.
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        super::external::kill_group(&mut self.child);
        status.or_else(|| self.child.try_wait().ok().flatten())
    }
}

/// Why a request got no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    Exited,
    TimedOut,
}

impl Drop for Persistent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            super::external::kill_group(&mut self.child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_one_json_object_per_line_and_other_output_is_not_an_answer() {
        assert_eq!(
            parse_answer("{\"id\": 4, \"ok\": true}\n", 4),
            Some(Answer::Written(None))
        );
        // An answer to another request (an earlier one, or a stray line shaped like one) is
        // not this request's answer.
        assert_eq!(parse_answer("{\"id\": 3, \"ok\": true}", 4), None);
        assert_eq!(parse_answer("{\"ok\": true}", 4), None);
        assert_eq!(
            parse_answer("{\"id\": 4, \"error\": \"out of memory\"}", 4),
            Some(Answer::Refused("out of memory".into()))
        );
        assert_eq!(parse_answer("epoch 1 loss 0.3", 4), None);
        assert_eq!(parse_answer("{\"id\": 4, \"ok\": false}", 4), None);
        assert_eq!(parse_answer("[1, 2]", 4), None);
        let measured = Measured {
            accuracy: 0.75,
            loss: 0.5,
            rows: 8,
        };
        assert_eq!(
            parse_answer(
                r#"{"id": 9, "ok": true, "metrics": {"accuracy": 0.75, "loss": 0.5, "rows": 8}}"#,
                9
            ),
            Some(Answer::Written(Some(measured)))
        );
        let evaluation = measured.evaluation().unwrap();
        assert_eq!((evaluation.rows, evaluation.correct), (8, 6));
        assert_eq!(evaluation.loss(), 0.5);
        // Nonsense is not recorded as a measure.
        let nonsense = Measured {
            accuracy: 1.5,
            ..measured
        };
        assert_eq!(nonsense.evaluation(), None);
    }
}
