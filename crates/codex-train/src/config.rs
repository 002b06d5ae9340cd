//! `TrainConfig`: every section of a training run, as read from TOML plus `a.b=c` overrides.
//!
//! Loaded with [`codex_core::config::load`], so type errors, unknown keys (with a did-you-mean)
//! and the semantic rules in [`Validate`] are all reported at once.

use codex_core::config::{ConfigIssue, Validate};
use serde::{Deserialize, Serialize};

/// The embedded default run (`codex train` with no arguments).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../configs/default.toml");

/// A complete training configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    pub tokenizer: TokenizerSection,
    pub optimizer: OptimizerSection,
    pub schedule: ScheduleSection,
    pub training: TrainingSection,
    pub checkpoint: CheckpointSection,
    pub system_metrics: SystemMetricsSection,
    pub output: OutputSection,
    /// Absent from the written config when off, so configs and their hashes stay as they were.
    #[serde(skip_serializing_if = "TrackingSection::is_off")]
    pub tracking: TrackingSection,
    /// Data-parallel ranks (used only under `mpirun`; left out of `config.toml` when default,
    /// so single-process runs keep their config hash).
    #[serde(skip_serializing_if = "DistributedSection::is_default")]
    pub distributed: DistributedSection,
    /// Data safety policy applied to training and evaluation texts before tokenization.
    pub safety: codex_safety::SafetyConfig,
}

/// Which model to train: a registry preset from scratch, or pretrained weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSection {
    /// Registry preset trained from scratch (`gpt-tiny`, `gpt-small`, `gpt-medium`, …).
    pub preset: String,
    /// Pretrained source instead of a preset: HF directory, `org/name[@rev]` in the hf-hub
    /// cache, or a GGUF file. Empty = use `preset`.
    pub pretrained: String,
    /// Preset overrides passed to the registry: `vocab_size` (default: the tokenizer's),
    /// `max_positions`, `dropout`, `tie_word_embeddings`, and the architecture's sizes under
    /// HF's names (GPT-2: `n_layer`, `n_head`, `n_embd`, …; Llama: `num_hidden_layers`,
    /// `hidden_size`, `num_key_value_heads`, `rope_theta`, …).
    pub overrides: codex_registry::PresetOverrides,
    pub lora: LoraSection,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            preset: "gpt-tiny".into(),
            pretrained: String::new(),
            overrides: codex_registry::PresetOverrides::default(),
            lora: LoraSection::default(),
        }
    }
}

/// LoRA fine-tuning: only the adapter matrices are trained and saved (PEFT layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraSection {
    /// Train a LoRA adapter instead of every weight.
    pub enabled: bool,
    /// Rank of the adapter matrices.
    pub r: usize,
    /// Scaling numerator: updates are scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input.
    pub dropout: f64,
    /// Modules that get adapters; empty = the architecture's defaults.
    pub target_modules: Vec<String>,
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            enabled: false,
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: Vec::new(),
        }
    }
}

/// Input format of the data files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// By extension: `.jsonl`/`.ndjson` are JSON Lines, anything else is text.
    #[default]
    Auto,
    Text,
    Jsonl,
}

/// The corpus and how it is cut into training examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataSection {
    /// Files, directories or globs. Empty = the corpus embedded in the binary.
    pub inputs: Vec<String>,
    pub format: DataFormat,
    /// JSONL field holding the text.
    pub text_field: String,
    /// Tokens per training example.
    pub context_length: usize,
    /// Fraction of blocks held out for validation.
    pub val_fraction: f64,
    /// Seed of the train/val split and of the per-epoch shuffle.
    pub seed: u64,
    /// Cache token shards (with a manifest) and reuse them when nothing changed.
    pub cache: bool,
    /// Where shards go; empty = `<run dir>/cache`.
    pub cache_dir: String,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            format: DataFormat::Auto,
            text_field: "text".into(),
            context_length: 64,
            val_fraction: 0.1,
            seed: 1234,
            cache: true,
            cache_dir: String::new(),
        }
    }
}

/// How text becomes token ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// Raw UTF-8 bytes, vocabulary 256; nothing to train.
    #[default]
    Byte,
    /// An HF `tokenizer.json` at `path`.
    Load,
    /// Train a BPE tokenizer on the corpus first.
    Train,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenizerSection {
    /// `byte`, `load` (an HF tokenizer.json) or `train` (BPE on the corpus first).
    pub kind: TokenizerKind,
    /// `tokenizer.json` to load (kind = "load").
    pub path: String,
    /// Vocabulary size to train (kind = "train").
    pub vocab_size: usize,
    /// Keep only merges seen at least this many times (kind = "train").
    pub min_frequency: u64,
}

impl Default for TokenizerSection {
    fn default() -> Self {
        Self {
            kind: TokenizerKind::Byte,
            path: String::new(),
            vocab_size: 2048,
            min_frequency: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimizerSection {
    /// `adamw` or `sgd`.
    pub name: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW's first-moment decay.
    pub beta1: f64,
    /// AdamW's second-moment decay.
    pub beta2: f64,
    /// AdamW's denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (AdamW) / L2 (SGD); never applied to biases and norms.
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        Self {
            name: OptimizerKind::Adamw,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            momentum: 0.9,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    #[default]
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleSection {
    /// Learning-rate shape after warm-up: `constant`, `linear` or `cosine` decay.
    pub kind: ScheduleKind,
    /// Linear warm-up from 0 to `optimizer.lr` over this many steps.
    pub warmup_steps: u64,
    /// Final LR as a fraction of the peak (linear and cosine).
    pub min_lr_ratio: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Cosine,
            warmup_steps: 0,
            min_lr_ratio: 0.1,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Dtype {
    #[default]
    F32,
    /// bf16 weights and compute, fp32 master weights and moments in the optimizer.
    Bf16,
}

/// Parsed by hand only for the error: an f16 request is told why it is refused and what to use.
impl TryFrom<String> for Dtype {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "f32" => Ok(Dtype::F32),
            "bf16" => Ok(Dtype::Bf16),
            "f16" | "fp16" | "float16" | "half" => Err(format!(
                "`{name}` is not supported: f16 overflows above 65504 and needs loss scaling, \
                 which codex does not implement; use `bf16` (f32's range at half the memory) or \
                 `f32`"
            )),
            _ => Err(format!("unknown dtype `{name}`, expected `f32` or `bf16`")),
        }
    }
}

/// A metric that early stopping or checkpoint retention can watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    #[default]
    ValLoss,
    ValPpl,
    ValTokenAcc,
}

impl Monitor {
    /// Every metric, as written in configs.
    pub const ALL: [Monitor; 3] = [Monitor::ValLoss, Monitor::ValPpl, Monitor::ValTokenAcc];

    /// The metric called `name`.
    pub fn from_name(name: &str) -> Option<Monitor> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ValPpl => "val_ppl",
            Monitor::ValTokenAcc => "val_token_acc",
        }
    }
    /// Whether larger values are better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Monitor::ValTokenAcc)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingSection {
    /// Optimizer steps. 0 = derive from `epochs`.
    pub steps: u64,
    /// Passes over the training blocks (used when `steps = 0`).
    pub epochs: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this value; 0 = no clipping (the norm is still reported).
    pub clip_norm: f64,
    /// Weights and compute: `f32`, or `bf16` (fp32 master weights in the optimizer).
    pub dtype: Dtype,
    /// With `dtype = "bf16"` on a CPU with AVX512-BF16 (AMD Zen 4+, Intel Sapphire Rapids+):
    /// matrix products take bf16 operands and accumulate in f32, as PyTorch's CPU autocast
    /// does, up to twice as fast; norms, softmax, losses and the optimizer stay f32. `false`
    /// (or a CPU without the instructions) widens bf16 to f32 for every product. The `start`
    /// event's `compute_dtype` says which ran.
    pub bf16_matmul: bool,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Seed of weight initialisation.
    pub seed: u64,
    /// Log a step event every N steps.
    pub log_every: u64,
    /// Evaluate every N steps (and always at the end); 0 = only at the end.
    pub eval_every: u64,
    /// Validation batches per evaluation; 0 = the whole validation split.
    pub eval_batches: usize,
    /// Also evaluate the untrained model at step 0 (a baseline for the curve).
    pub eval_at_start: bool,
    /// Stop after this many evaluations without improvement; 0 = never.
    pub early_stopping_patience: u64,
    /// The metric early stopping watches.
    pub early_stopping_monitor: Monitor,
    /// Stop (exit 1) after this many non-finite losses or gradients in a row.
    pub max_anomalies: u64,
    /// The device's peak throughput in TFLOP/s, the denominator of the step events' `mfu`;
    /// 0 = measure it once at start with a short matmul probe (the `start` event says which).
    pub peak_tflops: f64,
    /// OpenBLAS or Intel MKL for the large f32 products of CPU training: a path or a name the
    /// dynamic loader finds (`libopenblas.so.0`; the PyPI wheel `scipy-openblas32`'s
    /// `libscipy_openblas.so`, which is newer than most distributions' and knows recent CPUs;
    /// `libmkl_rt.so.2` of the PyPI wheel `mkl`, the MKL PyTorch's CPU wheels use). Empty =
    /// codex's built-in GEMM (the `gemm` crate). Each is deterministic; they differ in the last bits, and the
    /// `start` event records which ran.
    pub blas: String,
}

impl Default for TrainingSection {
    fn default() -> Self {
        Self {
            steps: 200,
            epochs: 0,
            batch_size: 16,
            grad_accum: 1,
            clip_norm: 1.0,
            dtype: Dtype::F32,
            bf16_matmul: true,
            device: "cpu".into(),
            seed: 1234,
            log_every: 10,
            eval_every: 50,
            eval_batches: 16,
            eval_at_start: true,
            early_stopping_patience: 0,
            early_stopping_monitor: Monitor::ValLoss,
            max_anomalies: 3,
            peak_tflops: 0.0,
            blas: String::new(),
        }
    }
}

/// `[checkpoint]`: defined once, in codex-checkpoint (`codex checkpoint prune` reads it too).
pub use codex_checkpoint::{CheckpointConfig as CheckpointSection, Mode as MonitorMode};
/// `off | cpu | gpu`: defined once, in codex-core.
pub use codex_core::mode::SystemMetricsMode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SystemMetricsSection {
    /// `off`, `cpu` (host, memory, this process tree) or `gpu` (also every GPU NVML sees).
    pub mode: SystemMetricsMode,
    /// Milliseconds between samples (at least 200).
    pub interval_ms: u64,
}

impl Default for SystemMetricsSection {
    fn default() -> Self {
        Self {
            mode: SystemMetricsMode::Off,
            interval_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputSection {
    /// The run directory.
    pub dir: String,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            dir: "runs/default".into(),
        }
    }
}

/// `[tracking]`: the trackers a run writes to live, besides `--track`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrackingSection {
    /// `true` for `<run>/tensorboard/`, or a directory (one TensorBoard run per codex run in
    /// it).
    pub tensorboard: TensorboardSetting,
    /// MLflow server URI (`http://host:port`); `""` is off. `--track mlflow` without it uses
    /// `MLFLOW_TRACKING_URI`.
    pub mlflow: String,
    /// MLflow experiment; `""` means `MLFLOW_EXPERIMENT_NAME`, else `codex`.
    pub mlflow_experiment: String,
    /// `<run>/metrics.csv`.
    pub csv: bool,
}

/// `tensorboard = true | false | "DIR"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TensorboardSetting {
    On(bool),
    Dir(String),
}

impl Default for TensorboardSetting {
    fn default() -> Self {
        Self::On(false)
    }
}

impl TrackingSection {
    pub fn is_off(&self) -> bool {
        *self == Self::default()
    }
}

/// Which engine exchanges gradients between ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistBackend {
    /// NCCL when the device is a GPU and codex was built with `nccl`, else MPI.
    #[default]
    Auto,
    Mpi,
    Nccl,
}

/// How gradients are summed across ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistReduce {
    /// Gather, then sum in micro-batch order: N ranks are bit-identical to one process with
    /// `grad_accum × N`, and a run can resume on another world size.
    #[default]
    Ordered,
    /// The library's all-reduce: faster, the summation order is the library's.
    Native,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DistributedSection {
    /// Which engine exchanges gradients: `auto`, `mpi` or `nccl`.
    pub backend: DistBackend,
    /// `ordered` (bit-identical to one process) or `native` (the library's all-reduce).
    pub reduce: DistReduce,
    /// Gradient bytes exchanged per collective call (bounds the receive buffers).
    pub bucket_mb: u64,
    /// Compare a hash of the parameters across ranks every this many steps (0 = never).
    pub check_every: u64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self {
            backend: DistBackend::Auto,
            reduce: DistReduce::Ordered,
            bucket_mb: 25,
            check_every: 100,
        }
    }
}

impl DistributedSection {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn positive_f(issues: &mut Vec<ConfigIssue>, path: &str, v: f64) {
    if !(v.is_finite() && v > 0.0) {
        issues.push(ConfigIssue::invalid(path, v, "must be a finite number > 0"));
    }
}

fn unit_interval(issues: &mut Vec<ConfigIssue>, path: &str, v: f64, open_high: bool) {
    let ok = v.is_finite() && v >= 0.0 && if open_high { v < 1.0 } else { v <= 1.0 };
    if !ok {
        let range = if open_high { "[0, 1)" } else { "[0, 1]" };
        issues.push(ConfigIssue::invalid(path, v, format!("must be in {range}")));
    }
}

impl Validate for TrainConfig {
    fn validate(&self, issues: &mut Vec<ConfigIssue>) {
        // Upper bounds of the sizes: far above any real run, and below what overflows the
        // step arithmetic (`epochs * blocks`, `steps * batch`) or makes the first allocation
        // abort the process instead of failing with a message.
        mod limits {
            /// 2^40 steps: ~35 years at 1000 steps/s, and `steps * batch` still fits u64.
            pub const STEPS: u64 = 1 << 40;
            /// `epochs * train blocks` must fit u64 for any corpus that fits on disk.
            pub const EPOCHS: u64 = 1 << 20;
            /// Sequences per micro-batch.
            pub const BATCH_SIZE: u64 = 1 << 16;
            /// Micro-batches per step.
            pub const GRAD_ACCUM: u64 = 1 << 16;
            /// Tokens per sequence (1M).
            pub const CONTEXT_LENGTH: u64 = 1 << 20;
            /// Tokens in one micro-batch (`batch_size * context_length`): activations scale
            /// with it.
            pub const BATCH_TOKENS: u64 = 1 << 24;
            /// Vocabulary (16M): ids are u32 and the embedding is `vocab * d_model` floats.
            pub const VOCAB_SIZE: u64 = 1 << 24;
            /// LoRA rank.
            pub const LORA_R: u64 = 1 << 16;
        }
        fn at_most(issues: &mut Vec<ConfigIssue>, path: &str, v: u64, max: u64, why: &str) {
            if v > max {
                issues.push(ConfigIssue::invalid(
                    path,
                    v,
                    format!("must be <= {max} ({why})"),
                ));
            }
        }
        let m = &self.model;
        if m.preset.trim().is_empty() && m.pretrained.trim().is_empty() {
            issues.push(ConfigIssue::invalid(
                "model.preset",
                "\"\"",
                "set a registry preset or `model.pretrained`",
            ));
        }
        // The preset's sizes with the overrides, checked together: every problem at once.
        if m.pretrained.trim().is_empty()
            && let Some(p) = codex_registry::registry::find_preset(m.preset.trim())
        {
            let mut arch = (p.config)();
            if let Err(bad) = m.overrides.apply(&mut arch) {
                for b in bad {
                    // Each message names its key first (`n_head` …): one issue per key.
                    let key = b
                        .strip_prefix('`')
                        .and_then(|r| r.split(['`', ' ']).next())
                        .map_or("model.overrides".to_string(), |k| {
                            format!("model.overrides.{k}")
                        });
                    issues.push(ConfigIssue::new(key, None, b));
                }
            }
        }
        if m.lora.enabled {
            if m.lora.r == 0 {
                issues.push(ConfigIssue::invalid("model.lora.r", 0, "must be > 0"));
            }
            at_most(
                issues,
                "model.lora.r",
                m.lora.r as u64,
                limits::LORA_R,
                "a rank beyond any layer width",
            );
            positive_f(issues, "model.lora.alpha", m.lora.alpha);
            unit_interval(issues, "model.lora.dropout", m.lora.dropout, true);
        }
        let d = &self.data;
        if d.context_length < 2 {
            issues.push(ConfigIssue::invalid(
                "data.context_length",
                d.context_length,
                "must be >= 2",
            ));
        }
        at_most(
            issues,
            "data.context_length",
            d.context_length as u64,
            limits::CONTEXT_LENGTH,
            "tokens per sequence",
        );
        if !(d.val_fraction.is_finite() && d.val_fraction > 0.0 && d.val_fraction < 1.0) {
            issues.push(ConfigIssue::invalid(
                "data.val_fraction",
                d.val_fraction,
                "must be in (0, 1): evaluation needs a validation split",
            ));
        }
        if d.text_field.is_empty() {
            issues.push(ConfigIssue::invalid(
                "data.text_field",
                "\"\"",
                "must not be empty",
            ));
        }
        let t = &self.tokenizer;
        match t.kind {
            TokenizerKind::Load if t.path.trim().is_empty() => issues.push(ConfigIssue::invalid(
                "tokenizer.path",
                "\"\"",
                "kind = \"load\" needs the path of a tokenizer.json",
            )),
            TokenizerKind::Train if t.vocab_size < 260 => issues.push(ConfigIssue::invalid(
                "tokenizer.vocab_size",
                t.vocab_size,
                "must be >= 260 (the 256 bytes plus special tokens)",
            )),
            TokenizerKind::Train => at_most(
                issues,
                "tokenizer.vocab_size",
                t.vocab_size as u64,
                limits::VOCAB_SIZE,
                "token ids are u32 and the embedding grows with it",
            ),
            _ => {}
        }
        let o = &self.optimizer;
        positive_f(issues, "optimizer.lr", o.lr);
        unit_interval(issues, "optimizer.beta1", o.beta1, true);
        unit_interval(issues, "optimizer.beta2", o.beta2, true);
        positive_f(issues, "optimizer.eps", o.eps);
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            issues.push(ConfigIssue::invalid(
                "optimizer.weight_decay",
                o.weight_decay,
                "must be >= 0",
            ));
        }
        unit_interval(issues, "optimizer.momentum", o.momentum, true);
        unit_interval(
            issues,
            "schedule.min_lr_ratio",
            self.schedule.min_lr_ratio,
            false,
        );
        let tr = &self.training;
        if tr.steps == 0 && tr.epochs == 0 {
            issues.push(ConfigIssue::invalid(
                "training.steps",
                0,
                "set `training.steps` or `training.epochs` > 0",
            ));
        }
        at_most(
            issues,
            "training.steps",
            tr.steps,
            limits::STEPS,
            "about 35 years at 1000 steps/s",
        );
        at_most(
            issues,
            "training.epochs",
            tr.epochs,
            limits::EPOCHS,
            "the step count must fit 64 bits",
        );
        if tr.batch_size == 0 {
            issues.push(ConfigIssue::invalid(
                "training.batch_size",
                0,
                "must be > 0",
            ));
        }
        at_most(
            issues,
            "training.batch_size",
            tr.batch_size as u64,
            limits::BATCH_SIZE,
            "sequences per micro-batch; use grad_accum for larger batches",
        );
        let batch_tokens = (tr.batch_size as u64).saturating_mul(d.context_length as u64);
        if tr.batch_size as u64 <= limits::BATCH_SIZE
            && d.context_length as u64 <= limits::CONTEXT_LENGTH
            && batch_tokens > limits::BATCH_TOKENS
        {
            issues.push(ConfigIssue::invalid(
                "training.batch_size",
                tr.batch_size,
                format!(
                    "batch_size * data.context_length = {batch_tokens} tokens per micro-batch; \
                     must be <= {} (use grad_accum for larger batches)",
                    limits::BATCH_TOKENS
                ),
            ));
        }
        if tr.grad_accum == 0 {
            issues.push(ConfigIssue::invalid(
                "training.grad_accum",
                0,
                "must be > 0",
            ));
        }
        at_most(
            issues,
            "training.grad_accum",
            tr.grad_accum as u64,
            limits::GRAD_ACCUM,
            "micro-batches per step",
        );
        if !(tr.peak_tflops.is_finite() && tr.peak_tflops >= 0.0) {
            issues.push(ConfigIssue::invalid(
                "training.peak_tflops",
                tr.peak_tflops,
                "must be >= 0 (0 = measure with a matmul probe)",
            ));
        }
        if !(tr.clip_norm.is_finite() && tr.clip_norm >= 0.0) {
            issues.push(ConfigIssue::invalid(
                "training.clip_norm",
                tr.clip_norm,
                "must be >= 0 (0 = off)",
            ));
        }
        if crate::device::parse_device(&tr.device).is_err() {
            issues.push(ConfigIssue::invalid(
                "training.device",
                format!("{:?}", tr.device),
                "must be `cpu`, `cuda`, `cuda:N` or `auto`",
            ));
        }
        if tr.log_every == 0 {
            issues.push(ConfigIssue::invalid("training.log_every", 0, "must be > 0"));
        }
        if tr.max_anomalies == 0 {
            issues.push(ConfigIssue::invalid(
                "training.max_anomalies",
                0,
                "must be > 0",
            ));
        }
        let c = &self.checkpoint;
        if c.keep_last == 0 {
            issues.push(ConfigIssue::invalid(
                "checkpoint.keep_last",
                0,
                "must be >= 1: the newest checkpoint is what `--resume` continues from",
            ));
        }
        match Monitor::from_name(&c.monitor) {
            None => issues.push(ConfigIssue::invalid(
                "checkpoint.monitor",
                format!("{:?}", c.monitor),
                "must be one of val_loss, val_ppl, val_token_acc",
            )),
            Some(m) if m.higher_is_better() != (c.mode == MonitorMode::Max) => {
                let want = if m.higher_is_better() { "max" } else { "min" };
                issues.push(ConfigIssue::invalid(
                    "checkpoint.mode",
                    format!("{:?}", c.mode).to_lowercase(),
                    format!(
                        "`{}` is better when it is {want}er; use mode = \"{want}\"",
                        m.name()
                    ),
                ));
            }
            Some(_) => {}
        }
        let s = &self.system_metrics;
        if s.mode != SystemMetricsMode::Off && s.interval_ms < 200 {
            issues.push(ConfigIssue::invalid(
                "system_metrics.interval_ms",
                s.interval_ms,
                "must be >= 200",
            ));
        }
        // The policy is loaded now so every bad rule is reported with the config's problems.
        // One issue per key is kept, so the policy's problems go in one message.
        if let Err(e) = self.safety.load() {
            issues.push(ConfigIssue::invalid(
                "safety.policy",
                format!("{:?}", e.source),
                format!("{} problem(s): {}", e.issues.len(), e.issues.join("; ")),
            ));
        }
        if self.output.dir.trim().is_empty() {
            issues.push(ConfigIssue::invalid(
                "output.dir",
                "\"\"",
                "must name the run directory",
            ));
        }
        let k = &self.tracking;
        if let TensorboardSetting::Dir(d) = &k.tensorboard
            && d.trim().is_empty()
        {
            issues.push(ConfigIssue::invalid(
                "tracking.tensorboard",
                "\"\"",
                "use true, false or a directory",
            ));
        }
        let uri = k.mlflow.trim();
        if !uri.is_empty()
            && !(uri.len() > 7 && (uri.starts_with("http://") || uri.starts_with("https://")))
        {
            issues.push(ConfigIssue::invalid(
                "tracking.mlflow",
                format!("{uri:?}"),
                "must be an http:// or https:// URI of an MLflow server",
            ));
        }
        if k.mlflow_experiment.len() > 500 {
            issues.push(ConfigIssue::invalid(
                "tracking.mlflow_experiment",
                k.mlflow_experiment.len(),
                "must be at most 500 bytes",
            ));
        }
        let d = &self.distributed;
        if !(1..=4096).contains(&d.bucket_mb) {
            issues.push(ConfigIssue::invalid(
                "distributed.bucket_mb",
                d.bucket_mb,
                "must be in 1..=4096",
            ));
        }
        // A run's config.toml is written with credential-looking values masked: resuming from
        // it needs the real value again rather than the placeholder.
        if let Ok(v) = toml::Value::try_from(self) {
            masked_values(&v, "", issues);
        }
    }
}

/// An issue for every string holding codex's mask (`***`), named by its dotted key.
fn masked_values(v: &toml::Value, key: &str, issues: &mut Vec<ConfigIssue>) {
    let mask = codex_safety::mask::MASK;
    match v {
        toml::Value::String(s) if s.contains(mask) => issues.push(ConfigIssue::invalid(
            key,
            format!("{s:?}"),
            format!(
                "holds `{mask}`: codex masked a credential-looking value here when it wrote the \
                 run's config.toml; give the real value again (`{key}=...` on the command line)"
            ),
        )),
        toml::Value::Table(t) => {
            for (k, x) in t {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                masked_values(x, &sub, issues);
            }
        }
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                masked_values(x, &format!("{key}[{i}]"), issues);
            }
        }
        _ => {}
    }
}

impl TrainConfig {
    /// The metric checkpoint retention ranks by (validated to be a known one).
    pub fn checkpoint_monitor(&self) -> Monitor {
        Monitor::from_name(&self.checkpoint.monitor).unwrap_or_default()
    }

    /// The embedded default run, parsed and validated.
    pub fn default_run() -> Result<Self, codex_core::config::ConfigError> {
        let table =
            codex_core::config::parse_toml(DEFAULT_CONFIG_TOML, "configs/default.toml (embedded)")?;
        codex_core::config::load(table, "configs/default.toml (embedded)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codex_core::config::{apply_overrides, load, parse_toml, to_toml_string};

    #[test]
    fn embedded_default_is_valid_and_round_trips() {
        let cfg = TrainConfig::default_run().unwrap();
        let text = to_toml_string(&cfg).unwrap();
        let back: TrainConfig = load(parse_toml(&text, "rt").unwrap(), "rt").unwrap();
        assert_eq!(cfg, back);
    }

    #[test]
    fn struct_default_round_trips() {
        let text = to_toml_string(&TrainConfig::default()).unwrap();
        let back: TrainConfig = load(parse_toml(&text, "rt").unwrap(), "rt").unwrap();
        assert_eq!(back, TrainConfig::default());
    }

    #[test]
    fn every_problem_at_once() {
        let mut t = parse_toml(
            "[optimizer]\nlr = -1.0\nbeta3 = 0.9\n[training]\nbatch_size = 0\n",
            "t",
        )
        .unwrap();
        let issues = apply_overrides(
            &mut t,
            &[
                "training.device=tpu".into(),
                "checkpoint.mode=max".into(),
                "data.context_length=1".into(),
            ],
        );
        assert!(issues.is_empty());
        // Unknown keys stop before semantic checks, so check them separately.
        let err = load::<TrainConfig>(t.clone(), "t").unwrap_err();
        assert!(
            err.issues
                .iter()
                .any(|i| i.path == "optimizer.beta3" && i.message.contains("beta1")),
            "{err}"
        );
        t["optimizer"].as_table_mut().unwrap().remove("beta3");
        let err = load::<TrainConfig>(t, "t").unwrap_err();
        let paths: Vec<_> = err.issues.iter().map(|i| i.path.as_str()).collect();
        for p in [
            "optimizer.lr",
            "training.batch_size",
            "training.device",
            "checkpoint.mode",
            "data.context_length",
        ] {
            assert!(paths.contains(&p), "missing {p}: {err}");
        }
    }
}
