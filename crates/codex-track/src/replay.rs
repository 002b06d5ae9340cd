//! Replaying a run's record into a sink: how `codex sync` reaches a tracker after the fact.

use crate::tensorboard::TensorBoardSink;
use codex_core::event::{Event, EventSink, SinkError};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Longest line read; a longer one (not something codex writes) is skipped, not buffered.
pub const MAX_LINE: usize = 1 << 20;

/// What a replay read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Lines handed to the sink.
    pub events: u64,
    /// Lines skipped: not JSON, not an event of this schema, or longer than [`MAX_LINE`].
    pub skipped: u64,
}

/// Hands every event of a `metrics.ndjson` to `sink`, in order, then flushes it. A torn last
/// line (a run still writing, or a crash) counts as skipped.
pub fn replay(metrics_ndjson: &Path, sink: &mut dyn EventSink) -> Result<ReplayStats, SinkError> {
    let mut stats = ReplayStats::default();
    for_each_line(metrics_ndjson, &mut stats, |line| {
        let Ok(event) = serde_json::from_slice::<Event>(line) else {
            return Ok(false);
        };
        sink.emit(&event)?;
        Ok(true)
    })?;
    sink.flush()?;
    Ok(stats)
}

/// Hands every sample of a `system_metrics.ndjson` to `sink` as `system/…` and `gpu<i>/…`
/// scalars.
pub fn replay_system(
    system_ndjson: &Path,
    sink: &mut TensorBoardSink,
) -> Result<ReplayStats, SinkError> {
    let stats = for_each_sample(system_ndjson, |sample| {
        sink.system_sample(sample)?;
        Ok(())
    })?;
    sink.flush()?;
    Ok(stats)
}

/// Calls `f` on every sample (a JSON object) of a `system_metrics.ndjson`.
pub fn for_each_sample(
    system_ndjson: &Path,
    mut f: impl FnMut(&serde_json::Value) -> Result<(), SinkError>,
) -> Result<ReplayStats, SinkError> {
    let mut stats = ReplayStats::default();
    for_each_line(system_ndjson, &mut stats, |line| {
        let Ok(sample) = serde_json::from_slice::<serde_json::Value>(line) else {
            return Ok(false);
        };
        if !sample.is_object() {
            return Ok(false);
        }
        f(&sample)?;
        Ok(true)
    })?;
    Ok(stats)
}

/// Calls `f` on each non-empty line (without its newline) of at most [`MAX_LINE`] bytes;
/// `f` says whether it used the line.
fn for_each_line(
    path: &Path,
    stats: &mut ReplayStats,
    mut f: impl FnMut(&[u8]) -> Result<bool, SinkError>,
) -> Result<(), SinkError> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
            // Too long: skip to the end of the line without keeping it.
            stats.skipped += 1;
            loop {
                let chunk = reader.fill_buf()?;
                if chunk.is_empty() {
                    return Ok(());
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        reader.consume(i + 1);
                        break;
                    }
                    None => {
                        let len = chunk.len();
                        reader.consume(len);
                    }
                }
            }
            continue;
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if f(line)? {
            stats.events += 1;
        } else {
            stats.skipped += 1;
        }
    }
}
