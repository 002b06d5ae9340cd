//! Streaming NDJSON reading for `codex status`: one line in memory at a time, each capped, so
//! a multi-GB or hostile `metrics.ndjson` costs bounded memory, and a malformed line is
//! skipped and counted instead of costing the whole run.

use serde_json::Value;
use std::io::{self, BufRead, Read};
use std::path::Path;

/// The longest line parsed; longer ones are counted as malformed without being held whole.
/// Trainer events are well under 1 KiB; this leaves room for large summaries.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What a read skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LineStats {
    /// Lines that were not a JSON object (or were over [`MAX_LINE_BYTES`]), not counting a
    /// torn last line.
    pub malformed: u64,
    /// The first malformed line: its 1-based number and why.
    pub first_malformed: Option<(u64, String)>,
}

impl LineStats {
    fn malformed(&mut self, line: u64, why: String) {
        self.malformed += 1;
        if self.first_malformed.is_none() {
            self.first_malformed = Some((line, why));
        }
    }

    /// `N malformed line(s) in FILE skipped (first: line L: why)`, or None when none were.
    pub fn note(&self, file: &str) -> Option<String> {
        let (line, why) = self.first_malformed.as_ref()?;
        Some(format!(
            "{} malformed line(s) in {file} skipped (first: line {line}: {why})",
            self.malformed
        ))
    }
}

/// Calls `f` with every JSON object line of `r`, in order. Blank lines are ignored; a
/// last line without its newline that does not parse is a write in progress (or cut by a
/// crash) and is ignored silently, as `codex_core::ndjson::read_lines` does. Only I/O
/// errors are errors.
pub fn for_each_object<R: BufRead>(mut r: R, mut f: impl FnMut(Value)) -> io::Result<LineStats> {
    let mut stats = LineStats::default();
    let mut line = Vec::new();
    let mut line_no = 0u64;
    loop {
        line.clear();
        let (ended, overlong) = read_capped_line(&mut r, &mut line)?;
        if !ended && line.is_empty() && !overlong {
            return Ok(stats);
        }
        line_no += 1;
        if overlong {
            stats.malformed(line_no, format!("longer than {MAX_LINE_BYTES} bytes"));
        } else if !line.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(&line) {
                Ok(v @ Value::Object(_)) => f(v),
                Ok(_) if ended => stats.malformed(line_no, "not a JSON object".into()),
                Err(e) if ended => stats.malformed(line_no, e.to_string()),
                // The torn tail.
                Ok(_) | Err(_) => {}
            }
        }
        if !ended {
            return Ok(stats);
        }
    }
}

/// Reads one line (without its `\n`) into `line`, keeping at most [`MAX_LINE_BYTES`] and
/// discarding the rest of a longer one. Returns (whether a `\n` ended it, whether it was
/// longer than the cap).
fn read_capped_line<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> io::Result<(bool, bool)> {
    let mut overlong = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((false, overlong));
        }
        let (chunk, used, ended) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        if !overlong {
            if line.len() + chunk.len() > MAX_LINE_BYTES {
                overlong = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        r.consume(used);
        if ended {
            return Ok((true, overlong));
        }
    }
}

/// Opens `path` and streams it through [`for_each_object`].
pub fn for_each_object_in(path: &Path, f: impl FnMut(Value)) -> io::Result<LineStats> {
    let file = std::fs::File::open(path)?;
    for_each_object(io::BufReader::with_capacity(64 * 1024, file), f)
}

/// At most `max` bytes of a small text file (config, provenance, README), decoded lossily
/// (a stray byte must not hide the rest), and whether more followed.
pub fn read_text_capped(path: &Path, max: u64) -> io::Result<(String, bool)> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    let truncated = bytes.len() as u64 > max;
    bytes.truncate(max as usize);
    Ok((String::from_utf8_lossy(&bytes).into_owned(), truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(input: &[u8]) -> (Vec<Value>, LineStats) {
        let mut out = Vec::new();
        let stats = for_each_object(input, |v| out.push(v)).unwrap();
        (out, stats)
    }

    #[test]
    fn malformed_middle_lines_are_skipped_and_counted() {
        let (v, s) = objects(b"{\"a\":1}\nnot json\n\n42\n{\"a\":2}\n");
        assert_eq!(v.len(), 2);
        assert_eq!(v[1]["a"], 2);
        assert_eq!(s.malformed, 2);
        assert_eq!(s.first_malformed.as_ref().unwrap().0, 2);
        assert!(s.note("m").unwrap().starts_with("2 malformed line(s) in m"));
    }

    #[test]
    fn torn_tail_is_silent_but_a_complete_last_line_counts() {
        let (v, s) = objects(b"{\"a\":1}\n{\"a\":");
        assert_eq!((v.len(), s.malformed), (1, 0));
        let (v, s) = objects(b"{\"a\":1}\n{\"a\":2}");
        assert_eq!((v.len(), s.malformed), (2, 0));
        let (_, s) = objects(b"{\"a\":1}\ngarbage\n");
        assert_eq!(s.malformed, 1);
    }

    #[test]
    fn overlong_line_is_skipped_without_losing_the_next() {
        let mut input = b"{\"a\":\"".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.extend_from_slice(b"\"}\n{\"a\":2}\n");
        // A tiny buffer, so the line arrives in many pieces.
        let (v, s) = {
            let mut out = Vec::new();
            let r = io::BufReader::with_capacity(7, &input[..]);
            let s = for_each_object(r, |v| out.push(v)).unwrap();
            (out, s)
        };
        assert_eq!(v.len(), 1);
        assert_eq!(v[0]["a"], 2);
        assert_eq!(s.malformed, 1);
        assert_eq!(s.first_malformed.unwrap().0, 1);
    }

    #[test]
    fn crlf_and_invalid_utf8() {
        let (v, s) = objects(b"{\"a\":1}\r\n\xff\xfe\n{\"a\":2}\n");
        assert_eq!((v.len(), s.malformed), (2, 1));
    }

    #[test]
    fn capped_text_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"seed = 1\n\xff rest").unwrap();
        let (t, more) = read_text_capped(&p, 4).unwrap();
        assert_eq!((t.as_str(), more), ("seed", true));
        let (t, more) = read_text_capped(&p, 100).unwrap();
        assert!(t.contains("seed = 1") && t.contains('\u{fffd}') && !more);
    }
}
