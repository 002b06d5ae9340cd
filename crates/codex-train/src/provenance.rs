//! `provenance.json`: what produced a run (codex version and features, git commit, compiler,
//! host, CPU/GPU, config and data hashes), so a result can be traced and reproduced.

use crate::config::TrainConfig;
use crate::data::Dataset;
use candle_core::Device;
use serde_json::{Value, json};

/// The rustc that built codex (`rustc -V`, captured by build.rs).
pub const RUSTC_VERSION: &str = env!("CODEX_RUSTC_VERSION");
/// The git commit codex was built from (empty outside a repository or before the first commit).
pub const GIT_SHA: &str = env!("CODEX_GIT_SHA");

/// Compiled-in features.
pub fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(feature = "cuda") {
        f.push("cuda");
    }
    f
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
}

/// The provenance document of a run.
pub fn collect(
    cfg: &TrainConfig,
    config_hash: &str,
    ds: &Dataset,
    device: &Device,
    n_params: usize,
) -> Value {
    let mut doc = json!({
        "schema_version": codex_core::SCHEMA_VERSION,
        "created": codex_core::time::now_rfc3339(),
        "codex_version": codex_core::VERSION,
        "features": features(),
        "git_sha": if GIT_SHA.is_empty() { Value::Null } else { json!(GIT_SHA) },
        "rustc": RUSTC_VERSION,
        "host": {
            "hostname": hostname(),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "cpu_model": cpu_model(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        },
        "device": format!("{device:?}"),
        "dtype": cfg.training.dtype,
        "model": {"preset": cfg.model.preset, "pretrained": cfg.model.pretrained, "lora": cfg.model.lora.enabled, "trainable_params": n_params},
        "config_sha256": config_hash,
        "data": {
            "cache_key_sha256": ds.data_hash,
            "sources": ds.sources,
            "tokens": ds.n_tokens(),
            "tokenizer": ds.tokenizer_desc,
            "vocab_size": ds.vocab_size,
            "train_blocks": ds.n_train(),
            "val_blocks": ds.n_val(),
            "cache_hit": ds.cache_hit,
            "safety": ds.safety,
        },
        "command": std::env::args().collect::<Vec<_>>(),
    });
    // A token typed on the command line or a credential in a source path stays out of the record.
    codex_safety::mask::mask_json(&mut doc);
    doc
}
