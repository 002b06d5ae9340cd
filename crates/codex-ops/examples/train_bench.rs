//! `codex train` without the CLI: the same library call on a config file plus overrides, for
//! benchmarking the training loop while the binary cannot be built (benches/compare_train.sh
//! falls back to it). Writes the same run directory and `metrics.ndjson`.
//!
//!     cargo run --release -p codex-ops --example train_bench -- \
//!         --config configs/bench-small.toml --output /tmp/run training.steps=35

use std::path::PathBuf;
use std::process::ExitCode;

use codex_core::config::{apply_overrides, load, read_toml_file};
use codex_train::{NoObserver, Resume, RunOptions, TrainConfig};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut config, mut output, mut overrides) = (None, None, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = args.next().map(PathBuf::from),
            "--output" => output = args.next(),
            _ if a.contains('=') => overrides.push(a),
            _ => {
                eprintln!(
                    "usage: train_bench --config FILE [--output DIR] [KEY=VALUE...]; got {a:?}"
                );
                return ExitCode::from(2);
            }
        }
    }
    let Some(config) = config else {
        eprintln!("usage: train_bench --config FILE [--output DIR] [KEY=VALUE...]");
        return ExitCode::from(2);
    };
    if let Some(o) = output {
        overrides.push(format!("output.dir={}", toml_string(&o)));
    }
    let cfg = read_toml_file(&config).and_then(|mut table| {
        let issues = apply_overrides(&mut table, &overrides);
        if !issues.is_empty() {
            return Err(codex_core::config::ConfigError {
                source_name: config.display().to_string(),
                issues,
            });
        }
        load::<TrainConfig>(table, &config.display().to_string())
    });
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = RunOptions {
        resume: Resume::No,
        stop_at_step: None,
    };
    match codex_train::train(&cfg, &opts, &mut NoObserver) {
        Ok(s) => {
            println!(
                "{{\"steps\": {}, \"tokens_per_s\": {:.1}, \"train_loss\": {}, \"run_dir\": {:?}}}",
                s.steps,
                s.tokens_per_s,
                s.train_loss.map_or("null".into(), |l| format!("{l}")),
                s.run_dir.display().to_string()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
