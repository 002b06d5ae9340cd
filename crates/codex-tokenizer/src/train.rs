//! Training a tokenizer (byte-level BPE, WordPiece or Unigram) from a document stream, and
//! writing it with its manifest.

use crate::corpus::{Corpus, Document, FileDigest};
use crate::error::{Result, TokenizerError};
use codex_core::config::{ConfigIssue, Validate};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::{Lowercase, NFC, NFD, NFKC, NFKD, NormalizerWrapper, Sequence};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::Metaspace;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// The tokenization model to train.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Byte-level BPE (GPT-2 style): every byte is in the alphabet, nothing is unknown.
    #[default]
    Bpe,
    /// WordPiece (BERT style) with `##` continuation pieces.
    WordPiece,
    /// Unigram (SentencePiece style) with the `▁` metaspace.
    Unigram,
}

/// Unicode normalization applied before pre-tokenization.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    None,
    Nfc,
    Nfd,
    /// The Python original's choice.
    #[default]
    Nfkc,
    Nfkd,
    Lowercase,
    NfkcLowercase,
}

/// Everything that decides the trained vocabulary (recorded in the manifest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub model: ModelKind,
    pub vocab_size: usize,
    /// Pairs (BPE, WordPiece) seen fewer times than this are not merged.
    pub min_frequency: u64,
    /// Added first, in this order, so their ids are 0, 1, ….
    pub special_tokens: Vec<String>,
    /// Unknown token for WordPiece and Unigram (added to the special tokens if missing).
    pub unk_token: String,
    pub normalization: Normalization,
    /// Longest token in characters (BPE only; bounds pathological corpora).
    pub max_token_length: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelKind::Bpe,
            vocab_size: 8000,
            min_frequency: 2,
            special_tokens: ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
                .map(String::from)
                .to_vec(),
            unk_token: "[UNK]".into(),
            normalization: Normalization::Nfkc,
            max_token_length: None,
        }
    }
}

impl Validate for TrainConfig {
    fn validate(&self, issues: &mut Vec<ConfigIssue>) {
        let specials = self.effective_special_tokens().len();
        if self.vocab_size <= specials {
            issues.push(ConfigIssue::invalid(
                "vocab_size",
                self.vocab_size,
                format!("must be larger than the number of special tokens ({specials})"),
            ));
        }
        // The trainers reserve tables of vocab_size entries up front (an abort, not an error,
        // when that fails), and loading refuses ids at or above this anyway.
        if self.vocab_size as u64 > crate::source::MAX_VOCAB {
            issues.push(ConfigIssue::invalid(
                "vocab_size",
                self.vocab_size,
                format!("must be at most {} (2^24)", crate::source::MAX_VOCAB),
            ));
        }
        if self.model != ModelKind::Bpe && self.unk_token.is_empty() {
            issues.push(ConfigIssue::invalid(
                "unk_token",
                "\"\"",
                "must not be empty",
            ));
        }
        for (i, t) in self.special_tokens.iter().enumerate() {
            if t.is_empty() {
                issues.push(ConfigIssue::invalid(
                    &format!("special_tokens[{i}]"),
                    "\"\"",
                    "empty",
                ));
            } else if self.special_tokens[..i].contains(t) {
                issues.push(ConfigIssue::invalid(
                    &format!("special_tokens[{i}]"),
                    t,
                    "duplicate",
                ));
            }
        }
        if self.max_token_length == Some(0) {
            issues.push(ConfigIssue::invalid(
                "max_token_length",
                0,
                "must be at least 1",
            ));
        }
    }
}

impl TrainConfig {
    /// The special tokens in id order, with the unknown token appended when the model needs
    /// one and it is missing.
    pub fn effective_special_tokens(&self) -> Vec<String> {
        let mut out = self.special_tokens.clone();
        if self.model != ModelKind::Bpe
            && !self.unk_token.is_empty()
            && !out.contains(&self.unk_token)
        {
            out.push(self.unk_token.clone());
        }
        out
    }

    fn check(&self) -> Result<()> {
        let mut issues = Vec::new();
        self.validate(&mut issues);
        if issues.is_empty() {
            Ok(())
        } else {
            let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
            Err(TokenizerError::Config(text.join("; ")))
        }
    }
}

/// What [`train`] read and produced.
pub struct Trained {
    pub tokenizer: Tokenizer,
    /// Non-empty documents fed to the trainer.
    pub documents: u64,
    /// UTF-8 bytes of those documents.
    pub bytes: u64,
}

fn normalizer(n: Normalization) -> Option<NormalizerWrapper> {
    Some(match n {
        Normalization::None => return None,
        Normalization::Nfc => NFC.into(),
        Normalization::Nfd => NFD.into(),
        Normalization::Nfkc => NFKC.into(),
        Normalization::Nfkd => NFKD.into(),
        Normalization::Lowercase => Lowercase.into(),
        Normalization::NfkcLowercase => Sequence::new(vec![NFKC.into(), Lowercase.into()]).into(),
    })
}

fn tk(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Train(e.to_string())
}

/// Trains a tokenizer on `documents` (any stream of corpus documents; the first error stops
/// training and is returned). `progress` is called with the byte length of each document.
/// Only word counts are kept while reading, so memory does not grow with the corpus size.
pub fn train(
    config: &TrainConfig,
    documents: impl Iterator<Item = Result<Document>> + Send,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Trained> {
    config.check()?;
    let specials = config.effective_special_tokens();
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(s.clone(), true))
        .collect();
    if config.model == ModelKind::Bpe {
        // Byte-level BPE always starts from all 256 byte symbols.
        let needed = 256 + specials.len();
        if config.vocab_size < needed {
            return Err(TokenizerError::VocabTooSmall {
                requested: config.vocab_size,
                needed,
                detail: format!("256 byte symbols + {} special tokens", specials.len()),
            });
        }
    }
    let (model, mut trainer): (ModelWrapper, TrainerWrapper) = match config.model {
        ModelKind::Bpe => {
            let trainer = BpeTrainer::builder()
                .vocab_size(config.vocab_size)
                .min_frequency(config.min_frequency)
                .special_tokens(added)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .max_token_length(config.max_token_length)
                .show_progress(false)
                .build();
            (BPE::default().into(), trainer.into())
        }
        ModelKind::WordPiece => {
            let model = WordPiece::builder()
                .unk_token(config.unk_token.clone())
                .build()
                .map_err(tk)?;
            let trainer = WordPieceTrainer::builder()
                .vocab_size(config.vocab_size)
                .min_frequency(config.min_frequency)
                .special_tokens(added)
                .show_progress(false)
                .build();
            (model.into(), trainer.into())
        }
        ModelKind::Unigram => {
            let trainer = UnigramTrainer::builder()
                .vocab_size(config.vocab_size as u32)
                .special_tokens(added)
                .unk_token(Some(config.unk_token.clone()))
                .show_progress(false)
                .build()
                .map_err(tk)?;
            (Unigram::default().into(), trainer.into())
        }
    };
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(normalizer(config.normalization))
        .map_err(tk)?;
    match config.model {
        ModelKind::Bpe => {
            let bl = ByteLevel::new(false, true, true);
            tokenizer.with_pre_tokenizer(Some(bl));
            tokenizer.with_decoder(Some(bl));
            tokenizer.with_post_processor(Some(bl));
        }
        ModelKind::WordPiece => {
            tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
            tokenizer.with_decoder(Some(DecoderWrapper::from(WordPieceDecoder::default())));
        }
        ModelKind::Unigram => {
            tokenizer.with_pre_tokenizer(Some(Metaspace::default()));
            tokenizer.with_decoder(Some(DecoderWrapper::from(MetaspaceDecoder::default())));
        }
    }

    // The trainer pulls documents (from several threads, through a lock); the first error or
    // an interrupt ends the stream and is reported after the trainer returns.
    let failure: Mutex<Option<TokenizerError>> = Mutex::new(None);
    let counts = Mutex::new((0u64, 0u64));
    let stream = documents.map_while(|doc| {
        if codex_core::signal::interrupted() {
            set_failure(&failure, TokenizerError::Interrupted);
            return None;
        }
        match doc {
            Ok(doc) => {
                let len = doc.text.len() as u64;
                if let Ok(mut c) = counts.lock() {
                    c.0 += u64::from(!doc.text.is_empty());
                    c.1 += len;
                }
                progress(len);
                Some(doc.text)
            }
            Err(e) => {
                set_failure(&failure, e);
                None
            }
        }
    });
    let result = tokenizer.train(&mut trainer, stream).map(|_| ());
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    result.map_err(tk)?;
    let (documents, bytes) = counts.into_inner().unwrap_or_default();
    if documents == 0 {
        return Err(TokenizerError::EmptyCorpus { files: 0 });
    }
    let size = tokenizer.get_vocab_size(true);
    if size > config.vocab_size {
        return Err(TokenizerError::VocabTooSmall {
            requested: config.vocab_size,
            needed: size,
            detail: format!(
                "the corpus alphabet plus {} special tokens already make {size} entries",
                specials.len()
            ),
        });
    }
    if config.model == ModelKind::WordPiece {
        let id = |t: &str| tokenizer.token_to_id(t).map(|i| (t.to_string(), i));
        if let (Some(sep), Some(cls)) = (id("[SEP]"), id("[CLS]")) {
            tokenizer.with_post_processor(Some(BertProcessing::new(sep, cls)));
        }
    }
    Ok(Trained {
        tokenizer,
        documents,
        bytes,
    })
}

fn set_failure(slot: &Mutex<Option<TokenizerError>>, e: TokenizerError) {
    if let Ok(mut s) = slot.lock()
        && s.is_none()
    {
        *s = Some(e);
    }
}

/// `manifest.json` next to a trained `tokenizer.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub codex_version: String,
    pub created: String,
    pub tokenizer_file: String,
    pub tokenizer_sha256: String,
    pub vocab_size: usize,
    pub config: TrainConfig,
    pub corpus: CorpusRecord,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CorpusRecord {
    pub inputs: Vec<String>,
    pub jsonl_field: Option<String>,
    pub documents: u64,
    pub bytes: u64,
    pub files: Vec<FileDigest>,
}

/// The two files a training run writes into `out_dir`.
pub fn output_paths(out_dir: &Path) -> (PathBuf, PathBuf) {
    (
        out_dir.join("tokenizer.json"),
        out_dir.join("manifest.json"),
    )
}

/// Fails (before any work) when the outputs exist and `force` is off.
pub fn check_output(out_dir: &Path, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    let (tok, man) = output_paths(out_dir);
    for p in [tok, man] {
        if p.exists() {
            return Err(TokenizerError::Exists { path: p });
        }
    }
    Ok(())
}

/// Trains on a resolved corpus and writes `tokenizer.json` then `manifest.json` (the
/// completion marker) atomically into `out_dir`. Nothing is written when anything fails.
pub fn train_corpus_to_dir(
    config: &TrainConfig,
    corpus: &Corpus,
    out_dir: &Path,
    force: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Manifest> {
    check_output(out_dir, force)?;
    let docs = corpus.documents();
    let digests = docs.digests();
    let trained = match train(config, docs, progress) {
        Err(TokenizerError::EmptyCorpus { .. }) => {
            return Err(TokenizerError::EmptyCorpus {
                files: corpus.files.len(),
            });
        }
        other => other?,
    };
    let json = trained.tokenizer.to_string(true).map_err(tk)?;
    let manifest = Manifest {
        schema_version: codex_core::SCHEMA_VERSION,
        codex_version: codex_core::VERSION.to_string(),
        created: codex_core::time::now_rfc3339(),
        tokenizer_file: "tokenizer.json".into(),
        tokenizer_sha256: codex_core::hash::sha256_bytes(json.as_bytes()),
        vocab_size: trained.tokenizer.get_vocab_size(true),
        config: config.clone(),
        corpus: CorpusRecord {
            inputs: corpus.spec.inputs.clone(),
            jsonl_field: corpus.spec.jsonl_field.clone(),
            documents: trained.documents,
            bytes: trained.bytes,
            files: digests.get(),
        },
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(tk)?;
    codex_core::fsutil::create_dir_all(out_dir).map_err(|source| TokenizerError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let (tok_path, man_path) = output_paths(out_dir);
    // A stale manifest must never describe a new tokenizer: remove it first.
    if man_path.exists() {
        std::fs::remove_file(&man_path).map_err(|source| TokenizerError::Write {
            path: man_path.clone(),
            source,
        })?;
    }
    codex_core::fsutil::atomic_write(&tok_path, json.as_bytes()).map_err(|source| {
        TokenizerError::Write {
            path: tok_path.clone(),
            source,
        }
    })?;
    codex_core::fsutil::atomic_write(&man_path, &manifest_json).map_err(|source| {
        TokenizerError::Write {
            path: man_path.clone(),
            source,
        }
    })?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(lines: &[&str]) -> Vec<Result<Document>> {
        lines
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Ok(Document {
                    text: t.to_string(),
                    file: 0,
                    line: i as u64 + 1,
                })
            })
            .collect()
    }

    const TEXT: &[&str] = &[
        "the quick brown fox jumps over the lazy dog",
        "the lazy dog sleeps; the quick fox runs",
        "a fox, a dog and the other fox",
    ];

    #[test]
    fn each_model_trains_and_round_trips() {
        for model in [ModelKind::Bpe, ModelKind::WordPiece, ModelKind::Unigram] {
            let config = TrainConfig {
                model,
                vocab_size: 300,
                min_frequency: 1,
                ..Default::default()
            };
            let t = train(&config, docs(TEXT).into_iter(), &|_| {}).unwrap();
            assert_eq!(t.documents, 3);
            assert_eq!(t.tokenizer.token_to_id("[PAD]"), Some(0), "{model:?}");
            let enc = t.tokenizer.encode("the lazy fox", false).unwrap();
            assert!(!enc.get_ids().is_empty());
            if model == ModelKind::Bpe {
                let back = t.tokenizer.decode(enc.get_ids(), true).unwrap();
                assert_eq!(back, "the lazy fox");
            }
        }
    }

    #[test]
    fn vocab_smaller_than_alphabet_is_an_error() {
        let config = TrainConfig {
            vocab_size: 100,
            ..Default::default()
        };
        let err = train(&config, docs(TEXT).into_iter(), &|_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("vocab size 100 is smaller than the alphabet"),
            "{err}"
        );
        let config = TrainConfig {
            model: ModelKind::WordPiece,
            vocab_size: 10,
            ..Default::default()
        };
        let err = train(&config, docs(TEXT).into_iter(), &|_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("vocab size 10 is smaller than the alphabet"),
            "{err}"
        );
        let config = TrainConfig {
            model: ModelKind::Unigram,
            vocab_size: 3,
            ..Default::default()
        };
        let err = train(&config, docs(TEXT).into_iter(), &|_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("vocab_size = 3"), "{err}");
    }

    #[test]
    fn empty_corpus_and_stream_errors_are_reported() {
        let config = TrainConfig::default();
        let err = train(&config, docs(&[]).into_iter(), &|_| {})
            .err()
            .unwrap();
        assert!(matches!(err, TokenizerError::EmptyCorpus { .. }), "{err}");
        let mut d = docs(TEXT);
        d.push(Err(TokenizerError::EmptyCorpus { files: 42 }));
        let err = train(&config, d.into_iter(), &|_| {}).err().unwrap();
        assert!(
            matches!(err, TokenizerError::EmptyCorpus { files: 42 }),
            "{err}"
        );
    }
}
