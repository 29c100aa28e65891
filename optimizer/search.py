"""The plan search: CP-SAT enumerates the layouts, numpy expands and checks the schedules and knobs,
the cost model prices them, and the feasible plans are ranked.

1. Layouts: :class:`optimizer.layout_model.LayoutModel` enumerates (GPUs, tp, cp, pp, dp, ep, etp)
   under the named hardware and framework rules.
2. Schedules: every layout x virtual stages x micro-batch, filtered by :mod:`optimizer.plan_rules`.
3. Knobs: x sequence parallel x ZeRO stage (x offload) x recompute option, filtered likewise.
4. Memory: :func:`cost_model.evaluate.predict_memory` for every expanded plan; a plan fits when its
   peak is within (1 - headroom) of the GPU's usable memory. This is the feasible set.
5. Recompute pruning: recompute only adds work (time never falls with more recompute), so for the
   time-based objectives only the least recompute that fits can win within a group of otherwise equal
   plans; for ``memory_headroom``, the most. One plan per group is timed.
6. Ranking: the objective, then deterministic tie-breaks (memory, GPUs, the plan's columns).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cost_model.evaluate import PlanMetrics, evaluate, peak_memory_bytes
from cost_model.flops import forward_flops_per_sequence, selective_module_flops_per_sequence
from cost_model.memory import GIB
from cost_model.model_spec import ModelSpec
from cost_model.options import CostOptions
from cost_model.plan import FULL, MODULE_BIT, NONE, SELECTIVE, PlanArrays
from cost_model.stages import layers_per_stage
from cost_model.training_spec import TrainingSpec
from hardware.schema import ClusterSpec

from .layout_model import LAYOUT_COLUMNS, LayoutModel
from .plan_rules import SCHEDULE_RULES, valid_mask
from .ranking import best_per_layout, rank_order
from .search_options import SearchOptions

PARTIAL_RECOMPUTE_FRACTIONS = (0.25, 0.5, 0.75)


@dataclass
class Scenario:
    """One search problem: Calculon's split of model, system and execution inputs."""

    model: ModelSpec
    training: TrainingSpec
    cluster: ClusterSpec
    options: SearchOptions = field(default_factory=SearchOptions)
    cost_options: CostOptions | None = None

    @property
    def costs(self) -> CostOptions:
        base = self.cost_options or CostOptions()
        return base.with_changes(rank_order=self.options.rank_order)

    @property
    def gpu_counts(self) -> tuple[int, ...]:
        return self.options.gpu_counts or (self.cluster.num_gpus,)

    @property
    def memory_limit_bytes(self) -> float:
        return self.cluster.gpu.memory_gib * GIB * (1 - self.options.memory_headroom)


@dataclass
class SearchResult:
    scenario: Scenario
    ranked: PlanMetrics | None
    """The top plans, best first (None when nothing fits)."""
    num_layouts: int
    num_candidates: int
    """Expanded plans that pass every rule but memory."""
    num_feasible: int
    """Of those, plans that fit in memory."""
    num_timed: int
    min_memory_bytes: float
    """Least peak memory of any candidate (what the best plan needs when nothing fits)."""
    seconds: dict[str, float]
    feasible_plans: PlanArrays | None = None
    """Every feasible plan, when the search was asked to keep them."""
    timed: PlanMetrics | None = None
    """Metrics of every timed plan (one per group), when the search was asked to keep them."""

    @property
    def found(self) -> bool:
        return self.ranked is not None and len(self.ranked) > 0

    def frame(self) -> pd.DataFrame:
        return self.ranked.to_frame() if self.found else pd.DataFrame()


def _cross(columns: dict[str, np.ndarray], name: str, values) -> dict[str, np.ndarray]:
    """Cross product of the rows in ``columns`` with a new column's values (new column varies fastest)."""
    values = np.asarray(values)
    n = len(next(iter(columns.values())))
    out = {k: np.repeat(v, len(values)) for k, v in columns.items()}
    out[name] = np.tile(values, n)
    return out


def _filter(columns: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in columns.items()}


ELEMENTWISE_RERUN_SHARE = 0.01
"""Ordering weight of the modules that rerun only element-wise kernels (layernorm, moe_act): they
cost a little, less than any GEMM module."""


def selective_ladder(model: ModelSpec, flash_attention: bool) -> list[int]:
    """Selective-recompute module sets tried, each adding the next-cheapest module to the previous:
    core attention (only without fused attention: flash attention saves no s x s tensor), the norms,
    the MoE activation, MLA's up-projections, the dense MLP, the whole MoE block."""
    steps = [] if flash_attention else ["core_attn"]
    steps.append("layernorm")
    if model.is_moe:
        steps.append("moe_act")
    if model.is_mla:
        steps.append("mla_up_proj")
    if model.num_dense_layers:
        steps.append("mlp")
    if model.is_moe:
        steps.append("moe")
    ladder, mask = [], 0
    for name in steps:
        mask |= MODULE_BIT[name]
        ladder.append(mask)
    return ladder


def module_rerun_share(model: ModelSpec, training: TrainingSpec, modules: int) -> float:
    """Forward work a module set reruns, as a share of the layers' forward FLOPs (for ordering)."""
    seq = training.seq_length
    parts = forward_flops_per_sequence(model, seq, causal=training.causal)
    layers = parts["projections"] + parts["attention"]
    flops = selective_module_flops_per_sequence(model, seq, causal=training.causal)
    share = sum(f for name, f in flops.items() if modules & MODULE_BIT[name])
    if modules & MODULE_BIT["moe"]:
        share -= flops["shared_experts"] * bool(modules & MODULE_BIT["shared_experts"])
    elementwise = sum(ELEMENTWISE_RERUN_SHARE for name in ("layernorm", "moe_act") if modules & MODULE_BIT[name])
    return share / layers + elementwise


def recompute_options(scenario: Scenario) -> list[tuple[int, float, int]]:
    """(mode, fraction of chunk layers, selective modules), in order of increasing recompute work.

    Full recompute of a fraction f of the layers reruns f of the forward; a selective module set
    reruns its modules' share of it. Sorting both on that share lets the search keep the first option
    that fits as the fastest one (exact when the shares order the plans' times the same way, which
    holds up to the small element-wise and collective terms).
    """
    modes = scenario.options.recompute_modes
    options: list[tuple[float, int, float, int]] = []
    if "none" in modes:
        options.append((0.0, NONE, 0.0, 0))
    if "selective" in modes:
        for mask in selective_ladder(scenario.model, scenario.training.flash_attention):
            options.append((module_rerun_share(scenario.model, scenario.training, mask), SELECTIVE, 0.0, mask))
    if "full" in modes:
        fractions = (*PARTIAL_RECOMPUTE_FRACTIONS, 1.0) if scenario.options.partial_recompute else (1.0,)
        options.extend((f, FULL, f, 0) for f in fractions)
    options.sort(key=lambda option: option[0])  # stable: ties keep the order above
    return [(mode, fraction, mask) for _, mode, fraction, mask in options]


def candidate_groups(scenario: Scenario, layouts: np.ndarray) -> dict[str, np.ndarray]:
    """Layouts x schedules x knobs other than recompute, filtered by the plan rules."""
    o = scenario.options
    cols = {name: layouts[:, i] for i, name in enumerate(LAYOUT_COLUMNS)}
    cols = _cross(cols, "vpp", np.arange(1, o.max_vpp + 1))
    cols = _cross(cols, "micro_batch", np.array(sorted(set(o.micro_batch_sizes))))
    cols = _filter(cols, _rule_mask(scenario, cols, SCHEDULE_RULES))
    cols = _cross(cols, "sequence_parallel", np.array(sorted(set(o.sequence_parallel))))
    cols = _cross(cols, "zero_stage", np.array(sorted(set(o.zero_stages))))
    cols = _cross(cols, "optimizer_offload", np.array([False, True] if o.allow_offload else [False]))
    layers = scenario.model.num_layers
    offload = sorted({0, layers // 2, layers - 1}) if o.allow_offload and layers > 1 else [0]
    cols = _cross(cols, "activation_offload_layers", np.array(offload))
    return _filter(cols, _rule_mask(scenario, cols))  # activation_offload_valid drops offload with pp > 1


def _rule_mask(scenario: Scenario, cols: dict[str, np.ndarray], rules: tuple[str, ...] | None = None) -> np.ndarray:
    plans = PlanArrays.from_columns({k: v for k, v in cols.items() if k != "num_gpus"})
    return valid_mask(scenario.model, scenario.training, plans, scenario.options.uneven_pipeline, rules)


def expand_recompute(scenario: Scenario, groups: dict[str, np.ndarray]) -> tuple[PlanArrays, np.ndarray]:
    """Every group x recompute option, as plans (option varies fastest) and a validity mask: a partial
    option is valid only when it recomputes a whole number of layers that differs from its neighbours."""
    options = recompute_options(scenario)
    n, r = len(groups["tp"]), len(options)
    cols = {k: np.repeat(v, r) for k, v in groups.items() if k != "num_gpus"}
    modes = np.tile(np.array([mode for mode, _, _ in options]), n)
    fractions = np.tile(np.array([f for _, f, _ in options]), n)
    masks = np.tile(np.array([mask for _, _, mask in options]), n)
    _, k, _ = layers_per_stage(scenario.model.num_layers, cols["pp"])
    chunk = -(-k // cols["vpp"])
    layers = np.ceil(fractions * chunk).astype(np.int64)
    whole = (modes == FULL) & (fractions >= 1.0)
    partial = (modes == FULL) & ~whole
    valid = np.where(partial, (layers >= 1) & (layers < chunk), True)
    # activation_offload_valid, on the recompute column this function adds: offload or recompute
    valid &= (cols["activation_offload_layers"] == 0) | (modes == NONE)
    # drop partial options that round to the same layer count as the previous one
    previous = np.concatenate([[-1], layers[:-1]])
    same_group_previous = np.concatenate([[False], (np.arange(1, n * r) % r) != 0])
    valid &= ~(partial & same_group_previous & (previous == layers))
    cols["recompute"] = modes
    cols["recompute_num_layers"] = np.where(partial, layers, -1)
    cols["recompute_modules"] = masks
    return PlanArrays.from_columns(cols), valid.reshape(n, r)


def screen_memory(scenario: Scenario, plans: PlanArrays, option_valid: np.ndarray,
                  options: list[tuple[int, float, int]]) -> tuple[np.ndarray, float]:
    """Which (group, recompute option) plans fit in memory, and the least memory any plan needs.

    Recompute never adds memory: 'none' needs the most and full recompute of every layer the least
    (it keeps only each layer's input; every option shares the same one-layer backward working set).
    So a group whose 'none' plan fits fits with every option, and a group whose full-recompute plan
    does not fit fits with none; only the groups in between are priced option by option.
    """
    n_groups, n_options = option_valid.shape
    limit = scenario.memory_limit_bytes
    peak = np.full((n_groups, n_options), np.nan)

    def price(groups: np.ndarray, option: int) -> None:
        if len(groups):
            rows = plans.take(groups * n_options + option)
            peak[groups, option] = peak_memory_bytes(scenario.model, scenario.training, rows, scenario.costs)

    most = options.index((NONE, 0.0, 0)) if (NONE, 0.0, 0) in options else None
    least = options.index((FULL, 1.0, 0)) if (FULL, 1.0, 0) in options else None
    undecided = np.arange(n_groups)
    all_fit = np.zeros(n_groups, dtype=bool)
    none_fit = np.zeros(n_groups, dtype=bool)
    if most is not None:
        price(undecided, most)
        all_fit = peak[:, most] <= limit
        undecided = np.flatnonzero(~all_fit)
    if least is not None:
        price(undecided, least)
        none_fit[undecided] = ~(peak[undecided, least] <= limit)
        undecided = undecided[~none_fit[undecided]]
    for option in range(n_options):
        if option not in (most, least):
            price(undecided, option)
    fits = option_valid & ((peak <= limit) | all_fit[:, None])
    fits[none_fit] = False
    priced = option_valid & ~np.isnan(peak)
    min_memory = float(np.min(np.where(priced, peak, np.inf))) if priced.any() else float("nan")
    return fits, min_memory


def search(scenario: Scenario, keep_feasible: bool = False, keep_timed: bool = False) -> SearchResult:
    """Run the whole search; see the module docstring."""
    clock = {"start": time.perf_counter()}
    layout_model = LayoutModel(scenario.model, scenario.training, scenario.cluster, scenario.options,
                               scenario.gpu_counts)
    layouts = layout_model.enumerate_layouts()
    clock["layouts"] = time.perf_counter()

    groups = candidate_groups(scenario, layouts)
    plans, option_valid = expand_recompute(scenario, groups)
    n_groups, n_options = option_valid.shape
    clock["expand"] = time.perf_counter()

    fits, min_memory = screen_memory(scenario, plans, option_valid, recompute_options(scenario))
    candidates = option_valid.sum()
    clock["memory"] = time.perf_counter()

    any_fit = fits.any(axis=1)
    if scenario.options.objective == "memory_headroom":
        chosen = n_options - 1 - np.argmax(fits[:, ::-1], axis=1)
    else:
        chosen = np.argmax(fits, axis=1)  # least recompute that fits
    index = (np.arange(n_groups) * n_options + chosen)[any_fit]
    timed = plans.take(index)
    metrics = evaluate(scenario.model, scenario.training, scenario.cluster, timed, scenario.costs) if len(index) else None
    clock["time"] = time.perf_counter()

    ranked = None
    if metrics is not None:
        order = rank_order(metrics, scenario.cluster, scenario.options.objective)
        if scenario.options.best_per_layout:
            order = best_per_layout(order, metrics)
        ranked_plans = timed.take(order[: scenario.options.top_k])
        ranked = evaluate(scenario.model, scenario.training, scenario.cluster, ranked_plans, scenario.costs)
    clock["rank"] = time.perf_counter()

    names = ["layouts", "expand", "memory", "time", "rank"]
    seconds = {}
    previous = clock["start"]
    for name in names:
        seconds[name] = clock[name] - previous
        previous = clock[name]
    seconds["total"] = clock["rank"] - clock["start"]
    return SearchResult(
        scenario=scenario, ranked=ranked, num_layouts=len(layouts), num_candidates=int(candidates),
        num_feasible=int(fits.sum()), num_timed=len(index), min_memory_bytes=min_memory, seconds=seconds,
        feasible_plans=plans.take(np.flatnonzero(fits.ravel())) if keep_feasible else None,
        timed=metrics if keep_timed else None,
    )
