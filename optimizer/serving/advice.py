"""When no plan meets the SLO: what binds, and which relaxations would let plans through.

*What binds* comes from the search's rule counts: the rules that the most plans break alone (removing
that rule alone would admit them), and how far the servable plans closest to the SLO miss it.

*What would* is found by searching again, each time with one thing relaxed, with the same vectorised
evaluation (nothing is guessed from the first search's numbers):

- ``more_gpus``: a GPU budget 2x and 4x the one searched (the cluster grown in whole nodes if needed);
- ``fp8_kv``: FP8 KV cache added (halves KV bytes; on GPUs with FP8);
- ``fp8_weights``: FP8 weights added (halves BF16 weight bytes and reads; on GPUs with FP8);
- ``shorter_max_len``: half the longest request (``--max-model-len``), not below the longest prompt;
- ``looser_tpot`` / ``looser_ttft``: the target the closest servable plan reaches (rounded up);
- ``disaggregation``: prefill/decode disaggregated plans added.

Each relaxation says whether it succeeds, how many plans then meet the SLO and the best one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cost_model.serving.rules import kv_dtype_supported
from hardware.errors import InputError

from .inputs import precision_supported

RELAXATIONS = ("more_gpus", "fp8_kv", "fp8_weights", "shorter_max_len", "looser_tpot", "looser_ttft",
               "disaggregation")
BINDING_SHOWN = 3
"""Rules named in "what binds"."""
MORE_GPUS_FACTORS = (2, 4)
"""GPU budgets tried by ``more_gpus``, as multiples of the one searched."""


@dataclass
class Relaxation:
    name: str
    """One of :data:`RELAXATIONS`."""
    change: str
    """What was relaxed, as the flag or value a user would change."""
    tried: bool
    succeeds: bool = False
    meeting_slo: int = 0
    """Plans that then meet every rule."""
    best: str | None = None
    """The best of them, in a line."""
    reason: str | None = None
    """Why it was not tried."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Advice:
    candidates: int
    binding: list[dict[str, Any]] = field(default_factory=list)
    """The rules broken alone by the most plans: ``{"rule", "plans_breaking_alone", "plans_breaking"}``."""
    closest: dict[str, Any] | None = None
    """The servable plan closest to the SLO: its layout, latencies at the SLO percentile and the targets."""
    relaxations: list[Relaxation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "binding": self.binding, "closest": self.closest,
                "relaxations": [r.to_dict() for r in self.relaxations]}

    def text(self) -> str:
        lines = [f"No plan meets every rule ({self.candidates:,} priced). What binds:"]
        for b in self.binding:
            lines.append(f"  {b['rule']}: broken by {b['plans_breaking']:,} plans, by {b['plans_breaking_alone']:,} "
                         "and no other rule")
        if self.closest:
            c = self.closest
            lines.append(f"  closest servable plan: {c['plan']}: TTFT p{c['percentile']:g} {c['ttft_ms']:.0f} ms "
                         f"(SLO {c['ttft_slo_ms']:g}), TPOT p{c['percentile']:g} {c['tpot_ms']:.1f} ms "
                         f"(SLO {c['tpot_slo_ms']:g}) at {c['load']}")
        else:
            lines.append("  no plan is servable even without the latency SLOs")
        lines.append("What would (each searched again with one change):")
        for r in self.relaxations:
            if not r.tried:
                lines.append(f"  {r.name}: not tried ({r.reason})")
            elif r.succeeds:
                lines.append(f"  {r.name} ({r.change}): yes, {r.meeting_slo:,} plans; best {r.best}")
            else:
                lines.append(f"  {r.name} ({r.change}): no")
        return "\n".join(lines)


def advise(result, relax: tuple[str, ...] = RELAXATIONS) -> Advice:
    """What binds in ``result`` (a :class:`~optimizer.serving.search.ServingSearchResult` without plans)
    and which of the ``relax`` relaxations succeed."""
    from .report import plan_label

    scenario = result.scenario
    binding = sorted(((name, alone, result.broken.get(name, 0)) for name, alone in result.broken_alone.items()),
                     key=lambda item: (-item[1], -item[2], _rule_rank(item[0])))
    alone = [b for b in binding if b[1] > 0]
    binding = (alone or [b for b in binding if b[2] > 0])[:BINDING_SHOWN]
    advice = Advice(candidates=result.candidates,
                    binding=[{"rule": n, "plans_breaking_alone": a, "plans_breaking": c} for n, a, c in binding])
    slo = scenario.workload.slo
    closest = result.closest
    if closest is not None and len(closest) and slo is not None:
        ttft, tpot, load = reachable_latencies(result)
        best = int(np.argmin(np.maximum(ttft / slo.ttft_ms, tpot / slo.tpot_ms)))
        advice.closest = {"plan": plan_label(closest.plans.record(best)), "percentile": 100 * slo.quantile,
                          "ttft_ms": float(ttft[best]), "tpot_ms": float(tpot[best]), "ttft_slo_ms": slo.ttft_ms,
                          "tpot_slo_ms": slo.tpot_ms, "load": load}
    for name in relax:
        advice.relaxations.append(_relaxation(name, result))
    return advice


def _rule_rank(name: str) -> tuple[int, str]:
    """Rules broken by as many plans are named in the cost model's order (layout, then memory from the
    weights to the KV cache, then load and latency): the earlier one is the cause of the later ones (no
    room for the weights leaves none for the KV cache). Engine rules come after."""
    from cost_model.serving.rules import SERVING_RULES

    order = list(SERVING_RULES)
    return (order.index(name), name) if name in order else (len(order), name)


def reachable_latencies(result) -> tuple[np.ndarray, np.ndarray, str]:
    """TTFT and TPOT (ms) of the servable plans closest to the SLO, at the SLO's quantile, and the load
    they are at. Under a target load (or the workload's arrival) they are the search's own figures; at max
    load they are priced again with one request in flight in the fleet, the lowest latencies a plan
    reaches at any load (max-load latencies, every engine full, would overstate what a looser SLO needs)."""
    from .search import at_slo_quantile, evaluate, loaded

    scenario, closest = result.scenario, result.closest
    if loaded(scenario):
        ttft, tpot = at_slo_quantile(closest.metrics, scenario.workload)
        return ttft, tpot, closest.metrics.load
    alone = dataclasses.replace(scenario, target_concurrency=LOWEST_LOAD_CONCURRENCY)
    metrics = evaluate(alone, closest.plans)
    ttft, tpot = at_slo_quantile(metrics, scenario.workload)
    return ttft, tpot, metrics.load


LOWEST_LOAD_CONCURRENCY = 1.0
"""Requests in flight at which the advice prices a max-load search's closest plans: one, alone."""


def _relaxation(name: str, result) -> Relaxation:
    scenario = result.scenario
    grid, workload, cluster = scenario.grid, scenario.workload, scenario.cluster
    if name == "more_gpus":
        tried = []
        for factor in MORE_GPUS_FACTORS:
            budget = grid.max_gpus * factor
            try:
                grown = _cluster_with(cluster, budget)
            except (InputError, ValueError) as error:  # e.g. a rack-scale cluster that only grows by racks
                return Relaxation(name, f"--gpus {budget}", False, reason=f"the cluster cannot grow to {budget}: {error}")
            tried.append(str(budget))
            relaxed = dataclasses.replace(scenario, cluster=grown, grid=dataclasses.replace(grid, max_gpus=budget))
            outcome = _search(relaxed, name, f"--gpus {budget}" + ("" if grown is cluster else f" ({grown.name})"))
            if outcome.succeeds:
                return outcome
        outcome.change = "--gpus " + " and ".join(tried)
        return outcome
    if name == "fp8_kv":
        if "fp8" in grid.kv_dtypes:
            return Relaxation(name, "--kv-dtype bf16,fp8", False, reason="FP8 KV was already searched")
        if not kv_dtype_supported(cluster.gpu, "fp8"):
            return Relaxation(name, "--kv-dtype fp8", False, reason=f"the {cluster.gpu.name} has no FP8")
        relaxed = dataclasses.replace(scenario, grid=dataclasses.replace(grid, kv_dtypes=grid.kv_dtypes + ("fp8",)))
        return _search(relaxed, name, "--kv-dtype " + ",".join(grid.kv_dtypes + ("fp8",)))
    if name == "fp8_weights":
        if "fp8" in grid.weight_precisions:
            return Relaxation(name, "--precision fp8", False, reason="FP8 weights were already searched")
        if not precision_supported(cluster.gpu, "fp8"):
            return Relaxation(name, "--precision fp8", False, reason=f"the {cluster.gpu.name} serves no FP8 weights")
        precisions = grid.weight_precisions + ("fp8",)
        relaxed = dataclasses.replace(scenario, grid=dataclasses.replace(grid, weight_precisions=precisions))
        return _search(relaxed, name, "--precision " + ",".join(precisions))
    if name == "shorter_max_len":
        shortest = int(math.ceil(workload.input_tokens.longest())) + 1
        length = max(workload.model_len // 2, shortest)
        if length >= workload.model_len:
            return Relaxation(name, f"--max-model-len {length}", False,
                              reason="the longest prompt already needs the whole length")
        relaxed = dataclasses.replace(scenario, workload=workload.with_changes(max_model_len=length))
        return _search(relaxed, name, f"--max-model-len {length}")
    if name in ("looser_tpot", "looser_ttft"):
        return _looser(name, result)
    if name == "disaggregation":
        if "disagg" in grid.modes:
            return Relaxation(name, "--modes agg,disagg", False, reason="disaggregated plans were already searched")
        relaxed = dataclasses.replace(scenario, grid=dataclasses.replace(grid, modes=grid.modes + ("disagg",)))
        return _search(relaxed, name, "--modes " + ",".join(grid.modes + ("disagg",)))
    raise ValueError(f"unknown relaxation {name!r}")


def _looser(name: str, result) -> Relaxation:
    """The SLO target the closest servable plan reaches, searched again with it."""
    scenario = result.scenario
    slo = scenario.workload.slo
    which = "tpot" if name == "looser_tpot" else "ttft"
    if slo is None:
        return Relaxation(name, f"{which}_ms", False, reason="the workload has no SLO")
    closest = result.closest
    if closest is None or not len(closest):
        return Relaxation(name, f"{which}_ms", False, reason="no plan is servable even without the latency SLOs")
    ttft, tpot, _ = reachable_latencies(result)
    other_ok = (tpot <= slo.tpot_ms) if which == "ttft" else (ttft <= slo.ttft_ms)
    reached = (ttft if which == "ttft" else tpot)[other_ok]
    if not len(reached) or not np.isfinite(reached).any():
        return Relaxation(name, f"{which}_ms", False,
                          reason=f"no servable plan meets the {'TPOT' if which == 'ttft' else 'TTFT'} SLO either")
    target = _round_up(float(np.nanmin(reached)))
    current = slo.ttft_ms if which == "ttft" else slo.tpot_ms
    relaxed_slo = dataclasses.replace(slo, **{f"{which}_ms": max(target, current)})
    relaxed = dataclasses.replace(scenario, workload=scenario.workload.with_changes(slo=relaxed_slo))
    return _search(relaxed, name, f"{which.upper()} SLO {max(target, current):g} ms instead of {current:g}")


def _round_up(value: float) -> float:
    """Up to two significant digits (37.2 -> 38, 412 -> 420, 1.23 -> 1.3)."""
    if value <= 0:
        return value
    step = 10 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / step - 1e-9) * step


def _cluster_with(cluster, gpus: int):
    """The cluster, grown in whole nodes to hold ``gpus`` when it is smaller."""
    if cluster.num_gpus >= gpus:
        return cluster
    per_node = cluster.topology.gpus_per_node
    nodes = -(-gpus // per_node)
    return cluster.with_overrides({"topology.num_nodes": nodes, "name": f"{cluster.name} grown to {nodes * per_node}"},
                                  source="advice")


def _search(relaxed, name: str, change: str) -> Relaxation:
    from .report import plan_label
    from .search import search_serving

    outcome = search_serving(dataclasses.replace(relaxed, top_k=1), pareto=False)
    if not outcome.found:
        return Relaxation(name, change, True, False, 0)
    best = outcome.ranked
    return Relaxation(name, change, True, True, outcome.meeting_slo,
                      best=f"{plan_label(best.plans.record(0))} ({int(best.plans.num_gpus[0])} GPUs)")
