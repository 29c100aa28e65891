"""The serving search: price the plans of the knob grid in chunks, keep the best, the frontier and
what broke.

Each chunk of plans (:data:`CHUNK_PLANS`; aggregated and disaggregated plans in separate chunks) is one
call of the vectorised serving cost model (:func:`cost_model.serving.evaluate.evaluate_serving`), which
returns the metrics and a mask per named rule (:data:`cost_model.serving.rules.SERVING_RULES`, plus the
engine's start-up rules with ``--emit``). A plan *meets the SLO* when it breaks no rule; it is
*servable* when it breaks none but the latency SLO rules (:func:`is_slo_rule`). The search keeps,
across chunks:

- the ``top_k`` plans that meet the SLO, by the objective (:mod:`optimizer.serving.ranking`), the best
  knob setting of each layout unless ``best_per_layout`` is off;
- the Pareto frontier of tokens/s/GPU against tokens/s/user among servable plans (the frontier is the
  trade between the two, which the SLO picks a point on; plans off the SLO are marked, not hidden);
- how many plans break each rule, and how many break that rule alone (what binds);
- the servable plans closest to the SLO (for "nothing meets the SLO": how far the best ones miss).

Grids above :data:`EXHAUSTIVE_UP_TO` plans are priced coarse to fine: every layout at one chunk budget
with CUDA graphs on and every other max_num_seqs, then every knob variant of the leading layouts, the
frontier's and the closest to the SLO (``exhaustive`` prices all; on DeepSeek-V3 / 64 H200 and
GPT-OSS-120B / 64 B200 both give the same top plans, at an eighth of the plans).

Disaggregated plans pair prefill and decode instance layouts; the pairs and their prefill:decode
instance counts come from per-phase capacities priced over the instance grid first
(:func:`phase_candidates`), so the pair grid is the phases' best layouts of each size, not all pairs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cost_model.serving.plan import InstanceArrays, ServingPlanArrays
from hardware.schema import ClusterSpec

from .arrays import concat, take
from .grid import ServingGrid, aggregated_plans, concatenate, disaggregated_plans, instance_grid
from .ranking import (NEEDS_TARGET, OBJECTIVES, first_per_layout, key_scale, layout_keys, objective_key,
                      pareto_front, rank_order, row_ids, secondary_key)

CHUNK_PLANS = 32768
"""Plans priced per call of the cost model: large enough that numpy's per-call overhead is amortised,
small enough that a chunk's arrays (a few hundred per plan) stay within a few hundred MB."""
CLOSEST_KEPT = 32
"""Servable plans kept per chunk as the ones that come closest to the SLO (for the advice)."""
PHASE_LAYOUTS_PER_SIZE = 2
"""Per phase and instance size (GPUs), the layouts with the highest capacity per GPU that are paired."""


@dataclass(frozen=True)
class ServingScenario:
    """One serving search problem: what to serve, on what, under which load and SLOs, over which grid."""

    model: Any
    """The model's ModelSpec."""
    cluster: ClusterSpec
    workload: Any
    """The WorkloadSpec (lengths, arrival, SLOs)."""
    grid: ServingGrid
    objective: str = "goodput_per_gpu"
    """One of :data:`optimizer.serving.ranking.OBJECTIVES`."""
    top_k: int = 10
    """Plans to keep and show."""
    target_rate_per_s: float | None = None
    """Open-loop target rate (requests/s); None: the workload's own arrival, else max load."""
    target_concurrency: float | None = None
    """Closed-loop target concurrency (requests in flight); exclusive with the rate."""
    options: Any = None
    """ServingOptions (None: the cost model's defaults)."""
    model_source: str | None = None
    """What the user named the model by (preset or path), for emitted engine arguments."""
    best_per_layout: bool = True
    """Keep only the best knob setting (batch limit, chunk budget, CUDA graphs) of each layout in the
    top-K list, so it shows K different layouts."""
    engine: str | None = None
    """The serving engine the plans must start on (``--emit``): its start-up rules
    (:func:`optimizer.emit.serving.serving_violations`) join the cost model's."""
    exhaustive: bool = False
    """Price every plan of the grid, however many (default: coarse to fine above
    :data:`EXHAUSTIVE_UP_TO` plans)."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")


@dataclass
class Kept:
    """Some plans and their metrics (rows selected from priced chunks)."""

    plans: ServingPlanArrays
    metrics: Any

    def __len__(self) -> int:
        return len(self.plans)

    def rows(self, index: np.ndarray) -> "Kept":
        return Kept(self.plans.take(index), take(self.metrics, index, len(self.plans)))

    @staticmethod
    def join(parts: list["Kept"]) -> "Kept | None":
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return None
        return Kept(concatenate([p.plans for p in parts]), concat([p.metrics for p in parts]))


@dataclass
class ServingSearchResult:
    scenario: ServingScenario
    ranked: Kept | None
    """The best plans that meet every rule, best first (None when none does)."""
    pareto: Kept | None
    """The frontier of servable plans, most tokens/s/GPU first."""
    closest: Kept | None
    """Servable plans that come closest to the SLO, closest first (for the advice)."""
    candidates: int = 0
    """Plans priced."""
    grid_plans: int = 0
    """Plans in the grid (more than priced when the search ran coarse to fine)."""
    servable: int = 0
    """Plans that break no rule but the latency SLOs."""
    meeting_slo: int = 0
    broken: dict[str, int] = field(default_factory=dict)
    """Plans that break each rule."""
    broken_alone: dict[str, int] = field(default_factory=dict)
    """Plans that break that rule and no other."""
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.ranked is not None and len(self.ranked) > 0


def is_slo_rule(name: str) -> bool:
    """The latency SLO rules (TTFT, TPOT) among the cost model's named rules."""
    return "slo" in name or name.startswith(("ttft", "tpot"))


def evaluate(scenario: ServingScenario, plans: ServingPlanArrays):
    """The serving cost model on ``plans`` (one vectorised call), under the scenario's load; with an
    engine, its start-up rules are among the violations."""
    from cost_model.serving.evaluate import evaluate_serving

    metrics = evaluate_serving(scenario.model, scenario.cluster, scenario.workload, plans,
                               _options(scenario), target_rate_per_s=scenario.target_rate_per_s,
                               target_concurrency=scenario.target_concurrency)
    if scenario.engine:
        from optimizer.emit.serving import serving_violations

        metrics.violations.update(serving_violations(scenario.engine, plans, scenario.model, gpu=scenario.cluster.gpu))
    return metrics


def _options(scenario: ServingScenario):
    """The serving options plans are priced with: the scenario's own, else the defaults; either way with
    the runtime behaviour of the engine the plans will be emitted for (``--emit``: its overlap scheduler
    and KV reservation, :data:`cost_model.serving.options.ENGINE_RUNTIME`), so the command printed runs the
    plan that was priced."""
    from cost_model.serving.options import ServingOptions

    options = scenario.options if scenario.options is not None else ServingOptions()
    return options.for_engine(scenario.engine)


def candidate_plans(scenario: ServingScenario) -> ServingPlanArrays:
    """Every plan the search prices: aggregated instances x replicas, and disaggregated phase pairs."""
    grid = scenario.grid
    instances = instance_grid(grid)
    parts = []
    if "agg" in grid.modes:
        parts.append(aggregated_plans(instances, grid, fewest_replicas=not loaded(scenario)))
    if "disagg" in grid.modes:
        prefill, prefill_rate, decode, decode_rate = phase_candidates(scenario, instances)
        parts.append(disaggregated_plans(prefill, decode, prefill_rate, decode_rate, grid,
                                         fewest_replicas=not loaded(scenario)))
    return concatenate(parts)


def phase_candidates(scenario: ServingScenario, instances: InstanceArrays):
    """Prefill and decode instance layouts worth pairing, with the requests/s one instance of each
    sustains.

    Prefill: an instance fills each step with its chunk budget of prompt tokens on every attention
    rank, so it sustains ``attn_dp x chunk / (step(chunk) x new prompt tokens)`` requests/s; kept when
    one request's prefill alone fits the TTFT SLO. Its ``max_num_seqs`` only bounds the prompts of one
    step, so the screen takes the grid's value nearest vLLM's default 256. Decode: ``attn_dp x batch /
    (step(batch) x output tokens)`` requests/s at the batch its ``max_num_seqs`` and KV capacity allow,
    at the mean context (prompt + half the output); kept when that step fits the TPOT SLO. A decode
    instance runs no prompt chunks, so the screen takes one chunk budget (:func:`coarse_chunk`). Both
    also need the weights and one max-length request to fit. Of each instance size, the
    :data:`PHASE_LAYOUTS_PER_SIZE` with the most requests/s per GPU are kept (phase prices from
    :mod:`cost_model.serving.step`)."""
    from cost_model.serving.memory import instance_memory
    from cost_model.serving.step import price_instances

    model, cluster, workload = scenario.model, scenario.cluster, scenario.workload
    options = _options(scenario)
    lengths = phase_lengths(workload)
    seqs_values = np.asarray(scenario.grid.max_num_seqs_values)
    prefill_seqs = seqs_values[np.lexsort((-seqs_values, np.abs(np.log2(seqs_values / 256.0))))[0]]
    prefill = instances.take(np.flatnonzero(instances.max_num_seqs == prefill_seqs))
    decode = instances.take(np.flatnonzero(instances.max_num_batched_tokens == coarse_chunk(scenario.grid)))

    def screen(pool: InstanceArrays):
        memory = instance_memory(model, cluster.gpu, pool, lengths["max_model_len"], options)
        fits = np.asarray(memory.weights_fit) & np.asarray(memory.kv_fits_one_request)
        return memory, price_instances(model, cluster, pool, options), fits

    memory, pricing, fits = screen(prefill)
    chunk = prefill.max_num_batched_tokens.astype(float)
    new, cached = lengths["new_input_tokens"], lengths["input_tokens"] - lengths["new_input_tokens"]
    prefill_s = np.asarray(pricing.prefill(chunk, cached, request_tokens=new).total_s, dtype=float)
    one_request_s = np.asarray(pricing.prefill(np.full_like(chunk, new), cached).total_s, dtype=float)
    prefill_rate = prefill.attn_dp * chunk / (prefill_s * new)
    prefill_ok = fits & np.asarray(memory.prefill_workspace_fits) & (one_request_s * 1e3 <= lengths["ttft_ms"])
    memory, pricing, fits = screen(decode)
    per_rank = np.maximum(np.asarray(memory.max_concurrency, dtype=float) / decode.attn_dp, 0)
    batch = np.maximum(np.minimum(decode.max_num_seqs, np.floor(per_rank)), 1)
    decode_s = np.asarray(pricing.decode_step(batch, lengths["decode_context_tokens"]).total_s, dtype=float)
    decode_rate = decode.attn_dp * batch / (decode_s * lengths["output_tokens"])
    decode_ok = fits & (per_rank >= 1) & (decode_s * 1e3 <= lengths["tpot_ms"])
    prefill_keep = best_per_size(prefill.gpus, prefill_rate / prefill.gpus, prefill_ok)
    decode_keep = best_per_size(decode.gpus, decode_rate / decode.gpus, decode_ok)
    return (prefill.take(prefill_keep), prefill_rate[prefill_keep], decode.take(decode_keep),
            decode_rate[decode_keep])


def phase_lengths(workload: Any) -> dict[str, float]:
    """Mean lengths and SLOs of the workload in the terms the phase screen uses: prompt tokens, those
    computed (prefix-cache hits are not), output tokens, the mean context of a decode step (the prompt
    plus half the output, averaged over a request's life), the longest request, and the SLO targets
    (infinite without an SLO)."""
    input_tokens = float(workload.input_tokens.mean())
    output_tokens = float(workload.output_tokens.mean())
    slo = workload.slo
    return {"input_tokens": input_tokens, "new_input_tokens": max(float(workload.prefill_tokens_mean), 1.0),
            "output_tokens": max(output_tokens, 1.0), "decode_context_tokens": input_tokens + output_tokens / 2,
            "max_model_len": int(workload.model_len),
            "ttft_ms": float(slo.ttft_ms) if slo else math.inf, "tpot_ms": float(slo.tpot_ms) if slo else math.inf}


def best_per_size(gpus: np.ndarray, score: np.ndarray, ok: np.ndarray, per_size: int = PHASE_LAYOUTS_PER_SIZE) -> np.ndarray:
    """Indices of the ``per_size`` highest-scoring ``ok`` entries of each GPU count (ties: lower index)."""
    index = np.flatnonzero(ok & np.isfinite(score))
    if len(index) == 0:
        return index
    order = index[np.lexsort((index, -score[index], gpus[index]))]
    # equal scores within a size are the same instance for this phase (a prefill instance does not
    # depend on max_num_seqs): keep the first
    rounded = np.round(score[order] / max(float(np.max(np.abs(score[order]))), 1e-300), 9)
    fresh = np.ones(len(order), dtype=bool)
    fresh[1:] = (gpus[order][1:] != gpus[order][:-1]) | (rounded[1:] != rounded[:-1])
    order = order[fresh]
    sizes = gpus[order]
    start = np.searchsorted(sizes, sizes, side="left")
    rank_in_size = np.arange(len(order)) - start
    return np.sort(order[rank_in_size < per_size])


class _Accumulator:
    """What the search keeps across chunks of priced plans (module docstring)."""

    def __init__(self, scenario: ServingScenario, pareto: bool):
        self.scenario, self.pareto = scenario, pareto
        self.ranked: list[Kept] = []
        self.front: list[Kept] = []
        self.closest: list[Kept] = []
        self.broken: dict[str, int] = {}
        self.alone: dict[str, int] = {}
        self.candidates = self.servable = self.meeting = 0
        self.scale = 0.0
        self.layout_best: list[tuple[np.ndarray, np.ndarray]] = []
        """Per chunk: each plan's layout key and objective key where it meets the SLO (for refinement)."""

    def add(self, chunk: ServingPlanArrays, metrics: Any) -> None:
        scenario = self.scenario
        masks = {name: np.asarray(mask, dtype=bool) for name, mask in metrics.violations.items()}
        count = np.zeros(len(chunk), dtype=np.int64)
        hard = np.zeros(len(chunk), dtype=bool)
        for name, mask in masks.items():
            count += mask
            if not is_slo_rule(name):
                hard |= mask
        for name, mask in masks.items():
            self.broken[name] = self.broken.get(name, 0) + int(mask.sum())
            self.alone[name] = self.alone.get(name, 0) + int((mask & (count == 1)).sum())
        ok = count == 0
        servable_index = np.flatnonzero(~hard)
        self.candidates += len(chunk)
        self.servable += len(servable_index)
        self.meeting += int(ok.sum())
        key = objective_key(metrics, scenario.objective)
        kept = Kept(chunk, metrics)
        if ok.any():
            self.scale = max(self.scale, key_scale(key[ok]))
            index = np.flatnonzero(ok)
            best = index[_top(chunk.take(index), take(metrics, index, len(chunk)), self.scale, scenario)]
            self.ranked.append(kept.rows(best))
        if len(servable_index):
            if self.pareto:
                front = servable_index[pareto_front(metrics.output_tokens_per_s_per_gpu[servable_index],
                                                    metrics.tokens_per_s_per_user[servable_index])]
                self.front.append(kept.rows(front))
            miss = slo_miss(metrics, scenario.workload)[servable_index]
            near = servable_index[np.lexsort((servable_index, miss))[:CLOSEST_KEPT]]
            self.closest.append(kept.rows(near))

    def result(self, seconds: dict[str, float], grid_plans: int) -> ServingSearchResult:
        scenario = self.scenario
        ranked = _final_rank(Kept.join(self.ranked), scenario, self.scale)
        front = Kept.join(self.front)
        if front is not None:
            front = front.rows(pareto_front(front.metrics.output_tokens_per_s_per_gpu,
                                            front.metrics.tokens_per_s_per_user))
        closest = Kept.join(self.closest)
        if closest is not None:
            closest = closest.rows(np.lexsort((np.arange(len(closest)),
                                               slo_miss(closest.metrics, scenario.workload)))[:CLOSEST_KEPT])
        return ServingSearchResult(scenario=scenario, ranked=ranked, pareto=front, closest=closest, grid_plans=grid_plans,
                                   candidates=self.candidates, servable=self.servable, meeting_slo=self.meeting,
                                   broken=dict(sorted(self.broken.items())), broken_alone=dict(sorted(self.alone.items())),
                                   seconds=seconds)


def _price(scenario: ServingScenario, plans: ServingPlanArrays, into: _Accumulator,
           progress: Callable[[int, int], None] | None, done: int, total: int) -> int:
    """Price ``plans`` chunk by chunk into the accumulator, aggregated plans and disaggregated ones in
    separate chunks (the cost model prices a chunk's second phase for every plan when any is
    disaggregated); returns the plans done so far."""
    for mode in (False, True):
        group = plans.take(np.flatnonzero(plans.disaggregated == mode))
        for start in range(0, len(group), CHUNK_PLANS):
            chunk = group.take(slice(start, min(start + CHUNK_PLANS, len(group))))
            into.add(chunk, evaluate(scenario, chunk))
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return done


def search_serving(scenario: ServingScenario, pareto: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> ServingSearchResult:
    """Price the candidate plans and keep the best, the frontier and the rule counts (see the module
    docstring). ``progress(done, total)`` is called after each chunk. A KeyboardInterrupt propagates:
    no partial result is returned.

    Grids above :data:`EXHAUSTIVE_UP_TO` plans (unless ``scenario.exhaustive``) are searched coarse to
    fine (:func:`coarse_mask`, :func:`refined`): every layout at one chunk budget with CUDA graphs,
    then every knob variant of the layouts that lead, lie on the frontier or come closest to the SLO."""
    started = time.perf_counter()
    if scenario.objective in NEEDS_TARGET and scenario.target_rate_per_s is None \
            and scenario.target_concurrency is None and not _workload_has_target(scenario.workload):
        raise ValueError(f"objective {scenario.objective} needs a target rate or concurrency")
    plans = candidate_plans(scenario)
    enumerated = time.perf_counter()
    into = _Accumulator(scenario, pareto)
    if scenario.exhaustive or len(plans) <= EXHAUSTIVE_UP_TO:
        _price(scenario, plans, into, progress, 0, len(plans))
    else:
        coarse = coarse_mask(plans, scenario.grid)
        first = plans.take(np.flatnonzero(coarse))
        done = _price(scenario, first, into, progress, 0, len(first))
        fine = np.flatnonzero(~coarse & refined(into, plans))
        _price(scenario, plans.take(fine), into, progress, done, done + len(fine))
    done = time.perf_counter()
    return into.result({"enumerate": enumerated - started, "price": done - enumerated, "total": done - started},
                       len(plans))


EXHAUSTIVE_UP_TO = 16384
"""Grids of at most this many plans are priced whole; larger ones coarse to fine (under a second either
way on one core, at the cost model's ~50 us per plan)."""
REFINED_LAYOUTS = 16
"""Layouts whose every knob variant is priced in the fine pass, beyond those on the frontier and those
closest to the SLO: the leaders by the objective (at least ``top_k``)."""


COARSE_SEQS_STEP = 2
"""The coarse pass takes every other max_num_seqs of the grid (1, 4, 16, 64, 256, 1024 of 1..1024)."""


def coarse_chunk(grid: ServingGrid) -> int:
    """The chunk budget of the coarse pass: 8,192 where the grid has it (SGLang's and TensorRT-LLM's
    default), else the grid's middle value."""
    chunks = sorted(grid.chunk_token_values)
    return 8192 if 8192 in chunks else chunks[len(chunks) // 2]


def coarse_mask(plans: ServingPlanArrays, grid: ServingGrid) -> np.ndarray:
    """The coarse pass: aggregated plans at one chunk budget (:func:`coarse_chunk`) with CUDA graphs on
    where the grid has them, at every other max_num_seqs (:data:`COARSE_SEQS_STEP`); every disaggregated
    plan (the phase screen already chose their knobs)."""
    seqs = np.asarray(sorted(grid.max_num_seqs_values))[::-1][::COARSE_SEQS_STEP]  # the largest always in
    graphs = True in grid.cuda_graph_values
    d = plans.decode
    return plans.disaggregated | ((d.max_num_batched_tokens == coarse_chunk(grid)) & (d.cuda_graphs == graphs)
                                  & np.isin(d.max_num_seqs, seqs))


def refined(into: _Accumulator, plans: ServingPlanArrays) -> np.ndarray:
    """Which of ``plans`` share a layout (:func:`optimizer.serving.ranking.layout_keys`) with the coarse
    pass's leaders (:data:`REFINED_LAYOUTS` distinct layouts, at least ``top_k``), its frontier or the
    plans closest to the SLO: the fine pass prices every knob variant of those layouts."""
    scenario = into.scenario
    chosen = []
    for parts in (into.ranked, into.front, into.closest):
        kept = Kept.join(parts)
        if kept is None:
            continue
        if parts is into.ranked:
            order = first_per_layout(rank_order(kept.plans, objective_key(kept.metrics, scenario.objective)), kept.plans)
            kept = kept.rows(order[:max(REFINED_LAYOUTS, scenario.top_k)])
        chosen.append(layout_keys(kept.plans))
    mask = np.zeros(len(plans), dtype=bool)
    if chosen:
        mask[_rows_in(layout_keys(plans), np.unique(np.concatenate(chosen), axis=0))] = True
    return mask


def _rows_in(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``keys`` that appear in ``wanted``."""
    ids = row_ids(np.concatenate([wanted, keys]))
    return np.flatnonzero(np.isin(ids[len(wanted):], ids[:len(wanted)]))


def _top(plans: ServingPlanArrays, metrics: Any, scale: float | None, scenario: ServingScenario) -> np.ndarray:
    """Indices of the ``top_k`` best plans (the best of each layout with ``best_per_layout``; for
    ``min_gpus``, whose figure is the fleet a layout needs, replica counts of one layout are one layout)."""
    objective = scenario.objective
    order = rank_order(plans, objective_key(metrics, objective), scale, secondary_key(metrics, objective))
    if scenario.best_per_layout:
        order = first_per_layout(order, plans, counts=objective != "min_gpus")
    return order[:scenario.top_k]


def _final_rank(kept: Kept | None, scenario: ServingScenario, scale: float) -> Kept | None:
    if kept is None:
        return None
    return kept.rows(_top(kept.plans, kept.metrics, scale or None, scenario))


def at_slo_quantile(metrics, workload) -> tuple[np.ndarray, np.ndarray]:
    """TTFT and TPOT (ms) at the quantile the workload's SLO binds (:attr:`SLOSpec.quantile`): the cost
    model's ``ttft_ms_slo`` / ``tpot_ms_slo`` where it states them, else the smallest of its p50/p90/p99
    columns at or above the quantile (p99 beyond)."""
    if getattr(metrics, "ttft_ms_slo", None) is not None and getattr(metrics, "tpot_ms_slo", None) is not None:
        return np.asarray(metrics.ttft_ms_slo, dtype=float), np.asarray(metrics.tpot_ms_slo, dtype=float)
    quantile = workload.slo.quantile if workload.slo is not None else 0.99
    column = next((p for p, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)) if q >= quantile - 1e-12), "p99")
    return (np.asarray(getattr(metrics, f"ttft_ms_{column}"), dtype=float),
            np.asarray(getattr(metrics, f"tpot_ms_{column}"), dtype=float))


def slo_miss(metrics, workload) -> np.ndarray:
    """How far each plan is from its SLOs: the larger of TTFT / its target and TPOT / its target at the
    SLO's quantile (1 or less meets both); 0 without an SLO."""
    if workload.slo is None:
        return np.zeros(len(np.asarray(metrics.output_tokens_per_s_per_gpu)))
    ttft, tpot = at_slo_quantile(metrics, workload)
    miss = np.maximum(ttft / workload.slo.ttft_ms, tpot / workload.slo.tpot_ms)
    return np.where(np.isfinite(miss), miss, np.inf)


def loaded(scenario: ServingScenario) -> bool:
    """Whether the plans serve a given load (a target rate or concurrency, or the workload's arrival);
    else they are priced at max load."""
    return (scenario.target_rate_per_s is not None or scenario.target_concurrency is not None
            or _workload_has_target(scenario.workload))


def _workload_has_target(workload: Any) -> bool:
    return getattr(workload, "request_rate_per_s", None) is not None or getattr(workload, "concurrency", None) is not None

