#!/usr/bin/env bash
# gemm's AVX-512 kernels (`x86-v4`, which codex's workspace enables) vs its default AVX2/FMA
# kernels, GFLOP/s side by side at codex's training shapes (benches/gemm-probe). On a CPU without
# AVX-512 both columns run the AVX2 kernels (gemm picks at run time).
#
#   bash benches/gemm_avx512.sh            # RAYON_NUM_THREADS=2
set -euo pipefail
cd "$(dirname "$0")/gemm-probe"
export CARGO_TARGET_DIR=../../target/gemm-probe RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
cp "$CARGO_TARGET_DIR/release/gemm-probe" "$CARGO_TARGET_DIR/avx2"
cargo build --release --quiet --features v4
cp "$CARGO_TARGET_DIR/release/gemm-probe" "$CARGO_TARGET_DIR/avx512"
echo "threads: $RAYON_NUM_THREADS, load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| m x k x n | AVX2 GFLOP/s | AVX-512 GFLOP/s | ratio |"
echo "|---|---|---|---|"
paste <("$CARGO_TARGET_DIR/avx2") <("$CARGO_TARGET_DIR/avx512") \
    | awk -F'\t' '{ printf "| %s | %.0f | %.0f | %.2fx |\n", $1, $2, $4, $4 / $2 }'
