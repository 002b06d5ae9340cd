//! Fused codex-ops kernels vs the plain candle compositions they replace, forward + backward at
//! the shapes of the gpt-small benchmark (batch 16, context 128, d=128, 4 heads, vocab 256), a
//! frozen (LoRA base) linear and the Llama block's RMSNorm, SwiGLU and grouped-query RoPE
//! attention and the LM head fused with the loss at SmolLM2-135M's shapes, and
//! the fused AdamW vs `candle_nn::AdamW` on 262k parameters (PERFORMANCE.md's probe).
//!
//!     cargo bench -p codex-ops --bench ops_fused
//!
//! Each pair runs in the same process, back to back: compare the ratio, not the absolute times.

use candle_core::{Device, Result, Tensor, Var};
use candle_nn::Optimizer;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn rand(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Forward, weighted sum, backward: the cost one op adds to a training step.
fn fwd_bwd(x: &Var, r: &Tensor, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<()> {
    let loss = (f(x.as_tensor())? * r)?.sum_all()?;
    black_box(loss.backward()?);
    Ok(())
}

fn pair(
    c: &mut Criterion,
    name: &str,
    shape: &[usize],
    fused: &dyn Fn(&Tensor) -> Result<Tensor>,
    plain: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    let x = Var::from_tensor(&rand(shape, 1)?)?;
    let r = rand(fused(x.as_tensor())?.dims(), 2)?;
    let mut g = c.benchmark_group(name);
    g.bench_function("codex-ops", |b| {
        b.iter(|| fwd_bwd(&x, &r, fused).expect("fused op"))
    });
    g.bench_function("candle", |b| {
        b.iter(|| fwd_bwd(&x, &r, plain).expect("candle op"))
    });
    g.finish();
    Ok(())
}

fn ops(c: &mut Criterion) {
    // As the trainer does: freed buffers stay mapped, so timings exclude page faults.
    codex_ops::keep_freed_memory();
    let mut run = || -> Result<()> {
        let w = rand(&[128], 3)?;
        let bias = rand(&[128], 4)?;
        pair(
            c,
            "layer_norm 2048x128",
            &[2048, 128],
            &|x| codex_ops::layer_norm(x, &w, &bias, 1e-5),
            &|x| codex_ops::layer_norm_reference(x, &w, &bias, 1e-5),
        )?;
        // The residual connection of gpt-small (batch 16 x context 128, d = 128).
        let other = rand(&[2048, 128], 13)?;
        pair(
            c,
            "add 2048x128",
            &[2048, 128],
            &|x| codex_ops::add(x, &other),
            &|x| x + &other,
        )?;
        pair(
            c,
            "gelu 2048x512",
            &[2048, 512],
            &codex_ops::gelu,
            &codex_ops::gelu_reference,
        )?;
        pair(
            c,
            "causal_softmax 16x4x128x128",
            &[16, 4, 128, 128],
            &|x| codex_ops::causal_softmax(x, 0.125),
            &|x| codex_ops::causal_softmax_reference(x, 0.125),
        )?;
        // gpt-medium's attention: batch 16, context 128, d = 256 in 8 heads.
        pair(
            c,
            "causal_attention 16x128x(3x256) h8",
            &[16, 128, 768],
            &|x| codex_ops::causal_attention(x, 8),
            &|x| codex_ops::causal_attention_reference(x, 8),
        )?;
        let (w, b) = (rand(&[256, 1024], 5)?, rand(&[1024], 6)?);
        pair(
            c,
            "linear 2048x256 -> 1024",
            &[2048, 256],
            &|x| codex_ops::linear(x, &w, &b, codex_ops::WeightLayout::InOut),
            &|x| codex_ops::linear_reference(x, &w, &b, codex_ops::WeightLayout::InOut),
        )?;
        // A frozen LoRA base layer at SmolLM2-135M's MLP shape (batch 4 x context 128, d = 576,
        // ff = 1536, weight [out, in]): the fused op skips candle's weight-gradient GEMM.
        let w = rand(&[1536, 576], 7)?;
        pair(
            c,
            "frozen_linear 512x576 -> 1536",
            &[512, 576],
            &|x| codex_ops::frozen_linear(x, &w, None, codex_ops::WeightLayout::OutIn),
            &|x| codex_ops::frozen_linear_reference(x, &w, None, codex_ops::WeightLayout::OutIn),
        )?;
        // The Llama block at SmolLM2-135M's shapes (batch 4 x context 128, d = 576, ff = 1536,
        // 9 query heads sharing 3 kv heads of 64).
        let w = (rand(&[576], 8)? + 1.0)?;
        pair(
            c,
            "rms_norm 512x576",
            &[512, 576],
            &|x| codex_ops::rms_norm(x, &w, 1e-5),
            &|x| codex_ops::rms_norm_reference(x, &w, 1e-5),
        )?;
        let up = rand(&[4, 128, 1536], 9)?;
        pair(
            c,
            "swiglu 512x1536",
            &[4, 128, 1536],
            &|g| codex_ops::swiglu(g, &up),
            &|g| codex_ops::swiglu_reference(g, &up),
        )?;
        let (k, v) = (rand(&[4, 128, 192], 10)?, rand(&[4, 128, 192], 11)?);
        pair(
            c,
            "rope_attention 4x128 q9 kv3 hd64",
            &[4, 128, 576],
            &|q| codex_ops::rope_attention(q, &k, &v, 9, 3, 100_000.0),
            &|q| codex_ops::rope_attention_reference(q, &k, &v, 9, 3, 100_000.0),
        )?;
        let t: Vec<u32> = (0..2048u32).map(|i| (i * 37 + 11) % 256).collect();
        let t = Tensor::new(t.as_slice(), &Device::Cpu)?;
        pair(
            c,
            "cross_entropy 2048x256",
            &[2048, 256],
            &|x| codex_ops::cross_entropy(x, &t),
            &|x| candle_nn::loss::cross_entropy(x, &t),
        )?;
        // SmolLM2-135M's tied LM head under LoRA (frozen, [49152, 576]) and the loss over
        // batch 4 x context 128: fused (logits a chunk of rows at a time, gradients in the same
        // pass) vs the frozen linear's full logits, then the cross-entropy.
        let w = (rand(&[49_152, 576], 12)? * 0.05)?;
        let t: Vec<u32> = (0..512u32).map(|i| (i * 7919 + 13) % 49_152).collect();
        let t = Tensor::new(t.as_slice(), &Device::Cpu)?;
        pair(
            c,
            "linear_cross_entropy 512x576 -> 49152 (frozen head)",
            &[512, 576],
            &|x| codex_ops::linear_cross_entropy(x, &w, &t, true),
            &|x| {
                let logits = codex_ops::frozen_linear(x, &w, None, codex_ops::WeightLayout::OutIn)?;
                codex_ops::cross_entropy(&logits, &t)
            },
        )?;
        Ok(())
    };
    run().expect("op benches");
}

fn adamw(c: &mut Criterion) {
    let mut run = || -> Result<()> {
        let hp = codex_ops::AdamWParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let w = Var::from_tensor(&rand(&[512, 512], 5)?)?;
        let grads = w.as_tensor().sqr()?.sum_all()?.backward()?;
        let g = grads.get(&w).expect("grad").clone();
        let (mut m, mut v) = (vec![0f32; w.elem_count()], vec![0f32; w.elem_count()]);
        let mut step = 0u64;
        let mut grp = c.benchmark_group("adamw 512x512");
        grp.bench_function("codex-ops", |b| {
            b.iter(|| {
                step += 1;
                codex_ops::adamw_step(&w, &g, &mut m, &mut v, &hp, step, 1.0).expect("adamw");
            })
        });
        let w2 = Var::from_tensor(&rand(&[512, 512], 5)?)?;
        let grads2 = w2.as_tensor().sqr()?.sum_all()?.backward()?;
        let params = candle_nn::ParamsAdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = candle_nn::AdamW::new(vec![w2.clone()], params)?;
        grp.bench_function("candle_nn", |b| {
            b.iter(|| opt.step(&grads2).expect("candle adamw"))
        });
        grp.finish();
        Ok(())
    };
    run().expect("adamw benches");
}

/// The bf16 products (AVX512-BF16) against the f32 ones they replace in `dtype = "bf16"` runs:
/// a linear's forward + backward at gpt-medium's MLP shape (batch 16 x context 128, d = 256 →
/// 1024) and SmolLM2-135M's (512 x 576 → 1536), and gpt-medium's attention. Skipped, saying so,
/// on a CPU without the instructions.
fn bf16(c: &mut Criterion) {
    if !codex_ops::bf16gemm::supported() {
        eprintln!("bf16 products: this CPU has no AVX512-BF16; nothing to compare");
        return;
    }
    codex_ops::keep_freed_memory();
    let mut run = || -> Result<()> {
        for (name, rows, i, o) in [
            ("gpt-medium mlp", 2048, 256, 1024),
            ("smollm2 mlp", 512, 576, 1536),
        ] {
            let (w, b) = (rand(&[i, o], 5)?, rand(&[o], 6)?);
            let x = Var::from_tensor(&rand(&[rows, i], 1)?)?;
            let r = rand(&[rows, o], 2)?;
            let f = |x: &Tensor| codex_ops::linear(x, &w, &b, codex_ops::WeightLayout::InOut);
            let mut g = c.benchmark_group(format!("linear {rows}x{i} -> {o} ({name})"));
            for (label, on) in [("f32", false), ("bf16", true)] {
                codex_ops::bf16gemm::enable(on);
                g.bench_function(label, |bch| {
                    bch.iter(|| fwd_bwd(&x, &r, &f).expect("linear"))
                });
            }
            g.finish();
        }
        let x = Var::from_tensor(&rand(&[16, 128, 768], 1)?)?;
        let r = rand(&[16, 128, 256], 2)?;
        let f = |x: &Tensor| codex_ops::causal_attention(x, 8);
        let mut g = c.benchmark_group("causal_attention 16x128x(3x256) h8");
        for (label, on) in [("f32", false), ("bf16", true)] {
            codex_ops::bf16gemm::enable(on);
            g.bench_function(label, |bch| {
                bch.iter(|| fwd_bwd(&x, &r, &f).expect("attention"))
            });
        }
        g.finish();
        codex_ops::bf16gemm::enable(false);
        Ok(())
    };
    run().expect("bf16 benches");
}

criterion_group!(benches, ops, adamw, bf16);
criterion_main!(benches);
