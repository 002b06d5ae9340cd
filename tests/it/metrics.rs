//! `codex metrics sample|watch` end to end, with the real binary.

use crate::support::{assert_ok, codex, codex_process, json_of, lines, ndjson, sigint, tempdir};
use std::time::Duration;

#[test]
fn sample_json_has_the_stable_fields() {
    let out = codex()
        .args(["metrics", "sample", "--json", "--no-gpu"])
        .output()
        .unwrap();
    assert_ok(&out);
    let v = json_of(&out.stdout);
    for key in [
        "cpu_util_pct",
        "mem_used_bytes",
        "mem_total_bytes",
        "proc_rss_bytes",
        "proc_cpu_pct",
        "ts",
        "mono_s",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["schema_version"], codex_core::SCHEMA_VERSION);
    assert_eq!(v["gpu_status"], "not-requested");
    let cpu = v["cpu_util_pct"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&cpu));
    assert!(v["mem_used_bytes"].as_u64().unwrap() <= v["mem_total_bytes"].as_u64().unwrap());
}

#[test]
fn sample_table_is_readable() {
    let out = codex().args(["metrics", "sample"]).output().unwrap();
    assert_ok(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("cpu ")
            && text.contains("mem ")
            && text.contains("proc ")
            && text.contains("gpu"),
        "{text}"
    );
}

#[test]
fn missing_nvml_is_a_warning_and_the_sample_says_why() {
    // Point the loader at a library that does not exist: the NVML-absent path, on any machine.
    let out = codex()
        .env("CODEX_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")
        .args(["metrics", "sample", "--json", "--gpu"])
        .output()
        .unwrap();
    assert_ok(&out);
    let v = json_of(&out.stdout);
    assert_eq!(v["gpu_status"], "unavailable");
    assert!(
        v["gpu_reason"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/libnvidia-ml.so.1"),
        "{v}"
    );
    assert_eq!(v["gpus"], serde_json::json!([]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("GPU metrics requested but unavailable"),
        "{err}"
    );
}

#[test]
fn watch_json_prints_count_lines_on_a_cadence() {
    let out = codex()
        .args([
            "metrics",
            "watch",
            "--json",
            "--interval",
            "0.2",
            "--count",
            "3",
            "--no-gpu",
        ])
        .output()
        .unwrap();
    assert_ok(&out);
    let samples = ndjson(&out.stdout);
    assert_eq!(samples.len(), 3);
    let t: Vec<f64> = samples
        .iter()
        .map(|l| l["mono_s"].as_f64().unwrap())
        .collect();
    assert!(t[0] < t[1] && t[1] < t[2], "{t:?}");
}

#[test]
fn watch_out_appends_ndjson() {
    let dir = tempdir();
    let path = dir.path().join("s.ndjson");
    for _ in 0..2 {
        let out = codex()
            .args([
                "metrics",
                "watch",
                "--interval",
                "0.2",
                "--count",
                "2",
                "--no-gpu",
                "--out",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert_ok(&out);
        assert!(
            out.stdout.is_empty(),
            "a non-terminal stdout gets nothing when --out is given"
        );
    }
    let samples = lines(&path);
    assert_eq!(samples.len(), 4);
    assert!(samples.iter().all(|l| l["cpu_util_pct"].is_number()));
}

#[test]
fn bad_arguments_exit_1_naming_the_value() {
    let out = codex()
        .args(["metrics", "watch", "--interval", "0.05", "--count", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--interval 0.05"));
    let out = codex()
        .args(["metrics", "watch", "--count", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = codex()
        .args([
            "metrics",
            "watch",
            "--count",
            "1",
            "--out",
            "/nonexistent/dir/s.ndjson",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dir/s.ndjson"));
}

#[cfg(unix)]
#[test]
fn watch_stops_cleanly_on_ctrl_c() {
    let child = codex_process()
        .args([
            "metrics",
            "watch",
            "--json",
            "--interval",
            "0.2",
            "--no-gpu",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(900));
    sigint(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every line printed before the interrupt is complete JSON.
    let samples = ndjson(&out.stdout);
    assert!(!samples.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted after"));
}
