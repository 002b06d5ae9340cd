//! MLflow: the run as an MLflow run, live ([`MlflowSink`]) or after the fact ([`sync_run`]).
//!
//! Metric keys are the TensorBoard tags (`train/loss`, `eval/loss`, `system/cpu_util_pct`, …),
//! params the flattened config (`optimizer.lr`, `data.inputs.0`, …), tags codex's run id,
//! version and git commit. An MLflow run is found again by its `codex.run_id` tag, so a resumed
//! run continues the same MLflow run and `codex sync` adds only the points not there yet.

pub mod api;

use crate::tensorboard::{EVAL_TAGS, parse_ts, step_scalars, system_fields};
use api::{ApiError, Client, KeyValue, Metric, RunRef, chunks, clip, limits};
use codex_core::event::{Event, EventKind, EventSink, RunStatus, SinkError};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use api::Endpoint;

/// The tag holding codex's run id.
pub const RUN_ID_TAG: &str = "codex.run_id";
/// The experiment when neither the config nor `MLFLOW_EXPERIMENT_NAME` names one.
pub const DEFAULT_EXPERIMENT: &str = "codex";
/// The files of a run uploaded as artifacts, when present.
pub const ARTIFACTS: &[&str] = &["metrics.ndjson", "config.toml", "model_card.md"];

/// The experiment: `configured`, else `MLFLOW_EXPERIMENT_NAME`, else [`DEFAULT_EXPERIMENT`].
pub fn experiment_name(configured: Option<&str>) -> String {
    configured
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .or_else(|| {
            std::env::var("MLFLOW_EXPERIMENT_NAME")
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .unwrap_or_else(|| DEFAULT_EXPERIMENT.into())
}

/// An event's metric points: every numeric field of step and eval events, and the non-finite
/// loss and gradient norm of an anomaly (as `NaN`/`Infinity`, which MLflow stores).
pub fn event_metrics(event: &Event) -> Vec<Metric> {
    let ts = ts_ms(&event.header.ts);
    let step = event.header.step as i64;
    let point = |key: &str, value: f64| Metric {
        key: key.into(),
        value,
        timestamp: ts,
        step,
    };
    match &event.kind {
        EventKind::Step(m) => step_scalars(m)
            .into_iter()
            .map(|(t, v)| point(t, v))
            .collect(),
        EventKind::Eval(e) => EVAL_TAGS
            .iter()
            .zip([e.val_loss, e.val_ppl, e.val_token_acc, e.val_tokens as f64])
            .map(|(t, v)| point(t, v))
            .collect(),
        EventKind::Anomaly(a) => vec![
            point("anomaly/train_loss", a.train_loss),
            point("anomaly/grad_norm", a.grad_norm),
        ],
        _ => Vec::new(),
    }
}

/// A `system_metrics.ndjson` sample's points (the same keys as TensorBoard's scalars).
pub fn system_metrics(sample: &serde_json::Value) -> Vec<Metric> {
    let step = sample
        .get("step")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    let ts = sample
        .get("ts")
        .and_then(serde_json::Value::as_str)
        .map_or(0, ts_ms);
    system_fields(sample)
        .into_iter()
        .map(|(key, value)| Metric {
            key,
            value,
            timestamp: ts,
            step,
        })
        .collect()
}

fn ts_ms(ts: &str) -> i64 {
    parse_ts(ts).map_or_else(now_ms, |s| (s * 1000.0).round() as i64)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The config as params: dotted keys, one param per array element (`data.inputs.0`), so runs
/// compare key by key in MLflow's UI; values cut to MLflow's 6,000 characters.
pub fn config_params(toml_text: &str) -> Result<Vec<KeyValue>, String> {
    let table: toml::Table = toml_text
        .parse()
        .map_err(|e| format!("config is not TOML: {e}"))?;
    Ok(codex_core::config::leaves(&table, true)
        .into_iter()
        .map(|(key, v)| {
            let value = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            KeyValue {
                key,
                value: clip(&value, limits::PARAM_VALUE),
            }
        })
        .collect())
}

/// MLflow's run status for how a segment ended.
pub fn status_name(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Completed | RunStatus::EarlyStopped => "FINISHED",
        RunStatus::Interrupted => "KILLED",
        RunStatus::AnomalyStopped | RunStatus::Failed => "FAILED",
    }
}

/// The run's tags: codex's run id, version, git commit (from `provenance.json`).
fn run_tags(run_dir: &Path, codex_run_id: &str, codex_version: &str) -> Vec<KeyValue> {
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: clip(v, limits::TAG_VALUE),
    };
    let mut tags = vec![
        kv(RUN_ID_TAG, codex_run_id),
        kv("codex.version", codex_version),
        kv("mlflow.source.name", "codex train"),
        kv("mlflow.source.type", "LOCAL"),
    ];
    let sha = std::fs::read(run_dir.join("provenance.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|p| p.get("git_sha")?.as_str().map(str::to_string));
    if let Some(sha) = sha {
        tags.push(kv("codex.git_sha", &sha));
        tags.push(kv("mlflow.source.git.commit", &sha));
    }
    tags
}

/// What is needed to create (or find) the MLflow run.
#[derive(Debug, Clone)]
struct RunSpec {
    codex_run_id: String,
    run_name: String,
    start_ms: i64,
    tags: Vec<KeyValue>,
}

/// The experiment and run, found by the `codex.run_id` tag or created.
fn ensure_run(
    client: &Client,
    experiment: &str,
    spec: &RunSpec,
) -> Result<(RunRef, bool), ApiError> {
    let exp = client.experiment_id(experiment)?;
    if let Some(run) = client.find_run_by_tag(&exp, RUN_ID_TAG, &spec.codex_run_id)? {
        return Ok((run, false));
    }
    let run = client.create_run(&exp, &spec.run_name, spec.start_ms, &spec.tags)?;
    Ok((run, true))
}

/// Uploads the run's [`ARTIFACTS`] that exist; returns the names uploaded, or why none could be.
fn upload_artifacts(client: &Client, run: &RunRef, run_dir: &Path) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    for name in ARTIFACTS {
        let path = run_dir.join(name);
        let Ok(data) = std::fs::read(&path) else {
            continue;
        };
        match client.upload_artifact(&run.artifact_uri, name, &data) {
            Ok(true) => done.push(name.to_string()),
            Ok(false) => {
                return Err(format!(
                    "the server does not proxy this run's artifacts ({}); upload them with MLflow's own client",
                    run.artifact_uri
                ));
            }
            Err(e) => return Err(format!("cannot upload {name}: {e}")),
        }
    }
    Ok(done)
}

/// What a live sink delivered, reported when the segment ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    /// The server.
    pub uri: String,
    /// The MLflow run, once created or found.
    pub run_id: Option<String>,
    pub experiment_id: Option<String>,
    /// Metric points the run produced, and how many the server accepted.
    pub points: u64,
    pub delivered: u64,
    /// Params and tags not delivered.
    pub params_undelivered: u64,
    /// Whether the final status reached the server.
    pub status_sent: bool,
    pub artifacts: Vec<String>,
    /// Why artifacts are missing, when they are.
    pub artifact_error: Option<String>,
    /// The last error seen.
    pub last_error: Option<String>,
}

impl Delivery {
    /// Points the server does not have.
    pub fn undelivered(&self) -> u64 {
        self.points.saturating_sub(self.delivered)
    }

    /// Whether everything reached the server.
    pub fn complete(&self) -> bool {
        self.undelivered() == 0 && self.params_undelivered == 0 && self.status_sent
    }
}

enum Msg {
    Start {
        spec: RunSpec,
        params: Vec<KeyValue>,
    },
    Metrics(Vec<Metric>),
    /// Deliver what is left until `deadline`, set the status the segment ended with, stop.
    Finish {
        deadline: Instant,
        end: Option<(&'static str, i64)>,
    },
}

/// How a live sink behaves; the defaults suit a training run.
#[derive(Debug, Clone, Copy)]
pub struct SinkOptions {
    /// Messages (one per event) the queue holds before new points are dropped.
    pub queue: usize,
    /// Points held for retry while the server is unreachable.
    pub max_pending: usize,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// How long the end of the segment waits for the queue to drain.
    pub drain: Duration,
    /// First and longest wait between retries.
    pub backoff: (Duration, Duration),
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            queue: 4096,
            max_pending: 500_000,
            request_timeout: Duration::from_secs(5),
            drain: Duration::from_secs(10),
            backoff: (Duration::from_millis(200), Duration::from_secs(10)),
        }
    }
}

/// The live MLflow sink: events become metric points on a bounded queue that a thread of its
/// own delivers, retrying with exponential backoff. `emit` never blocks on the network: a full
/// queue drops points (counted). At the end of the segment it waits at most
/// [`SinkOptions::drain`] and hands a [`Delivery`] to the report callback.
pub struct MlflowSink<'a> {
    endpoint: Endpoint,
    experiment: String,
    run_dir: PathBuf,
    opts: SinkOptions,
    report: Option<Box<dyn FnOnce(Delivery) + 'a>>,
    tx: Option<SyncSender<Msg>>,
    done: Option<Receiver<()>>,
    shared: Arc<Mutex<Delivery>>,
    points: u64,
    end: Option<(&'static str, i64)>,
}

impl<'a> MlflowSink<'a> {
    /// A sink for the run in `run_dir`. Nothing is contacted before the first event.
    pub fn new(
        endpoint: Endpoint,
        experiment: impl Into<String>,
        run_dir: impl Into<PathBuf>,
    ) -> Self {
        let uri = endpoint.base.clone();
        Self {
            endpoint,
            experiment: experiment.into(),
            run_dir: run_dir.into(),
            opts: SinkOptions::default(),
            report: None,
            tx: None,
            done: None,
            shared: Arc::new(Mutex::new(Delivery {
                uri,
                ..Delivery::default()
            })),
            points: 0,
            end: None,
        }
    }

    pub fn with_options(mut self, opts: SinkOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Called once, when the segment ends, with what was delivered.
    pub fn on_report(mut self, f: impl FnOnce(Delivery) + 'a) -> Self {
        self.report = Some(Box::new(f));
        self
    }

    /// Queues without blocking. On a full queue (the server slower than training) the
    /// message is dropped: its points count as undelivered and wait for `codex sync`.
    fn send(&mut self, msg: Msg) {
        if self.tx.is_none() {
            self.spawn();
        }
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(msg);
        }
    }

    fn spawn(&mut self) {
        let (tx, rx) = std::sync::mpsc::sync_channel(self.opts.queue);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker = Worker {
            client: Client::new(self.endpoint.clone(), self.opts.request_timeout),
            experiment: self.experiment.clone(),
            run_dir: self.run_dir.clone(),
            opts: self.opts,
            shared: Arc::clone(&self.shared),
            spec: None,
            run: None,
            params: Vec::new(),
            tags: Vec::new(),
            metrics: VecDeque::new(),
            end: None,
            fatal: None,
        };
        let spawned = std::thread::Builder::new()
            .name("codex-mlflow".into())
            .spawn(move || {
                worker.run(rx);
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(_) => {
                self.tx = Some(tx);
                self.done = Some(done_rx);
            }
            Err(e) => self.shared.lock().map_or((), |mut s| {
                s.last_error = Some(format!("cannot start the MLflow thread: {e}"))
            }),
        }
    }
}

impl EventSink for MlflowSink<'_> {
    fn name(&self) -> &str {
        "mlflow"
    }

    fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
        match &event.kind {
            EventKind::Start(s) => {
                let config = std::fs::read_to_string(self.run_dir.join(&s.invocation.config_file))
                    .or_else(|_| std::fs::read_to_string(self.run_dir.join("config.toml")));
                let params = config
                    .ok()
                    .and_then(|t| config_params(&t).ok())
                    .unwrap_or_default();
                let run_name = std::path::absolute(&self.run_dir)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| event.header.run_id.clone());
                let spec = RunSpec {
                    codex_run_id: event.header.run_id.clone(),
                    run_name,
                    start_ms: ts_ms(&event.header.ts),
                    tags: run_tags(
                        &self.run_dir,
                        &event.header.run_id,
                        &s.invocation.codex_version,
                    ),
                };
                self.send(Msg::Start { spec, params });
            }
            // Sent with `Finish`, which waits for room in the queue: never dropped.
            EventKind::End(r) => self.end = Some((status_name(r.status), ts_ms(&event.header.ts))),
            _ => {
                let m = event_metrics(event);
                if !m.is_empty() {
                    self.points += m.len() as u64;
                    self.send(Msg::Metrics(m));
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let Some(tx) = self.tx.take() {
            let deadline = Instant::now() + self.opts.drain;
            let mut msg = Msg::Finish {
                deadline,
                end: self.end.take(),
            };
            // The queue may be full of points: wait for room, but not past the deadline.
            loop {
                match tx.try_send(msg) {
                    Ok(()) => break,
                    Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                        msg = m;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
            drop(tx);
            if let Some(done) = self.done.take() {
                // One request may still be in flight at the deadline.
                let wait = deadline.saturating_duration_since(Instant::now())
                    + self.opts.request_timeout
                    + Duration::from_millis(500);
                let _ = done.recv_timeout(wait);
            }
        }
        if let Some(report) = self.report.take() {
            let mut d = self.shared.lock().map(|d| d.clone()).unwrap_or_default();
            d.points = self.points;
            report(d);
        }
    }
}

impl Drop for MlflowSink<'_> {
    fn drop(&mut self) {
        // A sink dropped without `finish` (a failed run) still ends its thread and reports.
        self.finish();
    }
}

struct Worker {
    client: Client,
    experiment: String,
    run_dir: PathBuf,
    opts: SinkOptions,
    shared: Arc<Mutex<Delivery>>,
    spec: Option<RunSpec>,
    run: Option<RunRef>,
    params: Vec<KeyValue>,
    tags: Vec<KeyValue>,
    metrics: VecDeque<Metric>,
    end: Option<(&'static str, i64)>,
    /// An error no retry can fix (bad credentials, no such experiment permission).
    fatal: Option<String>,
}

impl Worker {
    fn note(&self, f: impl FnOnce(&mut Delivery)) {
        if let Ok(mut d) = self.shared.lock() {
            f(&mut d);
        }
    }

    fn take(&mut self, msg: Msg, deadline: &mut Option<Instant>) {
        match msg {
            Msg::Start { spec, params } => {
                if self.run.is_none() {
                    self.tags = spec.tags.clone();
                }
                self.spec = Some(spec);
                self.params = params;
            }
            Msg::Metrics(m) => {
                if self.fatal.is_none() && self.metrics.len() + m.len() <= self.opts.max_pending {
                    self.metrics.extend(m);
                }
            }
            Msg::Finish { deadline: d, end } => {
                self.end = end;
                *deadline = Some(d);
            }
        }
    }

    fn has_work(&self) -> bool {
        if self.fatal.is_some() || self.spec.is_none() {
            return false;
        }
        self.run.is_none()
            || !self.params.is_empty()
            || !self.tags.is_empty()
            || !self.metrics.is_empty()
            || self.end.is_some()
    }

    /// One request's worth of delivery. Errors returned are worth retrying; others are noted
    /// and what caused them is dropped.
    fn step(&mut self) -> Result<(), ApiError> {
        let Some(spec) = self.spec.clone() else {
            return Ok(());
        };
        let run = match &self.run {
            Some(r) => r.clone(),
            None => match ensure_run(&self.client, &self.experiment, &spec) {
                Ok((run, created)) => {
                    if !created {
                        // A resumed run: running again, its tags refreshed below.
                        self.client.update_run(&run.run_id, "RUNNING", None)?;
                    }
                    self.note(|d| d.run_id = Some(run.run_id.clone()));
                    self.run = Some(run.clone());
                    run
                }
                Err(e) if !e.retryable() => {
                    self.fatal = Some(e.to_string());
                    return Ok(());
                }
                Err(e) => return Err(e),
            },
        };
        if !self.params.is_empty() || !self.tags.is_empty() {
            // Params and tags in their own requests: a rejected param (changed on resume)
            // does not cost any metric points.
            let batch = chunks(&[], &self.params, &self.tags).swap_remove(0);
            let (np, nt) = (batch.params.len(), batch.tags.len());
            match self.client.log_batch(&run.run_id, &batch) {
                Ok(()) => {}
                Err(e) if !e.retryable() => {
                    let np = np as u64;
                    self.note(|d| {
                        d.params_undelivered += np;
                        d.last_error = Some(e.to_string());
                    });
                }
                Err(e) => return Err(e),
            }
            self.params.drain(..np);
            self.tags.drain(..nt);
            return Ok(());
        }
        if !self.metrics.is_empty() {
            let head = self.metrics.make_contiguous();
            let head = &head[..head.len().min(limits::METRICS)];
            let batch = chunks(head, &[], &[]).swap_remove(0);
            let n = batch.metrics.len();
            match self.client.log_batch(&run.run_id, &batch) {
                Ok(()) => self.note(|d| d.delivered += n as u64),
                Err(e) if !e.retryable() => self.note(|d| d.last_error = Some(e.to_string())),
                Err(e) => return Err(e),
            }
            self.metrics.drain(..n);
            return Ok(());
        }
        if let Some((status, end_ms)) = self.end {
            let uploaded = upload_artifacts(&self.client, &run, &self.run_dir);
            self.client.update_run(&run.run_id, status, Some(end_ms))?;
            self.note(|d| {
                d.status_sent = true;
                match uploaded {
                    Ok(names) => d.artifacts = names,
                    Err(e) => d.artifact_error = Some(e),
                }
            });
            self.end = None;
        }
        Ok(())
    }

    fn run(mut self, rx: Receiver<Msg>) {
        let (min_backoff, max_backoff) = self.opts.backoff;
        let mut backoff = min_backoff;
        let mut next_try = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut connected = true;
        let mut failures_while_draining = 0;
        loop {
            let now = Instant::now();
            let until = match (self.has_work(), deadline) {
                (false, None) => None,
                (false, Some(_)) => Some(now),
                (true, d) => Some(d.map_or(next_try, |d| d.min(next_try))),
            };
            if connected {
                let first = match until {
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    Some(t) => rx.recv_timeout(t.saturating_duration_since(now)),
                };
                match first {
                    Ok(m) => self.take(m, &mut deadline),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => connected = false,
                }
                while let Ok(m) = rx.try_recv() {
                    self.take(m, &mut deadline);
                }
            } else {
                // The sink is gone without a deadline (it cannot be; be safe): stop now.
                deadline.get_or_insert(now);
                if let Some(t) = until {
                    std::thread::sleep(t.saturating_duration_since(now));
                }
            }
            let now = Instant::now();
            if self.has_work() && now >= next_try {
                match self.step() {
                    Ok(()) => {
                        backoff = min_backoff;
                        failures_while_draining = 0;
                    }
                    Err(e) => {
                        self.note(|d| d.last_error = Some(e.to_string()));
                        next_try = Instant::now() + backoff;
                        backoff = (backoff * 2).min(max_backoff);
                        if deadline.is_some() {
                            failures_while_draining += 1;
                        }
                    }
                }
            }
            if let Some(d) = deadline {
                // At the end, a server that keeps failing gets two more tries, not the whole
                // drain time: the run is over and `codex sync` can deliver later.
                if !self.has_work() || Instant::now() >= d || failures_while_draining >= 2 {
                    break;
                }
            }
        }
        let (params_left, fatal) = (self.params.len() as u64, self.fatal.take());
        self.note(|d| {
            d.params_undelivered += params_left;
            if let Some(f) = fatal {
                d.last_error = Some(f);
            }
        });
    }
}

/// What [`sync_run`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncReport {
    pub experiment_id: String,
    pub run_id: String,
    /// Whether the MLflow run was created by this sync (else found by its tag).
    pub created: bool,
    /// Points of the record (events and system samples) already on the server, and sent now.
    pub points_present: u64,
    pub points_sent: u64,
    pub params_sent: u64,
    /// Params the server holds with another value (MLflow params cannot change).
    pub params_conflicting: Vec<String>,
    /// The status set, when the record ends with an `end` event.
    pub status: Option<String>,
    pub artifacts: Vec<String>,
    pub artifact_error: Option<String>,
    /// Lines of the record skipped as malformed or torn.
    pub skipped_lines: u64,
    pub events: u64,
    pub system_samples: u64,
}

/// Replays a run's record into MLflow, idempotently: the run is found by its `codex.run_id`
/// tag (or created), and only points whose (key, step, timestamp) the server lacks are sent.
pub fn sync_run(client: &Client, experiment: &str, run_dir: &Path) -> Result<SyncReport, String> {
    struct Collect(Vec<Event>);
    impl EventSink for Collect {
        fn name(&self) -> &str {
            "collect"
        }
        fn emit(&mut self, e: &Event) -> Result<(), SinkError> {
            self.0.push(e.clone());
            Ok(())
        }
    }
    let mut events = Collect(Vec::new());
    let stats =
        crate::replay(&run_dir.join("metrics.ndjson"), &mut events).map_err(|e| e.to_string())?;
    let events = events.0;
    let mut report = SyncReport {
        skipped_lines: stats.skipped,
        events: stats.events,
        ..SyncReport::default()
    };
    let first = events
        .first()
        .ok_or_else(|| format!("{}: the record holds no event", run_dir.display()))?;
    let codex_run_id = first.header.run_id.clone();
    let start = events.iter().find_map(|e| match &e.kind {
        EventKind::Start(s) => Some(s),
        _ => None,
    });
    let mut points: Vec<Metric> = events.iter().flat_map(event_metrics).collect();
    let sys = run_dir.join("system_metrics.ndjson");
    if sys.is_file() {
        let s = crate::replay::for_each_sample(&sys, |v| {
            points.extend(system_metrics(v));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        report.system_samples = s.events;
        report.skipped_lines += s.skipped;
    }
    let config = start
        .and_then(|s| std::fs::read_to_string(run_dir.join(&s.invocation.config_file)).ok())
        .or_else(|| std::fs::read_to_string(run_dir.join("config.toml")).ok());
    let params = match config {
        Some(t) => config_params(&t)?,
        None => Vec::new(),
    };
    let version = start.map_or(codex_core::VERSION, |s| s.invocation.codex_version.as_str());
    let run_name = std::path::absolute(run_dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| codex_run_id.clone());
    let spec = RunSpec {
        codex_run_id: codex_run_id.clone(),
        run_name,
        start_ms: ts_ms(&first.header.ts),
        tags: run_tags(run_dir, &codex_run_id, version),
    };
    let api = |e: ApiError| format!("{}: {e}", client.endpoint.base);
    let exp = client.experiment_id(experiment).map_err(api)?;
    let (run, created) = ensure_run(client, experiment, &spec).map_err(api)?;
    report.experiment_id = exp;
    report.run_id = run.run_id.clone();
    report.created = created;

    // What the server has: params, and the history of every key it has a value for.
    let existing = client.get_run(&run.run_id).map_err(api)?;
    let data = existing.get("data");
    let list = |k: &str| {
        data.and_then(|d| d.get(k))
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let have_params: std::collections::HashMap<String, String> = list("params")
        .iter()
        .filter_map(|p| {
            Some((
                p.get("key")?.as_str()?.to_string(),
                p.get("value")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let keys_there: HashSet<String> = list("metrics")
        .iter()
        .filter_map(|m| m.get("key")?.as_str().map(str::to_string))
        .collect();
    let mut present: HashSet<(String, i64, i64)> = HashSet::new();
    let wanted: HashSet<&str> = points.iter().map(|p| p.key.as_str()).collect();
    for key in keys_there.iter().filter(|k| wanted.contains(k.as_str())) {
        for (step, ts, _) in client.metric_history(&run.run_id, key).map_err(api)? {
            present.insert((key.clone(), step, ts));
        }
    }
    let mut seen = HashSet::new();
    let mut to_send = Vec::new();
    for p in points {
        let id = (p.key.clone(), p.step, p.timestamp);
        if present.contains(&id) {
            report.points_present += 1;
        } else if seen.insert(id) {
            to_send.push(p);
        }
    }
    let mut new_params = Vec::new();
    for p in params {
        match have_params.get(&p.key) {
            Some(v) if *v == p.value => {}
            Some(_) => report.params_conflicting.push(p.key),
            None => new_params.push(p),
        }
    }
    report.params_sent = new_params.len() as u64;
    for batch in chunks(&to_send, &new_params, &spec.tags) {
        client.log_batch(&run.run_id, &batch).map_err(api)?;
        report.points_sent += batch.metrics.len() as u64;
    }
    let end = events.iter().rev().find_map(|e| match &e.kind {
        EventKind::End(r) => Some((status_name(r.status), ts_ms(&e.header.ts))),
        EventKind::Start(_) => Some(("RUNNING", 0)),
        _ => None,
    });
    match end {
        Some(("RUNNING", _)) | None => {}
        Some((status, end_ms)) => {
            match upload_artifacts(client, &run, run_dir) {
                Ok(names) => report.artifacts = names,
                Err(e) => report.artifact_error = Some(e),
            }
            client
                .update_run(&run.run_id, status, Some(end_ms))
                .map_err(api)?;
            report.status = Some(status.into());
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_flatten_arrays_per_element() {
        let p = config_params(
            "[data]\ninputs = [\"a.py\", \"b.py\"]\ncontext_length = 64\n[optimizer]\nlr = 0.001\n[model.lora]\ntarget_modules = []\n",
        )
        .unwrap();
        let got: Vec<(&str, &str)> = p
            .iter()
            .map(|k| (k.key.as_str(), k.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("data.context_length", "64"),
                ("data.inputs.0", "a.py"),
                ("data.inputs.1", "b.py"),
                ("model.lora.target_modules", "[]"),
                ("optimizer.lr", "0.001"),
            ]
        );
        assert!(config_params("not = = toml").is_err());
    }

    #[test]
    fn statuses_map_to_mlflow() {
        assert_eq!(status_name(RunStatus::Completed), "FINISHED");
        assert_eq!(status_name(RunStatus::EarlyStopped), "FINISHED");
        assert_eq!(status_name(RunStatus::Interrupted), "KILLED");
        assert_eq!(status_name(RunStatus::Failed), "FAILED");
        assert_eq!(status_name(RunStatus::AnomalyStopped), "FAILED");
    }

    #[test]
    fn a_down_server_neither_blocks_emit_nor_the_end_for_long() {
        // A port nothing listens on: every request fails at once with "connection refused".
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ep = Endpoint::resolve(Some(&format!("http://127.0.0.1:{port}"))).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let got = Arc::new(Mutex::new(None));
        let g = Arc::clone(&got);
        let opts = SinkOptions {
            queue: 8,
            drain: Duration::from_secs(2),
            backoff: (Duration::from_millis(10), Duration::from_millis(50)),
            ..SinkOptions::default()
        };
        let mut sink = MlflowSink::new(ep, "e", dir.path())
            .with_options(opts)
            .on_report(move |d| *g.lock().unwrap() = Some(d));
        let t = Instant::now();
        let ev = |kind| Event {
            header: codex_core::event::Header {
                schema_version: 1,
                run_id: "r1".into(),
                ts: "2026-12-01T00:00:00Z".into(),
                step: 1,
                rank: None,
            },
            kind,
        };
        let start = serde_json::from_value(serde_json::json!({
            "invocation": {"segment": 1, "argv": [], "overrides": [], "started": "", "codex_version": "0",
                "config_sha256": "", "config_file": "config.toml"},
            "data": {"tokens": 1, "train_blocks": 1, "val_blocks": 1, "context_length": 2,
                "tokenizer": "byte", "vocab_size": 256, "cache_hit": false},
            "total_steps": 1, "global_batch": 1, "trainable_params": 1
        }))
        .unwrap();
        sink.emit(&ev(EventKind::Start(start))).unwrap();
        for _ in 0..5000 {
            sink.emit(&ev(EventKind::Eval(codex_core::event::EvalMetrics {
                val_loss: 1.0,
                val_ppl: 2.7,
                val_token_acc: 0.5,
                val_tokens: 4,
            })))
            .unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        sink.finish();
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        let d = got.lock().unwrap().clone().expect("reported");
        assert_eq!(d.points, 20_000);
        assert_eq!(d.delivered, 0);
        assert_eq!(d.undelivered(), 20_000);
        assert!(!d.complete());
        let err = d.last_error.unwrap();
        assert!(
            err.to_lowercase().contains("refused") || err.contains("onnect"),
            "{err}"
        );
    }
}
