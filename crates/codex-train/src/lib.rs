//! codex-train: the trainer behind `codex train` and `codex eval`.
//!
//! - [`config`]: `TrainConfig`, every section of a run, validated with all problems at once.
//! - [`data`]: corpus → tokenizer → cached token shards → packed blocks → seeded split and an
//!   exact data cursor.
//! - [`optim`], [`schedule`]: AdamW (fp32 moments, decoupled weight decay) and SGD with
//!   momentum as fused in-place CPU updates whose state is checkpointed; LR schedules;
//!   global-norm clipping.
//! - [`trainer`]: the [`trainer::Trainer`] (setup, step, eval, checkpoint, teardown; early
//!   stopping, anomaly guard, exact resume, system sampler, `metrics.ndjson` written whatever
//!   happens), with a `codex_dist::Collective` hook for data-parallel gradients.
//! - [`eval`]: evaluation, and the `codex eval` job.
//!
//! The library never draws progress bars: callers consume a run's typed events through
//! `codex_core::event::EventSink`s.
//!
//! # Features
//! - `cuda`: CUDA devices (needs nvcc at build time).

pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod model;
pub mod optim;
pub mod provenance;
pub mod schedule;
pub mod trainer;

pub use codex_core::event::{RunStatus, RunSummary};
pub use codex_dist::{Collective, Single};
pub use config::TrainConfig;
pub use error::{Error, Result};
pub use eval::{EvalResult, evaluate};
pub use model::TrainModel;
pub use trainer::{Resume, RunOptions, TrainerState, train, train_with};
