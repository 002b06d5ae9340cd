//! Language definitions, transcribed from tokei 15's `languages.json` for the languages codex
//! counts, so per-language counts agree with `tokei` (see `benches/tokei_compare.sh`).

use std::path::Path;

/// Comment and string syntax of one language.
#[derive(Debug)]
pub struct Lang {
    pub name: &'static str,
    pub line_comments: &'static [&'static str],
    pub multi_line: &'static [(&'static str, &'static str)],
    pub nested: bool,
    pub quotes: &'static [(&'static str, &'static str)],
    pub verbatim_quotes: &'static [(&'static str, &'static str)],
    pub doc_quotes: &'static [(&'static str, &'static str)],
    /// Extra markers that force the full state machine (tokei's `important_syntax`).
    pub important: &'static [&'static str],
    /// Every non-blank line is a comment (prose formats: Markdown, plain text).
    pub literate: bool,
    pub extensions: &'static [&'static str],
    pub filenames: &'static [&'static str],
    /// Interpreter names after `#!/usr/bin/env`, and literal shebang lines.
    pub env: &'static [&'static str],
    pub shebangs: &'static [&'static str],
}

const NONE: &[&str] = &[];
const NO_PAIRS: &[(&str, &str)] = &[];
const C_BLOCK: &[(&str, &str)] = &[("/*", "*/")];
const DQ: &[(&str, &str)] = &[("\"", "\"")];
const DQ_SQ: &[(&str, &str)] = &[("\"", "\""), ("'", "'")];
const JS_Q: &[(&str, &str)] = &[("\"", "\""), ("'", "'"), ("`", "`")];
const XML_BLOCK: &[(&str, &str)] = &[("<!--", "-->")];

macro_rules! lang {
    ($name:expr, line: $lc:expr, multi: $ml:expr, nested: $n:expr, quotes: $q:expr,
     verbatim: $v:expr, doc: $d:expr, important: $i:expr, literate: $lit:expr,
     ext: $e:expr, files: $f:expr, env: $env:expr, shebangs: $sb:expr) => {
        Lang {
            name: $name,
            line_comments: $lc,
            multi_line: $ml,
            nested: $n,
            quotes: $q,
            verbatim_quotes: $v,
            doc_quotes: $d,
            important: $i,
            literate: $lit,
            extensions: $e,
            filenames: $f,
            env: $env,
            shebangs: $sb,
        }
    };
}

macro_rules! simple {
    ($name:expr, $lc:expr, $ml:expr, $q:expr, $e:expr) => {
        lang!($name, line: $lc, multi: $ml, nested: false, quotes: $q, verbatim: NO_PAIRS,
              doc: NO_PAIRS, important: NONE, literate: false, ext: $e, files: NONE, env: NONE,
              shebangs: NONE)
    };
}

/// The languages codex recognises. Files in other languages are not counted (tokei knows
/// ~300 languages; see the README of `benches/` for how the comparison handles that).
pub static LANGS: &[Lang] = &[
    lang!("Rust", line: &["//"], multi: C_BLOCK, nested: true,
          quotes: &[("\"", "\""), ("#\"", "\"#")],
          verbatim: &[("r##\"", "\"##"), ("r#\"", "\"#")], doc: NO_PAIRS,
          important: &["///", "//!"], literate: false, ext: &["rs"], files: NONE, env: NONE,
          shebangs: NONE),
    lang!("Python", line: &["#"], multi: NO_PAIRS, nested: false, quotes: DQ_SQ,
          verbatim: NO_PAIRS, doc: &[("\"\"\"", "\"\"\""), ("'''", "'''")], important: NONE,
          literate: false, ext: &["py", "pyw", "pyi"], files: NONE,
          env: &["python", "python2", "python3"], shebangs: NONE),
    simple!(
        "TOML",
        &["#"],
        NO_PAIRS,
        &[
            // Longest first: tokei's build.rs sorts quotes by length, so `"""` wins over `"`.
            ("\"\"\"", "\"\"\""),
            ("'''", "'''"),
            ("\"", "\""),
            ("'", "'")
        ],
        &["toml"]
    ),
    lang!("Markdown", line: NONE, multi: NO_PAIRS, nested: false, quotes: NO_PAIRS,
          verbatim: NO_PAIRS, doc: NO_PAIRS, important: &["```"], literate: true,
          ext: &["md", "markdown"], files: NONE, env: NONE, shebangs: NONE),
    lang!("Plain Text", line: NONE, multi: NO_PAIRS, nested: false, quotes: NO_PAIRS,
          verbatim: NO_PAIRS, doc: NO_PAIRS, important: NONE, literate: true,
          ext: &["text", "txt"], files: NONE, env: NONE, shebangs: NONE),
    lang!("Shell", line: &["#"], multi: NO_PAIRS, nested: false, quotes: DQ_SQ,
          verbatim: NO_PAIRS, doc: NO_PAIRS, important: NONE, literate: false, ext: &["sh"],
          files: NONE, env: &["sh"], shebangs: &["#!/bin/sh"]),
    lang!("BASH", line: &["#"], multi: NO_PAIRS, nested: false, quotes: DQ_SQ,
          verbatim: NO_PAIRS, doc: NO_PAIRS, important: NONE, literate: false, ext: &["bash"],
          files: NONE, env: &["bash"], shebangs: &["#!/bin/bash"]),
    lang!("Zsh", line: &["#"], multi: NO_PAIRS, nested: false, quotes: DQ_SQ,
          verbatim: NO_PAIRS, doc: NO_PAIRS, important: NONE, literate: false, ext: &["zsh"],
          files: NONE, env: NONE, shebangs: &["#!/bin/zsh"]),
    simple!("YAML", &["#"], NO_PAIRS, DQ_SQ, &["yaml", "yml"]),
    simple!("JSON", NONE, NO_PAIRS, NO_PAIRS, &["json"]),
    simple!("ReStructuredText", NONE, NO_PAIRS, NO_PAIRS, &["rst"]),
    simple!("C", &["//"], C_BLOCK, DQ, &["c", "ec", "pgc"]),
    simple!("C Header", &["//"], C_BLOCK, DQ, &["h"]),
    lang!("C++", line: &["//"], multi: C_BLOCK, nested: false, quotes: DQ,
          verbatim: &[("R\"(", ")\"")], doc: NO_PAIRS, important: NONE, literate: false,
          ext: &["cc", "cpp", "cxx", "c++", "pcc", "tpp"], files: NONE, env: NONE,
          shebangs: NONE),
    simple!(
        "C++ Header",
        &["//"],
        C_BLOCK,
        DQ,
        &["hh", "hpp", "hxx", "inl", "ipp"]
    ),
    simple!("Go", &["//"], C_BLOCK, DQ, &["go"]),
    simple!("JavaScript", &["//"], C_BLOCK, JS_Q, &["cjs", "js", "mjs"]),
    simple!("TypeScript", &["//"], C_BLOCK, JS_Q, &["ts", "mts", "cts"]),
    simple!("CSS", &["//"], C_BLOCK, DQ_SQ, &["css"]),
    simple!("INI", &[";", "#"], NO_PAIRS, NO_PAIRS, &["ini"]),
    simple!("XML", NONE, XML_BLOCK, DQ_SQ, &["xml"]),
    simple!("SVG", NONE, XML_BLOCK, DQ_SQ, &["svg"]),
    simple!(
        "Batch",
        &["REM", "::"],
        NO_PAIRS,
        NO_PAIRS,
        &["bat", "btm", "cmd"]
    ),
    lang!("Dockerfile", line: &["#"], multi: NO_PAIRS, nested: false, quotes: DQ_SQ,
          verbatim: NO_PAIRS, doc: NO_PAIRS, important: NONE, literate: false,
          ext: &["dockerfile", "dockerignore"], files: &["dockerfile"], env: NONE,
          shebangs: NONE),
    lang!("Makefile", line: &["#"], multi: NO_PAIRS, nested: false, quotes: NO_PAIRS,
          verbatim: NO_PAIRS, doc: NO_PAIRS, important: NONE, literate: false,
          ext: &["makefile", "mak", "mk"], files: &["gnumakefile", "makefile"], env: NONE,
          shebangs: NONE),
];

/// Filenames tokei assigns to a language codex does not count; without this list they would
/// fall through to their extension (e.g. `CMakeLists.txt` is CMake, not Plain Text).
const FOREIGN_FILENAMES: &[&str] = &[
    "cmakelists.txt",
    "license",
    "copying",
    "readme",
    "containerfile",
    "justfile",
    "meson.build",
    "meson_options.txt",
    "build",
    "build.bazel",
    "workspace",
    "pkgbuild",
    "rakefile",
    "gemfile",
    "vagrantfile",
    "jenkinsfile",
    "snakefile",
    "tiltfile",
    "cargo.lock",
    "pipfile",
    "sconstruct",
    "sconscript",
];

pub fn by_name(name: &str) -> Option<&'static Lang> {
    LANGS.iter().find(|l| l.name.eq_ignore_ascii_case(name))
}

/// The language of `path` by (lower-cased) file name, then extension, then — for files without
/// an extension — the shebang on the first line (`first_line` is read lazily by the caller;
/// tokei reads at most 128 bytes for it).
pub fn detect(path: &Path, first_line: impl FnOnce() -> Option<Vec<u8>>) -> Option<&'static Lang> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    if let Some(l) = LANGS.iter().find(|l| l.filenames.contains(&name.as_str())) {
        return Some(l);
    }
    if FOREIGN_FILENAMES.contains(&name.as_str()) {
        return None;
    }
    match path.extension() {
        Some(ext) => {
            let ext = ext.to_string_lossy().to_lowercase();
            LANGS.iter().find(|l| l.extensions.contains(&ext.as_str()))
        }
        None => from_shebang(&first_line()?),
    }
}

/// tokei 15's `from_shebang`: the first whitespace-separated word of the first line is
/// matched against literal shebangs (`#!/bin/sh -e` is Shell); after exactly
/// `#!/usr/bin/env`, the next word is matched by prefix (`python3.11` is Python; flags such as
/// `-S` are not skipped, and `#!usr/bin/env` or `#!/bin/env` are not recognised).
fn from_shebang(line: &[u8]) -> Option<&'static Lang> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let first = words.next()?;
    if let Some(l) = LANGS.iter().find(|l| l.shebangs.contains(&first)) {
        return Some(l);
    }
    if first != "#!/usr/bin/env" {
        return None;
    }
    let interp = words.next()?;
    LANGS
        .iter()
        .find(|l| l.env.iter().any(|e| interp.starts_with(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(line: &str) -> Option<&'static str> {
        from_shebang(line.as_bytes()).map(|l| l.name)
    }

    // Expected: what tokei 15 reports for an extensionless file with this first line.
    #[test]
    fn shebangs_as_tokei() {
        assert_eq!(sb("#!/usr/bin/env python3"), Some("Python"));
        assert_eq!(sb("#!/usr/bin/env python3.11 -u"), Some("Python"));
        assert_eq!(sb("#!/bin/sh -e"), Some("Shell"));
        assert_eq!(sb("#!/bin/bash"), Some("BASH"));
        // CPython's Lib/idlelib/idle_test/example_noext: no slash after `#!`.
        assert_eq!(sb("#!usr/bin/env python"), None);
        assert_eq!(sb("#!/usr/bin/env -S python3"), None);
        assert_eq!(sb("#!/usr/bin/env node"), None);
    }
}
