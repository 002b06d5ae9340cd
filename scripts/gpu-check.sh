#!/usr/bin/env bash
# The GPU checks, in two halves (the CUDA toolkit comes from PyPI, see scripts/cuda-toolkit.sh
# and ../shared/design/GPU.md):
#
#   bash scripts/gpu-check.sh build [OUT]   on the build machine (no GPU needed): builds
#       `codex` with --features cuda and `codex-nccl` with --features nccl (CUDA + MPI +
#       NCCL), and puts them, with the CUDA and NCCL libraries they load and a list of what
#       they are, into OUT (default target/gpu-bundle).
#   bash scripts/gpu-check.sh run [BUNDLE]  on a machine with an NVIDIA GPU and driver:
#       1. a CUDA training run whose first-step loss matches the CPU run of the same seed
#          within 1e-3 relative (TF32/cuBLAS kernels sum in another order than the CPU
#          kernels; bit equality is not expected), and whose loss falls;
#       2. `codex metrics sample --gpu --json` with real values (a GPU, its memory, util);
#       3. NCCL with one rank equal to the plain run: `mpirun -np 1 codex-nccl train …
#          distributed.backend="nccl"` (grad_accum 2; reduce ordered, then native) against
#          `codex train` on the same GPU: every step's loss and the final model.safetensors
#          identical, bit for bit (one rank's all-gather/all-reduce returns its own values
#          and the fold makes the same candle adds), and NCCL's own log shows its
#          communicator. Needs Open MPI 4.x or 5.x (`mpirun`, libmpi.so.40) on that machine.
# Exit 0 only when every check passed. It has not run yet: no GPU machine so far.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
fail=0
check() { # NAME OK? DETAIL
  if [ "$2" = 1 ]; then printf 'PASS %s: %s\n' "$1" "$3"; else printf 'FAIL %s: %s\n' "$1" "$3"; fail=1; fi
}

case "$mode" in
build)
  out=${2:-target/gpu-bundle}
  # shellcheck source=scripts/cuda-toolkit.sh
  source scripts/cuda-toolkit.sh link
  target=${CARGO_TARGET_DIR:-target}
  mkdir -p "$out/lib"
  # One target directory: the second build reuses the CUDA kernels and every crate whose
  # features did not change.
  cargo build --release --locked --features cuda
  cp "$target/release/codex" "$out/codex"
  cargo build --release --locked --features nccl
  cp "$target/release/codex" "$out/codex-nccl"
  # The libraries the binaries need besides the driver's libcuda.so.1 and the system's MPI.
  for bin in "$out/codex" "$out/codex-nccl"; do
    readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
  done | sort -u | while read -r name; do
    case "$name" in
      libcublas*|libcudart*|libcurand*|libnvrtc*|libnccl*)
        found=$(ls "$CUDA_ROOT/lib/$name" "$CUDA_NCCL_LIB/$name" 2>/dev/null | head -1)
        [ -n "$found" ] || { echo "gpu-check: $name not found in the wheels" >&2; exit 1; }
        cp -L "$found" "$out/lib/$name" ;;
    esac
  done
  cp scripts/gpu-check.sh "$out/"
  mkdir -p "$out/fixtures" && cp tests/fixtures/train/tiny.toml "$out/fixtures/"
  {
    echo "Copy this directory to the GPU machine and run: bash gpu-check.sh run ."
    echo "It needs the NVIDIA driver there (libcuda.so.1, libnvidia-ml.so.1), python3, and"
    echo "for check 3 Open MPI's mpirun (libmpi.so.40). Bundled in lib/ (LD_LIBRARY_PATH):"
    ls "$out/lib"
    echo "codex-nccl needs:"
    readelf -d "$out/codex-nccl" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p'
  } | tee "$out/README.txt"
  ;;
run)
  b=${2:-.}
  codex="$b/codex"
  [ -x "$codex" ] || codex=target/release/codex
  export LD_LIBRARY_PATH="$b/lib:${LD_LIBRARY_PATH:-}"
  cfg="$b/fixtures/tiny.toml"; [ -f "$cfg" ] || cfg=tests/fixtures/train/tiny.toml
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  python3 - "$work/corpus.py" <<'EOF'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(300):
        f.write(f"def f{i}(x):\n    return x * {i % 7} + {i % 13}\n\n")
EOF
  common=(-c "$cfg" "data.inputs=[\"$work/corpus.py\"]" training.steps=30 checkpoint.every=0)
  "$codex" --json train "${common[@]}" -o "$work/cpu" training.device=\"cpu\" >"$work/cpu.ndjson"
  "$codex" --json train "${common[@]}" -o "$work/gpu" training.device=\"cuda\" >"$work/gpu.ndjson"
  read -r cpu0 gpu0 gpuN <<<"$(python3 - "$work/cpu.ndjson" "$work/gpu.ndjson" <<'EOF'
import json, sys
def steps(p):
    return [e["train_loss"] for e in map(json.loads, open(p)) if e.get("event") == "step"]
c, g = steps(sys.argv[1]), steps(sys.argv[2])
print(c[0], g[0], g[-1])
EOF
)"
  ok=$(python3 -c "print(int(abs($cpu0-$gpu0) <= 1e-3*abs($cpu0)))")
  check "cuda first-step loss" "$ok" "cpu $cpu0, cuda $gpu0 (tolerance 1e-3 relative)"
  ok=$(python3 -c "print(int($gpuN < $gpu0))")
  check "cuda loss falls" "$ok" "step 1 $gpu0 -> step 30 $gpuN"
  "$codex" metrics sample --gpu --json >"$work/sample.json"
  ok=$(python3 - "$work/sample.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
gpus = s.get("gpus") or []
print(int(bool(gpus) and all((g.get("gpu_mem_total_bytes") or 0) > 0 for g in gpus)))
EOF
)
  check "metrics sample --gpu" "$ok" "$(head -c 300 "$work/sample.json")"
  # 3. NCCL with one rank against the plain run, both with two micro-batches per step.
  nccl="$b/codex-nccl"
  [ -x "$nccl" ] || nccl=target/release/codex-nccl
  two=(training.device=\"cuda\" training.grad_accum=2)
  "$codex" --json train "${common[@]}" "${two[@]}" -o "$work/plain2" >"$work/plain2.ndjson"
  if ! command -v mpirun >/dev/null; then
    check "nccl one rank = plain run" 0 "no mpirun here: install Open MPI (openmpi-bin) for codex-nccl"
  elif ! [ -x "$nccl" ]; then
    check "nccl one rank = plain run" 0 "no codex-nccl binary (run the build half)"
  else
    for reduce in ordered native; do
      r="$work/nccl-$reduce"
      if OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        NCCL_DEBUG=INFO NCCL_DEBUG_FILE="$r.nccl-log" \
        mpirun -np 1 --bind-to none "$nccl" --json train "${common[@]}" "${two[@]}" -o "$r" \
          distributed.backend=\"nccl\" distributed.reduce=\"$reduce\" >"$r.ndjson" 2>"$r.err"; then
        ok=$(python3 - "$work/plain2.ndjson" "$r.ndjson" <<'EOF'
import json, sys
def steps(p):
    return [e["train_loss"] for e in map(json.loads, open(p)) if e.get("event") == "step"]
a, b = steps(sys.argv[1]), steps(sys.argv[2])
print(int(len(a) == 30 and a == b))
EOF
)
        check "nccl ($reduce) losses = plain run" "$ok" "30 steps' train_loss compared exactly"
        ck=checkpoints/step-00000030/model.safetensors
        if cmp -s "$work/plain2/$ck" "$r/$ck"; then
          check "nccl ($reduce) weights = plain run" 1 "model.safetensors identical"
        else
          check "nccl ($reduce) weights = plain run" 0 "model.safetensors differs (or is missing)"
        fi
        if grep -qs "Init COMPLETE" "$r".nccl-log*; then
          check "nccl ($reduce) used NCCL" 1 "$(grep -hs 'Init COMPLETE' "$r".nccl-log* | head -1)"
        else
          check "nccl ($reduce) used NCCL" 0 "no communicator in NCCL's log"
        fi
      else
        check "nccl ($reduce) one rank = plain run" 0 "$(tail -3 "$r.err")"
      fi
    done
  fi
  exit $fail
  ;;
*)
  sed -n '2,22p' "$0"
  exit 2
  ;;
esac
