//! Where weights come from, offline: a codex run or checkpoint (see [`crate::run`]), an HF
//! model directory, an `org/name[@revision]` in the local hf-hub cache, or a GGUF file. Each is
//! read into a config plus HF-named tensors, which [`Model::from_tensors`] turns into a model.

use crate::config::ArchConfig;
use crate::error::{RegistryError, Result};
use crate::gguf;
use crate::model::Model;
use crate::registry::{build_from_config, find_preset, preset_config, preset_names};
use crate::run::{self, RunCheckpoint, Selector, TokenizerRef};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

// The safetensors I/O lives in `weights`; these paths are the public ones.
pub use crate::weights::{
    HeaderTensor, MAX_JSON_BYTES, parse_safetensors_header, read_bounded, read_safetensors,
    safetensors_header, weight_files, write_safetensors,
};

/// A resolved model reference.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Preset(String),
    /// A directory with `config.json` and safetensors weights (also a resolved hf-hub snapshot).
    HfDir(PathBuf),
    Gguf(PathBuf),
    /// A checkpoint of a codex training run.
    Checkpoint(RunCheckpoint),
}

/// The hf-hub cache root: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// Resolves a preset name; a run directory (`RUN`, `RUN@best`, `RUN@last`, `RUN@STEP`), a
/// checkpoint directory, an HF directory or a `.gguf` file; or `org/name[@revision]` from the
/// local hf-hub cache. Nothing is downloaded.
pub fn resolve_source(spec: &str) -> Result<ModelSource> {
    // A path that exists as given wins over `DIR@SELECTOR` (a directory may contain '@').
    if let Some((dir, sel)) = spec.rsplit_once('@')
        && !dir.is_empty()
        && !Path::new(spec).exists()
        && Path::new(dir).is_dir()
    {
        let dir = Path::new(dir);
        if !run::is_run_dir(dir) {
            return Err(RegistryError::UnknownModel {
                name: spec.to_string(),
                msg: format!(
                    "`@{sel}` selects a checkpoint of a run, but {} is not a run directory \
                     (config.toml and checkpoints/)",
                    dir.display()
                ),
            });
        }
        let sel = Selector::parse(sel).ok_or_else(|| RegistryError::UnknownModel {
            name: spec.to_string(),
            msg: format!("`@{sel}`: expected @best, @last or @STEP (a step number)"),
        })?;
        return run::select(dir, sel).map(ModelSource::Checkpoint);
    }
    let path = Path::new(spec);
    if path.is_dir() {
        if run::is_checkpoint_dir(path) {
            return run::checkpoint_in_dir(path).map(ModelSource::Checkpoint);
        }
        if run::is_run_dir(path) {
            return run::select(path, Selector::Default).map(ModelSource::Checkpoint);
        }
        if !path.join("config.json").is_file() {
            return Err(RegistryError::UnknownModel {
                name: spec.to_string(),
                msg: "the directory is neither a codex run (config.toml + checkpoints/), a \
                      checkpoint (MANIFEST.json), nor an HF model directory (config.json + \
                      model.safetensors)"
                    .into(),
            });
        }
        return Ok(ModelSource::HfDir(path.to_path_buf()));
    }
    if path.is_file() {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Ok(ModelSource::Gguf(path.to_path_buf()));
        }
        if path.file_name().is_some_and(|n| n == "config.json")
            && let Some(parent) = path.parent()
        {
            return Ok(ModelSource::HfDir(parent.to_path_buf()));
        }
        return Err(RegistryError::UnknownModel {
            name: spec.to_string(),
            msg: "a file must be a .gguf; for safetensors give the directory holding config.json"
                .into(),
        });
    }
    if find_preset(spec).is_some() {
        return Ok(ModelSource::Preset(spec.to_string()));
    }
    let (repo, revision) = match spec.split_once('@') {
        Some((r, rev)) => (r, rev),
        None => (spec, "main"),
    };
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() == 2 && parts.iter().all(|p| !p.is_empty()) && !spec.starts_with('.') {
        return resolve_hub(repo, revision).map(ModelSource::HfDir);
    }
    Err(RegistryError::UnknownModel {
        name: spec.to_string(),
        msg: format!(
            "not a path, a preset ({}) or an `org/name[@revision]` hf-hub id",
            preset_names()
        ),
    })
}

fn resolve_hub(repo: &str, revision: &str) -> Result<PathBuf> {
    let Some(root) = hub_cache_dir() else {
        return Err(RegistryError::NotCached {
            repo: repo.to_string(),
            revision: revision.to_string(),
            looked: "nowhere: neither HF_HUB_CACHE, HF_HOME nor HOME is set".into(),
        });
    };
    hub_snapshot(&root, repo, revision)
}

/// Resolves `org/name[@revision]` in the hf-hub cache at `root` to its snapshot directory.
pub fn resolve_in_cache(root: &Path, spec: &str) -> Result<PathBuf> {
    let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    hub_snapshot(root, repo, revision)
}

fn hub_snapshot(root: &Path, repo: &str, revision: &str) -> Result<PathBuf> {
    let root = root.to_path_buf();
    let not_cached = |looked: String| RegistryError::NotCached {
        repo: repo.to_string(),
        revision: revision.to_string(),
        looked,
    };
    let cache = hf_hub::Cache::new(root.clone());
    let hub_repo = hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    );
    if let Some(cfg) = cache.repo(hub_repo.clone()).get("config.json")
        && let Some(dir) = cfg.parent()
    {
        return Ok(dir.to_path_buf());
    }
    // A commit hash names a snapshot directly (refs/ only holds branch and tag names).
    let repo_dir = root.join(hub_repo.folder_name());
    let snapshot = repo_dir.join("snapshots").join(revision);
    if snapshot.join("config.json").is_file() {
        return Ok(snapshot);
    }
    Err(not_cached(format!(
        "{} (ref) and {} (snapshot); set HF_HUB_CACHE or HF_HOME to another cache, or pass a directory",
        repo_dir.join("refs").join(revision).display(),
        snapshot.display()
    )))
}

/// A loaded model with where it came from and the tokenizer that goes with it.
pub struct Loaded {
    pub model: Model,
    pub source: ModelSource,
    pub tokenizer: TokenizerRef,
}

/// How deep `model.pretrained` chains (a run fine-tuned from a run …) are followed.
const MAX_CHAIN: usize = 8;

/// Loads trained weights from any source but a preset: a run or checkpoint (a LoRA run as its
/// base plus adapter), an HF directory, a `.gguf` file or a cached hf-hub id.
pub fn load_model(spec: &str, device: &Device, dtype: DType) -> Result<Loaded> {
    load_depth(spec, device, dtype, 0)
}

/// [`load_model`]'s model alone.
pub fn load_pretrained(source: &str, device: &Device, dtype: DType) -> Result<Model> {
    Ok(load_model(source, device, dtype)?.model)
}

fn chain_err(spec: &str) -> RegistryError {
    RegistryError::UnknownModel {
        name: spec.to_string(),
        msg: format!("more than {MAX_CHAIN} runs chained through `model.pretrained`"),
    }
}

fn load_depth(spec: &str, device: &Device, dtype: DType, depth: usize) -> Result<Loaded> {
    if depth > MAX_CHAIN {
        return Err(chain_err(spec));
    }
    let source = resolve_source(spec)?;
    let (model, tokenizer) = match &source {
        ModelSource::Preset(name) => {
            return Err(RegistryError::UnknownModel {
                name: name.clone(),
                msg: "is a preset: an architecture with no trained weights. Train it with \
                      `codex train` and pass the run directory, or pass an HF directory, a \
                      .gguf file or a cached hub id"
                    .into(),
            });
        }
        ModelSource::HfDir(dir) => {
            let (config, tensors) = read_hf_dir(dir)?;
            let m =
                Model::from_tensors(config, tensors, &dir.display().to_string(), device, dtype)?;
            let tok = if dir.join("tokenizer.json").is_file() {
                TokenizerRef::File(dir.join("tokenizer.json"))
            } else {
                TokenizerRef::None
            };
            (m, tok)
        }
        ModelSource::Gguf(path) => {
            let (config, tensors) = gguf::read_gguf(path)?;
            let m =
                Model::from_tensors(config, tensors, &path.display().to_string(), device, dtype)?;
            (m, TokenizerRef::None)
        }
        ModelSource::Checkpoint(ck) => load_checkpoint(ck, device, dtype, depth)?,
    };
    Ok(Loaded {
        model,
        source,
        tokenizer,
    })
}

fn load_checkpoint(
    ck: &RunCheckpoint,
    device: &Device,
    dtype: DType,
    depth: usize,
) -> Result<(Model, TokenizerRef)> {
    let cfg = run::read_run_config(&ck.run)?;
    let tokenizer = run::run_tokenizer(&ck.run, &cfg);
    let origin = format!("{} (step {})", ck.run.display(), ck.step);
    run::verify_files(&ck.dir, run::weight_names(ck))?;
    let pretrained = cfg.model.pretrained.trim();
    if ck.lora {
        // The base is what the run started from: pretrained weights, or the preset's init
        // drawn from the run's seed (deterministic, so the same base is rebuilt).
        let mut base = if pretrained.is_empty() {
            let vocab = run::recorded_vocab(&ck.run).ok_or_else(|| {
                RegistryError::Invalid(format!(
                    "{}: a LoRA run on a fresh preset needs the tokenizer's vocabulary from \
                     provenance.json (data.vocab_size), which is missing",
                    ck.run.display()
                ))
            })?;
            let c = run::run_preset_config(
                &cfg.model.preset,
                &cfg.model.overrides,
                vocab,
                cfg.data.context_length,
            )?;
            build_from_config(c, &cfg.model.preset, device, dtype, cfg.training.seed)?
        } else {
            load_depth(pretrained, device, dtype, depth + 1)?.model
        };
        crate::lora::load_adapter(&mut base, &ck.dir)?;
        base.origin = origin;
        return Ok((base, tokenizer));
    }
    let path = ck.dir.join(codex_checkpoint::MODEL_FILE);
    let tensors = read_safetensors(&path, &Device::Cpu)?;
    let config = if pretrained.is_empty() {
        let vocab = embedding_rows(tensors.iter().map(|(n, t)| (n.as_str(), t.dims())))
            .ok_or_else(|| RegistryError::MissingTensor {
                name: "transformer.wte.weight | model.embed_tokens.weight".into(),
                expected: vec![],
                origin: path.display().to_string(),
            })?;
        run::run_preset_config(
            &cfg.model.preset,
            &cfg.model.overrides,
            vocab,
            cfg.data.context_length,
        )?
    } else {
        source_config_depth(pretrained, depth + 1)?
    };
    let model = Model::from_tensors(config, tensors, &origin, device, dtype)?;
    Ok((model, tokenizer))
}

/// The vocabulary (rows of the token embedding) of a set of HF-named tensors.
fn embedding_rows<'a>(mut shapes: impl Iterator<Item = (&'a str, &'a [usize])>) -> Option<usize> {
    shapes.find_map(|(n, s)| {
        matches!(
            n,
            "transformer.wte.weight" | "model.embed_tokens.weight" | "wte.weight"
        )
        .then(|| s.first().copied())
        .flatten()
    })
}

/// The architecture config of a source without loading its weights (headers only).
pub fn source_config(spec: &str) -> Result<ArchConfig> {
    source_config_depth(spec, 0)
}

fn source_config_depth(spec: &str, depth: usize) -> Result<ArchConfig> {
    if depth > MAX_CHAIN {
        return Err(chain_err(spec));
    }
    match resolve_source(spec)? {
        ModelSource::Preset(name) => preset_config(&name, &Default::default()),
        ModelSource::HfDir(dir) => read_config(&dir),
        ModelSource::Gguf(path) => Ok(gguf::read_gguf(&path)?.0),
        ModelSource::Checkpoint(ck) => {
            let cfg = run::read_run_config(&ck.run)?;
            let pretrained = cfg.model.pretrained.trim();
            if !pretrained.is_empty() {
                return source_config_depth(pretrained, depth + 1);
            }
            let vocab = if ck.lora {
                run::recorded_vocab(&ck.run)
            } else {
                let header = safetensors_header(&ck.dir.join(codex_checkpoint::MODEL_FILE))?;
                embedding_rows(header.iter().map(|h| (h.name.as_str(), h.shape.as_slice())))
            }
            .ok_or_else(|| {
                RegistryError::Invalid(format!(
                    "{}: cannot tell the model's vocabulary size",
                    ck.dir.display()
                ))
            })?;
            run::run_preset_config(
                &cfg.model.preset,
                &cfg.model.overrides,
                vocab,
                cfg.data.context_length,
            )
        }
    }
}

/// The architecture config of an HF directory's `config.json`.
fn read_config(dir: &Path) -> Result<ArchConfig> {
    let path = dir.join("config.json");
    let bytes = crate::weights::read_bounded(&path, crate::weights::MAX_JSON_BYTES)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Config {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    ArchConfig::from_hf_json(&v, &path)
}

/// The config and every weight (on the CPU, as stored) of an HF model directory.
pub fn read_hf_dir(dir: &Path) -> Result<(ArchConfig, HashMap<String, Tensor>)> {
    let config = read_config(dir)?;
    let mut tensors = HashMap::new();
    for f in weight_files(dir)? {
        tensors.extend(read_safetensors(&f, &Device::Cpu)?);
    }
    Ok((config, tensors))
}

pub fn load_hf_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Model> {
    let (config, tensors) = read_hf_dir(dir)?;
    Model::from_tensors(config, tensors, &dir.display().to_string(), device, dtype)
}
