//! codex-tokenizer: the tokenizer pipeline of codex, over the HF `tokenizers` crate.
//!
//! - [`corpus`]: streaming corpus reader (files, directories, globs, JSONL text field) with
//!   per-file sha256 — shared with the trainer's data pipeline.
//! - [`source`]: [`load`] a tokenizer from a `tokenizer.json`, an HF model directory, or
//!   `org/name[@rev]` in the local hf-hub cache (offline).
//! - [`train()`]: byte-level BPE, WordPiece and Unigram training; [`train::train_corpus_to_dir`]
//!   writes `tokenizer.json` and `manifest.json` atomically.
//! - [`encode`]: padding/truncation settings and the parallel, order-preserving stream encoder.
//! - [`validate()`]: the validate report (unk rate, round-trip, tokens per byte, specials).
//!
//! Tokenizers are read and written as HF `tokenizer.json`, so encodings equal those of the
//! Python `tokenizers` package on the same file and text.

pub mod corpus;
pub mod encode;
pub mod error;
pub mod fast;
pub mod source;
pub mod train;
pub mod validate;

pub use error::{Result, TokenizerError};
pub use source::{load, load_file, parse, resolve};
pub use tokenizers;
pub use tokenizers::Tokenizer;
pub use train::{ModelKind, Normalization, TrainConfig, Trained, train};
pub use validate::{ValidateOptions, ValidateReport, validate};
