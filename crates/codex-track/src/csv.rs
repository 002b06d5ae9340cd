//! [`CsvSink`]: `metrics.csv`, one row per step, one column per metric.

use codex_core::event::{EvalMetrics, Event, EventKind, EventSink, SinkError, StepMetrics};
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// The columns, in order.
pub const COLUMNS: &[&str] = &[
    "step",
    "ts",
    "train_loss",
    "train_loss_mean",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "step_time_ms",
    "epoch",
    "tokens_seen",
    "val_loss",
    "val_ppl",
    "val_token_acc",
    "mfu",
    "joules_per_token",
];

/// One row per `step` event; an `eval` at the same step fills `val_*` on that row, an eval at
/// a step without a step event gets a row of its own with the train columns empty. Other
/// events make no rows. A row is written once its eval (if any) is known: at the eval, the next
/// step event, a checkpoint, or the end. A resumed run appends to the same file, so steps it
/// repeats after its checkpoint appear twice, as in `metrics.ndjson`.
pub struct CsvSink<'a> {
    path: Option<PathBuf>,
    out: Option<Box<dyn Write + 'a>>,
    header: bool,
    pending: Option<Row>,
}

#[derive(Debug, Clone)]
struct Row {
    step: u64,
    ts: String,
    train: Option<StepMetrics>,
    eval: Option<EvalMetrics>,
}

impl<'a> CsvSink<'a> {
    /// Appends to `path`, writing the header if the file is new or empty. The file is opened on
    /// the first event.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: Some(path.into()),
            out: None,
            header: false,
            pending: None,
        }
    }

    /// Writes to `out`, starting with the header.
    pub fn from_writer(out: impl Write + 'a) -> Self {
        Self {
            path: None,
            out: Some(Box::new(BufWriter::new(out))),
            header: true,
            pending: None,
        }
    }

    fn out(&mut self) -> Result<&mut Box<dyn Write + 'a>, SinkError> {
        if self.out.is_none() {
            let path = self.path.as_ref().expect("a path when no writer");
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                codex_core::fsutil::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            self.header = file.metadata()?.len() == 0;
            self.out = Some(Box::new(BufWriter::new(file)));
        }
        if self.header {
            self.header = false;
            let out = self.out.as_mut().expect("opened above");
            writeln!(out, "{}", COLUMNS.join(","))?;
        }
        Ok(self.out.as_mut().expect("opened above"))
    }

    fn write_pending(&mut self) -> Result<(), SinkError> {
        if let Some(row) = self.pending.take() {
            let line = format_row(&row);
            let out = self.out()?;
            out.write_all(line.as_bytes())?;
            out.flush()?;
        }
        Ok(())
    }
}

fn format_row(r: &Row) -> String {
    fn f(v: f64) -> String {
        // Shortest text that reads back as the same f64; pandas reads NaN and inf as floats.
        v.to_string()
    }
    let mut cells = vec![r.step.to_string(), r.ts.clone()];
    match &r.train {
        Some(m) => cells.extend([
            f(m.train_loss),
            f(m.train_loss_mean),
            f(m.lr),
            f(m.grad_norm),
            f(m.tokens_per_s),
            f(m.step_time_ms),
            m.epoch.to_string(),
            m.tokens_seen.to_string(),
        ]),
        None => cells.extend(std::iter::repeat_n(String::new(), 8)),
    }
    match &r.eval {
        Some(e) => cells.extend([f(e.val_loss), f(e.val_ppl), f(e.val_token_acc)]),
        None => cells.extend(std::iter::repeat_n(String::new(), 3)),
    }
    // Null in the record (no peak, no energy counter) is an empty cell, never 0.
    let opt = |v: Option<f64>| v.map(f).unwrap_or_default();
    let t = r.train.as_ref();
    cells.extend([
        opt(t.and_then(|m| m.mfu)),
        opt(t.and_then(|m| m.joules_per_token)),
    ]);
    // No cell can hold a comma, quote or newline (numbers and RFC 3339), so no quoting.
    let mut line = cells.join(",");
    line.push('\n');
    line
}

impl EventSink for CsvSink<'_> {
    fn name(&self) -> &str {
        "csv"
    }

    fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
        let step = event.header.step;
        match &event.kind {
            EventKind::Step(m) => {
                self.write_pending()?;
                self.pending = Some(Row {
                    step,
                    ts: event.header.ts.clone(),
                    train: Some(m.clone()),
                    eval: None,
                });
            }
            EventKind::Eval(e) => {
                match &mut self.pending {
                    Some(row) if row.step == step && row.eval.is_none() => row.eval = Some(*e),
                    _ => {
                        self.write_pending()?;
                        self.pending = Some(Row {
                            step,
                            ts: event.header.ts.clone(),
                            train: None,
                            eval: Some(*e),
                        });
                    }
                }
                self.write_pending()?;
            }
            // A new segment or the end: whatever is pending is final.
            EventKind::Start(_) | EventKind::End(_) => self.write_pending()?,
            _ => {}
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.write_pending()?;
        if let Some(out) = &mut self.out {
            out.flush()?;
        }
        Ok(())
    }

    fn finish(&mut self) {
        let _ = self.flush();
    }
}
