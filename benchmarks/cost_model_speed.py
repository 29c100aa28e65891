"""Cost-model throughput: price 10^6 valid plans for Llama 3 405B on 16,384 H100 in one vectorised call.

Run:  python benchmarks/cost_model_speed.py [--plans 1000000] [--runs 3] [--seed 0]

The plans are drawn with replacement from the search's own candidate list (``candidate_groups`` +
``expand_recompute``, valid recompute options only; 57,104 distinct plans at seq 8192, global batch
2048), so every one passes the plan rules. Prints, for ``predict_memory`` alone and for ``evaluate``
(memory + time + economics), the median of ``--runs`` calls after one warm-up call: seconds, plans/s and
µs/plan; and, for comparison, ``evaluate`` as a Python loop over chunks of ``--chunk`` plans (16,384 by
default; 0 skips it), which keeps the temporaries small enough to avoid page faults.

Target: ``evaluate`` on 10^6 plans in under 3 s on one core.

The process is pinned to one core (where the OS allows) and BLAS/OpenMP thread pools are set to one
thread before numpy is imported. Interpreter start, imports and building the plans are not timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_core import PINNED  # noqa: E402  (before numpy: pins the core and the thread pools)

import argparse  # noqa: E402
import datetime  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from cost_model.evaluate import evaluate, predict_memory  # noqa: E402
from cost_model.model_loader import build_training, load_model  # noqa: E402
from hardware.loader import load_cluster  # noqa: E402
from optimizer.layout_model import LayoutModel  # noqa: E402
from optimizer.search import Scenario, candidate_groups, expand_recompute  # noqa: E402

TARGET_S_PER_MILLION = 3.0


def build_plans(n: int, seed: int):
    model_input = load_model("llama3-405b")
    overrides = dict(model_input.training_overrides)
    overrides.pop("global_batch_tokens", None)
    overrides.update(seq_length=8192, global_batch_size=2048)
    training = build_training(overrides, source="llama3-405b")
    scenario = Scenario(model=model_input.spec, training=training, cluster=load_cluster("h100x16384"))
    layouts = LayoutModel(scenario.model, scenario.training, scenario.cluster, scenario.options,
                          scenario.gpu_counts).enumerate_layouts()
    plans, option_valid = expand_recompute(scenario, candidate_groups(scenario, layouts))
    distinct = plans.take(np.flatnonzero(option_valid.ravel()))
    index = np.random.default_rng(seed).integers(0, len(distinct), size=n)
    return scenario, distinct, distinct.take(index)


def timed(call, runs: int) -> tuple[float, float, list[float]]:
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=1_000_000, help="plans priced in one call")
    parser.add_argument("--runs", type=int, default=3, help="timed calls after the warm-up (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=16384,
                        help="also time evaluate as a loop over chunks of this many plans (0 = skip)")
    args = parser.parse_args()

    print(f"plan-search cost-model benchmark  {datetime.date.today().isoformat()}  python "
          f"{platform.python_version()}  numpy {np.__version__}  {os.cpu_count()} CPUs, {PINNED}")
    start = time.perf_counter()
    scenario, distinct, plans = build_plans(args.plans, args.seed)
    print(f"Llama 3 405B on h100x16384, seq 8192, global batch 2048: {args.plans:,} plans drawn from "
          f"{len(distinct):,} valid candidates (built in {time.perf_counter() - start:.2f} s, not timed)")

    model, training, cluster, costs = scenario.model, scenario.training, scenario.cluster, scenario.costs
    target = TARGET_S_PER_MILLION * args.plans / 1e6
    rows = [
        ("predict_memory", lambda: predict_memory(model, training, plans, costs)),
        ("evaluate", lambda: evaluate(model, training, cluster, plans, costs)),
    ]
    results = {}
    for name, call in rows:
        first, median, times = timed(call, args.runs)
        results[name] = median
        print(f"{name:<15} first call {first:.3f} s | median of {args.runs} {median:.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}) | {args.plans / median:,.0f} plans/s | "
              f"{median / args.plans * 1e6:.3f} µs/plan")
    if args.chunk:
        def chunked():
            for i in range(0, len(plans), args.chunk):
                evaluate(model, training, cluster, plans.take(slice(i, i + args.chunk)), costs)
        first, median, times = timed(chunked, args.runs)
        print(f"{'evaluate, chunks':<15} of {args.chunk:,} plans (for comparison, not the target figure): median "
              f"{median:.3f} s (min {min(times):.3f}, max {max(times):.3f}) | {args.plans / median:,.0f} plans/s | "
              f"{median / args.plans * 1e6:.3f} µs/plan")
    met = results["evaluate"] < target
    print(f"target: evaluate on {args.plans:,} plans < {target:.2f} s (3 s per 10^6) on one core: "
          f"{'MET' if met else 'MISSED'} ({results['evaluate']:.3f} s)")


if __name__ == "__main__":
    main()
