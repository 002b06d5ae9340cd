//! What every test module shares: the `codex` command with a pinned environment, fixture paths,
//! temp dirs, NDJSON readers and the reference-asset variables.

use assert_cmd::Command;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Rayon threads for every `codex` the tests start, unless a test sets its own: the same
/// numbers on a 2-core CI machine and on a 64-core workstation.
pub const RAYON_THREADS: &str = "2";

/// An hf-hub home that holds nothing, so that no test reads the user's `~/.cache/huggingface`.
fn empty_hf_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("codex-it-empty-hf-home")
}

/// Pins the environment of a `codex` process; a test that needs another value sets it after.
fn pin_env(cmd: &mut std::process::Command) {
    // The user's own CODEX_* settings (CODEX_NVML_LIB, …) must not leak into the tests.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CODEX_") {
            cmd.env_remove(&key);
        }
    }
    let hf_home = empty_hf_home();
    cmd.env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env("RAYON_NUM_THREADS", RAYON_THREADS)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", hf_home.join("hub"))
        .env("HF_HOME", hf_home);
}

/// The `codex` binary as a plain process, for tests that spawn it and signal or kill it.
pub fn codex_process() -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("codex"));
    pin_env(&mut cmd);
    cmd
}

/// `sh -c LINE` with the same pinned environment and the `codex` under test first on `PATH`,
/// for running a command line exactly as `codex` printed it.
pub fn shell(line: &str) -> Command {
    let bin = assert_cmd::cargo::cargo_bin("codex");
    let mut path = std::ffi::OsString::from(bin.parent().expect("the binary has a directory"));
    if let Some(p) = std::env::var_os("PATH") {
        path.push(":");
        path.push(p);
    }
    let mut cmd = std::process::Command::new("sh");
    pin_env(&mut cmd);
    cmd.env("PATH", path).arg("-c").arg(line);
    Command::from_std(cmd)
}

/// The `codex` binary, for `assert()`.
pub fn codex() -> Command {
    Command::from_std(codex_process())
}

/// A file or directory under `tests/fixtures`, e.g. `fixture("train/tiny.toml")`.
pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `codex train` arguments: `tiny.toml` on `input` into `out`, then `extra`.
pub fn tiny_args(input: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "train".into(),
        "--config".into(),
        fixture("train/tiny.toml").display().to_string(),
        format!("data.inputs=[{:?}]", input),
        format!("output.dir={:?}", out.display().to_string()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The step of the newest event in a run's `metrics.ndjson` (0 before any), for tests that
/// watch a run they spawned; a line still being written is skipped.
pub fn newest_step(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("metrics.ndjson"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Runs `cmd`, asserts exit 0 and returns its stdout.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.assert().success().get_output().stdout.clone();
    String::from_utf8(out).expect("utf-8 stdout")
}

/// What a finished `codex` printed.
pub struct Printed {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd`, asserts it exits with `code` and returns what it printed.
pub fn expect_exit(cmd: &mut Command, code: i32) -> Printed {
    let out = cmd.assert().code(code).get_output().clone();
    Printed {
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// Sends SIGINT (Ctrl-C) to a spawned `codex`.
pub fn sigint(child: &std::process::Child) {
    let ok = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -INT {} failed", child.id());
}

/// Runs `cmd`, asserts exit 0 and parses its stdout as one JSON document.
pub fn stdout_json(cmd: &mut Command) -> Value {
    json_of(stdout_of(cmd).as_bytes())
}

/// Parses one JSON document, showing the text when it is not JSON.
pub fn json_of(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// Parses NDJSON: one JSON value per line.
pub fn ndjson(text: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(text)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The events of an NDJSON file.
pub fn lines(path: &Path) -> Vec<Value> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    ndjson(&bytes)
}

/// Asserts a finished process exited 0, showing its stderr when it did not.
pub fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small deterministic Python-like corpus written to `dir/corpus.py`; returns its path.
pub fn corpus(dir: &Path) -> String {
    let mut text = String::new();
    for i in 0..300 {
        text.push_str(&format!(
            "def f{i}(x):\n    return x * {} + {}\n\n",
            i % 7,
            i % 13
        ));
    }
    let p = dir.join("corpus.py");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The path in a reference-asset variable set by `scripts/test-assets.sh`. The tests that call
/// this are `#[ignore]`d: plain `cargo test` leaves them out, and under `--include-ignored`
/// (`bash scripts/test.sh`) a missing variable fails the test instead of skipping it.
pub fn asset_var(name: &str) -> PathBuf {
    match std::env::var_os(name).filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => panic!(
            "{name} is unset: this test needs the reference assets; run \
             `eval \"$(bash scripts/test-assets.sh)\"` first, or `bash scripts/test.sh`"
        ),
    }
}

/// Rewrites a checkpoint's MANIFEST.json with the sizes and sha256 of its files as they are now.
pub fn reseal_manifest(ck: &Path) {
    let mpath = ck.join("MANIFEST.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        let name = f["name"].as_str().unwrap().to_string();
        let data = std::fs::read(ck.join(&name)).unwrap();
        f["size_bytes"] = data.len().into();
        f["sha256"] = sha256_hex(&data).into();
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

pub fn sha256_hex(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// `codex` under a 2 GB address-space limit and a 60 s timeout, so a runaway allocation or
/// read fails the test instead of taking the machine.
pub fn codex_limited() -> Command {
    let pinned = codex_process();
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", r#"ulimit -v 2000000; exec "$0" "$@""#])
        .arg(pinned.get_program());
    for (k, v) in pinned.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let mut cmd = Command::from_std(sh);
    cmd.timeout(std::time::Duration::from_secs(60));
    cmd
}
