//! The policy applied to generation (`codex generate`): stage `prompt` on the prompt before it
//! is encoded, stage `output` on the generated text as it grows, and banned strings kept out of
//! the output at the token level.
//!
//! Choices (documented in `codex generate --help` too):
//! - **Banned strings** are the literals of the block rules that apply to the output stage (the
//!   original's `mask_logits(banned_ids)`, with the ids derived from the policy). A token is
//!   masked (its logit set to −inf before sampling) when its own text contains a banned string,
//!   or when appending it to the text generated so far would complete one (checked on the
//!   decoded text, so a string split over several tokens is caught at its last token). The mask
//!   cannot see the future: a banned string is masked even where an allow rule would have
//!   overridden it had the text gone on (`drop database schema_example`). Bypass (policy
//!   `bypass` or `CODEX_SAFETY_BYPASS`) turns the mask off, and is recorded.
//! - **Output rules** (regexes and literals of every action) are applied to the generated text
//!   a line at a time: text is released (printed) once its line is complete, scanned and
//!   redacted; the unfinished line is held back. A block match stops generation; the matched
//!   text and everything after it are withheld. Matches are found within the unreleased text,
//!   so a pattern that spans a line already released is not seen (every default rule is
//!   single-line). A sample without newlines therefore streams at its end.

use crate::policy::{Action, Policy, Stage};
use crate::scan::{Disposition, ScanOptions, Verdict};
use crate::tally::Tally;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// The banned strings of a policy for the output stage, compiled for substring search
/// (ASCII case-insensitive, as the policy's literals are matched).
#[derive(Debug, Default)]
pub struct Banned {
    ac: Option<AhoCorasick>,
    /// `(rule id, literal)`.
    pub strings: Vec<(String, String)>,
}

impl Banned {
    /// The literals of `policy`'s block rules for the output stage; none when the policy is
    /// disabled or bypassed.
    pub fn of(policy: &Policy, bypass: bool) -> Self {
        if !policy.enabled || bypass || policy.bypass {
            return Self::default();
        }
        let strings: Vec<(String, String)> = policy
            .rules
            .iter()
            .filter(|r| r.action == Action::Block && r.applies_to(Stage::Output))
            .flat_map(|r| r.literals.iter().map(|l| (r.id.clone(), l.clone())))
            .collect();
        let ac = (!strings.is_empty())
            .then(|| {
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(strings.iter().map(|(_, l)| l.as_str()))
                    .ok()
            })
            .flatten();
        Self { ac, strings }
    }

    pub fn is_empty(&self) -> bool {
        self.ac.is_none()
    }

    /// Whether `text` contains a banned string.
    pub fn found_in(&self, text: &[u8]) -> bool {
        self.ac.as_ref().is_some_and(|ac| ac.is_match(text))
    }
}

/// What the prompt stage decided.
#[derive(Debug)]
pub enum PromptCheck {
    /// The prompt to encode (redacted where a rule redacts) and the scan.
    Pass { text: String, verdict: Verdict },
    /// Refused: the blocking rule ids and where they matched (1-based line:column), never the
    /// matched text.
    Blocked {
        rules: Vec<String>,
        at: Vec<(usize, usize)>,
    },
}

/// Stage `prompt` on `prompt`.
pub fn check_prompt(policy: &Policy, prompt: &str, bypass: bool) -> PromptCheck {
    let v = policy.scan(
        prompt.as_bytes(),
        ScanOptions {
            stage: Stage::Prompt,
            bypass,
        },
    );
    if v.blocked {
        let lines = crate::scan::LineIndex::new(prompt.as_bytes());
        let at = v
            .findings
            .iter()
            .filter(|f| f.disposition == Disposition::Blocked)
            .map(|f| lines.line_col(f.start))
            .collect();
        let mut rules: Vec<String> = v
            .blocking_rules(policy)
            .into_iter()
            .map(String::from)
            .collect();
        rules.sort();
        rules.dedup();
        return PromptCheck::Blocked { rules, at };
    }
    let text = if v.needs_redaction() {
        policy.redact_str(prompt, &v)
    } else {
        prompt.to_string()
    };
    PromptCheck::Pass { text, verdict: v }
}

/// Stage `output` on a growing text, released a line at a time (see the module docs).
pub struct OutputFilter<'p> {
    policy: &'p Policy,
    bypass: bool,
    /// Bytes of the raw text before this are settled (scanned and released).
    cut: usize,
    released: String,
    /// Counts of the settled segments' findings (one "document" per segment).
    pub tally: Tally,
    /// The blocking rule ids, once a block rule matched.
    pub blocked: Option<Vec<String>>,
}

impl<'p> OutputFilter<'p> {
    pub fn new(policy: &'p Policy, bypass: bool) -> Self {
        Self {
            policy,
            bypass,
            cut: 0,
            released: String::new(),
            tally: Tally::default(),
            blocked: None,
        }
    }

    /// Whether any rule of `policy` applies to the output stage.
    pub fn applies(policy: &Policy) -> bool {
        policy.enabled && policy.rules.iter().any(|r| r.applies_to(Stage::Output))
    }

    /// The released, sanitized text.
    pub fn released(&self) -> &str {
        &self.released
    }

    fn scan(&self, seg: &str) -> Verdict {
        self.policy.scan(
            seg.as_bytes(),
            ScanOptions {
                stage: Stage::Output,
                bypass: self.bypass,
            },
        )
    }

    /// Releases `seg` (settled text) sanitized by `v`, or up to its first block match.
    fn settle(&mut self, seg: &str, v: Verdict) {
        self.tally.add(self.policy, &v);
        if !v.blocked {
            self.released.push_str(&self.policy.redact_str(seg, &v));
            self.cut += seg.len();
            return;
        }
        // Withhold from the first block match on, and any finding overlapping that point.
        let mut b = v
            .findings
            .iter()
            .filter(|f| f.disposition == Disposition::Blocked)
            .map(|f| f.start)
            .min()
            .unwrap_or(0);
        while let Some(f) = v.findings.iter().find(|f| f.start < b && f.end > b) {
            b = f.start;
        }
        while !seg.is_char_boundary(b) {
            b -= 1;
        }
        let before = Verdict {
            findings: v.findings.iter().filter(|f| f.end <= b).cloned().collect(),
            ..Verdict::default()
        };
        self.released
            .push_str(&self.policy.redact_str(&seg[..b], &before));
        let mut rules: Vec<String> = v
            .blocking_rules(self.policy)
            .into_iter()
            .map(String::from)
            .collect();
        rules.sort();
        rules.dedup();
        self.blocked = Some(rules);
    }

    /// `text` is the raw generated text so far; bytes before `stable` will not change (the
    /// caller holds back an incomplete character and stop-string prefixes). Scans the unsettled
    /// text for block matches and settles complete lines. Returns false once blocked.
    pub fn update(&mut self, text: &str, stable: usize) -> bool {
        if self.blocked.is_some() {
            return false;
        }
        let Some(pending) = text.get(self.cut..) else {
            return true;
        };
        let v = self.scan(pending);
        if v.blocked {
            self.settle(pending, v);
            return false;
        }
        let stable = stable.min(text.len());
        if stable > self.cut
            && let Some(nl) = text[self.cut..stable].rfind('\n')
        {
            let seg = &text[self.cut..self.cut + nl + 1];
            let v = self.scan(seg);
            self.settle(seg, v);
        }
        self.blocked.is_none()
    }

    /// The end of the text: scans and releases what is left. Returns false when blocked.
    pub fn finish(&mut self, text: &str) -> bool {
        if self.blocked.is_some() {
            return false;
        }
        if let Some(rest) = text.get(self.cut..)
            && !rest.is_empty()
        {
            let v = self.scan(rest);
            self.settle(rest, v);
        }
        self.blocked.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Format;

    fn policy() -> Policy {
        Policy::parse(
            r#"
[[rules]]
id = "ban.word"
action = "block"
applies_to = ["output"]
literals = ["forbidden"]
[[rules]]
id = "key"
action = "block"
regex = 'KEY-[0-9]{4}'
[[rules]]
id = "mail"
action = "redact"
replacement = "<EMAIL>"
regex = '[a-z]+@[a-z]+\.com'
[[rules]]
id = "prompt.only"
action = "block"
applies_to = ["prompt"]
literals = ["nope"]
"#,
            Format::Toml,
            "t",
        )
        .unwrap()
    }

    #[test]
    fn banned_strings_are_output_block_literals() {
        let p = policy();
        let b = Banned::of(&p, false);
        assert_eq!(b.strings, vec![("ban.word".into(), "forbidden".into())]);
        assert!(b.found_in(b"a FORBIDDEN b"));
        assert!(!b.found_in(b"forbid"));
        assert!(Banned::of(&p, true).is_empty(), "bypass turns the mask off");
    }

    #[test]
    fn prompt_blocks_name_rules_and_redacts() {
        let p = policy();
        match check_prompt(&p, "x\n  KEY-1234 nope", false) {
            PromptCheck::Blocked { rules, at } => {
                assert_eq!(rules, vec!["key", "prompt.only"]);
                assert_eq!(at, vec![(2, 3), (2, 12)]);
            }
            PromptCheck::Pass { .. } => panic!("not blocked"),
        }
        match check_prompt(&p, "mail bob@example.com now", false) {
            PromptCheck::Pass { text, .. } => assert_eq!(text, "mail <EMAIL> now"),
            PromptCheck::Blocked { .. } => panic!("blocked"),
        }
        // `forbidden` is banned for the output only.
        assert!(matches!(
            check_prompt(&p, "forbidden", false),
            PromptCheck::Pass { .. }
        ));
    }

    #[test]
    fn output_is_released_by_line_redacted_and_stops_at_a_block() {
        let p = policy();
        let mut f = OutputFilter::new(&p, false);
        assert!(f.update("hi bob@ex", 9));
        assert_eq!(f.released(), "");
        assert!(f.update("hi bob@example.com\nnext", 23));
        assert_eq!(f.released(), "hi <EMAIL>\n");
        assert!(f.update("hi bob@example.com\nnext KEY-99", 30));
        assert!(!f.update("hi bob@example.com\nnext KEY-9999 tail", 37));
        assert_eq!(f.released(), "hi <EMAIL>\nnext ");
        assert_eq!(f.blocked.as_deref(), Some(&["key".to_string()][..]));
        let mut g = OutputFilter::new(&p, false);
        assert!(g.finish("ok a@b.com"));
        assert_eq!(g.released(), "ok <EMAIL>");
    }
}
