//! The key/value cache of causal decoding: each layer's keys and values of every position seen
//! so far, so that a new token attends to them without recomputing the prefix.

use candle_core::Tensor;

/// Keys and values `[B, kv_heads, S, head_dim]` per layer, appended to as tokens arrive.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions already cached: the offset of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends layer `i`'s new keys and values (`[B, H, T, hd]`) and returns all of them.
    /// Concatenation copies the prefix once per token; it stays linear in the prefix, like the
    /// attention itself, and avoids a preallocated buffer the size of the full context.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let (k, v) = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Records that `t` more positions were appended to every layer.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
