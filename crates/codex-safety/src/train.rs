//! `[safety]` of a training config and its application to the documents of a run, before
//! tokenization: blocked documents dropped (or the run failed), redactions applied, counts
//! per rule kept for the run record and the token cache manifest.

use crate::policy::{Policy, PolicyError, Stage};
use crate::scan::{ScanOptions, Verdict};
use crate::tally::Tally;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What happens to a document a block rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBlock {
    /// Leave it out of the corpus (counted).
    #[default]
    Drop,
    /// Stop the run with the list of blocked documents.
    Fail,
}

/// `[safety]` in a training config. Off by default, so runs and token caches made without it
/// keep their data and cache keys; `enabled = true` without `policy` uses the embedded default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SafetyConfig {
    /// Apply the policy to the training and evaluation texts.
    pub enabled: bool,
    /// Policy file (TOML, or the original's YAML/JSON); empty = the embedded default.
    pub policy: String,
    pub on_block: OnBlock,
}

impl SafetyConfig {
    /// The policy in force (`None` when disabled).
    pub fn load(&self) -> Result<Option<Policy>, PolicyError> {
        if !self.enabled {
            return Ok(None);
        }
        let path = (!self.policy.trim().is_empty()).then(|| Path::new(&self.policy));
        Policy::load_or_default(path).map(Some)
    }
}

/// What the policy did to a corpus: recorded in the token cache manifest and the run record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SafetyReport {
    pub policy: String,
    pub policy_sha256: String,
    pub on_block: OnBlock,
    pub bypass: bool,
    pub documents_in: u64,
    pub documents_out: u64,
    pub documents_dropped: u64,
    pub documents_redacted: u64,
    /// Per-rule counts (matches, documents, dispositions).
    pub tally: Tally,
}

/// A document a block rule matched: where, and which rules (never the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub index: usize,
    pub rules: Vec<String>,
}

/// The texts that survive, in order, with the index each had in the input.
pub struct Filtered {
    pub kept: Vec<(usize, String)>,
    pub blocked: Vec<Blocked>,
    pub report: SafetyReport,
}

/// Checks `texts` against the rules of the `train` and `eval` stages (a training text ends up
/// in both splits), in parallel. Blocked texts are left out; redactions are applied.
pub fn filter_texts(
    policy: &Policy,
    texts: Vec<String>,
    on_block: OnBlock,
    bypass: bool,
) -> Filtered {
    let scan = |t: &str| -> Verdict {
        let mut v = policy.scan(
            t.as_bytes(),
            ScanOptions {
                stage: Stage::Train,
                bypass,
            },
        );
        // Rules for eval only (rare): merge their findings.
        if policy
            .rules
            .iter()
            .any(|r| r.applies_to(Stage::Eval) && !r.applies_to(Stage::Train))
        {
            let e = policy.scan(
                t.as_bytes(),
                ScanOptions {
                    stage: Stage::Eval,
                    bypass,
                },
            );
            v.blocked |= e.blocked;
            v.bypassed |= e.bypassed;
            v.findings.extend(e.findings);
            v.findings
                .sort_unstable_by_key(|f| (f.start, f.end, f.rule));
            v.findings.dedup();
        }
        v
    };
    let verdicts: Vec<Verdict> = texts.par_iter().map(|t| scan(t)).collect();
    let mut report = SafetyReport {
        policy: policy.source.clone(),
        policy_sha256: policy.hash.clone(),
        on_block,
        bypass: bypass || policy.bypass,
        documents_in: texts.len() as u64,
        ..Default::default()
    };
    let mut kept = Vec::with_capacity(texts.len());
    let mut blocked = Vec::new();
    for (i, (text, v)) in texts.into_iter().zip(verdicts).enumerate() {
        report.tally.add(policy, &v);
        if v.blocked {
            blocked.push(Blocked {
                index: i,
                rules: v
                    .blocking_rules(policy)
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            });
            continue;
        }
        if v.needs_redaction() {
            report.documents_redacted += 1;
            kept.push((i, policy.redact_str(&text, &v)));
        } else {
            kept.push((i, text));
        }
    }
    report.documents_out = kept.len() as u64;
    report.documents_dropped = blocked.len() as u64;
    Filtered {
        kept,
        blocked,
        report,
    }
}
