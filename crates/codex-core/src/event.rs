//! The run record's one event type, and the sinks that consume it.
//!
//! The trainer emits [`Event`]s; it never formats text or JSON for a consumer. Every consumer —
//! `metrics.ndjson`, `--json` stdout, the terminal progress, and later TensorBoard / MLflow /
//! CSV — is an [`EventSink`] registered on one [`Sinks`] fan-out. The NDJSON file is the
//! required sink: its failures are recorded and reported, and it is never dropped. An optional
//! sink that fails is dropped after one [`Warning`] so training goes on.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One line of `metrics.ndjson`: the shared header and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(flatten)]
    pub header: Header,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Fields every event carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub schema_version: u32,
    pub run_id: String,
    /// RFC 3339 UTC.
    pub ts: String,
    /// The optimizer step the event belongs to (0 before the first step).
    pub step: u64,
    /// The data-parallel rank that emitted it; absent in a single-process run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
}

/// What happened, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A process segment starts (a fresh run, or a resume).
    Start(Start),
    /// Training metrics, every `log_every` steps.
    Step(StepMetrics),
    /// Validation metrics.
    Eval(EvalMetrics),
    /// A checkpoint was written and retention applied.
    Checkpoint(CheckpointSaved),
    /// A non-finite loss or gradient; the update was skipped.
    Anomaly(Anomaly),
    /// Something the user should know; the run goes on.
    Warning(Warning),
    /// A process segment ended; the last line of every segment.
    End(RunSummary),
}

impl EventKind {
    /// The `event` tag.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Start(_) => "start",
            EventKind::Step(_) => "step",
            EventKind::Eval(_) => "eval",
            EventKind::Checkpoint(_) => "checkpoint",
            EventKind::Anomaly(_) => "anomaly",
            EventKind::Warning(_) => "warning",
            EventKind::End(_) => "end",
        }
    }
}

/// The invocation that started a segment, and what it prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub invocation: Invocation,
    pub data: DataSummary,
    pub total_steps: u64,
    /// Sequences per optimizer step, over all ranks (`world × batch_size × grad_accum`).
    pub global_batch: u64,
    pub trainable_params: u64,
    /// Threads of this process's compute pool (`RAYON_NUM_THREADS`): with the config and seed,
    /// what bit-identical weights depend on. Absent in runs recorded before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// What the CPU forward and backward compute in for bf16 parameters (`training.dtype =
    /// "bf16"`): `bf16` (matrix products with bf16 operands and f32 accumulation on
    /// AVX512-BF16, everything else in f32, as PyTorch's CPU autocast) or `f32` (widened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_dtype: Option<String>,
    /// The FLOPs accounting behind the step events' `mfu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops: Option<FlopsInfo>,
    /// The OpenBLAS or MKL the large CPU products ran on (`training.blas`); absent = the built-in GEMM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blas: Option<Box<BlasInfo>>,
    /// The checkpoint this segment continues, with what was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Resumed>,
}

/// A BLAS library loaded for training, as it describes itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlasInfo {
    pub path: String,
    /// `openblas_get_config()`: version and build options.
    pub config: String,
    /// `openblas_get_corename()`: the kernels chosen for this CPU.
    pub core: String,
}

/// One `codex train` invocation, as kept in `provenance.json` and the `start` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// Segment number: 1 for the first process of a run, then one more per resume.
    pub segment: u32,
    /// The command line, as received.
    pub argv: Vec<String>,
    /// The `a.b=c` overrides and typed flags, as applied to the config.
    pub overrides: Vec<String>,
    pub started: String,
    pub codex_version: String,
    pub config_sha256: String,
    /// The config of this segment, relative to the run directory.
    pub config_file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<PathBuf>,
}

/// The prepared data of a segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub tokens: u64,
    pub train_blocks: u64,
    pub val_blocks: u64,
    pub context_length: u64,
    pub tokenizer: String,
    pub vocab_size: u64,
    pub cache_hit: bool,
    /// What `[safety]` did while the data was prepared (codex-safety's `SafetyReport`: policy
    /// and its hash, documents in/out/dropped/redacted, counts per rule); absent when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<serde_json::Value>,
}

/// What a resume restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    pub from: PathBuf,
    pub step: u64,
    pub files_verified: u64,
    pub optimizer_updates: u64,
    pub data_cursor: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<f64>,
}

/// Training metrics averaged over the steps since the previous step event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Loss of the last step.
    pub train_loss: f64,
    /// Mean loss over the window.
    pub train_loss_mean: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub step_time_ms: f64,
    pub epoch: u64,
    pub tokens_seen: u64,
    pub total_steps: u64,
    /// Model FLOPs utilisation over the window: training FLOPs per token × tokens/s ÷ the
    /// device's peak (the `start` event's `flops` says how each was found); null without a peak.
    #[serde(default)]
    pub mfu: Option<f64>,
    /// Joules per token over the window from the hardware's energy counter (RAPL on the CPU,
    /// NVML on a GPU); null where none is readable, never 0.
    #[serde(default)]
    pub joules_per_token: Option<f64>,
}

/// How a run's `mfu` is computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlopsInfo {
    /// Training FLOPs per token of the architecture (6 per matmul weight, 4 for a frozen one,
    /// plus attention's 12·layers·d·context).
    pub per_token: f64,
    /// The device's peak FLOP/s used as the denominator.
    pub peak: f64,
    /// Where the peak comes from: `probe` (a short matmul timed at start) or `config`.
    pub peak_source: String,
    /// The energy counter behind `joules_per_token` (`rapl`, `nvml`), absent if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_source: Option<String>,
}

/// Validation metrics at a step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub val_loss: f64,
    pub val_ppl: f64,
    pub val_token_acc: f64,
    pub val_tokens: u64,
}

/// A checkpoint written, and what retention deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSaved {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub metric: Option<f64>,
    pub monitor: String,
    pub deleted_steps: Vec<u64>,
    pub save_time_ms: f64,
}

/// Why a step's update was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    NonFiniteLoss,
    NonFiniteGrad,
}

/// A skipped update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// The loss; `"NaN"`, `"inf"` or `"-inf"` when not finite (JSON has no such numbers).
    #[serde(with = "lossy_f64")]
    pub train_loss: f64,
    #[serde(with = "lossy_f64")]
    pub grad_norm: f64,
    pub consecutive: u64,
    pub action: String,
}

/// What a warning is about, for consumers that route or count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// The data changed since the checkpoint being resumed.
    DataChanged,
    /// The total number of steps changed since the checkpoint (the LR schedule differs).
    ScheduleChanged,
    /// A newer checkpoint failed verification and was skipped.
    SkippedCheckpoint,
    /// An optional sink failed and was dropped.
    SinkDropped,
    /// The NDJSON record could not be written.
    MetricsWrite,
    /// The system-metrics sampler could not run or reported a problem.
    SystemMetrics,
    /// The weights are not finite, so no checkpoint was written.
    NonFiniteWeights,
    #[serde(other)]
    Other,
}

/// A warning: the run goes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    pub kind: WarningKind,
    pub message: String,
}

/// How a process segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Completed,
    EarlyStopped,
    Interrupted,
    AnomalyStopped,
    /// An error ended it (`error` says which).
    #[serde(alias = "error")]
    Failed,
}

impl RunStatus {
    /// The name used in `metrics.ndjson` and `codex status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Completed => "completed",
            RunStatus::EarlyStopped => "early_stopped",
            RunStatus::Interrupted => "interrupted",
            RunStatus::AnomalyStopped => "anomaly_stopped",
            RunStatus::Failed => "failed",
        }
    }
}

/// What a segment did: the `end` event, and the command's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    /// Not serialized: the event header carries it (one key per line).
    #[serde(skip_serializing, default)]
    pub run_id: String,
    pub status: RunStatus,
    /// Optimizer steps done (including before a resume).
    pub steps: u64,
    pub total_steps: u64,
    /// Tokens trained on in this segment.
    pub tokens: u64,
    /// Training tokens per second of step time in this segment (eval and checkpoints excluded).
    pub tokens_per_s: f64,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    /// The step at which `val_loss`, `val_ppl` and `val_token_acc` were measured.
    #[serde(default)]
    pub val_step: Option<u64>,
    pub val_ppl: Option<f64>,
    pub val_token_acc: Option<f64>,
    /// The run's first validation loss (across resumes), to show the loss fell.
    pub first_val_loss: Option<f64>,
    pub resumed_from: Option<PathBuf>,
    /// The newest checkpoint of the run; never one with non-finite weights.
    pub last_checkpoint: Option<PathBuf>,
    #[serde(default)]
    pub last_checkpoint_step: Option<u64>,
    pub elapsed_s: f64,
    pub anomalies: u64,
    /// The last step of this segment whose update was applied (anomalies skip theirs).
    #[serde(default)]
    pub last_update_step: Option<u64>,
    /// Peak resident memory of this process (Linux `VmHWM`).
    pub peak_rss_bytes: Option<u64>,
    /// The error that ended a failed segment, its causes joined by `: `.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The first error writing `metrics.ndjson`, when lines may be missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_write_error: Option<String>,
}

/// Per-step progress for live displays; not part of the record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub train_loss: f64,
    pub tokens_per_s: f64,
}

/// An error a sink reports.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// A consumer of events.
pub trait EventSink {
    /// A short name for messages ("metrics.ndjson", "stdout", "tensorboard").
    fn name(&self) -> &str;
    /// Consumes one event.
    fn emit(&mut self, event: &Event) -> Result<(), SinkError>;
    /// A step finished (live displays only; called every step).
    fn progress(&mut self, _progress: &Progress) {}
    /// Makes what was emitted durable (at checkpoints and at the end).
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// The segment is over (clear a progress bar, close a connection).
    fn finish(&mut self) {}
}

/// `metrics.ndjson`: every event, one line each, flushed per line.
pub struct NdjsonSink {
    writer: crate::ndjson::NdjsonWriter,
}

impl NdjsonSink {
    pub fn new(writer: crate::ndjson::NdjsonWriter) -> Self {
        Self { writer }
    }
}

impl EventSink for NdjsonSink {
    fn name(&self) -> &str {
        "metrics.ndjson"
    }
    fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
        Ok(self.writer.write(event)?)
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(self.writer.sync()?)
    }
}

/// The fan-out the trainer emits into: the required record first, then optional sinks.
pub struct Sinks<'a> {
    run_id: String,
    rank: Option<u32>,
    record: Option<Box<dyn EventSink + 'a>>,
    record_error: Option<String>,
    optional: Vec<Box<dyn EventSink + 'a>>,
}

impl<'a> Sinks<'a> {
    /// `record` is the required sink (`metrics.ndjson`); `None` only in tests and tools that
    /// replay a record.
    pub fn new(run_id: impl Into<String>, record: Option<Box<dyn EventSink + 'a>>) -> Self {
        Self {
            run_id: run_id.into(),
            rank: None,
            record,
            record_error: None,
            optional: Vec::new(),
        }
    }

    /// Registers an optional sink.
    pub fn add(&mut self, sink: Box<dyn EventSink + 'a>) {
        self.optional.push(sink);
    }

    /// Sets the rank written in every header (data-parallel runs).
    pub fn set_rank(&mut self, rank: Option<u32>) {
        self.rank = rank;
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The first error writing the required record, if any.
    pub fn record_error(&self) -> Option<&str> {
        self.record_error.as_deref()
    }

    /// Builds the event with its header and hands it to every sink.
    pub fn emit(&mut self, step: u64, kind: EventKind) {
        let event = Event {
            header: Header {
                schema_version: crate::SCHEMA_VERSION,
                run_id: self.run_id.clone(),
                ts: crate::time::now_rfc3339(),
                step,
                rank: self.rank,
            },
            kind,
        };
        self.dispatch(&event);
    }

    /// Hands a complete event to every sink (replays keep their original headers).
    pub fn dispatch(&mut self, event: &Event) {
        let mut warnings = Vec::new();
        if let Some(record) = &mut self.record
            && let Err(e) = record.emit(event)
            && self.record_error.is_none()
        {
            // Keep training: the error goes into the end event and, once, to the other sinks.
            let message = format!("cannot write {}: {e}", record.name());
            self.record_error = Some(e.to_string());
            warnings.push(Warning {
                kind: WarningKind::MetricsWrite,
                message,
            });
        }
        let mut i = 0;
        while i < self.optional.len() {
            match self.optional[i].emit(event) {
                Ok(()) => i += 1,
                Err(e) => {
                    let mut sink = self.optional.remove(i);
                    warnings.push(Warning {
                        kind: WarningKind::SinkDropped,
                        message: format!("{} failed and is off for this run: {e}", sink.name()),
                    });
                    sink.finish();
                }
            }
        }
        for w in warnings {
            self.emit(event.header.step, EventKind::Warning(w));
        }
    }

    /// Per-step progress to the live displays.
    pub fn progress(&mut self, progress: &Progress) {
        for s in &mut self.optional {
            s.progress(progress);
        }
    }

    /// Flushes every sink; a failing optional sink is dropped as in [`Sinks::dispatch`].
    pub fn flush(&mut self, step: u64) {
        if let Some(record) = &mut self.record
            && let Err(e) = record.flush()
            && self.record_error.is_none()
        {
            self.record_error = Some(e.to_string());
        }
        let mut failed = Vec::new();
        self.optional.retain_mut(|s| match s.flush() {
            Ok(()) => true,
            Err(e) => {
                failed.push(format!("{} failed and is off for this run: {e}", s.name()));
                s.finish();
                false
            }
        });
        for message in failed {
            self.emit(
                step,
                EventKind::Warning(Warning {
                    kind: WarningKind::SinkDropped,
                    message,
                }),
            );
        }
    }

    /// The segment is over.
    pub fn finish(&mut self) {
        for s in &mut self.optional {
            s.finish();
        }
    }
}

/// Non-finite floats as strings, since JSON has no NaN or infinity.
mod lossy_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_str(&x.to_string())
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(f64),
        Str(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(x) => Ok(x),
            NumOrStr::Str(s) => s
                .parse::<f64>()
                .map_err(|_| serde::de::Error::custom(format!("not a number: `{s}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[derive(Default, Clone)]
    struct Collect(Rc<RefCell<Vec<Event>>>);
    impl EventSink for Collect {
        fn name(&self) -> &str {
            "collect"
        }
        fn emit(&mut self, e: &Event) -> Result<(), SinkError> {
            self.0.borrow_mut().push(e.clone());
            Ok(())
        }
    }

    struct Failing(u32);
    impl EventSink for Failing {
        fn name(&self) -> &str {
            "failing"
        }
        fn emit(&mut self, _: &Event) -> Result<(), SinkError> {
            self.0 += 1;
            Err("connection refused".into())
        }
    }

    fn eval() -> EventKind {
        EventKind::Eval(EvalMetrics {
            val_loss: 2.5,
            val_ppl: 12.18,
            val_token_acc: 0.25,
            val_tokens: 64,
        })
    }

    #[test]
    fn events_round_trip_with_a_flat_tagged_layout() {
        let record = Collect::default();
        let mut sinks = Sinks::new("run-1", Some(Box::new(record.clone())));
        sinks.emit(7, eval());
        sinks.emit(
            8,
            EventKind::Anomaly(Anomaly {
                kind: AnomalyKind::NonFiniteLoss,
                train_loss: f64::NAN,
                grad_norm: f64::INFINITY,
                consecutive: 1,
                action: "skipped_update".into(),
            }),
        );
        let events = record.0.borrow().clone();
        let line = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(line["event"], "eval");
        assert_eq!(line["step"], 7);
        assert_eq!(line["run_id"], "run-1");
        assert_eq!(line["val_loss"], 2.5);
        assert!(line.get("rank").is_none());
        let back: Event = serde_json::from_value(line).unwrap();
        assert_eq!(back, events[0]);
        let anomaly = serde_json::to_value(&events[1]).unwrap();
        assert_eq!(anomaly["train_loss"], "NaN");
        assert_eq!(anomaly["grad_norm"], "inf");
        let back: Event = serde_json::from_value(anomaly).unwrap();
        match back.kind {
            EventKind::Anomaly(a) => assert!(a.train_loss.is_nan() && a.grad_norm.is_infinite()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failing_optional_sink_warns_once_and_is_dropped() {
        let record = Collect::default();
        let seen = Collect::default();
        let mut sinks = Sinks::new("r", Some(Box::new(record.clone())));
        sinks.add(Box::new(Failing(0)));
        sinks.add(Box::new(seen.clone()));
        for step in 0..3 {
            sinks.emit(step, eval());
        }
        let names: Vec<_> = record.0.borrow().iter().map(|e| e.kind.name()).collect();
        assert_eq!(names, ["eval", "warning", "eval", "eval"]);
        match &record.0.borrow()[1].kind {
            EventKind::Warning(w) => {
                assert_eq!(w.kind, WarningKind::SinkDropped);
                assert!(w.message.contains("failing") && w.message.contains("refused"));
            }
            other => panic!("{other:?}"),
        }
        // The healthy optional sink saw everything the record saw.
        assert_eq!(seen.0.borrow().len(), 4);
    }

    #[test]
    fn every_key_appears_once_per_line() {
        let record = Collect::default();
        let mut sinks = Sinks::new("run-1", Some(Box::new(record.clone())));
        let summary = RunSummary {
            run_dir: "runs/x".into(),
            run_id: "run-1".into(),
            status: RunStatus::Completed,
            steps: 3,
            total_steps: 3,
            tokens: 1,
            tokens_per_s: 1.0,
            train_loss: None,
            val_loss: None,
            val_step: None,
            val_ppl: None,
            val_token_acc: None,
            first_val_loss: None,
            resumed_from: None,
            last_checkpoint: None,
            last_checkpoint_step: None,
            elapsed_s: 0.0,
            anomalies: 0,
            last_update_step: None,
            peak_rss_bytes: None,
            error: None,
            metrics_write_error: None,
        };
        sinks.emit(3, EventKind::End(summary));
        let line = serde_json::to_string(&record.0.borrow()[0]).unwrap();
        for key in ["\"run_id\"", "\"step\"", "\"event\""] {
            assert_eq!(line.matches(key).count(), 1, "{key} in {line}");
        }
    }

    #[test]
    fn old_end_status_error_reads_as_failed() {
        let s: RunStatus = serde_json::from_str("\"error\"").unwrap();
        assert_eq!(s, RunStatus::Failed);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"failed\"");
    }
}
