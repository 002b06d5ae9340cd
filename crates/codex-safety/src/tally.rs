//! Per-rule counts over many documents: what `codex data scan` prints and a training run
//! records.

use crate::policy::Policy;
use crate::scan::{Disposition, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Counts of one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCount {
    pub action: String,
    pub severity: String,
    /// Matches of the rule.
    pub matches: u64,
    /// Documents where it matched.
    pub documents: u64,
    /// Matches by disposition (`blocked`, `overridden`, `bypassed`, `redacted`, …).
    pub by_disposition: BTreeMap<String, u64>,
}

/// Counts over a set of documents, keyed by rule id (sorted, so reports are stable).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub documents: u64,
    pub documents_blocked: u64,
    pub documents_bypassed: u64,
    pub documents_redacted: u64,
    pub rules: BTreeMap<String, RuleCount>,
}

fn disposition_name(d: Disposition) -> &'static str {
    match d {
        Disposition::Blocked => "blocked",
        Disposition::Overridden => "overridden",
        Disposition::Bypassed => "bypassed",
        Disposition::Redacted => "redacted",
        Disposition::Flagged => "flagged",
        Disposition::Allowed => "allowed",
    }
}

impl Tally {
    pub fn add(&mut self, policy: &Policy, v: &Verdict) {
        self.documents += 1;
        self.documents_blocked += u64::from(v.blocked);
        self.documents_bypassed += u64::from(v.bypassed);
        self.documents_redacted += u64::from(!v.blocked && v.needs_redaction());
        let mut seen = Vec::new();
        for f in &v.findings {
            let rule = &policy.rules[f.rule];
            let c = self
                .rules
                .entry(rule.id.clone())
                .or_insert_with(|| RuleCount {
                    action: rule.action.name().into(),
                    severity: rule.severity.name().into(),
                    ..Default::default()
                });
            c.matches += 1;
            *c.by_disposition
                .entry(disposition_name(f.disposition).into())
                .or_default() += 1;
            if !seen.contains(&f.rule) {
                seen.push(f.rule);
                c.documents += 1;
            }
        }
    }

    /// Whether any rule blocked a document.
    pub fn any_blocked(&self) -> bool {
        self.documents_blocked > 0
    }
}
