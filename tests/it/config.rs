//! `codex config show|validate` and config errors of `codex train`.

use assert_cmd::Command;
use std::path::{Path, PathBuf};

fn codex() -> Command {
    let mut c = Command::cargo_bin("codex").unwrap();
    c.env("NO_COLOR", "1");
    c
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/train")
        .join(name)
}

#[test]
fn validate_reports_every_bad_key_at_once() {
    let out = codex()
        .args(["config", "validate"])
        .arg(fixture("bad.toml"))
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
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
    let out = codex()
        .args(["config", "validate"])
        .arg(fixture("invalid_values.toml"))
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
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
    let out = codex()
        .args(["--json", "config", "validate"])
        .arg(fixture("invalid_values.toml"))
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["issues"].as_array().unwrap().len(), 5);
}

#[test]
fn train_with_bad_overrides_exits_1_listing_all() {
    let out = codex()
        .args([
            "train",
            "optimizer.lr=-1",
            "training.stepz=3",
            "training.batch_size=zero",
        ])
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
    for p in ["training.stepz", "training.batch_size"] {
        assert!(err.contains(p), "missing {p} in:\n{err}");
    }
}

#[test]
fn show_prints_the_effective_config() {
    let out = codex()
        .args(["--json", "config", "show", "training.steps=5"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["training"]["steps"], 5);
    assert_eq!(v["model"]["preset"], "gpt-tiny");
    assert_eq!(v["tokenizer"]["kind"], "byte");
    let out = codex()
        .args(["config", "show", "--config"])
        .arg(fixture("tiny.toml"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("context_length = 16"), "{text}");
    // The printed TOML is itself a valid config.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    codex()
        .args(["config", "validate"])
        .arg(&p)
        .assert()
        .success();
}
