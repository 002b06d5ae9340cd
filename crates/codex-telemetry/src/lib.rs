//! codex-telemetry: the system sampler.
//!
//! CPU, memory and our process tree through sysinfo (one `System`, refreshed selectively);
//! GPUs through NVML loaded at run time (`libnvidia-ml.so.1`), so the same binary runs with
//! and without a GPU and says why GPU fields are missing. [`Sampler::start`] runs a background
//! thread writing `system_metrics.ndjson`; [`sample_once`] takes one reading.
//!
//! ```no_run
//! use codex_telemetry::{GpuMode, Sampler, SamplerConfig};
//! use std::time::Duration;
//! let handle = Sampler::start(SamplerConfig {
//!     interval: Duration::from_secs(5),
//!     gpu: GpuMode::Gpu,
//!     out: "runs/r1/system_metrics.ndjson".into(),
//!     run_id: Some("r1".into()),
//!     step: None,
//!     aggregate: false,
//!     host_ranks: None,
//! })?;
//! // ... train ...
//! let summary = handle.stop();
//! # Ok::<(), codex_telemetry::TelemetryError>(())
//! ```

mod collector;
mod cpu;
mod energy;
pub mod gpu;
pub mod sample;
mod sampler;

pub use collector::{Collector, HostRanks, sample_once};
pub use energy::EnergyMeter;
pub use sample::{GpuSample, GpuStatus, RankOnGpu, Sample, aggregate};
pub use sampler::{
    DEFAULT_INTERVAL, MIN_INTERVAL, SUBSAMPLES_PER_WINDOW, Sampler, SamplerConfig, SamplerHandle,
    SamplerSummary,
};

use std::path::PathBuf;

/// What to sample: `off`, `cpu`, or `gpu` (CPU fields plus every GPU NVML sees; a missing
/// NVML is a warning, and the samples say why). One definition, in codex-core.
pub use codex_core::mode::SystemMetricsMode as GpuMode;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("sampling interval {value_s} s is below the minimum of 0.2 s")]
    Interval { value_s: f64 },
    #[error("cannot open system metrics file {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read system information: {0}")]
    Platform(String),
    #[error("cannot start the sampler thread: {0}")]
    Spawn(std::io::Error),
    #[error("no process with pid {0}")]
    NoProcess(u32),
}
