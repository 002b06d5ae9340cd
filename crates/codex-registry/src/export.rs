//! Writing a model as an HF directory that `transformers` loads as it is: `config.json`
//! (HF keys, `architectures`, `torch_dtype`, the token ids), `generation_config.json`, and the
//! weights under their HF names in `model.safetensors`, or in shards with
//! `model.safetensors.index.json` (HF's sharded layout) above a size.

use crate::error::{RegistryError, Result, io_err};
use crate::model::Model;
use crate::weights::write_safetensors;
use candle_core::{DType, Tensor};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// HF's default shard size for `save_pretrained` (5 GB).
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// The special token ids written to the configs; `None` is written as `null`, so that
/// `transformers` uses no such token (its own defaults would name ids the vocabulary uses for
/// ordinary text, e.g. Llama's eos 2 is a byte of the byte tokenizer).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

fn write_json(path: &Path, v: &Value) -> Result<PathBuf> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| RegistryError::Invalid(e.to_string()))?;
    codex_core::fsutil::atomic_write(path, format!("{text}\n").as_bytes()).map_err(io_err(path))?;
    Ok(path.to_path_buf())
}

/// `config.json` of `model` saved in `dtype`.
pub fn hf_config(model: &Model, dtype: DType, ids: SpecialIds) -> Value {
    let mut cfg = model.config().to_hf_json();
    if let Some(map) = cfg.as_object_mut() {
        map.insert(
            "torch_dtype".into(),
            crate::device::torch_dtype(dtype).into(),
        );
        map.insert("bos_token_id".into(), json!(ids.bos));
        map.insert("eos_token_id".into(), json!(ids.eos));
        map.insert("use_cache".into(), true.into());
    }
    cfg
}

/// Writes `config.json`, `generation_config.json` and the base weights (merged values if a
/// LoRA adapter is merged) in `dtype` into `dir`, sharding above `shard_bytes`.
pub fn save_hf(
    model: &Model,
    dir: &Path,
    dtype: DType,
    ids: SpecialIds,
    shard_bytes: u64,
) -> Result<Vec<PathBuf>> {
    codex_core::fsutil::create_dir_all(dir).map_err(io_err(dir))?;
    let mut written = vec![write_json(
        &dir.join("config.json"),
        &hf_config(model, dtype, ids),
    )?];
    written.push(write_json(
        &dir.join("generation_config.json"),
        &json!({
            "_from_model_config": true,
            "bos_token_id": ids.bos,
            "eos_token_id": ids.eos,
        }),
    )?);
    let mut state: Vec<(String, Tensor)> = Vec::new();
    for (n, t) in model.base_state() {
        state.push((n, t.to_dtype(dtype)?));
    }
    // Stale weights of an earlier export would be read alongside the new ones.
    for stale in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let name = stale.file_name().to_string_lossy().into_owned();
        if name.starts_with("model") && name.contains(".safetensors") {
            std::fs::remove_file(stale.path()).map_err(io_err(stale.path()))?;
        }
    }
    written.extend(write_weights(dir, state, shard_bytes)?);
    Ok(written)
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// `model.safetensors`, or `model-0000i-of-0000n.safetensors` + the index when the weights
/// exceed `shard_bytes`. Tensors keep their order; a tensor larger than a shard gets its own.
pub fn write_weights(
    dir: &Path,
    state: Vec<(String, Tensor)>,
    shard_bytes: u64,
) -> Result<Vec<PathBuf>> {
    let total: u64 = state.iter().map(|(_, t)| tensor_bytes(t)).sum();
    if total <= shard_bytes {
        let p = dir.join("model.safetensors");
        write_safetensors(&p, &state, &[("format", "pt")])?;
        return Ok(vec![p]);
    }
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut size = 0u64;
    for (n, t) in state {
        let b = tensor_bytes(&t);
        if size > 0 && size + b > shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += b;
        if let Some(last) = shards.last_mut() {
            last.push((n, t));
        }
    }
    let n = shards.len();
    let mut map = serde_json::Map::new();
    let mut written = vec![];
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let p = dir.join(&name);
        write_safetensors(&p, shard, &[("format", "pt")])?;
        for (t, _) in shard {
            map.insert(t.clone(), Value::from(name.clone()));
        }
        written.push(p);
    }
    written.push(write_json(
        &dir.join("model.safetensors.index.json"),
        &json!({"metadata": {"total_size": total}, "weight_map": map}),
    )?);
    Ok(written)
}
