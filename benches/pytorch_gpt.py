#!/usr/bin/env python3
"""PyTorch CPU reference for codex's training benchmark (issue 7).

nanoGPT-style GPT: pre-LN blocks, causal self-attention, GELU (tanh approximation) MLP x4,
tied token embedding / LM head, learned positions, biases on; AdamW (weight decay on 2-D
weights only), gradient clipping by global norm 1.0, constant learning rate. Trains on byte
tokens (vocabulary 256) from --data (any file, read as bytes) or, without it, on seeded random
bytes. Prints one JSON line on stdout: tokens/s over the timed steps (after warm-up), peak RSS
(ru_maxrss) and the training loss after the last step.

--dtype bf16 is PyTorch's mixed precision on CPU: fp32 weights, gradients and AdamW state
(the master copy), forward and backward under torch.autocast("cpu", dtype=torch.bfloat16), so
the matmuls run in bf16 (oneDNN uses the CPU's bf16 instructions where it has them).

    /opt/pyref/bin/python benches/pytorch_gpt.py --config small --steps 30 --warmup 5 --threads 2
"""
import argparse
import json
import math
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    "small": dict(n_layer=4, n_head=4, n_embd=128),
    "medium": dict(n_layer=6, n_head=8, n_embd=256),
}


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, block_size, vocab=256):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name.endswith("mlp_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for blk in self.blocks:
            x = blk(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied head
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=sorted(CONFIGS), default="small")
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--data", help="file read as byte tokens (default: seeded random bytes)")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.data:
        with open(a.data, "rb") as f:
            data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    else:
        data = torch.randint(0, 256, (1 << 20,))
    if len(data) <= a.ctx + 1:
        sys.exit(f"error: {a.data} has {len(data)} bytes, need more than {a.ctx + 1}")

    model = GPT(block_size=a.ctx, **CONFIGS[a.config])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    gen = torch.Generator().manual_seed(a.seed)

    def step():
        ix = torch.randint(len(data) - a.ctx - 1, (a.batch,), generator=gen)
        x = torch.stack([data[i:i + a.ctx] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + a.ctx] for i in ix])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    dt = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "impl": "pytorch",
        "torch": torch.__version__,
        "config": a.config,
        "dtype": a.dtype,
        "params": n_params,
        "threads": a.threads,
        "steps": a.steps,
        "warmup": a.warmup,
        "tokens_per_s": a.steps * a.batch * a.ctx / dt,
        "step_ms": 1000 * dt / a.steps,
        "loss": float(loss),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
