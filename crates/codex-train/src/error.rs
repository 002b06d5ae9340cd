//! The error type of codex-train. Errors of the crates below are wrapped whole (`#[from]`,
//! displayed transparently), so a cause is printed once and the binary can pick hints and exit
//! codes by variant.

use std::path::PathBuf;

/// Everything that can go wrong while preparing data, training or evaluating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input: a value, a file or a combination the user can fix.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A fresh run was asked for in a directory that already holds one.
    #[error(
        "run directory `{}` already holds a run ({checkpoints} checkpoint(s)); pass --resume to continue it, or choose another output directory",
        dir.display()
    )]
    RunExists { dir: PathBuf, checkpoints: usize },
    /// `--resume` found nothing that verifies.
    #[error("no valid checkpoint to resume from in `{}`", dir.display())]
    NothingToResume { dir: PathBuf },
    /// A checkpoint's `trainer_state.json` is unreadable or disagrees with the checkpoint.
    #[error("checkpoint `{}`: trainer_state.json: {message}", dir.display())]
    TrainerState { dir: PathBuf, message: String },
    /// A checkpoint does not fit the model (missing tensor, wrong shape or dtype).
    #[error("checkpoint: {0}")]
    CheckpointContents(String),
    /// A tensor operation failed (shape bug, out of memory, device error).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Config(#[from] codex_core::config::ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] codex_tokenizer::TokenizerError),
    /// The `tokenizers` crate refused a text.
    #[error("cannot tokenize: {0}")]
    Encode(String),
    #[error(transparent)]
    Model(#[from] codex_registry::RegistryError),
    #[error(transparent)]
    Checkpoint(#[from] codex_checkpoint::CheckpointError),
    #[error(transparent)]
    Collective(#[from] codex_dist::CollectiveError),
    /// Training stopped because the loss or gradients stayed non-finite.
    #[error("{count} non-finite losses or gradients in a row (last at step {step}); stopped")]
    Anomaly { count: u64, step: u64 },
    /// Data-parallel ranks hold different parameters (a bug, faulty hardware, or a rank that
    /// read other data).
    #[error("the parameters of rank(s) {ranks:?} differ from rank 0's at step {step}; stopped")]
    Diverged { step: u64, ranks: Vec<usize> },
    /// A bug in codex (a panic caught in the loop, an impossible state).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether this is a bug or environment failure (exit 2) rather than bad input (exit 1).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Error::Internal(_) | Error::Tensor(_) | Error::Collective(_)
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
