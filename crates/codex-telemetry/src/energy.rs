//! Cumulative energy counters the hardware keeps: Intel/AMD RAPL package domains under
//! `/sys/class/powercap` for CPUs, NVML's total-energy counter for NVIDIA GPUs. A training loop
//! reads the meter at window boundaries and divides the joules by the tokens in between
//! (`joules_per_token`); where no counter is readable there is no meter, and the metric is null
//! rather than a made-up 0.

use std::path::{Path, PathBuf};

/// One RAPL package domain: its cumulative counter and the value at which it wraps.
#[derive(Debug)]
struct RaplZone {
    energy: PathBuf,
    max_uj: u64,
}

#[derive(Debug)]
enum Source {
    Rapl(Vec<RaplZone>),
    Nvml(u32),
}

/// A cumulative energy reading in joules, and where it comes from.
#[derive(Debug)]
pub struct EnergyMeter {
    source: Source,
    last: Vec<u64>,
}

impl EnergyMeter {
    /// The CPU packages' RAPL counters under `root` (normally `/sys/class/powercap`): every
    /// top-level `intel-rapl:N` zone (package; sub-zones such as `intel-rapl:N:M` are parts of it
    /// and are not added again). `None` when there is none or none is readable (RAPL is often
    /// root-only, and absent in VMs).
    pub fn rapl(root: &Path) -> Option<Self> {
        let mut zones: Vec<RaplZone> = std::fs::read_dir(root)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("intel-rapl:") && name.matches(':').count() == 1
            })
            .filter_map(|e| {
                let dir = e.path();
                let max_uj = read_u64(&dir.join("max_energy_range_uj"))?;
                let energy = dir.join("energy_uj");
                read_u64(&energy)?;
                Some(RaplZone { energy, max_uj })
            })
            .collect();
        if zones.is_empty() {
            return None;
        }
        zones.sort_by(|a, b| a.energy.cmp(&b.energy));
        let last = zones.iter().filter_map(|z| read_u64(&z.energy)).collect();
        Some(Self {
            source: Source::Rapl(zones),
            last,
        })
    }

    /// GPU `index`'s NVML total-energy counter (millijoules since the driver loaded); `None`
    /// without NVML or on GPUs that do not report it.
    pub fn nvml(index: u32) -> Option<Self> {
        let mj = nvml_energy_mj(index)?;
        Some(Self {
            source: Source::Nvml(index),
            last: vec![mj],
        })
    }

    /// The meter for a training device: `cuda:N` → NVML of GPU N, the CPU → RAPL.
    pub fn for_device(cuda_ordinal: Option<usize>) -> Option<Self> {
        match cuda_ordinal {
            Some(i) => Self::nvml(u32::try_from(i).ok()?),
            None => Self::rapl(Path::new("/sys/class/powercap")),
        }
    }

    /// What the meter reads, for the run record (`rapl` or `nvml`).
    pub fn source(&self) -> &'static str {
        match self.source {
            Source::Rapl(_) => "rapl",
            Source::Nvml(_) => "nvml",
        }
    }

    /// Joules used since the previous call (or since the meter was made), counter wraparound
    /// included; `None` if a counter could not be read this time.
    pub fn joules_since_last(&mut self) -> Option<f64> {
        match &self.source {
            Source::Rapl(zones) => {
                let now: Vec<u64> = zones
                    .iter()
                    .map(|z| read_u64(&z.energy))
                    .collect::<Option<_>>()?;
                let uj: u64 = zones
                    .iter()
                    .zip(now.iter().zip(&self.last))
                    .map(|(z, (&n, &p))| delta(p, n, z.max_uj))
                    .sum();
                self.last = now;
                Some(uj as f64 / 1e6)
            }
            Source::Nvml(i) => {
                let now = nvml_energy_mj(*i)?;
                let mj = now.saturating_sub(self.last.first().copied().unwrap_or(now));
                self.last = vec![now];
                Some(mj as f64 / 1e3)
            }
        }
    }
}

/// `now − prev` for a counter that wraps to 0 after `max`.
fn delta(prev: u64, now: u64, max: u64) -> u64 {
    if now >= prev {
        now - prev
    } else {
        max.saturating_sub(prev) + now
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    // The files hold one decimal number; a bounded read keeps a strange file from costing much.
    let mut buf = [0u8; 32];
    let n = std::io::Read::read(&mut std::fs::File::open(path).ok()?, &mut buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

fn nvml_energy_mj(index: u32) -> Option<u64> {
    let nvml = crate::gpu::nvml().ok()?;
    nvml.device_by_index(index)
        .ok()?
        .total_energy_consumption()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, name: &str, energy: u64, max: u64) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("energy_uj"), format!("{energy}\n")).unwrap();
        std::fs::write(d.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
    }

    #[test]
    fn rapl_sums_packages_not_subzones_and_handles_wraparound() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        zone(root, "intel-rapl:0", 1_000_000, 10_000_000);
        zone(root, "intel-rapl:1", 9_500_000, 10_000_000);
        zone(root, "intel-rapl:0:0", 500_000, 10_000_000); // a core sub-zone: not added
        let mut m = EnergyMeter::rapl(root).unwrap();
        assert_eq!(m.source(), "rapl");
        zone(root, "intel-rapl:0", 3_000_000, 10_000_000); // +2 J
        zone(root, "intel-rapl:1", 500_000, 10_000_000); // wrapped: +0.5 + 0.5 J
        zone(root, "intel-rapl:0:0", 9_000_000, 10_000_000);
        assert_eq!(m.joules_since_last(), Some(3.0));
        assert_eq!(m.joules_since_last(), Some(0.0));
    }

    #[test]
    fn no_readable_counter_means_no_meter() {
        let dir = tempfile::tempdir().unwrap();
        assert!(EnergyMeter::rapl(dir.path()).is_none());
        assert!(EnergyMeter::rapl(&dir.path().join("missing")).is_none());
        std::fs::create_dir_all(dir.path().join("intel-rapl:0")).unwrap();
        assert!(EnergyMeter::rapl(dir.path()).is_none(), "no energy_uj file");
    }
}
