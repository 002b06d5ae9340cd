//! Finding and loading a tokenizer: a `tokenizer.json` file, an HF model directory, or
//! `org/name[@revision]` from the local hf-hub cache (offline; nothing is downloaded).

use crate::error::{Result, TokenizerError};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Largest tokenizer.json read. Published ones with 250k-token vocabularies are under 40 MB;
/// the file is held and parsed in memory (once by the probe, once by `tokenizers`).
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Token ids must be below this (2^24, ~70× GPT-2's vocabulary). `tokenizers` walks every id
/// up to the largest one when it serializes a vocabulary, so one id of 4e9 in a small file
/// is tens of GB of memory.
pub const MAX_VOCAB: u64 = 1 << 24;
/// Longest padding a tokenizer.json (or `--max-length` with fixed padding) may ask for: every
/// encoded document is padded to it, so it is memory per document.
pub const MAX_PAD_LENGTH: usize = 1 << 20;

/// Loads a tokenizer from a file, a model directory or the hf-hub cache (see [`resolve`]).
pub fn load(source: &str) -> Result<Tokenizer> {
    let path = resolve(source)?;
    load_file(&path)
}

/// Loads a `tokenizer.json` (see [`read_file`] and [`parse`]).
pub fn load_file(path: &Path) -> Result<Tokenizer> {
    parse(&read_file(path)?, path)
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`] (a FIFO or device would block or never
/// end; a huge file would be read whole before anything could refuse it).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    read_bounded(path, MAX_FILE_BYTES)
}

pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let read_err = |source| TokenizerError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Checked before opening: opening a FIFO blocks until a writer appears.
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(TokenizerError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let too_large = |bytes| TokenizerError::TooLarge {
        path: path.to_path_buf(),
        bytes,
        max,
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow after the stat; never read past the cap.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Parses tokenizer.json bytes read from `path` (named in errors). The vocabulary ids and
/// padding lengths are checked first ([`check`]), since `tokenizers` allocates by them.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
    check(bytes, path)?;
    Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The parts of a tokenizer.json that size allocations; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    model: Option<ProbeModel>,
    #[serde(default)]
    added_tokens: Option<Vec<ProbeAdded>>,
    #[serde(default)]
    padding: Option<ProbePadding>,
    // Parsed (not skipped) so that bad strings in them are errors here: `tokenizers` panics
    // (`expect("Helper")`) when a decoder it buffers fails to deserialize.
    #[serde(default, rename = "normalizer")]
    _normalizer: Value,
    #[serde(default, rename = "pre_tokenizer")]
    _pre_tokenizer: Value,
    #[serde(default, rename = "post_processor")]
    _post_processor: Value,
    #[serde(default, rename = "decoder")]
    _decoder: Value,
}

#[derive(Deserialize)]
struct ProbeModel {
    #[serde(default)]
    vocab: Option<ProbeVocab>,
}

#[derive(Deserialize)]
struct ProbeAdded {
    id: Value,
    #[serde(default)]
    content: Value,
}

#[derive(Deserialize)]
struct ProbePadding {
    #[serde(default)]
    strategy: Value,
    #[serde(default)]
    pad_to_multiple_of: Value,
}

/// A model vocabulary: `{token: id}` (BPE, WordPiece, WordLevel) or `[[piece, score], …]`
/// (Unigram, ids are the positions).
enum ProbeVocab {
    Map(Vec<(String, Value)>),
    List(u64),
}

impl<'de> Deserialize<'de> for ProbeVocab {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ProbeVocab;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a vocab map or list")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<ProbeVocab, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<String, Value>()? {
                    out.push(entry);
                }
                Ok(ProbeVocab::Map(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> std::result::Result<ProbeVocab, A::Error> {
                let mut n = 0;
                while s.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(ProbeVocab::List(n))
            }
        }
        d.deserialize_any(V)
    }
}

/// Refuses token ids that are not integers, not below [`MAX_VOCAB`], or not dense: the model
/// vocabulary and the added tokens together must use exactly the ids 0..n. (`tokenizers`
/// tolerates holes with a warning, but walks them all; no published tokenizer has any.)
/// Also refuses padding longer than [`MAX_PAD_LENGTH`].
pub fn check(bytes: &[u8], path: &Path) -> Result<()> {
    let corrupt = |message: String| TokenizerError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let bad = |token: String, id: &Value, reason: String| TokenizerError::BadVocab {
        path: path.to_path_buf(),
        token,
        id: id.to_string(),
        reason,
    };
    // JSON is UTF-8; serde_json skips unused strings without checking them, and `tokenizers`
    // panics on some of them.
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(corrupt(format!(
            "invalid UTF-8 at byte offset {}",
            e.valid_up_to()
        )));
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut ids: Vec<(u64, String)> = Vec::new();
    let id_of = |token: &str, id: &Value| -> Result<u64> {
        match id.as_u64() {
            Some(n) if n < MAX_VOCAB => Ok(n),
            Some(_) => Err(bad(
                token.into(),
                id,
                format!("ids must be below {MAX_VOCAB} (2^24)"),
            )),
            None => Err(bad(
                token.into(),
                id,
                "ids must be non-negative integers".into(),
            )),
        }
    };
    match probe.model.and_then(|m| m.vocab) {
        Some(ProbeVocab::Map(entries)) => {
            for (token, id) in entries {
                ids.push((id_of(&token, &id)?, token));
            }
        }
        Some(ProbeVocab::List(n)) if n > MAX_VOCAB => {
            return Err(corrupt(format!(
                "the vocab has {n} pieces; at most {MAX_VOCAB} (2^24) are supported"
            )));
        }
        Some(ProbeVocab::List(n)) => {
            // Positions are dense by construction, so a piece is never the one named in an
            // error: no need to keep its text.
            ids.extend((0..n).map(|i| (i, String::new())))
        }
        None => {}
    }
    for added in probe.added_tokens.unwrap_or_default() {
        let token = match &added.content {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        ids.push((id_of(&token, &added.id)?, token));
    }
    // Ids repeat legitimately (special tokens are usually in both lists).
    ids.sort_unstable_by_key(|(id, _)| *id);
    ids.dedup_by_key(|(id, _)| *id);
    if let Some(missing) = ids
        .iter()
        .enumerate()
        .position(|(i, (id, _))| *id != i as u64)
    {
        let (max, token) = ids.last().cloned().unwrap_or_default();
        return Err(bad(
            token,
            &Value::from(max),
            format!(
                "ids must be dense (0..{}), but id {missing} is unused",
                ids.len()
            ),
        ));
    }
    if let Some(p) = probe.padding {
        let fixed = p.strategy.get("Fixed").cloned().unwrap_or(Value::Null);
        for (what, v) in [
            ("padding length", fixed),
            ("pad_to_multiple_of", p.pad_to_multiple_of),
        ] {
            if let Some(n) = v.as_u64()
                && n > MAX_PAD_LENGTH as u64
            {
                return Err(corrupt(format!(
                    "{what} {n} exceeds {MAX_PAD_LENGTH} tokens (every document would be padded to it)"
                )));
            }
        }
    }
    Ok(())
}

/// The hf-hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (the order the Python `huggingface_hub` uses).
pub fn hub_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("HF_HUB_CACHE") {
        return Some(p);
    }
    if let Some(p) = var("HF_HOME") {
        return Some(p.join("hub"));
    }
    var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub"))
}

/// Where `source` points: an existing file is itself; a directory must hold `tokenizer.json`;
/// otherwise `org/name[@rev]` is looked up in the hf-hub cache (revision default `main`, a ref
/// name or a commit hash). The error lists every place that was tried.
pub fn resolve(source: &str) -> Result<PathBuf> {
    let path = Path::new(source);
    let mut looked = Vec::new();
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        let file = path.join("tokenizer.json");
        if file.is_file() {
            return Ok(file);
        }
        looked.push(format!(
            "{} (no tokenizer.json in this directory)",
            file.display()
        ));
        return Err(TokenizerError::NotFound {
            source_name: source.into(),
            looked,
        });
    }
    if path.exists() {
        return Err(TokenizerError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    looked.push(format!("{} (no such file or directory)", path.display()));
    if let Some((repo_id, revision)) = hub_id(source) {
        match hub_cache_dir() {
            None => looked.push("hf-hub cache (HF_HUB_CACHE, HF_HOME and HOME are unset)".into()),
            Some(cache_dir) => {
                let repo = Repo::with_revision(repo_id.clone(), RepoType::Model, revision.clone());
                let cache = Cache::new(cache_dir.clone());
                if let Some(p) = cache.repo(repo.clone()).get("tokenizer.json") {
                    return Ok(p);
                }
                // A commit hash names a snapshot directly, without a ref file.
                let repo_dir = cache_dir.join(repo.folder_name());
                let snapshot = repo_dir
                    .join("snapshots")
                    .join(&revision)
                    .join("tokenizer.json");
                if snapshot.is_file() {
                    return Ok(snapshot);
                }
                let reference = repo_dir.join("refs").join(&revision);
                // A ref file holds one commit hash; a bigger one is not a ref.
                let ref_text = read_bounded(&reference, 4096)
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                looked.push(match ref_text {
                    Ok(hash) => format!(
                        "{} (ref {revision} -> {}, no tokenizer.json)",
                        repo_dir.join("snapshots").join(hash.trim()).display(),
                        hash.trim()
                    ),
                    Err(_) if repo_dir.is_dir() => format!(
                        "{} (no ref '{revision}' and no snapshot '{revision}')",
                        repo_dir.display()
                    ),
                    Err(_) => format!("{} (not in the hf-hub cache)", repo_dir.display()),
                });
            }
        }
    }
    Err(TokenizerError::NotFound {
        source_name: source.into(),
        looked,
    })
}

/// `org/name[@rev]` → (`org/name`, rev or `main`), when `source` has that shape.
fn hub_id(source: &str) -> Option<(String, String)> {
    let (id, rev) = match source.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev),
        Some(_) => return None,
        None => (source, "main"),
    };
    let (org, name) = id.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (ok(org) && ok(name)).then(|| (id.to_string(), rev.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word_level(vocab: &str, added: &str) -> String {
        format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{added}],
            "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
            "model":{{"type":"WordLevel","vocab":{{{vocab}}},"unk_token":"a"}}}}"#
        )
    }

    fn added(id: &str, content: &str) -> String {
        format!(
            r#"{{"id":{id},"content":"{content}","single_word":false,"lstrip":false,
            "rstrip":false,"normalized":false,"special":true}}"#
        )
    }

    fn parse_err(json: &str) -> String {
        parse(json.as_bytes(), Path::new("t.json"))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn huge_sparse_and_bad_ids_are_refused_before_tokenizers_sees_them() {
        // Regression: one id of 4e9 in a tiny file made `tokenizers` walk (and allocate for)
        // every id up to it.
        let e = parse_err(&word_level(r#""a":0,"b":1,"c":4000000000"#, ""));
        assert!(
            e.contains("t.json") && e.contains("\"c\" has id 4000000000"),
            "{e}"
        );
        let e = parse_err(&word_level(r#""a":0"#, &added("4000000000", "X")));
        assert!(e.contains("\"X\" has id 4000000000"), "{e}");
        let e = parse_err(&word_level(r#""a":0,"b":2"#, ""));
        assert!(e.contains("dense (0..2), but id 1 is unused"), "{e}");
        let e = parse_err(&word_level(r#""a":0,"b":-1"#, ""));
        assert!(
            e.contains("\"b\" has id -1: ids must be non-negative"),
            "{e}"
        );
        let e = parse_err(&word_level(r#""a":0,"b":1.5"#, ""));
        assert!(e.contains("non-negative integers"), "{e}");
        let e = parse_err(&word_level(r#""a":0"#, "").replace(
            r#""padding":null"#,
            r#""padding":{"strategy":{"Fixed":4000000000},"direction":"Right","pad_to_multiple_of":null,"pad_id":0,"pad_type_id":0,"pad_token":"a"}"#,
        ));
        assert!(e.contains("padding length 4000000000"), "{e}");
    }

    #[test]
    fn fuzz_findings_are_errors() {
        // tokenizer_json fuzz target: an invalid UTF-8 byte in the decoder's `type` made
        // `tokenizers` panic (decoders/mod.rs `expect("Helper")`).
        let json = word_level(r#""a":0"#, "").replace(
            r#""decoder":null"#,
            "\"decoder\":{\"type\":\"Metaspa\u{FFFD}e\"}",
        );
        let mut bytes = json.into_bytes();
        let at = bytes
            .windows(3)
            .position(|w| w == "\u{FFFD}".as_bytes())
            .unwrap();
        bytes.splice(at..at + 3, [0xff]);
        let e = parse(&bytes, Path::new("t.json")).unwrap_err().to_string();
        assert!(e.contains("t.json: invalid UTF-8 at byte offset"), "{e}");
        // The same through a lone surrogate escape, which is valid UTF-8 text.
        let json = word_level(r#""a":0"#, "").replace(
            r#""decoder":null"#,
            r#""decoder":{"type":"Metaspace","replacement":"\ud800"}"#,
        );
        let e = parse_err(&json);
        assert!(e.contains("t.json") && e.contains("hex escape"), "{e}");
    }

    #[test]
    fn dense_ids_with_added_tokens_load() {
        // Added tokens both repeat vocab ids (BERT) and extend past them (GPT-2 style).
        let json = word_level(
            r#""a":0,"b":1"#,
            &[added("1", "b"), added("2", "X")].join(","),
        );
        let t = parse(json.as_bytes(), Path::new("t.json")).unwrap();
        assert_eq!(t.get_vocab_size(true), 3);
    }

    #[test]
    fn reads_are_bounded_to_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = dir.path().join("big.json");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let e = read_file(&big).unwrap_err().to_string();
        assert!(e.contains("big.json") && e.contains("larger than"), "{e}");
    }

    #[test]
    fn hub_ids() {
        assert_eq!(hub_id("org/name"), Some(("org/name".into(), "main".into())));
        assert_eq!(
            hub_id("org/name@v1"),
            Some(("org/name".into(), "v1".into()))
        );
        assert_eq!(hub_id("./x/y"), None);
        assert_eq!(hub_id("/abs/path"), None);
        assert_eq!(hub_id("a/b/c"), None);
        assert_eq!(hub_id("name"), None);
    }
}
