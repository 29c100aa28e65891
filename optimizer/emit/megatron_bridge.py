"""Megatron-Bridge's recipe overrides for a priced plan (NeMo's LLM stack moved to Megatron-Bridge).

Field names: Megatron-Bridge ``megatron/bridge/training/config.py`` (``ConfigContainer``: ``model``,
``train``, ``ddp``, ``optimizer``) over Megatron-Core's ``TransformerConfig``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec

from .emission import Emission
from .knobs import LaunchKnobs
from .megatron_lm import cuda_graph_impl, moe_settings

TESTED_VERSION = "megatron-bridge 0.3.1 (megatron-core 0.16.1)"

RULES: dict[str, str] = {}
"""Megatron-Bridge's start-up rules the search enforces (name -> sentence)."""


def violations(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, **_: Any) -> dict[str, np.ndarray]:
    """For each of :data:`RULES`, True where Megatron-Bridge refuses the plan."""
    return {}


def overrides(knobs: LaunchKnobs) -> list[str]:
    """``section.field=value`` overrides of the recipe's ``ConfigContainer``."""
    training = knobs.training
    out = [f"model.tensor_model_parallel_size={knobs.tp}", f"model.pipeline_model_parallel_size={knobs.pp}",
           f"model.virtual_pipeline_model_parallel_size={knobs.vpp if knobs.vpp > 1 else None}",
           f"model.context_parallel_size={knobs.cp}", f"model.sequence_parallel={knobs.sequence_parallel}"]
    if knobs.model.is_moe:
        out += [f"model.expert_model_parallel_size={knobs.ep}", f"model.expert_tensor_parallel_size={knobs.etp}"]
        out += [f"model.{name}={value!r}" for _, name, value in moe_settings(training)]
    out += [f"train.micro_batch_size={knobs.micro_batch}", f"train.global_batch_size={training.global_batch_size}",
            f"model.seq_length={training.seq_length}"]
    if knobs.recompute == "selective":
        out += ["model.recompute_granularity=selective", f"model.recompute_modules={list(knobs.recompute_modules)!r}"]
    elif knobs.recompute == "full":
        out += ["model.recompute_granularity=full", "model.recompute_method=block",
                f"model.recompute_num_layers={knobs.recompute_layers_per_chunk}"]
    if knobs.activation_offload_layers > 0:
        out += ["model.cpu_offloading=True", f"model.cpu_offloading_num_layers={knobs.activation_offload_layers}",
                "model.cpu_offloading_weights=False"]
    if training.precision == "fp8":
        out += ["model.fp8=hybrid", f"model.fp8_recipe={training.fp8_recipe}"]
    if knobs.ep_overlap:
        out.append("model.overlap_moe_expert_parallel_comm=True")
    if training.cuda_graph_scope:
        out += [f"model.cuda_graph_impl={cuda_graph_impl(training)}",
                f"model.cuda_graph_scope={list(training.cuda_graph_scope)!r}"]
    out.append(f"ddp.use_distributed_optimizer={knobs.zero_stage >= 1}")
    return out


def emit(knobs: LaunchKnobs) -> Emission:
    items = overrides(knobs)
    return Emission(framework="megatron-bridge", tested_version=TESTED_VERSION, argv=tuple(items),
                    text=" \\\n  ".join(items))
