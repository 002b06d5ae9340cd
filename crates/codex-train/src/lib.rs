//! codex-train: the trainer behind `codex train` and `codex eval`.
//!
//! - [`config`]: `TrainConfig`, every section of a run, validated with all problems at once.
//! - [`data`]: corpus → tokenizer → cached token shards → packed blocks → seeded split and an
//!   exact data cursor.
//! - [`optim`], [`schedule`]: AdamW (fp32 moments, decoupled weight decay) and SGD with
//!   momentum as fused in-place CPU updates whose state is checkpointed; LR schedules;
//!   global-norm clipping.
//! - [`trainer`]: the loop (eval, early stopping, anomaly guard, checkpoints, exact resume,
//!   system sampler, `metrics.ndjson` written whatever happens).
//!
//! The library never draws progress bars: callers observe a run through a callback trait.
//!
//! # Features
//! - `cuda`: CUDA devices (needs nvcc at build time).

pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod model;
pub mod optim;
pub mod provenance;
pub mod schedule;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Error, Result};
pub use model::TrainModel;
pub use trainer::{
    EvalResult, NoObserver, Observer, Resume, RunOptions, RunSummary, Status, evaluate, train,
};
