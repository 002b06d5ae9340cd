//! `codex export SOURCE -o DIR`: a model as an HF directory that `transformers` loads as it is
//! (config, HF-named safetensors, tokenizer, generation config, a model card from the run
//! record), or as a GGUF file for llama-family models.

use crate::commands::generate::TextTok;
use crate::commands::model::registry_err;
use crate::ctx::{Ctx, out_json, out_line, with_hint};
use anyhow::Context;
use codex_core::exit;
use codex_registry::export::{self, SpecialIds};
use codex_registry::run::RunCheckpoint;
use codex_registry::{ModelSource, TokenizerRef};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run directory (its best checkpoint; `RUN@best`, `RUN@last`, `RUN@STEP`), a checkpoint
    /// directory, an HF model directory, a .gguf file, or `org/name[@revision]`.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Output directory (created; must not already hold a model unless --force).
    #[arg(short = 'o', long = "output", alias = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// What to write: an HF model directory, or one GGUF file for llama.cpp.
    #[arg(long, value_enum, default_value_t = Format::Hf)]
    pub format: Format,
    /// Weights dtype (GGUF: f32, f16 or q8_0).
    #[arg(long, default_value = "f32", value_name = "f32|bf16|f16|q8_0")]
    pub dtype: String,
    /// LoRA sources: fold the adapter into the weights. Without it the base is written to DIR
    /// and the PEFT adapter to DIR/adapter.
    #[arg(long)]
    pub merge_lora: bool,
    /// Shard the weights above this many bytes (HF's layout with an index).
    #[arg(long, default_value_t = export::DEFAULT_SHARD_BYTES, value_name = "BYTES")]
    pub max_shard_size: u64,
    /// Tokenizer to ship: `byte`, or a tokenizer.json (default: the source's own).
    #[arg(long, value_name = "byte|FILE")]
    pub tokenizer: Option<String>,
    /// Overwrite a model already in DIR.
    #[arg(long)]
    pub force: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An HF model directory.
    Hf,
    /// A GGUF file `DIR/model.gguf` (llama family).
    Gguf,
}

/// The source's tokenizer as GGUF metadata, or why it cannot be (then the file has none).
fn gguf_tokenizer(
    a: &Args,
    model: &codex_registry::Model,
    loaded_tok: &TokenizerRef,
    src: &ModelSource,
) -> Result<codex_registry::gguf::GgufTokenizer, String> {
    let tok = TextTok::for_source(loaded_tok, src, a.tokenizer.as_deref())
        .map_err(|e| format!("{e:#}"))?;
    let json = match &tok {
        TextTok::Byte => byte_tokenizer_json(),
        TextTok::Hf(t) => serde_json::from_str(
            &t.to_string(false)
                .map_err(|e| format!("serialising the tokenizer: {e}"))?,
        )
        .map_err(|e| format!("serialising the tokenizer: {e}"))?,
    };
    let mut g =
        codex_registry::gguf::GgufTokenizer::from_tokenizer_json(&json, model.vocab_size())?;
    if g.tokens.len() != model.vocab_size() {
        return Err(format!(
            "the tokenizer has {} tokens, more than the model's vocabulary of {}",
            g.tokens.len(),
            model.vocab_size()
        ));
    }
    let eos = codex_registry::generate::eos_ids(src).map_err(|e| e.to_string())?;
    g.eos = eos
        .first()
        .copied()
        .filter(|&e| (e as usize) < g.tokens.len());
    Ok(g)
}

fn export_gguf(
    ctx: &Ctx,
    a: &Args,
    model: &codex_registry::Model,
    loaded_tok: &TokenizerRef,
    src: &ModelSource,
) -> anyhow::Result<u8> {
    use codex_registry::gguf_write::{GgufType, write_gguf_with};
    let ty = GgufType::parse(&a.dtype).map_err(registry_err)?;
    if model.lora_config().is_some() && !a.merge_lora {
        return Err(with_hint(
            anyhow::anyhow!(
                "{} has a LoRA adapter; GGUF holds one set of weights",
                a.source
            ),
            "pass --merge-lora",
        ));
    }
    codex_core::fsutil::create_dir_all(&a.out)
        .with_context(|| format!("creating {}", a.out.display()))?;
    let path = a.out.join("model.gguf");
    let name = a
        .out
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let tok = gguf_tokenizer(a, model, loaded_tok, src);
    if let Err(why) = &tok {
        ctx.warn(format!(
            "{}: no tokenizer metadata in the GGUF file ({why}); llama.cpp cannot run it and \
             `codex generate` will need --tokenizer",
            path.display()
        ));
    }
    write_gguf_with(model, &path, ty, &name, tok.as_ref().ok()).map_err(registry_err)?;
    let (sha, _) = codex_core::hash::sha256_file(&path)?;
    let tok_line = match &tok {
        Ok(t) => format!(
            "in the GGUF metadata (`tokenizer.ggml.model` {}, pre `{}`, {} tokens, {} merges); \
             model.gguf sha256 {sha}",
            t.model,
            t.pre,
            t.tokens.len(),
            t.merges.len()
        ),
        Err(_) => format!("(none in the GGUF; model.gguf sha256 {sha})"),
    };
    let card = model_card(a, model, src, &tok_line, &a.dtype);
    let readme = a.out.join("README.md");
    codex_core::fsutil::atomic_write(&readme, card.as_bytes())
        .with_context(|| format!("writing {}", readme.display()))?;
    if ctx.json {
        out_json(
            &json!({"source": a.source, "out": a.out, "format": "gguf", "dtype": a.dtype,
            "files": [path, readme]}),
        )?;
    } else {
        out_line(path.display())?;
        out_line(readme.display())?;
    }
    ctx.info(format!("exported {} to {}", a.source, path.display()));
    Ok(exit::OK)
}

/// GPT-2's reversible byte → printable-character map (`bytes_to_unicode`): printable Latin-1
/// bytes map to themselves, the others to U+0100 onwards.
fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('\u{FFFD}')
}

/// An HF `tokenizer.json` whose ids are codex's byte tokenizer's ids (the UTF-8 bytes):
/// byte-level BPE over the 256 byte characters with no merges, so every byte is one token
/// and id `b` is byte `b`.
fn byte_tokenizer_json() -> Value {
    let vocab: serde_json::Map<String, Value> = (0..=255u8)
        .map(|b| (byte_to_char(b).to_string(), Value::from(b)))
        .collect();
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    });
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    })
}

fn write_json(path: &Path, v: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    codex_core::fsutil::atomic_write(path, format!("{text}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes `tokenizer.json` and `tokenizer_config.json`; returns the tokenizer's sha256.
fn write_tokenizer(
    dir: &Path,
    r: &TokenizerRef,
    src: &ModelSource,
    over: Option<&str>,
    ctx_len: usize,
) -> anyhow::Result<String> {
    let tok = TextTok::for_source(r, src, over)?;
    let path = dir.join("tokenizer.json");
    match &tok {
        TextTok::Byte => write_json(&path, &byte_tokenizer_json())?,
        TextTok::Hf(t) => {
            let text = t
                .to_string(true)
                .map_err(|e| anyhow::anyhow!("serialising the tokenizer: {e}"))?;
            codex_core::fsutil::atomic_write(&path, format!("{text}\n").as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": ctx_len,
            "clean_up_tokenization_spaces": false,
            "add_bos_token": false,
            "add_eos_token": false,
        }),
    )?;
    let (sha, _) = codex_core::hash::sha256_file(&path)?;
    Ok(sha)
}

fn read_json(path: &Path) -> Option<Value> {
    let bytes =
        codex_registry::source::read_bounded(path, codex_registry::source::MAX_JSON_BYTES).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The README.md model card: what the source's records say, nothing else.
fn model_card(
    a: &Args,
    m: &codex_registry::Model,
    src: &ModelSource,
    tok_sha: &str,
    dtype: &str,
) -> String {
    let mut s = String::new();
    let name = a
        .out
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let arch = m.config().to_hf_json()["architectures"][0]
        .as_str()
        .unwrap_or("")
        .to_string();
    let _ = writeln!(s, "---\nlibrary_name: transformers\ntags:\n- codex\n---\n");
    let _ = writeln!(s, "# {name}\n");
    let _ = writeln!(
        s,
        "Exported by codex {} from `{}`.\n",
        env!("CARGO_PKG_VERSION"),
        a.source
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| architecture | {} (`{arch}`) |", m.arch_name());
    let _ = writeln!(s, "| parameters | {} |", m.param_counts().total);
    let _ = writeln!(s, "| vocabulary | {} |", m.vocab_size());
    let _ = writeln!(s, "| context | {} |", m.max_positions());
    let _ = writeln!(s, "| dtype | {dtype} |");
    let _ = writeln!(s, "| tokenizer | {tok_sha} |");
    if let Some(l) = m.lora_config() {
        let _ = writeln!(
            s,
            "| LoRA | r={}, alpha={}, targets {} ({}) |",
            l.r,
            l.alpha,
            l.target_modules.join(", "),
            if a.merge_lora {
                "merged"
            } else {
                "adapter in `adapter/`"
            }
        );
    }
    match src {
        ModelSource::Checkpoint(ck) => run_card(&mut s, ck),
        other => {
            let _ = writeln!(
                s,
                "\nNo codex training record: the source is {other:?}; see its own documentation."
            );
        }
    }
    s
}

fn run_card(s: &mut String, ck: &RunCheckpoint) {
    let prov = read_json(&ck.run.join("provenance.json")).unwrap_or(Value::Null);
    let state = read_json(&ck.dir.join("trainer_state.json")).unwrap_or(Value::Null);
    let _ = writeln!(s, "\n## Training (from the run record)\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let row = |s: &mut String, k: &str, v: Option<String>| {
        if let Some(v) = v {
            let _ = writeln!(s, "| {k} | {v} |");
        }
    };
    let txt = |v: &Value| match v {
        Value::Null => None,
        Value::String(x) => Some(x.clone()),
        v => Some(v.to_string()),
    };
    row(s, "run id", txt(&state["run_id"]));
    row(
        s,
        "checkpoint",
        Some(format!("step {} ({})", ck.step, ck.chosen)),
    );
    row(s, "optimizer steps", txt(&state["optimizer_steps"]));
    row(s, "validation loss", txt(&state["last_eval"]["val_loss"]));
    row(
        s,
        "validation perplexity",
        txt(&state["last_eval"]["val_ppl"]),
    );
    row(s, "first validation loss", txt(&state["first_val_loss"]));
    row(
        s,
        "train loss at this step",
        train_loss_at(&ck.run, ck.step),
    );
    row(s, "tokens in the data", txt(&prov["data"]["tokens"]));
    row(s, "tokenizer", txt(&prov["data"]["tokenizer"]));
    row(
        s,
        "data cache key sha256",
        txt(&prov["data"]["cache_key_sha256"]).map(|h| format!("`{h}`")),
    );
    row(
        s,
        "config sha256",
        txt(&prov["config_sha256"]).map(|h| format!("`{h}`")),
    );
    row(s, "codex git sha", txt(&prov["git_sha"]));
    if let Some(srcs) = prov["data"]["sources"].as_array() {
        let _ = writeln!(s, "\n### Data\n");
        for d in srcs {
            let _ = writeln!(
                s,
                "- `{}`: {} bytes, sha256 `{}`",
                d["path"].as_str().unwrap_or("?"),
                d["bytes"],
                d["sha256"].as_str().unwrap_or("?")
            );
        }
    }
}

/// The training loss logged at `step` in `metrics.ndjson`.
fn train_loss_at(run: &Path, step: u64) -> Option<String> {
    let text =
        codex_core::fsutil::read_regular_capped(&run.join("metrics.ndjson"), 1 << 30).ok()?;
    String::from_utf8_lossy(&text)
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "step" && e["step"].as_u64() == Some(step))
        .find_map(|e| e["train_loss"].as_f64())
        .map(|l| l.to_string())
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let out = &a.out;
    if (out.join("config.json").exists() || out.join("model.gguf").exists()) && !a.force {
        return Err(with_hint(
            anyhow::anyhow!("{} already holds a model", out.display()),
            "pick another -o or pass --force",
        ));
    }
    if a.max_shard_size == 0 {
        anyhow::bail!("--max-shard-size must be > 0");
    }
    let cpu = codex_registry::candle_core::Device::Cpu;
    let f32 = codex_registry::candle_core::DType::F32;
    let loaded = codex_registry::load_model(&a.source, &cpu, f32).map_err(registry_err)?;
    let mut model = loaded.model;
    if a.merge_lora {
        if model.lora_config().is_none() {
            anyhow::bail!("--merge-lora: {} has no LoRA adapter", a.source);
        }
        model.merge_lora()?;
    }
    if a.format == Format::Gguf {
        return export_gguf(ctx, &a, &model, &loaded.tokenizer, &loaded.source);
    }
    let dtype = codex_registry::parse_dtype(&a.dtype).map_err(registry_err)?;
    codex_core::fsutil::create_dir_all(out)
        .with_context(|| format!("creating {}", out.display()))?;
    let tok_sha = write_tokenizer(
        out,
        &loaded.tokenizer,
        &loaded.source,
        a.tokenizer.as_deref(),
        model.max_positions(),
    )?;
    let mut files = export::save_hf(&model, out, dtype, SpecialIds::default(), a.max_shard_size)
        .map_err(registry_err)?;
    files.push(out.join("tokenizer.json"));
    files.push(out.join("tokenizer_config.json"));
    if model.lora_config().is_some() && !a.merge_lora {
        // The adapter's config names the exported base, so `PeftModel.from_pretrained(base,
        // DIR/adapter)` and `AutoPeftModelForCausalLM` find it.
        let abs = std::fs::canonicalize(out).unwrap_or_else(|_| out.clone());
        model.origin = abs.display().to_string();
        files.extend(
            model
                .save_adapter(&out.join("adapter"))
                .map_err(registry_err)?,
        );
    }
    let card = model_card(
        &a,
        &model,
        &loaded.source,
        &format!("tokenizer.json sha256 `{tok_sha}`"),
        &a.dtype,
    );
    let readme = out.join("README.md");
    codex_core::fsutil::atomic_write(&readme, card.as_bytes())
        .with_context(|| format!("writing {}", readme.display()))?;
    files.push(readme);
    if ctx.json {
        out_json(
            &json!({"source": a.source, "out": out, "format": "hf", "dtype": a.dtype, "files": files}),
        )?;
    } else {
        for f in &files {
            out_line(f.display())?;
        }
    }
    ctx.info(format!("exported {} to {}", a.source, out.display()));
    Ok(exit::OK)
}
