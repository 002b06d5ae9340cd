//! The fused linear ops on Intel MKL (`libmkl_rt` of the PyPI wheel `mkl`, the MKL PyTorch's
//! CPU wheels are built with), sequential per block in strict reproducibility mode; see
//! `blas_common`.

mod blas_common;
mod support;

#[test]
#[ignore = "needs CODEX_TEST_MKL"]
fn fused_linears_on_mkl_match_candle_and_repeat_bitwise() -> candle_core::Result<()> {
    blas_common::fused_linears_match_candle_and_repeat_bitwise(
        "CODEX_TEST_MKL",
        "Math Kernel Library",
    )
}
