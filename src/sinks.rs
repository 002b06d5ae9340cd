//! The binary's event sinks: JSON lines on stdout (`--json`), and the terminal view on stderr
//! (a progress bar on a terminal; plain step lines every `log_every` steps otherwise, as
//! nanoGPT and HF Trainer print them under nohup, SLURM or CI).

use crate::ctx::{Ctx, out_line};
use codex_core::event::{Event, EventKind, EventSink, Progress, SinkError};
use indicatif::{HumanCount, ProgressBar};

/// Every event as one JSON line on stdout.
pub struct StdoutJson;

impl EventSink for StdoutJson {
    fn name(&self) -> &str {
        "stdout"
    }
    fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
        // A closed stdout drops this sink (with one warning); metrics.ndjson keeps everything.
        out_line(serde_json::to_string(event)?)?;
        Ok(())
    }
}

/// Progress, evaluations, warnings and (without a terminal) step lines on stderr.
pub struct Terminal<'a> {
    ctx: &'a Ctx,
    bar: Option<ProgressBar>,
}

impl<'a> Terminal<'a> {
    pub fn new(ctx: &'a Ctx) -> Self {
        Self { ctx, bar: None }
    }

    /// A line above the bar (or a plain line without one). With `--json` the events are on
    /// stdout, so stderr keeps only warnings.
    fn line(&self, text: String) {
        if self.ctx.json {
            return;
        }
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(text),
            _ => self.ctx.info(text),
        }
    }

    fn drawing(&self) -> bool {
        self.bar.as_ref().is_some_and(|b| !b.is_hidden())
    }
}

impl EventSink for Terminal<'_> {
    fn name(&self) -> &str {
        "terminal"
    }

    fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
        let step = event.header.step;
        match &event.kind {
            EventKind::Start(s) => {
                let d = &s.data;
                self.line(format!(
                    "data: {} tokens, {} train / {} val blocks of {} (tokenizer {}, vocab {}); {} trainable parameters; global batch {} sequences",
                    HumanCount(d.tokens),
                    d.train_blocks,
                    d.val_blocks,
                    d.context_length,
                    d.tokenizer,
                    d.vocab_size,
                    HumanCount(s.trainable_params),
                    s.global_batch,
                ));
                if let Some(r) = &s.resumed {
                    let metric = match (&r.monitor, r.metric) {
                        (Some(m), Some(v)) => format!("{m} {v:.4}"),
                        _ => "no metric".into(),
                    };
                    self.line(format!(
                        "resumed from {}: step {}, {metric}, {} file(s) verified by sha256; restored weights, optimizer state ({} updates), LR schedule position, RNG state and data cursor (sample {})",
                        r.from.display(),
                        r.step,
                        r.files_verified,
                        r.optimizer_updates,
                        r.data_cursor
                    ));
                }
                let bar = self.ctx.progress_bar(
                    s.total_steps,
                    "{spinner} step {pos}/{len} [{bar:30}] {msg} ETA {eta}",
                );
                bar.set_position(step);
                self.bar = Some(bar);
            }
            EventKind::Step(m) => {
                if !self.drawing() {
                    self.line(format!(
                        "step {step}/{}: loss {:.4} (mean {:.4}), lr {:.3e}, grad_norm {:.3}, {:.0} tok/s, {:.1} ms/step",
                        m.total_steps,
                        m.train_loss,
                        m.train_loss_mean,
                        m.lr,
                        m.grad_norm,
                        m.tokens_per_s,
                        m.step_time_ms
                    ));
                }
            }
            EventKind::Eval(e) => self.line(format!(
                "step {step}: val_loss {:.4}, val_ppl {:.2}, val_token_acc {:.3}",
                e.val_loss, e.val_ppl, e.val_token_acc
            )),
            EventKind::Checkpoint(c) => {
                if self.ctx.verbose > 0 {
                    self.line(format!(
                        "step {step}: checkpoint {} ({})",
                        c.path.display(),
                        indicatif::HumanBytes(c.size_bytes)
                    ));
                }
            }
            EventKind::Anomaly(a) => self.ctx.warn(format!(
                "step {step}: non-finite loss or gradient ({:?}); update skipped ({} in a row)",
                a.kind, a.consecutive
            )),
            EventKind::Warning(w) => self.ctx.warn(&w.message),
            EventKind::End(_) => self.finish(),
        }
        Ok(())
    }

    fn progress(&mut self, p: &Progress) {
        if let Some(b) = &self.bar {
            b.set_position(p.step);
            b.set_message(format!(
                "loss {:.4} {:.0} tok/s",
                p.train_loss, p.tokens_per_s
            ));
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
