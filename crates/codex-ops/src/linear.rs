//! Affine layer `y = x · W + b` as one op: the bias seeds the output that the matmul accumulates
//! into, and backward produces `dx`, `dW` and `db` directly.
//!
//! With candle ops the same layer is a matmul into a zero-filled buffer, a broadcast of the bias,
//! an allocating add, and in backward a transpose-matmul pair plus a sum for the bias, each grad
//! landing in a fresh zero-filled accumulator.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail,
};
use rayon::prelude::*;

use crate::elementwise::grad_as;
use crate::matmul::{View, Weight, gemm_into, gemm_new};
use crate::util::{
    cpu_tensor, f32_slice, is_cpu_f32, is_cpu_weight, par_collect, sum_in_order, weight_slice,
    with_f32, with_weight,
};

/// How the weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]`, `y = x Wᵀ + b` (PyTorch `nn.Linear`).
    OutIn,
    /// `[in, out]`, `y = x W + b` (GPT-2 `Conv1D`).
    InOut,
}

impl WeightLayout {
    /// `x · W` for 2-D `x` through candle's matmul (the composition the fused ops replace, and
    /// their fallback off the CPU).
    pub fn matmul(self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self {
            WeightLayout::InOut => x.matmul(w),
            WeightLayout::OutIn => x.matmul(&w.t()?),
        }
    }
}

struct Affine {
    layout: WeightLayout,
    /// `y = gelu(x) · W + b` (GELU's tanh form): the MLP's activation and output projection as
    /// one op. The activation is never kept: forward computes it into a buffer the GEMM consumes
    /// and frees, backward computes it again. The step then holds one `[n, 4d]` activation per
    /// MLP instead of two (on gpt-medium 8 MiB per layer) for an elementwise pass; values are the
    /// same, to the bit, as [`crate::gelu`] then a plain affine op.
    gelu: bool,
}

/// `gelu(u)` as a new buffer, in parallel.
fn gelu_of(u: &[f32]) -> Vec<f32> {
    par_collect(u.len(), crate::gelu::CHUNK, |r| {
        u[r].iter().map(|&x| crate::gelu::fwd(x))
    })
}

struct Dims {
    n: usize,
    i: usize,
    o: usize,
}

/// `x` is `(..., in)`: every leading dimension counts as rows, so callers need no reshape (a
/// reshape is one more node whose gradient candle's backward zero-fills and adds).
fn dims(x: &Shape, w: &Shape, b: Option<&Shape>, layout: WeightLayout) -> Result<Dims> {
    let (Some((&i, lead)), &[w0, w1]) = (x.dims().split_last(), w.dims()) else {
        bail!(
            "linear: expected x (..., in) and a 2-D weight, got {:?}, {:?}",
            x.dims(),
            w.dims()
        )
    };
    let n = lead.iter().product();
    let (wi, wo) = match layout {
        WeightLayout::OutIn => (w1, w0),
        WeightLayout::InOut => (w0, w1),
    };
    if wi != i {
        bail!(
            "linear: weight {:?} ({layout:?}) does not map {i} inputs to {wo} outputs",
            w.dims()
        );
    }
    if let Some(b) = b
        && b.dims() != [wo]
    {
        bail!(
            "linear: bias {:?} does not match the {wo} outputs of weight {:?}",
            b.dims(),
            w.dims()
        );
    }
    Ok(Dims { n, i, o: wo })
}

/// `x`'s shape with the last dimension replaced by `o`.
fn out_shape(x: &Shape, o: usize) -> Shape {
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = o;
    }
    Shape::from(dims)
}

/// The weight as an `in × out` view.
fn w_in_out(layout: WeightLayout, d: &Dims) -> View {
    match layout {
        WeightLayout::InOut => View::rows(0, d.i, d.o, d.o),
        WeightLayout::OutIn => View::rows(0, d.o, d.i, d.i).t(),
    }
}

/// `y = x · W (+ b)`, `n × o`: the bias seeds the rows that the product accumulates into.
fn forward<'w>(
    d: &Dims,
    layout: WeightLayout,
    x: &[f32],
    w: impl Into<Weight<'w>>,
    b: Option<&[f32]>,
) -> Vec<f32> {
    let w = w.into();
    let threads = rayon::current_num_threads();
    let xv = View::rows(0, d.n, d.i, d.i);
    let Some(b) = b else {
        return gemm_new(d.n, d.o, x, xv, w, w_in_out(layout, d), 1.0, threads);
    };
    // Every row starts as the bias: one row per chunk, a plain copy.
    let mut y = par_collect(d.n * d.o, d.o, |_| b.iter().copied());
    let len = y.len();
    gemm_into(
        y.as_mut_ptr(),
        len,
        View::rows(0, d.n, d.o, d.o),
        x,
        xv,
        w,
        w_in_out(layout, d),
        1.0,
        true,
        threads,
    );
    y
}

/// `dx = dy · Wᵀ` (`n × o · o × i`).
fn grad_x<'w>(
    d: &Dims,
    layout: WeightLayout,
    g: &[f32],
    w: impl Into<Weight<'w>>,
    threads: usize,
) -> Vec<f32> {
    let gv = View::rows(0, d.n, d.o, d.o);
    gemm_new(d.n, d.i, g, gv, w, w_in_out(layout, d).t(), 1.0, threads)
}

/// dW in the weight's own layout: `xᵀ · dy` (in × out) or `dyᵀ · x` (out × in).
fn grad_w(d: &Dims, layout: WeightLayout, xs: &[f32], g: &[f32], threads: usize) -> Vec<f32> {
    let gv = View::rows(0, d.n, d.o, d.o);
    let xv = View::rows(0, d.n, d.i, d.i);
    match layout {
        WeightLayout::InOut => gemm_new(d.i, d.o, xs, xv.t(), g, gv, 1.0, threads),
        WeightLayout::OutIn => gemm_new(d.o, d.i, g, gv.t(), xs, xv, 1.0, threads),
    }
}

/// `(dx, dW)`. The two products have the same arithmetic (`n·i·o` multiply-adds each), so with
/// two or more threads they run side by side, each GEMM on half the threads, instead of one
/// after the other with every GEMM split across all of them: on the small shapes of a small
/// model's step (k = 128), splitting one GEMM two ways costs more than it gains. The `gemm`
/// crate splits a product by output blocks, never along `k`, so the values do not depend on
/// the thread count.
fn grads(
    d: &Dims,
    layout: WeightLayout,
    xs: &[f32],
    ws: Weight,
    g: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return (
            grad_x(d, layout, g, ws, threads),
            grad_w(d, layout, xs, g, threads),
        );
    }
    let half = threads / 2;
    rayon::join(
        || grad_x(d, layout, g, ws, half),
        || grad_w(d, layout, xs, g, threads - half),
    )
}

/// db = column sums of `dy` (`o` columns): partials over fixed row chunks in parallel, added in
/// chunk order (bitwise reproducible, unlike a rayon fold/reduce).
fn bias_grad(g: &[f32], o: usize) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = if o == 0 {
        Vec::new()
    } else {
        g.par_chunks(o * 64)
            .map(|c| {
                let mut acc = vec![0f32; o];
                for r in c.chunks_exact(o) {
                    acc.iter_mut().zip(r).for_each(|(a, &v)| *a += v);
                }
                acc
            })
            .collect()
    };
    sum_in_order(&partials, o)
}

/// [`Affine`] without a bias.
struct AffineNoBias {
    layout: WeightLayout,
}

impl CustomOp2 for AffineNoBias {
    fn name(&self) -> &'static str {
        "codex-linear-no-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = dims(l1.shape(), l2.shape(), None, self.layout)?;
        let x = f32_slice(s1, l1, "linear (x)")?;
        let w = weight_slice(s2, l2, "linear (weight)")?;
        let y = forward(&d, self.layout, x, w, None);
        Ok((CpuStorage::F32(y), out_shape(l1.shape(), d.o)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = dims(x.shape(), w.shape(), None, self.layout)?;
        let op = "linear backward";
        let (dx, dw) = with_f32(x, op, |xs| {
            with_weight(w, op, |ws| {
                with_f32(dy, op, |g| Ok(grads(&d, self.layout, xs, ws, g)))
            })
        })?;
        Ok((Some(cpu_tensor(dx, x.shape())?), Some(grad_as(dw, w)?)))
    }
}

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        if self.gelu {
            "codex-gelu-linear"
        } else {
            "codex-linear"
        }
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
        let d = dims(l1.shape(), l2.shape(), Some(l3.shape()), self.layout)?;
        let x = f32_slice(s1, l1, "linear (x)")?;
        let w = weight_slice(s2, l2, "linear (weight)")?;
        let b = f32_slice(s3, l3, "linear (bias)")?;
        let y = if self.gelu {
            forward(&d, self.layout, &gelu_of(x), w, Some(b))
        } else {
            forward(&d, self.layout, x, w, Some(b))
        };
        Ok((CpuStorage::F32(y), out_shape(l1.shape(), d.o)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = dims(x.shape(), w.shape(), Some(b.shape()), self.layout)?;
        let op = "linear backward";
        let (dx, dw, db) = with_f32(x, op, |xs| {
            with_weight(w, op, |ws| {
                with_f32(dy, op, |g| {
                    if !self.gelu {
                        let (dx, dw) = grads(&d, self.layout, xs, ws, g);
                        return Ok((dx, dw, bias_grad(g, d.o)));
                    }
                    let m = gelu_of(xs);
                    let (mut dx, dw) = grads(&d, self.layout, &m, ws, g);
                    drop(m);
                    // dx = d(gelu(x)) · gelu'(x), in place (the product `crate::gelu` computes).
                    let chunk = crate::gelu::CHUNK;
                    dx.par_chunks_mut(chunk)
                        .zip(xs.par_chunks(chunk))
                        .for_each(|(dx, x)| {
                            crate::simd::with_avx2(
                                #[inline(always)]
                                || {
                                    for (a, &x) in dx.iter_mut().zip(x) {
                                        *a *= crate::gelu::dfdx(x);
                                    }
                                },
                            )
                        });
                    Ok((dx, dw, bias_grad(g, d.o)))
                })
            })
        })?;
        Ok((
            Some(cpu_tensor(dx, x.shape())?),
            Some(grad_as(dw, w)?),
            Some(cpu_tensor(db, b.shape())?),
        ))
    }
}

/// A linear layer whose weight and bias are constants: they ride inside the op rather than in the
/// graph, so backward yields `dx` alone. Through candle's matmul, backward also runs the
/// weight-gradient GEMM and keeps a weight-sized gradient in the `GradStore` even for a detached
/// weight (its backprop computes both sides of every matmul), a third of a frozen model's GEMMs.
struct Frozen {
    w: Tensor,
    b: Option<Tensor>,
    layout: WeightLayout,
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "codex-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = "frozen linear";
        let d = dims(
            l.shape(),
            self.w.shape(),
            self.b.as_ref().map(Tensor::shape),
            self.layout,
        )?;
        let x = f32_slice(s, l, op)?;
        let y = with_weight(&self.w, op, |w| match &self.b {
            Some(b) => with_f32(b, op, |b| Ok(forward(&d, self.layout, x, w, Some(b)))),
            None => Ok(forward(&d, self.layout, x, w, None)),
        })?;
        Ok((CpuStorage::F32(y), out_shape(l.shape(), d.o)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let d = dims(x.shape(), self.w.shape(), None, self.layout)?;
        let threads = rayon::current_num_threads();
        let op = "frozen linear backward";
        let dx = with_weight(&self.w, op, |w| {
            with_f32(dy, op, |g| Ok(grad_x(&d, self.layout, g, w, threads)))
        })?;
        Ok(Some(cpu_tensor(dx, x.shape())?))
    }
}

/// `x · W + b` over the last dimension of `x` (any leading shape), with the weight in `layout`.
/// One op forward and one backward on CPU f32; candle's matmul and broadcast add elsewhere.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, layout: WeightLayout) -> Result<Tensor> {
    let d = dims(x.shape(), w.shape(), Some(b.shape()), layout)?;
    if is_cpu_f32(x) && is_cpu_weight(w) && is_cpu_f32(b) {
        x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            Affine {
                layout,
                gelu: false,
            },
        )
    } else {
        linear_reference(&x.reshape((d.n, d.i))?, w, b, layout)?.reshape(out_shape(x.shape(), d.o))
    }
}

/// `gelu(u) · W + b` over the last dimension of `u` (GELU's tanh form, GPT-2's `gelu_new`): the
/// MLP's activation and output projection in one op that keeps no activation of its own
/// (`Affine` with `gelu`). The same values as [`crate::gelu`] then [`linear`], to the bit; those two
/// off the CPU.
pub fn gelu_linear(u: &Tensor, w: &Tensor, b: &Tensor, layout: WeightLayout) -> Result<Tensor> {
    dims(u.shape(), w.shape(), Some(b.shape()), layout)?;
    if is_cpu_f32(u) && is_cpu_weight(w) && is_cpu_f32(b) {
        u.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            Affine { layout, gelu: true },
        )
    } else {
        linear(&crate::gelu(u)?, w, b, layout)
    }
}

/// `x · W` over the last dimension of `x` (any leading shape): [`linear`] without a bias. Backward
/// writes `dx` and `dW` (in the weight's own layout) straight from two GEMMs; through candle, a
/// `[out, in]` weight's gradient would come back transposed and be added, strided, into a
/// zero-filled buffer. Candle's matmul on 2-D rows elsewhere.
pub fn linear_no_bias(x: &Tensor, w: &Tensor, layout: WeightLayout) -> Result<Tensor> {
    let d = dims(x.shape(), w.shape(), None, layout)?;
    if is_cpu_f32(x) && is_cpu_weight(w) {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, AffineNoBias { layout })
    } else {
        layout
            .matmul(&x.reshape((d.n, d.i))?, w)?
            .reshape(out_shape(x.shape(), d.o))
    }
}

/// The candle composition, for 2-D `x`.
pub fn linear_reference(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    layout: WeightLayout,
) -> Result<Tensor> {
    layout.matmul(x, w)?.broadcast_add(b)
}

/// `x · W (+ b)` with `W` and `b` held constant: backward gives `dx` only (no weight-gradient
/// GEMM, no weight-sized gradient buffer), and neither gets a gradient even if it is a `Var`.
/// For frozen base weights (LoRA). One op on CPU f32 over any leading shape of `x`; elsewhere
/// [`frozen_linear_reference`].
pub fn frozen_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    layout: WeightLayout,
) -> Result<Tensor> {
    dims(x.shape(), w.shape(), b.map(Tensor::shape), layout)?;
    if is_cpu_f32(x) && is_cpu_weight(w) && b.is_none_or(is_cpu_f32) {
        let op = Frozen {
            w: w.detach().contiguous()?,
            b: b.map(|b| b.detach().contiguous()).transpose()?,
            layout,
        };
        x.contiguous()?.apply_op1(op)
    } else {
        frozen_linear_reference(x, w, b, layout)
    }
}

/// The candle composition of [`frozen_linear`]: one 2-D matmul on the detached weight, so
/// candle's backward still computes (and drops) a weight gradient.
pub fn frozen_linear_reference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    layout: WeightLayout,
) -> Result<Tensor> {
    let d = dims(x.shape(), w.shape(), b.map(Tensor::shape), layout)?;
    let x2 = x.reshape((d.n, d.i))?;
    let mut y = layout.matmul(&x2, &w.detach())?;
    if let Some(b) = b {
        y = y.broadcast_add(&b.detach())?;
    }
    y.reshape(out_shape(x.shape(), d.o))
}

/// A frozen linear layer with an unmerged LoRA adapter, `y = x·W (+ b) + scale·(x·Aᵀ)·Bᵀ`, as one
/// op over `(x, A, B)`; `W` and `b` ride inside as constants.
///
/// Composed, the adapter adds about seven nodes per layer (reshapes, two matmuls, the scale, the
/// add), each with its zero-filled gradient accumulator in backward, and candle's matmul backward
/// computes a gradient for the detached base weight too. Here backward runs five GEMMs (with
/// `g = dy·B` and `h = x·Aᵀ` recomputed, both `n × r`): `dx = dy·W + scale·g·A`,
/// `dA = scale·gᵀ·x`, `dB = scale·dyᵀ·h`.
struct LoraFrozen {
    w: Tensor,
    b: Option<Tensor>,
    layout: WeightLayout,
    scale: f32,
}

/// `A` `[r, in]` and `B` `[out, r]` as PEFT stores them, checked against `d`.
fn lora_rank(a: &Shape, bm: &Shape, d: &Dims) -> Result<usize> {
    match (a.dims(), bm.dims()) {
        (&[r, ai], &[bo, br]) if ai == d.i && bo == d.o && br == r => Ok(r),
        _ => bail!(
            "lora_linear: adapter A {:?} and B {:?} do not fit a {} -> {} layer (want [r, {}] and [{}, r])",
            a.dims(),
            bm.dims(),
            d.i,
            d.o,
            d.i,
            d.o
        ),
    }
}

impl CustomOp3 for LoraFrozen {
    fn name(&self) -> &'static str {
        "codex-lora-linear"
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
        let op = "lora linear";
        let d = dims(
            l1.shape(),
            self.w.shape(),
            self.b.as_ref().map(Tensor::shape),
            self.layout,
        )?;
        let r = lora_rank(l2.shape(), l3.shape(), &d)?;
        let x = f32_slice(s1, l1, op)?;
        let a = f32_slice(s2, l2, op)?;
        let bm = f32_slice(s3, l3, op)?;
        let mut y = with_weight(&self.w, op, |w| match &self.b {
            Some(b) => with_f32(b, op, |b| Ok(forward(&d, self.layout, x, w, Some(b)))),
            None => Ok(forward(&d, self.layout, x, w, None)),
        })?;
        let threads = rayon::current_num_threads();
        let h = x_at(&d, r, x, a, threads);
        let len = y.len();
        gemm_into(
            y.as_mut_ptr(),
            len,
            View::rows(0, d.n, d.o, d.o),
            &h,
            View::rows(0, d.n, r, r),
            bm,
            View::rows(0, d.o, r, r).t(),
            self.scale,
            true,
            threads,
        );
        Ok((CpuStorage::F32(y), out_shape(l1.shape(), d.o)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        bm: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = dims(x.shape(), self.w.shape(), None, self.layout)?;
        let r = lora_rank(a.shape(), bm.shape(), &d)?;
        let threads = rayon::current_num_threads();
        let op = "lora linear backward";
        let s = self.scale;
        let (dx, da, db) = with_f32(x, op, |xs| {
            with_f32(a, op, |a| {
                with_f32(bm, op, |bm| {
                    with_f32(dy, op, |g| {
                        let mut dx = with_weight(&self.w, op, |w| {
                            Ok(grad_x(&d, self.layout, g, w, threads))
                        })?;
                        let (xv, gv) = (View::rows(0, d.n, d.i, d.i), View::rows(0, d.n, d.o, d.o));
                        let rv = View::rows(0, d.n, r, r);
                        // gb = dy·B, n × r.
                        let gb =
                            gemm_new(d.n, r, g, gv, bm, View::rows(0, d.o, r, r), 1.0, threads);
                        let len = dx.len();
                        gemm_into(
                            dx.as_mut_ptr(),
                            len,
                            xv,
                            &gb,
                            rv,
                            a,
                            View::rows(0, r, d.i, d.i),
                            s,
                            true,
                            threads,
                        );
                        let da = gemm_new(r, d.i, &gb, rv.t(), xs, xv, s, threads);
                        let h = x_at(&d, r, xs, a, threads);
                        let db = gemm_new(d.o, r, g, gv.t(), &h, rv, s, threads);
                        Ok((dx, da, db))
                    })
                })
            })
        })?;
        Ok((
            Some(cpu_tensor(dx, x.shape())?),
            Some(cpu_tensor(da, a.shape())?),
            Some(cpu_tensor(db, bm.shape())?),
        ))
    }
}

/// `h = x·Aᵀ`, `n × r`.
fn x_at(d: &Dims, r: usize, x: &[f32], a: &[f32], threads: usize) -> Vec<f32> {
    let xv = View::rows(0, d.n, d.i, d.i);
    gemm_new(
        d.n,
        r,
        x,
        xv,
        a,
        View::rows(0, r, d.i, d.i).t(),
        1.0,
        threads,
    )
}

/// A frozen base linear (`W`, `b` constants, as [`frozen_linear`]) plus a trainable LoRA adapter
/// `A` `[r, in]`, `B` `[out, r]`: `x·W (+ b) + scale·x·Aᵀ·Bᵀ` over the last dimension of `x`.
/// Backward gives `dx`, `dA` and `dB`. One op on CPU f32 (no adapter dropout: callers with
/// dropout compose it themselves); [`lora_linear_reference`] elsewhere.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    bm: &Tensor,
    scale: f64,
    layout: WeightLayout,
) -> Result<Tensor> {
    let d = dims(x.shape(), w.shape(), b.map(Tensor::shape), layout)?;
    lora_rank(a.shape(), bm.shape(), &d)?;
    if is_cpu_f32(x)
        && is_cpu_weight(w)
        && b.is_none_or(is_cpu_f32)
        && is_cpu_f32(a)
        && is_cpu_f32(bm)
    {
        let op = LoraFrozen {
            w: w.detach().contiguous()?,
            b: b.map(|b| b.detach().contiguous()).transpose()?,
            layout,
            scale: scale as f32,
        };
        x.contiguous()?
            .apply_op3(&a.contiguous()?, &bm.contiguous()?, op)
    } else {
        lora_linear_reference(x, w, b, a, bm, scale, layout)
    }
}

/// The candle composition of [`lora_linear`]: [`frozen_linear_reference`] plus
/// `scale · (x Aᵀ) Bᵀ`.
pub fn lora_linear_reference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    bm: &Tensor,
    scale: f64,
    layout: WeightLayout,
) -> Result<Tensor> {
    let d = dims(x.shape(), w.shape(), b.map(Tensor::shape), layout)?;
    let y = frozen_linear_reference(x, w, b, layout)?;
    let h = x.reshape((d.n, d.i))?.matmul(&a.t()?)?.matmul(&bm.t()?)?;
    let h = (h * scale)?.reshape(y.shape())?;
    y + h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::{assert_close, rand};
    use candle_core::Var;

    fn check(layout: WeightLayout, n: usize, i: usize, o: usize) -> Result<()> {
        let x = Var::from_tensor(&rand(1, &[n, i], 1.0)?)?;
        let wshape = match layout {
            WeightLayout::InOut => [i, o],
            WeightLayout::OutIn => [o, i],
        };
        let w = Var::from_tensor(&rand(2, &wshape, 0.5)?)?;
        let b = Var::from_tensor(&rand(3, &[o], 0.5)?)?;
        let r = rand(4, &[n, o], 1.0)?;
        let y1 = linear(&x, &w, &b, layout)?;
        let y2 = linear_reference(&x, &w, &b, layout)?;
        assert_close(&y1, &y2, 1e-5, "linear forward")?;
        let g1 = (y1 * &r)?.sum_all()?.backward()?;
        let g2 = (y2 * &r)?.sum_all()?.backward()?;
        for (v, what) in [(&x, "dx"), (&w, "dW"), (&b, "db")] {
            let (Some(a), Some(c)) = (g1.get(v), g2.get(v)) else {
                panic!("missing {what}")
            };
            assert_close(a, c, 1e-4, what)?;
        }
        Ok(())
    }

    #[test]
    fn gelu_linear_is_gelu_then_linear_to_the_bit() -> Result<()> {
        // 150 rows: several of gelu's 4096-element chunks and of the bias-gradient row chunks.
        for (layout, wshape) in [
            (WeightLayout::InOut, [96, 40]),
            (WeightLayout::OutIn, [40, 96]),
        ] {
            let u = Var::from_tensor(&rand(1, &[3, 50, 96], 3.0)?)?;
            let w = Var::from_tensor(&rand(2, &wshape, 0.5)?)?;
            let b = Var::from_tensor(&rand(3, &[40], 0.5)?)?;
            let r = rand(4, &[3, 50, 40], 1.0)?;
            let y1 = gelu_linear(&u, &w, &b, layout)?;
            let y2 = linear(&crate::gelu(&u)?, &w, &b, layout)?;
            let bits = |t: &Tensor| -> Result<Vec<u32>> {
                Ok(t.flatten_all()?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(f32::to_bits)
                    .collect())
            };
            assert_eq!(bits(&y1)?, bits(&y2)?, "forward");
            // And both against candle's own composition, so the pair cannot agree on nonsense.
            let y3 = linear_reference(
                &crate::gelu_reference(&u)?.reshape((150, 96))?,
                &w,
                &b,
                layout,
            )?;
            assert_close(&y1.reshape((150, 40))?, &y3, 1e-4, "forward vs candle")?;
            let g1 = (y1 * &r)?.sum_all()?.backward()?;
            let g2 = (y2 * &r)?.sum_all()?.backward()?;
            for (v, what) in [(&u, "du"), (&w, "dW"), (&b, "db")] {
                let (Some(a), Some(c)) = (g1.get(v), g2.get(v)) else {
                    panic!("missing {what}")
                };
                assert_eq!(bits(a)?, bits(c)?, "{what}");
            }
        }
        Ok(())
    }

    #[test]
    fn conv1d_layout_matches_candle() -> Result<()> {
        check(WeightLayout::InOut, 150, 24, 40)
    }

    #[test]
    fn linear_layout_matches_candle() -> Result<()> {
        check(WeightLayout::OutIn, 70, 33, 17)
    }

    #[test]
    fn leading_dims_are_kept() -> Result<()> {
        let x = rand(5, &[2, 3, 4], 1.0)?;
        let y = linear(
            &x,
            &rand(6, &[4, 5], 1.0)?,
            &rand(7, &[5], 1.0)?,
            WeightLayout::InOut,
        )?;
        assert_eq!(y.dims(), &[2, 3, 5]);
        Ok(())
    }

    /// Forward and dx against the candle composition; neither W nor b gets a gradient.
    fn check_frozen(
        layout: WeightLayout,
        lead: &[usize],
        i: usize,
        o: usize,
        bias: bool,
    ) -> Result<()> {
        let mut xs = lead.to_vec();
        xs.push(i);
        let x = Var::from_tensor(&rand(11, &xs, 1.0)?)?;
        let wshape = match layout {
            WeightLayout::InOut => [i, o],
            WeightLayout::OutIn => [o, i],
        };
        let w = Var::from_tensor(&rand(12, &wshape, 0.5)?)?;
        let b = Var::from_tensor(&rand(13, &[o], 0.5)?)?;
        let bt = bias.then(|| b.as_tensor());
        let mut ys = lead.to_vec();
        ys.push(o);
        let r = rand(14, &ys, 1.0)?;
        let y1 = frozen_linear(&x, &w, bt, layout)?;
        let y2 = frozen_linear_reference(&x, &w, bt, layout)?;
        assert_eq!(y1.dims(), ys.as_slice());
        assert_close(&y1, &y2, 1e-5, "frozen linear forward")?;
        let g1 = (y1 * &r)?.sum_all()?.backward()?;
        let g2 = (y2 * &r)?.sum_all()?.backward()?;
        let (Some(a), Some(c)) = (g1.get(&x), g2.get(&x)) else {
            panic!("missing dx")
        };
        assert_close(a, c, 1e-4, "frozen linear dx")?;
        assert!(
            g1.get(&w).is_none() && g1.get(&b).is_none(),
            "frozen W or b got a gradient"
        );
        Ok(())
    }

    #[test]
    fn frozen_linear_matches_candle_and_leaves_weight_without_grad() -> Result<()> {
        check_frozen(WeightLayout::OutIn, &[70], 33, 17, false)?;
        check_frozen(WeightLayout::OutIn, &[3, 50], 24, 40, true)?;
        check_frozen(WeightLayout::InOut, &[2, 3, 25], 16, 9, true)?;
        check_frozen(WeightLayout::InOut, &[150], 24, 40, false)
    }

    /// The gradient store holds nothing weight-shaped after backward, which candle's own matmul
    /// does (it computes both sides of every matmul, detached or not).
    #[test]
    fn frozen_linear_backward_stores_no_weight_gradient() -> Result<()> {
        let x = Var::from_tensor(&rand(21, &[64, 32], 1.0)?)?;
        let w = rand(22, &[500, 32], 0.5)?;
        let weight_shaped = |y: Tensor| -> Result<usize> {
            let grads = y.sum_all()?.backward()?;
            Ok(grads
                .get_ids()
                .filter_map(|id| grads.get_id(*id))
                .filter(|g| matches!(g.dims(), [500, 32] | [32, 500]))
                .count())
        };
        let fused = frozen_linear(&x, &w, None, WeightLayout::OutIn)?;
        assert_eq!(weight_shaped(fused)?, 0);
        let plain = frozen_linear_reference(&x, &w, None, WeightLayout::OutIn)?;
        assert_eq!(
            weight_shaped(plain)?,
            1,
            "candle no longer stores dW: update the docs"
        );
        Ok(())
    }

    #[test]
    fn frozen_linear_is_bitwise_repeatable() -> Result<()> {
        let x = Var::from_tensor(&rand(31, &[130, 48], 1.0)?)?;
        let w = rand(32, &[96, 48], 0.5)?;
        let run = || -> Result<(Vec<f32>, Vec<f32>)> {
            let y = frozen_linear(&x, &w, None, WeightLayout::OutIn)?;
            let g = y.sqr()?.sum_all()?.backward()?;
            let dx = g.get(&x).expect("dx").flatten_all()?.to_vec1()?;
            Ok((y.flatten_all()?.to_vec1()?, dx))
        };
        let (a, b) = (run()?, run()?);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.0), bits(&b.0));
        assert_eq!(bits(&a.1), bits(&b.1));
        Ok(())
    }

    fn check_lora(layout: WeightLayout, bias: bool) -> Result<()> {
        let (n, i, o, r) = (37, 24, 20, 4);
        let wshape = match layout {
            WeightLayout::OutIn => [o, i],
            WeightLayout::InOut => [i, o],
        };
        let x = Var::from_tensor(&rand(21, &[n / 37, n, i], 1.0)?)?;
        let w = rand(22, &wshape, 0.5)?;
        let b = if bias {
            Some(rand(23, &[o], 0.5)?)
        } else {
            None
        };
        let a = Var::from_tensor(&rand(24, &[r, i], 0.5)?)?;
        let bm = Var::from_tensor(&rand(25, &[o, r], 0.5)?)?;
        let probe = rand(26, &[1, n, o], 1.0)?;
        let y1 = lora_linear(&x, &w, b.as_ref(), &a, &bm, 2.0, layout)?;
        let y2 = lora_linear_reference(&x, &w, b.as_ref(), &a, &bm, 2.0, layout)?;
        assert_close(&y1, &y2, 1e-5, "lora forward")?;
        let g1 = (y1 * &probe)?.sum_all()?.backward()?;
        let g2 = (y2 * &probe)?.sum_all()?.backward()?;
        for (v, what) in [(&x, "dx"), (&a, "dA"), (&bm, "dB")] {
            let (Some(p), Some(q)) = (g1.get(v), g2.get(v)) else {
                panic!("missing {what}")
            };
            assert_close(p, q, 1e-5, what)?;
        }
        Ok(())
    }

    #[test]
    fn linear_no_bias_matches_candle() -> Result<()> {
        for (layout, wshape) in [
            (WeightLayout::OutIn, [20, 24]),
            (WeightLayout::InOut, [24, 20]),
        ] {
            let x = Var::from_tensor(&rand(31, &[2, 19, 24], 1.0)?)?;
            let w = Var::from_tensor(&rand(32, &wshape, 0.5)?)?;
            let probe = rand(33, &[2, 19, 20], 1.0)?;
            let y1 = linear_no_bias(&x, &w, layout)?;
            let x2 = x.reshape((38, 24))?;
            let y2 = layout.matmul(&x2, &w)?.reshape((2, 19, 20))?;
            assert_close(&y1, &y2, 1e-5, "linear_no_bias forward")?;
            let g1 = (y1 * &probe)?.sum_all()?.backward()?;
            let g2 = (y2 * &probe)?.sum_all()?.backward()?;
            for (v, what) in [(&x, "dx"), (&w, "dw")] {
                let (Some(p), Some(q)) = (g1.get(v), g2.get(v)) else {
                    panic!("missing {what}")
                };
                assert_close(p, q, 1e-5, what)?;
            }
        }
        Ok(())
    }

    #[test]
    fn lora_linear_matches_candle_composition() -> Result<()> {
        check_lora(WeightLayout::OutIn, false)?;
        check_lora(WeightLayout::InOut, true)
    }

    #[test]
    fn lora_linear_rejects_mismatched_adapter() {
        let z = |s: &[usize]| {
            Tensor::zeros(s, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap()
        };
        let err = lora_linear(
            &z(&[2, 8]),
            &z(&[6, 8]),
            None,
            &z(&[4, 8]),
            &z(&[6, 3]),
            1.0,
            WeightLayout::OutIn,
        )
        .unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }

    #[test]
    fn mismatched_weight_is_an_error() {
        let err = linear(
            &rand(5, &[3, 4], 1.0).unwrap(),
            &rand(6, &[5, 4], 1.0).unwrap(),
            &rand(7, &[5], 1.0).unwrap(),
            WeightLayout::InOut,
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not map"), "{err}");
    }
}
