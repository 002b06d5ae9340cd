//! The crate's one error type. Every message names the value and the path it is about.

use std::path::PathBuf;

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    // --- corpus ---
    #[error("no corpus files found for {patterns:?}")]
    NoFiles { patterns: Vec<String> },
    #[error("corpus input {input}: {message}")]
    BadInput { input: String, message: String },
    #[error("invalid UTF-8 in {} at line {line}, byte offset {byte_offset}", path.display())]
    InvalidUtf8 {
        path: PathBuf,
        line: u64,
        byte_offset: u64,
    },
    #[error("{}:{line}: {message}", path.display())]
    BadRecord {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("the corpus is empty: {files} file(s) with no non-empty document")]
    EmptyCorpus { files: usize },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    // --- tokenizer files ---
    #[error("tokenizer not found: {source_name}\n  looked at:\n    {}", looked.join("\n    "))]
    NotFound {
        source_name: String,
        looked: Vec<String>,
    },
    #[error("corrupt tokenizer file {}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("bad vocabulary in {}: token {token:?} has id {id}: {reason}", path.display())]
    BadVocab {
        path: PathBuf,
        token: String,
        id: String,
        reason: String,
    },
    #[error("{} is {bytes} bytes; tokenizer files larger than {max} bytes are refused", path.display())]
    TooLarge { path: PathBuf, bytes: u64, max: u64 },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} already exists (use --force to overwrite)", path.display())]
    Exists { path: PathBuf },

    // --- training / encoding ---
    #[error("invalid training config: {0}")]
    Config(String),
    #[error(
        "vocab size {requested} is smaller than the alphabet: training needs at least {needed} \
         entries ({detail})"
    )]
    VocabTooSmall {
        requested: usize,
        needed: usize,
        detail: String,
    },
    #[error("training failed: {0}")]
    Train(String),
    #[error("encoding failed{at}: {message}")]
    Encode { at: String, message: String },
    #[error("{at}: {message}")]
    Decode { at: String, message: String },
    #[error("interrupted")]
    Interrupted,
}
