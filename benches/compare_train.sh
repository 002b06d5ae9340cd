#!/usr/bin/env bash
# codex train vs PyTorch CPU on the nanoGPT benchmark of issue 7, back to back in one run.
#
#   bash benches/compare_train.sh                 # small and medium, 30 timed steps each
#   STEPS=20 WARMUP=3 CONFIGS=small bash benches/compare_train.sh
#   DTYPE=bf16 bash benches/compare_train.sh      # PyTorch autocast bf16 vs codex training.dtype=bf16
#   BLAS=wheel bash benches/compare_train.sh      # codex on OpenBLAS (training.blas; benches/blas.sh)
#   REPEAT=5 bash benches/compare_train.sh        # 5 back-to-back pairs per config, medians
#
# For each config: PyTorch (benches/pytorch_gpt.py, torch.set_num_threads(THREADS)) and
# `codex train --config configs/bench-<config>.toml` (release build, RAYON_NUM_THREADS=THREADS)
# train on the same byte corpus with the same model, optimizer and batch. tokens/s: PyTorch
# times STEPS steps after WARMUP; codex's is its metrics.ndjson `end` event (training steps only,
# over WARMUP+STEPS steps, so it includes codex's first steps). Peak RSS: /usr/bin/time -v for
# both. The loss is the training loss of the last step. Ratios > 1 mean codex is faster / uses
# more memory. The machine may be shared: compare ratios from one run, not absolute numbers.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-30}
WARMUP=${WARMUP:-5}
THREADS=${THREADS:-2}
CONFIGS=${CONFIGS:-"small medium"}
REPEAT=${REPEAT:-1}
DTYPE=${DTYPE:-f32}
PY=${PYTHON:-/opt/pyref/bin/python}
DATA=data/cpython-stdlib.txt

"$PY" -c 'import torch' 2>/dev/null || { echo "error: $PY cannot import torch (set PYTHON=...)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
echo "building codex (release)..." >&2
cargo build --release --quiet --bin codex
CODEX=(target/release/codex --no-progress -q train)
# shellcheck source=benches/blas.sh
. benches/blas.sh

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rss_kib() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

rows=()
for cfg in $CONFIGS; do
    py_all=() cx_all=() ratios=() py_rss=0 cx_rss=0
    for round in $(seq "$REPEAT"); do
        echo "== $cfg ($round/$REPEAT): pytorch" >&2
        /usr/bin/time -v -o "$work/py.time" "$PY" benches/pytorch_gpt.py --config "$cfg" \
            --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" --data "$DATA" \
            --dtype "$DTYPE" > "$work/py.json"
        py_tps=$(jq -r .tokens_per_s "$work/py.json")
        py_loss=$(jq -r .loss "$work/py.json")
        py_rss=$(( $(rss_kib "$work/py.time") > py_rss ? $(rss_kib "$work/py.time") : py_rss ))

        echo "== $cfg ($round/$REPEAT): codex" >&2
        out="$work/run-$cfg-$round"
        RAYON_NUM_THREADS=$THREADS /usr/bin/time -v -o "$work/cx.time" "${CODEX[@]}" \
            --config "configs/bench-$cfg.toml" --output "$out" \
            "training.steps=$((STEPS + WARMUP))" "training.dtype=$DTYPE" "${BLAS_ARGS[@]}" > /dev/null
        end=$(jq -c 'select(.event == "end")' "$out/metrics.ndjson" | tail -n 1)
        [ -n "$end" ] || { echo "error: no end event in $out/metrics.ndjson" >&2; exit 1; }
        cx_tps=$(jq -r .tokens_per_s <<< "$end")
        cx_loss=$(jq -r .train_loss <<< "$end")
        cx_rss=$(( $(rss_kib "$work/cx.time") > cx_rss ? $(rss_kib "$work/cx.time") : cx_rss ))
        py_all+=("$py_tps") cx_all+=("$cx_tps")
        ratios+=("$(awk -v a="$cx_tps" -v b="$py_tps" 'BEGIN { print a / b }')")
        echo "   pytorch $py_tps tok/s, codex $cx_tps tok/s" >&2
    done
    # Medians over the rounds; the ratio is the median of each round's own ratio (a round's two
    # runs are back to back, so a slow spell of a shared machine hits both).
    py_med=$(printf '%s\n' "${py_all[@]}" | median)
    cx_med=$(printf '%s\n' "${cx_all[@]}" | median)
    ratio=$(printf '%s\n' "${ratios[@]}" | median)
    rows+=("$(awk -v c="$cfg" -v pt="$py_med" -v ct="$cx_med" -v r="$ratio" -v pr="$py_rss" \
        -v cr="$cx_rss" -v pl="$py_loss" -v cl="$cx_loss" -v all="$(printf '%s ' "${ratios[@]}")" 'BEGIN {
        n = split(all, rs, " "); lo = rs[1]; hi = rs[1]
        for (i = 2; i <= n; i++) { if (rs[i] < lo) lo = rs[i]; if (rs[i] > hi) hi = rs[i] }
        printf "| %s | %.0f | %.0f | %.2fx (%.2f-%.2f) | %.0f | %.0f | %.2fx | %.4f | %.4f |", \
            c, pt, ct, r, lo, hi, pr / 1024, cr / 1024, cr / pr, pl, cl }')")
done

echo "codex: ${CODEX[*]} ${BLAS_ARGS[*]} (GEMM: $BLAS_NAME)"
echo "dtype: $DTYPE, steps timed: $STEPS after $WARMUP warm-up, rounds: $REPEAT (medians; ratio range in brackets), threads: $THREADS, $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| config | pytorch tok/s | codex tok/s | speed ratio | pytorch RSS MiB | codex RSS MiB | RSS ratio | pytorch loss | codex loss |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
