//! codex-registry's integration tests, one binary.

mod behaviour;
mod numerics;
mod support;
