"""Serving search speed: ``plan-search serve`` on a 64-GPU cluster with the full knob grid.

Run:  python benchmarks/serve_speed.py [--runs 3] [--only deepseek]

For each scenario the full grid is searched: weight precisions bf16, fp8 (and fp4 on Blackwell), KV
dtypes bf16 and fp8, aggregated and disaggregated plans, every TP / PP / attention-DP / EP / MoE-TP
layout of the grid, max_num_seqs 1..1024, three chunk budgets, CUDA graphs on and off, replicas up to
the budget. It prints the plans priced, the plans that meet the SLO, the first call (warm-up) and the
median of ``--runs`` later calls split into enumeration (the grid and the disaggregated phase screen)
and pricing (the chunked cost-model calls), and µs per plan. Target (issue 15): under 2 s per scenario.

The process is pinned to one core (where the OS allows) and BLAS/OpenMP thread pools are set to one
thread before numpy is imported. Interpreter start and imports are not timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_core import PINNED  # noqa: E402  (before numpy: pins the core and the thread pools)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from cost_model.model_loader import load_model  # noqa: E402
from cost_model.serving.workload import load_workload  # noqa: E402
from hardware.loader import load_cluster  # noqa: E402
from optimizer.serving.grid import ServingGrid  # noqa: E402
from optimizer.serving.inputs import precision_supported  # noqa: E402
from optimizer.serving.search import ServingScenario, search_serving  # noqa: E402

# (label, model preset, cluster preset, workload preset)
SCENARIOS = [
    ("Llama 3 70B / 64 H100 / chat-1k-1k", "llama3-70b", "h100x64", "chat-1k-1k"),
    ("DeepSeek-V3 / 64 H200 / chat-1k-1k", "deepseek-v3", "h200x64", "chat-1k-1k"),
    ("GPT-OSS 120B / 64 B200 / reasoning-1k-8k", "gpt-oss-120b", "b200x64", "reasoning-1k-8k"),
]
TARGET_S = 2.0


def scenario(model_name: str, cluster_name: str, workload_name: str) -> ServingScenario:
    model, cluster = load_model(model_name).spec, load_cluster(cluster_name)
    precisions = tuple(p for p in ("bf16", "fp8", "fp4") if precision_supported(cluster.gpu, p))
    grid = ServingGrid(max_gpus=cluster.num_gpus, is_moe=bool(model.num_experts), num_experts=model.num_experts,
                       num_layers=model.num_layers, weight_precisions=precisions,
                       kv_dtypes=tuple(k for k in ("bf16", "fp8") if precision_supported(cluster.gpu, k)),
                       modes=("agg", "disagg"))
    return ServingScenario(model=model, cluster=cluster, workload=load_workload(workload_name), grid=grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=None, help="Run only scenarios whose label contains this text.")
    parser.add_argument("--exhaustive", action="store_true", help="Price every plan of the grid (no coarse pass).")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {'pinned to one core' if PINNED else 'not pinned'}")
    print(f"{'scenario':44s} {'plans':>9s} {'meet SLO':>9s} {'first s':>8s} {'median s':>9s} {'cpu s':>6s} {'enum s':>7s} "
          f"{'price s':>8s} {'us/plan':>8s}  target < {TARGET_S:g} s")
    for label, model, cluster, workload in SCENARIOS:
        if args.only and args.only.lower() not in label.lower():
            continue
        problem = dataclasses.replace(scenario(model, cluster, workload), exhaustive=args.exhaustive)
        started = time.perf_counter()
        result = search_serving(problem, pareto=True)
        first = time.perf_counter() - started
        runs, cpu = [], []
        for _ in range(args.runs):
            cpu_started = time.process_time()
            runs.append(search_serving(problem, pareto=True).seconds)
            cpu.append(time.process_time() - cpu_started)
        median = statistics.median(r["total"] for r in runs)
        enum = statistics.median(r["enumerate"] for r in runs)
        price = statistics.median(r["price"] for r in runs)
        cpu_s = statistics.median(cpu)
        print(f"{label:44s} {result.candidates:9,d} {result.meeting_slo:9,d} {first:8.2f} {median:9.2f} {cpu_s:6.2f} "
              f"{enum:7.2f} {price:8.2f} {1e6 * median / max(result.candidates, 1):8.2f}  "
              f"{'ok' if min(median, cpu_s) < TARGET_S else 'SLOW'}")


if __name__ == "__main__":
    main()
