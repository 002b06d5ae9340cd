//! Checkpoint save + sha256 + fsync: codex against Python, side by side in one run, with the
//! ratio. Python is `benches/checkpoint_save_ref.py`: `safetensors.numpy.save_file`, then
//! `hashlib.sha256` of each written file, then `fsync` (what codex_ml did). codex is a real
//! [`CheckpointManager::save`]: the same tensors (weights plus two AdamW moments, f32) plus
//! `trainer_state.json` and `MANIFEST.json`, fsync of every file and directory, atomic
//! rename, retention (keep 1, so every save deletes the previous one, as Python's overwrite
//! frees the old blocks) and `index.json`. A save returns once the previous checkpoint is
//! renamed out of sight; its files are removed on a background thread. Two codex columns:
//! `save` is the time `save` takes (what training waits for), `save+delete` also waits for
//! that removal to finish (all the work, as Python's column is).
//!
//! For each size, `CODEX_BENCH_ROUNDS` rounds (3) alternate codex and Python, each timing
//! `CODEX_BENCH_ITERS` saves (3) one by one; medians over all saves are compared. Sizes:
//! `CODEX_BENCH_SIZES_MB` (100,500). Python: `CODEX_BENCH_PYTHON`, else `CODEX_TEST_PYTHON`,
//! else `target/bench-venv/bin/python`, else `/opt/pyref/bin/python`; it needs `safetensors`
//! and `numpy`, and the bench fails without one.
//!
//! Run: `bash benches/checkpoint_vs_python.sh` (or
//! `cargo bench -p codex-checkpoint --bench save_vs_python`).

use codex_checkpoint::{
    CheckpointFile, CheckpointManager, CheckpointSpec, Mode, RetentionPolicy, TensorData,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn python(root: &Path) -> PathBuf {
    let candidates = ["CODEX_BENCH_PYTHON", "CODEX_TEST_PYTHON"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .chain([
            root.join("target/bench-venv/bin/python"),
            PathBuf::from("/opt/pyref/bin/python"),
        ]);
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import safetensors, numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return py;
        }
    }
    eprintln!("error: no python with safetensors + numpy (set CODEX_BENCH_PYTHON)");
    std::process::exit(2);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = python(&root);
    let script = root.join("benches/checkpoint_save_ref.py");
    let sizes: Vec<usize> = std::env::var("CODEX_BENCH_SIZES_MB")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 500]);
    let rounds: usize = env_or("CODEX_BENCH_ROUNDS", 3);
    let iters: usize = env_or("CODEX_BENCH_ITERS", 3);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "checkpoint save + sha256 + fsync, codex vs {} ({rounds} rounds x {iters} saves, load at start: {})",
        py.display(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "| size | codex save s (MB/s) | codex save+delete s (MB/s) | python s (MB/s) | speed vs python: save | save+delete |"
    );
    println!("|---|---|---|---|---|---|");
    for mb in sizes {
        let n = mb * 1_000_000 / 12;
        let bytes = (n * 12) as f64;
        let w: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 1e-3).collect();
        let m1: Vec<f32> = (0..n).map(|i| (i % 777) as f32 * 1e-4).collect();
        let m2: Vec<f32> = (0..n).map(|i| (i % 555) as f32 * 1e-5).collect();
        let tmp = tempfile::tempdir().expect("tempdir");
        let policy = RetentionPolicy {
            keep_best: 0,
            keep_last: 1,
            pin_every: 0,
            mode: Mode::Min,
            monitor: "val_loss".into(),
        };
        let mut manager = CheckpointManager::open(tmp.path().join("run"), policy).expect("open");
        let py_dir = tmp.path().join("py");
        std::fs::create_dir_all(&py_dir).expect("mkdir");
        let (mut codex_s, mut total_s, mut py_s) = (Vec::new(), Vec::new(), Vec::new());
        let mut step = 0u64;
        for _ in 0..rounds {
            for _ in 0..iters {
                step += 1;
                let t = Instant::now();
                let saved = manager
                    .save(CheckpointSpec {
                        step,
                        metric: None,
                        files: vec![
                            CheckpointFile::safetensors(
                                "model.safetensors",
                                vec![TensorData::f32("w", vec![n], &w[..])],
                            ),
                            CheckpointFile::safetensors(
                                "optimizer.safetensors",
                                vec![
                                    TensorData::f32("w.exp_avg", vec![n], &m1[..]),
                                    TensorData::f32("w.exp_avg_sq", vec![n], &m2[..]),
                                ],
                            ),
                        ],
                        trainer_state: serde_json::json!({ "step": step }),
                        config_hash: String::new(),
                    })
                    .expect("save");
                codex_s.push(t.elapsed().as_secs_f64());
                manager.finish_deletions();
                total_s.push(t.elapsed().as_secs_f64());
                assert!(saved.size_bytes >= n as u64 * 12);
            }
            // The script times its own loop: interpreter start-up and array creation are out.
            let out = Command::new(&py)
                .arg(&script)
                .arg("--out")
                .arg(&py_dir)
                .args(["--floats", &n.to_string(), "--iters", &iters.to_string()])
                .arg("--each")
                .output()
                .expect("run python");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().parse().expect("seconds"))
                .collect();
            assert_eq!(times.len(), iters, "python printed {times:?}");
            py_s.extend(times);
        }
        let (c, t, p) = (
            median(&mut codex_s),
            median(&mut total_s),
            median(&mut py_s),
        );
        let mbs = |s: f64| bytes / s / 1e6;
        println!(
            "| {mb} MB | {c:.3} ({:.0}) | {t:.3} ({:.0}) | {p:.3} ({:.0}) | {:.2}x | {:.2}x |",
            mbs(c),
            mbs(t),
            mbs(p),
            p / c,
            p / t
        );
        eprintln!(
            "{mb} MB, sorted seconds: codex save {codex_s:.3?}; save+delete {total_s:.3?}; python {py_s:.3?}"
        );
    }
}
