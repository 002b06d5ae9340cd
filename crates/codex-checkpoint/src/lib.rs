//! Checksummed checkpoints for codex: a checkpoint is either complete and verified, or it
//! does not exist.
//!
//! Layout (`<run>/checkpoints/`):
//!
//! ```text
//! index.json                 every kept checkpoint: step, metric, hashes, kept-because
//! step-00000500/
//!   model.safetensors        (or adapter_model.safetensors + adapter_config.json for LoRA)
//!   optimizer.safetensors
//!   trainer_state.json
//!   MANIFEST.json            size + sha256 of every file; written last, the completion marker
//! ```
//!
//! - [`CheckpointManager`] holds the run's [`RunLock`], writes each checkpoint into a
//!   temporary sibling directory, hashing every byte as it is written, fsyncs, renames it into
//!   place, then applies the [`RetentionPolicy`] (a pure function, [`retention::plan`]) and
//!   rewrites `index.json` atomically.
//! - [`list`] (sizes only), [`verify`] (rehash), [`load`] (verify, then parse) and
//!   [`latest_valid`] / [`latest_valid_where`] (newest checkpoint that verifies and passes
//!   the caller's check) read them back.
//! - A checkpoint is complete only with every file its [`CheckpointKind`] needs (full model:
//!   weights, optimizer, trainer state; LoRA: adapter weights and config, optimizer, trainer
//!   state); readers refuse an incomplete one and `save` refuses to write one.
//! - Retention never deletes a checkpoint on the strength of one it has not verified by hash.
//!
//! Tensors cross the API as [`TensorData`] (dtype, shape, bytes), so this crate does not
//! depend on candle.
//!
//! ```no_run
//! use codex_checkpoint::{CheckpointFile, CheckpointManager, CheckpointSpec, RetentionPolicy, TensorData};
//! let mut manager = CheckpointManager::open("runs/demo", RetentionPolicy::default())?;
//! let w = vec![0.0f32; 6];
//! manager.save(CheckpointSpec {
//!     step: 500,
//!     metric: Some(1.25),
//!     files: vec![
//!         CheckpointFile::safetensors("model.safetensors", vec![TensorData::f32("w", vec![2, 3], &w[..])]),
//!         CheckpointFile::safetensors("optimizer.safetensors", vec![TensorData::f32("w.exp_avg", vec![2, 3], &w[..])]),
//!     ],
//!     trainer_state: serde_json::json!({"step": 500}),
//!     config_hash: "…".into(),
//! })?;
//! let resumed = codex_checkpoint::latest_valid("runs/demo")?.expect("a checkpoint");
//! let w = resumed.tensor("model.safetensors", "w")?;
//! # Ok::<(), codex_checkpoint::CheckpointError>(())
//! ```

#![warn(missing_docs)]

mod error;
pub mod format;
mod lock;
mod manager;
mod read;
pub mod retention;
pub mod write;

pub use error::{CheckpointError, Result};
pub use format::{CheckpointKind, FileEntry, Manifest, TensorBytes, TensorData, step_dir_name};
pub use lock::{LockHolder, RunLock};
pub use manager::{
    CheckpointFile, CheckpointManager, CheckpointSpec, PruneOptions, PruneReport, SavedCheckpoint,
};
pub use read::{
    CheckpointInfo, CheckpointStatus, FileCheck, Index, IndexEntry, LoadedCheckpoint, VerifyReport,
    latest_valid, latest_valid_where, list, list_verified, load, read_index, verify,
};
pub use retention::{CheckpointConfig, KeptBecause, Mode, RetentionPolicy};
pub use safetensors::Dtype;

/// Weights of a full model.
pub const MODEL_FILE: &str = "model.safetensors";
/// Optimizer moments, named after their parameters.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// LoRA adapter weights (PEFT layout).
pub const ADAPTER_MODEL_FILE: &str = "adapter_model.safetensors";
/// LoRA adapter config (PEFT layout).
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
