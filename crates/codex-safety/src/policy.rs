//! Policy files: TOML (codex's own) or the Python original's YAML/JSON format, interpreted into
//! typed rules and compiled, with every bad rule reported at once.
//!
//! Both formats are read into a `serde_json::Value` first and walked by hand: that is what lets
//! one load report a bad regex in rule 2, an unknown action in rule 5 and a duplicate id in rule
//! 9 together, where a derived deserializer stops at the first.

use crate::scan::Scanner;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;
use std::path::Path;

/// The embedded default policy (`default_policy.toml`).
pub const DEFAULT_POLICY_TOML: &str = include_str!("default_policy.toml");
/// The name the embedded policy goes by in reports and manifests.
pub const DEFAULT_POLICY_NAME: &str = "<embedded>/default_policy.toml";

/// Largest policy file read (a real one is a few KiB).
const MAX_POLICY_BYTES: u64 = 4 << 20;
/// Longest regex or literal accepted; longer ones are almost surely pasted data.
const MAX_PATTERN_CHARS: usize = 8192;
/// Compiled-regex memory bound per pattern (the regex crate's default is 10 MiB too).
pub(crate) const REGEX_SIZE_LIMIT: usize = 10 << 20;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The text is refused (a training document dropped), unless an allow rule overlaps.
    Block,
    /// The matched span is replaced by the rule's replacement (or the policy's token).
    Redact,
    /// Reported only.
    Flag,
    /// Overrides block matches whose spans overlap it.
    Allow,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "block" | "deny" => Action::Block,
            "redact" => Action::Redact,
            "flag" => Action::Flag,
            "allow" => Action::Allow,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Redact => "redact",
            Action::Flag => "flag",
            Action::Allow => "allow",
        }
    }
}

/// Where a text is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Train,
    Eval,
    Prompt,
    Output,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Train, Stage::Eval, Stage::Prompt, Stage::Output];
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "train" => Stage::Train,
            "eval" => Stage::Eval,
            "prompt" => Stage::Prompt,
            "output" => Stage::Output,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Stage::Train => "train",
            Stage::Eval => "eval",
            Stage::Prompt => "prompt",
            Stage::Output => "output",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" | "moderate" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// A validator a regex match must also pass (cuts false positives of number-shaped rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// Luhn checksum over the digits (payment cards).
    Luhn,
    /// Not an impossible SSN (area 000/666/9xx, group 00, serial 0000).
    Ssn,
}

/// A regex with its flags (`i`, `m`, `s`, `x`), normalized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pattern {
    pub regex: String,
    pub flags: String,
}

impl Pattern {
    /// The pattern with its flags inlined, as compiled.
    pub fn compiled_source(&self) -> String {
        if self.flags.is_empty() {
            self.regex.clone()
        } else {
            format!("(?{}){}", self.flags, self.regex)
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub id: String,
    pub action: Action,
    /// Stages the rule applies to (never empty).
    pub stages: Vec<Stage>,
    pub severity: Severity,
    pub description: String,
    /// Replaces matches of a redact/block rule; `None` = the policy's `redaction_token`.
    pub replacement: Option<String>,
    pub reason: Option<String>,
    /// Case-insensitive (ASCII) literals.
    pub literals: Vec<String>,
    pub patterns: Vec<Pattern>,
    pub check: Option<Check>,
    /// Minimum Shannon entropy (bits/char) of the matched span.
    pub min_entropy: Option<f64>,
}

impl Rule {
    pub fn applies_to(&self, stage: Stage) -> bool {
        self.stages.contains(&stage)
    }
}

/// A loaded, validated and compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub version: String,
    pub enabled: bool,
    /// Blocks are let through but recorded as bypassed.
    pub bypass: bool,
    pub redaction_token: String,
    pub rules: Vec<Rule>,
    /// Where it came from (a path or [`DEFAULT_POLICY_NAME`]).
    pub source: String,
    /// Keys accepted for compatibility with the original but without effect here.
    pub warnings: Vec<String>,
    /// sha256 over the normalized rules and settings: the same policy in TOML or YAML hashes
    /// the same, a changed rule changes it.
    pub hash: String,
    pub(crate) scanner: Scanner,
}

/// Every problem of a policy, each naming its rule.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyError {
    pub source: String,
    pub issues: Vec<String>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid safety policy {} ({} problem{}):",
            self.source,
            self.issues.len(),
            if self.issues.len() == 1 { "" } else { "s" }
        )?;
        for i in &self.issues {
            write!(f, "\n  - {i}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

impl PolicyError {
    fn one(source: &str, msg: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            issues: vec![msg.into()],
        }
    }
}

/// The syntax of a policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
    Json,
}

impl Format {
    /// By extension: `.yaml`/`.yml` YAML, `.json` JSON, anything else TOML.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            Some("json") => Format::Json,
            _ => Format::Toml,
        }
    }
}

impl Policy {
    /// The embedded default policy.
    pub fn default_policy() -> Self {
        Self::parse(DEFAULT_POLICY_TOML, Format::Toml, DEFAULT_POLICY_NAME)
            .expect("the embedded default policy is valid (tested)")
    }

    /// Reads a policy file (format by extension).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let source = path.display().to_string();
        let bytes = codex_core::fsutil::read_regular_capped(path, MAX_POLICY_BYTES)
            .map_err(|e| PolicyError::one(&source, format!("cannot read: {e}")))?;
        let text =
            String::from_utf8(bytes).map_err(|_| PolicyError::one(&source, "not UTF-8 text"))?;
        Self::parse(&text, Format::of(path), &source)
    }

    /// `path` when given, else the embedded default.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self, PolicyError> {
        match path {
            Some(p) => Self::load(p),
            None => Ok(Self::default_policy()),
        }
    }

    pub fn parse(text: &str, format: Format, source: &str) -> Result<Self, PolicyError> {
        let value: Value = match format {
            Format::Toml => toml::from_str(text).map_err(|e| e.to_string()),
            Format::Yaml => serde_norway::from_str(text).map_err(|e| e.to_string()),
            Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        }
        .map_err(|e| PolicyError::one(source, format!("syntax: {}", e.trim_end())))?;
        Self::from_value(&value, source)
    }

    /// Interprets a parsed document; see the module docs for the accepted keys.
    pub fn from_value(doc: &Value, source: &str) -> Result<Self, PolicyError> {
        let Some(top) = doc.as_object() else {
            return Err(PolicyError::one(
                source,
                "the policy must be a mapping with `rules`",
            ));
        };
        let mut issues = Vec::new();
        let mut warnings = Vec::new();
        for key in top.keys() {
            match key.as_str() {
                "version" | "enabled" | "bypass" | "redaction_token" | "rules" | "allow"
                | "log_path" => {}
                // The original's shipped YAML: accepted, no effect (said so, not silently).
                "allow_bypass" | "logging" => warnings.push(format!(
                    "`{key}` has no effect in codex (bypass is `bypass = true` or CODEX_SAFETY_BYPASS)"
                )),
                other => issues.push(format!("unknown top-level key `{other}`")),
            }
        }
        let version = match top.get("version") {
            None => "1".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(v) => {
                issues.push(format!("`version` must be a number or string, not {v}"));
                String::new()
            }
        };
        let mut flag = |name: &str, default: bool| match top.get(name) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                issues.push(format!("`{name}` must be true or false, not {v}"));
                default
            }
        };
        let enabled = flag("enabled", true);
        let bypass = flag("bypass", false);
        let redaction_token = match top.get("redaction_token") {
            None => "{REDACTED}".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => {
                issues.push(format!("`redaction_token` must be a string, not {v}"));
                String::new()
            }
        };
        let mut rules = Vec::new();
        match top.get("rules") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, r) in list.iter().enumerate() {
                    if let Some(rule) = parse_rule(r, i, &mut issues) {
                        rules.push(rule);
                    }
                }
            }
            Some(v) => issues.push(format!("`rules` must be a list, not {v}")),
        }
        // The original's shortcut: `allow: {literals, regex, patterns}` → allow.rule_<i>.
        if let Some(a) = top.get("allow") {
            let mut m = Vec::new();
            let label = "allow".to_string();
            let (literals, patterns) = parse_match(a, &label, &mut m);
            issues.extend(m);
            for l in literals {
                let id = format!("allow.rule_{}", rules.len());
                rules.push(allow_rule(id, vec![l], vec![]));
            }
            for p in patterns {
                let id = format!("allow.rule_{}", rules.len());
                rules.push(allow_rule(id, vec![], vec![p]));
            }
        }
        let mut seen = HashSet::new();
        for (i, r) in rules.iter().enumerate() {
            if !seen.insert(r.id.as_str()) {
                issues.push(format!("rules[{i}] (`{}`): duplicate id", r.id));
            }
        }
        let scanner = Scanner::compile(&rules, &mut issues);
        if !issues.is_empty() {
            // In rule order (stable), top-level problems first.
            issues.sort_by_key(|i| {
                i.strip_prefix("rules[")
                    .and_then(|r| r.split(']').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .map_or(0, |n| n + 1)
            });
            return Err(PolicyError {
                source: source.into(),
                issues,
            });
        }
        let normalized = serde_json::json!({
            "enabled": enabled, "bypass": bypass, "redaction_token": redaction_token,
            "rules": rules,
        });
        let hash = codex_core::hash::sha256_bytes(normalized.to_string().as_bytes());
        Ok(Self {
            version,
            enabled,
            bypass,
            redaction_token,
            rules,
            source: source.into(),
            warnings,
            hash,
            scanner,
        })
    }

    /// The replacement text of `rule`.
    pub fn replacement(&self, rule: usize) -> &str {
        self.rules[rule]
            .replacement
            .as_deref()
            .unwrap_or(&self.redaction_token)
    }
}

fn allow_rule(id: String, literals: Vec<String>, patterns: Vec<Pattern>) -> Rule {
    Rule {
        id,
        action: Action::Allow,
        stages: Stage::ALL.to_vec(),
        severity: Severity::Info,
        description: String::new(),
        replacement: None,
        reason: None,
        literals,
        patterns,
        check: None,
        min_entropy: None,
    }
}

const RULE_KEYS: &[&str] = &[
    "id",
    "rule_id",
    "action",
    "match",
    "literal",
    "literals",
    "regex",
    "pattern",
    "patterns",
    "flags",
    "applies_to",
    "stage",
    "severity",
    "description",
    "replacement",
    "reason",
    "check",
    "min_entropy",
];

fn str_field<'a>(
    r: &'a serde_json::Map<String, Value>,
    key: &str,
    label: &str,
    issues: &mut Vec<String>,
) -> Option<&'a str> {
    match r.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(v) => {
            issues.push(format!("{label}: `{key}` must be a string, not {v}"));
            None
        }
    }
}

/// One rule; `None` (with issues) when it cannot be built at all.
fn parse_rule(v: &Value, i: usize, issues: &mut Vec<String>) -> Option<Rule> {
    let Some(r) = v.as_object() else {
        issues.push(format!("rules[{i}]: must be a mapping, not {v}"));
        return None;
    };
    let id = match (r.get("id"), r.get("rule_id")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) if !s.trim().is_empty() => {
            s.clone()
        }
        (None, None) => format!("rule_{i}"),
        (Some(v), _) | (None, Some(v)) => {
            issues.push(format!(
                "rules[{i}]: `id` must be a non-empty string, not {v}"
            ));
            format!("rule_{i}")
        }
    };
    let label = format!("rules[{i}] (`{id}`)");
    let before = issues.len();
    for k in r.keys() {
        if !RULE_KEYS.contains(&k.as_str()) {
            issues.push(format!("{label}: unknown key `{k}`"));
        }
    }
    let action = match str_field(r, "action", &label, issues) {
        None => Action::Block,
        Some(s) => Action::parse(s).unwrap_or_else(|| {
            issues.push(format!(
                "{label}: unknown action `{s}` (block, redact, flag or allow)"
            ));
            Action::Block
        }),
    };
    let severity = match str_field(r, "severity", &label, issues) {
        None => Severity::Medium,
        Some(s) => Severity::parse(s).unwrap_or_else(|| {
            issues.push(format!(
                "{label}: unknown severity `{s}` (info, low, medium, high, critical)"
            ));
            Severity::Medium
        }),
    };
    let stages = parse_stages(r, &label, issues);
    // Matchers: `match` (the original's form) and/or the same keys on the rule itself.
    let mut literals = Vec::new();
    let mut patterns = Vec::new();
    if let Some(m) = r.get("match") {
        let (l, p) = parse_match(m, &label, issues);
        literals.extend(l);
        patterns.extend(p);
    }
    let mut own = serde_json::Map::new();
    for k in [
        "literal", "literals", "regex", "pattern", "patterns", "flags",
    ] {
        if let Some(v) = r.get(k) {
            own.insert(k.to_string(), v.clone());
        }
    }
    if !own.is_empty() {
        let (l, p) = parse_match(&Value::Object(own), &label, issues);
        literals.extend(l);
        patterns.extend(p);
    }
    if literals.is_empty() && patterns.is_empty() && issues.len() == before {
        issues.push(format!(
            "{label}: empty match (give `literals`, `regex` or `patterns`); a rule without one would never fire"
        ));
    }
    let check = match str_field(r, "check", &label, issues) {
        None => None,
        Some("luhn") => Some(Check::Luhn),
        Some("ssn") => Some(Check::Ssn),
        Some(s) => {
            issues.push(format!("{label}: unknown check `{s}` (luhn or ssn)"));
            None
        }
    };
    let min_entropy = match r.get("min_entropy") {
        None => None,
        Some(v) => match v.as_f64() {
            Some(e) if e.is_finite() && (0.0..=8.0).contains(&e) => Some(e),
            _ => {
                issues.push(format!(
                    "{label}: `min_entropy` must be a number of bits per character in [0, 8], not {v}"
                ));
                None
            }
        },
    };
    Some(Rule {
        id,
        action,
        stages,
        severity,
        description: str_field(r, "description", &label, issues)
            .unwrap_or_default()
            .to_string(),
        replacement: str_field(r, "replacement", &label, issues).map(str::to_string),
        reason: str_field(r, "reason", &label, issues).map(str::to_string),
        literals,
        patterns,
        check,
        min_entropy,
    })
}

fn parse_stages(
    r: &serde_json::Map<String, Value>,
    label: &str,
    issues: &mut Vec<String>,
) -> Vec<Stage> {
    let raw = r.get("applies_to").or_else(|| r.get("stage"));
    let before = issues.len();
    let names: Vec<&str> = match raw {
        // Without `applies_to` a rule applies everywhere (see the crate docs for why this
        // differs from the original's prompt+output default).
        None | Some(Value::Null) => return Stage::ALL.to_vec(),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => {
            let mut v = Vec::new();
            for x in a {
                match x.as_str() {
                    Some(s) => v.push(s),
                    None => issues.push(format!(
                        "{label}: `applies_to` entries must be strings, not {x}"
                    )),
                }
            }
            v
        }
        Some(v) => {
            issues.push(format!(
                "{label}: `applies_to` must be a list of stages or \"all\", not {v}"
            ));
            return Stage::ALL.to_vec();
        }
    };
    let mut stages = Vec::new();
    for n in names {
        match n.to_ascii_lowercase().as_str() {
            "all" | "*" | "unspecified" => stages.extend(Stage::ALL),
            // The original's shipped YAML says `stage: both` for prompt and output.
            "both" => stages.extend([Stage::Prompt, Stage::Output]),
            s => match Stage::parse(s) {
                Some(st) => stages.push(st),
                None => issues.push(format!(
                    "{label}: unknown stage `{n}` (train, eval, prompt, output or all)"
                )),
            },
        }
    }
    stages.sort();
    stages.dedup();
    if stages.is_empty() && before == issues.len() {
        issues.push(format!(
            "{label}: `applies_to` is empty; the rule would never apply"
        ));
    }
    stages
}

fn parse_flags(v: Option<&Value>, label: &str, issues: &mut Vec<String>) -> String {
    let names: Vec<String> = match v {
        None | Some(Value::Null) => return String::new(),
        Some(Value::String(s)) => {
            if s.contains('|') || s.contains(',') {
                s.split(['|', ',']).map(|x| x.trim().to_string()).collect()
            } else if s.len() > 1 && s.chars().all(|c| "imsxIMSX".contains(c)) {
                s.chars().map(String::from).collect()
            } else {
                vec![s.trim().to_string()]
            }
        }
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect(),
        Some(v) => {
            issues.push(format!(
                "{label}: `flags` must be a string or list, not {v}"
            ));
            return String::new();
        }
    };
    let mut out = String::new();
    for n in names.iter().filter(|n| !n.is_empty()) {
        let c = match n.to_ascii_uppercase().trim_start_matches("RE.") {
            "I" | "IGNORECASE" => 'i',
            "M" | "MULTILINE" => 'm',
            "S" | "DOTALL" => 's',
            "X" | "VERBOSE" => 'x',
            _ => {
                issues.push(format!("{label}: unknown regex flag `{n}` (I, M, S or X)"));
                continue;
            }
        };
        if !out.contains(c) {
            out.push(c);
        }
    }
    out
}

/// Literals and patterns of a `match` value: a string (a literal), a list of literals, or a
/// mapping `{literal, literals, regex, pattern, flags, patterns: [str | {pattern, flags}]}`.
fn parse_match(m: &Value, label: &str, issues: &mut Vec<String>) -> (Vec<String>, Vec<Pattern>) {
    let mut literals = Vec::new();
    let mut patterns = Vec::new();
    let mut lit = |s: &str, issues: &mut Vec<String>| {
        if s.is_empty() {
            issues.push(format!(
                "{label}: empty literal (it would match everywhere)"
            ));
        } else if s.chars().count() > MAX_PATTERN_CHARS {
            issues.push(format!(
                "{label}: literal longer than {MAX_PATTERN_CHARS} characters"
            ));
        } else {
            literals.push(s.to_string());
        }
    };
    match m {
        Value::String(s) => lit(s, issues),
        Value::Array(a) => {
            for x in a {
                match x.as_str() {
                    Some(s) => lit(s, issues),
                    None => {
                        issues.push(format!("{label}: match literals must be strings, not {x}"))
                    }
                }
            }
        }
        Value::Object(o) => {
            for k in o.keys() {
                if ![
                    "literal", "literals", "regex", "pattern", "patterns", "flags",
                ]
                .contains(&k.as_str())
                {
                    issues.push(format!("{label}: unknown match key `{k}`"));
                }
            }
            if let Some(v) = o.get("literal") {
                match v.as_str() {
                    Some(s) => lit(s, issues),
                    None => issues.push(format!("{label}: `literal` must be a string, not {v}")),
                }
            }
            match o.get("literals") {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) => {
                    for x in a {
                        match x.as_str() {
                            Some(s) => lit(s, issues),
                            None => issues.push(format!(
                                "{label}: `literals` entries must be strings, not {x}"
                            )),
                        }
                    }
                }
                Some(v) => issues.push(format!("{label}: `literals` must be a list, not {v}")),
            }
            let flags = parse_flags(o.get("flags"), label, issues);
            let mut pat = |s: &str, flags: String, issues: &mut Vec<String>| {
                if s.is_empty() {
                    issues.push(format!("{label}: empty regex (it would match everywhere)"));
                } else if s.chars().count() > MAX_PATTERN_CHARS {
                    issues.push(format!(
                        "{label}: regex longer than {MAX_PATTERN_CHARS} characters"
                    ));
                } else {
                    patterns.push(Pattern {
                        regex: s.to_string(),
                        flags,
                    });
                }
            };
            for k in ["regex", "pattern"] {
                if let Some(v) = o.get(k) {
                    match v.as_str() {
                        Some(s) => pat(s, flags.clone(), issues),
                        None => issues.push(format!("{label}: `{k}` must be a string, not {v}")),
                    }
                }
            }
            match o.get("patterns") {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) => {
                    for x in a {
                        match x {
                            Value::String(s) => pat(s, flags.clone(), issues),
                            Value::Object(p) => match p.get("pattern").and_then(Value::as_str) {
                                Some(s) => {
                                    let f = parse_flags(p.get("flags"), label, issues);
                                    pat(s, f, issues)
                                }
                                None => issues.push(format!(
                                    "{label}: a `patterns` entry needs a string `pattern`"
                                )),
                            },
                            _ => issues.push(format!(
                                "{label}: `patterns` entries must be strings or {{pattern, flags}}, not {x}"
                            )),
                        }
                    }
                }
                Some(v) => issues.push(format!("{label}: `patterns` must be a list, not {v}")),
            }
        }
        other => issues.push(format!(
            "{label}: `match` must be a string, list or mapping, not {other}"
        )),
    }
    (literals, patterns)
}
