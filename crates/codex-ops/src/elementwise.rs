//! Element-wise ops on candle's own pool replaced: the sum of two same-shape tensors (the
//! residual connections) and the widening of bf16/f16 parameters to f32.
//!
//! candle's CPU add runs on its own barrier thread pool, whose workers spin at a barrier after
//! every call: on the nanoGPT small step, the residual adds' pool wake-ups and spinning were ~5%
//! of the step. Here the sum runs on rayon's pool (the one every other fused op uses), written
//! straight into the output without a zero fill. Backward hands the gradient to both inputs, as
//! candle's does.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

use crate::util::{f32_slice, is_cpu_f32, par_collect, with_f32};

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "codex-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("add: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let a = f32_slice(s1, l1, "add (lhs)")?;
        let b = f32_slice(s2, l2, "add (rhs)")?;
        let y = par_collect(a.len(), CHUNK, |r| {
            a[r.clone()].iter().zip(&b[r]).map(|(&x, &y)| x + y)
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad_res.clone()), Some(grad_res.clone())))
    }
}

/// `a + b` for tensors of one shape: one fused op on CPU f32, candle's add elsewhere (and for
/// differing shapes, which candle reports).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(a) && is_cpu_f32(b) && a.shape() == b.shape() {
        a.contiguous()?.apply_op2(&b.contiguous()?, Add)
    } else {
        a + b
    }
}

/// bf16/f16 → f32 (exact), on rayon's pool; backward rounds the f32 gradient back to the
/// input's dtype (round to nearest even, as candle's cast). candle's CPU cast is one scalar
/// loop on one thread; codex widens every half-precision parameter on every forward.
struct Widen;

impl CustomOp1 for Widen {
    fn name(&self) -> &'static str {
        "codex-widen"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("widen: expected a contiguous tensor, got layout {l:?}")
        };
        let y = match s {
            CpuStorage::BF16(v) => {
                let v = &v[a..b];
                par_collect(v.len(), CHUNK, |r| v[r].iter().map(|x| x.to_f32()))
            }
            CpuStorage::F16(v) => {
                let v = &v[a..b];
                par_collect(v.len(), CHUNK, |r| v[r].iter().map(|x| x.to_f32()))
            }
            _ => bail!("widen: expected a bf16 or f16 tensor"),
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(grad_res, "widen backward", |g| narrow(g, arg))?;
        Ok(Some(dx))
    }
}

/// The f32 gradient `g` of an f32, bf16 or f16 `arg` in `arg`'s dtype and shape: as it is for
/// f32 (no copy), else rounded to nearest even (as candle's cast) on rayon's pool.
pub(crate) fn grad_as(g: Vec<f32>, arg: &Tensor) -> Result<Tensor> {
    match arg.dtype() {
        DType::F32 => Tensor::from_vec(g, arg.shape(), arg.device()),
        _ => narrow(&g, arg),
    }
}

/// The f32 gradient `g` of a bf16/f16 `arg` in `arg`'s dtype and shape: rounded to nearest even
/// (as candle's cast), on rayon's pool.
fn narrow(g: &[f32], arg: &Tensor) -> Result<Tensor> {
    let n = g.len();
    match arg.dtype() {
        DType::BF16 => Tensor::from_vec(
            par_collect(n, CHUNK, |r| g[r].iter().map(|&x| half::bf16::from_f32(x))),
            arg.shape(),
            arg.device(),
        ),
        DType::F16 => Tensor::from_vec(
            par_collect(n, CHUNK, |r| g[r].iter().map(|&x| half::f16::from_f32(x))),
            arg.shape(),
            arg.device(),
        ),
        dt => bail!("narrow: unexpected dtype {dt:?}"),
    }
}

/// A bf16/f16 tensor as f32 (what training on the CPU computes in): one op on rayon's pool on
/// the CPU, candle's cast elsewhere; f32 stays as it is.
pub fn widen(t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F32 => Ok(t.clone()),
        DType::BF16 | DType::F16 if t.device().is_cpu() => t.contiguous()?.apply_op1(Widen),
        _ => t.to_dtype(DType::F32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::rand;
    use candle_core::Var;

    #[test]
    fn sum_and_gradients_equal_candles_add() -> Result<()> {
        let a = Var::from_tensor(&rand(1, &[3, 5000, 7], 1.0)?)?;
        let b = Var::from_tensor(&rand(2, &[3, 5000, 7], 1.0)?)?;
        let w = rand(3, &[3, 5000, 7], 1.0)?;
        let fused = add(a.as_tensor(), b.as_tensor())?;
        let plain = (a.as_tensor() + b.as_tensor())?;
        assert_eq!(
            fused.flatten_all()?.to_vec1::<f32>()?,
            plain.flatten_all()?.to_vec1::<f32>()?
        );
        let g1 = (fused * &w)?.sum_all()?.backward()?;
        let g2 = (plain * &w)?.sum_all()?.backward()?;
        for v in [&a, &b] {
            assert_eq!(
                g1.get(v).unwrap().flatten_all()?.to_vec1::<f32>()?,
                g2.get(v).unwrap().flatten_all()?.to_vec1::<f32>()?
            );
        }
        // One tensor on both sides gets both gradients.
        let g = add(a.as_tensor(), a.as_tensor())?.sum_all()?.backward()?;
        assert!(
            g.get(&a)
                .unwrap()
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .all(|&x| x == 2.0)
        );
        Ok(())
    }

    #[test]
    fn widening_and_its_gradient_equal_candles_casts() -> Result<()> {
        for dt in [DType::BF16, DType::F16] {
            let v = Var::from_tensor(&rand(4, &[70_001], 3.0)?.to_dtype(dt)?)?;
            let w = rand(5, &[70_001], 1.0)?;
            let fused = widen(v.as_tensor())?;
            let plain = v.as_tensor().to_dtype(DType::F32)?;
            assert_eq!(fused.to_vec1::<f32>()?, plain.to_vec1::<f32>()?);
            let g1 = (fused * &w)?.sum_all()?.backward()?;
            let g2 = (plain * &w)?.sum_all()?.backward()?;
            let (a, b) = (g1.get(&v).unwrap(), g2.get(&v).unwrap());
            assert_eq!(a.dtype(), dt);
            assert_eq!(
                a.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                b.to_dtype(DType::F32)?.to_vec1::<f32>()?
            );
        }
        Ok(())
    }
}
