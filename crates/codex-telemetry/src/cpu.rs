//! Host and process-tree fields through sysinfo: one `System` kept alive, refreshed selectively
//! (CPU usage, memory, and only the processes of our tree), because sysinfo computes usage
//! from differences between refreshes.

use crate::TelemetryError;
use std::collections::HashMap;
use std::time::Instant;
use sysinfo::{
    CpuRefreshKind, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System,
};

/// What the CPU side of one sample holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuFields {
    pub cpu_count: usize,
    pub cpu_util_pct: f64,
    pub cpu_core_util_pct: Vec<f64>,
    pub load_avg: Option<(f64, f64, f64)>,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub mem_available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub tree: Vec<u32>,
    pub proc_cpu_pct: f64,
    pub proc_rss_bytes: u64,
    pub proc_threads: Option<u64>,
    pub proc_disk_read_bytes_per_s: Option<f64>,
    pub proc_disk_write_bytes_per_s: Option<f64>,
}

pub(crate) struct CpuCollector {
    sys: System,
    root: Pid,
    /// Pids refreshed last time, so that processes which left the tree are dropped by sysinfo.
    prev_tree: Vec<Pid>,
    /// Cumulative (CPU ms, disk read bytes, disk written bytes) per pid at the last refresh,
    /// for per-second rates.
    prev: HashMap<Pid, (u64, u64, u64)>,
    last_refresh: Instant,
}

impl CpuCollector {
    /// Creates the `System` and takes the priming refresh whose CPU numbers are meaningless
    /// (sysinfo needs two readings); it is never reported.
    pub(crate) fn new() -> Result<Self, TelemetryError> {
        let root =
            sysinfo::get_current_pid().map_err(|e| TelemetryError::Platform(e.to_string()))?;
        Self::with_root(root)
    }

    /// Samples the tree of another process (a job started elsewhere) instead of this one.
    pub(crate) fn for_pid(pid: u32) -> Result<Self, TelemetryError> {
        let root = Pid::from_u32(pid);
        let mut probe = System::new().map_err(|e| TelemetryError::Platform(e.to_string()))?;
        probe.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[root]),
            true,
            ProcessRefreshKind::nothing(),
        );
        if probe.process(root).is_none() {
            return Err(TelemetryError::NoProcess(pid));
        }
        Self::with_root(root)
    }

    fn with_root(root: Pid) -> Result<Self, TelemetryError> {
        let sys = System::new().map_err(|e| TelemetryError::Platform(e.to_string()))?;
        let mut c = Self {
            sys,
            root,
            prev_tree: Vec::new(),
            prev: HashMap::new(),
            last_refresh: Instant::now(),
        };
        c.collect_at();
        Ok(c)
    }

    /// Time left before a refresh gives meaningful CPU usage.
    pub(crate) fn ready_in(&self) -> std::time::Duration {
        sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.saturating_sub(self.last_refresh.elapsed())
    }

    fn refresh(&mut self) -> (Vec<Pid>, Option<u64>, f64) {
        let elapsed = self.last_refresh.elapsed().as_secs_f64();
        self.sys
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        let (tree, threads) = process_tree(self.root);
        let mut update = tree.clone();
        for p in &self.prev_tree {
            if !update.contains(p) {
                update.push(*p);
            }
        }
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&update),
            true,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .with_disk_usage(),
        );
        self.prev_tree = tree.clone();
        self.last_refresh = Instant::now();
        (tree, threads, elapsed)
    }

    /// Refreshes and reads every CPU-side field. Waits out the rest of sysinfo's minimum CPU
    /// interval first, so a reading is never computed over a too-short window.
    pub(crate) fn collect(&mut self) -> CpuFields {
        let wait = self.ready_in();
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        self.collect_at()
    }

    fn collect_at(&mut self) -> CpuFields {
        let (tree, threads, elapsed) = self.refresh();
        let sys = &self.sys;
        let load = System::load_average()
            .ok()
            .map(|l| (l.one, l.five, l.fifteen));
        let mut f = CpuFields {
            cpu_count: sys.cpus().len(),
            cpu_util_pct: f64::from(sys.global_cpu_usage()),
            cpu_core_util_pct: sys.cpus().iter().map(|c| f64::from(c.usage())).collect(),
            load_avg: load,
            mem_total_bytes: sys.total_memory(),
            mem_used_bytes: sys.used_memory(),
            mem_available_bytes: sys.available_memory(),
            swap_total_bytes: sys.total_swap(),
            swap_used_bytes: sys.used_swap(),
            proc_threads: threads,
            ..Default::default()
        };
        let mut now = HashMap::new();
        let (mut cpu_ms, mut read, mut written) = (0u64, 0u64, 0u64);
        for pid in &tree {
            let Some(p) = sys.process(*pid) else { continue };
            f.tree.push(pid.as_u32());
            f.proc_rss_bytes += p.memory();
            let d = p.disk_usage();
            let cur = (
                p.accumulated_cpu_time(),
                d.total_read_bytes,
                d.total_written_bytes,
            );
            // Only processes seen at the previous refresh contribute to a rate; a newcomer's
            // cumulative totals are not work done in this interval.
            if let Some(old) = self.prev.get(pid) {
                cpu_ms += cur.0.saturating_sub(old.0);
                read += cur.1.saturating_sub(old.1);
                written += cur.2.saturating_sub(old.2);
            }
            now.insert(*pid, cur);
        }
        // Process CPU from CPU-time deltas over wall time (as psutil does): percent of one core.
        if elapsed > 0.0 {
            f.proc_cpu_pct = cpu_ms as f64 / 1000.0 / elapsed * 100.0;
            f.proc_disk_read_bytes_per_s = Some(read as f64 / elapsed);
            f.proc_disk_write_bytes_per_s = Some(written as f64 / elapsed);
        }
        self.prev = now;
        f
    }
}

/// Our process and its descendants, with the total thread count. On Linux the children come
/// from `/proc/<pid>/task/<tid>/children` (every thread, since any thread may spawn), which
/// avoids scanning all of `/proc` on each sample.
#[cfg(target_os = "linux")]
fn process_tree(root: Pid) -> (Vec<Pid>, Option<u64>) {
    const MAX_TREE: usize = 4096;
    let mut out = vec![root];
    let mut threads = 0u64;
    let mut i = 0;
    while i < out.len() && out.len() < MAX_TREE {
        let pid = out[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            threads += 1;
            let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in text
                .split_whitespace()
                .filter_map(|c| c.parse::<usize>().ok())
            {
                let child = Pid::from(child);
                if !out.contains(&child) {
                    out.push(child);
                }
            }
        }
    }
    (out, if threads > 0 { Some(threads) } else { None })
}

#[cfg(not(target_os = "linux"))]
fn process_tree(root: Pid) -> (Vec<Pid>, Option<u64>) {
    (vec![root], None)
}
