//! The elementwise and normalisation ops of every forward pass, as free functions.
//!
//! This file is the seam for the fused CPU kernels of `codex-ops`: layer norm (with bias), GELU
//! (tanh), RMSNorm, SwiGLU and the causal softmax go through them, which on CPU f32 run one kernel forward and
//! one backward instead of five to ten allocating candle ops, and fall back to the same candle
//! compositions on other devices and dtypes. Every op here must support backward (candle-nn's
//! fused `layer_norm`/`rms_norm`/`softmax_last_dim` have none on CPU, hence the composed
//! versions of the rest).

use candle_core::{D, DType, Result, Tensor};

fn internal(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// LayerNorm over the last dim (statistics in f32), `bias` optional.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    if let Some(b) = bias {
        // Fused on CPU f32; the same composition as below otherwise.
        return codex_ops::layer_norm(x, weight, b, eps as f32);
    }
    let dtype = x.dtype();
    let xf = internal(x)?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let xc = xf.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    let y = y.broadcast_mul(weight)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// RMSNorm over the last dim (statistics in f32), as in HF `LlamaRMSNorm`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return codex_ops::rms_norm(x, weight, eps as f32);
    }
    let dtype = x.dtype();
    let xf = internal(x)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf.broadcast_div(&(ms + eps)?.sqrt()?)?.to_dtype(dtype)?;
    y.broadcast_mul(weight)
}

/// GELU, tanh approximation (HF `gelu_new` / `gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    codex_ops::gelu(x)
}

/// GELU, exact erf form (HF `gelu`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// SwiGLU: `silu(gate) * up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    codex_ops::swiglu(gate, up)
}

fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// Softmax of attention scores `[B, H, T, S]` with a causal mask (query `t` sees keys
/// `0..=t + S - T`), computed in f32 and returned in the input dtype. `scale` multiplies the
/// scores first; on CPU f32 it is fused into the kernel (no separate `[B, H, T, S]` op).
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    if scores.device().is_cpu() && scores.dtype() == DType::F32 {
        return codex_ops::causal_softmax(scores, scale);
    }
    let scores = &(scores * scale)?;
    let (t, s) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    let offset = s.saturating_sub(t);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if j <= i + offset {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, s), scores.device())?;
    let x = internal(scores)?.broadcast_add(&mask)?;
    softmax_last(&x)?.to_dtype(scores.dtype())
}

/// Causal self-attention of a packed `[B, T, 3·d]` projection (GPT-2's `c_attn` output) to
/// `[B, T, d]`, heads merged. Fused on CPU f32 (`codex_ops::causal_attention`).
pub fn causal_attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    codex_ops::causal_attention(qkv, heads)
}

/// Softmax of attention scores plus an additive mask broadcastable to them (BERT padding).
pub fn masked_softmax(scores: &Tensor, additive_mask: &Tensor) -> Result<Tensor> {
    let x = internal(scores)?.broadcast_add(&additive_mask.to_dtype(DType::F32)?)?;
    softmax_last(&x)?.to_dtype(scores.dtype())
}

/// Rotary embedding, HF "rotate_half" layout: `x * cos + rotate_half(x) * sin`.
/// `x`: `[B, H, T, D]`, `cos`/`sin`: `[T, D]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Inverted dropout with a caller-drawn keep mask (1 keep, 0 drop) of `x`'s shape.
pub fn dropout(x: &Tensor, keep_mask: &Tensor, p: f32) -> Result<Tensor> {
    (x * keep_mask.to_dtype(x.dtype())?)? * (1.0 / (1.0 - p as f64))
}
