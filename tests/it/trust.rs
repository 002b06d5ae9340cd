//! Resume trusts nothing it has not checked: a checkpoint whose hashes verify but whose
//! `trainer_state.json` disagrees with it, or whose tensors do not fit the model, is skipped
//! like a corrupt one and `--resume` falls back to the next older checkpoint.

use crate::support::{codex, corpus, lines, reseal_manifest, tempdir, tiny_args};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A finished 6-step run with checkpoints at steps 2, 4 and 6 (all kept).
fn run_with_checkpoints(dir: &Path) -> (String, PathBuf) {
    let input = corpus(dir);
    let run = dir.join("r");
    codex()
        .args(tiny_args(
            &input,
            &run,
            &["training.steps=6", "checkpoint.keep_last=3"],
        ))
        .assert()
        .success();
    (input, run)
}

fn edit_state(ck: &Path, edit: impl FnOnce(&mut Value)) {
    let p = ck.join("trainer_state.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    reseal_manifest(ck);
}

/// Resumes to 8 steps and returns (stderr, the `start` event's resumed step).
fn resume(input: &str, run: &Path) -> (String, u64) {
    let out = codex()
        .args(tiny_args(
            input,
            run,
            &["training.steps=8", "checkpoint.keep_last=3"],
        ))
        .arg("--resume")
        .assert()
        .success()
        .get_output()
        .clone();
    let events = lines(&run.join("metrics.ndjson"));
    let start = events.iter().rev().find(|e| e["event"] == "start").unwrap();
    let end = events.last().unwrap();
    assert_eq!(end["status"], "completed", "{end}");
    assert_eq!(end["steps"], 8, "{end}");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start["resumed"]["step"].as_u64().unwrap(),
    )
}

#[test]
fn forged_step_falls_back_to_the_previous_checkpoint() {
    let dir = tempdir();
    let (input, run) = run_with_checkpoints(dir.path());
    edit_state(&run.join("checkpoints/step-00000006"), |v| {
        v["step"] = 999.into()
    });
    let (stderr, from) = resume(&input, &run);
    assert_eq!(from, 4);
    assert!(
        stderr.contains("step-00000006") && stderr.contains("999"),
        "{stderr}"
    );
    assert!(!run.join("checkpoints/step-00000999").exists());
}

#[test]
fn absurd_data_cursor_and_negative_step_are_skipped() {
    let dir = tempdir();
    let (input, run) = run_with_checkpoints(dir.path());
    edit_state(&run.join("checkpoints/step-00000006"), |v| {
        v["data_cursor"] = 1_000_000_000_000_000u64.into()
    });
    edit_state(&run.join("checkpoints/step-00000004"), |v| {
        v["step"] = (-1).into()
    });
    let (stderr, from) = resume(&input, &run);
    assert_eq!(from, 2);
    assert!(stderr.contains("data_cursor"), "{stderr}");
}

#[test]
fn wrong_shape_tensor_falls_back_instead_of_failing() {
    let dir = tempdir();
    let (input, run) = run_with_checkpoints(dir.path());
    // Rewrite one tensor's shape in the safetensors header (same byte count: [a, b] -> [b, a]
    // is the same size, so pick a 2-D tensor with a != b) and re-seal the manifest.
    let ck = run.join("checkpoints/step-00000006");
    let path = ck.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (name, shape) = header
        .as_object()
        .unwrap()
        .iter()
        .find_map(|(k, v)| {
            let s = v.get("shape")?.as_array()?;
            (s.len() == 2 && s[0] != s[1]).then(|| (k.clone(), s.clone()))
        })
        .unwrap();
    header[&name]["shape"] = Value::Array(vec![shape[1].clone(), shape[0].clone()]);
    let mut text = serde_json::to_vec(&header).unwrap();
    text.resize(n, b' ');
    assert_eq!(text.len(), n, "the header must keep its length");
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, out).unwrap();
    reseal_manifest(&ck);
    let (stderr, from) = resume(&input, &run);
    assert_eq!(from, 4);
    assert!(stderr.contains("step-00000006"), "{stderr}");
}
