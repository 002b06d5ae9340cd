//! The checkpoint file writer, old path beside the new, on the same tensors (weights plus two
//! AdamW moments, f32, 100 MB by default; `CODEX_BENCH_SIZES_MB=100,500`), each followed by
//! the fsync a save does:
//! - `sequential` (codex before issue 19): `f32` values converted to bytes 1 MiB at a time
//!   into a buffer, written through a 64 KiB `BufWriter` with sha256 inline, then fsync.
//! - `pipelined` ([`codex_checkpoint::write::write_parts`]): the tensors' own bytes in 8 MiB
//!   writes, sha256 on a second thread, writeback started as each range is written, then fsync.
//!
//! Run: `cargo bench -p codex-checkpoint --bench write`.

use codex_checkpoint::write::write_parts;
use codex_core::hash::HashingWriter;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

fn sizes_mb() -> Vec<usize> {
    std::env::var("CODEX_BENCH_SIZES_MB")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100])
}

/// The writer codex used before: a copy of `format::write_safetensors` and
/// `manager::write_file` as of commit cd837c9.
fn sequential(path: &Path, header: &[u8], tensors: &[&[f32]]) -> (String, u64) {
    let file = File::create(path).unwrap();
    let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 16, file));
    w.write_all(header).unwrap();
    let mut buf = Vec::new();
    for t in tensors {
        for chunk in t.chunks((1 << 20) / 4) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            w.write_all(&buf).unwrap();
        }
    }
    w.flush().unwrap();
    let (buf, sha, len) = w.finish();
    buf.into_inner().unwrap().sync_all().unwrap();
    (sha, len)
}

fn pipelined(path: &Path, header: &[u8], tensors: &[&[f32]]) -> (String, u64) {
    let file = File::create(path).unwrap();
    let mut parts: Vec<&[u8]> = vec![header];
    // Little-endian f32 values are their bytes, as `format::safetensors_parts` borrows them.
    parts.extend(tensors.iter().map(|t| bytemuck::cast_slice::<f32, u8>(t)));
    let out = write_parts(&file, &parts).unwrap();
    file.sync_all().unwrap();
    out
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    for mb in sizes_mb() {
        let n = mb * 1_000_000 / 12;
        let w: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 1e-3).collect();
        let m1: Vec<f32> = (0..n).map(|i| (i % 777) as f32 * 1e-4).collect();
        let m2: Vec<f32> = (0..n).map(|i| (i % 555) as f32 * 1e-5).collect();
        let tensors = [&w[..], &m1[..], &m2[..]];
        let header = vec![b' '; 256];
        let path = dir.path().join("f.safetensors");
        // Both must produce the same file and hash, or the comparison means nothing.
        let a = sequential(&path, &header, &tensors);
        let b = pipelined(&path, &header, &tensors);
        assert_eq!(a, b);
        let mut group = c.benchmark_group(format!("checkpoint_write_{mb}MB"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(2));
        group.throughput(Throughput::Bytes((n * 12) as u64));
        group.bench_function("sequential_old", |b| {
            b.iter(|| {
                std::fs::remove_file(&path).ok();
                sequential(&path, &header, &tensors)
            })
        });
        group.bench_function("pipelined_new", |b| {
            b.iter(|| {
                std::fs::remove_file(&path).ok();
                pipelined(&path, &header, &tensors)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
