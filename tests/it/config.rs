//! `codex config show|validate` and config errors of `codex train`.

use crate::support::{codex, expect_exit, fixture, json_of, stdout_json, stdout_of, tempdir};

#[test]
fn validate_reports_every_bad_key_at_once() {
    let err = expect_exit(
        codex()
            .args(["config", "validate"])
            .arg(fixture("train/bad.toml")),
        1,
    )
    .stderr;
    for p in [
        "optimizer.name",
        "training.steps",
        "training.batch_sz",
        "schedule.warmup_stepz",
    ] {
        assert!(err.contains(p), "missing {p} in:\n{err}");
    }
    assert!(err.contains("did you mean `batch_size`"), "{err}");
    assert!(err.contains("did you mean `warmup_steps`"), "{err}");
}

#[test]
fn validate_reports_every_invalid_value_at_once() {
    let err = expect_exit(
        codex()
            .args(["config", "validate"])
            .arg(fixture("train/invalid_values.toml")),
        1,
    )
    .stderr;
    for p in [
        "optimizer.lr",
        "optimizer.beta2",
        "training.batch_size",
        "training.device",
        "checkpoint.keep_last",
    ] {
        assert!(err.contains(p), "missing {p} in:\n{err}");
    }
    // --json: the same issues as data, still exit 1.
    let out = expect_exit(
        codex()
            .args(["--json", "config", "validate"])
            .arg(fixture("train/invalid_values.toml")),
        1,
    );
    let v = json_of(out.stdout.as_bytes());
    assert_eq!(v["valid"], false);
    assert_eq!(v["issues"].as_array().unwrap().len(), 5);
}

#[test]
fn train_with_bad_overrides_exits_1_listing_all() {
    let err = expect_exit(
        codex().args([
            "train",
            "optimizer.lr=-1",
            "training.stepz=3",
            "training.batch_size=zero",
        ]),
        1,
    )
    .stderr;
    for p in ["training.stepz", "training.batch_size"] {
        assert!(err.contains(p), "missing {p} in:\n{err}");
    }
}

#[test]
fn show_prints_the_effective_config() {
    let v = stdout_json(codex().args(["--json", "config", "show", "training.steps=5"]));
    assert_eq!(v["training"]["steps"], 5);
    assert_eq!(v["model"]["preset"], "gpt-tiny");
    assert_eq!(v["tokenizer"]["kind"], "byte");
    let text = stdout_of(
        codex()
            .args(["config", "show", "--config"])
            .arg(fixture("train/tiny.toml")),
    );
    assert!(text.contains("context_length = 16"), "{text}");
    // The printed TOML is itself a valid config.
    let dir = tempdir();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    codex()
        .args(["config", "validate"])
        .arg(&p)
        .assert()
        .success();
}
