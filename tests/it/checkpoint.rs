//! `codex checkpoint list|verify|prune` against runs written by the codex-checkpoint library.

use crate::support::{codex, corpus, expect_exit, fixture, json_of, stdout_json, tempdir};
use codex_checkpoint::{
    CheckpointFile, CheckpointManager, CheckpointSpec, Mode, RetentionPolicy, TensorData,
};
use predicates::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};

/// A run with checkpoints at steps 1..=4 and metrics 4, 1, 3, 2 (keep everything).
fn run_with_checkpoints() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempdir();
    let run = tmp.path().join("run");
    let keep_all = RetentionPolicy {
        keep_best: 0,
        keep_last: 10,
        pin_every: 0,
        mode: Mode::Min,
        monitor: "val_loss".into(),
    };
    let mut m = CheckpointManager::open(&run, keep_all).unwrap();
    for (step, metric) in [(1u64, 4.0), (2, 1.0), (3, 3.0), (4, 2.0)] {
        let w: Vec<f32> = (0..256).map(|i| (i as u64 * step) as f32).collect();
        m.save(CheckpointSpec {
            step,
            metric: Some(metric),
            files: vec![
                CheckpointFile::safetensors(
                    "model.safetensors",
                    vec![TensorData::f32("w", vec![16, 16], w.clone())],
                ),
                CheckpointFile::safetensors(
                    "optimizer.safetensors",
                    vec![TensorData::f32("w.exp_avg", vec![16, 16], w)],
                ),
            ],
            trainer_state: serde_json::json!({"step": step}),
            config_hash: "h".into(),
        })
        .unwrap();
    }
    (tmp, run)
}

fn ckpt(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints")
        .join(codex_checkpoint::step_dir_name(step))
}

#[test]
fn list_json_reports_every_checkpoint() {
    let (_tmp, run) = run_with_checkpoints();
    let v = stdout_json(codex().args(["checkpoint", "list", "--json"]).arg(&run));
    assert_eq!(v["schema_version"], 1);
    let cps = v["checkpoints"].as_array().unwrap();
    assert_eq!(cps.len(), 4);
    assert_eq!(cps[1]["step"], 2);
    assert_eq!(cps[1]["metric"], 1.0);
    assert_eq!(cps[1]["status"], "unverified");
    assert_eq!(cps[3]["kept_because"], serde_json::json!(["last"]));
    assert!(cps[0]["size_bytes"].as_u64().unwrap() > 1024);
    let v = stdout_json(
        codex()
            .args(["checkpoint", "list", "--verify", "--json"])
            .arg(&run),
    );
    assert!(
        v["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "valid")
    );
}

#[test]
fn list_text_and_missing_run_dir() {
    let (_tmp, run) = run_with_checkpoints();
    codex()
        .args(["checkpoint", "list"])
        .arg(&run)
        .assert()
        .success()
        .stdout(predicate::str::contains("STEP").and(predicate::str::contains("METRIC(val_loss)")))
        .stdout(predicate::str::contains("last").and(predicate::str::contains(" ok")));
    codex()
        .args(["checkpoint", "list"])
        .arg(run.join("nope"))
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("run directory")
                .and(predicate::str::contains("does not exist")),
        );
}

#[test]
fn verify_ok_then_flipped_byte_exits_1_naming_file_and_hashes() {
    let (_tmp, run) = run_with_checkpoints();
    codex()
        .args(["checkpoint", "verify"])
        .arg(&run)
        .assert()
        .success()
        .stdout(predicate::str::contains("ok").count(4));
    let file = ckpt(&run, 3).join("model.safetensors");
    let expected = codex_core::hash::sha256_file(&file).unwrap().0;
    let mut bytes = fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x80;
    fs::write(&file, &bytes).unwrap();
    let actual = codex_core::hash::sha256_bytes(&bytes);
    codex()
        .args(["checkpoint", "verify"])
        .arg(&run)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("FAILED"))
        .stderr(predicate::str::contains("`model.safetensors`"))
        .stderr(predicate::str::contains(format!(
            "has sha256 {actual}, expected {expected}"
        )))
        .stderr(predicate::str::contains(
            "error: 1 of 4 checkpoint(s) failed verification",
        ));
    // A single checkpoint directory, in JSON.
    let out = expect_exit(
        codex()
            .args(["checkpoint", "verify", "--json"])
            .arg(ckpt(&run, 3)),
        1,
    );
    let v = json_of(out.stdout.as_bytes());
    assert_eq!(v["ok"], false);
    assert_eq!(
        v["checkpoints"][0]["files"][0]["actual_sha256"],
        actual.as_str()
    );
    codex()
        .args(["checkpoint", "verify"])
        .arg(ckpt(&run, 2))
        .assert()
        .success();
}

#[test]
fn verify_truncated_and_not_a_checkpoint() {
    let (tmp, run) = run_with_checkpoints();
    let file = ckpt(&run, 4).join("model.safetensors");
    let len = fs::metadata(&file).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    codex()
        .args(["checkpoint", "verify"])
        .arg(ckpt(&run, 4))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "is {} bytes, expected {len} bytes",
            len / 2
        )));
    codex()
        .args(["checkpoint", "verify"])
        .arg(tmp.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not a checkpoint directory"));
}

#[test]
fn prune_dry_run_then_for_real_with_flags() {
    let (_tmp, run) = run_with_checkpoints();
    codex()
        .args([
            "checkpoint",
            "prune",
            "--dry-run",
            "--keep-best",
            "1",
            "--keep-last",
            "1",
        ])
        .arg(&run)
        .assert()
        .success()
        .stdout(predicate::str::contains("would delete step-00000001"))
        .stdout(predicate::str::contains("would delete step-00000003"))
        .stdout(predicate::str::contains("keep    step-00000002  (best)"));
    assert!(ckpt(&run, 1).exists() && ckpt(&run, 3).exists());
    let v = stdout_json(
        codex()
            .args([
                "checkpoint",
                "prune",
                "--json",
                "--keep-best",
                "1",
                "--keep-last",
                "1",
                "--mode",
                "max",
            ])
            .arg(&run),
    );
    // max mode: best is step 1 (metric 4.0); last is step 4.
    assert_eq!(v["deleted"], serde_json::json!([2, 3]));
    assert!(ckpt(&run, 1).exists() && !ckpt(&run, 2).exists() && ckpt(&run, 4).exists());
    let index = codex_checkpoint::read_index(&run).unwrap().unwrap();
    assert_eq!(index.checkpoints.len(), 2);
}

#[test]
fn prune_reads_the_runs_checkpoint_config_and_rejects_bad_values() {
    let (_tmp, run) = run_with_checkpoints();
    fs::write(
        run.join("config.toml"),
        "[checkpoint]\nkeep_best = 0\nkeep_last = 2\nmonitor = \"val_loss\"\n",
    )
    .unwrap();
    codex()
        .args(["checkpoint", "prune"])
        .arg(&run)
        .assert()
        .success()
        .stdout(predicate::str::contains("deleted step-00000002"));
    let steps: Vec<u64> = codex_checkpoint::list(&run)
        .unwrap()
        .iter()
        .map(|i| i.step)
        .collect();
    assert_eq!(steps, vec![3, 4]);
    codex()
        .args(["checkpoint", "prune", "--keep-last", "0"])
        .arg(&run)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("keep_last = 0"));
}

#[test]
fn prune_refuses_while_another_process_holds_the_lock() {
    let (_tmp, run) = run_with_checkpoints();
    // This test process holds the lock, as a running `codex train` would.
    let _lock = codex_checkpoint::RunLock::acquire(&run).unwrap();
    codex()
        .args(["checkpoint", "prune", "--keep-last", "1"])
        .arg(&run)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "locked by pid {}",
            std::process::id()
        )))
        .stderr(predicate::str::contains(
            "wait for the process writing this run",
        ));
    assert_eq!(codex_checkpoint::list(&run).unwrap().len(), 4);
}

#[test]
fn corrupt_index_warns_but_lists() {
    let (_tmp, run) = run_with_checkpoints();
    fs::write(run.join("checkpoints/index.json"), "garbage").unwrap();
    fs::create_dir(run.join("checkpoints/.tmp-step-00000005-1-0")).unwrap();
    let out = codex()
        .args(["checkpoint", "list", "--json"])
        .arg(&run)
        .assert()
        .success()
        .stderr(predicate::str::contains("index.json").and(predicate::str::contains("corrupt")))
        .get_output()
        .stdout
        .clone();
    assert_eq!(json_of(&out)["checkpoints"].as_array().unwrap().len(), 4);
}

/// Flips one bit of a file in place: same size, so only a rehash sees it.
fn flip_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x80;
    fs::write(path, &bytes).unwrap();
}

fn steps_on_disk(run: &Path) -> Vec<u64> {
    codex_checkpoint::list(run)
        .unwrap()
        .iter()
        .map(|i| i.step)
        .collect()
}

#[test]
fn prune_with_a_corrupt_newest_checkpoint_deletes_nothing_and_resume_still_works() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("r");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train".to_string(),
            "--config".into(),
            fixture("train/tiny.toml").display().to_string(),
            format!("data.inputs=[{input:?}]"),
            format!("output.dir={:?}", run.display().to_string()),
            "training.steps=20".into(),
            "checkpoint.every=5".into(),
            "checkpoint.keep_last=10".into(),
            "checkpoint.keep_best=0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    codex().args(train(&[])).assert().success();
    assert_eq!(steps_on_disk(&run), vec![5, 10, 15, 20]);
    // Same size: the old size-only check kept it as best and last and deleted 5, 10 and 15.
    flip_byte(&ckpt(&run, 20).join("model.safetensors"));
    let out = expect_exit(
        codex()
            .args([
                "checkpoint",
                "prune",
                "--keep-best",
                "1",
                "--keep-last",
                "1",
            ])
            .arg(&run),
        1,
    );
    assert_eq!(steps_on_disk(&run), vec![5, 10, 15, 20], "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid checkpoint at step 20")
            && out.stderr.contains("`model.safetensors` has sha256"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nothing was deleted"), "{}", out.stderr);
    assert!(!out.stdout.contains("deleted"), "{}", out.stdout);
    // Resume skips the corrupt step 20 and continues from 15.
    let out = expect_exit(codex().args(train(&["--resume"])), 0);
    assert!(
        out.stderr.contains("resumed from") && out.stderr.contains("step 15"),
        "{}",
        out.stderr
    );
    codex()
        .args(["checkpoint", "verify"])
        .arg(&run)
        .assert()
        .success();
}

#[test]
fn prune_delete_corrupt_deletes_the_invalid_and_prunes_by_the_valid() {
    let (_tmp, run) = run_with_checkpoints();
    flip_byte(&ckpt(&run, 4).join("model.safetensors"));
    let v = json_of(
        expect_exit(
            codex()
                .args([
                    "checkpoint",
                    "prune",
                    "--json",
                    "--keep-best",
                    "0",
                    "--keep-last",
                    "1",
                ])
                .arg(&run),
            1,
        )
        .stdout
        .as_bytes(),
    );
    assert_eq!(v["deleted"], serde_json::json!([]));
    assert_eq!(v["invalid"][0]["step"], 4);
    assert_eq!(steps_on_disk(&run), vec![1, 2, 3, 4]);
    codex()
        .args([
            "checkpoint",
            "prune",
            "--delete-corrupt",
            "--keep-best",
            "0",
            "--keep-last",
            "1",
        ])
        .arg(&run)
        .assert()
        .success()
        .stdout(predicate::str::contains("keep    step-00000003  (last)"))
        .stdout(predicate::str::contains("deleted invalid step-00000004"));
    assert_eq!(steps_on_disk(&run), vec![3]);
}

#[test]
fn incomplete_manifests_fail_verify_and_list_verify() {
    let (_tmp, run) = run_with_checkpoints();
    let set_files = |step: u64, keep: &dyn Fn(&serde_json::Value) -> bool| {
        let path = ckpt(&run, step).join("MANIFEST.json");
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        // As written before manifests declared their kind.
        v.as_object_mut().unwrap().remove("kind");
        v["files"].as_array_mut().unwrap().retain(|f| keep(f));
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    set_files(2, &|_| false);
    set_files(3, &|f| f["name"] != "model.safetensors");
    let out = expect_exit(codex().args(["checkpoint", "verify"]).arg(&run), 1);
    assert!(!out.stdout.contains("0 files"), "{}", out.stdout);
    assert_eq!(out.stdout.matches("FAILED").count(), 2, "{}", out.stdout);
    assert!(
        out.stderr.contains("step-00000002` is incomplete")
            && out.stderr.contains("step-00000003` is incomplete")
            && out
                .stderr
                .contains("2 of 4 checkpoint(s) failed verification"),
        "{}",
        out.stderr
    );
    for args in [
        &["checkpoint", "list", "--verify"][..],
        &["checkpoint", "list"][..],
    ] {
        let out = expect_exit(codex().args(args).arg(&run), 1);
        assert_eq!(out.stdout.matches("INVALID").count(), 2, "{}", out.stdout);
        assert!(
            out.stderr.contains("2 of 4 checkpoint(s) are invalid"),
            "{}",
            out.stderr
        );
    }
    let v = json_of(
        expect_exit(
            codex()
                .args(["checkpoint", "list", "--verify", "--json"])
                .arg(&run),
            1,
        )
        .stdout
        .as_bytes(),
    );
    assert_eq!(v["checkpoints"][1]["status"], "invalid");
    assert_eq!(v["checkpoints"][3]["status"], "valid");
}

#[test]
fn full_disk_lock_is_an_io_error_with_the_os_error_once() {
    // /dev/full takes opens and flocks but fails every write with ENOSPC, like a full disk.
    if !Path::new("/dev/full").exists() {
        return;
    }
    let (_tmp, run) = run_with_checkpoints();
    std::os::unix::fs::symlink("/dev/full", run.join(".lock")).unwrap();
    let out = expect_exit(codex().args(["checkpoint", "prune"]).arg(&run), 1);
    assert!(
        out.stderr.contains("cannot write lock file") && out.stderr.contains(".lock"),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("No space left on device").count(),
        1,
        "{}",
        out.stderr
    );
    // Not mistaken for another writer.
    assert!(!out.stderr.contains("locked by"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("wait for the process"),
        "{}",
        out.stderr
    );
    assert_eq!(steps_on_disk(&run), vec![1, 2, 3, 4]);
}
