//! `codex repo-map`: walk a tree (gitignore-aware, symlinks never followed), count lines per
//! language as tokei does, find key files, directory roles and public symbols.

use crate::count::{self, Counts};
use crate::{AuditError, lang, printable, symbols};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct LangStats {
    pub files: u64,
    pub code: u64,
    pub comments: u64,
    pub blanks: u64,
}

impl LangStats {
    fn add(&mut self, c: Counts) {
        self.files += 1;
        self.code += c.code;
        self.comments += c.comments;
        self.blanks += c.blanks;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    /// Relative to the root, `/`-separated.
    pub path: String,
    pub language: &'static str,
    pub code: u64,
    pub comments: u64,
    pub blanks: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub symbols: Vec<symbols::Symbol>,
    /// Number of other files that mention one of this file's symbols (only with ranking).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refs: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirEntry {
    pub name: String,
    pub role: &'static str,
    pub files: u64,
    pub code: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyFile {
    pub path: String,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepoMap {
    pub schema_version: u32,
    pub root: String,
    pub totals: LangStats,
    /// Files walked whose language codex does not count.
    pub other_files: u64,
    pub languages: BTreeMap<&'static str, LangStats>,
    pub directories: Vec<DirEntry>,
    pub key_files: Vec<KeyFile>,
    pub files: Vec<FileEntry>,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Count, per symbol, the other files that mention it (needed for `--max-tokens`).
    pub rank: bool,
}

/// A gitignore-aware walker that never follows symlinks (so loops are harmless) and skips
/// hidden entries, as tokei does. `.gitignore` is honoured even outside a git repository.
pub fn walker(root: &Path) -> ignore::WalkBuilder {
    let mut b = ignore::WalkBuilder::new(root);
    b.hidden(true)
        .follow_links(false)
        .require_git(false)
        .git_ignore(true)
        .git_exclude(true);
    b.add_custom_ignore_filename(".tokeignore");
    b
}

fn rel(root: &Path, p: &Path) -> String {
    let r = p.strip_prefix(root).unwrap_or(p);
    let s: Vec<String> = r
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    s.join("/")
}

fn first_line(path: &Path) -> Option<Vec<u8>> {
    let mut buf = [0u8; 128]; // tokei's READ_LIMIT for shebang detection
    let n = std::fs::File::open(path).ok()?.read(&mut buf).ok()?;
    let line = &buf[..n];
    Some(line.split(|&c| c == b'\n').next().unwrap_or(line).to_vec())
}

struct Walked {
    files: Vec<FileEntry>,
    other: u64,
    skipped: Vec<Skipped>,
}

pub fn build(root: &Path, opts: &Options) -> Result<RepoMap, AuditError> {
    let meta = std::fs::metadata(root).map_err(|e| AuditError::io(root, e))?;
    if !meta.is_dir() {
        return Err(AuditError::NotADirectory(root.to_path_buf()));
    }
    let out = Mutex::new(Walked {
        files: Vec::new(),
        other: 0,
        skipped: Vec::new(),
    });
    walker(root).build_parallel().run(|| {
        let out = &out;
        // One read buffer per walker thread, reused for every file it reads.
        let mut buf = Vec::new();
        Box::new(move |entry| {
            let entry = match entry {
                Ok(e) => e,
                Err(err) => {
                    let (path, reason) = walk_error(&err);
                    let path = match path.map(|p| rel(root, p)) {
                        Some(p) if !p.is_empty() => p,
                        _ => root.display().to_string(),
                    };
                    if let Ok(mut o) = out.lock() {
                        o.skipped.push(Skipped { path, reason });
                    }
                    return ignore::WalkState::Continue;
                }
            };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                return ignore::WalkState::Continue;
            }
            let path = entry.path();
            let result = process(root, path, &mut buf);
            if let Ok(mut o) = out.lock() {
                match result {
                    Ok(Some(f)) => o.files.push(f),
                    Ok(None) => o.other += 1,
                    Err(reason) => o.skipped.push(Skipped {
                        path: rel(root, path),
                        reason,
                    }),
                }
            }
            ignore::WalkState::Continue
        })
    });
    let Walked {
        mut files,
        other,
        mut skipped,
    } = out.into_inner().map_err(|_| AuditError::Poisoned)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    skipped.sort_by(|a, b| (&a.path, &a.reason).cmp(&(&b.path, &b.reason)));

    if opts.rank {
        rank(root, &mut files);
    }

    let mut languages: BTreeMap<&'static str, LangStats> = BTreeMap::new();
    let mut totals = LangStats::default();
    let mut dirs: BTreeMap<String, LangStats> = BTreeMap::new();
    for f in &files {
        let c = Counts {
            code: f.code,
            comments: f.comments,
            blanks: f.blanks,
        };
        languages.entry(f.language).or_default().add(c);
        totals.add(c);
        if let Some((top, _)) = f.path.split_once('/') {
            dirs.entry(top.to_string()).or_default().add(c);
        }
    }
    // Top-level directories that hold no counted file still get a row.
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) && !name.starts_with('.') {
                dirs.entry(name).or_default();
            }
        }
    }
    let directories = dirs
        .into_iter()
        .map(|(name, s)| DirEntry {
            role: role(&name),
            name,
            files: s.files,
            code: s.code,
        })
        .collect();
    Ok(RepoMap {
        schema_version: codex_core::SCHEMA_VERSION,
        root: root.display().to_string(),
        totals,
        other_files: other,
        languages,
        directories,
        key_files: key_files(root),
        files,
        skipped,
    })
}

/// The path a walk error is about (a directory that cannot be listed, a symlink loop) and
/// the error itself without it, so `skipped` names the real entry.
fn walk_error(err: &ignore::Error) -> (Option<&Path>, String) {
    match err {
        ignore::Error::WithDepth { err, .. } => walk_error(err),
        ignore::Error::WithPath { path, err } => (Some(path), err.to_string()),
        ignore::Error::Loop { child, .. } => (Some(child), err.to_string()),
        _ => (None, err.to_string()),
    }
}

/// Files larger than this are skipped (listed in `skipped`), not read: counting needs the
/// whole file in memory, once per walker thread. No hand-written source file comes close.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// How much of a file the binary check looks at (as git and ripgrep do).
const BINARY_PROBE_BYTES: usize = 8 << 10;

/// A NUL byte in the first 8 KiB marks binary content (git's and ripgrep's rule) unless a
/// UTF-16/32 byte-order mark says the NULs are text. tokei 15 would count such a file's bytes
/// as lines (it skips nothing that has a known extension); codex skips it instead, a
/// deliberate difference: no source file holds a NUL byte.
pub fn is_binary(bytes: &[u8]) -> bool {
    let utf16_or_32 = bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]);
    let probe = &bytes[..bytes.len().min(BINARY_PROBE_BYTES)];
    !utf16_or_32 && probe.contains(&0)
}

/// Reads at most [`MAX_FILE_BYTES`] of `path` into `buf`; Err when the file is larger (it may
/// have grown since its size was checked) or unreadable.
pub(crate) fn read_capped(path: &Path, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.clear();
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let too_big = || format!("larger than {} MiB, not counted", MAX_FILE_BYTES >> 20);
    if file.metadata().is_ok_and(|m| m.len() > MAX_FILE_BYTES) {
        return Err(too_big());
    }
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        buf.clear();
        return Err(too_big());
    }
    Ok(())
}

fn process(root: &Path, path: &Path, buf: &mut Vec<u8>) -> Result<Option<FileEntry>, String> {
    let Some(lang) = lang::detect(path, || first_line(path)) else {
        return Ok(None);
    };
    read_capped(path, buf)?;
    let bytes: &[u8] = buf;
    if is_binary(bytes) {
        return Err(format!(
            "binary content (a NUL byte in the first {} KiB), not counted as {}",
            BINARY_PROBE_BYTES >> 10,
            lang.name
        ));
    }
    let c = count::count(lang, bytes);
    let symbols = match lang.name {
        // Symbols need text; a non-UTF-8 file is still counted, its symbols read lossily.
        "Rust" => symbols::rust(&String::from_utf8_lossy(bytes)),
        "Python" => symbols::python(&String::from_utf8_lossy(bytes)),
        _ => Vec::new(),
    };
    Ok(Some(FileEntry {
        path: rel(root, path),
        language: lang.name,
        code: c.code,
        comments: c.comments,
        blanks: c.blanks,
        symbols,
        refs: None,
    }))
}

/// aider-style ranking signal: for every symbol name, the number of *other* Rust/Python files
/// whose identifiers include it; a file's `refs` is the sum over its symbols.
fn rank(root: &Path, files: &mut [FileEntry]) {
    let names: HashSet<&str> = files
        .iter()
        .flat_map(|f| {
            f.symbols
                .iter()
                .map(|s| s.name.rsplit('.').next().unwrap_or(&s.name))
        })
        .collect();
    let mut mentions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        if f.language != "Rust" && f.language != "Python" {
            continue;
        }
        let mut bytes = Vec::new();
        if read_capped(&root.join(&f.path), &mut bytes).is_err() {
            continue;
        }
        let mut seen = HashSet::new();
        // Byte-level split (non-ASCII bytes stay inside words, so UTF-8 identifiers survive),
        // without decoding the whole file to a String first.
        let is_word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b >= 0x80;
        for word in bytes.split(|b| !is_word(b)).filter(|w| !w.is_empty()) {
            if let Some(&n) = std::str::from_utf8(word).ok().and_then(|w| names.get(w))
                && seen.insert(n)
            {
                mentions.entry(n).or_default().push(i);
            }
        }
    }
    let refs: Vec<u64> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            f.symbols
                .iter()
                .map(|s| {
                    let n = s.name.rsplit('.').next().unwrap_or(&s.name);
                    mentions
                        .get(n)
                        .map_or(0, |v| v.iter().filter(|&&j| j != i).count() as u64)
                })
                .sum()
        })
        .collect();
    for (f, r) in files.iter_mut().zip(refs) {
        f.refs = Some(r);
    }
}

fn role(name: &str) -> &'static str {
    match name.to_ascii_lowercase().as_str() {
        "src" | "lib" => "source",
        "crates" | "packages" | "libs" => "library crates / packages",
        "tests" | "test" => "tests",
        "benches" | "bench" | "benchmarks" => "benchmarks",
        "docs" | "doc" => "documentation",
        "scripts" | "tools" | "bin" => "scripts and tools",
        "configs" | "config" | "conf" => "configuration",
        "examples" | "example" => "examples",
        "data" | "datasets" => "data",
        "notebooks" => "notebooks",
        "runs" | "outputs" | "artifacts" => "run outputs",
        "deploy" | "docker" | "k8s" | "helm" => "deployment",
        "vendor" | "third_party" => "vendored code",
        "target" | "build" | "dist" => "build output",
        _ => "other",
    }
}

/// Manifests, CI, containers and top-level docs, by path.
fn key_files(root: &Path) -> Vec<KeyFile> {
    const TOP: &[(&str, &str)] = &[
        ("Cargo.toml", "Rust manifest"),
        ("Cargo.lock", "Rust lockfile"),
        ("rust-toolchain.toml", "Rust toolchain pin"),
        ("rust-toolchain", "Rust toolchain pin"),
        ("pyproject.toml", "Python manifest"),
        ("setup.py", "Python manifest"),
        ("setup.cfg", "Python manifest"),
        ("requirements.txt", "Python requirements"),
        ("uv.lock", "Python lockfile"),
        ("poetry.lock", "Python lockfile"),
        ("package.json", "Node manifest"),
        ("go.mod", "Go manifest"),
        ("Makefile", "build script"),
        ("noxfile.py", "test sessions (nox)"),
        ("tox.ini", "test sessions (tox)"),
        ("Dockerfile", "container image"),
        ("docker-compose.yml", "container compose"),
        ("compose.yaml", "container compose"),
        (".gitlab-ci.yml", "CI"),
        (".ci/run", "CI"),
        ("README.md", "readme"),
        ("README.rst", "readme"),
        ("README", "readme"),
        ("LICENSE", "license"),
        ("LICENSE-MIT", "license"),
        ("LICENSE-APACHE", "license"),
        ("CONTRIBUTING.md", "contributing guide"),
        ("CHANGELOG.md", "changelog"),
    ];
    let mut out: Vec<KeyFile> = TOP
        .iter()
        .filter(|(p, _)| root.join(p).is_file())
        .map(|(p, k)| KeyFile {
            path: (*p).to_string(),
            kind: k,
        })
        .collect();
    for (dir, kind) in [(".github/workflows", "CI"), (".ci", "CI")] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            let mut names: Vec<String> = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| format!("{dir}/{}", e.file_name().to_string_lossy()))
                .filter(|p| p != ".ci/run")
                .collect();
            names.sort();
            out.extend(names.into_iter().map(|path| KeyFile { path, kind }));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Token estimate used when no tokenizer is loaded: one token per run of word characters and
/// one per other non-space character (close to BPE counts on code, slightly above on prose).
pub fn estimate_tokens(text: &str) -> usize {
    let mut n = 0;
    let mut in_word = false;
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            if !in_word {
                n += 1;
                in_word = true;
            }
        } else {
            in_word = false;
            if !c.is_whitespace() {
                n += 1;
            }
        }
    }
    n
}

fn fmt_file(f: &FileEntry, indent: usize) -> String {
    let name = printable(f.path.rsplit('/').next().unwrap_or(&f.path));
    let mut s = format!(
        "{:indent$}{name}  [{} {}/{}/{}]",
        "", f.language, f.code, f.comments, f.blanks
    );
    if let Some(r) = f.refs {
        s.push_str(&format!(" refs={r}"));
    }
    if !f.symbols.is_empty() {
        let syms: Vec<String> = f
            .symbols
            .iter()
            .map(|s| format!("{} {}", s.kind, s.name))
            .collect();
        s.push_str(&format!("\n{:w$}{}", "", syms.join(", "), w = indent + 2));
    }
    s
}

/// The text view: summary tables, then a tree of the files (all of them, or — with a token
/// budget — the most-referenced ones that fit, still shown in path order).
pub fn render_text(
    map: &RepoMap,
    max_tokens: Option<usize>,
    count_tokens: &dyn Fn(&str) -> usize,
) -> String {
    let mut out = String::new();
    let t = &map.totals;
    out.push_str(&format!(
        "repo map: {}\n{} files counted ({} other), {} code, {} comments, {} blanks\n\n",
        printable(&map.root),
        t.files,
        map.other_files,
        t.code,
        t.comments,
        t.blanks
    ));
    out.push_str(&format!(
        "{:<18} {:>7} {:>9} {:>9} {:>9}\n",
        "language", "files", "code", "comments", "blanks"
    ));
    for (name, s) in &map.languages {
        out.push_str(&format!(
            "{:<18} {:>7} {:>9} {:>9} {:>9}\n",
            name, s.files, s.code, s.comments, s.blanks
        ));
    }
    out.push_str("\ntop-level directories:\n");
    for d in &map.directories {
        out.push_str(&format!(
            "  {}/  {} ({} files, {} code)\n",
            printable(&d.name),
            d.role,
            d.files,
            d.code
        ));
    }
    out.push_str("\nkey files:\n");
    for k in &map.key_files {
        out.push_str(&format!("  {}  ({})\n", printable(&k.path), k.kind));
    }
    if !map.skipped.is_empty() {
        out.push_str(&format!("\nskipped {} entries:\n", map.skipped.len()));
        for k in &map.skipped {
            out.push_str(&format!(
                "  {}  ({})\n",
                printable(&k.path),
                printable(&k.reason)
            ));
        }
    }
    out.push_str("\ntree (code/comments/blanks):\n");

    let selected: Vec<&FileEntry> = match max_tokens {
        None => map.files.iter().collect(),
        Some(budget) => {
            let mut order: Vec<&FileEntry> = map.files.iter().collect();
            order.sort_by(|a, b| {
                b.refs
                    .unwrap_or(0)
                    .cmp(&a.refs.unwrap_or(0))
                    .then(b.symbols.len().cmp(&a.symbols.len()))
                    .then(a.path.cmp(&b.path))
            });
            let mut used = count_tokens(&out);
            let mut chosen = Vec::new();
            for f in order {
                // Each file costs its own line(s) plus, at most, its directory lines.
                let cost = count_tokens(&fmt_file(f, 0)) + count_tokens(&f.path);
                if used + cost > budget {
                    continue;
                }
                used += cost;
                chosen.push(f);
            }
            chosen.sort_by(|a, b| a.path.cmp(&b.path));
            chosen
        }
    };
    let mut open: Vec<&str> = Vec::new();
    for f in &selected {
        let parts: Vec<&str> = f.path.split('/').collect();
        let dirs = &parts[..parts.len() - 1];
        let common = open.iter().zip(dirs).take_while(|(a, b)| a == b).count();
        open.truncate(common);
        for d in &dirs[common..] {
            out.push_str(&format!("{:w$}{}/\n", "", printable(d), w = open.len() * 2));
            open.push(d);
        }
        out.push_str(&fmt_file(f, open.len() * 2));
        out.push('\n');
    }
    if selected.len() < map.files.len() {
        out.push_str(&format!(
            "… {} more files not shown (token budget)\n",
            map.files.len() - selected.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How the parallel walker reports a directory it cannot list (running as root, a test
    /// cannot make one): the skipped entry must carry that directory's path.
    #[test]
    fn walk_errors_keep_their_path() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = ignore::Error::WithDepth {
            depth: 1,
            err: Box::new(ignore::Error::WithPath {
                path: "/r/locked".into(),
                err: Box::new(ignore::Error::Io(io)),
            }),
        };
        let (path, reason) = walk_error(&err);
        assert_eq!(path, Some(Path::new("/r/locked")));
        assert!(reason.contains("ermission denied"), "{reason}");
        assert_eq!(rel(Path::new("/r"), path.unwrap()), "locked");
    }

    #[test]
    fn binary_detection() {
        assert!(!is_binary(b"fn main() {}\n\xff\xfe latin-1 \xe9\n"));
        assert!(is_binary(b"fn main() {}\0"));
        assert!(!is_binary(b"\xff\xfef\0n\0"));
        let mut late = vec![b'a'; BINARY_PROBE_BYTES];
        late.push(0);
        assert!(!is_binary(&late), "only the first 8 KiB are probed");
    }
}
