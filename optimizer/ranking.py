"""Ranking of timed plans by an objective, with deterministic tie-breaking, and the cost-time Pareto set.

Objectives (best first):

* ``throughput``: most tokens per second while the job runs (nominal: every step counted);
* ``time_to_train``: most *effective* tokens per second, tokens/s x ETTR (:mod:`cost_model.goodput`:
  failures, checkpoints and restarts), the order of the effective time-to-train, and defined without a
  token budget;
* ``cost_per_token``: fewest effective GPU-seconds per token, the job's GPUs and its hot spares over
  tokens/s x ETTR (times the price per GPU-hour when known, which does not change the order within one
  cluster);
* ``mfu``: highest model FLOPs utilisation;
* ``memory_headroom``: least peak memory per GPU.

Ties (keys equal after rounding to 9 decimal digits of the key's largest magnitude among the plans) fall
to less memory, then fewer GPUs, then the simpler plan (smaller cp, pp, vpp, tp, ... in that order), so
the same inputs always give the same list.

Ties within model error (:func:`tied_with_leader`): with an uncertainty band
(:mod:`cost_model.calibration.bands`), the leading plans whose throughput-like objective lies within the
band's ±figure of the leader's are reported as tied: the model cannot tell their order apart.
"""

from __future__ import annotations

import numpy as np

from cost_model.evaluate import PlanMetrics
from cost_model.plan import PlanArrays
from hardware.schema import ClusterSpec

# Among equally good plans, prefer the simpler one: fewer context, pipeline, virtual and tensor ranks,
# the plainer schedule (1F1B, interleaved before zero-bubble and DualPipe), a lower ZeRO stage, less recompute.
TIE_BREAK_COLUMNS = ("cp", "pp", "vpp", "schedule", "tp", "ep", "etp", "zero_stage", "recompute", "recompute_num_layers",
                     "recompute_modules", "sequence_parallel", "optimizer_offload", "micro_batch", "dp")


def gpu_seconds_per_token(metrics: PlanMetrics) -> np.ndarray:
    return metrics.plans.num_gpus / metrics.tokens_per_s


def effective_tokens_per_s(metrics: PlanMetrics) -> np.ndarray:
    """Tokens per second of wall time once failures, checkpoints and restarts are counted: tokens/s x ETTR."""
    return metrics.tokens_per_s * metrics.ettr


def effective_gpu_seconds_per_token(metrics: PlanMetrics) -> np.ndarray:
    """GPU-seconds per token of wall time, the hot spares' GPUs included: what effective cost is per token."""
    return (metrics.plans.num_gpus + metrics.spare_gpus) / effective_tokens_per_s(metrics)


def objective_key(metrics: PlanMetrics, objective: str) -> np.ndarray:
    """Smaller is better."""
    if objective == "throughput":
        return -metrics.tokens_per_s
    if objective == "time_to_train":
        return -effective_tokens_per_s(metrics)
    if objective == "cost_per_token":
        return effective_gpu_seconds_per_token(metrics)
    if objective == "mfu":
        return -metrics.mfu
    if objective == "memory_headroom":
        return metrics.memory_bytes
    raise ValueError(f"unknown objective {objective!r}")


def largest_magnitude(values: np.ndarray) -> float:
    """The largest finite magnitude among the values (0 when there is none). The maximum over chunks of
    plans is the value for all of them together, which lets a search that sees its plans a chunk at a
    time round against the scale of all of them."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(np.max(np.abs(finite))) if len(finite) else 0.0


def value_scale(values: np.ndarray) -> float:
    """The scale ranking rounds a key against: its largest finite magnitude, or 1 when that is 0."""
    return largest_magnitude(values) or 1.0


def _rounded(values: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Round to 9 significant digits of the scale (by default the largest finite magnitude among the
    values) so that equal predictions reached by different arithmetic tie."""
    values = np.asarray(values, dtype=float)
    return np.round(values / (value_scale(values) if scale is None else scale), 9)


def rank_order(metrics: PlanMetrics, cluster: ClusterSpec, objective: str,
               scales: tuple[float, float] | None = None) -> np.ndarray:
    """Indices of the plans, best first.

    ``scales`` (objective, memory) replaces the scales the keys are rounded against: a search that keeps
    only some of its plans passes the scales of all of them, so the kept plans fall in the same order."""
    return order_plans(metrics.plans, objective_key(metrics, objective), metrics.memory_bytes, scales)


def order_plans(plans: PlanArrays, key: np.ndarray, memory_bytes: np.ndarray,
                scales: tuple[float, float] | None = None) -> np.ndarray:
    """:func:`rank_order` on the plans' columns, objective key (smaller is better) and peak memory."""
    key_scale, memory_scale = scales if scales is not None else (None, None)
    columns = plans.to_columns()
    keys = [columns[name].astype(float) for name in reversed(TIE_BREAK_COLUMNS)]
    keys += [plans.num_gpus.astype(float), _rounded(memory_bytes, memory_scale), _rounded(key, key_scale)]
    return np.lexsort(keys)


LAYOUT_KEY = ("tp", "pp", "dp", "cp", "ep", "etp")


def best_per_layout(order: np.ndarray, metrics: PlanMetrics) -> np.ndarray:
    """``order`` keeping only the best-ranked plan of each layout (GPUs, tp, pp, dp, cp, ep, etp), so
    a top-K list shows K different layouts instead of K variants of one."""
    return first_per_layout(order, metrics.plans)


def layout_keys(plans: PlanArrays) -> np.ndarray:
    """One row per plan: its layout (GPUs, tp, pp, dp, cp, ep, etp)."""
    columns = plans.to_columns()
    return np.stack([plans.num_gpus] + [columns[name] for name in LAYOUT_KEY], axis=1)


def first_per_layout(order: np.ndarray, plans: PlanArrays) -> np.ndarray:
    """:func:`best_per_layout` on plan columns."""
    keys = layout_keys(plans)[order]
    _, first = np.unique(keys, axis=0, return_index=True)
    return order[np.sort(first)]


def pareto_front(time_s: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the plans no other plan beats on both time and cost, fastest first."""
    order = np.lexsort((cost, time_s))
    sorted_cost = np.asarray(cost, dtype=float)[order]
    cheapest_faster = np.concatenate([[np.inf], np.minimum.accumulate(sorted_cost)[:-1]])
    return order[sorted_cost < cheapest_faster]  # cheaper than every faster plan


THROUGHPUT_LIKE = ("throughput", "time_to_train", "cost_per_token", "mfu")
"""Objectives whose value scales with the predicted throughput (tokens/s, GPU-seconds per token and MFU
are all set by the step time), so that the throughput band is their band too. ``memory_headroom`` is a
memory figure: the band says nothing about its ties."""


def objective_goodness(metrics: PlanMetrics, objective: str) -> np.ndarray | None:
    """The objective as a bigger-is-better quantity proportional to throughput (tokens/s, tokens/s per
    GPU, MFU); None for an objective the throughput band does not apply to."""
    if objective == "throughput":
        return np.asarray(metrics.tokens_per_s, dtype=float)
    if objective == "time_to_train":
        return np.asarray(effective_tokens_per_s(metrics), dtype=float)
    if objective == "cost_per_token":
        return 1 / effective_gpu_seconds_per_token(metrics)
    if objective == "mfu":
        return np.asarray(metrics.mfu, dtype=float)
    return None


def tied_with_leader(goodness: np.ndarray, plus_minus: float) -> int:
    """How many leading plans (best first, as ranked) are tied with the first within model error: the
    longest run of plans 1..k whose value is at least ``(1 - plus_minus)`` times plan 1's, i.e. each lies
    inside plan 1's ± band. 1 when only the leader does (or there is no plan: 0).

    Why inside one band, not two bands overlapping (runner-up's high >= leader's low): the band is the
    error of one prediction, and most of it is shared by the plans of one model on one cluster and stack
    (a leave-one-source-out residual is mostly its source's offset, which moves every plan of the source
    together). Overlapping bands would count the two plans erring in opposite directions at once, about
    twice the band: with a ±11% band every plan within 24% of the leader would be "tied". A runner-up
    inside the leader's band is one whose gap is smaller than the error of a single prediction."""
    goodness = np.asarray(goodness, dtype=float)
    if len(goodness) == 0:
        return 0
    inside = goodness >= goodness[0] * (1 - plus_minus)
    return int(np.argmin(inside)) if not inside.all() else len(goodness)
