//! The error type of codex-train.

use std::path::PathBuf;

/// Everything that can go wrong while preparing data, training or evaluating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input: a value, a file or a combination the user can fix.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} needs codex built with the `{feature}` feature")]
    NotCompiled { feature: &'static str, what: String },
    /// A tensor operation failed (shape bug, out of memory, device error).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Config(#[from] codex_core::config::ConfigError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model: {0}")]
    Model(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Training stopped because the loss or gradients stayed non-finite.
    #[error("{count} non-finite losses or gradients in a row (last at step {step}); stopped")]
    Anomaly { count: u64, step: u64 },
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Whether this is a bug or environment failure (exit 2) rather than bad input (exit 1).
    pub fn is_internal(&self) -> bool {
        matches!(self, Error::Internal(_) | Error::Tensor(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
