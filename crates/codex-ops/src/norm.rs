//! Layer norm over the last dimension with affine weight and bias.

use candle_core::{CpuStorage, CustomOp3, D, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::simd::{self, with_avx2};
use crate::util::{ROWS_PER_TASK, cpu_tensor, f32_slice, is_cpu_f32, rows_cols, with_f32};

/// Mean and 1/sqrt(var + eps) of one row (biased variance, as PyTorch).
#[inline(always)]
fn stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = simd::sum(x) / n;
    let var = simd::sum_sq_dev(x, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "codex-layer-norm"
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
        let (_, d) = rows_cols(l1, "layer_norm")?;
        let x = f32_slice(s1, l1, "layer_norm (x)")?;
        let w = f32_slice(s2, l2, "layer_norm (weight)")?;
        let b = f32_slice(s3, l3, "layer_norm (bias)")?;
        if w.len() != d || b.len() != d {
            bail!(
                "layer_norm: weight has {} and bias {} elements, the last dim of x is {d}",
                w.len(),
                b.len()
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
                            let (mean, rstd) = stats(x, self.eps);
                            for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                                *y = (x - mean) * rstd * w + b;
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// dx = rstd (g - mean(g) - x̂ mean(g x̂)) with g = dy w; dw = Σ dy x̂; db = Σ dy.
    /// Statistics are recomputed from x (cheaper than keeping them alive across the graph).
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, d) = rows_cols(x.layout(), "layer_norm backward")?;
        let eps = self.eps;
        let (dx, dwdb) = with_f32(x, "layer_norm backward", |x| {
            with_f32(w, "layer_norm backward", |w| {
                with_f32(grad_res, "layer_norm backward", |dy| {
                    let mut dx = vec![0f32; x.len()];
                    let chunk = d * ROWS_PER_TASK;
                    let dwdb = dx
                        .par_chunks_mut(chunk)
                        .zip(x.par_chunks(chunk))
                        .zip(dy.par_chunks(chunk))
                        .map(|((dx, x), dy)| {
                            with_avx2(
                                #[inline(always)]
                                || {
                                    let mut acc = vec![0f32; 2 * d];
                                    let (dw, db) = acc.split_at_mut(d);
                                    for ((dx, x), dy) in dx
                                        .chunks_exact_mut(d)
                                        .zip(x.chunks_exact(d))
                                        .zip(dy.chunks_exact(d))
                                    {
                                        let (mean, rstd) = stats(x, eps);
                                        // Σ g and Σ g·x̂ with g = dy·w, x̂ = (x − mean)·rstd.
                                        let sg = simd::dot(dy, w);
                                        let sgx = rstd * (simd::dot3(dy, w, x) - mean * sg);
                                        let (mg, mgx) = (sg / d as f32, sgx / d as f32);
                                        for i in 0..d {
                                            let xh = (x[i] - mean) * rstd;
                                            dw[i] += dy[i] * xh;
                                            db[i] += dy[i];
                                            dx[i] = rstd * (dy[i] * w[i] - mg - xh * mgx);
                                        }
                                    }
                                    acc
                                },
                            )
                        })
                        .collect::<Vec<_>>();
                    // Partials added in chunk order: bitwise reproducible, unlike a rayon reduce.
                    let dwdb = crate::util::sum_in_order(&dwdb, 2 * d);
                    Ok((dx, dwdb))
                })
            })
        })?;
        let (dw, db) = dwdb.split_at(d);
        Ok((
            Some(cpu_tensor(dx, x.shape())?),
            Some(cpu_tensor(dw.to_vec(), w.shape())?),
            Some(cpu_tensor(db.to_vec(), w.shape())?),
        ))
    }
}

/// Layer norm of `x` over its last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
/// Fused forward and backward (to x, weight and bias) for CPU f32; plain candle ops otherwise.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    if is_cpu_f32(x) && is_cpu_f32(weight) && is_cpu_f32(bias) {
        x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNorm { eps },
        )
    } else {
        layer_norm_reference(x, weight, bias, eps)
    }
}

/// The plain candle composition (what `candle_nn::LayerNorm` computes), computed in f32.
pub fn layer_norm_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xh = xc.broadcast_div(&(var + f64::from(eps))?.sqrt()?)?;
    xh.to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::{assert_close, rand};
    use candle_core::Var;

    #[test]
    fn values_and_grads_match_candle() -> Result<()> {
        // Three dims and an odd row count exercise the row chunking.
        let x = Var::from_tensor(&(rand(1, &[3, 23, 96], 2.0)? + 0.5)?)?;
        let w = Var::from_tensor(&rand(2, &[96], 1.0)?)?;
        let b = Var::from_tensor(&rand(3, &[96], 1.0)?)?;
        let r = rand(4, &[3, 23, 96], 1.0)?;
        let y1 = layer_norm(&x, &w, &b, 1e-5)?;
        let y2 = layer_norm_reference(&x, &w, &b, 1e-5)?;
        assert_close(&y1, &y2, 1e-5, "layer_norm forward")?;
        let g1 = (y1 * &r)?.sum_all()?.backward()?;
        let g2 = (y2 * &r)?.sum_all()?.backward()?;
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let (Some(a), Some(b)) = (g1.get(v), g2.get(v)) else {
                panic!("missing grad of {name}")
            };
            assert_close(a, b, 1e-4, &format!("layer_norm grad of {name}"))?;
        }
        Ok(())
    }

    #[test]
    fn rejects_wrong_weight_size() -> Result<()> {
        let x = rand(1, &[4, 8], 1.0)?;
        let w = rand(2, &[7], 1.0)?;
        let err = layer_norm(&x, &w, &w, 1e-5).unwrap_err();
        assert!(err.to_string().contains("last dim of x is 8"), "{err}");
        Ok(())
    }
}
