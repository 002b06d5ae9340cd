//! `codex config show|validate`: the effective training configuration, and a check that
//! lists every problem of a config file at once.

use crate::ctx::{Ctx, out_json, out_line};
use crate::settings::{Base, load_checked, load_config, static_checks};
use codex_core::exit;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective training config (defaults + file + overrides) as TOML, or JSON
    /// with --json
    Show {
        /// TOML config; without it, the embedded default run.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Overrides such as `training.steps=50`.
        #[arg(value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Check a training config without running it (its rules, the preset, that the data
    /// inputs exist); exit 1 listing every problem
    Validate {
        /// The TOML config to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Overrides to apply before checking.
        #[arg(value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    match args.command {
        ConfigCommand::Show { config, overrides } => {
            let cfg = load_config(config.as_deref(), &overrides)?;
            if ctx.json {
                out_json(&cfg)?;
            } else {
                out_line(codex_core::config::to_toml_string(&cfg)?.trim_end())?;
            }
            Ok(exit::OK)
        }
        ConfigCommand::Validate { file, overrides } => {
            match load_checked(&Base::File(file.clone()), &overrides, static_checks) {
                Ok(_) => {
                    if ctx.json {
                        out_json(&serde_json::json!({"valid": true, "file": file, "issues": []}))?;
                    } else {
                        out_line(format!("{}: valid", file.display()))?;
                    }
                    Ok(exit::OK)
                }
                Err(e) => {
                    if ctx.json {
                        out_json(
                            &serde_json::json!({"valid": false, "file": file, "issues": e.issues}),
                        )?;
                        Ok(exit::INVALID)
                    } else {
                        Err(anyhow::Error::new(e))
                    }
                }
            }
        }
    }
}
