//! GELU, tanh approximation (GPT-2's `gelu_new`, PyTorch's `approximate="tanh"`).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::util::{cpu_tensor, f32_slice, is_cpu_f32, par_collect, with_f32};

pub(crate) const CHUNK: usize = 4096;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const K: f32 = 0.044_715;

/// tanh as a clamped 13/6 rational polynomial (Eigen's `ptanh_float`, a few ulp from libm).
/// libm's scalar `tanhf` (via `expm1f`) was ~14% of a gpt-medium training step under `perf`;
/// this form has no branches or calls, so the loops below vectorize.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = x2 * -2.760_768_5e-16 + 2.000_188e-13;
    p = x2 * p + -8.604_672e-11;
    p = x2 * p + 5.122_297e-8;
    p = x2 * p + 1.485_722_4e-5;
    p = x2 * p + 6.372_619_3e-4;
    p = x2 * p + 4.893_524_6e-3;
    let mut q = x2 * 1.198_258_4e-6 + 1.185_347e-4;
    q = x2 * q + 2.268_434_6e-3;
    q = x2 * q + 4.893_525e-3;
    x * p / q
}

#[inline(always)]
pub(crate) fn fwd(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + K * x * x * x)))
}

/// d gelu / dx = 0.5 (1 + t) + 0.5 x (1 - t²) c (1 + 3k x²), t = tanh(c (x + k x³)).
#[inline(always)]
pub(crate) fn dfdx(x: f32) -> f32 {
    let x2 = x * x;
    let t = tanh(SQRT_2_OVER_PI * x * (1.0 + K * x2));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * K * x2)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "codex-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "gelu")?;
        let y = par_collect(x.len(), CHUNK, |r| x[r].iter().map(|&x| fwd(x)));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(arg, "gelu backward", |x| {
            with_f32(grad_res, "gelu backward", |dy| {
                Ok(par_collect(x.len(), CHUNK, |r| {
                    x[r.clone()]
                        .iter()
                        .zip(&dy[r])
                        .map(|(&x, &dy)| dy * dfdx(x))
                }))
            })
        })?;
        Ok(Some(cpu_tensor(dx, arg.shape())?))
    }
}

/// GELU (tanh approximation) of `x`; fused with a hand-written backward for CPU f32.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        gelu_reference(x)
    }
}

/// The plain candle composition (candle's `gelu` is the same tanh approximation).
pub fn gelu_reference(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::{assert_close, rand};
    use candle_core::Var;

    #[test]
    fn values_and_grad_match_candle() -> Result<()> {
        let x = Var::from_tensor(&rand(1, &[37, 129], 4.0)?)?;
        let r = rand(2, &[37, 129], 1.0)?;
        let y1 = gelu(&x)?;
        let y2 = gelu_reference(&x)?;
        assert_close(&y1, &y2, 1e-5, "gelu forward")?;
        let g1 = (y1 * &r)?.sum_all()?.backward()?;
        let g2 = (y2 * &r)?.sum_all()?.backward()?;
        let (Some(a), Some(b)) = (g1.get(&x), g2.get(&x)) else {
            panic!("missing grad")
        };
        assert_close(a, b, 1e-4, "gelu grad")?;
        Ok(())
    }

    #[test]
    fn fast_tanh_matches_libm() {
        let worst = (-2000..=2000)
            .map(|i| i as f32 * 0.005)
            .map(|x| (tanh(x) - x.tanh()).abs())
            .fold(0f32, f32::max);
        assert!(worst < 2e-6, "max |tanh error| {worst}");
        assert_eq!(tanh(40.0), 1.0);
    }

    #[test]
    fn known_values() {
        // torch.nn.functional.gelu(torch.tensor([-1., 0., 1., 3.]), approximate="tanh")
        let want = [-0.158_808, 0.0, 0.841_192, 2.996_363_6];
        for (x, w) in [-1f32, 0.0, 1.0, 3.0].into_iter().zip(want) {
            assert!((fwd(x) - w).abs() < 1e-5, "gelu({x}) = {} want {w}", fwd(x));
        }
    }
}
