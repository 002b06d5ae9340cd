//! Small helpers shared by the kernels.

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor, bail};

/// Rows handed to one rayon task: small enough to balance two to sixteen cores, large enough that
/// task overhead stays far below the arithmetic for rows of ≥ 64 elements.
pub(crate) const ROWS_PER_TASK: usize = 16;

/// The f32 elements a contiguous layout covers.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: expected a contiguous f32 tensor, got layout {l:?}"),
    }
}

/// Whether `t` can take the fused CPU path.
pub(crate) fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` over the f32 data of a CPU tensor (made contiguous first if needed).
pub(crate) fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(f32_slice(s, layout, op)?),
        _ => bail!("{op}: expected a CPU tensor"),
    }
}

/// The f32 or bf16 elements a contiguous layout of a weight covers.
pub(crate) fn weight_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> Result<crate::matmul::Weight<'a>> {
    use crate::matmul::Weight;
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{op}: expected a contiguous weight, got layout {l:?}")
    };
    match s {
        CpuStorage::F32(v) => Ok(Weight::F32(&v[a..b])),
        CpuStorage::BF16(v) => Ok(Weight::Bf16(&v[a..b])),
        _ => bail!("{op}: expected an f32 or bf16 weight"),
    }
}

/// Runs `f` over the data of a CPU weight: f32, or bf16 as a bf16 run stores it (made contiguous
/// first if needed).
pub(crate) fn with_weight<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(crate::matmul::Weight<'_>) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(weight_slice(s, layout, op)?),
        _ => bail!("{op}: expected a CPU tensor"),
    }
}

/// Whether `t` can be a fused linear's weight: f32, or bf16 as a bf16 run stores it (read
/// directly by the bf16 products, widened by each product otherwise; its gradient comes back in
/// bf16, rounded as the widening's backward rounds it).
pub(crate) fn is_cpu_weight(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::BF16)
}

/// Last-dimension size and number of rows of a tensor with at least one dimension.
pub(crate) fn rows_cols(l: &Layout, op: &str) -> Result<(usize, usize)> {
    let dims = l.shape().dims();
    let Some(&cols) = dims.last() else {
        bail!("{op}: expected at least one dimension, got a scalar")
    };
    if cols == 0 {
        bail!("{op}: last dimension is empty (shape {:?})", dims);
    }
    Ok((l.shape().elem_count() / cols, cols))
}

/// Element-wise sum of per-chunk partial results, in chunk order. Parallel reductions collect
/// their partials and finish here so that results do not depend on how rayon split the work
/// (exact resume compares weights bit for bit).
pub(crate) fn sum_in_order(partials: &[Vec<f32>], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    for p in partials {
        out.iter_mut().zip(p).for_each(|(a, &v)| *a += v);
    }
    out
}

/// `n` values computed in parallel, `chunk` at a time, without zero-filling the buffer first (a
/// memset as large as the output, several percent of a small model's step): `values(range)`
/// yields the values of the elements in `range`. Sound by construction: this function does
/// every write itself and checks that each chunk was filled before the length is set (a short
/// iterator is a bug in the caller and panics, leaving nothing uninitialized visible). The loop
/// runs under [`crate::simd::with_avx2`], so `values` vectorizes as the kernels' own loops do.
pub(crate) fn par_collect<T, I, F>(n: usize, chunk: usize, values: F) -> Vec<T>
where
    T: Send,
    F: Fn(std::ops::Range<usize>) -> I + Sync,
    I: Iterator<Item = T>,
{
    use rayon::prelude::*;
    let chunk = chunk.max(1);
    let mut out: Vec<T> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, slots)| {
            let range = i * chunk..i * chunk + slots.len();
            let written = crate::simd::with_avx2(
                #[inline(always)]
                || {
                    let mut w = 0;
                    for (slot, v) in slots.iter_mut().zip(values(range)) {
                        slot.write(v);
                        w += 1;
                    }
                    w
                },
            );
            assert_eq!(written, slots.len(), "par_collect: values ended early");
        });
    // SAFETY: every chunk of the first `n` slots was written in full (asserted above; a failed
    // assertion panics out of `for_each` before this line).
    unsafe { out.set_len(n) };
    out
}

/// Builds an f32 CPU tensor from a plain vector.
pub(crate) fn cpu_tensor(data: Vec<f32>, shape: &candle_core::Shape) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::par_collect;

    #[test]
    fn par_collect_fills_every_chunk_in_order() {
        let v = par_collect(10_001, 64, |r| r.map(|i| i as f32 * 0.5));
        assert_eq!(v.len(), 10_001);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32 * 0.5));
        assert!(par_collect(0, 64, |r| r.map(|i| i as f32)).is_empty());
    }

    #[test]
    #[should_panic(expected = "values ended early")]
    fn a_short_producer_panics_instead_of_exposing_uninitialized_memory() {
        par_collect(100, 16, |r| r.take(3).map(|i| i as f32));
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Result, Tensor};

    /// `n` uniform values in [-1, 1) from an LCG started at `seed` (hermetic, no RNG crate state).
    pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Uniform values in [-scale, scale] from a fixed-seed LCG.
    pub(crate) fn rand(seed: u64, shape: &[usize], scale: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v = values(n, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1));
        Tensor::from_vec(
            v.into_iter().map(|x| x * scale).collect(),
            shape,
            &Device::Cpu,
        )
    }

    /// Max |a - b| / (1 + |b|) over all elements, asserted below `tol`.
    pub(crate) fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) -> Result<()> {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
        let a = a.flatten_all()?.to_vec1::<f32>()?;
        let b = b.flatten_all()?.to_vec1::<f32>()?;
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0f32, f32::max);
        assert!(err < tol, "{what}: max relative error {err} >= {tol}");
        // Guard against comparing two all-zero results (a test that cannot fail).
        assert!(
            b.iter().any(|&y| y != 0.0),
            "{what}: reference is all zeros"
        );
        Ok(())
    }
}
