//! An optional BLAS (OpenBLAS or Intel MKL) for the large f32 products of the fused ops, loaded
//! at run time.
//!
//! Measured on the 2-core AVX-512 development machine, OpenBLAS 0.3.34 beat the `gemm` crate
//! (candle's kernels, the default here) on isolated products at the training shapes, but inside
//! a training step both ran at ~200 GFLOP/s and end-to-end runs were within noise; MKL 2024.2
//! (the one PyTorch's CPU wheels link) was ~5% faster on the SmolLM2 LoRA step, within the
//! machine's noise. Compare on another CPU with `BLAS=wheel|mkl bash benches/compare_train.sh`.
//! The library is loaded with `dlopen` (libloading) rather than linked so the default build needs
//! no BLAS installed and one binary serves every machine: Debian's `libopenblas0`, the
//! self-contained `libscipy_openblas.so` of the PyPI wheel `scipy-openblas32` (its symbols carry
//! a `scipy_` prefix, found here too), or `libmkl_rt.so.2` of the PyPI wheel `mkl`.
//!
//! Determinism: the library runs single-threaded (OpenBLAS: `openblas_set_num_threads(1)`, so its
//! own pool never spins against rayon's; MKL: its sequential threading layer, and strict
//! conditional numerical reproducibility so its kernels do not vary with buffer alignment); a
//! product is split into a fixed number of row or column blocks by its shape and the thread
//! count, one call per block on rayon. Every output element is one call's dot product over the
//! whole inner dimension, whose order the library fixes, so results are bitwise repeatable at a
//! given thread count and library (the run's `start` event names the library; weights trained
//! with it differ in the last bits from the `gemm` crate's).

use std::ffi::{CStr, c_char, c_int};
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// `cblas_sgemm` (LP64: 32-bit integers).
type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// What was loaded, for the run record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlasInfo {
    /// The path given to [`load`].
    pub path: String,
    /// `openblas_get_config()`, e.g. `OpenBLAS 0.3.34 DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64`.
    pub config: String,
    /// `openblas_get_corename()`: the kernels OpenBLAS chose for this CPU, e.g. `SkylakeX`.
    pub core: String,
}

struct Blas {
    sgemm: Sgemm,
    info: BlasInfo,
    // Keeps the library mapped for the process's life (the function pointer above points into it).
    _lib: libloading::Library,
}

static BLAS: OnceLock<Blas> = OnceLock::new();
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Why [`load`] refused a library.
#[derive(Debug)]
pub struct BlasError(pub String);

impl std::fmt::Display for BlasError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BlasError {}

/// Kernel names OpenBLAS falls back to when it does not recognise the CPU (Debian's 0.3.21 calls
/// a Sapphire Rapids `Prescott`): SSE3-era kernels, several times slower than the `gemm` crate.
const GENERIC_CORES: &[&str] = &[
    "Prescott",
    "Core2",
    "Penryn",
    "Dunnington",
    "Nehalem",
    "Katmai",
];

/// Loads OpenBLAS from `path` (a file, or a name `dlopen` resolves, e.g. `libopenblas.so.0`) and
/// routes the large products of the fused ops through it for the rest of the process.
///
/// Refuses a library that is not OpenBLAS, one built with 64-bit integers, and one that picked
/// generic pre-AVX kernels on a CPU with AVX2 (it would be slower than the default; newer
/// OpenBLAS, or `OPENBLAS_CORETYPE=SkylakeX` in the environment, names the right kernels).
/// Loading the same path again returns the same info; a different one is an error.
pub fn load(path: &Path) -> Result<BlasInfo, BlasError> {
    let wanted = path.display().to_string();
    let active = match BLAS.get() {
        Some(b) => b,
        None => {
            let blas = open(path)?;
            // A concurrent first load may have won; either way one library is active.
            BLAS.get_or_init(|| blas)
        }
    };
    if active.info.path == wanted {
        Ok(active.info.clone())
    } else {
        Err(BlasError(format!(
            "{} is already loaded; one BLAS per process",
            active.info.path
        )))
    }
}

/// Products handed to the library so far (each split into per-thread blocks counts once).
pub fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// The loaded library, if any.
pub fn active() -> Option<&'static BlasInfo> {
    BLAS.get().map(|b| &b.info)
}

fn open(path: &Path) -> Result<Blas, BlasError> {
    let err = |m: String| BlasError(format!("BLAS {}: {m}", path.display()));
    // SAFETY: loading runs the library's initialisers; OpenBLAS's only set up its tables and
    // (when threaded) its thread pool, which `openblas_set_num_threads(1)` below keeps idle.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| err(e.to_string()))?;
    // OpenBLAS proper, then the PyPI wheels' `scipy_`-prefixed build.
    let prefix = ["", "scipy_"]
        .into_iter()
        .find(|p| {
            // SAFETY: only probing whether the symbol exists; it is not called here.
            unsafe { lib.get::<Sgemm>(format!("{p}cblas_sgemm\0").as_bytes()) }.is_ok()
        })
        .ok_or_else(|| err("has no cblas_sgemm (not a CBLAS library)".into()))?;
    // SAFETY (the lookups): the types are the libraries' documented C signatures.
    let sym = |name: &str| format!("{prefix}{name}\0").into_bytes();
    let sgemm: Sgemm =
        *unsafe { lib.get::<Sgemm>(&sym("cblas_sgemm")) }.map_err(|e| err(e.to_string()))?;
    let (config, core) = if let Ok(set_layer) =
        unsafe { lib.get::<unsafe extern "C" fn(c_int) -> c_int>(b"MKL_Set_Threading_Layer\0") }
    {
        mkl_setup(&lib, *set_layer).map_err(err)?
    } else {
        openblas_setup(&lib, &sym).map_err(err)?
    };
    Ok(Blas {
        sgemm,
        info: BlasInfo {
            path: path.display().to_string(),
            config,
            core,
        },
        _lib: lib,
    })
}

/// A C function returning a static NUL-terminated string, read into a `String`.
fn c_text(f: unsafe extern "C" fn() -> *const c_char) -> String {
    // SAFETY: the callers pass functions documented to return static strings (or null).
    unsafe {
        let p = f();
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().trim().to_string()
        }
    }
}

/// OpenBLAS: refuses 64-bit-integer builds and generic kernels, runs single-threaded.
fn openblas_setup(
    lib: &libloading::Library,
    sym: &dyn Fn(&str) -> Vec<u8>,
) -> Result<(String, String), String> {
    // SAFETY (the lookups): OpenBLAS's documented C signatures.
    let set_threads =
        *unsafe { lib.get::<unsafe extern "C" fn(c_int)>(&sym("openblas_set_num_threads")) }
            .map_err(|_| "is neither OpenBLAS nor MKL (no openblas_set_num_threads)".to_string())?;
    let get_config =
        *unsafe { lib.get::<unsafe extern "C" fn() -> *const c_char>(&sym("openblas_get_config")) }
            .map_err(|e| e.to_string())?;
    let get_core = *unsafe {
        lib.get::<unsafe extern "C" fn() -> *const c_char>(&sym("openblas_get_corename"))
    }
    .map_err(|e| e.to_string())?;
    let config = c_text(get_config);
    let core = c_text(get_core);
    if config.contains("USE64BITINT") {
        return Err(format!(
            "is built with 64-bit integers ({config}); codex calls the LP64 interface"
        ));
    }
    if GENERIC_CORES.iter().any(|g| core.eq_ignore_ascii_case(g)) && has_avx2() {
        return Err(format!(
            "chose its generic `{core}` kernels on this AVX2/AVX-512 CPU (too old to recognise it): \
             slower than codex's built-in GEMM; use a newer OpenBLAS (PyPI `scipy-openblas32`) or \
             set OPENBLAS_CORETYPE (e.g. SkylakeX, Haswell)"
        ));
    }
    // SAFETY: a plain setter; called before any GEMM goes through this library.
    unsafe { set_threads(1) };
    Ok((config, core))
}

/// `MKL_THREADING_SEQUENTIAL`: MKL runs on the calling thread (rayon splits the product).
const MKL_THREADING_SEQUENTIAL: c_int = 1;
/// `MKL_CBWR_AUTO | MKL_CBWR_STRICT`: MKL's conditional numerical reproducibility, strict mode:
/// results independent of the buffers' alignment (without it MKL may pick kernels by alignment,
/// and bits could change between runs with the same data).
const MKL_CBWR_AUTO_STRICT: c_int = 2 | 0x10000;

/// Intel MKL through `libmkl_rt` (e.g. the PyPI wheel `mkl`, the library PyTorch's CPU wheels
/// use): sequential threading layer, strict reproducibility mode.
fn mkl_setup(
    lib: &libloading::Library,
    set_layer: unsafe extern "C" fn(c_int) -> c_int,
) -> Result<(String, String), String> {
    // SAFETY: must precede every other MKL call; it selects the layer libmkl_rt loads.
    let layer = unsafe { set_layer(MKL_THREADING_SEQUENTIAL) };
    if layer != MKL_THREADING_SEQUENTIAL {
        return Err(format!(
            "MKL refused its sequential threading layer (got {layer}); is libmkl_sequential next to it?"
        ));
    }
    // SAFETY (the lookups): MKL's C signatures (its header maps the lowercase names to these;
    // the lowercase symbols in libmkl_rt are the Fortran interface, which takes pointers).
    let cbwr_set = *unsafe { lib.get::<unsafe extern "C" fn(c_int) -> c_int>(b"MKL_CBWR_Set\0") }
        .map_err(|e| e.to_string())?;
    let version = *unsafe {
        lib.get::<unsafe extern "C" fn(*mut c_char, c_int)>(b"MKL_Get_Version_String\0")
    }
    .map_err(|e| e.to_string())?;
    // SAFETY: a plain setter, before any GEMM.
    let rc = unsafe { cbwr_set(MKL_CBWR_AUTO_STRICT) };
    if rc != 0 {
        return Err(format!(
            "MKL refused strict reproducibility mode (mkl_cbwr_set returned {rc})"
        ));
    }
    let mut buf = [0 as c_char; 256];
    // SAFETY: MKL writes at most `len` bytes, NUL-terminated.
    let config = unsafe {
        version(buf.as_mut_ptr(), buf.len() as c_int);
        CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .trim()
            .to_string()
    };
    Ok((config, "MKL sequential, CNR strict".to_string()))
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Products below this many multiply-adds stay on the `gemm` crate: per-call overhead dominates
/// OpenBLAS on the attention blocks (32×64×128: ~40 vs ~165 GFLOP/s single-threaded).
const MIN_MACS: usize = 1 << 21;

/// One row-major `m × n` product `c = alpha·op(a)·op(b) + beta·c` as OpenBLAS sees it.
#[derive(Clone, Copy)]
pub(crate) struct Call {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: *const f32,
    pub lda: usize,
    pub trans_a: bool,
    pub b: *const f32,
    pub ldb: usize,
    pub trans_b: bool,
    pub c: *mut f32,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
}

// SAFETY: a `Call` is only split into blocks that write disjoint rows or columns of `c`; the
// inputs are read-only for its duration (the caller of `gemm_into` guarantees both).
unsafe impl Send for Call {}
// SAFETY: as above.
unsafe impl Sync for Call {}

/// Whether `gemm_into` should hand a product of this size to OpenBLAS.
pub(crate) fn wants(m: usize, n: usize, k: usize) -> bool {
    BLAS.get().is_some() && m.saturating_mul(n).saturating_mul(k) >= MIN_MACS
}

/// Runs `call` through OpenBLAS, split into `threads` blocks along its longer output side.
///
/// # Safety
/// The pointers and leading dimensions of `call` describe valid buffers (checked by
/// `gemm_into`), and no other thread touches `c`'s `m × n` block while this runs.
pub(crate) unsafe fn run(call: Call, threads: usize) {
    let blas = BLAS.get().expect("blas::run without a loaded library");
    CALLS.fetch_add(1, Ordering::Relaxed);
    let parts = threads.max(1);
    let split_rows = call.m >= call.n;
    let len = if split_rows { call.m } else { call.n };
    // Blocks of a multiple of 16 (the AVX-512 kernels' width).
    let blocks = crate::matmul::split(len, parts, 16);
    let one = |(s, e): (usize, usize)| {
        let mut c = call;
        if split_rows {
            c.m = e - s;
            // Row s of op(a): a row of a, or a column of a transposed one.
            c.a = unsafe { call.a.add(if call.trans_a { s } else { s * call.lda }) };
            c.c = unsafe { call.c.add(s * call.ldc) };
        } else {
            c.n = e - s;
            c.b = unsafe { call.b.add(if call.trans_b { s * call.ldb } else { s }) };
            c.c = unsafe { call.c.add(s) };
        }
        // SAFETY: the block lies inside the caller's checked views; blocks write disjoint parts.
        unsafe { sgemm(blas.sgemm, c) };
    };
    if blocks.len() == 1 {
        one(blocks[0]);
    } else {
        use rayon::prelude::*;
        blocks.into_par_iter().for_each(one);
    }
}

unsafe fn sgemm(f: Sgemm, c: Call) {
    let t = |yes| if yes { TRANS } else { NO_TRANS };
    // SAFETY: forwarded from `run`'s contract; sizes fit c_int (checked by `gemm_into`).
    unsafe {
        f(
            ROW_MAJOR,
            t(c.trans_a),
            t(c.trans_b),
            c.m as c_int,
            c.n as c_int,
            c.k as c_int,
            c.alpha,
            c.a,
            c.lda as c_int,
            c.b,
            c.ldb as c_int,
            c.beta,
            c.c,
            c.ldc as c_int,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_libraries_are_refused_with_the_reason() {
        let e = open(Path::new("/nonexistent/libopenblas.so"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/libopenblas.so"), "{e}");
        let e = open(Path::new("libm.so.6")).err().unwrap();
        assert!(e.to_string().contains("not a CBLAS library"), "{e}");
        // Nothing was loaded by the failures.
        assert!(active().is_none());
        assert!(!wants(4096, 4096, 4096));
    }
}
