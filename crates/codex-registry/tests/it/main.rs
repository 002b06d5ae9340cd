//! codex-registry's integration tests, one binary.

mod behaviour;
mod generate;
mod gguf_export;
mod hostile;
mod numerics;
mod overrides;
mod support;
