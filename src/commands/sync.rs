//! `codex sync RUN… --to tensorboard[:DIR] | csv[:FILE] | mlflow[:URI]`: replays runs' records
//! into a tracker after the fact (a run trained without `--track`, or on an air-gapped box).
//! Idempotent: files are rebuilt from the record each time and replace what an earlier sync or
//! live sink wrote; an MLflow run is found again by its `codex.run_id` tag and receives only
//! the points it lacks. Syncing twice never duplicates points.

use crate::ctx::{Ctx, out_line, with_hint};
use anyhow::{Context as _, bail};
use codex_core::exit;
use codex_track::tensorboard::FILE_SUFFIX;
use codex_track::{CsvSink, ReplayStats, TensorBoardSink};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The record (metrics.ndjson, and system_metrics.ndjson for TensorBoard) \
is the source: each sync rewrites the output from it, replacing the event files codex wrote \
before in that directory (*.codex) or the CSV file, so points are never duplicated. Syncing a \
run that is still training with --track replaces its live file; its later points reach the \
output at the next sync.\n\nMLflow: the run is found by its `codex.run_id` tag (or created in \
the experiment of --experiment, MLFLOW_EXPERIMENT_NAME, or `codex`), and only points whose \
(key, step, timestamp) the server lacks are sent; this is how points a live sink could not \
deliver arrive. MLFLOW_TRACKING_URI, MLFLOW_TRACKING_TOKEN and MLFLOW_TRACKING_USERNAME / \
_PASSWORD are honoured."
)]
pub struct Args {
    /// Run directories (each holding metrics.ndjson).
    #[arg(value_name = "RUN", required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to: `tensorboard` (<run>/tensorboard/), `tensorboard:DIR` (DIR/<run name>/, one
    /// TensorBoard run per codex run), `csv` (<run>/metrics.csv), `csv:FILE` (one run only),
    /// `mlflow` (MLFLOW_TRACKING_URI), `mlflow:http://host:port`.
    #[arg(long, value_name = "TARGET", required = true, value_parser = parse_target)]
    pub to: Vec<Target>,
    /// The MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, else `codex`).
    #[arg(long, value_name = "NAME")]
    pub experiment: Option<String>,
}

/// A sync destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tensorboard(Option<PathBuf>),
    Csv(Option<PathBuf>),
    Mlflow(Option<String>),
}

fn parse_target(s: &str) -> Result<Target, String> {
    let (kind, path) = match s.split_once(':') {
        Some((k, p)) if !p.is_empty() => (k, Some(PathBuf::from(p))),
        Some((k, _)) => (k, None),
        None => (s, None),
    };
    match kind {
        "tensorboard" => Ok(Target::Tensorboard(path)),
        "csv" => Ok(Target::Csv(path)),
        "mlflow" => {
            let uri = s.split_once(':').map(|(_, u)| u.to_string());
            let uri = uri.filter(|u| !u.is_empty());
            if let Some(u) = &uri {
                codex_track::mlflow::Endpoint::resolve(Some(u))?;
            }
            Ok(Target::Mlflow(uri))
        }
        other => Err(format!(
            "unknown tracker `{other}`: expected tensorboard[:DIR], csv[:FILE] or mlflow[:URI]"
        )),
    }
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    for t in &args.to {
        if matches!(t, Target::Csv(Some(_))) && args.runs.len() > 1 {
            return Err(with_hint(
                anyhow::anyhow!("csv:FILE takes one run; {} were given", args.runs.len()),
                "use plain `--to csv` to write each run's own metrics.csv",
            ));
        }
    }
    for run in &args.runs {
        let metrics = run.join("metrics.ndjson");
        if !metrics.is_file() {
            bail!(
                "{} is not a run directory: no metrics.ndjson",
                run.display()
            );
        }
        for t in &args.to {
            let (path, stats, system) = match t {
                Target::Mlflow(uri) => {
                    sync_mlflow(ctx, run, uri.as_deref(), args.experiment.as_deref())?;
                    continue;
                }
                Target::Tensorboard(dir) => sync_tensorboard(run, dir.as_deref())?,
                Target::Csv(file) => {
                    let path = file.clone().unwrap_or_else(|| run.join("metrics.csv"));
                    let stats = sync_csv(&metrics, &path)?;
                    (path, stats, None)
                }
            };
            report(ctx, run, t, &path, stats, system)?;
        }
    }
    Ok(exit::OK)
}

fn report(
    ctx: &Ctx,
    run: &Path,
    t: &Target,
    path: &Path,
    stats: ReplayStats,
    system: Option<ReplayStats>,
) -> anyhow::Result<()> {
    let kind = match t {
        Target::Tensorboard(_) => "tensorboard",
        Target::Csv(_) => "csv",
        Target::Mlflow(_) => "mlflow",
    };
    let skipped = stats.skipped + system.map_or(0, |s| s.skipped);
    if ctx.json {
        out_line(serde_json::json!({
            "run": run, "to": kind, "path": path, "events": stats.events,
            "system_samples": system.map(|s| s.events), "skipped_lines": skipped,
        }))?;
    } else {
        let sys = system
            .map(|s| format!(" and {} system samples", s.events))
            .unwrap_or_default();
        out_line(format!(
            "{}: {} events{sys} to {}",
            run.display(),
            stats.events,
            path.display()
        ))?;
    }
    if skipped > 0 {
        ctx.warn(format!(
            "{}: skipped {skipped} malformed or torn line(s) of its record",
            run.display()
        ));
    }
    Ok(())
}

/// Writes a fresh event file beside a temporary name TensorBoard ignores, renames it into
/// place, then removes the other codex event files of that directory.
fn sync_tensorboard(
    run: &Path,
    dir: Option<&Path>,
) -> anyhow::Result<(PathBuf, ReplayStats, Option<ReplayStats>)> {
    let dir = match dir {
        Some(d) => d.join(run_name(run)?),
        None => run.join("tensorboard"),
    };
    codex_core::fsutil::create_dir_all(&dir)?;
    // No "tfevents" in the name: TensorBoard never reads a half-written sync.
    let tmp = dir.join(format!(".codex-sync.{}.tmp", std::process::id()));
    let mut sink = TensorBoardSink::to_file(&tmp).with_run_dir(run);
    let result = (|| {
        let stats = codex_track::replay(&run.join("metrics.ndjson"), &mut sink)?;
        let sys_path = run.join("system_metrics.ndjson");
        let system = if sys_path.is_file() {
            Some(codex_track::replay_system(&sys_path, &mut sink)?)
        } else {
            None
        };
        Ok::<_, codex_core::event::SinkError>((stats, system))
    })();
    drop(sink);
    let (stats, system) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(anyhow::anyhow!(e)).context(format!("cannot sync {}", run.display()));
        }
    };
    let name = TensorBoardSink::default_file_name();
    let path = dir.join(&name);
    std::fs::rename(&tmp, &path)?;
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let n = entry.file_name().to_string_lossy().into_owned();
        if n != name && n.starts_with("events.out.tfevents.") && n.ends_with(FILE_SUFFIX) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot replace {}", entry.path().display()))?;
        }
    }
    codex_core::fsutil::fsync_dir(&dir)?;
    Ok((path, stats, system))
}

/// Rebuilds the CSV in a temporary sibling and renames it over `path`.
fn sync_csv(metrics: &Path, path: &Path) -> anyhow::Result<ReplayStats> {
    let mut stats = ReplayStats::default();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        codex_core::fsutil::create_dir_all(dir)?;
    }
    codex_core::fsutil::atomic_write_with(path, |f| {
        let mut sink = CsvSink::from_writer(&mut *f);
        stats = codex_track::replay(metrics, &mut sink).map_err(std::io::Error::other)?;
        use codex_core::event::EventSink as _;
        sink.flush().map_err(std::io::Error::other)
    })
    .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(stats)
}

fn run_name(run: &Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(run)?;
    abs.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} has no directory name", run.display()))
}

/// Sends what the MLflow server lacks of the run.
fn sync_mlflow(
    ctx: &Ctx,
    run: &Path,
    uri: Option<&str>,
    experiment: Option<&str>,
) -> anyhow::Result<()> {
    use codex_track::mlflow;
    let endpoint = mlflow::Endpoint::resolve(uri).map_err(|e| {
        with_hint(
            anyhow::anyhow!(e),
            "use --to mlflow:http://host:port or set MLFLOW_TRACKING_URI",
        )
    })?;
    let base = endpoint.base.clone();
    let client = mlflow::api::Client::new(endpoint, std::time::Duration::from_secs(60));
    let experiment = mlflow::experiment_name(experiment);
    let r = mlflow::sync_run(&client, &experiment, run)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot sync {} to MLflow", run.display()))?;
    if ctx.json {
        let mut v = serde_json::to_value(&r)?;
        v["run"] = serde_json::json!(run);
        v["to"] = "mlflow".into();
        v["uri"] = base.into();
        out_line(v)?;
    } else {
        out_line(format!(
            "{}: {} points sent, {} already there, {} params sent to MLflow run {} ({}) on {base}{}",
            run.display(),
            r.points_sent,
            r.points_present,
            r.params_sent,
            r.run_id,
            if r.created {
                "created"
            } else {
                "found by its codex.run_id tag"
            },
            r.status
                .as_deref()
                .map(|s| format!(", status {s}"))
                .unwrap_or_default()
        ))?;
    }
    if !r.params_conflicting.is_empty() {
        ctx.warn(format!(
            "{}: the MLflow run holds other values for {} param(s) ({}); MLflow params cannot change",
            run.display(),
            r.params_conflicting.len(),
            r.params_conflicting.join(", ")
        ));
    }
    if let Some(e) = &r.artifact_error {
        ctx.warn(format!("{}: artifacts not uploaded: {e}", run.display()));
    }
    if r.skipped_lines > 0 {
        ctx.warn(format!(
            "{}: skipped {} malformed or torn line(s) of its record",
            run.display(),
            r.skipped_lines
        ));
    }
    Ok(())
}
