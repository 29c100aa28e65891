"""Sweep throughput: 1,000 generated scenarios through `run_sweep` on the local process pool.

Run:  python benchmarks/sweep_speed.py [--workers N] [--scenarios N] [--keep DIR]

The sweep (AXES): Llama 3 8B, Qwen2.5 7B, Mixtral 8x7B and Llama 3 70B on 8, 16, 32 and 64 H100s and
16 B200s, sequence lengths 2K-32K, 2M- and 4M-token batches, NICs of 50-800 Gb/s: 4 x 5 x 5 x 2 x 5
= 1,000 scenarios, dense and MoE mixed. Every scenario runs the full default search (top 3 plans) and,
where nothing fits, the explanation (several what-if searches). Parts are written to a fresh temporary
directory (so nothing is resumed), fsynced, and combined into results.parquet, all inside the timing.

``--scenarios N`` runs every (1000 / N)-th scenario only (an even spread over models and sizes, so the
rate carries over) and extrapolates the time of all 1,000, for a quick measurement.

Prints the wall time, the rate and the status counts, then where the CPU time went: the workers'
searches, and the main process's share (expansion, resume check, part writes, combining the table),
which is what the sweep machinery costs. On a shared machine the wall time varies with the other load
(the one-minute load average is printed with it); the CPU figures do not, and their sum divided by
the workers is what the sweep takes on a quiet machine. Target: < 60 s on a 2-core machine. Unlike the
other benchmarks this one is not pinned to one core: it measures the pool on every core.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import scenarios.runner as runner  # noqa: E402
from scenarios.runner import run_sweep  # noqa: E402
from scenarios.sweep_file import sweep_from_mapping  # noqa: E402

# 4 models x 5 clusters (8-64 GPUs) x 5 sequence lengths x 2 batches x 5 NIC speeds = 1,000 scenarios
AXES = {
    "model": ["llama3-8b", "qwen2.5-7b", "mixtral-8x7b", "llama3-70b"],
    "cluster": ["h100x8", "h100x16", "h100x32", "h100x64", "b200x16"],
    "seq_length": [2048, 4096, 8192, 16384, 32768],
    "global_batch_tokens": [2097152, 4194304],
    "train_tokens": [1e12],
    "overrides": {"topology.nic_gbps": [50, 100, 200, 400, 800], "economics.price_per_gpu_hour_usd": [2.5]},
}
TOTAL = 1000
TARGET_S = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    parser.add_argument("--scenarios", type=int, default=TOTAL, help="run an even subset of this many and extrapolate")
    parser.add_argument("--keep", type=Path, default=None, help="write into this directory instead of a temporary one")
    args = parser.parse_args()
    sweep = sweep_from_mapping({"name": "speed", "top_k": 3, "axes": AXES}, source="benchmarks/sweep_speed.py")
    assert sweep.num_scenarios == TOTAL, sweep.num_scenarios
    if args.scenarios < TOTAL:
        _subset(max(args.scenarios, 1))
    load = os.getloadavg()[0]
    main_before, children_before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.keep or Path(scratch)
        start = time.perf_counter()
        run = run_sweep(sweep, out, workers=args.workers, progress=False, scenario_timeout_s=0)
        seconds = time.perf_counter() - start
    main_cpu = _cpu(resource.getrusage(resource.RUSAGE_SELF)) - _cpu(main_before)
    workers_cpu = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - _cpu(children_before)
    if run.backend == "serial":  # the searches ran in this process
        workers_cpu, main_cpu = main_cpu, 0.0
        workers = 1
    else:
        workers = int(run.backend.split()[0])
    best = run.frame[(run.frame["status"] != "ok") | (run.frame["rank"] == 1)]
    counts = best["status"].value_counts().to_dict()
    print(f"{run.scenarios} scenarios on {run.backend} (os.cpu_count() = {os.cpu_count()}, load average "
          f"{load:.1f}): {seconds:.1f} s, {run.scenarios / seconds:.1f} scenarios/s; {len(run.frame)} rows; "
          + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "no_fit", "error")))
    print(f"CPU: workers {workers_cpu:.1f} s ({workers_cpu / run.scenarios * 1e3:.0f} ms per scenario), main process "
          f"{main_cpu:.1f} s (expansion, part writes, table); on a quiet machine about "
          f"{(workers_cpu + main_cpu) / workers:.1f} s")
    total = seconds * TOTAL / run.scenarios
    if run.scenarios < TOTAL:
        print(f"extrapolated to {TOTAL:,} scenarios: {total:.0f} s wall, about "
              f"{(workers_cpu + main_cpu) / workers * TOTAL / run.scenarios:.0f} s on a quiet machine")
    print(f"target < {TARGET_S:.0f} s: {'met' if total < TARGET_S else 'MISSED'}")


def _subset(count: int) -> None:
    """Run every (TOTAL / count)-th scenario: wrap expand so the sweep holds only those, renumbered."""
    step = TOTAL / count
    real = runner.expand

    def expand_subset(sweep):
        tasks = real(sweep)
        return [tasks[int(i * step)] for i in range(count)]

    runner.expand = expand_subset


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
