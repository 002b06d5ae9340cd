//! Writing llama-family models as GGUF (llama.cpp's format) in f32, f16 or q8_0, through
//! candle's GGUF writer and quantizer: llama.cpp tensor names, its q/k row order, and the
//! metadata [`crate::gguf`] (and llama.cpp) read back.

use crate::config::ArchConfig;
use crate::error::{RegistryError, Result, io_err};
use crate::model::Model;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use std::path::Path;

/// The GGUF weight types codex writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    Q8_0,
}

impl GgufType {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            other => Err(RegistryError::Invalid(format!(
                "GGUF dtype `{other}`: expected f32, f16 or q8_0"
            ))),
        }
    }

    fn ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
        }
    }
}

/// HF name → llama.cpp name (the inverse of the reader's map).
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, leaf) = rest.split_once('.')?;
    let leaf = match leaf {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.bias" => "attn_output.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{i}.{leaf}"))
}

/// llama.cpp's q/k row order: its rope rotates adjacent pairs, HF's rotates halves
/// (`convert_hf_to_gguf.py`'s `permute`).
fn permute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    Ok(w.reshape((heads, 2, hd / 2, inp))?
        .transpose(1, 2)?
        .reshape((out, inp))?
        .contiguous()?)
}

/// Writes `model`'s base weights (llama family; merge a LoRA adapter first) to `path` as GGUF. Norms and biases
/// stay f32 (as llama.cpp keeps them); q8_0 needs rows that are whole blocks of 32.
pub fn write_gguf(model: &Model, path: &Path, ty: GgufType, name: &str) -> Result<()> {
    write_gguf_with(model, path, ty, name, None)
}

/// [`write_gguf`] with the tokenizer's `tokenizer.ggml.*` metadata, so that llama.cpp and
/// `codex generate FILE.gguf` need no separate tokenizer. Its token count must equal the
/// model's vocabulary.
pub fn write_gguf_with(
    model: &Model,
    path: &Path,
    ty: GgufType,
    name: &str,
    tokenizer: Option<&crate::gguf::GgufTokenizer>,
) -> Result<()> {
    if let Some(t) = tokenizer
        && t.tokens.len() != model.vocab_size()
    {
        return Err(RegistryError::Invalid(format!(
            "GGUF export: the tokenizer has {} tokens, the model's vocabulary {}",
            t.tokens.len(),
            model.vocab_size()
        )));
    }
    let ArchConfig::Llama(c) = model.config() else {
        return Err(RegistryError::Invalid(format!(
            "GGUF export supports the llama family (llama, qwen2); this model is {}",
            model.arch_name()
        )));
    };
    let arch = c.model_type.as_str();
    if arch != "llama" && arch != "qwen2" {
        return Err(RegistryError::Invalid(format!(
            "GGUF export: model_type `{arch}` is not supported (llama, qwen2)"
        )));
    }
    let mut tensors: Vec<(String, QTensor)> = vec![];
    for (hf, t) in model.base_state() {
        let Some(g) = gguf_name(&hf) else {
            return Err(RegistryError::Invalid(format!(
                "GGUF export: no llama.cpp name for tensor `{hf}`"
            )));
        };
        let mut t = t.to_dtype(DType::F32)?.contiguous()?;
        if arch == "llama" {
            if hf.ends_with("q_proj.weight") {
                t = permute(&t, c.num_attention_heads)?;
            } else if hf.ends_with("k_proj.weight") {
                t = permute(&t, c.kv_heads())?;
            }
        }
        let dt = if t.rank() == 1 {
            GgmlDType::F32
        } else {
            ty.ggml()
        };
        let last = t.dims().last().copied().unwrap_or(0);
        if dt == GgmlDType::Q8_0 && last % 32 != 0 {
            return Err(RegistryError::Invalid(format!(
                "q8_0 needs rows that are multiples of 32; `{hf}` has rows of {last}"
            )));
        }
        tensors.push((g, QTensor::quantize(&t, dt)?));
    }
    let u32v = |v: usize| Value::U32(v as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        ("general.alignment".into(), Value::U32(32)),
        (key("context_length"), u32v(c.max_position_embeddings)),
        (key("embedding_length"), u32v(c.hidden_size)),
        (key("block_count"), u32v(c.num_hidden_layers)),
        (key("feed_forward_length"), u32v(c.intermediate_size)),
        (key("attention.head_count"), u32v(c.num_attention_heads)),
        (key("attention.head_count_kv"), u32v(c.kv_heads())),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (key("rope.freq_base"), Value::F32(c.rope_theta as f32)),
        (key("rope.dimension_count"), u32v(c.head_dim())),
    ];
    meta.extend(tokenizer.map(|t| t.metadata()).unwrap_or_default());
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut buf, &meta_refs, &t_refs)?;
    codex_core::fsutil::atomic_write(path, buf.get_ref()).map_err(io_err(path))?;
    Ok(())
}
