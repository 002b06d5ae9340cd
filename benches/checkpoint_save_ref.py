"""Python reference for benches/checkpoint_save.rs: the same state (weights + two moments,
f32) saved with safetensors.numpy.save_file, each file then hashed with hashlib.sha256 (read
back, as codex_ml did) and fsynced. Prints the seconds spent in the timed loop only (with
--each, one line per iteration; used by crates/codex-checkpoint/benches/save_vs_python.rs)."""

import argparse
import hashlib
import os
import time

import numpy as np
from safetensors.numpy import save_file


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--floats", type=int, required=True)
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--each", action="store_true", help="print every iteration's seconds")
    a = ap.parse_args()
    i = np.arange(a.floats, dtype=np.int64)
    w = ((i % 1000) * 1e-3).astype(np.float32)
    m1 = ((i % 777) * 1e-4).astype(np.float32)
    m2 = ((i % 555) * 1e-5).astype(np.float32)
    del i
    total = 0.0
    for step in range(a.iters):
        t = time.perf_counter()
        files = {
            os.path.join(a.out, "model.safetensors"): {"w": w},
            os.path.join(a.out, "optimizer.safetensors"): {"w.exp_avg": m1, "w.exp_avg_sq": m2},
        }
        for path, tensors in files.items():
            save_file(tensors, path, metadata={"step": str(step)})
            sha256_file(path)
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        dt = time.perf_counter() - t
        total += dt
        if a.each:
            print(f"{dt:.6f}")
    if not a.each:
        print(f"{total:.6f}")


if __name__ == "__main__":
    main()
