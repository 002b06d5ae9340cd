//! The root package's integration tests: the real `codex` binary, end to end, one module a
//! command group, in one test binary. `support` holds the pinned `codex()` command and the
//! helpers the modules share.
//!
//! The interop tests (they compare against the Python reference packages and real files that
//! `scripts/test-assets.sh` fetches) are `#[ignore]`d; `bash scripts/test.sh` runs them with
//! `--include-ignored`, where they fail if the assets are missing.

mod support;

mod audit;
mod checkpoint;
mod cli;
mod config;
mod data;
mod dist;
mod export;
mod generate;
mod global;
mod hostile;
mod metrics;
mod mlflow;
mod model;
mod plot;
mod record;
mod safety_generate;
mod sweep;
mod tokenizer;
mod track;
mod train;
mod trust;
