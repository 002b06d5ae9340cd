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

/// What a caller may change in a preset (`model.overrides`): the generic `vocab_size`,
/// `max_positions` and `dropout`, and each architecture's own sizes under its HF key names.
/// The trainer sets `vocab_size` from its tokenizer.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PresetOverrides {
    pub vocab_size: Option<usize>,
    pub max_positions: Option<usize>,
    /// Sets every dropout probability of the architecture (default 0).
    pub dropout: Option<f32>,
    pub tie_word_embeddings: Option<bool>,
    // GPT-2 (`GPT2Config` keys).
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_embd: Option<usize>,
    pub n_positions: Option<usize>,
    pub n_inner: Option<usize>,
    /// GPT-2 always has biases (HF's `GPT2Config` has no switch); only `true` is accepted.
    pub bias: Option<bool>,
    pub activation_function: Option<String>,
    pub layer_norm_epsilon: Option<f64>,
    // Llama (`LlamaConfig` keys).
    pub num_hidden_layers: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub rope_theta: Option<f64>,
    pub rms_norm_eps: Option<f64>,
}

/// The override keys each architecture takes, for messages and `codex config show`.
pub const GPT2_KEYS: &[&str] = &[
    "vocab_size",
    "max_positions",
    "dropout",
    "tie_word_embeddings",
    "n_layer",
    "n_head",
    "n_embd",
    "n_positions",
    "n_inner",
    "bias",
    "activation_function",
    "layer_norm_epsilon",
];
pub const LLAMA_KEYS: &[&str] = &[
    "vocab_size",
    "max_positions",
    "dropout",
    "tie_word_embeddings",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
];

impl PresetOverrides {
    /// `(key, set)` for every architecture-specific key.
    fn set_keys(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("n_layer", self.n_layer.is_some()),
            ("n_head", self.n_head.is_some()),
            ("n_embd", self.n_embd.is_some()),
            ("n_positions", self.n_positions.is_some()),
            ("n_inner", self.n_inner.is_some()),
            ("bias", self.bias.is_some()),
            ("activation_function", self.activation_function.is_some()),
            ("layer_norm_epsilon", self.layer_norm_epsilon.is_some()),
            ("num_hidden_layers", self.num_hidden_layers.is_some()),
            ("hidden_size", self.hidden_size.is_some()),
            ("intermediate_size", self.intermediate_size.is_some()),
            ("num_attention_heads", self.num_attention_heads.is_some()),
            ("num_key_value_heads", self.num_key_value_heads.is_some()),
            ("head_dim", self.head_dim.is_some()),
            (
                "max_position_embeddings",
                self.max_position_embeddings.is_some(),
            ),
            ("rope_theta", self.rope_theta.is_some()),
            ("rms_norm_eps", self.rms_norm_eps.is_some()),
        ]
    }

    /// Applies the overrides to `cfg` and checks the result as a whole (heads divide the
    /// width, kv heads divide the heads, …), returning every problem, not the first.
    pub fn apply(&self, cfg: &mut ArchConfig) -> std::result::Result<(), Vec<String>> {
        let mut bad = vec![];
        let arch = cfg.arch_name();
        let keys: &[&str] = match cfg {
            ArchConfig::Gpt2(_) => GPT2_KEYS,
            ArchConfig::Llama(_) => LLAMA_KEYS,
            ArchConfig::Bert(_) => &["vocab_size", "max_positions", "dropout"],
        };
        for (k, set) in self.set_keys() {
            if set && !keys.contains(&k) {
                bad.push(format!(
                    "`{k}` is not a {arch} key (the {arch} keys: {})",
                    keys.join(", ")
                ));
            }
        }
        if self.tie_word_embeddings.is_some() && matches!(cfg, ArchConfig::Bert(_)) {
            bad.push("`tie_word_embeddings` is not a bert key".into());
        }
        let mut positions = |name: &str, v: Option<usize>| {
            if let (Some(m), Some(v)) = (self.max_positions, v)
                && m != v
            {
                bad.push(format!("`max_positions` {m} and `{name}` {v} disagree"));
            }
            v.or(self.max_positions)
        };
        match cfg {
            ArchConfig::Gpt2(c) => {
                let pos = positions("n_positions", self.n_positions);
                c.vocab_size = self.vocab_size.unwrap_or(c.vocab_size);
                c.n_positions = pos.unwrap_or(c.n_positions);
                if let Some(d) = self.dropout {
                    (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) = (d, d, d);
                }
                c.tie_word_embeddings = self.tie_word_embeddings.unwrap_or(c.tie_word_embeddings);
                c.n_layer = self.n_layer.unwrap_or(c.n_layer);
                c.n_head = self.n_head.unwrap_or(c.n_head);
                c.n_embd = self.n_embd.unwrap_or(c.n_embd);
                c.n_inner = self.n_inner.or(c.n_inner);
                if self.bias == Some(false) {
                    bad.push(
                        "`bias = false` is not supported: GPT-2 (and HF's GPT2Config) always has \
                         biases"
                            .into(),
                    );
                }
                if let Some(a) = &self.activation_function {
                    c.activation_function = a.clone();
                }
                c.layer_norm_epsilon = self.layer_norm_epsilon.unwrap_or(c.layer_norm_epsilon);
                for (k, v) in [
                    ("n_layer", c.n_layer),
                    ("n_head", c.n_head),
                    ("n_embd", c.n_embd),
                    ("n_positions", c.n_positions),
                    ("vocab_size", c.vocab_size),
                    ("n_inner", c.n_inner.unwrap_or(1)),
                ] {
                    if v == 0 {
                        bad.push(format!("`{k}` must be > 0"));
                    }
                }
                if c.n_head > 0 && c.n_embd % c.n_head != 0 {
                    bad.push(format!(
                        "`n_embd` ({}) must be a multiple of `n_head` ({})",
                        c.n_embd, c.n_head
                    ));
                }
                if !(c.layer_norm_epsilon > 0.0 && c.layer_norm_epsilon.is_finite()) {
                    bad.push(format!(
                        "`layer_norm_epsilon` must be > 0, got {}",
                        c.layer_norm_epsilon
                    ));
                }
            }
            ArchConfig::Llama(c) => {
                let pos = positions("max_position_embeddings", self.max_position_embeddings);
                c.vocab_size = self.vocab_size.unwrap_or(c.vocab_size);
                c.max_position_embeddings = pos.unwrap_or(c.max_position_embeddings);
                c.attention_dropout = self.dropout.unwrap_or(c.attention_dropout);
                c.tie_word_embeddings = self.tie_word_embeddings.unwrap_or(c.tie_word_embeddings);
                c.num_hidden_layers = self.num_hidden_layers.unwrap_or(c.num_hidden_layers);
                c.hidden_size = self.hidden_size.unwrap_or(c.hidden_size);
                c.intermediate_size = self.intermediate_size.unwrap_or(c.intermediate_size);
                if let Some(h) = self.num_attention_heads {
                    c.num_attention_heads = h;
                    // Changing the heads alone keeps full multi-head attention unless the kv
                    // heads are given too.
                    if self.num_key_value_heads.is_none() {
                        c.num_key_value_heads = None;
                    }
                }
                c.num_key_value_heads = self.num_key_value_heads.or(c.num_key_value_heads);
                c.head_dim = self.head_dim.or(c.head_dim);
                c.rope_theta = self.rope_theta.unwrap_or(c.rope_theta);
                c.rms_norm_eps = self.rms_norm_eps.unwrap_or(c.rms_norm_eps);
                for (k, v) in [
                    ("num_hidden_layers", c.num_hidden_layers),
                    ("hidden_size", c.hidden_size),
                    ("intermediate_size", c.intermediate_size),
                    ("num_attention_heads", c.num_attention_heads),
                    ("num_key_value_heads", c.kv_heads()),
                    ("max_position_embeddings", c.max_position_embeddings),
                    ("vocab_size", c.vocab_size),
                ] {
                    if v == 0 {
                        bad.push(format!("`{k}` must be > 0"));
                    }
                }
                let heads = c.num_attention_heads;
                if c.head_dim.is_none() && heads > 0 && c.hidden_size % heads != 0 {
                    bad.push(format!(
                        "`hidden_size` ({}) must be a multiple of `num_attention_heads` ({heads}) \
                         (or set `head_dim`)",
                        c.hidden_size
                    ));
                }
                if c.kv_heads() > 0 && heads % c.kv_heads() != 0 {
                    bad.push(format!(
                        "`num_attention_heads` ({heads}) must be a multiple of \
                         `num_key_value_heads` ({})",
                        c.kv_heads()
                    ));
                }
                if heads > 0 && c.head_dim() % 2 != 0 {
                    bad.push(format!("the head dim {} must be even (RoPE)", c.head_dim()));
                }
                for (k, v) in [
                    ("rope_theta", c.rope_theta),
                    ("rms_norm_eps", c.rms_norm_eps),
                ] {
                    if !(v > 0.0 && v.is_finite()) {
                        bad.push(format!("`{k}` must be > 0, got {v}"));
                    }
                }
            }
            ArchConfig::Bert(c) => {
                let pos = positions("max_positions", None);
                c.vocab_size = self.vocab_size.unwrap_or(c.vocab_size);
                c.max_position_embeddings = pos.unwrap_or(c.max_position_embeddings);
                if let Some(d) = self.dropout {
                    (c.hidden_dropout_prob, c.attention_probs_dropout_prob) = (d, d);
                }
            }
        }
        if let Some(d) = self.dropout
            && !(0.0..1.0).contains(&d)
        {
            bad.push(format!("`dropout` must be in [0, 1), got {d}"));
        }
        if bad.is_empty() {
            // The bounds and anything else the forward pass relies on.
            if let Err(e) = cfg.validate() {
                bad.push(e);
            }
        }
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }
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
    o.apply(&mut cfg).map_err(|bad| {
        RegistryError::Invalid(format!("preset `{name}` overrides: {}", bad.join("; ")))
    })?;
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
