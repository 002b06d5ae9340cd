# Sourced by the training benches: BLAS selects the GEMM codex trains with.
#   BLAS=            codex's built-in GEMM (the `gemm` crate)
#   BLAS=wheel       OpenBLAS from the PyPI wheel scipy-openblas32 (downloaded once into
#                    target/bench-blas; self-contained, knows recent CPUs)
#   BLAS=mkl         Intel MKL 2024.2 from the PyPI wheel mkl (the MKL PyTorch 2.15's CPU wheels
#                    are built with; downloaded once into target/bench-blas-mkl)
#   BLAS=/path.so    any OpenBLAS (e.g. libopenblas.so.0 from Debian's libopenblas0) or libmkl_rt
# Sets BLAS_ARGS (the codex `training.blas=...` override, or nothing) and BLAS_NAME (for the table).
BLAS_ARGS=()
BLAS_NAME="built-in gemm crate"
case "${BLAS:-}" in
    "") ;;
    wheel)
        blas_dir=target/bench-blas
        if [ ! -f "$blas_dir/.done" ]; then
            rm -rf "$blas_dir"
            "${PY:-python3}" -m pip download --quiet --no-deps --only-binary=:all: -d "$blas_dir" \
                "scipy-openblas32==0.3.34.481.3" >&2
            "${PY:-python3}" -m zipfile -e "$blas_dir"/*.whl "$blas_dir"
            touch "$blas_dir/.done"
        fi
        BLAS_ARGS=("training.blas=\"$(realpath "$blas_dir/scipy_openblas32/lib/libscipy_openblas.so")\"")
        BLAS_NAME="OpenBLAS 0.3.34 (scipy-openblas32)"
        ;;
    mkl)
        blas_dir=target/bench-blas-mkl
        if [ ! -f "$blas_dir/.done" ]; then
            rm -rf "$blas_dir"
            "${PY:-python3}" -m pip download --quiet --no-deps --only-binary=:all: -d "$blas_dir" \
                "mkl==2024.2.0" >&2
            "${PY:-python3}" -m zipfile -e "$blas_dir"/mkl-*.whl "$blas_dir"
            touch "$blas_dir/.done"
        fi
        BLAS_ARGS=("training.blas=\"$(realpath "$blas_dir"/mkl-*.data/data/lib/libmkl_rt.so.2)\"")
        BLAS_NAME="MKL 2024.2 (PyPI mkl, sequential per block)"
        ;;
    *)
        BLAS_ARGS=("training.blas=\"$BLAS\"")
        BLAS_NAME="BLAS $BLAS"
        ;;
esac
