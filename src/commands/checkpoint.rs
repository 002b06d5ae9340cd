//! `codex checkpoint list|verify|prune`: inspect, rehash and apply retention to a run's
//! checksummed checkpoints.

use crate::ctx::{Ctx, out_json, out_line, with_hint};
use anyhow::Context;
use codex_checkpoint::{
    CheckpointConfig, CheckpointInfo, CheckpointManager, CheckpointStatus, Mode, PruneOptions,
    RetentionPolicy, VerifyReport,
};
use codex_core::exit;
use codex_core::rundir::RunDir;
use indicatif::HumanBytes;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// List a run's checkpoints: step, metric, size, why kept, valid?
    ///
    /// Checks manifests, completeness and file sizes; `--verify` also rehashes every file.
    /// Exits 1 when any checkpoint is invalid.
    List {
        /// The run directory (holds `checkpoints/`).
        #[arg(value_name = "RUN_DIR")]
        run_dir: PathBuf,
        /// Recompute every sha256 instead of trusting sizes.
        #[arg(long)]
        verify: bool,
    },
    /// Recompute every file's sha256 and compare with MANIFEST.json (exit 1 on any mismatch)
    Verify {
        /// A checkpoint directory, or a run directory (all of its checkpoints).
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Delete checkpoints the retention policy does not keep
    ///
    /// The policy comes from the run's `config.toml` `[checkpoint]` section, else from
    /// `checkpoints/index.json`, else the defaults (best 1 by val_loss, last 2); flags win.
    /// Every checkpoint it keeps is verified by hash first; when one is invalid, nothing is
    /// deleted and it exits 1 (unless `--delete-corrupt`).
    Prune {
        /// The run directory.
        #[arg(value_name = "RUN_DIR")]
        run_dir: PathBuf,
        /// Show what would be deleted without deleting anything.
        #[arg(long)]
        dry_run: bool,
        /// Keep the K best checkpoints by the monitored metric.
        #[arg(long, value_name = "K")]
        keep_best: Option<usize>,
        /// Keep the N newest checkpoints (at least 1).
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Never delete steps that are multiples of M (0 = off).
        #[arg(long, value_name = "M")]
        pin_every: Option<u64>,
        /// The metric ranked for best-K.
        #[arg(long, value_name = "NAME")]
        monitor: Option<String>,
        /// Whether a lower or a higher metric is better.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Also delete invalid (corrupt or incomplete) checkpoints, and prune the rest by the
        /// valid ones.
        #[arg(long)]
        delete_corrupt: bool,
    },
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
enum ModeArg {
    /// Lower is better (losses).
    Min,
    /// Higher is better (accuracies).
    Max,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    match args.command {
        Sub::List { run_dir, verify } => list(ctx, &run_dir, verify),
        Sub::Verify { path } => verify(ctx, &path),
        Sub::Prune {
            run_dir,
            dry_run,
            keep_best,
            keep_last,
            pin_every,
            monitor,
            mode,
            delete_corrupt,
        } => {
            let mut policy = base_policy(ctx, &run_dir)?;
            if let Some(k) = keep_best {
                policy.keep_best = k;
            }
            if let Some(n) = keep_last {
                policy.keep_last = n;
            }
            if let Some(m) = pin_every {
                policy.pin_every = m;
            }
            if let Some(m) = monitor {
                policy.monitor = m;
            }
            if let Some(m) = mode {
                policy.mode = match m {
                    ModeArg::Min => Mode::Min,
                    ModeArg::Max => Mode::Max,
                };
            }
            prune(
                ctx,
                &run_dir,
                policy,
                PruneOptions {
                    dry_run,
                    delete_invalid: delete_corrupt,
                },
            )
        }
    }
}

fn require_run_dir(run_dir: &Path) -> anyhow::Result<()> {
    if !run_dir.is_dir() {
        return Err(with_hint(
            anyhow::anyhow!("run directory `{}` does not exist", run_dir.display()),
            "pass the directory of a run (the one holding config.toml and checkpoints/)",
        ));
    }
    Ok(())
}

fn list(ctx: &Ctx, run_dir: &Path, rehash: bool) -> anyhow::Result<u8> {
    require_run_dir(run_dir)?;
    if let Err(msg) = codex_checkpoint::read_index(run_dir) {
        ctx.warn(msg);
    }
    let spinner = rehash.then(|| ctx.spinner("verifying checkpoints"));
    let infos = if rehash {
        codex_checkpoint::list_verified(run_dir)
    } else {
        codex_checkpoint::list(run_dir)
    }
    .with_context(|| format!("cannot list checkpoints of `{}`", run_dir.display()))?;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let monitor = codex_checkpoint::read_index(run_dir)
        .ok()
        .flatten()
        .map(|i| i.policy.monitor);
    let bad = infos.iter().filter(|i| !i.status.is_usable()).count();
    // A negative outcome exits 1, after the listing is printed.
    let outcome = || -> anyhow::Result<u8> {
        if bad == 0 {
            Ok(exit::OK)
        } else {
            Err(anyhow::anyhow!(
                "{bad} of {} checkpoint(s) are invalid",
                infos.len()
            ))
        }
    };
    if ctx.json {
        out_json(&json!({
            "schema_version": codex_core::SCHEMA_VERSION,
            "run_dir": run_dir,
            "verified": rehash,
            "monitor": monitor,
            "checkpoints": infos,
        }))?;
        return outcome();
    }
    if infos.is_empty() {
        ctx.info(format!(
            "no checkpoints in `{}`",
            RunDir::new(run_dir).checkpoints().display()
        ));
        return Ok(exit::OK);
    }
    let metric_head = format!("METRIC({})", monitor.as_deref().unwrap_or("metric"));
    out_line(format!(
        "{:<14} {:>16} {:>10}  {:<20} STATUS",
        "STEP", metric_head, "SIZE", "KEPT"
    ))?;
    for info in &infos {
        out_line(format_row(info))?;
    }
    for info in &infos {
        if let CheckpointStatus::Invalid(reason) = &info.status {
            ctx.warn(format!("step {}: {reason}", info.step));
        }
    }
    if !rehash {
        ctx.info("sizes checked; `codex checkpoint verify RUN_DIR` (or `list --verify`) rehashes every file");
    }
    outcome()
}

fn format_row(info: &CheckpointInfo) -> String {
    let metric = info
        .metric
        .map_or_else(|| "-".to_string(), |m| format!("{m:.6}"));
    let kept = if info.kept_because.is_empty() {
        "-".to_string()
    } else {
        info.kept_because
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let status = match &info.status {
        CheckpointStatus::Valid => "valid",
        CheckpointStatus::Unverified => "ok",
        CheckpointStatus::Invalid(_) => "INVALID",
    };
    format!(
        "{:<14} {:>16} {:>10}  {:<20} {status}",
        info.step,
        metric,
        // HumanBytes ignores width flags, so pad its string.
        HumanBytes(info.size_bytes).to_string(),
        kept
    )
}

/// The checkpoint directories `path` stands for: itself, or every `step-N` of a run.
fn verify_targets(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.exists() {
        anyhow::bail!("`{}` does not exist", path.display());
    }
    let is_ckpt = path.join(codex_checkpoint::format::MANIFEST).exists()
        || path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(codex_checkpoint::format::parse_step_dir)
            .is_some();
    if is_ckpt {
        return Ok(vec![path.to_path_buf()]);
    }
    // A run directory, or its checkpoints/ directory.
    let run = if path.file_name().is_some_and(|n| n == "checkpoints")
        && !path.join("checkpoints").is_dir()
    {
        path.parent().unwrap_or(path).to_path_buf()
    } else {
        path.to_path_buf()
    };
    if !RunDir::new(&run).checkpoints().is_dir() {
        return Err(codex_checkpoint::CheckpointError::NotACheckpoint {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(codex_checkpoint::list(&run)?
        .into_iter()
        .map(|i| i.dir)
        .collect())
}

fn verify(ctx: &Ctx, path: &Path) -> anyhow::Result<u8> {
    let targets = verify_targets(path)?;
    let bar = ctx.progress_bar(
        targets.len() as u64,
        "{spinner} verifying [{bar:30}] {pos}/{len} {msg}",
    );
    let mut reports: Vec<VerifyReport> = Vec::with_capacity(targets.len());
    for dir in &targets {
        bar.set_message(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        reports.push(
            codex_checkpoint::verify(dir)
                .with_context(|| format!("cannot verify `{}`", dir.display()))?,
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ok = reports.iter().all(|r| r.ok);
    if ctx.json {
        out_json(&json!({
            "schema_version": codex_core::SCHEMA_VERSION,
            "path": path,
            "ok": ok,
            "checkpoints": reports,
        }))?;
    } else {
        if reports.is_empty() {
            ctx.info(format!("no checkpoints under `{}`", path.display()));
        }
        for r in &reports {
            let size: u64 = r.files.iter().map(|f| f.expected_size).sum();
            let line = if r.ok {
                format!(
                    "ok      {}  ({} files, {})",
                    r.dir.display(),
                    r.files.len(),
                    HumanBytes(size)
                )
            } else {
                format!(
                    "FAILED  {}  ({} problem(s), below)",
                    r.dir.display(),
                    r.problems.len()
                )
            };
            out_line(line)?;
        }
    }
    for r in reports.iter().filter(|r| !r.ok) {
        for p in &r.problems {
            ctx.warn(p);
        }
    }
    if ok {
        Ok(exit::OK)
    } else {
        let bad = reports.iter().filter(|r| !r.ok).count();
        Err(anyhow::anyhow!(
            "{bad} of {} checkpoint(s) failed verification",
            reports.len()
        ))
    }
}

/// The policy before flags: the run's `[checkpoint]` config, else the one recorded in
/// `index.json`, else the defaults.
fn base_policy(ctx: &Ctx, run_dir: &Path) -> anyhow::Result<RetentionPolicy> {
    require_run_dir(run_dir)?;
    let config_path = RunDir::new(run_dir).config();
    if config_path.exists() {
        let table = codex_core::config::read_toml_file(&config_path)?;
        if let Some(section) = table.get("checkpoint") {
            let cfg: CheckpointConfig = section.clone().try_into().map_err(|e| {
                anyhow::anyhow!(
                    "invalid `[checkpoint]` section in `{}`: {e}",
                    config_path.display()
                )
            })?;
            return Ok(cfg.policy());
        }
    }
    match codex_checkpoint::read_index(run_dir) {
        Ok(Some(index)) => Ok(index.policy),
        Ok(None) => Ok(RetentionPolicy::default()),
        Err(msg) => {
            ctx.warn(msg);
            Ok(RetentionPolicy::default())
        }
    }
}

fn prune(
    ctx: &Ctx,
    run_dir: &Path,
    policy: RetentionPolicy,
    opts: PruneOptions,
) -> anyhow::Result<u8> {
    let mut manager = CheckpointManager::open(run_dir, policy).map_err(|e| match e {
        codex_checkpoint::CheckpointError::Locked { .. } => with_hint(
            e,
            "wait for the process writing this run to finish (or stop it), then prune",
        ),
        other => other.into(),
    })?;
    // Plan (verifying every checkpoint it would keep) before deleting anything: an invalid
    // checkpoint means something is wrong with this run, so without --delete-corrupt nothing
    // is deleted and the user gets to look first.
    let plan = manager.prune_with(PruneOptions {
        dry_run: true,
        ..opts
    })?;
    let refused = !plan.invalid.is_empty() && !opts.delete_invalid;
    let report = if opts.dry_run || refused {
        plan
    } else {
        manager.prune_with(opts)?
    };
    let shown_deleted: &[u64] = if refused { &[] } else { &report.deleted };
    if ctx.json {
        out_json(&json!({
            "schema_version": codex_core::SCHEMA_VERSION,
            "run_dir": run_dir,
            "dry_run": report.dry_run,
            "policy": report.policy,
            "kept": report.kept.iter().map(|(s, why)| json!({"step": s, "kept_because": why})).collect::<Vec<_>>(),
            "deleted": shown_deleted,
            "invalid": report.invalid.iter().map(|(s, r)| json!({"step": s, "reason": r})).collect::<Vec<_>>(),
            "invalid_deleted": report.invalid_deleted && !refused,
        }))?;
    } else {
        let p = &report.policy;
        ctx.info(format!(
            "policy: keep best {} by {} ({}), last {}, pinned every {}",
            p.keep_best,
            p.monitor,
            p.mode,
            p.keep_last,
            if p.pin_every == 0 {
                "-".to_string()
            } else {
                p.pin_every.to_string()
            }
        ));
        if !refused {
            for (step, why) in &report.kept {
                let why: Vec<String> = why.iter().map(ToString::to_string).collect();
                out_line(format!(
                    "keep    {}  ({})",
                    codex_checkpoint::step_dir_name(*step),
                    why.join(", ")
                ))?;
            }
            let verb = if opts.dry_run {
                "would delete"
            } else {
                "deleted"
            };
            for step in shown_deleted {
                out_line(format!(
                    "{verb:<7} {}",
                    codex_checkpoint::step_dir_name(*step)
                ))?;
            }
        }
        for (step, reason) in &report.invalid {
            if report.invalid_deleted && !refused {
                let verb = if opts.dry_run {
                    "would delete invalid"
                } else {
                    "deleted invalid"
                };
                out_line(format!("{verb} {}", codex_checkpoint::step_dir_name(*step)))?;
            } else {
                ctx.warn(format!("invalid checkpoint at step {step}: {reason}"));
            }
        }
    }
    if refused {
        return Err(with_hint(
            anyhow::anyhow!(
                "{} invalid checkpoint(s) in `{}` (steps {}); nothing was deleted",
                report.invalid.len(),
                run_dir.display(),
                report
                    .invalid
                    .iter()
                    .map(|(s, _)| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "inspect them with `codex checkpoint verify RUN_DIR`; `--delete-corrupt` deletes them and prunes the rest",
        ));
    }
    Ok(exit::OK)
}
