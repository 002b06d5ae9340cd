//! Architecture configs, read from and written to HF `config.json` with HF's key names, and
//! the LoRA config of PEFT's `adapter_config.json`.

use crate::error::{RegistryError, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Upper bounds on config sizes: far above any published model (vocab ≤ 262k, hidden ≤ 25k,
/// MLP ≤ 74k, layers ≤ 160), low enough that every product of them fits in a u64 and no
/// single count from a hostile config.json sizes an allocation on its own.
pub mod limits {
    pub const VOCAB: usize = 1 << 24;
    pub const POSITIONS: usize = 1 << 24;
    pub const LAYERS: usize = 1 << 12;
    pub const HIDDEN: usize = 1 << 16;
    pub const INTERMEDIATE: usize = 1 << 18;
    pub const HEAD_DIM: usize = 1 << 12;
    pub const TYPE_VOCAB: usize = 1 << 16;
}

/// GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, GELU MLP, tied lm_head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: Option<usize>,
    pub activation_function: String,
    pub layer_norm_epsilon: f64,
    pub initializer_range: f64,
    pub resid_pdrop: f32,
    pub embd_pdrop: f32,
    pub attn_pdrop: f32,
    pub tie_word_embeddings: bool,
}

impl Default for GptConfig {
    fn default() -> Self {
        Self {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            activation_function: "gelu_new".into(),
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
            resid_pdrop: 0.0,
            embd_pdrop: 0.0,
            attn_pdrop: 0.0,
            tie_word_embeddings: true,
        }
    }
}

/// Llama family (`LlamaForCausalLM`, `Qwen2ForCausalLM`): RMSNorm, RoPE, SwiGLU, GQA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Value>,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub initializer_range: f64,
    pub attention_dropout: f32,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            model_type: "llama".into(),
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            initializer_range: 0.02,
            attention_dropout: 0.0,
        }
    }
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
    /// Qwen2 always has q/k/v biases; Llama has them on all four projections when
    /// `attention_bias` is set.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == "qwen2"
    }
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.model_type != "qwen2"
    }
}

/// BERT encoder (`BertModel`; covers MiniLM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub initializer_range: f64,
    pub hidden_dropout_prob: f32,
    pub attention_probs_dropout_prob: f32,
    pub position_embedding_type: String,
}

impl Default for BertConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            initializer_range: 0.02,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            position_embedding_type: "absolute".into(),
        }
    }
}

/// One model's architecture and hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchConfig {
    Gpt2(GptConfig),
    Llama(LlamaConfig),
    Bert(BertConfig),
}

impl ArchConfig {
    /// The registry name of the architecture (`gpt2`, `llama`, `bert`).
    pub fn arch_name(&self) -> &'static str {
        match self {
            ArchConfig::Gpt2(_) => "gpt2",
            ArchConfig::Llama(_) => "llama",
            ArchConfig::Bert(_) => "bert",
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.vocab_size,
            ArchConfig::Llama(c) => c.vocab_size,
            ArchConfig::Bert(c) => c.vocab_size,
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_positions,
            ArchConfig::Llama(c) => c.max_position_embeddings,
            ArchConfig::Bert(c) => c.max_position_embeddings,
        }
    }

    /// Parses an HF `config.json` value; `origin` names the file in errors.
    pub fn from_hf_json(value: &Value, origin: &Path) -> Result<Self> {
        let bad = |msg: String| RegistryError::Config {
            path: origin.to_path_buf(),
            msg,
        };
        let model_type = value
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let parse_err = |e: serde_json::Error| bad(e.to_string());
        let cfg = match model_type {
            "gpt2" => {
                let mut c: GptConfig = serde_json::from_value(value.clone()).map_err(parse_err)?;
                // Older GPT-2 configs name the MLP width `n_inner: null` and may lack n_positions.
                if let Some(n) = value.get("n_ctx").and_then(Value::as_u64)
                    && value.get("n_positions").is_none()
                {
                    c.n_positions = n as usize;
                }
                for (key, unsupported) in [
                    ("scale_attn_by_inverse_layer_idx", true),
                    ("reorder_and_upcast_attn", true),
                    ("scale_attn_weights", false),
                ] {
                    if value.get(key).and_then(Value::as_bool) == Some(unsupported) {
                        return Err(bad(format!("`{key}: {unsupported}` is not supported")));
                    }
                }
                ArchConfig::Gpt2(c)
            }
            "llama" | "qwen2" => {
                let mut c: LlamaConfig =
                    serde_json::from_value(value.clone()).map_err(parse_err)?;
                // transformers >= 5 writes `rope_parameters` instead of `rope_theta`.
                if let Some(rp) = value.get("rope_parameters").and_then(Value::as_object) {
                    if let Some(t) = rp.get("rope_theta").and_then(Value::as_f64) {
                        c.rope_theta = t;
                    }
                    let kind = rp
                        .get("rope_type")
                        .and_then(Value::as_str)
                        .unwrap_or("default");
                    if kind != "default" {
                        return Err(bad(format!("rope_type `{kind}` is not supported yet")));
                    }
                }
                if value.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
                    return Err(bad("sliding-window attention is not supported".into()));
                }
                ArchConfig::Llama(c)
            }
            "bert" => ArchConfig::Bert(serde_json::from_value(value.clone()).map_err(parse_err)?),
            "" => return Err(bad("no `model_type` key".into())),
            other => {
                return Err(bad(format!(
                    "model_type `{other}` is not supported (supported: gpt2, llama, qwen2, bert)"
                )));
            }
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Checks the hyper-parameters the forward pass relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let nonzero = |name: &str, v: usize| {
            if v == 0 {
                Err(format!("`{name}` must be > 0"))
            } else {
                Ok(())
            }
        };
        let at_most = |name: &str, v: usize, max: usize| {
            if v > max {
                Err(format!("`{name}` {v} exceeds the supported maximum {max}"))
            } else {
                Ok(())
            }
        };
        match self {
            ArchConfig::Gpt2(c) => {
                at_most("vocab_size", c.vocab_size, limits::VOCAB)?;
                at_most("n_positions", c.n_positions, limits::POSITIONS)?;
                at_most("n_layer", c.n_layer, limits::LAYERS)?;
                at_most("n_embd", c.n_embd, limits::HIDDEN)?;
                at_most("n_inner", c.n_inner.unwrap_or(0), limits::INTERMEDIATE)?;
                nonzero("vocab_size", c.vocab_size)?;
                nonzero("n_positions", c.n_positions)?;
                nonzero("n_layer", c.n_layer)?;
                nonzero("n_head", c.n_head)?;
                if c.n_embd == 0 || c.n_embd % c.n_head != 0 {
                    return Err(format!(
                        "`n_embd` ({}) must be a positive multiple of `n_head` ({})",
                        c.n_embd, c.n_head
                    ));
                }
                if !matches!(
                    c.activation_function.as_str(),
                    "gelu_new" | "gelu_pytorch_tanh" | "gelu" | "gelu_fast"
                ) {
                    return Err(format!(
                        "`activation_function` `{}` is not supported (gelu_new, gelu)",
                        c.activation_function
                    ));
                }
                for (n, p) in [
                    ("resid_pdrop", c.resid_pdrop),
                    ("embd_pdrop", c.embd_pdrop),
                    ("attn_pdrop", c.attn_pdrop),
                ] {
                    if !(0.0..1.0).contains(&p) {
                        return Err(format!("`{n}` must be in [0, 1), got {p}"));
                    }
                }
            }
            ArchConfig::Llama(c) => {
                at_most("vocab_size", c.vocab_size, limits::VOCAB)?;
                at_most(
                    "max_position_embeddings",
                    c.max_position_embeddings,
                    limits::POSITIONS,
                )?;
                at_most("num_hidden_layers", c.num_hidden_layers, limits::LAYERS)?;
                at_most("hidden_size", c.hidden_size, limits::HIDDEN)?;
                at_most(
                    "intermediate_size",
                    c.intermediate_size,
                    limits::INTERMEDIATE,
                )?;
                at_most("num_attention_heads", c.num_attention_heads, limits::HIDDEN)?;
                at_most("head_dim", c.head_dim(), limits::HEAD_DIM)?;
                nonzero("hidden_size", c.hidden_size)?;
                nonzero("vocab_size", c.vocab_size)?;
                nonzero("num_hidden_layers", c.num_hidden_layers)?;
                nonzero("num_attention_heads", c.num_attention_heads)?;
                nonzero("intermediate_size", c.intermediate_size)?;
                nonzero("max_position_embeddings", c.max_position_embeddings)?;
                if c.num_attention_heads % c.kv_heads().max(1) != 0 || c.kv_heads() == 0 {
                    return Err(format!(
                        "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})",
                        c.num_attention_heads,
                        c.kv_heads()
                    ));
                }
                if c.head_dim() == 0 || c.head_dim() % 2 != 0 {
                    return Err(format!("head dim {} must be even and > 0", c.head_dim()));
                }
                if let Some(s) = &c.rope_scaling
                    && !s.is_null()
                {
                    return Err(format!("`rope_scaling` {s} is not supported yet"));
                }
                if !(0.0..1.0).contains(&c.attention_dropout) {
                    return Err(format!(
                        "`attention_dropout` must be in [0, 1), got {}",
                        c.attention_dropout
                    ));
                }
            }
            ArchConfig::Bert(c) => {
                at_most("vocab_size", c.vocab_size, limits::VOCAB)?;
                at_most(
                    "max_position_embeddings",
                    c.max_position_embeddings,
                    limits::POSITIONS,
                )?;
                at_most("num_hidden_layers", c.num_hidden_layers, limits::LAYERS)?;
                at_most("hidden_size", c.hidden_size, limits::HIDDEN)?;
                at_most(
                    "intermediate_size",
                    c.intermediate_size,
                    limits::INTERMEDIATE,
                )?;
                at_most("type_vocab_size", c.type_vocab_size, limits::TYPE_VOCAB)?;
                nonzero("vocab_size", c.vocab_size)?;
                nonzero("num_hidden_layers", c.num_hidden_layers)?;
                nonzero("num_attention_heads", c.num_attention_heads)?;
                nonzero("type_vocab_size", c.type_vocab_size)?;
                if c.hidden_size == 0 || c.hidden_size % c.num_attention_heads != 0 {
                    return Err(format!(
                        "`hidden_size` ({}) must be a positive multiple of `num_attention_heads` ({})",
                        c.hidden_size, c.num_attention_heads
                    ));
                }
                if !matches!(
                    c.hidden_act.as_str(),
                    "gelu" | "gelu_new" | "gelu_pytorch_tanh"
                ) {
                    return Err(format!("`hidden_act` `{}` is not supported", c.hidden_act));
                }
                if c.position_embedding_type != "absolute" {
                    return Err(format!(
                        "`position_embedding_type` `{}` is not supported (absolute)",
                        c.position_embedding_type
                    ));
                }
            }
        }
        Ok(())
    }

    /// The number of parameters this config has (without a LoRA adapter); saturates at
    /// `usize::MAX` for an unvalidated config whose product overflows.
    pub fn param_count(&self) -> usize {
        self.checked_param_count()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX)
    }

    /// [`Self::param_count`] in checked arithmetic: `None` when it overflows a u64 (only an
    /// unvalidated config can; the [`limits`] keep every validated one far below).
    pub fn checked_param_count(&self) -> Option<u64> {
        // Sums of products of config values: fold them as checked u64 terms.
        fn sum(terms: &[&[usize]]) -> Option<u64> {
            terms.iter().try_fold(0u64, |acc, factors| {
                let t = factors
                    .iter()
                    .try_fold(1u64, |p, &f| p.checked_mul(f as u64))?;
                acc.checked_add(t)
            })
        }
        match self {
            ArchConfig::Gpt2(c) => {
                let d = c.n_embd;
                let inner = c.n_inner.unwrap_or(d.checked_mul(4)?);
                let block = sum(&[
                    &[4, d],
                    &[3, d, d],
                    &[3, d],
                    &[d, d],
                    &[d],
                    &[d, inner],
                    &[inner],
                    &[inner, d],
                    &[d],
                ])?;
                let heads = if c.tie_word_embeddings { 1 } else { 2 };
                sum(&[&[heads, c.vocab_size, d], &[c.n_positions, d], &[2, d]])?
                    .checked_add(block.checked_mul(c.n_layer as u64)?)
            }
            ArchConfig::Llama(c) => {
                let (d, hd, ff) = (c.hidden_size, c.head_dim(), c.intermediate_size);
                let q = c.num_attention_heads.checked_mul(hd)?;
                let kv = c.kv_heads().checked_mul(hd)?;
                let qkv_b = if c.qkv_bias() { 1 } else { 0 };
                let o_b = usize::from(c.o_bias());
                let mlp_b = usize::from(c.mlp_bias);
                let layer = sum(&[
                    &[d, q],
                    &[2, d, kv],
                    &[qkv_b, q],
                    &[qkv_b, 2, kv],
                    &[q, d],
                    &[o_b, d],
                    &[3, d, ff],
                    &[mlp_b, 2, ff],
                    &[mlp_b, d],
                    &[2, d],
                ])?;
                let heads = if c.tie_word_embeddings { 1 } else { 2 };
                sum(&[&[heads, c.vocab_size, d], &[d]])?
                    .checked_add(layer.checked_mul(c.num_hidden_layers as u64)?)
            }
            ArchConfig::Bert(c) => {
                let (d, ff) = (c.hidden_size, c.intermediate_size);
                let layer = sum(&[
                    &[4, d, d],
                    &[4, d],
                    &[4, d],
                    &[d, ff],
                    &[ff],
                    &[ff, d],
                    &[d],
                ])?;
                sum(&[
                    &[c.vocab_size, d],
                    &[c.max_position_embeddings, d],
                    &[c.type_vocab_size, d],
                    &[2, d],
                ])?
                .checked_add(layer.checked_mul(c.num_hidden_layers as u64)?)
            }
        }
    }

    /// The HF `config.json` for this config.
    pub fn to_hf_json(&self) -> Value {
        let (v, arch, model_type) = match self {
            ArchConfig::Gpt2(c) => (serde_json::to_value(c), "GPT2LMHeadModel", "gpt2"),
            ArchConfig::Llama(c) => {
                let arch = if c.model_type == "qwen2" {
                    "Qwen2ForCausalLM"
                } else {
                    "LlamaForCausalLM"
                };
                (serde_json::to_value(c), arch, c.model_type.as_str())
            }
            ArchConfig::Bert(c) => (serde_json::to_value(c), "BertModel", "bert"),
        };
        let mut v = v.unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.insert("architectures".into(), Value::from(vec![arch]));
            map.insert("model_type".into(), Value::from(model_type));
            if let ArchConfig::Gpt2(c) = self {
                map.insert("n_ctx".into(), Value::from(c.n_positions));
            }
        }
        v
    }
}

/// A LoRA adapter's hyper-parameters, as PEFT's `adapter_config.json` holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    /// Module names matched as PEFT does (the full path, or its last components); empty means
    /// the architecture's PEFT default; `["all-linear"]` means every linear layer.
    pub target_modules: Vec<String>,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec![],
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// The numeric checks (target modules are checked against a model in [`crate::apply_lora`]).
    pub fn validate(&self) -> Result<()> {
        let mut bad = vec![];
        if self.r == 0 {
            bad.push("r must be > 0".to_string());
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            bad.push(format!("alpha must be > 0, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bad.push(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(RegistryError::Lora(bad.join("; ")))
        }
    }

    /// PEFT's default targets for an architecture.
    pub fn default_targets(arch: &str) -> Vec<String> {
        let t: &[&str] = match arch {
            "gpt2" => &["c_attn"],
            "bert" => &["query", "value"],
            _ => &["q_proj", "v_proj"],
        };
        t.iter().map(|s| s.to_string()).collect()
    }

    /// Reads a PEFT `adapter_config.json`.
    pub fn from_peft_json(v: &Value, path: &Path) -> Result<Self> {
        let bad = |msg: String| RegistryError::Lora(format!("{}: {msg}", path.display()));
        if let Some(t) = v.get("peft_type").and_then(Value::as_str)
            && t != "LORA"
        {
            return Err(bad(format!("peft_type `{t}` is not LORA")));
        }
        for key in ["use_dora"] {
            if v.get(key).and_then(Value::as_bool) == Some(true) {
                return Err(bad(format!("`{key}: true` is not supported")));
            }
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if v.get(key)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(bad(format!("a non-empty `{key}` is not supported")));
            }
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("no integer `r`".into()))?;
        let alpha = v
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("no `lora_alpha`".into()))?;
        let target_modules = match v.get("target_modules") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            _ => return Err(bad("no `target_modules` list".into())),
        };
        let cfg = Self {
            r: r as usize,
            alpha,
            dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32,
            target_modules,
            use_rslora: v
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }
}
