//! Settings: a config file (or the embedded default, or the run's own `config.toml` when
//! resuming), `a.b=c` overrides, then typed flags set directly on the loaded config. Flags are
//! never turned back into override strings; they are only rendered as such for the run record.

use codex_core::config::{
    ConfigError, ConfigIssue, Validate, apply_overrides, check, finish, parse_toml, push_new,
    read_toml_file,
};
use codex_core::mode::SystemMetricsMode;
use codex_train::config::{DEFAULT_CONFIG_TOML, TrainConfig};
use std::path::{Path, PathBuf};

/// Where the base config comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Base {
    /// `--config FILE`.
    File(PathBuf),
    /// The config a run is continuing with (`--resume` without `--config`).
    Run(PathBuf),
    /// The embedded default run.
    Embedded,
}

/// A config and what was said explicitly.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub cfg: TrainConfig,
    /// Whether the output directory was chosen by the user (file, override or flag).
    pub explicit_dir: bool,
}

/// Reads the base config, applies overrides and validates, reporting every problem at once.
pub fn load_config(path: Option<&Path>, overrides: &[String]) -> Result<TrainConfig, ConfigError> {
    let base = path.map_or(Base::Embedded, |p| Base::File(p.to_path_buf()));
    Ok(load_from(&base, overrides)?.cfg)
}

/// Keys of other trainers (Hugging Face `TrainingArguments`, PEFT) and where they live here,
/// for the did-you-mean of an unknown key (see [`codex_core::config::check`]).
pub const KEY_ALIASES: &[(&str, &str)] = &[
    ("lora", "model.lora"),
    ("peft", "model.lora"),
    ("model.lora_r", "model.lora.r"),
    ("model.lora_alpha", "model.lora.alpha"),
    ("model.lora_dropout", "model.lora.dropout"),
    ("model.name", "model.preset"),
    ("model.model_name_or_path", "model.pretrained"),
    ("optimizer.learning_rate", "optimizer.lr"),
    ("learning_rate", "optimizer.lr"),
    ("lr", "optimizer.lr"),
    ("per_device_train_batch_size", "training.batch_size"),
    ("train_batch_size", "training.batch_size"),
    ("num_train_epochs", "training.epochs"),
    ("max_steps", "training.steps"),
    ("gradient_accumulation_steps", "training.grad_accum"),
    ("warmup_steps", "schedule.warmup_steps"),
    ("lr_scheduler_type", "schedule.kind"),
    ("weight_decay", "optimizer.weight_decay"),
    ("adam_beta1", "optimizer.beta1"),
    ("adam_beta2", "optimizer.beta2"),
    ("adam_epsilon", "optimizer.eps"),
    ("max_grad_norm", "training.clip_norm"),
    ("logging_steps", "training.log_every"),
    ("eval_steps", "training.eval_every"),
    ("save_steps", "checkpoint.every"),
    ("save_total_limit", "checkpoint.keep_last"),
    ("metric_for_best_model", "checkpoint.monitor"),
    ("bf16", "training.dtype"),
    ("max_seq_length", "data.context_length"),
    ("block_size", "data.context_length"),
    ("seq_len", "data.context_length"),
    ("output_dir", "output.dir"),
];

/// [`load_config`] from any [`Base`].
pub fn load_from(base: &Base, overrides: &[String]) -> Result<Loaded, ConfigError> {
    load_checked(base, overrides, |_, _| {})
}

/// [`load_from`], with `extra` checks of the loaded config (those of `codex config validate`)
/// reported together with every other problem.
pub fn load_checked(
    base: &Base,
    overrides: &[String],
    extra: impl FnOnce(&TrainConfig, &mut Vec<ConfigIssue>),
) -> Result<Loaded, ConfigError> {
    let (mut table, name) = match base {
        Base::File(p) | Base::Run(p) => (read_toml_file(p)?, p.display().to_string()),
        Base::Embedded => (
            parse_toml(DEFAULT_CONFIG_TOML, "configs/default.toml")?,
            "configs/default.toml (embedded)".to_string(),
        ),
    };
    let in_file =
        !matches!(base, Base::Embedded) && table.get("output").and_then(|o| o.get("dir")).is_some();
    // A malformed override is one problem among the others, not a reason to stop looking.
    let mut issues = apply_overrides(&mut table, overrides);
    let source = if overrides.is_empty() {
        name
    } else {
        format!("{name} + overrides")
    };
    let (cfg, found) = check::<TrainConfig>(table, KEY_ALIASES);
    push_new(&mut issues, found);
    if let Some(cfg) = &cfg {
        let mut more = Vec::new();
        extra(cfg, &mut more);
        push_new(&mut issues, more);
    }
    let in_overrides = overrides
        .iter()
        .any(|o| o.split('=').next().map(str::trim) == Some("output.dir"));
    Ok(Loaded {
        cfg: finish(cfg, issues, &source)?,
        explicit_dir: in_file || in_overrides,
    })
}

/// What `codex config validate` checks beyond the config's own rules, without running: the
/// preset exists, and every `data.inputs` entry names files.
pub fn static_checks(cfg: &TrainConfig, issues: &mut Vec<ConfigIssue>) {
    let m = &cfg.model;
    if m.pretrained.trim().is_empty()
        && !m.preset.trim().is_empty()
        && !codex_registry::PRESETS.iter().any(|p| p.name == m.preset)
    {
        let names = codex_registry::PRESETS.iter().map(|p| p.name);
        let message = match codex_core::config::closest(&m.preset, names.clone()) {
            Some(n) => format!("unknown preset (did you mean `{n}`?)"),
            None => format!(
                "unknown preset; one of {}",
                names.collect::<Vec<_>>().join(", ")
            ),
        };
        issues.push(ConfigIssue::invalid(
            "model.preset",
            format!("{:?}", m.preset),
            message,
        ));
    }
    for (i, input) in cfg.data.inputs.iter().enumerate() {
        if let Err(e) = codex_tokenizer::corpus::CorpusSpec::new([input.as_str()]).resolve() {
            issues.push(ConfigIssue::invalid(
                &format!("data.inputs.{i}"),
                format!("{input:?}"),
                e.to_string(),
            ));
        }
    }
}

/// Typed `codex train` flags that set config fields.
#[derive(Debug, Clone, Default)]
pub struct TrainFlags {
    pub system_metrics: Option<SystemMetricsMode>,
    pub system_metrics_interval_s: Option<f64>,
    pub output: Option<PathBuf>,
}

impl TrainFlags {
    /// Sets the fields and re-validates; returns the flags as `a.b=c` for the run record.
    pub fn apply(&self, cfg: &mut TrainConfig) -> Result<Vec<String>, ConfigError> {
        let mut record = Vec::new();
        if let Some(m) = self.system_metrics {
            cfg.system_metrics.mode = m;
            record.push(format!("system_metrics.mode={m}"));
        }
        if let Some(s) = self.system_metrics_interval_s {
            if !(s.is_finite() && s >= 0.2) {
                return Err(ConfigError {
                    source_name: "--system-metrics-interval".into(),
                    issues: vec![ConfigIssue::invalid(
                        "system_metrics.interval_ms",
                        s,
                        "--system-metrics-interval must be at least 0.2 seconds",
                    )],
                });
            }
            cfg.system_metrics.interval_ms = (s * 1000.0).round() as u64;
            record.push(format!(
                "system_metrics.interval_ms={}",
                cfg.system_metrics.interval_ms
            ));
        }
        if let Some(o) = &self.output {
            cfg.output.dir = o.display().to_string();
            record.push(format!("output.dir={}", cfg.output.dir));
        }
        let mut issues = Vec::new();
        cfg.validate(&mut issues);
        if !issues.is_empty() {
            return Err(ConfigError {
                source_name: "command-line flags".into(),
                issues,
            });
        }
        Ok(record)
    }
}

/// Whether `dir` already holds a run (a record or checkpoints).
pub fn holds_run(dir: &Path) -> bool {
    let run = codex_core::rundir::RunDir::new(dir);
    run.metrics().exists()
        || std::fs::read_dir(run.checkpoints()).is_ok_and(|mut d| d.next().is_some())
}

/// The first of `dir`, `dir-2`, `dir-3`, … that holds no run (as Lightning versions runs).
pub fn fresh_dir(dir: &Path) -> PathBuf {
    if !holds_run(dir) {
        return dir.to_path_buf();
    }
    let name = dir.as_os_str().to_string_lossy();
    let name = name.trim_end_matches('/');
    (2u64..)
        .map(|n| PathBuf::from(format!("{name}-{n}")))
        .find(|p| !holds_run(p))
        .expect("an unbounded range has a free name")
}

/// Quotes a word for a POSIX shell when it needs it, so a printed command runs as printed.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_set_fields_and_are_recorded() {
        let mut cfg = TrainConfig::default();
        let flags = TrainFlags {
            system_metrics: Some(SystemMetricsMode::Cpu),
            system_metrics_interval_s: Some(0.5),
            output: Some(PathBuf::from("runs/x y")),
        };
        let record = flags.apply(&mut cfg).unwrap();
        assert_eq!(cfg.system_metrics.mode, SystemMetricsMode::Cpu);
        assert_eq!(cfg.system_metrics.interval_ms, 500);
        assert_eq!(cfg.output.dir, "runs/x y");
        assert_eq!(record.len(), 3);
        let bad = TrainFlags {
            system_metrics_interval_s: Some(0.1),
            ..Default::default()
        };
        assert!(bad.apply(&mut cfg).is_err());
    }

    #[test]
    fn explicit_output_dir_is_detected() {
        let l = load_from(&Base::Embedded, &[]).unwrap();
        assert!(!l.explicit_dir);
        let l = load_from(&Base::Embedded, &["output.dir=runs/a".into()]).unwrap();
        assert!(l.explicit_dir && l.cfg.output.dir == "runs/a");
    }

    #[test]
    fn fresh_dir_versions_a_used_default() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("default");
        assert_eq!(fresh_dir(&d), d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("metrics.ndjson"), "").unwrap();
        let d2 = tmp.path().join("default-2");
        assert_eq!(fresh_dir(&d), d2);
        std::fs::create_dir_all(d2.join("checkpoints/step-00000001")).unwrap();
        assert_eq!(fresh_dir(&d), tmp.path().join("default-3"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("runs/a-1"), "runs/a-1");
        assert_eq!(shell_quote("my run"), "'my run'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
