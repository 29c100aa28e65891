"""A priced plan in the launchers' own words: Megatron-LM, Megatron-Bridge and torchtitan for training;
vLLM, SGLang and TensorRT-LLM for serving (:mod:`.serving`).

One module per framework, each naming the release it is tested against (``TESTED_VERSION``) and the
framework's own start-up rules (``RULES``, checked for many plans at once by ``violations``), so the
search never ranks a plan the framework refuses. :mod:`.knobs` is the shared plan -> knobs translation.
Conformance tests in ``tests/conformance/`` build each framework's own config objects from the
emitted output and run its validation.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.placement import DEFAULT_RANK_ORDER

from . import megatron_bridge, megatron_lm, torchtitan
from .emission import Emission
from .knobs import LaunchKnobs, build_knobs
from .serving import ENGINES, emit_serving, serving_rules, serving_violations

FRAMEWORK_MODULES: dict[str, ModuleType] = {
    "megatron": megatron_lm,
    "megatron-bridge": megatron_bridge,
    "torchtitan": torchtitan,
}
FRAMEWORKS = tuple(FRAMEWORK_MODULES)
"""Launchers plan-search emits for; ``megatron`` (Megatron-LM's ``pretrain_gpt.py``) is the default."""


def _module(framework: str) -> ModuleType:
    try:
        return FRAMEWORK_MODULES[framework]
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}; use one of {', '.join(FRAMEWORKS)}") from None


def emit(framework: str, plan: dict[str, Any], model: ModelSpec, training: TrainingSpec, *,
         cp_comm_type: str = "p2p", rank_order: str = DEFAULT_RANK_ORDER, gpus_per_node: int = 8) -> Emission:
    """The launch of one priced plan (a mapping of plan column names to numbers) for ``framework``, on
    nodes of ``gpus_per_node`` GPUs."""
    knobs = build_knobs(plan, model, training, cp_comm_type=cp_comm_type, rank_order=rank_order,
                        gpus_per_node=gpus_per_node)
    return _module(framework).emit(knobs)


def framework_rules(framework: str) -> dict[str, str]:
    """Name -> sentence of each start-up rule of ``framework`` the search enforces."""
    return dict(_module(framework).RULES)


def framework_schedules(framework: str) -> tuple[str, ...]:
    """The pipeline schedules (names of :data:`cost_model.plan.SCHEDULES`) ``framework`` runs."""
    return tuple(_module(framework).PIPELINE_SCHEDULES)


def framework_violations(framework: str, model: ModelSpec, training: TrainingSpec, plans: PlanArrays, *,
                         cp_comm_type: str = "p2p", rank_order: str = DEFAULT_RANK_ORDER) -> dict[str, np.ndarray]:
    """For each rule of ``framework``, a boolean array over ``plans``: True where the framework refuses the plan."""
    return _module(framework).violations(model, training, plans, cp_comm_type=cp_comm_type, rank_order=rank_order)


__all__ = ["Emission", "FRAMEWORKS", "LaunchKnobs", "build_knobs", "emit", "framework_rules", "framework_schedules",
           "framework_violations", "ENGINES", "emit_serving", "serving_rules", "serving_violations"]
