//! Device check for machines with a GPU: one sample in GPU mode, then a short background
//! sampler run with aggregation, printed as JSON. `cargo run --release -p codex-telemetry
//! --example gpu_check -- OUT.ndjson`.

use codex_telemetry::{GpuMode, Sampler, SamplerConfig, sample_once};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "gpu_check.ndjson".into());
    let (s, warnings) = sample_once(GpuMode::Gpu)?;
    eprintln!("warnings: {warnings:?}");
    println!("{}", serde_json::to_string_pretty(&s)?);
    let h = Sampler::start(SamplerConfig {
        interval: Duration::from_secs(1),
        gpu: GpuMode::Gpu,
        out: out.into(),
        run_id: Some("gpu-check".into()),
        step: None,
        aggregate: true,
        host_ranks: None,
    })?;
    std::thread::sleep(Duration::from_millis(2100));
    let t = std::time::Instant::now();
    let summary = h.stop();
    eprintln!("stop joined in {:?}", t.elapsed());
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
