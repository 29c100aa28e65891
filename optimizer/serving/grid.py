"""The knob grid of a serving search: every engine-instance layout worth pricing, and the plans built
from them (replicas for aggregated serving, prefill and decode instance counts for disaggregated).

An instance is one model copy (``cost_model.serving.plan``): ``tp`` x ``pp`` x ``attn_dp`` GPUs, its MoE
layers regrouped as ``moe_tp`` x ``ep`` over the same ``tp`` x ``attn_dp`` ranks (vLLM, SGLang and
TensorRT-LLM all require that product; e.g. SGLang's ``--tp 8 --dp 8 --enable-dp-attention --ep 8`` is
tp 1 x attn_dp 8 = moe_tp 1 x ep 8). The grid crosses, per instance:

- parallel degrees: powers of two (the engines' practical choices; heads, KV heads and experts of
  every preset are powers of two times a small factor, so other degrees mostly break divisibility);
  ``attn_dp``, ``ep`` and ``moe_tp`` only for MoE models (a dense model's attention DP is a replica);
- weight precision and KV dtype (the caller's lists);
- ``max_num_seqs``: powers of two 1..1024 per attention rank (vLLM's default is 256 (v0.10
  ``SchedulerConfig.max_num_seqs``); SGLang's and TensorRT-LLM's limits reach 1024-2048);
- the chunked-prefill budget ``max_num_batched_tokens``, at least ``max_num_seqs`` (vLLM refuses a
  smaller budget: ``SchedulerConfig._verify_args``, v0.10): 2,048 (vLLM V1's default for online serving
  on most GPUs), 8,192 (SGLang's ``chunked_prefill_size`` and TensorRT-LLM's ``max_num_tokens``
  defaults) and 32,768 (long prompts in few steps);
- CUDA graphs on or off (vLLM ``--enforce-eager``).

Rules are not applied here: every combination is priced and the named rules of the cost model say
which ones break (the search keeps the count per rule, which is how "nothing meets the SLO" names
what binds). Enumeration is numpy broadcasting, no per-plan Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cost_model.serving.queueing import prefill_decode_ratio
from cost_model.serving.plan import KV_DTYPES, MODES, WEIGHT_PRECISIONS, InstanceArrays, ServingPlanArrays

MAX_NUM_SEQS_VALUES = tuple(2 ** k for k in range(11))
"""Requests per attention rank: 1..1024, powers of two."""
CHUNK_TOKEN_VALUES = (2048, 8192, 32768)
"""Chunked-prefill token budgets (see the module docstring for where each comes from)."""
PIPELINE_VALUES = (1, 2, 4, 8)
"""Pipeline stages: serving engines use PP across nodes only (vLLM's multi-node recipe: TP in the
node, PP over nodes); more than 8 stages adds bubbles no serving deployment accepts."""
MAX_DEGREE = 64
"""Largest TP / attention-DP / EP degree tried: the widest scale-up domain (NVL72) rounds to 64."""


def powers_of_two(most: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``most`` (at least (1,))."""
    return tuple(2 ** k for k in range(0, max(int(most), 1).bit_length()) if 2 ** k <= max(int(most), 1))


@dataclass(frozen=True)
class ServingGrid:
    """What the serving search varies; each field a tuple of values tried."""

    max_gpus: int
    """GPUs a plan may hold at most (every prefill and decode GPU counted)."""
    min_gpus: int = 1
    """GPUs a plan holds at least (``--gpus A-B``)."""
    is_moe: bool = False
    """MoE models get attention-DP, EP and MoE-TP axes; dense ones have ep 1, attn_dp 1."""
    num_experts: int = 0
    """Experts per MoE layer: EP never exceeds it."""
    num_layers: int = 1
    """Pipeline stages never exceed the layers."""
    weight_precisions: tuple[str, ...] = ("bf16",)
    """Names from :data:`WEIGHT_PRECISIONS`."""
    kv_dtypes: tuple[str, ...] = ("bf16",)
    """Names from :data:`KV_DTYPES`."""
    modes: tuple[str, ...] = ("agg",)
    """Names from :data:`MODES`."""
    max_num_seqs_values: tuple[int, ...] = MAX_NUM_SEQS_VALUES
    chunk_token_values: tuple[int, ...] = CHUNK_TOKEN_VALUES
    cuda_graph_values: tuple[bool, ...] = (True, False)
    pipeline_values: tuple[int, ...] = PIPELINE_VALUES
    max_degree: int = MAX_DEGREE
    replica_values: tuple[int, ...] | None = field(default=None)
    """Replica counts to try; None: :func:`replica_counts` of each layout."""

    def __post_init__(self) -> None:
        if self.max_gpus < 1 or self.min_gpus < 1 or self.min_gpus > self.max_gpus:
            raise ValueError(f"max_gpus must be >= min_gpus >= 1, got {self.min_gpus}-{self.max_gpus}")
        for name, values, known in (("weight_precisions", self.weight_precisions, WEIGHT_PRECISIONS),
                                    ("kv_dtypes", self.kv_dtypes, KV_DTYPES), ("modes", self.modes, MODES)):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise ValueError(f"{name} must be a non-empty list among {', '.join(known)}, got {list(values)}")
        if any(v < 1 for v in self.max_num_seqs_values + self.chunk_token_values + self.pipeline_values):
            raise ValueError("max_num_seqs, chunk budgets and pipeline stages must be at least 1")


def layouts(grid: ServingGrid) -> dict[str, np.ndarray]:
    """Every (tp, pp, attn_dp, ep, moe_tp) the grid allows with at most ``max_gpus`` GPUs per instance,
    in a fixed order (tp, then pp, attn_dp, ep ascending)."""
    degrees = np.asarray(powers_of_two(min(grid.max_degree, grid.max_gpus)))
    pp_values = np.asarray([p for p in grid.pipeline_values if p <= grid.num_layers and p <= grid.max_gpus] or [1])
    dp_values = degrees if grid.is_moe else np.asarray([1])
    ep_values = degrees[degrees <= max(grid.num_experts, 1)] if grid.is_moe else np.asarray([1])
    tp, pp, attn_dp, ep = (a.ravel() for a in np.meshgrid(degrees, pp_values, dp_values, ep_values, indexing="ij"))
    ranks = tp * attn_dp
    keep = (tp * pp * attn_dp <= grid.max_gpus) & (ranks % ep == 0)
    tp, pp, attn_dp, ep = tp[keep], pp[keep], attn_dp[keep], ep[keep]
    return {"tp": tp, "pp": pp, "attn_dp": attn_dp, "ep": ep, "moe_tp": (tp * attn_dp) // ep}


def instance_grid(grid: ServingGrid) -> InstanceArrays:
    """Every instance of the grid: :func:`layouts` crossed with precisions, KV dtypes, max_num_seqs,
    chunk budgets (at least max_num_seqs) and CUDA graphs."""
    shape = layouts(grid)
    n_layouts = len(shape["tp"])
    axes = [np.arange(n_layouts),
            np.asarray([WEIGHT_PRECISIONS.index(p) for p in grid.weight_precisions]),
            np.asarray([KV_DTYPES.index(k) for k in grid.kv_dtypes]),
            np.asarray(grid.max_num_seqs_values), np.asarray(grid.chunk_token_values),
            np.asarray(grid.cuda_graph_values, dtype=bool)]
    layout, precision, kv, seqs, chunk, graphs = (a.ravel() for a in np.meshgrid(*axes, indexing="ij"))
    keep = chunk >= seqs
    layout = layout[keep]
    return InstanceArrays(tp=shape["tp"][layout], pp=shape["pp"][layout], ep=shape["ep"][layout],
                          attn_dp=shape["attn_dp"][layout], moe_tp=shape["moe_tp"][layout],
                          weight_precision=precision[keep], kv_dtype=kv[keep], max_num_seqs=seqs[keep],
                          max_num_batched_tokens=chunk[keep], cuda_graphs=graphs[keep])


def replica_counts(most: int) -> np.ndarray:
    """Replica counts tried up to ``most``: every count to 8, then 1x and 1.5x powers of two (12, 16, 24,
    32, 48, ...), and ``most`` itself. Per-GPU figures change with replicas only through queueing (the
    target rate is split among them), which moves smoothly, so a geometric ladder finds the knee; the
    minimum GPU count for a target rate is computed exactly by the cost model, not by this ladder."""
    most = int(most)
    if most < 1:
        return np.zeros(0, dtype=np.int64)
    ladder = set(range(1, min(most, 8) + 1))
    k = 8
    while k <= most:
        ladder.update(v for v in (k, k * 3 // 2) if v <= most)
        k *= 2
    ladder.add(most)
    return np.asarray(sorted(ladder), dtype=np.int64)


def aggregated_plans(instances: InstanceArrays, grid: ServingGrid, fewest_replicas: bool = False) -> ServingPlanArrays:
    """Each instance with each replica count whose GPUs lie within ``[min_gpus, max_gpus]``.

    ``fewest_replicas``: only the fewest replicas that reach ``min_gpus``. At max load (no target rate or
    concurrency) every replica runs full and alone, so per-GPU figures do not depend on the count and more
    replicas would only repeat the plan."""
    gpus = instances.gpus
    if fewest_replicas:
        replicas = np.maximum(-(-grid.min_gpus // gpus), 1)
        keep = np.flatnonzero(gpus * replicas <= grid.max_gpus)
        return ServingPlanArrays.aggregated(instances.take(keep), replicas[keep])
    ladder = (np.asarray(sorted(set(grid.replica_values)), dtype=np.int64) if grid.replica_values
              else replica_counts(grid.max_gpus))
    # one (instance, replicas) pair per cell of the instance x ladder table that fits the budget
    total = gpus[:, None] * ladder[None, :]
    inside = (total <= grid.max_gpus) & (total >= grid.min_gpus)
    instance_index, ladder_index = np.nonzero(inside)
    return ServingPlanArrays.aggregated(instances.take(instance_index), ladder[ladder_index])


def disaggregated_plans(prefill: InstanceArrays, decode: InstanceArrays, prefill_rate_per_s: np.ndarray,
                        decode_rate_per_s: np.ndarray, grid: ServingGrid,
                        fewest_replicas: bool = False) -> ServingPlanArrays:
    """Every (prefill layout, decode layout) pair with the prefill:decode instance counts their capacities
    ask for, within the GPU budget.

    ``prefill_rate_per_s`` and ``decode_rate_per_s`` are requests per second one instance of each phase
    sustains (at its SLO-bound operating point). A fleet of ``d`` decode instances serves
    ``d x decode_rate`` requests/s; the prefill instances must keep up, ``p = ceil(d x decode_rate /
    prefill_rate)`` (Splitwise, Patel et al. 2024 §4.3; DistServe, Zhong et al. 2024 §4.1: the
    phases' instance counts in the ratio of their per-instance goodputs). ``d`` runs over
    :func:`replica_counts` of the budget; pairs above the budget, or below ``min_gpus``, are dropped.

    ``fewest_replicas`` (max load, as :func:`aggregated_plans`): ``k p`` prefill and ``k d`` decode
    instances are ``p`` and ``d`` k times over, so each count pair is divided by its greatest common
    divisor and multiplied only as far as ``min_gpus`` needs."""
    n_p, n_d = len(prefill), len(decode)
    pi, di = (a.ravel() for a in np.meshgrid(np.arange(n_p), np.arange(n_d), indexing="ij"))
    ladder = replica_counts(grid.max_gpus)
    pair, rung = (a.ravel() for a in np.meshgrid(np.arange(len(pi)), np.arange(len(ladder)), indexing="ij"))
    d_count = ladder[rung]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = prefill_decode_ratio(np.asarray(prefill_rate_per_s, dtype=float)[pi[pair]],
                                     np.asarray(decode_rate_per_s, dtype=float)[di[pair]])
        p_float = np.ceil(d_count * np.where(np.isfinite(ratio) & (ratio > 0), ratio, np.inf) - 1e-9)
    valid = np.isfinite(p_float)
    p_count = np.where(valid, np.maximum(p_float, 1), 0).astype(np.int64)
    if fewest_replicas:
        common = np.maximum(np.gcd(p_count, d_count), 1)
        p_count, d_count = p_count // common, d_count // common
        total = p_count * prefill.gpus[pi[pair]] + d_count * decode.gpus[di[pair]]
        times = np.maximum(-(-grid.min_gpus // np.maximum(total, 1)), 1)
        p_count, d_count = p_count * times, d_count * times
        _, first = np.unique(np.stack([pair, p_count, d_count], axis=1), axis=0, return_index=True)
        unique = np.zeros(len(pair), dtype=bool)
        unique[first] = True
        valid &= unique
    total = p_count * prefill.gpus[pi[pair]] + d_count * decode.gpus[di[pair]]
    keep = valid & (total <= grid.max_gpus) & (total >= grid.min_gpus)
    chosen = pair[keep]
    return ServingPlanArrays.disaggregated_plans(prefill.take(pi[chosen]), decode.take(di[chosen]),
                                                 p_count[keep], d_count[keep])


def concatenate(parts: list[ServingPlanArrays]) -> ServingPlanArrays:
    """Several plan arrays as one (in the given order)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return ServingPlanArrays.aggregated(InstanceArrays.from_columns(
            {"tp": np.zeros(0, dtype=np.int64), "max_num_seqs": 1, "max_num_batched_tokens": 1}), 1)
    if len(parts) == 1:
        return parts[0]

    def join(kind: str) -> InstanceArrays:
        arrays = [getattr(p, kind) for p in parts]
        return InstanceArrays(**{name: np.concatenate([getattr(a, name) for a in arrays])
                                 for name in arrays[0].__dataclass_fields__})

    return ServingPlanArrays(mode=np.concatenate([p.mode for p in parts]), prefill=join("prefill"),
                             decode=join("decode"),
                             prefill_instances=np.concatenate([p.prefill_instances for p in parts]),
                             decode_instances=np.concatenate([p.decode_instances for p in parts]))
