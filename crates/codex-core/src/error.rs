//! User-facing error decoration shared by the crates and the binary.
//!
//! Any error whose chain contains a [`Hint`] is printed with a `hint:` line; one whose chain
//! contains [`Internal`] exits 2 instead of 1.

use std::fmt;

/// A suggestion printed after the error as `hint: …`.
#[derive(Debug, Clone)]
pub struct Hint(pub String);

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Hint {}

/// Marks an error as a bug or an environment failure rather than bad input (exit 2).
#[derive(Debug, Clone)]
pub struct Internal(pub String);

impl fmt::Display for Internal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Internal {}
