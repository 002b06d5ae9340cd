# Source this (bash): the CUDA 13.0 compiler from PyPI wheels, as ../shared/design/GPU.md says,
# in a venv at $CUDA_VENV (default /opt/cuda13); exports PATH, CUDA_ROOT, CUDA_PATH and
# CUDA_COMPUTE_CAP (default 90, Hopper). Idempotent: pip leaves pinned packages that are
# already there alone.
#
#   source scripts/cuda-toolkit.sh          enough for `cargo check --features cuda|nccl`
#   source scripts/cuda-toolkit.sh link     also what linking a binary needs: cuBLAS, NVRTC,
#       cuRAND and NCCL (2.30, the version cudarc 0.19's `nccl` bindings name), unversioned
#       symlinks to them and a libcuda.so stub (the driver's library is in no wheel) in
#       $CUDA_LINK_DIR, which LIBRARY_PATH then names.
#
# Every CUDA package is pinned to 13.0.x: a newer nvidia-nvvm makes PTX the 13.0 ptxas rejects.

cuda_toolkit_main() {
  local venv=${CUDA_VENV:-/opt/cuda13}
  local py=${CUDA_PYTHON:-python3}
  [ -x "$venv/bin/pip" ] || "$py" -m venv "$venv"
  local pkgs=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
  if [ "${1:-}" = link ]; then
    pkgs+=(nvidia-cublas==13.0.2.14 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35
      nvidia-nccl-cu13==2.30.7)
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "${pkgs[@]}"
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  local c="$site/nvidia/cu13"
  export PATH="$c/bin:$PATH" CUDA_ROOT="$c" CUDA_PATH="$c"
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  export CUDA_NCCL_LIB="$site/nvidia/nccl/lib"
  if [ "${1:-}" = link ]; then
    local link=${CUDA_LINK_DIR:-$venv/link}
    mkdir -p "$link"
    local lib
    for lib in "$c"/lib/lib{cublas,cublasLt,cudart,nvrtc,curand}.so.* "$CUDA_NCCL_LIB"/libnccl.so.2; do
      [ -e "$lib" ] || { echo "cuda-toolkit: missing $lib" >&2; return 1; }
      local base=${lib##*/}
      ln -sf "$lib" "$link/${base%%.so*}.so"
    done
    if ! [ -e "$link/libcuda.so" ]; then
      # A stub with the driver's soname: the symbols cudarc names, each an empty function.
      # Only for linking; the real libcuda.so.1 comes with the driver on the GPU machine.
      local syms
      syms=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-0.19.10/src/driver/sys/*' -name '*.rs' \
        -exec grep -ohE 'pub unsafe fn cu[A-Za-z0-9_]+' {} + | sed 's/pub unsafe fn //' | sort -u)
      [ -n "$syms" ] || { echo "cuda-toolkit: cudarc 0.19.10 sources not found (cargo fetch first)" >&2; return 1; }
      printf 'void %s(void){}\n' $syms >"$link/cuda_stub.c"
      gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/cuda_stub.c"
    fi
    export CUDA_LINK_DIR="$link" LIBRARY_PATH="$link${LIBRARY_PATH:+:$LIBRARY_PATH}"
  fi
}
cuda_toolkit_main "$@"
