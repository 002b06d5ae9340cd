#!/usr/bin/env bash
# The heavy interop checks that need PyTorch (~3 GB from PyPI), kept out of the README's test
# command so `.ci/run` stays well under its time budget: a LoRA adapter saved by codex loads in
# Python `peft` (+ `transformers`) and gives the same logits.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="target/interop-venv"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check torch transformers peft safetensors numpy
export CODEX_PEFT_PYTHON="$PWD/$venv/bin/python"
exec cargo test -p codex-registry --test it --locked "$@" -- --ignored codex_adapter_loads_in_peft
