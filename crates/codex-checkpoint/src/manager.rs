//! Writing checkpoints: atomic save (temporary sibling directory, fsync, rename), hashing while
//! writing, the index, and retention after every save.

use crate::error::{CheckpointError, Result};
use crate::format::{
    self, CHECKPOINT_SCHEMA_VERSION, CheckpointKind, FORMAT, FileEntry, INDEX, MANIFEST, Manifest,
    TMP_PREFIX, TRAINER_STATE, TRASH_PREFIX, TensorData,
};
use crate::lock::RunLock;
use crate::read::{self, CheckpointStatus, Index, IndexEntry};
use crate::retention::{self, Candidate, KeptBecause, RetentionPolicy};
use codex_core::rundir::RunDir;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One file of a checkpoint.
#[derive(Debug, Clone)]
pub enum CheckpointFile<'a> {
    /// A safetensors file written from tensors; `step`, `schema_version`, `codex_version` and
    /// `format = pt` are added to its `__metadata__`.
    Safetensors {
        /// File name (`model.safetensors`, `optimizer.safetensors`, `adapter_model.safetensors`).
        name: String,
        /// Its tensors.
        tensors: Vec<TensorData<'a>>,
        /// Extra `__metadata__` entries.
        metadata: BTreeMap<String, String>,
    },
    /// A file written as is (`adapter_config.json`).
    Bytes {
        /// File name.
        name: String,
        /// Contents.
        bytes: Cow<'a, [u8]>,
    },
}

impl<'a> CheckpointFile<'a> {
    /// A safetensors file with no extra metadata.
    pub fn safetensors(name: impl Into<String>, tensors: Vec<TensorData<'a>>) -> Self {
        Self::Safetensors {
            name: name.into(),
            tensors,
            metadata: BTreeMap::new(),
        }
    }

    /// A plain file.
    pub fn bytes(name: impl Into<String>, bytes: impl Into<Cow<'a, [u8]>>) -> Self {
        Self::Bytes {
            name: name.into(),
            bytes: bytes.into(),
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Safetensors { name, .. } | Self::Bytes { name, .. } => name,
        }
    }
}

/// What to save at one step.
#[derive(Debug, Clone)]
pub struct CheckpointSpec<'a> {
    /// The optimizer step.
    pub step: u64,
    /// The monitored metric at this step (ranked for best-K; `None` if not measured).
    pub metric: Option<f64>,
    /// Weights, optimizer state, adapter files.
    pub files: Vec<CheckpointFile<'a>>,
    /// Written as `trainer_state.json` (step, epoch, data cursor, RNG state, schedule position).
    pub trainer_state: serde_json::Value,
    /// Hash of the resolved training config.
    pub config_hash: String,
}

/// A checkpoint that was saved.
#[derive(Debug, Clone, Serialize)]
pub struct SavedCheckpoint {
    /// Its step.
    pub step: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// Total size of its files.
    pub size_bytes: u64,
    /// Every file with size and sha256, as in the manifest.
    pub files: Vec<FileEntry>,
    /// sha256 of its `MANIFEST.json`.
    pub manifest_sha256: String,
    /// Steps that retention deleted after this save.
    pub deleted: Vec<u64>,
}

/// What a prune did (or would do with `dry_run`).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
    /// The policy applied.
    pub policy: RetentionPolicy,
    /// Kept steps and why.
    pub kept: Vec<(u64, Vec<KeptBecause>)>,
    /// Deleted steps (or those that would be).
    pub deleted: Vec<u64>,
    /// Checkpoints that are not valid (incomplete, or failing size or hash verification),
    /// with the reason. Never counted as kept; left alone unless `invalid_deleted`.
    pub invalid: Vec<(u64, String)>,
    /// Whether the `invalid` ones were deleted (or would be, with `dry_run`)
    /// ([`PruneOptions::delete_invalid`]).
    pub invalid_deleted: bool,
}

/// How [`CheckpointManager::prune_with`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneOptions {
    /// Only report; delete nothing.
    pub dry_run: bool,
    /// Also delete checkpoints that are invalid (by default they are left for inspection).
    pub delete_invalid: bool,
}

/// What a verification result is valid for: the manifest's hash and every file's identity
/// and timestamps. Any write to a file changes its ctime, so a cached result is never reused
/// for bytes that changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VerifyKey {
    manifest_sha256: String,
    files: Vec<(u64, u64, i64, i64, i64, i64)>,
}

impl VerifyKey {
    /// `None` when a file cannot be stat'ed (then nothing is cached or reused).
    fn of(dir: &Path, m: &Manifest, manifest_sha256: &str) -> Option<Self> {
        let mut files = Vec::with_capacity(m.files.len());
        for f in &m.files {
            let md = fs::metadata(dir.join(&f.name)).ok()?;
            files.push(stat_fields(&md));
        }
        Some(Self {
            manifest_sha256: manifest_sha256.to_string(),
            files,
        })
    }
}

#[cfg(unix)]
fn stat_fields(md: &fs::Metadata) -> (u64, u64, i64, i64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (
        md.len(),
        md.ino(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec(),
    )
}

#[cfg(not(unix))]
fn stat_fields(md: &fs::Metadata) -> (u64, u64, i64, i64, i64, i64) {
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    (md.len(), 0, mtime, 0, 0, 0)
}

/// Writes checkpoints into one run directory, holding its lock.
#[derive(Debug)]
pub struct CheckpointManager {
    run: RunDir,
    policy: RetentionPolicy,
    protect: Option<u64>,
    lock: RunLock,
    /// Hash verification results by checkpoint directory, so retention rehashes a kept
    /// checkpoint once, not after every save.
    verified: HashMap<PathBuf, (VerifyKey, std::result::Result<(), String>)>,
    /// Removes the checkpoints retention retired after the last save ([`Self::finish_deletions`]).
    deleter: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CheckpointManager {
    fn drop(&mut self) {
        self.finish_deletions();
    }
}

/// A prepared safetensors header and the tensors in write order.
type Header<'t> = (Vec<u8>, Vec<&'t TensorData<'t>>);

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl CheckpointManager {
    /// Takes the run lock of `run_dir` and prepares `checkpoints/`, removing leftovers of an
    /// interrupted save or prune.
    ///
    /// # Errors
    /// [`CheckpointError::Policy`] for a bad policy, [`CheckpointError::Locked`] when another
    /// process writes this run, I/O errors.
    pub fn open(run_dir: impl AsRef<Path>, policy: RetentionPolicy) -> Result<Self> {
        policy.validate()?;
        Self::with_lock(RunLock::acquire(run_dir)?, policy)
    }

    /// Like [`Self::open`] with a lock the caller already holds (e.g. taken when training started).
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn with_lock(lock: RunLock, policy: RetentionPolicy) -> Result<Self> {
        policy.validate()?;
        let run = RunDir::new(lock.run_dir());
        let dir = run.checkpoints();
        codex_core::fsutil::create_dir_all(&dir)
            .map_err(|e| CheckpointError::io("cannot create", &dir, e))?;
        let me = Self {
            run,
            policy,
            protect: None,
            lock,
            verified: HashMap::new(),
            deleter: None,
        };
        me.clean_leftovers();
        Ok(me)
    }

    /// Never delete the checkpoint of `step` (the one this run resumed from).
    pub fn protect(&mut self, step: u64) {
        self.protect = Some(step);
    }

    /// The retention policy.
    pub fn policy(&self) -> &RetentionPolicy {
        &self.policy
    }

    /// `<run>/checkpoints`.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.run.checkpoints()
    }

    /// The lock held.
    pub fn lock(&self) -> &RunLock {
        &self.lock
    }

    /// Saves one checkpoint atomically, then applies retention and rewrites `index.json`.
    ///
    /// On any write error (disk full included) the temporary directory is removed and
    /// earlier checkpoints are untouched. A checkpoint of the same step is replaced.
    ///
    /// # Errors
    /// [`CheckpointError::InvalidSpec`] for a bad spec, [`CheckpointError::SaveFailed`] with
    /// the cause otherwise.
    pub fn save(&mut self, spec: CheckpointSpec<'_>) -> Result<SavedCheckpoint> {
        let step = spec.step;
        validate_spec(&spec)?;
        // Every header is built (and every tensor size checked) before anything touches disk.
        let headers = spec
            .files
            .iter()
            .map(|f| match f {
                CheckpointFile::Safetensors {
                    name,
                    tensors,
                    metadata,
                } => {
                    let mut md = BTreeMap::from([("format".to_string(), "pt".to_string())]);
                    md.extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
                    md.insert("step".into(), step.to_string());
                    md.insert(
                        "schema_version".into(),
                        CHECKPOINT_SCHEMA_VERSION.to_string(),
                    );
                    md.insert("codex_version".into(), codex_core::VERSION.to_string());
                    format::safetensors_header(step, name, tensors, &md).map(Some)
                }
                CheckpointFile::Bytes { .. } => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let root = self.run.checkpoints();
        let tmp = root.join(format!(
            "{TMP_PREFIX}{step:08}-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let fail = |e: CheckpointError| CheckpointError::SaveFailed {
            step,
            source: Box::new(e),
        };
        fs::create_dir(&tmp).map_err(|e| fail(CheckpointError::io("cannot create", &tmp, e)))?;
        let written = write_checkpoint(&tmp, &spec, &headers, &self.policy.monitor).and_then(|r| {
            let final_dir = root.join(format::step_dir_name(step));
            publish(&root, &tmp, &final_dir)?;
            Ok((r, final_dir))
        });
        let ((manifest, manifest_sha256), dir) = match written {
            Ok(x) => x,
            Err(e) => {
                if let Err(rm) = fs::remove_dir_all(&tmp)
                    && rm.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(
                        "cannot remove the partial checkpoint `{}`: {rm}",
                        tmp.display()
                    );
                }
                return Err(fail(e));
            }
        };
        // Its hashes were computed from the bytes as they were written: it counts as verified.
        if let Some(key) = VerifyKey::of(&dir, &manifest, &manifest_sha256) {
            self.verified.insert(dir.clone(), (key, Ok(())));
        }
        let deleted = match self.apply_retention(PruneOptions::default(), true) {
            Ok(report) => report.deleted,
            Err(e) => {
                // The checkpoint itself is durable; retention retries at the next save.
                tracing::warn!(
                    "checkpoint for step {step} saved, but retention failed: {}",
                    e.report()
                );
                Vec::new()
            }
        };
        Ok(SavedCheckpoint {
            step,
            dir,
            size_bytes: manifest.size_bytes(),
            files: manifest.files,
            manifest_sha256,
            deleted,
        })
    }

    /// Applies the retention policy to the checkpoints on disk; `dry_run` only reports.
    /// Invalid checkpoints are left alone (reported, never counted as kept).
    ///
    /// # Errors
    /// I/O errors while scanning, verifying, deleting or writing `index.json`.
    pub fn prune(&mut self, dry_run: bool) -> Result<PruneReport> {
        self.apply_retention(
            PruneOptions {
                dry_run,
                delete_invalid: false,
            },
            false,
        )
    }

    /// [`Self::prune`] with options.
    ///
    /// Every checkpoint the policy keeps is verified by hash before anything is deleted on
    /// its strength; one that fails is reported invalid and the policy is applied again
    /// without it, so a corrupt checkpoint never stands in for the valid ones it would
    /// replace.
    ///
    /// # Errors
    /// As [`Self::prune`].
    pub fn prune_with(&mut self, opts: PruneOptions) -> Result<PruneReport> {
        self.apply_retention(opts, false)
    }

    /// Waits until the checkpoints that retention deleted after the last save are gone from
    /// disk. A save removes them on a background thread, so training does not wait for the
    /// file system to free their blocks; they were renamed out of sight (and the rename made
    /// durable) before `save` returned, and dropping the manager waits too. A crash before
    /// they are gone leaves `.trash-step-*` directories, removed at the next open.
    pub fn finish_deletions(&mut self) {
        if let Some(h) = self.deleter.take()
            && h.join().is_err()
        {
            tracing::warn!("the thread deleting old checkpoints panicked");
        }
    }

    /// Deletes retired checkpoint directories: on a background thread when `background` (at
    /// most one at a time), here otherwise or when no thread can be started.
    fn delete_retired(&mut self, retired: Vec<PathBuf>, background: bool) -> Result<()> {
        self.finish_deletions();
        if retired.is_empty() {
            return Ok(());
        }
        if background {
            let list = retired.clone();
            let spawned = std::thread::Builder::new()
                .name("codex-ckpt-delete".into())
                .spawn(move || {
                    for dir in list {
                        if let Err(e) = fs::remove_dir_all(&dir) {
                            tracing::warn!(
                                "cannot delete `{}` (removed at the next open): {e}",
                                dir.display()
                            );
                        }
                    }
                });
            if let Ok(h) = spawned {
                self.deleter = Some(h);
                return Ok(());
            }
        }
        for dir in &retired {
            fs::remove_dir_all(dir).map_err(|e| CheckpointError::io("cannot delete", dir, e))?;
        }
        Ok(())
    }

    /// Rehashes the checkpoint in `dir` unless a result for the same bytes is cached.
    fn verify_cached(
        &mut self,
        dir: &Path,
        m: &Manifest,
        manifest_sha256: &str,
    ) -> Result<std::result::Result<(), String>> {
        let key = VerifyKey::of(dir, m, manifest_sha256);
        if let (Some(key), Some((cached, result))) = (&key, self.verified.get(dir))
            && key == cached
        {
            return Ok(result.clone());
        }
        let report = read::verify(dir)?;
        let result = if report.ok {
            Ok(())
        } else {
            Err(report.problems.join("; "))
        };
        match key {
            Some(key) => {
                self.verified
                    .insert(dir.to_path_buf(), (key, result.clone()));
            }
            None => {
                self.verified.remove(dir);
            }
        }
        Ok(result)
    }

    /// `background`: delete what the policy drops on a background thread ([`Self::save`]).
    fn apply_retention(&mut self, opts: PruneOptions, background: bool) -> Result<PruneReport> {
        let dry_run = opts.dry_run;
        let mut candidates = Vec::new();
        let mut valid = BTreeMap::new();
        let mut invalid = Vec::new();
        let mut invalid_dirs = Vec::new();
        for (step, dir) in read::scan(self.run.root())? {
            match read::quick_check(&dir) {
                (Some(m), Some(sha), CheckpointStatus::Unverified | CheckpointStatus::Valid) => {
                    candidates.push(Candidate {
                        step,
                        metric: m.metric,
                    });
                    valid.insert(step, (dir, m, sha));
                }
                (_, _, status) => {
                    let reason = match status {
                        CheckpointStatus::Invalid(r) => r,
                        _ => "unreadable".into(),
                    };
                    invalid.push((step, reason));
                    invalid_dirs.push((step, dir));
                }
            }
        }
        // Plan, verify what the plan keeps, and plan again without any that fail: each round
        // removes a candidate, so this ends; deletions happen only after it has.
        let decisions = loop {
            let decisions = retention::plan(&self.policy, &candidates, self.protect);
            let mut failed = false;
            for d in decisions.iter().filter(|d| !d.delete()) {
                let Some((dir, m, sha)) = valid.get(&d.step) else {
                    continue;
                };
                let (dir, m, sha) = (dir.clone(), m.clone(), sha.clone());
                if let Err(reason) = self.verify_cached(&dir, &m, &sha)? {
                    candidates.retain(|c| c.step != d.step);
                    valid.remove(&d.step);
                    invalid.push((d.step, reason));
                    invalid_dirs.push((d.step, dir));
                    failed = true;
                }
            }
            if !failed {
                break decisions;
            }
        };
        invalid.sort_by_key(|(s, _)| *s);
        for (step, reason) in &invalid {
            tracing::warn!(
                "checkpoint at step {step} is invalid and never counted as kept: {reason}"
            );
        }
        let mut kept = Vec::new();
        let mut deleted = Vec::new();
        let mut entries = Vec::new();
        let mut retired = Vec::new();
        let root = self.run.checkpoints();
        for d in decisions {
            let Some((dir, m, sha)) = valid.get(&d.step) else {
                continue;
            };
            if d.delete() {
                if !dry_run {
                    retired.push(retire_checkpoint(&root, dir, d.step)?);
                    self.verified.remove(dir);
                }
                deleted.push(d.step);
            } else {
                entries.push(IndexEntry {
                    step: d.step,
                    dir: format::step_dir_name(d.step),
                    metric: m.metric,
                    size_bytes: m.size_bytes(),
                    manifest_sha256: sha.clone(),
                    files: m
                        .files
                        .iter()
                        .map(|f| (f.name.clone(), f.sha256.clone()))
                        .collect(),
                    kept_because: d.kept_because.clone(),
                });
                kept.push((d.step, d.kept_because));
            }
        }
        if opts.delete_invalid && !dry_run {
            for (step, dir) in &invalid_dirs {
                retired.push(retire_checkpoint(&root, dir, *step)?);
                self.verified.remove(dir);
            }
        }
        // One fsync makes every rename above durable before any file is removed.
        if !retired.is_empty() {
            codex_core::fsutil::fsync_dir(&root)
                .map_err(|e| CheckpointError::io("cannot fsync", &root, e))?;
        }
        if !dry_run {
            let index = Index {
                schema_version: CHECKPOINT_SCHEMA_VERSION,
                updated: codex_core::time::now_rfc3339(),
                policy: self.policy.clone(),
                protect: self.protect,
                checkpoints: entries,
            };
            let path = root.join(INDEX);
            let bytes = serde_json::to_vec_pretty(&index)
                .map_err(|e| CheckpointError::io("cannot encode", &path, io::Error::other(e)))?;
            codex_core::fsutil::atomic_write(&path, &bytes)
                .map_err(|e| CheckpointError::io("cannot write", &path, e))?;
        }
        self.delete_retired(retired, background)?;
        Ok(PruneReport {
            dry_run,
            policy: self.policy.clone(),
            kept,
            deleted,
            invalid_deleted: opts.delete_invalid && !invalid.is_empty(),
            invalid,
        })
    }

    /// Removes temporary and trash directories and temp index files; we hold the lock, so
    /// nobody else is writing them.
    fn clean_leftovers(&self) {
        let root = self.run.checkpoints();
        let Ok(entries) = fs::read_dir(&root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let result = if name.starts_with(TMP_PREFIX) || name.starts_with(TRASH_PREFIX) {
                tracing::info!(
                    "removing `{}`, left by an interrupted save or prune",
                    path.display()
                );
                fs::remove_dir_all(&path)
            } else if name.starts_with(&format!(".{INDEX}.")) && name.ends_with(".tmp") {
                fs::remove_file(&path)
            } else {
                continue;
            };
            if let Err(e) = result {
                tracing::warn!("cannot remove leftover `{}`: {e}", path.display());
            }
        }
    }
}

fn validate_spec(spec: &CheckpointSpec<'_>) -> Result<()> {
    let invalid = |reason: String| CheckpointError::InvalidSpec {
        step: spec.step,
        reason,
    };
    let mut names = vec![TRAINER_STATE];
    for f in &spec.files {
        format::check_file_name(f.name()).map_err(invalid)?;
        if names.contains(&f.name()) {
            return Err(invalid(format!(
                "file `{}` is given twice (or clashes with `{TRAINER_STATE}`)",
                f.name()
            )));
        }
        names.push(f.name());
    }
    // Never write a checkpoint that readers would refuse as incomplete.
    spec_kind(&names).map(|_| ()).map_err(invalid)
}

/// The kind of a checkpoint with these files: full or LoRA by its weights file (then every
/// file that kind needs must be there), generic without one.
fn spec_kind(names: &[&str]) -> std::result::Result<CheckpointKind, String> {
    let weightless = !names
        .iter()
        .any(|n| *n == crate::MODEL_FILE || *n == crate::ADAPTER_MODEL_FILE);
    CheckpointKind::of_files(
        names.iter().copied(),
        weightless.then_some(CheckpointKind::Generic),
    )
}

/// Writes every file into `tmp`, hashing while writing, then the manifest (the completion
/// marker, last), then fsyncs them all and the directory.
fn write_checkpoint(
    tmp: &Path,
    spec: &CheckpointSpec<'_>,
    headers: &[Option<Header<'_>>],
    monitor: &str,
) -> Result<(Manifest, String)> {
    let mut entries = Vec::with_capacity(spec.files.len() + 1);
    let mut open_files = Vec::with_capacity(spec.files.len() + 1);
    for (file, header) in spec.files.iter().zip(headers) {
        let (entry, handle) = match (file, header) {
            (CheckpointFile::Safetensors { name, .. }, Some((header, order))) => {
                let parts = format::safetensors_parts(header, order);
                let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
                write_file(tmp, name, &parts)?
            }
            (CheckpointFile::Bytes { name, bytes }, _) => write_file(tmp, name, &[bytes])?,
            (CheckpointFile::Safetensors { name, .. }, None) => {
                return Err(CheckpointError::InvalidSpec {
                    step: spec.step,
                    reason: format!("`{name}` has no header"),
                });
            }
        };
        entries.push(entry);
        open_files.push((handle, tmp.join(file.name())));
    }
    let state = serde_json::to_vec_pretty(&spec.trainer_state).map_err(|e| {
        CheckpointError::InvalidSpec {
            step: spec.step,
            reason: format!("trainer state is not JSON-encodable: {e}"),
        }
    })?;
    let (entry, handle) = write_file(tmp, TRAINER_STATE, &[&state])?;
    entries.push(entry);
    open_files.push((handle, tmp.join(TRAINER_STATE)));
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let kind = spec_kind(&names).map_err(|reason| CheckpointError::InvalidSpec {
        step: spec.step,
        reason,
    })?;
    let manifest = Manifest {
        schema_version: CHECKPOINT_SCHEMA_VERSION,
        format: FORMAT.to_string(),
        step: spec.step,
        monitor: (!monitor.is_empty()).then(|| monitor.to_string()),
        metric: spec.metric.filter(|m| m.is_finite()),
        codex_version: codex_core::VERSION.to_string(),
        config_hash: spec.config_hash.clone(),
        created: codex_core::time::now_rfc3339(),
        files: entries,
        kind: Some(kind),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::InvalidSpec {
        step: spec.step,
        reason: format!("cannot encode the manifest: {e}"),
    })?;
    let (entry, handle) = write_file(tmp, MANIFEST, &[&bytes])?;
    open_files.push((handle, tmp.join(MANIFEST)));
    // Nothing is visible before `publish` renames the directory, so the files need only be
    // durable by then, not in any order among themselves: every file and the directory are
    // fsynced once, concurrently, so the file system can cover them with one journal commit.
    // (A directory is opened for fsync on Unix only, as `fsutil::fsync_dir` does.)
    #[cfg(unix)]
    {
        let dir = File::open(tmp).map_err(|e| CheckpointError::io("cannot open", tmp, e))?;
        open_files.push((dir, tmp.to_path_buf()));
    }
    sync_all_concurrently(&open_files)?;
    Ok((manifest, entry.sha256))
}

/// Creates `dir/name`, writes `parts` into it while hashing them ([`crate::write`]), and
/// returns the entry and the still-open file (to fsync later).
fn write_file(dir: &Path, name: &str, parts: &[&[u8]]) -> Result<(FileEntry, File)> {
    let path = dir.join(name);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| CheckpointError::io("cannot create", &path, e))?;
    let (sha256, size_bytes) = crate::write::write_parts(&file, parts)
        .map_err(|e| CheckpointError::io("cannot write", &path, e))?;
    Ok((
        FileEntry {
            name: name.to_string(),
            size_bytes,
            sha256,
        },
        file,
    ))
}

/// fsyncs every file, each on its own thread (on this one when no thread can be started), and
/// returns the first error.
fn sync_all_concurrently(files: &[(File, PathBuf)]) -> Result<()> {
    let sync = |(file, path): &(File, PathBuf)| {
        file.sync_all()
            .map_err(|e| CheckpointError::io("cannot fsync", path, e))
    };
    std::thread::scope(|s| {
        let pending: Vec<_> = files
            .iter()
            .map(|f| {
                let h = std::thread::Builder::new()
                    .name("codex-ckpt-fsync".into())
                    .spawn_scoped(s, move || sync(f));
                (f, h)
            })
            .collect();
        let mut first = Ok(());
        for (f, h) in pending {
            let r = match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(CheckpointError::io(
                        "cannot fsync",
                        &f.1,
                        io::Error::other("the fsync thread panicked"),
                    ))
                }),
                Err(_) => sync(f),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// Renames the finished `tmp` to `final_dir` (moving an older checkpoint of the same step out
/// of the way first) and fsyncs the parent so the rename is durable.
fn publish(root: &Path, tmp: &Path, final_dir: &Path) -> Result<()> {
    let mut trash = None;
    if final_dir.exists() {
        let t = root.join(format!(
            "{TRASH_PREFIX}{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::rename(final_dir, &t)
            .map_err(|e| CheckpointError::io("cannot move aside", final_dir, e))?;
        trash = Some(t);
    }
    fs::rename(tmp, final_dir)
        .map_err(|e| CheckpointError::io("cannot rename into place", final_dir, e))?;
    codex_core::fsutil::fsync_dir(root)
        .map_err(|e| CheckpointError::io("cannot fsync", root, e))?;
    if let Some(t) = trash
        && let Err(e) = fs::remove_dir_all(&t)
    {
        tracing::warn!(
            "cannot remove the replaced checkpoint `{}`: {e}",
            t.display()
        );
    }
    Ok(())
}

/// Renames a checkpoint out of sight (`.trash-step-…`), so an interrupted delete never leaves
/// a half-deleted `step-N` that looks like a checkpoint, and returns where it went. The caller
/// fsyncs `root` before removing anything inside it.
fn retire_checkpoint(root: &Path, dir: &Path, step: u64) -> Result<PathBuf> {
    // Unique, so a trash directory an earlier delete could not remove never blocks this one.
    let trash = root.join(format!(
        "{TRASH_PREFIX}{step:08}-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::rename(dir, &trash).map_err(|e| CheckpointError::io("cannot delete checkpoint", dir, e))?;
    Ok(trash)
}
