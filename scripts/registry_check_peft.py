#!/usr/bin/env python3
"""Loads a codex-saved LoRA adapter with the real `peft` package and compares logits.

    registry_check_peft.py BASE_DIR ADAPTER_DIR EXPECTED.safetensors [TOL]

EXPECTED holds `input_ids` and the `logits` codex computed with the adapter applied. Prints
{"max_abs_diff": ...} and exits 1 when the difference exceeds TOL (default 1e-4). Used by
codex-registry's `codex_adapter_loads_in_peft` test when CODEX_PEFT_PYTHON names a Python
with torch, transformers and peft.
"""
import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    base, adapter, expected = sys.argv[1:4]
    tol = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-4
    e = load_file(expected)
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        logits = model(e["input_ids"].long()).logits
    diff = (logits - e["logits"]).abs().max().item()
    # The adapter must actually change the output, or the comparison proves nothing.
    with torch.no_grad(), model.disable_adapter():
        base_diff = (model(e["input_ids"].long()).logits - e["logits"]).abs().max().item()
    print(json.dumps({"max_abs_diff": diff, "adapter_effect": base_diff}))
    sys.exit(0 if diff <= tol and base_diff > 10 * tol else 1)


if __name__ == "__main__":
    main()
