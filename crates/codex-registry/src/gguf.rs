//! GGUF (llama.cpp) files for the Llama family, dequantized to f32 and renamed to HF names.

use crate::config::{ArchConfig, LlamaConfig};
use crate::error::{RegistryError, Result, io_err};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

fn meta_u64(c: &Content, key: &str) -> Option<u64> {
    let v = c.metadata.get(key)?;
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

fn meta_f64(c: &Content, key: &str) -> Option<f64> {
    match c.metadata.get(key)? {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        _ => None,
    }
}

/// llama.cpp name → HF name (`None`: not a weight we keep).
fn hf_name(name: &str) -> Option<String> {
    let map = |s: &str| -> Option<&'static str> {
        Some(match s {
            "attn_norm.weight" => "input_layernorm.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            "attn_q.weight" => "self_attn.q_proj.weight",
            "attn_k.weight" => "self_attn.k_proj.weight",
            "attn_v.weight" => "self_attn.v_proj.weight",
            "attn_output.weight" => "self_attn.o_proj.weight",
            "attn_q.bias" => "self_attn.q_proj.bias",
            "attn_k.bias" => "self_attn.k_proj.bias",
            "attn_v.bias" => "self_attn.v_proj.bias",
            "attn_output.bias" => "self_attn.o_proj.bias",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            _ => return None,
        })
    };
    match name {
        "token_embd.weight" => Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => Some("model.norm.weight".into()),
        "output.weight" => Some("lm_head.weight".into()),
        _ => {
            let rest = name.strip_prefix("blk.")?;
            let (i, leaf) = rest.split_once('.')?;
            let i: usize = i.parse().ok()?;
            Some(format!("model.layers.{i}.{}", map(leaf)?))
        }
    }
}

/// Undoes llama.cpp's q/k row permutation (its rope pairs adjacent dims; HF's pairs halves).
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    Ok(w.reshape((heads, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .reshape((out, inp))?)
}

/// The Llama config from a GGUF file's metadata and its weights (f32 on the CPU, HF names).
pub(crate) fn read_gguf(path: &Path) -> Result<(ArchConfig, HashMap<String, Tensor>)> {
    let bad = |msg: String| RegistryError::Gguf {
        path: path.to_path_buf(),
        msg,
    };
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let content = Content::read(&mut f).map_err(|e| bad(e.to_string()))?;
    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(bad("no `general.architecture`".into())),
    };
    if arch != "llama" && arch != "qwen2" {
        return Err(bad(format!(
            "architecture `{arch}` is not supported (llama, qwen2)"
        )));
    }
    let need = |k: &str| {
        meta_u64(&content, &format!("{arch}.{k}"))
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("missing metadata `{arch}.{k}`")))
    };
    let heads = need("attention.head_count")?;
    let kv_heads = meta_u64(&content, &format!("{arch}.attention.head_count_kv"))
        .map(|v| v as usize)
        .unwrap_or(heads);
    let hidden = need("embedding_length")?;
    // Check every tensor lies inside the file before reading (a truncated file would fail
    // mid-read otherwise).
    for (name, info) in &content.tensor_infos {
        let n = info.shape.elem_count();
        let bs = info.ggml_dtype.block_size();
        let bytes = (n / bs.max(1)) as u64 * info.ggml_dtype.type_size() as u64;
        let end = content.tensor_data_offset + info.offset + bytes;
        if end > file_len {
            return Err(bad(format!(
                "tensor `{name}` ends at byte {end} but the file has {file_len} bytes (truncated?)"
            )));
        }
    }
    let mut tensors = HashMap::new();
    let mut vocab = None;
    for name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(name) else {
            tracing::debug!("{}: skipping GGUF tensor {name}", path.display());
            continue;
        };
        let q = content
            .tensor(&mut f, name, &Device::Cpu)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let mut t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        if arch == "llama" {
            if hf.ends_with("q_proj.weight") {
                t = unpermute(&t, heads)?;
            } else if hf.ends_with("k_proj.weight") {
                t = unpermute(&t, kv_heads)?;
            }
        }
        if hf == "model.embed_tokens.weight" {
            vocab = Some(t.dim(0)?);
        }
        tensors.insert(hf, t);
    }
    let vocab = vocab.ok_or_else(|| bad("no `token_embd.weight` tensor".into()))?;
    let cfg = LlamaConfig {
        model_type: arch.clone(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: need("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        head_dim: meta_u64(&content, &format!("{arch}.rope.dimension_count"))
            .map(|v| v as usize)
            .filter(|&d| d != hidden / heads.max(1)),
        max_position_embeddings: need("context_length")?,
        rms_norm_eps: meta_f64(
            &content,
            &format!("{arch}.attention.layer_norm_rms_epsilon"),
        )
        .unwrap_or(1e-6),
        rope_theta: meta_f64(&content, &format!("{arch}.rope.freq_base")).unwrap_or(10000.0),
        tie_word_embeddings: !tensors.contains_key("lm_head.weight"),
        ..LlamaConfig::default()
    };
    Ok((ArchConfig::Llama(cfg), tensors))
}
