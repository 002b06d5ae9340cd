//! GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, GELU MLP, `Conv1D` linears.

use super::Architecture;
use crate::config::GptConfig;
use crate::error::Result;
use crate::kv::KvCache;
use crate::nn::{Fwd, Linear, Mask, Norm, attention, embed, merge_heads, split_heads};
use crate::ops;
use crate::params::{Builder, Init};
use candle_core::{D, Tensor, Var};

struct GptBlock {
    ln_1: Norm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: Norm,
    c_fc: Linear,
    mlp_proj: Linear,
}

pub(super) struct Gpt2 {
    cfg: GptConfig,
    wte: Var,
    wpe: Var,
    blocks: Vec<GptBlock>,
    ln_f: Norm,
    lm_head: Option<Var>,
}

impl Gpt2 {
    pub(super) fn build(cfg: &GptConfig, b: &mut Builder) -> Result<Self> {
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
}

impl Architecture for Gpt2 {
    fn causal(
        &self,
        ids: &Tensor,
        f: &Fwd,
        mut cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Tensor)> {
        let (_, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let wte = f.w(&self.wte);
        let pos = f.w(&self.wpe).narrow(0, offset, t)?;
        let mut h = embed(&wte, ids, Some(&pos))?;
        h = f.dropout(&h, self.cfg.embd_pdrop)?;
        let heads = self.cfg.n_head;
        let d = self.cfg.n_embd;
        for (i, blk) in self.blocks.iter().enumerate() {
            let a = blk.ln_1.forward(&h, f)?;
            let qkv = blk.c_attn.forward(&a, f)?;
            let y = if cache.is_some() || (f.train && self.cfg.attn_pdrop > 0.0) {
                // With a cache, or with dropout on the attention probabilities (which needs
                // them materialised), the heads one by one.
                let q = split_heads(&qkv.narrow(D::Minus1, 0, d)?, heads)?;
                let k = split_heads(&qkv.narrow(D::Minus1, d, d)?, heads)?;
                let v = split_heads(&qkv.narrow(D::Minus1, 2 * d, d)?, heads)?;
                let (k, v) = match cache.as_deref_mut() {
                    Some(c) => c.append(i, k, v)?,
                    None => (k, v),
                };
                let p = self.cfg.attn_pdrop;
                merge_heads(&attention(&q, &k, &v, Mask::Causal, p, f)?)?
            } else {
                ops::causal_attention(&qkv, heads)?
            };
            let y = blk.attn_proj.forward(&y, f)?;
            h = codex_ops::add(&h, &f.dropout(&y, self.cfg.resid_pdrop)?)?;
            let m = blk.ln_2.forward(&h, f)?;
            let u = blk.c_fc.forward(&m, f)?;
            let m = if self.cfg.activation_function == "gelu" {
                blk.mlp_proj.forward(&ops::gelu_erf(&u)?, f)?
            } else {
                // The tanh form: activation and projection in one op where it can.
                blk.mlp_proj.forward_gelu(&u, f)?
            };
            h = codex_ops::add(&h, &f.dropout(&m, self.cfg.resid_pdrop)?)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let h = self.ln_f.forward(&h, f)?;
        let head = match &self.lm_head {
            Some(w) => f.w(w),
            None => wte,
        };
        Ok((h, head))
    }

    fn linears(&self) -> Vec<&Linear> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj])
            .collect()
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
