//! f32 GEMM throughput of the `gemm` crate at the shapes of codex's training steps (nanoGPT
//! small/medium with 2,048 rows, SmolLM2-135M with 512, and the per-head attention blocks),
//! `m × k · k × n`, best of 3 timings of ~2 GFLOP each. Multi-threaded (rayon, the pool's size)
//! for the large shapes, single-threaded for the attention blocks, as codex calls them.

use std::time::Instant;

fn main() {
    let shapes = [
        (2048usize, 128usize, 384usize),
        (2048, 256, 768),
        (2048, 1024, 256),
        (512, 576, 1536),
        (512, 1536, 576),
        (512, 576, 49152),
        (32, 64, 128),
        (32, 128, 64),
    ];
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2usize);
    for (m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let flop = 2.0 * (m * k * n) as f64;
        let iters = (2e9 / flop) as usize + 1;
        let par = if m * k * n > 1 << 20 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..iters {
                // SAFETY: a, b and c are m×k, k×n and m×n row-major buffers of those sizes.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                }
            }
            best = best.min(t.elapsed().as_secs_f64() / iters as f64);
        }
        println!("{m}x{k}x{n}\t{:.1}", flop / best / 1e9);
    }
}
