//! `codex plot RUN… [-o curves.svg|png] [--metrics …] [--smooth W] [--log-y] [--x …]`: the runs'
//! curves, one chart per metric with the runs overlaid, drawn without Python or a browser.

use crate::ctx::{Ctx, out_line, with_hint};
use anyhow::{Context as _, bail};
use codex_core::exit;
use codex_track::plot::{self, PlotOptions, XAxis};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run directories (each holding metrics.ndjson).
    #[arg(value_name = "RUN", required = true)]
    pub runs: Vec<PathBuf>,
    /// The image: PNG when it ends in .png, SVG otherwise.
    #[arg(long, short = 'o', value_name = "FILE", default_value = "curves.svg")]
    pub output: PathBuf,
    /// Metrics to chart, one chart each: train_loss, train_loss_mean, lr, grad_norm,
    /// tokens_per_s, step_time_ms, val_loss, val_ppl, val_token_acc.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "train_loss,val_loss,lr"
    )]
    pub metrics: Vec<String>,
    /// Exponential smoothing weight in [0, 1), as TensorBoard's slider (0.6 is its default).
    #[arg(long, value_name = "W", default_value_t = 0.0)]
    pub smooth: f64,
    /// Logarithmic y axis (non-positive values are left out).
    #[arg(long)]
    pub log_y: bool,
    /// The x axis.
    #[arg(long, value_enum, default_value = "step")]
    pub x: X,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum X {
    Step,
    Tokens,
    Time,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    if !(args.smooth.is_finite() && (0.0..1.0).contains(&args.smooth)) {
        return Err(with_hint(
            anyhow::anyhow!("--smooth {} is not in [0, 1)", args.smooth),
            "0 draws the raw values; 0.6 is TensorBoard's default",
        ));
    }
    for m in &args.metrics {
        if !plot::METRICS.contains(&m.as_str()) {
            return Err(with_hint(
                anyhow::anyhow!("unknown metric `{m}`"),
                format!("choose from {}", plot::METRICS.join(", ")),
            ));
        }
    }
    let mut runs = Vec::new();
    for run in &args.runs {
        if !run.join("metrics.ndjson").is_file() {
            bail!(
                "{} is not a run directory: no metrics.ndjson",
                run.display()
            );
        }
        let name = std::path::absolute(run)?.file_name().map_or_else(
            || run.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let curves = plot::load(run, name)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot read {}", run.display()))?;
        runs.push(curves);
    }
    let opts = PlotOptions {
        metrics: args.metrics.clone(),
        x: match args.x {
            X::Step => XAxis::Step,
            X::Tokens => XAxis::Tokens,
            X::Time => XAxis::Time,
        },
        smooth: args.smooth,
        log_y: args.log_y,
        ..PlotOptions::default()
    };
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        codex_core::fsutil::create_dir_all(dir)?;
    }
    let r = plot::render(&runs, &opts, &args.output)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot draw {}", args.output.display()))?;
    if !r.empty.is_empty() {
        ctx.warn(format!("no run has {}: left out", r.empty.join(", ")));
    }
    if ctx.json {
        out_line(serde_json::json!({
            "path": args.output, "charts": r.charts, "runs": args.runs,
            "width": r.width, "height": r.height,
        }))?;
    } else {
        out_line(format!(
            "{}: {} chart(s) ({}) of {} run(s), {}x{}",
            args.output.display(),
            r.charts.len(),
            r.charts.join(", "),
            runs.len(),
            r.width,
            r.height
        ))?;
    }
    Ok(exit::OK)
}
