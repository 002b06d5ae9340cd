#!/usr/bin/env bash
# The GPU checks, in two halves (see ../shared/design/GPU.md for the toolkit from PyPI):
#
#   bash scripts/gpu-check.sh build [OUT]   on the build machine (no GPU needed): builds
#       `codex` with --features cuda and puts it, with the CUDA libraries it loads and a
#       list of what they are, into OUT (default target/gpu-bundle).
#   bash scripts/gpu-check.sh run [BUNDLE]  on a machine with an NVIDIA GPU and driver:
#       1. a CUDA training run whose first-step loss matches the CPU run of the same seed
#          within 1e-3 relative (TF32/cuBLAS kernels sum in another order than the CPU
#          kernels; bit equality is not expected), and whose loss falls;
#       2. `codex metrics sample --gpu --json` with real values (a GPU, its memory, util);
#       3. NCCL with one rank equal to the plain run — only once the `nccl` engine exists:
#          this build refuses backend = "nccl" and the check says so (it fails, it does not
#          pass silently).
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
  : "${CUDA_ROOT:?set CUDA_ROOT (and PATH, CUDA_COMPUTE_CAP) as ../shared/design/GPU.md says}"
  cargo build --release --locked --features cuda
  mkdir -p "$out/lib"
  cp target/release/codex "$out/"
  # The shared libraries the binary needs besides the driver's libcuda.so.1.
  ldd target/release/codex | awk '/=>/ {print $1, $3}' | while read -r name path; do
    case "$name" in
      libcublas*|libcudart*|libcurand*|libnvrtc*|libcublasLt*)
        [ -e "$path" ] && cp -L "$path" "$out/lib/$name" ;;
    esac
  done
  cp scripts/gpu-check.sh "$out/"
  mkdir -p "$out/fixtures" && cp tests/fixtures/train/tiny.toml "$out/fixtures/"
  {
    echo "Copy this directory to the GPU machine and run: bash gpu-check.sh run ."
    echo "It needs the NVIDIA driver there (libcuda.so.1, libnvidia-ml.so.1); bundled:"
    ls "$out/lib"
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
  if "$codex" train "${common[@]}" -o "$work/nccl" training.device=\"cuda\" distributed.backend=\"nccl\" 2>"$work/nccl.err"; then
    cmp -s "$work/gpu/checkpoints/step-00000030/model.safetensors" "$work/nccl/checkpoints/step-00000030/model.safetensors" \
      && check "nccl one rank = plain run" 1 "model.safetensors identical" \
      || check "nccl one rank = plain run" 0 "model.safetensors differs"
  else
    check "nccl one rank = plain run" 0 "$(tail -1 "$work/nccl.err")"
  fi
  exit $fail
  ;;
*)
  sed -n '2,16p' "$0"
  exit 2
  ;;
esac
