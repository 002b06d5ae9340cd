//! One module per top-level command; each exposes `Args` (clap) and `run(ctx, args)`.

pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod repo_map;
pub mod status;
pub mod sweep;
pub mod sync;
pub mod tokenizer;
pub mod train;
