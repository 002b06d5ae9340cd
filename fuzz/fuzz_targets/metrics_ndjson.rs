//! `codex status`'s NDJSON readers on arbitrary bytes: no panic, and every line is either
//! folded in or counted as malformed (a bad line never costs the rest of the run).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let mut s = codex_audit::status::RunSummary::new(Path::new("runs/fuzz"));
    // A tiny buffer so that lines arrive split across reads, as from a slow disk.
    let r = std::io::BufReader::with_capacity(7, data);
    let state = codex_audit::status::read_metrics(r, &mut s).expect("in-memory reads cannot fail");
    assert_eq!(state.is_some(), s.ended);
    assert!(s.anomalies.len() <= codex_audit::status::MAX_ANOMALIES);
    assert!(s.anomaly_count >= s.anomalies.len() as u64);
    let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    assert!(s.malformed_lines <= newlines + 1);
    codex_audit::status::read_system_metrics(data, &mut s).expect("in-memory reads cannot fail");
    for m in [&s.cpu_util_pct, &s.gpu_util_pct, &s.gpu_power_w] {
        assert!(m.mean.is_none_or(f64::is_finite) && m.max.is_none_or(f64::is_finite));
    }
    // The text view of a run built from these bytes stays line-safe.
    let line = codex_audit::printable(&s.problems.join(" ")).into_owned();
    assert!(!line.contains('\n'));
});
