//! The one error type of this crate; every message names the path and the values involved.

use std::io;
use std::path::PathBuf;

/// `Result` with [`CheckpointError`].
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// What can go wrong while saving, reading, verifying or pruning checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// An I/O operation on `path` failed. The OS error is the `source` only, so a printed
    /// chain (`error: … caused by: …`) shows it once; [`CheckpointError::report`] joins both.
    #[error("{what} `{}`", path.display())]
    Io {
        /// What was being done ("cannot write", "cannot read", …).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another live process holds the run lock.
    #[error(
        "run `{}` is locked by pid {pid} on host `{host}` (since {started}, command `{command}`); \
         another process is writing this run",
        run.display()
    )]
    Locked {
        /// The run directory.
        run: PathBuf,
        /// The holder's process id.
        pid: u32,
        /// The holder's host name.
        host: String,
        /// When the holder took the lock (RFC 3339).
        started: String,
        /// The holder's command line.
        command: String,
    },
    /// A file's sha256 differs from the one recorded in the manifest.
    #[error("checkpoint `{}`: `{file}` has sha256 {actual}, expected {expected} (from MANIFEST.json)", dir.display())]
    HashMismatch {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The file name inside it.
        file: String,
        /// The sha256 recorded in the manifest.
        expected: String,
        /// The sha256 of the bytes on disk.
        actual: String,
    },
    /// A file's size differs from the one recorded in the manifest (a truncated file).
    #[error("checkpoint `{}`: `{file}` is {actual} bytes, expected {expected} bytes (from MANIFEST.json)", dir.display())]
    SizeMismatch {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The file name inside it.
        file: String,
        /// The size recorded in the manifest.
        expected: u64,
        /// The size on disk.
        actual: u64,
    },
    /// A file listed in the manifest does not exist.
    #[error("checkpoint `{}`: `{file}` is listed in MANIFEST.json but missing", dir.display())]
    MissingFile {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The file name inside it.
        file: String,
    },
    /// The completion marker is absent: the checkpoint was never finished.
    #[error("checkpoint `{}` has no MANIFEST.json (incomplete, or not a checkpoint)", dir.display())]
    MissingManifest {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// The manifest exists but cannot be used.
    #[error("checkpoint `{}`: invalid MANIFEST.json: {reason}", dir.display())]
    BadManifest {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The manifest does not list every file its kind of checkpoint needs (a full-model
    /// checkpoint without `model.safetensors`, an empty file list, …).
    #[error("checkpoint `{}` is incomplete: {reason}", dir.display())]
    Incomplete {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A safetensors file does not parse, or a tensor/file requested from it does not exist.
    #[error("`{}`: {reason}", path.display())]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The caller's [`crate::CheckpointSpec`] is unusable (bad file name, tensor size).
    #[error("invalid checkpoint for step {step}: {reason}")]
    InvalidSpec {
        /// The step being saved.
        step: u64,
        /// What is wrong.
        reason: String,
    },
    /// A retention policy value is out of range.
    #[error("invalid retention policy: {0}")]
    Policy(String),
    /// Saving failed; the temporary directory was removed and earlier checkpoints are intact.
    #[error(
        "checkpoint for step {step} was not saved (the partial copy was removed; earlier checkpoints are intact)"
    )]
    SaveFailed {
        /// The step that was being saved.
        step: u64,
        /// The failure.
        #[source]
        source: Box<CheckpointError>,
    },
    /// The path is neither a checkpoint directory nor a run directory with checkpoints.
    #[error("`{}` is not a checkpoint directory (no MANIFEST.json) nor a run directory (no checkpoints/)", path.display())]
    NotACheckpoint {
        /// The path given.
        path: PathBuf,
    },
}

impl CheckpointError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// Whether this error says that the checkpoint's bytes are not what its manifest promises.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Self::HashMismatch { .. }
                | Self::SizeMismatch { .. }
                | Self::MissingFile { .. }
                | Self::MissingManifest { .. }
                | Self::BadManifest { .. }
                | Self::Incomplete { .. }
        )
    }

    /// The message and every cause, `: `-joined, for one-line reports and logs (which would
    /// otherwise drop the OS error carried as the source).
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut cause = e.source();
        while let Some(c) = cause {
            out.push(c.to_string());
            cause = c.source();
        }
        out
    }

    #[test]
    fn os_error_appears_exactly_once_in_the_chain() {
        let enospc = io::Error::from_raw_os_error(28);
        let os = enospc.to_string();
        assert!(os.contains("No space left on device"), "{os}");
        let err = CheckpointError::SaveFailed {
            step: 15,
            source: Box::new(CheckpointError::io(
                "cannot write",
                "/run/checkpoints/.tmp/model.safetensors",
                enospc,
            )),
        };
        let links = chain(&err);
        assert_eq!(links.len(), 3, "{links:?}");
        assert!(links[0].contains("step 15 was not saved"), "{links:?}");
        assert_eq!(
            links[1],
            "cannot write `/run/checkpoints/.tmp/model.safetensors`"
        );
        assert_eq!(links[2], os);
        assert_eq!(links.iter().filter(|l| l.contains(&os)).count(), 1);
        let report = err.report();
        assert_eq!(report.matches(&os).count(), 1, "{report}");
        assert!(report.contains("model.safetensors"), "{report}");
    }
}
