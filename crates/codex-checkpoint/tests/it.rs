//! Integration tests of codex-checkpoint on real directories: corruption of every kind,
//! leftovers, the run lock across processes, write failures and SIGKILL at random moments.
//!
//! Tests that need a second process re-execute this test binary with `CODEX_CKPT_CHILD` set,
//! selecting one of the `#[ignore]`d `child_*` functions below.

use codex_checkpoint::{
    CheckpointError, CheckpointFile, CheckpointManager, CheckpointSpec, CheckpointStatus, Dtype,
    KeptBecause, Mode, RetentionPolicy, TensorData,
};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "CODEX_CKPT_CHILD_RUN";

/// Deterministic tensor values for a step (so a reader can check what it loaded).
fn values(step: u64, len: usize, salt: u64) -> Vec<f32> {
    let mut x = step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 10_000) as f32 / 100.0
        })
        .collect()
}

fn spec(step: u64, metric: Option<f64>, len: usize) -> CheckpointSpec<'static> {
    let w = values(step, len, 1);
    let m = values(step, len, 2);
    CheckpointSpec {
        step,
        metric,
        files: vec![
            CheckpointFile::safetensors(
                "model.safetensors",
                vec![
                    TensorData::f32("layer.weight", vec![len], w),
                    TensorData::raw("layer.bias", Dtype::U8, vec![3], vec![1u8, 2, 3]),
                ],
            ),
            CheckpointFile::safetensors(
                "optimizer.safetensors",
                vec![TensorData::f32("layer.weight.exp_avg", vec![len], m)],
            ),
        ],
        trainer_state: serde_json::json!({"step": step, "epoch": 0, "data_cursor": step * 8}),
        config_hash: "cfg-hash".into(),
    }
}

fn policy(keep_best: usize, keep_last: usize) -> RetentionPolicy {
    RetentionPolicy {
        keep_best,
        keep_last,
        pin_every: 0,
        mode: Mode::Min,
        monitor: "val_loss".into(),
    }
}

fn ckpt(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints")
        .join(codex_checkpoint::step_dir_name(step))
}

fn loaded_weights(l: &codex_checkpoint::LoadedCheckpoint) -> Vec<f32> {
    let t = l.tensor("model.safetensors", "layer.weight").unwrap();
    t.data()
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn two_checkpoints() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut m = CheckpointManager::open(&run, policy(0, 5)).unwrap();
    m.save(spec(1, Some(2.0), 64)).unwrap();
    m.save(spec(2, Some(1.0), 64)).unwrap();
    (tmp, run)
}

fn tmp_dirs(run: &Path) -> Vec<String> {
    fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && !n.ends_with(".tmp"))
        .collect()
}

#[test]
fn save_load_round_trip_with_metadata_manifest_and_index() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut m = CheckpointManager::open(&run, policy(1, 2)).unwrap();
    let saved = m.save(spec(500, Some(1.5), 1000)).unwrap();
    assert_eq!(saved.dir, ckpt(&run, 500));
    let names: Vec<&str> = saved.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "model.safetensors",
            "optimizer.safetensors",
            "trainer_state.json"
        ]
    );
    // The recorded hashes are those of the bytes on disk (hashed while writing).
    for f in &saved.files {
        let (sha, len) = codex_core::hash::sha256_file(&saved.dir.join(&f.name)).unwrap();
        assert_eq!((sha, len), (f.sha256.clone(), f.size_bytes), "{}", f.name);
    }
    let l = codex_checkpoint::load(&saved.dir).unwrap();
    assert_eq!(l.step, 500);
    assert_eq!(l.trainer_state["data_cursor"], 4000);
    assert_eq!(loaded_weights(&l), values(500, 1000, 1));
    assert_eq!(
        l.tensor("model.safetensors", "layer.bias").unwrap().data(),
        &[1, 2, 3]
    );
    let md = l.metadata("model.safetensors").unwrap();
    assert_eq!(md["step"], "500");
    assert_eq!(md["schema_version"], "1");
    assert_eq!(md["format"], "pt");
    assert_eq!(l.manifest.config_hash, "cfg-hash");
    assert_eq!(l.manifest.metric, Some(1.5));
    assert_eq!(l.manifest.monitor.as_deref(), Some("val_loss"));
    let err = l
        .tensor("model.safetensors", "nope")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("model.safetensors"),
        "{err}"
    );
    let index = codex_checkpoint::read_index(&run).unwrap().unwrap();
    assert_eq!(index.checkpoints.len(), 1);
    assert_eq!(
        index.checkpoints[0].kept_because,
        vec![KeptBecause::Best, KeptBecause::Last]
    );
    assert_eq!(index.checkpoints[0].manifest_sha256, saved.manifest_sha256);
    assert_eq!(
        index.checkpoints[0].files["model.safetensors"],
        saved.files[0].sha256
    );
    assert!(tmp_dirs(&run).is_empty());
}

#[test]
fn retention_after_save_keeps_best_last_and_protected() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut m = CheckpointManager::open(
        &run,
        RetentionPolicy {
            pin_every: 40,
            ..policy(2, 1)
        },
    )
    .unwrap();
    m.protect(20);
    let metrics = [5.0, 4.0, 1.0, 3.0, 0.5, 2.0, 6.0];
    let mut deleted = Vec::new();
    for (i, metric) in metrics.iter().enumerate() {
        let step = (i as u64 + 1) * 10;
        deleted.extend(m.save(spec(step, Some(*metric), 8)).unwrap().deleted);
    }
    // best 2: 50 (0.5), 30 (1.0); last: 70; pinned: 40; resumed: 20.
    let steps: Vec<u64> = codex_checkpoint::list(&run)
        .unwrap()
        .iter()
        .map(|i| i.step)
        .collect();
    assert_eq!(steps, vec![20, 30, 40, 50, 70]);
    deleted.sort();
    assert_eq!(deleted, vec![10, 60]);
    let infos = codex_checkpoint::list(&run).unwrap();
    let why = |s: u64| {
        infos
            .iter()
            .find(|i| i.step == s)
            .unwrap()
            .kept_because
            .clone()
    };
    assert_eq!(why(20), vec![KeptBecause::Resumed]);
    assert_eq!(why(40), vec![KeptBecause::Pinned]);
    assert_eq!(why(50), vec![KeptBecause::Best]);
    assert_eq!(why(70), vec![KeptBecause::Last]);
    assert!(
        infos
            .iter()
            .all(|i| i.status == CheckpointStatus::Unverified)
    );
    assert!(
        codex_checkpoint::list_verified(&run)
            .unwrap()
            .iter()
            .all(|i| i.status == CheckpointStatus::Valid)
    );
}

#[test]
fn retention_after_save_retires_at_once_and_deletes_in_the_background() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut m = CheckpointManager::open(&run, policy(0, 1)).unwrap();
    m.save(spec(1, None, 300_000)).unwrap();
    let saved = m.save(spec(2, None, 300_000)).unwrap();
    assert_eq!(saved.deleted, [1]);
    // Out of sight when save returns (renamed durably), whatever the deleting thread has done.
    assert!(!ckpt(&run, 1).exists());
    let infos = codex_checkpoint::list(&run).unwrap();
    assert_eq!(infos.iter().map(|i| i.step).collect::<Vec<_>>(), [2]);
    m.finish_deletions();
    assert!(tmp_dirs(&run).is_empty(), "{:?}", tmp_dirs(&run));
    // Dropping the manager waits for the deletion too.
    m.save(spec(3, None, 300_000)).unwrap();
    drop(m);
    assert!(tmp_dirs(&run).is_empty(), "{:?}", tmp_dirs(&run));
    assert!(!ckpt(&run, 2).exists());
    let l = codex_checkpoint::latest_valid(&run).unwrap().unwrap();
    assert_eq!(l.step, 3);
    assert_eq!(loaded_weights(&l), values(3, 300_000, 1));
}

#[test]
fn dry_run_prune_deletes_nothing() {
    let (_tmp, run) = two_checkpoints();
    let mut m = CheckpointManager::open(&run, policy(0, 1)).unwrap();
    let r = m.prune(true).unwrap();
    assert_eq!(r.deleted, vec![1]);
    assert!(ckpt(&run, 1).exists());
    let r = m.prune(false).unwrap();
    assert_eq!(r.deleted, vec![1]);
    assert!(!ckpt(&run, 1).exists());
}

#[test]
fn truncated_file_is_detected_and_resume_falls_back() {
    let (_tmp, run) = two_checkpoints();
    let path = ckpt(&run, 2).join("model.safetensors");
    let full = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full - 10)
        .unwrap();
    let err = codex_checkpoint::load(ckpt(&run, 2)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CheckpointError::SizeMismatch { .. }), "{msg}");
    assert!(msg.contains("`model.safetensors`"), "{msg}");
    assert!(
        msg.contains(&format!("is {} bytes, expected {full} bytes", full - 10)),
        "{msg}"
    );
    let latest = codex_checkpoint::latest_valid(&run).unwrap().unwrap();
    assert_eq!(latest.step, 1);
    assert_eq!(latest.skipped.len(), 1);
    assert!(latest.skipped[0].1.contains("model.safetensors"));
    let infos = codex_checkpoint::list(&run).unwrap();
    assert!(
        matches!(&infos[1].status, CheckpointStatus::Invalid(r) if r.contains("model.safetensors"))
    );
    assert!(!codex_checkpoint::verify(ckpt(&run, 2)).unwrap().ok);
}

#[test]
fn flipped_byte_is_detected_with_both_hashes() {
    let (_tmp, run) = two_checkpoints();
    let path = ckpt(&run, 2).join("optimizer.safetensors");
    let expected = codex_core::hash::sha256_file(&path).unwrap().0;
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let actual = codex_core::hash::sha256_bytes(&bytes);
    let err = codex_checkpoint::load(ckpt(&run, 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`optimizer.safetensors`"), "{err}");
    assert!(
        err.contains(&format!("has sha256 {actual}, expected {expected}")),
        "{err}"
    );
    // Sizes still match: only the rehash sees it.
    assert_eq!(
        codex_checkpoint::list(&run).unwrap()[1].status,
        CheckpointStatus::Unverified
    );
    let report = codex_checkpoint::verify(ckpt(&run, 2)).unwrap();
    assert!(!report.ok);
    assert_eq!(report.problems.len(), 1);
    let bad = report.files.iter().find(|f| !f.ok).unwrap();
    assert_eq!(bad.actual_sha256.as_deref(), Some(actual.as_str()));
    assert!(matches!(
        codex_checkpoint::list_verified(&run).unwrap()[1].status,
        CheckpointStatus::Invalid(_)
    ));
    assert_eq!(
        codex_checkpoint::latest_valid(&run).unwrap().unwrap().step,
        1
    );
    // The earlier checkpoint is untouched.
    assert!(codex_checkpoint::verify(ckpt(&run, 1)).unwrap().ok);
}

#[test]
fn missing_manifest_means_incomplete() {
    let (_tmp, run) = two_checkpoints();
    fs::remove_file(ckpt(&run, 2).join("MANIFEST.json")).unwrap();
    let err = codex_checkpoint::load(ckpt(&run, 2)).unwrap_err();
    assert!(matches!(err, CheckpointError::MissingManifest { .. }));
    assert!(err.to_string().contains("has no MANIFEST.json"), "{err}");
    assert_eq!(
        codex_checkpoint::latest_valid(&run).unwrap().unwrap().step,
        1
    );
    let report = codex_checkpoint::verify(ckpt(&run, 2)).unwrap();
    assert!(!report.ok && report.problems[0].contains("MANIFEST.json"));
    // Retention leaves it alone rather than deleting data it cannot judge.
    let mut m = CheckpointManager::open(&run, policy(0, 1)).unwrap();
    let r = m.prune(false).unwrap();
    assert_eq!(r.invalid.len(), 1);
    assert!(ckpt(&run, 2).exists() && ckpt(&run, 1).exists());
}

#[test]
fn missing_file_and_bad_manifest_are_reported() {
    let (_tmp, run) = two_checkpoints();
    fs::remove_file(ckpt(&run, 2).join("optimizer.safetensors")).unwrap();
    let err = codex_checkpoint::load(ckpt(&run, 2))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`optimizer.safetensors` is listed in MANIFEST.json but missing"),
        "{err}"
    );
    fs::write(ckpt(&run, 1).join("MANIFEST.json"), b"{not json").unwrap();
    let err = codex_checkpoint::load(ckpt(&run, 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid MANIFEST.json"), "{err}");
    assert!(codex_checkpoint::latest_valid(&run).unwrap().is_none());
}

#[test]
fn leftover_temp_dir_is_ignored_then_cleaned() {
    let (_tmp, run) = two_checkpoints();
    let leftover = run.join("checkpoints/.tmp-step-00000003-99999-0");
    fs::create_dir(&leftover).unwrap();
    fs::write(leftover.join("model.safetensors"), b"partial").unwrap();
    let trash = run.join("checkpoints/.trash-step-00000000-99999");
    fs::create_dir(&trash).unwrap();
    let steps: Vec<u64> = codex_checkpoint::list(&run)
        .unwrap()
        .iter()
        .map(|i| i.step)
        .collect();
    assert_eq!(steps, vec![1, 2]);
    assert_eq!(
        codex_checkpoint::latest_valid(&run).unwrap().unwrap().step,
        2
    );
    let _m = CheckpointManager::open(&run, policy(0, 5)).unwrap();
    assert!(!leftover.exists() && !trash.exists());
    assert!(codex_checkpoint::verify(ckpt(&run, 2)).unwrap().ok);
}

#[test]
fn corrupt_index_is_reported_and_rebuilt() {
    let (_tmp, run) = two_checkpoints();
    let index = run.join("checkpoints/index.json");
    fs::write(&index, b"{\"schema_version\": 1, \"checkpoi").unwrap();
    let msg = codex_checkpoint::read_index(&run).unwrap_err();
    assert!(
        msg.contains("index.json") && msg.contains("corrupt"),
        "{msg}"
    );
    // Listing and resuming do not depend on it.
    let infos = codex_checkpoint::list(&run).unwrap();
    assert_eq!(infos.len(), 2);
    assert!(
        infos
            .iter()
            .all(|i| i.kept_because.is_empty() && i.status.is_usable())
    );
    assert_eq!(
        codex_checkpoint::latest_valid(&run).unwrap().unwrap().step,
        2
    );
    // The next save rebuilds it from the manifests.
    let mut m = CheckpointManager::open(&run, policy(0, 5)).unwrap();
    m.save(spec(3, None, 8)).unwrap();
    let rebuilt = codex_checkpoint::read_index(&run).unwrap().unwrap();
    assert_eq!(
        rebuilt
            .checkpoints
            .iter()
            .map(|e| e.step)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[test]
fn same_step_is_replaced_and_bad_specs_leave_nothing() {
    let (_tmp, run) = two_checkpoints();
    let mut m = CheckpointManager::open(&run, policy(0, 5)).unwrap();
    m.save(spec(2, Some(0.1), 16)).unwrap();
    let l = codex_checkpoint::load(ckpt(&run, 2)).unwrap();
    assert_eq!(loaded_weights(&l), values(2, 16, 1));
    let mut bad = spec(4, None, 8);
    bad.files
        .push(CheckpointFile::bytes("model.safetensors", b"x".to_vec()));
    let err = m.save(bad).unwrap_err().to_string();
    assert!(err.contains("`model.safetensors` is given twice"), "{err}");
    let mut bad = spec(4, None, 8);
    bad.files = vec![CheckpointFile::safetensors(
        "m.safetensors",
        vec![TensorData::raw("x", Dtype::F32, vec![3], vec![0u8; 4])],
    )];
    let err = m.save(bad).unwrap_err().to_string();
    assert!(err.contains("needs 12 bytes, got 4"), "{err}");
    assert!(!ckpt(&run, 4).exists());
    assert!(tmp_dirs(&run).is_empty(), "{:?}", tmp_dirs(&run));
    assert!(codex_checkpoint::verify(ckpt(&run, 1)).unwrap().ok);
}

#[test]
fn adapter_files_are_written_as_given() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut m = CheckpointManager::open(&run, policy(0, 1)).unwrap();
    let cfg = br#"{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}"#;
    let a = [0.5f32; 16];
    m.save(CheckpointSpec {
        step: 7,
        metric: None,
        files: vec![
            CheckpointFile::safetensors(
                codex_checkpoint::ADAPTER_MODEL_FILE,
                vec![TensorData::f32(
                    "base_model.model.q_proj.lora_A.weight",
                    vec![2, 8],
                    &a[..],
                )],
            ),
            CheckpointFile::bytes(codex_checkpoint::ADAPTER_CONFIG_FILE, &cfg[..]),
            CheckpointFile::safetensors(
                codex_checkpoint::OPTIMIZER_FILE,
                vec![TensorData::f32(
                    "base_model.model.q_proj.lora_A.weight.exp_avg",
                    vec![2, 8],
                    &a[..],
                )],
            ),
        ],
        trainer_state: serde_json::json!({"step": 7}),
        config_hash: String::new(),
    })
    .unwrap();
    let l = codex_checkpoint::load(ckpt(&run, 7)).unwrap();
    assert_eq!(
        l.manifest.kind,
        Some(codex_checkpoint::CheckpointKind::Lora)
    );
    assert_eq!(l.file("adapter_config.json").unwrap(), cfg);
    assert_eq!(l.tensors("adapter_model.safetensors").unwrap().len(), 1);
}

/// Flips one bit of a file in place: same size, so only a rehash sees it.
fn flip_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x10;
    fs::write(path, &bytes).unwrap();
}

#[test]
fn prune_never_deletes_on_the_strength_of_a_corrupt_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut m = CheckpointManager::open(&run, policy(0, 10)).unwrap();
    for (step, metric) in [(5, 3.0), (10, 2.0), (15, 1.5), (20, 1.0)] {
        m.save(spec(step, Some(metric), 64)).unwrap();
    }
    drop(m);
    flip_byte(&ckpt(&run, 20).join("model.safetensors"));
    let mut m = CheckpointManager::open(&run, policy(1, 1)).unwrap();
    let r = m.prune(true).unwrap();
    // Step 20 would be best and last; it fails its rehash, so 15 takes both places.
    assert_eq!(r.invalid.len(), 1, "{r:?}");
    assert_eq!(r.invalid[0].0, 20);
    assert!(r.invalid[0].1.contains("model.safetensors"), "{r:?}");
    assert!(r.kept.iter().all(|(s, _)| *s != 20), "{r:?}");
    assert_eq!(
        r.kept,
        vec![(15, vec![KeptBecause::Best, KeptBecause::Last])]
    );
    assert_eq!(r.deleted, vec![5, 10]);
    let r = m.prune(false).unwrap();
    assert_eq!(r.deleted, vec![5, 10]);
    assert!(!r.invalid_deleted);
    // The corrupt one is left for inspection; resume finds the valid one.
    assert!(ckpt(&run, 20).exists() && ckpt(&run, 15).exists());
    assert_eq!(
        codex_checkpoint::latest_valid(&run).unwrap().unwrap().step,
        15
    );
    let index = codex_checkpoint::read_index(&run).unwrap().unwrap();
    assert_eq!(
        index.checkpoints.iter().map(|e| e.step).collect::<Vec<_>>(),
        vec![15]
    );
    let r = m
        .prune_with(codex_checkpoint::PruneOptions {
            dry_run: false,
            delete_invalid: true,
        })
        .unwrap();
    assert!(r.invalid_deleted && r.invalid[0].0 == 20);
    assert!(!ckpt(&run, 20).exists() && ckpt(&run, 15).exists());
}

#[test]
fn retention_after_save_verifies_the_best_it_keeps() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut m = CheckpointManager::open(&run, policy(1, 1)).unwrap();
    m.save(spec(1, Some(0.5), 64)).unwrap();
    m.save(spec(2, Some(2.0), 64)).unwrap();
    // Step 1 is the kept best and was verified (cached) by the save of step 2. A same-size
    // flip afterwards changes its ctime, so the cache does not vouch for it any more.
    flip_byte(&ckpt(&run, 1).join("model.safetensors"));
    let saved = m.save(spec(3, Some(3.0), 64)).unwrap();
    // Without step 1, best is 2 and last is 3: nothing valid is deleted, 1 is left alone.
    assert!(saved.deleted.is_empty(), "{:?}", saved.deleted);
    assert!(ckpt(&run, 1).exists() && ckpt(&run, 2).exists() && ckpt(&run, 3).exists());
    let saved = m.save(spec(4, Some(4.0), 64)).unwrap();
    assert_eq!(saved.deleted, vec![3]);
    let index = codex_checkpoint::read_index(&run).unwrap().unwrap();
    assert_eq!(
        index.checkpoints.iter().map(|e| e.step).collect::<Vec<_>>(),
        vec![2, 4]
    );
}

/// Rewrites a checkpoint's manifest through `edit`.
fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("MANIFEST.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

type ManifestEdit = fn(&mut serde_json::Value);

#[test]
fn incomplete_checkpoints_are_refused_everywhere() {
    let (_tmp, run) = two_checkpoints();
    let cases: [(&str, ManifestEdit, &str); 5] = [
        (
            "empty, as written before manifests had a kind",
            |v| {
                v.as_object_mut().unwrap().remove("kind");
                v["files"] = serde_json::json!([]);
            },
            "neither",
        ),
        (
            "no model, declared full",
            |v| {
                v["files"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|f| f["name"] != "model.safetensors")
            },
            "does not list `model.safetensors`",
        ),
        (
            "no model, no kind",
            |v| {
                v.as_object_mut().unwrap().remove("kind");
                v["files"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|f| f["name"] != "model.safetensors")
            },
            "neither",
        ),
        (
            "empty, declared full",
            |v| v["files"] = serde_json::json!([]),
            "does not list `model.safetensors`",
        ),
        (
            "no optimizer",
            |v| {
                v["files"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|f| f["name"] != "optimizer.safetensors")
            },
            "does not list `optimizer.safetensors`",
        ),
    ];
    let original = fs::read(ckpt(&run, 2).join("MANIFEST.json")).unwrap();
    for (what, edit, want) in cases {
        fs::write(ckpt(&run, 2).join("MANIFEST.json"), &original).unwrap();
        edit_manifest(&ckpt(&run, 2), edit);
        let report = codex_checkpoint::verify(ckpt(&run, 2)).unwrap();
        assert!(!report.ok, "{what}");
        assert!(
            report.problems[0].contains("incomplete") && report.problems[0].contains(want),
            "{what}: {:?}",
            report.problems
        );
        let err = codex_checkpoint::load(ckpt(&run, 2)).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Incomplete { .. }),
            "{what}: {err}"
        );
        assert!(!codex_checkpoint::list(&run).unwrap()[1].status.is_usable());
        let l = codex_checkpoint::latest_valid(&run).unwrap().unwrap();
        assert_eq!(l.step, 1, "{what}");
        assert!(l.skipped[0].1.contains(want), "{what}: {:?}", l.skipped);
    }
}

#[test]
fn save_refuses_an_incomplete_trainer_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut m = CheckpointManager::open(&run, policy(0, 5)).unwrap();
    let mut s = spec(1, None, 8);
    s.files.truncate(1);
    let err = m.save(s).unwrap_err();
    assert!(matches!(err, CheckpointError::InvalidSpec { .. }), "{err}");
    assert!(err.to_string().contains("optimizer.safetensors"), "{err}");
    assert!(!ckpt(&run, 1).exists());
    // Files without weights make a generic checkpoint, which readers accept as such.
    m.save(CheckpointSpec {
        files: vec![CheckpointFile::bytes("probe.bin", vec![7u8; 16])],
        ..spec(2, None, 8)
    })
    .unwrap();
    let l = codex_checkpoint::load(ckpt(&run, 2)).unwrap();
    assert_eq!(
        l.manifest.kind,
        Some(codex_checkpoint::CheckpointKind::Generic)
    );
}

#[test]
fn manifest_step_must_match_the_directory_name() {
    let (_tmp, run) = two_checkpoints();
    // A copy of step 1 under the name of step 3 must not pass for step 3.
    let copy = ckpt(&run, 3);
    fs::create_dir(&copy).unwrap();
    for e in fs::read_dir(ckpt(&run, 1)).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let err = codex_checkpoint::load(&copy).unwrap_err().to_string();
    assert!(
        err.contains("says step 1, the directory name says 3"),
        "{err}"
    );
    assert!(!codex_checkpoint::verify(&copy).unwrap().ok);
    let l = codex_checkpoint::latest_valid(&run).unwrap().unwrap();
    assert_eq!((l.step, l.skipped.len()), (2, 1));
}

#[test]
fn latest_valid_where_skips_what_the_caller_refuses() {
    let (_tmp, run) = two_checkpoints();
    let mut seen = Vec::new();
    let l = codex_checkpoint::latest_valid_where(&run, &mut |ck| {
        seen.push(ck.step);
        if ck.trainer_state["data_cursor"] == 16 {
            Err("data cursor 16 is past the end of the dataset".into())
        } else {
            Ok(())
        }
    })
    .unwrap()
    .unwrap();
    assert_eq!(l.step, 1);
    assert_eq!(seen, vec![2, 1]);
    assert_eq!(l.skipped.len(), 1);
    assert_eq!(l.skipped[0].0, ckpt(&run, 2));
    assert!(l.skipped[0].1.contains("past the end"), "{:?}", l.skipped);
    let none = codex_checkpoint::latest_valid_where(&run, &mut |_| Err("no".into())).unwrap();
    assert!(none.is_none());
}

#[test]
#[ignore = "needs CODEX_TEST_PYTHON (scripts/test-assets.sh)"]
fn written_files_load_in_python_safetensors() {
    let python = std::env::var_os("CODEX_TEST_PYTHON")
        .filter(|v| !v.is_empty())
        .expect(
            "CODEX_TEST_PYTHON is unset: this test needs the reference Python with safetensors; \
             run `eval \"$(bash scripts/test-assets.sh)\"` first, or `bash scripts/test.sh`",
        );
    let (_tmp, run) = two_checkpoints();
    let file = ckpt(&run, 2).join("model.safetensors");
    let script = "import sys, json\nfrom safetensors import safe_open\n\
        with safe_open(sys.argv[1], 'np') as f:\n    w = f.get_tensor('layer.weight')\n    \
        print(json.dumps({'meta': f.metadata(), 'w': [float(x) for x in w[:4]], 'n': int(w.size)}))";
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["meta"]["step"], "2");
    assert_eq!(v["n"], 64);
    let want: Vec<f64> = values(2, 4, 1).iter().map(|&x| f64::from(x)).collect();
    assert_eq!(v["w"], serde_json::json!(want));
}

// ---------------------------------------------------------------------------------------
// Tests with a second process.

fn spawn_child(name: &str, run: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD_ENV, run)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn child_run() -> Option<PathBuf> {
    std::env::var_os(CHILD_ENV).map(PathBuf::from)
}

#[test]
#[ignore = "helper: run as a child process by second_writer_is_refused_with_holder_pid"]
fn child_hold_lock() {
    let Some(run) = child_run() else { return };
    let _lock = codex_checkpoint::RunLock::acquire(&run).unwrap();
    println!("CHILD-LOCKED");
    // Hold until the parent closes stdin (or kills us).
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn second_writer_is_refused_with_holder_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut child = spawn_child("child_hold_lock", &run);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("CHILD-LOCKED") {
        line.clear();
    }
    assert!(line.contains("CHILD-LOCKED"), "child did not take the lock");
    let err = CheckpointManager::open(&run, policy(1, 1)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, CheckpointError::Locked { pid, .. } if pid == child.id()),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("locked by pid {}", child.id())),
        "{msg}"
    );
    let holder = codex_checkpoint::RunLock::holder(&run).unwrap();
    assert!(holder.alive && holder.pid == child.id());
    // Killed (no cleanup): the kernel drops the flock, the pid is dead once reaped, so the
    // stale lock is taken over.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!codex_checkpoint::RunLock::holder(&run).unwrap().alive);
    let mut m = CheckpointManager::open(&run, policy(1, 1)).unwrap();
    m.save(spec(1, None, 8)).unwrap();
}

#[test]
#[ignore = "helper: run as a child process by write_failure_removes_partial_and_keeps_earlier"]
fn child_write_with_small_file_limit() {
    let Some(run) = child_run() else { return };
    let mut m = CheckpointManager::open(&run, policy(0, 5)).unwrap();
    m.save(spec(1, None, 1024)).unwrap();
    // From here every write past 64 KiB fails with EFBIG, like a full disk mid-file.
    // SAFETY: plain libc calls on this process's own signal disposition and limits.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: 64 * 1024,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let err = m.save(spec(2, None, 256 * 1024)).unwrap_err();
    let mut chain = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        chain.push_str(" | ");
        chain.push_str(&s.to_string());
        src = s.source();
    }
    println!("CHILD-ERROR: {chain}");
}

#[test]
fn write_failure_removes_partial_and_keeps_earlier() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let child = spawn_child("child_write_with_small_file_limit", &run);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("CHILD-ERROR: "))
        .expect("child reports the error");
    assert!(
        line.contains("checkpoint for step 2 was not saved"),
        "{line}"
    );
    assert!(
        line.contains("cannot write") && line.contains("model.safetensors"),
        "{line}"
    );
    assert!(line.contains("File too large"), "{line}");
    assert!(tmp_dirs(&run).is_empty(), "{:?}", tmp_dirs(&run));
    assert!(!ckpt(&run, 2).exists());
    let l = codex_checkpoint::latest_valid(&run).unwrap().unwrap();
    assert_eq!(l.step, 1);
    assert_eq!(loaded_weights(&l), values(1, 1024, 1));
}

/// Tensor length per step in the crash test: 0.25–2 MiB per file so kills land mid-write.
fn crash_len(step: u64) -> usize {
    65_536 + (step as usize * 7919 % 8) * 65_536
}

#[test]
#[ignore = "helper: run as a child process by sigkill_at_random_moments_never_leaves_a_bad_valid_checkpoint"]
fn child_crash_writer() {
    let Some(run) = child_run() else { return };
    let mut m = CheckpointManager::open(
        &run,
        RetentionPolicy {
            pin_every: 7,
            ..policy(2, 2)
        },
    )
    .unwrap();
    let start = codex_checkpoint::list(&run)
        .unwrap()
        .last()
        .map_or(1, |i| i.step + 1);
    for step in start..start + 100_000 {
        let metric = (step * 37 % 11) as f64;
        m.save(spec(step, Some(metric), crash_len(step))).unwrap();
    }
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_bad_valid_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut mid_write = 0;
    let kills = 25;
    for _ in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child = spawn_child("child_crash_writer", &run);
        std::thread::sleep(Duration::from_millis(20 + rng % 180));
        child.kill().unwrap();
        child.wait().unwrap();
        if run.join("checkpoints").exists() && !tmp_dirs(&run).is_empty() {
            mid_write += 1;
        }
    }
    let infos = codex_checkpoint::list(&run).unwrap();
    let usable: Vec<_> = infos.iter().filter(|i| i.status.is_usable()).collect();
    eprintln!(
        "{kills} SIGKILLs, {mid_write} left a partial directory behind; {} checkpoints listed, {} usable, newest step {:?}",
        infos.len(),
        usable.len(),
        usable.last().map(|i| i.step)
    );
    assert!(!usable.is_empty(), "the writer never finished a checkpoint");
    for info in &usable {
        let report = codex_checkpoint::verify(&info.dir).unwrap();
        assert!(
            report.ok,
            "step {} listed as usable but fails verification: {:?}",
            info.step, report.problems
        );
    }
    let newest = usable.last().unwrap().step;
    let l = codex_checkpoint::latest_valid(&run).unwrap().unwrap();
    assert_eq!(l.step, newest);
    assert_eq!(loaded_weights(&l), values(newest, crash_len(newest), 1));
    assert_eq!(l.trainer_state["step"], newest);
    // Opening the run again takes over the dead writer's lock and clears its leftovers.
    let started = Instant::now();
    let _m = CheckpointManager::open(&run, policy(2, 2)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(tmp_dirs(&run).is_empty(), "{:?}", tmp_dirs(&run));
}
