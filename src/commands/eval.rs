//! `codex eval`: loss, perplexity and next-token accuracy of a trained run, a checkpoint, or
//! the model a config describes, on a split of its data or on a file. Writes per-batch NDJSON
//! and CSV; `--json` prints the summary on stdout.

use crate::commands::train::{lib_err, load_config};
use crate::ctx::{Ctx, out_json, out_line};
use codex_core::exit;
use codex_core::ndjson::NdjsonWriter;
use codex_train::config::{TokenizerKind, TrainConfig};
use codex_train::data::{self, Dataset, TextTokenizer};
use codex_train::trainer::{BatchEval, build_model, evaluate_detailed, load_weights};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run directory (its newest valid checkpoint) or a checkpoint directory. Without it,
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
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    Val,
    Train,
}

/// Finds the run directory and checkpoint of `target`.
fn locate(target: &Path) -> anyhow::Result<(PathBuf, codex_checkpoint::LoadedCheckpoint)> {
    if target.join("MANIFEST.json").is_file() {
        let ck = codex_checkpoint::load(target)?;
        // <run>/checkpoints/step-N
        let run = target
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        return Ok((run, ck));
    }
    let ck = codex_checkpoint::latest_valid(target)?.ok_or_else(|| {
        anyhow::anyhow!(
            "`{}` is neither a checkpoint nor a run directory with a valid checkpoint",
            target.display()
        )
    })?;
    Ok((target.to_path_buf(), ck))
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    let (cfg, run_dir, ck): (TrainConfig, Option<PathBuf>, _) = match &args.target {
        Some(t) => {
            let (run, ck) = locate(t)?;
            let cfg = load_config(Some(&run.join("config.toml")), &args.overrides)?;
            (cfg, Some(run), Some(ck))
        }
        None => (
            load_config(args.config.as_deref(), &args.overrides)?,
            None,
            None,
        ),
    };
    let device = codex_train::device::open_device(&cfg.training.device).map_err(lib_err)?;
    let batch_size = args.batch_size.unwrap_or(cfg.training.batch_size).max(1);
    // Data: a file with the run's tokenizer, or a split of the config's corpus.
    let (ds, source) = match &args.file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", f.display()))?;
            let tok = run_tokenizer(&cfg, run_dir.as_deref())?;
            let ids = tok.encode(&text).map_err(lib_err)?;
            (
                Dataset::eval_only(ids, tok.vocab_size(), cfg.data.context_length)
                    .map_err(lib_err)?,
                f.display().to_string(),
            )
        }
        None => {
            let cache = run_dir.as_ref().and_then(|r| data::cache_dir_for(&cfg, r));
            let mut cfg_data = cfg.clone();
            if let (Some(run), TokenizerKind::Train) = (&run_dir, cfg.tokenizer.kind) {
                // Reuse the tokenizer the run trained instead of training another.
                cfg_data.tokenizer.kind = TokenizerKind::Load;
                cfg_data.tokenizer.path = run.join("tokenizer.json").display().to_string();
            }
            let p = data::prepare(&cfg_data, cache.as_deref(), &mut |_| {}).map_err(lib_err)?;
            let mut ds = p.dataset;
            let name = match args.split {
                Split::Val => "val",
                Split::Train => {
                    ds.evaluate_train_split();
                    "train"
                }
            };
            (ds, format!("{name} split"))
        }
    };
    let model = build_model(&cfg, ds.vocab_size, &device).map_err(lib_err)?;
    if let Some(ck) = &ck {
        load_weights(ck, model.as_ref(), &device).map_err(lib_err)?;
    }
    let out_dir = args.out.clone().unwrap_or_else(|| {
        run_dir
            .as_ref()
            .map_or_else(|| PathBuf::from("eval"), |r| r.join("eval"))
    });
    codex_core::fsutil::create_dir_all(&out_dir)?;
    let ndjson_path = out_dir.join("eval.ndjson");
    let csv_path = out_dir.join("eval.csv");
    let mut nd = NdjsonWriter::create(&ndjson_path)?;
    let mut rows: Vec<BatchEval> = Vec::new();
    let mut write_err = None;
    let result = evaluate_detailed(model.as_ref(), &ds, batch_size, args.max_batches, &device, &mut |b| {
        if let Err(e) = nd.write(&serde_json::json!({"event": "batch", "schema_version": codex_core::SCHEMA_VERSION, "ts": codex_core::time::now_rfc3339(), "batch": b.batch, "loss": b.loss, "tokens": b.tokens, "correct": b.correct})) {
            write_err.get_or_insert(e);
        }
        rows.push(b);
    })
    .map_err(lib_err)?;
    if let Some(e) = write_err {
        return Err(anyhow::anyhow!(
            "cannot write `{}`: {e}",
            ndjson_path.display()
        ));
    }
    let step = ck.as_ref().map(|c| c.step);
    let summary = serde_json::json!({
        "event": "eval_summary",
        "schema_version": codex_core::SCHEMA_VERSION,
        "ts": codex_core::time::now_rfc3339(),
        "checkpoint": ck.as_ref().map(|c| c.dir.display().to_string()),
        "step": step,
        "data": source,
        "loss": result.val_loss,
        "ppl": result.val_ppl,
        "token_acc": result.val_token_acc,
        "tokens": result.tokens,
        "batches": result.batches,
        "ndjson": ndjson_path,
        "csv": csv_path,
    });
    nd.write(&summary)?;
    nd.sync()?;
    let mut csv = String::from("batch,loss,tokens,correct,token_acc\n");
    for r in &rows {
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            r.batch,
            r.loss,
            r.tokens,
            r.correct,
            r.correct as f64 / r.tokens as f64
        ));
    }
    codex_core::fsutil::atomic_write(&csv_path, csv.as_bytes())?;
    if ctx.json {
        out_json(&summary)?;
    } else {
        out_line(format!(
            "{}: loss {:.4}, ppl {:.3}, token_acc {:.4} over {} tokens ({} batches){}",
            source,
            result.val_loss,
            result.val_ppl,
            result.val_token_acc,
            result.tokens,
            result.batches,
            step.map(|s| format!(" at step {s}")).unwrap_or_default()
        ))?;
    }
    Ok(exit::OK)
}

/// The tokenizer a run used: bytes, or its `tokenizer.json`.
fn run_tokenizer(cfg: &TrainConfig, run: Option<&Path>) -> anyhow::Result<TextTokenizer> {
    match cfg.tokenizer.kind {
        TokenizerKind::Byte => Ok(TextTokenizer::Byte),
        TokenizerKind::Load | TokenizerKind::Train => {
            let path = match run {
                Some(r) if r.join("tokenizer.json").is_file() => r.join("tokenizer.json"),
                _ => PathBuf::from(&cfg.tokenizer.path),
            };
            let tok =
                codex_tokenizer::source::load_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(TextTokenizer::Hf(Box::new(tok)))
        }
    }
}
