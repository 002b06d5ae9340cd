//! codex-audit: `codex repo-map` (repository topology, line counts that agree with tokei,
//! public symbols) and `codex status` (the audit of the seed documents, measured live).
//! No candle dependency, so both commands start fast.

pub mod count;
mod error;
pub mod lang;
pub mod ndjson;
pub mod probes;
pub mod repomap;
pub mod status;
pub mod symbols;

pub use error::AuditError;

/// `s` with control characters (and the Unicode line/paragraph separators) escaped as
/// `\n`, `\t`, `\u{1b}`…, for text output: a file name or a line of a run's files must not
/// start a new output line or drive the terminal. JSON output is escaped by serde instead.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !s.chars().any(bad) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn printable_escapes_controls_only() {
        assert_eq!(super::printable("a/b ü.rs"), "a/b ü.rs");
        assert_eq!(
            super::printable("x\nfake line\r\u{1b}[31m\u{2028}"),
            "x\\nfake line\\r\\u{1b}[31m\\u{2028}"
        );
    }
}
