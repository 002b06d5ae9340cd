//! A codex training run as a model source: `RUN` (its best checkpoint, else its newest),
//! `RUN@best`, `RUN@last`, `RUN@STEP`, or a checkpoint directory. The run's `config.toml`
//! says how the model was built (preset and overrides, or pretrained weights, and LoRA); the
//! checkpoint holds the weights (all of them, or the PEFT adapter of a LoRA run).
//!
//! Only the `[model]`, `[data]`, `[training]`, `[tokenizer]` and `[checkpoint]` keys this
//! needs are read, leniently, so the registry does not depend on the trainer's config type.

use crate::config::ArchConfig;
use crate::error::{RegistryError, Result, io_err};
use crate::registry::{PresetOverrides, preset_config};
use codex_checkpoint::{ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE, MODEL_FILE, Manifest};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A checkpoint of a codex run, chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCheckpoint {
    /// The run directory (holds `config.toml`).
    pub run: PathBuf,
    /// The checkpoint directory.
    pub dir: PathBuf,
    pub step: u64,
    /// The monitored metric recorded with it.
    pub metric: Option<f64>,
    /// How it was chosen: `best`, `last`, `step` or `directory`.
    pub chosen: &'static str,
    /// A LoRA checkpoint (PEFT adapter only).
    pub lora: bool,
}

/// Which checkpoint of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selector {
    /// The best by the monitored metric, else the newest.
    Default,
    Best,
    Last,
    Step(u64),
}

impl Selector {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "best" => Some(Self::Best),
            "last" | "latest" => Some(Self::Last),
            s => s.parse().ok().map(Self::Step),
        }
    }
}

/// Whether `dir` looks like a codex run directory (`config.toml` and `checkpoints/`).
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join("config.toml").is_file() && dir.join("checkpoints").is_dir()
}

/// Whether `dir` is one checkpoint (`MANIFEST.json`).
pub fn is_checkpoint_dir(dir: &Path) -> bool {
    dir.join(codex_checkpoint::format::MANIFEST).is_file()
}

fn unknown(spec: &Path, msg: String) -> RegistryError {
    RegistryError::UnknownModel {
        name: spec.display().to_string(),
        msg,
    }
}

/// Picks the checkpoint `sel` names in `run`. Broken checkpoints (failed size checks) are
/// skipped for `best`/`last` and refused by step.
pub fn select(run: &Path, sel: Selector) -> Result<RunCheckpoint> {
    let infos = codex_checkpoint::list(run).map_err(|e| unknown(run, e.to_string()))?;
    let usable: Vec<_> = infos.iter().filter(|c| c.status.is_usable()).collect();
    let steps = || {
        usable
            .iter()
            .map(|c| c.step.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if usable.is_empty() {
        return Err(unknown(
            run,
            "the run has no usable checkpoint yet (train longer, or lower checkpoint.every)".into(),
        ));
    }
    let best = || {
        let max = mode_is_max(run);
        usable
            .iter()
            .filter(|c| c.metric.is_some_and(f64::is_finite))
            .min_by(|a, b| {
                let (x, y) = (a.metric.unwrap_or(0.0), b.metric.unwrap_or(0.0));
                let o = if max {
                    y.total_cmp(&x)
                } else {
                    x.total_cmp(&y)
                };
                // On equal metrics the newer checkpoint wins.
                o.then(b.step.cmp(&a.step))
            })
            .copied()
    };
    let last = || usable.iter().max_by_key(|c| c.step).copied();
    let (info, chosen) = match sel {
        Selector::Best => (
            best().ok_or_else(|| {
                unknown(
                    run,
                    format!(
                        "no checkpoint has a recorded metric to rank (steps: {}); use @last or @STEP",
                        steps()
                    ),
                )
            })?,
            "best",
        ),
        Selector::Default => match best() {
            Some(b) => (b, "best"),
            None => (last().ok_or_else(|| unknown(run, "no checkpoint".into()))?, "last"),
        },
        Selector::Last => (last().ok_or_else(|| unknown(run, "no checkpoint".into()))?, "last"),
        Selector::Step(s) => (
            usable.iter().find(|c| c.step == s).copied().ok_or_else(|| {
                unknown(
                    run,
                    format!("no usable checkpoint at step {s} (available: {})", steps()),
                )
            })?,
            "step",
        ),
    };
    Ok(RunCheckpoint {
        run: run.to_path_buf(),
        dir: info.dir.clone(),
        step: info.step,
        metric: info.metric,
        chosen,
        lora: info.dir.join(ADAPTER_MODEL_FILE).is_file(),
    })
}

/// A checkpoint directory given directly; its run is two levels up.
pub fn checkpoint_in_dir(dir: &Path) -> Result<RunCheckpoint> {
    let m = read_manifest(dir)?;
    let run = dir
        .parent()
        .and_then(Path::parent)
        .filter(|r| r.join("config.toml").is_file())
        .ok_or_else(|| {
            unknown(
                dir,
                "a checkpoint outside its run directory (no RUN/config.toml two levels up): \
                 the run's config is needed to rebuild the model"
                    .into(),
            )
        })?;
    Ok(RunCheckpoint {
        run: run.to_path_buf(),
        dir: dir.to_path_buf(),
        step: m.step,
        metric: m.metric,
        chosen: "directory",
        lora: m.files.iter().any(|f| f.name == ADAPTER_MODEL_FILE),
    })
}

fn mode_is_max(run: &Path) -> bool {
    match codex_checkpoint::read_index(run) {
        Ok(Some(i)) => i.policy.mode == codex_checkpoint::Mode::Max,
        _ => read_run_config(run).is_ok_and(|c| c.checkpoint.mode == "max"),
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(codex_checkpoint::format::MANIFEST);
    let bytes = crate::weights::read_bounded(&path, crate::weights::MAX_JSON_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        RegistryError::Invalid(format!(
            "{}: not a codex checkpoint manifest: {e}",
            path.display()
        ))
    })
}

/// Checks size and sha256 of `names` against the checkpoint's manifest before they are read:
/// a corrupt checkpoint is refused, never loaded.
pub fn verify_files(dir: &Path, names: &[&str]) -> Result<()> {
    let m = read_manifest(dir)?;
    for name in names {
        let entry = m.files.iter().find(|f| f.name == *name).ok_or_else(|| {
            RegistryError::Invalid(format!(
                "{}: MANIFEST.json does not list {name}",
                dir.display()
            ))
        })?;
        let path = dir.join(name);
        let (sha, len) = codex_core::hash::sha256_file(&path).map_err(io_err(&path))?;
        if len != entry.size_bytes || sha != entry.sha256 {
            return Err(RegistryError::Invalid(format!(
                "{}: {len} bytes with sha256 {sha}, but MANIFEST.json records {} bytes with sha256 \
                 {}: the checkpoint is corrupt; pick another with RUN@STEP",
                path.display(),
                entry.size_bytes,
                entry.sha256
            )));
        }
    }
    Ok(())
}

/// What a run's `config.toml` says about its model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    pub model: RunModel,
    pub data: RunData,
    pub training: RunTraining,
    pub tokenizer: RunTokenizer,
    pub checkpoint: RunCheckpointCfg,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunModel {
    pub preset: String,
    pub pretrained: String,
    pub overrides: PresetOverrides,
    pub lora: RunLora,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunLora {
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunData {
    pub context_length: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunTraining {
    pub seed: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunTokenizer {
    /// `byte`, `load` or `train`.
    pub kind: String,
    pub path: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunCheckpointCfg {
    pub mode: String,
}

/// Reads the run's `config.toml` (the resolved config the trainer wrote).
pub fn read_run_config(run: &Path) -> Result<RunConfig> {
    let path = run.join("config.toml");
    let bytes = crate::weights::read_bounded(&path, crate::weights::MAX_JSON_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| RegistryError::Config {
        path: path.clone(),
        msg: "not UTF-8".into(),
    })?;
    toml::from_str(&text).map_err(|e| RegistryError::Config {
        path,
        msg: e.to_string(),
    })
}

/// The preset config a run trains, exactly as the trainer builds it: the overrides, the
/// tokenizer's vocabulary unless overridden, and at least the data's context length.
pub fn run_preset_config(
    preset: &str,
    overrides: &PresetOverrides,
    vocab_size: usize,
    context_length: usize,
) -> Result<ArchConfig> {
    let mut o = overrides.clone();
    o.vocab_size = Some(o.vocab_size.unwrap_or(vocab_size));
    let positions_set =
        o.max_positions.is_some() || o.n_positions.is_some() || o.max_position_embeddings.is_some();
    if !positions_set {
        let base = preset_config(preset, &PresetOverrides::default())?;
        o.max_positions = Some(base.max_positions().max(context_length));
    }
    preset_config(preset, &o)
}

/// The tokenizer a model source was trained with or ships.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerRef {
    /// UTF-8 bytes, ids 0..=255.
    Byte,
    /// An HF `tokenizer.json`.
    File(PathBuf),
    /// What a run's `tokenizer.path` names (a file, HF directory or hub id), resolved by the
    /// tokenizer crate.
    Spec(String),
    /// The source has none (a preset, a GGUF file, an HF directory without tokenizer.json).
    None,
}

/// The tokenizer of a run.
pub fn run_tokenizer(run: &Path, cfg: &RunConfig) -> TokenizerRef {
    match cfg.tokenizer.kind.as_str() {
        "byte" | "" => TokenizerRef::Byte,
        _ if run.join("tokenizer.json").is_file() => TokenizerRef::File(run.join("tokenizer.json")),
        _ if !cfg.tokenizer.path.trim().is_empty() => {
            TokenizerRef::Spec(cfg.tokenizer.path.clone())
        }
        _ => TokenizerRef::None,
    }
}

/// The vocabulary the run's tokenizer had, from its provenance record (needed to rebuild a
/// LoRA run's fresh preset base, whose weights the checkpoint does not hold).
pub fn recorded_vocab(run: &Path) -> Option<usize> {
    let bytes =
        crate::weights::read_bounded(&run.join("provenance.json"), crate::weights::MAX_JSON_BYTES)
            .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.pointer("/data/vocab_size")?.as_u64().map(|n| n as usize)
}

/// The weights file(s) of a checkpoint, by kind.
pub fn weight_names(ck: &RunCheckpoint) -> &'static [&'static str] {
    if ck.lora {
        &[ADAPTER_MODEL_FILE, ADAPTER_CONFIG_FILE]
    } else {
        &[MODEL_FILE]
    }
}
