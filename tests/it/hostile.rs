//! Output and input paths that are not plain files: devices, FIFOs, symlinks, streams that
//! never end. Nothing may be replaced, nothing may hang, nothing may eat the machine.

use crate::support::{codex, codex_limited, expect_exit, tempdir};
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A small tree for `codex repo-map` to map.
fn small_tree(dir: &Path) -> PathBuf {
    let root = dir.join("tree");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("lib.rs"), "pub fn f() {}\n").unwrap();
    root
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}

/// A "disk full" character device: a private node (1, 7) in `dir` when this user may make
/// one, so that a regression that replaces the node cannot break the machine's `/dev/full`;
/// `/dev/full` itself otherwise (a user who cannot mknod cannot replace it either).
pub fn full_device(dir: &Path) -> PathBuf {
    let node = dir.join("full");
    let made = std::process::Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "7"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let works = made
        && fs::OpenOptions::new()
            .write(true)
            .open(&node)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
            .is_err_and(|e| e.raw_os_error() == Some(28));
    if works {
        node
    } else {
        let _ = fs::remove_file(&node);
        PathBuf::from("/dev/full")
    }
}

#[test]
fn json_path_dev_full_is_an_error_and_the_device_stays() {
    let dir = tempdir();
    let tree = small_tree(dir.path());
    let full = full_device(dir.path());
    let err = expect_exit(
        codex()
            .arg("repo-map")
            .arg(&tree)
            .arg("--json-path")
            .arg(&full)
            .timeout(Duration::from_secs(60)),
        1,
    )
    .stderr;
    assert!(err.contains(&full.display().to_string()), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("wrote"), "{err}");
    let meta = fs::metadata(&full).unwrap();
    assert!(
        meta.file_type().is_char_device(),
        "{} was replaced",
        full.display()
    );
}

#[test]
fn json_path_fifo_gets_the_map_and_stays_a_fifo() {
    let dir = tempdir();
    let tree = small_tree(dir.path());
    let fifo = dir.path().join("map.fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read(fifo).unwrap())
    };
    let out = codex()
        .arg("repo-map")
        .arg(&tree)
        .arg("--json-path")
        .arg(&fifo)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    if !reader.is_finished() {
        // codex never opened the FIFO: open it ourselves so the reader sees EOF, not a hang.
        drop(fs::OpenOptions::new().write(true).open(&fifo));
    }
    let got = reader.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&got).expect("the map, as JSON");
    assert!(v.is_object(), "{v}");
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // No temp file left beside it.
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn json_path_symlink_stays_a_link_and_modes_are_kept() {
    let dir = tempdir();
    let tree = small_tree(dir.path());
    let real = dir.path().join("real.json");
    let link = dir.path().join("link.json");
    fs::write(&real, "old").unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    codex()
        .arg("repo-map")
        .arg(&tree)
        .arg("--json-path")
        .arg(&link)
        .assert()
        .success();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(fs::read_to_string(&real).unwrap().starts_with('{'));
    // A replaced file keeps its mode.
    assert_eq!(
        fs::metadata(&real).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // A new file gets what File::create gives (0666 minus the umask), not tempfile's 0600.
    let plain = dir.path().join("plain");
    fs::File::create(&plain).unwrap();
    let new = dir.path().join("new.json");
    codex()
        .arg("repo-map")
        .arg(&tree)
        .arg("--json-path")
        .arg(&new)
        .assert()
        .success();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&new), mode(&plain));
}

#[test]
fn config_from_dev_zero_or_a_fifo_is_refused_at_once() {
    for args in [
        ["config", "validate", "/dev/zero"],
        ["train", "--config", "/dev/zero"],
    ] {
        let err = expect_exit(codex_limited().args(args), 1).stderr;
        assert!(err.contains("character device"), "{err}");
        assert!(!err.contains("No such file"), "{err}");
    }
    let dir = tempdir();
    let fifo = dir.path().join("c.toml");
    mkfifo(&fifo);
    let fifo = fifo.display().to_string();
    let err = expect_exit(codex_limited().args(["config", "validate", &fifo]), 1).stderr;
    assert!(err.contains("FIFO"), "{err}");
}

#[test]
fn oversized_config_is_refused_and_long_values_are_cut() {
    let dir = tempdir();
    let big = dir.path().join("big.toml");
    fs::write(&big, format!("# {}\n", "x".repeat(5 << 20))).unwrap();
    let big = big.display().to_string();
    let err = expect_exit(codex_limited().args(["config", "validate", &big]), 1).stderr;
    assert!(err.contains("the limit is 4194304 bytes"), "{err}");
    // 1.5 MB values under the cap: the error quotes 80 characters of each, not megabytes.
    let long = dir.path().join("long.toml");
    fs::write(
        &long,
        format!(
            "[optimizer]\nlr = \"{}\"\nnam = \"{}\"\n",
            "9".repeat(3 << 19),
            "y".repeat(3 << 19)
        ),
    )
    .unwrap();
    let long = long.display().to_string();
    let err = expect_exit(codex_limited().args(["config", "validate", &long]), 1).stderr;
    assert!(err.len() < 2000, "{} bytes of stderr", err.len());
    assert!(err.contains("optimizer.lr"), "{err}");
    assert!(err.contains("optimizer.nam"), "{err}");
    assert!(err.contains("chars)"), "{err}");
    // A syntax error on a huge line is cut too.
    let bad = dir.path().join("bad.toml");
    fs::write(&bad, format!("a = [{}\n", "1, ".repeat(1 << 20))).unwrap();
    let bad = bad.display().to_string();
    let err = expect_exit(codex_limited().args(["config", "validate", &bad]), 1).stderr;
    assert!(err.len() < 4000, "{} bytes of stderr", err.len());
    assert!(err.contains("TOML syntax error"), "{err}");
}

#[test]
fn run_records_are_created_like_file_create_not_0600() {
    let dir = tempdir();
    let input = crate::support::corpus(dir.path());
    let run = dir.path().join("run");
    codex()
        .args(["train", "--config"])
        .arg(crate::support::fixture("train/tiny.toml"))
        .arg(format!("data.inputs=[{input:?}]"))
        .arg(format!("output.dir={:?}", run.display().to_string()))
        .args([
            "training.steps=2",
            "tokenizer.kind=train",
            "tokenizer.vocab_size=300",
        ])
        .assert()
        .success();
    let plain = dir.path().join("plain");
    fs::File::create(&plain).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for name in ["config.toml", "provenance.json", "tokenizer.json"] {
        assert_eq!(mode(&run.join(name)), mode(&plain), "{name}");
    }
}

#[test]
fn metrics_out_to_dev_full_is_an_error_and_the_device_stays() {
    let err = expect_exit(
        codex()
            .args(["metrics", "watch", "--count", "1", "--interval", "0.2"])
            .args(["--no-gpu", "--out", "/dev/full"])
            .timeout(Duration::from_secs(60)),
        1,
    )
    .stderr;
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        fs::metadata("/dev/full")
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

#[test]
fn eval_file_from_a_device_is_refused_at_once() {
    let dir = tempdir();
    let input = crate::support::corpus(dir.path());
    let run = dir.path().join("run");
    codex()
        .args(crate::support::tiny_args(
            &input,
            &run,
            &["training.steps=2"],
        ))
        .assert()
        .success();
    let run = run.display().to_string();
    let err = expect_exit(
        codex_limited().args(["eval", &run, "--file", "/dev/zero"]),
        1,
    )
    .stderr;
    assert!(err.contains("character device"), "{err}");
}
