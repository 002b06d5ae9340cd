//! The cost of one generated token as the prompt grows, with the KV cache (one single-position
//! forward over the cached keys/values) and without it (the whole sequence recomputed, what
//! decoding cost before the cache). gpt-small's sizes (4 layers, d=128, vocab 8192) at a
//! 1024-position context, f32 CPU: `cargo bench -p codex-registry --bench generate`.
//! The cached step should stay near-flat from 16 to 768 prompt tokens (the attention over the
//! prefix is a small part of a step); the recompute grows linearly.

use candle_core::{DType, Device, Tensor};
use codex_registry::{Decoder, PresetOverrides, Sampling, build_preset};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let o = PresetOverrides {
        max_positions: Some(1024),
        ..Default::default()
    };
    let mut g = c.benchmark_group("next_token");
    for name in ["gpt-small", "llama-tiny"] {
        let m = build_preset(name, &o, &Device::Cpu, DType::F32, 0).unwrap();
        let vocab = m.vocab_size() as u32;
        for prompt_len in [16usize, 128, 384, 768] {
            let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 7919) % vocab).collect();
            let greedy = Sampling {
                temperature: 0.0,
                ..Sampling::default()
            };
            let d = Decoder::new(&m, &prompt, greedy).unwrap();
            g.bench_with_input(
                BenchmarkId::new(format!("{name}/kv_cache"), prompt_len),
                &prompt_len,
                |b, _| {
                    b.iter_batched(
                        || d.fork(0),
                        |mut d| d.push(1).unwrap(),
                        BatchSize::SmallInput,
                    )
                },
            );
            let mut full = prompt.clone();
            full.push(1);
            let x = Tensor::from_vec(full, (1, prompt_len + 1), &Device::Cpu).unwrap();
            g.bench_with_input(
                BenchmarkId::new(format!("{name}/recompute"), prompt_len),
                &prompt_len,
                |b, _| b.iter(|| m.forward(&x, false).unwrap()),
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
