#!/usr/bin/env python3
"""PyTorch CPU reference for crates/codex-registry/benches/forward.rs: the same presets
(gpt-tiny: GPT-2 2 layers, 2 heads, d=128; llama-tiny: 4 layers, 4 heads, 2 KV heads, d=128,
SwiGLU 384), vocab 4096, ctx 64, batch 8 × 64, f32, loss = mean(logits²).

    /opt/pyref/bin/python scripts/registry_bench_torch.py [--threads N]
Prints the median time per iteration in ms for forward and forward+backward.
"""
import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

def timeit(fn, n=20, warm=3):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = (torch.arange(8 * 64, dtype=torch.int64) * 2654435761 % (2**32) % 4096).reshape(8, 64)
    models = {
        "gpt-tiny": GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_positions=64, n_embd=128, n_layer=2, n_head=2,
                                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
        "llama-tiny": LlamaForCausalLM(LlamaConfig(vocab_size=4096, hidden_size=128, intermediate_size=384,
                                                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                                   max_position_embeddings=64, rms_norm_eps=1e-5)),
    }
    for name, m in models.items():

        def fwd():
            with torch.no_grad():
                m(x).logits

        def fwd_bwd():
            m.zero_grad(set_to_none=True)
            m(x).logits.pow(2).mean().backward()

        print(f"{name}/forward: {timeit(fwd):.2f} ms")
        print(f"{name}/forward_backward: {timeit(fwd_bwd):.2f} ms")

if __name__ == "__main__":
    main()
