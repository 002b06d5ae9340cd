//! Causal multi-head self-attention from a packed `qkv` projection, forward and backward in one
//! op each.
//!
//! Composed from candle ops, one attention layer records about fifteen nodes (three head splits
//! with copies, two batched matmuls, the softmax, the head merge), and backward allocates a
//! gradient buffer plus a zero-filled accumulator for each. Here one task per (batch, head)
//! multiplies strided views of `qkv` directly with `gemm`, skips the masked upper triangle in
//! blocks of [`BLOCK`] rows, and keeps the per-row log-sum-exp of the softmax plus, while
//! `[B, H, T, T]` is small ([`KEEP_PROBS_MAX`]), the probabilities themselves; above that,
//! backward recomputes them from the log-sum-exp (as FlashAttention does).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, D, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::matmul::{SharedMut, View, gemm_into};
use crate::simd::{self, with_avx2};
use crate::util::{cpu_tensor, f32_slice, is_cpu_f32, with_f32};

/// Query rows per block: block `[r0, r1)` only multiplies keys `0..r1`.
const BLOCK: usize = 32;

/// Largest `B·H·T²` whose probabilities the forward pass keeps for backward (32 MiB of f32 per
/// layer). Below it, backward reads P instead of recomputing it: the recomputation is a `k = hd`
/// product (hd = 32 on the GPT benchmarks, where GEMMs run far below peak) plus an `exp` per
/// score, ~3% of a gpt-medium step. Above it (long contexts), memory wins and P is recomputed.
const KEEP_PROBS_MAX: usize = 8 << 20;

struct CausalAttention {
    heads: usize,
    /// `log Σ exp` of each query row's scaled scores, `[B, H, T]`, filled by the forward pass.
    lse: Mutex<Vec<f32>>,
    /// The probabilities, `[B, H, T, T]`, when the forward pass kept them (at most `keep_max`
    /// elements, [`KEEP_PROBS_MAX`] outside tests); empty otherwise.
    probs: Mutex<Vec<f32>>,
    keep_max: usize,
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    d: usize,
    heads: usize,
    hd: usize,
    scale: f32,
}

impl Dims {
    fn of(shape: &Shape, heads: usize) -> Result<Self> {
        let dims = shape.dims();
        let &[b, t, d3] = dims else {
            bail!("causal_attention: expected qkv of shape (batch, time, 3·d), got {dims:?}")
        };
        if d3 == 0 || d3 % 3 != 0 || heads == 0 || (d3 / 3) % heads != 0 {
            bail!("causal_attention: last dim {d3} must be 3·d with d divisible by {heads} heads");
        }
        let d = d3 / 3;
        let hd = d / heads;
        Ok(Self {
            b,
            t,
            d,
            heads,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
        })
    }

    /// Views of head `h` of batch `bi`: (q, k, v) in `qkv`, and the head's columns of a
    /// `[B, T, d]` tensor.
    fn views(&self, bi: usize, h: usize) -> (View, View, View, View) {
        let (t, d, hd) = (self.t, self.d, self.hd);
        let base = bi * t * 3 * d + h * hd;
        (
            View::rows(base, t, hd, 3 * d),
            View::rows(base + d, t, hd, 3 * d),
            View::rows(base + 2 * d, t, hd, 3 * d),
            View::rows(bi * t * d + h * hd, t, hd, d),
        )
    }
}

fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(BLOCK)
        .map(move |r0| (r0, (r0 + BLOCK).min(t)))
}

/// One head's `t × hd` operand: its buffer and where the head lies in it.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub buf: &'a [f32],
    pub view: View,
}

/// One head's `t × hd` destination in a buffer shared by parallel tasks (`len` elements at
/// `ptr`); the caller guarantees that no other task writes `view` meanwhile.
#[derive(Clone, Copy)]
pub(crate) struct Dest {
    pub ptr: SharedMut,
    pub len: usize,
    pub view: View,
}

/// `p[r0..r1, 0..r1] = scale · q[r0..r1] · k[0..r1]ᵀ` (`p` is `t × t`).
#[inline(always)]
fn scores(p: &mut [f32], t: usize, scale: f32, q: Operand, k: Operand, r0: usize, r1: usize) {
    let hd = q.view.cols;
    let n = p.len();
    gemm_into(
        p.as_mut_ptr(),
        n,
        View::rows(0, t, t, t).sub(r0, r1, 0, r1),
        q.buf,
        q.view.sub(r0, r1, 0, hd),
        k.buf,
        k.view.sub(0, r1, 0, hd).t(),
        scale,
        false,
        1,
    );
}

/// One head's causal attention, `y = softmax(scale · q kᵀ + mask) v`, block by block of query
/// rows (block `[r0, r1)` only multiplies keys `0..r1`), saving each row's log-sum-exp in `lse`
/// (`t`) for the backward. `p` is `t × t` scratch. Always inlined: callers run it inside
/// [`with_avx2`], which compiles it with AVX2 and FMA.
#[inline(always)]
pub(crate) fn head_forward(
    p: &mut [f32],
    scale: f32,
    q: Operand,
    k: Operand,
    v: Operand,
    y: Dest,
    lse: &mut [f32],
) {
    let (t, hd) = (q.view.rows, q.view.cols);
    for (r0, r1) in blocks(t) {
        scores(p, t, scale, q, k, r0, r1);
        for i in r0..r1 {
            let row = &mut p[i * t..i * t + r1];
            let (vis, masked) = row.split_at_mut(i + 1);
            let max = simd::max(vis);
            vis.iter_mut().for_each(|x| *x = simd::exp(*x - max));
            let sum = simd::sum(vis);
            let inv = 1.0 / sum;
            vis.iter_mut().for_each(|x| *x *= inv);
            masked.fill(0.0);
            lse[i] = max + sum.ln();
        }
        // y[r0..r1] = P[r0..r1, 0..r1] · v[0..r1].
        gemm_into(
            y.ptr.get(),
            y.len,
            y.view.sub(r0, r1, 0, hd),
            p,
            View::rows(0, t, t, t).sub(r0, r1, 0, r1),
            v.buf,
            v.view.sub(0, r1, 0, hd),
            1.0,
            false,
            1,
        );
    }
}

/// The backward of [`head_forward`] for one head: writes dq, and writes (or, with
/// `accumulate_kv`, adds to — several query heads sharing one kv head) dk and dv. With
/// `recompute`, `p` is scratch and P is recomputed from the saved log-sum-exp (as FlashAttention
/// does); without, `p` holds the probabilities `head_forward` left in it, read only. `y` and `dy`
/// are the output and its gradient, laid out as `y_view` in both buffers; `ds` is `t × t`
/// scratch. Always inlined, as [`head_forward`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn head_backward(
    (p, ds): (&mut [f32], &mut [f32]),
    scale: f32,
    (q, k, v): (Operand, Operand, Operand),
    (y, dy, y_view): (&[f32], &[f32], View),
    lse: &[f32],
    (dq, dk, dv): (Dest, Dest, Dest),
    accumulate_kv: bool,
    recompute: bool,
) {
    let (t, hd) = (q.view.rows, q.view.cols);
    let full = View::rows(0, t, t, t);
    for (r0, r1) in blocks(t) {
        // P again from the saved log-sum-exp (unless kept), then dP = dY · vᵀ.
        if recompute {
            scores(p, t, scale, q, k, r0, r1);
        }
        let ds_len = ds.len();
        gemm_into(
            ds.as_mut_ptr(),
            ds_len,
            full.sub(r0, r1, 0, r1),
            dy,
            y_view.sub(r0, r1, 0, hd),
            v.buf,
            v.view.sub(0, r1, 0, hd).t(),
            1.0,
            false,
            1,
        );
        for i in r0..r1 {
            let yo = y_view.offset + i * y_view.rs;
            // Σ_j P_ij dP_ij = dY_i · Y_i (the softmax backward's dot).
            let dot = simd::dot(&dy[yo..yo + hd], &y[yo..yo + hd]);
            let prow = &mut p[i * t..i * t + r1];
            let dsrow = &mut ds[i * t..i * t + r1];
            if recompute {
                let li = lse[i];
                for (pij, dsij) in prow[..=i].iter_mut().zip(&mut dsrow[..=i]) {
                    *pij = simd::exp(*pij - li);
                    *dsij = scale * *pij * (*dsij - dot);
                }
                prow[i + 1..].fill(0.0);
            } else {
                for (&pij, dsij) in prow[..=i].iter().zip(&mut dsrow[..=i]) {
                    *dsij = scale * pij * (*dsij - dot);
                }
            }
            dsrow[i + 1..].fill(0.0);
        }
        // dQ[r0..r1] = dS[r0..r1, 0..r1] · k[0..r1].
        gemm_into(
            dq.ptr.get(),
            dq.len,
            dq.view.sub(r0, r1, 0, hd),
            ds,
            full.sub(r0, r1, 0, r1),
            k.buf,
            k.view.sub(0, r1, 0, hd),
            1.0,
            false,
            1,
        );
    }
    // Keys j0..j1 receive from queries j0..t (entries above the diagonal were zeroed above).
    for (j0, j1) in blocks(t) {
        gemm_into(
            dk.ptr.get(),
            dk.len,
            dk.view.sub(j0, j1, 0, hd),
            ds,
            full.sub(j0, t, j0, j1).t(),
            q.buf,
            q.view.sub(j0, t, 0, hd),
            1.0,
            accumulate_kv,
            1,
        );
        gemm_into(
            dv.ptr.get(),
            dv.len,
            dv.view.sub(j0, j1, 0, hd),
            p,
            full.sub(j0, t, j0, j1).t(),
            dy,
            y_view.sub(j0, t, 0, hd),
            1.0,
            accumulate_kv,
            1,
        );
    }
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "codex-causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dm = Dims::of(l.shape(), self.heads)?;
        let qkv = f32_slice(s, l, "causal_attention")?;
        let (t, d) = (dm.t, dm.d);
        // Not zero-filled (a memset as large as the output): every element is written below.
        let y_len = dm.b * t * d;
        let mut y: Vec<f32> = Vec::with_capacity(y_len);
        let mut lse = vec![0f32; dm.b * dm.heads * t];
        let yp = SharedMut(y.as_mut_ptr());
        let run = |p: &mut [f32], u: usize, lse: &mut [f32]| {
            with_avx2(
                #[inline(always)]
                || {
                    // Task (b, h) alone writes the columns of head h in the rows of batch b.
                    let (q, k, v, yv) = dm.views(u / dm.heads, u % dm.heads);
                    let op = |view| Operand { buf: qkv, view };
                    let y = Dest {
                        ptr: yp,
                        len: y_len,
                        view: yv,
                    };
                    head_forward(p, dm.scale, op(q), op(k), op(v), y, lse);
                },
            )
        };
        let n_probs = dm.b * dm.heads * t * t;
        let mut probs: Vec<f32> = Vec::new();
        if n_probs <= self.keep_max {
            // Each task's `t × t` slot of the kept probabilities is its scratch.
            probs.reserve_exact(n_probs);
            probs.spare_capacity_mut()[..n_probs]
                .par_chunks_mut((t * t).max(1))
                .zip(lse.par_chunks_mut(t.max(1)))
                .enumerate()
                .for_each(|(u, (slot, lse))| {
                    slot.fill(std::mem::MaybeUninit::new(0.0));
                    // SAFETY: every element of `slot` was initialised on the line above.
                    let p = unsafe { &mut *(std::ptr::from_mut(slot) as *mut [f32]) };
                    run(p, u, lse);
                });
            // SAFETY: the capacity is `n_probs`, and the tasks initialised every slot.
            unsafe { probs.set_len(n_probs) };
        } else {
            lse.par_chunks_mut(t.max(1))
                .enumerate()
                .for_each_init(|| vec![0f32; t * t], |p, (u, lse)| run(p, u, lse));
        }
        // SAFETY: the capacity is `y_len`; the (b, h) tasks cover every batch's rows and every
        // head's columns, and `head_forward` writes each of its rows (blocks cover `0..t`, through
        // `gemm_into` with `accumulate = false`, which writes its whole view).
        unsafe { y.set_len(y_len) };
        *self
            .lse
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = lse;
        *self
            .probs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = probs;
        Ok((CpuStorage::F32(y), Shape::from((dm.b, t, d))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dm = Dims::of(arg.shape(), self.heads)?;
        let lse = self
            .lse
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lse.len() != dm.b * dm.heads * dm.t {
            bail!("causal_attention backward: the forward pass did not run on the CPU");
        }
        // Read only here (`head_backward` without `recompute`), so a second backward sees the
        // same probabilities.
        let mut probs = self
            .probs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = dm.t;
        let op = "causal_attention backward";
        let dqkv = with_f32(arg, op, |qkv| {
            with_f32(res, op, |y| {
                with_f32(grad_res, op, |dy| {
                    // Not zero-filled: every element is written below.
                    let n = qkv.len();
                    let mut dqkv: Vec<f32> = Vec::with_capacity(n);
                    let dp = SharedMut(dqkv.as_mut_ptr());
                    let run = |p: &mut [f32], ds: &mut [f32], u: usize, lse: &[f32], recompute| {
                        with_avx2(
                            #[inline(always)]
                            || {
                                // Task (b, h) alone writes head h's q, k and v columns of
                                // batch b's rows of dqkv.
                                let (q, k, v, yv) = dm.views(u / dm.heads, u % dm.heads);
                                let op = |view| Operand { buf: qkv, view };
                                let dest = |view| Dest {
                                    ptr: dp,
                                    len: n,
                                    view,
                                };
                                head_backward(
                                    (p, ds),
                                    dm.scale,
                                    (op(q), op(k), op(v)),
                                    (y, dy, yv),
                                    lse,
                                    (dest(q), dest(k), dest(v)),
                                    false,
                                    recompute,
                                );
                            },
                        )
                    };
                    if probs.len() == dm.b * dm.heads * t * t && !probs.is_empty() {
                        probs
                            .par_chunks_mut(t * t)
                            .zip(lse.par_chunks(t))
                            .enumerate()
                            .for_each_init(
                                || vec![0f32; t * t],
                                |ds, (u, (p, lse))| run(p, ds, u, lse, false),
                            );
                    } else {
                        lse.par_chunks(t.max(1)).enumerate().for_each_init(
                            || (vec![0f32; t * t], vec![0f32; t * t]),
                            |(p, ds), (u, lse)| run(p, ds, u, lse, true),
                        );
                    }
                    // SAFETY: the capacity is `n`; the (b, h) tasks cover every row and head, and
                    // `head_backward` writes all of its q, k and v columns (`accumulate_kv` is
                    // false: dq by query blocks, dk and dv by key blocks, each covering `0..t`).
                    unsafe { dqkv.set_len(n) };
                    Ok(dqkv)
                })
            })
        })?;
        Ok(Some(cpu_tensor(dqkv, arg.shape())?))
    }
}

/// Causal self-attention of a packed projection: `qkv` `[B, T, 3·d]` (queries, keys, values
/// side by side, as GPT-2's `c_attn` output) → `[B, T, d]` with heads merged, scores scaled by
/// `1/sqrt(d / heads)`. One fused op forward and one backward on CPU f32; the plain candle
/// composition ([`causal_attention_reference`]) elsewhere.
pub fn causal_attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    causal_attention_keeping(qkv, heads, KEEP_PROBS_MAX)
}

/// [`causal_attention`] keeping the probabilities for backward up to `keep_max` elements.
fn causal_attention_keeping(qkv: &Tensor, heads: usize, keep_max: usize) -> Result<Tensor> {
    Dims::of(qkv.shape(), heads)?;
    if is_cpu_f32(qkv) {
        // Without a graph to record this op in (evaluation, inference) no backward will read
        // the probabilities: each task's scratch stays in cache instead.
        let keep_max = if qkv.track_op() { keep_max } else { 0 };
        qkv.contiguous()?.apply_op1(CausalAttention {
            heads,
            lse: Mutex::new(Vec::new()),
            probs: Mutex::new(Vec::new()),
            keep_max,
        })
    } else {
        causal_attention_reference(qkv, heads)
    }
}

/// The candle composition: split heads, `softmax(q kᵀ / sqrt(hd) + mask) v`, merge heads.
pub fn causal_attention_reference(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let dm = Dims::of(qkv.shape(), heads)?;
    let split = |i: usize| -> Result<Tensor> {
        qkv.narrow(D::Minus1, i * dm.d, dm.d)?
            .reshape((dm.b, dm.t, heads, dm.hd))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(0)?, split(1)?, split(2)?);
    let scores = q.matmul(&k.t()?)?;
    let probs = crate::softmax::causal_softmax_reference(&scores, f64::from(dm.scale))?;
    probs
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((dm.b, dm.t, dm.d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::{assert_close, rand};
    use candle_core::{DType, Device, Var};

    /// Both backward paths (probabilities kept, and recomputed from the log-sum-exp) against
    /// candle's composition.
    fn check(b: usize, t: usize, d: usize, heads: usize) -> Result<()> {
        let x = Var::from_tensor(&rand(11, &[b, t, 3 * d], 2.0)?)?;
        let r = rand(12, &[b, t, d], 1.0)?;
        let y2 = causal_attention_reference(&x, heads)?;
        let g2 = (&y2 * &r)?.sum_all()?.backward()?;
        for keep_max in [KEEP_PROBS_MAX, 0] {
            let y1 = causal_attention_keeping(&x, heads, keep_max)?;
            assert_close(&y1, &y2, 1e-5, "attention forward")?;
            let g1 = (y1 * &r)?.sum_all()?.backward()?;
            let (Some(a), Some(b)) = (g1.get(&x), g2.get(&x)) else {
                panic!("missing grad")
            };
            assert_close(a, b, 1e-4, &format!("attention grad (keep_max {keep_max})"))?;
        }
        Ok(())
    }

    #[test]
    fn matches_candle_composition_single_block() -> Result<()> {
        check(2, 7, 12, 3)
    }

    #[test]
    fn matches_candle_composition_across_blocks() -> Result<()> {
        // 70 rows = two full blocks and a partial one; hd = 8.
        check(3, 70, 32, 4)
    }

    #[test]
    fn first_query_sees_only_itself() -> Result<()> {
        // Query 0 attends key 0 alone, so its output is exactly v_0 (d = 2: v is columns 4..6).
        let qkv = rand(5, &[1, 4, 6], 1.0)?;
        let y = causal_attention(&qkv, 2)?.to_vec3::<f32>()?;
        let x = qkv.to_vec3::<f32>()?;
        assert_eq!(y[0][0], x[0][0][4..6].to_vec());
        Ok(())
    }

    #[test]
    fn rejects_bad_shapes() {
        let z = Tensor::zeros((2, 3, 10), DType::F32, &Device::Cpu).unwrap();
        let err = causal_attention(&z, 2).unwrap_err();
        assert!(err.to_string().contains("3·d"), "{err}");
    }
}
