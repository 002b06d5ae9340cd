//! The three architectures and [`Model`], the type the trainer drives.

use crate::config::{ArchConfig, BertConfig, GptConfig, LlamaConfig};
use crate::error::{RegistryError, Result};
use crate::lora::LoraConfig;
use crate::nn::{
    DropoutGen, Fwd, Linear, Mask, Norm, attention, embed, lm_head, merge_heads, split_heads,
};
use crate::ops;
use crate::weights::{Builder, Init};
use candle_core::{D, DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

struct GptBlock {
    ln_1: Norm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: Norm,
    c_fc: Linear,
    mlp_proj: Linear,
}

struct Gpt2 {
    cfg: GptConfig,
    wte: Var,
    wpe: Var,
    blocks: Vec<GptBlock>,
    ln_f: Norm,
    lm_head: Option<Var>,
}

impl Gpt2 {
    fn build(cfg: &GptConfig, b: &mut Builder) -> Result<Self> {
        let (d, std) = (cfg.n_embd, cfg.initializer_range);
        // GPT-2 scales the residual projections' init by 1/sqrt(2 n_layer).
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        let inner = cfg.n_inner.unwrap_or(4 * d);
        let eps = cfg.layer_norm_epsilon;
        let wte = b.var(
            "transformer.wte.weight",
            &[cfg.vocab_size, d],
            Init::Normal(std),
        )?;
        let wpe = b.var(
            "transformer.wpe.weight",
            &[cfg.n_positions, d],
            Init::Normal(std),
        )?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("transformer.h.{i}");
            blocks.push(GptBlock {
                ln_1: Norm::layer_norm(b, &format!("{p}.ln_1"), d, eps)?,
                c_attn: Linear::new(b, &format!("{p}.attn.c_attn"), d, 3 * d, true, true, std)?,
                attn_proj: Linear::new(b, &format!("{p}.attn.c_proj"), d, d, true, true, proj_std)?,
                ln_2: Norm::layer_norm(b, &format!("{p}.ln_2"), d, eps)?,
                c_fc: Linear::new(b, &format!("{p}.mlp.c_fc"), d, inner, true, true, std)?,
                mlp_proj: Linear::new(
                    b,
                    &format!("{p}.mlp.c_proj"),
                    inner,
                    d,
                    true,
                    true,
                    proj_std,
                )?,
            });
        }
        let ln_f = Norm::layer_norm(b, "transformer.ln_f", d, eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            b.discard("lm_head.weight");
            None
        } else {
            Some(b.var("lm_head.weight", &[cfg.vocab_size, d], Init::Normal(std))?)
        };
        Ok(Self {
            cfg: cfg.clone(),
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
        })
    }

    fn act(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if self.cfg.activation_function == "gelu" {
            ops::gelu_erf(x)?
        } else {
            ops::gelu_tanh(x)?
        })
    }

    fn forward(&self, ids: &Tensor, f: &Fwd) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let wte = f.w(&self.wte);
        let pos = f.w(&self.wpe).narrow(0, 0, t)?;
        let mut h = embed(&wte, ids)?.broadcast_add(&pos)?;
        h = f.dropout(&h, self.cfg.embd_pdrop)?;
        let heads = self.cfg.n_head;
        let d = self.cfg.n_embd;
        for blk in &self.blocks {
            let a = blk.ln_1.forward(&h, f)?;
            let qkv = blk.c_attn.forward(&a, f)?;
            let y = if f.train && self.cfg.attn_pdrop > 0.0 {
                // Dropout on the attention probabilities needs them materialised.
                let q = split_heads(&qkv.narrow(D::Minus1, 0, d)?, heads)?;
                let k = split_heads(&qkv.narrow(D::Minus1, d, d)?, heads)?;
                let v = split_heads(&qkv.narrow(D::Minus1, 2 * d, d)?, heads)?;
                merge_heads(&attention(
                    &q,
                    &k,
                    &v,
                    Mask::Causal,
                    self.cfg.attn_pdrop,
                    f,
                )?)?
            } else {
                ops::causal_attention(&qkv, heads)?
            };
            let y = blk.attn_proj.forward(&y, f)?;
            h = (h + f.dropout(&y, self.cfg.resid_pdrop)?)?;
            let m = blk.ln_2.forward(&h, f)?;
            let m = self.act(&blk.c_fc.forward(&m, f)?)?;
            let m = blk.mlp_proj.forward(&m, f)?;
            h = (h + f.dropout(&m, self.cfg.resid_pdrop)?)?;
        }
        let h = self.ln_f.forward(&h, f)?;
        let head = match &self.lm_head {
            Some(w) => f.w(w),
            None => wte,
        };
        lm_head(&h, &head)
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| {
                [
                    &mut b.c_attn,
                    &mut b.attn_proj,
                    &mut b.c_fc,
                    &mut b.mlp_proj,
                ]
            })
            .collect()
    }
}

struct LlamaLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    input_ln: Norm,
    post_ln: Norm,
}

struct Llama {
    cfg: LlamaConfig,
    embed: Var,
    layers: Vec<LlamaLayer>,
    norm: Norm,
    lm_head: Option<Var>,
}

impl Llama {
    fn build(cfg: &LlamaConfig, b: &mut Builder) -> Result<Self> {
        let (d, std, eps) = (cfg.hidden_size, cfg.initializer_range, cfg.rms_norm_eps);
        let (nh, nkv, hd, ff) = (
            cfg.num_attention_heads,
            cfg.kv_heads(),
            cfg.head_dim(),
            cfg.intermediate_size,
        );
        let embed = b.var(
            "model.embed_tokens.weight",
            &[cfg.vocab_size, d],
            Init::Normal(std),
        )?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let lin = |b: &mut Builder, n: &str, i, o, bias| {
                Linear::new(b, &format!("{p}.{n}"), i, o, bias, false, std)
            };
            layers.push(LlamaLayer {
                q: lin(b, "self_attn.q_proj", d, nh * hd, cfg.qkv_bias())?,
                k: lin(b, "self_attn.k_proj", d, nkv * hd, cfg.qkv_bias())?,
                v: lin(b, "self_attn.v_proj", d, nkv * hd, cfg.qkv_bias())?,
                o: lin(b, "self_attn.o_proj", nh * hd, d, cfg.o_bias())?,
                gate: lin(b, "mlp.gate_proj", d, ff, cfg.mlp_bias)?,
                up: lin(b, "mlp.up_proj", d, ff, cfg.mlp_bias)?,
                down: lin(b, "mlp.down_proj", ff, d, cfg.mlp_bias)?,
                input_ln: Norm::rms_norm(b, &format!("{p}.input_layernorm"), d, eps)?,
                post_ln: Norm::rms_norm(b, &format!("{p}.post_attention_layernorm"), d, eps)?,
            });
        }
        let norm = Norm::rms_norm(b, "model.norm", d, eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            b.discard("lm_head.weight");
            None
        } else {
            Some(b.var("lm_head.weight", &[cfg.vocab_size, d], Init::Normal(std))?)
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// cos/sin tables `[T, hd]` in f32 (as HF computes them), cast to `dtype`.
    fn rope_tables(&self, t: usize, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        let hd = self.cfg.head_dim();
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / (self.cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
            .collect();
        let inv = Tensor::from_vec(inv, (1, hd / 2), device)?;
        let pos = Tensor::arange(0u32, t as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((t, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        let emb = Tensor::cat(&[&freqs, &freqs], 1)?;
        Ok((emb.cos()?.to_dtype(dtype)?, emb.sin()?.to_dtype(dtype)?))
    }

    fn forward(&self, ids: &Tensor, f: &Fwd) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let emb = f.w(&self.embed);
        let mut h = embed(&emb, ids)?;
        let (cos, sin) = self.rope_tables(t, h.device(), h.dtype())?;
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.kv_heads(),
            self.cfg.head_dim(),
        );
        let rep = nh / nkv;
        let repeat = |x: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(x);
            }
            Ok(x.unsqueeze(2)?
                .expand((b, nkv, rep, t, hd))?
                .reshape((b, nh, t, hd))?)
        };
        for l in &self.layers {
            let a = l.input_ln.forward(&h, f)?;
            let q = ops::rope(&split_heads(&l.q.forward(&a, f)?, nh)?, &cos, &sin)?;
            let k = ops::rope(&split_heads(&l.k.forward(&a, f)?, nkv)?, &cos, &sin)?;
            let v = split_heads(&l.v.forward(&a, f)?, nkv)?;
            let y = attention(
                &q,
                &repeat(k)?,
                &repeat(v)?,
                Mask::Causal,
                self.cfg.attention_dropout,
                f,
            )?;
            h = (h + l.o.forward(&merge_heads(&y)?, f)?)?;
            let m = l.post_ln.forward(&h, f)?;
            let m = ops::swiglu(&l.gate.forward(&m, f)?, &l.up.forward(&m, f)?)?;
            h = (h + l.down.forward(&m, f)?)?;
        }
        let h = self.norm.forward(&h, f)?;
        let head = match &self.lm_head {
            Some(w) => f.w(w),
            None => emb,
        };
        lm_head(&h, &head)
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                [
                    &mut l.q,
                    &mut l.k,
                    &mut l.v,
                    &mut l.o,
                    &mut l.gate,
                    &mut l.up,
                    &mut l.down,
                ]
            })
            .collect()
    }
}

struct BertLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_ln: Norm,
    inter: Linear,
    out: Linear,
    out_ln: Norm,
}

struct Bert {
    cfg: BertConfig,
    word: Var,
    pos: Var,
    token_type: Var,
    emb_ln: Norm,
    layers: Vec<BertLayer>,
}

impl Bert {
    fn build(cfg: &BertConfig, b: &mut Builder) -> Result<Self> {
        let (d, std, eps) = (cfg.hidden_size, cfg.initializer_range, cfg.layer_norm_eps);
        let word = b.var(
            "embeddings.word_embeddings.weight",
            &[cfg.vocab_size, d],
            Init::Normal(std),
        )?;
        let pos = b.var(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, d],
            Init::Normal(std),
        )?;
        let token_type = b.var(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, d],
            Init::Normal(std),
        )?;
        let emb_ln = Norm::layer_norm(b, "embeddings.LayerNorm", d, eps)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let lin = |b: &mut Builder, n: &str, i, o| {
                Linear::new(b, &format!("{p}.{n}"), i, o, true, false, std)
            };
            layers.push(BertLayer {
                q: lin(b, "attention.self.query", d, d)?,
                k: lin(b, "attention.self.key", d, d)?,
                v: lin(b, "attention.self.value", d, d)?,
                attn_out: lin(b, "attention.output.dense", d, d)?,
                attn_ln: Norm::layer_norm(b, &format!("{p}.attention.output.LayerNorm"), d, eps)?,
                inter: lin(b, "intermediate.dense", d, cfg.intermediate_size)?,
                out: lin(b, "output.dense", cfg.intermediate_size, d)?,
                out_ln: Norm::layer_norm(b, &format!("{p}.output.LayerNorm"), d, eps)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            word,
            pos,
            token_type,
            emb_ln,
            layers,
        })
    }

    fn act(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if self.cfg.hidden_act == "gelu" {
            ops::gelu_erf(x)?
        } else {
            ops::gelu_tanh(x)?
        })
    }

    fn forward(
        &self,
        ids: &Tensor,
        token_types: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        f: &Fwd,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let dev = ids.device();
        let tt = match token_types {
            Some(x) => x.clone(),
            None => Tensor::zeros((b, t), DType::U32, dev)?,
        };
        let pos = f.w(&self.pos).narrow(0, 0, t)?;
        let h = (embed(&f.w(&self.word), ids)? + embed(&f.w(&self.token_type), &tt)?)?
            .broadcast_add(&pos)?;
        let mut h = f.dropout(&self.emb_ln.forward(&h, f)?, self.cfg.hidden_dropout_prob)?;
        // Padding keys get a large negative score, as HF's extended attention mask does.
        let additive = match attention_mask {
            Some(m) => {
                let neg = if h.dtype() == DType::F16 {
                    -65504.0
                } else {
                    -3.0e38
                };
                let keep = m.to_dtype(DType::F32)?.reshape((b, 1, 1, t))?;
                Some(((keep.ones_like()? - &keep)? * neg)?)
            }
            None => None,
        };
        let zeros = Tensor::zeros((1, 1, 1, t), DType::F32, dev)?;
        let mask = additive.as_ref().unwrap_or(&zeros);
        let heads = self.cfg.num_attention_heads;
        let p = self.cfg.hidden_dropout_prob;
        for l in &self.layers {
            let q = split_heads(&l.q.forward(&h, f)?, heads)?;
            let k = split_heads(&l.k.forward(&h, f)?, heads)?;
            let v = split_heads(&l.v.forward(&h, f)?, heads)?;
            let y = attention(
                &q,
                &k,
                &v,
                Mask::Additive(mask),
                self.cfg.attention_probs_dropout_prob,
                f,
            )?;
            let y = f.dropout(&l.attn_out.forward(&merge_heads(&y)?, f)?, p)?;
            h = l.attn_ln.forward(&(y + &h)?, f)?;
            let m = self.act(&l.inter.forward(&h, f)?)?;
            let m = f.dropout(&l.out.forward(&m, f)?, p)?;
            h = l.out_ln.forward(&(m + &h)?, f)?;
        }
        Ok(h)
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                [
                    &mut l.q,
                    &mut l.k,
                    &mut l.v,
                    &mut l.attn_out,
                    &mut l.inter,
                    &mut l.out,
                ]
            })
            .collect()
    }
}

enum Arch {
    Gpt2(Gpt2),
    Llama(Llama),
    Bert(Bert),
}

/// Parameter counts; `trainable` is what [`Model::named_trainable`] hands the optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ParamCounts {
    /// Base weights plus LoRA adapters.
    pub total: usize,
    pub trainable: usize,
    /// LoRA adapter parameters (0 without LoRA).
    pub lora: usize,
}

/// A model on a device: an architecture, its HF-named parameters and an optional LoRA adapter.
pub struct Model {
    arch: Arch,
    config: ArchConfig,
    params: Vec<(String, Var)>,
    pub(crate) lora: Option<LoraConfig>,
    device: Device,
    dtype: DType,
    dropout: DropoutGen,
    /// Where the model came from (preset name or path), for messages and adapter configs.
    pub origin: String,
}

/// Checkpoint names that HF models carry but that are buffers or unused heads, not weights.
fn ignorable(name: &str) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
        || name.starts_with("pooler.")
        || name.starts_with("cls.")
        || name == "embeddings.position_ids"
}

impl Model {
    pub(crate) fn build(config: ArchConfig, mut b: Builder, origin: String) -> Result<Self> {
        config
            .validate()
            .map_err(|msg| RegistryError::Invalid(format!("{origin}: {msg}")))?;
        let arch = match &config {
            ArchConfig::Gpt2(c) => Arch::Gpt2(Gpt2::build(c, &mut b)?),
            ArchConfig::Llama(c) => Arch::Llama(Llama::build(c, &mut b)?),
            ArchConfig::Bert(c) => Arch::Bert(Bert::build(c, &mut b)?),
        };
        let (device, dtype) = (b.device.clone(), b.dtype);
        let (params, left) = b.finish();
        let unused: Vec<&String> = left.iter().filter(|n| !ignorable(n)).collect();
        if !unused.is_empty() {
            tracing::warn!(
                "{origin}: {} tensor(s) not used by the {} architecture: {}",
                unused.len(),
                config.arch_name(),
                unused
                    .iter()
                    .take(8)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(Self {
            arch,
            config,
            params,
            lora: None,
            device,
            dtype,
            dropout: DropoutGen {
                seed: AtomicU64::new(0),
                counter: AtomicU64::new(0),
            },
            origin,
        })
    }

    /// Builds the model from HF-named tensors (checked by name and shape).
    pub fn from_tensors(
        config: ArchConfig,
        mut tensors: HashMap<String, Tensor>,
        origin: &str,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        normalize_names(&config, &mut tensors);
        let b = Builder::from_tensors(tensors, origin.to_string(), device, dtype);
        Self::build(config, b, origin.to_string())
    }

    fn fwd(&self, train: bool) -> Fwd<'_> {
        Fwd {
            frozen: self.lora.is_some(),
            train,
            drop: &self.dropout,
        }
    }

    /// Causal LM logits `[B, T, V]` for `input_ids` `[B, T]` (u32). For BERT, the last hidden
    /// state `[B, T, H]` with every token attended. `train` enables dropout (seeded, see
    /// [`Model::set_dropout_state`]).
    pub fn forward(&self, input_ids: &Tensor, train: bool) -> Result<Tensor> {
        self.check_ids(input_ids)?;
        let f = self.fwd(train);
        match &self.arch {
            Arch::Gpt2(m) => m.forward(input_ids, &f),
            Arch::Llama(m) => m.forward(input_ids, &f),
            Arch::Bert(m) => m.forward(input_ids, None, None, &f),
        }
    }

    fn check_ids(&self, ids: &Tensor) -> Result<()> {
        let (_, t) = ids.dims2().map_err(|_| {
            RegistryError::Invalid(format!(
                "input_ids must be [batch, time], got {:?}",
                ids.dims()
            ))
        })?;
        if ids.dtype() != DType::U32 {
            return Err(RegistryError::Invalid(format!(
                "input_ids must be u32, got {:?}",
                ids.dtype()
            )));
        }
        if t == 0 || t > self.max_positions() {
            return Err(RegistryError::Invalid(format!(
                "sequence length {t} outside 1..={} (the model's context length)",
                self.max_positions()
            )));
        }
        Ok(())
    }

    /// BERT encoder: last hidden state `[B, T, H]` with optional token types and 0/1
    /// attention mask `[B, T]`.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        self.check_ids(input_ids)?;
        match &self.arch {
            Arch::Bert(m) => m.forward(input_ids, token_type_ids, attention_mask, &self.fwd(train)),
            _ => Err(RegistryError::Invalid(format!(
                "encode() needs an encoder model; this is {}",
                self.config.arch_name()
            ))),
        }
    }

    /// Sentence embeddings as sentence-transformers computes them for MiniLM: mean of the
    /// token states over the attention mask, then L2-normalised. Returns `[B, H]` (f32).
    pub fn sentence_embeddings(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let h = self
            .encode(input_ids, None, Some(attention_mask), false)?
            .to_dtype(DType::F32)?;
        let m = attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = h.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norm)?)
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match &mut self.arch {
            Arch::Gpt2(m) => m.linears_mut(),
            Arch::Llama(m) => m.linears_mut(),
            Arch::Bert(m) => m.linears_mut(),
        }
    }

    /// HF module paths of every linear layer (the possible LoRA targets), in model order.
    pub fn linear_module_names(&mut self) -> Vec<String> {
        self.linears_mut()
            .into_iter()
            .map(|l| l.name.clone())
            .collect()
    }

    /// The tensors the optimizer trains, in a fixed order: every base weight with its HF name,
    /// or, under LoRA, only the adapters with their PEFT names.
    pub fn named_trainable(&self) -> Vec<(String, Var)> {
        if self.lora.is_none() {
            return self.params.clone();
        }
        let mut out = vec![];
        self.for_each_linear(|l| {
            if let Some(lo) = &l.lora {
                out.push((peft_name(&l.name, "lora_A"), lo.a.clone()));
                out.push((peft_name(&l.name, "lora_B"), lo.b.clone()));
            }
        });
        out
    }

    fn for_each_linear(&self, mut f: impl FnMut(&Linear)) {
        match &self.arch {
            Arch::Gpt2(m) => m.blocks.iter().for_each(|b| {
                [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj]
                    .into_iter()
                    .for_each(&mut f)
            }),
            Arch::Llama(m) => m.layers.iter().for_each(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .into_iter()
                    .for_each(&mut f)
            }),
            Arch::Bert(m) => m.layers.iter().for_each(|l| {
                [&l.q, &l.k, &l.v, &l.attn_out, &l.inter, &l.out]
                    .into_iter()
                    .for_each(&mut f)
            }),
        }
    }

    /// Every base weight with its HF name (current values; merged if LoRA is merged).
    pub fn base_state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// What a checkpoint saves: the full HF-named weights, or only the adapter under LoRA.
    pub fn state_for_save(&self) -> Vec<(String, Tensor)> {
        if self.lora.is_some() {
            self.named_trainable()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().detach()))
                .collect()
        } else {
            self.base_state()
        }
    }

    /// Restores what [`Model::state_for_save`] produced (resume): every name must be present
    /// with the same shape; unknown names are an error.
    pub fn load_state(&self, tensors: impl IntoIterator<Item = (String, Tensor)>) -> Result<()> {
        let mut given: HashMap<String, Tensor> = tensors.into_iter().collect();
        let origin = "the saved state".to_string();
        let targets = if self.lora.is_some() {
            self.named_trainable()
        } else {
            self.params.clone()
        };
        let mut updates = Vec::with_capacity(targets.len());
        for (name, var) in &targets {
            let t = given
                .remove(name)
                .ok_or_else(|| RegistryError::MissingTensor {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    origin: origin.clone(),
                })?;
            if t.dims() != var.dims() {
                return Err(RegistryError::ShapeMismatch {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                    origin,
                });
            }
            updates.push((var, t));
        }
        if !given.is_empty() {
            let mut names: Vec<String> = given.into_keys().collect();
            names.sort();
            return Err(RegistryError::UnexpectedTensors {
                names: names.join(", "),
                origin,
            });
        }
        // Only write once every tensor checked out, so a bad state changes nothing.
        for (var, t) in updates {
            var.set(&t.to_device(&self.device)?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size()
    }

    pub fn max_positions(&self) -> usize {
        self.config.max_positions()
    }

    pub fn config(&self) -> &ArchConfig {
        &self.config
    }

    pub fn arch_name(&self) -> &'static str {
        self.config.arch_name()
    }

    /// Whether the model predicts next tokens (GPT-2, Llama) rather than encoding (BERT).
    pub fn is_causal_lm(&self) -> bool {
        !matches!(self.arch, Arch::Bert(_))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    pub fn param_counts(&self) -> ParamCounts {
        let base: usize = self.params.iter().map(|(_, v)| v.elem_count()).sum();
        let mut lora = 0;
        self.for_each_linear(|l| {
            if let Some(lo) = &l.lora {
                lora += lo.a.elem_count() + lo.b.elem_count();
            }
        });
        let trainable = if self.lora.is_some() { lora } else { base };
        ParamCounts {
            total: base + lora,
            trainable,
            lora,
        }
    }

    /// Seeds dropout and resets its counter. Presets have dropout 0, so this only matters for
    /// configs that enable it.
    pub fn set_dropout_state(&self, seed: u64, counter: u64) {
        self.dropout.seed.store(seed, Ordering::Relaxed);
        self.dropout.counter.store(counter, Ordering::Relaxed);
    }

    /// `(seed, counter)` to save in a checkpoint; restoring it reproduces later masks.
    pub fn dropout_state(&self) -> (u64, u64) {
        (
            self.dropout.seed.load(Ordering::Relaxed),
            self.dropout.counter.load(Ordering::Relaxed),
        )
    }

    /// Writes `config.json` and `model.safetensors` (HF layout, base weights; merged values
    /// if a LoRA adapter is merged) atomically into `dir`.
    pub fn save_pretrained(&self, dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
        codex_core::fsutil::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
        let cfg_path = dir.join("config.json");
        let mut cfg = self.config.to_hf_json();
        if let Some(map) = cfg.as_object_mut() {
            map.insert(
                "torch_dtype".into(),
                crate::device::torch_dtype(self.dtype).into(),
            );
        }
        let text = serde_json::to_string_pretty(&cfg)
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        codex_core::fsutil::atomic_write(&cfg_path, format!("{text}\n").as_bytes())
            .map_err(crate::error::io_err(&cfg_path))?;
        let st = dir.join("model.safetensors");
        crate::source::write_safetensors(&st, &self.base_state(), &[("format", "pt")])?;
        Ok(vec![cfg_path, st])
    }
}

/// `base_model.model.<module>.lora_A.weight`, PEFT's key for a saved adapter tensor.
pub(crate) fn peft_name(module: &str, ab: &str) -> String {
    format!("base_model.model.{module}.{ab}.weight")
}

/// Maps the name variants found in the wild onto the canonical HF names used here.
fn normalize_names(config: &ArchConfig, tensors: &mut HashMap<String, Tensor>) {
    let rename = |tensors: &mut HashMap<String, Tensor>, f: &dyn Fn(&str) -> Option<String>| {
        let keys: Vec<String> = tensors.keys().cloned().collect();
        for k in keys {
            if let Some(new) = f(&k)
                && let Some(t) = tensors.remove(&k)
            {
                tensors.insert(new, t);
            }
        }
    };
    match config {
        // The original `gpt2` checkpoint stores `GPT2Model` names (`h.0…`, `wte.weight`).
        ArchConfig::Gpt2(_) if !tensors.contains_key("transformer.wte.weight") => {
            rename(tensors, &|k| {
                (!k.starts_with("lm_head.")).then(|| format!("transformer.{k}"))
            })
        }
        // `BertFor*` checkpoints prefix the encoder with `bert.`; old ones use gamma/beta.
        ArchConfig::Bert(_) => rename(tensors, &|k| {
            let s = k.strip_prefix("bert.").unwrap_or(k);
            let s = s
                .replace("LayerNorm.gamma", "LayerNorm.weight")
                .replace("LayerNorm.beta", "LayerNorm.bias");
            (s != k).then_some(s)
        }),
        _ => {}
    }
}
