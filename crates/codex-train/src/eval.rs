//! Evaluation: loss, perplexity and next-token accuracy of a model over validation blocks, and
//! the whole `codex eval` job (which model, which data, per-batch NDJSON and CSV).

use crate::config::{TokenizerKind, TrainConfig};
use crate::data::{self, Dataset, TextTokenizer};
use crate::error::{Error, Result};
use crate::model::{TrainModel, build_model};
use candle_core::{DType, Device, Tensor};
use codex_checkpoint::LoadedCheckpoint;
use codex_core::ndjson::NdjsonWriter;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Validation metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub val_loss: f64,
    pub val_ppl: f64,
    pub val_token_acc: f64,
    pub tokens: u64,
    pub batches: u64,
}

impl EvalResult {
    /// The value of a monitored metric.
    pub fn get(&self, m: crate::config::Monitor) -> f64 {
        use crate::config::Monitor;
        match m {
            Monitor::ValLoss => self.val_loss,
            Monitor::ValPpl => self.val_ppl,
            Monitor::ValTokenAcc => self.val_token_acc,
        }
    }

    /// As the body of an `eval` event.
    pub fn metrics(&self) -> codex_core::event::EvalMetrics {
        codex_core::event::EvalMetrics {
            val_loss: self.val_loss,
            val_ppl: self.val_ppl,
            val_token_acc: self.val_token_acc,
            val_tokens: self.tokens,
        }
    }
}

/// One evaluated batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BatchEval {
    pub batch: u64,
    pub loss: f64,
    pub tokens: u64,
    pub correct: u64,
}

/// Mean loss, perplexity and next-token accuracy over validation blocks.
pub fn evaluate(
    model: &dyn TrainModel,
    data: &Dataset,
    batch_size: usize,
    max_batches: usize,
    device: &Device,
) -> Result<EvalResult> {
    evaluate_detailed(model, data, batch_size, max_batches, device, &mut |_| {})
}

/// [`evaluate`], reporting every batch to `per_batch`.
pub fn evaluate_detailed(
    model: &dyn TrainModel,
    data: &Dataset,
    batch_size: usize,
    max_batches: usize,
    device: &Device,
    per_batch: &mut dyn FnMut(BatchEval),
) -> Result<EvalResult> {
    let (mut loss_sum, mut correct, mut tokens, mut batches) = (0.0f64, 0u64, 0u64, 0u64);
    for starts in data.val_batches(batch_size, max_batches) {
        let b = data.batch_from(starts, device)?;
        let logits = model.forward(&b.inputs, false)?.detach();
        let (bs, t, v) = logits.dims3()?;
        let flat = logits.reshape((bs * t, v))?.to_dtype(DType::F32)?;
        let y = b.targets.flatten_all()?;
        let loss = codex_ops::cross_entropy(&flat, &y)?.to_scalar::<f32>()?;
        let hits = flat
            .argmax(1)?
            .eq(&y)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as u64;
        let n = (bs * t) as u64;
        per_batch(BatchEval {
            batch: batches,
            loss: f64::from(loss),
            tokens: n,
            correct: hits,
        });
        loss_sum += f64::from(loss) * n as f64;
        correct += hits;
        tokens += n;
        batches += 1;
    }
    if tokens == 0 {
        return Err(Error::Invalid(
            "nothing to evaluate: the split is empty".into(),
        ));
    }
    let val_loss = loss_sum / tokens as f64;
    Ok(EvalResult {
        val_loss,
        val_ppl: val_loss.exp(),
        val_token_acc: correct as f64 / tokens as f64,
        tokens,
        batches,
    })
}

/// Loads the weights (only) of a checkpoint into `model`.
pub fn load_weights(ck: &LoadedCheckpoint, model: &dyn TrainModel, device: &Device) -> Result<()> {
    let file = model.weights_file();
    let mut weights = Vec::new();
    for (name, view) in ck.tensors(file)? {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F16 => DType::F16,
            other => {
                return Err(Error::CheckpointContents(format!(
                    "tensor `{name}` in {file} has unsupported dtype {other:?}"
                )));
            }
        };
        weights.push((
            name,
            Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)?,
        ));
    }
    model.load_state(&weights)
}

/// Finds the run directory and checkpoint of `target`: a checkpoint directory
/// (`<run>/checkpoints/step-N`), or a run directory (its newest checkpoint that verifies).
pub fn locate(target: &Path) -> Result<(PathBuf, LoadedCheckpoint)> {
    if target.join(codex_checkpoint::format::MANIFEST).is_file() {
        let ck = codex_checkpoint::load(target)?;
        let run = target
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        return Ok((run, ck));
    }
    let ck = codex_checkpoint::latest_valid(target)?.ok_or_else(|| Error::NothingToResume {
        dir: target.to_path_buf(),
    })?;
    Ok((target.to_path_buf(), ck))
}

/// Largest `--file` an evaluation reads: its tokens are held in memory (4 bytes each).
const MAX_EVAL_FILE_BYTES: u64 = 1 << 30;

/// Which data an evaluation reads.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalData {
    /// The validation split of the config's corpus.
    Val,
    /// The training split.
    Train,
    /// A text file, tokenized with the run's tokenizer.
    File(PathBuf),
}

/// A `codex eval` job.
pub struct EvalJob {
    pub cfg: TrainConfig,
    /// The run the model comes from (its tokenizer and data cache are reused).
    pub run_dir: Option<PathBuf>,
    /// Weights to load; `None` evaluates the model the config builds.
    pub checkpoint: Option<LoadedCheckpoint>,
    pub data: EvalData,
    /// Sequences per batch; `None` = the config's `training.batch_size`.
    pub batch_size: Option<usize>,
    /// At most this many batches; 0 = all.
    pub max_batches: usize,
    /// Where `eval.ndjson` and `eval.csv` go; `None` = `<run>/eval`, or `./eval`.
    pub out_dir: Option<PathBuf>,
}

/// What an evaluation measured, and where it wrote the details.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub event: &'static str,
    pub schema_version: u32,
    pub ts: String,
    pub checkpoint: Option<PathBuf>,
    pub step: Option<u64>,
    /// `val split`, `train split`, or the file.
    pub data: String,
    pub loss: f64,
    pub ppl: f64,
    pub token_acc: f64,
    pub tokens: u64,
    pub batches: u64,
    pub ndjson: PathBuf,
    pub csv: PathBuf,
}

#[derive(Serialize)]
struct BatchLine<'a> {
    event: &'static str,
    schema_version: u32,
    ts: &'a str,
    #[serde(flatten)]
    batch: &'a BatchEval,
}

/// Runs an evaluation job: data, model, weights, per-batch `eval.ndjson`, `eval.csv`.
pub fn run(job: EvalJob) -> Result<EvalReport> {
    let cfg = &job.cfg;
    let device = crate::device::open_device(&cfg.training.device)?;
    let batch_size = job.batch_size.unwrap_or(cfg.training.batch_size).max(1);
    let (ds, source) = match &job.data {
        EvalData::File(f) => {
            let read = |source| Error::Read {
                path: f.clone(),
                source,
            };
            let bytes =
                codex_core::fsutil::read_regular_capped(f, MAX_EVAL_FILE_BYTES).map_err(read)?;
            let text = String::from_utf8(bytes).map_err(|e| {
                Error::Invalid(format!(
                    "`{}` is not UTF-8 text (invalid byte at offset {})",
                    f.display(),
                    e.utf8_error().valid_up_to()
                ))
            })?;
            let tok = run_tokenizer(cfg, job.run_dir.as_deref())?;
            let ids = tok.encode(&text)?;
            (
                Dataset::eval_only(ids, tok.vocab_size(), cfg.data.context_length)?,
                f.display().to_string(),
            )
        }
        split => {
            let cache = job
                .run_dir
                .as_ref()
                .and_then(|r| data::cache_dir_for(cfg, r));
            let mut cfg_data = cfg.clone();
            if let (Some(run), TokenizerKind::Train) = (&job.run_dir, cfg.tokenizer.kind) {
                // Reuse the tokenizer the run trained instead of training another.
                cfg_data.tokenizer.kind = TokenizerKind::Load;
                cfg_data.tokenizer.path = run.join("tokenizer.json").display().to_string();
            }
            let mut ds = data::prepare(&cfg_data, cache.as_deref(), &mut |_| {})?.dataset;
            let name = if *split == EvalData::Train {
                ds.evaluate_train_split();
                "train"
            } else {
                "val"
            };
            (ds, format!("{name} split"))
        }
    };
    let model = build_model(cfg, ds.vocab_size, &device)?;
    if let Some(ck) = &job.checkpoint {
        load_weights(ck, model.as_ref(), &device)?;
    }
    let out_dir = job.out_dir.clone().unwrap_or_else(|| {
        job.run_dir
            .as_ref()
            .map_or_else(|| PathBuf::from("eval"), |r| r.join("eval"))
    });
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Write { path, source }
    };
    codex_core::fsutil::create_dir_all(&out_dir).map_err(werr(&out_dir))?;
    let ndjson = out_dir.join("eval.ndjson");
    let csv_path = out_dir.join("eval.csv");
    let mut nd = NdjsonWriter::create(&ndjson).map_err(werr(&ndjson))?;
    let mut rows: Vec<BatchEval> = Vec::new();
    let mut write_err = None;
    let result = evaluate_detailed(
        model.as_ref(),
        &ds,
        batch_size,
        job.max_batches,
        &device,
        &mut |b| {
            let ts = codex_core::time::now_rfc3339();
            let line = BatchLine {
                event: "batch",
                schema_version: codex_core::SCHEMA_VERSION,
                ts: &ts,
                batch: &b,
            };
            if let Err(e) = nd.write(&line) {
                write_err.get_or_insert(e);
            }
            rows.push(b);
        },
    )?;
    if let Some(e) = write_err {
        return Err(werr(&ndjson)(e));
    }
    let report = EvalReport {
        event: "eval_summary",
        schema_version: codex_core::SCHEMA_VERSION,
        ts: codex_core::time::now_rfc3339(),
        checkpoint: job.checkpoint.as_ref().map(|c| c.dir.clone()),
        step: job.checkpoint.as_ref().map(|c| c.step),
        data: source,
        loss: result.val_loss,
        ppl: result.val_ppl,
        token_acc: result.val_token_acc,
        tokens: result.tokens,
        batches: result.batches,
        ndjson: ndjson.clone(),
        csv: csv_path.clone(),
    };
    nd.write(&report).map_err(werr(&ndjson))?;
    nd.sync().map_err(werr(&ndjson))?;
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
    codex_core::fsutil::atomic_write(&csv_path, csv.as_bytes()).map_err(werr(&csv_path))?;
    Ok(report)
}

/// The tokenizer a run used: bytes, or its `tokenizer.json`.
fn run_tokenizer(cfg: &TrainConfig, run: Option<&Path>) -> Result<TextTokenizer> {
    match cfg.tokenizer.kind {
        TokenizerKind::Byte => Ok(TextTokenizer::Byte),
        TokenizerKind::Load | TokenizerKind::Train => {
            // The run's own copy first; else what the config names, read as training reads it
            // (a file, an HF model directory, or a hub name in the local cache).
            let tok = match run {
                Some(r) if r.join("tokenizer.json").is_file() => {
                    codex_tokenizer::source::load_file(&r.join("tokenizer.json"))?
                }
                _ => codex_tokenizer::source::load(&cfg.tokenizer.path)?,
            };
            Ok(TextTokenizer::Hf(Box::new(tok)))
        }
    }
}
