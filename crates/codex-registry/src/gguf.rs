//! GGUF (llama.cpp) files for the Llama family, dequantized to f32 and renamed to HF names.

use crate::config::{ArchConfig, LlamaConfig};
use crate::error::{RegistryError, Result, io_err};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
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

/// `general.alignment` of a GGUF stream, found by walking its metadata (`None` when absent or
/// when the walk fails: `Content::read` then reports the malformed header itself). Needed
/// because candle divides by it unchecked, so 0 panics.
fn alignment<R: Read + Seek>(r: &mut R) -> Option<u64> {
    fn u32_<R: Read>(r: &mut R) -> Option<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }
    fn u64_<R: Read>(r: &mut R) -> Option<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
    fn len<R: Read>(r: &mut R, v1: bool) -> Option<u64> {
        if v1 { u32_(r).map(u64::from) } else { u64_(r) }
    }
    fn skip<R: Seek>(r: &mut R, n: u64) -> Option<()> {
        r.seek(SeekFrom::Current(i64::try_from(n).ok()?))
            .ok()
            .map(|_| ())
    }
    /// Skips a value; returns its integer value when it is one.
    fn value<R: Read + Seek>(r: &mut R, ty: u32, v1: bool, depth: u32) -> Option<Option<u64>> {
        Some(match ty {
            0 | 1 | 7 => {
                let mut b = [0u8; 1];
                r.read_exact(&mut b).ok()?;
                (ty == 0).then_some(b[0] as u64)
            }
            2 | 3 => {
                let mut b = [0u8; 2];
                r.read_exact(&mut b).ok()?;
                (ty == 2).then_some(u16::from_le_bytes(b) as u64)
            }
            4 => Some(u32_(r)? as u64),
            5 | 6 => {
                u32_(r)?;
                None
            }
            10 => Some(u64_(r)?),
            11 | 12 => {
                u64_(r)?;
                None
            }
            8 => {
                let n = len(r, v1)?;
                skip(r, n)?;
                None
            }
            9 if depth < 8 => {
                let et = u32_(r)?;
                let n = len(r, v1)?;
                let fixed = match et {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match fixed {
                    Some(size) => skip(r, n.checked_mul(size)?)?,
                    None => {
                        // Each element takes at least one byte: a count past the end fails
                        // on the first read that runs out.
                        for _ in 0..n {
                            value(r, et, v1, depth + 1)?;
                        }
                    }
                }
                None
            }
            _ => return None,
        })
    }
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).ok()?;
    if &magic != b"GGUF" {
        return None;
    }
    let v1 = u32_(r)? == 1;
    len(r, v1)?; // tensor count
    let kv = len(r, v1)?;
    for _ in 0..kv {
        let klen = len(r, v1)?;
        if klen > 4096 {
            return None;
        }
        let mut key = vec![0u8; klen as usize];
        r.read_exact(&mut key).ok()?;
        let ty = u32_(r)?;
        let v = value(r, ty, v1, 0)?;
        if key == b"general.alignment" {
            return v;
        }
    }
    None
}

/// Reads a GGUF header and checks that every tensor's data lies inside the stream, in checked
/// arithmetic (shapes and offsets come from the file). Reads no tensor data.
pub fn read_gguf_header<R: Read + Seek>(r: &mut R) -> std::result::Result<Content, String> {
    let len = r.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    if alignment(r) == Some(0) {
        return Err("`general.alignment` is 0".into());
    }
    r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let content = Content::read(r).map_err(|e| e.to_string())?;
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let elements = dims
            .iter()
            .try_fold(1u64, |p, &d| p.checked_mul(d as u64))
            .ok_or_else(|| format!("tensor `{name}`: shape {dims:?} overflows"))?;
        let bs = info.ggml_dtype.block_size() as u64;
        if elements % bs != 0 {
            return Err(format!(
                "tensor `{name}`: {elements} elements are not whole blocks of {bs} ({:?})",
                info.ggml_dtype
            ));
        }
        let end = (elements / bs)
            .checked_mul(info.ggml_dtype.type_size() as u64)
            .and_then(|b| b.checked_add(info.offset))
            .and_then(|b| b.checked_add(content.tensor_data_offset));
        match end {
            Some(end) if end <= len => {}
            _ => {
                return Err(format!(
                    "tensor `{name}` (offset {}, shape {dims:?}, {:?}) ends past the {len}-byte \
                     file (truncated?)",
                    info.offset, info.ggml_dtype
                ));
            }
        }
    }
    Ok(content)
}

/// The Llama config from a GGUF file's metadata and its weights (f32 on the CPU, HF names).
pub(crate) fn read_gguf(path: &Path) -> Result<(ArchConfig, HashMap<String, Tensor>)> {
    let bad = |msg: String| RegistryError::Gguf {
        path: path.to_path_buf(),
        msg,
    };
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    if !f.metadata().map_err(io_err(path))?.is_file() {
        return Err(bad("not a regular file".into()));
    }
    // Buffered: the header walk reads a few bytes at a time.
    let mut f = std::io::BufReader::new(f);
    let content = read_gguf_header(&mut f).map_err(bad)?;
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
    // unpermute divides by them.
    if heads == 0 || kv_heads == 0 {
        return Err(bad(format!(
            "head counts must be > 0 (head_count {heads}, head_count_kv {kv_heads})"
        )));
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

/// A byte-level BPE tokenizer as GGUF metadata (`tokenizer.ggml.*`, llama.cpp's `gpt2` model):
/// the tokens in id order (the byte-level strings of `tokenizer.json`'s vocabulary), their
/// types, the merges, the pre-tokenizer's name and the special ids.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model`; codex writes and reads `gpt2` only.
    pub model: String,
    /// `tokenizer.ggml.pre`: llama.cpp's name for the split before BPE, one of
    /// [`PRE_TOKENIZERS`].
    pub pre: String,
    pub tokens: Vec<String>,
    /// llama.cpp's `LLAMA_TOKEN_TYPE_*`: 1 normal, 3 control, 4 user-defined, 5 unused.
    pub token_types: Vec<i32>,
    /// `"left right"`, in rank order.
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// Llama 3's split (llama.cpp `llama-bpe`): case-insensitive contractions, letters with one
/// leading non-letter, numbers in runs of up to three digits.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (llama.cpp `qwen2`): Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The llama.cpp pre-tokenizers (`tokenizer.ggml.pre`) codex reads and writes, each the exact
/// HF pre-tokenizer llama.cpp's split regexes implement (llama.cpp `llama-vocab.cpp`; the names
/// `convert_hf_to_gguf.py` gives the HF tokenizers): `gpt-2` GPT-2's regex; `smollm` (also
/// `starcoder`, `refact`, `codeshell`, one regex list in llama.cpp) every digit alone, then
/// GPT-2's regex; `llama-bpe` and `qwen2` their `Split` regex, then bytes; `default` no split,
/// accepted only without merges (where the split cannot change the ids).
pub const PRE_TOKENIZERS: &[&str] = &[
    "gpt-2",
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "llama-bpe",
    "qwen2",
    "default",
];

fn byte_level(use_regex: bool) -> serde_json::Value {
    serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                       "use_regex": use_regex})
}

fn split_then_bytes(regex: &str) -> serde_json::Value {
    serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
        byte_level(false)]})
}

/// The HF `pre_tokenizer` of a llama.cpp pre-tokenizer name (`None`: not one codex rebuilds).
fn pre_tokenizer_json(name: &str, has_merges: bool) -> Option<serde_json::Value> {
    Some(match name {
        "gpt-2" => byte_level(true),
        "smollm" | "starcoder" | "refact" | "codeshell" => serde_json::json!({
            "type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" => split_then_bytes(LLAMA3_SPLIT),
        "qwen2" => split_then_bytes(QWEN2_SPLIT),
        "default" if !has_merges => byte_level(false),
        _ => return None,
    })
}

/// The llama.cpp name of an HF `pre_tokenizer`, which must be one of [`PRE_TOKENIZERS`]'s exactly
/// (`trim_offsets` aside: it changes offsets, not ids); anything else is refused with the reason.
fn pre_tokenizer_name(
    pre: &serde_json::Value,
    has_merges: bool,
) -> std::result::Result<&'static str, String> {
    // Compare what decides the ids: drop `trim_offsets`, and default `use_regex` to true.
    fn key(v: &serde_json::Value) -> serde_json::Value {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("trim_offsets");
            if o.get("type").and_then(|t| t.as_str()) == Some("ByteLevel") {
                o.entry("use_regex")
                    .or_insert(serde_json::Value::Bool(true));
            }
            if let Some(serde_json::Value::Array(ps)) = o.get_mut("pretokenizers") {
                ps.iter_mut().for_each(|p| *p = key(p));
            }
        }
        v
    }
    if pre["type"] == "ByteLevel" && pre["add_prefix_space"] == true {
        return Err("the ByteLevel pre-tokenizer adds a prefix space".into());
    }
    let want = key(pre);
    PRE_TOKENIZERS
        .iter()
        .find(|name| pre_tokenizer_json(name, has_merges).is_some_and(|j| key(&j) == want))
        .copied()
        .ok_or_else(|| {
            format!(
                "the pre-tokenizer {pre} has no llama.cpp equivalent codex writes ({}); a GGUF \
                 reader could not reproduce its ids",
                PRE_TOKENIZERS.join(", ")
            )
        })
}

/// Token types (llama.cpp's `llama_token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;
/// Most tokens accepted from a tokenizer.json or a GGUF header (sizes allocations).
const MAX_TOKENS: usize = 1 << 22;

impl GgufTokenizer {
    /// From an HF `tokenizer.json` whose model is byte-level BPE (no normalizer, a `ByteLevel`
    /// pre-tokenizer), padded with `[PAD<i>]` tokens of type unused up to `vocab` ids (the
    /// model's embedding rows), as `convert_hf_to_gguf.py` does. Anything else is refused with
    /// the reason: llama.cpp could not reproduce its ids.
    pub fn from_tokenizer_json(
        v: &serde_json::Value,
        vocab: usize,
    ) -> std::result::Result<Self, String> {
        let model = &v["model"];
        if model["type"] != "BPE" {
            return Err(format!(
                "the tokenizer is {}, not byte-level BPE",
                model["type"]
            ));
        }
        if !v["normalizer"].is_null() {
            return Err("the tokenizer has a normalizer (llama.cpp's gpt2 model has none)".into());
        }
        let merges: Vec<String> = match model["merges"].as_array() {
            None => vec![],
            Some(ms) => ms
                .iter()
                .map(|m| match m {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    serde_json::Value::Array(p) if p.len() == 2 => Ok(format!(
                        "{} {}",
                        p[0].as_str().unwrap_or_default(),
                        p[1].as_str().unwrap_or_default()
                    )),
                    other => Err(format!("a merge is neither \"a b\" nor [a, b]: {other}")),
                })
                .collect::<std::result::Result<_, _>>()?,
        };
        let pre = pre_tokenizer_name(&v["pre_tokenizer"], !merges.is_empty())?;
        let mut slots: Vec<Option<(String, i32)>> = vec![None; vocab];
        let mut put = |id: u64, tok: &str, ty: i32| -> std::result::Result<(), String> {
            let i = usize::try_from(id).ok().filter(|&i| i < MAX_TOKENS);
            let Some(i) = i else {
                return Err(format!("token id {id} is out of range"));
            };
            if i >= slots.len() {
                slots.resize(i + 1, None);
            }
            slots[i] = Some((tok.to_string(), ty));
            Ok(())
        };
        for (tok, id) in model["vocab"].as_object().into_iter().flatten() {
            let id = id
                .as_u64()
                .ok_or_else(|| format!("vocab `{tok}`: bad id {id}"))?;
            put(id, tok, TOKEN_NORMAL)?;
        }
        for a in v["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(tok)) = (a["id"].as_u64(), a["content"].as_str()) else {
                return Err(format!("added token without id/content: {a}"));
            };
            let ty = if a["special"] == true {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            };
            put(id, tok, ty)?;
        }
        let (tokens, token_types) = slots
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_UNUSED)))
            .unzip();
        Ok(Self {
            model: "gpt2".into(),
            pre: pre.into(),
            tokens,
            token_types,
            merges,
            bos: None,
            eos: None,
        })
    }

    /// The HF `tokenizer.json` these metadata describe (byte-level BPE; control and
    /// user-defined tokens as added tokens), so a GGUF file needs no `--tokenizer`. The
    /// pre-tokenizers of [`PRE_TOKENIZERS`] are rebuilt exactly; another splits differently and
    /// is refused rather than approximated.
    pub fn to_tokenizer_json(&self) -> std::result::Result<serde_json::Value, String> {
        use serde_json::json;
        let pre_tokenizer =
            pre_tokenizer_json(&self.pre, !self.merges.is_empty()).ok_or_else(|| {
                format!(
                    "the GGUF tokenizer's pre-tokenizer `{}` is not one codex rebuilds ({})",
                    self.pre,
                    PRE_TOKENIZERS.join(", ")
                )
            })?;
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        let added: Vec<serde_json::Value> = self
            .tokens
            .iter()
            .zip(&self.token_types)
            .enumerate()
            .filter(|(_, (_, ty))| **ty == TOKEN_CONTROL || **ty == TOKEN_USER_DEFINED)
            .map(|(i, (t, ty))| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": *ty != TOKEN_CONTROL,
                       "special": *ty == TOKEN_CONTROL})
            })
            .collect();
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false,
                        "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": self.merges}
        }))
    }

    /// The `tokenizer.ggml.*` metadata entries.
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let strings =
            |xs: &[String]| Value::Array(xs.iter().map(|s| Value::String(s.clone())).collect());
        let mut m = vec![
            (
                "tokenizer.ggml.model".into(),
                Value::String(self.model.clone()),
            ),
            ("tokenizer.ggml.pre".into(), Value::String(self.pre.clone())),
            ("tokenizer.ggml.tokens".into(), strings(&self.tokens)),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(self.token_types.iter().map(|&t| Value::I32(t)).collect()),
            ),
            ("tokenizer.ggml.merges".into(), strings(&self.merges)),
            // codex's tokenizers add no special tokens when encoding.
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
        ];
        if let Some(b) = self.bos {
            m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
        }
        if let Some(e) = self.eos {
            m.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
        }
        m
    }

    /// From a GGUF header's metadata; `None` when it has no `tokenizer.ggml.model`.
    pub fn from_content(c: &Content) -> std::result::Result<Option<Self>, String> {
        let model = match c.metadata.get("tokenizer.ggml.model") {
            None => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err("`tokenizer.ggml.model` is not a string".into()),
        };
        if model != "gpt2" {
            return Err(format!(
                "tokenizer model `{model}` is not supported (codex reads byte-level BPE, `gpt2`)"
            ));
        }
        let strings = |key: &str| -> std::result::Result<Vec<String>, String> {
            match c.metadata.get(key) {
                None => Ok(vec![]),
                Some(Value::Array(xs)) if xs.len() <= MAX_TOKENS => xs
                    .iter()
                    .map(|x| match x {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(format!("`{key}` holds a non-string")),
                    })
                    .collect(),
                Some(_) => Err(format!("`{key}` is not a list of strings")),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err("`tokenizer.ggml.tokens` is missing or empty".into());
        }
        let token_types = match c.metadata.get("tokenizer.ggml.token_type") {
            None => vec![TOKEN_NORMAL; tokens.len()],
            Some(Value::Array(xs)) if xs.len() == tokens.len() => xs
                .iter()
                .map(|x| match x {
                    Value::I32(t) => Ok(*t),
                    Value::U32(t) => i32::try_from(*t).map_err(|e| e.to_string()),
                    _ => Err("`tokenizer.ggml.token_type` holds a non-integer".to_string()),
                })
                .collect::<std::result::Result<_, _>>()?,
            Some(_) => {
                return Err("`tokenizer.ggml.token_type` does not have one entry per token".into());
            }
        };
        let id = |key: &str| {
            meta_u64(c, key)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokens.len())
        };
        let pre = match c.metadata.get("tokenizer.ggml.pre") {
            Some(Value::String(s)) => s.clone(),
            _ => "default".into(),
        };
        Ok(Some(Self {
            model,
            pre,
            merges: strings("tokenizer.ggml.merges")?,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            tokens,
            token_types,
        }))
    }
}

/// The tokenizer in a GGUF file's metadata (`None` when it has none).
pub fn read_gguf_tokenizer(path: &Path) -> Result<Option<GgufTokenizer>> {
    let bad = |msg: String| RegistryError::Gguf {
        path: path.to_path_buf(),
        msg,
    };
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut f = std::io::BufReader::new(f);
    let content = read_gguf_header(&mut f).map_err(bad)?;
    GgufTokenizer::from_content(&content).map_err(bad)
}

#[cfg(test)]
mod tokenizer_tests {
    use super::*;

    /// A byte-level BPE over the bytes of `text` plus `merges`, with the given pre-tokenizer name.
    fn bpe(pre: &str, merges: &[&str]) -> tokenizers::Tokenizer {
        let mut tokens: Vec<String> = (b'!'..=b'~').map(|b| (b as char).to_string()).collect();
        tokens.push("Ġ".into());
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        let t = GgufTokenizer {
            model: "gpt2".into(),
            pre: pre.into(),
            token_types: vec![TOKEN_NORMAL; tokens.len()],
            tokens,
            merges: merges.iter().map(|m| m.to_string()).collect(),
            bos: None,
            eos: None,
        };
        let json = t.to_tokenizer_json().unwrap();
        json.to_string().parse().unwrap()
    }

    fn pieces(t: &tokenizers::Tokenizer, text: &str) -> Vec<String> {
        t.encode(text, false).unwrap().get_tokens().to_vec()
    }

    #[test]
    fn llama_cpp_pre_tokenizers_split_as_their_regexes_say() {
        let merges = ["2 0", "20 2", "4 5", "1 2", "12 3"];
        // GPT-2 keeps a run of digits together, so merges cross digits.
        assert_eq!(
            pieces(&bpe("gpt-2", &merges), "x 2024"),
            ["x", "Ġ", "202", "4"]
        );
        // SmolLM/StarCoder split every digit first: no merge can join two.
        assert_eq!(
            pieces(&bpe("smollm", &merges), "x 2024"),
            ["x", "Ġ", "2", "0", "2", "4"]
        );
        // Llama 3 splits numbers into runs of at most three digits.
        assert_eq!(pieces(&bpe("llama-bpe", &merges), "12345"), ["123", "45"]);
        // Qwen2: single digits again.
        assert_eq!(
            pieces(&bpe("qwen2", &merges), "12345"),
            ["1", "2", "3", "4", "5"]
        );
    }

    #[test]
    fn pre_tokenizers_round_trip_between_gguf_names_and_tokenizer_json() {
        for name in PRE_TOKENIZERS {
            let has_merges = *name != "default";
            let json = pre_tokenizer_json(name, has_merges).unwrap();
            let back = pre_tokenizer_name(&json, has_merges).unwrap();
            // Aliases (one regex list in llama.cpp) come back as the first name of their group.
            assert_eq!(
                pre_tokenizer_json(back, has_merges),
                Some(json),
                "{name} -> {back}"
            );
        }
        // `trim_offsets` and a missing `use_regex` do not change the ids.
        let plain = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false});
        assert_eq!(pre_tokenizer_name(&plain, true).unwrap(), "gpt-2");
        // Anything else is refused with the reason, not approximated.
        let whitespace = serde_json::json!({"type": "Whitespace"});
        let e = pre_tokenizer_name(&whitespace, true).unwrap_err();
        assert!(e.contains("no llama.cpp equivalent"), "{e}");
        let no_split = byte_level(false);
        assert!(pre_tokenizer_name(&no_split, true).is_err());
        assert_eq!(pre_tokenizer_name(&no_split, false).unwrap(), "default");
        let prefix = serde_json::json!({"type": "ByteLevel", "add_prefix_space": true});
        assert!(
            pre_tokenizer_name(&prefix, true)
                .unwrap_err()
                .contains("prefix space")
        );
    }

    #[test]
    fn tokenizer_json_round_trips_through_gguf_metadata() {
        let tj = serde_json::json!({
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
            "added_tokens": [{"id": 4, "content": "<|endoftext|>", "special": true}],
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3},
                      "merges": [["a", "b"]]}
        });
        let mut t = GgufTokenizer::from_tokenizer_json(&tj, 6).unwrap();
        assert_eq!(t.tokens, ["a", "b", "ab", "Ġ", "<|endoftext|>", "[PAD5]"]);
        assert_eq!(t.token_types, [1, 1, 1, 1, 3, 5]);
        assert_eq!(t.merges, ["a b"]);
        assert_eq!(t.pre, "gpt-2");
        t.eos = Some(4);
        // Through a real GGUF stream and back.
        let meta = t.metadata();
        let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut buf = std::io::Cursor::new(Vec::new());
        candle_core::quantized::gguf_file::write(&mut buf, &refs, &[]).unwrap();
        buf.set_position(0);
        let c = Content::read(&mut buf).unwrap();
        assert_eq!(GgufTokenizer::from_content(&c).unwrap(), Some(t.clone()));
        // As a file: `codex generate` stops at its eos.
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("t.gguf");
        std::fs::write(&path, buf.get_ref()).unwrap();
        assert_eq!(read_gguf_tokenizer(&path).unwrap(), Some(t.clone()));
        let src = crate::ModelSource::Gguf(path);
        assert_eq!(crate::generate::eos_ids(&src).unwrap(), vec![4]);
        // And the tokenizer.json it rebuilds encodes as the original vocabulary says.
        let rebuilt = t.to_tokenizer_json().unwrap();
        let mut other = t.clone();
        other.pre = "falcon".into();
        assert!(other.to_tokenizer_json().unwrap_err().contains("falcon"));
        assert_eq!(rebuilt["model"]["vocab"]["ab"], 2);
        assert_eq!(rebuilt["added_tokens"][0]["content"], "<|endoftext|>");
        let bad = serde_json::json!({"normalizer": null, "model": {"type": "Unigram"}});
        assert!(
            GgufTokenizer::from_tokenizer_json(&bad, 4)
                .unwrap_err()
                .contains("Unigram")
        );
    }
}
