//! Where weights come from, offline: an HF model directory, an `org/name[@revision]` in the
//! local hf-hub cache, or a GGUF file; plus validated safetensors reading and atomic writing.

use crate::config::ArchConfig;
use crate::error::{RegistryError, Result, io_err};
use crate::model::Model;
use crate::registry::{find_preset, preset_names};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

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
    match resolve_source(source)? {
        ModelSource::Preset(name) => Err(RegistryError::UnknownModel {
            name,
            msg: "is a preset without pretrained weights; build it with build_preset".into(),
        }),
        ModelSource::HfDir(dir) => load_hf_dir(&dir, device, dtype),
        ModelSource::Gguf(path) => crate::gguf::load_gguf(&path, device, dtype),
    }
}

pub(crate) fn read_config(dir: &Path) -> Result<(ArchConfig, Value)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| RegistryError::Config {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    Ok((ArchConfig::from_hf_json(&v, &path)?, v))
}

/// The weight files of an HF directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| RegistryError::Safetensors {
            path: index.clone(),
            msg: format!("invalid index: {e}"),
        })?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| RegistryError::Safetensors {
                path: index.clone(),
                msg: "no `weight_map` object".into(),
            })?;
        let files: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let hint = if dir.join("pytorch_model.bin").is_file() {
        " (pytorch_model.bin is not supported: convert it to safetensors)"
    } else {
        ""
    };
    Err(RegistryError::UnknownModel {
        name: dir.display().to_string(),
        msg: format!("no model.safetensors or model.safetensors.index.json{hint}"),
    })
}

pub fn load_hf_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Model> {
    let (config, _) = read_config(dir)?;
    let mut tensors = HashMap::new();
    for f in weight_files(dir)? {
        tensors.extend(read_safetensors(&f, &Device::Cpu)?);
    }
    Model::from_tensors(config, tensors, &dir.display().to_string(), device, dtype)
}

/// Reads a whole safetensors file; a truncated or corrupt file is an error naming it.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| RegistryError::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    let mut out = HashMap::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let t = view.load(device).map_err(|e| RegistryError::Safetensors {
            path: path.to_path_buf(),
            msg: format!("tensor `{name}`: {e}"),
        })?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Reads only the header: `(name, dtype, shape)` of every tensor.
pub fn safetensors_header(path: &Path) -> Result<Vec<(String, String, Vec<usize>)>> {
    use std::io::Read;
    let bad = |msg: String| RegistryError::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| bad(format!("header length: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 || n + 8 > file_len {
        return Err(bad(format!(
            "header length {n} exceeds the file size {file_len}"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("header: {e}")))?;
    let v: Value = serde_json::from_slice(&header).map_err(|e| bad(format!("header JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let mut out = vec![];
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info
            .get("dtype")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64().map(|x| x as usize))
                    .collect()
            })
            .unwrap_or_default();
        out.push((name.clone(), dtype, shape));
    }
    Ok(out)
}

/// Writes named tensors as safetensors atomically, with string metadata.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &[(&str, &str)],
) -> Result<()> {
    // Serialising copies from the device; make everything CPU-contiguous first so the
    // `View` impl cannot fail.
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = safetensors::serialize(cpu.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| RegistryError::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    codex_core::fsutil::atomic_write(path, &bytes).map_err(io_err(path))
}
