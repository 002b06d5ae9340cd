//! Affine layer `y = x · W + b` as one op: the bias seeds the output that the matmul accumulates
//! into, and backward produces `dx`, `dW` and `db` directly.
//!
//! With candle ops the same layer is a matmul into a zero-filled buffer, a broadcast of the bias,
//! an allocating add, and in backward a transpose-matmul pair plus a sum for the bias, each grad
//! landing in a fresh zero-filled accumulator.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::matmul::{View, gemm_into};
use crate::util::{cpu_tensor, f32_slice, is_cpu_f32, sum_in_order, with_f32};

/// How the weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]`, `y = x Wᵀ + b` (PyTorch `nn.Linear`).
    OutIn,
    /// `[in, out]`, `y = x W + b` (GPT-2 `Conv1D`).
    InOut,
}

struct Affine {
    layout: WeightLayout,
}

struct Dims {
    n: usize,
    i: usize,
    o: usize,
}

/// `x` is `(..., in)`: every leading dimension counts as rows, so callers need no reshape (a
/// reshape is one more node whose gradient candle's backward zero-fills and adds).
fn dims(x: &Shape, w: &Shape, b: &Shape, layout: WeightLayout) -> Result<Dims> {
    let (Some((&i, lead)), &[w0, w1], &[o]) = (x.dims().split_last(), w.dims(), b.dims()) else {
        bail!(
            "linear: expected x (..., in), weight 2-D and bias 1-D, got {:?}, {:?}, {:?}",
            x.dims(),
            w.dims(),
            b.dims()
        )
    };
    let n = lead.iter().product();
    let (wi, wo) = match layout {
        WeightLayout::OutIn => (w1, w0),
        WeightLayout::InOut => (w0, w1),
    };
    if wi != i || wo != o {
        bail!(
            "linear: weight {:?} ({layout:?}) does not map {i} inputs to {o} outputs",
            w.dims()
        );
    }
    Ok(Dims { n, i, o })
}

/// `x`'s shape with the last dimension replaced by `o`.
fn out_shape(x: &Shape, o: usize) -> Shape {
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = o;
    }
    Shape::from(dims)
}

impl Affine {
    /// The weight as an `in × out` view.
    fn w_in_out(&self, d: &Dims) -> View {
        match self.layout {
            WeightLayout::InOut => View::rows(0, d.i, d.o, d.o),
            WeightLayout::OutIn => View::rows(0, d.o, d.i, d.i).t(),
        }
    }
}

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        "codex-linear"
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
        let d = dims(l1.shape(), l2.shape(), l3.shape(), self.layout)?;
        let x = f32_slice(s1, l1, "linear (x)")?;
        let w = f32_slice(s2, l2, "linear (weight)")?;
        let b = f32_slice(s3, l3, "linear (bias)")?;
        let mut y = vec![0f32; d.n * d.o];
        if d.o > 0 {
            y.par_chunks_mut(d.o * 64)
                .for_each(|c| c.chunks_exact_mut(d.o).for_each(|r| r.copy_from_slice(b)));
        }
        let len = y.len();
        gemm_into(
            y.as_mut_ptr(),
            len,
            View::rows(0, d.n, d.o, d.o),
            x,
            View::rows(0, d.n, d.i, d.i),
            w,
            self.w_in_out(&d),
            1.0,
            true,
            rayon::current_num_threads(),
        );
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
        let d = dims(x.shape(), w.shape(), b.shape(), self.layout)?;
        let threads = rayon::current_num_threads();
        let op = "linear backward";
        let (dx, dw, db) = with_f32(x, op, |xs| {
            with_f32(w, op, |ws| {
                with_f32(dy, op, |g| {
                    let gv = View::rows(0, d.n, d.o, d.o);
                    // dx = dy · Wᵀ  (n × o · o × i)
                    let mut dx = vec![0f32; d.n * d.i];
                    let len = dx.len();
                    gemm_into(
                        dx.as_mut_ptr(),
                        len,
                        View::rows(0, d.n, d.i, d.i),
                        g,
                        gv,
                        ws,
                        self.w_in_out(&d).t(),
                        1.0,
                        false,
                        threads,
                    );
                    // dW in the weight's own layout: xᵀ · dy (in × out) or dyᵀ · x (out × in).
                    let mut dw = vec![0f32; d.i * d.o];
                    let len = dw.len();
                    let xv = View::rows(0, d.n, d.i, d.i);
                    match self.layout {
                        WeightLayout::InOut => gemm_into(
                            dw.as_mut_ptr(),
                            len,
                            View::rows(0, d.i, d.o, d.o),
                            xs,
                            xv.t(),
                            g,
                            gv,
                            1.0,
                            false,
                            threads,
                        ),
                        WeightLayout::OutIn => gemm_into(
                            dw.as_mut_ptr(),
                            len,
                            View::rows(0, d.o, d.i, d.i),
                            g,
                            gv.t(),
                            xs,
                            xv,
                            1.0,
                            false,
                            threads,
                        ),
                    }
                    // db = column sums of dy: partials over fixed row chunks in parallel, added
                    // in chunk order (bitwise reproducible, unlike a rayon fold/reduce).
                    let partials: Vec<Vec<f32>> = if d.o == 0 {
                        Vec::new()
                    } else {
                        g.par_chunks(d.o * 64)
                            .map(|c| {
                                let mut acc = vec![0f32; d.o];
                                for r in c.chunks_exact(d.o) {
                                    acc.iter_mut().zip(r).for_each(|(a, &v)| *a += v);
                                }
                                acc
                            })
                            .collect()
                    };
                    let db = sum_in_order(&partials, d.o);
                    Ok((dx, dw, db))
                })
            })
        })?;
        Ok((
            Some(cpu_tensor(dx, x.shape())?),
            Some(cpu_tensor(dw, w.shape())?),
            Some(cpu_tensor(db, b.shape())?),
        ))
    }
}

/// `x · W + b` over the last dimension of `x` (any leading shape), with the weight in `layout`.
/// One op forward and one backward on CPU f32; candle's matmul and broadcast add elsewhere.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, layout: WeightLayout) -> Result<Tensor> {
    let d = dims(x.shape(), w.shape(), b.shape(), layout)?;
    if is_cpu_f32(x) && is_cpu_f32(w) && is_cpu_f32(b) {
        x.contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, Affine { layout })
    } else {
        linear_reference(&x.reshape((d.n, d.i))?, w, b, layout)?.reshape(out_shape(x.shape(), d.o))
    }
}

/// The candle composition, for 2-D `x`.
pub fn linear_reference(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    layout: WeightLayout,
) -> Result<Tensor> {
    let y = match layout {
        WeightLayout::InOut => x.matmul(w)?,
        WeightLayout::OutIn => x.matmul(&w.t()?)?,
    };
    y.broadcast_add(b)
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
