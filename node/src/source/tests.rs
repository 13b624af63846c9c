//! The update sources' tests: external trainers in both modes, their refusals and metrics.

use super::*;
use crate::config::TensorSpec;

fn external(command: &str, timeout_secs: u64, scratch: &Path) -> ExternalSource {
    external_in(Default::default(), command, timeout_secs, scratch)
}

/// A source running `command` with `sh` in `mode`, over a two-value model of zeros.
fn external_in(
    mode: crate::config::TrainerMode,
    command: &str,
    timeout_secs: u64,
    scratch: &Path,
) -> ExternalSource {
    let config = ExternalConfig {
        command: vec!["sh".into(), "-c".into(), command.into()],
        tensors: vec![TensorSpec {
            name: "w".into(),
            shape: vec![2],
        }],
        initial_model: None,
        mode,
        timeout_secs,
        working_dir: scratch.to_owned(),
    };
    ExternalSource::open(&config, 2, scratch.join("trainer")).unwrap()
}

/// What a trainer running `command` makes of `round`.
fn trainer_error(command: &str, timeout_secs: u64, round: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    external(command, timeout_secs, dir.path())
        .update(round, &[0.5, 0.25])
        .unwrap_err()
        .to_string()
}

#[test]
fn a_failing_trainer_is_reported_with_its_last_words() {
    let error = trainer_error(
        "echo starting >&2; echo 'no such column' >&2; exit 3",
        60,
        1,
    );
    assert!(error.contains("exit status: 3"), "{error}");
    assert!(error.contains("starting\nno such column"), "{error}");
}

#[test]
fn a_trainer_that_outlives_its_timeout_is_stopped_with_its_children() {
    // A child in the background keeps the error file open; the node must not wait for it.
    let error = trainer_error("sleep 300 & sleep 300", 1, 1);
    assert!(error.contains("ran longer than 1 s"), "{error}");
}

#[test]
fn a_trainer_must_write_the_update_of_this_round() {
    // Writes last round's file name: not accepted as this round's update.
    let error = trainer_error(
        "cp \"$QUORATE_MODEL\" \"$(dirname \"$QUORATE_UPDATE\")/update-$((QUORATE_ROUND - 1)).safetensors\"",
        60,
        2,
    );
    assert!(error.contains("update-2.safetensors"), "{error}");
    // Echoing the model back lacks the sample count.
    let error = trainer_error("cp \"$QUORATE_MODEL\" \"$QUORATE_UPDATE\"", 60, 2);
    assert!(error.contains("\"samples\""), "{error}");
    // The model file it was given is owner-only.
    let error = trainer_error("stat -c %a \"$QUORATE_MODEL\" >&2; exit 1", 60, 3);
    assert!(error.ends_with(": 600"), "{error}");
}

#[test]
fn bad_tensor_lists_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |name: &str, shape: Vec<usize>| TensorSpec {
        name: name.into(),
        shape,
    };
    let mut config = ExternalConfig {
        command: vec!["true".into()],
        tensors: vec![spec("w", vec![1]), spec("w", vec![1])],
        initial_model: None,
        mode: Default::default(),
        timeout_secs: 60,
        working_dir: dir.path().to_owned(),
    };
    let open = |c: &ExternalConfig| {
        ExternalSource::open(c, 2, dir.path().join("t"))
            .unwrap_err()
            .to_string()
    };
    assert!(open(&config).contains("twice"));
    config.tensors = vec![spec("w", vec![usize::MAX, 2])];
    assert!(open(&config).contains("overflow"));
    config.tensors = vec![spec("w", vec![3])];
    assert!(open(&config).contains("3 values, the plan has 2"));
    config.tensors = vec![spec("w", vec![2])];
    config.timeout_secs = u64::MAX;
    assert!(open(&config).contains("timeout_secs"));
}

#[test]
fn an_update_that_is_the_model_rather_than_a_difference_is_refused() {
    let model: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) / 25.0).collect();
    // Trained weights: the model moved by a few percent.
    let weights: Vec<f32> = model.iter().map(|m| m * 1.05 + 0.01).collect();
    let percent = external::looks_like_weights(&weights, &model).unwrap();
    assert!(percent < 10.0, "{percent}");
    // A real difference, even a large one, is not.
    let difference: Vec<f32> = model.iter().map(|m| 0.3 * m - 0.02).collect();
    assert_eq!(external::looks_like_weights(&difference, &model), None);
    // From a model of zeros, weights and differences are the same thing.
    assert_eq!(external::looks_like_weights(&weights, &[0.0; 100]), None);
    let error = SourceError::LooksLikeWeights { percent };
    assert!(error.to_string().contains("trained minus global"));
    assert_eq!(error.public_reason(), "the trainer's update is unusable");
}

#[test]
fn a_trainers_metrics_come_from_its_updates_metadata() {
    let metadata = HashMap::from([
        ("samples".to_string(), "120".to_string()),
        ("metric.accuracy".to_string(), "0.975".to_string()),
        ("metric.loss".to_string(), "NaN".to_string()),
    ]);
    assert_eq!(
        TrainerMetrics::from_metadata(&metadata),
        Some(TrainerMetrics {
            accuracy: Some(0.975),
            loss: None,
            rows: None,
            seconds: None
        })
    );
    assert_eq!(TrainerMetrics::from_metadata(&HashMap::new()), None);
}

/// A source running `script` with `sh` in persistent mode.
fn persistent(script: &str, timeout_secs: u64, dir: &Path) -> ExternalSource {
    external_in(
        crate::config::TrainerMode::Persistent,
        script,
        timeout_secs,
        dir,
    )
}

#[test]
fn a_persistent_trainer_is_started_once_and_answers_each_round_on_a_line() {
    let dir = tempfile::tempdir().unwrap();
    // Copies the model to the update (so the node finds no sample count: proof that the
    // request named both files), after a line of chatter that is not an answer.
    let script = r#"echo $$ >> pids; [ "$QUORATE_TRAINER_MODE" = persistent ] || exit 9
        while read -r line; do
          echo "epoch 1 loss 0.5"
          i=$(echo "$line" | sed 's/.*"id":\([0-9]*\).*/\1/')
          m=$(echo "$line" | sed 's/.*"model":"\([^"]*\)".*/\1/')
          u=$(echo "$line" | sed 's/.*"update":"\([^"]*\)".*/\1/')
          # An answer to another request first: not taken for this one's.
          echo "{\"id\": $((i + 100)), \"ok\": true}"
          cp "$m" "$u"; echo "{\"id\": $i, \"ok\": true}"
        done"#;
    let mut source = persistent(script, 60, dir.path());
    for round in 1..=3 {
        let error = source.update(round, &[0.5, 0.25]).unwrap_err().to_string();
        assert!(
            error.contains(&format!("update-{round}.safetensors")),
            "{error}"
        );
        assert!(error.contains("\"samples\""), "{error}");
    }
    let pids = std::fs::read_to_string(dir.path().join("pids")).unwrap();
    assert_eq!(pids.lines().count(), 1, "started once: {pids}");
}

#[test]
fn a_persistent_trainer_that_fails_refuses_or_hangs_is_named_and_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut exits = persistent("echo dying >&2; read -r line; exit 4", 60, dir.path());
    let error = exits.update(1, &[0.0, 0.0]).unwrap_err().to_string();
    assert!(error.contains("exit status: 4"), "{error}");
    assert!(error.contains("dying"), "{error}");
    // Started again for the next round.
    let error = exits.update(2, &[0.0, 0.0]).unwrap_err().to_string();
    assert!(error.contains("exit status: 4"), "{error}");

    let mut refuses = persistent(
        r#"while read -r line; do
             i=$(echo "$line" | sed 's/.*"id":\([0-9]*\).*/\1/')
             echo "{\"id\": $i, \"error\": \"no data yet\"}"
           done"#,
        60,
        dir.path(),
    );
    let error = refuses.update(1, &[0.0, 0.0]).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("answered with an error: no data yet")
    );
    assert_eq!(error.public_reason(), "the trainer answered with an error");

    let mut hangs = persistent("sleep 300", 1, dir.path());
    let error = hangs.update(1, &[0.0, 0.0]).unwrap_err().to_string();
    assert!(error.contains("ran longer than 1 s"), "{error}");
}
