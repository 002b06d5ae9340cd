//! The crate's one error type; every message names the value and the path involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    // The io::Error is the source: printing it here too would show it twice in a cause chain.
    #[error("I/O error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid model config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: corrupt or truncated safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: corrupt or truncated GGUF file: {msg}")]
    Gguf { path: PathBuf, msg: String },
    #[error("missing tensor `{name}` (expected shape {expected:?}) in {origin}")]
    MissingTensor {
        name: String,
        expected: Vec<usize>,
        origin: String,
    },
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?} in {origin}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        origin: String,
    },
    #[error("unexpected tensor(s) in {origin}: {names}")]
    UnexpectedTensors { names: String, origin: String },
    #[error("invalid LoRA config: {0}")]
    Lora(String),
    #[error("device `{device}`: {msg}")]
    Device { device: String, msg: String },
    #[error(
        "`{repo}` (revision `{revision}`) is not in the local hf-hub cache; looked in: {looked}"
    )]
    NotCached {
        repo: String,
        revision: String,
        looked: String,
    },
    #[error("unknown model `{name}`: {msg}")]
    UnknownModel { name: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.into();
    move |source| RegistryError::Io { path, source }
}
