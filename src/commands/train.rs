//! `codex train`: train a model from a TOML config plus `a.b=c` overrides; with no arguments,
//! the embedded default run (a tiny GPT on the shipped CPython corpus).

use crate::ctx::{Ctx, out_line, with_hint};
use codex_core::config::{ConfigError, apply_overrides, load, parse_toml, read_toml_file};
use codex_core::exit;
use codex_train::config::{DEFAULT_CONFIG_TOML, SystemMetricsMode, TrainConfig};
use codex_train::{Observer, Resume, RunOptions, Status};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit codes: 0 done (also when stopped early), 1 invalid input or the run \
failed (non-finite losses), 2 internal error, 130 interrupted (a checkpoint was written)."
)]
pub struct Args {
    /// TOML config; without it, the embedded default run (configs/default.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides such as `training.steps=50` or `optimizer.lr=1e-3`, applied in order.
    #[arg(value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue from the newest valid checkpoint of the run directory.
    #[arg(long, conflicts_with = "resume_from")]
    pub resume: bool,
    /// Continue from this checkpoint directory.
    #[arg(long, value_name = "PATH")]
    pub resume_from: Option<PathBuf>,
    /// Sample system metrics into system_metrics.ndjson beside the loop.
    #[arg(long, value_enum, value_name = "MODE")]
    pub system_metrics: Option<MetricsMode>,
    /// Seconds between system-metrics samples (at least 0.2).
    #[arg(long, value_name = "SECONDS")]
    pub system_metrics_interval: Option<f64>,
    /// The run directory (same as `output.dir=…`).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Stop as Ctrl-C would once this many steps are done (checkpoint, exit 130).
    #[arg(long, value_name = "STEP", hide = true)]
    pub stop_at_step: Option<u64>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsMode {
    /// No sampler.
    Off,
    /// Host CPU, memory and the process tree.
    Cpu,
    /// CPU fields plus NVIDIA GPUs through NVML.
    Gpu,
}

/// Reads the base config (a file, or the embedded default), applies overrides and validates,
/// reporting every problem at once.
pub fn load_config(path: Option<&Path>, overrides: &[String]) -> Result<TrainConfig, ConfigError> {
    let (mut table, name) = match path {
        Some(p) => (read_toml_file(p)?, p.display().to_string()),
        None => (
            parse_toml(DEFAULT_CONFIG_TOML, "configs/default.toml")?,
            "configs/default.toml (embedded)".to_string(),
        ),
    };
    let issues = apply_overrides(&mut table, overrides);
    let source = if overrides.is_empty() {
        name
    } else {
        format!("{name} + overrides")
    };
    if !issues.is_empty() {
        return Err(ConfigError {
            source_name: source,
            issues,
        });
    }
    load::<TrainConfig>(table, &source)
}

/// Turns a library error into the binary's error (internal errors exit 2).
pub fn lib_err(e: codex_train::Error) -> anyhow::Error {
    if e.is_internal() {
        let msg = e.to_string();
        anyhow::Error::new(e).context(codex_core::error::Internal(msg))
    } else {
        anyhow::Error::new(e)
    }
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    let mut overrides = args.overrides.clone();
    if let Some(m) = args.system_metrics {
        let v = match m {
            MetricsMode::Off => "off",
            MetricsMode::Cpu => "cpu",
            MetricsMode::Gpu => "gpu",
        };
        overrides.push(format!("system_metrics.mode={v}"));
    }
    if let Some(s) = args.system_metrics_interval {
        if !(s.is_finite() && s >= 0.2) {
            anyhow::bail!("--system-metrics-interval must be at least 0.2 seconds, got {s}");
        }
        overrides.push(format!(
            "system_metrics.interval_ms={}",
            (s * 1000.0).round() as u64
        ));
    }
    if let Some(o) = &args.output {
        overrides.push(format!(
            "output.dir={}",
            toml::Value::String(o.display().to_string())
        ));
    }
    let cfg = load_config(args.config.as_deref(), &overrides)
        .map_err(|e| with_hint(e, "`codex config validate FILE` lists every problem; `codex config show` prints the defaults"))?;
    if args.system_metrics_interval.is_some() && cfg.system_metrics.mode == SystemMetricsMode::Off {
        ctx.warn("--system-metrics-interval has no effect while system metrics are off (add --system-metrics cpu)");
    }
    let resume = match (&args.resume_from, args.resume) {
        (Some(p), _) => Resume::From(p.clone()),
        (None, true) => Resume::Latest,
        (None, false) => Resume::No,
    };
    let opts = RunOptions {
        resume,
        stop_at_step: args.stop_at_step,
    };
    if args.config.is_none() && !ctx.quiet {
        ctx.info(format!(
            "codex train: the embedded default run ({} steps of {} on the shipped CPython corpus) into {}",
            cfg.training.steps, cfg.model.preset, cfg.output.dir
        ));
    }
    let mut obs = CliObserver { ctx, bar: None };
    let summary = codex_train::train(&cfg, &opts, &mut obs).map_err(|e| {
        let hint = match &e {
            codex_train::Error::Invalid(m) if m.contains("already has") => Some("add --resume, or pass `-o DIR` for a new run"),
            codex_train::Error::Checkpoint(m) if m.contains("lock") || m.contains("held") => {
                Some("another `codex train` is writing this run; wait for it or choose another output.dir")
            }
            _ => None,
        };
        let err = lib_err(e);
        match hint {
            Some(h) => with_hint(err, h),
            None => err,
        }
    })?;
    if !ctx.json {
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
        let fell = match (summary.first_val_loss, summary.val_loss) {
            (Some(a), Some(_)) if summary.steps > 0 => format!(" (first eval {a:.4})"),
            _ => String::new(),
        };
        out_line(format!(
            "{}: {:?} after {}/{} steps: val_loss {}{fell}, val_ppl {}, val_token_acc {}, {:.0} tokens/s; run dir {}",
            summary.run_id,
            summary.status,
            summary.steps,
            summary.total_steps,
            fmt(summary.val_loss),
            fmt(summary.val_ppl),
            fmt(summary.val_token_acc),
            summary.tokens_per_s,
            summary.run_dir.display()
        ))?;
    }
    Ok(match summary.status {
        Status::Completed | Status::EarlyStopped => exit::OK,
        Status::Interrupted => {
            ctx.warn(format!(
                "interrupted at step {}; checkpoint written. Continue with: codex train{} --resume",
                summary.steps,
                args.config
                    .as_ref()
                    .map(|c| format!(" --config {}", c.display()))
                    .unwrap_or_default()
            ));
            exit::INTERRUPTED
        }
        Status::AnomalyStopped => {
            ctx.print_error(&anyhow::anyhow!(
                "stopped after {} non-finite losses or gradients in a row at step {}; the last good weights are in {}",
                cfg.training.max_anomalies,
                summary.steps,
                summary.last_checkpoint.as_ref().map_or("-".into(), |p| p.display().to_string())
            ));
            exit::INVALID
        }
    })
}

/// Progress bar on stderr, events on stdout with `--json`, messages on stderr.
struct CliObserver<'a> {
    ctx: &'a Ctx,
    bar: Option<indicatif::ProgressBar>,
}

impl Observer for CliObserver<'_> {
    fn event(&mut self, event: &serde_json::Value) {
        if self.ctx.json {
            if let Ok(line) = serde_json::to_string(event) {
                // A closed stdout must not stop training; metrics.ndjson still has everything.
                let _ = out_line(line);
            }
        } else if event["event"] == "eval" && !self.ctx.quiet {
            let msg = format!(
                "step {}: val_loss {:.4}, val_ppl {:.2}, val_token_acc {:.3}",
                event["step"],
                event["val_loss"].as_f64().unwrap_or(f64::NAN),
                event["val_ppl"].as_f64().unwrap_or(f64::NAN),
                event["val_token_acc"].as_f64().unwrap_or(f64::NAN)
            );
            match &self.bar {
                Some(b) if !b.is_hidden() => b.println(msg),
                _ => self.ctx.info(msg),
            }
        } else if event["event"] == "anomaly" {
            self.ctx.warn(format!(
                "step {}: non-finite loss or gradient; update skipped",
                event["step"]
            ));
        }
    }

    fn start(&mut self, total: u64, first: u64) {
        let bar = self.ctx.progress_bar(
            total,
            "{spinner} step {pos}/{len} [{bar:30}] {msg} ETA {eta}",
        );
        bar.set_position(first);
        self.bar = Some(bar);
    }

    fn progress(&mut self, step: u64, loss: f64, tps: f64) {
        if let Some(b) = &self.bar {
            b.set_position(step);
            b.set_message(format!("loss {loss:.4} {tps:.0} tok/s"));
        }
    }

    fn message(&mut self, text: &str) {
        if let Some(rest) = text.strip_prefix("warning: ") {
            self.ctx.warn(rest);
        } else if self.ctx.verbose > 0 || text.starts_with("resumed") || text.starts_with("data:") {
            match &self.bar {
                Some(b) if !b.is_hidden() => b.println(text),
                _ => self.ctx.info(text),
            }
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
