//! `codex sweep` end to end: tiny trials as real child `codex train` processes.

use crate::support::{
    codex, codex_process, corpus, expect_exit, fixture, json_of, lines, newest_step, sigint,
    stdout_of, tempdir,
};
use std::path::Path;

/// `sweep -c tiny.toml --set data.inputs=[input] … -o out`, then `extra`.
fn sweep_args(input: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "sweep".into(),
        "-c".into(),
        fixture("train/tiny.toml").display().to_string(),
        "--set".into(),
        format!("data.inputs=[{input:?}]"),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

const GRID: [&str; 4] = [
    "--grid",
    "optimizer.lr=3e-3,1e-2",
    "--grid",
    "training.batch_size=2,4",
];

/// The rows of `summary.csv` as (trial, status, best metric).
fn summary(dir: &Path) -> Vec<(String, String, Option<f64>)> {
    let text = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    let mut rows = text.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    assert_eq!(
        header[..4],
        ["trial", "overrides", "status", "best_val_loss"]
    );
    rows.map(|l| {
        // No field of these trials needs quoting.
        let f: Vec<&str> = l.split(',').collect();
        (f[0].to_string(), f[2].to_string(), f[3].parse().ok())
    })
    .collect()
}

#[test]
fn grid_of_four_runs_four_trials_sorted_and_a_rerun_trains_nothing() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let out = dir.path().join("sw");
    let mut args = sweep_args(&input, &out, &GRID);
    args.extend(["--parallel".into(), "2".into()]);
    let report = json_of(stdout_of(codex().arg("--json").args(&args)).as_bytes());
    let names = [
        "optimizer.lr=3e-3_training.batch_size=2",
        "optimizer.lr=3e-3_training.batch_size=4",
        "optimizer.lr=1e-2_training.batch_size=2",
        "optimizer.lr=1e-2_training.batch_size=4",
    ];
    for n in names {
        let run = out.join(n);
        // An ordinary run directory, with the trial's overrides in its config.
        assert!(run.join("checkpoints").is_dir(), "{n}");
        let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
        let lr = n
            .split('_')
            .next()
            .unwrap()
            .trim_start_matches("optimizer.lr=");
        assert!(
            cfg.contains(&format!("lr = {}", lr.parse::<f64>().unwrap())),
            "{n}: {cfg}"
        );
        assert_eq!(
            lines(&run.join("metrics.ndjson")).pop().unwrap()["status"],
            "completed"
        );
    }
    let rows = summary(&out);
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.1 == "completed"), "{rows:?}");
    let best: Vec<f64> = rows.iter().map(|r| r.2.unwrap()).collect();
    assert!(
        best.windows(2).all(|w| w[0] <= w[1]),
        "not sorted: {best:?}"
    );
    // Each best is the lowest val_loss the trial's own record holds.
    for (name, _, b) in &rows {
        let low = lines(&out.join(name).join("metrics.ndjson"))
            .iter()
            .filter(|e| e["event"] == "eval")
            .map(|e| e["val_loss"].as_f64().unwrap())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(b.unwrap(), low, "{name}");
    }
    assert_eq!(report["best"], rows[0].0.as_str());
    assert_eq!(report["trials"].as_array().unwrap().len(), 4);

    // Again: every trial is skipped; no record changes.
    let before: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(out.join(n).join("metrics.ndjson")).unwrap())
        .collect();
    let again = expect_exit(codex().args(&args), 0);
    assert_eq!(again.stderr.matches("finished earlier, skipped").count(), 4);
    for (n, b) in names.iter().zip(&before) {
        assert_eq!(
            &std::fs::read(out.join(n).join("metrics.ndjson")).unwrap(),
            b
        );
    }
}

#[test]
fn dry_run_prints_the_matrix_and_trains_nothing() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let out = dir.path().join("sw");
    let mut args = sweep_args(&input, &out, &GRID);
    args.extend(["--seeds".into(), "2".into(), "--dry-run".into()]);
    let text = stdout_of(codex().args(&args));
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 8, "{text}");
    assert_eq!(
        rows[0],
        "optimizer.lr=3e-3_training.batch_size=2_training.seed=1234\t\
         optimizer.lr=3e-3 training.batch_size=2 training.seed=1234"
    );
    assert!(!out.exists(), "a dry run created the sweep directory");
}

#[test]
fn a_changed_grid_is_refused_unless_forced() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let out = dir.path().join("sw");
    codex()
        .args(sweep_args(
            &input,
            &out,
            &["--grid", "optimizer.lr=3e-3,1e-2"],
        ))
        .assert()
        .success();
    let changed = sweep_args(&input, &out, &["--grid", "optimizer.lr=3e-3,1e-3"]);
    let refused = expect_exit(codex().args(&changed), 1);
    assert!(
        refused.stderr.contains("trial matrix changed"),
        "{}",
        refused.stderr
    );
    assert!(!out.join("optimizer.lr=1e-3").exists());
    // A changed base config is refused as well.
    let based = sweep_args(
        &input,
        &out,
        &[
            "--grid",
            "optimizer.lr=3e-3,1e-2",
            "--set",
            "training.steps=6",
        ],
    );
    let refused = expect_exit(codex().args(&based), 1);
    assert!(
        refused.stderr.contains("base config changed"),
        "{}",
        refused.stderr
    );
    // --force with the same base keeps the unchanged trial and trains the new one.
    let mut forced = changed.clone();
    forced.push("--force".into());
    let ok = expect_exit(codex().args(&forced), 0);
    assert!(
        ok.stderr
            .contains("optimizer.lr=3e-3: finished earlier, skipped"),
        "{}",
        ok.stderr
    );
    assert!(out.join("optimizer.lr=1e-3/checkpoints").is_dir());
}

#[test]
fn an_interrupted_sweep_stops_its_trials_cleanly_and_resumes_them() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let out = dir.path().join("sw");
    let args = sweep_args(
        &input,
        &out,
        &["--grid", "training.steps=80,81,82", "--parallel", "2"],
    );
    let names = ["training.steps=80", "training.steps=81"];
    let mut child = codex_process()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while names.iter().any(|n| newest_step(&out.join(n)) < 4) {
        assert!(t0.elapsed().as_secs() < 60, "the trials never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Ctrl-C to the sweep only: it forwards it to both running trials.
    sigint(&child);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    for n in names {
        let run = out.join(n);
        let end = lines(&run.join("metrics.ndjson")).pop().unwrap();
        assert_eq!(end["status"], "interrupted", "{n}");
        let step = end["steps"].as_u64().unwrap();
        assert!(step < 80, "{n} ran to the end: {end}");
        assert!(
            run.join(format!("checkpoints/step-{step:08}/MANIFEST.json"))
                .is_file(),
            "{n}: no checkpoint at the interrupted step {step}"
        );
    }
    assert!(
        !out.join("training.steps=82").exists(),
        "a trial started after Ctrl-C"
    );

    codex().args(&args).assert().success();
    for (n, steps) in names.iter().zip([80, 81]) {
        let end = lines(&out.join(n).join("metrics.ndjson")).pop().unwrap();
        assert_eq!(end["status"], "completed", "{n}");
        assert_eq!(end["steps"], steps, "{n}");
        assert!(
            end["resumed_from"]
                .as_str()
                .is_some_and(|p| p.contains("checkpoints/step-")),
            "{n} was not resumed from a checkpoint: {end}"
        );
    }
    let rows = summary(&out);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.1 == "completed"), "{rows:?}");
}

#[test]
fn the_median_rule_prunes_a_bad_trial() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let out = dir.path().join("sw");
    // lr 1e-7 barely moves from the untrained loss: worse than the median at step 6.
    let args = sweep_args(
        &input,
        &out,
        &[
            "--grid",
            "optimizer.lr=3e-3,1e-7",
            "--set",
            "training.steps=100",
            "--set",
            "checkpoint.every=50",
            "--prune",
            "median",
            "--prune-startup-trials",
            "1",
        ],
    );
    let report = json_of(stdout_of(codex().arg("--json").args(&args)).as_bytes());
    let trials = report["trials"].as_array().unwrap();
    let by = |n: &str| trials.iter().find(|t| t["trial"] == n).unwrap().clone();
    let good = by("optimizer.lr=3e-3");
    let bad = by("optimizer.lr=1e-7");
    assert_eq!(good["status"], "completed");
    assert_eq!(bad["status"], "pruned");
    assert!(bad["steps"].as_u64().unwrap() < 100, "{bad}");
    assert_eq!(report["best"], "optimizer.lr=3e-3");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(state["pruned"]["optimizer.lr=1e-7"], 6);
    // A pruned trial stays pruned: the re-run does not train it again.
    let again = expect_exit(codex().args(&args), 0);
    assert!(
        again
            .stderr
            .contains("optimizer.lr=1e-7: pruned earlier, skipped"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_sweep_file_gives_the_same_plan_and_random_samples_are_reproducible() {
    let dir = tempdir();
    let input = corpus(dir.path());
    std::fs::copy(fixture("train/tiny.toml"), dir.path().join("base.toml")).unwrap();
    // Paths in the file are relative to it; flags add to and override it.
    std::fs::write(
        dir.path().join("sweep.toml"),
        format!(
            "[sweep]\nconfig = \"base.toml\"\noutput = \"out\"\nset = ['data.inputs=[{input:?}]']\n\
             seeds = 2\nsample_seed = 3\ntrials = 2\n\
             [sweep.grid]\n\"optimizer.lr\" = [3e-3, 1e-2]\n\
             [sweep.random]\n\"optimizer.weight_decay\" = \"1e-4:1e-1:log\"\n"
        ),
    )
    .unwrap();
    let file = dir.path().join("sweep.toml").display().to_string();
    let plan = json_of(stdout_of(codex().args(["--json", "sweep", &file, "--dry-run"])).as_bytes());
    let trials = plan["trials"].as_array().unwrap();
    // 2 grid values × 2 random samples × 2 seeds.
    assert_eq!(trials.len(), 8);
    assert_eq!(plan["dir"], dir.path().join("out").display().to_string());
    assert_eq!(trials[0]["overrides"][0], "optimizer.lr=0.003");
    assert_eq!(trials[0]["overrides"][2], "training.seed=1234");
    assert_eq!(trials[1]["overrides"][2], "training.seed=1235");
    // Seeds share a sample; the samples differ.
    assert_eq!(trials[0]["overrides"][1], trials[1]["overrides"][1]);
    assert_ne!(trials[0]["overrides"][1], trials[2]["overrides"][1]);
    let again =
        json_of(stdout_of(codex().args(["--json", "sweep", &file, "--dry-run"])).as_bytes());
    assert_eq!(
        plan["trials"], again["trials"],
        "the same sample seed drew other values"
    );
    let other = json_of(
        stdout_of(codex().args(["--json", "sweep", &file, "--dry-run", "--sample-seed", "4"]))
            .as_bytes(),
    );
    assert_ne!(plan["trials"], other["trials"]);
    assert!(!dir.path().join("out").exists());
    // A key the config does not have is refused before anything runs.
    let bad = expect_exit(
        codex()
            .args(["sweep", &file, "--grid", "optimizer.lrr=1,2", "-o"])
            .arg(dir.path().join("bad")),
        1,
    );
    assert!(bad.stderr.contains("optimizer.lrr"), "{}", bad.stderr);
    assert!(!dir.path().join("bad").exists());
}
