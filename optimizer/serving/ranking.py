"""Serving objectives, deterministic ranking and the throughput-interactivity Pareto frontier.

Objectives (best first):

* ``goodput_per_gpu``: most requests per second per GPU that meet both SLOs (DistServe's goodput,
  Zhong et al. 2024 §2.1), every GPU of the plan counted;
* ``cost_per_mtok``: fewest dollars per million output tokens (every GPU, prefill and decode); without
  a price, fewest GPU-seconds per million output tokens, which orders plans the same way on one cluster;
* ``min_gpus``: fewest GPUs that serve the target rate or concurrency within the SLOs;
* ``throughput_per_gpu``: most output tokens per second per GPU at the operating point.

Ties (keys equal to 9 significant digits of the largest key) fall to the most goodput per GPU for
``min_gpus`` (a whole number, often tied), then to fewer GPUs, then the simpler plan
(aggregated before disaggregated, smaller pp, tp, ep, attn_dp, fewer instances, CUDA graphs on,
smaller batch and chunk budgets), so the same inputs always give the same order.

The Pareto frontier (:func:`pareto_front`) is the curve InferenceMAX and NVIDIA's serving reports draw:
output tokens/s per GPU (fleet efficiency) against tokens/s per user (interactivity, 1/TPOT); a plan is
on it when no other plan is at least as good on both and better on one.
"""

from __future__ import annotations

import numpy as np

from cost_model.serving.plan import ServingPlanArrays

OBJECTIVES = ("goodput_per_gpu", "cost_per_mtok", "min_gpus", "throughput_per_gpu")
NEEDS_TARGET = ("min_gpus",)
"""Objectives defined only against a target rate or concurrency."""

TIE_BREAK = ("mode", "pp", "tp", "ep", "attn_dp", "moe_tp", "instances", "eager", "max_num_seqs",
             "max_num_batched_tokens", "kv_dtype", "weight_precision")
"""Simplicity order among equally good plans, most important first."""


def objective_key(metrics, objective: str) -> np.ndarray:
    """Smaller is better; NaN (not defined for a plan) ranks last."""
    if objective == "goodput_per_gpu":
        key = -np.asarray(metrics.goodput_requests_per_s_per_gpu, dtype=float)
    elif objective == "cost_per_mtok":
        cost = np.asarray(metrics.cost_usd_per_m_output_tokens, dtype=float)
        if not np.isfinite(cost).any():  # no price: GPU-seconds per million output tokens
            cost = 1e6 / np.asarray(metrics.output_tokens_per_s_per_gpu, dtype=float)
        key = cost
    elif objective == "min_gpus":
        key = np.asarray(metrics.min_gpus_for_target, dtype=float)
    elif objective == "throughput_per_gpu":
        key = -np.asarray(metrics.output_tokens_per_s_per_gpu, dtype=float)
    else:
        raise ValueError(f"unknown objective {objective!r}; one of {', '.join(OBJECTIVES)}")
    return np.where(np.isfinite(key), key, np.inf)


def objective_value(metrics, objective: str) -> np.ndarray:
    """The objective in its own units and sign (for reports): req/s/GPU, $ or GPU-s per Mtok, GPUs, tok/s/GPU."""
    key = objective_key(metrics, objective)
    return -key if objective in ("goodput_per_gpu", "throughput_per_gpu") else key


def _rounded(values: np.ndarray, scale: float) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), np.round(values / (scale or 1.0), 9), np.inf)


def key_scale(key: np.ndarray) -> float:
    """Largest finite magnitude of a key (1 when none): what ties are rounded against. A search that
    sees plans a chunk at a time keeps the maximum over chunks so kept plans keep their order."""
    finite = np.abs(np.asarray(key, dtype=float)[np.isfinite(key)])
    return float(finite.max()) if len(finite) and finite.max() > 0 else 1.0


def tie_columns(plans: ServingPlanArrays) -> dict[str, np.ndarray]:
    """The :data:`TIE_BREAK` columns of each plan (decode instance layout; instances = all of them)."""
    d = plans.decode
    return {"mode": plans.mode, "pp": d.pp, "tp": d.tp, "ep": d.ep, "attn_dp": d.attn_dp, "moe_tp": d.moe_tp,
            "instances": plans.prefill_instances * plans.disaggregated + plans.decode_instances,
            "eager": (~d.cuda_graphs).astype(np.int64), "max_num_seqs": d.max_num_seqs,
            "max_num_batched_tokens": d.max_num_batched_tokens, "kv_dtype": d.kv_dtype,
            "weight_precision": d.weight_precision}


def secondary_key(metrics, objective: str) -> np.ndarray | None:
    """What orders plans the objective ties: ``min_gpus`` is a whole number of GPUs, so plans that need
    as many GPUs fall to the most goodput per GPU (the most headroom at the target). None for the others."""
    if objective == "min_gpus":
        return objective_key(metrics, "goodput_per_gpu")
    return None


def rank_order(plans: ServingPlanArrays, key: np.ndarray, scale: float | None = None,
               secondary: np.ndarray | None = None) -> np.ndarray:
    """Indices of the plans, best first: rounded key, then the ``secondary`` key (rounded), then GPUs,
    then :data:`TIE_BREAK`."""
    columns = tie_columns(plans)
    keys = [columns[name].astype(float) for name in reversed(TIE_BREAK)]
    keys.append(plans.num_gpus.astype(float))
    if secondary is not None:
        keys.append(_rounded(secondary, key_scale(secondary)))
    keys.append(_rounded(key, key_scale(key) if scale is None else scale))
    return np.lexsort(keys)


LAYOUT_COLUMNS = ("tp", "pp", "ep", "attn_dp", "moe_tp", "weight_precision", "kv_dtype")
"""What makes two plans the same layout (with the mode and instance counts): knob variants of one layout
(batch limit, chunk budget, CUDA graphs) are not different plans to a reader of the top-K list."""


def layout_keys(plans: ServingPlanArrays, counts: bool = True) -> np.ndarray:
    """One row per plan: mode, instance counts (unless ``counts`` is False), and the prefill and decode
    layout columns."""
    columns = [plans.mode] + ([plans.prefill_instances, plans.decode_instances] if counts else [])
    for kind in (plans.prefill, plans.decode):
        columns += [getattr(kind, name) for name in LAYOUT_COLUMNS]
    return np.stack(columns, axis=1)


def row_ids(keys: np.ndarray) -> np.ndarray:
    """One integer per row of the 2-D integer array ``keys``, equal exactly when the rows are equal.

    Each column is replaced by its value's rank among the column's distinct values, and the ranks are
    read as the digits of one mixed-radix number. This is ten times faster than ``np.unique(axis=0)``
    (which sorts the rows as byte strings) on the 10^5-row grids of a serving search; when the product
    of the columns' cardinalities would overflow 62 bits it falls back to that."""
    digits, radices = [], []
    for column in keys.T:
        values, inverse = np.unique(column, return_inverse=True)
        digits.append(inverse.reshape(-1))
        radices.append(len(values))
    if not digits or np.prod(radices, dtype=float) >= 2.0**62:
        return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)
    return np.ravel_multi_index(digits, radices)


def first_per_layout(order: np.ndarray, plans: ServingPlanArrays, counts: bool = True) -> np.ndarray:
    """``order`` keeping only the first (best-ranked) plan of each layout (:func:`layout_keys`; without
    ``counts``, replicas of one layout are one layout too)."""
    if len(order) == 0:
        return order
    _, first = np.unique(row_ids(layout_keys(plans, counts)[order]), return_index=True)
    return order[np.sort(first)]


def pareto_front(tokens_per_s_per_gpu: np.ndarray, tokens_per_s_per_user: np.ndarray) -> np.ndarray:
    """Indices of the plans no other plan beats on both axes (bigger is better on each), most
    tokens/s/GPU first. Sorting by tokens/s/GPU descending (ties: per-user descending), a plan is on
    the front when its per-user rate exceeds that of every plan before it."""
    per_gpu = np.asarray(tokens_per_s_per_gpu, dtype=float)
    per_user = np.asarray(tokens_per_s_per_user, dtype=float)
    finite = np.flatnonzero(np.isfinite(per_gpu) & np.isfinite(per_user))
    if len(finite) == 0:
        return finite
    order = finite[np.lexsort((-per_user[finite], -per_gpu[finite]))]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(per_user[order])[:-1]])
    return order[per_user[order] > best_before]
