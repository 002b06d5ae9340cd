//! Streaming corpus reader, shared by tokenizer training and the trainer's data pipeline.
//!
//! A [`CorpusSpec`] names inputs (files, directories, glob patterns) and how to read them
//! (plain text, or JSONL with a named text field). [`CorpusSpec::resolve`] expands them into a
//! sorted, de-duplicated [`Corpus`]; [`Corpus::documents`] streams [`Document`]s one line (or
//! one JSONL record) at a time through a 1 MiB buffer, so a multi-GB file is never in memory at
//! once. Each file is hashed while it is read: [`Documents::digests`] gives the sha256 and size
//! of every file read to the end, for manifests, without a second pass over the data.

use crate::error::{Result, TokenizerError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What to do with bytes that are not valid UTF-8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidUtf8 {
    /// Stop with an error naming the file, line and byte offset.
    #[default]
    Error,
    /// Replace each invalid sequence with U+FFFD and go on.
    Replace,
}

/// What one document is in a plain-text file. (A JSONL record is always one document.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// One document per line, without its line terminator.
    #[default]
    Line,
    /// The whole file is one document (read into memory; meant for many small files).
    File,
}

/// Which inputs make up a corpus and how to read them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CorpusSpec {
    /// Files, directories (walked recursively, hidden entries skipped) or glob patterns.
    pub inputs: Vec<String>,
    /// Read every file as JSON Lines and take the text from this field (`a.b` for nesting).
    pub jsonl_field: Option<String>,
    pub invalid_utf8: InvalidUtf8,
    pub unit: Unit,
    /// Yield empty documents too (by default empty lines are skipped).
    pub keep_empty: bool,
}

/// One resolved input file.
#[derive(Clone, Debug, Serialize)]
pub struct CorpusFile {
    pub path: PathBuf,
    /// Size when the corpus was resolved.
    pub size: u64,
}

/// A resolved corpus: the files to read, in order, and how to read them.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub spec: CorpusSpec,
    pub files: Vec<CorpusFile>,
}

/// One document of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub text: String,
    /// Index into [`Corpus::files`].
    pub file: usize,
    /// 1-based line where the document starts.
    pub line: u64,
}

/// sha256 and size of one file, taken over exactly the bytes that were read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    pub documents: u64,
}

impl CorpusSpec {
    pub fn new<S: Into<String>>(inputs: impl IntoIterator<Item = S>) -> Self {
        Self {
            inputs: inputs.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Expands every input into regular files: a file is itself, a directory is walked in
    /// file-name order, anything else is a glob pattern (matches sorted). An input that matches
    /// nothing is an error naming it; the same file reached twice is read once.
    pub fn resolve(&self) -> Result<Corpus> {
        if self.inputs.is_empty() {
            return Err(TokenizerError::NoFiles {
                patterns: Vec::new(),
            });
        }
        let mut seen = HashSet::new();
        let mut files = Vec::new();
        for input in &self.inputs {
            let mut found = expand(input)?;
            if found.is_empty() {
                return Err(TokenizerError::BadInput {
                    input: input.clone(),
                    message: "no such file or directory, and no files match it as a glob pattern"
                        .into(),
                });
            }
            for path in found.drain(..) {
                let meta = std::fs::metadata(&path).map_err(|source| TokenizerError::Read {
                    path: path.clone(),
                    source,
                })?;
                let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                if seen.insert(key) {
                    files.push(CorpusFile {
                        path,
                        size: meta.len(),
                    });
                }
            }
        }
        Ok(Corpus {
            spec: self.clone(),
            files,
        })
    }
}

/// What kind of special file this is, for messages.
fn special_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

fn expand(input: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(input);
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if path.is_dir() {
        let mut out = Vec::new();
        let walk = ignore::WalkBuilder::new(path)
            .standard_filters(false)
            .hidden(true)
            .sort_by_file_name(|a, b| a.cmp(b))
            .build();
        for entry in walk {
            let entry = entry.map_err(|e| TokenizerError::BadInput {
                input: input.to_string(),
                message: e.to_string(),
            })?;
            if entry.file_type().is_some_and(|t| t.is_file()) {
                out.push(entry.into_path());
            }
        }
        return Ok(out);
    }
    // Something that exists but is neither a file nor a directory (a FIFO would block, a
    // device never ends): say what it is, not "no such file".
    if let Ok(meta) = std::fs::metadata(path) {
        return Err(TokenizerError::BadInput {
            input: input.to_string(),
            message: format!(
                "is {}, not a regular file or directory",
                special_kind(&meta.file_type())
            ),
        });
    }
    if !input.contains(['*', '?', '[']) {
        return Ok(Vec::new());
    }
    // Like a shell: `*` does not match a leading dot.
    let options = glob::MatchOptions {
        require_literal_leading_dot: true,
        ..Default::default()
    };
    let paths = glob::glob_with(input, options).map_err(|e| TokenizerError::BadInput {
        input: input.to_string(),
        message: format!("invalid glob pattern: {e}"),
    })?;
    let mut out = Vec::new();
    for p in paths {
        let p = p.map_err(|e| TokenizerError::Read {
            path: e.path().to_path_buf(),
            source: std::io::Error::new(e.error().kind(), e.error().to_string()),
        })?;
        if p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

impl Corpus {
    /// Total size of the files in bytes, as resolved (for progress bars).
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// A fresh stream over every document of every file, in order.
    pub fn documents(&self) -> Documents {
        Documents {
            spec: self.spec.clone(),
            files: self.files.iter().map(|f| f.path.clone()).collect(),
            next_file: 0,
            current: None,
            digests: Arc::new(Mutex::new(Vec::new())),
            failed: false,
        }
    }

    /// sha256 and size of every file, read separately (for when nothing is streamed).
    pub fn digests(&self) -> Result<Vec<FileDigest>> {
        self.files
            .iter()
            .map(|f| {
                let (sha256, bytes) = codex_core::hash::sha256_file(&f.path).map_err(|source| {
                    TokenizerError::Read {
                        path: f.path.clone(),
                        source,
                    }
                })?;
                Ok(FileDigest {
                    path: f.path.display().to_string(),
                    bytes,
                    sha256,
                    documents: 0,
                })
            })
            .collect()
    }
}

/// Reads bytes through, hashing and counting them.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

struct OpenFile {
    index: usize,
    path: PathBuf,
    reader: BufReader<HashingReader<File>>,
    /// Lines read so far.
    line: u64,
    /// Byte offset of the next unread line.
    offset: u64,
    documents: u64,
    buf: Vec<u8>,
}

/// The document stream of a [`Corpus`]. It stops after the first error.
pub struct Documents {
    spec: CorpusSpec,
    files: Vec<PathBuf>,
    next_file: usize,
    current: Option<OpenFile>,
    digests: Arc<Mutex<Vec<FileDigest>>>,
    failed: bool,
}

/// A handle on the digests of the files a [`Documents`] stream has read to the end.
#[derive(Clone, Debug)]
pub struct Digests(Arc<Mutex<Vec<FileDigest>>>);

impl Digests {
    /// The digests so far, in reading order.
    pub fn get(&self) -> Vec<FileDigest> {
        self.0.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

impl Documents {
    /// A handle that stays valid after the stream is moved into a consumer (a trainer).
    pub fn digests(&self) -> Digests {
        Digests(Arc::clone(&self.digests))
    }

    fn open(&mut self, index: usize) -> Result<OpenFile> {
        let path = self.files[index].clone();
        let file = File::open(&path).map_err(|source| TokenizerError::Read {
            path: path.clone(),
            source,
        })?;
        let reader = BufReader::with_capacity(
            1 << 20,
            HashingReader {
                inner: file,
                hasher: Sha256::new(),
                len: 0,
            },
        );
        Ok(OpenFile {
            index,
            path,
            reader,
            line: 0,
            offset: 0,
            documents: 0,
            buf: Vec::new(),
        })
    }

    fn finish(&mut self, file: OpenFile) {
        let hashing = file.reader.into_inner();
        let digest = FileDigest {
            path: file.path.display().to_string(),
            bytes: hashing.len,
            sha256: hex::encode(hashing.hasher.finalize()),
            documents: file.documents,
        };
        if let Ok(mut d) = self.digests.lock() {
            d.push(digest);
        }
    }

    /// The next document of the open file, or `None` at its end.
    fn next_in(&mut self, f: &mut OpenFile) -> Result<Option<Document>> {
        loop {
            f.buf.clear();
            let n = match self.spec.unit {
                Unit::Line => f.reader.read_until(b'\n', &mut f.buf),
                Unit::File if f.line == 0 && self.spec.jsonl_field.is_none() => {
                    f.reader.read_to_end(&mut f.buf)
                }
                Unit::File if self.spec.jsonl_field.is_some() => {
                    f.reader.read_until(b'\n', &mut f.buf)
                }
                Unit::File => Ok(0),
            }
            .map_err(|source| TokenizerError::Read {
                path: f.path.clone(),
                source,
            })?;
            if n == 0 {
                return Ok(None);
            }
            let start_line = f.line + 1;
            let start_offset = f.offset;
            f.offset += n as u64;
            let whole_file = self.spec.unit == Unit::File && self.spec.jsonl_field.is_none();
            f.line += if whole_file {
                f.buf.iter().filter(|&&b| b == b'\n').count() as u64
            } else {
                1
            };
            if !whole_file {
                strip_eol(&mut f.buf);
            }
            let text = match std::str::from_utf8(&f.buf) {
                Ok(s) => s.to_owned(),
                Err(e) => match self.spec.invalid_utf8 {
                    InvalidUtf8::Replace => String::from_utf8_lossy(&f.buf).into_owned(),
                    InvalidUtf8::Error => {
                        let bad = e.valid_up_to();
                        let line = start_line
                            + f.buf[..bad].iter().filter(|&&b| b == b'\n').count() as u64;
                        return Err(TokenizerError::InvalidUtf8 {
                            path: f.path.clone(),
                            line,
                            byte_offset: start_offset + bad as u64,
                        });
                    }
                },
            };
            let text = match &self.spec.jsonl_field {
                None => text,
                Some(field) => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    json_field(&text, field).map_err(|message| TokenizerError::BadRecord {
                        path: f.path.clone(),
                        line: start_line,
                        message,
                    })?
                }
            };
            if text.is_empty() && !self.spec.keep_empty {
                continue;
            }
            f.documents += 1;
            return Ok(Some(Document {
                text,
                file: f.index,
                line: start_line,
            }));
        }
    }
}

fn strip_eol(buf: &mut Vec<u8>) {
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
}

/// The string at dotted path `field` of one JSON object.
fn json_field(line: &str, field: &str) -> std::result::Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let mut cur = &value;
    for key in field.split('.') {
        cur = cur
            .get(key)
            .ok_or_else(|| format!("record has no field '{field}'"))?;
    }
    match cur {
        serde_json::Value::String(s) => Ok(s.clone()),
        other => Err(format!("field '{field}' is not a string (found {other})")),
    }
}

impl Iterator for Documents {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let mut file = match self.current.take() {
                Some(f) => f,
                None => {
                    if self.next_file >= self.files.len() {
                        return None;
                    }
                    self.next_file += 1;
                    match self.open(self.next_file - 1) {
                        Ok(f) => f,
                        Err(e) => {
                            self.failed = true;
                            return Some(Err(e));
                        }
                    }
                }
            };
            match self.next_in(&mut file) {
                Ok(Some(doc)) => {
                    self.current = Some(file);
                    return Some(Ok(doc));
                }
                Ok(None) => self.finish(file),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn special_files_are_named_not_missing() {
        let spec = CorpusSpec {
            inputs: vec!["/dev/zero".into()],
            ..Default::default()
        };
        let err = spec.resolve().unwrap_err().to_string();
        assert!(err.contains("character device"), "{err}");
        assert!(!err.contains("no such file"), "{err}");
    }

    fn texts(spec: &CorpusSpec) -> Result<Vec<String>> {
        spec.resolve()?
            .documents()
            .map(|d| d.map(|d| d.text))
            .collect()
    }

    #[test]
    fn lines_files_dirs_and_globs_resolve_sorted_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.txt", b"b1\r\nb2\n");
        write(dir.path(), "a.txt", b"a1\n\na2");
        write(dir.path(), "sub/c.txt", b"c1\n");
        write(dir.path(), ".hidden.txt", b"h\n");
        let d = dir.path().display().to_string();
        let spec = CorpusSpec::new([d.clone(), format!("{d}/*.txt")]);
        assert_eq!(texts(&spec).unwrap(), ["a1", "a2", "b1", "b2", "c1"]);
    }

    #[test]
    fn digests_match_sha256_of_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.txt", b"hello\nworld\n");
        let corpus = CorpusSpec::new([p.display().to_string()])
            .resolve()
            .unwrap();
        let docs = corpus.documents();
        let digests = docs.digests();
        assert_eq!(docs.count(), 2);
        let got = digests.get();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].sha256,
            codex_core::hash::sha256_bytes(b"hello\nworld\n")
        );
        assert_eq!((got[0].bytes, got[0].documents), (12, 2));
        assert_eq!(corpus.digests().unwrap()[0].sha256, got[0].sha256);
    }

    #[test]
    fn invalid_utf8_names_line_and_offset_or_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bad.txt", b"ok\nfine\nab\xffcd\n");
        let mut spec = CorpusSpec::new([p.display().to_string()]);
        match texts(&spec) {
            Err(TokenizerError::InvalidUtf8 {
                line, byte_offset, ..
            }) => {
                assert_eq!((line, byte_offset), (3, 10));
            }
            other => panic!("expected InvalidUtf8, got {other:?}"),
        }
        spec.invalid_utf8 = InvalidUtf8::Replace;
        assert_eq!(texts(&spec).unwrap(), ["ok", "fine", "ab\u{fffd}cd"]);
        spec.invalid_utf8 = InvalidUtf8::Error;
        spec.unit = Unit::File;
        match texts(&spec) {
            Err(TokenizerError::InvalidUtf8 {
                line, byte_offset, ..
            }) => {
                assert_eq!((line, byte_offset), (3, 10));
            }
            other => panic!("expected InvalidUtf8, got {other:?}"),
        }
    }

    #[test]
    fn jsonl_field_extraction_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "d.jsonl",
            b"{\"text\": \"one\", \"m\": {\"t\": \"x\"}}\n\n{\"text\": \"two\\nlines\"}\n",
        );
        let mut spec = CorpusSpec::new([p.display().to_string()]);
        spec.jsonl_field = Some("text".into());
        assert_eq!(texts(&spec).unwrap(), ["one", "two\nlines"]);
        spec.jsonl_field = Some("m.t".into());
        let err = texts(&spec).unwrap_err().to_string();
        assert!(
            err.contains("d.jsonl:3: record has no field 'm.t'"),
            "{err}"
        );
    }

    #[test]
    fn missing_input_is_an_error_naming_it() {
        let err = CorpusSpec::new(["/nonexistent/x*.txt"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x*.txt"), "{err}");
        let err = CorpusSpec::new(["/nonexistent/file.txt"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/file.txt"), "{err}");
    }

    #[test]
    fn whole_file_unit_keeps_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.txt", b"x\ny\n");
        let mut spec = CorpusSpec::new([p.display().to_string()]);
        spec.unit = Unit::File;
        assert_eq!(texts(&spec).unwrap(), ["x\ny\n"]);
    }
}
