//! Forward and forward+backward of the small presets on the CPU (batch 8 × 64 tokens,
//! vocab 4096, f32). Compare with `scripts/registry_bench_torch.py` run in the same minute.

use candle_core::{DType, Device, Tensor};
use codex_registry::{PresetOverrides, build_preset};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let o = PresetOverrides {
        vocab_size: Some(4096),
        max_positions: Some(64),
        dropout: None,
        ..Default::default()
    };
    let ids: Vec<u32> = (0..8 * 64u32).map(|i| (i * 2654435761u32) % 4096).collect();
    let x = Tensor::from_vec(ids, (8, 64), &Device::Cpu).unwrap();
    for name in ["gpt-tiny", "llama-tiny"] {
        let m = build_preset(name, &o, &Device::Cpu, DType::F32, 0).unwrap();
        c.bench_function(&format!("{name}/forward"), |b| {
            b.iter(|| m.forward(&x, false).unwrap())
        });
        c.bench_function(&format!("{name}/forward_backward"), |b| {
            b.iter(|| {
                let loss = m
                    .forward(&x, true)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_all()
                    .unwrap();
                loss.backward().unwrap()
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
