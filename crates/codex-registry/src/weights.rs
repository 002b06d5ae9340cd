//! Safetensors I/O with HF tensor names: reading whole files or headers, listing an HF
//! directory's (possibly sharded) weight files, and atomic writing. Knows nothing of models.

use crate::error::{RegistryError, Result, io_err};
use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Most bytes read from a JSON side file (config.json, adapter_config.json, the shard index):
/// real ones are kilobytes, an index a few MB.
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// Reads a regular file of at most `max` bytes (a FIFO would block, a huge file would be read
/// whole before anything could refuse it).
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(RegistryError::Invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let too_large = |n: u64| {
        RegistryError::Invalid(format!(
            "{} is {n} bytes; more than {max} bytes is refused",
            path.display()
        ))
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .map_err(io_err(path))?
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
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
        let bytes = read_bounded(&index, MAX_JSON_BYTES)?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Safetensors {
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

/// Largest safetensors JSON header read (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor of a safetensors header, checked against the file (see [`safetensors_header`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Product of the shape (checked: it fits in a u64).
    pub elements: u64,
    /// Byte range in the data section (after the 8-byte length and the header).
    pub data_offsets: (u64, u64),
}

/// Bits per element of a safetensors dtype (None: not a safetensors dtype).
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" => 64,
        _ => return None,
    })
}

/// Reads only the header of a safetensors file and checks it against the file's size: each
/// tensor's bytes (dtype × shape, in checked arithmetic) must equal its data offsets, and the
/// tensors must tile the data section exactly, as the loader requires. So a truncated file,
/// an offset past the end or a shape whose element count overflows is an error here, without
/// reading the data.
pub fn safetensors_header(path: &Path) -> Result<Vec<HeaderTensor>> {
    use std::io::Read;
    let bad = |msg: String| RegistryError::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let meta = f.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let file_len = meta.len();
    let mut f = f.take(8 + MAX_HEADER_BYTES);
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| bad(format!("header length: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES || n + 8 > file_len {
        return Err(bad(format!(
            "header length {n} exceeds the file size {file_len}"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("header: {e}")))?;
    parse_safetensors_header(&header, file_len - 8 - n).map_err(bad)
}

/// Parses and checks a safetensors JSON header whose data section is `data_len` bytes.
pub fn parse_safetensors_header(
    header: &[u8],
    data_len: u64,
) -> std::result::Result<Vec<HeaderTensor>, String> {
    let v: Value = serde_json::from_slice(header).map_err(|e| format!("header JSON: {e}"))?;
    let obj = v.as_object().ok_or("header is not a JSON object")?;
    let mut out = vec![];
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let at = |msg: String| format!("tensor `{name}`: {msg}");
        let dtype = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| at("no `dtype` string".into()))?;
        let bits = dtype_bits(dtype).ok_or_else(|| at(format!("unknown dtype `{dtype}`")))?;
        let dims = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| at("no `shape` list".into()))?;
        let shape: Vec<usize> = dims
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                at(format!(
                    "shape {} is not a list of sizes",
                    Value::from(dims.clone())
                ))
            })?;
        let elements = shape
            .iter()
            .try_fold(1u64, |p, &d| p.checked_mul(d as u64))
            .ok_or_else(|| at(format!("shape {shape:?} has more than 2^64 elements")))?;
        let offsets = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| match a.as_slice() {
                [b, e] => Some((b.as_u64()?, e.as_u64()?)),
                _ => None,
            })
            .ok_or_else(|| at("no `data_offsets` [begin, end]".into()))?;
        let (begin, end) = offsets;
        if begin > end || end > data_len {
            return Err(at(format!(
                "data offsets [{begin}, {end}] lie outside the {data_len}-byte data section \
                 (truncated file?)"
            )));
        }
        let bytes = elements
            .checked_mul(bits)
            .filter(|b| b % 8 == 0)
            .map(|b| b / 8);
        if bytes != Some(end - begin) {
            return Err(at(format!(
                "{dtype} {shape:?} needs {} bytes but its data offsets [{begin}, {end}] hold {}",
                bytes.map_or("a non-whole number of / too many".into(), |b| b.to_string()),
                end - begin
            )));
        }
        out.push(HeaderTensor {
            name: name.clone(),
            dtype: dtype.to_string(),
            shape,
            elements,
            data_offsets: offsets,
        });
    }
    // The loader requires the tensors to cover the data section without gaps or overlaps.
    let mut ranges: Vec<(u64, u64, &str)> = out
        .iter()
        .map(|t| (t.data_offsets.0, t.data_offsets.1, t.name.as_str()))
        .collect();
    ranges.sort_unstable();
    let mut pos = 0;
    for (begin, end, name) in ranges {
        if begin != pos {
            return Err(format!(
                "tensor `{name}` starts at data byte {begin}, expected {pos} (gap or overlap)"
            ));
        }
        pos = end;
    }
    if pos != data_len {
        return Err(format!(
            "the tensors end at data byte {pos} but the data section has {data_len} bytes"
        ));
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
