//! `codex repo-map` and `codex status` end to end on temp-dir fixtures.

use crate::support::{codex, expect_exit, json_of, stdout_json, tempdir};
use std::fs;

#[test]
fn repo_map_json_and_json_path() {
    let d = tempdir();
    fs::create_dir_all(d.path().join("src")).unwrap();
    fs::write(d.path().join("src/lib.rs"), "pub fn f() {}\n// c\n\n").unwrap();
    let out_file = d.path().join("map.json");
    let v = stdout_json(
        codex()
            .args(["--json", "repo-map"])
            .arg(d.path())
            .arg("--json-path")
            .arg(&out_file),
    );
    assert_eq!(v["languages"]["Rust"]["code"], 1);
    assert_eq!(v["files"][0]["symbols"][0]["name"], "f");
    let written = json_of(&fs::read(&out_file).unwrap());
    assert_eq!(written, v);
}

#[test]
fn repo_map_missing_path_is_exit_1() {
    codex()
        .args(["repo-map", "/nonexistent/codex-audit"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("/nonexistent/codex-audit"));
}

#[test]
fn status_reports_corrupt_checkpoint_with_exit_1() {
    let d = tempdir();
    // A repository, so all 14 rows are audited.
    fs::create_dir(d.path().join(".git")).unwrap();
    let run = d.path().join("runs/r1");
    fs::create_dir_all(&run).unwrap();
    fs::write(
        run.join("metrics.ndjson"),
        "{\"event\":\"step\",\"step\":3,\"train_loss\":1.5}\n",
    )
    .unwrap();
    let mut m = codex_checkpoint_probe::open(&run);
    let dir = codex_checkpoint_probe::save(&mut m);
    let f = dir.join("model.bin");
    let mut b = fs::read(&f).unwrap();
    b[0] ^= 1;
    fs::write(&f, b).unwrap();
    let out = expect_exit(
        codex()
            .args(["--json", "status"])
            .arg(d.path())
            .arg("--verify"),
        1,
    );
    let v = json_of(out.stdout.as_bytes());
    assert_eq!(v["runs"][0]["last_step"], 3);
    assert_eq!(v["runs"][0]["checkpoints"][0]["status"], "invalid");
    assert_eq!(v["capabilities"].as_array().unwrap().len(), 14);
    let md = codex()
        .arg("status")
        .arg(d.path())
        .assert()
        .get_output()
        .stdout
        .clone();
    let md = String::from_utf8(md).unwrap();
    assert!(md.contains("| Capability | Status | Evidence (live probe) |"));
    assert!(md.contains("## Reproducibility Checklist"));
}

#[test]
fn status_in_an_experiment_directory_is_ok() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("runs/r1");
    fs::create_dir_all(&run).unwrap();
    fs::write(
        run.join("metrics.ndjson"),
        "{\"event\":\"step\",\"step\":3,\"train_loss\":1.5}\n{\"event\":\"end\",\"status\":\"completed\",\"step\":3,\"total_steps\":3}\n",
    )
    .unwrap();
    fs::write(run.join("config.toml"), "seed = 1\n").unwrap();
    fs::write(run.join("provenance.json"), "{\"seed\": 1}\n").unwrap();
    let out = codex()
        .args(["--json", "status"])
        .arg(d.path())
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["repository"], false);
    assert_eq!(v["runs"][0]["state"], "completed");
    let caps = v["capabilities"].as_array().unwrap();
    assert!(caps.iter().all(|c| c["capability"] != "documentation"));
}

mod codex_checkpoint_probe {
    use codex_checkpoint::{CheckpointFile, CheckpointManager, CheckpointSpec, RetentionPolicy};
    use std::path::{Path, PathBuf};
    pub fn open(run: &Path) -> CheckpointManager {
        CheckpointManager::open(run, RetentionPolicy::default()).unwrap()
    }
    pub fn save(m: &mut CheckpointManager) -> PathBuf {
        m.save(CheckpointSpec {
            step: 3,
            metric: Some(1.0),
            files: vec![CheckpointFile::bytes("model.bin", vec![1u8; 64])],
            trainer_state: serde_json::json!({"step": 3}),
            config_hash: String::new(),
        })
        .unwrap()
        .dir
    }
}

/// Item 15: a malformed line in the middle of metrics.ndjson costs that line, not the run:
/// `--json` counts it per run, the text view says so, the run's progress is still shown.
#[test]
fn status_skips_and_counts_malformed_metrics_lines() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("runs/r1");
    fs::create_dir_all(&run).unwrap();
    fs::write(
        run.join("metrics.ndjson"),
        "{\"event\":\"step\",\"step\":1,\"train_loss\":2.0}\n{\"event\":\"step\",\"st\n\u{0}\u{1}binary\n{\"event\":\"step\",\"step\":3,\"train_loss\":1.5}\n{\"event\":\"end\",\"status\":\"completed\",\"step\":3}\n",
    )
    .unwrap();
    fs::write(run.join("config.toml"), "seed = 1\n").unwrap();
    fs::write(run.join("provenance.json"), "{\"seed\": 1}\n").unwrap();
    let v = stdout_json(codex().args(["--json", "status"]).arg(d.path()));
    let r = &v["runs"][0];
    assert_eq!(r["last_step"], 3);
    assert_eq!(r["train_loss"], 1.5);
    assert_eq!(r["state"], "completed");
    assert_eq!(r["malformed_lines"], 2);
    let md = codex()
        .arg("status")
        .arg(d.path())
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let md = String::from_utf8(md).unwrap();
    assert!(md.contains("| r1 | completed | 3 |"), "{md}");
    assert!(
        md.contains("- r1: 2 malformed line(s) in metrics.ndjson skipped (first: line 2:"),
        "{md}"
    );
}

/// Item 16: a newline in a file name is escaped in repo-map's text view, so it cannot forge
/// a line; JSON keeps the real name.
#[cfg(unix)]
#[test]
fn repo_map_text_escapes_control_characters_in_names() {
    let d = tempdir();
    fs::write(
        d.path().join("a\nforged.rs  [Rust 999 lines]\n.rs"),
        "fn a() {}\n",
    )
    .unwrap();
    let text = crate::support::stdout_of(codex().arg("repo-map").arg(d.path()));
    assert!(!text.lines().any(|l| l.starts_with("forged.rs")), "{text}");
    assert!(
        text.contains("a\\nforged.rs  [Rust 999 lines]\\n.rs  [Rust 1/0/0]"),
        "{text}"
    );
    let v = stdout_json(codex().args(["--json", "repo-map"]).arg(d.path()));
    assert_eq!(v["files"][0]["path"], "a\nforged.rs  [Rust 999 lines]\n.rs");
}
