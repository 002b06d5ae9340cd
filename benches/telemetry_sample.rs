//! Cost of the telemetry sampler: creating a collector (priming its counters) and taking one
//! sample. `cargo bench --bench telemetry_sample`.
//!
//! sysinfo re-reads `/proc/stat` only when 200 ms have passed since the last reading, so a
//! back-to-back loop would time less work than the sampler really does. Each timed sample is
//! therefore preceded by an untimed wait until the collector is ready, and criterion runs one
//! sample per measurement (flat sampling, tiny target time). The psutil comparison at 1 Hz is
//! `benches/telemetry_compare.py`.

use codex_telemetry::{Collector, GpuMode};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("telemetry");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    g.bench_function("collector_new_cpu", |b| {
        b.iter(|| black_box(Collector::new(GpuMode::Cpu).ok()))
    });
    for (name, mode) in [
        ("sample_cpu", GpuMode::Cpu),
        ("sample_gpu_mode", GpuMode::Gpu),
    ] {
        let Ok(mut col) = Collector::new(mode) else {
            continue;
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    std::thread::sleep(col.ready_in());
                    let t = Instant::now();
                    black_box(col.sample());
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
