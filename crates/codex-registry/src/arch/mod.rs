//! The architectures behind one trait. Each builds its layers from a [`Builder`] (fresh or
//! loaded weights, always by HF name) and runs its forward pass; [`crate::Model`] holds one as
//! `Box<dyn Architecture>` and never matches on which.

mod bert;
mod gpt2;
mod llama;

use crate::config::ArchConfig;
use crate::error::{RegistryError, Result};
use crate::kv::KvCache;
use crate::nn::{Fwd, Linear};
use crate::params::Builder;
use candle_core::Tensor;
use std::collections::HashMap;

/// A built architecture: its layers and forward pass.
pub(crate) trait Architecture: Send + Sync {
    /// Causal LM logits `[B, T, V]` for `[B, T]` u32 ids; an encoder's last hidden state
    /// `[B, T, H]` with every token attended.
    fn forward(&self, ids: &Tensor, f: &Fwd) -> Result<Tensor> {
        let (h, head) = self.causal(ids, f, None)?;
        crate::nn::lm_head(&h, &head, f)
    }

    /// A causal LM's last hidden state `[B, T, D]` (after the final norm) and the LM head
    /// weight `[V, D]` its logits come from — so the loss can fuse the head with the
    /// cross-entropy. With a cache: for `ids` at positions `cache.len()..`, attending to the
    /// cached keys and values and appending the new ones (inference only: no dropout). One path
    /// for training, evaluation and generation.
    fn causal(
        &self,
        _ids: &Tensor,
        _f: &Fwd,
        _cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Tensor)> {
        Err(RegistryError::Invalid(
            "this architecture is not a causal language model: it has no LM head to generate or \
             train with"
                .into(),
        ))
    }

    /// The encoder path (token types, padding mask); `None` for decoder-only models.
    fn encoder(&self) -> Option<&dyn Encoder> {
        None
    }

    /// Every linear layer (the LoRA targets), in model order.
    fn linears(&self) -> Vec<&Linear>;

    /// [`Architecture::linears`], mutably (attaching, merging adapters), in the same order.
    fn linears_mut(&mut self) -> Vec<&mut Linear>;
}

/// An encoder-only architecture (BERT).
pub(crate) trait Encoder {
    /// The last hidden state `[B, T, H]`; `attention_mask` is 0/1 `[B, T]`.
    fn encode(
        &self,
        ids: &Tensor,
        token_types: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        f: &Fwd,
    ) -> Result<Tensor>;
}

/// Builds the architecture `config` describes, taking every parameter from `b`.
pub(crate) fn build(config: &ArchConfig, b: &mut Builder) -> Result<Box<dyn Architecture>> {
    Ok(match config {
        ArchConfig::Gpt2(c) => Box::new(gpt2::Gpt2::build(c, b)?),
        ArchConfig::Llama(c) => Box::new(llama::Llama::build(c, b)?),
        ArchConfig::Bert(c) => Box::new(bert::Bert::build(c, b)?),
    })
}

/// Checkpoint names that HF models carry but that are buffers or unused heads, not weights.
pub(crate) fn ignorable(name: &str) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
        || name.starts_with("pooler.")
        || name.starts_with("cls.")
        || name == "embeddings.position_ids"
}

/// Maps the name variants found in the wild onto the canonical HF names the builders use.
pub(crate) fn normalize_names(config: &ArchConfig, tensors: &mut HashMap<String, Tensor>) {
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
