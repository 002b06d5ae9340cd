//! The run record as a user relies on it: bit-identical reruns, `codex status` naming every
//! way a run can end, resumed runs keeping each invocation, the printed continue command, the
//! plain step lines without a terminal, the versioned default directory.

use crate::support::{
    codex, codex_process, corpus, expect_exit, json_of, lines, newest_step, shell, tempdir,
    tiny_args,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Overrides that give rayon work to split (two threads finish it in about 2/3 of one
/// thread's time): 16 sequences of 64 tokens a micro-batch, 2 micro-batches a step.
const PARALLEL: &[&str] = &[
    "training.batch_size=16",
    "data.context_length=64",
    "training.grad_accum=2",
    "training.steps=4",
];

/// Trains `tiny.toml` with [`PARALLEL`] into `dir/name` on `threads` rayon threads and returns
/// the final checkpoint's weights.
fn final_weights(dir: &Path, name: &str, threads: &str) -> Vec<u8> {
    let input = corpus(dir);
    let run = dir.join(name);
    codex()
        .env("RAYON_NUM_THREADS", threads)
        .args(tiny_args(&input, &run, PARALLEL))
        .assert()
        .success();
    std::fs::read(run.join("checkpoints/step-00000004/model.safetensors")).unwrap()
}

#[test]
fn same_config_twice_is_bit_identical_even_under_cpu_load() {
    let dir = tempdir();
    let quiet = final_weights(dir.path(), "quiet", crate::support::RAYON_THREADS);
    // Two busy processes compete for the cores, so the rayon workers are descheduled at other
    // moments and steal other work; the result must not depend on it.
    let hogs = Reaped(
        (0..2)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let loaded = final_weights(dir.path(), "loaded", crate::support::RAYON_THREADS);
    drop(hogs);
    assert!(quiet == loaded, "the weights differ under CPU load");
}

/// Processes killed (SIGKILL) and reaped when dropped, also when the test fails first.
struct Reaped(Vec<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn one_and_two_rayon_threads_give_the_same_weights() {
    let dir = tempdir();
    let one = final_weights(dir.path(), "one", "1");
    let two = final_weights(dir.path(), "two", "2");
    assert!(one == two, "the weights depend on the number of threads");
}

/// Spawns `codex train` in the background (output discarded) and waits for its first step
/// event.
fn spawn_until_first_step(args: &[String], run: &Path) -> Reaped {
    let mut child = Reaped(vec![
        codex_process()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ]);
    let t0 = Instant::now();
    while newest_step(run) < 1 {
        assert!(
            child.0[0].try_wait().unwrap().is_none(),
            "the run ended before its first step"
        );
        assert!(t0.elapsed() < Duration::from_secs(60), "no step in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// `codex status --json` on the runs under `root/runs`, by run name. Its exit code is not
/// looked at: a run that failed before it wrote `provenance.json` makes the reproducibility
/// checklist fail, which is status's verdict on the directory, not on the states.
fn run_states(root: &Path) -> serde_json::Map<String, Value> {
    let out = codex()
        .args(["--json", "status"])
        .arg(root)
        .arg("--runs")
        .arg(root.join("runs"))
        .output()
        .unwrap();
    json_of(&out.stdout)["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

/// The last eval event of a run: (step, val_loss).
fn last_eval(run: &Path) -> (u64, f64) {
    let e = lines(&run.join("metrics.ndjson"))
        .into_iter()
        .rev()
        .find(|e| e["event"] == "eval")
        .expect("an eval event");
    (e["step"].as_u64().unwrap(), e["val_loss"].as_f64().unwrap())
}

#[test]
fn status_reports_each_run_state() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let runs = dir.path().join("runs");
    let run = |name: &str| runs.join(name);
    let train = |name: &str, extra: &[&str], code: i32| {
        codex()
            .args(tiny_args(&input, &run(name), extra))
            .assert()
            .code(code);
    };
    train("completed", &["training.steps=4"], 0);
    train("interrupted", &["--stop-at-step=2"], 130);
    train(
        "anomaly",
        &[
            "optimizer.lr=1e30",
            "schedule.warmup_steps=0",
            "training.max_anomalies=2",
            "training.clip_norm=0",
        ],
        1,
    );
    // An LR too small to move an f32 weight: the step-2 eval is no better than step 1's (the
    // untrained baseline at step 0 does not count), so a patience of one eval stops it there.
    train(
        "early",
        &[
            "optimizer.lr=1e-30",
            "training.eval_every=1",
            "training.early_stopping_patience=1",
        ],
        0,
    );
    let missing = dir.path().join("missing.txt").display().to_string();
    codex()
        .args(tiny_args(&missing, &run("failed"), &[]))
        .assert()
        .code(1);

    let live_args = tiny_args(&input, &run("live"), &["training.steps=100000"]);
    let live = spawn_until_first_step(&live_args, &run("live"));
    let states = run_states(dir.path());
    drop(live); // SIGKILL: no end event
    let after_kill = run_states(dir.path());

    let state = |name: &str| states[name]["state"].as_str().unwrap().to_string();
    for (name, want) in [
        ("completed", "completed"),
        ("interrupted", "interrupted"),
        ("anomaly", "anomaly-stopped"),
        ("early", "early-stopped"),
        ("failed", "failed"),
        ("live", "running"),
    ] {
        assert_eq!(state(name), want, "{name}: {}", states[name]);
    }
    assert_eq!(
        after_kill["live"]["state"], "crashed",
        "{}",
        after_kill["live"]
    );
    assert_eq!(after_kill["completed"]["state"], "completed");
    assert!(
        states["failed"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing.txt")),
        "{}",
        states["failed"]
    );
    // The val loss is reported with the step it was measured at: the last eval's.
    for (name, step) in [("completed", 4), ("interrupted", 0), ("early", 2)] {
        let (at, loss) = last_eval(&run(name));
        assert_eq!(at, step, "{name}: last eval");
        assert_eq!(
            states[name]["val_loss_step"], at,
            "{name}: {}",
            states[name]
        );
        assert_eq!(states[name]["val_loss"].as_f64(), Some(loss), "{name}");
    }
    assert_eq!(states["early"]["last_step"], 2, "{}", states["early"]);
}

/// The `start` events of a run.
fn starts(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["event"] == "start").collect()
}

/// A first segment of `tiny.toml` with `training.steps=steps` into `run`, interrupted after
/// step 2 (exit 130); returns its stderr.
fn stopped_at_step_2(run: &Path, steps: u64) -> String {
    let input = corpus(run.parent().unwrap());
    let steps = format!("training.steps={steps}");
    let args = tiny_args(&input, run, &[steps.as_str(), "--stop-at-step=2"]);
    expect_exit(codex().args(args), 130).stderr
}

#[test]
fn resume_keeps_every_invocation() {
    let dir = tempdir();
    let run = dir.path().join("r");
    stopped_at_step_2(&run, 4);
    codex()
        .args(["train", "--resume", "-o"])
        .arg(&run)
        .arg("training.steps=6")
        .assert()
        .success();

    let steps_in = |file: &str| -> String {
        let text = std::fs::read_to_string(run.join(file)).unwrap();
        let training = text.split("[training]").nth(1).expect("a [training] table");
        training
            .lines()
            .find(|l| l.starts_with("steps ="))
            .expect("training.steps")
            .to_string()
    };
    assert_eq!(steps_in("config.toml"), "steps = 6");
    assert_eq!(steps_in("segments/config-1.toml"), "steps = 4");
    assert_eq!(steps_in("segments/config-2.toml"), "steps = 6");

    let prov = json_of(&std::fs::read(run.join("provenance.json")).unwrap());
    let inv = prov["invocations"].as_array().unwrap();
    assert_eq!(inv.len(), 2, "{inv:?}");
    assert_eq!(inv[0]["segment"], 1);
    assert_eq!(inv[1]["segment"], 2);
    assert!(inv[0]["resumed_from"].is_null(), "{}", inv[0]);
    assert!(
        inv[1]["resumed_from"]
            .as_str()
            .is_some_and(|p| p.ends_with("checkpoints/step-00000002")),
        "{}",
        inv[1]
    );
    assert!(
        inv[1]["overrides"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "training.steps=6"),
        "{}",
        inv[1]
    );
    assert_eq!(inv[1]["config_file"], "segments/config-2.toml");

    let events = lines(&run.join("metrics.ndjson"));
    let starts = starts(&events);
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0]["run_id"], starts[1]["run_id"]);
    assert_eq!(starts[1]["invocation"]["segment"], 2);
    // The run's first eval (the step-0 baseline of segment 1), not the resumed segment's.
    let first_eval = events.iter().find(|e| e["event"] == "eval").unwrap();
    assert_eq!(first_eval["step"], 0);
    let end = events.last().unwrap();
    assert_eq!(end["status"], "completed");
    assert_eq!(end["steps"], 6);
    assert_eq!(end["first_val_loss"], first_eval["val_loss"], "{end}");
}

#[test]
fn printed_continue_command_continues_the_same_run() {
    let dir = tempdir();
    // A name the shell must quote.
    let run = dir.path().join("my run");
    let stderr = stopped_at_step_2(&run, 6);
    let command = stderr
        .lines()
        .find_map(|l| l.split_once("Continue with: "))
        .map(|(_, c)| c.to_string())
        .unwrap_or_else(|| panic!("no continue command: {stderr}"));
    assert!(command.starts_with("codex train --resume"), "{command}");

    shell(&command).assert().success();
    let events = lines(&run.join("metrics.ndjson"));
    let starts = starts(&events);
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0]["run_id"], starts[1]["run_id"]);
    let resumed = &starts[1]["resumed"];
    assert_eq!(resumed["step"], 2, "{}", starts[1]);
    assert!(
        resumed["from"]
            .as_str()
            .is_some_and(|p| p.ends_with("checkpoints/step-00000002")),
        "{resumed}"
    );
    let end = events.last().unwrap();
    assert_eq!(end["run_id"], starts[0]["run_id"]);
    assert_eq!(end["status"], "completed");
    assert_eq!(end["steps"], 6);
    assert_eq!(end["total_steps"], 6);
    // The second segment's steps follow on from the checkpoint.
    let second: Vec<u64> = events
        .iter()
        .skip_while(|e| !std::ptr::eq(*e, starts[1]))
        .filter(|e| e["event"] == "step")
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(second, [3, 4, 5, 6]);
    assert!(
        run.join("checkpoints/step-00000006/MANIFEST.json")
            .is_file()
    );
}

/// The steps of the plain `step S/T: loss …` lines on stderr.
fn step_lines(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("step "))
        .filter_map(|l| l.split_once(": loss "))
        .map(|(s, _)| {
            let (step, total) = s.split_once('/').expect("step S/T");
            assert_eq!(total, "6", "{s}");
            step.parse().unwrap()
        })
        .collect()
}

#[test]
fn non_tty_prints_plain_step_lines() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let extra = ["training.steps=6", "training.log_every=2"];
    let plain = expect_exit(
        codex().args(tiny_args(&input, &dir.path().join("plain"), &extra)),
        0,
    );
    assert_eq!(step_lines(&plain.stderr), [2, 4, 6], "{}", plain.stderr);

    let json = expect_exit(
        codex()
            .arg("--json")
            .args(tiny_args(&input, &dir.path().join("json"), &extra)),
        0,
    );
    assert_eq!(step_lines(&json.stderr), [] as [u64; 0], "{}", json.stderr);
    let steps = crate::support::ndjson(json.stdout.as_bytes())
        .into_iter()
        .filter(|e| e["event"] == "step")
        .count();
    assert_eq!(steps, 3);
}

#[test]
fn default_output_dir_is_versioned() {
    let dir = tempdir();
    let quick = [
        "training.steps=2",
        "training.eval_every=0",
        "training.eval_at_start=false",
        "training.eval_batches=1",
        "data.context_length=32",
        "training.batch_size=2",
    ];
    let train = || {
        let mut cmd = codex();
        cmd.current_dir(dir.path()).arg("train").args(quick);
        cmd
    };
    let first = expect_exit(&mut train(), 0);
    assert!(!first.stderr.contains("earlier run"), "{}", first.stderr);
    let second = expect_exit(&mut train(), 0);
    assert!(
        second
            .stderr
            .contains("runs/default holds an earlier run; this run goes to runs/default-2"),
        "{}",
        second.stderr
    );
    for d in ["runs/default", "runs/default-2"] {
        let end = lines(&dir.path().join(d).join("metrics.ndjson"))
            .pop()
            .unwrap();
        assert_eq!(end["status"], "completed", "{d}: {end}");
    }
    // Named explicitly, a directory holding a run is refused without --resume.
    let refused = expect_exit(train().args(["-o", "runs/default"]), 1);
    assert!(refused.stderr.contains("--resume"), "{}", refused.stderr);
    assert!(!dir.path().join("runs/default-3").exists());
}

#[test]
fn sigint_before_the_first_step_says_no_checkpoint() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("r");
    let stderr = expect_exit(
        codex().args(tiny_args(&input, &run, &["--stop-at-step=0"])),
        130,
    )
    .stderr;
    assert!(
        stderr.contains("interrupted before the first step; no checkpoint was written"),
        "{stderr}"
    );
    assert!(!stderr.contains("Continue with"), "{stderr}");
    let checkpoints: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(checkpoints.is_empty(), "{checkpoints:?}");
    let end = lines(&run.join("metrics.ndjson")).pop().unwrap();
    assert_eq!(end["status"], "interrupted");
    assert_eq!(end["steps"], 0);
    assert!(end["last_checkpoint"].is_null(), "{end}");
    // The printed command starts the run again, as a fresh run in the same directory.
    let (_, again) = stderr
        .split_once("Start again with: ")
        .unwrap_or_else(|| panic!("no restart command: {stderr}"));
    shell(again.trim_end()).assert().success();
    let end = lines(&run.join("metrics.ndjson")).pop().unwrap();
    assert_eq!(end["status"], "completed");
    assert_eq!(end["steps"], 12);
}
