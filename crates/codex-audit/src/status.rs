//! `codex status`: the seed audit, measured. Capability rows come from live probes, the
//! placeholder scan and run summaries from the files themselves.

use crate::repomap;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Degraded,
    Missing,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Degraded => "degraded",
            Level::Missing => "missing",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Capability {
    pub capability: String,
    pub status: Level,
    pub evidence: String,
}

impl Capability {
    pub fn new(capability: &str, status: Level, evidence: impl Into<String>) -> Self {
        Self {
            capability: capability.into(),
            status,
            evidence: evidence.into(),
        }
    }
}

/// The capability rows, in the seed audit's order.
pub const CAPABILITIES: &[&str] = &[
    "tokenization",
    "modeling/LoRA",
    "training",
    "configuration",
    "evaluation",
    "monitoring",
    "checkpointing",
    "data",
    "safety",
    "CI",
    "deployment",
    "documentation",
    "tracking",
    "extensibility",
];

/// What makes PATH a repository: version control (`.git`, a directory, or a file in a git
/// worktree) or a Rust or Python project manifest at its root. Elsewhere (an experiment
/// directory) the repository rows do not apply.
pub const REPOSITORY_MARKERS: &[&str] = &[".git", "Cargo.toml", "pyproject.toml"];

/// Capability rows about the repository's files, checked only in a repository.
pub const REPOSITORY_CAPABILITIES: &[&str] = &["CI", "deployment", "documentation"];

/// The first of [`REPOSITORY_MARKERS`] present at `root`.
pub fn repository_marker(root: &Path) -> Option<&'static str> {
    REPOSITORY_MARKERS
        .iter()
        .copied()
        .find(|m| root.join(m).exists())
}

#[derive(Debug, Clone, Serialize)]
pub struct Placeholder {
    pub path: String,
    pub line: u32,
    pub pattern: String,
    pub snippet: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct MetricSummary {
    pub samples: u64,
    pub mean: Option<f64>,
    pub max: Option<f64>,
}

impl MetricSummary {
    fn push(&mut self, v: f64) {
        let n = self.samples as f64;
        // Weighted so no intermediate exceeds the largest sample: `mean * n + v` overflows
        // to infinity on samples near f64::MAX, which a hostile file can hold.
        let m = self.mean.unwrap_or(0.0);
        self.mean = Some(m * (n / (n + 1.0)) + v / (n + 1.0));
        self.max = Some(self.max.map_or(v, |m| m.max(v)));
        self.samples += 1;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRow {
    pub step: u64,
    pub metric: Option<f64>,
    pub kept_because: Vec<String>,
    /// `valid`, `unverified` (size check only; `--verify` rehashes) or `invalid`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the run record says about a run.
///
/// A finished trainer process ends its segment of `metrics.ndjson` with an `end` event whose
/// `status` is the state; a resumed run appends further segments, so the last `end` decides,
/// unless events follow it (a later process started and has not ended). A run without that
/// final `end` is `running` while a live process holds its lock, else `crashed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Completed,
    EarlyStopped,
    Interrupted,
    AnomalyStopped,
    Failed,
    Crashed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::EarlyStopped => "early-stopped",
            RunState::Interrupted => "interrupted",
            RunState::AnomalyStopped => "anomaly-stopped",
            RunState::Failed => "failed",
            RunState::Crashed => "crashed",
        }
    }

    /// The state an `end` event's `status` names (`snake_case` as the trainer writes it;
    /// `error` is the pre-contract spelling of `failed`); `None` for anything else.
    pub fn from_end_status(status: &str) -> Option<RunState> {
        Some(match status.replace('-', "_").as_str() {
            "completed" => RunState::Completed,
            "early_stopped" => RunState::EarlyStopped,
            "interrupted" => RunState::Interrupted,
            "anomaly_stopped" => RunState::AnomalyStopped,
            "failed" | "error" => RunState::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub name: String,
    pub path: String,
    /// The step of the latest event that names one (a resumed run may go back to its
    /// checkpoint's step, so this is not the maximum).
    pub last_step: Option<u64>,
    /// The run's planned steps, from the latest event that carries `total_steps`.
    pub total_steps: Option<u64>,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    /// The step at which `val_loss` was measured.
    pub val_loss_step: Option<u64>,
    /// The lowest finite validation loss of the run, and its step.
    pub best_val_loss: Option<f64>,
    pub best_val_loss_step: Option<u64>,
    /// The training loss as a sparkline (`▁▂▃▄▅▆▇█`), oldest left; empty without step events.
    pub loss_sparkline: String,
    /// Whether the last segment of `metrics.ndjson` ends with an `end` event.
    pub ended: bool,
    pub state: RunState,
    /// The `error` of a failed run's `end` event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Lines of `metrics.ndjson` skipped as malformed (not JSON, not an object, too long).
    pub malformed_lines: u64,
    /// The same for `system_metrics.ndjson`.
    pub malformed_system_lines: u64,
    pub lock_holder: Option<codex_checkpoint::LockHolder>,
    /// The first [`MAX_ANOMALIES`] anomaly events, each clipped to [`MAX_MESSAGE_CHARS`].
    pub anomalies: Vec<String>,
    /// All anomaly events, including those not kept in `anomalies`.
    pub anomaly_count: u64,
    pub cpu_util_pct: MetricSummary,
    pub gpu_util_pct: MetricSummary,
    pub gpu_power_w: MetricSummary,
    pub checkpoints: Vec<CheckpointRow>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckItem {
    pub item: &'static str,
    pub status: Level,
    pub notes: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub schema_version: u32,
    pub root: String,
    pub runs_dir: String,
    /// Whether `root` is a repository (see [`REPOSITORY_MARKERS`]); outside one the repository
    /// rows, the lockfile check and the placeholder scan are skipped.
    pub repository: bool,
    /// The marker that made it one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository_marker: Option<&'static str>,
    pub capabilities: Vec<Capability>,
    pub placeholders: Vec<Placeholder>,
    pub runs: Vec<RunSummary>,
    pub reproducibility: Vec<CheckItem>,
    /// Whether the exit code is 0: nothing missing, no checkpoint failing verification.
    pub ok: bool,
}

/// What only the binary knows, plus probes that need crates this one must not link (candle).
pub struct StatusInput {
    pub root: PathBuf,
    pub runs: Option<PathBuf>,
    pub verify: bool,
    pub cuda_compiled: bool,
    /// The binary's subcommands, for the documentation probe.
    pub commands: Vec<String>,
    /// Rows the binary probed itself; they replace the same-named rows here.
    pub extra: Vec<Capability>,
}

// Built at run time so this file itself holds none of the markers it scans for; each entry is
// (label, needle), and the label of a marker is the marker itself.
fn patterns() -> Vec<(String, String)> {
    let marker = |m: String| (m.clone(), m);
    let stub = |needle: String| ("stub".to_string(), needle);
    vec![
        (format!("{}!", "todo"), format!("{}!(", "todo")),
        (
            format!("{}!", "unimplemented"),
            format!("{}!(", "unimplemented"),
        ),
        marker(["TO", "DO"].concat()),
        marker(["FIX", "ME"].concat()),
        marker(["NotImplemented", "Error"].concat()),
        stub(["not ", "implemented"].concat()),
        stub(["not available ", "yet"].concat()),
        stub(["pass  # ", "stub"].concat()),
    ]
}

/// A line carrying this marker is not reported (for code that must name a pattern).
pub fn allow_marker() -> String {
    ["codex-audit: allow-", "placeholder"].concat()
}

fn word_at(line: &str, idx: usize, len: usize) -> bool {
    let before = line[..idx].chars().next_back();
    let after = line[idx + len..].chars().next();
    let w = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    !w(before) && !w(after)
}

/// Placeholder scan over source files (not prose, not tests: a test that asserts on a
/// message about a missing feature is not a placeholder). Rust files stop at `#[cfg(test)]`.
pub fn scan_placeholders(root: &Path) -> Vec<Placeholder> {
    let pats = patterns();
    let allow = allow_marker();
    let found = Mutex::new(Vec::new());
    repomap::walker(root).build_parallel().run(|| {
        let (found, pats, allow) = (&found, &pats, &allow);
        Box::new(move |entry| {
            let Ok(entry) = entry else {
                return ignore::WalkState::Continue;
            };
            let path = entry.path();
            let name = entry.file_name().to_string_lossy();
            if entry.file_type().is_some_and(|t| t.is_dir()) {
                let skip = matches!(
                    name.as_ref(),
                    "tests" | "test" | "benches" | "fixtures" | "testdata"
                );
                return if skip {
                    ignore::WalkState::Skip
                } else {
                    ignore::WalkState::Continue
                };
            }
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                return ignore::WalkState::Continue;
            }
            let Some(lang) = crate::lang::detect(path, || None) else {
                return ignore::WalkState::Continue;
            };
            if lang.literate || matches!(lang.name, "JSON" | "ReStructuredText" | "SVG" | "XML") {
                return ignore::WalkState::Continue;
            }
            // Bounded like repo-map's reads; binary files hold no placeholders; a stray
            // non-UTF-8 byte must not hide the markers on the other lines.
            let mut bytes = Vec::new();
            if repomap::read_capped(path, &mut bytes).is_err() || repomap::is_binary(&bytes) {
                return ignore::WalkState::Continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            let rel = path
                .strip_prefix(root)
                .unwrap_or(path)
                .to_string_lossy()
                .replace('\\', "/");
            let mut hits = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if lang.name == "Rust" && line.starts_with("#[cfg(test)]") {
                    break;
                }
                if line.contains(allow.as_str()) {
                    continue;
                }
                for (label, p) in pats.iter() {
                    if let Some(idx) = line.find(p.as_str())
                        && (!p.chars().all(|c| c.is_ascii_uppercase())
                            || word_at(line, idx, p.len()))
                    {
                        let mut snippet: String = line.trim().chars().take(120).collect();
                        if snippet.len() < line.trim().len() {
                            snippet.push('…');
                        }
                        hits.push(Placeholder {
                            path: rel.clone(),
                            line: i as u32 + 1,
                            pattern: label.clone(),
                            snippet,
                        });
                        break;
                    }
                }
            }
            if !hits.is_empty()
                && let Ok(mut f) = found.lock()
            {
                f.extend(hits);
            }
            ignore::WalkState::Continue
        })
    });
    let mut v = found.into_inner().unwrap_or_default();
    v.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    v
}

fn f64_field(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64).filter(|x| x.is_finite())
}

fn str_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// A field of an event, or of its `summary` object (the trainer may nest the run summary).
fn field<'a>(ev: &'a Value, k: &str) -> Option<&'a Value> {
    ev.get(k)
        .or_else(|| ev.get("summary").and_then(|s| s.get(k)))
}

/// Anomalies kept per run (the count covers all of them): a hostile or runaway
/// `metrics.ndjson` must not grow the report without bound.
pub const MAX_ANOMALIES: usize = 100;

/// Characters kept of a message taken from a run's files (anomaly, error, end status).
pub const MAX_MESSAGE_CHARS: usize = 300;

fn clip(s: String) -> String {
    match s.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

impl RunSummary {
    /// An empty summary: nothing read yet, `crashed` until an `end` event says otherwise.
    pub fn new(dir: &Path) -> Self {
        Self {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: dir.display().to_string(),
            last_step: None,
            total_steps: None,
            train_loss: None,
            val_loss: None,
            val_loss_step: None,
            best_val_loss: None,
            best_val_loss_step: None,
            loss_sparkline: String::new(),
            ended: false,
            state: RunState::Crashed,
            error: None,
            malformed_lines: 0,
            malformed_system_lines: 0,
            lock_holder: None,
            anomalies: Vec::new(),
            anomaly_count: 0,
            cpu_util_pct: MetricSummary::default(),
            gpu_util_pct: MetricSummary::default(),
            gpu_power_w: MetricSummary::default(),
            checkpoints: Vec::new(),
            problems: Vec::new(),
        }
    }
}

/// Folds a `metrics.ndjson` stream into `s`, line by line; returns the state its last
/// segment's `end` event records (None while no `end` closes the file). Malformed lines are
/// skipped, counted in `malformed_lines` and noted in `problems`; only I/O errors fail.
pub fn read_metrics<R: std::io::BufRead>(
    r: R,
    s: &mut RunSummary,
) -> std::io::Result<Option<RunState>> {
    // The last `end` counts only if nothing follows it: any later event was written by a
    // resumed process that has not ended (yet).
    let mut last_end: Option<Value> = None;
    let mut losses = Trace::default();
    let stats = crate::ndjson::for_each_object(r, |ev| {
        let kind = ev.get("event").and_then(Value::as_str);
        let step = ev.get("step").and_then(Value::as_u64);
        // Pre-contract failure ends carry step 0; they must not hide the progress made.
        if let Some(step) = step
            && !(kind == Some("end") && step == 0 && s.last_step.is_some())
        {
            s.last_step = Some(step);
        }
        if let Some(t) = field(&ev, "total_steps").and_then(Value::as_u64) {
            s.total_steps = Some(t);
        }
        match kind {
            Some("step") => {
                s.train_loss = f64_field(&ev, "train_loss").or(s.train_loss);
                if let Some(v) = f64_field(&ev, "train_loss") {
                    losses.push(v);
                }
            }
            Some("anomaly") => {
                s.anomaly_count += 1;
                if s.anomalies.len() < MAX_ANOMALIES {
                    let what = ev
                        .get("message")
                        .or_else(|| ev.get("kind"))
                        .map(str_of)
                        .unwrap_or_else(|| ev.to_string());
                    let step = step.map_or(String::new(), |st| format!("step {st}: "));
                    s.anomalies.push(clip(format!("{step}{what}")));
                }
            }
            _ => {}
        }
        // Eval events carry val_loss; a step event may too.
        if matches!(kind, Some("eval" | "step"))
            && let Some(v) = f64_field(&ev, "val_loss")
        {
            s.val_loss = Some(v);
            s.val_loss_step = step;
            if v.is_finite() && s.best_val_loss.is_none_or(|b| v < b) {
                s.best_val_loss = Some(v);
                s.best_val_loss_step = step;
            }
        }
        last_end = (kind == Some("end")).then_some(ev);
    })?;
    s.loss_sparkline = sparkline(&losses.values(), SPARKLINE_WIDTH);
    s.malformed_lines = stats.malformed;
    s.problems.extend(stats.note("metrics.ndjson"));
    let Some(end) = last_end else {
        return Ok(None);
    };
    s.ended = true;
    s.error = field(&end, "error").map(str_of).map(clip);
    let status = field(&end, "status").map(str_of).map(clip);
    Ok(Some(match status.as_deref() {
        Some(st) => RunState::from_end_status(st).unwrap_or_else(|| {
            s.problems
                .push(format!("end event has an unknown status `{st}`"));
            RunState::Failed
        }),
        // Hand-written or pre-contract ends without a status.
        None if s.error.is_some() => RunState::Failed,
        None => RunState::Completed,
    }))
}

/// Folds a `system_metrics.ndjson` stream into the run's CPU/GPU summaries, as
/// [`read_metrics`] does (malformed lines counted in `malformed_system_lines`).
pub fn read_system_metrics<R: std::io::BufRead>(r: R, s: &mut RunSummary) -> std::io::Result<()> {
    let stats = crate::ndjson::for_each_object(r, |sample| {
        if let Some(v) = f64_field(&sample, "cpu_util_pct") {
            s.cpu_util_pct.push(v);
        }
        for g in sample
            .get("gpus")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(v) = f64_field(g, "gpu_util_pct") {
                s.gpu_util_pct.push(v);
            }
            if let Some(v) = f64_field(g, "gpu_power_w") {
                s.gpu_power_w.push(v);
            }
        }
    })?;
    s.malformed_system_lines = stats.malformed;
    s.problems.extend(stats.note("system_metrics.ndjson"));
    Ok(())
}

fn open_buffered(path: &Path) -> std::io::Result<std::io::BufReader<std::fs::File>> {
    Ok(std::io::BufReader::with_capacity(
        64 * 1024,
        std::fs::File::open(path)?,
    ))
}

/// One run directory: metrics, system metrics, checkpoints, lock.
pub fn summarize_run(dir: &Path, verify: bool) -> RunSummary {
    let rd = codex_core::rundir::RunDir::new(dir);
    let mut s = RunSummary::new(dir);
    let metrics = rd.metrics();
    let ended_as = match open_buffered(&metrics).and_then(|r| read_metrics(r, &mut s)) {
        Ok(state) => state,
        Err(e) => {
            s.problems
                .push(if e.kind() == std::io::ErrorKind::NotFound {
                    "no metrics.ndjson".into()
                } else {
                    format!("cannot read {}: {e}", metrics.display())
                });
            None
        }
    };
    let system = rd.system_metrics();
    match open_buffered(&system).and_then(|r| read_system_metrics(r, &mut s)) {
        Ok(()) => {}
        // Runs without telemetry have no such file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => s
            .problems
            .push(format!("cannot read {}: {e}", system.display())),
    }
    if rd.checkpoints().is_dir() {
        let listed = if verify {
            codex_checkpoint::list_verified(dir)
        } else {
            codex_checkpoint::list(dir)
        };
        match listed {
            Ok(list) => {
                for c in list {
                    let (status, reason) = match c.status {
                        codex_checkpoint::CheckpointStatus::Valid => ("valid", None),
                        codex_checkpoint::CheckpointStatus::Unverified => ("unverified", None),
                        codex_checkpoint::CheckpointStatus::Invalid(r) => ("invalid", Some(r)),
                    };
                    let kept_because = c
                        .kept_because
                        .iter()
                        .map(|k| {
                            serde_json::to_value(k)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_else(|| format!("{k:?}"))
                        })
                        .collect();
                    s.checkpoints.push(CheckpointRow {
                        step: c.step,
                        metric: c.metric,
                        kept_because,
                        status: status.into(),
                        reason,
                    });
                }
            }
            Err(e) => s.problems.push(format!("checkpoints: {e}")),
        }
    }
    // The lock file's holder is checked by flock and by pid (see codex_checkpoint::lock).
    s.lock_holder = codex_checkpoint::RunLock::holder(dir);
    s.state = if s.lock_holder.as_ref().is_some_and(|h| h.alive) {
        RunState::Running
    } else {
        ended_as.unwrap_or(RunState::Crashed)
    };
    s
}

/// Run directories under `runs_dir`: any subdirectory with metrics, checkpoints or a config.
pub fn find_runs(runs_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(runs_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let rd = codex_core::rundir::RunDir::new(p);
            p.is_dir()
                && (rd.metrics().is_file() || rd.checkpoints().is_dir() || rd.config().is_file())
        })
        .collect();
    out.sort();
    out
}

/// Characters of the run table's loss sparkline.
pub const SPARKLINE_WIDTH: usize = 24;

/// A bounded trace of a series: at most [`Trace::CAP`] values kept, adjacent pairs averaged
/// when full (so a run of any length costs the same memory and keeps its shape).
#[derive(Debug, Default)]
struct Trace {
    values: Vec<f64>,
    /// Samples averaged into each kept value, and the partial one being filled.
    stride: usize,
    acc: (f64, usize),
}

impl Trace {
    const CAP: usize = 1024;

    fn push(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        let stride = self.stride.max(1);
        self.acc = (self.acc.0 + v, self.acc.1 + 1);
        if self.acc.1 == stride {
            self.values.push(self.acc.0 / stride as f64);
            self.acc = (0.0, 0);
        }
        if self.values.len() == Self::CAP {
            self.values = self
                .values
                .chunks(2)
                .map(|c| c.iter().sum::<f64>() / c.len() as f64)
                .collect();
            self.stride = stride * 2;
        }
    }

    fn values(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        if self.acc.1 > 0 {
            v.push(self.acc.0 / self.acc.1 as f64);
        }
        v
    }
}

/// `values` as at most `width` block characters from `▁` (the minimum) to `█` (the maximum),
/// each the mean of its share of the values; non-finite values are left out.
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() || width == 0 {
        return String::new();
    }
    let n = v.len().min(width);
    let buckets: Vec<f64> = (0..n)
        .map(|i| {
            let (a, b) = (
                i * v.len() / n,
                ((i + 1) * v.len() / n).max(i * v.len() / n + 1),
            );
            v[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect();
    let lo = buckets.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = buckets.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    buckets
        .iter()
        .map(|&x| {
            let t = if hi > lo { (x - lo) / (hi - lo) } else { 0.5 };
            BARS[((t * 7.0).round() as usize).min(7)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_snapshots() {
        let falling: Vec<f64> = (0..100)
            .map(|i| 5.0 * (-(i as f64) / 30.0).exp() + 1.0)
            .collect();
        let noisy: Vec<f64> = (0..48)
            .map(|i| 3.0 - i as f64 * 0.04 + if i % 2 == 0 { 0.3 } else { -0.3 })
            .collect();
        let lines = [
            format!("falling  {}", sparkline(&falling, SPARKLINE_WIDTH)),
            format!("noisy    {}", sparkline(&noisy, SPARKLINE_WIDTH)),
            format!("short    {}", sparkline(&[2.0, 1.0, 3.0], SPARKLINE_WIDTH)),
            format!("flat     {}", sparkline(&[1.5; 10], SPARKLINE_WIDTH)),
            format!(
                "with-nan {}",
                sparkline(&[3.0, f64::NAN, 2.0, 1.0], SPARKLINE_WIDTH)
            ),
            format!("empty    [{}]", sparkline(&[], SPARKLINE_WIDTH)),
        ];
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn trace_keeps_the_shape_of_a_long_run_in_bounded_memory() {
        let mut t = Trace::default();
        for i in 0..100_000 {
            t.push(10.0 - i as f64 / 10_000.0);
        }
        let v = t.values();
        assert!(v.len() <= Trace::CAP + 1, "{}", v.len());
        assert!(v.windows(2).all(|w| w[0] > w[1]));
        assert!((v[0] - 10.0).abs() < 0.01 && (v[v.len() - 1] - 0.0).abs() < 0.1);
        assert_eq!(sparkline(&v, 8), "█▇▆▅▄▃▂▁");
    }

    #[test]
    fn metric_mean_does_not_overflow_on_huge_samples() {
        let mut m = MetricSummary::default();
        for v in [f64::MAX, f64::MAX, 1.0, 3.0] {
            m.push(v);
        }
        assert!(m.mean.is_some_and(f64::is_finite), "{m:?}");
        let mut m = MetricSummary::default();
        for v in [1.0, 2.0, 6.0] {
            m.push(v);
        }
        assert_eq!(m.mean, Some(3.0));
        assert_eq!(m.max, Some(6.0));
    }
}
