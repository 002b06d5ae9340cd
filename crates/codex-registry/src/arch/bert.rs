//! The BERT encoder (`BertModel`, MiniLM): post-norm layers, absolute positions, token types.

use super::{Architecture, Encoder};
use crate::config::BertConfig;
use crate::error::Result;
use crate::nn::{Fwd, Linear, Mask, Norm, attention, embed, merge_heads, split_heads};
use crate::ops;
use crate::params::{Builder, Init};
use candle_core::{DType, Tensor, Var};

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

pub(super) struct Bert {
    cfg: BertConfig,
    word: Var,
    pos: Var,
    token_type: Var,
    emb_ln: Norm,
    layers: Vec<BertLayer>,
}

impl Bert {
    pub(super) fn build(cfg: &BertConfig, b: &mut Builder) -> Result<Self> {
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
}

impl Encoder for Bert {
    fn encode(
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
        let h = (embed(&f.w(&self.word), ids, None)? + embed(&f.w(&self.token_type), &tt, None)?)?
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
}

impl Architecture for Bert {
    /// The last hidden state with every token attended (no token types, no padding).
    fn forward(&self, ids: &Tensor, f: &Fwd) -> Result<Tensor> {
        self.encode(ids, None, None, f)
    }

    fn encoder(&self) -> Option<&dyn Encoder> {
        Some(self)
    }

    fn linears(&self) -> Vec<&Linear> {
        self.layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.attn_out, &l.inter, &l.out])
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
                    &mut l.attn_out,
                    &mut l.inter,
                    &mut l.out,
                ]
            })
            .collect()
    }
}
