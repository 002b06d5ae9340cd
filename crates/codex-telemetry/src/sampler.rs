//! The background sampler: a thread on a fixed cadence that appends NDJSON lines, and a
//! handle that always stops and joins it (explicitly, or on drop during unwinding).

use crate::collector::{Collector, HostRanks};
use crate::sample::{Sample, aggregate};
use crate::{GpuMode, TelemetryError};
use codex_core::ndjson::NdjsonWriter;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Shortest interval: sysinfo needs 200 ms between CPU readings.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// Default cadence.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// With aggregation, sub-samples per window (nvitop-style mean/min/max), at least 200 ms apart.
pub const SUBSAMPLES_PER_WINDOW: u32 = 5;

/// What to sample and where to write it.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Cadence of written lines (≥ 0.2 s).
    pub interval: Duration,
    /// `Off`: start no thread; `Cpu`: host and process fields; `Gpu`: those plus NVML.
    pub gpu: GpuMode,
    /// NDJSON file, appended to (a resumed run continues it).
    pub out: PathBuf,
    pub run_id: Option<String>,
    /// Current training step; each line is tagged with its value at sampling time.
    pub step: Option<Arc<AtomicU64>>,
    /// Write the mean of sub-samples per window, with min/max under `window`.
    pub aggregate: bool,
    /// Data-parallel runs: the host and ranks this sampler speaks for (tags every line and
    /// attributes GPU use to each rank's process).
    pub host_ranks: Option<HostRanks>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            gpu: GpuMode::Cpu,
            out: PathBuf::from("system_metrics.ndjson"),
            run_id: None,
            step: None,
            aggregate: false,
            host_ranks: None,
        }
    }
}

/// What the sampler did, for the run summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SamplerSummary {
    pub samples_written: u64,
    /// Each warning once: GPU unavailable or lost, the write error that stopped the sampler.
    pub warnings: Vec<String>,
    /// Set when the sampler stopped before being asked to (write failure, panic).
    pub stopped_early: Option<String>,
    pub cpu_util_pct_mean: Option<f64>,
    pub cpu_util_pct_max: Option<f64>,
    /// Over every GPU and sample.
    pub gpu_util_pct_mean: Option<f64>,
    pub gpu_util_pct_max: Option<f64>,
    /// Summed over GPUs per sample.
    pub gpu_power_w_mean: Option<f64>,
    pub gpu_power_w_max: Option<f64>,
    /// Mean cost of one collection.
    pub sample_cost_us_mean: Option<f64>,
}

#[derive(Default)]
struct Stats {
    cpu: Vec<f64>,
    gpu_util: Vec<f64>,
    gpu_power: Vec<f64>,
    cost: Vec<f64>,
}

impl Stats {
    fn add(&mut self, s: &Sample) {
        self.cpu.push(s.cpu_util_pct);
        self.cost.push(s.sample_cost_us);
        self.gpu_util
            .extend(s.gpus.iter().filter_map(|g| g.gpu_util_pct));
        let powers: Vec<f64> = s.gpus.iter().filter_map(|g| g.gpu_power_w).collect();
        if !powers.is_empty() {
            self.gpu_power.push(powers.iter().sum());
        }
    }

    fn fill(&self, out: &mut SamplerSummary) {
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let max = |v: &[f64]| v.iter().copied().reduce(f64::max);
        out.cpu_util_pct_mean = mean(&self.cpu);
        out.cpu_util_pct_max = max(&self.cpu);
        out.gpu_util_pct_mean = mean(&self.gpu_util);
        out.gpu_util_pct_max = max(&self.gpu_util);
        out.gpu_power_w_mean = mean(&self.gpu_power);
        out.gpu_power_w_max = max(&self.gpu_power);
        out.sample_cost_us_mean = mean(&self.cost);
    }
}

/// Starts background samplers.
pub struct Sampler;

impl Sampler {
    /// Validates the config, opens the output (so a bad path fails here, naming it), primes
    /// the counters and starts the thread. `GpuMode::Off` returns an idle handle.
    pub fn start(cfg: SamplerConfig) -> Result<SamplerHandle, TelemetryError> {
        if cfg.interval < MIN_INTERVAL {
            return Err(TelemetryError::Interval {
                value_s: cfg.interval.as_secs_f64(),
            });
        }
        if cfg.gpu == GpuMode::Off {
            return Ok(SamplerHandle {
                stop: None,
                thread: None,
                interval: cfg.interval,
            });
        }
        NdjsonWriter::append(&cfg.out).map_err(|source| TelemetryError::Open {
            path: cfg.out.clone(),
            source,
        })?;
        let mut collector = Collector::new(cfg.gpu)?
            .with_run_id(cfg.run_id.clone())
            .with_step(cfg.step.clone())
            .with_host_ranks(cfg.host_ranks.clone());
        let mut summary = SamplerSummary::default();
        for w in collector.take_warnings() {
            tracing::warn!("{w}");
            summary.warnings.push(w);
        }
        let (tx, rx) = mpsc::channel::<()>();
        let interval = cfg.interval;
        let thread = std::thread::Builder::new()
            .name("codex-telemetry".into())
            .spawn(move || run(cfg, collector, rx, summary))
            .map_err(TelemetryError::Spawn)?;
        Ok(SamplerHandle {
            stop: Some(tx),
            thread: Some(thread),
            interval,
        })
    }
}

fn run(
    cfg: SamplerConfig,
    mut c: Collector,
    rx: mpsc::Receiver<()>,
    mut summary: SamplerSummary,
) -> SamplerSummary {
    let sub = if cfg.aggregate {
        (cfg.interval / SUBSAMPLES_PER_WINDOW).max(MIN_INTERVAL)
    } else {
        cfg.interval
    };
    let per_window = if cfg.aggregate {
        (cfg.interval.as_secs_f64() / sub.as_secs_f64())
            .round()
            .max(1.0) as usize
    } else {
        1
    };
    let start = Instant::now();
    let mut tick: u32 = 1;
    let mut window: Vec<Sample> = Vec::with_capacity(per_window);
    let mut stats = Stats::default();
    let mut last_sample = Instant::now();
    loop {
        let deadline = start + sub * tick;
        let stopping = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => false,
        };
        if stopping {
            // A last reading when enough time has passed for it to mean something, so that
            // short runs still get a line; then flush a partial window.
            if last_sample.elapsed() >= MIN_INTERVAL {
                window.push(c.sample());
            }
            if !window.is_empty() {
                let _ = write(&cfg, &mut c, &mut window, &mut stats, &mut summary);
            }
            break;
        }
        // Fixed cadence: a tick missed (slow disk, suspended machine) is skipped, not bunched.
        let elapsed = start.elapsed().as_secs_f64() / sub.as_secs_f64();
        tick = (tick + 1).max(elapsed.floor() as u32 + 1);
        window.push(c.sample());
        last_sample = Instant::now();
        if window.len() >= per_window
            && write(&cfg, &mut c, &mut window, &mut stats, &mut summary).is_err()
        {
            break;
        }
    }
    stats.fill(&mut summary);
    summary
}

/// Writes one line (the aggregate of the window). The file is opened per line, so a removed
/// directory or a full disk surfaces as an error here instead of writing into an unlinked file.
fn write(
    cfg: &SamplerConfig,
    c: &mut Collector,
    window: &mut Vec<Sample>,
    stats: &mut Stats,
    summary: &mut SamplerSummary,
) -> Result<(), ()> {
    for w in c.take_warnings() {
        tracing::warn!("{w}");
        summary.warnings.push(w);
    }
    let Some(line) = aggregate(window) else {
        return Ok(());
    };
    window.clear();
    let res = NdjsonWriter::append(&cfg.out).and_then(|mut w| w.write(&line));
    match res {
        Ok(()) => {
            stats.add(&line);
            summary.samples_written += 1;
            Ok(())
        }
        Err(e) => {
            let msg = format!(
                "cannot write system metrics to {}: {e}; sampler stopped",
                cfg.out.display()
            );
            tracing::warn!("{msg}");
            summary.warnings.push(msg.clone());
            summary.stopped_early = Some(msg);
            Err(())
        }
    }
}

/// Owns the sampler thread. [`SamplerHandle::stop`] and `Drop` wake the thread at once (a
/// channel, not a sleep) and join it, so it never outlives its run.
pub struct SamplerHandle {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<SamplerSummary>>,
    interval: Duration,
}

impl SamplerHandle {
    /// Stops the sampler (taking a last reading if due), joins it, returns what it did.
    pub fn stop(mut self) -> SamplerSummary {
        self.shutdown()
    }

    /// Whether the thread is still sampling (false after a write failure stopped it).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn shutdown(&mut self) -> SamplerSummary {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            None => SamplerSummary::default(),
            Some(t) => t.join().unwrap_or_else(|_| {
                let msg =
                    "the telemetry sampler thread panicked; samples after that point are missing"
                        .to_string();
                SamplerSummary {
                    warnings: vec![msg.clone()],
                    stopped_early: Some(msg),
                    ..Default::default()
                }
            }),
        }
    }
}

impl Drop for SamplerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
