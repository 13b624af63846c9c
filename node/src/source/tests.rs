//! The update sources' tests: external trainers in both modes, their refusals and metrics.

use super::*;
use crate::config::TensorSpec;

fn external(command: &str, timeout_secs: u64, scratch: &Path) -> ExternalSource {
    external_in(Default::default(), command, timeout_secs, scratch)
}

/// The configuration of a source running `command` with `sh` in `mode` in `dir`, over a
/// two-value model `w` of zeros.
fn sh_config(mode: crate::config::TrainerMode, command: &str, dir: &Path) -> ExternalConfig {
    ExternalConfig {
        command: vec!["sh".into(), "-c".into(), command.into()],
        tensors: vec![TensorSpec {
            name: "w".into(),
            shape: vec![2],
        }],
        initial_model: None,
        mode,
        pooled_scaling: None,
        timeout_secs: 60,
        working_dir: dir.to_owned(),
    }
}

/// A source running `command` with `sh` in `mode`, over a two-value model of zeros.
fn external_in(
    mode: crate::config::TrainerMode,
    command: &str,
    timeout_secs: u64,
    scratch: &Path,
) -> ExternalSource {
    let config = ExternalConfig {
        timeout_secs,
        ..sh_config(mode, command, scratch)
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
        pooled_scaling: None,
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

/// An external source over a model `w` of two values, with pooled scaling over `rows.csv`
/// (two features and a target the node never reads).
fn pooled_external(mode: crate::config::TrainerMode, command: &str, dir: &Path) -> ExternalSource {
    std::fs::write(
        dir.join("rows.csv"),
        "a,label,b\n1,cat,10\n3,dog,30\n-2,cat,5\n",
    )
    .unwrap();
    let config = ExternalConfig {
        pooled_scaling: Some(crate::config::PooledScalingConfig {
            data: dir.join("rows.csv"),
            target: "label".into(),
            impute_missing: false,
            categories: Default::default(),
        }),
        ..sh_config(mode, command, dir)
    };
    ExternalSource::open(&config, 2 + scaling::region_size(2), dir.join("trainer")).unwrap()
}

#[test]
fn an_external_trainer_with_pooled_scaling_is_handed_the_consortiums_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, update) = (vec![("w".to_string(), vec![2])], [0.125f32, -0.25]);
    let bytes = tensors::encode(
        &layout,
        &update,
        &[],
        HashMap::from([("samples".to_string(), "3".to_string())]),
    )
    .unwrap();
    std::fs::write(dir.path().join("prepared.safetensors"), bytes).unwrap();
    let mut source = pooled_external(
        Default::default(),
        r#"touch ran; cp "$QUORATE_SCALING" seen.safetensors && cp prepared.safetensors "$QUORATE_UPDATE""#,
        dir.path(),
    );
    // The statistics round: the node's own moments of the log-transformed rows, nothing
    // trained, the trainer not asked.
    let first = source.update(1, &[0.0; 11]).unwrap();
    let mut rows = training::data::load_features(
        &dir.path().join("rows.csv"),
        "label",
        Impute::Refuse,
        &Default::default(),
    )
    .unwrap();
    rows.log_transform();
    let moments = scaling::local_statistics(&rows);
    assert_eq!(first.values[..2], [0.0, 0.0]);
    assert_eq!(first.values[2..], moments[..]);
    assert_eq!(first.samples, 3);
    assert!(!dir.path().join("ran").exists(), "the trainer was asked");
    assert_eq!(source.export_extras(&[0.0; 11]), Vec::new());

    // Decrypted (one institution's moments are the pool): the trainer is given the scaling
    // in force, and its update leaves the statistics region alone.
    let mut global = vec![0.5, 0.25];
    global.extend(&moments);
    let stats = scaling::pooled(&moments, 2).unwrap();
    let second = source.update(2, &global).unwrap();
    assert_eq!(second.values[..2], update);
    assert_eq!(second.values[2..], [0.0; 9]);
    assert_eq!(second.samples, 3);
    let given = dir.path().join("seen.safetensors");
    let scaling_layout = vec![
        ("scaling.mean".to_string(), vec![2]),
        ("scaling.std".to_string(), vec![2]),
    ];
    let (values, metadata) = tensors::read_file(&given, &scaling_layout, &[]).unwrap();
    let expected: Vec<f32> = scaling::scaling_tensors(&stats)
        .into_iter()
        .flat_map(|(_, v)| v)
        .collect();
    assert_eq!(values, expected);
    assert_eq!(metadata["columns"], r#"["a","b"]"#);
    assert_eq!(metadata["scaling"], scaling::POOLED_FORMULA);
    // The pooled mean of sign(x) ln(1 + |x|) over a: (ln 2 + ln 4 - ln 3) / 3.
    let mean_a = ((2f64.ln() + 4f64.ln() - 3f64.ln()) / 3.0) as f32;
    assert!((stats[0].0 - mean_a).abs() < 1e-6, "{stats:?}");
    // The export carries the scaling, as a built-in trainer's does.
    assert_eq!(
        source.export_extras(&global),
        scaling::scaling_tensors(&stats)
    );
    assert_eq!(
        source.export_metadata(),
        [("scaling".to_string(), scaling::POOLED_FORMULA.to_string())]
    );

    // A persistent trainer finds the same file named in its request.
    let mut persistent = pooled_external(
        crate::config::TrainerMode::Persistent,
        r#"while read -r line; do
             echo "$line" >> requests
             i=$(echo "$line" | sed 's/.*"id":\([0-9]*\).*/\1/')
             u=$(echo "$line" | sed 's/.*"update":"\([^"]*\)".*/\1/')
             cp prepared.safetensors "$u"; echo "{\"id\": $i, \"ok\": true}"
           done"#,
        dir.path(),
    );
    assert_eq!(persistent.update(2, &global).unwrap(), second);
    // And in the request to evaluate a model.
    assert_eq!(persistent.evaluate(&global), None);
    let requests = std::fs::read_to_string(dir.path().join("requests")).unwrap();
    let named = format!(
        "\"scaling\":\"{}\"",
        dir.path()
            .canonicalize()
            .unwrap()
            .join("trainer/scaling.safetensors")
            .display()
    );
    let lines: Vec<&str> = requests.lines().collect();
    assert_eq!(lines.len(), 2, "{requests}");
    assert!(
        lines[0].contains("\"update\"") && lines[0].contains(&named),
        "{requests}"
    );
    assert!(
        lines[1].contains("\"evaluate\"") && lines[1].contains(&named),
        "{requests}"
    );
}

#[test]
fn a_region_written_against_the_protocol_is_refused_not_taken_for_a_first_round() {
    let dir = tempfile::tempdir().unwrap();
    // Moments whose weight total a colluder drove below zero (many rows claimed, -clip sent).
    let mut poisoned = vec![0.5, 0.25];
    poisoned.extend(vec![0.125; scaling::region_size(2)]);
    *poisoned.last_mut().unwrap() = -0.25;
    let mut external = pooled_external(Default::default(), "touch ran; exit 1", dir.path());
    let error = external.update(3, &poisoned).unwrap_err();
    assert!(matches!(error, SourceError::UnreadableScaling), "{error}");
    assert_eq!(
        error.public_reason(),
        "the global model's pooled scaling is unreadable"
    );
    assert!(!dir.path().join("ran").exists(), "the trainer was asked");

    // The built-in trainer reads the region by the same rule.
    std::fs::write(dir.path().join("train.csv"), "a,y,b\n1,0,10\n3,1,30\n").unwrap();
    let config: TrainerConfig = toml::from_str(&format!(
        "data = {:?}\ntarget = \"y\"\nclasses = 2\nmodel = \"logistic\"",
        dir.path().join("train.csv")
    ))
    .unwrap();
    let mut built_in = TrainingSource::open(&config, 6 + scaling::region_size(2)).unwrap();
    let mut global = vec![0.0; 6];
    global.extend(vec![0.125; scaling::region_size(2)]);
    *global.last_mut().unwrap() = 0.0;
    let error = built_in.update(3, &global).unwrap_err();
    assert!(matches!(error, SourceError::UnreadableScaling), "{error}");
    // All zeros is the statistics round.
    let first = built_in.update(1, &[0.0; 15]).unwrap();
    assert_eq!(first.values[..6], [0.0; 6]);
    assert_eq!(first.values[14], 0.5);
}

#[test]
fn a_plan_without_room_for_the_pooled_statistics_is_refused_with_the_count_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rows.csv"), "a,label,b\n1,0,2\n").unwrap();
    let mut config = ExternalConfig {
        pooled_scaling: Some(crate::config::PooledScalingConfig {
            data: dir.path().join("rows.csv"),
            target: "label".into(),
            impute_missing: false,
            categories: Default::default(),
        }),
        ..sh_config(Default::default(), "true", dir.path())
    };
    let error = ExternalSource::open(&config, 2, dir.path().join("t"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("2 values and the pooled scaling 9 more, the plan has 2"),
        "{error}"
    );
    // A file that is not there is named.
    config.pooled_scaling.as_mut().unwrap().data = dir.path().join("missing.csv");
    let error = ExternalSource::open(&config, 11, dir.path().join("t"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("missing.csv"), "{error}");
}
