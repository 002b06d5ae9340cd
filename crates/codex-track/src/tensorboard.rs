//! [`TensorBoardSink`]: the run record as a TensorBoard event file.

use crate::proto::{self, HParamsData, ProtoKind, ProtoValue, ValueKind, What};
use crate::record::write_record;
use codex_core::event::{Event, EventKind, EventSink, RunStatus, SinkError};
use prost::Message as _;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// What every event file codex writes ends with, so that `codex sync` knows which files in a
/// directory are its own to replace.
pub const FILE_SUFFIX: &str = ".codex";

/// The scalar tags of a step event, in the order of [`step_scalars`].
pub const STEP_TAGS: &[&str] = &[
    "train/loss",
    "train/loss_mean",
    "train/lr",
    "train/grad_norm",
    "perf/tokens_per_s",
    "perf/step_time_ms",
    "progress/epoch",
    "progress/tokens_seen",
];

/// The scalar tags of an eval event.
pub const EVAL_TAGS: &[&str] = &["eval/loss", "eval/ppl", "eval/token_acc", "eval/tokens"];

/// Writes `events.out.tfevents.<secs>.<host>.<pid>.codex`: a file-version record, then per
/// step and eval event one record holding its numeric fields as scalars (`total_steps`, a
/// constant, is left out), the config as text and the hyperparameters for the HParams plugin
/// at each start, the session status at each end. Records are flushed to the OS one by one, so
/// a crash loses at most the last. The file is created on the first event: a run the trainer
/// refuses leaves nothing behind.
pub struct TensorBoardSink {
    dir: PathBuf,
    file_name: Option<String>,
    run_dir: Option<PathBuf>,
    out: Option<BufWriter<File>>,
    path: Option<PathBuf>,
}

impl TensorBoardSink {
    /// A sink writing a new event file in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            file_name: None,
            run_dir: None,
            out: None,
            path: None,
        }
    }

    /// A sink writing exactly `path` (created or truncated), for `codex sync`'s temp file.
    pub fn to_file(path: &Path) -> Self {
        let mut s = Self::new(path.parent().unwrap_or(Path::new(".")));
        s.file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        s
    }

    /// The run directory the `start` event's config file is relative to; without it no config
    /// text and no hyperparameters are written.
    pub fn with_run_dir(mut self, run_dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(run_dir.into());
        self
    }

    /// The event file, once created.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A fresh event-file name in TensorBoard's convention (its reader sorts by name, which is
    /// by time).
    pub fn default_file_name() -> String {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!(
            "events.out.tfevents.{secs:010}.{}.{}{FILE_SUFFIX}",
            hostname(),
            std::process::id()
        )
    }

    fn out(&mut self) -> Result<&mut BufWriter<File>, SinkError> {
        if self.out.is_none() {
            codex_core::fsutil::create_dir_all(&self.dir)?;
            let name = self
                .file_name
                .clone()
                .unwrap_or_else(Self::default_file_name);
            let path = self.dir.join(name);
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let mut out = BufWriter::new(file);
            let version = proto::Event {
                wall_time: now_secs(),
                step: 0,
                what: Some(What::FileVersion("brain.Event:2".into())),
            };
            write_record(&mut out, &version.encode_to_vec())?;
            self.path = Some(path);
            self.out = Some(out);
        }
        Ok(self.out.as_mut().expect("opened above"))
    }

    fn write(
        &mut self,
        wall_time: f64,
        step: u64,
        values: Vec<proto::Value>,
    ) -> Result<(), SinkError> {
        if values.is_empty() {
            return Ok(());
        }
        let ev = proto::Event {
            wall_time,
            step: step as i64,
            what: Some(What::Summary(proto::Summary { value: values })),
        };
        let out = self.out()?;
        write_record(out, &ev.encode_to_vec())?;
        out.flush()?;
        Ok(())
    }

    /// One `system_metrics.ndjson` sample as scalars: top-level numbers as `system/<field>`,
    /// per-core arrays as `system/<field>/<i>`, GPU fields as `gpu<index>/<field>` (without the
    /// `gpu_` prefix); `null`s are skipped, never written as 0. Returns the scalars written.
    pub fn system_sample(&mut self, sample: &serde_json::Value) -> Result<usize, SinkError> {
        let step = sample
            .get("step")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let wall = sample
            .get("ts")
            .and_then(serde_json::Value::as_str)
            .and_then(parse_ts)
            .unwrap_or_else(now_secs);
        let values = system_scalars(sample);
        let n = values.len();
        self.write(wall, step, values)?;
        Ok(n)
    }
}

impl EventSink for TensorBoardSink {
    fn name(&self) -> &str {
        "tensorboard"
    }

    fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
        let wall = parse_ts(&event.header.ts).unwrap_or_else(now_secs);
        let step = event.header.step;
        let values = match &event.kind {
            EventKind::Step(m) => step_scalars(m)
                .into_iter()
                .map(|(t, v)| scalar(t, v))
                .collect(),
            EventKind::Eval(e) => [e.val_loss, e.val_ppl, e.val_token_acc, e.val_tokens as f64]
                .into_iter()
                .zip(EVAL_TAGS)
                .map(|(v, t)| scalar(t, v))
                .collect(),
            EventKind::Start(s) => {
                let config = self
                    .run_dir
                    .as_ref()
                    .and_then(|d| std::fs::read_to_string(d.join(&s.invocation.config_file)).ok());
                match config {
                    Some(text) => vec![
                        config_text(&text),
                        hparams_start(&text, &event.header.run_id, wall),
                    ],
                    // Without the config there is nothing to show; the scalars still come.
                    None => {
                        self.out()?;
                        Vec::new()
                    }
                }
            }
            EventKind::End(r) => vec![hparams_end(r.status, wall)],
            _ => Vec::new(),
        };
        self.write(wall, step, values)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(out) = &mut self.out {
            out.flush()?;
            out.get_ref().sync_data()?;
        }
        Ok(())
    }

    fn finish(&mut self) {
        let _ = self.flush();
    }
}

/// A scalar as read back: (tag, step, value).
pub type ScalarPoint = (String, i64, f32);

/// Every scalar of an event file as (tag, step, value), up to the first torn or corrupt record;
/// and whether the file ended cleanly. For tests and checks: TensorBoard is the real reader.
pub fn read_scalars(path: &Path) -> std::io::Result<(Vec<ScalarPoint>, bool)> {
    let (records, clean) = crate::record::read_records(File::open(path)?)?;
    let mut out = Vec::new();
    for r in records {
        let ev = proto::Event::decode(&r[..]).map_err(std::io::Error::other)?;
        if let Some(What::Summary(s)) = ev.what {
            for v in s.value {
                if let Some(ValueKind::SimpleValue(x)) = v.value {
                    out.push((v.tag, ev.step, x));
                }
            }
        }
    }
    Ok((out, clean))
}

/// The tags of a step event's optional values, present where the record has a number
/// ([`step_scalars`]).
pub const STEP_OPTIONAL_TAGS: &[&str] = &["perf/mfu", "perf/joules_per_token"];

/// A step event's tagged values: [`STEP_TAGS`] in order, then those of
/// [`STEP_OPTIONAL_TAGS`] that are not null.
pub fn step_scalars(m: &codex_core::event::StepMetrics) -> Vec<(&'static str, f64)> {
    let fixed = [
        m.train_loss,
        m.train_loss_mean,
        m.lr,
        m.grad_norm,
        m.tokens_per_s,
        m.step_time_ms,
        m.epoch as f64,
        m.tokens_seen as f64,
    ];
    let optional = STEP_OPTIONAL_TAGS
        .iter()
        .zip([m.mfu, m.joules_per_token])
        .filter_map(|(t, v)| v.map(|v| (*t, v)));
    STEP_TAGS
        .iter()
        .copied()
        .zip(fixed)
        .chain(optional)
        .collect()
}

fn scalar(tag: &str, v: f64) -> proto::Value {
    proto::Value {
        tag: tag.into(),
        metadata: None,
        value: Some(ValueKind::SimpleValue(v as f32)),
    }
}

fn system_scalars(sample: &serde_json::Value) -> Vec<proto::Value> {
    system_fields(sample)
        .into_iter()
        .map(|(tag, x)| scalar(&tag, x))
        .collect()
}

/// A `system_metrics.ndjson` sample's measurements as (tag, value): top-level numbers as
/// `system/<field>`, per-core arrays as `system/<field>/<i>`, GPU fields as
/// `gpu<index>/<field>` (without the `gpu_` prefix); `null`s are skipped, never made 0.
pub fn system_fields(sample: &serde_json::Value) -> Vec<(String, f64)> {
    // Identity and bookkeeping fields, not measurements.
    const SKIP: &[&str] = &["schema_version", "mono_s", "step", "index", "window"];
    let mut out = Vec::new();
    let Some(obj) = sample.as_object() else {
        return out;
    };
    for (k, v) in obj {
        if SKIP.contains(&k.as_str()) {
            continue;
        }
        match v {
            serde_json::Value::Number(n) => {
                out.extend(n.as_f64().map(|x| (format!("system/{k}"), x)))
            }
            serde_json::Value::Array(items) if k == "gpus" => {
                for g in items.iter().filter_map(serde_json::Value::as_object) {
                    let idx = g
                        .get("index")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0);
                    for (gk, gv) in g {
                        if SKIP.contains(&gk.as_str()) {
                            continue;
                        }
                        if let Some(x) = gv.as_f64() {
                            let field = gk.strip_prefix("gpu_").unwrap_or(gk);
                            out.push((format!("gpu{idx}/{field}"), x));
                        }
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    if let Some(x) = x.as_f64() {
                        out.push((format!("system/{k}/{i}"), x));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The config as a text summary: a Markdown code block (4-space indent) so TOML shows as is.
fn config_text(toml_text: &str) -> proto::Value {
    let md: String = toml_text.lines().map(|l| format!("    {l}\n")).collect();
    proto::Value {
        tag: "config".into(),
        metadata: Some(proto::SummaryMetadata {
            plugin_data: Some(proto::PluginData {
                plugin_name: "text".into(),
                content: Vec::new(),
            }),
            data_class: proto::DATA_CLASS_TENSOR,
        }),
        value: Some(ValueKind::Tensor(proto::TensorProto {
            dtype: proto::DT_STRING,
            tensor_shape: Some(proto::TensorShapeProto {}),
            float_val: Vec::new(),
            string_val: vec![md.into_bytes()],
        })),
    }
}

fn hparams_value(tag: &str, data: HParamsData) -> proto::Value {
    let content = proto::HParamsPluginData {
        version: 0,
        data: Some(data),
    }
    .encode_to_vec();
    proto::Value {
        tag: tag.into(),
        metadata: Some(proto::SummaryMetadata {
            plugin_data: Some(proto::PluginData {
                plugin_name: "hparams".into(),
                content,
            }),
            data_class: 0,
        }),
        // The plugin reads the metadata; the tensor is the null scalar its own writer uses.
        value: Some(ValueKind::Tensor(proto::TensorProto {
            dtype: proto::DT_FLOAT,
            tensor_shape: Some(proto::TensorShapeProto {}),
            float_val: vec![0.0],
            string_val: Vec::new(),
        })),
    }
}

/// `_hparams_/session_start_info` with the flattened config (`training.steps`, …).
fn hparams_start(toml_text: &str, run_id: &str, wall: f64) -> proto::Value {
    let mut hparams = BTreeMap::new();
    if let Ok(table) = toml_text.parse::<toml::Table>() {
        for (key, v) in codex_core::config::leaves(&table, false) {
            hparams.insert(key, hparam(v));
        }
    }
    hparams_value(
        "_hparams_/session_start_info",
        HParamsData::SessionStartInfo(proto::SessionStartInfo {
            hparams,
            group_name: run_id.into(),
            start_time_secs: wall,
        }),
    )
}

fn hparams_end(status: RunStatus, wall: f64) -> proto::Value {
    let status = match status {
        RunStatus::Completed | RunStatus::EarlyStopped => proto::STATUS_SUCCESS,
        RunStatus::Interrupted => proto::STATUS_RUNNING,
        RunStatus::AnomalyStopped | RunStatus::Failed => proto::STATUS_FAILURE,
    };
    hparams_value(
        "_hparams_/session_end_info",
        HParamsData::SessionEndInfo(proto::SessionEndInfo {
            status,
            end_time_secs: wall,
        }),
    )
}

/// A config leaf as an hparam value; arrays become their TOML text (HParams has no lists).
fn hparam(v: &toml::Value) -> ProtoValue {
    let kind = match v {
        toml::Value::String(s) => ProtoKind::Str(s.clone()),
        toml::Value::Integer(i) => ProtoKind::Number(*i as f64),
        toml::Value::Float(f) => ProtoKind::Number(*f),
        toml::Value::Boolean(b) => ProtoKind::Bool(*b),
        other => ProtoKind::Str(other.to_string()),
    };
    ProtoValue { kind: Some(kind) }
}

/// Seconds since the epoch of an RFC 3339 timestamp.
pub(crate) fn parse_ts(ts: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
    Some(t.timestamp_micros() as f64 / 1e6)
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let h: String = h
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if h.is_empty() { "localhost".into() } else { h }
}
