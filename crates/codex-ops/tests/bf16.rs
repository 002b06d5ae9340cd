//! The fused ops with their products in bf16 (`codex_ops::bf16gemm`), against the same ops in
//! f32 (themselves tested against candle's compositions): forward and every gradient within
//! bf16's precision, the bf16 kernels actually called, and results bitwise independent of the
//! thread count. The switch is process-wide, so this binary holds one test.

use candle_core::{DType, Device, Result, Tensor, Var};
use codex_ops::{WeightLayout, bf16gemm};

mod support;
use support::rand;

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Forward output and the gradient of every var, with the products in bf16 or f32.
fn run(
    vars: &[Var],
    op: &(dyn Fn(&[Var]) -> Result<Tensor> + Sync),
    bf16: bool,
) -> Result<Vec<Vec<f32>>> {
    assert_eq!(bf16gemm::enable(bf16), bf16);
    let y = op(vars)?;
    let up = rand(99, y.dims())?;
    let g = (&y * &up)?.sum_all()?.backward()?;
    let mut out = vec![flat(&y)?];
    for v in vars {
        if let Some(t) = g.get(v) {
            out.push(flat(t)?);
        }
    }
    Ok(out)
}

#[test]
fn fused_ops_in_bf16_match_f32_and_ignore_the_thread_count() -> Result<()> {
    if !bf16gemm::supported() {
        // Without AVX512-BF16 the products cannot run in bf16: the switch must stay off.
        assert!(!bf16gemm::enable(true) && !bf16gemm::active());
        return Ok(());
    }
    type Op = Box<dyn Fn(&[Var]) -> Result<Tensor> + Send + Sync>;
    let var = |seed, shape: &[usize]| Var::from_tensor(&rand(seed, shape)?);
    let (n, i, o) = (130, 96, 200);
    let cases: Vec<(&str, Vec<Var>, Op)> = vec![
        (
            "linear [in, out]",
            vec![var(1, &[n, i])?, var(2, &[i, o])?, var(3, &[o])?],
            Box::new(|v| codex_ops::linear(v[0].as_tensor(), &v[1], &v[2], WeightLayout::InOut)),
        ),
        (
            "gelu_linear [out, in]",
            vec![var(1, &[n, i])?, var(2, &[o, i])?, var(3, &[o])?],
            Box::new(|v| {
                codex_ops::gelu_linear(v[0].as_tensor(), &v[1], &v[2], WeightLayout::OutIn)
            }),
        ),
        (
            "lora_linear",
            vec![var(1, &[n, i])?, var(4, &[8, i])?, var(5, &[o, 8])?],
            Box::new(move |v| {
                let w = rand(2, &[o, i])?;
                codex_ops::lora_linear(
                    v[0].as_tensor(),
                    &w,
                    None,
                    &v[1],
                    &v[2],
                    2.0,
                    WeightLayout::OutIn,
                )
            }),
        ),
        (
            "causal_attention",
            vec![var(6, &[2, 40, 3 * 64])?],
            Box::new(|v| codex_ops::causal_attention(v[0].as_tensor(), 4)),
        ),
        (
            "rope_attention",
            vec![
                var(7, &[2, 40, 4 * 16])?,
                var(8, &[2, 40, 2 * 16])?,
                var(9, &[2, 40, 2 * 16])?,
            ],
            Box::new(|v| codex_ops::rope_attention(&v[0], &v[1], &v[2], 4, 2, 10000.0)),
        ),
        (
            "linear_cross_entropy",
            vec![var(10, &[n, i])?, var(11, &[300, i])?],
            Box::new(move |v| {
                let t: Vec<u32> = (0..n as u32).map(|x| (x * 7) % 300).collect();
                let t = Tensor::from_vec(t, n, &Device::Cpu)?;
                codex_ops::linear_cross_entropy(&v[0], &v[1], &t, true)
            }),
        ),
    ];
    let pool = |t| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
    };
    for (name, vars, op) in &cases {
        let want = run(vars, op.as_ref(), false)?;
        let before = bf16gemm::calls();
        let got = run(vars, op.as_ref(), true)?;
        assert!(
            bf16gemm::calls() > before,
            "{name}: the bf16 kernels were not called"
        );
        assert_eq!(got.len(), want.len(), "{name}");
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            // bf16 keeps 8 significant bits: operands are off by up to 2^-9 relative, and the
            // errors of a k-term sum mostly cancel.
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
            let worst = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 2e-2 * scale,
                "{name} output {k}: max |diff| {worst} (scale {scale})"
            );
            // The forward always runs a product (a bias gradient, say, need not).
            assert!(
                k > 0 || worst > 0.0,
                "{name}: forward identical to f32, so not computed in bf16"
            );
        }
        let one = pool(1).install(|| run(vars, op.as_ref(), true))?;
        let three = pool(3).install(|| run(vars, op.as_ref(), true))?;
        for (k, ((a, b), c)) in got.iter().zip(&one).zip(&three).enumerate() {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(a) == bits(b) && bits(a) == bits(c),
                "{name} output {k} depends on the thread count"
            );
        }
    }
    // A bf16 run hands its frozen weights to the ops as stored: the products pack the bf16 bits
    // directly, bitwise the same as the weight widened to f32 (which rounds back exactly); with
    // the products in f32 the op widens it itself, again the same as the f32 weight.
    let w16 = rand(2, &[o, i])?.to_dtype(DType::BF16)?;
    let w32 = w16.to_dtype(DType::F32)?;
    let (a, bm) = (rand(4, &[8, i])?, rand(5, &[o, 8])?);
    type WOp = Box<dyn Fn(&[Var], &Tensor) -> Result<Tensor> + Send + Sync>;
    let frozen: Vec<(&str, WOp)> = vec![
        (
            "frozen_linear",
            Box::new(|v, w| codex_ops::frozen_linear(&v[0], w, None, WeightLayout::OutIn)),
        ),
        (
            "lora_linear",
            Box::new(move |v, w| {
                codex_ops::lora_linear(&v[0], w, None, &a, &bm, 2.0, WeightLayout::OutIn)
            }),
        ),
    ];
    let x = [var(1, &[n, i])?];
    for (name, op) in &frozen {
        for on in [true, false] {
            let with16 = run(&x, &|v| op(v, &w16), on)?;
            let with32 = run(&x, &|v| op(v, &w32), on)?;
            assert!(
                with16
                    .iter()
                    .zip(&with32)
                    .all(|(p, q)| p.iter().zip(q).all(|(x, y)| x.to_bits() == y.to_bits())),
                "{name} (bf16 products {on}): a bf16 weight differs from its f32 widening"
            );
        }
    }
    // A trainable bf16 weight goes in as stored too: the output, `dx` and the bf16 gradient of
    // the weight are bitwise those of the composition through `widen` (whose backward rounds the
    // f32 gradient to bf16 the same way), with the products in bf16 or in f32.
    let w16 = Var::from_tensor(&rand(2, &[i, o])?.to_dtype(DType::BF16)?)?;
    let bias = rand(3, &[o])?;
    type LOp = Box<dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;
    let trainable: Vec<(&str, LOp)> = vec![
        (
            "linear",
            Box::new(move |x, w| codex_ops::linear(x, w, &bias, WeightLayout::InOut)),
        ),
        (
            "linear_no_bias",
            Box::new(|x, w| codex_ops::linear_no_bias(x, w, WeightLayout::InOut)),
        ),
    ];
    for (name, op) in &trainable {
        for on in [true, false] {
            bf16gemm::enable(on);
            let mut out = Vec::new();
            for widened in [false, true] {
                let w = if widened {
                    codex_ops::widen(w16.as_tensor())?
                } else {
                    w16.as_tensor().clone()
                };
                let y = op(x[0].as_tensor(), &w)?;
                let g = (&y * &rand(99, y.dims())?)?.sum_all()?.backward()?;
                let dw = g.get(&w16).expect("dW");
                assert_eq!(dw.dtype(), DType::BF16, "{name}: the weight's gradient");
                let bits = |t: &Tensor| -> Result<Vec<u32>> {
                    Ok(flat(&t.to_dtype(DType::F32)?)?
                        .iter()
                        .map(|v| v.to_bits())
                        .collect())
                };
                out.push([bits(&y)?, bits(g.get(&x[0]).expect("dx"))?, bits(dw)?]);
            }
            assert!(
                out[0] == out[1],
                "{name} (bf16 products {on}): stored bf16 differs from widened"
            );
        }
    }
    assert!(!bf16gemm::enable(false) && !bf16gemm::active());
    Ok(())
}
