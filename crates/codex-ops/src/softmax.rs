//! Attention probabilities: `softmax(scale * scores + causal mask)` over the last dimension.

use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::simd;
use crate::simd::with_avx2;
use crate::util::{ROWS_PER_TASK, cpu_tensor, f32_slice, is_cpu_f32, with_f32};

struct CausalSoftmax {
    scale: f32,
}

/// (query length, key length) of scores shaped (..., Tq, Tk), Tq ≤ Tk.
fn query_key(shape: &Shape) -> Result<(usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        bail!("causal_softmax: expected scores of shape (..., Tq, Tk), got {dims:?}");
    }
    let (tq, tk) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if tq > tk || tk == 0 {
        bail!("causal_softmax: query length {tq} must be ≤ key length {tk} (shape {dims:?})");
    }
    Ok((tq, tk))
}

/// Query row `r` (counting over all leading dims) may attend keys `0..=i + (tk - tq)`.
#[inline(always)]
fn visible(row: usize, tq: usize, tk: usize) -> usize {
    row % tq + (tk - tq) + 1
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "codex-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (tq, tk) = query_key(l.shape())?;
        let x = f32_slice(s, l, "causal_softmax")?;
        let mut y = vec![0f32; x.len()];
        let chunk = tk * ROWS_PER_TASK;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .enumerate()
            .for_each(|(c, (y, x))| {
                with_avx2(
                    #[inline(always)]
                    || {
                        for (r, (y, x)) in
                            y.chunks_exact_mut(tk).zip(x.chunks_exact(tk)).enumerate()
                        {
                            let n = visible(c * ROWS_PER_TASK + r, tq, tk);
                            let (yv, xv) = (&mut y[..n], &x[..n]);
                            let max = simd::max(xv) * self.scale;
                            for (y, &x) in yv.iter_mut().zip(xv) {
                                *y = simd::exp(x * self.scale - max);
                            }
                            let inv = 1.0 / simd::sum(yv);
                            yv.iter_mut().for_each(|y| *y *= inv);
                            // Masked entries stay 0 from the allocation.
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    /// dx = scale · y ⊙ (dy − Σ y dy); masked entries (y = 0) get 0.
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (tq, tk) = query_key(arg.shape())?;
        let scale = self.scale;
        let dx = with_f32(res, "causal_softmax backward", |y| {
            with_f32(grad_res, "causal_softmax backward", |dy| {
                let mut dx = vec![0f32; y.len()];
                let chunk = tk * ROWS_PER_TASK;
                dx.par_chunks_mut(chunk)
                    .zip(y.par_chunks(chunk))
                    .zip(dy.par_chunks(chunk))
                    .enumerate()
                    .for_each(|(c, ((dx, y), dy))| {
                        for (r, ((dx, y), dy)) in dx
                            .chunks_exact_mut(tk)
                            .zip(y.chunks_exact(tk))
                            .zip(dy.chunks_exact(tk))
                            .enumerate()
                        {
                            let n = visible(c * ROWS_PER_TASK + r, tq, tk);
                            let dot = simd::dot(&y[..n], &dy[..n]);
                            for i in 0..n {
                                dx[i] = scale * y[i] * (dy[i] - dot);
                            }
                        }
                    });
                Ok(dx)
            })
        })?;
        Ok(Some(cpu_tensor(dx, arg.shape())?))
    }
}

/// Causal attention probabilities from raw scores shaped (..., Tq, Tk): query `i` sees keys
/// `0..=i + Tk - Tq`. Scale, mask and softmax in one pass (and one node for backward) on CPU f32.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    if is_cpu_f32(scores) {
        query_key(scores.shape())?;
        scores.contiguous()?.apply_op1(CausalSoftmax {
            scale: scale as f32,
        })
    } else {
        causal_softmax_reference(scores, scale)
    }
}

/// The plain candle composition: scale, add a -inf upper-triangular mask, softmax.
pub fn causal_softmax_reference(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let (tq, tk) = query_key(scores.shape())?;
    let mask: Vec<f32> = (0..tq)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j <= i + tk - tq {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (tq, tk), &Device::Cpu)?.to_device(scores.device())?;
    let x = (scores.to_dtype(DType::F32)? * scale)?.broadcast_add(&mask)?;
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?
        .to_dtype(scores.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::{assert_close, rand};
    use candle_core::Var;

    fn check(shape: &[usize]) -> Result<()> {
        let x = Var::from_tensor(&rand(1, shape, 3.0)?)?;
        let r = rand(2, shape, 1.0)?;
        let y1 = causal_softmax(&x, 0.35)?;
        let y2 = causal_softmax_reference(&x, 0.35)?;
        assert_close(&y1, &y2, 1e-5, "causal_softmax forward")?;
        let g1 = (y1 * &r)?.sum_all()?.backward()?;
        let g2 = (y2 * &r)?.sum_all()?.backward()?;
        let (Some(a), Some(b)) = (g1.get(&x), g2.get(&x)) else {
            panic!("missing grad")
        };
        assert_close(a, b, 1e-4, "causal_softmax grad")
    }

    #[test]
    fn square_scores_match_candle() -> Result<()> {
        check(&[2, 3, 19, 19])
    }

    #[test]
    fn fewer_queries_than_keys_match_candle() -> Result<()> {
        check(&[5, 7, 12])
    }

    #[test]
    fn masked_entries_are_zero() -> Result<()> {
        let y = causal_softmax(&rand(3, &[4, 4], 1.0)?, 1.0)?.to_vec2::<f32>()?;
        assert_eq!(y[0][1..], [0.0, 0.0, 0.0]);
        assert!((y[0][0] - 1.0).abs() < 1e-6);
        assert!((y[3].iter().sum::<f32>() - 1.0).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn rejects_more_queries_than_keys() {
        let err = causal_softmax(
            &Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap(),
            1.0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("query length 4"), "{err}");
    }
}
