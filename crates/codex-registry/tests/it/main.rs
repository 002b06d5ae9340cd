//! codex-registry's integration tests, one binary.

mod behaviour;
mod hostile;
mod numerics;
mod support;
