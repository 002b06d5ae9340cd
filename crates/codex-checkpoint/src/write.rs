//! Writing one checkpoint file fast: the bytes go to the kernel in large writes straight from
//! the caller's memory, sha256 runs on a second thread over the same memory while they are
//! written, and the kernel is asked to start writing each range to disk as soon as it is in
//! the page cache, so the fsync that follows waits for little.
//!
//! Public for the benches (`benches/write.rs` compares it with the previous sequential
//! writer); [`crate::CheckpointManager::save`] is the API.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufWriter, Write};

/// Bytes per `write(2)` for large parts, and how far the file grows between two writeback
/// requests: large enough that a request covers many pages, small enough that the disk starts
/// early.
const WRITE_CHUNK: usize = 8 << 20;
/// Small parts (headers, biases, norms) are gathered in a buffer of this size so a file of
/// many small tensors is not one syscall per tensor.
const GATHER: usize = 1 << 20;
/// Below this many bytes, hashing inline costs less than starting a thread.
const PARALLEL_HASH_MIN: usize = 4 << 20;

/// Writes `parts` to `file` in order and returns the lowercase hex sha256 of their
/// concatenation and its length. The digest is computed from the same immutable memory the
/// writes copy from, so it is the hash of exactly the bytes written. Does not fsync.
///
/// # Errors
/// The first write error; the file then holds a prefix of the bytes.
pub fn write_parts(file: &File, parts: &[&[u8]]) -> io::Result<(String, u64)> {
    let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
    let hash = || {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        hex::encode(h.finalize())
    };
    if total < PARALLEL_HASH_MIN as u64 {
        write_all_parts(file, parts)?;
        return Ok((hash(), total));
    }
    std::thread::scope(|s| {
        let hasher = std::thread::Builder::new()
            .name("codex-ckpt-sha256".into())
            .spawn_scoped(s, hash);
        let written = write_all_parts(file, parts);
        let digest = match hasher {
            Ok(h) => h
                .join()
                .map_err(|_| io::Error::other("the hashing thread panicked"))?,
            // No thread to be had (a process limit): hash here, after the writes.
            Err(_) => hash(),
        };
        written.map(|()| (digest, total))
    })
}

/// Writes every part, large ones in [`WRITE_CHUNK`] writes straight from their memory, and
/// starts writeback of each [`WRITE_CHUNK`] as it is written.
fn write_all_parts(file: &File, parts: &[&[u8]]) -> io::Result<()> {
    // `BufWriter` passes writes at least as large as its buffer straight through.
    let mut w = BufWriter::with_capacity(GATHER, file);
    let (mut pos, mut started) = (0u64, 0u64);
    for part in parts {
        for chunk in part.chunks(WRITE_CHUNK) {
            w.write_all(chunk)?;
            pos += chunk.len() as u64;
            if pos - started >= WRITE_CHUNK as u64 {
                w.flush()?;
                start_writeback(file, started, pos - started);
                started = pos;
            }
        }
    }
    w.flush()
}

/// Asks the kernel to start writing a range of `file` to disk without waiting for it, so the
/// disk works while later ranges are produced and hashed. Only a hint: the fsync that follows
/// is what makes the data durable and reports write errors, so a failure here is ignored.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain syscall on a descriptor that `file` keeps open for the whole call; it
    // reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File, _: u64, _: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(parts: &[&[u8]]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let (digest, len) = write_parts(&file, parts).unwrap();
        drop(file);
        let all: Vec<u8> = parts.concat();
        assert_eq!(std::fs::read(&path).unwrap(), all);
        assert_eq!(len, all.len() as u64);
        assert_eq!(digest, codex_core::hash::sha256_bytes(&all));
    }

    #[test]
    fn small_and_large_parts_round_trip_with_their_hash() {
        check(&[]);
        check(&[b"", b"abc", b""]);
        // Large enough for the hashing thread, several write chunks and a partial last one,
        // with small parts between that go through the gather buffer.
        let big: Vec<u8> = (0..(2 * WRITE_CHUNK + 12_345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let small: Vec<u8> = (0..1000).map(|i| i as u8).collect();
        check(&[&small, &big, &small[..7], &big[..GATHER + 1], &small]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_error_is_returned() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let big = vec![0u8; PARALLEL_HASH_MIN + 1];
        let err = write_parts(&full, &[&big]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}"); // ENOSPC
    }
}
