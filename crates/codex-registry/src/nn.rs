//! Layers: linear (HF `nn.Linear` or GPT-2 `Conv1D` layout) with an optional LoRA adapter,
//! norms, and the forward context (frozen base, train mode, seeded dropout).

use crate::error::Result;
use crate::init::keep_mask;
use crate::ops;
use crate::params::{Builder, Init};
use candle_core::{Tensor, Var};
use std::sync::atomic::{AtomicU64, Ordering};

/// Seeded dropout: mask `k` comes from stream `k` of a ChaCha8 generator, so restoring
/// (seed, counter) reproduces every later mask exactly.
#[derive(Debug)]
pub(crate) struct DropoutGen {
    pub seed: AtomicU64,
    pub counter: AtomicU64,
}

/// What one forward pass needs besides the input.
pub(crate) struct Fwd<'a> {
    /// Base weights are frozen (LoRA): read them detached so no gradient is tracked.
    pub frozen: bool,
    pub train: bool,
    pub drop: &'a DropoutGen,
    /// Parameters stored in bf16/f16 are widened to f32 on use (CPU; see
    /// `Model::computes_in_f32`). The cast is a graph node, so gradients return in the
    /// parameter's dtype.
    pub upcast: bool,
}

impl Fwd<'_> {
    /// A base weight: detached when frozen (LoRA), widened when `upcast`.
    pub fn w(&self, v: &Var) -> Tensor {
        let t = if self.frozen {
            v.as_tensor().detach()
        } else {
            v.as_tensor().clone()
        };
        self.widen(t)
    }

    /// A weight matrix for the fused linears: as stored (detached when frozen) when it is bf16 and
    /// the products run in bf16 (`codex_ops::bf16gemm`, which packs bf16 directly: no f32 copy of
    /// the weights per step; a trainable weight gets its gradient in bf16, rounded as the
    /// widening's backward would round it), else as [`Self::w`] gives it.
    pub fn matrix(&self, v: &Var) -> Tensor {
        let t = v.as_tensor();
        if self.upcast
            && t.dtype() == candle_core::DType::BF16
            && t.device().is_cpu()
            && codex_ops::bf16gemm::active()
        {
            if self.frozen { t.detach() } else { t.clone() }
        } else {
            self.w(v)
        }
    }

    /// A trainable parameter that is never frozen (a LoRA adapter), widened when `upcast`.
    pub fn p(&self, v: &Var) -> Tensor {
        self.widen(v.as_tensor().clone())
    }

    fn widen(&self, t: Tensor) -> Tensor {
        if self.upcast && t.dtype() != candle_core::DType::F32 {
            // Only fails on an unsupported dtype pair, which `upcast` excludes; keep the
            // parameter as it is then (candle reports the dtype mismatch at its use).
            codex_ops::widen(&t).unwrap_or(t)
        } else {
            t
        }
    }

    pub fn dropout(&self, x: &Tensor, p: f32) -> Result<Tensor> {
        if !self.train || p <= 0.0 {
            return Ok(x.clone());
        }
        let stream = self.drop.counter.fetch_add(1, Ordering::Relaxed);
        let mask = keep_mask(
            self.drop.seed.load(Ordering::Relaxed),
            stream,
            x.elem_count(),
            p,
        );
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
        Ok(ops::dropout(x, &mask, p)?)
    }
}

#[derive(Debug)]
pub(crate) struct LoraLayer {
    /// `[r, in]`
    pub a: Var,
    /// `[out, r]`
    pub b: Var,
    pub scale: f64,
    pub dropout: f32,
    /// The base weight before merging; restoring it makes unmerge bit-exact.
    pub merged_from: Option<Tensor>,
}

#[derive(Debug)]
pub(crate) struct Linear {
    /// HF module path, e.g. `transformer.h.0.attn.c_attn`.
    pub name: String,
    pub weight: Var,
    pub bias: Option<Var>,
    /// GPT-2 `Conv1D`: weight stored `[in, out]`, `y = x W + b`.
    pub conv1d: bool,
    pub in_dim: usize,
    pub out_dim: usize,
    pub lora: Option<LoraLayer>,
}

impl Linear {
    pub fn new(
        b: &mut Builder,
        name: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        conv1d: bool,
        std: f64,
    ) -> Result<Self> {
        let shape = if conv1d {
            [in_dim, out_dim]
        } else {
            [out_dim, in_dim]
        };
        let weight = b.var(&format!("{name}.weight"), &shape, Init::Normal(std))?;
        let bias = if bias {
            Some(b.var(&format!("{name}.bias"), &[out_dim], Init::Zeros)?)
        } else {
            None
        };
        Ok(Self {
            name: name.to_string(),
            weight,
            bias,
            conv1d,
            in_dim,
            out_dim,
            lora: None,
        })
    }

    pub fn forward(&self, x: &Tensor, f: &Fwd) -> Result<Tensor> {
        let layout = if self.conv1d {
            codex_ops::WeightLayout::InOut
        } else {
            codex_ops::WeightLayout::OutIn
        };
        let w = f.matrix(&self.weight);
        if f.frozen {
            // Frozen base (LoRA): backward needs dx only. On CPU f32 one op that skips the
            // weight-gradient GEMM candle's matmul would run and discard; candle elsewhere.
            let b = self.bias.as_ref().map(|b| f.w(b));
            if let Some(l) = &self.lora
                && l.merged_from.is_none()
                && (l.dropout <= 0.0 || !f.train)
            {
                // Base and adapter in one op (no adapter dropout to draw).
                return Ok(codex_ops::lora_linear(
                    x,
                    &w,
                    b.as_ref(),
                    &f.p(&l.a),
                    &f.p(&l.b),
                    l.scale,
                    layout,
                )?);
            }
            let y = codex_ops::frozen_linear(x, &w, b.as_ref(), layout)?;
            return self.add_lora(x, y, f);
        }
        match (&self.bias, &self.lora) {
            // Trainable weight (and bias): one fused op on any leading shape.
            (Some(bias), None) => return Ok(codex_ops::linear(x, &w, &f.w(bias), layout)?),
            (None, None) => return Ok(codex_ops::linear_no_bias(x, &w, layout)?),
            _ => {}
        }
        let dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, self.in_dim))?;
        // candle's matmul wants f32 on both sides.
        let w = f.w(&self.weight);
        let y = layout.matmul(&x2, &w)?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.out_dim;
        }
        self.add_lora(x, y.reshape(out)?, f)
    }

    /// `gelu(u)` (tanh form) through this layer. A trainable layer with a bias and no adapter
    /// takes both in one op that keeps no activation for backward ([`codex_ops::gelu_linear`]);
    /// anything else applies GELU, then [`Self::forward`].
    pub fn forward_gelu(&self, u: &Tensor, f: &Fwd) -> Result<Tensor> {
        if let (false, Some(bias), None) = (f.frozen, &self.bias, &self.lora) {
            let layout = if self.conv1d {
                codex_ops::WeightLayout::InOut
            } else {
                codex_ops::WeightLayout::OutIn
            };
            return Ok(codex_ops::gelu_linear(
                u,
                &f.matrix(&self.weight),
                &f.w(bias),
                layout,
            )?);
        }
        self.forward(&crate::ops::gelu_tanh(u)?, f)
    }

    /// `y + scale · dropout(x) Aᵀ Bᵀ` while an unmerged adapter is attached; `y` as is otherwise.
    fn add_lora(&self, x: &Tensor, y: Tensor, f: &Fwd) -> Result<Tensor> {
        let Some(l) = &self.lora else { return Ok(y) };
        if l.merged_from.is_some() {
            return Ok(y);
        }
        let rows = x.elem_count() / self.in_dim;
        let xd = f.dropout(&x.reshape((rows, self.in_dim))?, l.dropout)?;
        let h = xd.matmul(&f.p(&l.a).t()?)?.matmul(&f.p(&l.b).t()?)?;
        let h = (h * l.scale)?.reshape(y.shape())?;
        Ok((y + h)?)
    }

    /// `scale · B A`, in the weight's layout and dtype.
    pub fn lora_delta(&self) -> Result<Option<Tensor>> {
        let Some(l) = &self.lora else { return Ok(None) };
        let a = l.a.as_tensor().detach();
        let b = l.b.as_tensor().detach();
        let d = (b.matmul(&a)? * l.scale)?;
        let d = if self.conv1d { d.t()?.contiguous()? } else { d };
        Ok(Some(d.to_dtype(self.weight.dtype())?))
    }

    pub fn merge(&mut self) -> Result<()> {
        let Some(delta) = self.lora_delta()? else {
            return Ok(());
        };
        let Some(l) = &mut self.lora else {
            return Ok(());
        };
        if l.merged_from.is_some() {
            return Ok(());
        }
        let orig = self.weight.as_tensor().detach().copy()?;
        self.weight.set(&(&orig + delta)?)?;
        l.merged_from = Some(orig);
        Ok(())
    }

    pub fn unmerge(&mut self) -> Result<()> {
        if let Some(l) = &mut self.lora
            && let Some(orig) = l.merged_from.take()
        {
            self.weight.set(&orig)?;
        }
        Ok(())
    }
}

pub(crate) struct Norm {
    pub weight: Var,
    pub bias: Option<Var>,
    pub eps: f64,
    pub rms: bool,
}

impl Norm {
    pub fn layer_norm(b: &mut Builder, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: b.var(&format!("{name}.weight"), &[dim], Init::Ones)?,
            bias: Some(b.var(&format!("{name}.bias"), &[dim], Init::Zeros)?),
            eps,
            rms: false,
        })
    }

    pub fn rms_norm(b: &mut Builder, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: b.var(&format!("{name}.weight"), &[dim], Init::Ones)?,
            bias: None,
            eps,
            rms: true,
        })
    }

    pub fn forward(&self, x: &Tensor, f: &Fwd) -> Result<Tensor> {
        let w = f.w(&self.weight);
        Ok(if self.rms {
            ops::rms_norm(x, &w, self.eps)?
        } else {
            let b = self.bias.as_ref().map(|b| f.w(b));
            ops::layer_norm(x, &w, b.as_ref(), self.eps)?
        })
    }
}

/// Token embedding lookup for `[B, T]` ids, plus `positions` (`[T, d]`) when given.
pub(crate) fn embed(table: &Tensor, ids: &Tensor, positions: Option<&Tensor>) -> Result<Tensor> {
    Ok(codex_ops::embedding(table, ids, positions)?)
}

/// LM head `[B, T, d] x [V, d]^T -> [B, T, V]`. Frozen (LoRA), through
/// [`codex_ops::frozen_linear`]: at a 49k vocabulary the weight gradient candle would compute and
/// drop is the largest GEMM of the step. Trainable, through [`codex_ops::linear_no_bias`] over the
/// `[B*T, d]` rows: a broadcast matmul would make backward compute a `[B, d, V]` weight gradient
/// and sum it over `B`.
pub(crate) fn lm_head(h: &Tensor, head: &Tensor, f: &Fwd) -> Result<Tensor> {
    if f.frozen {
        return Ok(codex_ops::frozen_linear(
            h,
            head,
            None,
            codex_ops::WeightLayout::OutIn,
        )?);
    }
    Ok(codex_ops::linear_no_bias(
        h,
        head,
        codex_ops::WeightLayout::OutIn,
    )?)
}

/// Masking used by [`attention`].
pub(crate) enum Mask<'a> {
    Causal,
    Additive(&'a Tensor),
}

/// Scaled dot-product attention over `[B, H, T, hd]` tensors.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Mask,
    dropout: f32,
    f: &Fwd,
) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(3)? as f64).sqrt();
    let scores = q.matmul(&k.t()?)?;
    let probs = match mask {
        Mask::Causal => ops::causal_softmax(&scores, scale)?,
        Mask::Additive(m) => ops::masked_softmax(&(scores * scale)?, m)?,
    };
    let probs = f.dropout(&probs, dropout)?;
    Ok(probs.matmul(v)?)
}

/// `[B, T, H*hd]` → `[B, H, T, hd]`, contiguous.
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    Ok(x.reshape((b, t, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// `[B, H, T, hd]` → `[B, T, H*hd]`.
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, hd) = x.dims4()?;
    Ok(x.transpose(1, 2)?.reshape((b, t, h * hd))?)
}
