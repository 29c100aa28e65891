"""A priced serving plan in the serving engines' own words: vLLM, SGLang and TensorRT-LLM.

One module per engine, each naming the release it is checked against (``TESTED_VERSION``) and the engine's
own start-up rules (``RULES``, checked for many plans at once by ``violations``), so the serving search can
refuse a plan the engine cannot run. :mod:`.serving_knobs` is the shared plan -> knobs translation.
``tests/conformance/test_serving_engines.py`` parses the emitted commands with the engines' own parsers.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.serving.plan import ServingPlanArrays

from . import sglang, trtllm, vllm
from .emission import Emission
from .serving_knobs import DEFAULT_GPU_MEMORY_UTILIZATION, ServingKnobs, build_serving_knobs

ENGINE_MODULES: dict[str, ModuleType] = {"vllm": vllm, "sglang": sglang, "trtllm": trtllm}
ENGINES = tuple(ENGINE_MODULES)
"""Serving engines plan-search emits for (``--emit``)."""


def _module(engine: str) -> ModuleType:
    try:
        return ENGINE_MODULES[engine]
    except KeyError:
        raise ValueError(f"unknown serving engine {engine!r}; use one of {', '.join(ENGINES)}") from None


def emit_serving(engine: str, plan_record: Mapping[str, Any], model: ModelSpec, model_path: str, max_model_len: int, *,
                 speculative: Any = None, draft_model: str | None = None,
                 gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION, enable_prefix_caching: bool = True,
                 gpus_per_node: int = 8, gpu: Any = None) -> list[Emission]:
    """The launch of one priced serving plan (``ServingPlanArrays.record(i)``) for ``engine``: one emission for
    an aggregated plan, a prefill and a decode one for a disaggregated plan. ``speculative`` is the workload's
    speculative decoding (``SpeculativeSpec`` or a draft length); ``gpu`` (a ``GPUSpec``), when given, lets the
    differences name the GPU-dependent rules the plan breaks."""
    module = _module(engine)
    model = getattr(model, "spec", model)  # a loader's ModelInput or its ModelSpec
    knobs = build_serving_knobs(plan_record, model, model_path, max_model_len, speculative=speculative,
                                draft_model=draft_model, gpu_memory_utilization=gpu_memory_utilization,
                                enable_prefix_caching=enable_prefix_caching, gpus_per_node=gpus_per_node)
    if module is trtllm and len(knobs) == 2:
        return [trtllm.emit(knobs[0], gpu), trtllm.emit(knobs[1], gpu, prefill=knobs[0])]
    return [module.emit(kind, gpu) for kind in knobs]


def serving_rules(engine: str) -> dict[str, str]:
    """Name -> sentence of each start-up rule of ``engine`` the serving search enforces."""
    return dict(_module(engine).RULES)


def serving_violations(engine: str, plans: ServingPlanArrays, model: ModelSpec, *, gpu: Any = None) -> dict[str, np.ndarray]:
    """For each rule of ``engine``, a boolean array over ``plans``: True where the engine refuses the plan (either
    of its instance kinds). Rules that depend on the GPU (FP4 kernels, vendor) hold only where ``gpu`` is given."""
    return _module(engine).violations(getattr(model, "spec", model), plans, gpu)


__all__ = ["ENGINES", "ServingKnobs", "build_serving_knobs", "emit_serving", "serving_rules", "serving_violations"]
