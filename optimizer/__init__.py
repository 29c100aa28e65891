"""plan-search's Python API: the search, the pricing of one plan and the launch commands, without the CLI.

    from optimizer import SearchOptions, emit_launch, make_scenario, search_plans

    scenario = make_scenario("h100x64", "llama3-70b", SearchOptions(tp_values=(4, 8), top_k=3),
                             seq_length=8192, global_batch_size=128)
    result = search_plans(scenario)             # SearchResult; result.ranked: PlanMetrics, best first
    launch = emit_launch(scenario, result.ranked, 0, "megatron")   # Emission: argv, env, text

Names: :func:`make_scenario`, :func:`search_plans`, :func:`evaluate_plan`, :func:`emit_launch`,
:func:`explain_no_fit`, :func:`plan_records`, ``load_cluster``, ``load_model``, and the classes
``Scenario``, ``SearchOptions``, ``SearchResult``, ``PlanMetrics``, ``Emission``, ``CostOptions``.

The search function is ``search_plans`` and the emitter ``emit_launch``, not ``search`` and ``emit``:
those are the names of the modules :mod:`optimizer.search` and :mod:`optimizer.emit`, which a package
attribute of the same name would hide (``import optimizer.search as s`` would get the function).

Everything is imported on first use (PEP 562 ``__getattr__``): ``import optimizer`` loads nothing, so
the ``plan-search`` command, which imports ``optimizer.cli`` through this package, starts no slower.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cost_model.evaluate import PlanMetrics
    from .emit import Emission
    from .search import Scenario
    from .search_options import SearchOptions

_LAZY = {
    "Scenario": ("optimizer.search", "Scenario"),
    "SearchResult": ("optimizer.search", "SearchResult"),
    "search_plans": ("optimizer.search", "search"),
    "SearchOptions": ("optimizer.search_options", "SearchOptions"),
    "explain_no_fit": ("optimizer.explain", "explain_no_fit"),
    "plan_records": ("optimizer.report", "plan_records"),
    "Emission": ("optimizer.emit.emission", "Emission"),
    "PlanMetrics": ("cost_model.evaluate", "PlanMetrics"),
    "CostOptions": ("cost_model.options", "CostOptions"),
    "load_cluster": ("hardware.loader", "load_cluster"),
    "load_model": ("cost_model.model_loader", "load_model"),
}
"""Public name -> (module, attribute), imported when first asked for."""

__all__ = sorted([*_LAZY, "make_scenario", "evaluate_plan", "emit_launch"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def make_scenario(cluster: str, model: str, options: "SearchOptions | None" = None, *,
                  cost_options: Any = None, **training: Any) -> "Scenario":
    """A search problem from a cluster and a model (preset names or files, as on the command line) and
    training settings on top of the model file's (``seq_length=8192``, ``global_batch_size=128``,
    ``precision="fp8"``, ... : :class:`cost_model.training_spec.TrainingSpec`'s fields, or
    ``global_batch_tokens``). Bad input raises :class:`hardware.errors.InputError`."""
    from cost_model.model_loader import build_training, layered_training, load_model
    from hardware.loader import load_cluster

    from .search import Scenario
    from .search_options import SearchOptions

    model_input = load_model(model)
    settings = build_training(layered_training(model_input.training_overrides, training),
                              source=model_input.source or "training", model=model_input.spec)
    return Scenario(model=model_input.spec, training=settings, cluster=load_cluster(cluster),
                    options=options or SearchOptions(), cost_options=cost_options)


def evaluate_plan(scenario: "Scenario", **plan: Any) -> "PlanMetrics":
    """Price one plan of ``scenario`` (memory, step time, throughput, cost), given as plan columns:
    ``tp``, ``pp``, ``dp`` (default: the rest of the GPUs), ``cp``, ``ep``, ``etp``, ``vpp``,
    ``micro_batch``, ``recompute`` ("none", "selective", "full" or its code), ``recompute_num_layers``,
    ``recompute_modules`` (a bitmask or Megatron module names), ``sequence_parallel``, ``zero_stage``,
    ``optimizer_offload``, ``activation_offload_layers``; the others default as in ``plan-search
    evaluate``. Prices the plan whether or not it fits or breaks a rule: compare ``memory_bytes`` with
    ``scenario.memory_limit_bytes``."""
    from cost_model.evaluate import evaluate
    from cost_model.plan import PLAN_DEFAULTS, RECOMPUTE_CODE, PlanArrays, module_mask

    columns = {**PLAN_DEFAULTS, "tp": 1}
    columns["etp"] = plan.get("tp", 1) if scenario.model.is_moe else 1  # Megatron's default: expert TP = TP
    columns.update(plan)
    if isinstance(columns["recompute"], str):
        columns["recompute"] = RECOMPUTE_CODE[columns["recompute"]]
    if not isinstance(columns["recompute_modules"], int):
        columns["recompute_modules"] = module_mask(columns["recompute_modules"])
    if "dp" not in plan:
        columns["dp"] = scenario.cluster.num_gpus // (columns["tp"] * columns["pp"] * columns["cp"])
    return evaluate(scenario.model, scenario.training, scenario.cluster, PlanArrays.from_columns(columns),
                    scenario.costs)


def emit_launch(scenario: "Scenario", metrics: "PlanMetrics", index: int = 0,
                framework: str | None = None) -> "Emission":
    """The launch of plan ``index`` (0 = the best) of ``metrics`` for ``framework`` (default: the one
    ``scenario`` was searched for), with the CP communication and rank order it was priced with, on the
    cluster's nodes."""
    from .emit import emit

    costs = scenario.costs
    return emit(framework or scenario.options.framework, metrics.plans.record(index), scenario.model,
                scenario.training,
                cp_comm_type=costs.cp_comm_type, rank_order=costs.rank_order,
                gpus_per_node=scenario.cluster.topology.gpus_per_node)
