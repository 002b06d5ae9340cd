//! Newline-delimited JSON, one object per line, flushed per line so that a crash loses at
//! most the line being written.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Appends JSON lines to a file.
pub struct NdjsonWriter {
    path: PathBuf,
    out: BufWriter<File>,
    lines: u64,
}

impl NdjsonWriter {
    /// Opens `path` for appending, creating it (a resumed run continues the same file).
    pub fn append(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            lines: 0,
        })
    }

    /// Creates or truncates `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = File::create(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            lines: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines written by this writer.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Writes one value as one line and flushes it to the OS.
    pub fn write<T: Serialize + ?Sized>(&mut self, value: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value).map_err(io::Error::other)?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        self.lines += 1;
        Ok(())
    }

    /// Flushes and fsyncs (at checkpoints and at the end of a run).
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }
}

/// Reads every complete JSON line of a file; a torn last line (crash mid-write) is skipped,
/// any other malformed line is an error naming its line number.
pub fn read_lines(path: &Path) -> io::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    let total = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == total && !text.ends_with('\n') => break,
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}:{}: invalid JSON line: {e}", path.display(), i + 1),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.ndjson");
        let mut w = NdjsonWriter::create(&p).unwrap();
        w.write(&serde_json::json!({"step": 1})).unwrap();
        w.write(&serde_json::json!({"step": 2})).unwrap();
        drop(w);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.extend_from_slice(b"{\"step\": 3");
        std::fs::write(&p, bytes).unwrap();
        let lines = read_lines(&p).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["step"], 2);
    }

    #[test]
    fn corrupt_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.ndjson");
        std::fs::write(&p, "{\"a\":1}\nnot json\n{\"a\":2}\n").unwrap();
        let err = read_lines(&p).unwrap_err();
        assert!(err.to_string().contains(":2:"), "{err}");
    }
}
