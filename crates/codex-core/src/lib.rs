//! Leaf crate of codex: what every other crate shares.
//!
//! - [`config`]: TOML + `a.b=c` overrides, every problem reported at once with its dotted path.
//! - [`event`]: the run record's `Event` type and the `EventSink` fan-out.
//! - [`mode`]: the system-metrics mode and the device grammar, defined once.
//! - [`ndjson`]: the line writer behind `metrics.ndjson` and `system_metrics.ndjson`.
//! - [`fsutil`]: atomic writes (temp + fsync + rename + fsync dir).
//! - [`hash`]: sha256 while writing, and of files.
//! - [`rundir`]: the run-directory layout.
//! - [`signal`]: the process-wide Ctrl-C flag.
//! - [`time`]: RFC 3339 UTC timestamps and a monotonic clock.
//! - [`exit`], [`error`]: exit codes and user-facing error hints.

pub mod config;
pub mod error;
pub mod event;
pub mod exit;
pub mod fsutil;
pub mod hash;
pub mod mode;
pub mod ndjson;
pub mod rundir;
pub mod signal;
pub mod time;

/// The version of codex, recorded in manifests and provenance.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Schema version carried by every NDJSON line and JSON manifest that codex writes.
pub const SCHEMA_VERSION: u32 = 1;
