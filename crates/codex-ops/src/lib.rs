//! Fused CPU kernels for codex training.
//!
//! candle 0.11 spends most of a small model's CPU training step in per-op allocation and small
//! elementwise kernels (see `shared/design/PERFORMANCE.md`): its AdamW runs a dozen allocating
//! tensor ops per parameter, and composite ops such as layer norm or softmax record five to ten
//! nodes each, all of which backward visits. This crate replaces the hot chains with
//!
//! - [`adamw_step`]: an in-place, allocation-free AdamW update over f32 slices (parallel), plus
//!   [`grad_sq_norm`] / [`scale_inplace`] for clipping by global norm;
//! - candle `CustomOp`s with hand-written backward: [`layer_norm`], [`gelu`] (tanh
//!   approximation, GPT-2's `gelu_new`), [`causal_softmax`] (scale + causal mask + softmax) and
//!   [`cross_entropy`] (mean over tokens, producing `dlogits` directly), [`linear`] (matmul with
//!   the bias fused in), [`gelu_linear`] (GELU and the MLP's output projection, no activation
//!   kept), [`frozen_linear`] (constant weight: backward yields `dx` only, no
//!   weight-gradient GEMM), [`lora_linear`] (that plus a LoRA adapter in the same op) and [`causal_attention`] (packed `qkv` → merged heads, FlashAttention-style
//!   recomputation in backward), the last three calling the `gemm` kernels on strided views;
//! - [`embedding`]: the token lookup with GPT-2's positions added in the same pass, both
//!   gradients on the pool;
//! - the Llama block's [`rms_norm`], [`swiglu`] and [`rope_attention`] (grouped-query causal
//!   attention with RoPE applied inside, reading `q`/`k`/`v` as their linears wrote them);
//! - [`keep_freed_memory`]: glibc tuning so per-step tensor buffers are reused, not re-faulted.
//!
//! The elementwise loops are compiled twice, baseline and AVX2+FMA, and picked at run time
//! (`simd::with_avx2`); parallel reductions add per-chunk partials in a fixed order, so results are
//! bitwise reproducible whatever rayon's work stealing did (exact resume depends on it).
//!
//! Every public function takes the fused path for contiguous f32 tensors on the CPU and falls back
//! to plain candle ops otherwise (other dtypes, CUDA), so callers never need to branch.

mod adamw;
mod alloc;
mod attention;
pub mod bf16gemm;
pub mod blas;
mod elementwise;
mod embedding;
mod gelu;
mod linear;
mod llama;
mod matmul;
mod norm;
mod simd;
mod softmax;
mod util;
mod xent;

pub use adamw::{AdamWParams, adamw_step, adamw_update_slices, grad_sq_norm, scale_inplace};
pub use alloc::keep_freed_memory;
pub use attention::{causal_attention, causal_attention_reference};
pub use elementwise::{add, widen};
pub use embedding::{embedding, embedding_reference};
pub use gelu::{gelu, gelu_reference};
pub use linear::{
    WeightLayout, frozen_linear, frozen_linear_reference, gelu_linear, linear, linear_no_bias,
    linear_reference, lora_linear, lora_linear_reference,
};
pub use llama::{
    rms_norm, rms_norm_reference, rope_attention, rope_attention_reference, rope_tables, swiglu,
    swiglu_reference,
};
pub use norm::{layer_norm, layer_norm_reference};
pub use softmax::{causal_softmax, causal_softmax_reference};
pub use xent::{
    cross_entropy, cross_entropy_reference, linear_cross_entropy, linear_cross_entropy_reference,
};
