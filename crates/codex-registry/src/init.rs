//! Seeded parameter initialisation and dropout masks. candle's own `randn`/`rand` draw from an
//! unseeded thread RNG, which would break reproducible init and bit-exact resume.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

pub(crate) struct InitRng(ChaCha8Rng);

/// A uniform draw in (0, 1].
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

impl InitRng {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// `n` draws from N(0, std²) (Box–Muller).
    pub fn normal(&mut self, n: usize, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (u1, u2) = (unit(&mut self.0), unit(&mut self.0));
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let th = 2.0 * std::f64::consts::PI * u2;
            out.push((r * th.cos()) as f32);
            out.push((r * th.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// `n` draws from U(-bound, bound).
    pub fn uniform(&mut self, n: usize, bound: f64) -> Vec<f32> {
        (0..n)
            .map(|_| ((unit(&mut self.0) * 2.0 - 1.0) * bound) as f32)
            .collect()
    }
}

/// A keep mask (1.0 keep / 0.0 drop) with drop probability `p`, drawn from stream `stream` of
/// the ChaCha8 generator seeded with `seed`: the same (seed, stream) gives the same mask.
pub(crate) fn keep_mask(seed: u64, stream: u64, n: usize, p: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    (0..n)
        .map(|_| if unit(&mut rng) > p as f64 { 1.0 } else { 0.0 })
        .collect()
}
