//! `codex metrics sample|watch`: the system sampler on its own.

use crate::ctx::{Ctx, out_line};
use anyhow::Context as _;
use codex_core::exit;
use codex_core::ndjson::NdjsonWriter;
use codex_telemetry::{Collector, GpuMode, GpuStatus, MIN_INTERVAL, Sample};
use indicatif::HumanBytes;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Take one sample: CPU, memory, this process, every GPU (a table, or JSON with --json).
    Sample(GpuArgs),
    /// Sample on a cadence: a live view on a terminal, NDJSON lines with --json or --output.
    Watch(WatchArgs),
}

#[derive(clap::Args, Debug)]
struct GpuArgs {
    /// What to sample, as `system_metrics.mode` and `train --system-metrics` name it: `cpu`
    /// (host, memory, the process tree), `gpu` (also every GPU NVML sees; warns when NVML is
    /// unavailable), `auto` (GPUs when present, the reason recorded when not).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// Old spelling of `--mode gpu`.
    #[arg(long, hide = true, conflicts_with_all = ["mode", "no_gpu"])]
    gpu: bool,
    /// Old spelling of `--mode cpu`.
    #[arg(long, hide = true, conflicts_with = "mode")]
    no_gpu: bool,
    /// Attach to this process and its children (a job started elsewhere) instead of this
    /// command's own process tree.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ModeArg {
    Auto,
    Cpu,
    Gpu,
}

impl GpuArgs {
    fn effective(&self) -> ModeArg {
        match (self.gpu, self.no_gpu) {
            (true, _) => ModeArg::Gpu,
            (_, true) => ModeArg::Cpu,
            _ => self.mode,
        }
    }
}

#[derive(clap::Args, Debug)]
struct WatchArgs {
    /// Milliseconds between samples (at least 200), as `system_metrics.interval_ms`.
    #[arg(long, value_name = "MS", conflicts_with = "interval")]
    interval_ms: Option<u64>,
    /// Old spelling: seconds between samples.
    #[arg(long, value_name = "S", hide = true)]
    interval: Option<f64>,
    /// Stop after N samples (default: until Ctrl-C).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Append every sample as one NDJSON line to this file.
    #[arg(
        short = 'o',
        long = "output",
        alias = "out",
        value_name = "FILE.ndjson"
    )]
    out: Option<PathBuf>,
    #[command(flatten)]
    gpu: GpuArgs,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    match args.cmd {
        Cmd::Sample(a) => sample(ctx, &a),
        Cmd::Watch(a) => watch(ctx, a),
    }
}

fn mode(a: &GpuArgs) -> GpuMode {
    if a.effective() == ModeArg::Cpu {
        GpuMode::Cpu
    } else {
        GpuMode::Gpu
    }
}

fn collector(ctx: &Ctx, a: &GpuArgs) -> anyhow::Result<Collector> {
    let mut c = match a.pid {
        Some(pid) => Collector::for_pid(pid, mode(a))?,
        None => Collector::new(mode(a))?,
    };
    let warnings = c.take_warnings();
    if a.effective() == ModeArg::Gpu {
        for w in warnings {
            ctx.warn(w);
        }
    }
    Ok(c)
}

fn sample(ctx: &Ctx, a: &GpuArgs) -> anyhow::Result<u8> {
    let mut c = collector(ctx, a)?;
    let s = c.sample();
    for w in c.take_warnings() {
        ctx.warn(w);
    }
    if ctx.json {
        out_line(serde_json::to_string_pretty(&s)?)?;
    } else {
        out_line(render(&s).trim_end())?;
    }
    Ok(exit::OK)
}

fn watch(ctx: &Ctx, a: WatchArgs) -> anyhow::Result<u8> {
    let secs = match (a.interval_ms, a.interval) {
        (Some(ms), _) => ms as f64 / 1000.0,
        (None, Some(s)) => s,
        (None, None) => 1.0,
    };
    let interval = Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d >= MIN_INTERVAL)
        .ok_or_else(|| match a.interval_ms {
            Some(ms) => anyhow::anyhow!("--interval-ms {ms} is invalid: it must be at least 200"),
            None => anyhow::anyhow!(
                "--interval {secs} is invalid: it must be at least 0.2 seconds (--interval-ms 200)"
            ),
        })?;
    if a.count == Some(0) {
        anyhow::bail!("--count 0 is invalid: it must be at least 1");
    }
    let mut file = match &a.out {
        Some(p) => Some(
            NdjsonWriter::append(p)
                .with_context(|| format!("cannot write samples to {}", p.display()))?,
        ),
        None => None,
    };
    let mut c = collector(ctx, &a.gpu)?;
    let live = !ctx.json && std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut taken = 0u64;
    loop {
        // Fixed cadence from the start; the first reading comes one interval after priming.
        let deadline = start + interval * u32::try_from(taken + 1).unwrap_or(u32::MAX);
        if !wait_until(deadline) {
            if let Some(f) = &mut file {
                f.sync().ok();
            }
            ctx.info(format!("interrupted after {taken} samples"));
            return Ok(exit::INTERRUPTED);
        }
        let s = c.sample();
        taken += 1;
        for w in c.take_warnings() {
            ctx.warn(w);
        }
        if let (Some(f), Some(p)) = (&mut file, &a.out) {
            f.write(&s)
                .with_context(|| format!("cannot write samples to {}", p.display()))?;
        }
        if ctx.json {
            out_line(serde_json::to_string(&s)?)?;
        } else if live {
            // Clear the screen and redraw in place.
            out_line(format!("\x1b[H\x1b[2J{}", render(&s).trim_end()))?;
        } else if file.is_none() || std::io::stdout().is_terminal() {
            out_line(render(&s))?;
        }
        if a.count.is_some_and(|n| taken >= n) {
            return Ok(exit::OK);
        }
    }
}

/// Sleeps until `deadline`, polling the Ctrl-C flag; false when interrupted.
fn wait_until(deadline: Instant) -> bool {
    loop {
        if codex_core::signal::interrupted() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "n/a".to_string(), f)
}

/// A gpustat-like text view of one sample.
fn render(s: &Sample) -> String {
    let mut o = String::new();
    let cores: Vec<String> = s
        .cpu_core_util_pct
        .iter()
        .map(|c| format!("{c:.0}"))
        .collect();
    let _ = writeln!(o, "{}", s.ts);
    let _ = writeln!(
        o,
        "cpu   {:5.1}%  cores [{}]  load {} {} {}",
        s.cpu_util_pct,
        cores.join(" "),
        opt(s.load_avg_1m, |v| format!("{v:.2}")),
        opt(s.load_avg_5m, |v| format!("{v:.2}")),
        opt(s.load_avg_15m, |v| format!("{v:.2}")),
    );
    let _ = writeln!(
        o,
        "mem   {} / {} used, {} available  swap {} / {}",
        HumanBytes(s.mem_used_bytes),
        HumanBytes(s.mem_total_bytes),
        HumanBytes(s.mem_available_bytes),
        HumanBytes(s.swap_used_bytes),
        HumanBytes(s.swap_total_bytes),
    );
    let _ = writeln!(
        o,
        "proc  {} process(es), {} threads  cpu {:.1}%  rss {}  disk read {}/s write {}/s",
        s.proc_count,
        opt(s.proc_threads, |v| v.to_string()),
        s.proc_cpu_pct,
        HumanBytes(s.proc_rss_bytes),
        opt(s.proc_disk_read_bytes_per_s, |v| HumanBytes(v as u64)
            .to_string()),
        opt(s.proc_disk_write_bytes_per_s, |v| HumanBytes(v as u64)
            .to_string()),
    );
    match s.gpu_status {
        GpuStatus::NotRequested => {
            let _ = writeln!(o, "gpu   not requested");
        }
        GpuStatus::Unavailable => {
            let _ = writeln!(
                o,
                "gpu   unavailable: {}",
                s.gpu_reason.as_deref().unwrap_or("unknown reason")
            );
        }
        GpuStatus::Ok => {
            if let Some(r) = &s.gpu_reason {
                let _ = writeln!(o, "gpu   {r}");
            }
        }
    }
    for g in &s.gpus {
        let name = g.name.as_deref().unwrap_or("unknown GPU");
        if g.state == "lost" {
            let _ = writeln!(o, "[{}] {name} | lost", g.index);
            continue;
        }
        let _ = writeln!(
            o,
            "[{}] {name} | {} | {} util | {} / {} | {} / {} | {} | sm {} tensor {} | ours {}",
            g.index,
            opt(g.gpu_temp_c, |v| format!("{v:.0}°C")),
            opt(g.gpu_util_pct, |v| format!("{v:.0}%")),
            opt(g.gpu_mem_used_bytes, |v| HumanBytes(v).to_string()),
            opt(g.gpu_mem_total_bytes, |v| HumanBytes(v).to_string()),
            opt(g.gpu_power_w, |v| format!("{v:.0} W")),
            opt(g.gpu_power_limit_w, |v| format!("{v:.0} W")),
            opt(g.gpu_pstate, |v| format!("P{v}")),
            opt(g.gpu_sm_util_pct, |v| format!("{v:.0}%")),
            opt(g.gpu_tensor_util_pct, |v| format!("{v:.0}%")),
            opt(g.gpu_proc_mem_used_bytes, |v| HumanBytes(v).to_string()),
        );
    }
    o
}
