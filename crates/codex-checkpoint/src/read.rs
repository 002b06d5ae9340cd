//! Reading checkpoints back: listing (fast, trusts sizes), verifying (rehashes every file),
//! loading (verifies size and sha256 of every file before anything is parsed) and picking the
//! newest valid checkpoint to resume from.

use crate::error::{CheckpointError, Result};
use crate::format::{self, INDEX, MANIFEST, Manifest, TRAINER_STATE};
use crate::retention::{KeptBecause, RetentionPolicy};
use codex_core::rundir::RunDir;
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// How far a checkpoint has been checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum CheckpointStatus {
    /// Every file's size and sha256 match the manifest.
    Valid,
    /// Something does not match; the reason names the file and the values.
    Invalid(String),
    /// The manifest parses and every file has its recorded size; hashes not recomputed.
    Unverified,
}

impl CheckpointStatus {
    /// Whether it is not known to be broken (`Valid` or `Unverified`).
    pub fn is_usable(&self) -> bool {
        !matches!(self, Self::Invalid(_))
    }
}

/// One checkpoint as `list` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    /// Its step.
    pub step: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// The monitored metric recorded in its manifest.
    pub metric: Option<f64>,
    /// Total size of its files.
    pub size_bytes: u64,
    /// Why `index.json` says it is kept (empty when the index does not list it).
    pub kept_because: Vec<KeptBecause>,
    /// How far it was checked, and the outcome.
    #[serde(flatten)]
    pub status: CheckpointStatus,
}

/// `checkpoints/index.json`: every kept checkpoint, its hashes and why it is kept. Derived
/// from the manifests, so a lost or corrupt index is rebuilt at the next save or prune.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    /// [`format::CHECKPOINT_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// When it was written.
    pub updated: String,
    /// The policy that produced it.
    pub policy: RetentionPolicy,
    /// The step the run resumed from, never deleted.
    pub protect: Option<u64>,
    /// Kept checkpoints, by step.
    pub checkpoints: Vec<IndexEntry>,
}

/// One kept checkpoint in `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Its step.
    pub step: u64,
    /// Directory name inside `checkpoints/`.
    pub dir: String,
    /// Monitored metric.
    pub metric: Option<f64>,
    /// Total size of its files.
    pub size_bytes: u64,
    /// sha256 of its `MANIFEST.json`.
    pub manifest_sha256: String,
    /// sha256 of each file.
    pub files: BTreeMap<String, String>,
    /// Why it is kept.
    pub kept_because: Vec<KeptBecause>,
}

/// The result of rehashing one checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Its step (from the manifest, else from the directory name).
    pub step: Option<u64>,
    /// Whether every file matches.
    pub ok: bool,
    /// Per-file results (empty when the manifest is missing or unreadable).
    pub files: Vec<FileCheck>,
    /// One message per problem, naming the file, the expected and the actual value.
    pub problems: Vec<String>,
}

/// One file's verification.
#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    /// File name.
    pub name: String,
    /// Size from the manifest.
    pub expected_size: u64,
    /// Size on disk (`None` when missing).
    pub actual_size: Option<u64>,
    /// sha256 from the manifest.
    pub expected_sha256: String,
    /// sha256 on disk (`None` when missing or the size already differs).
    pub actual_sha256: Option<String>,
    /// Whether both match.
    pub ok: bool,
}

/// A verified checkpoint in memory: the trainer state and every file's bytes.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// Its step.
    pub step: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// `trainer_state.json`.
    pub trainer_state: serde_json::Value,
    /// Newer checkpoints that [`latest_valid`] / [`latest_valid_where`] skipped, each with
    /// the reason (failed verification, incomplete, or refused by the caller's check).
    pub skipped: Vec<(PathBuf, String)>,
    files: BTreeMap<String, Vec<u8>>,
}

impl LoadedCheckpoint {
    /// The names of its files (as in the manifest).
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// The verified bytes of one file (e.g. `adapter_config.json`).
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// Whether it has a file of that name.
    pub fn has_file(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    /// One safetensors file, parsed (zero-copy over the verified bytes).
    ///
    /// # Errors
    /// [`CheckpointError::Safetensors`] when the file is absent or does not parse.
    pub fn safetensors(&self, file: &str) -> Result<SafeTensors<'_>> {
        let bytes = self
            .file(file)
            .ok_or_else(|| self.st_err(file, "no such file in this checkpoint".into()))?;
        SafeTensors::deserialize(bytes).map_err(|e| self.st_err(file, e.to_string()))
    }

    /// One tensor by name from a safetensors file: dtype, shape and little-endian bytes.
    ///
    /// # Errors
    /// [`CheckpointError::Safetensors`] naming the file and tensor when it is absent.
    pub fn tensor(&self, file: &str, name: &str) -> Result<TensorView<'_>> {
        self.safetensors(file)?
            .tensor(name)
            .map_err(|e| self.st_err(file, format!("tensor `{name}`: {e}")))
    }

    /// Every tensor of a safetensors file, in file order.
    ///
    /// # Errors
    /// As [`Self::safetensors`].
    pub fn tensors(&self, file: &str) -> Result<Vec<(String, TensorView<'_>)>> {
        Ok(self
            .safetensors(file)?
            .iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect())
    }

    /// The `__metadata__` of a safetensors file (step, schema version, …).
    ///
    /// # Errors
    /// As [`Self::safetensors`].
    pub fn metadata(&self, file: &str) -> Result<BTreeMap<String, String>> {
        let bytes = self
            .file(file)
            .ok_or_else(|| self.st_err(file, "no such file in this checkpoint".into()))?;
        let (_, md) =
            SafeTensors::read_metadata(bytes).map_err(|e| self.st_err(file, e.to_string()))?;
        Ok(md
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect())
    }

    fn st_err(&self, file: &str, reason: String) -> CheckpointError {
        CheckpointError::Safetensors {
            path: self.dir.join(file),
            reason,
        }
    }
}

/// The `step-N` directories of a run, sorted by step. Temporary and trash directories
/// (leftovers of an interrupted save or prune) are not listed.
pub(crate) fn scan(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !run_dir.is_dir() {
        return Err(CheckpointError::io(
            "cannot read run directory",
            run_dir,
            io::Error::new(io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let dir = RunDir::new(run_dir).checkpoints();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CheckpointError::io("cannot read", &dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CheckpointError::io("cannot read", &dir, e))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(format::parse_step_dir) else {
            continue;
        };
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads and parses `dir/MANIFEST.json` and returns it with its sha256, refusing a manifest
/// whose step disagrees with a `step-N` directory name or that lacks a file its kind needs.
pub(crate) fn read_manifest(dir: &Path) -> Result<(Manifest, String)> {
    let (m, sha) = read_manifest_unchecked(dir)?;
    check_manifest(dir, &m)?;
    Ok((m, sha))
}

fn read_manifest_unchecked(dir: &Path) -> Result<(Manifest, String)> {
    let path = dir.join(MANIFEST);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CheckpointError::MissingManifest {
                dir: dir.to_path_buf(),
            });
        }
        Err(e) => return Err(CheckpointError::io("cannot read", path, e)),
    };
    let m = Manifest::parse(dir, &bytes)?;
    Ok((m, codex_core::hash::sha256_bytes(&bytes)))
}

/// What a parsed manifest must also satisfy: its step is the directory's, and it is complete.
fn check_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    // Resume and retention go by the directory's step; a manifest for another step would
    // make them restore or keep the wrong one.
    if let Some(s) = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(format::parse_step_dir)
        && s != m.step
    {
        return Err(CheckpointError::BadManifest {
            dir: dir.to_path_buf(),
            reason: format!("it says step {}, the directory name says {s}", m.step),
        });
    }
    m.check_complete(dir)?;
    Ok(())
}

/// Size check of every file against the manifest (no hashing).
pub(crate) fn check_sizes(dir: &Path, m: &Manifest) -> Result<()> {
    for f in &m.files {
        let actual = file_size(dir, &f.name)?;
        if actual != f.size_bytes {
            return Err(CheckpointError::SizeMismatch {
                dir: dir.to_path_buf(),
                file: f.name.clone(),
                expected: f.size_bytes,
                actual,
            });
        }
    }
    Ok(())
}

fn file_size(dir: &Path, name: &str) -> Result<u64> {
    let path = dir.join(name);
    match fs::metadata(&path) {
        Ok(md) => Ok(md.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CheckpointError::MissingFile {
            dir: dir.to_path_buf(),
            file: name.to_string(),
        }),
        Err(e) => Err(CheckpointError::io("cannot stat", path, e)),
    }
}

/// Fast check: manifest parses, step matches the name, the checkpoint is complete, and every
/// file has its size.
pub(crate) fn quick_check(dir: &Path) -> (Option<Manifest>, Option<String>, CheckpointStatus) {
    match read_manifest(dir) {
        Ok((m, sha)) => {
            let status = match check_sizes(dir, &m) {
                Ok(()) => CheckpointStatus::Unverified,
                Err(e) => CheckpointStatus::Invalid(e.report()),
            };
            (Some(m), Some(sha), status)
        }
        Err(e) => (None, None, CheckpointStatus::Invalid(e.report())),
    }
}

/// Reads `checkpoints/index.json`. A missing index is `Ok(None)`; a corrupt one is an error
/// message (the caller warns; the index is rebuilt from the manifests).
pub fn read_index(run_dir: &Path) -> std::result::Result<Option<Index>, String> {
    let path = RunDir::new(run_dir).checkpoints().join(INDEX);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "`{}` is corrupt ({e}); it is rebuilt at the next save or prune",
                path.display()
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read `{}`: {e}", path.display())),
    }
}

/// Lists the checkpoints of `run_dir`, oldest first, checking manifests and sizes only
/// (status `Unverified` or `Invalid`). Leftover temporary directories are ignored.
///
/// # Errors
/// When `run_dir` or its `checkpoints/` cannot be read.
pub fn list(run_dir: impl AsRef<Path>) -> Result<Vec<CheckpointInfo>> {
    list_impl(run_dir.as_ref(), false)
}

/// Like [`list`], but rehashes every file (status `Valid` or `Invalid`).
///
/// # Errors
/// As [`list`].
pub fn list_verified(run_dir: impl AsRef<Path>) -> Result<Vec<CheckpointInfo>> {
    list_impl(run_dir.as_ref(), true)
}

fn list_impl(run_dir: &Path, rehash: bool) -> Result<Vec<CheckpointInfo>> {
    let dirs = scan(run_dir)?;
    let index = read_index(run_dir).unwrap_or_else(|msg| {
        tracing::warn!("{msg}");
        None
    });
    let mut out = Vec::with_capacity(dirs.len());
    for (step, dir) in dirs {
        let (manifest, _, mut status) = quick_check(&dir);
        if rehash && status.is_usable() {
            let report = verify(&dir)?;
            status = if report.ok {
                CheckpointStatus::Valid
            } else {
                CheckpointStatus::Invalid(report.problems.join("; "))
            };
        }
        let size_bytes = match &manifest {
            Some(m) => m.size_bytes(),
            None => dir_size(&dir),
        };
        let kept_because = index
            .as_ref()
            .and_then(|i| i.checkpoints.iter().find(|e| e.step == step))
            .map(|e| e.kept_because.clone())
            .unwrap_or_default();
        out.push(CheckpointInfo {
            step,
            metric: manifest.as_ref().and_then(|m| m.metric),
            dir,
            size_bytes,
            kept_because,
            status,
        });
    }
    Ok(out)
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Rehashes every file of the checkpoint in `ckpt_dir` against its manifest. Problems with
/// the checkpoint (missing manifest, wrong size or hash) are in the report, not errors.
///
/// # Errors
/// When `ckpt_dir` is not a readable directory.
pub fn verify(ckpt_dir: impl AsRef<Path>) -> Result<VerifyReport> {
    let dir = ckpt_dir.as_ref();
    let md =
        fs::metadata(dir).map_err(|e| CheckpointError::io("cannot read checkpoint", dir, e))?;
    if !md.is_dir() {
        return Err(CheckpointError::io(
            "cannot read checkpoint",
            dir,
            io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
        ));
    }
    let name_step = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(format::parse_step_dir);
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        step: name_step,
        ok: false,
        files: Vec::new(),
        problems: Vec::new(),
    };
    let manifest = match read_manifest_unchecked(dir) {
        Ok((m, _)) => m,
        Err(e) if e.is_integrity() => {
            report.problems.push(e.to_string());
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    report.step = Some(manifest.step);
    // Reported, and the listed files are still checked, so one run shows every problem.
    if let Err(e) = check_manifest(dir, &manifest) {
        report.problems.push(e.to_string());
    }
    for f in &manifest.files {
        let mut check = FileCheck {
            name: f.name.clone(),
            expected_size: f.size_bytes,
            actual_size: None,
            expected_sha256: f.sha256.clone(),
            actual_sha256: None,
            ok: false,
        };
        match file_size(dir, &f.name) {
            Err(e) if e.is_integrity() => report.problems.push(e.to_string()),
            Err(e) => return Err(e),
            Ok(size) => {
                check.actual_size = Some(size);
                if size != f.size_bytes {
                    report.problems.push(
                        CheckpointError::SizeMismatch {
                            dir: dir.to_path_buf(),
                            file: f.name.clone(),
                            expected: f.size_bytes,
                            actual: size,
                        }
                        .to_string(),
                    );
                } else {
                    let path = dir.join(&f.name);
                    let (sha, _) = codex_core::hash::sha256_file(&path)
                        .map_err(|e| CheckpointError::io("cannot read", &path, e))?;
                    check.ok = sha == f.sha256;
                    if !check.ok {
                        report.problems.push(
                            CheckpointError::HashMismatch {
                                dir: dir.to_path_buf(),
                                file: f.name.clone(),
                                expected: f.sha256.clone(),
                                actual: sha.clone(),
                            }
                            .to_string(),
                        );
                    }
                    check.actual_sha256 = Some(sha);
                }
            }
        }
        report.files.push(check);
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

/// Loads the checkpoint in `ckpt_dir`: first checks every file's size, then reads each file
/// once, hashing it as it is read, and refuses on any mismatch; then parses the trainer state.
///
/// # Errors
/// [`CheckpointError::MissingManifest`], [`CheckpointError::SizeMismatch`],
/// [`CheckpointError::HashMismatch`] (naming the file, expected and actual values), or I/O.
pub fn load(ckpt_dir: impl AsRef<Path>) -> Result<LoadedCheckpoint> {
    let dir = ckpt_dir.as_ref();
    let (manifest, _) = read_manifest(dir)?;
    check_sizes(dir, &manifest)?;
    let mut files = BTreeMap::new();
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let (bytes, sha) = read_hashed(&path, f.size_bytes)
            .map_err(|e| CheckpointError::io("cannot read", &path, e))?;
        if bytes.len() as u64 != f.size_bytes {
            return Err(CheckpointError::SizeMismatch {
                dir: dir.to_path_buf(),
                file: f.name.clone(),
                expected: f.size_bytes,
                actual: bytes.len() as u64,
            });
        }
        if sha != f.sha256 {
            return Err(CheckpointError::HashMismatch {
                dir: dir.to_path_buf(),
                file: f.name.clone(),
                expected: f.sha256.clone(),
                actual: sha,
            });
        }
        files.insert(f.name.clone(), bytes);
    }
    let state_bytes = files
        .get(TRAINER_STATE)
        .ok_or_else(|| CheckpointError::BadManifest {
            dir: dir.to_path_buf(),
            reason: format!("it does not list `{TRAINER_STATE}`"),
        })?;
    let trainer_state =
        serde_json::from_slice(state_bytes).map_err(|e| CheckpointError::BadManifest {
            dir: dir.to_path_buf(),
            reason: format!("`{TRAINER_STATE}` matches its hash but is not JSON: {e}"),
        })?;
    Ok(LoadedCheckpoint {
        step: manifest.step,
        dir: dir.to_path_buf(),
        manifest,
        trainer_state,
        skipped: Vec::new(),
        files,
    })
}

/// Reads a file into memory and hashes it in the same pass.
fn read_hashed(path: &Path, expected: u64) -> io::Result<(Vec<u8>, String)> {
    let mut file = File::open(path)?;
    let mut out = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.extend_from_slice(&buf[..n]);
    }
    Ok((out, hex::encode(hasher.finalize())))
}

/// The newest checkpoint of `run_dir` that verifies and is complete, loaded. Each newer one
/// that fails is skipped with a warning (and listed in [`LoadedCheckpoint::skipped`]).
/// `Ok(None)` when there is no valid checkpoint.
///
/// # Errors
/// I/O errors other than a checkpoint's own corruption (those are skipped).
pub fn latest_valid(run_dir: impl AsRef<Path>) -> Result<Option<LoadedCheckpoint>> {
    latest_valid_where(run_dir, &mut |_| Ok(()))
}

/// Like [`latest_valid`], but a checkpoint must also pass `accept` (the trainer checks that
/// its state fits the run); one it refuses is skipped like a corrupt one, with the reason
/// `accept` gives, and the walk goes on to older checkpoints.
///
/// # Errors
/// As [`latest_valid`].
pub fn latest_valid_where(
    run_dir: impl AsRef<Path>,
    accept: &mut dyn FnMut(&LoadedCheckpoint) -> std::result::Result<(), String>,
) -> Result<Option<LoadedCheckpoint>> {
    let mut skipped = Vec::new();
    for (_, dir) in scan(run_dir.as_ref())?.into_iter().rev() {
        let reason = match load(&dir) {
            Ok(mut loaded) => match accept(&loaded) {
                Ok(()) => {
                    loaded.skipped = skipped;
                    return Ok(Some(loaded));
                }
                Err(why) => format!("checkpoint `{}`: {why}", dir.display()),
            },
            Err(e) if e.is_integrity() => e.report(),
            Err(e) => return Err(e),
        };
        tracing::warn!("skipping checkpoint: {reason}");
        skipped.push((dir, reason));
    }
    Ok(None)
}
