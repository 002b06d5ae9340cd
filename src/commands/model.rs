//! `codex model list|show|lora merge`: the model registry on the command line.

use crate::ctx::{Ctx, out_json, out_line, with_hint};
use anyhow::Context;
use codex_core::exit;
use codex_registry::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraConfig};
use codex_registry::registry::{self, ARCHITECTURES, PRESETS, PresetOverrides};
use codex_registry::source::{self, ModelSource};
use codex_registry::{ArchConfig, RegistryError};
use indicatif::HumanBytes;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ModelCommand {
    /// List the architectures and the presets for training from scratch
    List,
    /// Architecture, parameter counts, dtype, memory estimate and file hashes of a model
    Show(ShowArgs),
    /// LoRA adapters (PEFT layout)
    #[command(subcommand)]
    Lora(LoraCommand),
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// A preset name; a run directory (`RUN`, `RUN@best`, `RUN@last`, `RUN@STEP`) or a
    /// checkpoint directory; an HF model directory, a .gguf file, or `org/name[@revision]` from
    /// the local hf-hub cache.
    #[arg(value_name = "NAME|PATH")]
    pub model: String,
    /// A PEFT adapter directory to count as trainable.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Count a fresh LoRA adapter of this rank (presets; default targets unless --lora-targets).
    #[arg(long, value_name = "R", conflicts_with = "adapter")]
    pub lora_r: Option<usize>,
    /// Comma-separated LoRA target modules for --lora-r.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub lora_targets: Vec<String>,
    /// dtype for the memory estimate (default: the checkpoint's, f32 for presets).
    #[arg(long, value_name = "f32|bf16|f16")]
    pub dtype: Option<String>,
    /// Vocabulary size override for presets.
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Skip hashing the weight files.
    #[arg(long)]
    pub no_hash: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum LoraCommand {
    /// Merge a PEFT adapter into its base and write an HF model directory
    Merge {
        /// Base model: a run or checkpoint directory, an HF directory, .gguf, or
        /// `org/name[@revision]` in the hf-hub cache.
        #[arg(long, value_name = "MODEL")]
        base: String,
        /// Adapter directory (adapter_config.json + adapter_model.safetensors).
        #[arg(long, value_name = "DIR")]
        adapter: PathBuf,
        /// Output directory (created; must not already hold a model unless --force).
        #[arg(short = 'o', long = "output", alias = "out", value_name = "DIR")]
        out: PathBuf,
        /// dtype of the merged weights.
        #[arg(long, default_value = "f32", value_name = "f32|bf16|f16")]
        dtype: String,
        /// Overwrite a model already in --output.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    match args.command {
        ModelCommand::List => list(ctx),
        ModelCommand::Show(a) => show(ctx, a),
        ModelCommand::Lora(LoraCommand::Merge {
            base,
            adapter,
            out,
            dtype,
            force,
        }) => merge(ctx, &base, &adapter, &out, &dtype, force),
    }
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    let presets: Vec<Value> = PRESETS
        .iter()
        .map(|p| {
            let cfg = (p.config)();
            json!({
                "name": p.name,
                "architecture": p.arch,
                "params": cfg.param_count(),
                "vocab_size": cfg.vocab_size(),
                "context": cfg.max_positions(),
                "description": p.description,
            })
        })
        .collect();
    if ctx.json {
        out_json(&json!({"architectures": ARCHITECTURES, "presets": presets}))?;
        return Ok(exit::OK);
    }
    out_line("ARCHITECTURE  HF CLASSES                          DESCRIPTION")?;
    for a in ARCHITECTURES {
        out_line(format!(
            "{:<13} {:<35} {}",
            a.name,
            a.hf_classes.join(","),
            a.description
        ))?;
    }
    out_line("")?;
    out_line("PRESET       ARCH    PARAMS   VOCAB  CTX   DESCRIPTION")?;
    for p in &presets {
        out_line(format!(
            "{:<12} {:<7} {:<8} {:<6} {:<5} {}",
            p["name"].as_str().unwrap_or(""),
            p["architecture"].as_str().unwrap_or(""),
            human(p["params"].as_u64().unwrap_or(0) as usize),
            p["vocab_size"].as_u64().unwrap_or(0),
            p["context"].as_u64().unwrap_or(0),
            p["description"].as_str().unwrap_or("")
        ))?;
    }
    Ok(exit::OK)
}

fn dtype_size(name: &str) -> u64 {
    match name {
        "f32" | "F32" | "float32" => 4,
        "f64" | "F64" => 8,
        "I8" | "U8" | "Q8_0" => 1,
        _ => 2,
    }
}

fn file_entry(path: &Path, hash: bool) -> anyhow::Result<Value> {
    if hash {
        let (sha, len) = codex_core::hash::sha256_file(path)
            .with_context(|| format!("hashing {}", path.display()))?;
        Ok(json!({"path": path, "bytes": len, "sha256": sha}))
    } else {
        let len = std::fs::metadata(path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        Ok(json!({"path": path, "bytes": len}))
    }
}

/// Parameter count and dtypes of safetensors files, from their headers only (checked against
/// the file sizes by `safetensors_header`).
fn header_params(files: &[PathBuf]) -> anyhow::Result<(usize, Vec<String>)> {
    let mut total: u64 = 0;
    let mut dtypes = std::collections::BTreeSet::new();
    for f in files {
        for t in source::safetensors_header(f)? {
            // Buffers stored next to the weights are not parameters.
            if t.name.ends_with("position_ids")
                || t.name.ends_with(".attn.bias")
                || t.name.ends_with(".attn.masked_bias")
            {
                continue;
            }
            // Each tensor's bytes are in the file, so the sum is bounded by the file sizes;
            // checked all the same, since shapes come from the file.
            total = total.checked_add(t.elements).ok_or_else(|| {
                anyhow::anyhow!("{}: parameter count overflows 2^64", f.display())
            })?;
            dtypes.insert(t.dtype);
        }
    }
    let total = usize::try_from(total)
        .map_err(|_| anyhow::anyhow!("parameter count {total} does not fit this platform"))?;
    Ok((total, dtypes.into_iter().collect()))
}

pub(crate) fn registry_err(e: RegistryError) -> anyhow::Error {
    match e {
        RegistryError::Device { .. } => {
            with_hint(e, "use --device cpu, or a build with `--features cuda`")
        }
        RegistryError::NotCached { .. } => with_hint(
            e,
            "codex never downloads: fetch it with `huggingface-cli download ORG/NAME` or pass a directory",
        ),
        RegistryError::UnknownModel { .. } => with_hint(e, "see `codex model list` for presets"),
        e => e.into(),
    }
}

fn show(ctx: &Ctx, a: ShowArgs) -> anyhow::Result<u8> {
    let src = source::resolve_source(&a.model).map_err(registry_err)?;
    let mut files: Vec<PathBuf> = vec![];
    let (arch, config_json, mut total, dtype_name, mut lora_params, source_desc): (
        &str,
        Value,
        usize,
        String,
        usize,
        String,
    );
    match &src {
        ModelSource::Preset(name) => {
            let o = PresetOverrides {
                vocab_size: a.vocab_size,
                ..Default::default()
            };
            let cfg = registry::preset_config(name, &o).map_err(registry_err)?;
            arch = cfg.arch_name();
            config_json = cfg.to_hf_json();
            total = cfg.param_count();
            dtype_name = a.dtype.clone().unwrap_or_else(|| "f32".into());
            lora_params = 0;
            source_desc = format!("preset {name}");
        }
        ModelSource::HfDir(dir) => {
            let bytes = source::read_bounded(&dir.join("config.json"), source::MAX_JSON_BYTES)
                .map_err(registry_err)?;
            config_json = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", dir.join("config.json").display()))?;
            let cfg = ArchConfig::from_hf_json(&config_json, &dir.join("config.json"))
                .map_err(registry_err)?;
            arch = cfg.arch_name();
            let weights = source::weight_files(dir).map_err(registry_err)?;
            let (n, dtypes) = header_params(&weights)?;
            total = n;
            dtype_name = a
                .dtype
                .clone()
                .unwrap_or_else(|| dtypes.join(",").to_lowercase());
            lora_params = 0;
            source_desc = dir.display().to_string();
            files.push(dir.join("config.json"));
            files.extend(weights);
            for extra in ["model.safetensors.index.json", "tokenizer.json"] {
                if dir.join(extra).is_file() {
                    files.push(dir.join(extra));
                }
            }
        }
        ModelSource::Checkpoint(ck) => {
            let cfg = codex_registry::source_config(&a.model).map_err(registry_err)?;
            arch = cfg.arch_name();
            config_json = cfg.to_hf_json();
            total = cfg.param_count();
            let names = codex_registry::run::weight_names(ck);
            let weights: Vec<PathBuf> = names.iter().map(|n| ck.dir.join(n)).collect();
            if ck.lora {
                let (n, _) = header_params(&weights[..1])?;
                lora_params = n;
            } else {
                lora_params = 0;
            }
            dtype_name = a.dtype.clone().unwrap_or_else(|| "f32".into());
            source_desc = format!(
                "run {} checkpoint step {} ({}{})",
                ck.run.display(),
                ck.step,
                ck.chosen,
                ck.metric
                    .map(|m| format!(", metric {m}"))
                    .unwrap_or_default()
            );
            files.push(ck.run.join("config.toml"));
            files.extend(weights);
        }
        ModelSource::Gguf(path) => {
            let m = codex_registry::load_pretrained(
                &a.model,
                &codex_registry::candle_core::Device::Cpu,
                codex_registry::candle_core::DType::F32,
            )
            .map_err(registry_err)?;
            arch = m.arch_name();
            config_json = m.config().to_hf_json();
            total = m.param_counts().total;
            dtype_name = a
                .dtype
                .clone()
                .unwrap_or_else(|| "f32 (dequantized)".into());
            lora_params = 0;
            source_desc = path.display().to_string();
            files.push(path.clone());
        }
    }
    let mut lora_json = Value::Null;
    if let Some(r) = a.lora_r {
        // Adapter sizes depend on the module shapes: build (or load) the model and attach one.
        let cpu = codex_registry::candle_core::Device::Cpu;
        let f32 = codex_registry::candle_core::DType::F32;
        let mut m = match &src {
            ModelSource::Preset(name) => {
                let o = PresetOverrides {
                    vocab_size: a.vocab_size,
                    ..Default::default()
                };
                let cfg = registry::preset_config(name, &o).map_err(registry_err)?;
                registry::build_from_config(cfg, name, &cpu, f32, 0).map_err(registry_err)?
            }
            _ => codex_registry::load_pretrained(&a.model, &cpu, f32).map_err(registry_err)?,
        };
        let lc = LoraConfig {
            r,
            alpha: (2 * r) as f64,
            target_modules: a.lora_targets.clone(),
            ..Default::default()
        };
        codex_registry::apply_lora(&mut m, lc, 0).map_err(registry_err)?;
        lora_params = m.param_counts().lora;
        if let Some(c) = m.lora_config() {
            lora_json = json!({"r": c.r, "alpha": c.alpha, "target_modules": c.target_modules});
        }
    }
    if let Some(ad) = &a.adapter {
        let cfg_path = ad.join(ADAPTER_CONFIG);
        let bytes =
            source::read_bounded(&cfg_path, source::MAX_JSON_BYTES).map_err(registry_err)?;
        let v: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", cfg_path.display()))?;
        let lc = LoraConfig::from_peft_json(&v, &cfg_path).map_err(registry_err)?;
        let (n, _) = header_params(&[ad.join(ADAPTER_WEIGHTS)])?;
        lora_params = n;
        lora_json = json!({"r": lc.r, "alpha": lc.alpha, "target_modules": lc.target_modules});
        files.push(cfg_path);
        files.push(ad.join(ADAPTER_WEIGHTS));
    }
    if lora_params > 0 {
        total = total.saturating_add(lora_params);
    }
    let trainable = if lora_params > 0 { lora_params } else { total };
    let el = dtype_size(dtype_name.split([',', ' ']).next().unwrap_or("f32"));
    // Saturating: a count near 2^64 prints as the maximum rather than wrapping to a small
    // number.
    let weights_bytes = (total as u64).saturating_mul(el);
    // Training: weights + gradients of the trainable tensors + AdamW's two f32 moments.
    let train_bytes = weights_bytes.saturating_add((trainable as u64).saturating_mul(el + 8));
    let file_json: Vec<Value> = files
        .iter()
        .map(|f| file_entry(f, !a.no_hash))
        .collect::<anyhow::Result<_>>()?;
    let doc = json!({
        "model": a.model,
        "source": source_desc,
        "architecture": arch,
        "params": {"total": total, "trainable": trainable, "lora": lora_params},
        "dtype": dtype_name,
        "memory": {
            "weights_bytes": weights_bytes,
            "training_bytes_estimate": train_bytes,
            "note": "training estimate = weights + gradients + AdamW f32 moments; activations not included",
        },
        "lora": lora_json,
        "files": file_json,
        "config": config_json,
    });
    if ctx.json {
        out_json(&doc)?;
        return Ok(exit::OK);
    }
    out_line(format!("model:         {}", a.model))?;
    out_line(format!("source:        {source_desc}"))?;
    out_line(format!("architecture:  {arch}"))?;
    out_line(format!(
        "parameters:    {} total, {} trainable ({} / {})",
        human(total),
        human(trainable),
        total,
        trainable
    ))?;
    if lora_params > 0 {
        out_line(format!(
            "lora:          {} adapter parameters",
            human(lora_params)
        ))?;
    }
    out_line(format!("dtype:         {dtype_name}"))?;
    out_line(format!(
        "memory:        weights {}, training ≈ {} (+ activations)",
        HumanBytes(weights_bytes),
        HumanBytes(train_bytes)
    ))?;
    for f in &file_json {
        out_line(format!(
            "file:          {} ({}){}",
            f["path"].as_str().unwrap_or(""),
            HumanBytes(f["bytes"].as_u64().unwrap_or(0)),
            f.get("sha256")
                .and_then(Value::as_str)
                .map(|s| format!(" sha256:{s}"))
                .unwrap_or_default()
        ))?;
    }
    Ok(exit::OK)
}

fn merge(
    ctx: &Ctx,
    base: &str,
    adapter: &Path,
    out: &Path,
    dtype: &str,
    force: bool,
) -> anyhow::Result<u8> {
    let dt = codex_registry::parse_dtype(dtype).map_err(registry_err)?;
    if out.join("config.json").exists() && !force {
        return Err(with_hint(
            anyhow::anyhow!("{} already holds a model (config.json)", out.display()),
            "pick another --out or pass --force",
        ));
    }
    let src = source::resolve_source(base).map_err(registry_err)?;
    let mut m =
        codex_registry::load_pretrained(base, &codex_registry::candle_core::Device::Cpu, dt)
            .map_err(registry_err)?;
    codex_registry::load_adapter(&mut m, adapter).map_err(registry_err)?;
    m.merge_lora()?;
    let mut written = m.save_pretrained(out).map_err(registry_err)?;
    // Keep the tokenizer next to the merged weights so the directory is usable as is.
    if let ModelSource::HfDir(dir) = &src {
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
            "vocab.json",
            "merges.txt",
            "generation_config.json",
        ] {
            let from = dir.join(f);
            if from.is_file() {
                // Same cap as codex_tokenizer puts on a tokenizer.json, the largest of these.
                let bytes = source::read_bounded(&from, codex_tokenizer::source::MAX_FILE_BYTES)
                    .map_err(registry_err)?;
                let to = out.join(f);
                codex_core::fsutil::atomic_write(&to, &bytes)
                    .with_context(|| format!("writing {}", to.display()))?;
                written.push(to);
            }
        }
    }
    let files: Vec<Value> = written
        .iter()
        .map(|f| file_entry(f, true))
        .collect::<anyhow::Result<_>>()?;
    let counts = m.param_counts();
    if ctx.json {
        out_json(
            &json!({"out": out, "base": base, "adapter": adapter, "params": counts.total - counts.lora, "files": files}),
        )?;
    } else {
        ctx.info(format!("merged {} into {}", adapter.display(), base));
        for f in &files {
            out_line(format!(
                "{}  {}",
                f["sha256"].as_str().unwrap_or(""),
                f["path"].as_str().unwrap_or("")
            ))?;
        }
    }
    Ok(exit::OK)
}
