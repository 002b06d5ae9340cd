//! Scanning files: each file is read and scanned as one document (its own lines and columns),
//! files in parallel; with a redaction target, the redacted copy is written atomically.

use crate::policy::Policy;
use crate::scan::{Disposition, LineIndex, ScanOptions, Verdict, mask_fragment};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Largest file scanned (it is read whole); bigger ones are reported, not read.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// One finding, located and masked for a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Located {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub rule: String,
    pub action: String,
    pub severity: String,
    pub disposition: Disposition,
    /// [`mask_fragment`] of the match: never the whole secret.
    pub fragment: String,
}

/// The result of one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub path: String,
    pub bytes: u64,
    pub blocked: bool,
    pub findings: Vec<Located>,
    /// Set when the file could not be read or its redacted copy not written.
    pub error: Option<String>,
    #[serde(skip)]
    pub verdict: Verdict,
}

/// A file to scan and, optionally, where its redacted copy goes.
pub struct Job {
    pub path: PathBuf,
    pub redact_to: Option<PathBuf>,
}

fn scan_one(policy: &Policy, job: &Job, opts: ScanOptions) -> FileReport {
    let name = job.path.display().to_string();
    let mut report = FileReport {
        path: name.clone(),
        bytes: 0,
        blocked: false,
        findings: Vec::new(),
        error: None,
        verdict: Verdict::default(),
    };
    let bytes = match codex_core::fsutil::read_regular_capped(&job.path, MAX_FILE_BYTES) {
        Ok(b) => b,
        Err(e) => {
            report.error = Some(format!("cannot read: {e}"));
            return report;
        }
    };
    report.bytes = bytes.len() as u64;
    let v = policy.scan(&bytes, opts);
    let idx = LineIndex::new(&bytes);
    report.findings = v
        .findings
        .iter()
        .map(|f| {
            let (line, column) = idx.line_col(f.start);
            let rule = &policy.rules[f.rule];
            Located {
                file: name.clone(),
                line,
                column,
                rule: rule.id.clone(),
                action: rule.action.name().into(),
                severity: rule.severity.name().into(),
                disposition: f.disposition,
                fragment: mask_fragment(&bytes[f.start..f.end]),
            }
        })
        .collect();
    report.blocked = v.blocked;
    if let Some(out) = &job.redact_to {
        let red = policy.redact(&bytes, &v);
        let written = match out.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) => codex_core::fsutil::create_dir_all(dir),
            None => Ok(()),
        }
        .and_then(|()| codex_core::fsutil::atomic_write(out, &red));
        if let Err(e) = written {
            report.error = Some(format!("cannot write {}: {e}", out.display()));
        }
    }
    report.verdict = v;
    report
}

/// Scans every job in parallel; reports in input order.
pub fn scan_files(policy: &Policy, jobs: &[Job], opts: ScanOptions) -> Vec<FileReport> {
    jobs.par_iter().map(|j| scan_one(policy, j, opts)).collect()
}

/// Where the redacted copy of `path` goes under `out_dir`: the path as given, made relative
/// (a leading `/` or `..` dropped), so distinct inputs never collide.
pub fn redacted_path(out_dir: &Path, path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    out_dir.join(rel)
}
