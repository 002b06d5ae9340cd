#!/usr/bin/env python3
"""Python side of benches/tokenizer_vs_python.sh: the `tokenizers` package's encode_batch.

usage: tokenizer_encode_py.py TOKENIZER_JSON CORPUS OUT

Does the same work as `codex tokenizer encode --lines --file CORPUS -t TOKENIZER_JSON > OUT`:
splits on b"\\n" (dropping a trailing "\\r"), encodes every line with special tokens in batches
of 10,000 lines through `encode_batch` (parallel, Rust inside), and writes space-separated ids.
Prints to stderr a JSON line with the time spent in encode_batch alone and in total.
"""
import json
import sys
import time

from tokenizers import Tokenizer


def main() -> None:
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(sys.argv[1])
    data = open(sys.argv[2], "rb").read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    texts = [(l[:-1] if l.endswith(b"\r") else l).decode("utf-8") for l in lines]
    encode_s = 0.0
    tokens = 0
    with open(sys.argv[3], "w") as out:
        for i in range(0, len(texts), 10_000):
            t = time.perf_counter()
            encs = tok.encode_batch(texts[i : i + 10_000])
            encode_s += time.perf_counter() - t
            for e in encs:
                tokens += len(e.ids)
                out.write(" ".join(map(str, e.ids)) + "\n")
    total = time.perf_counter() - t0
    print(json.dumps({"encode_batch_s": encode_s, "total_s": total, "tokens": tokens}), file=sys.stderr)


if __name__ == "__main__":
    main()
