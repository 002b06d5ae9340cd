//! Element-wise sum of two same-shape tensors (the residual connections).
//!
//! candle's CPU add runs on its own barrier thread pool, whose workers spin at a barrier after
//! every call: on the nanoGPT small step, the residual adds' pool wake-ups and spinning were ~5%
//! of the step. Here the sum runs on rayon's pool (the one every other fused op uses), written
//! straight into the output without a zero fill. Backward hands the gradient to both inputs, as
//! candle's does.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};

use crate::util::{f32_slice, is_cpu_f32, par_collect};

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
}
