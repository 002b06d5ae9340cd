//! Cross-entropy from logits and integer targets, mean over tokens.

use candle_core::{CpuStorage, CustomOp2, D, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

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
                            acc += f64::from(log_sum_exp(x) - x[check_target(t, v)?]);
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
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(v * ROWS_PER_TASK)
                .zip(x.par_chunks(v * ROWS_PER_TASK))
                .zip(t.par_chunks(ROWS_PER_TASK))
                .try_for_each(|((dx, x), t)| {
                    with_avx2(
                        #[inline(always)]
                        || {
                            for ((dx, x), &t) in
                                dx.chunks_exact_mut(v).zip(x.chunks_exact(v)).zip(t)
                            {
                                let lse = log_sum_exp(x);
                                for (d, &x) in dx.iter_mut().zip(x) {
                                    *d = simd::exp(x - lse) * g;
                                }
                                dx[check_target(t, v)?] -= g;
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
}
