//! The on-disk format: directory names, `MANIFEST.json`, and safetensors files laid out as
//! the header plus every tensor's bytes, borrowed from the caller, for [`crate::write`].

use crate::error::{CheckpointError, Result};
use safetensors::Dtype;
use safetensors::tensor::TensorInfo;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

/// Name of the completion marker, written last.
pub const MANIFEST: &str = "MANIFEST.json";
/// Name of the trainer state file.
pub const TRAINER_STATE: &str = "trainer_state.json";
/// Name of the index of kept checkpoints inside `checkpoints/`.
pub const INDEX: &str = "index.json";
/// Identifies our manifests (`"format"` field).
pub const FORMAT: &str = "codex-checkpoint";
/// Version of the manifest and index layout.
pub const CHECKPOINT_SCHEMA_VERSION: u32 = 1;

/// Prefix of temporary directories being written (`.tmp-step-00000500-<pid>-<n>`).
pub(crate) const TMP_PREFIX: &str = ".tmp-step-";
/// Prefix of directories being deleted (renamed first so no half-deleted checkpoint is visible).
pub(crate) const TRASH_PREFIX: &str = ".trash-step-";

/// `step-00000500`: zero-padded so names sort by step.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The step of a `step-N` directory name, or `None` for anything else.
pub fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One file's entry in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Lowercase hex sha256.
    pub sha256: String,
}

/// What a checkpoint holds, which decides the files it must have to be complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// A full model: `model.safetensors`, `optimizer.safetensors`, `trainer_state.json`.
    Full,
    /// A LoRA adapter: `adapter_model.safetensors`, `adapter_config.json`,
    /// `optimizer.safetensors`, `trainer_state.json`.
    Lora,
    /// Any other files (tools, probes); only `trainer_state.json` is required. Never a
    /// weights file, so a trainer cannot mistake it for a model checkpoint.
    Generic,
}

impl CheckpointKind {
    /// The files a checkpoint of this kind must list (besides `MANIFEST.json`).
    pub fn required_files(self) -> &'static [&'static str] {
        use crate::{ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE, MODEL_FILE, OPTIMIZER_FILE};
        match self {
            Self::Full => &[MODEL_FILE, OPTIMIZER_FILE, TRAINER_STATE],
            Self::Lora => &[
                ADAPTER_MODEL_FILE,
                ADAPTER_CONFIG_FILE,
                OPTIMIZER_FILE,
                TRAINER_STATE,
            ],
            Self::Generic => &[TRAINER_STATE],
        }
    }

    /// The kind a set of file names makes (by its weights file), checked for completeness.
    /// `declared` is the manifest's `kind`; without one (older manifests) only a full or
    /// LoRA checkpoint is complete, so an empty or weightless file list is refused.
    ///
    /// # Errors
    /// What is missing or contradictory, in words.
    pub fn of_files<'n>(
        names: impl IntoIterator<Item = &'n str> + Clone,
        declared: Option<CheckpointKind>,
    ) -> std::result::Result<CheckpointKind, String> {
        use crate::{ADAPTER_MODEL_FILE, MODEL_FILE};
        let has = |want: &str| names.clone().into_iter().any(|n| n == want);
        let inferred = match (has(MODEL_FILE), has(ADAPTER_MODEL_FILE)) {
            (true, true) => {
                return Err(format!(
                    "it lists both `{MODEL_FILE}` and `{ADAPTER_MODEL_FILE}`; a checkpoint holds exactly one"
                ));
            }
            (true, false) => Self::Full,
            (false, true) => Self::Lora,
            (false, false) => Self::Generic,
        };
        match declared {
            Some(d) if d != inferred => {
                return Err(match d {
                    Self::Full => {
                        format!("it is a full-model checkpoint but does not list `{MODEL_FILE}`")
                    }
                    Self::Lora => {
                        format!("it is a LoRA checkpoint but does not list `{ADAPTER_MODEL_FILE}`")
                    }
                    Self::Generic => format!(
                        "it is declared generic but lists a weights file (`{MODEL_FILE}` or `{ADAPTER_MODEL_FILE}`)"
                    ),
                });
            }
            None if inferred == Self::Generic => {
                return Err(format!(
                    "it lists neither `{MODEL_FILE}` nor `{ADAPTER_MODEL_FILE}`"
                ));
            }
            _ => {}
        }
        let missing: Vec<&str> = inferred
            .required_files()
            .iter()
            .copied()
            .filter(|f| !has(f))
            .collect();
        if !missing.is_empty() {
            let what = match inferred {
                Self::Full => "a full-model checkpoint",
                Self::Lora => "a LoRA checkpoint",
                Self::Generic => "a checkpoint",
            };
            return Err(format!(
                "{what} needs {}; MANIFEST.json does not list {}",
                inferred
                    .required_files()
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                missing
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(inferred)
    }
}

/// `MANIFEST.json`: the completion marker and the list of every file with its size and hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`CHECKPOINT_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Always [`FORMAT`].
    pub format: String,
    /// The training step.
    pub step: u64,
    /// Name of the monitored metric (`val_loss`), when the run monitors one.
    #[serde(default)]
    pub monitor: Option<String>,
    /// Its value at this step (`null` when not measured or not finite).
    #[serde(default)]
    pub metric: Option<f64>,
    /// The codex version that wrote it.
    pub codex_version: String,
    /// Hash of the resolved training config.
    pub config_hash: String,
    /// When it was written (RFC 3339 UTC).
    pub created: String,
    /// Every file of the checkpoint except the manifest itself.
    pub files: Vec<FileEntry>,
    /// What it holds; absent in manifests written before it existed (then inferred from
    /// the files, and a checkpoint without weights is incomplete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CheckpointKind>,
}

impl Manifest {
    /// Total size of the files it lists (saturating: the sizes come from a file, and a forged
    /// manifest must not overflow the sum).
    pub fn size_bytes(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |a, f| a.saturating_add(f.size_bytes))
    }

    /// Its kind, when every file that kind needs is listed.
    ///
    /// # Errors
    /// [`CheckpointError::Incomplete`] naming what is missing.
    pub fn check_complete(&self, dir: &Path) -> Result<CheckpointKind> {
        CheckpointKind::of_files(self.files.iter().map(|f| f.name.as_str()), self.kind).map_err(
            |reason| CheckpointError::Incomplete {
                dir: dir.to_path_buf(),
                reason,
            },
        )
    }

    /// Parses and checks a manifest read from `dir`.
    pub(crate) fn parse(dir: &Path, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| CheckpointError::BadManifest {
            dir: dir.to_path_buf(),
            reason,
        };
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.format != FORMAT {
            return Err(bad(format!(
                "format is `{}`, expected `{FORMAT}`",
                m.format
            )));
        }
        if m.schema_version != CHECKPOINT_SCHEMA_VERSION {
            return Err(bad(format!(
                "schema_version {} is not supported (this codex reads {CHECKPOINT_SCHEMA_VERSION})",
                m.schema_version
            )));
        }
        for (i, f) in m.files.iter().enumerate() {
            check_file_name(&f.name).map_err(bad)?;
            if m.files[..i].iter().any(|g| g.name == f.name) {
                return Err(bad(format!("`{}` is listed twice", f.name)));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "`{}` has an invalid sha256 `{}`",
                    f.name, f.sha256
                )));
            }
        }
        Ok(m)
    }
}

/// Rejects names that would escape the checkpoint directory or clash with our own files.
pub(crate) fn check_file_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0')
    {
        return Err(format!("`{name}` is not a plain file name"));
    }
    if name == MANIFEST {
        return Err(format!("`{name}` is reserved"));
    }
    Ok(())
}

/// A tensor's bytes: raw little-endian bytes in the tensor's dtype, or `f32` values that are
/// converted chunk by chunk while writing (no second full-size copy).
#[derive(Debug, Clone)]
pub enum TensorBytes<'a> {
    /// Little-endian bytes, exactly `numel * dtype size`.
    Raw(Cow<'a, [u8]>),
    /// `f32` values (dtype must be `F32`).
    F32(Cow<'a, [f32]>),
}

impl TensorBytes<'_> {
    fn len_bytes(&self) -> usize {
        match self {
            Self::Raw(b) => b.len(),
            Self::F32(v) => v.len() * 4,
        }
    }
}

/// One named tensor as it crosses the API: no candle types, just dtype, shape and bytes.
#[derive(Debug, Clone)]
pub struct TensorData<'a> {
    /// The tensor's name (HF parameter name, or the parameter's name plus a suffix).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Contents.
    pub data: TensorBytes<'a>,
}

impl<'a> TensorData<'a> {
    /// A tensor from raw little-endian bytes (borrowed or owned).
    pub fn raw(
        name: impl Into<String>,
        dtype: Dtype,
        shape: Vec<usize>,
        bytes: impl Into<Cow<'a, [u8]>>,
    ) -> Self {
        Self {
            name: name.into(),
            dtype,
            shape,
            data: TensorBytes::Raw(bytes.into()),
        }
    }

    /// An `F32` tensor from its values (borrowed or owned), e.g. `tensor.to_vec1::<f32>()`.
    pub fn f32(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: impl Into<Cow<'a, [f32]>>,
    ) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            data: TensorBytes::F32(values.into()),
        }
    }

    fn expected_len(&self) -> std::result::Result<usize, String> {
        let numel = self
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or("shape overflows")?;
        let bits = numel
            .checked_mul(self.dtype.bitsize())
            .ok_or("shape overflows")?;
        if bits % 8 != 0 {
            return Err(format!(
                "{numel} elements of {:?} are not a whole number of bytes",
                self.dtype
            ));
        }
        Ok(bits / 8)
    }
}

/// Header of a safetensors file with `__metadata__` first and tensors in data order.
struct Header<'a> {
    metadata: &'a BTreeMap<String, String>,
    tensors: Vec<(&'a str, TensorInfo)>,
}

impl Serialize for Header<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.tensors.len() + 1))?;
        map.serialize_entry("__metadata__", self.metadata)?;
        for (name, info) in &self.tensors {
            map.serialize_entry(name, info)?;
        }
        map.end()
    }
}

/// Validates `tensors` and returns the safetensors header bytes (length prefix + padded JSON)
/// and the write order, which is the `safetensors` crate's: by descending dtype, then name.
pub(crate) fn safetensors_header<'t>(
    step: u64,
    file: &str,
    tensors: &'t [TensorData<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, Vec<&'t TensorData<'t>>)> {
    let invalid = |reason: String| CheckpointError::InvalidSpec { step, reason };
    let mut order: Vec<&TensorData> = tensors.iter().collect();
    order.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    let mut infos = Vec::with_capacity(order.len());
    let mut offset = 0usize;
    for (i, t) in order.iter().enumerate() {
        if t.name.is_empty() || t.name == "__metadata__" {
            return Err(invalid(format!(
                "`{file}`: tensor name `{}` is not allowed",
                t.name
            )));
        }
        if i > 0 && order[i - 1].name == t.name {
            return Err(invalid(format!(
                "`{file}`: tensor `{}` appears twice",
                t.name
            )));
        }
        if matches!(t.data, TensorBytes::F32(_)) && t.dtype != Dtype::F32 {
            return Err(invalid(format!(
                "`{file}`: tensor `{}` has f32 values but dtype {:?}",
                t.name, t.dtype
            )));
        }
        let want = t
            .expected_len()
            .map_err(|r| invalid(format!("`{file}`: tensor `{}`: {r}", t.name)))?;
        let got = t.data.len_bytes();
        if want != got {
            return Err(invalid(format!(
                "`{file}`: tensor `{}` of shape {:?} and dtype {:?} needs {want} bytes, got {got}",
                t.name, t.shape, t.dtype
            )));
        }
        infos.push((
            t.name.as_str(),
            TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: (offset, offset + got),
            },
        ));
        offset += got;
    }
    // Duplicates may differ in dtype and so not be adjacent after the sort above.
    let mut names: Vec<&str> = infos.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(invalid(format!(
            "`{file}`: tensor `{}` appears twice",
            w[0]
        )));
    }
    let mut json = serde_json::to_vec(&Header {
        metadata,
        tensors: infos,
    })
    .map_err(|e| invalid(format!("`{file}`: cannot encode header: {e}")))?;
    // The format pads the header with spaces to an 8-byte boundary so tensor data is aligned.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok((out, order))
}

/// The bytes of a safetensors file as parts to write in order: the header, then every tensor's
/// bytes borrowed from the caller (on little-endian targets `f32` values are their own bytes,
/// so nothing is copied; big-endian targets convert each `f32` tensor once).
pub(crate) fn safetensors_parts<'t>(
    header: &'t [u8],
    order: &[&'t TensorData<'_>],
) -> Vec<Cow<'t, [u8]>> {
    let mut parts = Vec::with_capacity(order.len() + 1);
    parts.push(Cow::Borrowed(header));
    for t in order {
        parts.push(match &t.data {
            TensorBytes::Raw(bytes) => Cow::Borrowed(&bytes[..]),
            TensorBytes::F32(values) => f32_le_bytes(values),
        });
    }
    parts
}

#[cfg(target_endian = "little")]
fn f32_le_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    Cow::Borrowed(bytemuck::cast_slice(values))
}

#[cfg(target_endian = "big")]
fn f32_le_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_round_trip() {
        assert_eq!(step_dir_name(500), "step-00000500");
        assert_eq!(parse_step_dir("step-00000500"), Some(500));
        assert_eq!(parse_step_dir("step-123456789"), Some(123_456_789));
        assert_eq!(parse_step_dir("step-"), None);
        assert_eq!(parse_step_dir("step-12a"), None);
        assert_eq!(parse_step_dir(".tmp-step-00000001-1-0"), None);
    }

    #[test]
    fn streamed_file_parses_with_the_safetensors_crate() {
        let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let b = vec![1u8, 2, 3];
        let tensors = vec![
            TensorData::f32("w", vec![2, 3], &a[..]),
            TensorData::raw("bytes", Dtype::U8, vec![3], &b[..]),
        ];
        let meta = BTreeMap::from([("step".to_string(), "7".to_string())]);
        let (header, order) = safetensors_header(7, "m.safetensors", &tensors, &meta).unwrap();
        let out: Vec<u8> = safetensors_parts(&header, &order).concat();
        let st = safetensors::SafeTensors::deserialize(&out).unwrap();
        let w = st.tensor("w").unwrap();
        assert_eq!(w.shape(), &[2, 3]);
        let back: Vec<f32> = w
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, a);
        assert_eq!(st.tensor("bytes").unwrap().data(), &b[..]);
        let (_, md) = safetensors::SafeTensors::read_metadata(&out).unwrap();
        assert_eq!(md.metadata().as_ref().unwrap()["step"], "7");
        // Same bytes as the reference serializer for the same tensors and metadata.
        let reference = safetensors::serialize(
            [
                (
                    "w",
                    safetensors::tensor::TensorView::new(
                        Dtype::F32,
                        vec![2, 3],
                        &out[out.len() - 27..out.len() - 3],
                    )
                    .unwrap(),
                ),
                (
                    "bytes",
                    safetensors::tensor::TensorView::new(Dtype::U8, vec![3], &b).unwrap(),
                ),
            ],
            Some(meta.clone().into_iter().collect()),
        )
        .unwrap();
        assert_eq!(reference, out);
    }

    #[test]
    fn rejects_wrong_sizes_and_duplicates() {
        let t = [TensorData::raw("x", Dtype::F32, vec![2], vec![0u8; 7])];
        let e = safetensors_header(1, "m", &t, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 8 bytes, got 7"), "{e}");
        let t = [
            TensorData::raw("x", Dtype::U8, vec![1], vec![0u8]),
            TensorData::f32("x", vec![1], vec![0.0]),
        ];
        let e = safetensors_header(1, "m", &t, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("appears twice"), "{e}");
    }

    #[test]
    fn forged_sizes_do_not_overflow_the_total() {
        let file = |name: &str| FileEntry {
            name: name.into(),
            size_bytes: u64::MAX,
            sha256: "0".repeat(64),
        };
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "schema_version": 1, "format": "x", "step": 1, "codex_version": "0",
            "config_hash": "", "created": "", "files": []
        }))
        .unwrap();
        let m = Manifest {
            files: vec![file("a"), file("b")],
            ..m
        };
        assert_eq!(m.size_bytes(), u64::MAX);
    }

    #[test]
    fn completeness_by_kind() {
        use crate::{ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE, MODEL_FILE, OPTIMIZER_FILE};
        let full = [MODEL_FILE, OPTIMIZER_FILE, TRAINER_STATE];
        let lora = [
            ADAPTER_MODEL_FILE,
            ADAPTER_CONFIG_FILE,
            OPTIMIZER_FILE,
            TRAINER_STATE,
        ];
        let of = |names: &[&str], d| CheckpointKind::of_files(names.iter().copied(), d);
        assert_eq!(of(&full, None), Ok(CheckpointKind::Full));
        assert_eq!(
            of(&full, Some(CheckpointKind::Full)),
            Ok(CheckpointKind::Full)
        );
        assert_eq!(of(&lora, None), Ok(CheckpointKind::Lora));
        let e = of(&[], None).unwrap_err();
        assert!(e.contains("neither"), "{e}");
        let e = of(&[OPTIMIZER_FILE, TRAINER_STATE], Some(CheckpointKind::Full)).unwrap_err();
        assert!(e.contains("does not list `model.safetensors`"), "{e}");
        let e = of(&[MODEL_FILE, TRAINER_STATE], None).unwrap_err();
        assert!(e.contains("does not list `optimizer.safetensors`"), "{e}");
        let e = of(&lora[..3], None).unwrap_err();
        assert!(e.contains("`trainer_state.json`"), "{e}");
        let e = of(
            &[
                MODEL_FILE,
                ADAPTER_MODEL_FILE,
                OPTIMIZER_FILE,
                TRAINER_STATE,
            ],
            None,
        )
        .unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        assert_eq!(
            of(&["probe.bin", TRAINER_STATE], Some(CheckpointKind::Generic)),
            Ok(CheckpointKind::Generic)
        );
        assert!(of(&["probe.bin"], Some(CheckpointKind::Generic)).is_err());
        assert!(of(&full, Some(CheckpointKind::Generic)).is_err());
    }

    #[test]
    fn file_names_are_plain() {
        assert!(check_file_name("model.safetensors").is_ok());
        for bad in ["", "..", "a/b", MANIFEST] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }
}
