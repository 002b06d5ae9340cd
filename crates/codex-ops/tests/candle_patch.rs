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
