"""Why nothing fits, by how much, and what would make it fit.

Three levels, checked in order:

1. No layout: CP-SAT returns a set of named layout rules that cannot hold together (its assumption
   core), e.g. heads not divisible by any tp that stays inside the node.
2. No schedule: every layout breaks a schedule or knob rule (batch, interleaving, layer split); the
   rule that rejects the most candidates is reported.
3. Memory: the least memory any candidate needs, against the GPU's usable memory and the headroom, and
   what-if searches that do fit: every recompute mode or ZeRO stage (when the search was limited),
   optimizer offload, more nodes, a GPU with enough memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cost_model.memory import GIB
from cost_model.plan import PlanArrays

from .layout_model import LAYOUT_COLUMNS, RULES, LayoutModel
from .emit import framework_rules
from .plan_rules import rule_sentence, violations
from .search import Scenario, SearchResult, search


@dataclass
class Explanation:
    binding: str
    """Name of the binding rule, or ``memory_per_gpu``."""
    message: str
    """What binds and by how much, in one sentence."""
    suggestions: list[str] = field(default_factory=list)
    """What-ifs that were searched and do fit."""
    needed_gib: float | None = None
    available_gib: float | None = None

    def text(self) -> str:
        lines = [self.message]
        if self.suggestions:
            lines.append("what would fit: " + "; ".join(self.suggestions))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"binding_constraint": self.binding, "message": self.message, "suggestions": self.suggestions,
                "needed_gib": self.needed_gib, "available_gib": self.available_gib}


def explain_no_fit(result: SearchResult) -> Explanation:
    sc = result.scenario
    if result.num_layouts == 0:
        model = LayoutModel(sc.model, sc.training, sc.cluster, sc.options, sc.gpu_counts)
        rules = model.conflicting_rules() or sorted(RULES)
        described = "; ".join(f"{r} ({RULES[r]})" for r in rules)
        return Explanation(binding=rules[0], message=f"no parallel layout satisfies these rules together: {described}")
    if result.num_candidates == 0:
        return _schedule_explanation(sc)
    return _memory_explanation(result)


def _schedule_explanation(sc: Scenario) -> Explanation:
    model = LayoutModel(sc.model, sc.training, sc.cluster, sc.options, sc.gpu_counts)
    layouts = model.enumerate_layouts()
    cols = {name: layouts[:, i] for i, name in enumerate(LAYOUT_COLUMNS) if name != "num_gpus"}
    n = len(layouts)
    vpp = np.array(sc.options.vpp_choices)
    mbs = np.array(sorted(sc.options.micro_batch_sizes))
    grid = {k: np.repeat(v, len(vpp) * len(mbs)) for k, v in cols.items()}
    grid["vpp"] = np.tile(np.repeat(vpp, len(mbs)), n)
    grid["micro_batch"] = np.tile(mbs, n * len(vpp))
    costs = sc.costs
    broken = violations(sc.model, sc.training, PlanArrays.from_columns(grid), sc.options.uneven_pipeline,
                        sc.options.framework, cp_comm_type=costs.cp_comm_type, rank_order=costs.rank_order)
    worst = max(broken, key=lambda name: int(broken[name].sum()))
    if not broken[worst].any():  # only recompute options break rules: the framework's, on them
        rules = "; ".join(f"{name} ({sentence})" for name, sentence in framework_rules(sc.options.framework).items())
        return Explanation(binding="framework_rules", message=(
            f"{sc.options.framework} refuses every remaining plan at start-up: {rules}"))
    if worst in framework_rules(sc.options.framework):
        return Explanation(binding=worst, message=(
            f"{sc.options.framework} refuses every plan; the most common reason is {worst}: {rule_sentence(worst)}"))
    return Explanation(binding=worst, message=(
        f"every layout breaks a schedule rule; the most common is {worst}: {rule_sentence(worst)} "
        f"(global batch {sc.training.global_batch_size} sequences, micro-batch sizes {[int(size) for size in mbs]})"))


def _memory_explanation(result: SearchResult) -> Explanation:
    sc = result.scenario
    gpu = sc.cluster.gpu
    needed = result.min_memory_bytes / GIB
    limit = sc.memory_limit_bytes / GIB
    headroom = sc.options.memory_headroom
    after = f", {limit:.1f} GiB after the {headroom:.0%} headroom" if headroom else ""
    message = (f"the plan that needs the least memory needs {needed:.1f} GiB per GPU; "
               f"the {gpu.name} has {gpu.memory_gib:.1f} GiB usable{after} ({needed - limit:.1f} GiB short)")
    suggestions = []
    options = sc.options
    variants = []
    if set(options.recompute_modes) != {"none", "selective", "full"} or not options.partial_recompute:
        variants.append(("enable full recompute", {"options": options.with_changes(
            recompute_modes=("none", "selective", "full"), partial_recompute=True)}))
    if set(options.zero_stages) != {0, 1, 2, 3}:
        variants.append(("allow ZeRO-3 / FSDP", {"options": options.with_changes(zero_stages=(0, 1, 2, 3))}))
    if not options.allow_offload:
        variants.append(("offload the optimizer to the CPU (--allow-offload)",
                         {"options": options.with_changes(allow_offload=True)}))
    nodes = sc.cluster.topology.num_nodes
    for factor in (2, 4, 8, 16, 32, 64):
        cluster = sc.cluster.with_overrides({"topology.num_nodes": nodes * factor})
        variants.append((f"use {nodes * factor} nodes ({cluster.num_gpus} GPUs)",
                         {"cluster": cluster, "options": options.with_changes(gpu_counts=())}))
    for label, change in variants:
        trial = Scenario(model=sc.model, training=sc.training, cluster=change.get("cluster", sc.cluster),
                         options=change.get("options", options).with_changes(top_k=1),
                         cost_options=sc.cost_options)
        outcome = search(trial)
        if outcome.found:
            best = outcome.ranked
            suggestions.append(f"{label}: best plan {best.memory_gib[0]:.1f} GiB, "
                               f"{best.tokens_per_s[0] / best.plans.num_gpus[0]:.0f} tokens/s per GPU")
            if len(suggestions) >= 3:
                break
    required = needed / (1 - options.memory_headroom)  # usable GiB that fits_in_memory admits
    suggestions.append(f"a GPU with at least {required:.0f} GiB usable memory")
    return Explanation(binding="memory_per_gpu", message=message, suggestions=suggestions,
                       needed_gib=needed, available_gib=limit)
