//! codex-audit: `codex repo-map` (repository topology, line counts that agree with tokei,
//! public symbols) and `codex status` (the audit of the seed documents, measured live).
//! No candle dependency, so both commands start fast.

pub mod count;
mod error;
pub mod lang;
pub mod probes;
pub mod repomap;
pub mod status;
pub mod symbols;

pub use error::AuditError;
