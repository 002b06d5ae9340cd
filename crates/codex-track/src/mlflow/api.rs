//! The MLflow REST API calls codex makes, over a blocking `ureq` agent.
//!
//! Endpoints (MLflow 2.x and 3.x): `experiments/get-by-name`, `experiments/create`,
//! `runs/search`, `runs/create`, `runs/get`, `runs/log-batch`, `runs/update`,
//! `metrics/get-history`, and the artifact proxy `mlflow-artifacts/artifacts/…`.

use serde::Serialize;
use serde_json::{Value, json};
use std::time::Duration;

/// Where the server is and how to authenticate, as MLflow's own client reads them.
#[derive(Clone)]
pub struct Endpoint {
    /// `http(s)://host:port[/prefix]`, without a trailing slash.
    pub base: String,
    auth: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    // The credentials stay out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field("auth", &self.auth.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Endpoint {
    /// `uri`, or else `MLFLOW_TRACKING_URI`; `MLFLOW_TRACKING_TOKEN` (bearer) or
    /// `MLFLOW_TRACKING_USERNAME` + `_PASSWORD` (basic) when set.
    pub fn resolve(uri: Option<&str>) -> Result<Self, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let uri = match uri
            .map(str::to_string)
            .or_else(|| env("MLFLOW_TRACKING_URI"))
        {
            Some(u) => u,
            None => {
                return Err(
                    "no MLflow server: give its URI (http://host:port) or set MLFLOW_TRACKING_URI"
                        .into(),
                );
            }
        };
        let auth = match (
            env("MLFLOW_TRACKING_TOKEN"),
            env("MLFLOW_TRACKING_USERNAME"),
            env("MLFLOW_TRACKING_PASSWORD"),
        ) {
            (Some(t), _, _) => Some(format!("Bearer {t}")),
            (None, Some(u), p) => {
                use base64::Engine as _;
                let raw = format!("{u}:{}", p.unwrap_or_default());
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            _ => None,
        };
        Self::new(&uri, auth)
    }

    fn new(uri: &str, auth: Option<String>) -> Result<Self, String> {
        let uri = uri.trim();
        let rest = uri
            .strip_prefix("http://")
            .or_else(|| uri.strip_prefix("https://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(Self {
                base: uri.trim_end_matches('/').to_string(),
                auth,
            }),
            _ => Err(format!(
                "`{uri}` is not an MLflow server URI: expected http://host:port or https://…"
            )),
        }
    }
}

/// A failed call: a transport problem or a server answer other than 2xx.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// Connection refused, timeout, reset: worth retrying.
    Transport(String),
    /// The server answered with an error status.
    Status {
        code: u16,
        error_code: String,
        message: String,
    },
}

impl ApiError {
    /// Whether a retry may succeed (transport errors, 429 and 5xx).
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Transport(_) => true,
            ApiError::Status { code, .. } => *code == 429 || *code >= 500,
        }
    }

    fn is(&self, code: &str) -> bool {
        matches!(self, ApiError::Status { error_code, .. } if error_code == code)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Transport(e) => write!(f, "{e}"),
            ApiError::Status {
                code,
                error_code,
                message,
            } => write!(f, "HTTP {code} {error_code}: {message}"),
        }
    }
}

impl std::error::Error for ApiError {}

/// One metric point as `runs/log-batch` takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    pub key: String,
    /// Non-finite values go out as the proto3 JSON strings `"NaN"`, `"Infinity"`,
    /// `"-Infinity"`, which MLflow's server parses (JSON itself has no such numbers).
    #[serde(serialize_with = "proto_double")]
    pub value: f64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    pub step: i64,
}

fn proto_double<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_nan() {
        s.serialize_str("NaN")
    } else if x.is_infinite() {
        s.serialize_str(if *x > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        s.serialize_f64(*x)
    }
}

/// A number as the server sends it back (a JSON number, or one of the proto3 strings).
pub fn parse_double(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            other => other.parse().ok(),
        },
        _ => None,
    }
}

/// A param or tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// The run a server created or found.
#[derive(Debug, Clone)]
pub struct RunRef {
    pub run_id: String,
    pub artifact_uri: String,
}

/// A blocking MLflow client.
pub struct Client {
    pub endpoint: Endpoint,
    agent: ureq::Agent,
}

impl Client {
    /// `timeout` bounds each request as a whole (connect, send, read).
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self { endpoint, agent }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/2.0/{path}", self.endpoint.base)
    }

    fn finish(
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, ApiError> {
        let mut resp = resp.map_err(|e| ApiError::Transport(e.to_string()))?;
        let code = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        if (200..300).contains(&code) {
            if text.trim().is_empty() {
                return Ok(json!({}));
            }
            return serde_json::from_str(&text)
                .map_err(|e| ApiError::Transport(format!("not JSON from the server: {e}")));
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let mut message = s("message").unwrap_or_else(|| text.chars().take(200).collect());
        if message.is_empty() {
            message = "(no message)".into();
        }
        Err(ApiError::Status {
            code,
            error_code: s("error_code").unwrap_or_default(),
            message,
        })
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Transport(e.to_string()))?;
        self.post_bytes(path, &bytes)
    }

    fn post_bytes(&self, path: &str, body: &[u8]) -> Result<Value, ApiError> {
        let mut req = self
            .agent
            .post(self.url(path))
            .header("Content-Type", "application/json");
        if let Some(a) = &self.endpoint.auth {
            req = req.header("Authorization", a);
        }
        Self::finish(req.send(body))
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ApiError> {
        let mut req = self.agent.get(self.url(path));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        if let Some(a) = &self.endpoint.auth {
            req = req.header("Authorization", a);
        }
        Self::finish(req.call())
    }

    /// The id of the experiment `name`, created if missing.
    pub fn experiment_id(&self, name: &str) -> Result<String, ApiError> {
        let get = || {
            self.get(
                "mlflow/experiments/get-by-name",
                &[("experiment_name", name)],
            )
            .map(|v| str_at(&v, &["experiment", "experiment_id"]))
        };
        match get() {
            Ok(id) => return Ok(id),
            Err(e) if e.is("RESOURCE_DOES_NOT_EXIST") => {}
            Err(e) => return Err(e),
        }
        match self.post("mlflow/experiments/create", &json!({ "name": name })) {
            Ok(v) => Ok(str_at(&v, &["experiment_id"])),
            // Another client created it in between.
            Err(e) if e.is("RESOURCE_ALREADY_EXISTS") => get(),
            Err(e) => Err(e),
        }
    }

    /// The run of `experiment_id` whose tag `key` is `value`, if any (the oldest when several).
    pub fn find_run_by_tag(
        &self,
        experiment_id: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<RunRef>, ApiError> {
        // MLflow's filter grammar: backquoted key, single-quoted value; a quote inside the
        // value cannot be escaped, so such a value is never matched rather than mis-parsed.
        if value.contains('\'') || key.contains('`') {
            return Ok(None);
        }
        let v = self.post(
            "mlflow/runs/search",
            &json!({
                "experiment_ids": [experiment_id],
                "filter": format!("tags.`{key}` = '{value}'"),
                // A run deleted in MLflow is not written to again: a new one is created.
                "run_view_type": "ACTIVE_ONLY",
                "max_results": 10,
                "order_by": ["attributes.start_time ASC"],
            }),
        )?;
        Ok(v.get("runs")
            .and_then(Value::as_array)
            .and_then(|r| r.first())
            .map(run_ref))
    }

    pub fn create_run(
        &self,
        experiment_id: &str,
        run_name: &str,
        start_time_ms: i64,
        tags: &[KeyValue],
    ) -> Result<RunRef, ApiError> {
        let v = self.post(
            "mlflow/runs/create",
            &json!({
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": start_time_ms,
                "tags": tags,
            }),
        )?;
        Ok(run_ref(v.get("run").unwrap_or(&Value::Null)))
    }

    /// `runs/get`: the run's info and data.
    pub fn get_run(&self, run_id: &str) -> Result<Value, ApiError> {
        self.get("mlflow/runs/get", &[("run_id", run_id)])
            .map(|v| v.get("run").cloned().unwrap_or(Value::Null))
    }

    /// One `runs/log-batch` request (the caller keeps within the limits: see [`chunks`]).
    pub fn log_batch(&self, run_id: &str, batch: &Batch) -> Result<(), ApiError> {
        let body = batch.body(run_id);
        self.post_bytes("mlflow/runs/log-batch", &body).map(|_| ())
    }

    /// `runs/update`: status (`RUNNING`, `FINISHED`, `FAILED`, `KILLED`) and end time.
    pub fn update_run(
        &self,
        run_id: &str,
        status: &str,
        end_time_ms: Option<i64>,
    ) -> Result<(), ApiError> {
        let mut body = json!({ "run_id": run_id, "status": status });
        if let Some(t) = end_time_ms {
            body["end_time"] = json!(t);
        }
        self.post("mlflow/runs/update", &body).map(|_| ())
    }

    /// Every point of `key` in the run, page by page, as (step, timestamp ms, value).
    pub fn metric_history(
        &self,
        run_id: &str,
        key: &str,
    ) -> Result<Vec<(i64, i64, f64)>, ApiError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut q = vec![
                ("run_id", run_id),
                ("metric_key", key),
                ("max_results", "25000"),
            ];
            if !token.is_empty() {
                q.push(("page_token", token.as_str()));
            }
            let v = self.get("mlflow/metrics/get-history", &q)?;
            for m in v
                .get("metrics")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let step = m.get("step").and_then(as_i64).unwrap_or(0);
                let ts = m.get("timestamp").and_then(as_i64).unwrap_or(0);
                let value = m.get("value").and_then(parse_double).unwrap_or(f64::NAN);
                out.push((step, ts, value));
            }
            match v.get("next_page_token").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && t != token => token = t.to_string(),
                _ => return Ok(out),
            }
        }
    }

    /// Uploads `data` as `name` into the run's artifacts through the server's artifact proxy.
    /// `Ok(false)` when the run's artifacts are not served by the proxy (another store the
    /// server does not relay).
    pub fn upload_artifact(
        &self,
        artifact_uri: &str,
        name: &str,
        data: &[u8],
    ) -> Result<bool, ApiError> {
        let Some(path) = proxy_path(artifact_uri) else {
            return Ok(false);
        };
        let url = format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{path}/{name}",
            self.endpoint.base
        );
        let mut req = self.agent.put(url);
        if let Some(a) = &self.endpoint.auth {
            req = req.header("Authorization", a);
        }
        Self::finish(req.send(data)).map(|_| true)
    }
}

/// The path under the proxy of an `mlflow-artifacts:` URI (`mlflow-artifacts:/1/<run>/artifacts`
/// or with an authority, `mlflow-artifacts://host:port/1/…`).
fn proxy_path(artifact_uri: &str) -> Option<String> {
    let rest = artifact_uri.strip_prefix("mlflow-artifacts:")?;
    let rest = match rest.strip_prefix("//") {
        Some(r) => &r[r.find('/')?..],
        None => rest,
    };
    let p = rest.trim_matches('/');
    (!p.is_empty() && !p.split('/').any(|s| s == "..")).then(|| p.to_string())
}

fn as_i64(v: &Value) -> Option<i64> {
    // The server sends int64 fields as JSON strings (proto3 JSON) or numbers.
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn str_at(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for k in path {
        cur = cur.get(k).unwrap_or(&Value::Null);
    }
    cur.as_str().unwrap_or_default().to_string()
}

fn run_ref(run: &Value) -> RunRef {
    RunRef {
        run_id: str_at(run, &["info", "run_id"]),
        artifact_uri: str_at(run, &["info", "artifact_uri"]),
    }
}

/// What one `runs/log-batch` request carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub metrics: Vec<Metric>,
    pub params: Vec<KeyValue>,
    pub tags: Vec<KeyValue>,
}

/// MLflow's documented limits of one `runs/log-batch` request.
pub mod limits {
    pub const METRICS: usize = 1000;
    pub const PARAMS: usize = 100;
    pub const TAGS: usize = 100;
    /// Metrics, params and tags together.
    pub const ENTITIES: usize = 1000;
    /// The request body, in bytes (1 MB), with room left for the envelope.
    pub const BYTES: usize = 1_000_000 - 1024;
    /// Longest param value the server stores (MLflow >= 2.8: 6000 characters).
    pub const PARAM_VALUE: usize = 6000;
    /// Longest tag value codex sends (the server allows far more; these are short).
    pub const TAG_VALUE: usize = 5000;
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty() && self.params.is_empty() && self.tags.is_empty()
    }

    pub fn len(&self) -> usize {
        self.metrics.len() + self.params.len() + self.tags.len()
    }

    fn body(&self, run_id: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "run_id": run_id,
            "metrics": self.metrics,
            "params": self.params,
            "tags": self.tags,
        }))
        .unwrap_or_default()
    }
}

/// Splits what is to be logged into requests within [`limits`], params and tags first (a
/// run's params should land before its curves), each item in its original order.
pub fn chunks(metrics: &[Metric], params: &[KeyValue], tags: &[KeyValue]) -> Vec<Batch> {
    enum Item<'a> {
        Metric(&'a Metric),
        Param(&'a KeyValue),
        Tag(&'a KeyValue),
    }
    fn json_len<T: Serialize>(v: &T) -> usize {
        serde_json::to_vec(v).map(|v| v.len()).unwrap_or(0) + 1
    }
    let items = params
        .iter()
        .map(Item::Param)
        .chain(tags.iter().map(Item::Tag))
        .chain(metrics.iter().map(Item::Metric));
    let mut out = Vec::new();
    let mut cur = Batch::default();
    let mut bytes = 0usize;
    for item in items {
        let (size, kind_full) = match &item {
            Item::Metric(m) => (json_len(m), cur.metrics.len() >= limits::METRICS),
            Item::Param(p) => (json_len(p), cur.params.len() >= limits::PARAMS),
            Item::Tag(t) => (json_len(t), cur.tags.len() >= limits::TAGS),
        };
        let full = kind_full || cur.len() >= limits::ENTITIES || bytes + size > limits::BYTES;
        if full && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        match item {
            Item::Metric(m) => cur.metrics.push(m.clone()),
            Item::Param(p) => cur.params.push(p.clone()),
            Item::Tag(t) => cur.tags.push(t.clone()),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A param or tag value cut to `max` characters (on a char boundary).
pub fn clip(value: &str, max: usize) -> String {
    match value.char_indices().nth(max) {
        Some((i, _)) => value[..i].to_string(),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: usize) -> Metric {
        Metric {
            key: "train/loss".into(),
            value: i as f64,
            timestamp: 1,
            step: i as i64,
        }
    }

    #[test]
    fn chunks_keep_every_limit_and_every_item_in_order() {
        let metrics: Vec<Metric> = (0..2600).map(m).collect();
        let params: Vec<KeyValue> = (0..160)
            .map(|i| KeyValue {
                key: format!("p{i}"),
                value: "v".into(),
            })
            .collect();
        let tags = vec![KeyValue {
            key: "codex.run_id".into(),
            value: "r".into(),
        }];
        let batches = chunks(&metrics, &params, &tags);
        for b in &batches {
            assert!(b.metrics.len() <= limits::METRICS);
            assert!(b.params.len() <= limits::PARAMS);
            assert!(b.tags.len() <= limits::TAGS);
            assert!(b.len() <= limits::ENTITIES);
            assert!(b.body("0123456789abcdef").len() <= 1_000_000);
        }
        let back: Vec<Metric> = batches.iter().flat_map(|b| b.metrics.clone()).collect();
        assert_eq!(back, metrics);
        let back: Vec<KeyValue> = batches.iter().flat_map(|b| b.params.clone()).collect();
        assert_eq!(back, params);
        assert_eq!(
            batches.len(),
            4,
            "100 params, then 60 + tag + 939 metrics, …"
        );
    }

    #[test]
    fn chunks_split_on_bytes() {
        // 100 params (one request by count) of 20,000 characters: 2 MB, three requests by size.
        let params: Vec<KeyValue> = (0..100)
            .map(|i| KeyValue {
                key: format!("p{i}"),
                value: "x".repeat(20_000),
            })
            .collect();
        let batches = chunks(&[], &params, &[]);
        assert_eq!(batches.len(), 3);
        for b in &batches {
            assert!(b.body("r").len() <= 1_000_000, "{}", b.body("r").len());
        }
    }

    #[test]
    fn non_finite_values_use_the_proto3_json_strings() {
        let mut p = m(1);
        p.value = f64::NAN;
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["value"], "NaN");
        p.value = f64::NEG_INFINITY;
        assert_eq!(serde_json::to_value(&p).unwrap()["value"], "-Infinity");
        assert!(parse_double(&json!("NaN")).unwrap().is_nan());
        assert_eq!(parse_double(&json!("Infinity")), Some(f64::INFINITY));
        assert_eq!(parse_double(&json!(1.5)), Some(1.5));
    }

    #[test]
    fn endpoints_and_proxy_paths() {
        assert!(Endpoint::new("ftp://x", None).is_err());
        assert!(Endpoint::new("http://", None).is_err());
        assert_eq!(
            Endpoint::new("http://127.0.0.1:5000/", None).unwrap().base,
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            proxy_path("mlflow-artifacts:/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(
            proxy_path("mlflow-artifacts://h:5000/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(proxy_path("s3://bucket/1/abc"), None);
        assert_eq!(proxy_path("mlflow-artifacts:/../etc"), None);
        assert_eq!(clip("héllo", 2), "hé");
    }
}
