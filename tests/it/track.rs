//! `codex train --track` and `codex sync`: the run reaches TensorBoard and CSV, and TensorBoard's
//! own reader (the interop test) loads exactly the points of `metrics.ndjson`.

use crate::support::{asset_var, codex, corpus, lines, stdout_of, tempdir, tiny_args};
use codex_track::tensorboard::{EVAL_TAGS, STEP_TAGS, read_scalars};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The expected points of each tag, from the record: (step, value as f32).
fn expected_points(run: &Path) -> BTreeMap<String, Vec<(i64, f32)>> {
    const STEP_FIELDS: [&str; 8] = [
        "train_loss",
        "train_loss_mean",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "step_time_ms",
        "epoch",
        "tokens_seen",
    ];
    const EVAL_FIELDS: [&str; 4] = ["val_loss", "val_ppl", "val_token_acc", "val_tokens"];
    let mut out: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for e in lines(&run.join("metrics.ndjson")) {
        let (tags, fields): (&[&str], &[&str]) = match e["event"].as_str() {
            Some("step") => (STEP_TAGS, &STEP_FIELDS),
            Some("eval") => (EVAL_TAGS, &EVAL_FIELDS),
            _ => continue,
        };
        for (t, f) in tags.iter().zip(fields) {
            let v = e[*f].as_f64().unwrap_or_else(|| panic!("{f} in {e}"));
            out.entry(t.to_string())
                .or_default()
                .push((e["step"].as_i64().unwrap(), v as f32));
        }
        // Optional step values: a point where the record has a number, none where it is null.
        if e["event"] == "step" {
            for (t, f) in [
                ("perf/mfu", "mfu"),
                ("perf/joules_per_token", "joules_per_token"),
            ] {
                if let Some(v) = e[f].as_f64() {
                    out.entry(t.to_string())
                        .or_default()
                        .push((e["step"].as_i64().unwrap(), v as f32));
                }
            }
        }
    }
    out
}

fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("tfevents")
        })
        .collect();
    v.sort();
    v
}

/// The points of one event file, per tag, as codex's own reader decodes them.
fn points(file: &Path) -> BTreeMap<String, Vec<(i64, f32)>> {
    let (scalars, clean) = read_scalars(file).unwrap();
    assert!(clean, "{} ends in a torn record", file.display());
    let mut out: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for (tag, step, v) in scalars {
        out.entry(tag).or_default().push((step, v));
    }
    out
}

fn tracked_run(dir: &Path, extra: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let input = corpus(dir);
    let run = dir.join("run");
    let mut args = vec!["--track", "tensorboard,csv"];
    args.extend_from_slice(extra);
    codex()
        .args(tiny_args(&input, &run, &args))
        .assert()
        .success();
    run
}

#[test]
fn track_writes_every_step_and_eval_to_tensorboard_and_csv() {
    let dir = tempdir();
    let run = tracked_run(dir.path(), &[]);
    let files = event_files(&run.join("tensorboard"));
    assert_eq!(files.len(), 1, "{files:?}");
    let expected = expected_points(&run);
    assert_eq!(expected["train/loss"].len(), 12);
    assert_eq!(points(&files[0]), expected);

    // metrics.csv: one row per step (evals merged into theirs; the step-0 eval on its own).
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0], codex_track::csv::COLUMNS);
    let events = lines(&run.join("metrics.ndjson"));
    let mut steps: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "step" || e["event"] == "eval")
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    steps.dedup();
    // A CSV cell read with the same parser as the NDJSON: serde_json's default float parser may
    // land one ulp off the shortest text both sinks write (3.9931459426879883 reads back as
    // 3.993145942687988), and codex cannot turn on its exact `float_roundtrip` feature: features
    // unify across the build, and the `tokenizers` crate would then read `tokenizer.json` scores
    // differently from Python `tokenizers` (caught by the unigram interop test).
    let cell = |s: &str| serde_json::from_str::<f64>(s).unwrap();
    let row_steps: Vec<u64> = rows[1..].iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(row_steps, steps);
    for e in events.iter().filter(|e| e["event"] == "eval") {
        let row = rows[1..]
            .iter()
            .find(|r| r[0].parse::<u64>().ok() == e["step"].as_u64())
            .unwrap();
        assert_eq!(cell(row[10]), e["val_loss"].as_f64().unwrap());
    }
    for e in events.iter().filter(|e| e["event"] == "step") {
        let row = rows[1..]
            .iter()
            .find(|r| r[0].parse::<u64>().ok() == e["step"].as_u64())
            .unwrap();
        assert_eq!(cell(row[2]), e["train_loss"].as_f64().unwrap());
        assert_eq!(cell(row[3]), e["train_loss_mean"].as_f64().unwrap());
    }
}

#[test]
fn sync_twice_replaces_instead_of_duplicating() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("run");
    codex()
        .args(tiny_args(&input, &run, &[]))
        .assert()
        .success();
    assert!(!run.join("tensorboard").exists() && !run.join("metrics.csv").exists());
    let expected = expected_points(&run);
    let tb = dir.path().join("tb");
    let sync = |to: &[&str]| {
        let mut cmd = codex();
        cmd.arg("sync").arg(&run);
        for t in to {
            cmd.args(["--to", t]);
        }
        stdout_of(&mut cmd)
    };
    let tb_to = format!("tensorboard:{}", tb.display());
    let mut csvs = Vec::new();
    for _ in 0..2 {
        let out = sync(&["tensorboard", &tb_to, "csv"]);
        assert_eq!(out.lines().count(), 3, "{out}");
        for d in [run.join("tensorboard"), tb.join("run")] {
            let files = event_files(&d);
            assert_eq!(files.len(), 1, "{files:?}");
            assert_eq!(points(&files[0]), expected);
        }
        csvs.push(std::fs::read(run.join("metrics.csv")).unwrap());
    }
    assert_eq!(csvs[0], csvs[1]);
    // The CSV sync equals what the live sink writes.
    let live = tracked_run(&dir.path().join("live"), &[]);
    let strip_ts = |b: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(b)
            .lines()
            .map(|l| {
                let mut c: Vec<&str> = l.split(',').collect();
                c.remove(1);
                c.remove(5); // tokens_per_s and step_time_ms differ run to run
                c.remove(5);
                c.join(",")
            })
            .collect()
    };
    let live_csv = std::fs::read(live.join("metrics.csv")).unwrap();
    assert_eq!(strip_ts(&live_csv).len(), strip_ts(&csvs[0]).len());
    assert_eq!(strip_ts(&live_csv)[0], strip_ts(&csvs[0])[0]);
    // And a sync over the live file replaces it.
    let before = event_files(&live.join("tensorboard"));
    let mut cmd = codex();
    cmd.arg("sync").arg(&live).args(["--to", "tensorboard"]);
    stdout_of(&mut cmd);
    let after = event_files(&live.join("tensorboard"));
    assert_eq!(after.len(), 1);
    assert_ne!(before, after);
    assert_eq!(points(&after[0]), expected_points(&live));
}

#[test]
fn track_and_sync_refuse_unknown_trackers() {
    let dir = tempdir();
    let out = codex()
        .args(tiny_args(
            "x.py",
            &dir.path().join("r"),
            &["--track", "tensorboard,mlfow"],
        ))
        .assert()
        .failure()
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mlfow") && err.contains("tensorboard, csv"),
        "{err}"
    );
    let out = codex()
        .args(["sync", "nowhere", "--to", "csv"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no metrics.ndjson"));
}

/// Reads an event directory with TensorBoard's own `EventAccumulator` and prints, per scalar
/// tag, its (step, value) points; plus the text and HParams tags it found.
const READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
out = {"scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]}}
out["tensors"] = sorted(tags["tensors"])
if "config" in tags["tensors"]:
    out["config"] = tensor_util.make_ndarray(acc.Tensors("config")[0].tensor_proto).item().decode()
try:
    hp = acc.PluginTagToContent("hparams")
except KeyError:
    hp = {}
if "_hparams_/session_start_info" in hp:
    d = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"])
    out["hparams"] = {k: v.WhichOneof("kind") for k, v in d.session_start_info.hparams.items()}
if "_hparams_/session_end_info" in hp:
    d = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_end_info"])
    out["status"] = d.session_end_info.status
print(json.dumps(out))
"#;

fn tensorboard_reads(dir: &Path) -> Value {
    let out = std::process::Command::new(asset_var("CODEX_TEST_PYTHON"))
        .args(["-c", READER])
        .arg(dir)
        .output()
        .expect("run CODEX_TEST_PYTHON");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn reader_points(read: &Value) -> BTreeMap<String, Vec<(i64, f32)>> {
    read["scalars"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, pts)| {
            let pts = pts
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as f32))
                .collect();
            (tag.clone(), pts)
        })
        .collect()
}

#[test]
#[ignore = "needs CODEX_TEST_PYTHON (scripts/test-assets.sh)"]
fn tensorboard_own_reader_loads_exactly_the_record() {
    asset_var("CODEX_TEST_PYTHON");
    let dir = tempdir();
    let run = tracked_run(dir.path(), &[]);
    let tb = run.join("tensorboard");
    let expected = expected_points(&run);
    let read = tensorboard_reads(&tb);
    // Every tag, exactly as many points as the record, values equal as f32.
    assert_eq!(reader_points(&read), expected);
    assert_eq!(
        read["tensors"],
        serde_json::json!([
            "_hparams_/session_end_info",
            "_hparams_/session_start_info",
            "config"
        ])
    );
    assert!(
        read["config"]
            .as_str()
            .unwrap()
            .contains("preset = \"gpt-tiny\"")
    );
    assert_eq!(read["hparams"]["training.steps"], "number_value");
    assert_eq!(read["hparams"]["model.preset"], "string_value");
    assert_eq!(read["status"], 1, "STATUS_SUCCESS");

    // Syncing twice over the live file: still exactly the record's points.
    for _ in 0..2 {
        let mut cmd = codex();
        cmd.arg("sync").arg(&run).args(["--to", "tensorboard"]);
        stdout_of(&mut cmd);
        assert_eq!(reader_points(&tensorboard_reads(&tb)), expected);
    }

    // A flipped byte three quarters in (past the start record with the config): the reader
    // keeps the records before it and drops the rest.
    let file = event_files(&tb).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let total = |m: &BTreeMap<String, Vec<(i64, f32)>>| m.values().map(Vec::len).sum::<usize>();
    let damaged = reader_points(&tensorboard_reads(&tb));
    assert!(
        total(&damaged) > 0 && total(&damaged) < total(&expected),
        "{} of {} points still read",
        total(&damaged),
        total(&expected)
    );
    for (tag, pts) in &damaged {
        assert!(expected[tag].starts_with(pts), "{tag}: {pts:?}");
    }
}

#[test]
fn tracking_config_turns_sinks_on_and_is_validated() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("run");
    let tb = dir.path().join("tb");
    codex()
        .args(tiny_args(
            &input,
            &run,
            &[
                "tracking.csv=true",
                &format!("tracking.tensorboard={:?}", tb.display().to_string()),
            ],
        ))
        .assert()
        .success();
    assert!(run.join("metrics.csv").is_file());
    // tensorboard = DIR: one TensorBoard run per codex run, named after it.
    assert_eq!(event_files(&tb.join("run")).len(), 1);
    assert!(!run.join("tensorboard").exists());
    // The section is kept in the run's config.toml, so a resume tracks the same way.
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        cfg.contains("[tracking]") && cfg.contains("csv = true"),
        "{cfg}"
    );

    for (bad, what) in [
        ("tracking.mlflow=\"ftp://host\"", "tracking.mlflow"),
        ("tracking.tensorboard=\"\"", "tracking.tensorboard"),
    ] {
        let out = codex()
            .args(tiny_args(&input, &dir.path().join("bad"), &[bad]))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(what), "{bad}");
        assert!(!dir.path().join("bad").exists());
    }
    // Off by default: a config without the section writes the same config.toml as before.
    let show = stdout_of(codex().args(["config", "show"]));
    assert!(!show.contains("[tracking]"), "{show}");
}
