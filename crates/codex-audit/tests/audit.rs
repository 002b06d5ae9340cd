//! Fixture trees and run directories built in temp dirs.

use codex_audit::repomap::{self, Options};
use codex_audit::status;
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
        (s.last_step, s.train_loss, s.val_loss, s.state),
        (Some(2), Some(2.0), Some(2.2), "finished")
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
    assert_eq!(c.state, "crashed");
    assert!(!c.lock_holder.unwrap().alive);

    // A live run: we hold its lock.
    let live = runs.join("live");
    metrics(&live, false);
    let _lock = codex_checkpoint::RunLock::acquire(&live).unwrap();
    assert_eq!(status::summarize_run(&live, false).state, "running");

    assert_eq!(status::find_runs(&runs).len(), 4);
}
