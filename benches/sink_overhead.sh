#!/usr/bin/env bash
# Sink overhead: training tokens/s of the same run with no tracker and with every tracker on
# (TensorBoard + CSV + MLflow to a local `mlflow server`), interleaved, REPEAT times each.
#
#   bash benches/sink_overhead.sh                      # release build, 3 pairs of runs
#   CODEX=target/debug/codex REPEAT=2 STEPS=200 bash benches/sink_overhead.sh
#
# Reported per run: tokens/s of the `end` event (step time only, so it shows what the sinks'
# threads and the local server take from training through CPU contention) and the `end`
# event's wall time (which also holds the time spent in the sinks' emit calls and the final
# drain). log_every=1, so every step reaches every sink: the worst case. TRACK chooses the
# trackers (default tensorboard,csv,mlflow). Needs mlflow (scripts/test-assets.sh installs it;
# PYTHON=... to choose another). The machine may be shared: read the median ratio of one run.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-300}
REPEAT=${REPEAT:-3}
TRACK=${TRACK:-tensorboard,csv,mlflow}
PY=${PYTHON:-target/test-assets/venv/bin/python}
"$PY" -c 'import mlflow' 2>/dev/null || { echo "error: $PY cannot import mlflow (bash scripts/test-assets.sh, or PYTHON=...)" >&2; exit 1; }
if [ -z "${CODEX:-}" ]; then
  echo "building codex (release)..." >&2
  cargo build --release --quiet --bin codex
  CODEX=target/release/codex
fi
work=$(mktemp -d)
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
setsid "$PY" -m mlflow server --host 127.0.0.1 --port "$port" --workers 1 \
  --backend-store-uri "sqlite:///$work/mlflow.db" --artifacts-destination "$work/artifacts" \
  >"$work/server.log" 2>&1 &
server=$!
trap 'kill -- -$server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 120); do
  "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/health')" 2>/dev/null && break
  sleep 0.5
done
"$PY" - <<'PYCORPUS' >"$work/corpus.py"
for i in range(3000):
    print(f"def f{i}(x):\n    return x * {i % 7} + {i % 13}\n")
PYCORPUS
tps() { "$PY" -c 'import json,sys; e=[json.loads(l) for l in open(sys.argv[1])][-1]; print(e["tokens_per_s"], e["elapsed_s"])' "$1/metrics.ndjson"; }
run() { # name, extra args...
  local out="$work/$1"; shift
  "$CODEX" --no-progress -q train --config tests/fixtures/train/tiny.toml \
    "data.inputs=[\"$work/corpus.py\"]" "output.dir=\"$out\"" "training.steps=$STEPS" \
    training.log_every=1 training.eval_every=100 checkpoint.every=100000 "$@" >/dev/null
  tps "$out"
}
echo "trackers: $TRACK, $STEPS steps"
echo "run  none_tok_s  sinks_tok_s  tok_s_ratio  none_wall_s  sinks_wall_s"
ratios=()
for i in $(seq 1 "$REPEAT"); do
  read -r a aw < <(run "plain-$i")
  read -r b bw < <(MLFLOW_TRACKING_URI="http://127.0.0.1:$port" run "sinks-$i" --track "$TRACK")
  r=$("$PY" -c "print(f'{$b/$a:.3f}')")
  ratios+=("$r")
  printf '%s  %.0f  %.0f  %s  %.2f  %.2f\n' "$i" "$a" "$b" "$r" "$aw" "$bw"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print "median tokens/s ratio (sinks / none):", a[int((NR+1)/2)]}'
