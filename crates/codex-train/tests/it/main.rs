//! codex-train's integration tests: one binary, one module per area.

mod pipeline;
mod resume;
mod support;
