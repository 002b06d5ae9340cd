//! `codex compare RUN…`: runs side by side — only the config keys that differ, final and best
//! metrics, tokens/s and wall time — as a table, `--json`, or curves with `--plot`.

use crate::ctx::{Ctx, out_line};
use anyhow::{Context as _, bail};
use codex_core::event::{Event, EventKind, EventSink, SinkError};
use codex_core::exit;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run directories (each holding metrics.ndjson and config.toml).
    #[arg(value_name = "RUN", required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// Also draw the runs' train_loss, val_loss and lr curves into this SVG or PNG.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

/// One run's numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunFacts {
    pub name: String,
    pub path: PathBuf,
    /// How the last segment ended (`completed`, …), or `running` without an `end` event.
    pub status: String,
    pub steps: u64,
    pub final_train_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub best_val_step: Option<u64>,
    /// Training tokens per second of step time, over all segments.
    pub tokens_per_s: Option<f64>,
    /// Wall time of all segments, in seconds.
    pub wall_s: f64,
    pub tokens: u64,
}

#[derive(Default)]
struct Fold {
    f: RunFacts,
    train_s: f64,
}

impl EventSink for Fold {
    fn name(&self) -> &str {
        "compare"
    }
    fn emit(&mut self, e: &Event) -> Result<(), SinkError> {
        let f = &mut self.f;
        match &e.kind {
            EventKind::Start(_) => f.status = "running".into(),
            EventKind::Step(m) => f.final_train_loss = Some(m.train_loss),
            EventKind::Eval(v) => {
                f.final_val_loss = Some(v.val_loss);
                if v.val_loss.is_finite() && f.best_val_loss.is_none_or(|b| v.val_loss < b) {
                    f.best_val_loss = Some(v.val_loss);
                    f.best_val_step = Some(e.header.step);
                }
            }
            EventKind::End(r) => {
                f.status = r.status.as_str().into();
                f.steps = r.steps;
                f.wall_s += r.elapsed_s;
                f.tokens += r.tokens;
                if r.tokens_per_s > 0.0 {
                    self.train_s += r.tokens as f64 / r.tokens_per_s;
                }
            }
            _ => {}
        }
        if !matches!(e.kind, EventKind::End(_)) {
            f.steps = f.steps.max(e.header.step);
        }
        Ok(())
    }
}

/// Reads one run.
pub fn facts(run: &Path) -> anyhow::Result<RunFacts> {
    let metrics = run.join("metrics.ndjson");
    if !metrics.is_file() {
        bail!(
            "{} is not a run directory: no metrics.ndjson",
            run.display()
        );
    }
    let mut fold = Fold::default();
    codex_track::replay(&metrics, &mut fold)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot read {}", metrics.display()))?;
    let mut f = fold.f;
    f.name = std::path::absolute(run)?.file_name().map_or_else(
        || run.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    f.path = run.to_path_buf();
    if f.status.is_empty() {
        f.status = "unknown".into();
    }
    f.tokens_per_s = (fold.train_s > 0.0).then(|| f.tokens as f64 / fold.train_s);
    Ok(f)
}

/// The run's config as dotted keys (`optimizer.lr`) and TOML values.
fn config_of(run: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let path = run.join("config.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not TOML", path.display()))?;
    Ok(codex_core::config::leaves(&table, false)
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect())
}

/// The keys whose values are not the same in every run (a missing key counts as different),
/// each with one value per run (`None` where absent).
pub fn config_diff(configs: &[BTreeMap<String, String>]) -> BTreeMap<String, Vec<Option<String>>> {
    let keys: BTreeSet<&String> = configs.iter().flat_map(|c| c.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let vals: Vec<Option<String>> = configs.iter().map(|c| c.get(k).cloned()).collect();
            vals.iter()
                .any(|v| *v != vals[0])
                .then(|| (k.clone(), vals))
        })
        .collect()
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    let mut runs = Vec::new();
    let mut configs = Vec::new();
    for r in &args.runs {
        runs.push(facts(r)?);
        configs.push(config_of(r)?);
    }
    let diff = config_diff(&configs);
    if ctx.json {
        out_line(serde_json::json!({ "runs": runs, "config_diff": diff }))?;
    } else {
        out_line(table(&runs, &diff))?;
    }
    if let Some(path) = &args.plot {
        let curves = args
            .runs
            .iter()
            .zip(&runs)
            .map(|(dir, f)| codex_track::plot::load(dir, f.name.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let r = codex_track::plot::render(&curves, &Default::default(), path)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("cannot draw {}", path.display()))?;
        ctx.info(format!(
            "{}: {} chart(s) of {} run(s)",
            path.display(),
            r.charts.len(),
            runs.len()
        ));
    }
    Ok(exit::OK)
}

/// A plain-text table: one column per run.
fn table(runs: &[RunFacts], diff: &BTreeMap<String, Vec<Option<String>>>) -> String {
    let num = |v: Option<f64>, prec: usize| v.map_or("–".to_string(), |x| format!("{x:.prec$}"));
    let mut rows: Vec<(String, Vec<String>)> = vec![
        ("run".into(), runs.iter().map(|r| r.name.clone()).collect()),
        (
            "status".into(),
            runs.iter().map(|r| r.status.clone()).collect(),
        ),
        (
            "steps".into(),
            runs.iter().map(|r| r.steps.to_string()).collect(),
        ),
        (
            "final train_loss".into(),
            runs.iter().map(|r| num(r.final_train_loss, 4)).collect(),
        ),
        (
            "final val_loss".into(),
            runs.iter().map(|r| num(r.final_val_loss, 4)).collect(),
        ),
        (
            "best val_loss".into(),
            runs.iter()
                .map(|r| match (r.best_val_loss, r.best_val_step) {
                    (Some(v), Some(s)) => format!("{v:.4} @ step {s}"),
                    _ => "–".into(),
                })
                .collect(),
        ),
        (
            "tokens/s".into(),
            runs.iter().map(|r| num(r.tokens_per_s, 0)).collect(),
        ),
        (
            "wall time".into(),
            runs.iter().map(|r| format!("{:.1} s", r.wall_s)).collect(),
        ),
    ];
    if diff.is_empty() {
        rows.push((
            "config".into(),
            runs.iter().map(|_| "(same)".into()).collect(),
        ));
    }
    for (k, vals) in diff {
        rows.push((
            k.clone(),
            vals.iter()
                .map(|v| v.clone().unwrap_or_else(|| "(unset)".into()))
                .collect(),
        ));
    }
    let w0 = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..runs.len())
        .map(|i| {
            rows.iter()
                .map(|(_, v)| v[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (k, vals) in &rows {
        out.push_str(&format!("{k:<w0$}"));
        for (v, w) in vals.iter().zip(&widths) {
            out.push_str(&format!("  {v:<w$}"));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_differing_keys_are_kept() {
        let a: BTreeMap<String, String> = [
            ("optimizer.lr", "0.001"),
            ("training.steps", "10"),
            ("x", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let mut b = a.clone();
        b.insert("optimizer.lr".into(), "0.003".into());
        b.remove("x");
        let d = config_diff(&[a, b]);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d["optimizer.lr"],
            [Some("0.001".to_string()), Some("0.003".to_string())]
        );
        assert_eq!(d["x"], [Some("1".to_string()), None]);
    }
}
