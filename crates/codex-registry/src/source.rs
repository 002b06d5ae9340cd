//! Where weights come from, offline: an HF model directory, an `org/name[@revision]` in the
//! local hf-hub cache, or a GGUF file. Each is read into a config plus HF-named tensors, which
//! [`Model::from_tensors`] turns into a model.

use crate::config::ArchConfig;
use crate::error::{RegistryError, Result};
use crate::gguf;
use crate::model::Model;
use crate::registry::{find_preset, preset_names};
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

/// Resolves a preset name, a path (directory or `.gguf`), or `org/name[@revision]` from the
/// local hf-hub cache. Nothing is downloaded.
pub fn resolve_source(spec: &str) -> Result<ModelSource> {
    let path = Path::new(spec);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(RegistryError::UnknownModel {
                name: spec.to_string(),
                msg: "the directory has no config.json (an HF model directory needs config.json and model.safetensors)".into(),
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

/// Loads pretrained weights from a directory, a `.gguf` file or a cached hf-hub id.
pub fn load_pretrained(source: &str, device: &Device, dtype: DType) -> Result<Model> {
    let (config, tensors, path) = match resolve_source(source)? {
        ModelSource::Preset(name) => {
            return Err(RegistryError::UnknownModel {
                name,
                msg: "is a preset without pretrained weights; build it with build_preset".into(),
            });
        }
        ModelSource::HfDir(dir) => {
            let (config, tensors) = read_hf_dir(&dir)?;
            (config, tensors, dir)
        }
        ModelSource::Gguf(path) => {
            let (config, tensors) = gguf::read_gguf(&path)?;
            (config, tensors, path)
        }
    };
    Model::from_tensors(config, tensors, &path.display().to_string(), device, dtype)
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
