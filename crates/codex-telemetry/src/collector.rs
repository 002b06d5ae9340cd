//! One sampler state (sysinfo `System` + NVML devices) that produces [`Sample`]s.

use crate::cpu::CpuCollector;
use crate::gpu::GpuCollector;
use crate::sample::{GpuStatus, Sample};
use crate::{GpuMode, TelemetryError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

enum GpuState {
    NotRequested,
    Unavailable(String),
    Ok(GpuCollector),
}

/// Keeps the state that sampling needs between readings. Create it once and call
/// [`Collector::sample`] on a cadence; CPU usage is computed over the time between calls.
pub struct Collector {
    cpu: CpuCollector,
    gpu: GpuState,
    run_id: Option<String>,
    step: Option<Arc<AtomicU64>>,
    host_ranks: Option<HostRanks>,
    warnings: Vec<String>,
}

/// What one host's sampler in a data-parallel run speaks for: its host, the ranks there, and
/// their processes (to attribute GPU memory and utilisation to each rank).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostRanks {
    pub host: String,
    /// The ranks on this host, ascending.
    pub ranks: Vec<usize>,
    /// The process id of each of `ranks`, in the same order.
    pub pids: Vec<u32>,
}

impl Collector {
    /// Primes the CPU counters (that first reading is never reported) and, for
    /// [`GpuMode::Gpu`], opens NVML. A missing NVML is a warning, not an error.
    pub fn new(mode: GpuMode) -> Result<Self, TelemetryError> {
        Self::with_cpu(CpuCollector::new()?, mode)
    }

    /// [`Collector::new`] attached to another process tree (`codex metrics --pid`, as nvitop
    /// attaches): the process fields and per-GPU process memory are that tree's.
    pub fn for_pid(pid: u32, mode: GpuMode) -> Result<Self, TelemetryError> {
        Self::with_cpu(CpuCollector::for_pid(pid)?, mode)
    }

    fn with_cpu(cpu: CpuCollector, mode: GpuMode) -> Result<Self, TelemetryError> {
        let mut warnings = Vec::new();
        let gpu = match mode {
            GpuMode::Gpu => match GpuCollector::new() {
                Ok(g) => GpuState::Ok(g),
                Err(reason) => {
                    warnings.push(format!("GPU metrics requested but unavailable: {reason}"));
                    GpuState::Unavailable(reason)
                }
            },
            GpuMode::Off | GpuMode::Cpu => GpuState::NotRequested,
        };
        Ok(Self {
            cpu,
            gpu,
            run_id: None,
            step: None,
            host_ranks: None,
            warnings,
        })
    }

    /// Tags every sample with a run id.
    pub fn with_run_id(mut self, run_id: Option<String>) -> Self {
        self.run_id = run_id;
        self
    }

    /// Tags every sample with the current value of a step counter the caller updates.
    pub fn with_step(mut self, step: Option<Arc<AtomicU64>>) -> Self {
        self.step = step;
        self
    }

    /// Tags every sample with the host and ranks, and attributes GPU use to each rank.
    pub fn with_host_ranks(mut self, host_ranks: Option<HostRanks>) -> Self {
        self.host_ranks = host_ranks;
        self
    }

    /// Time until the next sample gives meaningful CPU usage (sysinfo's minimum interval);
    /// [`Collector::sample`] waits this long itself when called too early.
    pub fn ready_in(&self) -> Duration {
        self.cpu.ready_in()
    }

    /// Warnings raised since the last call (GPU unavailable, GPU lost), each reported once.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Why GPU fields are absent, when GPU sampling was asked for and is impossible.
    pub fn gpu_unavailable_reason(&self) -> Option<&str> {
        match &self.gpu {
            GpuState::Unavailable(r) => Some(r),
            _ => None,
        }
    }

    /// Takes one sample.
    pub fn sample(&mut self) -> Sample {
        let wait = self.ready_in();
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let t0 = Instant::now();
        let c = self.cpu.collect();
        let (gpu_status, gpu_reason, driver, gpus) = match &mut self.gpu {
            GpuState::NotRequested => (GpuStatus::NotRequested, None, None, Vec::new()),
            GpuState::Unavailable(r) => (GpuStatus::Unavailable, Some(r.clone()), None, Vec::new()),
            GpuState::Ok(g) => {
                let ranks: Vec<(usize, u32)> = self
                    .host_ranks
                    .as_ref()
                    .map(|h| {
                        h.ranks
                            .iter()
                            .copied()
                            .zip(h.pids.iter().copied())
                            .collect()
                    })
                    .unwrap_or_default();
                let (gpus, warnings) = g.collect(&c.tree, &ranks);
                let reason = warnings.last().cloned();
                self.warnings.extend(warnings);
                let lost = gpus.iter().filter(|x| x.state == "lost").count();
                if g.all_lost() {
                    (
                        GpuStatus::Unavailable,
                        Some("every GPU was lost (NVML GpuLost)".into()),
                        g.driver_version.clone(),
                        gpus,
                    )
                } else if lost > 0 {
                    let why = reason.unwrap_or_else(|| format!("{lost} GPU(s) lost"));
                    (GpuStatus::Ok, Some(why), g.driver_version.clone(), gpus)
                } else {
                    (GpuStatus::Ok, None, g.driver_version.clone(), gpus)
                }
            }
        };
        let cost = t0.elapsed();
        Sample {
            schema_version: codex_core::SCHEMA_VERSION,
            ts: codex_core::time::now_rfc3339(),
            mono_s: codex_core::time::mono_s(),
            run_id: self.run_id.clone(),
            step: self.step.as_ref().map(|s| s.load(Ordering::Relaxed)),
            sample_cost_us: cost.as_secs_f64() * 1e6,
            cpu_count: c.cpu_count,
            cpu_util_pct: c.cpu_util_pct,
            cpu_core_util_pct: c.cpu_core_util_pct,
            load_avg_1m: c.load_avg.map(|l| l.0),
            load_avg_5m: c.load_avg.map(|l| l.1),
            load_avg_15m: c.load_avg.map(|l| l.2),
            mem_total_bytes: c.mem_total_bytes,
            mem_used_bytes: c.mem_used_bytes,
            mem_available_bytes: c.mem_available_bytes,
            swap_total_bytes: c.swap_total_bytes,
            swap_used_bytes: c.swap_used_bytes,
            proc_count: c.tree.len(),
            proc_cpu_pct: c.proc_cpu_pct,
            proc_rss_bytes: c.proc_rss_bytes,
            proc_threads: c.proc_threads,
            proc_disk_read_bytes_per_s: c.proc_disk_read_bytes_per_s,
            proc_disk_write_bytes_per_s: c.proc_disk_write_bytes_per_s,
            gpu_status,
            gpu_reason,
            gpu_driver_version: driver,
            gpus,
            window: None,
            host: self.host_ranks.as_ref().map(|h| h.host.clone()),
            ranks: self.host_ranks.as_ref().map(|h| h.ranks.clone()),
        }
    }
}

/// One sample, as `codex metrics sample` takes it: primes the counters, waits sysinfo's
/// minimum CPU interval (200 ms on Linux) and reads. Returns the warnings with it.
pub fn sample_once(mode: GpuMode) -> Result<(Sample, Vec<String>), TelemetryError> {
    let mut c = Collector::new(mode)?;
    let s = c.sample();
    Ok((s, c.take_warnings()))
}
