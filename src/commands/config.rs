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
        /// An override such as `training.steps=50` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::override_arg)]
        set: Vec<String>,
        /// Overrides without --set (the older spelling, still accepted).
        #[arg(value_name = "KEY=VALUE", hide = true, value_parser = super::override_arg)]
        overrides: Vec<String>,
    },
    /// Check a training config without running it (its rules, the preset, that the data
    /// inputs exist); exit 1 listing every problem
    Validate {
        /// The TOML config to check.
        #[arg(
            long,
            short = 'c',
            value_name = "FILE",
            required_unless_present = "file"
        )]
        config: Option<PathBuf>,
        /// The config as a positional argument (the older spelling, still accepted).
        #[arg(value_name = "FILE", hide = true)]
        file: Option<PathBuf>,
        /// An override to apply before checking (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::override_arg)]
        set: Vec<String>,
        /// Overrides without --set (the older spelling, still accepted).
        #[arg(value_name = "KEY=VALUE", hide = true, value_parser = super::override_arg)]
        overrides: Vec<String>,
    },
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    match args.command {
        ConfigCommand::Show {
            config,
            set,
            mut overrides,
        } => {
            overrides.extend(set);
            let cfg = load_config(config.as_deref(), &overrides)?;
            if ctx.json {
                out_json(&cfg)?;
            } else {
                out_line(codex_core::config::to_toml_string(&cfg)?.trim_end())?;
                if let Some(doc) = overrides_doc(&cfg) {
                    out_line(doc)?;
                }
            }
            Ok(exit::OK)
        }
        ConfigCommand::Validate {
            config,
            file,
            set,
            mut overrides,
        } => {
            // With -c, a first positional is an override, not the file.
            let file = match (config, file) {
                (Some(c), Some(f)) => {
                    overrides.insert(0, f.display().to_string());
                    c
                }
                (Some(c), None) | (None, Some(c)) => c,
                (None, None) => {
                    return Err(crate::ctx::with_hint(
                        anyhow::anyhow!("no config to validate"),
                        "pass it with -c FILE",
                    ));
                }
            };
            overrides.extend(set);
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

/// TOML comments naming the `model.overrides` keys of the config's preset, each with the value
/// the run would use (the preset's, or the override's), so the sizes are discoverable.
fn overrides_doc(cfg: &codex_train::config::TrainConfig) -> Option<String> {
    let m = &cfg.model;
    if m.preset.is_empty() || !m.pretrained.is_empty() {
        return None;
    }
    let info = codex_registry::registry::find_preset(&m.preset)?;
    let (keys, hf) = match codex_registry::registry::preset_config(&m.preset, &m.overrides) {
        Ok(arch) => {
            let keys = match arch {
                codex_registry::config::ArchConfig::Gpt2(_) => codex_registry::registry::GPT2_KEYS,
                codex_registry::config::ArchConfig::Llama(_) => {
                    codex_registry::registry::LLAMA_KEYS
                }
                codex_registry::config::ArchConfig::Bert(_) => return None,
            };
            (keys, arch.to_hf_json())
        }
        Err(_) => return None,
    };
    let mut out = format!(
        "\n# [model.overrides] keys of preset \"{}\" ({}), with the values this run uses:",
        info.name, info.arch
    );
    for k in keys {
        match hf.get(*k) {
            Some(v) if !v.is_null() => out.push_str(&format!("\n#   {k} = {v}")),
            _ => out.push_str(&format!("\n#   {k}")),
        }
    }
    Some(out)
}
