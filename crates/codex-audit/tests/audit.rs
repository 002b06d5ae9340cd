//! Fixture trees and run directories built in temp dirs.

use codex_audit::repomap::{self, Options};
use codex_audit::status::{self, Capability, Level, RunState, StatusInput};
use std::fs;
use std::path::Path;

fn write(root: &Path, rel: &str, bytes: impl AsRef<[u8]>) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

fn lang_tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(
        r,
        "src/lib.rs",
        "//! Crate doc.\n\n/// Adds.\npub fn add(a: i32, b: i32) -> i32 {\n    a + b // sum\n}\n\npub struct Point;\n",
    );
    write(
        r,
        "src/main.rs",
        "fn main() {\n    println!(\"{}\", mylib::add(1, 2));\n}\n",
    );
    write(
        r,
        "tools/run.py",
        "#!/usr/bin/env python3\n# tool\n\ndef main():\n    return add()\n\nclass Runner:\n    def go(self): pass\n",
    );
    write(r, "scripts/deploy", "#!/usr/bin/env bash\necho hi\n");
    write(r, "Cargo.toml", "[package]\nname = \"x\" # n\n");
    write(r, "README.md", "# X\n\ntext\n");
    write(r, "data/blob.bin", [0u8, 1, 2, 3]);
    write(r, ".gitignore", "ignored/\n*.log\n");
    write(r, "ignored/big.rs", "fn hidden() {}\n");
    write(r, "debug.log", "x\n");
    write(r, ".hidden/secret.rs", "fn s() {}\n");
    d
}

#[test]
fn languages_counts_symbols_and_gitignore() {
    let d = lang_tree();
    let map = repomap::build(d.path(), &Options::default()).unwrap();
    let paths: Vec<&str> = map.files.iter().map(|f| f.path.as_str()).collect();
    // Sorted, gitignored and hidden files absent, extensionless script found by its shebang.
    assert_eq!(
        paths,
        [
            "Cargo.toml",
            "README.md",
            "scripts/deploy",
            "src/lib.rs",
            "src/main.rs",
            "tools/run.py"
        ]
    );
    let rust = map.languages["Rust"];
    // Values checked with tokei 15 on the same files: lib.rs 4 code / 2 comments / 2 blanks
    // (doc comments are Markdown children), main.rs 3 code.
    assert_eq!(
        (rust.files, rust.code, rust.comments, rust.blanks),
        (2, 7, 2, 2)
    );
    assert_eq!(map.languages["BASH"].code, 1);
    let lib = map.files.iter().find(|f| f.path == "src/lib.rs").unwrap();
    let syms: Vec<&str> = lib.symbols.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(syms, ["add", "Point"]);
    let py = map.files.iter().find(|f| f.path == "tools/run.py").unwrap();
    let syms: Vec<&str> = py.symbols.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(syms, ["main", "Runner", "Runner.go"]);
    assert_eq!(
        map.other_files, 1,
        "data/blob.bin is walked but not counted"
    );
    let roles: Vec<(&str, &str)> = map
        .directories
        .iter()
        .map(|d| (d.name.as_str(), d.role))
        .collect();
    assert!(roles.contains(&("src", "source")) && roles.contains(&("tools", "scripts and tools")));
    let keys: Vec<&str> = map.key_files.iter().map(|k| k.path.as_str()).collect();
    assert_eq!(keys, ["Cargo.toml", "README.md"]);
}

#[test]
fn output_is_deterministic_and_ranked_view_fits_budget() {
    let d = lang_tree();
    let a = serde_json::to_string(&repomap::build(d.path(), &Options::default()).unwrap()).unwrap();
    let b = serde_json::to_string(&repomap::build(d.path(), &Options::default()).unwrap()).unwrap();
    assert_eq!(a, b);
    let map = repomap::build(d.path(), &Options { rank: true }).unwrap();
    // `add` (lib.rs) is mentioned by main.rs and run.py.
    assert_eq!(
        map.files
            .iter()
            .find(|f| f.path == "src/lib.rs")
            .unwrap()
            .refs,
        Some(2)
    );
    let full = repomap::render_text(&map, None, &repomap::estimate_tokens);
    let header_tokens = repomap::estimate_tokens(full.split("tree (").next().unwrap());
    let small = repomap::render_text(&map, Some(header_tokens + 40), &repomap::estimate_tokens);
    assert!(
        small.contains("lib.rs"),
        "the most-referenced file comes first:\n{small}"
    );
    assert!(small.contains("not shown"));
    assert!(repomap::estimate_tokens(&small) <= header_tokens + 60);
}

#[cfg(unix)]
#[test]
fn symlink_loops_and_non_utf8_are_safe() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(
        r,
        "a/x.py",
        b"s = '\xff\xfe'\n# \xc3\x28 bad\n\ndef f(): pass\n",
    );
    std::os::unix::fs::symlink(r, r.join("a/loop")).unwrap();
    std::os::unix::fs::symlink("/", r.join("a/outside")).unwrap();
    std::os::unix::fs::symlink(r.join("a/x.py"), r.join("link.py")).unwrap();
    let map = repomap::build(r, &Options::default()).unwrap();
    assert_eq!(
        map.files.len(),
        1,
        "symlinks are never followed: {:?}",
        map.files
    );
    let f = &map.files[0];
    assert_eq!((f.code, f.comments, f.blanks), (2, 1, 1));
    assert_eq!(f.symbols[0].name, "f");
}

#[test]
fn ten_thousand_files() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..10_000 {
        write(
            d.path(),
            &format!("pkg{}/m{i}.py", i % 100),
            format!("# m{i}\ndef f{i}():\n    return {i}\n"),
        );
    }
    let map = repomap::build(d.path(), &Options::default()).unwrap();
    let py = map.languages["Python"];
    assert_eq!((py.files, py.code, py.comments), (10_000, 20_000, 10_000));
    assert_eq!(map.directories.len(), 100);
}

#[test]
fn placeholder_scan_finds_markers_with_locations() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    // Markers are assembled so this test file holds none of them literally.
    let todo = ["TO", "DO"].concat();
    let nie = ["NotImplemented", "Error"].concat();
    let mac = ["todo", "!()"].concat();
    write(
        r,
        "src/a.rs",
        format!(
            "fn a() {{\n    {mac}\n}}\n// {todo}: later\n// TODOS is a word, not a marker\n#[cfg(test)]\nmod t {{ // {todo} in tests is ignored\n}}\n"
        ),
    );
    write(r, "tools/b.py", format!("def b():\n    raise {nie}\n"));
    write(r, "tests/c.py", format!("# {todo}\n"));
    write(r, "docs/d.md", format!("{todo}\n"));
    write(
        r,
        "src/e.rs",
        format!("// {todo} {}\n", status::allow_marker()),
    );
    let found = status::scan_placeholders(r);
    let got: Vec<String> = found
        .iter()
        .map(|p| format!("{}:{}:{}", p.path, p.line, p.pattern))
        .collect();
    assert_eq!(
        got,
        [
            "src/a.rs:2:todo!",
            "src/a.rs:4:TODO",
            "tools/b.py:2:NotImplementedError"
        ]
    );
}

fn save_ckpt(run: &Path, step: u64, metric: f64) -> std::path::PathBuf {
    use codex_checkpoint::{CheckpointFile, CheckpointManager, CheckpointSpec, RetentionPolicy};
    let mut m = CheckpointManager::open(run, RetentionPolicy::default()).unwrap();
    let saved = m
        .save(CheckpointSpec {
            step,
            metric: Some(metric),
            files: vec![CheckpointFile::bytes("model.bin", vec![step as u8; 1000])],
            trainer_state: serde_json::json!({"step": step}),
            config_hash: String::new(),
        })
        .unwrap();
    saved.dir
}

fn metrics(run: &Path, end: bool) {
    let mut lines = vec![
        r#"{"event":"step","step":1,"train_loss":2.5}"#,
        r#"{"event":"step","step":2,"train_loss":2.0}"#,
        r#"{"event":"eval","step":2,"val_loss":2.2}"#,
        r#"{"event":"anomaly","step":2,"message":"loss spike"}"#,
        r#"{"event":"checkpoint","step":2}"#,
    ];
    if end {
        // Pre-contract form without a status: a normal finish.
        lines.push(r#"{"event":"end","step":2}"#);
    }
    write(run, "metrics.ndjson", lines.join("\n") + "\n");
    write(
        run,
        "system_metrics.ndjson",
        "{\"cpu_util_pct\":10.0,\"gpus\":[{\"gpu_util_pct\":50.0,\"gpu_power_w\":100.0}]}\n{\"cpu_util_pct\":30.0,\"gpus\":[{\"gpu_util_pct\":70.0,\"gpu_power_w\":200.0}]}\n",
    );
    write(run, "config.toml", "seed = 1\n");
    write(run, "provenance.json", "{\"seed\": 1}\n");
}

#[test]
fn runs_valid_corrupt_and_crashed() {
    let d = tempfile::tempdir().unwrap();
    let runs = d.path().join("runs");
    let ok = runs.join("ok");
    metrics(&ok, true);
    save_ckpt(&ok, 2, 2.2);
    let s = status::summarize_run(&ok, true);
    assert_eq!(
        (
            s.last_step,
            s.train_loss,
            s.val_loss,
            s.val_loss_step,
            s.state
        ),
        (Some(2), Some(2.0), Some(2.2), Some(2), RunState::Completed)
    );
    assert_eq!(s.anomalies, ["step 2: loss spike"]);
    assert_eq!(
        (s.cpu_util_pct.mean, s.cpu_util_pct.max),
        (Some(20.0), Some(30.0))
    );
    assert_eq!(
        (s.gpu_power_w.mean, s.gpu_util_pct.max),
        (Some(150.0), Some(70.0))
    );
    assert_eq!(s.checkpoints[0].status, "valid");

    let bad = runs.join("bad");
    metrics(&bad, true);
    let dir = save_ckpt(&bad, 2, 2.2);
    let f = dir.join("model.bin");
    let mut bytes = fs::read(&f).unwrap();
    bytes[10] ^= 0xff; // same size: only a rehash sees it
    fs::write(&f, bytes).unwrap();
    assert_eq!(
        status::summarize_run(&bad, false).checkpoints[0].status,
        "unverified"
    );
    let v = status::summarize_run(&bad, true);
    assert_eq!(v.checkpoints[0].status, "invalid");
    assert!(
        v.checkpoints[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("model.bin")
    );

    // A crashed run: lock file names a process that no longer exists, no end event.
    let crashed = runs.join("crashed");
    metrics(&crashed, false);
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    write(
        &crashed,
        ".lock",
        format!(
            r#"{{"pid":{pid},"host":"{}","started":"2026-01-01T00:00:00Z","command":"codex train"}}"#,
            host.trim()
        ),
    );
    let c = status::summarize_run(&crashed, false);
    assert_eq!(c.state, RunState::Crashed);
    assert!(!c.lock_holder.unwrap().alive);

    // A live run: we hold its lock.
    let live = runs.join("live");
    metrics(&live, false);
    let _lock = codex_checkpoint::RunLock::acquire(&live).unwrap();
    assert_eq!(status::summarize_run(&live, false).state, RunState::Running);

    assert_eq!(status::find_runs(&runs).len(), 4);
}

/// A run directory whose metrics.ndjson holds `events` (one JSON object each).
fn run_with(runs: &Path, name: &str, events: &[serde_json::Value]) -> std::path::PathBuf {
    let run = runs.join(name);
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    write(&run, "metrics.ndjson", text);
    write(&run, "config.toml", "seed = 7\n");
    write(&run, "provenance.json", "{\"seed\": 7}\n");
    run
}

/// Steps `from..=to` of a 400-step run, with an eval at step 200 when it is in range.
fn steps(from: u64, to: u64) -> Vec<serde_json::Value> {
    let mut v = Vec::new();
    for step in from..=to {
        v.push(serde_json::json!({"event": "step", "step": step, "train_loss": 3.0 - step as f64 / 200.0}));
        if step == 200 {
            v.push(serde_json::json!({"event": "eval", "step": 200, "val_loss": 2.31}));
        }
    }
    v
}

fn end(status: &str, step: u64) -> serde_json::Value {
    serde_json::json!({"event": "end", "status": status, "step": step, "steps": step, "total_steps": 400})
}

/// A lock file as codex-checkpoint writes it, naming `pid` on this host.
fn lock_file(run: &Path, pid: u32) {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    write(
        run,
        ".lock",
        format!(
            r#"{{"pid":{pid},"host":"{}","started":"2026-01-01T00:00:00Z","command":"codex train"}}"#,
            host.trim()
        ),
    );
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn every_end_status_is_its_own_state() {
    let d = tempfile::tempdir().unwrap();
    let runs = d.path();
    let cases = [
        ("completed", 400, RunState::Completed),
        ("early_stopped", 250, RunState::EarlyStopped),
        ("interrupted", 58, RunState::Interrupted),
        ("anomaly_stopped", 120, RunState::AnomalyStopped),
        ("failed", 30, RunState::Failed),
    ];
    for (status, at, want) in cases {
        let mut ev = steps(1, at);
        ev.push(end(status, at));
        let s = status::summarize_run(&run_with(runs, status, &ev), false);
        assert_eq!(s.state, want, "{status}");
        assert_eq!(
            (s.last_step, s.total_steps),
            (Some(at), Some(400)),
            "{status}"
        );
        assert!(
            s.ended && s.problems.is_empty(),
            "{status}: {:?}",
            s.problems
        );
    }
    // The states serialize as `codex status --json` shows them.
    let s = status::summarize_run(&runs.join("early_stopped"), false);
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["state"], "early-stopped");
    assert_eq!(
        (v["val_loss"].as_f64(), v["val_loss_step"].as_u64()),
        (Some(2.31), Some(200))
    );
    assert_eq!(v["total_steps"], 400);
    // No eval before step 58: no val loss, and no step to claim for one.
    let s = status::summarize_run(&runs.join("interrupted"), false);
    assert_eq!((s.val_loss, s.val_loss_step), (None, None));
}

#[test]
fn pre_contract_error_end_is_failed_and_keeps_progress() {
    let d = tempfile::tempdir().unwrap();
    // The old trainer wrote failures as status "error" at step 0, with the error chain.
    let mut ev = steps(1, 10);
    ev.push(serde_json::json!({"event": "end", "status": "error", "step": 0, "error": "config: unknown key `lr_max`"}));
    let s = status::summarize_run(&run_with(d.path(), "old", &ev), false);
    assert_eq!(s.state, RunState::Failed);
    assert_eq!(s.last_step, Some(10));
    assert_eq!(s.error.as_deref(), Some("config: unknown key `lr_max`"));

    // A run that died on its config before any step: failed, not finished.
    let ev = [
        serde_json::json!({"event": "end", "status": "error", "step": 0, "error": "invalid config"}),
    ];
    let s = status::summarize_run(&run_with(d.path(), "config-error", &ev), false);
    assert_eq!((s.state, s.last_step), (RunState::Failed, Some(0)));

    // A status nobody defined is not taken for success.
    let mut ev = steps(1, 3);
    ev.push(end("weird", 3));
    let s = status::summarize_run(&run_with(d.path(), "weird", &ev), false);
    assert_eq!(s.state, RunState::Failed);
    assert!(s.problems[0].contains("weird"), "{:?}", s.problems);
}

#[test]
fn resumed_run_takes_the_state_of_its_last_segment() {
    let d = tempfile::tempdir().unwrap();
    let runs = d.path();
    // Interrupted at 58 of 400, resumed from the step-50 checkpoint, completed.
    let mut ev = steps(1, 58);
    ev.push(end("interrupted", 58));
    let first = ev.clone();
    ev.extend(steps(51, 400));
    ev.push(end("completed", 400));
    let s = status::summarize_run(&run_with(runs, "resumed", &ev), false);
    assert_eq!(s.state, RunState::Completed);
    assert_eq!((s.last_step, s.total_steps), (Some(400), Some(400)));
    assert_eq!((s.val_loss, s.val_loss_step), (Some(2.31), Some(200)));

    // The second segment has started and not ended: the old `end` no longer decides.
    let mut ev = first.clone();
    ev.extend(steps(51, 55));
    let run = run_with(runs, "resuming", &ev);
    let s = status::summarize_run(&run, false);
    assert_eq!((s.state, s.ended), (RunState::Crashed, false));
    // Steps went back to the checkpoint: the latest step is shown, not the highest.
    assert_eq!(s.last_step, Some(55));
    lock_file(&run, std::process::id());
    assert_eq!(status::summarize_run(&run, false).state, RunState::Running);

    // An eval alone after the end also opens a new segment.
    let mut ev = first;
    ev.push(serde_json::json!({"event": "eval", "step": 58, "val_loss": 2.9}));
    let s = status::summarize_run(&run_with(runs, "eval-after-end", &ev), false);
    assert_eq!(s.state, RunState::Crashed);
    assert_eq!((s.val_loss, s.val_loss_step), (Some(2.9), Some(58)));
}

#[test]
fn running_and_crashed_come_from_the_lock_holder() {
    let d = tempfile::tempdir().unwrap();
    let runs = d.path();
    // Live: the lock file names this test process.
    let live = run_with(runs, "live", &steps(1, 5));
    lock_file(&live, std::process::id());
    let s = status::summarize_run(&live, false);
    assert_eq!(s.state, RunState::Running);
    assert!(s.lock_holder.unwrap().alive);

    // Holder gone, no end event.
    let dead = run_with(runs, "dead", &steps(1, 5));
    lock_file(&dead, dead_pid());
    let s = status::summarize_run(&dead, false);
    assert_eq!(s.state, RunState::Crashed);
    assert!(!s.lock_holder.unwrap().alive);

    // No lock at all, no end event.
    let s = status::summarize_run(&run_with(runs, "unlocked", &steps(1, 5)), false);
    assert_eq!(
        (s.state, s.lock_holder.is_none()),
        (RunState::Crashed, true)
    );

    // A stale lock left beside a proper end does not make the run crashed.
    let mut ev = steps(1, 5);
    ev.push(end("completed", 5));
    let done = run_with(runs, "done-stale-lock", &ev);
    lock_file(&done, dead_pid());
    assert_eq!(
        status::summarize_run(&done, false).state,
        RunState::Completed
    );
}

/// The rows `codex status` adds from the binary (they need candle), so `ok` can be checked.
fn binary_rows() -> Vec<Capability> {
    ["evaluation", "modeling/LoRA", "extensibility"]
        .into_iter()
        .map(|c| Capability::new(c, Level::Ok, "provided by the test"))
        .collect()
}

#[test]
fn experiment_directory_gets_no_repository_rows() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let mut ev = steps(1, 58);
    ev.push(end("interrupted", 58));
    run_with(&root.join("runs"), "r1", &ev);
    // A marker in a script here is the experiment's business, not a repository finding.
    write(root, "prep.py", format!("# {}\n", ["TO", "DO"].concat()));
    let input = || StatusInput {
        root: root.to_path_buf(),
        runs: None,
        verify: false,
        cuda_compiled: false,
        commands: vec!["train".into(), "status".into()],
        extra: binary_rows(),
    };

    let r = codex_audit::probes::build_report(input());
    let names: Vec<&str> = r
        .capabilities
        .iter()
        .map(|c| c.capability.as_str())
        .collect();
    assert!(!r.repository);
    for repo_row in status::REPOSITORY_CAPABILITIES {
        assert!(!names.contains(repo_row), "{repo_row} in {names:?}");
    }
    assert_eq!(names.len(), status::CAPABILITIES.len() - 3);
    assert!(r.placeholders.is_empty());
    assert!(
        r.reproducibility
            .iter()
            .all(|c| !c.item.contains("lockfile"))
    );
    assert!(r.ok, "{}", codex_audit::probes::render_markdown(&r));
    let md = codex_audit::probes::render_markdown(&r);
    assert!(md.contains("Not a repository"), "{md}");
    assert!(!md.contains("## Placeholders"), "{md}");
    assert!(md.contains("| r1 | interrupted | 58/400 |"), "{md}");

    // The same directory under git is a repository: its rows are back, and missing.
    fs::create_dir(root.join(".git")).unwrap();
    let r = codex_audit::probes::build_report(input());
    assert_eq!((r.repository, r.repository_marker), (true, Some(".git")));
    assert_eq!(r.capabilities.len(), status::CAPABILITIES.len());
    let doc = r
        .capabilities
        .iter()
        .find(|c| c.capability == "documentation")
        .unwrap();
    assert_eq!(doc.status, Level::Missing);
    assert_eq!(r.placeholders.len(), 1);
    assert!(!r.ok);
}

#[test]
fn markdown_says_where_val_loss_was_measured() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    write(root, "Cargo.toml", "[package]\nname = \"x\"\n");
    let mut ev = steps(1, 250);
    ev.push(end("early_stopped", 250));
    run_with(&root.join("runs"), "r", &ev);
    let r = codex_audit::probes::build_report(StatusInput {
        root: root.to_path_buf(),
        runs: None,
        verify: false,
        cuda_compiled: false,
        commands: Vec::new(),
        extra: binary_rows(),
    });
    assert_eq!(r.repository_marker, Some("Cargo.toml"));
    let md = codex_audit::probes::render_markdown(&r);
    assert!(
        md.contains(
            "| r | early-stopped | 250/400 | 1.7500 | ██▇▇▇▆▆▆▆▅▅▅▄▄▄▃▃▃▃▂▂▂▁▁ | 2.3100 @ step 200 |"
        ),
        "{md}"
    );
}

/// Item 15: one malformed line in the middle of metrics.ndjson used to drop the whole run's
/// metrics; it is now skipped and counted, and the rest of the run is shown.
#[test]
fn malformed_metrics_lines_are_skipped_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let runs = d.path();
    let mut text: String = steps(1, 150).iter().map(|e| format!("{e}\n")).collect();
    text.push_str("{\"event\":\"step\",\"step\":151,\"train_l\n"); // torn by a crash, then resumed
    text.push_str("[1,2]\n");
    let rest: String = steps(152, 250).iter().map(|e| format!("{e}\n")).collect();
    text.push_str(&rest);
    text.push_str(&format!("{}\n", end("early_stopped", 250)));
    write(&runs.join("r"), "metrics.ndjson", &text);
    let sys = "{\"cpu_util_pct\":10}\n\u{0}garbage\n{\"cpu_util_pct\":30,\"gpus\":[{\"gpu_util_pct\":50}]}\n";
    write(&runs.join("r"), "system_metrics.ndjson", sys);
    let s = status::summarize_run(&runs.join("r"), false);
    assert_eq!(s.last_step, Some(250));
    assert_eq!(s.val_loss, Some(2.31));
    assert_eq!(s.state, RunState::EarlyStopped);
    assert_eq!(s.malformed_lines, 2);
    assert_eq!(s.malformed_system_lines, 1);
    assert_eq!(s.cpu_util_pct.samples, 2);
    assert_eq!(s.gpu_util_pct.max, Some(50.0));
    assert!(
        s.problems.iter().any(
            |p| p.starts_with("2 malformed line(s) in metrics.ndjson skipped (first: line 151")
        ),
        "{:?}",
        s.problems
    );
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["malformed_lines"], 2);
    assert_eq!(v["malformed_system_lines"], 1);
}

/// Anomaly events and messages come from the file: the kept list and each message are
/// bounded, the count is not; text output cannot be forged by a message's newlines.
#[test]
fn anomalies_are_bounded_and_escaped_in_markdown() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let mut ev = steps(1, 3);
    for i in 0..(status::MAX_ANOMALIES + 20) {
        ev.push(serde_json::json!({"event": "anomaly", "step": i, "message": format!("nan\n| forged | row |\u{1b}[2J{}", "x".repeat(5000))}));
    }
    ev.push(serde_json::json!({"event": "end", "status": "anomaly_stopped", "error": "bad\nline"}));
    run_with(&root.join("runs"), "r", &ev);
    let r = codex_audit::probes::build_report(StatusInput {
        root: root.to_path_buf(),
        runs: None,
        verify: false,
        cuda_compiled: false,
        commands: Vec::new(),
        extra: binary_rows(),
    });
    let run = &r.runs[0];
    assert_eq!(run.anomaly_count, status::MAX_ANOMALIES as u64 + 20);
    assert_eq!(run.anomalies.len(), status::MAX_ANOMALIES);
    assert!(
        run.anomalies
            .iter()
            .all(|a| a.chars().count() <= status::MAX_MESSAGE_CHARS + 1)
    );
    let md = codex_audit::probes::render_markdown(&r);
    assert!(
        !md.contains('\u{1b}'),
        "escape sequences reach the terminal"
    );
    assert!(!md.lines().any(|l| l.starts_with("| forged")), "{md}");
    assert!(md.contains("nan\\n| forged"), "{md}");
    assert!(md.contains("anomaly-stopped: bad\\nline"), "{md}");
    assert!(md.contains("20 more anomalies not listed"), "{md}");
}

/// config.toml and provenance.json are read capped and lossily: a stray byte in them does not
/// make a run look unseeded or without provenance.
#[test]
fn non_utf8_config_and_provenance_still_count() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let mut ev = steps(1, 3);
    ev.push(end("completed", 3));
    let run = run_with(&root.join("runs"), "r", &ev);
    write(&run, "config.toml", b"# caf\xe9\nseed = 7\n");
    write(&run, "provenance.json", b"{\"host\": \"\xff\"}\n");
    let r = codex_audit::probes::build_report(StatusInput {
        root: root.to_path_buf(),
        runs: None,
        verify: false,
        cuda_compiled: false,
        commands: Vec::new(),
        extra: binary_rows(),
    });
    for c in &r.reproducibility {
        assert_eq!(c.status, Level::Ok, "{c:?}");
    }
}

/// Item 16: a binary `.rs` file is skipped (listed with its reason), not counted as Rust.
#[test]
fn binary_source_files_are_skipped_not_counted() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "src/lib.rs", "pub fn f() {}\n");
    let mut junk = Vec::new();
    let mut x: u32 = 12345;
    for _ in 0..100_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        junk.push((x >> 16) as u8);
    }
    junk[4000] = 0;
    write(r, "src/junk.rs", &junk);
    // UTF-16 with a byte-order mark is text (tokei transcodes it): still counted.
    write(r, "src/wide.py", b"\xff\xfex\x00\n\x00");
    let map = repomap::build(r, &Options::default()).unwrap();
    assert_eq!(map.languages["Rust"].files, 1);
    assert_eq!(map.languages["Rust"].code, 1);
    assert_eq!(map.languages["Python"].files, 1);
    assert_eq!(map.skipped.len(), 1, "{:?}", map.skipped);
    assert_eq!(map.skipped[0].path, "src/junk.rs");
    assert!(map.skipped[0].reason.contains("binary"));
    let text = repomap::render_text(&map, None, &repomap::estimate_tokens);
    assert!(text.contains("  src/junk.rs  (binary content"), "{text}");
}

/// Item 16: names are escaped in the text view (a newline in a file name cannot forge a
/// line), and an unreadable directory is skipped under its real path.
#[cfg(unix)]
#[test]
fn control_characters_in_names_and_unreadable_directories() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(
        r,
        "src/evil\nforged.rs  [Rust 999 lines]\n.rs",
        "fn a() {}\n",
    );
    write(r, "dir\u{1b}[31m/x.rs", "fn b() {}\n");
    write(r, "locked/inner.rs", "fn c() {}\n");
    fs::set_permissions(r.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    // Root ignores permissions: only check the skip where the directory really is unreadable.
    let unreadable = fs::read_dir(r.join("locked")).is_err();
    let map = repomap::build(r, &Options::default()).unwrap();
    fs::set_permissions(r.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    let text = repomap::render_text(&map, None, &repomap::estimate_tokens);
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("forged.rs")),
        "{text}"
    );
    assert!(
        text.contains("evil\\nforged.rs  [Rust 999 lines]\\n.rs  [Rust 1/0/0]"),
        "{text}"
    );
    assert!(text.contains("dir\\u{1b}[31m/"), "{text}");
    if unreadable {
        assert!(
            map.skipped
                .iter()
                .any(|s| s.path == "locked" && !s.reason.is_empty()),
            "{:?}",
            map.skipped
        );
        assert!(map.skipped.iter().all(|s| !s.path.is_empty()));
    }
}
