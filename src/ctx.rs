//! What every command receives: output mode, verbosity, color and progress settings, and the
//! printer for stdout data and stderr diagnostics.

use anstyle::{AnsiColor, Style};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Global options, resolved once.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub quiet: bool,
    pub verbose: u8,
    /// `--json`: stdout carries JSON only.
    pub json: bool,
    /// Whether stderr gets ANSI colors.
    pub color: bool,
    /// Whether progress bars may be drawn (stderr is a terminal and not `--no-progress`).
    pub progress: bool,
}

impl Ctx {
    pub fn new(
        quiet: bool,
        verbose: u8,
        json: bool,
        color: ColorChoice,
        no_progress: bool,
    ) -> Self {
        let tty = std::io::stderr().is_terminal();
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        };
        Self {
            quiet,
            verbose,
            json,
            color,
            progress: tty && !no_progress && !quiet,
        }
    }

    /// Logs (tracing) go to stderr; `RUST_LOG` overrides the level from -q/-v.
    pub fn init_logging(&self) {
        let level = if self.quiet {
            "error"
        } else {
            match self.verbose {
                0 => "warn",
                1 => "info",
                2 => "debug",
                _ => "trace",
            }
        };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(self.color)
            .with_target(false)
            .without_time()
            .try_init();
    }

    /// A progress bar of `len` steps on stderr, hidden unless progress is enabled.
    pub fn progress_bar(&self, len: u64, template: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), self.draw_target());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }

    /// A spinner on stderr for work of unknown length, hidden unless progress is enabled.
    pub fn spinner(&self, message: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(None, self.draw_target());
        bar.set_message(message.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    }

    fn draw_target(&self) -> ProgressDrawTarget {
        if self.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        }
    }

    /// A warning on stderr (suppressed by -q).
    pub fn warn(&self, message: impl std::fmt::Display) {
        if !self.quiet {
            let label = self.paint("warning:", AnsiColor::Yellow.on_default());
            let _ = writeln!(std::io::stderr(), "{label} {message}");
        }
    }

    /// An informational line on stderr (suppressed by -q).
    pub fn info(&self, message: impl std::fmt::Display) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "{message}");
        }
    }

    /// Prints an error chain as `error: …`, `  caused by: …`, and `hint: …` when one is attached.
    pub fn print_error(&self, err: &anyhow::Error) {
        let mut stderr = std::io::stderr().lock();
        // A hint is attached as anyhow context, so it appears in the chain as a message of
        // its own; anyhow's downcast finds it in any context layer. Print it last, as `hint:`.
        let hint = err
            .downcast_ref::<codex_core::error::Hint>()
            .map(|h| h.0.clone());
        let mut skipped_hint = false;
        let mut first = true;
        for cause in err.chain() {
            let text = cause.to_string();
            if !skipped_hint && hint.as_deref() == Some(text.as_str()) {
                skipped_hint = true;
                continue;
            }
            if first {
                let _ = writeln!(
                    stderr,
                    "{} {text}",
                    self.paint("error:", AnsiColor::Red.on_default().bold())
                );
                first = false;
            } else {
                let _ = writeln!(stderr, "  caused by: {text}");
            }
        }
        if let Some(h) = hint {
            let _ = writeln!(
                stderr,
                "{} {h}",
                self.paint("hint:", AnsiColor::Cyan.on_default())
            );
        }
    }

    fn paint(&self, text: &str, style: Style) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }
}

/// Writes one line of data to stdout; a closed pipe surfaces as an io::Error (BrokenPipe),
/// which `main` turns into a quiet exit.
pub fn out_line(line: impl std::fmt::Display) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
}

/// Prints a value as pretty JSON on stdout.
pub fn out_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    out_line(text)?;
    Ok(())
}

/// Attaches a `hint:` line to an error without changing its message.
pub fn with_hint(err: impl Into<anyhow::Error>, hint: impl Into<String>) -> anyhow::Error {
    err.into().context(codex_core::error::Hint(hint.into()))
}
