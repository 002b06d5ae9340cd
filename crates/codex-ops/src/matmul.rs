//! Strided f32 matrix products through the `gemm` crate (the kernels candle's CPU matmul uses),
//! so fused ops can multiply views of a buffer (one head of a packed `qkv`, a transposed
//! weight) without the copies and allocations of candle's tensor API.

use gemm::Parallelism;

/// An `rows × cols` view into a buffer: element `(r, c)` lives at `offset + r * rs + c * cs`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    /// A row-major view with row stride `rs`.
    pub fn rows(offset: usize, rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            offset,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose (no data moves).
    pub fn t(self) -> Self {
        Self {
            offset: self.offset,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows `r0..r1` and columns `c0..c1`.
    pub fn sub(self, r0: usize, r1: usize, c0: usize, c1: usize) -> Self {
        debug_assert!(r0 <= r1 && r1 <= self.rows && c0 <= c1 && c1 <= self.cols);
        Self {
            offset: self.offset + r0 * self.rs + c0 * self.cs,
            rows: r1 - r0,
            cols: c1 - c0,
            rs: self.rs,
            cs: self.cs,
        }
    }

    /// One past the largest index the view touches (0 when empty).
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
    }
}

/// The `b` operand of a product: f32, or bf16 as a bf16 run stores its weight matrices (handed
/// to the ops as stored, not widened: the bf16 products pack them directly).
#[derive(Clone, Copy)]
pub(crate) enum Weight<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
}

impl Weight<'_> {
    fn len(&self) -> usize {
        match self {
            Weight::F32(v) => v.len(),
            Weight::Bf16(v) => v.len(),
        }
    }
}

impl<'a> From<&'a [f32]> for Weight<'a> {
    fn from(v: &'a [f32]) -> Self {
        Weight::F32(v)
    }
}

impl<'a> From<&'a Vec<f32>> for Weight<'a> {
    fn from(v: &'a Vec<f32>) -> Self {
        Weight::F32(v)
    }
}

/// `0..len` as at most `parts` consecutive `[start, end)` blocks whose sizes are multiples of
/// `unit` (the last one excepted): fixed by the arguments alone, so a product split over threads
/// by it is split the same way on every run.
pub(crate) fn split(len: usize, parts: usize, unit: usize) -> Vec<(usize, usize)> {
    let per = len.div_ceil(parts.max(1)).div_ceil(unit) * unit;
    (0..len)
        .step_by(per.max(1))
        .map(|s| (s, (s + per).min(len)))
        .collect()
}

/// `dst = scale · a · b` (or `dst += scale · a · b` with `accumulate`), bounds-checked.
///
/// `dst` is passed as a raw pointer plus its length because fused ops write disjoint strided
/// views of one output from several threads; the caller guarantees that no other thread touches
/// the elements of `dv` while this runs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into<'b>(
    dst: *mut f32,
    dst_len: usize,
    dv: View,
    a: &[f32],
    av: View,
    b: impl Into<Weight<'b>>,
    bv: View,
    scale: f32,
    accumulate: bool,
    threads: usize,
) {
    let b = b.into();
    assert!(
        dv.rows == av.rows && dv.cols == bv.cols && av.cols == bv.rows,
        "gemm_into: shape mismatch {dv:?} = {av:?} x {bv:?}"
    );
    assert!(dv.end() <= dst_len && av.end() <= a.len() && bv.end() <= b.len());
    if dv.rows == 0 || dv.cols == 0 {
        return;
    }
    if av.cols == 0 {
        if !accumulate {
            for r in 0..dv.rows {
                for c in 0..dv.cols {
                    // SAFETY: inside `dv`, which lies within `dst_len` (checked above).
                    unsafe { *dst.add(dv.offset + r * dv.rs + c * dv.cs) = 0.0 };
                }
            }
        }
        return;
    }
    if crate::bf16gemm::active() {
        // SAFETY: the views were checked above, `active` implies the CPU features, and
        // exclusive access to `dv` is the caller's guarantee.
        unsafe {
            match b {
                Weight::F32(b) => {
                    crate::bf16gemm::gemm(dst, dv, a, av, b, bv, scale, accumulate, threads)
                }
                Weight::Bf16(b) => {
                    crate::bf16gemm::gemm(dst, dv, a, av, b, bv, scale, accumulate, threads)
                }
            }
        };
        return;
    }
    let b = match b {
        Weight::F32(b) => b,
        Weight::Bf16(w) => {
            // f32 products on a bf16 weight (the switch was turned off after the op chose to
            // pass it as stored): the f32 path on a widened copy.
            let wide: Vec<f32> = w.iter().map(|x| x.to_f32()).collect();
            gemm_into(
                dst, dst_len, dv, a, av, &wide, bv, scale, accumulate, threads,
            );
            return;
        }
    };
    if crate::blas::wants(dv.rows, dv.cols, av.cols)
        && let Some(call) = blas_call(dst, dv, a, av, b, bv, scale, accumulate)
    {
        // SAFETY: the views were checked above; `blas_call` only accepts layouts CBLAS
        // addresses exactly; exclusive access to `dv` is the caller's guarantee.
        unsafe { crate::blas::run(call, threads) };
        return;
    }
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: all three views were checked to lie inside their buffers, `a` and `b` are shared
    // borrows that outlive the call, and the caller guarantees exclusive access to `dv`.
    unsafe {
        gemm::gemm(
            dv.rows,
            dv.cols,
            av.cols,
            dst.add(dv.offset),
            dv.cs as isize,
            dv.rs as isize,
            accumulate,
            a.as_ptr().add(av.offset),
            av.cs as isize,
            av.rs as isize,
            b.as_ptr().add(bv.offset),
            bv.cs as isize,
            bv.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// `scale · a · b` as a new row-major `rows × cols` buffer, never zero-filled: the product
/// writes every element, and a fill first would be a memset as large as the result (several
/// percent of a training step).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_new<'b>(
    rows: usize,
    cols: usize,
    a: &[f32],
    av: View,
    b: impl Into<Weight<'b>>,
    bv: View,
    scale: f32,
    threads: usize,
) -> Vec<f32> {
    let n = rows * cols;
    let mut out = Vec::with_capacity(n);
    gemm_into(
        out.as_mut_ptr(),
        n,
        View::rows(0, rows, cols, cols),
        a,
        av,
        b,
        bv,
        scale,
        false,
        threads,
    );
    // SAFETY: the capacity is `n`, and with `accumulate = false` `gemm_into` wrote every element
    // of the `rows × cols` view, which is all of `out[..n]`: the `gemm` crate does not read the
    // destination then, OpenBLAS with beta = 0 stores zeros before it accumulates, the bf16
    // kernels store every tile of their first inner block, and an empty inner dimension stores
    // zeros. (It returns early, writing nothing, only when n = 0.)
    unsafe { out.set_len(n) };
    out
}

/// `(transposed, leading dimension)` of a view as a row-major CBLAS operand: unit column stride
/// (as stored), or unit row stride (the transpose of a row-major matrix); `None` otherwise.
fn cblas_operand(v: View) -> Option<(bool, usize)> {
    let fits = |x: usize| x <= i32::MAX as usize;
    if v.cs == 1 && (v.rows == 1 || v.rs >= v.cols) {
        let ld = if v.rows == 1 { v.cols.max(1) } else { v.rs };
        fits(ld).then_some((false, ld))
    } else if v.rs == 1 && (v.cols == 1 || v.cs >= v.rows) {
        let ld = if v.cols == 1 { v.rows.max(1) } else { v.cs };
        fits(ld).then_some((true, ld))
    } else {
        None
    }
}

/// The CBLAS form of `dst (+)= scale · a · b`, writing a column-major destination as the
/// transposed product `dstᵀ = bᵀ · aᵀ`; `None` when a view has no unit stride.
#[allow(clippy::too_many_arguments)]
fn blas_call(
    dst: *mut f32,
    dv: View,
    a: &[f32],
    av: View,
    b: &[f32],
    bv: View,
    scale: f32,
    accumulate: bool,
) -> Option<crate::blas::Call> {
    let (dv, (av, a), (bv, b)) = if dv.cs == 1 {
        (dv, (av, a), (bv, b))
    } else {
        (dv.t(), (bv.t(), b), (av.t(), a))
    };
    let (false, ldc) = cblas_operand(dv)? else {
        return None;
    };
    let (trans_a, lda) = cblas_operand(av)?;
    let (trans_b, ldb) = cblas_operand(bv)?;
    let fits = |x: usize| x <= i32::MAX as usize;
    if !(fits(dv.rows) && fits(dv.cols) && fits(av.cols)) {
        return None;
    }
    Some(crate::blas::Call {
        m: dv.rows,
        n: dv.cols,
        k: av.cols,
        // SAFETY (the three offsets): inside their buffers, checked by `gemm_into`.
        a: unsafe { a.as_ptr().add(av.offset) },
        lda,
        trans_a,
        b: unsafe { b.as_ptr().add(bv.offset) },
        ldb,
        trans_b,
        c: unsafe { dst.add(dv.offset) },
        ldc,
        alpha: scale,
        beta: if accumulate { 1.0 } else { 0.0 },
    })
}

/// A raw pointer that may cross threads; each user documents why its writes are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);
// SAFETY: only used to hand disjoint regions of one buffer to parallel tasks.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], av: View, b: &[f32], bv: View) -> Vec<f32> {
        let mut out = vec![0f32; av.rows * bv.cols];
        for r in 0..av.rows {
            for c in 0..bv.cols {
                out[r * bv.cols + c] = (0..av.cols)
                    .map(|k| {
                        a[av.offset + r * av.rs + k * av.cs] * b[bv.offset + k * bv.rs + c * bv.cs]
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn strided_views_match_naive_product() {
        let a: Vec<f32> = (0..200).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..300).map(|i| (i as f32 * 0.11).cos()).collect();
        // a: 5x7 block of a 10-wide buffer; b: transposed 7x6 view of a 6x7 block.
        let av = View::rows(3, 5, 7, 10);
        let bv = View::rows(2, 6, 7, 9).t();
        let want = naive(&a, av, &b, bv);
        let mut out = vec![1f32; 30];
        gemm_into(
            out.as_mut_ptr(),
            30,
            View::rows(0, 5, 6, 6),
            &a,
            av,
            &b,
            bv,
            1.0,
            false,
            1,
        );
        for (x, y) in out.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        // Accumulate with a scale: out = want + 0.5 want.
        gemm_into(
            out.as_mut_ptr(),
            30,
            View::rows(0, 5, 6, 6),
            &a,
            av,
            &b,
            bv,
            0.5,
            true,
            2,
        );
        for (x, y) in out.iter().zip(&want) {
            assert!((x - 1.5 * y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn cblas_forms_of_strided_views() {
        let a = vec![0f32; 64];
        let mut d = vec![0f32; 64];
        let dp = d.as_mut_ptr();
        // Row-major a (5×7, stride 10) times a transposed b: C row-major.
        let call = blas_call(
            dp,
            View::rows(0, 5, 6, 6),
            &a,
            View::rows(3, 5, 7, 10),
            &a,
            View::rows(2, 6, 7, 9).t(),
            0.5,
            true,
        )
        .unwrap();
        assert_eq!((call.m, call.n, call.k), (5, 6, 7));
        assert_eq!(
            (call.trans_a, call.lda, call.trans_b, call.ldb, call.ldc),
            (false, 10, true, 9, 6)
        );
        assert_eq!((call.alpha, call.beta), (0.5, 1.0));
        assert_eq!(call.a, a[3..].as_ptr());
        // A column-major destination becomes the transposed product: Cᵀ = bᵀ · aᵀ.
        let call = blas_call(
            dp,
            View::rows(1, 6, 5, 8).t(),
            &a,
            View::rows(0, 5, 7, 7),
            &a,
            View::rows(0, 7, 6, 6),
            1.0,
            false,
        )
        .unwrap();
        assert_eq!((call.m, call.n, call.k), (6, 5, 7));
        assert_eq!(
            (call.trans_a, call.lda, call.trans_b, call.ldb, call.ldc),
            (true, 6, true, 7, 8)
        );
        assert_eq!((call.c, call.beta), (dp.wrapping_add(1), 0.0));
        // No unit stride anywhere in `a`: not expressible, the `gemm` crate takes it.
        let strided = View {
            offset: 0,
            rows: 2,
            cols: 2,
            rs: 4,
            cs: 2,
        };
        assert!(
            blas_call(
                dp,
                View::rows(0, 2, 2, 2),
                &a,
                strided,
                &a,
                View::rows(0, 2, 2, 2),
                1.0,
                false
            )
            .is_none()
        );
    }

    #[test]
    #[should_panic(expected = "gemm_into")]
    fn shape_mismatch_panics_before_touching_memory() {
        let a = vec![0f32; 12];
        let mut out = vec![0f32; 9];
        gemm_into(
            out.as_mut_ptr(),
            9,
            View::rows(0, 3, 3, 3),
            &a,
            View::rows(0, 3, 4, 4),
            &a,
            View::rows(0, 3, 3, 3),
            1.0,
            false,
            1,
        );
    }
}
