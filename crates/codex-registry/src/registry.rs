//! The one place where architectures and presets are registered (`codex model list`). A preset
//! is a config; [`build_preset`] hands it to the model constructor with fresh weights.

use crate::config::{ArchConfig, BertConfig, GptConfig, LlamaConfig};
use crate::error::{RegistryError, Result};
use crate::model::Model;
use candle_core::{DType, Device};

/// An architecture codex implements.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ArchInfo {
    pub name: &'static str,
    /// HF `architectures` classes whose checkpoints load into it.
    pub hf_classes: &'static [&'static str],
    pub description: &'static str,
}

pub const ARCHITECTURES: &[ArchInfo] = &[
    ArchInfo {
        name: "gpt2",
        hf_classes: &["GPT2LMHeadModel"],
        description: "GPT-2: learned positions, LayerNorm, GELU MLP, tied lm_head",
    },
    ArchInfo {
        name: "llama",
        hf_classes: &["LlamaForCausalLM", "Qwen2ForCausalLM"],
        description: "Llama family: RMSNorm, RoPE, SwiGLU, grouped-query attention (SmolLM2, TinyLlama, Qwen2); also GGUF",
    },
    ArchInfo {
        name: "bert",
        hf_classes: &["BertModel"],
        description: "BERT encoder (MiniLM); mean-pooled sentence embeddings",
    },
];

/// A named configuration for training from scratch.
#[derive(Debug, Clone, Copy)]
pub struct PresetInfo {
    pub name: &'static str,
    pub arch: &'static str,
    pub description: &'static str,
    pub config: fn() -> ArchConfig,
}

fn gpt(n_layer: usize, n_head: usize, n_embd: usize, ctx: usize, vocab: usize) -> ArchConfig {
    ArchConfig::Gpt2(GptConfig {
        vocab_size: vocab,
        n_positions: ctx,
        n_embd,
        n_layer,
        n_head,
        ..GptConfig::default()
    })
}

pub const PRESETS: &[PresetInfo] = &[
    PresetInfo {
        name: "gpt-tiny",
        arch: "gpt2",
        description: "2 layers, 2 heads, d=128, ctx 64: the quick CPU preset",
        config: || gpt(2, 2, 128, 64, 4096),
    },
    PresetInfo {
        name: "gpt-small",
        arch: "gpt2",
        description: "4 layers, 4 heads, d=128, ctx 128",
        config: || gpt(4, 4, 128, 128, 8192),
    },
    PresetInfo {
        name: "gpt-medium",
        arch: "gpt2",
        description: "6 layers, 8 heads, d=256, ctx 128",
        config: || gpt(6, 8, 256, 128, 8192),
    },
    PresetInfo {
        name: "gpt2",
        arch: "gpt2",
        description: "GPT-2 124M: 12 layers, 12 heads, d=768, ctx 1024, vocab 50257",
        config: || gpt(12, 12, 768, 1024, 50257),
    },
    PresetInfo {
        name: "llama-tiny",
        arch: "llama",
        description: "4 layers, 4 heads (2 KV heads), d=128, SwiGLU 384, ctx 128",
        config: || {
            ArchConfig::Llama(LlamaConfig {
                vocab_size: 8192,
                hidden_size: 128,
                intermediate_size: 384,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                num_key_value_heads: Some(2),
                max_position_embeddings: 128,
                rms_norm_eps: 1e-5,
                ..LlamaConfig::default()
            })
        },
    },
    PresetInfo {
        name: "bert-tiny",
        arch: "bert",
        description: "BERT encoder: 2 layers, 2 heads, d=128, FF 512, ctx 512",
        config: || {
            ArchConfig::Bert(BertConfig {
                hidden_size: 128,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                intermediate_size: 512,
                ..BertConfig::default()
            })
        },
    },
];

/// What a caller may change in a preset. The trainer sets `vocab_size` from its tokenizer.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PresetOverrides {
    pub vocab_size: Option<usize>,
    pub max_positions: Option<usize>,
    /// Sets every dropout probability of the architecture (default 0).
    pub dropout: Option<f32>,
}

pub fn find_preset(name: &str) -> Option<&'static PresetInfo> {
    PRESETS.iter().find(|p| p.name == name)
}

pub fn preset_names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The preset's config with the overrides applied and validated.
pub fn preset_config(name: &str, o: &PresetOverrides) -> Result<ArchConfig> {
    let p = find_preset(name).ok_or_else(|| RegistryError::UnknownModel {
        name: name.to_string(),
        msg: format!("not a preset (presets: {})", preset_names()),
    })?;
    let mut cfg = (p.config)();
    match &mut cfg {
        ArchConfig::Gpt2(c) => {
            c.vocab_size = o.vocab_size.unwrap_or(c.vocab_size);
            c.n_positions = o.max_positions.unwrap_or(c.n_positions);
            if let Some(d) = o.dropout {
                (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) = (d, d, d);
            }
        }
        ArchConfig::Llama(c) => {
            c.vocab_size = o.vocab_size.unwrap_or(c.vocab_size);
            c.max_position_embeddings = o.max_positions.unwrap_or(c.max_position_embeddings);
            c.attention_dropout = o.dropout.unwrap_or(c.attention_dropout);
        }
        ArchConfig::Bert(c) => {
            c.vocab_size = o.vocab_size.unwrap_or(c.vocab_size);
            c.max_position_embeddings = o.max_positions.unwrap_or(c.max_position_embeddings);
            if let Some(d) = o.dropout {
                (c.hidden_dropout_prob, c.attention_probs_dropout_prob) = (d, d);
            }
        }
    }
    cfg.validate()
        .map_err(|msg| RegistryError::Invalid(format!("preset `{name}`: {msg}")))?;
    Ok(cfg)
}

/// Builds a preset with deterministic init from `seed` (HF's init: N(0, initializer_range),
/// residual projections of GPT-2 scaled by 1/sqrt(2·n_layer), norms 1/0, biases 0).
pub fn build_preset(
    name: &str,
    overrides: &PresetOverrides,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<Model> {
    let cfg = preset_config(name, overrides)?;
    build_from_config(cfg, name, device, dtype, seed)
}

/// Builds any config with fresh weights from `seed`.
pub fn build_from_config(
    cfg: ArchConfig,
    origin: &str,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<Model> {
    Model::init(cfg, origin, device, dtype, seed)
}
