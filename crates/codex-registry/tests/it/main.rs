//! codex-registry's integration tests, one binary.

mod behaviour;
mod generate;
mod hostile;
mod numerics;
mod support;
