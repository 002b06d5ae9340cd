//! `codex eval`: loss, perplexity and next-token accuracy of a trained run, a checkpoint, or
//! the model a config describes, on a split of its data or on a file. Writes per-batch NDJSON
//! and CSV; `--json` prints the summary on stdout. The work is `codex_train::eval::run`.

use crate::ctx::{Ctx, out_json, out_line};
use crate::settings::load_config;
use codex_train::eval::{self, EvalData, EvalJob};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run directory (its newest valid checkpoint; `RUN@best`, `RUN@last`, `RUN@STEP` pick
    /// another) or a checkpoint directory. Without it,
    /// the model of --config is evaluated as built (a preset's fresh weights, or pretrained).
    #[arg(value_name = "RUN_OR_CHECKPOINT")]
    pub target: Option<PathBuf>,
    /// Config to use when no run is given (default: the embedded default run).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides applied to the config (`data.context_length=32`, …).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Which split of the config's data to evaluate.
    #[arg(long, value_enum, default_value_t = Split::Val, conflicts_with = "file")]
    pub split: Split,
    /// Evaluate on this text file instead (tokenized with the run's tokenizer).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Sequences per batch (default: the config's training.batch_size).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Evaluate at most N batches (default: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_batches: usize,
    /// Directory for eval.ndjson and eval.csv (default: `<run>/eval`, or ./eval).
    #[arg(long = "output", short = 'o', alias = "out", value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `RUN@best|@last|@STEP` → that checkpoint's directory; anything else as given.
fn select_checkpoint(t: &std::path::Path) -> anyhow::Result<PathBuf> {
    let s = t.to_string_lossy();
    if let Some((dir, _)) = s.rsplit_once('@')
        && std::path::Path::new(dir).is_dir()
        && !t.exists()
    {
        match codex_registry::resolve_source(&s).map_err(super::model::registry_err)? {
            codex_registry::ModelSource::Checkpoint(ck) => return Ok(ck.dir),
            other => anyhow::bail!("{s}: not a checkpoint of a run ({other:?})"),
        }
    }
    Ok(t.to_path_buf())
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    Val,
    Train,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    let (cfg, run_dir, checkpoint) = match &args.target {
        Some(t) => {
            let t = select_checkpoint(t)?;
            let (run, ck) = eval::locate(&t)?;
            let cfg = load_config(Some(&run.join("config.toml")), &args.overrides)?;
            (cfg, Some(run), Some(ck))
        }
        None => (
            load_config(args.config.as_deref(), &args.overrides)?,
            None,
            None,
        ),
    };
    let data = match (&args.file, args.split) {
        (Some(f), _) => EvalData::File(f.clone()),
        (None, Split::Val) => EvalData::Val,
        (None, Split::Train) => EvalData::Train,
    };
    let report = eval::run(EvalJob {
        cfg,
        run_dir,
        checkpoint,
        data,
        batch_size: args.batch_size,
        max_batches: args.max_batches,
        out_dir: args.out,
    })?;
    ctx.info(format!(
        "wrote {} and {}",
        report.ndjson.display(),
        report.csv.display()
    ));
    if ctx.json {
        out_json(&report)?;
    } else {
        out_line(format!(
            "{}: loss {:.4}, ppl {:.3}, token_acc {:.4} over {} tokens ({} batches){}",
            report.data,
            report.loss,
            report.ppl,
            report.token_acc,
            report.tokens,
            report.batches,
            report
                .step
                .map(|s| format!(" at step {s}"))
                .unwrap_or_default()
        ))?;
    }
    if !report.loss.is_finite() {
        // A model whose loss is NaN or infinite is broken, whatever the files say.
        ctx.print_error(&anyhow::anyhow!(
            "the loss is not finite ({}): the weights hold NaN or infinite values, or overflow",
            report.loss
        ));
        return Ok(codex_core::exit::INVALID);
    }
    Ok(codex_core::exit::OK)
}
