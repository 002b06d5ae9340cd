#!/usr/bin/env bash
# Checkpoint save + sha256 + fsync, codex vs Python safetensors + hashlib + fsync, side by side
# in one run at 100 MB and 500 MB, with the ratio (issue 19). Runs
# crates/codex-checkpoint/benches/save_vs_python.rs (see its header for what each side does).
#
#   bash benches/checkpoint_vs_python.sh
#   SIZES=100 ROUNDS=5 ITERS=4 PYTHON=/path/to/python bash benches/checkpoint_vs_python.sh
#
# Python needs safetensors and numpy (default: target/bench-venv/bin/python). The machine may be
# shared: the load at the start is printed; compare ratios from one run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-target/bench-venv/bin/python}
"$PY" -c 'import safetensors, numpy' 2>/dev/null \
    || { echo "error: $PY cannot import safetensors + numpy (set PYTHON=...)" >&2; exit 1; }
CODEX_BENCH_PYTHON=$PY CODEX_BENCH_SIZES_MB=${SIZES:-100,500} CODEX_BENCH_ROUNDS=${ROUNDS:-3} \
    CODEX_BENCH_ITERS=${ITERS:-3} cargo bench --quiet -p codex-checkpoint --bench save_vs_python
