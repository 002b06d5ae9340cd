//! The run directory layout (see ARCHITECTURE.md, "The run directory").

use std::path::{Path, PathBuf};

/// Paths inside one run directory `runs/<name>/`.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The resolved config, exactly as used.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.ndjson")
    }
    pub fn system_metrics(&self) -> PathBuf {
        self.root.join("system_metrics.ndjson")
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.root.join("tokenizer.json")
    }
    pub fn provenance(&self) -> PathBuf {
        self.root.join("provenance.json")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// The lock file held by the process writing this run (contains its pid).
    pub fn lock(&self) -> PathBuf {
        self.root.join(".lock")
    }
    /// Cached token shards and their manifest.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
}
