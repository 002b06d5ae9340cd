#!/usr/bin/env python3
"""tiktoken side of benches/tokenizer_vs_python.sh, for byte-level BPE tokenizer.json files.

usage: tokenizer_encode_tiktoken.py TOKENIZER_JSON CORPUS OUT

tiktoken cannot read a tokenizer.json, and its own GPT-2 ranks are a download this machine cannot
make; so the same vocabulary is given to it as mergeable ranks (token bytes -> id) with the GPT-2
split pattern. tiktoken ranks merges by the merged token's id where `tokenizers` uses the merges
list, and it does not apply the file's normalizer; the fraction of lines whose ids equal the
`tokenizers` ids (OUT compared with REFERENCE_IDS when given) is reported, not assumed.
Encodes lines in chunks of 256 with encode_ordinary_batch (threads = RAYON_NUM_THREADS or the
core count), writes space-separated ids, and prints a JSON line with encode-only and total time.
"""
import json
import os
import sys
import time

import tiktoken

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_decoder() -> dict:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def main() -> None:
    t0 = time.perf_counter()
    spec = json.load(open(sys.argv[1], encoding="utf-8"))
    dec = byte_decoder()
    ranks = {}
    for tok, i in spec["model"]["vocab"].items():
        if all(c in dec for c in tok):
            ranks[bytes(dec[c] for c in tok)] = i
    enc = tiktoken.Encoding("bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    data = open(sys.argv[2], "rb").read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    texts = [(l[:-1] if l.endswith(b"\r") else l).decode("utf-8") for l in lines]
    threads = int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1))
    encode_s, tokens = 0.0, 0
    with open(sys.argv[3], "w") as out:
        for i in range(0, len(texts), 256):
            t = time.perf_counter()
            ids = enc.encode_ordinary_batch(texts[i : i + 256], num_threads=threads)
            encode_s += time.perf_counter() - t
            for e in ids:
                tokens += len(e)
                out.write(" ".join(map(str, e)) + "\n")
    total = time.perf_counter() - t0
    same = None
    if len(sys.argv) > 4:
        a = open(sys.argv[3]).read().split("\n")
        b = open(sys.argv[4]).read().split("\n")
        same = sum(x == y for x, y in zip(a, b)) / max(1, len(a))
    print(json.dumps({"encode_s": encode_s, "total_s": total, "tokens": tokens,
                      "lines_equal_to_tokenizers": same}), file=sys.stderr)


if __name__ == "__main__":
    main()
