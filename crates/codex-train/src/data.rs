//! The data pipeline: corpus → tokenizer → token ids → cached shards → packed blocks →
//! seeded train/val split → per-epoch shuffled batches with an exact cursor.
//!
//! Token ids are cached as shards (`u32` little-endian) with a `manifest.json` keyed by the
//! sha256 of the sources, the tokenizer and the reading settings; an unchanged corpus is
//! not tokenized again. Blocks are `context_length + 1` tokens starting every
//! `context_length` tokens (input and shifted target), so every token is a target once.
//! The cursor is a global sample index: sample `k` is position `k % n_train` of the
//! permutation of epoch `k / n_train`, which depends only on the seed and the epoch, so a
//! resumed run reads exactly the batches an uninterrupted one would.

use crate::config::{DataFormat, TokenizerKind, TrainConfig};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use codex_core::hash::sha256_bytes;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The corpus compiled into the binary (see `data/README.md`).
pub const EMBEDDED_CORPUS: &[u8] = include_bytes!("../../../data/cpython-stdlib.txt");
/// Name the embedded corpus goes by in manifests and provenance.
pub const EMBEDDED_NAME: &str = "<embedded>/data/cpython-stdlib.txt";

const SHARD_TOKENS: usize = 1 << 20;
const MANIFEST: &str = "manifest.json";

/// How text becomes ids.
pub enum TextTokenizer {
    /// UTF-8 bytes; vocabulary 256.
    Byte,
    Hf(Box<tokenizers::Tokenizer>),
}

impl TextTokenizer {
    pub fn vocab_size(&self) -> usize {
        match self {
            TextTokenizer::Byte => 256,
            TextTokenizer::Hf(t) => t.get_vocab_size(true),
        }
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out)?;
        Ok(out)
    }

    fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        match self {
            TextTokenizer::Byte => out.extend(text.bytes().map(u32::from)),
            TextTokenizer::Hf(t) => {
                let enc = t
                    .encode(text, false)
                    .map_err(|e| Error::Encode(e.to_string()))?;
                out.extend_from_slice(enc.get_ids());
            }
        }
        Ok(())
    }
}

/// Text read before a parallel encoding batch (bounds the memory held by one batch).
const ENCODE_BATCH_BYTES: usize = 8 << 20;

/// The data pipeline's encoder: the byte-level BPE fast path of `codex_tokenizer::fast` where
/// the tokenizer allows it (ids identical to `tokenizers`), in parallel across documents.
struct DocumentEncoder<'a> {
    /// `None` for the byte tokenizer.
    hf: Option<codex_tokenizer::fast::Encoder<'a>>,
}

impl<'a> DocumentEncoder<'a> {
    fn new(tokenizer: &'a TextTokenizer) -> Self {
        let hf = match tokenizer {
            TextTokenizer::Hf(t) => Some(codex_tokenizer::fast::Encoder::new(t)),
            TextTokenizer::Byte => None,
        };
        DocumentEncoder { hf }
    }

    /// Appends the ids of `docs`, in order, to `out`.
    fn encode_batch<S: AsRef<str> + Sync>(&self, docs: &[S], out: &mut Vec<u32>) -> Result<()> {
        use rayon::prelude::*;
        let encoded = docs
            .par_iter()
            .map(|d| {
                let mut ids = Vec::new();
                let text = d.as_ref();
                match &self.hf {
                    Some(enc) => enc
                        .encode_into(text, false, &mut ids)
                        .map_err(|e| Error::Encode(e.to_string()))?,
                    None => ids.extend(text.bytes().map(u32::from)),
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        out.reserve(encoded.iter().map(Vec::len).sum());
        for ids in encoded {
            out.extend_from_slice(&ids);
        }
        Ok(())
    }
}

/// One source file of the corpus, as recorded in the manifest and provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceDigest {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ShardEntry {
    file: String,
    tokens: u64,
    sha256: String,
}

/// `cache/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    schema_version: u32,
    /// sha256 over sources, tokenizer and settings; a different key means re-tokenize.
    key: String,
    sources: Vec<SourceDigest>,
    tokenizer: String,
    vocab_size: usize,
    total_tokens: u64,
    shards: Vec<ShardEntry>,
    /// What `[safety]` did (its policy hash is part of `key`); absent when it was off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    safety: Option<codex_safety::SafetyReport>,
    /// Documents per step and the token-length histogram, when documents were filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    documents: Option<DocReport>,
}

/// Document-level steps before tokenization besides `[safety]` (flags of `codex data prepare`).
#[derive(Debug, Clone, Default)]
pub struct DocOptions {
    /// Drop documents whose text is identical to an earlier one (sha256).
    pub exact_dedup: bool,
    /// Drop near-duplicates of earlier documents (MinHash-LSH).
    pub near_dup: Option<codex_safety::minhash::MinHashConfig>,
}

impl DocOptions {
    fn any(&self) -> bool {
        self.exact_dedup || self.near_dup.is_some()
    }
}

/// Documents and bytes left after one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageCount {
    pub stage: String,
    pub documents: u64,
    pub bytes: u64,
}

/// What the document steps did (the dataset card of `codex data prepare`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DocReport {
    pub stages: Vec<StageCount>,
    /// `(at most N tokens, documents)`, N a power of two.
    pub token_histogram: Vec<(u64, u64)>,
}

impl DocReport {
    fn push(&mut self, stage: &str, texts: &[String]) {
        self.stages.push(StageCount {
            stage: stage.into(),
            documents: texts.len() as u64,
            bytes: texts.iter().map(|t| t.len() as u64).sum(),
        });
    }
}

/// The tokenized corpus, split into blocks.
pub struct Dataset {
    tokens: Vec<u32>,
    pub vocab_size: usize,
    pub context_length: usize,
    /// Start offsets of training blocks.
    train: Vec<usize>,
    /// Start offsets of validation blocks (in corpus order).
    val: Vec<usize>,
    seed: u64,
    /// sha256 over the sources, tokenizer and settings (the cache key).
    pub data_hash: String,
    pub sources: Vec<SourceDigest>,
    /// Whether the shards came from the cache.
    pub cache_hit: bool,
    /// Where the tokenizer came from (`byte`, a path, or `trained`).
    pub tokenizer_desc: String,
    /// What `[safety]` did to the corpus (`None` when it is off).
    pub safety: Option<codex_safety::SafetyReport>,
    /// Documents per step (`None` unless documents were filtered or deduplicated).
    pub documents: Option<DocReport>,
}

/// What the caller learns while data is prepared.
pub struct Prepared {
    pub dataset: Dataset,
    /// The tokenizer (to copy into the run directory, or for `codex eval` to reuse).
    pub tokenizer: TextTokenizer,
}

/// Resolves, reads, tokenizes (or loads from cache) and splits the corpus of `cfg`.
/// `cache_dir` is where shards live; `None` disables caching.
pub fn prepare(
    cfg: &TrainConfig,
    cache_dir: Option<&Path>,
    log: &mut dyn FnMut(&str),
) -> Result<Prepared> {
    prepare_with(cfg, cache_dir, &DocOptions::default(), log)
}

/// [`prepare`] with document-level deduplication.
pub fn prepare_with(
    cfg: &TrainConfig,
    cache_dir: Option<&Path>,
    doc_opts: &DocOptions,
    log: &mut dyn FnMut(&str),
) -> Result<Prepared> {
    let d = &cfg.data;
    // 1. Sources and their digests (cheap, and needed for the cache key before tokenizing).
    let corpus = if d.inputs.is_empty() {
        None
    } else {
        Some(resolve_corpus(cfg)?)
    };
    let sources = match &corpus {
        None => vec![SourceDigest {
            path: EMBEDDED_NAME.into(),
            bytes: EMBEDDED_CORPUS.len() as u64,
            sha256: sha256_bytes(EMBEDDED_CORPUS),
        }],
        Some(c) => c
            .digests()
            .map_err(|e| Error::Invalid(e.to_string()))?
            .into_iter()
            .map(|f| SourceDigest {
                path: f.path,
                bytes: f.bytes,
                sha256: f.sha256,
            })
            .collect(),
    };
    // 1b. `[safety]`: the policy in force; the documents are filtered once, when first needed
    // (tokenizer training or a cache miss), never on a cache hit.
    let policy = cfg
        .safety
        .load()
        .map_err(|e| Error::Invalid(format!("safety.policy: {e}")))?;
    let bypass = codex_safety::bypass_from_env();
    let mut filtered: Option<Filtered> = None;
    let filter = |filtered: &mut Option<Filtered>, log: &mut dyn FnMut(&str)| match (
        &policy,
        filtered.take(),
    ) {
        (_, Some(f)) => Ok(f),
        (p, None) => read_filtered(p.as_ref(), doc_opts, cfg, corpus.as_ref(), bypass, log),
    };
    let filtering = policy.is_some() || doc_opts.any();
    // 2. Tokenizer.
    let (tokenizer, tokenizer_id, tokenizer_desc) = match cfg.tokenizer.kind {
        TokenizerKind::Byte => (
            TextTokenizer::Byte,
            "byte-level-256".to_string(),
            "byte".to_string(),
        ),
        TokenizerKind::Load => {
            let path = Path::new(&cfg.tokenizer.path);
            let tok = codex_tokenizer::source::load(&cfg.tokenizer.path)?;
            let resolved = codex_tokenizer::source::resolve(&cfg.tokenizer.path)
                .unwrap_or_else(|_| path.to_path_buf());
            let (sha, _) =
                codex_core::hash::sha256_file(&resolved).map_err(|source| Error::Read {
                    path: resolved.clone(),
                    source,
                })?;
            (
                TextTokenizer::Hf(Box::new(tok)),
                format!("file:{sha}"),
                resolved.display().to_string(),
            )
        }
        TokenizerKind::Train => {
            log(&format!(
                "training a BPE tokenizer (vocab {}) on the corpus",
                cfg.tokenizer.vocab_size
            ));
            let tc = codex_tokenizer::train::TrainConfig {
                vocab_size: cfg.tokenizer.vocab_size,
                min_frequency: cfg.tokenizer.min_frequency,
                normalization: codex_tokenizer::train::Normalization::None,
                ..Default::default()
            };
            let trained = match &corpus {
                // Secrets must not reach the vocabulary either: train on the filtered texts.
                _ if filtering => {
                    let f = filter(&mut filtered, log)?;
                    let docs: Vec<_> = f
                        .texts
                        .iter()
                        .enumerate()
                        .map(|(i, t)| {
                            Ok(codex_tokenizer::corpus::Document {
                                text: t.clone(),
                                file: 0,
                                line: i as u64 + 1,
                            })
                        })
                        .collect();
                    filtered = Some(f);
                    codex_tokenizer::train::train(&tc, docs.into_iter(), &|_| {})
                }
                Some(c) => codex_tokenizer::train::train(&tc, c.documents(), &|_| {}),
                None => {
                    let text = String::from_utf8_lossy(EMBEDDED_CORPUS).into_owned();
                    let docs = text
                        .lines()
                        .filter(|l| !l.is_empty())
                        .enumerate()
                        .map(|(i, l)| {
                            Ok(codex_tokenizer::corpus::Document {
                                text: l.to_string(),
                                file: 0,
                                line: i as u64 + 1,
                            })
                        })
                        .collect::<Vec<_>>();
                    codex_tokenizer::train::train(&tc, docs.into_iter(), &|_| {})
                }
            }?;
            let json = trained.tokenizer.to_string(false).map_err(|e| {
                Error::Internal(format!("cannot serialize the trained tokenizer: {e}"))
            })?;
            (
                TextTokenizer::Hf(Box::new(trained.tokenizer)),
                format!("trained:{}", sha256_bytes(json.as_bytes())),
                "trained".into(),
            )
        }
    };
    let vocab_size = tokenizer.vocab_size();
    // 3. Cache key: sources + tokenizer + reading settings (not the split: blocks are cheap).
    let mut key_json = serde_json::json!({
        "sources": sources, "tokenizer": tokenizer_id, "format": d.format, "text_field": d.text_field,
        "schema_version": codex_core::SCHEMA_VERSION,
    });
    // Only when on, so caches built without `[safety]` keep their keys.
    if doc_opts.any() {
        key_json["documents"] = serde_json::json!({
            "exact_dedup": doc_opts.exact_dedup,
            "near_dup": doc_opts.near_dup.map(|m| (m.shingle, m.bands, m.rows, m.threshold)),
        });
    }
    if let Some(p) = &policy {
        key_json["safety"] = serde_json::json!({
            "policy_sha256": p.hash, "on_block": cfg.safety.on_block, "bypass": bypass || p.bypass,
        });
    }
    let key_text = key_json.to_string();
    let key = sha256_bytes(key_text.as_bytes());
    let cached = match cache_dir {
        Some(dir) => read_cache(dir, &key)?,
        None => None,
    };
    let cache_hit = cached.is_some();
    let mut safety_report = None;
    let mut doc_report = None;
    let tokens = match cached {
        Some((t, report, docs)) => {
            safety_report = report;
            doc_report = docs;
            log(&format!(
                "data: reusing {} cached tokens (key {})",
                t.len(),
                &key[..12]
            ));
            t
        }
        None => {
            let mut tokens = Vec::new();
            let encoder = DocumentEncoder::new(&tokenizer);
            match &corpus {
                _ if filtering => {
                    let mut f = filter(&mut filtered, log)?;
                    let mut hist = std::collections::BTreeMap::<u64, u64>::new();
                    for t in &f.texts {
                        let before = tokens.len();
                        // One at a time for the per-document histogram (the fast path
                        // still applies; documents are not encoded in parallel here).
                        encoder.encode_batch(std::slice::from_ref(t), &mut tokens)?;
                        let n = (tokens.len() - before) as u64;
                        *hist.entry(n.max(1).next_power_of_two()).or_default() += 1;
                    }
                    f.docs.token_histogram = hist.into_iter().collect();
                    safety_report = f.safety;
                    doc_report = Some(f.docs);
                }
                None => {
                    let text = std::str::from_utf8(EMBEDDED_CORPUS).map_err(|e| {
                        Error::Internal(format!("embedded corpus is not UTF-8: {e}"))
                    })?;
                    encoder.encode_batch(&[text], &mut tokens)?;
                }
                Some(c) => {
                    // Documents are read in order and encoded in parallel a batch at a time;
                    // ids are appended in document order, so the result does not depend on
                    // the thread count.
                    let mut batch: Vec<String> = Vec::new();
                    let mut batch_bytes = 0usize;
                    for doc in c.documents() {
                        let doc = doc.map_err(|e| Error::Invalid(e.to_string()))?;
                        batch_bytes += doc.text.len();
                        batch.push(doc.text);
                        if batch_bytes >= ENCODE_BATCH_BYTES {
                            encoder.encode_batch(&batch, &mut tokens)?;
                            batch.clear();
                            batch_bytes = 0;
                        }
                    }
                    encoder.encode_batch(&batch, &mut tokens)?;
                }
            }
            if let Some(dir) = cache_dir {
                write_cache(
                    dir,
                    &key,
                    &sources,
                    &tokenizer_id,
                    vocab_size,
                    &tokens,
                    safety_report.as_ref(),
                    doc_report.as_ref(),
                )?;
            }
            log(&format!(
                "data: {} tokens from {} source file(s)",
                tokens.len(),
                sources.len()
            ));
            tokens
        }
    };
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary of {vocab_size}"
        )));
    }
    let mut dataset = Dataset::new(
        tokens,
        vocab_size,
        d.context_length,
        d.val_fraction,
        d.seed,
        key,
        sources,
        cache_hit,
        tokenizer_desc,
    )?;
    dataset.safety = safety_report;
    dataset.documents = doc_report;
    Ok(Prepared { dataset, tokenizer })
}

/// The texts that go on to tokenization and what the steps before did.
struct Filtered {
    texts: Vec<String>,
    safety: Option<codex_safety::SafetyReport>,
    docs: DocReport,
}

/// Reads every document (the embedded corpus is one), applies the policy, then the
/// deduplication steps.
fn read_filtered(
    policy: Option<&codex_safety::Policy>,
    doc_opts: &DocOptions,
    cfg: &TrainConfig,
    corpus: Option<&codex_tokenizer::corpus::Corpus>,
    bypass: bool,
    log: &mut dyn FnMut(&str),
) -> Result<Filtered> {
    let (texts, names): (Vec<String>, Vec<String>) = match corpus {
        None => {
            let text = std::str::from_utf8(EMBEDDED_CORPUS)
                .map_err(|e| Error::Internal(format!("embedded corpus is not UTF-8: {e}")))?;
            (vec![text.to_string()], vec![EMBEDDED_NAME.to_string()])
        }
        Some(c) => {
            let mut texts = Vec::new();
            let mut names = Vec::new();
            for doc in c.documents() {
                let doc = doc.map_err(|e| Error::Invalid(e.to_string()))?;
                let file = c.files.get(doc.file).map(|f| f.path.display().to_string());
                names.push(format!("{}:{}", file.unwrap_or_default(), doc.line));
                texts.push(doc.text);
            }
            (texts, names)
        }
    };
    let mut docs = DocReport::default();
    docs.push("read", &texts);
    let (mut texts, safety) = match policy {
        None => (texts, None),
        Some(p) => {
            let (t, r) = safety_filter(p, cfg, texts, &names, bypass, log)?;
            docs.push("safety", &t);
            (t, Some(r))
        }
    };
    if doc_opts.exact_dedup {
        let mut seen = std::collections::HashSet::new();
        texts.retain(|t| seen.insert(sha256_bytes(t.as_bytes())));
        docs.push("exact_dedup", &texts);
    }
    if let Some(m) = &doc_opts.near_dup {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let dup = codex_safety::minhash::near_duplicates(&refs, m);
        let mut keep = dup.iter().map(Option::is_none);
        texts.retain(|_| keep.next().unwrap_or(true));
        docs.push("near_dedup", &texts);
    }
    Ok(Filtered {
        texts,
        safety,
        docs,
    })
}

/// Applies the policy to `texts` (named by `names` in errors), failing or dropping blocked ones
/// per `on_block`; the error names files and rules, never the matched text.
fn safety_filter(
    policy: &codex_safety::Policy,
    cfg: &TrainConfig,
    texts: Vec<String>,
    names: &[String],
    bypass: bool,
    log: &mut dyn FnMut(&str),
) -> Result<(Vec<String>, codex_safety::SafetyReport)> {
    let on_block = cfg.safety.on_block;
    let f = codex_safety::train::filter_texts(policy, texts, on_block, bypass);
    if !f.blocked.is_empty() && on_block == codex_safety::OnBlock::Fail {
        let list: Vec<String> = f
            .blocked
            .iter()
            .take(20)
            .map(|b| format!("{} ({})", names[b.index], b.rules.join(", ")))
            .collect();
        return Err(Error::Invalid(format!(
            "safety policy {} blocked {} document(s) (safety.on_block = \"fail\"): {}{}",
            policy.source,
            f.blocked.len(),
            list.join("; "),
            if f.blocked.len() > 20 { "; …" } else { "" }
        )));
    }
    let r = &f.report;
    log(&format!(
        "safety: {} document(s) in, {} dropped, {} redacted (policy {}, sha256 {})",
        r.documents_in,
        r.documents_dropped,
        r.documents_redacted,
        policy.source,
        &policy.hash[..12]
    ));
    if r.tally.documents_bypassed > 0 {
        tracing::warn!(
            "safety: bypass let {} blocked document(s) through (recorded in the run record)",
            r.tally.documents_bypassed
        );
    }
    Ok((f.kept.into_iter().map(|(_, t)| t).collect(), f.report))
}

fn resolve_corpus(cfg: &TrainConfig) -> Result<codex_tokenizer::corpus::Corpus> {
    let d = &cfg.data;
    let jsonl = match d.format {
        DataFormat::Jsonl => true,
        DataFormat::Text => false,
        DataFormat::Auto => d
            .inputs
            .iter()
            .all(|i| i.ends_with(".jsonl") || i.ends_with(".ndjson")),
    };
    let spec = codex_tokenizer::corpus::CorpusSpec {
        inputs: d.inputs.clone(),
        jsonl_field: jsonl.then(|| d.text_field.clone()),
        // A whole file is one document, so code keeps its line structure.
        unit: codex_tokenizer::corpus::Unit::File,
        ..Default::default()
    };
    spec.resolve()
        .map_err(|e| Error::Invalid(format!("data.inputs: {e}")))
}

type Cached = (
    Vec<u32>,
    Option<codex_safety::SafetyReport>,
    Option<DocReport>,
);

fn read_cache(dir: &Path, key: &str) -> Result<Option<Cached>> {
    let path = dir.join(MANIFEST);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let Ok(m) = serde_json::from_str::<Manifest>(&text) else {
        return Ok(None);
    };
    if m.key != key {
        return Ok(None);
    }
    // The manifest is a file, not a promise: reserve only up to a bound, the shards decide.
    let mut tokens = Vec::with_capacity((m.total_tokens as usize).min(1 << 26));
    for s in &m.shards {
        let p = dir.join(&s.file);
        let Ok(bytes) = std::fs::read(&p) else {
            return Ok(None);
        };
        // A shard that does not match its manifest is rebuilt, never trusted.
        if sha256_bytes(&bytes) != s.sha256 || bytes.len() as u64 != s.tokens * 4 {
            return Ok(None);
        }
        tokens.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    Ok((tokens.len() as u64 == m.total_tokens).then_some((tokens, m.safety, m.documents)))
}

#[allow(clippy::too_many_arguments)] // one call site; each value is a manifest field
fn write_cache(
    dir: &Path,
    key: &str,
    sources: &[SourceDigest],
    tokenizer: &str,
    vocab_size: usize,
    tokens: &[u32],
    safety: Option<&codex_safety::SafetyReport>,
    documents: Option<&DocReport>,
) -> Result<()> {
    codex_core::fsutil::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut shards = Vec::new();
    for (i, chunk) in tokens.chunks(SHARD_TOKENS).enumerate() {
        let file = format!("tokens-{}-{i:05}.u32", &key[..16]);
        let bytes: Vec<u8> = chunk.iter().flat_map(|t| t.to_le_bytes()).collect();
        let path = dir.join(&file);
        codex_core::fsutil::atomic_write(&path, &bytes)
            .map_err(|source| Error::Write { path, source })?;
        shards.push(ShardEntry {
            file,
            tokens: chunk.len() as u64,
            sha256: sha256_bytes(&bytes),
        });
    }
    let m = Manifest {
        schema_version: codex_core::SCHEMA_VERSION,
        key: key.to_string(),
        sources: sources.to_vec(),
        tokenizer: tokenizer.to_string(),
        vocab_size,
        total_tokens: tokens.len() as u64,
        shards,
        safety: safety.cloned(),
        documents: documents.cloned(),
    };
    let path = dir.join(MANIFEST);
    let text = serde_json::to_vec_pretty(&m).map_err(|e| Error::Internal(e.to_string()))?;
    // The manifest goes last: shards without it are never read.
    codex_core::fsutil::atomic_write(&path, &text).map_err(|source| Error::Write { path, source })
}

/// Where the data cache of a run lives.
pub fn cache_dir_for(cfg: &TrainConfig, run_dir: &Path) -> Option<PathBuf> {
    if !cfg.data.cache {
        None
    } else if cfg.data.cache_dir.is_empty() {
        Some(codex_core::rundir::RunDir::new(run_dir).cache())
    } else {
        Some(PathBuf::from(&cfg.data.cache_dir))
    }
}

/// A batch of inputs and targets, `[batch, context]` u32 each.
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
}

impl Dataset {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tokens: Vec<u32>,
        vocab_size: usize,
        context_length: usize,
        val_fraction: f64,
        seed: u64,
        data_hash: String,
        sources: Vec<SourceDigest>,
        cache_hit: bool,
        tokenizer_desc: String,
    ) -> Result<Self> {
        let n_blocks = tokens.len().saturating_sub(1) / context_length;
        let n_val = ((n_blocks as f64) * val_fraction).round().max(1.0) as usize;
        if n_blocks < n_val + 1 {
            return Err(Error::Invalid(format!(
                "the corpus has {} tokens: {n_blocks} block(s) of context_length {context_length}, too few for a train and a validation split",
                tokens.len()
            )));
        }
        let mut order: Vec<usize> = (0..n_blocks).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut val: Vec<usize> = order[..n_val].iter().map(|b| b * context_length).collect();
        val.sort_unstable();
        let mut train: Vec<usize> = order[n_val..].iter().map(|b| b * context_length).collect();
        train.sort_unstable();
        Ok(Self {
            tokens,
            vocab_size,
            context_length,
            train,
            val,
            seed,
            data_hash,
            sources,
            cache_hit,
            tokenizer_desc,
            safety: None,
            documents: None,
        })
    }

    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }
    pub fn n_train(&self) -> usize {
        self.train.len()
    }
    pub fn n_val(&self) -> usize {
        self.val.len()
    }

    /// The permutation of training blocks for `epoch` (a pure function of seed and epoch).
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order = self.train.clone();
        let seed = self.seed ^ (epoch.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        order
    }

    /// The training batch of `batch_size` samples starting at global sample `cursor`.
    pub fn train_batch(&self, cursor: u64, batch_size: usize, device: &Device) -> Result<Batch> {
        let n = self.train.len() as u64;
        let mut starts = Vec::with_capacity(batch_size);
        let mut epoch = u64::MAX;
        let mut order = Vec::new();
        for k in cursor..cursor + batch_size as u64 {
            if k / n != epoch {
                epoch = k / n;
                order = self.epoch_order(epoch);
            }
            starts.push(order[(k % n) as usize]);
        }
        self.batch_from(&starts, device)
    }

    /// Validation batches of up to `batch_size` blocks; `max_batches = 0` means all.
    pub fn val_batches(
        &self,
        batch_size: usize,
        max_batches: usize,
    ) -> impl Iterator<Item = &[usize]> {
        let take = if max_batches == 0 {
            usize::MAX
        } else {
            max_batches
        };
        self.val.chunks(batch_size).take(take)
    }

    pub fn batch_from(&self, starts: &[usize], device: &Device) -> Result<Batch> {
        let c = self.context_length;
        let mut x = Vec::with_capacity(starts.len() * c);
        let mut y = Vec::with_capacity(starts.len() * c);
        for &s in starts {
            x.extend_from_slice(&self.tokens[s..s + c]);
            y.extend_from_slice(&self.tokens[s + 1..s + c + 1]);
        }
        let shape = (starts.len(), c);
        Ok(Batch {
            inputs: Tensor::from_vec(x, shape, device)?,
            targets: Tensor::from_vec(y, shape, device)?,
        })
    }

    /// A dataset whose every block is evaluated (for `codex eval --file`).
    pub fn eval_only(tokens: Vec<u32>, vocab_size: usize, context_length: usize) -> Result<Self> {
        let n_blocks = tokens.len().saturating_sub(1) / context_length;
        if n_blocks == 0 {
            return Err(Error::Invalid(format!(
                "{} tokens are fewer than one block of context_length {context_length} + 1",
                tokens.len()
            )));
        }
        let val = (0..n_blocks).map(|b| b * context_length).collect();
        Ok(Self {
            tokens,
            vocab_size,
            context_length,
            train: Vec::new(),
            val,
            seed: 0,
            data_hash: String::new(),
            sources: Vec::new(),
            cache_hit: false,
            tokenizer_desc: String::new(),
            safety: None,
            documents: None,
        })
    }

    /// Makes the training split the one [`Dataset::val_batches`] walks (eval on `train`).
    pub fn evaluate_train_split(&mut self) {
        self.val = self.train.clone();
    }

    /// Epoch of global sample `cursor`.
    pub fn epoch_of(&self, cursor: u64) -> u64 {
        cursor / self.train.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(n: usize, ctx: usize) -> Dataset {
        let tokens: Vec<u32> = (0..n as u32).map(|i| i % 256).collect();
        Dataset::new(
            tokens,
            256,
            ctx,
            0.2,
            7,
            "k".into(),
            vec![],
            false,
            "byte".into(),
        )
        .unwrap()
    }

    #[test]
    fn blocks_cover_every_token_once_and_split_is_disjoint() {
        let d = ds(1001, 10);
        assert_eq!(d.n_train() + d.n_val(), 100);
        assert_eq!(d.n_val(), 20);
        let mut all: Vec<usize> = d.train.iter().chain(&d.val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).map(|b| b * 10).collect::<Vec<_>>());
        let b = d.batch_from(&[0, 10], &Device::Cpu).unwrap();
        let x = b.inputs.to_vec2::<u32>().unwrap();
        let y = b.targets.to_vec2::<u32>().unwrap();
        assert_eq!(x[0][1..], y[0][..9]);
        assert_eq!(y[0][9], 10);
    }

    #[test]
    fn cursor_is_exact_across_epochs_and_seeded() {
        let d = ds(1001, 10);
        // Reading 7 batches of 30 in one go equals reading them one by one from cursors.
        let all = d
            .train_batch(0, 210, &Device::Cpu)
            .unwrap()
            .inputs
            .to_vec2::<u32>()
            .unwrap();
        for i in 0..7u64 {
            let part = d
                .train_batch(i * 30, 30, &Device::Cpu)
                .unwrap()
                .inputs
                .to_vec2::<u32>()
                .unwrap();
            assert_eq!(part[..], all[(i as usize) * 30..(i as usize + 1) * 30]);
        }
        // Each epoch visits every training block exactly once, in a different order.
        let e0 = d.epoch_order(0);
        let e1 = d.epoch_order(1);
        assert_ne!(e0, e1);
        let (mut s0, mut s1) = (e0.clone(), e1.clone());
        s0.sort_unstable();
        s1.sort_unstable();
        assert_eq!(s0, d.train);
        assert_eq!(s1, d.train);
        assert_eq!(ds(1001, 10).epoch_order(3), d.epoch_order(3));
    }

    #[test]
    fn too_small_corpus_is_a_clear_error() {
        let err = Dataset::new(
            vec![1; 15],
            256,
            10,
            0.1,
            1,
            "k".into(),
            vec![],
            false,
            "byte".into(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("too few"), "{err}");
    }

    #[test]
    fn cache_is_reused_and_rebuilt_when_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = TrainConfig::default();
        let corpus = dir.path().join("a.txt");
        std::fs::write(&corpus, "def f(x):\n    return x + 1\n".repeat(40)).unwrap();
        cfg.data.inputs = vec![corpus.display().to_string()];
        cfg.data.context_length = 16;
        let cache = dir.path().join("cache");
        let p1 = prepare(&cfg, Some(&cache), &mut |_| {}).unwrap();
        assert!(!p1.dataset.cache_hit);
        let p2 = prepare(&cfg, Some(&cache), &mut |_| {}).unwrap();
        assert!(p2.dataset.cache_hit);
        assert_eq!(p1.dataset.tokens, p2.dataset.tokens);
        assert_eq!(p1.dataset.tokens.len(), 40 * 27);
        // Corrupt a shard: it is detected and rebuilt.
        let shard = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "u32"))
            .unwrap();
        std::fs::write(&shard, b"xxxx").unwrap();
        let p3 = prepare(&cfg, Some(&cache), &mut |_| {}).unwrap();
        assert!(!p3.dataset.cache_hit);
        assert_eq!(p3.dataset.tokens, p1.dataset.tokens);
        // A changed source changes the key.
        std::fs::write(&corpus, "print('hello')\n".repeat(80)).unwrap();
        let p4 = prepare(&cfg, Some(&cache), &mut |_| {}).unwrap();
        assert!(!p4.dataset.cache_hit);
        assert_ne!(p4.dataset.data_hash, p1.dataset.data_hash);
    }

    #[test]
    fn safety_drops_redacts_records_and_keys_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let planted = codex_safety::planted::credentials(11, 1);
        let mut cfg = TrainConfig::default();
        let mut inputs = Vec::new();
        for (i, c) in planted.iter().enumerate() {
            let p = dir.path().join(format!("f{i}.py"));
            std::fs::write(
                &p,
                format!(
                    "{}\n{}\n",
                    "def f(x):\n    return x + 1\n".repeat(8),
                    c.line
                ),
            )
            .unwrap();
            inputs.push(p.display().to_string());
        }
        cfg.data.inputs = inputs;
        cfg.data.context_length = 16;
        let cache = dir.path().join("cache");
        let off = prepare(&cfg, Some(&cache), &mut |_| {}).unwrap();
        assert!(off.dataset.safety.is_none());
        cfg.safety.enabled = true;
        let on = prepare(&cfg, Some(&cache), &mut |_| {}).unwrap();
        // Turning safety on changes the key: rebuilt, not reused.
        assert!(!on.dataset.cache_hit);
        assert_ne!(on.dataset.data_hash, off.dataset.data_hash);
        let r = on.dataset.safety.clone().unwrap();
        assert_eq!(r.documents_in, planted.len() as u64);
        let blocking = planted
            .iter()
            .filter(|c| {
                let p = codex_safety::Policy::default_policy();
                p.rules
                    .iter()
                    .any(|r| r.id == c.rule && r.action == codex_safety::Action::Block)
            })
            .count() as u64;
        assert_eq!(r.documents_dropped, blocking, "{r:?}");
        assert_eq!(r.documents_out + r.documents_dropped, r.documents_in);
        for c in &planted {
            assert!(
                r.tally.rules.contains_key(c.rule),
                "{} not counted: {r:?}",
                c.rule
            );
        }
        let bytes: Vec<u8> = on.dataset.tokens.iter().map(|&t| t as u8).collect();
        let text = String::from_utf8_lossy(&bytes);
        for c in &planted {
            assert!(!text.contains(&c.secret), "{} survived", c.rule);
        }
        // Same policy: reused, with its report. Another policy: rebuilt.
        let again = prepare(&cfg, Some(&cache), &mut |_| {}).unwrap();
        assert!(again.dataset.cache_hit);
        assert_eq!(again.dataset.safety, Some(r));
        let custom = dir.path().join("p.toml");
        std::fs::write(
            &custom,
            "[[rules]]\nid='x'\nliterals=['return']\naction='redact'\n",
        )
        .unwrap();
        cfg.safety.policy = custom.display().to_string();
        let other = prepare(&cfg, Some(&cache), &mut |_| {}).unwrap();
        assert!(!other.dataset.cache_hit);
        assert_eq!(
            other.dataset.safety.unwrap().documents_redacted,
            planted.len() as u64
        );
        // on_block = "fail" names the files and rules, never the secret.
        cfg.safety.policy = String::new();
        cfg.safety.on_block = codex_safety::OnBlock::Fail;
        let err = prepare(&cfg, None, &mut |_| {}).err().unwrap().to_string();
        assert!(
            err.contains("blocked")
                && err.contains("secret.aws_access_key_id")
                && err.contains("f0.py"),
            "{err}"
        );
        for c in &planted {
            assert!(!err.contains(&c.secret), "{err}");
        }
    }
}
