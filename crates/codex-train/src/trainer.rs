//! The training loop: model from the registry, codex's optimizer and schedule, evaluation,
//! early stopping, anomaly guard, checksummed checkpoints, exact resume, the system sampler,
//! and metrics that are written whatever happens.

use crate::config::{Dtype, Monitor, MonitorMode, SystemMetricsMode, TrainConfig};
use crate::data::{self, Dataset, TextTokenizer};
use crate::error::{Error, Result};
use crate::model::TrainModel;
use crate::optim::{self, Optimizer, StateTensor};
use crate::schedule::lr_at;
use candle_core::{DType, Device, Tensor};
use codex_checkpoint::{
    CheckpointFile, CheckpointManager, CheckpointSpec, LoadedCheckpoint, RetentionPolicy,
    TensorData,
};
use codex_core::ndjson::NdjsonWriter;
use codex_core::rundir::RunDir;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Where to start from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Resume {
    /// A fresh run (refused when the run directory already has checkpoints).
    #[default]
    No,
    /// The newest checkpoint that verifies.
    Latest,
    /// A given checkpoint directory.
    From(PathBuf),
}

/// Options that are not part of the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: Resume,
    /// Stop as an interrupt would once this many steps are done (checkpoint, `Interrupted`).
    pub stop_at_step: Option<u64>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Completed,
    EarlyStopped,
    Interrupted,
    AnomalyStopped,
}

/// What a run did, for the `end` event and the command's summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub run_id: String,
    pub status: Status,
    /// Optimizer steps done (including before a resume).
    pub steps: u64,
    pub total_steps: u64,
    /// Tokens trained on in this process.
    pub tokens: u64,
    /// Training tokens per second of step time in this process (eval and checkpoints excluded).
    pub tokens_per_s: f64,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_ppl: Option<f64>,
    pub val_token_acc: Option<f64>,
    /// The first evaluation's validation loss in this run (to show the loss fell).
    pub first_val_loss: Option<f64>,
    pub resumed_from: Option<PathBuf>,
    pub last_checkpoint: Option<PathBuf>,
    pub elapsed_s: f64,
    pub anomalies: u64,
    /// Peak resident memory of this process, from `/proc/self/status` (Linux).
    pub peak_rss_bytes: Option<u64>,
}

/// Receives what happens during a run. The binary draws a progress bar from it; the library
/// never touches the terminal.
pub trait Observer {
    /// Every metrics event, exactly as written to `metrics.ndjson`.
    fn event(&mut self, _event: &Value) {}
    /// The loop starts at `first_step` of `total_steps`.
    fn start(&mut self, _total_steps: u64, _first_step: u64) {}
    /// After each step.
    fn progress(&mut self, _step: u64, _loss: f64, _tokens_per_s: f64) {}
    /// A human-readable line (data preparation, resume summary, warnings).
    fn message(&mut self, _text: &str) {}
    /// The loop is over (clear the bar).
    fn finish(&mut self) {}
}

/// An observer that ignores everything.
pub struct NoObserver;
impl Observer for NoObserver {}

/// Writes events to `metrics.ndjson` and forwards them to the observer.
struct Sink<'a> {
    writer: Option<NdjsonWriter>,
    run_id: String,
    obs: &'a mut dyn Observer,
    write_error: Option<String>,
}

impl Sink<'_> {
    fn emit(&mut self, kind: &str, step: u64, fields: Value) {
        let mut ev = json!({
            "event": kind,
            "schema_version": codex_core::SCHEMA_VERSION,
            "run_id": self.run_id,
            "ts": codex_core::time::now_rfc3339(),
            "step": step,
        });
        if let (Some(map), Value::Object(extra)) = (ev.as_object_mut(), fields) {
            map.extend(extra);
        }
        if let Some(w) = &mut self.writer
            && let Err(e) = w.write(&ev)
            && self.write_error.is_none()
        {
            // Keep training; the error is reported in the end event and on stderr.
            self.obs
                .message(&format!("warning: cannot write metrics: {e}"));
            self.write_error = Some(e.to_string());
        }
        self.obs.event(&ev);
    }
}

/// Builds the model named by `cfg.model` through the registry.
pub fn build_model(
    cfg: &TrainConfig,
    vocab_size: usize,
    device: &Device,
) -> Result<Box<dyn TrainModel>> {
    let dtype = match cfg.training.dtype {
        Dtype::F32 => DType::F32,
        Dtype::Bf16 => DType::BF16,
    };
    let m = &cfg.model;
    let mut model = if m.pretrained.trim().is_empty() {
        let mut o = m.overrides.clone();
        o.vocab_size = Some(o.vocab_size.unwrap_or(vocab_size));
        if o.max_positions.is_none() {
            let preset = codex_registry::registry::preset_config(
                &m.preset,
                &codex_registry::PresetOverrides::default(),
            )
            .map_err(|e| Error::Model(e.to_string()))?;
            o.max_positions = Some(preset.max_positions().max(cfg.data.context_length));
        }
        codex_registry::build_preset(&m.preset, &o, device, dtype, cfg.training.seed)
            .map_err(|e| Error::Model(e.to_string()))?
    } else {
        codex_registry::load_pretrained(&m.pretrained, device, dtype)
            .map_err(|e| Error::Model(e.to_string()))?
    };
    if !model.is_causal_lm() {
        return Err(Error::Invalid(format!(
            "model `{}` is a `{}` encoder; `codex train` trains causal language models (gpt2, llama)",
            if m.pretrained.is_empty() {
                &m.preset
            } else {
                &m.pretrained
            },
            model.arch_name()
        )));
    }
    if m.lora.enabled {
        let lc = codex_registry::LoraConfig {
            r: m.lora.r,
            alpha: m.lora.alpha,
            dropout: m.lora.dropout as f32,
            target_modules: m.lora.target_modules.clone(),
            ..Default::default()
        };
        codex_registry::apply_lora(&mut model, lc, cfg.training.seed)
            .map_err(|e| Error::Model(e.to_string()))?;
    }
    if model.vocab_size() < vocab_size {
        return Err(Error::Invalid(format!(
            "the tokenizer has {vocab_size} tokens but the model's vocabulary is {}",
            model.vocab_size()
        )));
    }
    if model.max_positions() < cfg.data.context_length {
        return Err(Error::Invalid(format!(
            "data.context_length = {} exceeds the model's {} positions",
            cfg.data.context_length,
            model.max_positions()
        )));
    }
    Ok(Box::new(RegistryModel(model)))
}

/// The registry's model as a [`TrainModel`].
pub struct RegistryModel(pub codex_registry::Model);

impl TrainModel for RegistryModel {
    fn forward(&self, ids: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.0
            .forward(ids, train)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
    fn named_trainable(&self) -> Vec<(String, candle_core::Var)> {
        self.0.named_trainable()
    }
    fn state_for_save(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.0.state_for_save())
    }
    fn load_state(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        self.0
            .load_state(tensors.iter().cloned())
            .map_err(|e| Error::Checkpoint(e.to_string()))
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn max_positions(&self) -> usize {
        self.0.max_positions()
    }
    fn extra_files(&self) -> Vec<(String, Vec<u8>)> {
        match self.0.lora_config() {
            Some(lc) => {
                let text = serde_json::to_vec_pretty(&lc.to_peft_json(&self.0)).unwrap_or_default();
                vec![(codex_checkpoint::ADAPTER_CONFIG_FILE.to_string(), text)]
            }
            None => Vec::new(),
        }
    }
    fn weights_file(&self) -> &'static str {
        if self.0.lora_config().is_some() {
            codex_checkpoint::ADAPTER_MODEL_FILE
        } else {
            codex_checkpoint::MODEL_FILE
        }
    }
    fn rng_state(&self) -> (u64, u64) {
        self.0.dropout_state()
    }
    fn set_rng_state(&self, state: (u64, u64)) {
        self.0.set_dropout_state(state.0, state.1)
    }
}

/// Validation metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    pub val_loss: f64,
    pub val_ppl: f64,
    pub val_token_acc: f64,
    pub tokens: u64,
    pub batches: u64,
}

impl EvalResult {
    fn get(&self, m: Monitor) -> f64 {
        match m {
            Monitor::ValLoss => self.val_loss,
            Monitor::ValPpl => self.val_ppl,
            Monitor::ValTokenAcc => self.val_token_acc,
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
    let cerr = |e: codex_checkpoint::CheckpointError| Error::Checkpoint(e.to_string());
    let file = model.weights_file();
    let mut weights = Vec::new();
    for (name, view) in ck.tensors(file).map_err(cerr)? {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F16 => DType::F16,
            other => {
                return Err(Error::Checkpoint(format!(
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

/// Trains as `cfg` says, with the model from the registry.
pub fn train(cfg: &TrainConfig, opts: &RunOptions, obs: &mut dyn Observer) -> Result<RunSummary> {
    train_with(cfg, opts, obs, &build_model)
}

type Builder<'b> = dyn Fn(&TrainConfig, usize, &Device) -> Result<Box<dyn TrainModel>> + 'b;

/// [`train`] with a given model builder (tests use small stand-ins).
pub fn train_with(
    cfg: &TrainConfig,
    opts: &RunOptions,
    obs: &mut dyn Observer,
    build: &Builder<'_>,
) -> Result<RunSummary> {
    let started = Instant::now();
    // Every step re-allocates the same large buffers; keep them mapped (no per-step faults).
    codex_ops::keep_freed_memory();
    let run = RunDir::new(&cfg.output.dir);
    codex_core::fsutil::create_dir_all(run.root()).map_err(|source| Error::Write {
        path: run.root().to_path_buf(),
        source,
    })?;
    let policy = RetentionPolicy {
        keep_best: cfg.checkpoint.keep_best,
        keep_last: cfg.checkpoint.keep_last,
        pin_every: cfg.checkpoint.pin_every,
        mode: match cfg.checkpoint.mode {
            MonitorMode::Min => codex_checkpoint::Mode::Min,
            MonitorMode::Max => codex_checkpoint::Mode::Max,
        },
        monitor: cfg.checkpoint.monitor.name().to_string(),
    };
    // The lock comes first: a second `codex train` on this run stops here, touching nothing.
    let mut manager = CheckpointManager::open(run.root(), policy)
        .map_err(|e| Error::Checkpoint(e.to_string()))?;
    let resume = match &opts.resume {
        Resume::No => {
            let existing = codex_checkpoint::list(run.root())
                .map(|l| l.len())
                .unwrap_or(0);
            if existing > 0 {
                return Err(Error::Invalid(format!(
                    "run directory `{}` already has {existing} checkpoint(s); pass --resume to continue it, or choose another output.dir",
                    run.root().display()
                )));
            }
            None
        }
        Resume::Latest => Some(
            codex_checkpoint::latest_valid(run.root())
                .map_err(|e| Error::Checkpoint(e.to_string()))?
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "no valid checkpoint to resume from in `{}`",
                        run.checkpoints().display()
                    ))
                })?,
        ),
        Resume::From(p) => {
            Some(codex_checkpoint::load(p).map_err(|e| Error::Checkpoint(e.to_string()))?)
        }
    };
    if let Some(ck) = &resume {
        manager.protect(ck.step);
    }
    let run_id = resume
        .as_ref()
        .and_then(|c| {
            c.trainer_state
                .get("run_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| new_run_id(run.root()));
    let writer = if resume.is_some() {
        NdjsonWriter::append(&run.metrics())
    } else {
        NdjsonWriter::create(&run.metrics())
    };
    let writer = writer.map_err(|source| Error::Write {
        path: run.metrics(),
        source,
    })?;
    let mut sink = Sink {
        writer: Some(writer),
        run_id: run_id.clone(),
        obs,
        write_error: None,
    };

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_inner(
            cfg,
            opts,
            &run,
            &mut sink,
            &mut manager,
            resume,
            build,
            started,
        )
    }));
    let result = match result {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Internal(format!(
                "panic in the training loop: {msg}"
            )))
        }
    };
    sink.obs.finish();
    match &result {
        Ok(summary) => {
            let mut fields = serde_json::to_value(summary).unwrap_or_else(|_| json!({}));
            if let Some(e) = &sink.write_error {
                fields["metrics_write_error"] = json!(e);
            }
            sink.emit("end", summary.steps, fields);
        }
        Err(e) => {
            let fields = json!({
                "status": "error",
                "error": error_chain(e),
                "elapsed_s": started.elapsed().as_secs_f64(),
            });
            sink.emit("end", 0, fields);
        }
    }
    if let Some(w) = &mut sink.writer {
        let _ = w.sync();
    }
    result
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn new_run_id(root: &Path) -> String {
    let base = root.file_name().and_then(|n| n.to_str()).unwrap_or("run");
    let ts: String = codex_core::time::now_rfc3339()
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect();
    format!("{base}-{ts}-{:04x}", std::process::id() & 0xffff)
}

/// The part of the trainer state that a checkpoint restores.
#[derive(Debug, Clone, Default)]
struct LoopState {
    step: u64,
    cursor: u64,
    best: Option<f64>,
    evals_since_best: u64,
    consecutive_anomalies: u64,
    last_eval: Option<EvalResult>,
}

#[allow(clippy::too_many_arguments)]
fn run_inner(
    cfg: &TrainConfig,
    opts: &RunOptions,
    run: &RunDir,
    sink: &mut Sink<'_>,
    manager: &mut CheckpointManager,
    resume: Option<LoadedCheckpoint>,
    build: &Builder<'_>,
    started: Instant,
) -> Result<RunSummary> {
    let device = crate::device::open_device(&cfg.training.device)?;
    let cache = data::cache_dir_for(cfg, run.root());
    let prepared = {
        let obs = &mut *sink.obs;
        data::prepare(cfg, cache.as_deref(), &mut |m| obs.message(m))?
    };
    let ds = prepared.dataset;
    sink.obs.message(&format!(
        "data: {} tokens, {} train / {} val blocks of {} (tokenizer {}, vocab {})",
        ds.n_tokens(),
        ds.n_train(),
        ds.n_val(),
        ds.context_length,
        ds.tokenizer_desc,
        ds.vocab_size
    ));
    let model = build(cfg, ds.vocab_size, &device)?;
    let config_text =
        codex_core::config::to_toml_string(cfg).map_err(|e| Error::Internal(e.to_string()))?;
    let config_hash = codex_core::hash::sha256_bytes(config_text.as_bytes());
    if resume.is_none() {
        codex_core::fsutil::atomic_write(&run.config(), config_text.as_bytes()).map_err(
            |source| Error::Write {
                path: run.config(),
                source,
            },
        )?;
    }
    if let TextTokenizer::Hf(t) = &prepared.tokenizer {
        let text = t
            .to_string(true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        codex_core::fsutil::atomic_write(&run.tokenizer(), text.as_bytes()).map_err(|source| {
            Error::Write {
                path: run.tokenizer(),
                source,
            }
        })?;
    }
    let n_params: usize = model
        .named_trainable()
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    let prov = crate::provenance::collect(cfg, &config_hash, &ds, &device, n_params);
    let prov_bytes =
        serde_json::to_vec_pretty(&prov).map_err(|e| Error::Internal(e.to_string()))?;
    codex_core::fsutil::atomic_write(&run.provenance(), &prov_bytes).map_err(|source| {
        Error::Write {
            path: run.provenance(),
            source,
        }
    })?;

    let tr = &cfg.training;
    let per_step = (tr.batch_size * tr.grad_accum) as u64;
    let total_steps = if tr.steps > 0 {
        tr.steps
    } else {
        (tr.epochs * ds.n_train() as u64).div_ceil(per_step).max(1)
    };
    let mut opt = Optimizer::new(&cfg.optimizer, model.named_trainable())?;
    let mut st = LoopState::default();
    let mut resumed_from = None;
    if let Some(ck) = &resume {
        restore(ck, model.as_ref(), &mut opt, &mut st, &device)?;
        let ts = &ck.trainer_state;
        if ts.get("data_hash").and_then(Value::as_str) != Some(ds.data_hash.as_str()) {
            sink.obs.message("warning: the data changed since this checkpoint; the data cursor no longer means the same batches");
        }
        if ts.get("total_steps").and_then(Value::as_u64) != Some(total_steps) {
            sink.obs.message("warning: the total number of steps changed since this checkpoint; the LR schedule differs");
        }
        let metric = ts
            .get("metric")
            .and_then(Value::as_f64)
            .map(|m| format!("{} {m:.4}", cfg.checkpoint.monitor.name()));
        sink.obs.message(&format!(
            "resumed from {}: step {}, {}, {} file(s) verified by sha256; restored weights, optimizer state ({} updates), LR schedule position, RNG state and data cursor (sample {})",
            ck.dir.display(),
            st.step,
            metric.unwrap_or_else(|| "no metric".into()),
            ck.manifest.files.len(),
            opt.steps_taken(),
            st.cursor
        ));
        for (dir, why) in &ck.skipped {
            sink.obs.message(&format!(
                "warning: skipped invalid checkpoint {}: {why}",
                dir.display()
            ));
        }
        resumed_from = Some(ck.dir.clone());
    }
    drop(resume);

    // The system sampler runs beside the loop; dropping the handle (any exit path) joins it.
    let step_counter = Arc::new(AtomicU64::new(st.step));
    let mut sampler = start_sampler(cfg, run, &sink.run_id, &step_counter, sink.obs);

    let mut first_val_loss = None;
    if st.step == 0 && tr.eval_at_start {
        // Baseline of the untrained model, so the fall of the validation loss is visible.
        let e = evaluate(model.as_ref(), &ds, tr.batch_size, tr.eval_batches, &device)?;
        first_val_loss.get_or_insert(e.val_loss);
        sink.emit(
            "eval",
            0,
            json!({"val_loss": e.val_loss, "val_ppl": e.val_ppl, "val_token_acc": e.val_token_acc, "val_tokens": e.tokens}),
        );
    }
    sink.obs.start(total_steps, st.step);
    let ctx_len = cfg.data.context_length;
    let mut tokens_done = 0u64;
    let mut train_time = 0.0f64;
    let mut last_loss = None;
    let mut anomalies = 0u64;
    let mut last_ckpt: Option<PathBuf> = None;
    let mut status = Status::Completed;
    let mut window = (0u64, 0.0f64, 0.0f64, 0u64); // steps, time, loss sum, tokens since last log

    while st.step < total_steps {
        if codex_core::signal::interrupted() || opts.stop_at_step.is_some_and(|s| st.step >= s) {
            status = Status::Interrupted;
            break;
        }
        let t0 = Instant::now();
        let lr = lr_at(&cfg.schedule, cfg.optimizer.lr, st.step, total_steps);
        let mut acc: Vec<Option<Tensor>> = Vec::new();
        let mut loss_sum = 0.0f64;
        for _ in 0..tr.grad_accum {
            let b = ds.train_batch(st.cursor, tr.batch_size, &device)?;
            st.cursor += tr.batch_size as u64;
            let logits = model.forward(&b.inputs, true)?;
            let (bs, t, v) = logits.dims3()?;
            let flat = logits.reshape((bs * t, v))?;
            let flat = if flat.dtype() == DType::F32 {
                flat
            } else {
                flat.to_dtype(DType::F32)?
            };
            let loss = codex_ops::cross_entropy(&flat, &b.targets.flatten_all()?)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?);
            let scaled = if tr.grad_accum > 1 {
                (loss / tr.grad_accum as f64)?
            } else {
                loss
            };
            let store = scaled.backward()?;
            let grads = optim::grads_for(&opt, &store);
            if acc.is_empty() {
                acc = grads;
            } else {
                for (a, g) in acc.iter_mut().zip(grads) {
                    *a = match (a.take(), g) {
                        (Some(x), Some(y)) => Some((x + y)?),
                        (x, y) => x.or(y),
                    };
                }
            }
        }
        let loss = loss_sum / tr.grad_accum as f64;
        let grad_norm = optim::global_norm(&acc)?;
        st.step += 1;
        step_counter.store(st.step, Ordering::Relaxed);
        if !loss.is_finite() || !grad_norm.is_finite() {
            // Anomaly guard: the update is skipped, so the weights stay the last good ones.
            st.consecutive_anomalies += 1;
            anomalies += 1;
            sink.emit(
                "anomaly",
                st.step,
                json!({"train_loss": finite_or_null(loss), "grad_norm": finite_or_null(grad_norm),
                        "kind": if loss.is_finite() { "non_finite_grad" } else { "non_finite_loss" },
                        "consecutive": st.consecutive_anomalies, "action": "skipped_update"}),
            );
            if st.consecutive_anomalies >= tr.max_anomalies {
                status = Status::AnomalyStopped;
                break;
            }
            continue;
        }
        st.consecutive_anomalies = 0;
        opt.step(&acc, lr, optim::clip_coef(grad_norm, tr.clip_norm))?;
        drop(acc);
        let dt = t0.elapsed().as_secs_f64();
        let step_tokens = per_step * ctx_len as u64;
        tokens_done += step_tokens;
        train_time += dt;
        last_loss = Some(loss);
        window = (
            window.0 + 1,
            window.1 + dt,
            window.2 + loss,
            window.3 + step_tokens,
        );
        let tps = step_tokens as f64 / dt.max(1e-9);
        sink.obs.progress(st.step, loss, tps);
        if st.step % tr.log_every == 0 || st.step == total_steps {
            sink.emit(
                "step",
                st.step,
                json!({
                    "train_loss": loss,
                    "train_loss_mean": window.2 / window.0 as f64,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": window.3 as f64 / window.1.max(1e-9),
                    "step_time_ms": 1e3 * window.1 / window.0 as f64,
                    "epoch": ds.epoch_of(st.cursor.saturating_sub(1)),
                    "tokens_seen": st.cursor * ctx_len as u64,
                }),
            );
            window = (0, 0.0, 0.0, 0);
        }
        let last = st.step == total_steps;
        let eval_now = last || (tr.eval_every > 0 && st.step % tr.eval_every == 0);
        let mut stop_early = false;
        if eval_now {
            let e = evaluate(model.as_ref(), &ds, tr.batch_size, tr.eval_batches, &device)?;
            first_val_loss.get_or_insert(e.val_loss);
            sink.emit("eval", st.step, json!({"val_loss": e.val_loss, "val_ppl": e.val_ppl, "val_token_acc": e.val_token_acc, "val_tokens": e.tokens}));
            let mon = tr.early_stopping_monitor;
            let v = e.get(mon);
            let better = match st.best {
                None => true,
                Some(b) => {
                    if mon.higher_is_better() {
                        v > b
                    } else {
                        v < b
                    }
                }
            };
            if better {
                st.best = Some(v);
                st.evals_since_best = 0;
            } else {
                st.evals_since_best += 1;
            }
            st.last_eval = Some(e);
            if tr.early_stopping_patience > 0 && st.evals_since_best >= tr.early_stopping_patience {
                stop_early = true;
            }
        }
        let every = cfg.checkpoint.every;
        if !last && !stop_early && every > 0 && st.step % every == 0 {
            last_ckpt = Some(save_checkpoint(
                cfg,
                manager,
                model.as_ref(),
                &opt,
                &st,
                total_steps,
                &ds,
                &config_hash,
                sink,
            )?);
        }
        if stop_early {
            status = Status::EarlyStopped;
            break;
        }
    }
    // Final checkpoint (also on interrupt and anomaly stop: the weights are the last good ones).
    let already = last_ckpt
        .as_ref()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        == Some(&codex_checkpoint::step_dir_name(st.step));
    if !already && st.step > 0 {
        last_ckpt = Some(save_checkpoint(
            cfg,
            manager,
            model.as_ref(),
            &opt,
            &st,
            total_steps,
            &ds,
            &config_hash,
            sink,
        )?);
    }
    if let Some(h) = sampler.take() {
        let summary = h.stop();
        for w in &summary.warnings {
            sink.obs.message(&format!("warning: system metrics: {w}"));
        }
    }
    let e = st.last_eval;
    let summary = RunSummary {
        run_dir: run.root().to_path_buf(),
        run_id: sink.run_id.clone(),
        status,
        steps: st.step,
        total_steps,
        tokens: tokens_done,
        tokens_per_s: if train_time > 0.0 {
            tokens_done as f64 / train_time
        } else {
            0.0
        },
        train_loss: last_loss,
        val_loss: e.map(|e| e.val_loss),
        val_ppl: e.map(|e| e.val_ppl),
        val_token_acc: e.map(|e| e.val_token_acc),
        first_val_loss,
        resumed_from,
        last_checkpoint: last_ckpt,
        elapsed_s: started.elapsed().as_secs_f64(),
        anomalies,
        peak_rss_bytes: peak_rss_bytes(),
    };
    Ok(summary)
}

fn finite_or_null(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        json!(x.to_string())
    }
}

fn start_sampler(
    cfg: &TrainConfig,
    run: &RunDir,
    run_id: &str,
    step: &Arc<AtomicU64>,
    obs: &mut dyn Observer,
) -> Option<codex_telemetry::SamplerHandle> {
    let gpu = match cfg.system_metrics.mode {
        SystemMetricsMode::Off => return None,
        SystemMetricsMode::Cpu => codex_telemetry::GpuMode::Cpu,
        SystemMetricsMode::Gpu => codex_telemetry::GpuMode::Gpu,
    };
    let sc = codex_telemetry::SamplerConfig {
        interval: std::time::Duration::from_millis(cfg.system_metrics.interval_ms),
        gpu,
        out: run.system_metrics(),
        run_id: Some(run_id.to_string()),
        step: Some(Arc::clone(step)),
        aggregate: false,
    };
    match codex_telemetry::Sampler::start(sc) {
        Ok(h) => Some(h),
        Err(e) => {
            // Optional component: the run goes on and says so.
            obs.message(&format!("warning: system metrics are off: {e}"));
            None
        }
    }
}

fn tensor_data(name: String, t: &Tensor) -> Result<TensorData<'static>> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => TensorData::f32(name, shape, flat.to_vec1::<f32>()?),
        DType::BF16 => {
            let v = flat.to_vec1::<half::bf16>()?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            TensorData::raw(name, codex_checkpoint::Dtype::BF16, shape, bytes)
        }
        DType::F16 => {
            let v = flat.to_vec1::<half::f16>()?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            TensorData::raw(name, codex_checkpoint::Dtype::F16, shape, bytes)
        }
        other => {
            return Err(Error::Internal(format!(
                "cannot checkpoint tensor `{name}` of dtype {other:?}"
            )));
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    cfg: &TrainConfig,
    manager: &mut CheckpointManager,
    model: &dyn TrainModel,
    opt: &Optimizer,
    st: &LoopState,
    total_steps: u64,
    ds: &Dataset,
    config_hash: &str,
    sink: &mut Sink<'_>,
) -> Result<PathBuf> {
    let t0 = Instant::now();
    let weights = model
        .state_for_save()?
        .into_iter()
        .map(|(n, t)| tensor_data(n, &t))
        .collect::<Result<Vec<_>>>()?;
    let optimizer: Vec<TensorData<'static>> = opt
        .state()
        .into_iter()
        .map(|s| TensorData::f32(s.name, s.shape, s.data))
        .collect();
    let metric = st.last_eval.map(|e| e.get(cfg.checkpoint.monitor));
    let (rng_seed, rng_counter) = model.rng_state();
    let run_id = sink.run_id.clone();
    let state = json!({
        "schema_version": codex_core::SCHEMA_VERSION,
        "run_id": run_id,
        "step": st.step,
        "total_steps": total_steps,
        "epoch": ds.epoch_of(st.cursor.saturating_sub(1)),
        "data_cursor": st.cursor,
        "optimizer_steps": opt.steps_taken(),
        "schedule": {"kind": cfg.schedule.kind, "position": st.step, "lr": lr_at(&cfg.schedule, cfg.optimizer.lr, st.step.min(total_steps.saturating_sub(1)), total_steps)},
        "rng": {"data_seed": cfg.data.seed, "init_seed": cfg.training.seed, "shuffle": "chacha8 per epoch (seed ^ f(epoch))", "dropout_seed": rng_seed, "dropout_counter": rng_counter},
        "monitor": cfg.checkpoint.monitor.name(),
        "metric": metric,
        "best_metric": st.best,
        "evals_since_best": st.evals_since_best,
        "consecutive_anomalies": st.consecutive_anomalies,
        "last_eval": st.last_eval,
        "data_hash": ds.data_hash,
        "config_hash": config_hash,
    });
    let mut files = vec![
        CheckpointFile::safetensors(model.weights_file(), weights),
        CheckpointFile::safetensors(codex_checkpoint::OPTIMIZER_FILE, optimizer),
    ];
    for (name, bytes) in model.extra_files() {
        files.push(CheckpointFile::bytes(name, bytes));
    }
    let saved = manager
        .save(CheckpointSpec {
            step: st.step,
            metric,
            files,
            trainer_state: state,
            config_hash: config_hash.to_string(),
        })
        .map_err(|e| Error::Checkpoint(e.to_string()))?;
    sink.emit(
        "checkpoint",
        st.step,
        json!({"path": saved.dir, "size_bytes": saved.size_bytes, "metric": metric, "monitor": cfg.checkpoint.monitor.name(),
                "deleted_steps": saved.deleted, "save_time_ms": 1e3 * t0.elapsed().as_secs_f64()}),
    );
    Ok(saved.dir)
}

fn restore(
    ck: &LoadedCheckpoint,
    model: &dyn TrainModel,
    opt: &mut Optimizer,
    st: &mut LoopState,
    device: &Device,
) -> Result<()> {
    let cerr = |e: codex_checkpoint::CheckpointError| Error::Checkpoint(e.to_string());
    load_weights(ck, model, device)?;
    let mut state = Vec::new();
    for (name, view) in ck.tensors(codex_checkpoint::OPTIMIZER_FILE).map_err(cerr)? {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::Checkpoint(format!(
                "optimizer tensor `{name}` is not f32"
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        state.push(StateTensor {
            name,
            shape: view.shape().to_vec(),
            data,
        });
    }
    let ts = &ck.trainer_state;
    let get = |k: &str| {
        ts.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::Checkpoint(format!("trainer_state.json has no `{k}`")))
    };
    opt.load_state(&state, get("optimizer_steps")?)?;
    st.step = get("step")?;
    st.cursor = get("data_cursor")?;
    st.best = ts.get("best_metric").and_then(Value::as_f64);
    st.evals_since_best = ts
        .get("evals_since_best")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    st.consecutive_anomalies = ts
        .get("consecutive_anomalies")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    st.last_eval = ts
        .get("last_eval")
        .and_then(|v| serde_json::from_value::<EvalResultDe>(v.clone()).ok())
        .map(Into::into);
    if let (Some(seed), Some(counter)) = (
        ts.pointer("/rng/dropout_seed").and_then(Value::as_u64),
        ts.pointer("/rng/dropout_counter").and_then(Value::as_u64),
    ) {
        model.set_rng_state((seed, counter));
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct EvalResultDe {
    val_loss: f64,
    val_ppl: f64,
    val_token_acc: f64,
    tokens: u64,
    batches: u64,
}

impl From<EvalResultDe> for EvalResult {
    fn from(e: EvalResultDe) -> Self {
        EvalResult {
            val_loss: e.val_loss,
            val_ppl: e.val_ppl,
            val_token_acc: e.val_token_acc,
            tokens: e.tokens,
            batches: e.batches,
        }
    }
}

/// Peak resident set size of this process (`VmHWM`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
