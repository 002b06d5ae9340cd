//! The Llama family (`LlamaForCausalLM`, `Qwen2ForCausalLM`): RMSNorm, RoPE, SwiGLU and
//! grouped-query attention.

use super::Architecture;
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::kv::KvCache;
use crate::nn::{Fwd, Linear, Mask, Norm, attention, embed, merge_heads, split_heads};
use crate::ops;
use crate::params::{Builder, Init};
use candle_core::{DType, Device, Tensor, Var};

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

pub(super) struct Llama {
    cfg: LlamaConfig,
    embed: Var,
    layers: Vec<LlamaLayer>,
    norm: Norm,
    lm_head: Option<Var>,
}

impl Llama {
    pub(super) fn build(cfg: &LlamaConfig, b: &mut Builder) -> Result<Self> {
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

    /// cos/sin tables `[T, hd]` for positions `start..start + t`, in f32 (as HF computes
    /// them), cast to `dtype`.
    fn rope_tables(
        &self,
        start: usize,
        t: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let hd = self.cfg.head_dim();
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / (self.cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
            .collect();
        let inv = Tensor::from_vec(inv, (1, hd / 2), device)?;
        let pos = Tensor::arange(start as u32, (start + t) as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((t, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        let emb = Tensor::cat(&[&freqs, &freqs], 1)?;
        Ok((emb.cos()?.to_dtype(dtype)?, emb.sin()?.to_dtype(dtype)?))
    }
}

impl Architecture for Llama {
    fn causal(
        &self,
        ids: &Tensor,
        f: &Fwd,
        mut cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let emb = f.w(&self.embed);
        let mut h = embed(&emb, ids, None)?;
        let (cos, sin) = self.rope_tables(offset, t, h.device(), h.dtype())?;
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.kv_heads(),
            self.cfg.head_dim(),
        );
        let rep = nh / nkv;
        // Keys and values hold the kv heads once (also in the cache); repeated for the query
        // heads where the attention is composed.
        let repeat = |x: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(x);
            }
            let s = x.dim(2)?;
            Ok(x.unsqueeze(2)?
                .expand((b, nkv, rep, s, hd))?
                .reshape((b, nh, s, hd))?)
        };
        // Without a cache or attention dropout, one fused op (RoPE, shared kv heads and the
        // causal softmax inside; `codex_ops::rope_attention`) on the projections as they are.
        let fused = cache.is_none() && (!f.train || self.cfg.attention_dropout <= 0.0);
        for (i, l) in self.layers.iter().enumerate() {
            let a = l.input_ln.forward(&h, f)?;
            let y = if fused {
                codex_ops::rope_attention(
                    &l.q.forward(&a, f)?,
                    &l.k.forward(&a, f)?,
                    &l.v.forward(&a, f)?,
                    nh,
                    nkv,
                    self.cfg.rope_theta,
                )?
            } else {
                let q = ops::rope(&split_heads(&l.q.forward(&a, f)?, nh)?, &cos, &sin)?;
                let k = ops::rope(&split_heads(&l.k.forward(&a, f)?, nkv)?, &cos, &sin)?;
                let v = split_heads(&l.v.forward(&a, f)?, nkv)?;
                let (k, v) = match cache.as_deref_mut() {
                    Some(c) => c.append(i, k, v)?,
                    None => (k, v),
                };
                let p = self.cfg.attention_dropout;
                merge_heads(&attention(
                    &q,
                    &repeat(k)?,
                    &repeat(v)?,
                    Mask::Causal,
                    p,
                    f,
                )?)?
            };
            h = codex_ops::add(&h, &l.o.forward(&y, f)?)?;
            let m = l.post_ln.forward(&h, f)?;
            let m = ops::swiglu(&l.gate.forward(&m, f)?, &l.up.forward(&m, f)?)?;
            h = codex_ops::add(&h, &l.down.forward(&m, f)?)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let h = self.norm.forward(&h, f)?;
        let head = match &self.lm_head {
            Some(w) => f.w(w),
            None => emb,
        };
        Ok((h, head))
    }

    fn linears(&self) -> Vec<&Linear> {
        self.layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
            .collect()
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
