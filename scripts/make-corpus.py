#!/usr/bin/env python3
"""Builds data/cpython-stdlib.txt: a deterministic slice of CPython's standard library.

Rule: the top-level `*.py` modules of the stdlib directory (no sub-packages; without the
machine-specific `_sysconfigdata*`), sorted by name, each taken in order unless it would push
the concatenation past BUDGET bytes. Each file is
preceded by a `# ---- <name> ----` separator line. Run with the interpreter whose stdlib
you want (the committed file was made with CPython 3.11.7).
"""
import pathlib
import sys
import sysconfig

BUDGET = 1_000_000
root = pathlib.Path(sysconfig.get_paths()["stdlib"])
out = pathlib.Path(__file__).resolve().parent.parent / "data" / "cpython-stdlib.txt"
parts, names, total = [], [], 0
for path in sorted(root.glob("*.py")):
    if path.name.startswith("_sysconfigdata"):
        continue
    text = path.read_text(encoding="utf-8")
    chunk = f"# ---- {path.name} ----\n{text}"
    if not chunk.endswith("\n"):
        chunk += "\n"
    size = len(chunk.encode("utf-8"))
    if total + size > BUDGET:
        continue
    parts.append(chunk)
    names.append(path.name)
    total += size
out.write_text("".join(parts), encoding="utf-8")
print(f"python {sys.version.split()[0]}: {len(names)} files, {total} bytes -> {out}")
print(" ".join(names))
