//! `--track mlflow` and `codex sync --to mlflow` against a real `mlflow server` (sqlite backend,
//! 127.0.0.1, a free port), read back with MLflow's own `MlflowClient`. `#[ignore]`d: they need
//! the test-assets venv (`scripts/test-assets.sh` installs mlflow), and fail without it.

use crate::support::{
    asset_var, codex, codex_process, corpus, lines, newest_step, sha256_hex, tempdir, tiny_args,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `mlflow server`, killed (with its workers) when dropped.
struct Server {
    child: Child,
    uri: String,
    killed: bool,
}

impl Server {
    /// Starts a server on `dir/mlflow.db` and `dir/artifacts` at `port` (0: a free one).
    fn start(dir: &Path, port: u16) -> Server {
        let port = if port == 0 {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        } else {
            port
        };
        let python = asset_var("CODEX_TEST_PYTHON");
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "mlflow", "server", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .args(["--workers", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("server-{port}.log"))).unwrap());
        // Its own process group, so that killing it takes its workers too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start mlflow server");
        let server = Server {
            child,
            uri: format!("http://127.0.0.1:{port}"),
            killed: false,
        };
        let t = Instant::now();
        while !healthy(port) {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "mlflow server did not come up: {}",
                std::fs::read_to_string(dir.join(format!("server-{port}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        server
    }

    fn port(&self) -> u16 {
        self.uri.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn kill(&mut self) {
        if std::mem::replace(&mut self.killed, true) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn healthy(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.") && buf.contains(" 200 ")
}

/// What MLflow's own client reads of the run tagged with `codex_run_id`: runs, status,
/// params, tags, every metric's full history, and the sha256 of each artifact.
fn read_back(uri: &str, experiment: &str, codex_run_id: &str, dl: &Path) -> Value {
    const SCRIPT: &str = r#"
import hashlib, json, math, os, sys
from mlflow.tracking import MlflowClient
uri, exp_name, rid, dl = sys.argv[1:5]
c = MlflowClient(tracking_uri=uri)
exp = c.get_experiment_by_name(exp_name)
runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`codex.run_id` = '{rid}'")
r = runs[0]
def num(v):
    return v if math.isfinite(v) else str(v)
hist = {}
for k in r.data.metrics:
    hist[k] = sorted([m.step, m.timestamp, num(m.value)] for m in c.get_metric_history(r.info.run_id, k))
arts = {}
path = c.download_artifacts(r.info.run_id, "", dl)
for name in sorted(os.listdir(path)):
    with open(os.path.join(path, name), "rb") as f:
        arts[name] = hashlib.sha256(f.read()).hexdigest()
print(json.dumps({"runs": len(runs), "status": r.info.status, "params": r.data.params,
    "tags": r.data.tags, "history": hist, "artifacts": arts}))
"#;
    let out = Command::new(asset_var("CODEX_TEST_PYTHON"))
        .args(["-c", SCRIPT, uri, experiment, codex_run_id])
        .arg(dl)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "MlflowClient failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The record's points per MLflow key: sorted (step, timestamp ms, value).
fn expected_history(run: &Path) -> BTreeMap<String, Vec<Value>> {
    const STEP: [(&str, &str); 10] = [
        ("train/loss", "train_loss"),
        ("train/loss_mean", "train_loss_mean"),
        ("train/lr", "lr"),
        ("train/grad_norm", "grad_norm"),
        ("perf/tokens_per_s", "tokens_per_s"),
        ("perf/step_time_ms", "step_time_ms"),
        ("progress/epoch", "epoch"),
        ("progress/tokens_seen", "tokens_seen"),
        ("perf/mfu", "mfu"),
        ("perf/joules_per_token", "joules_per_token"),
    ];
    const EVAL: [(&str, &str); 4] = [
        ("eval/loss", "val_loss"),
        ("eval/ppl", "val_ppl"),
        ("eval/token_acc", "val_token_acc"),
        ("eval/tokens", "val_tokens"),
    ];
    const ANOMALY: [(&str, &str); 2] = [
        ("anomaly/train_loss", "train_loss"),
        ("anomaly/grad_norm", "grad_norm"),
    ];
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in lines(&run.join("metrics.ndjson")) {
        let fields: &[(&str, &str)] = match e["event"].as_str() {
            Some("step") => &STEP,
            Some("eval") => &EVAL,
            Some("anomaly") => &ANOMALY,
            _ => continue,
        };
        let ts = chrono_ms(e["ts"].as_str().unwrap());
        for (key, field) in fields {
            // Non-finite values are strings in the record ("NaN", "inf"). MLflow keeps NaN
            // (read back as "nan") and stores ±infinity as ±f64::MAX (its SQL store's rule).
            let v = match &e[*field] {
                // Null (no energy counter here): no point is sent.
                Value::Null => continue,
                Value::String(s) => match s.parse::<f64>().unwrap() {
                    x if x.is_nan() => Value::String("nan".into()),
                    x => Value::from(f64::MAX.copysign(x)),
                },
                v => v.clone(),
            };
            out.entry(key.to_string())
                .or_default()
                .push(serde_json::json!([e["step"], ts, v]));
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|a| a.to_string());
    }
    out
}

/// Milliseconds since the epoch of an RFC 3339 timestamp, as the sink rounds it.
fn chrono_ms(ts: &str) -> i64 {
    let t = chrono::DateTime::parse_from_rfc3339(ts).unwrap();
    (t.timestamp_micros() as f64 / 1e3).round() as i64
}

/// The read-back history in the same shape as [`expected_history`].
fn history(back: &Value) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for (k, pts) in back["history"].as_object().unwrap() {
        let mut v: Vec<Value> = pts
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let val = match &p[2] {
                    Value::String(s) => Value::String(s.to_lowercase()),
                    Value::Number(n) => {
                        // Integral values come back as floats (4 -> 4.0).
                        let f = n.as_f64().unwrap();
                        if f.fract() == 0.0 && f.abs() < 1e15 {
                            Value::from(f as i64)
                        } else {
                            Value::from(f)
                        }
                    }
                    v => v.clone(),
                };
                serde_json::json!([p[0], p[1], val])
            })
            .collect();
        v.sort_by_key(|a| a.to_string());
        out.insert(k.clone(), v);
    }
    out
}

/// Integral record values too (`epoch: 0`, `val_tokens: 64`) as integers, floats as floats.
fn normalize_expected(mut e: BTreeMap<String, Vec<Value>>) -> BTreeMap<String, Vec<Value>> {
    for pts in e.values_mut() {
        for p in pts.iter_mut() {
            if let Some(f) = p[2].as_f64()
                && f.fract() == 0.0
                && f.abs() < 1e15
            {
                p[2] = Value::from(f as i64);
            }
        }
        pts.sort_by_key(|a| a.to_string());
    }
    e
}

/// `n` input files (each a slice of the corpus), so the config has one param per input.
fn inputs(dir: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(corpus(dir)).unwrap();
    let chunk = text.len().div_ceil(n);
    let bytes = text.as_bytes();
    (0..n)
        .map(|i| {
            let p = dir.join(format!("part-{i:03}.py"));
            std::fs::write(
                &p,
                &bytes[(i * chunk).min(bytes.len())..((i + 1) * chunk).min(bytes.len())],
            )
            .unwrap();
            p.display().to_string()
        })
        .collect()
}

fn train_args(inputs: &[String], run: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = tiny_args("x", run, extra);
    args[3] = format!("data.inputs={inputs:?}");
    args
}

fn run_id(run: &Path) -> String {
    lines(&run.join("metrics.ndjson"))[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn flattened_params(run: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    codex_track::mlflow::config_params(&text)
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

#[test]
#[ignore = "needs the test assets (mlflow in the venv): bash scripts/test.sh"]
fn a_live_run_reaches_a_real_mlflow_server_exactly() {
    let dir = tempdir();
    let server = Server::start(dir.path(), 0);
    let ins = inputs(dir.path(), 130);
    let run = dir.path().join("run");
    let args = train_args(
        &ins,
        &run,
        &[
            "--track",
            "mlflow",
            "training.steps=330",
            "training.eval_every=100",
            "checkpoint.every=1000",
            "tracking.mlflow_experiment=\"proof\"",
        ],
    );
    let out = codex()
        .args(&args)
        .env("MLFLOW_TRACKING_URI", &server.uri)
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mlflow: run "), "{stderr}");
    assert!(!stderr.contains("missing"), "{stderr}");

    let rid = run_id(&run);
    let back = read_back(&server.uri, "proof", &rid, &dir.path().join("dl"));
    assert_eq!(back["runs"], 1);
    assert_eq!(back["status"], "FINISHED");
    let expected = normalize_expected(expected_history(&run));
    let points: usize = expected.values().map(Vec::len).sum();
    assert!(points > 2500, "{points} points");
    assert_eq!(history(&back), expected);

    let params: BTreeMap<String, String> = serde_json::from_value(back["params"].clone()).unwrap();
    assert!(params.len() > 150, "{} params", params.len());
    assert_eq!(params, flattened_params(&run));
    assert_eq!(params["data.inputs.129"], ins[129]);
    assert_eq!(back["tags"]["codex.run_id"], rid.as_str());
    assert!(back["tags"]["codex.version"].is_string());

    for name in ["metrics.ndjson", "config.toml"] {
        let want = sha256_hex(&std::fs::read(run.join(name)).unwrap());
        assert_eq!(back["artifacts"][name], want.as_str(), "{name}");
    }

    // Syncing the delivered run finds it by its tag and sends nothing new.
    let out = codex()
        .args(["sync", "--json", "--to", &format!("mlflow:{}", server.uri)])
        .args(["--experiment", "proof"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["created"], false);
    assert_eq!(r["points_sent"], 0);
    assert_eq!(r["points_present"].as_u64().unwrap() as usize, points);
    let again = read_back(&server.uri, "proof", &rid, &dir.path().join("dl2"));
    assert_eq!(history(&again), expected);
}

#[test]
#[ignore = "needs the test assets (mlflow in the venv): bash scripts/test.sh"]
fn non_finite_losses_arrive_as_nan_and_the_run_is_failed() {
    let dir = tempdir();
    let server = Server::start(dir.path(), 0);
    let input = corpus(dir.path());
    let run = dir.path().join("nan");
    let mut args = tiny_args(
        &input,
        &run,
        &[
            "optimizer.lr=1e30",
            "schedule.warmup_steps=0",
            "training.max_anomalies=2",
            "training.clip_norm=0",
            "--track",
            "mlflow",
        ],
    );
    args.push(format!("tracking.mlflow={:?}", server.uri));
    codex().args(&args).assert().code(1);
    let back = read_back(&server.uri, "codex", &run_id(&run), &dir.path().join("dl"));
    assert_eq!(back["status"], "FAILED");
    let h = history(&back);
    assert!(
        h["anomaly/train_loss"]
            .iter()
            .any(|p| p[2] == "nan" || p[2] == f64::MAX),
        "{:?}",
        h["anomaly/train_loss"]
    );
    assert_eq!(h, normalize_expected(expected_history(&run)));
}

#[test]
#[ignore = "needs the test assets (mlflow in the venv): bash scripts/test.sh"]
fn a_server_killed_mid_run_loses_nothing_that_sync_cannot_deliver() {
    let dir = tempdir();
    let mut server = Server::start(dir.path(), 0);
    let port = server.port();
    let input = corpus(dir.path());
    let run = dir.path().join("run");
    let args = tiny_args(
        &input,
        &run,
        &[
            "--track",
            "mlflow",
            "training.steps=3000",
            "training.eval_every=500",
            "checkpoint.every=10000",
        ],
    );
    let child = codex_process()
        .args(&args)
        .env("MLFLOW_TRACKING_URI", &server.uri)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while newest_step(&run) < 200 {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let killed_at = newest_step(&run);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let record = lines(&run.join("metrics.ndjson"));
    assert_eq!(record.last().unwrap()["status"], "completed");
    assert!(killed_at < 3000, "the server was killed only after the run");
    // The loss of delivery is reported, with the way to deliver the rest.
    assert!(stderr.contains("metric points"), "{stderr}");
    assert!(stderr.contains("codex sync"), "{stderr}");

    // A server on the same store comes back; sync delivers the rest, once.
    let server = Server::start(dir.path(), port);
    for _ in 0..2 {
        codex()
            .args(["sync", "--to", &format!("mlflow:{}", server.uri)])
            .arg(&run)
            .assert()
            .success();
    }
    let back = read_back(&server.uri, "codex", &run_id(&run), &dir.path().join("dl"));
    assert_eq!(back["runs"], 1);
    assert_eq!(back["status"], "FINISHED");
    assert_eq!(history(&back), normalize_expected(expected_history(&run)));
    let want = sha256_hex(&std::fs::read(run.join("metrics.ndjson")).unwrap());
    assert_eq!(back["artifacts"]["metrics.ndjson"], want.as_str());
}

#[test]
fn sync_to_mlflow_without_a_server_is_a_clear_error() {
    let dir = tempdir();
    let run: PathBuf = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("metrics.ndjson"), "").unwrap();
    let out = codex()
        .args(["sync", "--to", "mlflow"])
        .arg(&run)
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .unwrap();
    // Invalid input (exit 1): the hint names both ways to give the server.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MLFLOW_TRACKING_URI"), "{err}");
    let out = codex()
        .args(["sync", "--to", "mlflow:ftp://x"])
        .arg(&run)
        .output()
        .unwrap();
    // A malformed --to is a usage error (exit 2).
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://"));
    // `--track mlflow` with no server named refuses before training.
    let out = codex()
        .args(tiny_args(
            "x.py",
            &dir.path().join("r2"),
            &["--track", "mlflow"],
        ))
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MLFLOW_TRACKING_URI"));
    assert!(!dir.path().join("r2").exists());
}
