//! One command line: each renamed flag works under its new spelling and its old one (hidden
//! from `--help`), overrides by `--set`, the did-you-mean of a config passed without `-c`.

use crate::support::{
    codex, corpus, expect_exit, fixture, json_of, lines, stdout_of, tempdir, tiny_args,
};
use std::path::Path;

/// The `--help` of a command, for checking which spellings it shows.
fn help(args: &[&str]) -> String {
    stdout_of(codex().args(args).arg("--help"))
}

/// Asserts `help` lists `new` and does not list `old`.
fn shows_only(help: &str, new: &str, old: &str) {
    assert!(help.contains(new), "{new} missing from:\n{help}");
    let listed = help
        .lines()
        .any(|l| l.trim_start().split([' ', ',']).any(|w| w == old));
    assert!(!listed, "{old} is still listed in:\n{help}");
}

#[test]
fn train_takes_set_and_positional_overrides_alike() {
    let dir = tempdir();
    let input = corpus(dir.path());
    for (name, spelling) in [("new", true), ("old", false)] {
        let run = dir.path().join(name);
        let mut args = tiny_args(&input, &run, &[]);
        if spelling {
            args.extend(["--set".into(), "training.steps=3".into()]);
        } else {
            args.push("training.steps=3".into());
        }
        codex().args(&args).assert().success();
        let end = lines(&run.join("metrics.ndjson")).pop().unwrap();
        assert_eq!(end["steps"], 3, "{name}");
    }
    shows_only(&help(&["train"]), "--set <KEY=VALUE>", "[KEY=VALUE]...");
}

#[test]
fn train_system_metrics_interval_in_ms_and_the_old_seconds() {
    let dir = tempdir();
    let input = corpus(dir.path());
    for (name, flag) in [
        ("new", "--system-metrics-interval-ms=300"),
        ("old", "--system-metrics-interval=0.3"),
    ] {
        let run = dir.path().join(name);
        let args = tiny_args(
            &input,
            &run,
            &["training.steps=2", "--system-metrics=cpu", flag],
        );
        codex().args(&args).assert().success();
        let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(cfg.contains("interval_ms = 300"), "{name}: {cfg}");
    }
    shows_only(
        &help(&["train"]),
        "--system-metrics-interval-ms",
        "--system-metrics-interval",
    );
}

#[test]
fn a_config_passed_without_dash_c_gets_a_did_you_mean() {
    let dir = tempdir();
    let cfg = dir.path().join("my.toml");
    std::fs::copy(fixture("train/tiny.toml"), &cfg).unwrap();
    for path in [cfg.display().to_string(), "missing.toml".into()] {
        let out = expect_exit(codex().current_dir(dir.path()).args(["train", &path]), 2);
        assert!(
            out.stderr.contains(&format!("did you mean `-c {path}`?")),
            "{}",
            out.stderr
        );
    }
    assert!(!dir.path().join("runs").exists(), "a run was started");
    let out = expect_exit(
        codex().args(["config", "show", &cfg.display().to_string()]),
        2,
    );
    assert!(out.stderr.contains("did you mean `-c"), "{}", out.stderr);
}

#[test]
fn config_show_and_validate_take_dash_c_and_set() {
    let tiny = fixture("train/tiny.toml").display().to_string();
    for args in [
        vec!["config", "show", "-c", &tiny, "--set", "training.steps=7"],
        vec!["config", "show", "-c", &tiny, "training.steps=7"],
    ] {
        let out = stdout_of(codex().args(&args));
        assert!(out.contains("steps = 7"), "{args:?}: {out}");
    }
    for args in [
        vec!["config", "validate", "-c", &tiny],
        vec!["config", "validate", "--config", &tiny, "training.steps=7"],
        vec![
            "config",
            "validate",
            "-c",
            &tiny,
            "--set",
            "training.steps=7",
        ],
        vec!["config", "validate", &tiny, "training.steps=7"],
    ] {
        let out = stdout_of(codex().args(&args));
        assert!(out.contains("valid"), "{args:?}: {out}");
    }
    // The override is applied: a bad value is caught under either spelling.
    for args in [
        vec![
            "config",
            "validate",
            "-c",
            &tiny,
            "--set",
            "training.steps=-1",
        ],
        vec!["config", "validate", "-c", &tiny, "training.steps=-1"],
    ] {
        expect_exit(codex().args(&args), 1);
    }
    let out = expect_exit(codex().args(["config", "validate"]), 2);
    assert!(out.stderr.contains("--config <FILE>"), "{}", out.stderr);
}

#[test]
fn fp16_is_refused_with_the_reason_and_what_to_use() {
    let tiny = fixture("train/tiny.toml").display().to_string();
    for v in ["fp16", "f16"] {
        let out = expect_exit(
            codex().args([
                "config",
                "validate",
                "-c",
                &tiny,
                "--set",
                &format!("training.dtype={v:?}"),
            ]),
            1,
        );
        assert!(out.stderr.contains("loss scaling"), "{}", out.stderr);
        assert!(out.stderr.contains("use `bf16`"), "{}", out.stderr);
    }
}

#[test]
fn eval_output_and_the_old_out() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("run");
    codex()
        .args(tiny_args(&input, &run, &["training.steps=2"]))
        .assert()
        .success();
    for flag in ["--output", "--out", "-o"] {
        let out = dir.path().join(flag.trim_start_matches('-'));
        codex()
            .args(["eval", &run.display().to_string(), "--max-batches", "1"])
            .arg(flag)
            .arg(&out)
            .assert()
            .success();
        assert!(out.join("eval.ndjson").is_file(), "{flag}");
    }
    shows_only(&help(&["eval"]), "--output <DIR>", "--out");
}

#[test]
fn tokenizer_train_output_and_text_field_with_the_old_spellings() {
    let dir = tempdir();
    let data = dir.path().join("d.jsonl");
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!("{{\"text\": \"def f{i}(x): return x + {i}\"}}\n"));
    }
    std::fs::write(&data, text).unwrap();
    let data = data.display().to_string();
    for (name, out_flag, field_flag) in [
        ("new", "--output", "--text-field"),
        ("old", "--out", "--jsonl-field"),
    ] {
        let out = dir.path().join(name);
        codex()
            .args(["tokenizer", "train", &data, "--vocab-size", "300"])
            .args(["--min-frequency", "1", field_flag, "text", out_flag])
            .arg(&out)
            .assert()
            .success();
        assert!(out.join("tokenizer.json").is_file(), "{name}");
    }
    let h = help(&["tokenizer", "train"]);
    shows_only(&h, "--output <DIR>", "--out");
    shows_only(&h, "--text-field <FIELD>", "--jsonl-field");
}

#[test]
fn repo_map_output_and_the_old_json_path() {
    let dir = tempdir();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a.py"), "def f():\n    return 1\n").unwrap();
    for flag in ["--output", "--json-path", "-o"] {
        let file = dir
            .path()
            .join(format!("{}.json", flag.trim_start_matches('-')));
        codex()
            .args(["repo-map", &tree.display().to_string(), flag])
            .arg(&file)
            .assert()
            .success();
        json_of(&std::fs::read(&file).unwrap());
    }
    shows_only(&help(&["repo-map"]), "--output <FILE>", "--json-path");
}

#[test]
fn metrics_mode_interval_ms_and_output_with_the_old_spellings() {
    let dir = tempdir();
    for (name, args) in [
        (
            "new",
            ["--mode", "cpu", "--interval-ms", "200", "--output"].as_slice(),
        ),
        ("old", ["--no-gpu", "--interval", "0.2", "--out"].as_slice()),
    ] {
        let file = dir.path().join(format!("{name}.ndjson"));
        codex()
            .args(["metrics", "watch", "--count", "2"])
            .args(args)
            .arg(&file)
            .assert()
            .success();
        let samples = lines(&file);
        assert_eq!(samples.len(), 2, "{name}");
        assert_eq!(samples[0]["gpu_status"], "not-requested", "{name}");
    }
    let h = help(&["metrics", "watch"]);
    shows_only(&h, "--interval-ms <MS>", "--interval");
    shows_only(&h, "--mode <MODE>", "--no-gpu");
    shows_only(&h, "--output <FILE.ndjson>", "--out");
    let out = expect_exit(codex().args(["metrics", "watch", "--interval-ms", "50"]), 1);
    assert!(out.stderr.contains("at least 200"), "{}", out.stderr);
}

#[test]
fn lora_merge_and_data_scan_take_output() {
    // Both spellings parse (the merge then fails on the missing base: exit 1, not a usage
    // error).
    let dir = tempdir();
    for flag in ["--output", "--out", "-o"] {
        let out = expect_exit(
            codex()
                .args(["model", "lora", "merge", "--base", "/nonexistent/base"])
                .args(["--adapter", "/nonexistent/adapter", flag])
                .arg(dir.path().join("m")),
            1,
        );
        assert!(
            !out.stderr.contains("unexpected argument"),
            "{}",
            out.stderr
        );
    }
    shows_only(
        &help(&["model", "lora", "merge"]),
        "--output <DIR>",
        "--out",
    );
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "contact me at someone@example.com\n").unwrap();
    for flag in ["--output", "--out"] {
        let out = dir
            .path()
            .join(format!("red-{}", flag.trim_start_matches('-')));
        let _ = codex()
            .args([
                "data",
                "scan",
                &data.display().to_string(),
                "--redact",
                flag,
            ])
            .arg(&out)
            .output()
            .unwrap();
        let red = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{flag}: {e}"));
        assert!(!red.contains("someone@example.com"), "{flag}: {red}");
    }
    shows_only(&help(&["data", "scan"]), "--output <OUT>", "--out");
}

#[test]
fn sweep_writes_into_output() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let tiny = fixture("train/tiny.toml").display().to_string();
    let out = dir.path().join("sw");
    codex()
        .args([
            "sweep",
            "-c",
            &tiny,
            "--grid",
            "training.steps=2,3",
            "--set",
        ])
        .arg(format!("data.inputs=[{input:?}]"))
        .arg("--output")
        .arg(&out)
        .assert()
        .success();
    assert!(Path::new(&out.join("training.steps=3/metrics.ndjson")).is_file());
}

#[test]
fn completions_for_each_shell() {
    let dir = tempdir();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef codex"),
        ("fish", "complete -c codex"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = stdout_of(codex().args(["completions", shell]));
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        // Subcommands and their renamed flags are in it.
        assert!(script.contains("sweep"), "{shell}");
        assert!(script.contains("interval-ms"), "{shell}");
        if shell == "bash" {
            let file = dir.path().join("codex.bash");
            std::fs::write(&file, &script).unwrap();
            let ok = std::process::Command::new("bash")
                .arg("-n")
                .arg(&file)
                .status()
                .unwrap();
            assert!(ok.success(), "the bash script does not parse");
        }
    }
    expect_exit(codex().args(["completions", "tcsh"]), 2);
}

#[test]
fn man_pages_go_into_the_given_directory() {
    let dir = tempdir();
    let out = dir.path().join("man/pages");
    codex().args(["man", "-o"]).arg(&out).assert().success();
    for page in [
        "codex.1",
        "codex-train.1",
        "codex-sweep.1",
        "codex-model-lora-merge.1",
    ] {
        let text =
            std::fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie \\n(.g .ds Aq") || text.contains(".TH"),
            "{page}"
        );
    }
    let train = std::fs::read_to_string(out.join("codex-train.1")).unwrap();
    assert!(
        train.contains("system\\-metrics\\-interval\\-ms"),
        "{train}"
    );
}

#[test]
fn metrics_attach_to_another_process_tree_with_pid() {
    // A shell with two children: a tree of three processes that is not codex's own.
    let mut job = std::process::Command::new("sh")
        .args(["-c", "sleep 10 & sleep 10 & wait"])
        .spawn()
        .unwrap();
    let pid = job.id().to_string();
    let t0 = std::time::Instant::now();
    let mut count = 0;
    while t0.elapsed().as_secs() < 20 {
        let s = json_of(
            stdout_of(codex().args([
                "metrics", "sample", "--json", "--mode", "cpu", "--pid", &pid,
            ]))
            .as_bytes(),
        );
        count = s["proc_count"].as_u64().unwrap();
        if count == 3 {
            break;
        }
    }
    let _ = job.kill();
    let _ = job.wait();
    assert_eq!(count, 3, "the sampled tree is not the job's");
    // The sampler's own tree is one process.
    let own = json_of(
        stdout_of(codex().args(["metrics", "sample", "--json", "--mode", "cpu"])).as_bytes(),
    );
    assert_eq!(own["proc_count"], 1);
    let out = expect_exit(
        codex().args(["metrics", "sample", "--pid", "2147483646", "--mode", "cpu"]),
        1,
    );
    assert!(
        out.stderr.contains("no process with pid 2147483646"),
        "{}",
        out.stderr
    );
}
