//! Vectorisation helpers for the elementwise kernels.
//!
//! The release binary targets baseline x86-64 (SSE2) so it runs on any machine; [`with_avx2`]
//! re-compiles a kernel body with AVX2 + FMA enabled and picks it at run time when the CPU has
//! them (checked once). The loops are written so that LLVM can vectorise them: no libm calls
//! ([`exp`] is a polynomial), and reductions ([`sum`], [`dot`], [`max`]) keep eight independent
//! lanes, since a strict left-to-right float sum cannot be reordered into SIMD lanes.

/// Runs `f`, compiled with AVX2 and FMA when this CPU supports them.
#[inline(always)]
pub(crate) fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { run(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

const LANES: usize = 8;

/// Σ x, over eight lanes (deterministic: the lane split depends only on the length).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// Σ a·b, over eight lanes.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let full = n - n % LANES;
    for (ca, cb) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += ca[l] * cb[l];
        }
    }
    let tail: f32 = a[full..].iter().zip(&b[full..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Σ (x − c)², over eight lanes.
#[inline(always)]
pub(crate) fn sum_sq_dev(x: &[f32], c: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for ch in chunks {
        for l in 0..LANES {
            let d = ch[l] - c;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&v| (v - c) * (v - c)).sum::<f32>()
}

/// Σ a·b·c, over eight lanes.
#[inline(always)]
pub(crate) fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let full = n - n % LANES;
    let mut acc = [0f32; LANES];
    for ((ca, cb), cc) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
        .zip(c[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += ca[l] * cb[l] * cc[l];
        }
    }
    let tail: f32 = (full..n).map(|i| a[i] * b[i] * c[i]).sum();
    acc.iter().sum::<f32>() + tail
}

/// max x (−∞ for an empty slice); NaN in `x` gives NaN.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut nan = false;
    for c in chunks {
        for l in 0..LANES {
            // Comparison select (vectorises to maxps); NaN is tracked separately.
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
            nan |= c[l].is_nan();
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in tail {
        m = m.max(v);
        nan |= v.is_nan();
    }
    if nan { f32::NAN } else { m }
}

/// `e^x` for f32, branch-free so loops over it vectorise (Cephes `expf`: `2^n · e^r` with
/// `|r| ≤ ln2/2` and a degree-6 polynomial; within 2 ulp of libm over the clamped range).
/// Inputs below −87.3 give ~1e-38 rather than 0; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.376_26);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * (r * r) + r + 1.0;
    let n_int = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let two_n = f32::from_bits((n_int.wrapping_add(127) << 23) as u32);
    e_r * two_n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        for i in -87_000..=88_000 {
            let x = i as f32 * 1e-3 + 0.000_37;
            let (a, b) = (exp(x), x.exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 5e-7, "max relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1e4) < 1e-37 && exp(-1e4) >= 0.0);
        assert!(exp(1e4).is_finite());
    }

    #[test]
    fn reductions_match_scalar() {
        let x: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.01 - 0.5)
            .collect();
        let y: Vec<f32> = (0..37)
            .map(|i| ((i * 104_729) % 97) as f32 * 0.02)
            .collect();
        assert!((sum(&x) - x.iter().sum::<f32>()).abs() < 1e-5);
        let d: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert!((dot(&x, &y) - d).abs() < 1e-5);
        assert_eq!(max(&x), x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let mut z = x.clone();
        z[3] = f32::NAN;
        assert!(max(&z).is_nan());
        assert_eq!(with_avx2(|| sum(&x)), sum(&x));
    }
}
