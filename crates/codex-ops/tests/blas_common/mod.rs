//! The fused linear ops with a BLAS loaded (`codex_ops::blas`), against candle's own matmul
//! composition (the `gemm` crate): forward and every gradient, in both weight layouts (which
//! covers transposed and plain operands), bitwise repeatable. Each library gets its own test
//! binary (`blas.rs`, `blas_mkl.rs`), because a library, once loaded, serves the whole process.

use candle_core::{Result, Tensor, Var};
use codex_ops::WeightLayout;

use crate::support::rand;

type Op = Box<dyn Fn(&[Var]) -> Result<Tensor>>;

fn close(name: &str, got: &Tensor, want: &Tensor) -> Result<()> {
    let g = got.flatten_all()?.to_vec1::<f32>()?;
    let w = want.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(g.len(), w.len(), "{name}");
    let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-4 * scale,
        "{name}: max |diff| {worst} (scale {scale})"
    );
    Ok(())
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f32::to_bits)
        .collect())
}

/// Forward and gradients of `op` and `reference` on the same inputs; returns the fused outputs.
fn compare(
    name: &str,
    vars: &[Var],
    op: &dyn Fn(&[Var]) -> Result<Tensor>,
    reference: &dyn Fn(&[Var]) -> Result<Tensor>,
) -> Result<Vec<Vec<u32>>> {
    let before = codex_ops::blas::calls();
    let y = op(vars)?;
    assert!(
        codex_ops::blas::calls() > before,
        "{name}: the BLAS was not called"
    );
    let r = reference(vars)?;
    close(&format!("{name} forward"), &y, &r)?;
    // A fixed, non-uniform upstream gradient.
    let up = rand(99, y.dims())?;
    let gy = (&y * &up)?.sum_all()?.backward()?;
    let gr = (&r * &up)?.sum_all()?.backward()?;
    let mut out = vec![bits(&y)?];
    for (i, v) in vars.iter().enumerate() {
        match (gy.get(v), gr.get(v)) {
            (Some(a), Some(b)) => {
                close(&format!("{name} grad {i}"), a, b)?;
                out.push(bits(a)?);
            }
            (None, None) => {}
            _ => panic!("{name}: grad {i} present on one side only"),
        }
    }
    Ok(out)
}

/// Loads the library named by the environment variable `var` (its `config` must contain
/// `vendor`), then checks every fused linear on it against candle's composition, twice.
pub fn fused_linears_match_candle_and_repeat_bitwise(var: &str, vendor: &str) -> Result<()> {
    let lib = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!("{var} is unset: run scripts/test-assets.sh (or scripts/test.sh)")
        });
    let info = codex_ops::blas::load(std::path::Path::new(&lib)).expect("load the BLAS");
    assert!(info.config.contains(vendor), "{info:?}");
    assert_eq!(codex_ops::blas::active(), Some(&info));
    // Loading it again is a no-op; another library is refused.
    assert_eq!(
        codex_ops::blas::load(std::path::Path::new(&lib)).unwrap(),
        info
    );
    assert!(codex_ops::blas::load(std::path::Path::new("libm.so.6")).is_err());

    // 300 rows (not a multiple of the 16-row blocks the threads get), k = 96, n = 200: about
    // 5.8M multiply-adds, above the size OpenBLAS takes over at.
    let (n, i, o, r) = (300, 96, 200, 8);
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let wshape = match layout {
            WeightLayout::InOut => [i, o],
            WeightLayout::OutIn => [o, i],
        };
        let x = Var::from_tensor(&rand(1, &[3, n / 3, i])?)?;
        let w = Var::from_tensor(&rand(2, &wshape)?)?;
        let b = Var::from_tensor(&rand(3, &[o])?)?;
        let a = Var::from_tensor(&(rand(4, &[r, i])? * 0.3)?)?;
        let bm = Var::from_tensor(&(rand(5, &[o, r])? * 0.3)?)?;
        let flat = move |t: &Tensor| t.reshape((n, i));
        let cases: Vec<(&str, Vec<Var>, Op, Op)> = vec![
            (
                "linear",
                vec![x.clone(), w.clone(), b.clone()],
                Box::new(move |v| codex_ops::linear(&v[0], &v[1], &v[2], layout)),
                Box::new(move |v| {
                    codex_ops::linear_reference(&flat(&v[0])?, &v[1], &v[2], layout)?.reshape((
                        3,
                        n / 3,
                        o,
                    ))
                }),
            ),
            (
                "linear_no_bias",
                vec![x.clone(), w.clone()],
                Box::new(move |v| codex_ops::linear_no_bias(&v[0], &v[1], layout)),
                Box::new(move |v| layout.matmul(&flat(&v[0])?, &v[1])?.reshape((3, n / 3, o))),
            ),
            (
                "frozen_linear",
                vec![x.clone(), w.clone(), b.clone()],
                Box::new(move |v| codex_ops::frozen_linear(&v[0], &v[1], Some(&v[2]), layout)),
                Box::new(move |v| {
                    codex_ops::frozen_linear_reference(&v[0], &v[1], Some(&v[2]), layout)
                }),
            ),
            (
                "lora_linear",
                vec![x.clone(), w.clone(), a.clone(), bm.clone()],
                Box::new(move |v| {
                    codex_ops::lora_linear(&v[0], &v[1], None, &v[2], &v[3], 2.0, layout)
                }),
                Box::new(move |v| {
                    codex_ops::lora_linear_reference(&v[0], &v[1], None, &v[2], &v[3], 2.0, layout)
                }),
            ),
        ];
        for (name, vars, op, reference) in &cases {
            let name = format!("{name} {layout:?}");
            let first = compare(&name, vars, op.as_ref(), reference.as_ref())?;
            let again = compare(&name, vars, op.as_ref(), reference.as_ref())?;
            assert!(first == again, "{name}: not bitwise repeatable on {vendor}");
        }
    }
    Ok(())
}
