//! The carried candle-core patch (vendor/README.md) stores the first gradient of an intermediate
//! tensor as it is instead of adding it into a zero-filled one. What it must keep: correct
//! gradients where a tensor feeds several ops, and variables' gradients that never share storage
//! (clipping and the optimizer update them in place) even where backward hands one gradient
//! tensor to two variables.

use candle_core::{Device, Result, Tensor, Var};

fn vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

#[test]
fn two_variables_given_one_gradient_do_not_share_it() -> Result<()> {
    let a = Var::new(&[1f32, 2., 3.], &Device::Cpu)?;
    let b = Var::new(&[4f32, 5., 6.], &Device::Cpu)?;
    // Add's backward passes the same upstream gradient to both sides; a reshape in between
    // makes it a view of that gradient.
    let y = (a.as_tensor() + b.as_tensor())?.reshape((3, 1))?;
    let g = (y * 3.0)?.sum_all()?.backward()?;
    let (ga, gb) = (g.get(&a).unwrap(), g.get(&b).unwrap());
    assert_eq!(vec(ga)?, [3., 3., 3.]);
    assert_eq!(vec(gb)?, [3., 3., 3.]);
    assert!(
        codex_ops::scale_inplace(ga, 0.5)?,
        "the gradient is a contiguous f32 tensor"
    );
    assert_eq!(vec(ga)?, [1.5, 1.5, 1.5]);
    assert_eq!(vec(gb)?, [3., 3., 3.], "scaling a's gradient changed b's");
    Ok(())
}

#[test]
fn a_tensor_feeding_several_ops_sums_its_gradients() -> Result<()> {
    let a = Var::new(&[0.5f32, -1., 2.], &Device::Cpu)?;
    // h = 2a feeds an add, a mul and itself twice: y = h + h·h, dy/da = 2 (1 + 2h).
    let h = (a.as_tensor() * 2.0)?;
    let y = (&h + (&h * &h)?)?;
    let g = y.sum_all()?.backward()?;
    let want: Vec<f32> = [0.5f32, -1., 2.]
        .iter()
        .map(|x| 2.0 * (1.0 + 4.0 * x))
        .collect();
    assert_eq!(vec(g.get(&a).unwrap())?, want);
    Ok(())
}

#[test]
fn strided_first_gradients_are_stored_contiguous() -> Result<()> {
    // a's gradient arrives through a transpose (a strided view), and the transposed intermediate
    // feeds a matmul whose backward needs a contiguous gradient for it.
    let a = Var::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu)?;
    let w = Tensor::new(&[[1f32, -1.], [0.5, 2.]], &Device::Cpu)?;
    let at = a.as_tensor().t()?;
    let y = at.matmul(&w)?.matmul(&w.t()?)?;
    let g = y.sum_all()?.backward()?;
    let ga = g.get(&a).unwrap();
    assert!(ga.is_contiguous(), "{:?}", ga.layout());
    // d/da of sum((aᵀ W) Wᵀ) = (W Wᵀ 1)ᵀ broadcast: row i of ga is (W Wᵀ)·1 summed per row of W.
    let wwt1: Vec<f32> = vec(&w.matmul(&w.t()?)?.sum(1)?)?;
    let want = [[wwt1[0]; 3], [wwt1[1]; 3]].concat();
    assert_eq!(vec(ga)?, want);
    Ok(())
}

#[test]
fn a_bf16_variable_widened_twice_gets_the_sum_of_both_gradients_in_bf16() -> Result<()> {
    // codex widens bf16 parameters to f32 on use (a `to_dtype` node per use); the patch routes
    // that node's backward through `accumulate` too (upstream: a zero-filled bf16 tensor plus a
    // bf16 add per parameter per step). A tied weight is widened at two places.
    use candle_core::DType;
    let w =
        Var::from_tensor(&Tensor::new(&[1f32, -2., 0.5], &Device::Cpu)?.to_dtype(DType::BF16)?)?;
    let a = w.as_tensor().to_dtype(DType::F32)?;
    let b = w.as_tensor().to_dtype(DType::F32)?;
    let y = ((&a * 3.0)? + (&b * &b)?)?;
    let g = y.sum_all()?.backward()?;
    let gw = g.get(&w).unwrap();
    assert_eq!(gw.dtype(), DType::BF16);
    // d/dw = 3 + 2w, exact in bf16 for these values.
    assert_eq!(vec(&gw.to_dtype(DType::F32)?)?, [5., -1., 4.]);
    // A variable's first gradient is its own copy, not the cast's output shared elsewhere.
    let single = w.as_tensor().to_dtype(DType::F32)?.sum_all()?.backward()?;
    assert_eq!(
        vec(&single.get(&w).unwrap().to_dtype(DType::F32)?)?,
        [1., 1., 1.]
    );
    Ok(())
}
