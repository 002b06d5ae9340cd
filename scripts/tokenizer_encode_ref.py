#!/usr/bin/env python3
"""Reference encoder: the Python `tokenizers` package, for the interop tests and benches.

usage: tokenizer_encode_ref.py TOKENIZER_JSON FILE [--json] [--no-special-tokens]

Splits FILE exactly as `codex tokenizer encode --lines` does (on b"\\n", dropping one trailing
"\\r", no final empty line) and prints one line per document: space-separated ids, or with
--json the ids, tokens, offsets (characters) and attention mask as JSON.
"""
import json
import sys

from tokenizers import Tokenizer


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    as_json = "--json" in sys.argv
    add_special = "--no-special-tokens" not in sys.argv
    tok = Tokenizer.from_file(args[0])
    data = open(args[1], "rb").read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    texts = [(l[:-1] if l.endswith(b"\r") else l).decode("utf-8") for l in lines]
    out = sys.stdout
    for enc in tok.encode_batch(texts, add_special_tokens=add_special):
        if as_json:
            out.write(json.dumps({
                "ids": enc.ids,
                "tokens": enc.tokens,
                "offsets": [list(o) for o in enc.offsets],
                "attention_mask": enc.attention_mask,
                "special_tokens_mask": enc.special_tokens_mask,
            }, ensure_ascii=False) + "\n")
        else:
            out.write(" ".join(map(str, enc.ids)) + "\n")


if __name__ == "__main__":
    main()
