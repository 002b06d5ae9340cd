//! The run record beside the metrics: `config.toml` (the config now in force), one config per
//! segment under `segments/`, and `provenance.json`, whose `invocations` keep every
//! `codex train` that wrote the run (command line, overrides, time, version, resume point).

use crate::config::TrainConfig;
use crate::data::Dataset;
use crate::error::{Error, Result};
use candle_core::Device;
use codex_core::event::{DataSummary, Invocation};
use codex_core::rundir::RunDir;
use serde_json::Value;
use std::path::Path;

/// `provenance.json` as read back: the first segment's document plus every invocation.
pub type Provenance = Value;

/// Largest `provenance.json` read back on resume; a real one is a few kilobytes.
const MAX_PROVENANCE_BYTES: u64 = 16 << 20;

/// Writes `config.toml`, `segments/config-N.toml` and `provenance.json` for a new segment and
/// returns its invocation.
#[allow(clippy::too_many_arguments)] // one call site; the values are the segment's facts
pub(super) fn write_record(
    run: &RunDir,
    cfg: &TrainConfig,
    config_text: &str,
    config_hash: &str,
    overrides: &[String],
    ds: &Dataset,
    device: &Device,
    trainable_params: u64,
    resumed_from: Option<&Path>,
    ranks: Option<(&codex_dist::WorldInfo, u64)>,
) -> Result<Invocation> {
    let previous = resumed_from.and_then(|_| read_provenance(&run.provenance()));
    let mut doc = previous.unwrap_or_else(|| {
        crate::provenance::collect(cfg, config_hash, ds, device, trainable_params as usize)
    });
    let earlier = doc
        .get("invocations")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u32;
    // A run recorded by an older codex has no invocations: its first segment was number 1.
    let segment = if earlier == 0 && resumed_from.is_some() {
        2
    } else {
        earlier + 1
    };
    let config_file = format!("segments/config-{segment}.toml");
    // Credential-looking values never reach the run directory: they are written as `***`, and
    // a resume from this file must be given them again (`TrainConfig::validate` refuses `***`).
    // `config_sha256` stays the hash of the config in force, unmasked.
    let masked = codex_safety::mask::mask_toml(config_text);
    let config_text = masked.as_str();
    write(&run.config(), config_text.as_bytes())?;
    let seg_path = run.root().join(&config_file);
    if let Some(parent) = seg_path.parent() {
        codex_core::fsutil::create_dir_all(parent).map_err(|source| Error::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    write(&seg_path, config_text.as_bytes())?;
    let invocation = Invocation {
        segment,
        argv: std::env::args().collect(),
        overrides: overrides.to_vec(),
        started: codex_core::time::now_rfc3339(),
        codex_version: codex_core::VERSION.to_string(),
        config_sha256: config_hash.to_string(),
        config_file,
        resumed_from: resumed_from.map(Path::to_path_buf),
    };
    let mut inv_value = serde_json::to_value(&invocation)
        .map_err(|e| Error::Internal(format!("cannot serialize the invocation: {e}")))?;
    // The command line can carry a credential (`tracking.mlflow=https://u:p@…`): masked in
    // provenance.json and in the `start` event alike.
    codex_safety::mask::mask_json(&mut inv_value);
    let invocation: Invocation = serde_json::from_value(inv_value.clone())
        .map_err(|e| Error::Internal(format!("cannot read the masked invocation back: {e}")))?;
    if let Some((world, global_batch)) = ranks {
        // This segment's ranks (a resumed run may have had others before).
        let mut d = serde_json::to_value(world)
            .map_err(|e| Error::Internal(format!("cannot serialize the ranks: {e}")))?;
        d["global_batch"] = global_batch.into();
        d["segment"] = segment.into();
        doc["distributed"] = d;
    }
    match doc.get_mut("invocations").and_then(Value::as_array_mut) {
        Some(list) => list.push(inv_value),
        None => doc["invocations"] = Value::Array(vec![inv_value]),
    }
    let bytes = serde_json::to_vec_pretty(&doc)
        .map_err(|e| Error::Internal(format!("cannot serialize provenance: {e}")))?;
    write(&run.provenance(), &bytes)?;
    Ok(invocation)
}

/// The previous segments' provenance, when it is there and readable.
fn read_provenance(path: &Path) -> Option<Value> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_PROVENANCE_BYTES {
        return None;
    }
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v.is_object().then_some(v)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    codex_core::fsutil::atomic_write(path, bytes).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The `data` part of a `start` event.
pub(super) fn data_summary(ds: &Dataset) -> DataSummary {
    DataSummary {
        tokens: ds.n_tokens() as u64,
        train_blocks: ds.n_train() as u64,
        val_blocks: ds.n_val() as u64,
        context_length: ds.context_length as u64,
        tokenizer: ds.tokenizer_desc.clone(),
        vocab_size: ds.vocab_size as u64,
        cache_hit: ds.cache_hit,
        safety: ds
            .safety
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok()),
    }
}

/// A new run id: the directory name, the UTC time and the pid.
pub fn new_run_id(root: &Path) -> String {
    let base = root.file_name().and_then(|n| n.to_str()).unwrap_or("run");
    let ts: String = codex_core::time::now_rfc3339()
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect();
    format!("{base}-{ts}-{:04x}", std::process::id() & 0xffff)
}
