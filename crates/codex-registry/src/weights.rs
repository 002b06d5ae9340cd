//! Safetensors I/O with HF tensor names: reading whole files or headers, listing an HF
//! directory's (possibly sharded) weight files, and atomic writing. Knows nothing of models.

use crate::error::{RegistryError, Result, io_err};
use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

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
