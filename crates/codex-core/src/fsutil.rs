//! Durable, atomic file replacement, and bounded reads of user-named files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// fsyncs a directory so that a rename inside it survives a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Writes `bytes` to `path`; see [`atomic_write_with`] for what happens to what is there.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    atomic_write_with(path, |f| f.write_all(bytes))
}

/// Writes the content the closure produces to `path`, by what `path` is now:
///
/// - **missing or a regular file**: atomically. A temporary sibling is written and fsynced,
///   renamed over `path`, and the directory fsynced. Readers see the old file or the new one,
///   never a torn one; on error the temporary is removed and the old file is untouched. A new
///   file gets mode `0666` minus the umask (as `File::create`); a replaced one keeps its mode.
/// - **a symlink**: the file it finally points to is written by these rules, and the link
///   stays a link (a symlink into a shared folder keeps pointing there).
/// - **anything else that can be opened for writing** (`/dev/stdout`, `/dev/null`, a FIFO, a
///   terminal, a device, or the file this process's stdout/stderr is redirected to): written
///   through, opened in append mode, never replaced; an error from the device (`/dev/full`:
///   no space left) is returned as is. A directory is an error.
pub fn atomic_write_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let existing = match fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if let Some(meta) = &existing {
        if meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        }
        // `/dev/stdout` of `codex … > file` resolves to a regular file, but replacing it
        // would detach the shell's redirection: write through, as to any stream.
        if !meta.is_file() || is_std_stream(meta) {
            let mut f = OpenOptions::new().append(true).open(path)?;
            return write(&mut f);
        }
    }
    let target = resolve_links(path)?;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // tempfile's own default is 0600; run records are meant to be shared.
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    if let Some(meta) = &existing {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    write(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(&target).map_err(|e| e.error)?;
    fsync_dir(dir)
}

/// The path a chain of symlinks ends at (which may not exist yet); `path` itself when it is
/// not a link.
fn resolve_links(path: &Path) -> io::Result<PathBuf> {
    let mut cur = path.to_path_buf();
    // The kernel's own limit on a chain (ELOOP).
    for _ in 0..40 {
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                let next = fs::read_link(&cur)?;
                cur = match cur.parent() {
                    Some(dir) if next.is_relative() => dir.join(next),
                    _ => next,
                };
            }
            _ => return Ok(cur),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Whether `meta` is the file behind this process's stdout or stderr.
#[cfg(unix)]
fn is_std_stream(meta: &fs::Metadata) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let same = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .ok()
            .and_then(|fd| File::from(fd).metadata().ok())
            .is_some_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
    };
    same(io::stdout().as_fd()) || same(io::stderr().as_fd())
}

#[cfg(not(unix))]
fn is_std_stream(_: &fs::Metadata) -> bool {
    false
}

/// What kind of file `meta` describes, for error messages.
pub fn kind_name(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Reads a user-named input that must be a regular file of at most `cap` bytes. Anything else
/// (a FIFO that would block, `/dev/zero` that never ends, a directory) is refused with an
/// error that says what it is, before a byte is read; the read itself stops at `cap + 1` bytes
/// in case the file grows meanwhile.
pub fn read_regular_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", kind_name(&meta)),
        ));
    }
    let too_big = |len: u64| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is {len} bytes; the limit is {cap} bytes"),
        )
    };
    if meta.len() > cap {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::open(path)?.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Creates `dir` and its parents, with a message that names the path on failure.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create directory {}: {e}", dir.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_atomically_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_write_keeps_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        atomic_write(&p, b"old").unwrap();
        let err = atomic_write_with(&p, |_| Err(io::Error::other("disk full"))).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[cfg(unix)]
    #[test]
    fn new_files_get_create_mode_and_replaced_files_keep_theirs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // What File::create gives under this process's umask.
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let p = dir.path().join("a.json");
        atomic_write(&p, b"one").unwrap();
        assert_eq!(mode(&p), mode(&plain));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(mode(&p), 0o640);
        assert_eq!(fs::read(&p).unwrap(), b"two");
    }

    #[cfg(unix)]
    #[test]
    fn symlink_stays_a_link_and_its_target_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.json");
        let link = dir.path().join("link.json");
        fs::write(&target, b"old").unwrap();
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        atomic_write(&link, b"new").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&target).unwrap(), b"new");
        // A dangling link: its target is created, the link kept.
        let dangling = dir.path().join("d.json");
        std::os::unix::fs::symlink("made.json", &dangling).unwrap();
        atomic_write(&dangling, b"x").unwrap();
        assert!(
            fs::symlink_metadata(&dangling)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(dir.path().join("made.json")).unwrap(), b"x");
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_written_through_never_replaced() {
        use std::os::unix::fs::FileTypeExt;
        // A private "disk full" node when we may make one (root), so that a regression that
        // replaces it cannot break the machine's /dev/full.
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("full");
        let made = std::process::Command::new("mknod")
            .arg(&node)
            .args(["c", "1", "7"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            // A filesystem mounted nodev makes such a node useless.
            && OpenOptions::new()
                .write(true)
                .open(&node)
                .and_then(|mut f| f.write_all(b"x"))
                .is_err_and(|e| e.raw_os_error() == Some(28));
        let full = if made {
            node.as_path()
        } else {
            Path::new("/dev/full")
        };
        let err = atomic_write(full, b"data").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}"); // ENOSPC
        assert!(fs::metadata(full).unwrap().file_type().is_char_device());
        atomic_write(Path::new("/dev/null"), b"data").unwrap();
        assert!(
            fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_gets_the_data() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read(fifo).unwrap())
        };
        atomic_write(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = atomic_write(dir.path(), b"x").unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn capped_reads_refuse_streams_and_big_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_regular_capped(&p, 10).unwrap(), b"0123456789");
        let err = read_regular_capped(&p, 9).unwrap_err();
        assert!(err.to_string().contains("limit is 9 bytes"), "{err}");
        let err = read_regular_capped(Path::new("/dev/zero"), 9).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let err = read_regular_capped(dir.path(), 9).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        let fifo = dir.path().join("pipe");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        // Refused without opening, so this does not block.
        let err = read_regular_capped(&fifo, 9).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
    }
}
