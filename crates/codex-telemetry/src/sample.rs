//! The sample record: one NDJSON line of `system_metrics.ndjson`.
//!
//! Field names end in their unit and are a stable contract (the audit reads them). A value the
//! platform, hardware or driver cannot give is `null`, never 0.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Whether GPU fields were sampled, and if not, why.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GpuStatus {
    /// NVML answered; see `gpus`.
    Ok,
    /// GPU sampling was asked for but is impossible; `gpu_reason` says why.
    Unavailable,
    /// GPU sampling was not asked for.
    NotRequested,
}

/// One system sample.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Sample {
    pub schema_version: u32,
    /// Wall clock, RFC 3339 UTC.
    pub ts: String,
    /// Monotonic seconds since the process started sampling (never goes backwards).
    pub mono_s: f64,
    pub run_id: Option<String>,
    /// Training step current when the sample was taken, when the caller supplies one.
    pub step: Option<u64>,
    /// Wall time the collection itself took (self-overhead of the sampler).
    pub sample_cost_us: f64,

    pub cpu_count: usize,
    /// All cores, 0–100.
    pub cpu_util_pct: f64,
    /// Per logical core, 0–100.
    pub cpu_core_util_pct: Vec<f64>,
    pub load_avg_1m: Option<f64>,
    pub load_avg_5m: Option<f64>,
    pub load_avg_15m: Option<f64>,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub mem_available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,

    /// Processes in our tree (this process and its descendants).
    pub proc_count: usize,
    /// Sum over our tree, in percent of one core (200 = two busy cores).
    pub proc_cpu_pct: f64,
    pub proc_rss_bytes: u64,
    /// Threads in our tree (`null` where the platform does not say).
    pub proc_threads: Option<u64>,
    pub proc_disk_read_bytes_per_s: Option<f64>,
    pub proc_disk_write_bytes_per_s: Option<f64>,

    pub gpu_status: GpuStatus,
    /// Why GPU fields are missing (status `unavailable`) or degraded (a GPU was lost).
    pub gpu_reason: Option<String>,
    pub gpu_driver_version: Option<String>,
    pub gpus: Vec<GpuSample>,

    /// Present when sub-samples were aggregated: count, span, and per-field min/max.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub window: Option<Value>,

    /// Data-parallel runs (one sampler per host): the host this sample describes…
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host: Option<String>,
    /// …and the ranks running on it, ascending.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ranks: Option<Vec<usize>>,
}

/// One GPU in a sample.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct GpuSample {
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// `ok`, or `lost` once NVML reported the GPU gone (all fields then `null`).
    pub state: String,
    pub gpu_util_pct: Option<f64>,
    pub gpu_mem_util_pct: Option<f64>,
    pub gpu_mem_used_bytes: Option<u64>,
    pub gpu_mem_total_bytes: Option<u64>,
    pub gpu_temp_c: Option<f64>,
    pub gpu_power_w: Option<f64>,
    pub gpu_power_limit_w: Option<f64>,
    /// Energy used since the previous sample (from the driver's cumulative counter).
    pub gpu_energy_j: Option<f64>,
    pub gpu_sm_clock_mhz: Option<u64>,
    pub gpu_mem_clock_mhz: Option<u64>,
    /// Active clock throttle reasons, e.g. `["gpu_idle"]`; empty when none.
    pub gpu_throttle_reasons: Option<Vec<String>>,
    /// Performance state 0 (max) … 15 (min).
    pub gpu_pstate: Option<u32>,
    pub gpu_pcie_tx_bytes_per_s: Option<f64>,
    pub gpu_pcie_rx_bytes_per_s: Option<f64>,
    /// GPU memory held by processes of our tree.
    pub gpu_proc_mem_used_bytes: Option<u64>,
    /// GPM (Hopper+): fraction of SM time busy, and tensor-core utilisation.
    pub gpu_sm_util_pct: Option<f64>,
    pub gpu_tensor_util_pct: Option<f64>,
    pub gpu_dram_bw_util_pct: Option<f64>,
    /// Data-parallel runs: each rank whose process uses this GPU, with its share.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gpu_ranks: Option<Vec<RankOnGpu>>,
}

/// One rank's process on a GPU (NVML's per-process memory and utilisation).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct RankOnGpu {
    pub rank: usize,
    pub pid: u32,
    /// GPU memory the process holds (`null` where the driver does not say, e.g. in a
    /// container without the host's pid namespace).
    pub gpu_mem_used_bytes: Option<u64>,
    /// Mean SM utilisation NVML attributes to the process since the previous sample.
    pub gpu_sm_util_pct: Option<f64>,
    /// Mean frame-buffer (memory) utilisation attributed to the process.
    pub gpu_mem_util_pct: Option<f64>,
}

/// Fields that identify a line rather than measure something; never averaged.
const NOT_AGGREGATED: &[&str] = &["schema_version", "mono_s", "step", "index", "cpu_count"];

/// Folds sub-samples into one line: numeric fields become the mean over the window (integers
/// stay integers), `window` holds `n_samples`, `span_s` and per-field `min`/`max` (GPU fields
/// under `gpus.<index>`). Identity fields (ts, step, names) come from the last sub-sample.
pub fn aggregate(samples: &[Sample]) -> Option<Sample> {
    let last = samples.last()?;
    if samples.len() == 1 {
        return Some(last.clone());
    }
    let values: Vec<Value> = samples
        .iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect();
    let mut out = serde_json::to_value(last).ok()?;
    let mut min = Map::new();
    let mut max = Map::new();
    if let Value::Object(obj) = &mut out {
        let objs: Vec<&Map<String, Value>> = values.iter().filter_map(Value::as_object).collect();
        fold_object(obj, &objs, &mut min, &mut max);
        // GPUs are matched by index, so a GPU lost mid-window still aggregates its good part.
        if let Some(Value::Array(gpus)) = obj.get_mut("gpus") {
            let mut gmin = Map::new();
            let mut gmax = Map::new();
            for gpu in gpus.iter_mut() {
                let Some(g) = gpu.as_object_mut() else {
                    continue;
                };
                let idx = g.get("index").cloned().unwrap_or(Value::Null);
                let peers: Vec<&Map<String, Value>> = objs
                    .iter()
                    .filter_map(|o| o.get("gpus")?.as_array())
                    .flat_map(|a| a.iter().filter_map(Value::as_object))
                    .filter(|p| p.get("index") == Some(&idx))
                    .collect();
                let mut mn = Map::new();
                let mut mx = Map::new();
                fold_object(g, &peers, &mut mn, &mut mx);
                gmin.insert(idx.to_string(), Value::Object(mn));
                gmax.insert(idx.to_string(), Value::Object(mx));
            }
            min.insert("gpus".into(), Value::Object(gmin));
            max.insert("gpus".into(), Value::Object(gmax));
        }
        let span = last.mono_s - samples[0].mono_s;
        obj.insert(
            "window".into(),
            serde_json::json!({
                "n_samples": samples.len(),
                "span_s": span,
                "min": min,
                "max": max,
            }),
        );
    }
    serde_json::from_value(out).ok()
}

/// Replaces each numeric field of `target` by its mean over `peers` (nulls skipped; all-null
/// stays null), recording min/max. Numeric arrays (per-core) are averaged element-wise.
fn fold_object(
    target: &mut Map<String, Value>,
    peers: &[&Map<String, Value>],
    min: &mut Map<String, Value>,
    max: &mut Map<String, Value>,
) {
    let keys: Vec<String> = target.keys().cloned().collect();
    for key in keys {
        if NOT_AGGREGATED.contains(&key.as_str()) {
            continue;
        }
        let cur = &target[&key];
        if cur.is_array()
            && cur
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_number))
        {
            let arrays: Vec<&Vec<Value>> = peers
                .iter()
                .filter_map(|p| p.get(&key)?.as_array())
                .collect();
            let len = arrays.iter().map(|a| a.len()).max().unwrap_or(0);
            let mean: Vec<Value> = (0..len)
                .map(|i| {
                    let xs: Vec<f64> = arrays.iter().filter_map(|a| a.get(i)?.as_f64()).collect();
                    serde_json::json!(xs.iter().sum::<f64>() / xs.len().max(1) as f64)
                })
                .collect();
            if !mean.is_empty() {
                target.insert(key, Value::Array(mean));
            }
            continue;
        }
        let is_number_field = peers
            .iter()
            .any(|p| p.get(&key).is_some_and(Value::is_number))
            && !cur.is_string();
        if !is_number_field {
            continue;
        }
        let xs: Vec<&Value> = peers
            .iter()
            .filter_map(|p| p.get(&key))
            .filter(|v| v.is_number())
            .collect();
        let all_int = xs.iter().all(|v| v.is_u64());
        let fs: Vec<f64> = xs.iter().filter_map(|v| v.as_f64()).collect();
        if fs.is_empty() {
            continue;
        }
        let mean = fs.iter().sum::<f64>() / fs.len() as f64;
        let lo = fs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = fs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let num = |x: f64| {
            if all_int {
                serde_json::json!(x.round() as u64)
            } else {
                serde_json::json!(x)
            }
        };
        target.insert(key.clone(), num(mean));
        min.insert(key.clone(), num(lo));
        max.insert(key, num(hi));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(mono: f64, cpu: f64, mem: u64, gpu_util: Option<f64>) -> Sample {
        Sample {
            schema_version: 1,
            ts: format!("t{mono}"),
            mono_s: mono,
            run_id: None,
            step: Some(mono as u64),
            sample_cost_us: 10.0,
            cpu_count: 2,
            cpu_util_pct: cpu,
            cpu_core_util_pct: vec![cpu, 2.0 * cpu],
            load_avg_1m: None,
            load_avg_5m: None,
            load_avg_15m: None,
            mem_total_bytes: 100,
            mem_used_bytes: mem,
            mem_available_bytes: 100 - mem,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            proc_count: 1,
            proc_cpu_pct: 0.0,
            proc_rss_bytes: 1,
            proc_threads: Some(1),
            proc_disk_read_bytes_per_s: None,
            proc_disk_write_bytes_per_s: None,
            gpu_status: GpuStatus::Ok,
            gpu_reason: None,
            gpu_driver_version: None,
            gpus: vec![GpuSample {
                index: 0,
                state: "ok".into(),
                gpu_util_pct: gpu_util,
                ..Default::default()
            }],
            window: None,
            host: None,
            ranks: None,
        }
    }

    #[test]
    fn aggregate_means_min_max_and_nulls() {
        // Hand-computed: cpu 10, 20, 60 -> mean 30; mem 1, 2, 4 -> mean 2.333 -> 2 (integers
        // stay integers); gpu util 50, null, 70 -> mean 60 over the two readings.
        let a = aggregate(&[
            s(1.0, 10.0, 1, Some(50.0)),
            s(2.0, 20.0, 2, None),
            s(3.0, 60.0, 4, Some(70.0)),
        ])
        .unwrap();
        assert_eq!(a.cpu_util_pct, 30.0);
        assert_eq!(a.cpu_core_util_pct, vec![30.0, 60.0]);
        assert_eq!(a.mem_used_bytes, 2);
        assert_eq!(
            a.step,
            Some(3),
            "identity fields come from the last sub-sample"
        );
        assert_eq!(a.ts, "t3");
        assert_eq!(a.gpus[0].gpu_util_pct, Some(60.0));
        assert_eq!(a.load_avg_1m, None, "all-null stays null, never 0");
        let w = a.window.unwrap();
        assert_eq!(w["n_samples"], 3);
        assert_eq!(w["span_s"], 2.0);
        assert_eq!(w["min"]["cpu_util_pct"], 10.0);
        assert_eq!(w["max"]["cpu_util_pct"], 60.0);
        assert_eq!(w["max"]["mem_used_bytes"], 4);
        assert_eq!(w["min"]["gpus"]["0"]["gpu_util_pct"], 50.0);
        assert_eq!(w["max"]["gpus"]["0"]["gpu_util_pct"], 70.0);
    }

    #[test]
    fn single_sample_is_unchanged() {
        let one = s(1.0, 10.0, 1, Some(5.0));
        assert_eq!(aggregate(std::slice::from_ref(&one)), Some(one));
        assert_eq!(aggregate(&[]), None);
    }
}
