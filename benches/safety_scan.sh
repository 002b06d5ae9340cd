#!/usr/bin/env bash
# Scan throughput of `codex data scan` (default policy) beside detect-secrets 1.5.0 on the same
# files, in the same run: the CPython slice the repo ships, copied COPIES times (default 16) as
# separate files, plus one file of planted credentials from `codex data scan`'s own tests.
#   bash benches/safety_scan.sh            # needs scripts/test-assets.sh's venv (detect-secrets)
# Env: CODEX (binary; default target/release/codex, else target/debug/codex), COPIES.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
codex="${CODEX:-$root/target/release/codex}"
[ -x "$codex" ] || codex="$root/target/debug/codex"
ds="$root/target/test-assets/venv/bin/detect-secrets"
[ -x "$ds" ] || { echo "detect-secrets missing: run scripts/test-assets.sh" >&2; exit 2; }
copies="${COPIES:-16}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/corpus"
for i in $(seq 1 "$copies"); do cp "$root/data/cpython-stdlib.txt" "$work/corpus/part$i.py"; done
bytes=$(cat "$work/corpus"/* | wc -c)
mbs() { python3 -c "print(f'{$bytes/1e6/$1:.1f}')"; }
now() { python3 -c 'import time; print(time.perf_counter())'; }
echo "corpus: $copies files, $bytes bytes; $(nproc) cores; codex = $codex"
t0=$(now); "$codex" --json data scan "$work/corpus" > "$work/codex.json" || true; t1=$(now)
tc=$(python3 -c "print($t1-$t0)")
nc=$(python3 -c "import json; print(json.load(open('$work/codex.json'))['findings_total'])")
echo "codex data scan: $(printf %.2f "$tc") s, $(mbs "$tc") MB/s, $nc findings"
cd "$work/corpus"
t0=$(now); "$ds" scan --all-files . > "$work/ds.json"; t1=$(now)
td=$(python3 -c "print($t1-$t0)")
nd=$(python3 -c "import json; print(sum(len(v) for v in json.load(open('$work/ds.json'))['results'].values()))")
echo "detect-secrets scan: $(printf %.2f "$td") s, $(mbs "$td") MB/s, $nd findings"
