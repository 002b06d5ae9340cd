//! GPU fields through NVML, loaded at run time: the binary builds and runs without a GPU.
//!
//! NVML is initialised once per process (`OnceLock`) from `libnvidia-ml.so.1` explicitly,
//! because the unversioned `.so` symlink is missing in many containers. A query the device
//! or driver does not support is remembered and reported as `null` from then on; a GPU that
//! falls off the bus (`GpuLost`) is marked lost and the sampler carries on without it.

use crate::sample::{GpuSample, RankOnGpu};
use nvml_wrapper::enum_wrappers::device::{Clock, PcieUtilCounter, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::gpm::{GpmSample, gpm_metrics_get};
use nvml_wrapper::struct_wrappers::device::{ProcessInfo, ProcessUtilizationSample};
use nvml_wrapper::{Device, Nvml};
use std::collections::HashSet;
use std::sync::OnceLock;

/// The NVML library loaded by default; `CODEX_NVML_LIB` overrides it (tests, odd installs).
#[cfg(not(windows))]
pub const NVML_LIB: &str = "libnvidia-ml.so.1";
#[cfg(windows)]
pub const NVML_LIB: &str = "nvml.dll";

static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();

/// The process-wide NVML instance, or why there is none.
pub fn nvml() -> Result<&'static Nvml, String> {
    NVML.get_or_init(|| {
        let path = std::env::var_os("CODEX_NVML_LIB").unwrap_or_else(|| NVML_LIB.into());
        Nvml::builder().lib_path(&path).init().map_err(|e| match e {
            NvmlError::LibloadingError(e) => {
                format!(
                    "NVML library {} could not be loaded ({e}); no NVIDIA driver here",
                    path.display()
                )
            }
            NvmlError::DriverNotLoaded => "the NVIDIA driver is not loaded".to_string(),
            other => format!("NVML init failed: {other}"),
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// What an NVML error means for the field and the device.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ErrClass {
    /// The device is gone; stop querying it.
    Lost,
    /// This query will never work on this device/driver; stop asking, report `null`.
    Unsupported,
    /// May work next time; `null` for this sample.
    Transient,
}

pub(crate) fn classify(err: &NvmlError) -> ErrClass {
    match err {
        NvmlError::GpuLost => ErrClass::Lost,
        NvmlError::NotSupported
        | NvmlError::NoPermission
        | NvmlError::FunctionNotFound
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::InvalidArg => ErrClass::Unsupported,
        _ => ErrClass::Transient,
    }
}

struct DevState {
    index: u32,
    dev: Device<'static>,
    name: Option<String>,
    uuid: Option<String>,
    lost: bool,
    unsupported: HashSet<&'static str>,
    prev_energy_mj: Option<u64>,
    gpm_prev: Option<GpmSample<'static>>,
    /// NVML timestamp of the newest per-process utilisation sample read.
    proc_util_ts: Option<u64>,
}

impl DevState {
    /// Runs one query, remembering unsupported ones and a lost device.
    fn q<T>(
        &mut self,
        field: &'static str,
        f: impl FnOnce(&Device<'static>) -> Result<T, NvmlError>,
    ) -> Option<T> {
        if self.lost || self.unsupported.contains(field) {
            return None;
        }
        match f(&self.dev) {
            Ok(v) => Some(v),
            Err(e) => {
                match classify(&e) {
                    ErrClass::Lost => self.lost = true,
                    ErrClass::Unsupported => {
                        self.unsupported.insert(field);
                    }
                    ErrClass::Transient => {}
                }
                None
            }
        }
    }
}

pub(crate) struct GpuCollector {
    nvml: &'static Nvml,
    pub driver_version: Option<String>,
    devices: Vec<DevState>,
    lost_reported: HashSet<u32>,
}

impl GpuCollector {
    /// Opens every device NVML lists. Errors are reasons for `gpu_status: unavailable`.
    pub(crate) fn new() -> Result<Self, String> {
        let nvml = nvml()?;
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML device count failed: {e}"))?;
        if count == 0 {
            return Err("NVML reports no GPUs".into());
        }
        let mut devices = Vec::new();
        for index in 0..count {
            let dev = match nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => return Err(format!("NVML could not open GPU {index}: {e}")),
            };
            let name = dev.name().ok();
            let uuid = dev.uuid().ok();
            let mut st = DevState {
                index,
                dev,
                name,
                uuid,
                lost: false,
                unsupported: HashSet::new(),
                prev_energy_mj: None,
                gpm_prev: None,
                proc_util_ts: None,
            };
            if st.q("gpm", |d| d.gpm_support()) == Some(true) {
                st.gpm_prev = st.q("gpm", |d| d.gpm_sample());
            } else {
                st.unsupported.insert("gpm");
            }
            st.prev_energy_mj = st.q("energy", |d| d.total_energy_consumption());
            devices.push(st);
        }
        Ok(Self {
            nvml,
            driver_version: nvml.sys_driver_version().ok(),
            devices,
            lost_reported: HashSet::new(),
        })
    }

    /// One reading of every device. `tree` is our process tree (for per-process memory);
    /// `ranks` the (rank, pid) of a data-parallel run's processes on this host, to attribute
    /// each GPU's use to them. Returns the samples and warnings to report once (a GPU lost).
    pub(crate) fn collect(
        &mut self,
        tree: &[u32],
        ranks: &[(usize, u32)],
    ) -> (Vec<GpuSample>, Vec<String>) {
        let nvml = self.nvml;
        let mut out = Vec::with_capacity(self.devices.len());
        let mut warnings = Vec::new();
        for d in &mut self.devices {
            let mut g = GpuSample {
                index: d.index,
                name: d.name.clone(),
                uuid: d.uuid.clone(),
                ..Default::default()
            };
            if let Some(u) = d.q("util", |x| x.utilization_rates()) {
                g.gpu_util_pct = Some(f64::from(u.gpu));
                g.gpu_mem_util_pct = Some(f64::from(u.memory));
            }
            if let Some(m) = d.q("mem", |x| x.memory_info()) {
                g.gpu_mem_used_bytes = Some(m.used);
                g.gpu_mem_total_bytes = Some(m.total);
            }
            g.gpu_temp_c = d
                .q("temp", |x| x.temperature(TemperatureSensor::Gpu))
                .map(f64::from);
            g.gpu_power_w = d
                .q("power", |x| x.power_usage())
                .map(|mw| f64::from(mw) / 1000.0);
            g.gpu_power_limit_w = d
                .q("power_limit", |x| x.enforced_power_limit())
                .map(|mw| f64::from(mw) / 1000.0);
            if let Some(e) = d.q("energy", |x| x.total_energy_consumption()) {
                if let Some(prev) = d.prev_energy_mj {
                    g.gpu_energy_j = Some(e.saturating_sub(prev) as f64 / 1000.0);
                }
                d.prev_energy_mj = Some(e);
            }
            g.gpu_sm_clock_mhz = d.q("sm_clock", |x| x.clock_info(Clock::SM)).map(u64::from);
            g.gpu_mem_clock_mhz = d
                .q("mem_clock", |x| x.clock_info(Clock::Memory))
                .map(u64::from);
            g.gpu_throttle_reasons = d.q("throttle", |x| x.current_throttle_reasons()).map(|r| {
                r.iter_names()
                    .map(|(n, _)| n.to_ascii_lowercase())
                    .collect()
            });
            g.gpu_pstate = d
                .q("pstate", |x| x.performance_state())
                .map(|p| p.as_c())
                .filter(|p| *p < 16);
            // NVML reports PCIe throughput in KB/s over a 20 ms window.
            g.gpu_pcie_tx_bytes_per_s = d
                .q("pcie_tx", |x| x.pcie_throughput(PcieUtilCounter::Send))
                .map(|k| f64::from(k) * 1024.0);
            g.gpu_pcie_rx_bytes_per_s = d
                .q("pcie_rx", |x| x.pcie_throughput(PcieUtilCounter::Receive))
                .map(|k| f64::from(k) * 1024.0);
            let compute = d.q("procs_compute", |x| x.running_compute_processes());
            let graphics = d.q("procs_graphics", |x| x.running_graphics_processes());
            if !ranks.is_empty() {
                let since = d.proc_util_ts;
                let util = d.q("procs_util", |x| x.process_utilization_stats(since));
                let procs: Vec<&ProcessInfo> =
                    compute.iter().chain(graphics.iter()).flatten().collect();
                g.gpu_ranks = Some(per_rank(ranks, &procs, util.as_deref().unwrap_or_default()));
                if let Some(newest) = util.iter().flatten().map(|u| u.timestamp).max() {
                    d.proc_util_ts = Some(newest);
                }
            }
            if compute.is_some() || graphics.is_some() {
                let mut seen = HashSet::new();
                let mut used = 0u64;
                for p in compute.into_iter().chain(graphics).flatten() {
                    if tree.contains(&p.pid)
                        && seen.insert(p.pid)
                        && let UsedGpuMemory::Used(b) = p.used_gpu_memory
                    {
                        used += b;
                    }
                }
                g.gpu_proc_mem_used_bytes = Some(used);
            }
            if let Some(new) = d.q("gpm", |x| x.gpm_sample()) {
                if let Some(prev) = d.gpm_prev.take() {
                    let ids = [
                        GpmMetricId::SmUtil,
                        GpmMetricId::AnyTensorUtil,
                        GpmMetricId::DramBwUtil,
                    ];
                    match gpm_metrics_get(nvml, &prev, &new, &ids) {
                        Ok(results) => {
                            let mut vals = results.into_iter().map(|r| r.ok().map(|m| m.value));
                            g.gpu_sm_util_pct = vals.next().flatten();
                            g.gpu_tensor_util_pct = vals.next().flatten();
                            g.gpu_dram_bw_util_pct = vals.next().flatten();
                        }
                        Err(e) if classify(&e) == ErrClass::Unsupported => {
                            d.unsupported.insert("gpm");
                        }
                        Err(_) => {}
                    }
                }
                d.gpm_prev = Some(new);
            }
            if d.lost {
                // Whatever was read before the loss is discarded: a lost device reports nothing.
                g = GpuSample {
                    index: d.index,
                    name: d.name.clone(),
                    uuid: d.uuid.clone(),
                    ..Default::default()
                };
                g.state = "lost".into();
                d.gpm_prev = None;
                if self.lost_reported.insert(d.index) {
                    warnings.push(format!(
                        "GPU {} ({}) was lost (NVML GpuLost); sampling continues without it",
                        d.index,
                        d.name.as_deref().unwrap_or("unknown")
                    ));
                }
            } else {
                g.state = "ok".into();
            }
            out.push(g);
        }
        (out, warnings)
    }

    pub(crate) fn all_lost(&self) -> bool {
        self.devices.iter().all(|d| d.lost)
    }
}

/// Each rank's process on one GPU: its memory (NVML's running processes) and its mean
/// utilisation over NVML's per-process samples. Ranks with neither are left out.
fn per_rank(
    ranks: &[(usize, u32)],
    procs: &[&ProcessInfo],
    util: &[ProcessUtilizationSample],
) -> Vec<RankOnGpu> {
    let mean = |v: Vec<u32>| {
        (!v.is_empty()).then(|| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64)
    };
    ranks
        .iter()
        .filter_map(|&(rank, pid)| {
            let mine: Vec<&&ProcessInfo> = procs.iter().filter(|p| p.pid == pid).collect();
            let samples: Vec<&ProcessUtilizationSample> =
                util.iter().filter(|u| u.pid == pid).collect();
            if mine.is_empty() && samples.is_empty() {
                return None;
            }
            // A process listed as compute and graphics holds its memory once.
            let mem = mine.first().and_then(|p| match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => Some(b),
                UsedGpuMemory::Unavailable => None,
            });
            Some(RankOnGpu {
                rank,
                pid,
                gpu_mem_used_bytes: mem,
                gpu_sm_util_pct: mean(samples.iter().map(|u| u.sm_util).collect()),
                gpu_mem_util_pct: mean(samples.iter().map(|u| u.mem_util).collect()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_get_their_own_processes_share() {
        let a = ProcessInfo {
            pid: 10,
            used_gpu_memory: UsedGpuMemory::Used(1 << 20),
            gpu_instance_id: None,
            compute_instance_id: None,
        };
        let b = ProcessInfo {
            pid: 99,
            used_gpu_memory: UsedGpuMemory::Used(5),
            gpu_instance_id: None,
            compute_instance_id: None,
        };
        let u = |pid, sm| ProcessUtilizationSample {
            pid,
            timestamp: 1,
            sm_util: sm,
            mem_util: 1,
            enc_util: 0,
            dec_util: 0,
        };
        let got = per_rank(
            &[(0, 10), (1, 11), (2, 12)],
            &[&a, &b],
            &[u(10, 40), u(10, 60), u(11, 7)],
        );
        assert_eq!(got.len(), 2, "rank 2 has no process on this GPU: {got:?}");
        assert_eq!(
            (
                got[0].rank,
                got[0].gpu_mem_used_bytes,
                got[0].gpu_sm_util_pct
            ),
            (0, Some(1 << 20), Some(50.0))
        );
        assert_eq!(
            (
                got[1].rank,
                got[1].gpu_mem_used_bytes,
                got[1].gpu_sm_util_pct
            ),
            (1, None, Some(7.0))
        );
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(classify(&NvmlError::GpuLost), ErrClass::Lost);
        assert_eq!(classify(&NvmlError::NotSupported), ErrClass::Unsupported);
        assert_eq!(
            classify(&NvmlError::FunctionNotFound),
            ErrClass::Unsupported
        );
        assert_eq!(classify(&NvmlError::Timeout), ErrClass::Transient);
        assert_eq!(classify(&NvmlError::Unknown), ErrClass::Transient);
    }
}
