"""PyTorch + peft reference for benches/finetune_smollm2.sh: fine-tune SmolLM2-135M (GGUF,
dequantized to f32 by transformers) on a text corpus, LoRA or full, and print one JSON line.

    python finetune_smollm2_ref.py export-tokenizer --gguf M.gguf --out DIR
    python finetune_smollm2_ref.py train --gguf M.gguf --tokenizer DIR/tokenizer.json \
        --corpus corpus.txt --mode lora --steps 20 --warmup 3 --threads 2

`train` cuts the corpus's token ids (the same tokenizer.json codex loads) into blocks of
`--context` tokens and feeds `--batch` consecutive blocks per step; tokens/s counts the steps
after `--warmup` only. Settings mirror the codex run: f32, AdamW (betas 0.9/0.95, weight decay
0.1), grad-norm clipping at 1.0, constant learning rate, no dropout.

`--dtype bf16` is what a PyTorch user runs for bf16 on the CPU: forward and backward under
torch.autocast("cpu", dtype=torch.bfloat16); LoRA loads the frozen base in bf16
(`torch_dtype=torch.bfloat16`; peft keeps the adapters in fp32), full fine-tuning keeps fp32
weights, gradients and AdamW state (the master copy: PyTorch has no bf16 optimizer with fp32
master weights built in).
"""

import argparse
import json
import os
import sys
import time


def load_model(gguf, torch, dtype=None):
    from transformers import AutoModelForCausalLM

    d, name = os.path.split(os.path.abspath(gguf))
    return AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, torch_dtype=dtype or torch.float32
    )


def export_tokenizer(args):
    """tokenizer.json from the GGUF's metadata (GPT-2 byte-level BPE, llama.cpp pre-tokenizer
    "smollm": single digits, then byte level), built with `tokenizers` alone: transformers'
    GGUF reader needs torch, and codex must get its tokenizer before the reference installs."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    fields = gguf.GGUFReader(args.gguf).fields

    def get(key):
        return fields[key].contents()

    if get("tokenizer.ggml.model") != "gpt2":
        sys.exit(f"error: expected a gpt2 BPE tokenizer in {args.gguf}")
    tokens = get("tokenizer.ggml.tokens")
    types = get("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # Control tokens (type 3) are special: never produced from plain text.
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3]
    )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tokenizer.json")
    tok.save(path)
    print(path)


def train(args):
    import torch
    from tokenizers import Tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    tok = Tokenizer.from_file(args.tokenizer)
    with open(args.corpus, encoding="utf-8") as f:
        ids = tok.encode(f.read(), add_special_tokens=False).ids
    need = (args.warmup + args.steps) * args.batch * args.context
    if len(ids) < need:
        sys.exit(f"error: corpus has {len(ids)} tokens, {need} needed")
    data = torch.tensor(ids[:need], dtype=torch.long).view(-1, args.batch, args.context)

    bf16 = args.dtype == "bf16"
    base_dtype = torch.bfloat16 if bf16 and args.mode == "lora" else torch.float32
    model = load_model(args.gguf, torch, base_dtype)
    model.config.use_cache = False
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    loss = None
    t_start = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            t_start = time.perf_counter()
        x = data[step]
        # HF shifts labels inside: logits[:, :-1] predict x[:, 1:] (as codex's next-token loss).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=x, labels=x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss = out.loss.item()
    secs = time.perf_counter() - t_start
    rss = None
    try:
        import psutil

        rss = psutil.Process().memory_info().rss
    except ImportError:
        pass
    print(
        json.dumps(
            {
                "mode": args.mode,
                "dtype": args.dtype,
                "tokens_per_s": args.steps * args.batch * args.context / secs,
                "loss": loss,
                "trainable_params": sum(p.numel() for p in params),
                "rss_end_bytes": rss,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export-tokenizer")
    e.add_argument("--gguf", required=True)
    e.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--gguf", required=True)
    t.add_argument("--tokenizer", required=True)
    t.add_argument("--corpus", required=True)
    t.add_argument("--mode", choices=["lora", "full"], default="lora")
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--context", type=int, default=128)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    args = p.parse_args()
    export_tokenizer(args) if args.cmd == "export-tokenizer" else train(args)


if __name__ == "__main__":
    main()
