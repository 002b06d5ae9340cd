//! The run lock: one writer per run directory.
//!
//! Mutual exclusion is an advisory `flock` on `<run>/.lock`, which the kernel releases when
//! the holder dies, even by SIGKILL. The file's JSON (`pid`, `host`, `started`, `command`)
//! names the holder in the error a second writer gets. A lock file left by a dead process is
//! taken over with a warning; one naming a live pid on this host is respected even when no
//! `flock` is held (filesystems without `flock`, or a lock written by an older tool).

use crate::error::{CheckpointError, Result};
use codex_core::rundir::RunDir;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The JSON content of the lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockContent {
    pid: u32,
    host: String,
    started: String,
    command: String,
}

/// Who holds (or last held) a run's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockHolder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// When it took the lock (RFC 3339).
    pub started: String,
    /// Its command line.
    pub command: String,
    /// Whether it is still running (a stale lock has `alive == false`).
    pub alive: bool,
}

/// Exclusive right to write a run directory; released on drop.
#[derive(Debug)]
pub struct RunLock {
    run: PathBuf,
    path: PathBuf,
    file: File,
}

impl RunLock {
    /// Takes the lock of `run_dir` (creating the directory if needed).
    ///
    /// # Errors
    /// [`CheckpointError::Locked`] naming the holder's pid when another live process holds
    /// it; [`CheckpointError::Io`] when the lock file cannot be created or written.
    pub fn acquire(run_dir: impl AsRef<Path>) -> Result<RunLock> {
        let run = run_dir.as_ref().to_path_buf();
        codex_core::fsutil::create_dir_all(&run)
            .map_err(|e| CheckpointError::io("cannot create run directory", &run, e))?;
        let path = RunDir::new(&run).lock();
        // A few rounds: the file we locked may be unlinked by its previous holder in between.
        for _ in 0..8 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| CheckpointError::io("cannot open lock file", &path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let content = read_content(&mut file);
                    return Err(locked(&run, content));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(CheckpointError::io("cannot lock", &path, e));
                }
            }
            if !same_file(&file, &path) {
                continue;
            }
            if let Some(old) = read_content(&mut file)
                && old.pid != std::process::id()
            {
                if pid_alive_here(&old) {
                    return Err(locked(&run, Some(old)));
                }
                tracing::warn!(
                    "taking over a stale lock on `{}` left by pid {} on `{}` (started {}), which is no longer running",
                    run.display(),
                    old.pid,
                    old.host,
                    old.started
                );
            }
            let content = LockContent {
                pid: std::process::id(),
                host: hostname(),
                started: codex_core::time::now_rfc3339(),
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            if let Err(e) = write_content(&mut file, &content) {
                // We hold the flock: remove what we could not fill, so no empty or partial lock
                // file is left behind. The error is I/O (disk full, …), never `Locked`.
                if same_file(&file, &path) {
                    let _ = fs::remove_file(&path);
                }
                return Err(CheckpointError::io("cannot write lock file", &path, e));
            }
            return Ok(RunLock { run, path, file });
        }
        Err(CheckpointError::io(
            "cannot lock",
            &path,
            std::io::Error::other("the lock file kept being replaced by another process"),
        ))
    }

    /// Who holds the lock of `run_dir`, if anyone has written one; `alive` says whether that
    /// process still runs.
    pub fn holder(run_dir: impl AsRef<Path>) -> Option<LockHolder> {
        let path = RunDir::new(run_dir.as_ref()).lock();
        let mut file = File::open(&path).ok()?;
        let content = read_content(&mut file)?;
        let locked = match file.try_lock_shared() {
            Err(TryLockError::WouldBlock) => true,
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(TryLockError::Error(_)) => false,
        };
        let alive = locked || pid_alive_here(&content);
        Some(LockHolder {
            pid: content.pid,
            host: content.host,
            started: content.started,
            command: content.command,
            alive,
        })
    }

    /// The run directory this lock protects.
    pub fn run_dir(&self) -> &Path {
        &self.run
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock; a waiter that locked the old inode notices
        // (same_file) and retries on a fresh file.
        if same_file(&self.file, &self.path) {
            let _ = fs::remove_file(&self.path);
        }
        let _ = self.file.unlock();
    }
}

fn locked(run: &Path, content: Option<LockContent>) -> CheckpointError {
    let c = content.unwrap_or(LockContent {
        pid: 0,
        host: "unknown".into(),
        started: "unknown".into(),
        command: "unknown".into(),
    });
    CheckpointError::Locked {
        run: run.to_path_buf(),
        pid: c.pid,
        host: c.host,
        started: c.started,
        command: c.command,
    }
}

/// Writes the holder's JSON, then cuts the file to it (the old content may be longer).
fn write_content(file: &mut File, content: &LockContent) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(content)?;
    bytes.push(b'\n');
    file.rewind()?;
    file.write_all(&bytes)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_all()
}

/// Lock files are a few hundred bytes; more is not ours (and a device such as /dev/zero
/// would never end).
const MAX_LOCK_BYTES: u64 = 64 * 1024;

fn read_content(file: &mut File) -> Option<LockContent> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(MAX_LOCK_BYTES).read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// Whether the lock's process is alive. On another host we cannot tell, so it counts as alive
/// only through the `flock` (checked by the caller).
fn pid_alive_here(c: &LockContent) -> bool {
    c.host == hostname() && pid_alive(c.pid)
}

#[cfg(unix)]
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn pid_alive(_pid: u32) -> bool {
    true
}

fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    "unknown".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_in_process_is_refused_and_drop_releases() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        let holder = RunLock::holder(dir.path()).unwrap();
        assert!(holder.alive);
        assert_eq!(holder.pid, std::process::id());
        drop(lock);
        assert!(RunLock::holder(dir.path()).is_none());
        RunLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn stale_lock_of_dead_pid_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // A reaped child's pid is dead.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let content = format!(
            r#"{{"pid":{pid},"host":"{}","started":"2026-01-01T00:00:00Z","command":"codex train"}}"#,
            hostname()
        );
        fs::write(dir.path().join(".lock"), content).unwrap();
        let holder = RunLock::holder(dir.path()).unwrap();
        assert!(!holder.alive);
        let _lock = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(RunLock::holder(dir.path()).unwrap().pid, std::process::id());
    }

    #[test]
    fn unwritable_lock_file_is_an_io_error_with_the_os_error_not_locked() {
        // /dev/full accepts open and flock but every write fails with ENOSPC, like a full
        // disk; reading it yields endless zero bytes.
        if !Path::new("/dev/full").exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join(".lock")).unwrap();
        let err = RunLock::acquire(dir.path()).unwrap_err();
        let CheckpointError::Io { what, path, source } = &err else {
            panic!("expected an I/O error, got {err:?}");
        };
        assert_eq!(*what, "cannot write lock file");
        assert_eq!(path, &dir.path().join(".lock"));
        assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
        let report = err.report();
        assert_eq!(
            report.matches("No space left on device").count(),
            1,
            "{report}"
        );
        // What it could not fill is not left behind.
        assert!(fs::symlink_metadata(dir.path().join(".lock")).is_err());
        RunLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn lock_file_naming_a_live_pid_is_respected() {
        let dir = tempfile::tempdir().unwrap();
        let parent = std::os::unix::process::parent_id();
        let content = format!(
            r#"{{"pid":{parent},"host":"{}","started":"2026-01-01T00:00:00Z","command":"codex train"}}"#,
            hostname()
        );
        fs::write(dir.path().join(".lock"), content).unwrap();
        let msg = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(msg.contains(&format!("locked by pid {parent}")), "{msg}");
        // The holder's file is left alone.
        assert!(dir.path().join(".lock").exists());
    }
}
