//! Scanning: one `RegexSet` pass says which regexes match a document and one Aho-Corasick pass
//! finds every literal; only the regexes that matched are run again for their spans. Documents
//! are scanned in parallel (rayon). Then the original's semantics: allow matches override
//! overlapping block matches, bypass lets blocks through but records them, redaction rewrites
//! only the matched spans.

use crate::policy::{Action, Check, Policy, REGEX_SIZE_LIMIT, Rule, Stage};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use rayon::prelude::*;
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Serialize;

/// The compiled matchers of a policy.
#[derive(Debug)]
pub(crate) struct Scanner {
    set: RegexSet,
    regexes: Vec<Regex>,
    /// Rule index of each regex.
    regex_rule: Vec<usize>,
    literals: Option<AhoCorasick>,
    /// Rule index of each literal.
    literal_rule: Vec<usize>,
}

impl Scanner {
    /// Compiles every pattern; each regex error becomes an issue naming its rule.
    pub(crate) fn compile(rules: &[Rule], issues: &mut Vec<String>) -> Scanner {
        let mut sources = Vec::new();
        let mut regexes = Vec::new();
        let mut regex_rule = Vec::new();
        let mut lits = Vec::new();
        let mut literal_rule = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            for p in &r.patterns {
                let src = p.compiled_source();
                match RegexBuilder::new(&src).size_limit(REGEX_SIZE_LIMIT).build() {
                    Ok(re) => {
                        regexes.push(re);
                        regex_rule.push(i);
                        sources.push(src);
                    }
                    Err(e) => issues.push(format!(
                        "rules[{i}] (`{}`): bad regex `{}`: {}",
                        r.id,
                        p.regex,
                        one_line(&e.to_string())
                    )),
                }
            }
            for l in &r.literals {
                lits.push(l.clone());
                literal_rule.push(i);
            }
        }
        // The set's lazy DFA builds states for every pattern at once: with the default 2 MiB
        // cache it thrashes on the default policy (~7 MB/s); 32 MiB per thread lets the states
        // stay, ~10x faster once warm (measured, see benches/safety_scan.sh).
        let set = RegexSetBuilder::new(&sources)
            .size_limit(REGEX_SIZE_LIMIT.saturating_mul(8))
            .dfa_size_limit(32 << 20)
            .build()
            .unwrap_or_else(|e| {
                issues.push(format!(
                    "the rules' regexes together are too large to compile: {}",
                    one_line(&e.to_string())
                ));
                RegexSet::empty()
            });
        let literals = if lits.is_empty() {
            None
        } else {
            match AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&lits)
            {
                Ok(ac) => Some(ac),
                Err(e) => {
                    issues.push(format!("the rules' literals cannot be compiled: {e}"));
                    None
                }
            }
        };
        Scanner {
            set,
            regexes,
            regex_rule,
            literals,
            literal_rule,
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What happened to one match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// A block match that makes the text blocked.
    Blocked,
    /// A block match overridden by an overlapping allow match.
    Overridden,
    /// A block match let through by bypass (recorded, and its span still redacted).
    Bypassed,
    Redacted,
    Flagged,
    /// An allow rule's own match.
    Allowed,
}

/// One match of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Index into `Policy::rules`.
    pub rule: usize,
    /// Byte span in the text.
    pub start: usize,
    pub end: usize,
    pub disposition: Disposition,
}

/// The decision on one text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// In text order.
    pub findings: Vec<Finding>,
    /// Some block match is neither overridden nor bypassed.
    pub blocked: bool,
    /// Some block match was let through by bypass.
    pub bypassed: bool,
}

impl Verdict {
    /// Whether anything is to be rewritten by [`Policy::redact`].
    pub fn needs_redaction(&self) -> bool {
        self.findings.iter().any(|f| f.redacts())
    }
    /// Ids of the rules that block.
    pub fn blocking_rules<'p>(&self, policy: &'p Policy) -> Vec<&'p str> {
        let mut ids: Vec<&str> = self
            .findings
            .iter()
            .filter(|f| f.disposition == Disposition::Blocked)
            .map(|f| policy.rules[f.rule].id.as_str())
            .collect();
        ids.dedup();
        ids
    }
}

impl Finding {
    /// Whether the span is replaced in the sanitized text.
    pub fn redacts(&self) -> bool {
        matches!(
            self.disposition,
            Disposition::Blocked | Disposition::Bypassed | Disposition::Redacted
        )
    }
}

/// How a text is checked.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    pub stage: Stage,
    /// Per-call bypass (the policy's own `bypass` is always honoured too).
    pub bypass: bool,
}

impl Policy {
    /// Matches of every rule that applies to `opts.stage`, with their dispositions.
    pub fn scan(&self, text: &[u8], opts: ScanOptions) -> Verdict {
        if !self.enabled {
            return Verdict::default();
        }
        let sc = &self.scanner;
        let mut raw: Vec<(usize, usize, usize)> = Vec::new();
        for idx in sc.set.matches(text).iter() {
            let ri = sc.regex_rule[idx];
            let rule = &self.rules[ri];
            if !rule.applies_to(opts.stage) {
                continue;
            }
            for caps in sc.regexes[idx].captures_iter(text) {
                // The first group that took part is the secret (`password = "<this>"`);
                // without groups, the whole match.
                let m = (1..caps.len())
                    .find_map(|g| caps.get(g))
                    .or_else(|| caps.get(0));
                let Some(m) = m else { continue };
                if m.is_empty() || !passes_checks(rule, m.as_bytes()) {
                    continue;
                }
                raw.push((ri, m.start(), m.end()));
            }
        }
        if let Some(ac) = &sc.literals {
            for m in ac.find_overlapping_iter(text) {
                let ri = sc.literal_rule[m.pattern().as_usize()];
                if self.rules[ri].applies_to(opts.stage) {
                    raw.push((ri, m.start(), m.end()));
                }
            }
        }
        raw.sort_unstable_by_key(|&(r, s, e)| (s, e, r));
        raw.dedup();
        let allows: Vec<(usize, usize)> = raw
            .iter()
            .filter(|(r, ..)| self.rules[*r].action == Action::Allow)
            .map(|&(_, s, e)| (s, e))
            .collect();
        let bypass = opts.bypass || self.bypass;
        let mut v = Verdict::default();
        for (rule, start, end) in raw {
            let disposition = match self.rules[rule].action {
                Action::Allow => Disposition::Allowed,
                Action::Flag => Disposition::Flagged,
                Action::Redact => Disposition::Redacted,
                Action::Block => {
                    if allows.iter().any(|&(s, e)| s < end && start < e) {
                        Disposition::Overridden
                    } else if bypass {
                        v.bypassed = true;
                        Disposition::Bypassed
                    } else {
                        v.blocked = true;
                        Disposition::Blocked
                    }
                }
            };
            v.findings.push(Finding {
                rule,
                start,
                end,
                disposition,
            });
        }
        v
    }

    /// [`Policy::scan`] over many documents, in parallel; results in input order.
    pub fn scan_many<T: AsRef<[u8]> + Sync>(&self, docs: &[T], opts: ScanOptions) -> Vec<Verdict> {
        docs.par_iter()
            .map(|d| self.scan(d.as_ref(), opts))
            .collect()
    }

    /// The text with every redacting span replaced (overlapping spans merged, the first
    /// rule's replacement used); bytes outside the spans are copied unchanged.
    pub fn redact(&self, text: &[u8], v: &Verdict) -> Vec<u8> {
        let mut spans: Vec<(usize, usize, usize)> = v
            .findings
            .iter()
            .filter(|f| f.redacts())
            .map(|f| (f.start, f.end, f.rule))
            .collect();
        if spans.is_empty() {
            return text.to_vec();
        }
        spans.sort_unstable();
        let mut out = Vec::with_capacity(text.len());
        let mut pos = 0;
        let mut i = 0;
        while i < spans.len() {
            let (start, mut end, rule) = spans[i];
            i += 1;
            while i < spans.len() && spans[i].0 < end {
                end = end.max(spans[i].1);
                i += 1;
            }
            let start = start.max(pos);
            out.extend_from_slice(&text[pos..start]);
            out.extend_from_slice(self.replacement(rule).as_bytes());
            pos = end.max(pos);
        }
        out.extend_from_slice(&text[pos..]);
        out
    }

    /// [`Policy::redact`] for text that must stay a `String`.
    pub fn redact_str(&self, text: &str, v: &Verdict) -> String {
        let bytes = self.redact(text.as_bytes(), v);
        // Spans come from UTF-8-aware regexes and ASCII literals, so the result is UTF-8;
        // the lossy path only guards against a policy author's `(?-u)` pattern.
        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }
}

fn passes_checks(rule: &Rule, span: &[u8]) -> bool {
    match rule.check {
        Some(Check::Luhn) if !luhn(span) => return false,
        Some(Check::Ssn) if !plausible_ssn(span) => return false,
        _ => {}
    }
    match rule.min_entropy {
        Some(min) => shannon_entropy(span) >= min,
        None => true,
    }
}

/// Luhn checksum over the digits of `s` (separators ignored), 13 to 19 digits.
pub fn luhn(s: &[u8]) -> bool {
    let digits: Vec<u32> = s
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
        .collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `AAA-GG-SSSS` that the SSA could have issued.
fn plausible_ssn(s: &[u8]) -> bool {
    let parts: Vec<&[u8]> = s.split(|&b| b == b'-').collect();
    let [a, g, n] = parts[..] else { return false };
    a != b"000" && a != b"666" && a.first() != Some(&b'9') && g != b"00" && n != b"0000"
}

/// Shannon entropy in bits per byte.
pub fn shannon_entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// A printable hint of a matched fragment that never holds the whole secret: a short prefix
/// (only for long spans), stars for the rest (at most 12), and the length.
pub fn mask_fragment(fragment: &[u8]) -> String {
    let text = String::from_utf8_lossy(fragment);
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let shown = match n {
        0..=7 => 0,
        8..=15 => 2,
        _ => 4,
    };
    let mut out: String = chars[..shown]
        .iter()
        .map(|c| if c.is_control() { ' ' } else { *c })
        .collect();
    let stars = (n - shown).min(12);
    out.extend(std::iter::repeat_n('*', stars));
    if n - shown > stars {
        out.push('…');
    }
    out.push_str(&format!(" ({n} chars)"));
    out
}

/// Byte offset → 1-based line and column (in characters), by binary search over line starts.
pub struct LineIndex<'a> {
    text: &'a [u8],
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a [u8]) -> Self {
        let mut starts = vec![0];
        starts.extend(
            text.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Self { text, starts }
    }

    pub fn line_col(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= at);
        let start = self.starts[line - 1];
        let col = String::from_utf8_lossy(&self.text[start..at])
            .chars()
            .count()
            + 1;
        (line, col)
    }
}
