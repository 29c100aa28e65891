"""The plan search: CP-SAT enumerates the layouts, numpy expands and checks the schedules and knobs,
the cost model prices them, and the feasible plans are ranked.

1. Layouts: :class:`optimizer.layout_model.LayoutModel` enumerates (GPUs, tp, cp, pp, dp, ep, etp)
   under the named hardware and framework rules.
2. Schedules: every layout x virtual stages x pipeline schedule (those the framework runs, or the asked
   ones) x micro-batch (the pinned ones, when pinned), filtered by :mod:`optimizer.plan_rules`.
3. Knobs: x sequence parallel x ZeRO stage (x offload) x recompute option, filtered likewise.
4. Memory: :func:`cost_model.evaluate.predict_memory` for every expanded plan; a plan fits when its
   peak is within (1 - headroom) of the GPU's usable memory (:func:`cost_model.memory.fits_in_memory`,
   the rule evaluate and validate use too; no headroom by default). This is the feasible set.
5. Recompute pruning: recompute only adds work (time never falls with more recompute), so for the
   time-based objectives only the least recompute that fits can win within a group of otherwise equal
   plans; for ``memory_headroom``, the most. One plan per group is timed.
6. Ranking: the objective, then deterministic tie-breaks (memory, GPUs, the plan's columns).

Steps 2-6 stream: the layouts' candidates are generated, screened and timed ``CHUNK_PLANS`` plans at a
time (:func:`group_chunks`), and only the running top K (:class:`_TopPlans`) and, when asked, the running
cost-time Pareto front (:class:`_ParetoPlans`) are kept, so a search over a GPU range of millions of
candidates needs the memory of one chunk. Counts and the answer are those of one pass over everything.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cost_model.evaluate import PlanMetrics, evaluate, peak_memory_bytes
from cost_model.flops import forward_flops_per_sequence, selective_module_flops_per_sequence
from cost_model.memory import fits_in_memory, memory_limit_bytes
from cost_model.model_spec import ModelSpec
from cost_model.options import CostOptions
from cost_model.plan import FULL, MODULE_BIT, NONE, SELECTIVE, PlanArrays
from cost_model.stages import layers_per_stage
from cost_model.training_spec import TrainingSpec
from hardware.placement import dense_placement
from hardware.schema import ClusterSpec

from .emit import framework_violations
from .layout_model import LAYOUT_COLUMNS, LayoutModel
from .plan_rules import SCHEDULE_RULES, valid_mask
from .ranking import (effective_gpu_seconds_per_token, effective_tokens_per_s, first_per_layout, layout_keys,
                      objective_key, order_plans, pareto_front, largest_magnitude)
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
        return memory_limit_bytes(self.cluster.gpu.memory_gib, self.options.memory_headroom)


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
    """Least peak memory of the candidates the memory screen priced. Exact when nothing fits (every group's
    least-memory option is then priced: what the best plan needs); when some plans fit, the screen skips
    pricing the lighter options of groups that already fit, so it is only an upper bound."""
    seconds: dict[str, float]
    feasible_plans: PlanArrays | None = None
    """Every feasible plan, when the search was asked to keep them."""
    timed: PlanMetrics | None = None
    """Metrics of every timed plan (one per group), when the search was asked to keep them."""
    pareto: PlanMetrics | None = None
    """With ``pareto``: the cost-versus-time Pareto plans among the timed ones, fastest first, at most
    top K (cost = GPU-seconds per token x the price per GPU-hour, or 1 without a price)."""

    @property
    def found(self) -> bool:
        return self.ranked is not None and len(self.ranked) > 0

    def frame(self) -> "pd.DataFrame":
        import pandas as pd  # not at import time: pandas takes a quarter of a second to import

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


def schedule_rows(scenario: Scenario, layouts: np.ndarray) -> dict[str, np.ndarray]:
    """Layouts x virtual stages x micro-batch sizes, filtered by the schedule rules."""
    o = scenario.options
    cols = {name: layouts[:, i] for i, name in enumerate(LAYOUT_COLUMNS)}
    cols = _cross(cols, "vpp", np.array(o.vpp_choices))
    cols = _cross(cols, "schedule", np.array(o.schedule_choices))
    cols = _cross(cols, "micro_batch", np.array(sorted(set(o.micro_batch_sizes))))
    return _filter(cols, _rule_mask(scenario, cols, SCHEDULE_RULES))


def _knob_values(scenario: Scenario) -> list[tuple[str, np.ndarray]]:
    """The knobs crossed with every schedule, in the order they are crossed (the last varies fastest)."""
    o = scenario.options
    layers = scenario.model.num_layers
    offload = sorted({0, layers // 2, layers - 1}) if o.allow_offload and layers > 1 else [0]
    return [("sequence_parallel", np.array(sorted(set(o.sequence_parallel)))),
            ("zero_stage", np.array(sorted(set(o.zero_stages)))),
            ("optimizer_offload", np.array([False, True] if o.allow_offload else [False])),
            ("activation_offload_layers", np.array(offload))]


def knob_rows(scenario: Scenario, schedules: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Schedules x knobs other than recompute, filtered by every plan rule."""
    cols = schedules
    for name, values in _knob_values(scenario):
        cols = _cross(cols, name, values)
    cols = _filter(cols, _rule_mask(scenario, cols))  # activation_offload_valid drops offload with pp > 1
    return with_hybrid_sharding(scenario, cols)


HSDP_DOMAIN_MULTIPLES = (1, 2, 4)
"""Shard groups the search tries with hybrid sharding, in scale-up domains' worth of data-parallel ranks:
one domain (the all-gathers and reduce-scatters on NVLink alone), two and four (fewer copies, less memory,
a short network ring). Other sizes lie between these in both memory and time."""


def hybrid_sharding_replicas(scenario: Scenario, cols: dict[str, np.ndarray]) -> np.ndarray:
    """The hybrid-sharding copies the search prices for each row, (rows, len(HSDP_DOMAIN_MULTIPLES)), 0 where
    none: the shard group is :data:`HSDP_DOMAIN_MULTIPLES` times the data-parallel ranks one scale-up domain
    holds (:func:`hardware.placement.dense_placement`), with ZeRO >= 1, more than one copy and a count listed
    in ``dp_replicate_values``. This keeps the HSDP grid to at most three sizes a row, whatever
    ``dp_replicate_values`` lists."""
    n = len(cols["tp"])
    allowed = np.array(sorted(set(scenario.options.dp_replicate_values)))
    out = np.zeros((n, len(HSDP_DOMAIN_MULTIPLES)), dtype=np.int64)
    sharded = cols["zero_stage"] >= 1
    if not n or not sharded.any() or not (allowed > 1).any():
        return out
    per_domain = np.broadcast_to(dense_placement(cols["tp"], cols["cp"], cols["dp"], cols["pp"],
                                                 domain_gpus=scenario.cluster.topology.domain_gpus,
                                                 order=scenario.options.rank_order)["dp_cp"].ranks_per_domain, (n,))
    ranks = cols["dp"] * cols["cp"]
    for k, multiple in enumerate(HSDP_DOMAIN_MULTIPLES):
        shard = multiple * per_domain
        replicas = np.where(ranks % shard == 0, ranks // np.maximum(shard, 1), 0)
        out[:, k] = np.where(sharded & (replicas > 1) & np.isin(replicas, allowed), replicas, 0)
    return out


def with_hybrid_sharding(scenario: Scenario, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each rule-abiding row (one shard group, ``dp_replicate`` 1), followed by its hybrid-sharding variants
    (:func:`hybrid_sharding_replicas`) that the plan and framework rules accept. Row by row, so that cutting the
    rows into blocks first changes nothing (:func:`group_chunks`); only the variants are checked again."""
    n = len(cols["tp"])
    replicas = hybrid_sharding_replicas(scenario, cols)
    table = np.concatenate([np.ones((n, 1), dtype=np.int64), replicas], axis=1)
    keep = table > 0
    rows, slots = np.nonzero(replicas > 0)
    if len(rows):
        variants = {k: v[rows] for k, v in cols.items()}
        variants["dp_replicate"] = replicas[rows, slots]
        keep[rows, slots + 1] = _rule_mask(scenario, variants)
    rows, slots = np.nonzero(keep)  # row-major: each row, then its variants
    out = {k: v[rows] for k, v in cols.items()}
    out["dp_replicate"] = table[rows, slots]
    return out


def candidate_groups(scenario: Scenario, layouts: np.ndarray) -> dict[str, np.ndarray]:
    """Layouts x schedules x knobs other than recompute, filtered by the plan rules."""
    return knob_rows(scenario, schedule_rows(scenario, layouts))


def group_chunks(scenario: Scenario, layouts: np.ndarray, max_groups: int | None,
                 on_layouts: Callable[[int], None] | None = None):
    """:func:`candidate_groups` in consecutive pieces of at most ``max_groups`` rows (one piece when
    None): concatenated, the pieces are exactly ``candidate_groups(scenario, layouts)``, in its order.

    Every rule is a per-row predicate and every cross product keeps the row-major order, so cutting the
    layouts, and then the schedules, into blocks and crossing each block separately changes nothing but
    the size of the arrays alive at once: blocks of layouts whose schedule grid is at most ``max_groups``
    rows, then blocks of schedules whose knob grid is at most that. ``on_layouts`` is told how many
    layouts have been crossed so far, after each block (for a progress display).
    """
    if max_groups is None:
        groups = candidate_groups(scenario, layouts)
        if on_layouts is not None:
            on_layouts(len(layouts))
        if len(groups["tp"]):
            yield groups
        return
    o = scenario.options
    per_layout = len(o.vpp_choices) * len(o.schedule_choices) * len(set(o.micro_batch_sizes))
    per_schedule = math.prod(len(values) for _, values in _knob_values(scenario)) * (1 + len(HSDP_DOMAIN_MULTIPLES))
    layout_block = max(1, max_groups // per_layout)
    schedule_block = max(1, max_groups // per_schedule)
    buffer: list[dict[str, np.ndarray]] = []
    size = 0
    for start in range(0, len(layouts), layout_block):
        schedules = schedule_rows(scenario, layouts[start:start + layout_block])
        for first in range(0, len(schedules["tp"]), schedule_block):
            piece = knob_rows(scenario, {k: v[first:first + schedule_block] for k, v in schedules.items()})
            rows = len(piece["tp"])
            if not rows:
                continue
            if buffer and size + rows > max_groups:
                yield _join(buffer)
                buffer, size = [], 0
            buffer.append(piece)
            size += rows
        if on_layouts is not None:
            on_layouts(min(start + layout_block, len(layouts)))
    if buffer:
        yield _join(buffer)


def _join(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(pieces) == 1:
        return pieces[0]
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


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
    plans = PlanArrays.from_columns(cols)
    # The launcher's own start-up rules, on the whole plan: several involve the recompute option.
    costs = scenario.costs
    for broken in framework_violations(scenario.options.framework, scenario.model, scenario.training, plans,
                                       cp_comm_type=costs.cp_comm_type, rank_order=costs.rank_order).values():
        valid &= ~broken
    return plans, valid.reshape(n, r)


def screen_memory(scenario: Scenario, plans: PlanArrays, option_valid: np.ndarray,
                  options: list[tuple[int, float, int]]) -> tuple[np.ndarray, float]:
    """Which (group, recompute option) plans fit in memory, and the least memory any plan needs.

    Recompute never adds memory: 'none' needs the most and full recompute of every layer the least
    (it keeps only each layer's input; every option shares the same one-layer backward working set).
    So a group whose 'none' plan fits fits with every option, and a group whose full-recompute plan
    does not fit fits with none; only the groups in between are priced option by option.
    """
    n_groups, n_options = option_valid.shape
    gpu_gib, headroom = scenario.cluster.gpu.memory_gib, scenario.options.memory_headroom
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
        all_fit = fits_in_memory(peak[:, most], gpu_gib, headroom)
        undecided = np.flatnonzero(~all_fit)
    if least is not None:
        price(undecided, least)
        none_fit[undecided] = ~fits_in_memory(peak[undecided, least], gpu_gib, headroom)
        undecided = undecided[~none_fit[undecided]]
    for option in range(n_options):
        if option not in (most, least):
            price(undecided, option)
    fits = option_valid & (fits_in_memory(peak, gpu_gib, headroom) | all_fit[:, None])
    fits[none_fit] = False
    priced = option_valid & ~np.isnan(peak)
    min_memory = float(np.min(np.where(priced, peak, np.inf))) if priced.any() else float("nan")
    return fits, min_memory


CHUNK_PLANS = 1 << 18
"""Plans (candidate groups x recompute options) expanded, screened and timed per chunk. The search's
memory is this chunk's arrays plus the running top plans, whatever the number of GPU counts or layouts;
at this size a chunk's arrays take some tens of MB and the per-chunk Python overhead is small."""

TIE_MARGIN = 4e-9
"""Two objective values further apart than this share of the rounding scale never tie in the ranking
(it rounds to 1e-9 of the scale: 3e-9 is enough, with room for the division's rounding error)."""

SCALE_GROWTH = 1e4
"""How far the rounding scale may still grow after a plan was dropped for the dropping to stay exact.
The scale is the largest magnitude of the objective among all timed plans (the fastest throughput, the
dearest cost per token), known only at the end; it grows with the GPU count, about 500x over a
2,048-1,048,576 range. Plans within TIE_MARGIN x SCALE_GROWTH of it are kept (a relative 4e-5 of
the K-th best throughput), and a search whose scale outgrew the margin is repeated with the scale known."""


class _TopPlans:
    """The running top K of the timed plans, for a search that sees them a chunk at a time.

    The ranking (:func:`optimizer.ranking.order_plans`) sorts on the objective rounded against the
    largest magnitude over *all* plans, then memory, GPUs and the plan's columns, then the order the
    plans were generated in. Rounding is monotone, so a plan whose objective is worse than K others by
    more than the rounding step comes after all K under any scale at least as fine as the one assumed:
    it can never be in the top K, and is dropped. With ``per_layout`` the list holds the best plan of
    each layout, so a plan is dropped when its own layout or K other layouts have a plan that beats it
    by that margin. The kept plans stay in generation order, so the final ranking of the kept plans with
    the scales of all plans is exactly the ranking of all plans, cut to K.
    """

    def __init__(self, objective: str, top_k: int, per_layout: bool, known_scale: float | None = None):
        self.objective, self.top_k, self.per_layout = objective, top_k, per_layout
        self.known_scale = known_scale
        self.plans: PlanArrays | None = None
        self.key = np.zeros(0)
        self.memory = np.zeros(0)
        self.key_scale = 0.0
        self.memory_scale = 0.0
        self.assumed_scale = np.inf
        """The least scale a dropping assumed: exact when the final scale is at most 4/3 of it."""

    def add(self, metrics: PlanMetrics) -> None:
        key = objective_key(metrics, self.objective)
        self.key_scale = max(self.key_scale, largest_magnitude(key))
        self.memory_scale = max(self.memory_scale, largest_magnitude(metrics.memory_bytes))
        if self.plans is None:
            self.plans, self.key, self.memory = metrics.plans, key, metrics.memory_bytes
        else:
            self.plans = PlanArrays.concatenate([self.plans, metrics.plans])
            self.key = np.concatenate([self.key, key])
            self.memory = np.concatenate([self.memory, metrics.memory_bytes])
        if len(self.key) > 2 * self.top_k:
            self._drop()

    def _drop(self) -> None:
        scale = self.known_scale if self.known_scale is not None else SCALE_GROWTH * self.key_scale
        margin = TIE_MARGIN * scale
        key, k = self.key, self.top_k
        if self.per_layout:
            _, layout = np.unique(layout_keys(self.plans), axis=0, return_inverse=True)
            layout = layout.ravel()
            best = np.full(layout.max() + 1, np.inf)
            np.fmin.at(best, layout, key)  # NaN keys are ignored; a layout of only NaN keys stays +inf
            keep = ~(key > best[layout] + margin)  # NaN keys are kept here, dropped below if K layouts beat them
            cutoff = np.partition(best, k - 1)[k - 1] if len(best) >= k else np.inf
        else:
            keep = np.ones(len(key), dtype=bool)
            cutoff = np.partition(key, k - 1)[k - 1]  # NaN sorts last
        if np.isfinite(cutoff):
            keep &= key <= cutoff + margin
        if keep.all():
            return
        self.assumed_scale = min(self.assumed_scale, scale)
        index = np.flatnonzero(keep)
        self.plans, self.key, self.memory = self.plans.take(index), key[index], self.memory[index]

    @property
    def exact(self) -> bool:
        """Whether every plan dropped was dropped under a scale the final one does not outgrow."""
        return self.key_scale <= self.assumed_scale * (TIE_MARGIN / 3e-9)

    def best(self) -> PlanArrays | None:
        if self.plans is None:
            return None
        order = order_plans(self.plans, self.key, self.memory, (self.key_scale or 1.0, self.memory_scale or 1.0))
        if self.per_layout:
            order = first_per_layout(order, self.plans)
        return self.plans.take(order[: self.top_k])


class _ParetoPlans:
    """The running cost-versus-time Pareto set of the timed plans (:func:`optimizer.ranking.pareto_front`).

    A plan off the front of some plans is off the front of any set containing them (a plan at least as
    fast and as cheap, and earlier in the order, stays in the set or is itself beaten by a kept one), so
    the front of (the front so far + the next chunk) is the front of all plans so far. The kept plans
    stay in generation order, which decides exact ties as in one call over every plan."""

    def __init__(self, price: float):
        self.price = price
        self.plans: PlanArrays | None = None
        self.time = np.zeros(0)
        self.cost = np.zeros(0)

    def add(self, metrics: PlanMetrics) -> None:
        time_s = 1.0 / effective_tokens_per_s(metrics)  # effective: failures, checkpoints, restarts counted
        cost = effective_gpu_seconds_per_token(metrics) * self.price
        if self.plans is None:
            plans = metrics.plans
        else:
            plans = PlanArrays.concatenate([self.plans, metrics.plans])
            time_s, cost = np.concatenate([self.time, time_s]), np.concatenate([self.cost, cost])
        keep = np.sort(pareto_front(time_s, cost))
        self.plans, self.time, self.cost = plans.take(keep), time_s[keep], cost[keep]

    def front(self, top_k: int) -> PlanArrays | None:
        if self.plans is None:
            return None
        return self.plans.take(pareto_front(self.time, self.cost)[:top_k])


def search(scenario: Scenario, keep_feasible: bool = False, keep_timed: bool = False, pareto: bool = False,
           chunk_plans: int | None = CHUNK_PLANS, progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Run the whole search; see the module docstring.

    The candidates are generated, screened and timed ``chunk_plans`` plans at a time (None: all at once),
    keeping only the running top K (and, with ``pareto``, the running cost-time front), so the memory
    does not grow with the search space. The answer and every count are the same for any chunk size.
    ``keep_feasible`` and ``keep_timed`` ask for every feasible plan, or the metrics of every timed plan,
    which do grow with it. ``progress(done, total)`` is called with the layouts crossed so far, once per
    block of layouts (a pass repeated for the rounding scale starts again from 0). The garbage collector
    is paused meanwhile: the search allocates large numpy
    arrays, not reference cycles, and the collections that the many small objects of the cost model
    would trigger cost time and free nothing.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        result, scale = _search(scenario, keep_feasible, keep_timed, pareto, chunk_plans, known_scale=None,
                                progress=progress)
        if result is None:  # the rounding scale outgrew the margin the dropped plans assumed: repeat
            result, _ = _search(scenario, keep_feasible, keep_timed, pareto, chunk_plans, known_scale=scale,
                                progress=progress)
        return result
    finally:
        if gc_was_enabled:
            gc.enable()


def _search(scenario: Scenario, keep_feasible: bool, keep_timed: bool, pareto: bool, chunk_plans: int | None,
            known_scale: float | None, progress: Callable[[int, int], None] | None = None
            ) -> tuple[SearchResult | None, float]:
    """One pass of :func:`search`; None (and the final scale) when plans were dropped under a rounding
    scale that the final one outgrew, so that the pass must be repeated with the scale known."""
    phases = dict.fromkeys(("layouts", "expand", "memory", "time", "rank"), 0.0)
    start = time.perf_counter()
    layout_model = LayoutModel(scenario.model, scenario.training, scenario.cluster, scenario.options,
                               scenario.gpu_counts)
    layouts = layout_model.enumerate_layouts()
    clock = time.perf_counter()
    phases["layouts"] = clock - start

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] += now - clock
        clock = now

    o = scenario.options
    options = recompute_options(scenario)
    n_options = len(options)
    top = _TopPlans(o.objective, o.top_k, o.best_per_layout, known_scale)
    front = _ParetoPlans(scenario.cluster.economics.price_per_gpu_hour_usd or 1.0) if pareto else None
    candidates = feasible = timed_count = 0
    least_memory: list[float] = []
    feasible_parts: list[PlanArrays] = []
    timed_parts: list[PlanMetrics] = []
    max_groups = None if chunk_plans is None else max(1, chunk_plans // n_options)
    on_layouts = None if progress is None else (lambda done: progress(done, len(layouts)))
    for groups in group_chunks(scenario, layouts, max_groups, on_layouts):
        plans, option_valid = expand_recompute(scenario, groups)
        n_groups = len(option_valid)
        lap("expand")

        fits, chunk_min = screen_memory(scenario, plans, option_valid, options)
        candidates += int(option_valid.sum())
        feasible += int(fits.sum())
        if not np.isnan(chunk_min):  # NaN: no plan of the chunk was priced
            least_memory.append(chunk_min)
        if keep_feasible:
            feasible_parts.append(plans.take(np.flatnonzero(fits.ravel())))
        lap("memory")

        any_fit = fits.any(axis=1)
        if o.objective == "memory_headroom":
            chosen = n_options - 1 - np.argmax(fits[:, ::-1], axis=1)
        else:
            chosen = np.argmax(fits, axis=1)  # least recompute that fits
        index = (np.arange(n_groups) * n_options + chosen)[any_fit]
        if len(index):
            metrics = evaluate(scenario.model, scenario.training, scenario.cluster, plans.take(index),
                               scenario.costs)
            timed_count += len(index)
            lap("time")
            top.add(metrics)
            if front is not None:
                front.add(metrics)
            if keep_timed:
                timed_parts.append(metrics)
            lap("rank")
        del plans, option_valid, fits

    if not top.exact:
        return None, top.key_scale
    ranked = pareto_ranked = None
    best = top.best()
    if best is not None:
        ranked = evaluate(scenario.model, scenario.training, scenario.cluster, best, scenario.costs)
        if front is not None:
            pareto_ranked = evaluate(scenario.model, scenario.training, scenario.cluster, front.front(o.top_k),
                                     scenario.costs)
    lap("rank")

    seconds = dict(phases, total=clock - start)
    return SearchResult(
        scenario=scenario, ranked=ranked, num_layouts=len(layouts), num_candidates=candidates,
        num_feasible=feasible, num_timed=timed_count,
        min_memory_bytes=min(least_memory) if least_memory else float("nan"), seconds=seconds,
        feasible_plans=_joined_plans(feasible_parts) if keep_feasible else None,
        timed=(PlanMetrics.concatenate(timed_parts) if timed_parts else None) if keep_timed else None,
        pareto=pareto_ranked,
    ), top.key_scale


def _joined_plans(parts: list[PlanArrays]) -> PlanArrays:
    parts = [p for p in parts if len(p)] or parts
    return PlanArrays.concatenate(parts) if parts else PlanArrays.from_columns({"tp": np.zeros(0, dtype=np.int64)})
