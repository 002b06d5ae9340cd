//! The validate report: how a tokenizer does on a sample corpus, and whether its files agree.
//!
//! Keys follow the Python original's report (tokenizer/manifest/files entries) and add what it
//! never measured: unknown-token rate, decode∘encode round-trip mismatches, tokens per byte and
//! per character, and whether each expected special token exists and encodes as one token.

use crate::corpus::{CorpusSpec, Document};
use crate::encode::encode_batch;
use crate::error::{Result, TokenizerError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Default `max_unk_rate`: more than 1% unknown tokens means the vocabulary does not cover
/// the text.
pub const DEFAULT_MAX_UNK_RATE: f64 = 0.01;

/// What to validate and what counts as a problem.
///
/// Problems (each listed in [`ValidateReport::problems`]; the CLI exits 1 on any):
/// - an expected special token is missing, or does not encode as exactly its own id;
/// - manifest.json is unreadable, or its `tokenizer_sha256` does not match the file;
/// - a corpus input matches no files;
/// - the unknown-token rate is above `max_unk_rate` (default [`DEFAULT_MAX_UNK_RATE`]);
/// - the round-trip mismatch rate (decode(encode(x)) != normalize(x)) is above
///   `max_roundtrip_mismatch_rate`; by default 0 for tokenizers that are lossless by design
///   (byte-level pre-tokenizer or byte fallback) and no limit for the others (WordPiece,
///   WordLevel, Unigram without byte fallback), whose decoders cannot restore spacing.
#[derive(Clone, Debug, Default)]
pub struct ValidateOptions {
    /// Sample corpus; without it only the files and special tokens are checked.
    pub corpus: Option<CorpusSpec>,
    /// Stop after this many documents.
    pub max_documents: Option<u64>,
    /// Special tokens that must exist; default: the manifest's, else the tokenizer's own.
    pub expect_special: Option<Vec<String>>,
    /// `None`: [`DEFAULT_MAX_UNK_RATE`].
    pub max_unk_rate: Option<f64>,
    /// `None`: 0 when the tokenizer is lossless by design, else no limit.
    pub max_roundtrip_mismatch_rate: Option<f64>,
}

impl ValidateOptions {
    fn check(&self) -> Result<()> {
        for (flag, v) in [
            ("--max-unk-rate", self.max_unk_rate),
            (
                "--max-roundtrip-mismatch-rate",
                self.max_roundtrip_mismatch_rate,
            ),
        ] {
            if let Some(v) = v
                && !(0.0..=1.0).contains(&v)
            {
                return Err(TokenizerError::Config(format!(
                    "{flag} {v}: must be a rate between 0 and 1"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SpecialToken {
    pub token: String,
    pub id: Option<u32>,
    /// Encoding the token's text alone gives exactly its id.
    pub atomic: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Mismatch {
    pub file: String,
    pub line: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ValidateReport {
    pub tokenizer_path: PathBuf,
    pub tokenizer_exists: bool,
    pub tokenizer_sha256: String,
    pub manifest_path: PathBuf,
    pub manifest_exists: bool,
    pub manifest: Option<serde_json::Value>,
    pub manifest_error: Option<String>,
    /// Whether the manifest's `tokenizer_sha256` matches the file (null without a manifest).
    pub manifest_sha256_matches: Option<bool>,
    pub files: Vec<String>,
    pub num_files: usize,
    pub missing_files: Vec<String>,
    pub model: String,
    pub vocab_size: usize,
    pub documents: u64,
    pub bytes: u64,
    pub chars: u64,
    pub tokens: u64,
    pub unk_token: Option<String>,
    pub unk_count: u64,
    pub unk_rate: f64,
    pub roundtrip_mismatches: u64,
    pub roundtrip_mismatch_rate: f64,
    pub first_roundtrip_mismatch: Option<Mismatch>,
    /// Byte-level pre-tokenizer or byte fallback: every text should round-trip exactly.
    pub lossless_by_design: bool,
    /// The limits applied (null: none).
    pub max_unk_rate: Option<f64>,
    pub max_roundtrip_mismatch_rate: Option<f64>,
    pub tokens_per_byte: f64,
    pub tokens_per_char: f64,
    pub special_tokens: Vec<SpecialToken>,
    pub missing_special_tokens: Vec<String>,
    pub special_token_coverage: f64,
    /// Everything that makes the validation fail; empty when it passes.
    pub problems: Vec<String>,
}

/// A manifest lists the corpus files with their hashes: generous, but bounded.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Validates the tokenizer at `path` (already resolved) against `opts`.
pub fn validate(path: &Path, opts: &ValidateOptions) -> Result<ValidateReport> {
    opts.check()?;
    let bytes = crate::source::read_file(path)?;
    let mut tokenizer = crate::source::parse(&bytes, path)?;
    // Measure the text itself: no padding, truncation or template tokens.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| TokenizerError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let sha = codex_core::hash::sha256_bytes(&bytes);
    let mut problems = Vec::new();

    let manifest_path = path.with_file_name("manifest.json");
    let manifest_exists = manifest_path.is_file();
    let (mut manifest, mut manifest_error) = (None, None);
    if manifest_exists {
        match crate::source::read_bounded(&manifest_path, MAX_MANIFEST_BYTES)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
            }) {
            Ok(v) => manifest = Some(v),
            Err(e) => {
                let msg = format!("failed to parse manifest.json: {e}");
                problems.push(format!("{}: {msg}", manifest_path.display()));
                manifest_error = Some(msg);
            }
        }
    }
    let manifest_sha256_matches = manifest
        .as_ref()
        .and_then(|m| m.get("tokenizer_sha256")?.as_str().map(|s| s == sha));
    if manifest_sha256_matches == Some(false) {
        problems.push(format!(
            "{} does not match the tokenizer_sha256 in {}",
            path.display(),
            manifest_path.display()
        ));
    }

    let model_json = serde_json::to_value(tokenizer.get_model()).unwrap_or_default();
    let model = model_json
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("unknown")
        .to_string();
    let unk_token = match model_json.get("unk_token").and_then(|t| t.as_str()) {
        Some(t) => Some(t.to_string()),
        None => model_json
            .get("unk_id")
            .and_then(|i| i.as_u64())
            .and_then(|i| tokenizer.id_to_token(i as u32)),
    };
    let unk_id = unk_token.as_deref().and_then(|t| tokenizer.token_to_id(t));
    let pre_tokenizer = serde_json::to_value(tokenizer.get_pre_tokenizer()).unwrap_or_default();
    let lossless_by_design = has_type(&pre_tokenizer, "ByteLevel")
        || model_json.get("byte_fallback") == Some(&serde_json::Value::Bool(true));
    let max_roundtrip_mismatch_rate = opts
        .max_roundtrip_mismatch_rate
        .or(lossless_by_design.then_some(0.0));
    let max_unk_rate = opts.max_unk_rate.unwrap_or(DEFAULT_MAX_UNK_RATE);

    // Expected special tokens.
    let expected: Vec<String> = match &opts.expect_special {
        Some(list) => list.clone(),
        None => match manifest
            .as_ref()
            .and_then(|m| m.pointer("/config/special_tokens"))
            .and_then(|v| v.as_array())
        {
            Some(list) => list
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            None => {
                let mut own: Vec<(u32, String)> = tokenizer
                    .get_added_tokens_decoder()
                    .into_iter()
                    .filter(|(_, t)| t.special)
                    .map(|(id, t)| (id, t.content))
                    .collect();
                own.sort();
                own.into_iter().map(|(_, t)| t).collect()
            }
        },
    };
    let special_tokens: Vec<SpecialToken> = expected
        .iter()
        .map(|t| {
            let id = tokenizer.token_to_id(t);
            let atomic = id.is_some_and(|id| {
                tokenizer
                    .encode(t.as_str(), false)
                    .is_ok_and(|e| e.get_ids() == [id])
            });
            SpecialToken {
                token: t.clone(),
                id,
                atomic,
            }
        })
        .collect();
    let missing_special_tokens: Vec<String> = special_tokens
        .iter()
        .filter(|s| s.id.is_none())
        .map(|s| s.token.clone())
        .collect();
    if !missing_special_tokens.is_empty() {
        problems.push(format!(
            "special tokens missing from the vocabulary: {missing_special_tokens:?}"
        ));
    }
    let split: Vec<&str> = special_tokens
        .iter()
        .filter(|s| s.id.is_some() && !s.atomic)
        .map(|s| s.token.as_str())
        .collect();
    if !split.is_empty() {
        problems.push(format!(
            "special tokens that do not encode as their own single id: {split:?}"
        ));
    }
    let special_token_coverage = if expected.is_empty() {
        1.0
    } else {
        1.0 - ratio(missing_special_tokens.len() as u64, expected.len() as u64)
    };

    let mut report = ValidateReport {
        tokenizer_path: path.to_path_buf(),
        tokenizer_exists: true,
        tokenizer_sha256: sha,
        manifest_path,
        manifest_exists,
        manifest,
        manifest_error,
        manifest_sha256_matches,
        files: Vec::new(),
        num_files: 0,
        missing_files: Vec::new(),
        model,
        vocab_size: tokenizer.get_vocab_size(true),
        documents: 0,
        bytes: 0,
        chars: 0,
        tokens: 0,
        unk_token,
        unk_count: 0,
        unk_rate: 0.0,
        roundtrip_mismatches: 0,
        roundtrip_mismatch_rate: 0.0,
        first_roundtrip_mismatch: None,
        lossless_by_design,
        max_unk_rate: Some(max_unk_rate),
        max_roundtrip_mismatch_rate,
        tokens_per_byte: 0.0,
        tokens_per_char: 0.0,
        special_tokens,
        missing_special_tokens,
        special_token_coverage,
        problems,
    };

    if let Some(spec) = &opts.corpus {
        // Inputs that resolve to nothing are listed rather than fatal, as in the original;
        // no file at all is an error.
        let mut found = Vec::new();
        for input in &spec.inputs {
            let one = CorpusSpec {
                inputs: vec![input.clone()],
                ..spec.clone()
            };
            match one.resolve() {
                Ok(_) => found.push(input.clone()),
                Err(TokenizerError::BadInput { .. }) => report.missing_files.push(input.clone()),
                Err(e) => return Err(e),
            }
        }
        if found.is_empty() {
            return Err(TokenizerError::NoFiles {
                patterns: spec.inputs.clone(),
            });
        }
        let corpus = CorpusSpec {
            inputs: found,
            ..spec.clone()
        }
        .resolve()?;
        report.files = corpus
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        report.num_files = report.files.len();
        for m in &report.missing_files {
            report
                .problems
                .push(format!("corpus input {m} matched no files"));
        }
        let limit = opts.max_documents.unwrap_or(u64::MAX);
        let mut docs = corpus
            .documents()
            .take(limit.try_into().unwrap_or(usize::MAX));
        loop {
            let batch: Vec<Document> = docs.by_ref().take(1024).collect::<Result<_>>()?;
            if batch.is_empty() {
                break;
            }
            if codex_core::signal::interrupted() {
                return Err(TokenizerError::Interrupted);
            }
            measure(&tokenizer, unk_id, &batch, &corpus.files, &mut report)?;
        }
        if report.documents == 0 {
            return Err(TokenizerError::EmptyCorpus {
                files: corpus.files.len(),
            });
        }
        report.unk_rate = ratio(report.unk_count, report.tokens);
        report.roundtrip_mismatch_rate = ratio(report.roundtrip_mismatches, report.documents);
        report.tokens_per_byte = ratio(report.tokens, report.bytes);
        report.tokens_per_char = ratio(report.tokens, report.chars);
        if report.unk_rate > max_unk_rate {
            report.problems.push(format!(
                "unk rate {:.6} exceeds {max_unk_rate} (--max-unk-rate)",
                report.unk_rate
            ));
        }
        if let Some(max) = max_roundtrip_mismatch_rate
            && report.roundtrip_mismatch_rate > max
        {
            let why = if opts.max_roundtrip_mismatch_rate.is_none() {
                " (the tokenizer is byte-level, so every text should round-trip; \
                 --max-roundtrip-mismatch-rate sets a limit)"
            } else {
                " (--max-roundtrip-mismatch-rate)"
            };
            let first = report
                .first_roundtrip_mismatch
                .as_ref()
                .map(|m| format!(", first at {}:{}", m.file, m.line))
                .unwrap_or_default();
            report.problems.push(format!(
                "round-trip mismatch rate {:.6} exceeds {max}{why}{first}",
                report.roundtrip_mismatch_rate
            ));
        }
    }
    Ok(report)
}

/// Whether a serialized pre-tokenizer is, or is a sequence holding, one of type `ty`.
fn has_type(v: &serde_json::Value, ty: &str) -> bool {
    v.get("type").and_then(|t| t.as_str()) == Some(ty)
        || v.get("pretokenizers")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|x| has_type(x, ty)))
}

/// The text as the tokenizer's normalizer leaves it: what decoding can give back at best.
fn normalized(tokenizer: &Tokenizer, text: &str) -> Option<String> {
    use tokenizers::{NormalizedString, Normalizer};
    let n = tokenizer.get_normalizer()?;
    let mut s = NormalizedString::from(text);
    n.normalize(&mut s).ok()?;
    Some(s.get().to_string())
}

fn measure(
    tokenizer: &Tokenizer,
    unk_id: Option<u32>,
    batch: &[Document],
    files: &[crate::corpus::CorpusFile],
    report: &mut ValidateReport,
) -> Result<()> {
    use rayon::prelude::*;
    let texts: Vec<String> = batch.iter().map(|d| d.text.clone()).collect();
    let encodings =
        encode_batch(tokenizer, &texts, false, false).map_err(|e| TokenizerError::Encode {
            at: String::new(),
            message: e.to_string(),
        })?;
    let roundtrip: Vec<bool> = encodings
        .par_iter()
        .zip(texts.par_iter())
        .map(|(e, t)| {
            let expected = normalized(tokenizer, t);
            let expected = expected.as_deref().unwrap_or(t);
            tokenizer
                .decode(e.get_ids(), true)
                .is_ok_and(|d| d == expected)
        })
        .collect();
    for ((doc, enc), ok) in batch.iter().zip(&encodings).zip(roundtrip) {
        report.documents += 1;
        report.bytes += doc.text.len() as u64;
        report.chars += doc.text.chars().count() as u64;
        report.tokens += enc.len() as u64;
        if let Some(unk) = unk_id {
            report.unk_count += enc.get_ids().iter().filter(|&&i| i == unk).count() as u64;
        }
        if !ok {
            report.roundtrip_mismatches += 1;
            if report.first_roundtrip_mismatch.is_none() {
                report.first_roundtrip_mismatch = Some(Mismatch {
                    file: files
                        .get(doc.file)
                        .map(|f| f.path.display().to_string())
                        .unwrap_or_default(),
                    line: doc.line,
                });
            }
        }
    }
    Ok(())
}
