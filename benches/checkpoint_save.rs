//! Checkpoint save + hash throughput for a 100 MB and a 500 MB training state (weights plus
//! two AdamW moments, f32), measured in the same run against:
//! - `sha256sum` over the same files (hashing only, from the page cache),
//! - Python `safetensors.numpy.save_file` + `hashlib.sha256` of the written files + `fsync`
//!   (`benches/checkpoint_save_ref.py`; Python from `CODEX_BENCH_PYTHON`, `CODEX_TEST_PYTHON`
//!   or `/opt/pyref/bin/python`, skipped when none has `safetensors`).
//!
//! codex's save includes everything a real save does: streaming safetensors serialization,
//! sha256 while writing, fsync of every file and directory, rename, retention, index.json.
//! Retention renames the previous checkpoint away inside `save` and removes its files on a
//! background thread, joined by the next save's retention; `crates/codex-checkpoint/benches/
//! save_vs_python.rs` also reports save + that removal, with the ratio to Python.
//! `CODEX_BENCH_SIZES_MB=100` restricts the sizes. Run: `cargo bench --bench checkpoint_save`.

use codex_checkpoint::{
    CheckpointFile, CheckpointManager, CheckpointSpec, Mode, RetentionPolicy, TensorData,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sizes_mb() -> Vec<usize> {
    std::env::var("CODEX_BENCH_SIZES_MB")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 500])
}

fn python() -> Option<PathBuf> {
    let candidates = ["CODEX_BENCH_PYTHON", "CODEX_TEST_PYTHON"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .chain(std::iter::once(PathBuf::from("/opt/pyref/bin/python")));
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import safetensors, numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    eprintln!("skipped python reference: no python with safetensors + numpy");
    None
}

fn bench(c: &mut Criterion) {
    let py = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/checkpoint_save_ref.py");
    for mb in sizes_mb() {
        let total = mb * 1_000_000;
        // weights N floats + two moments of N floats each.
        let n = total / 12;
        let w: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 1e-3).collect();
        let m1: Vec<f32> = (0..n).map(|i| (i % 777) as f32 * 1e-4).collect();
        let m2: Vec<f32> = (0..n).map(|i| (i % 555) as f32 * 1e-5).collect();
        let bytes = (n * 12) as u64;

        let tmp = tempfile::tempdir().expect("tempdir");
        let run = tmp.path().join("run");
        let policy = RetentionPolicy {
            keep_best: 0,
            keep_last: 1,
            pin_every: 0,
            mode: Mode::Min,
            monitor: "val_loss".into(),
        };
        let mut manager = CheckpointManager::open(&run, policy).expect("open");
        let mut step = 0u64;
        let mut save = |manager: &mut CheckpointManager| {
            step += 1;
            manager
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
                    trainer_state: serde_json::json!({"step": step}),
                    config_hash: String::new(),
                })
                .expect("save")
        };

        let mut group = c.benchmark_group(format!("checkpoint_save_{mb}MB"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(1));
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function("codex_save_hash_fsync", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    std::hint::black_box(save(&mut manager));
                    total += t.elapsed();
                }
                total
            })
        });
        let latest = save(&mut manager);
        let files: Vec<PathBuf> = ["model.safetensors", "optimizer.safetensors"]
            .iter()
            .map(|f| latest.dir.join(f))
            .collect();
        group.bench_function("sha256sum", |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    let out = Command::new("sha256sum")
                        .args(&files)
                        .output()
                        .expect("sha256sum");
                    assert!(out.status.success());
                }
                t.elapsed()
            })
        });
        if let Some(py) = &py {
            let out_dir = tmp.path().join("py");
            std::fs::create_dir_all(&out_dir).expect("mkdir");
            group.bench_function("python_safetensors_hashlib_fsync", |b| {
                b.iter_custom(|iters| {
                    // The script times its own loop, so interpreter start-up and numpy
                    // array creation are not counted.
                    let out = Command::new(py)
                        .arg(&script)
                        .args([
                            "--out",
                            &out_dir.to_string_lossy(),
                            "--floats",
                            &n.to_string(),
                            "--iters",
                            &iters.to_string(),
                        ])
                        .output()
                        .expect("python");
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let secs: f64 = String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .parse()
                        .expect("seconds");
                    Duration::from_secs_f64(secs)
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
