//! codex-safety: what may go into training data, prompts and outputs.
//!
//! - [`policy`]: policy files (codex's TOML, or the Python original's YAML/JSON), validated with
//!   every bad rule reported at once; the embedded default policy (the original's rules plus
//!   credential and personal-data detectors).
//! - [`scan`]: one `RegexSet` + Aho-Corasick pass per document, parallel across documents;
//!   allow-overrides-block, bypass recorded, redaction byte-identical outside the spans,
//!   masked fragments for reports.
//! - [`tally`]: per-rule counts for reports and run records.
//! - [`mask`]: masking credential-looking values in codex's own records.
//! - [`minhash`]: MinHash-LSH near-duplicate detection.
//!
//! Semantics follow the original (`codex_ml.safety.filters`) with these deliberate changes: a
//! rule without `applies_to` applies to every stage (the original had only prompt and output,
//! its default); a rule without any match is an error (the original silently dropped it, which
//! turned its own shipped policy off); the sanitized text replaces every non-overridden block
//! and redact span (the original skipped block spans whenever any block was overridden); a
//! regex's first capture group, when it has one, is the span (so `password = "x"` keeps its
//! name and loses its value).

pub mod files;
pub mod guard;
pub mod mask;
pub mod minhash;
pub mod planted;
pub mod policy;
pub mod scan;
pub mod tally;
pub mod train;

pub use policy::{Action, Format, Policy, PolicyError, Rule, Severity, Stage};
pub use scan::{Disposition, Finding, ScanOptions, Verdict, mask_fragment};
pub use tally::Tally;
pub use train::{OnBlock, SafetyConfig, SafetyReport};

/// Whether `CODEX_SAFETY_BYPASS` asks for bypass (1, true, yes, on), as in the original.
pub fn bypass_from_env() -> bool {
    std::env::var("CODEX_SAFETY_BYPASS").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}
