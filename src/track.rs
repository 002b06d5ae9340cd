//! `--track` and `[tracking]`: the tracking sinks a `codex train` adds to the trainer's fan-out.

use crate::ctx::Ctx;
use anyhow::Context as _;
use codex_core::event::EventSink;
use codex_track::mlflow::{self, Delivery, Endpoint, MlflowSink};
use codex_track::{CsvSink, TensorBoardSink};
use codex_train::config::{TensorboardSetting, TrackingSection};
use std::path::{Path, PathBuf};

/// A tracker a run can write to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tracker {
    /// Event files under `<run>/tensorboard/`.
    Tensorboard,
    /// `<run>/metrics.csv`.
    Csv,
    /// An MLflow run on `tracking.mlflow` or `MLFLOW_TRACKING_URI`.
    Mlflow,
}

/// The sinks for the trackers of `--track` and of the config's `[tracking]`, writing for the
/// run directory `run`. They open files and connections on the first event, so a run the
/// trainer refuses leaves nothing behind. Fails before training when MLflow is asked for and
/// no server is named.
pub fn sinks<'a>(
    ctx: &'a Ctx,
    trackers: &[Tracker],
    cfg: &TrackingSection,
    run: &Path,
) -> anyhow::Result<Vec<Box<dyn EventSink + 'a>>> {
    let mut out: Vec<Box<dyn EventSink + 'a>> = Vec::new();
    let tensorboard = match &cfg.tensorboard {
        TensorboardSetting::Dir(d) => Some(Some(PathBuf::from(d))),
        TensorboardSetting::On(true) => Some(None),
        TensorboardSetting::On(false) => trackers.contains(&Tracker::Tensorboard).then_some(None),
    };
    if let Some(dir) = tensorboard {
        let dir = match dir {
            Some(d) => d.join(run_name(run)?),
            None => run.join("tensorboard"),
        };
        out.push(Box::new(TensorBoardSink::new(dir).with_run_dir(run)));
    }
    if cfg.csv || trackers.contains(&Tracker::Csv) {
        out.push(Box::new(CsvSink::new(run.join("metrics.csv"))));
    }
    let uri = Some(cfg.mlflow.trim()).filter(|u| !u.is_empty());
    if uri.is_some() || trackers.contains(&Tracker::Mlflow) {
        let endpoint = Endpoint::resolve(uri).map_err(anyhow::Error::msg)?;
        let experiment =
            mlflow::experiment_name(Some(cfg.mlflow_experiment.as_str()).filter(|s| !s.is_empty()));
        let run_dir = run.to_path_buf();
        let sink = MlflowSink::new(endpoint, experiment, run)
            .on_report(move |d| report(ctx, &run_dir, &d));
        out.push(Box::new(sink));
    }
    Ok(out)
}

/// What the MLflow sink delivered, on stderr: a warning with the way to deliver the rest when
/// anything is missing.
fn report(ctx: &Ctx, run: &Path, d: &Delivery) {
    let run_id = d.run_id.as_deref().unwrap_or("(not created)");
    if d.complete() && d.artifact_error.is_none() {
        ctx.info(format!(
            "mlflow: run {run_id} on {}: {} metric points, artifacts {}",
            d.uri,
            d.delivered,
            if d.artifacts.is_empty() {
                "none".to_string()
            } else {
                d.artifacts.join(", ")
            }
        ));
        return;
    }
    let mut missing = Vec::new();
    if d.undelivered() > 0 {
        missing.push(format!("{} of {} metric points", d.undelivered(), d.points));
    }
    if d.params_undelivered > 0 {
        missing.push(format!("{} params/tags", d.params_undelivered));
    }
    if !d.status_sent {
        missing.push("the final status".into());
    }
    if let Some(e) = &d.artifact_error {
        missing.push(format!("artifacts ({e})"));
    }
    let why = d
        .last_error
        .as_deref()
        .map(|e| format!(" (last error: {e})"))
        .unwrap_or_default();
    ctx.warn(format!(
        "mlflow: run {run_id} on {} is missing {}{why}; `codex sync {} --to mlflow:{}` delivers the rest",
        d.uri,
        missing.join(", "),
        crate::settings::shell_quote(&run.display().to_string()),
        d.uri
    ));
}

fn run_name(run: &Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(run)?;
    abs.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} has no directory name", run.display()))
}
