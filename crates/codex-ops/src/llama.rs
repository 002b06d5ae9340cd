//! The Llama block's ops besides its linears, fused: RMSNorm, SwiGLU, and grouped-query causal
//! attention with the rotary embedding applied inside.
//!
//! Composed from candle ops, one Llama layer records about forty nodes (RMSNorm alone is six:
//! square, mean, add, sqrt, divide, multiply; RoPE six per tensor; three head splits with copies;
//! the key/value heads expanded and copied for each query head), each allocating a fresh output
//! and, in backward, a zero-filled gradient accumulator. Fine-tuning SmolLM2-135M spent most of
//! its non-GEMM time there (`benches/finetune_smollm2.sh` under `perf`). Here each is one op
//! forward and one backward; attention reads the projections where they lie (`[B, T, H·hd]`),
//! rotates queries and keys into scratch buffers, indexes the shared key/value head of each query
//! head instead of copying it, and recomputes the probabilities in backward from the saved
//! log-sum-exp (as [`crate::causal_attention`] does).

use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, D, DType, Layout, Result, Shape, Tensor, bail,
};
use rayon::prelude::*;

use crate::attention::{Dest, Operand, head_backward, head_forward};
use crate::matmul::{SharedMut, View};
use crate::simd::{self, with_avx2};
use crate::util::{ROWS_PER_TASK, cpu_tensor, f32_slice, is_cpu_f32, rows_cols, with_f32};

const CHUNK: usize = 4096;

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct RmsNorm {
    eps: f32,
}

/// `1 / sqrt(mean(x²) + eps)` of one row.
#[inline(always)]
fn rrms(x: &[f32], eps: f32) -> f32 {
    1.0 / (simd::sum_sq_dev(x, 0.0) / x.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "codex-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, d) = rows_cols(l1, "rms_norm")?;
        let x = f32_slice(s1, l1, "rms_norm (x)")?;
        let w = f32_slice(s2, l2, "rms_norm (weight)")?;
        if w.len() != d {
            bail!(
                "rms_norm: weight has {} elements, the last dim of x is {d}",
                w.len()
            );
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(y, x)| {
                with_avx2(
                    #[inline(always)]
                    || {
                        for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                            let r = rrms(x, self.eps);
                            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                                *y = x * r * w;
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// With g = dy·w and r = 1/rms(x): dx = r·g − x·r³·mean(g·x); dw = Σ_rows dy·x·r.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, d) = rows_cols(x.layout(), "rms_norm backward")?;
        let eps = self.eps;
        let op = "rms_norm backward";
        let (dx, dw) = with_f32(x, op, |x| {
            with_f32(w, op, |w| {
                with_f32(grad_res, op, |dy| {
                    let mut dx = vec![0f32; x.len()];
                    let chunk = d * ROWS_PER_TASK;
                    let partials = dx
                        .par_chunks_mut(chunk)
                        .zip(x.par_chunks(chunk))
                        .zip(dy.par_chunks(chunk))
                        .map(|((dx, x), dy)| {
                            with_avx2(
                                #[inline(always)]
                                || {
                                    let mut dw = vec![0f32; d];
                                    for ((dx, x), dy) in dx
                                        .chunks_exact_mut(d)
                                        .zip(x.chunks_exact(d))
                                        .zip(dy.chunks_exact(d))
                                    {
                                        let r = rrms(x, eps);
                                        let c = r * r * r * simd::dot3(dy, w, x) / d as f32;
                                        for i in 0..d {
                                            dw[i] += dy[i] * x[i] * r;
                                            dx[i] = r * dy[i] * w[i] - x[i] * c;
                                        }
                                    }
                                    dw
                                },
                            )
                        })
                        .collect::<Vec<_>>();
                    // Partials added in chunk order: bitwise reproducible.
                    Ok((dx, crate::util::sum_in_order(&partials, d)))
                })
            })
        })?;
        Ok((
            Some(cpu_tensor(dx, x.shape())?),
            Some(cpu_tensor(dw, w.shape())?),
        ))
    }
}

/// RMSNorm of `x` over its last dimension, as HF's `LlamaRMSNorm`:
/// `x / sqrt(mean(x²) + eps) · weight`. Fused forward and backward (to x and weight) on CPU f32;
/// [`rms_norm_reference`] otherwise.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    if is_cpu_f32(x) && is_cpu_f32(weight) {
        x.contiguous()?
            .apply_op2(&weight.contiguous()?, RmsNorm { eps })
    } else {
        rms_norm_reference(x, weight, eps)
    }
}

/// The candle composition, statistics in f32.
pub fn rms_norm_reference(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf
        .broadcast_div(&(ms + f64::from(eps))?.sqrt()?)?
        .to_dtype(dtype)?;
    y.broadcast_mul(weight)
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

struct SwiGlu;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + simd::exp(-x))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "codex-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!(
                "swiglu: gate {:?} and up {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let g = f32_slice(s1, l1, "swiglu (gate)")?;
        let u = f32_slice(s2, l2, "swiglu (up)")?;
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| {
                with_avx2(
                    #[inline(always)]
                    || {
                        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                            *y = g * sigmoid(g) * u;
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// d/dgate = dy·u·σ(g)·(1 + g·(1 − σ(g))); d/dup = dy·silu(g).
    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = "swiglu backward";
        let (dg, du) = with_f32(gate, op, |g| {
            with_f32(up, op, |u| {
                with_f32(grad_res, op, |dy| {
                    let mut dg = vec![0f32; g.len()];
                    let mut du = vec![0f32; g.len()];
                    dg.par_chunks_mut(CHUNK)
                        .zip(du.par_chunks_mut(CHUNK))
                        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
                        .zip(dy.par_chunks(CHUNK))
                        .for_each(|(((dg, du), (g, u)), dy)| {
                            with_avx2(
                                #[inline(always)]
                                || {
                                    for i in 0..g.len() {
                                        let s = sigmoid(g[i]);
                                        du[i] = dy[i] * g[i] * s;
                                        dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                                    }
                                },
                            )
                        });
                    Ok((dg, du))
                })
            })
        })?;
        Ok((
            Some(cpu_tensor(dg, gate.shape())?),
            Some(cpu_tensor(du, up.shape())?),
        ))
    }
}

/// SwiGLU, `silu(gate) · up` (the Llama MLP's activation). Fused on CPU f32;
/// [`swiglu_reference`] otherwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(gate) && is_cpu_f32(up) && gate.shape() == up.shape() {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    } else {
        swiglu_reference(gate, up)
    }
}

/// The candle composition.
pub fn swiglu_reference(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding

/// cos/sin of each position `0..t` and frequency `0..hd/2`, `[t, hd/2]` each, computed as HF
/// does (inverse frequencies in f64 then f32, angles and their cos/sin in f32), so the fused
/// and composed paths rotate by bitwise the same tables.
pub fn rope_tables(t: usize, hd: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = hd / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf(2.0 * i as f64 / hd as f64)) as f32)
        .collect();
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in 0..t {
        for &f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// Rotates each `hd`-wide head of each row of `x` (`[rows, heads·hd]`, row `r` at position
/// `r mod t`) in place, HF's "rotate_half" layout; `inverse` applies the transpose (the
/// backward of the rotation).
fn rotate(
    x: &mut [f32],
    width: usize,
    t: usize,
    hd: usize,
    cos: &[f32],
    sin: &[f32],
    inverse: bool,
) {
    let half = hd / 2;
    x.par_chunks_mut(width * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(ci, rows)| {
            with_avx2(
                #[inline(always)]
                || {
                    for (ri, row) in rows.chunks_exact_mut(width).enumerate() {
                        let pos = (ci * ROWS_PER_TASK + ri) % t;
                        let (c, s) = (
                            &cos[pos * half..(pos + 1) * half],
                            &sin[pos * half..(pos + 1) * half],
                        );
                        for head in row.chunks_exact_mut(hd) {
                            let (x1, x2) = head.split_at_mut(half);
                            for j in 0..half {
                                let (a, b) = (x1[j], x2[j]);
                                if inverse {
                                    x1[j] = a * c[j] + b * s[j];
                                    x2[j] = b * c[j] - a * s[j];
                                } else {
                                    x1[j] = a * c[j] - b * s[j];
                                    x2[j] = b * c[j] + a * s[j];
                                }
                            }
                        }
                    }
                },
            )
        });
}

// ---------------------------------------------------------------------------------------------
// Grouped-query causal attention with RoPE

#[derive(Clone, Copy, Debug)]
struct Gqa {
    b: usize,
    t: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: f32,
}

impl Gqa {
    fn of(q: &Shape, k: &Shape, v: &Shape, heads: usize, kv_heads: usize) -> Result<Self> {
        let (&[b, t, dq], &[bk, tk, dk], &[bv, tv, dv]) = (q.dims(), k.dims(), v.dims()) else {
            bail!(
                "rope_attention: expected q, k, v of shape (batch, time, heads·hd), got {q:?}, {k:?}, {v:?}"
            )
        };
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || !dq.is_multiple_of(heads)
        {
            bail!(
                "rope_attention: {heads} heads and {kv_heads} kv heads do not divide q's {dq} columns"
            );
        }
        let hd = dq / heads;
        if !hd.is_multiple_of(2)
            || (bk, tk, dk) != (b, t, kv_heads * hd)
            || (bv, tv, dv) != (b, t, kv_heads * hd)
        {
            bail!(
                "rope_attention: k {k:?} and v {v:?} must be ({b}, {t}, {}) with an even head dim {hd}",
                kv_heads * hd
            );
        }
        Ok(Self {
            b,
            t,
            heads,
            kv_heads,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
        })
    }

    fn rep(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Query head `h` of batch `bi` in a `[B, T, heads·hd]` buffer.
    fn qv(&self, bi: usize, h: usize) -> View {
        let w = self.heads * self.hd;
        View::rows(bi * self.t * w + h * self.hd, self.t, self.hd, w)
    }

    /// Key/value head `g` of batch `bi` in a `[B, T, kv_heads·hd]` buffer.
    fn kvv(&self, bi: usize, g: usize) -> View {
        let w = self.kv_heads * self.hd;
        View::rows(bi * self.t * w + g * self.hd, self.t, self.hd, w)
    }
}

struct RopeAttention {
    heads: usize,
    kv_heads: usize,
    theta: f64,
    /// `log Σ exp` of each query row's scaled scores, `[B, heads, T]`, from the forward pass.
    lse: Mutex<Vec<f32>>,
}

impl RopeAttention {
    /// Rotated copies of q and k (recomputed in backward rather than kept alive).
    fn rotated(&self, dm: &Gqa, q: &[f32], k: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (cos, sin) = rope_tables(dm.t, dm.hd, self.theta);
        let mut qr = q.to_vec();
        let mut kr = k.to_vec();
        rotate(&mut qr, dm.heads * dm.hd, dm.t, dm.hd, &cos, &sin, false);
        rotate(&mut kr, dm.kv_heads * dm.hd, dm.t, dm.hd, &cos, &sin, false);
        (qr, kr)
    }
}

impl CustomOp3 for RopeAttention {
    fn name(&self) -> &'static str {
        "codex-rope-gqa-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = Gqa::of(
            l1.shape(),
            l2.shape(),
            l3.shape(),
            self.heads,
            self.kv_heads,
        )?;
        let q = f32_slice(s1, l1, "rope_attention (q)")?;
        let k = f32_slice(s2, l2, "rope_attention (k)")?;
        let v = f32_slice(s3, l3, "rope_attention (v)")?;
        let (qr, kr) = self.rotated(&dm, q, k);
        let t = dm.t;
        // Not zero-filled (a memset as large as the output): every element is written below.
        let y_len = q.len();
        let mut y: Vec<f32> = Vec::with_capacity(y_len);
        let mut lse = vec![0f32; dm.b * dm.heads * t];
        let yp = SharedMut(y.as_mut_ptr());
        lse.par_chunks_mut(t.max(1)).enumerate().for_each_init(
            || vec![0f32; t * t],
            |p, (u, lse)| {
                with_avx2(
                    #[inline(always)]
                    || {
                        // Task (b, h) alone writes head h's columns of batch b's rows.
                        let (bi, h) = (u / dm.heads, u % dm.heads);
                        let (qv, kv) = (dm.qv(bi, h), dm.kvv(bi, h / dm.rep()));
                        head_forward(
                            p,
                            dm.scale,
                            Operand { buf: &qr, view: qv },
                            Operand { buf: &kr, view: kv },
                            Operand { buf: v, view: kv },
                            Dest {
                                ptr: yp,
                                len: y_len,
                                view: qv,
                            },
                            lse,
                        );
                    },
                )
            },
        );
        // SAFETY: the capacity is `y_len`; the (b, h) tasks cover every batch's rows and every
        // query head's columns, and `head_forward` writes each of its rows (blocks cover `0..t`,
        // through `gemm_into` with `accumulate = false`, which writes its whole view).
        unsafe { y.set_len(y_len) };
        *self
            .lse
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = lse;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = Gqa::of(q.shape(), k.shape(), v.shape(), self.heads, self.kv_heads)?;
        let lse = self
            .lse
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lse.len() != dm.b * dm.heads * dm.t {
            bail!("rope_attention backward: the forward pass did not run on the CPU");
        }
        let (t, hd, rep) = (dm.t, dm.hd, dm.rep());
        let op = "rope_attention backward";
        let (dq, dk, dv) = with_f32(q, op, |q| {
            with_f32(k, op, |k| {
                with_f32(v, op, |v| {
                    with_f32(res, op, |y| {
                        with_f32(grad_res, op, |dy| {
                            let (qr, kr) = self.rotated(&dm, q, k);
                            // Not zero-filled: every element is written below.
                            let (nq, nk) = (q.len(), k.len());
                            let mut dq: Vec<f32> = Vec::with_capacity(nq);
                            let mut dk: Vec<f32> = Vec::with_capacity(nk);
                            let mut dv: Vec<f32> = Vec::with_capacity(nk);
                            let (dqp, dkp, dvp) = (
                                SharedMut(dq.as_mut_ptr()),
                                SharedMut(dk.as_mut_ptr()),
                                SharedMut(dv.as_mut_ptr()),
                            );
                            // One task per (batch, kv head): it alone writes that kv head's rows
                            // of dk/dv (its first query head writes them, the others add to them,
                            // in a fixed order) and those query heads' columns of dq.
                            (0..dm.b * dm.kv_heads).into_par_iter().for_each_init(
                                || (vec![0f32; t * t], vec![0f32; t * t]),
                                |(p, ds), u| {
                                    with_avx2(
                                        #[inline(always)]
                                        || {
                                            let (bi, g) = (u / dm.kv_heads, u % dm.kv_heads);
                                            let kv = dm.kvv(bi, g);
                                            for h in g * rep..(g + 1) * rep {
                                                let qv = dm.qv(bi, h);
                                                head_backward(
                                                    (p, ds),
                                                    dm.scale,
                                                    (
                                                        Operand { buf: &qr, view: qv },
                                                        Operand { buf: &kr, view: kv },
                                                        Operand { buf: v, view: kv },
                                                    ),
                                                    (y, dy, qv),
                                                    &lse[(bi * dm.heads + h) * t..][..t],
                                                    (
                                                        Dest {
                                                            ptr: dqp,
                                                            len: nq,
                                                            view: qv,
                                                        },
                                                        Dest {
                                                            ptr: dkp,
                                                            len: nk,
                                                            view: kv,
                                                        },
                                                        Dest {
                                                            ptr: dvp,
                                                            len: nk,
                                                            view: kv,
                                                        },
                                                    ),
                                                    h != g * rep,
                                                    true,
                                                );
                                            }
                                        },
                                    )
                                },
                            );
                            // SAFETY: the capacities are `nq` and `nk`; the (b, kv head) tasks
                            // cover every batch and head, `head_backward` writes all of its dq
                            // rows, and each kv head's first query head writes (does not add to)
                            // all of its dk and dv rows (query and key blocks cover `0..t`).
                            unsafe {
                                dq.set_len(nq);
                                dk.set_len(nk);
                                dv.set_len(nk);
                            }
                            // Gradients of the rotated q and k back through the rotation.
                            let (cos, sin) = rope_tables(t, hd, self.theta);
                            rotate(&mut dq, dm.heads * hd, t, hd, &cos, &sin, true);
                            rotate(&mut dk, dm.kv_heads * hd, t, hd, &cos, &sin, true);
                            Ok((dq, dk, dv))
                        })
                    })
                })
            })
        })?;
        Ok((
            Some(cpu_tensor(dq, q.shape())?),
            Some(cpu_tensor(dk, k.shape())?),
            Some(cpu_tensor(dv, v.shape())?),
        ))
    }
}

/// Causal self-attention of the Llama family: `q` `[B, T, heads·hd]`, `k` and `v`
/// `[B, T, kv_heads·hd]` (the projections as they come out of their linears), RoPE (HF
/// "rotate_half", base `theta`, positions `0..T`) applied to q and k, each kv head shared by
/// `heads / kv_heads` query heads, scores scaled by `1/sqrt(hd)` → `[B, T, heads·hd]` with heads
/// merged. One fused op forward and one backward on CPU f32; [`rope_attention_reference`]
/// elsewhere.
pub fn rope_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    kv_heads: usize,
    theta: f64,
) -> Result<Tensor> {
    Gqa::of(q.shape(), k.shape(), v.shape(), heads, kv_heads)?;
    if is_cpu_f32(q) && is_cpu_f32(k) && is_cpu_f32(v) {
        q.contiguous()?.apply_op3(
            &k.contiguous()?,
            &v.contiguous()?,
            RopeAttention {
                heads,
                kv_heads,
                theta,
                lse: Mutex::new(Vec::new()),
            },
        )
    } else {
        rope_attention_reference(q, k, v, heads, kv_heads, theta)
    }
}

/// The candle composition (what HF's eager Llama attention computes): split heads, rotate q and
/// k, repeat the kv heads, `softmax(q kᵀ / sqrt(hd) + causal mask) v`, merge heads.
pub fn rope_attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    kv_heads: usize,
    theta: f64,
) -> Result<Tensor> {
    let dm = Gqa::of(q.shape(), k.shape(), v.shape(), heads, kv_heads)?;
    let (b, t, hd) = (dm.b, dm.t, dm.hd);
    let split = |x: &Tensor, n: usize| -> Result<Tensor> {
        x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()
    };
    let (cos, sin) = rope_tables(t, hd, theta);
    let half = hd / 2;
    let table = |v: Vec<f32>| -> Result<Tensor> {
        let h = Tensor::from_vec(v, (t, half), q.device())?.to_dtype(q.dtype())?;
        Tensor::cat(&[&h, &h], 1)
    };
    let (cos, sin) = (table(cos)?, table(sin)?);
    let rope = |x: &Tensor| -> Result<Tensor> {
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    };
    let rep = dm.rep();
    let repeat = |x: Tensor| -> Result<Tensor> {
        if rep == 1 {
            return Ok(x);
        }
        x.unsqueeze(2)?
            .expand((b, kv_heads, rep, t, hd))?
            .reshape((b, heads, t, hd))
    };
    let qh = rope(&split(q, heads)?)?;
    let kh = repeat(rope(&split(k, kv_heads)?)?)?;
    let vh = repeat(split(v, kv_heads)?)?;
    let scores = qh.contiguous()?.matmul(&kh.t()?)?;
    let probs = crate::softmax::causal_softmax_reference(&scores, f64::from(dm.scale))?;
    probs
        .matmul(&vh.contiguous()?)?
        .transpose(1, 2)?
        .reshape((b, t, heads * hd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::{assert_close, rand};
    use candle_core::{Device, Var};

    #[test]
    fn rms_norm_matches_candle_composition() -> Result<()> {
        let x = Var::from_tensor(&rand(1, &[3, 5, 40], 2.0)?)?;
        let w = Var::from_tensor(&(rand(2, &[40], 0.5)? + 1.0)?)?;
        let r = rand(3, &[3, 5, 40], 1.0)?;
        let y1 = rms_norm(&x, &w, 1e-5)?;
        let y2 = rms_norm_reference(&x, &w, 1e-5)?;
        assert_close(&y1, &y2, 1e-6, "rms_norm forward")?;
        let g1 = (y1 * &r)?.sum_all()?.backward()?;
        let g2 = (y2 * &r)?.sum_all()?.backward()?;
        for (v, what) in [(&x, "dx"), (&w, "dw")] {
            let (Some(a), Some(b)) = (g1.get(v), g2.get(v)) else {
                panic!("missing {what}")
            };
            assert_close(a, b, 1e-5, what)?;
        }
        Ok(())
    }

    #[test]
    fn swiglu_matches_candle_composition() -> Result<()> {
        let g = Var::from_tensor(&rand(4, &[2, 7, 9000], 6.0)?)?;
        let u = Var::from_tensor(&rand(5, &[2, 7, 9000], 2.0)?)?;
        let r = rand(6, &[2, 7, 9000], 1.0)?;
        let y1 = swiglu(&g, &u)?;
        let y2 = swiglu_reference(&g, &u)?;
        assert_close(&y1, &y2, 1e-6, "swiglu forward")?;
        let g1 = (y1 * &r)?.sum_all()?.backward()?;
        let g2 = (y2 * &r)?.sum_all()?.backward()?;
        for (v, what) in [(&g, "dgate"), (&u, "dup")] {
            let (Some(a), Some(b)) = (g1.get(v), g2.get(v)) else {
                panic!("missing {what}")
            };
            assert_close(a, b, 1e-5, what)?;
        }
        Ok(())
    }

    fn check_attention(b: usize, t: usize, heads: usize, kv_heads: usize, hd: usize) -> Result<()> {
        let q = Var::from_tensor(&rand(7, &[b, t, heads * hd], 1.5)?)?;
        let k = Var::from_tensor(&rand(8, &[b, t, kv_heads * hd], 1.5)?)?;
        let v = Var::from_tensor(&rand(9, &[b, t, kv_heads * hd], 1.0)?)?;
        let r = rand(10, &[b, t, heads * hd], 1.0)?;
        let y1 = rope_attention(&q, &k, &v, heads, kv_heads, 10_000.0)?;
        let y2 = rope_attention_reference(&q, &k, &v, heads, kv_heads, 10_000.0)?;
        assert_close(&y1, &y2, 1e-5, "attention forward")?;
        let g1 = (y1 * &r)?.sum_all()?.backward()?;
        let g2 = (y2 * &r)?.sum_all()?.backward()?;
        for (x, what) in [(&q, "dq"), (&k, "dk"), (&v, "dv")] {
            let (Some(a), Some(b)) = (g1.get(x), g2.get(x)) else {
                panic!("missing {what}")
            };
            assert_close(a, b, 1e-4, what)?;
        }
        Ok(())
    }

    #[test]
    fn attention_matches_candle_composition_multi_head() -> Result<()> {
        check_attention(2, 7, 3, 3, 8)
    }

    #[test]
    fn attention_matches_candle_composition_grouped_across_blocks() -> Result<()> {
        // 70 rows = two full blocks and a partial one; 3 query heads per kv head (SmolLM2's
        // 9/3), head dim 64.
        check_attention(2, 70, 6, 2, 64)
    }

    #[test]
    fn attention_is_deterministic() -> Result<()> {
        let q = Var::from_tensor(&rand(11, &[2, 40, 4 * 16], 1.0)?)?;
        let k = Var::from_tensor(&rand(12, &[2, 40, 16], 1.0)?)?;
        let v = Var::from_tensor(&rand(13, &[2, 40, 16], 1.0)?)?;
        let run = || -> Result<Vec<f32>> {
            let y = rope_attention(&q, &k, &v, 4, 1, 500_000.0)?;
            let g = y.sqr()?.sum_all()?.backward()?;
            let Some(dk) = g.get(&k) else {
                panic!("missing dk")
            };
            dk.flatten_all()?.to_vec1::<f32>()
        };
        assert_eq!(run()?, run()?);
        Ok(())
    }

    #[test]
    fn rejects_bad_shapes() {
        let z = |d: usize| Tensor::zeros((2, 3, d), DType::F32, &Device::Cpu).unwrap();
        let err = rope_attention(&z(12), &z(8), &z(8), 3, 2, 1e4).unwrap_err();
        assert!(err.to_string().contains("do not divide"), "{err}");
        let err = rope_attention(&z(12), &z(6), &z(4), 2, 1, 1e4).unwrap_err();
        assert!(err.to_string().contains("must be"), "{err}");
    }
}
