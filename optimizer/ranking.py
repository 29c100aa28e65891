"""Ranking of timed plans by an objective, with deterministic tie-breaking, and the cost-time Pareto set.

Objectives (best first):

* ``throughput`` and ``time_to_train``: most tokens per second (the same order: time = tokens / rate);
* ``cost_per_token``: fewest GPU-seconds per token (times the price per GPU-hour when known, which does
  not change the order within one cluster);
* ``mfu``: highest model FLOPs utilisation;
* ``memory_headroom``: least peak memory per GPU.

Ties (within 1e-9 relative) fall to less memory, then fewer GPUs, then the simpler plan (smaller cp,
pp, vpp, tp, ... in that order), so the same inputs always give the same list.
"""

from __future__ import annotations

import numpy as np

from cost_model.evaluate import PlanMetrics
from hardware.schema import ClusterSpec

# Among equally good plans, prefer the simpler one: fewer context, pipeline, virtual and tensor ranks,
# a lower ZeRO stage, less recompute.
TIE_BREAK_COLUMNS = ("cp", "pp", "vpp", "tp", "ep", "etp", "zero_stage", "recompute", "recompute_num_layers",
                     "recompute_modules", "sequence_parallel", "optimizer_offload", "micro_batch", "dp")


def gpu_seconds_per_token(metrics: PlanMetrics) -> np.ndarray:
    return metrics.plans.num_gpus / metrics.tokens_per_s


def objective_key(metrics: PlanMetrics, objective: str) -> np.ndarray:
    """Smaller is better."""
    if objective in ("throughput", "time_to_train"):
        return -metrics.tokens_per_s
    if objective == "cost_per_token":
        return gpu_seconds_per_token(metrics)
    if objective == "mfu":
        return -metrics.mfu
    if objective == "memory_headroom":
        return metrics.memory_bytes
    raise ValueError(f"unknown objective {objective!r}")


def _rounded(values: np.ndarray) -> np.ndarray:
    """Round to 9 significant digits so that equal predictions reached by different arithmetic tie."""
    values = np.asarray(values, dtype=float)
    scale = np.max(np.abs(values[np.isfinite(values)])) if np.any(np.isfinite(values)) else 1.0
    scale = scale or 1.0
    return np.round(values / scale, 9)


def rank_order(metrics: PlanMetrics, cluster: ClusterSpec, objective: str) -> np.ndarray:
    """Indices of the plans, best first."""
    columns = metrics.plans.to_columns()
    keys = [columns[name].astype(float) for name in reversed(TIE_BREAK_COLUMNS)]
    keys += [metrics.plans.num_gpus.astype(float), _rounded(metrics.memory_bytes),
             _rounded(objective_key(metrics, objective))]
    return np.lexsort(keys)


LAYOUT_KEY = ("tp", "pp", "dp", "cp", "ep", "etp")


def best_per_layout(order: np.ndarray, metrics: PlanMetrics) -> np.ndarray:
    """``order`` keeping only the best-ranked plan of each layout (GPUs, tp, pp, dp, cp, ep, etp), so
    a top-K list shows K different layouts instead of K variants of one."""
    columns = metrics.plans.to_columns()
    keys = np.stack([metrics.plans.num_gpus] + [columns[name] for name in LAYOUT_KEY], axis=1)[order]
    _, first = np.unique(keys, axis=0, return_index=True)
    return order[np.sort(first)]


def pareto_front(time_s: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the plans no other plan beats on both time and cost, fastest first."""
    order = np.lexsort((cost, time_s))
    sorted_cost = np.asarray(cost, dtype=float)[order]
    cheapest_faster = np.concatenate([[np.inf], np.minimum.accumulate(sorted_cost)[:-1]])
    return order[sorted_cost < cheapest_faster]  # cheaper than every faster plan
