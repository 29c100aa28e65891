"""Search speed on representative scenarios, against a naive per-plan Python loop over the same space.

Run:  python benchmarks/search_speed.py [--runs 5] [--sample 2000] [--seed 0] [--only deepseek]

For each scenario (full default knob grid, default SearchOptions):

* the vectorised search: layouts, candidate plans, feasible plans, plans timed; the first call
  (warm-up) and the median of ``--runs`` further calls, per phase (``SearchResult.seconds``) and total;
* a naive loop over the *same* candidate plans (``candidate_groups`` + ``expand_recompute``, the valid
  recompute options only): ``evaluate`` on a 1-plan PlanArrays per plan in a Python ``for`` loop,
  keeping the best plan that fits. It is timed on a random sample of ``--sample`` plans (fixed seed)
  and extrapolated linearly to the full candidate count. The 1-plan PlanArrays are built before the
  clock starts, so the naive figure is a lower bound (it leaves out building the plans and the layout
  enumeration, which the search's figure includes);
* the speed-up: naive extrapolated / search median.

Targets: each scenario's own (Llama 3 405B on 16,384 H100 under 1 s, issue 14; DeepSeek-V3 on 2,048 H800 under
2 s, issue 18; Llama 3 70B under 1 s) on one core; at least 20x faster than the naive loop.

``--gpu-range`` runs instead the scale scenario of issue 20: DeepSeek-V3 on h100x1048576 (seq 4096, global
batch 8192) over the GPU counts of ``--gpus 2048-1048576`` (every power of two from 2,048 to 1,048,576),
once with the Pareto front kept, and prints seconds, the counts and the process's peak RSS
(``resource.getrusage``). Targets: under 10 s and under 1 GiB.

The process is pinned to one core (where the OS allows) and BLAS/OpenMP thread pools are set to one
thread before numpy is imported. Interpreter start and imports are not timed.
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
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from cost_model.evaluate import evaluate  # noqa: E402
from cost_model.model_loader import build_training, load_model  # noqa: E402
from hardware.loader import load_cluster  # noqa: E402
from optimizer.layout_model import LayoutModel  # noqa: E402
from optimizer.search import Scenario, candidate_groups, expand_recompute, search  # noqa: E402

# (label, model preset, cluster preset, sequence length, global batch in sequences, search-time target in s)
SCENARIOS = [
    ("Llama 3 405B / 16,384 H100", "llama3-405b", "h100x16384", 8192, 2048, 1.0),   # issue 14: under 1 s
    ("DeepSeek-V3 / 2,048 H800", "deepseek-v3", "h800x2048", 4096, 15360, 2.0),     # issue 18: under 2 s
    ("Llama 3 70B / 64 H100", "llama3-70b", "h100x64", 8192, 128, 1.0),
]

TARGET_SPEEDUP = 20.0
PHASES = ("layouts", "expand", "memory", "time", "rank")


def make_scenario(model_name: str, cluster_name: str, seq: int, batch: int) -> Scenario:
    model_input = load_model(model_name)
    overrides = dict(model_input.training_overrides)
    overrides.pop("global_batch_tokens", None)
    overrides.update(seq_length=seq, global_batch_size=batch)
    training = build_training(overrides, source=model_name)
    return Scenario(model=model_input.spec, training=training, cluster=load_cluster(cluster_name))


def candidate_plans(scenario: Scenario):
    """The plans the search prices for memory, restricted to the valid recompute options: the candidates."""
    layouts = LayoutModel(scenario.model, scenario.training, scenario.cluster, scenario.options,
                          scenario.gpu_counts).enumerate_layouts()
    groups = candidate_groups(scenario, layouts)
    plans, option_valid = expand_recompute(scenario, groups)
    return plans.take(np.flatnonzero(option_valid.ravel()))


def naive_loop(scenario: Scenario, single_plans: list) -> tuple[float, float]:
    """Evaluate one plan at a time and keep the best that fits; returns (best tokens/s, seconds)."""
    model, training, cluster, costs = scenario.model, scenario.training, scenario.cluster, scenario.costs
    limit = scenario.memory_limit_bytes
    start = time.perf_counter()
    best = -np.inf
    for plan in single_plans:
        metrics = evaluate(model, training, cluster, plan, costs)
        if metrics.memory_bytes[0] <= limit and metrics.tokens_per_s[0] > best:
            best = float(metrics.tokens_per_s[0])
    return best, time.perf_counter() - start


def bench(label: str, model_name: str, cluster_name: str, seq: int, batch: int, target_s: float, runs: int,
          sample: int, seed: int) -> dict:
    scenario = make_scenario(model_name, cluster_name, seq, batch)
    print(f"\n== {label}  ({model_name} on {cluster_name}, seq {seq}, global batch {batch})", flush=True)

    start = time.perf_counter()
    first = search(scenario)
    warm_up = time.perf_counter() - start
    results = [search(scenario) for _ in range(runs)]
    totals = [r.seconds["total"] for r in results]
    median_total = statistics.median(totals)
    phase = {p: statistics.median(r.seconds[p] for r in results) for p in PHASES}
    best_search = float(first.ranked.tokens_per_s[0]) if first.found else float("nan")

    print(f"layouts {first.num_layouts:,} | candidate plans {first.num_candidates:,} | "
          f"feasible {first.num_feasible:,} | timed {first.num_timed:,}")
    print(f"search, first call (warm-up): {warm_up:.3f} s")
    print(f"search, median of {runs}: {median_total:.3f} s  (min {min(totals):.3f}, max {max(totals):.3f})   "
          f"target < {target_s:.1f} s: {'MET' if median_total < target_s else 'MISSED'}")
    print("  phases (median s): " + "  ".join(f"{p} {phase[p]:.3f}" for p in PHASES))

    plans = candidate_plans(scenario)
    assert len(plans) == first.num_candidates, (len(plans), first.num_candidates)
    rng = np.random.default_rng(seed)
    k = min(sample, len(plans)) if sample > 0 else len(plans)
    index = np.sort(rng.choice(len(plans), size=k, replace=False))
    single = [plans.take(np.array([i])) for i in index]
    # one untimed plan first, so that the loop is timed warm
    evaluate(scenario.model, scenario.training, scenario.cluster, single[0], scenario.costs)
    best_sample, naive_s = naive_loop(scenario, single)
    per_plan = naive_s / k
    naive_full = per_plan * len(plans)
    speedup = naive_full / median_total
    print(f"naive loop: {k:,} sampled plans in {naive_s:.2f} s = {per_plan * 1e3:.3f} ms/plan; "
          f"extrapolated to {len(plans):,} plans: {naive_full:,.1f} s")
    print(f"speed-up (naive extrapolated / search median): {speedup:,.0f}x   "
          f"target >= {TARGET_SPEEDUP:.0f}x: {'MET' if speedup >= TARGET_SPEEDUP else 'MISSED'}")
    print(f"best tokens/s: search {best_search:,.0f} (whole space); naive sample best {best_sample:,.0f} "
          f"(sample only, so at most the search's)")
    if k == len(plans) and np.isfinite(best_sample):
        same = np.isclose(best_sample, best_search, rtol=1e-9)
        print(f"full naive run: best plan throughput {'matches' if same else 'DIFFERS from'} the search")
    return dict(label=label, layouts=first.num_layouts, candidates=first.num_candidates,
                feasible=first.num_feasible, timed=first.num_timed, warm_up=warm_up, search=median_total,
                phase=phase, naive_sample=naive_s, sample=k, naive_full=naive_full, speedup=speedup, target_s=target_s)


def bench_gpu_range() -> None:
    """The streaming search on a GPU range far larger than one chunk: time, counts and peak RSS."""
    from optimizer.search_options import SearchOptions

    scenario = make_scenario("deepseek-v3", "h100x1048576", 4096, 8192)
    counts = tuple(2048 * 2**k for k in range(10))
    scenario.options = SearchOptions(gpu_counts=counts)
    print(f"\n== DeepSeek-V3 on h100x1048576, seq 4096, global batch 8192, GPUs {counts[0]:,}-{counts[-1]:,} "
          f"({len(counts)} counts), with the Pareto front", flush=True)
    start = time.perf_counter()
    result = search(scenario, pareto=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"layouts {result.num_layouts:,} | candidate plans {result.num_candidates:,} | feasible "
          f"{result.num_feasible:,} | timed {result.num_timed:,}")
    print("  phases (s): " + "  ".join(f"{p} {result.seconds[p]:.3f}" for p in PHASES))
    print(f"search {seconds:.2f} s (target < 10 s: {'MET' if seconds < 10 else 'MISSED'}), peak RSS of the "
          f"process {peak:,.0f} MiB (target < 1,024 MiB: {'MET' if peak < 1024 else 'MISSED'})")
    print(f"best: {result.ranked.tokens_per_s[0]:,.0f} tokens/s on {result.ranked.plans.num_gpus[0]:,} GPUs; "
          f"Pareto plans: {len(result.pareto)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed search runs after the warm-up (median)")
    parser.add_argument("--sample", type=int, default=2000, help="plans in the naive loop's sample (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="run only scenarios whose label or model contains this")
    parser.add_argument("--gpu-range", action="store_true", help="run the 2,048-1,048,576 GPU range scenario only")
    args = parser.parse_args()
    if args.gpu_range:
        bench_gpu_range()
        return

    print(f"plan-search search benchmark  {datetime.date.today().isoformat()}  python {platform.python_version()}"
          f"  numpy {np.__version__}  {os.cpu_count()} CPUs, {PINNED}")
    rows = []
    for label, model_name, cluster_name, seq, batch, target_s in SCENARIOS:
        if args.only and args.only.lower() not in (label + model_name).lower():
            continue
        rows.append(bench(label, model_name, cluster_name, seq, batch, target_s, args.runs, args.sample, args.seed))

    print("\nSummary (search = median, one core; naive = extrapolated from the sample)")
    header = f"{'scenario':<28}{'layouts':>9}{'cands':>11}{'feasible':>10}{'timed':>9}{'warm-up':>9}" \
             f"{'search':>8}{'target':>8}{'naive':>10}{'speed-up':>10}"
    print(header)
    for r in rows:
        print(f"{r['label']:<28}{r['layouts']:>9,}{r['candidates']:>11,}{r['feasible']:>10,}{r['timed']:>9,}"
              f"{r['warm_up']:>8.3f}s{r['search']:>7.3f}s{r['target_s']:>7.1f}s{r['naive_full']:>9,.0f}s"
              f"{r['speedup']:>9,.0f}x")
    ok = all(r["search"] < r["target_s"] and r["speedup"] >= TARGET_SPEEDUP for r in rows)
    print(f"targets (search under each scenario's target, >= {TARGET_SPEEDUP:.0f}x naive): "
          f"{'all met' if ok else 'NOT all met'}")


if __name__ == "__main__":
    main()
