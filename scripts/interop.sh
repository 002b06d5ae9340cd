#!/usr/bin/env bash
# The heavy interop checks that need PyTorch (~3 GB from PyPI), kept out of the README's test
# command so `.ci/run` stays well under its time budget:
#   - a LoRA adapter saved by codex loads in Python `peft` (+ `transformers`), same logits;
#   - `codex export` of tiny GPT-2, Llama and BPE-tokenizer runs loads in `transformers`:
#     logits within 1e-4, `generate(do_sample=False)` equal to `codex generate -t 0`, and LoRA
#     runs exported merged and as a PEFT adapter.
# With CODEX_TORCH_PYTHON set to a Python that has torch, transformers and peft, that Python is
# used as is; otherwise a venv is made in target/interop-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CODEX_TORCH_PYTHON:-}" ]; then
  venv="target/interop-venv"
  if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check torch transformers peft safetensors numpy
  export CODEX_TORCH_PYTHON="$PWD/$venv/bin/python"
fi
export CODEX_PEFT_PYTHON="$CODEX_TORCH_PYTHON"
cargo test -p codex-registry --test it --locked "$@" -- --ignored codex_adapter_loads_in_peft
exec cargo test --test it --locked "$@" -- --ignored \
  export::gpt2_and_llama_exports_match_transformers export::lora_exports_match_transformers_and_peft
