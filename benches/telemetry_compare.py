#!/usr/bin/env python3
"""codex telemetry vs psutil, in the same run, at 1 Hz.

Runs `codex metrics watch --json --no-gpu --interval 1 --count N` and a psutil loop that
collects the same CPU-side fields (overall + per-core CPU %, load averages, memory, swap, and
for its own process tree: CPU %, RSS, threads, disk I/O counters) side by side for N seconds.

Reports, for each: the cost of one collection (codex: its own `sample_cost_us` field; psutil:
perf_counter around the same collection), and CPU overhead = CPU time used / wall time, as a
percentage of one core. codex's CPU time is the whole process (startup included, from
wait4's rusage); psutil's is the sampling loop alone (interpreter start-up excluded), which
favours psutil.

Usage: python benches/telemetry_compare.py [--codex target/release/codex] [--seconds 60]
(needs psutil: /opt/pyref/bin/python or the test-assets venv).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PSUTIL_LOOP = r"""
import json, os, sys, time, psutil
n, interval = int(sys.argv[1]), float(sys.argv[2])
me = psutil.Process()
psutil.cpu_percent(); psutil.cpu_percent(percpu=True); me.cpu_percent()  # prime, as codex does
known = {me.pid: me}
costs = []
cpu0 = time.process_time()
wall0 = time.perf_counter()
start = time.monotonic()
for k in range(1, n + 1):
    time.sleep(max(0.0, start + k * interval - time.monotonic()))
    t = time.perf_counter()
    tree = [me] + me.children(recursive=True)
    procs = []
    for p in tree:
        p = known.setdefault(p.pid, p)
        try:
            with p.oneshot():
                procs.append((p.cpu_percent(), p.memory_info().rss, p.num_threads(), p.io_counters()))
        except psutil.Error:
            pass
    rec = {
        "cpu_util_pct": psutil.cpu_percent(),
        "cpu_core_util_pct": psutil.cpu_percent(percpu=True),
        "load_avg": os.getloadavg(),
        "mem": psutil.virtual_memory()._asdict(),
        "swap": psutil.swap_memory()._asdict(),
        "proc_cpu_pct": sum(p[0] for p in procs),
        "proc_rss_bytes": sum(p[1] for p in procs),
        "proc_threads": sum(p[2] for p in procs),
        "proc_io": [sum(p[3].read_bytes for p in procs), sum(p[3].write_bytes for p in procs)],
    }
    costs.append((time.perf_counter() - t) * 1e6)
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()
cpu = time.process_time() - cpu0
wall = time.perf_counter() - wall0
print(json.dumps({"costs_us": costs, "cpu_s": cpu, "wall_s": wall}), file=sys.stderr)
"""


def summary(xs):
    xs = sorted(xs)
    return {
        "median": statistics.median(xs),
        "mean": statistics.fmean(xs),
        "p90": xs[int(0.9 * (len(xs) - 1))],
        "n": len(xs),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--codex", default="target/release/codex")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    n = int(args.seconds / args.interval)

    t0 = time.perf_counter()
    rust = subprocess.Popen(
        [args.codex, "metrics", "watch", "--json", "--no-gpu", "--interval", str(args.interval), "--count", str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    py = subprocess.Popen(
        [sys.executable, "-c", PSUTIL_LOOP, str(n), str(args.interval)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    py_out, py_err = py.communicate()
    rust_out = rust.stdout.read()
    _, status, ru = os.wait4(rust.pid, 0)
    wall_rust = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"codex failed: {rust.stderr.read().decode()}")
    if py.returncode != 0:
        sys.exit(f"psutil loop failed: {py_err.decode()}")

    lines = [json.loads(l) for l in rust_out.decode().splitlines()]
    rust_costs = [l["sample_cost_us"] for l in lines]
    rust_cpu = ru.ru_utime + ru.ru_stime
    py_stats = json.loads(py_err.decode().strip().splitlines()[-1])

    res = {
        "samples": {"codex": len(lines), "psutil": len(py_stats["costs_us"])},
        "sample_cost_us": {"codex": summary(rust_costs), "psutil": summary(py_stats["costs_us"])},
        "cpu_overhead_pct_of_one_core": {
            "codex (whole process)": 100.0 * rust_cpu / wall_rust,
            "psutil (loop only)": 100.0 * py_stats["cpu_s"] / py_stats["wall_s"],
        },
        "cpu_s": {"codex": rust_cpu, "psutil": py_stats["cpu_s"]},
        "wall_s": {"codex": wall_rust, "psutil": py_stats["wall_s"]},
    }
    res["psutil_over_codex_median_cost"] = (
        res["sample_cost_us"]["psutil"]["median"] / res["sample_cost_us"]["codex"]["median"]
    )
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
