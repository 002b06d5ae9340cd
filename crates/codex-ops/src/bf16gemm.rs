//! Matrix products with bf16 operands and f32 accumulation on CPUs with AVX512-BF16 — what
//! `dtype = "bf16"` training computes its matmuls in on such a CPU (AMD Zen 4 and later, Intel
//! Cooper Lake / Sapphire Rapids and later), as PyTorch's CPU autocast does.
//!
//! `vdpbf16ps` multiplies 32 bf16 pairs and adds them into 16 f32 lanes per instruction, twice
//! the arithmetic of an f32 FMA, so a product whose operands are rounded to bf16 runs up to twice
//! as fast as the f32 one. No maintained Rust crate provides such a GEMM (the `gemm` crate has
//! f32/f64/f16 kernels; its f16 path widens to f32), hence this one: a BLIS-style loop nest with
//! packed panels, one register-blocked microkernel, and nothing else.
//!
//! Operands are f32 views (as the fused ops hold them) rounded to bf16 to nearest-even while they
//! are packed; products are summed in f32. Parameters of a bf16 run are bf16 already, so only
//! activations and gradients are rounded — the precision autocast gives them. Results are
//! deterministic and independent of the thread count: each output element is one microkernel's
//! sum over `k` in a fixed order (blocks of [`KC`] added into the output in order), and the
//! threads split the output, never the inner dimension.
//!
//! The switch is process-wide ([`enable`]), like `torch.set_float32_matmul_precision`; the
//! trainer turns it on for `dtype = "bf16"` on a CPU that has the instructions and records it in
//! the run's `start` event.

use crate::matmul::View;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ON: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Rows of the microkernel tile.
const MR: usize = 6;
/// 16-lane vectors per tile row (the tile is `MR × 16·NV`).
const NV: usize = 4;
const NR: usize = 16 * NV;
/// Inner-dimension block (even): a `KC × NR` B micro-panel is 32 KiB of bf16.
const KC: usize = 256;
/// Rows of A packed at once (`MC × KC` bf16 stays in L2).
const MC: usize = 16 * MR;
/// Columns of B packed at once (`KC × NC` bf16: 512 KiB).
const NC: usize = 1024;

/// Whether this CPU can run the kernels (AVX512-F, -BW and -BF16).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Route the fused ops' f32 matrix products through the bf16 kernels (`true`) or back to f32.
/// Returns whether bf16 products are now on: never where [`supported`] is false.
pub fn enable(on: bool) -> bool {
    let on = on && supported();
    ON.store(on, Ordering::Relaxed);
    on
}

/// Whether products currently run in bf16.
pub fn active() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Products run through the bf16 kernels so far (the run record and tests read it).
pub fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// f32 → bf16 bits, rounded to nearest-even (NaN stays NaN), as `vcvtneps2bf16` does.
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if x.is_nan() {
        (b >> 16) | 0x40
    } else {
        (b + 0x7fff + ((b >> 16) & 1)) >> 16
    }
}

/// Two elements as one u32 of bf16s: `lo` in the low half (the even `k`), `hi` (absent: 0) in the
/// high half.
#[inline(always)]
fn pair<T: Elem>(lo: T, hi: Option<T>) -> u32 {
    lo.bits() | hi.map_or(0, |h| h.bits() << 16)
}

/// An operand element: f32 (rounded to bf16 while packed) or bf16 already (a bf16 run's frozen
/// weights, packed as they are stored).
pub(crate) trait Elem: Copy + Sync {
    /// The bf16 bits.
    fn bits(self) -> u32;
    /// `out[p] = src[2p] | src[2p+1] << 16` in bf16 bits (the last high half 0 for an odd `src`).
    fn pairs(src: &[Self], out: &mut [u32]);
    /// `out[j] = lo[j] | hi[j] << 16` in bf16 bits (`hi` absent: 0).
    fn interleave(lo: &[Self], hi: Option<&[Self]>, out: &mut [u32]);
}

impl Elem for f32 {
    #[inline(always)]
    fn bits(self) -> u32 {
        bf16_bits(self)
    }
    fn pairs(src: &[f32], out: &mut [u32]) {
        pairs(src, out)
    }
    fn interleave(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
        interleave(lo, hi, out)
    }
}

impl Elem for half::bf16 {
    #[inline(always)]
    fn bits(self) -> u32 {
        u32::from(self.to_bits())
    }
    fn pairs(src: &[half::bf16], out: &mut [u32]) {
        for (o, c) in out.iter_mut().zip(src.chunks(2)) {
            *o = c[0].bits() | c.get(1).map_or(0, |h| h.bits() << 16);
        }
    }
    fn interleave(lo: &[half::bf16], hi: Option<&[half::bf16]>, out: &mut [u32]) {
        match hi {
            Some(hi) => {
                for ((o, l), h) in out.iter_mut().zip(lo).zip(hi) {
                    *o = l.bits() | (h.bits() << 16);
                }
            }
            None => {
                for (o, l) in out.iter_mut().zip(lo) {
                    *o = l.bits();
                }
            }
        }
    }
}

/// A read-only strided matrix (checked by the caller to lie inside `data`).
struct Mat<'a, T> {
    data: &'a [T],
    v: View,
}

impl<T> Clone for Mat<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Mat<'_, T> {}

impl<T: Elem> Mat<'_, T> {
    #[inline(always)]
    fn at(&self, r: usize, c: usize) -> T {
        self.data[self.v.offset + r * self.v.rs + c * self.v.cs]
    }
}

/// Pack rows `r0..r0+rows` × inner `k0..k0+kc` of A into `MR`-row panels of u32 pairs (row `i`'s
/// elements `k0+2p`, `k0+2p+1`), zero past the edges. Returns the layout within a panel: `true`
/// row by row (`kp` pairs of row 0, then row 1, …: a row-major A converts straight in), `false`
/// pair by pair (`MR` rows of pair 0, then pair 1, …: as B's panels).
fn pack_a<T: Elem>(
    a: Mat<T>,
    r0: usize,
    rows: usize,
    k0: usize,
    kc: usize,
    out: &mut Vec<u32>,
    t: &mut Vec<u32>,
) -> bool {
    // A's rows are the columns of Aᵀ, packed as B's columns are, except that a row-major A
    // (a column-major Aᵀ) keeps its rows whole instead of being scattered across pairs.
    let at = Mat {
        data: a.data,
        v: a.v.t(),
    };
    pack(at, k0, kc, r0, rows, MR, true, out, t)
}

/// Pack inner `k0..k0+kc` × columns `c0..c0+cols` of B into `NR`-column panels: for each panel
/// and each k pair `p`, `NR` u32s (column `j`'s elements `k0+2p`, `k0+2p+1`), zero past the edges.
fn pack_b<T: Elem>(
    b: Mat<T>,
    k0: usize,
    kc: usize,
    c0: usize,
    cols: usize,
    out: &mut Vec<u32>,
    t: &mut Vec<u32>,
) {
    pack(b, k0, kc, c0, cols, NR, false, out, t);
}

/// Columns `c0..c0+cols` × inner `k0..k0+kc` of the `k × n` matrix `m` into panels of `w`
/// columns, pair by pair (`w` u32s per k pair) — or, with `rows_ok` and a column-major `m`,
/// column by column (`kp` u32s per column); returns whether it chose the latter.
#[allow(clippy::too_many_arguments)]
fn pack<T: Elem>(
    m: Mat<T>,
    k0: usize,
    kc: usize,
    c0: usize,
    cols: usize,
    w: usize,
    rows_ok: bool,
    out: &mut Vec<u32>,
    t: &mut Vec<u32>,
) -> bool {
    let kp = kc.div_ceil(2);
    out.clear();
    out.resize(cols.div_ceil(w) * kp * w, 0);
    let v = m.v;
    if v.cs == 1 {
        // Row-major: rows k and k+1 give pair p of every column side by side.
        t.resize(cols, 0);
        for p in 0..kp {
            let k = k0 + 2 * p;
            let lo = &m.data[v.offset + k * v.rs + c0..][..cols];
            let hi = (2 * p + 1 < kc).then(|| &m.data[v.offset + (k + 1) * v.rs + c0..][..cols]);
            T::interleave(lo, hi, t);
            for (pj, chunk) in t.chunks(w).enumerate() {
                out[pj * kp * w + p * w..][..chunk.len()].copy_from_slice(chunk);
            }
        }
        false
    } else if v.rs == 1 {
        // Column-major: a column's pairs are contiguous in memory.
        t.resize(kp, 0);
        for c in 0..cols {
            let col = &m.data[v.offset + (c0 + c) * v.cs + k0..][..kc];
            if rows_ok {
                // Panel c / w, its row c % w: `kp` pairs in a row (`w` rows a panel).
                T::pairs(col, &mut out[c * kp..][..kp]);
            } else {
                T::pairs(col, t);
                let o = &mut out[(c / w) * kp * w + c % w..];
                for (d, &x) in o.iter_mut().step_by(w).zip(t.iter()) {
                    *d = x;
                }
            }
        }
        rows_ok
    } else {
        for p in 0..kp {
            let k = k0 + 2 * p;
            for c in 0..cols {
                let hi = (2 * p + 1 < kc).then(|| m.at(k + 1, c0 + c));
                out[(c / w) * kp * w + p * w + c % w] = pair(m.at(k, c0 + c), hi);
            }
        }
        false
    }
}

/// `out[p] = pair(src[2p], src[2p+1])` (the last `hi` 0 when `src` is odd), `out.len() == ⌈src/2⌉`.
fn pairs(src: &[f32], out: &mut [u32]) {
    debug_assert_eq!(out.len(), src.len().div_ceil(2));
    // SAFETY: callers run only where `supported()` holds.
    #[cfg(target_arch = "x86_64")]
    let done = unsafe { pairs_avx512(src, out) };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for p in done..out.len() {
        out[p] = pair(src[2 * p], src.get(2 * p + 1).copied());
    }
}

/// `out[j] = pair(lo[j], hi[j])` (`hi` absent: 0).
fn interleave(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    debug_assert!(out.len() == lo.len() && hi.is_none_or(|h| h.len() == lo.len()));
    // SAFETY: callers run only where `supported()` holds.
    #[cfg(target_arch = "x86_64")]
    let done = unsafe { interleave_avx512(lo, hi, out) };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for j in done..out.len() {
        out[j] = pair(lo[j], Some(hi.map_or(0.0, |h| h[j])));
    }
}

/// The leading multiple of 16 pairs of [`pairs`]; returns how many it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pairs_avx512(src: &[f32], out: &mut [u32]) -> usize {
    use std::arch::x86_64::*;
    let n = src.len() / 32 * 16;
    for p in (0..n).step_by(16) {
        // SAFETY: 32 floats from 2p and 16 u32s from p are in bounds (p + 16 ≤ n).
        unsafe {
            let x0 = _mm512_loadu_ps(src.as_ptr().add(2 * p));
            let x1 = _mm512_loadu_ps(src.as_ptr().add(2 * p + 16));
            // Words 0..16 from x0, 16..32 from x1: the pairs in order.
            let w = _mm512_cvtne2ps_pbh(x1, x0);
            _mm512_storeu_si512(
                out.as_mut_ptr().add(p).cast(),
                std::mem::transmute::<__m512bh, __m512i>(w),
            );
        }
    }
    n
}

/// The leading multiple of 16 of [`interleave`]; returns how many it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave_avx512(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) -> usize {
    use std::arch::x86_64::*;
    let n = lo.len() / 16 * 16;
    // Word 2j takes lo's j (word j of the conversion), word 2j+1 hi's j (word 16 + j).
    let idx: [u16; 32] = std::array::from_fn(|w| (w / 2 + 16 * (w % 2)) as u16);
    // SAFETY: loads of 16 floats from j and stores of 16 u32s to j, with j + 16 ≤ n.
    unsafe {
        let idx = _mm512_loadu_si512(idx.as_ptr().cast());
        for j in (0..n).step_by(16) {
            let l = _mm512_loadu_ps(lo.as_ptr().add(j));
            let h = hi.map_or(_mm512_setzero_ps(), |h| _mm512_loadu_ps(h.as_ptr().add(j)));
            let w = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(h, l));
            _mm512_storeu_si512(
                out.as_mut_ptr().add(j).cast(),
                _mm512_permutexvar_epi16(idx, w),
            );
        }
    }
    n
}

/// Where one thread's share of the product goes.
#[derive(Clone, Copy)]
struct Out {
    dst: *mut f32,
    v: View,
}

// SAFETY: the threads of one product write disjoint column or row ranges of `dst` (the caller of
// `gemm` guarantees exclusive access to the whole view).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `dst = scale · a · b` (`+= ` with `accumulate`) with bf16-rounded operands. The caller has
/// checked the shapes and that every view lies inside its buffer, `av.cols > 0`, and holds
/// exclusive access to `dv`; the CPU must have the instructions ([`supported`]).
///
/// # Safety
/// `dst` must be valid for writes at every element of `dv`, and no other thread may touch them.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm<A: Elem, B: Elem>(
    dst: *mut f32,
    dv: View,
    a: &[A],
    av: View,
    b: &[B],
    bv: View,
    scale: f32,
    accumulate: bool,
    threads: usize,
) {
    debug_assert!(supported() && av.cols > 0);
    CALLS.fetch_add(1, Ordering::Relaxed);
    let (m, n) = (dv.rows, dv.cols);
    let a = Mat { data: a, v: av };
    let b = Mat { data: b, v: bv };
    let out = Out { dst, v: dv };
    // Split the larger output dimension into one block per thread (a multiple of the tile), so
    // the split — and so every result — is fixed by the shape and the thread count alone (and
    // the result does not depend on it: the split never cuts the inner dimension).
    let parts = threads.max(1);
    let split_cols = n >= m;
    let (len, unit) = if split_cols { (n, NR) } else { (m, MR) };
    let blocks = crate::matmul::split(len, parts, unit);
    let one = |&(s, e): &(usize, usize)| {
        let (r, c) = if split_cols {
            ((0, m), (s, e))
        } else {
            ((s, e), (0, n))
        };
        // SAFETY: the caller checked `supported()`; blocks are disjoint parts of `dv`.
        unsafe { block(out, a, b, r, c, scale, accumulate) }
    };
    if blocks.len() == 1 {
        one(&blocks[0]);
    } else {
        use rayon::prelude::*;
        blocks.par_iter().for_each(one);
    }
}

/// Rows `r.0..r.1` × columns `c.0..c.1` of the product, on the calling thread.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn block<A: Elem, B: Elem>(
    out: Out,
    a: Mat<A>,
    b: Mat<B>,
    r: (usize, usize),
    c: (usize, usize),
    scale: f32,
    accumulate: bool,
) {
    let k = a.v.cols;
    let (mut ap, mut bp, mut t) = (Vec::new(), Vec::new(), Vec::new());
    let mut tile = [0f32; MR * NR];
    for jc in (c.0..c.1).step_by(NC) {
        let nc = NC.min(c.1 - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let kp = kc.div_ceil(2);
            let add = accumulate || pc > 0;
            pack_b(b, pc, kc, jc, nc, &mut bp, &mut t);
            for ic in (r.0..r.1).step_by(MC) {
                let mc = MC.min(r.1 - ic);
                let rows_layout = pack_a(a, ic, mc, pc, kc, &mut ap, &mut t);
                for pj in 0..nc.div_ceil(NR) {
                    let w = NR.min(nc - pj * NR);
                    let bpan = bp[pj * kp * NR..].as_ptr();
                    for pi in 0..mc.div_ceil(MR) {
                        let h = MR.min(mc - pi * MR);
                        let apan = ap[pi * kp * MR..].as_ptr();
                        let (row, col) = (ic + pi * MR, jc + pj * NR);
                        let at = out.v.offset + row * out.v.rs + col * out.v.cs;
                        if h == MR && w == NR && out.v.cs == 1 {
                            // SAFETY: a full tile inside `dv` with unit column stride.
                            unsafe {
                                kernel(
                                    kp,
                                    rows_layout,
                                    apan,
                                    bpan,
                                    out.dst.add(at),
                                    out.v.rs,
                                    scale,
                                    add,
                                )
                            };
                        } else {
                            // Edge or strided tile: through a local tile, then the same
                            // arithmetic (`scale · acc`, then `+ dst`) element by element.
                            // SAFETY: the tile is `MR × NR` with row stride `NR`.
                            unsafe {
                                kernel(
                                    kp,
                                    rows_layout,
                                    apan,
                                    bpan,
                                    tile.as_mut_ptr(),
                                    NR,
                                    1.0,
                                    false,
                                )
                            };
                            for i in 0..h {
                                for j in 0..w {
                                    let v = scale * tile[i * NR + j];
                                    // SAFETY: (row + i, col + j) is inside `dv`.
                                    unsafe {
                                        let d = out.dst.add(at + i * out.v.rs + j * out.v.cs);
                                        *d = if add { v + *d } else { v };
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block<A: Elem, B: Elem>(
    _: Out,
    _: Mat<A>,
    _: Mat<B>,
    _: (usize, usize),
    _: (usize, usize),
    _: f32,
    _: bool,
) {
    unreachable!("bf16 products are never enabled off x86-64")
}

/// One `MR × NR` tile: `c = scale · Σ_p a[p] ⊗ b[p]` (`c += …` with `add`) over `kp` k pairs of
/// packed panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kp: usize,
    rows_layout: bool,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    rs: usize,
    scale: f32,
    add: bool,
) {
    if rows_layout {
        // SAFETY: as for this function.
        unsafe { tile::<true>(kp, a, b, c, rs, scale, add) }
    } else {
        // SAFETY: as for this function.
        unsafe { tile::<false>(kp, a, b, c, rs, scale, add) }
    }
}

/// [`kernel`] for one layout of the A panel (see [`pack_a`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn tile<const ROWS: bool>(
    kp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    rs: usize,
    scale: f32,
    add: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for p in 0..kp {
        // SAFETY: the panels hold `kp` pairs of `NR` (B) and `MR` (A) u32s.
        unsafe {
            let bv: [__m512bh; NV] = std::array::from_fn(|v| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    b.add(p * NR + 16 * v).cast(),
                ))
            });
            for (i, row) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(if ROWS {
                        i * kp + p
                    } else {
                        p * MR + i
                    })
                        as i32));
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_dpbf16_ps(*x, av, bv[v]);
                }
            }
        }
    }
    let s = _mm512_set1_ps(scale);
    for (i, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            // SAFETY: the caller's tile has `MR` rows of `NR` floats at row stride `rs`.
            unsafe {
                let d = c.add(i * rs + 16 * v);
                let mut y = _mm512_mul_ps(*x, s);
                if add {
                    y = _mm512_add_ps(y, _mm512_loadu_ps(d));
                }
                _mm512_storeu_ps(d, y);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::values as rand;

    fn round(x: f32) -> f64 {
        f64::from(f32::from_bits(bf16_bits(x) << 16))
    }

    #[test]
    fn rounding_is_nearest_even_like_half() {
        for x in rand(10_000, 3).into_iter().chain([
            0.0,
            -0.0,
            1e-40,
            f32::MAX,
            f32::INFINITY,
            1.0 + 1.0 / 256.0,
        ]) {
            assert_eq!(
                bf16_bits(x) as u16,
                half::bf16::from_f32(x).to_bits(),
                "{x}"
            );
        }
        assert!(f32::from_bits(bf16_bits(f32::NAN) << 16).is_nan());
    }

    /// The product against an f64 sum of the bf16-rounded operands, over shapes that exercise
    /// every edge (partial tiles, odd and multi-block `k`, transposed and strided views), with
    /// `scale`, `accumulate` and 1–3 threads (bitwise equal whatever the thread count).
    #[test]
    fn products_match_f64_over_rounded_operands() {
        // The kernels themselves (not `gemm_into`'s switch, which would change the products of
        // the other tests running in this process). A CPU without AVX512-BF16 cannot run them:
        // there `enable` must refuse.
        if !supported() {
            assert!(!enable(true) && !active());
            return;
        }
        let before = calls();
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 65, 3),
            (6, 64, 256),
            (13, 130, 257),
            (100, 33, 600),
            (64, 1100, 40),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = rand(m * k + 5, 1 + m as u64);
                let b = rand(k * n + 3, 2 + n as u64);
                let av = if ta {
                    View::rows(5, k, m, m).t()
                } else {
                    View::rows(5, m, k, k)
                };
                let bv = if tb {
                    View::rows(3, n, k, k).t()
                } else {
                    View::rows(3, k, n, n)
                };
                let init = rand(m * (n + 2), 9);
                let mut first: Option<Vec<f32>> = None;
                for threads in 1..=3 {
                    let mut d = init.clone();
                    let dv = View::rows(0, m, n, n + 2);
                    // SAFETY: every view lies inside its buffer; `d` is ours.
                    unsafe { gemm(d.as_mut_ptr(), dv, &a, av, &b, bv, 0.5, true, threads) };
                    for r in 0..m {
                        for c in 0..n {
                            let mut want = 0f64;
                            for i in 0..k {
                                let x = a[av.offset + r * av.rs + i * av.cs];
                                let y = b[bv.offset + i * bv.rs + c * bv.cs];
                                want += round(x) * round(y);
                            }
                            let want = 0.5 * want + f64::from(init[r * (n + 2) + c]);
                            let got = f64::from(d[r * (n + 2) + c]);
                            let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                            assert!(
                                (got - want).abs() <= tol,
                                "{m}x{n}x{k} {ta}{tb} ({r},{c}): {got} vs {want}"
                            );
                        }
                        // The padding columns are untouched.
                        for c in n..n + 2 {
                            assert_eq!(d[r * (n + 2) + c], init[r * (n + 2) + c]);
                        }
                    }
                    match &first {
                        None => first = Some(d),
                        Some(f) => assert!(
                            f.iter().zip(&d).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "threads {threads} changed the result"
                        ),
                    }
                }
            }
        }
        assert!(calls() > before);
    }
}
