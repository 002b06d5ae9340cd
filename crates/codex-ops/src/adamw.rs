//! Fused AdamW and the helpers of clipping by global norm.

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, InplaceOp1, InplaceOp2, Layout, Result, Tensor, Var, bail};
use rayon::prelude::*;

use crate::simd::with_avx2;
use crate::util::{f32_slice, is_cpu_f32, with_f32};

/// Elements per rayon task of the element-wise kernels (about 64 KiB of f32 per slice).
const CHUNK: usize = 16 * 1024;

/// Hyper-parameters of one AdamW update (PyTorch's `torch.optim.AdamW` semantics: decoupled
/// weight decay `p -= lr * weight_decay * p`, bias-corrected moments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Set to 0.0 for biases and norm weights.
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        // PyTorch's defaults.
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// Per-step constants, folded once so the inner loop is a handful of f32 multiply-adds.
#[derive(Clone, Copy)]
struct Folded {
    decay: f32,
    b1: f32,
    b2: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
    grad_scale: f32,
}

impl Folded {
    fn new(hp: &AdamWParams, step: u64, grad_scale: f32) -> Result<Self> {
        if step == 0 {
            bail!("adamw_step: step counts from 1, got 0");
        }
        let t = i32::try_from(step).unwrap_or(i32::MAX);
        let bc1 = 1.0 - hp.beta1.powi(t);
        let bc2 = 1.0 - hp.beta2.powi(t);
        Ok(Self {
            decay: (1.0 - hp.lr * hp.weight_decay) as f32,
            b1: hp.beta1 as f32,
            b2: hp.beta2 as f32,
            step_size: (hp.lr / bc1) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: hp.eps as f32,
            grad_scale,
        })
    }

    #[inline(always)]
    fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let (b1, b2) = (self.b1, self.b2);
        let (c1, c2) = (1.0 - b1, 1.0 - b2);
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * self.grad_scale;
            let mi = b1 * *m + c1 * g;
            let vi = b2 * *v + c2 * g * g;
            *m = mi;
            *v = vi;
            let denom = vi.sqrt() * self.inv_sqrt_bc2 + self.eps;
            *p = *p * self.decay - self.step_size * mi / denom;
        }
    }

    /// The update over whole slices, parallel over chunks.
    fn update_par(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        if p.len() <= CHUNK {
            with_avx2(
                #[inline(always)]
                || self.update(p, g, m, v),
            );
            return;
        }
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                with_avx2(
                    #[inline(always)]
                    || self.update(p, g, m, v),
                )
            });
    }
}

/// The in-place op: candle hands us the parameter's storage mutably, the moments live in the
/// caller's vectors (borrowed for the duration of the call).
struct AdamWOp<'a> {
    folded: Folded,
    moments: RefCell<(&'a mut [f32], &'a mut [f32])>,
}

impl InplaceOp2 for AdamWOp<'_> {
    fn name(&self) -> &'static str {
        "codex-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let g = f32_slice(s2, l2, "adamw_step (grad)")?;
        let Some((a, b)) = l1.contiguous_offsets() else {
            bail!("adamw_step: the parameter must be contiguous, got layout {l1:?}")
        };
        let CpuStorage::F32(p) = s1 else {
            bail!(
                "adamw_step: the parameter must be f32, got {:?}",
                s1.dtype()
            )
        };
        let p = &mut p[a..b];
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        self.folded.update_par(p, g, m, v);
        Ok(())
    }
}

/// One AdamW update of `param` from `grad`, in place.
///
/// - `m`, `v`: the first and second moments (f32, one per element of `param`, row-major), owned
///   by the caller's optimizer so that it can checkpoint them; start them at zero.
/// - `step`: the 1-based index of this update (bias correction).
/// - `grad_scale`: multiplies the gradient before use (1.0, or the clip factor
///   `max_norm / (norm + 1e-6)`); folding it in here avoids a pass over every gradient and is
///   safe when candle's grad store shares one tensor between several parameters.
///
/// On the CPU with an f32 parameter this is one fused, parallel, allocation-free loop that
/// writes the parameter's storage directly (no new tensor, no autograd node). Anywhere else
/// (CUDA, bf16/f16 parameters) the same arithmetic runs on a host copy in f32 and the result is
/// written back with `Var::set`: correct, with fp32 moments, but not fast.
pub fn adamw_step(
    param: &Var,
    grad: &Tensor,
    m: &mut [f32],
    v: &mut [f32],
    hp: &AdamWParams,
    step: u64,
    grad_scale: f32,
) -> Result<()> {
    let n = param.elem_count();
    if grad.shape() != param.shape() {
        bail!(
            "adamw_step: grad shape {:?} != param shape {:?}",
            grad.shape(),
            param.shape()
        );
    }
    if m.len() != n || v.len() != n {
        bail!(
            "adamw_step: moments have {} and {} elements, the parameter {:?} has {n}",
            m.len(),
            v.len(),
            param.shape()
        );
    }
    let folded = Folded::new(hp, step, grad_scale)?;
    let t = param.as_tensor();
    if is_cpu_f32(t) && t.is_contiguous() && grad.device().is_cpu() {
        let g = if grad.dtype() == DType::F32 {
            grad.contiguous()?
        } else {
            grad.to_dtype(DType::F32)?
        };
        let op = AdamWOp {
            folded,
            moments: RefCell::new((m, v)),
        };
        return t.inplace_op2(&g, &op);
    }
    // Fallback: host round trip in f32.
    let mut p = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let g = grad.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    folded.update_par(&mut p, &g, m, v);
    let new = Tensor::from_vec(p, t.shape(), &candle_core::Device::Cpu)?
        .to_dtype(t.dtype())?
        .to_device(t.device())?;
    param.set(&new)
}

/// The AdamW update of [`adamw_step`] over plain f32 slices (parameter or fp32 master copy,
/// gradient, moments), parallel over chunks: for callers that hold the data themselves, such as
/// bf16 training with fp32 master weights or a host round trip from another device.
pub fn adamw_update_slices(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    hp: &AdamWParams,
    step: u64,
    grad_scale: f32,
) -> Result<()> {
    let n = p.len();
    if g.len() != n || m.len() != n || v.len() != n {
        bail!(
            "adamw_update_slices: lengths differ (param {n}, grad {}, moments {} and {})",
            g.len(),
            m.len(),
            v.len()
        );
    }
    Folded::new(hp, step, grad_scale)?.update_par(p, g, m, v);
    Ok(())
}

/// Sum of squares of all elements of all `grads`, accumulated in f64 (the square of the global
/// L2 norm used for clipping). One fused pass per CPU f32 tensor, no temporaries.
pub fn grad_sq_norm(grads: &[&Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += if is_cpu_f32(g) {
            with_f32(g, "grad_sq_norm", |s| {
                // Per-chunk sums added in chunk order: reproducible whatever rayon's split.
                Ok(s.par_chunks(CHUNK)
                    .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
                    .collect::<Vec<_>>()
                    .iter()
                    .sum::<f64>())
            })?
        } else {
            g.to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?
        };
    }
    Ok(total)
}

struct ScaleOp(f32);

impl InplaceOp1 for ScaleOp {
    fn name(&self) -> &'static str {
        "codex-scale"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("scale_inplace: the tensor must be contiguous, got layout {l:?}")
        };
        let CpuStorage::F32(x) = s else {
            bail!("scale_inplace: the tensor must be f32, got {:?}", s.dtype())
        };
        x[a..b]
            .par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|x| *x *= self.0));
        Ok(())
    }
}

/// Multiplies a contiguous CPU f32 tensor by `s` in place; returns `Ok(false)` (and does nothing)
/// for any other tensor, which the caller then scales with `affine`.
///
/// Beware: candle's grad store may hand the same tensor out as the gradient of several
/// parameters, so scaling each gradient in place can scale a shared one twice. Prefer the
/// `grad_scale` argument of [`adamw_step`] for clipping.
pub fn scale_inplace(t: &Tensor, s: f32) -> Result<bool> {
    if !(is_cpu_f32(t) && t.is_contiguous()) {
        return Ok(false);
    }
    t.inplace_op1(&ScaleOp(s))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::values;
    use candle_core::Device;

    /// Reference AdamW written out in f64, following torch.optim.AdamW's documented algorithm.
    fn reference(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], hp: &AdamWParams, t: i32) {
        for i in 0..p.len() {
            p[i] *= 1.0 - hp.lr * hp.weight_decay;
            m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * g[i];
            v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g[i] * g[i];
            let mhat = m[i] / (1.0 - hp.beta1.powi(t));
            let vhat = v[i] / (1.0 - hp.beta2.powi(t));
            p[i] -= hp.lr * mhat / (vhat.sqrt() + hp.eps);
        }
    }

    #[test]
    fn matches_reference_over_steps_in_place() -> Result<()> {
        // Larger than CHUNK so the parallel path runs.
        let n = 37 * 900;
        let hp = AdamWParams {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let p0 = values(n, 1);
        let var = Var::from_tensor(&Tensor::from_vec(p0.clone(), (n / 37, 37), &Device::Cpu)?)?;
        let before = var.as_tensor().clone();
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let mut rp: Vec<f64> = p0.iter().map(|&x| x.into()).collect();
        let (mut rm, mut rv) = (vec![0f64; n], vec![0f64; n]);
        for t in 1..=5 {
            let g = values(n, 100 + t);
            let gt = Tensor::from_vec(g.clone(), var.shape(), &Device::Cpu)?;
            adamw_step(&var, &gt, &mut m, &mut v, &hp, t, 0.5)?;
            let g64: Vec<f64> = g.iter().map(|&x| f64::from(x) * 0.5).collect();
            reference(&mut rp, &g64, &mut rm, &mut rv, &hp, t as i32);
        }
        let got = var.flatten_all()?.to_vec1::<f32>()?;
        let max_err = got
            .iter()
            .zip(&rp)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(max_err < 1e-5, "max abs error {max_err}");
        // In place: a clone taken before the update shares the storage and sees the new values.
        assert_eq!(before.flatten_all()?.to_vec1::<f32>()?, got);
        assert!(got.iter().zip(&p0).any(|(a, b)| a != b));
        Ok(())
    }

    #[test]
    fn rejects_mismatched_moments_and_step_zero() -> Result<()> {
        let var = Var::zeros(4, DType::F32, &Device::Cpu)?;
        let g = Tensor::ones(4, DType::F32, &Device::Cpu)?;
        let hp = AdamWParams::default();
        let err = adamw_step(&var, &g, &mut [0.0; 3], &mut [0.0; 4], &hp, 1, 1.0).unwrap_err();
        assert!(err.to_string().contains("moments"), "{err}");
        let err = adamw_step(&var, &g, &mut [0.0; 4], &mut [0.0; 4], &hp, 0, 1.0).unwrap_err();
        assert!(err.to_string().contains("step"), "{err}");
        Ok(())
    }

    #[test]
    fn non_f32_params_take_the_fallback() -> Result<()> {
        let hp = AdamWParams {
            weight_decay: 0.0,
            ..AdamWParams::default()
        };
        let var = Var::from_tensor(&Tensor::new(&[1f64, -2.0], &Device::Cpu)?)?;
        let g = Tensor::new(&[0.5f64, -0.25], &Device::Cpu)?;
        let (mut m, mut v) = (vec![0f32; 2], vec![0f32; 2]);
        adamw_step(&var, &g, &mut m, &mut v, &hp, 1, 1.0)?;
        // First step of Adam moves each element by lr * sign(g) (eps aside).
        let got = var.to_vec1::<f64>()?;
        assert!(
            (got[0] - (1.0 - 1e-3)).abs() < 1e-6 && (got[1] - (-2.0 + 1e-3)).abs() < 1e-6,
            "{got:?}"
        );
        Ok(())
    }

    #[test]
    fn grad_norm_and_scaling() -> Result<()> {
        let a = Tensor::from_vec(values(CHUNK + 5, 7), CHUNK + 5, &Device::Cpu)?;
        let b = Tensor::new(&[3f32, 4.0], &Device::Cpu)?;
        let want = a.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 + 25.0;
        let got = grad_sq_norm(&[&a, &b])?;
        assert!((got - want).abs() / want < 1e-5, "{got} vs {want}");
        assert!(scale_inplace(&b, 0.5)?);
        assert_eq!(b.to_vec1::<f32>()?, vec![1.5, 2.0]);
        let h = Tensor::new(&[1f64], &Device::Cpu)?;
        assert!(!scale_inplace(&h, 2.0)?);
        Ok(())
    }
}
