//! The fused linear ops on OpenBLAS (the PyPI wheel `scipy-openblas32`); see `blas_common`.

mod blas_common;
mod support;

#[test]
#[ignore = "needs CODEX_TEST_OPENBLAS"]
fn fused_linears_on_openblas_match_candle_and_repeat_bitwise() -> candle_core::Result<()> {
    blas_common::fused_linears_match_candle_and_repeat_bitwise("CODEX_TEST_OPENBLAS", "OpenBLAS")
}
