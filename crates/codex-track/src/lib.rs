//! Experiment tracking for codex: the run record (`metrics.ndjson`, `system_metrics.ndjson`) in
//! the formats teams already look at, live as [`EventSink`](codex_core::event::EventSink)s on
//! the trainer's fan-out, or after the fact with [`replay`].
//!
//! - [`TensorBoardSink`]: `events.out.tfevents.*` files TensorBoard's own reader loads (and
//!   `wandb sync --sync-tensorboard` ingests): scalars, the config as text, HParams.
//! - [`CsvSink`]: `metrics.csv`, one row per step.
//! - [`mlflow::MlflowSink`]: an MLflow run over the REST API, on a thread of its own.

pub mod csv;
pub mod mlflow;
pub mod plot;
pub mod proto;
pub mod record;
pub mod replay;
pub mod tensorboard;

pub use csv::CsvSink;
pub use replay::{ReplayStats, replay, replay_system};
pub use tensorboard::TensorBoardSink;
