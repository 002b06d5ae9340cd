//! Line classification (code / comment / blank), a port of tokei 15's state machine
//! (`src/language/syntax.rs` + `language_type.rs::parse_lines`) with tokei's default config, so
//! counts agree line for line. Known, deliberate gaps are listed in `benches/tokei_compare.sh`.

use crate::lang::{self, Lang};
use serde::Serialize;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub code: u64,
    pub comments: u64,
    pub blanks: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.code += o.code;
        self.comments += o.comments;
        self.blanks += o.blanks;
    }
}

impl Counts {
    pub fn lines(&self) -> u64 {
        self.code + self.comments + self.blanks
    }
}

/// tokei's whitespace: space and \t..\r.
fn is_ws(c: u8) -> bool {
    c == b' ' || (b'\x09'..=b'\x0d').contains(&c)
}

fn trim(s: &[u8]) -> &[u8] {
    let Some(start) = s.iter().position(|&c| !is_ws(c)) else {
        return &[];
    };
    let end = s.iter().rposition(|&c| !is_ws(c)).unwrap_or(start);
    &s[start..=end]
}

fn trim_start(s: &[u8]) -> &[u8] {
    match s.iter().position(|&c| !is_ws(c)) {
        Some(start) => &s[start..],
        None => &[],
    }
}

/// `w.starts_with(p)` for the 1–4 byte tokens of a language, compared inline: the generic
/// slice comparison calls `memcmp` at every byte position, which dominated the profile.
#[inline(always)]
fn sw(w: &[u8], p: &[u8]) -> bool {
    w.len() >= p.len() && w.first() == p.first() && w.iter().zip(p).all(|(a, b)| a == b)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return false;
    };
    hay.iter()
        .enumerate()
        .any(|(i, &b)| b == first && sw(&hay[i..], needle))
}

/// End (exclusive, including the `\n`) of the line starting at `start`.
fn line_end(text: &[u8], start: usize) -> usize {
    text[start..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(text.len(), |p| start + p + 1)
}

/// Bytes at which some token of a language can begin (a 256-entry table), so the scanners
/// only try token matches where one can start.
struct Starts([bool; 256]);

impl Starts {
    fn new(tokens: impl IntoIterator<Item = &'static str>) -> Self {
        let mut t = [false; 256];
        for tok in tokens {
            if let Some(&b) = tok.as_bytes().first() {
                t[b as usize] = true;
            }
        }
        Self(t)
    }
}

struct Syntax {
    lang: &'static Lang,
    /// First bytes of the tokens that make a line "important" (needs the state machine).
    important: Starts,
    /// First bytes at which the state machine can change state (plus `\\`, and whitespace
    /// for Rust, whose doc-comment child is found after skipping whitespace).
    active: Starts,
    /// Markdown's child search scans the rest of the line itself: never skip positions.
    scan_all: bool,
    quote: Option<&'static str>,
    quote_is_verbatim: bool,
    stack: Vec<&'static str>,
}

enum Report {
    Normal,
    /// A child block (Rust doc comment, Markdown code fence): its counts, the byte offset where
    /// parsing resumes, and the comment lines the parent adds for the fences.
    Child {
        counts: Counts,
        end: usize,
        parent_comments: u64,
    },
}

impl Syntax {
    fn new(lang: &'static Lang) -> Self {
        let pairs =
            |p: &'static [(&'static str, &'static str)]| p.iter().flat_map(|(a, b)| [*a, *b]);
        let important = Starts::new(
            lang.quotes
                .iter()
                .chain(lang.doc_quotes)
                .chain(lang.multi_line)
                .map(|(s, _)| *s)
                .chain(lang.important.iter().copied()),
        );
        let mut active = Starts::new(
            pairs(lang.quotes)
                .chain(pairs(lang.doc_quotes))
                .chain(pairs(lang.verbatim_quotes))
                .chain(pairs(lang.multi_line))
                .chain(lang.line_comments.iter().copied())
                .chain(["\\"]),
        );
        if lang.name == "Rust" {
            for b in [b' ', b'\t', b'\n', b'\x0b', b'\x0c', b'\r'] {
                active.0[b as usize] = true;
            }
        }
        Self {
            lang,
            important,
            active,
            scan_all: lang.name == "Markdown",
            quote: None,
            quote_is_verbatim: false,
            stack: Vec::new(),
        }
    }

    fn plain(&self) -> bool {
        self.quote.is_none() && self.stack.is_empty()
    }

    /// Whether `line` contains a quote, doc-quote or multi-line start or an important token
    /// (tokei's `important_syntax`), in one pass over the line.
    fn has_important(&self, line: &[u8]) -> bool {
        let l = self.lang;
        line.iter().enumerate().any(|(i, &b)| {
            if !self.important.0[b as usize] {
                return false;
            }
            let w = &line[i..];
            l.quotes
                .iter()
                .chain(l.doc_quotes)
                .chain(l.multi_line)
                .any(|(s, _)| sw(w, s.as_bytes()))
                || l.important.iter().any(|s| sw(w, s.as_bytes()))
        })
    }

    fn single_line(&self, line: &[u8], c: &mut Counts) -> bool {
        if !self.plain() {
            return false;
        }
        if line.is_empty() {
            c.blanks += 1;
        } else if self.has_important(line) {
            return false;
        } else if self.lang.literate
            || self
                .lang
                .line_comments
                .iter()
                .any(|p| sw(line, p.as_bytes()))
        {
            c.comments += 1;
        } else {
            c.code += 1;
        }
        true
    }

    fn end_of_quote(&mut self, w: &[u8]) -> Option<usize> {
        if let Some(q) = self.quote
            && sw(w, q.as_bytes())
        {
            self.quote = None;
            return Some(q.len());
        }
        if !self.quote_is_verbatim && w.starts_with(b"\\\\") {
            return Some(2);
        }
        if !self.quote_is_verbatim
            && w.starts_with(b"\\")
            && self
                .lang
                .quotes
                .iter()
                .any(|(s, _)| sw(&w[1..], s.as_bytes()))
        {
            return Some(2);
        }
        None
    }

    fn end_of_multi(&mut self, w: &[u8]) -> Option<usize> {
        let last = *self.stack.last()?;
        if sw(w, last.as_bytes()) {
            self.stack.pop();
            Some(last.len())
        } else {
            None
        }
    }

    fn start_quote(&mut self, w: &[u8]) -> Option<usize> {
        if !self.stack.is_empty() {
            return None;
        }
        let l = self.lang;
        for (pairs, verbatim) in [
            (l.doc_quotes, false),
            (l.verbatim_quotes, true),
            (l.quotes, false),
        ] {
            if let Some((s, e)) = pairs.iter().find(|(s, _)| sw(w, s.as_bytes())) {
                self.quote = Some(e);
                self.quote_is_verbatim = verbatim;
                return Some(s.len());
            }
        }
        None
    }

    fn start_multi(&mut self, w: &[u8]) -> Option<usize> {
        if self.quote.is_some() {
            return None;
        }
        for &(s, e) in self.lang.multi_line {
            if sw(w, s.as_bytes()) {
                if self.stack.is_empty() || self.lang.nested {
                    self.stack.push(e);
                }
                return Some(s.len());
            }
        }
        None
    }

    fn multi_line(&mut self, text: &[u8], start: usize, end: usize) -> Report {
        let mut ended_with_comments = false;
        let mut skip = 0usize;
        // tokei stops when the rest of the *file* is whitespace: past its last non-space byte.
        let content_end = text.iter().rposition(|&c| !is_ws(c)).map_or(0, |p| p + 1);
        for i in start..end {
            if skip != 0 {
                skip -= 1;
                continue;
            }
            if i >= content_end {
                break;
            }
            // No token starts here, so none of the branches below can fire.
            if !self.scan_all && !self.active.0[text[i] as usize] {
                ended_with_comments = false;
                continue;
            }
            let w = &text[i..];
            ended_with_comments = false;
            if let Some(n) = self.end_of_quote(w).or_else(|| self.end_of_multi(w)) {
                ended_with_comments = true;
                skip = n - 1;
                continue;
            } else if self.quote.is_some() {
                continue;
            }
            if self.plain()
                && let Some(child) = self.child(text, i, end)
            {
                return child;
            }
            if let Some(n) = self.start_quote(w).or_else(|| self.start_multi(w)) {
                skip = n - 1;
                continue;
            }
            if self.plain() && self.lang.line_comments.iter().any(|c| sw(w, c.as_bytes())) {
                ended_with_comments = true;
                break;
            }
        }
        let _ = ended_with_comments; // tokei computes it but its default config never reads it
        Report::Normal
    }

    /// tokei's embedded contexts for the languages codex counts: Rust doc comments are parsed
    /// as Markdown, Markdown code fences as the fenced language.
    fn child(&self, text: &[u8], start: usize, end: usize) -> Option<Report> {
        match self.lang.name {
            "Rust" => {
                let rest = trim_start(&text[start..]);
                let marker: &[u8] = if rest.starts_with(b"///") {
                    b"///"
                } else if rest.starts_with(b"//!") {
                    b"//!"
                } else {
                    return None;
                };
                let mut md = Vec::new();
                let mut pos = start;
                let mut block_end = text.len();
                while pos < text.len() {
                    let e = line_end(text, pos);
                    // As tokei: the marker test trims the rest of the *file*, so a blank line
                    // (or the newline ending a code line) before more doc lines joins the block.
                    if !trim_start(&text[pos..]).starts_with(marker) {
                        block_end = pos;
                        break;
                    }
                    let line = trim_start(&text[pos..e]);
                    md.extend_from_slice(&line[3.min(line.len())..]);
                    block_end = e;
                    pos = e;
                }
                let md_lang = lang::by_name("Markdown")?;
                let counts = count(md_lang, trim(&md));
                Some(Report::Child {
                    counts,
                    end: block_end,
                    parent_comments: 0,
                })
            }
            "Markdown" => {
                let range = &text[start..end];
                // tokei: opening fence is "```" + non-space identifier + whitespace.
                let at = (0..range.len().saturating_sub(3)).find(|&k| {
                    range[k..].starts_with(b"```")
                        && range.get(k + 3).is_some_and(|&c| !is_ws(c))
                        && range[k + 3..].iter().position(|&c| is_ws(c)).is_some()
                })?;
                let ident_start = start + at + 3;
                let ws = text[ident_start..].iter().position(|&c| is_ws(c))?;
                let ident = &text[ident_start..ident_start + ws];
                let code_start = ident_start + ws + 1;
                let child_lang = ident
                    .split(|&b| b == b',')
                    .find_map(|s| std::str::from_utf8(s).ok().and_then(lang::by_name))?;
                // Closing fence: the next "```" (optionally followed by one whitespace).
                let close = text[code_start..].windows(3).position(|w| w == b"```");
                let (code_end, block_end, balanced) = match close {
                    Some(p) => {
                        let f = code_start + p;
                        let after = f + 3;
                        let after = if text.get(after).is_some_and(|&c| is_ws(c)) {
                            after + 1
                        } else {
                            after
                        };
                        (f, after, true)
                    }
                    None => (text.len(), text.len(), false),
                };
                let counts = count(child_lang, trim(&text[code_start..code_end]));
                Some(Report::Child {
                    counts,
                    end: block_end,
                    parent_comments: if balanced { 2 } else { 1 },
                })
            }
            _ => None,
        }
    }

    fn line_is_comment(&self, line: &[u8], started_in_comments: bool) -> bool {
        if self.quote.is_some() {
            return false; // tokei's default: doc strings are not comments
        }
        let l = self.lang;
        if started_in_comments
            && l.doc_quotes
                .iter()
                .any(|(_, e)| contains(line, e.as_bytes()))
        {
            return true;
        }
        let whole = l.line_comments.iter().any(|c| sw(line, c.as_bytes()))
            || l.multi_line
                .iter()
                .any(|(s, e)| sw(line, s.as_bytes()) && line.ends_with(e.as_bytes()));
        if whole || started_in_comments {
            return true;
        }
        match self.stack.last() {
            Some(q) => l
                .multi_line
                .iter()
                .any(|(s, e)| e == q && sw(line, s.as_bytes())),
            None => false,
        }
    }
}

/// Counts the lines of `text` as tokei does for `lang`.
pub fn count(lang: &'static Lang, text: &[u8]) -> Counts {
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
    let mut syntax = Syntax::new(lang);
    let mut c = Counts::default();
    let mut pos = 0;
    while pos < text.len() {
        let end = line_end(text, pos);
        let line = trim(&text[pos..end]);
        if syntax.single_line(line, &mut c) {
            pos = end;
            continue;
        }
        let started_in_comments = !syntax.stack.is_empty();
        match syntax.multi_line(text, pos, end) {
            Report::Normal => {}
            Report::Child {
                counts,
                end: resume,
                parent_comments,
            } => {
                c += counts;
                c.comments += parent_comments;
                pos = resume;
                continue;
            }
        }
        if lang.literate || syntax.line_is_comment(line, started_in_comments) {
            c.comments += 1;
        } else {
            c.code += 1;
        }
        pos = end;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(text: &str) -> Counts {
        count(lang::by_name("Rust").unwrap(), text.as_bytes())
    }
    fn py(text: &str) -> Counts {
        count(lang::by_name("Python").unwrap(), text.as_bytes())
    }
    fn cc(code: u64, comments: u64, blanks: u64) -> Counts {
        Counts {
            code,
            comments,
            blanks,
        }
    }

    // Expected values: tokei 15.0.0 on the same text (`tokei --output json`).
    #[test]
    fn rust_basics() {
        assert_eq!(rs("fn main() {}\n\n// hi\n"), cc(1, 1, 1));
        assert_eq!(
            rs("/* a\n b */ let x = 1;\nlet s = \"/* not */\";\n"),
            cc(1, 2, 0)
        );
        assert_eq!(rs("/* /* nested */\n still */\nx();\n"), cc(1, 2, 0));
        assert_eq!(rs("let r = r#\"\n// inside\n\"#;\n"), cc(3, 0, 0));
    }

    #[test]
    fn rust_doc_comments_are_markdown() {
        // `///` alone becomes a blank Markdown line, as in tokei.
        assert_eq!(rs("/// Doc.\n///\n/// More.\nfn f() {}\n"), cc(1, 2, 1));
    }

    #[test]
    fn python_docstrings_are_code_by_default() {
        assert_eq!(
            py("def f():\n    \"\"\"Doc\n    more\n    \"\"\"\n    # c\n    return 1\n"),
            cc(5, 1, 0)
        );
        assert_eq!(py("s = '#not a comment'\n"), cc(1, 0, 0));
    }

    #[test]
    fn rust_doc_block_joins_across_a_code_line() {
        // winnow's src/_topic/ini.rs: tokei swallows the `#![doc]` line into the doc block.
        assert_eq!(
            rs("//! # INI\n//!\n//! ```rust\n#![doc = include_str!(\"x.rs\")]\n//! ```\n"),
            cc(0, 3, 1)
        );
    }

    #[test]
    fn toml_triple_quotes_win_over_single() {
        // tokei sorts quotes longest first: the blank line is inside a `\"\"\"` string.
        let toml = lang::by_name("TOML").unwrap();
        assert_eq!(
            count(toml, b"a = \"\"\"\nx\n\ny\n\"\"\"\nb = 1\n"),
            cc(6, 0, 0)
        );
    }

    #[test]
    fn markdown_fences() {
        let md = lang::by_name("Markdown").unwrap();
        assert_eq!(
            count(md, b"# T\n\n```rust\nfn f() {}\n```\ntext\n"),
            cc(1, 4, 1)
        );
        assert_eq!(count(md, b"```\nplain\n```\n"), cc(0, 3, 0));
    }

    #[test]
    fn non_utf8_and_crlf() {
        assert_eq!(
            count(
                lang::by_name("Rust").unwrap(),
                b"let a = 1;\r\n\r\n// \xff\r\n"
            ),
            cc(1, 1, 1)
        );
        assert_eq!(
            count(lang::by_name("C").unwrap(), b"int x; /* \xff\xfe */\n"),
            cc(1, 0, 0)
        );
    }
}
