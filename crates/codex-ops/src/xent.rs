//! Cross-entropy from logits and integer targets, mean over tokens.

use candle_core::{CpuStorage, CustomOp2, D, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::matmul::{View, gemm_into};
use crate::simd::{self, with_avx2};
use crate::util::{ROWS_PER_TASK, cpu_tensor, f32_slice, is_cpu_f32, with_f32};

struct CrossEntropy;

fn dims(logits: &Shape, targets: &Shape) -> Result<(usize, usize)> {
    match (logits.dims(), targets.dims()) {
        (&[n, v], &[t]) if n == t && v > 0 => Ok((n, v)),
        (l, t) => {
            bail!("cross_entropy: expected logits (N, V) and targets (N), got {l:?} and {t:?}")
        }
    }
}

fn targets_u32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let data = s.as_slice::<u32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("cross_entropy: targets must be contiguous"),
    }
}

#[inline(always)]
fn log_sum_exp(x: &[f32]) -> f32 {
    let max = simd::max(x);
    // Eight lanes of exp-sums (vectorised), no temporary buffer.
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| simd::exp(v - max)).sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += simd::exp(c[l] - max);
        }
    }
    max + (acc.iter().sum::<f32>() + tail).ln()
}

/// One row's log-sum-exp and its loss `lse − x[t]` (the per-row part of both cross-entropies).
#[inline(always)]
fn row_loss(x: &[f32], t: usize) -> (f32, f64) {
    let lse = log_sum_exp(x);
    (lse, f64::from(lse - x[t]))
}

/// Overwrites a row of logits with its gradient `g · (softmax(x) − onehot(t))`.
#[inline(always)]
fn dlogits_in_place(x: &mut [f32], t: usize, lse: f32, g: f32) {
    for e in x.iter_mut() {
        *e = simd::exp(*e - lse) * g;
    }
    x[t] -= g;
}

fn check_target(t: u32, v: usize) -> Result<usize> {
    let t = t as usize;
    if t >= v {
        bail!("cross_entropy: target id {t} is out of range for a vocabulary of {v}");
    }
    Ok(t)
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "codex-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = dims(l1.shape(), l2.shape())?;
        let x = f32_slice(s1, l1, "cross_entropy (logits)")?;
        let t = targets_u32(s2, l2)?;
        let total = x
            .par_chunks(v * ROWS_PER_TASK)
            .zip(t.par_chunks(ROWS_PER_TASK))
            .map(|(x, t)| {
                with_avx2(
                    #[inline(always)]
                    || {
                        let mut acc = 0f64;
                        for (x, &t) in x.chunks_exact(v).zip(t) {
                            acc += row_loss(x, check_target(t, v)?).1;
                        }
                        Ok(acc)
                    },
                )
            })
            .collect::<Result<Vec<f64>>>()?
            .iter()
            .sum::<f64>(); // chunk order: reproducible whatever rayon's split
        Ok((
            CpuStorage::F32(vec![(total / n as f64) as f32]),
            Shape::from(()),
        ))
    }

    /// dlogits = g / N · (softmax(logits) − onehot(target)).
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = dims(logits.shape(), targets.shape())?;
        let g = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()? / n as f32;
        let t = targets.to_vec1::<u32>()?;
        let dx = with_f32(logits, "cross_entropy backward", |x| {
            // The logits, overwritten row by row with their gradient.
            let mut dx = x.to_vec();
            dx.par_chunks_mut(v * ROWS_PER_TASK)
                .zip(t.par_chunks(ROWS_PER_TASK))
                .try_for_each(|(dx, t)| {
                    with_avx2(
                        #[inline(always)]
                        || {
                            for (dx, &t) in dx.chunks_exact_mut(v).zip(t) {
                                let t = check_target(t, v)?;
                                let (lse, _) = row_loss(dx, t);
                                dlogits_in_place(dx, t, lse, g);
                            }
                            Ok::<(), candle_core::Error>(())
                        },
                    )
                })?;
            Ok(dx)
        })?;
        Ok((Some(cpu_tensor(dx, logits.shape())?), None))
    }
}

/// Mean cross-entropy of `logits` (N, V) against `targets` (N, u32), as a scalar tensor. On CPU
/// f32 the forward never materializes log-probabilities and the backward writes dlogits in one
/// pass; elsewhere it is `candle_nn::loss::cross_entropy`'s composition.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(logits) && targets.device().is_cpu() && targets.dtype() == DType::U32 {
        dims(logits.shape(), targets.shape())?;
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropy)
    } else {
        cross_entropy_reference(logits, targets)
    }
}

/// The plain candle composition: log-softmax, gather the targets, negate the mean.
pub fn cross_entropy_reference(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    dims(logits.shape(), targets.shape())?;
    let x = logits.to_dtype(DType::F32)?;
    let max = x.max_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&max)?;
    let logp = xc.broadcast_sub(&xc.exp()?.sum_keepdim(D::Minus1)?.log()?)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// Logits computed per chunk of rows are at most this large (128 MiB of f32). Each chunk's two
/// GEMMs pack the whole head weight again (the `gemm` crate packs its right-hand side per call:
/// 113 MB for a 49,152 × 576 head), so chunks are as large as memory allows: with chunks of 128
/// rows the SmolLM2 LoRA step ran ~8% slower than one GEMM over all 512 rows. At batch 4 ×
/// context 128 the logits fit in one chunk (the saving is then the gradient, computed in place:
/// one 100 MB buffer per step); a long context or a large batch is cut into chunks.
const LOGITS_CHUNK_FLOATS: usize = 32 << 20;

/// Rows per chunk of at most `floats` logits for a vocabulary of `v`: a multiple of 64 (the
/// GEMM's AVX-512 row block) when at least 64 fit, else of [`ROWS_PER_TASK`] when that many fit
/// (so the per-row-group loss partials are those of [`cross_entropy`]); never more than `n`.
fn chunk_rows(n: usize, v: usize, floats: usize) -> usize {
    let c = (floats / v.max(1)).max(1);
    let c = match c {
        64.. => c / 64 * 64,
        ROWS_PER_TASK.. => c / ROWS_PER_TASK * ROWS_PER_TASK,
        _ => c,
    };
    c.min(n).max(1)
}

/// Gradients of [`linear_cross_entropy`] for an upstream gradient of 1, computed in the forward
/// (the loss is the end of the graph, so nothing downstream can change them) and handed out by
/// the backward, scaled.
type XentGrads = (Option<Tensor>, Option<Tensor>);

struct LinearCrossEntropy {
    targets: Vec<u32>,
    need_dx: bool,
    need_dw: bool,
    chunk_floats: usize,
    grads: std::sync::Mutex<Option<XentGrads>>,
}

fn head_dims(h: &Shape, w: &Shape, n_targets: usize) -> Result<(usize, usize, usize)> {
    match (h.dims(), w.dims()) {
        (&[n, d], &[v, d2]) if d == d2 && n == n_targets && n > 0 && v > 0 => Ok((n, d, v)),
        (h, w) => bail!(
            "linear_cross_entropy: expected hidden (N, D), weight (V, D) and N > 0 targets, got \
             {h:?}, {w:?} and {n_targets} targets"
        ),
    }
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "codex-linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, d, v) = head_dims(l1.shape(), l2.shape(), self.targets.len())?;
        let h = f32_slice(s1, l1, "linear_cross_entropy (hidden)")?;
        let w = f32_slice(s2, l2, "linear_cross_entropy (weight)")?;
        let threads = rayon::current_num_threads();
        let c = chunk_rows(n, v, self.chunk_floats);
        let grads = self.need_dx || self.need_dw;
        let inv_n = 1.0 / n as f32;
        // One logits buffer for every chunk; the GEMM writes all of it before it is read.
        let mut logits: Vec<f32> = Vec::with_capacity(c * v);
        let mut dx: Vec<f32> = Vec::with_capacity(if self.need_dx { n * d } else { 0 });
        let mut dw: Vec<f32> = Vec::with_capacity(if self.need_dw { v * d } else { 0 });
        let wt = View::rows(0, v, d, d).t();
        let mut partials: Vec<f64> = Vec::with_capacity(n.div_ceil(ROWS_PER_TASK));
        for r0 in (0..n).step_by(c) {
            let m = c.min(n - r0);
            let hv = View::rows(r0 * d, m, d, d);
            gemm_into(
                logits.as_mut_ptr(),
                c * v,
                View::rows(0, m, v, v),
                h,
                hv,
                w,
                wt,
                1.0,
                false,
                threads,
            );
            // SAFETY: capacity c·v ≥ m·v, and with `accumulate = false` the GEMM wrote every one
            // of the first m·v elements (see `gemm_new`).
            unsafe { logits.set_len(m * v) };
            let t = &self.targets[r0..r0 + m];
            // Per row: the loss, and with gradients dlogits = (softmax − onehot) / N in place.
            let chunk: Vec<f64> = logits
                .par_chunks_mut(v * ROWS_PER_TASK)
                .zip(t.par_chunks(ROWS_PER_TASK))
                .map(|(x, t)| {
                    with_avx2(
                        #[inline(always)]
                        || {
                            let mut acc = 0f64;
                            for (x, &t) in x.chunks_exact_mut(v).zip(t) {
                                let t = check_target(t, v)?;
                                let (lse, loss) = row_loss(x, t);
                                acc += loss;
                                if grads {
                                    dlogits_in_place(x, t, lse, inv_n);
                                }
                            }
                            Ok(acc)
                        },
                    )
                })
                .collect::<Result<_>>()?;
            partials.extend(chunk);
            let gv = View::rows(0, m, v, v);
            if self.need_dx {
                // dx rows r0..r0+m = dlogits · W.
                gemm_into(
                    dx.as_mut_ptr(),
                    n * d,
                    View::rows(r0 * d, m, d, d),
                    &logits,
                    gv,
                    w,
                    View::rows(0, v, d, d),
                    1.0,
                    false,
                    threads,
                );
            }
            if self.need_dw {
                // dW (+)= dlogitsᵀ · h, accumulated over the chunks in order.
                gemm_into(
                    dw.as_mut_ptr(),
                    v * d,
                    View::rows(0, v, d, d),
                    &logits,
                    gv.t(),
                    h,
                    hv,
                    1.0,
                    r0 > 0,
                    threads,
                );
            }
        }
        let total: f64 = partials.iter().sum(); // row-group order: reproducible
        if grads {
            // SAFETY: the dx GEMMs wrote rows 0..n (every chunk, accumulate = false), and the
            // first dW GEMM (r0 = 0, accumulate = false) wrote all of dW before later ones added.
            unsafe {
                if self.need_dx {
                    dx.set_len(n * d);
                }
                if self.need_dw {
                    dw.set_len(v * d);
                }
            }
            let dx = self
                .need_dx
                .then(|| cpu_tensor(dx, l1.shape()))
                .transpose()?;
            let dw = self
                .need_dw
                .then(|| cpu_tensor(dw, l2.shape()))
                .transpose()?;
            *self.grads.lock().unwrap_or_else(|e| e.into_inner()) = Some((dx, dw));
        }
        Ok((
            CpuStorage::F32(vec![(total / n as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        _h: &Tensor,
        _w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some((dx, dw)) = self.grads.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            bail!("linear_cross_entropy: backward of a loss built without gradients (grad = false)")
        };
        let g = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let scale = |t: Option<Tensor>| match t {
            Some(t) if g != 1.0 => t.affine(f64::from(g), 0.0).map(Some),
            t => Ok(t),
        };
        Ok((scale(dx)?, scale(dw)?))
    }
}

/// Mean cross-entropy of the logits `h · Wᵀ` (`h` `(N, D)`, the LM head `W` `(V, D)`, as
/// `nn.Linear` stores it) against `targets` (N, u32), with the `(N, V)` logits bounded in size:
/// on CPU f32 they are computed a chunk of rows at a time (at most 128 MiB), and with `grad` the
/// gradients are computed in the same pass — `dx = dlogits · W` per chunk, `dW = Σ dlogitsᵀ · h`
/// over the chunks in order, only for the inputs that track gradients (a frozen head gets none) —
/// and handed out, scaled, by the backward; the gradient of the logits overwrites them. The loss equals [`cross_entropy`] over
/// [`crate::linear_no_bias`]'s logits bit for bit (same GEMM per row, same per-row sums, summed
/// in the same order). Elsewhere, or without `grad`, the composition (without `grad` on CPU:
/// chunked, loss only).
pub fn linear_cross_entropy(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    grad: bool,
) -> Result<Tensor> {
    linear_cross_entropy_chunked(h, w, targets, grad, LOGITS_CHUNK_FLOATS)
}

fn linear_cross_entropy_chunked(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    grad: bool,
    chunk_floats: usize,
) -> Result<Tensor> {
    let n_targets = match targets.dims() {
        &[n] => n,
        d => bail!("linear_cross_entropy: expected targets (N), got {d:?}"),
    };
    head_dims(h.shape(), w.shape(), n_targets)?;
    if is_cpu_f32(h) && is_cpu_f32(w) && targets.device().is_cpu() && targets.dtype() == DType::U32
    {
        let op = LinearCrossEntropy {
            targets: targets.to_vec1::<u32>()?,
            need_dx: grad && h.track_op(),
            need_dw: grad && w.track_op(),
            chunk_floats,
            grads: std::sync::Mutex::new(None),
        };
        if grad {
            h.contiguous()?.apply_op2(&w.contiguous()?, op)
        } else {
            h.detach()
                .contiguous()?
                .apply_op2_no_bwd(&w.detach().contiguous()?, &op)
        }
    } else {
        cross_entropy(&h.matmul(&w.t()?)?, targets)
    }
}

/// The composition [`linear_cross_entropy`] replaces: the full logits, then [`cross_entropy`].
pub fn linear_cross_entropy_reference(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    cross_entropy(
        &crate::linear_no_bias(h, w, crate::WeightLayout::OutIn)?,
        targets,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::{assert_close, rand};
    use candle_core::{Device, Var};

    #[test]
    fn value_and_grad_match_candle() -> Result<()> {
        let (n, v) = (45, 67);
        let x = Var::from_tensor(&rand(1, &[n, v], 5.0)?)?;
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 31 + 7) % v as u32).collect();
        let t = Tensor::new(t.as_slice(), &Device::Cpu)?;
        let l1 = cross_entropy(&x, &t)?;
        let l2 = cross_entropy_reference(&x, &t)?;
        let l3 = candle_nn::loss::cross_entropy(&x, &t)?;
        assert_close(&l1, &l2, 1e-5, "cross_entropy value")?;
        assert_close(&l1, &l3, 1e-5, "cross_entropy value vs candle_nn")?;
        // A non-unit upstream gradient checks that g is applied.
        let g1 = (l1 * 3.0)?.backward()?;
        let g2 = (l3 * 3.0)?.backward()?;
        let (Some(a), Some(b)) = (g1.get(&x), g2.get(&x)) else {
            panic!("missing grad")
        };
        assert_close(a, b, 1e-5, "cross_entropy grad")
    }

    #[test]
    fn out_of_range_target_is_an_error() -> Result<()> {
        let x = rand(1, &[2, 4], 1.0)?;
        let t = Tensor::new(&[1u32, 4], &Device::Cpu)?;
        let err = cross_entropy(&x, &t).unwrap_err();
        assert!(err.to_string().contains("target id 4"), "{err}");
        Ok(())
    }

    /// The fused head + loss against the composition it replaces (full logits through
    /// `linear_no_bias`, then `cross_entropy`): loss bit for bit, gradients within f32 rounding,
    /// for one chunk and for several (with a ragged last chunk), a frozen and a trainable head,
    /// and an upstream gradient other than 1.
    #[test]
    fn linear_cross_entropy_matches_the_composition() -> Result<()> {
        let (n, d, v) = (70, 24, 300);
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 11) % v as u32).collect();
        let t = Tensor::new(t.as_slice(), &Device::Cpu)?;
        // 70 rows: one chunk; 16·300 floats: chunks of 16 rows (the last one 6).
        for chunk in [LOGITS_CHUNK_FLOATS, 16 * v] {
            for frozen in [false, true] {
                let h = Var::from_tensor(&rand(3, &[n, d], 1.0)?)?;
                let w = Var::from_tensor(&rand(4, &[v, d], 0.5)?)?;
                let wt = if frozen {
                    w.as_tensor().detach()
                } else {
                    w.as_tensor().clone()
                };
                let fused = linear_cross_entropy_chunked(h.as_tensor(), &wt, &t, true, chunk)?;
                let reference = linear_cross_entropy_reference(h.as_tensor(), &wt, &t)?;
                assert_eq!(
                    fused.to_scalar::<f32>()?.to_bits(),
                    reference.to_scalar::<f32>()?.to_bits(),
                    "loss, chunk {chunk}, frozen {frozen}"
                );
                let g1 = (fused * 0.25)?.backward()?;
                let g2 = (reference * 0.25)?.backward()?;
                assert_close(g1.get(&h).unwrap(), g2.get(&h).unwrap(), 1e-6, "dx")?;
                if frozen {
                    assert!(g1.get(&w).is_none(), "a frozen head got a gradient");
                } else {
                    assert_close(g1.get(&w).unwrap(), g2.get(&w).unwrap(), 1e-6, "dW")?;
                }
            }
        }
        Ok(())
    }

    #[test]
    fn linear_cross_entropy_without_grad_is_the_loss_alone() -> Result<()> {
        let h = Var::from_tensor(&rand(5, &[9, 8], 1.0)?)?;
        let w = rand(6, &[40, 8], 1.0)?;
        let t = Tensor::new(&[1u32, 2, 3, 4, 5, 6, 7, 8, 39], &Device::Cpu)?;
        let a = linear_cross_entropy(h.as_tensor(), &w, &t, false)?;
        let b = linear_cross_entropy_reference(h.as_tensor(), &w, &t)?;
        assert_eq!(a.to_scalar::<f32>()?, b.to_scalar::<f32>()?);
        assert!(!a.track_op(), "an evaluation loss must not hold a graph");
        let bad = Tensor::new(&[40u32; 9], &Device::Cpu)?;
        let err = linear_cross_entropy(h.as_tensor(), &w, &bad, true).unwrap_err();
        assert!(err.to_string().contains("target id 40"), "{err}");
        let err = linear_cross_entropy(h.as_tensor(), &w.t()?, &t, true).unwrap_err();
        assert!(err.to_string().contains("expected hidden (N, D)"), "{err}");
        Ok(())
    }

    #[test]
    fn chunks_are_row_blocks_that_fit() {
        assert_eq!(chunk_rows(512, 49_152, LOGITS_CHUNK_FLOATS), 512);
        assert_eq!(chunk_rows(8192, 49_152, LOGITS_CHUNK_FLOATS), 640);
        assert_eq!(chunk_rows(2048, 256, LOGITS_CHUNK_FLOATS), 2048);
        assert_eq!(chunk_rows(100, 300, 16 * 300), 16);
        assert_eq!(chunk_rows(5, 1 << 30, LOGITS_CHUNK_FLOATS), 1);
    }
}
