//! `--track`: the tracking sinks a `codex train` adds to the trainer's fan-out.

use codex_core::event::EventSink;
use codex_track::{CsvSink, TensorBoardSink};
use std::path::Path;

/// A tracker a run can write to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tracker {
    /// Event files under `<run>/tensorboard/`.
    Tensorboard,
    /// `<run>/metrics.csv`.
    Csv,
}

/// The sinks for `trackers` writing into the run directory `run`. They open their files on
/// the first event, so a run the trainer refuses leaves nothing behind.
pub fn sinks<'a>(trackers: &[Tracker], run: &Path) -> Vec<Box<dyn EventSink + 'a>> {
    let mut out: Vec<Box<dyn EventSink + 'a>> = Vec::new();
    let mut seen = Vec::new();
    for &t in trackers {
        if seen.contains(&t) {
            continue;
        }
        seen.push(t);
        out.push(match t {
            Tracker::Tensorboard => {
                Box::new(TensorBoardSink::new(run.join("tensorboard")).with_run_dir(run))
            }
            Tracker::Csv => Box::new(CsvSink::new(run.join("metrics.csv"))),
        });
    }
    out
}
