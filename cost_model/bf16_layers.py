"""Transformer layers kept in BF16 in an FP8 or FP4 run: the first and last layers of the model.

Megatron-Core's ``first_last_layers_bf16`` with ``num_layers_at_start_in_bf16`` and
``num_layers_at_end_in_bf16`` (``TransformerConfig``, megatron-core 0.16.1) runs the first N and the last
M transformer layers outside Transformer Engine's FP8/FP4 autocast: ``fp8_utils.get_fp8_context`` and
``fp4_utils.get_fp4_context`` return a null context for ``layer_no < num_layers_at_start_in_bf16`` and
``layer_no >= num_layers - num_layers_at_end_in_bf16``, and build their weights outside ``fp8_model_init``
(``is_init``), so those layers' weights stay BF16 even with ``--fp8-param-gather``. Megatron-Bridge's
``bf16_with_fp8_current_scaling_mixed`` keeps 1 + 1 layers so, its Nemotron-H recipes 2 + 2, its Llama 3
8B NVFP4 recipe the last 4 (``recipes/llama/llama3.py``); the performance scripts turn it off
(``scripts/performance/utils/precision.py``).

Pricing: such a layer is the same layer priced at ``precision`` bf16 (:func:`cost_model.compute.layer_times`
with BF16 GEMMs and no casts; :func:`cost_model.activations.layer_activations` with BF16 GEMM inputs
saved) and, in memory, without the quantized weight copy (or, with FP8 primary weights, in BF16). Megatron
allows at most one stage's worth of layers at each end (``num_layers // pp``), so the first N sit on the
first pipeline stage (the one with the embedding) and the last M on the last (the one with the LM head);
a rank holding both ends (pp = 1, or rank 0 of a V schedule) holds both. Their kind (dense or MoE) is
taken in the stage's proportion.
"""

from __future__ import annotations

import numpy as np

from .plan import PlanArrays
from .stages import StageLayout
from .training_spec import TrainingSpec


def has_bf16_layers(training: TrainingSpec) -> bool:
    """Whether the run keeps any transformer layer in BF16 that would otherwise run FP8/FP4."""
    return training.precision in ("fp8", "fp4") and (training.num_layers_at_start_in_bf16
                                                     + training.num_layers_at_end_in_bf16) > 0


def bf16_training(training: TrainingSpec) -> TrainingSpec:
    """The same run with BF16 GEMMs: how the BF16 layers are priced."""
    return training.with_changes(precision="bf16", num_layers_at_start_in_bf16=0, num_layers_at_end_in_bf16=0)


def bf16_layers_per_stage(training: TrainingSpec, stages: StageLayout) -> np.ndarray:
    """Transformer layers each stage's rank runs in BF16 (plans, 3): the first N on the stage with the
    embedding, the last M on the stage with the LM head, at most the stage's layers."""
    start = np.where(stages.has_embedding, float(training.num_layers_at_start_in_bf16), 0.0)
    end = np.where(stages.has_lm_head, float(training.num_layers_at_end_in_bf16), 0.0)
    if not has_bf16_layers(training):
        return np.zeros_like(stages.layers, dtype=float)
    return np.minimum(start + end, stages.layers)


def moe_share(stages: StageLayout) -> np.ndarray:
    """Share of each stage's layers that are MoE layers (plans, 3)."""
    return np.divide(stages.moe_layers, stages.layers, out=np.zeros_like(stages.layers, dtype=float),
                     where=stages.layers > 0)


def bf16_difference(counts: np.ndarray, stages: StageLayout, quantized: tuple, bf16: tuple) -> np.ndarray:
    """What the BF16 layers add to a per-stage sum over layers (plans, 3): ``counts`` x (the BF16 layer's
    value - the quantized layer's), dense and MoE in the stage's proportion. ``quantized`` and ``bf16``
    are (dense value, MoE value) pairs of per-plan arrays."""
    share = moe_share(stages)
    dense = (bf16[0] - quantized[0])[:, None]
    moe = (bf16[1] - quantized[1])[:, None]
    return counts * ((1 - share) * dense + share * moe)


def check_bf16_layers(training: TrainingSpec, num_layers: int, plans: PlanArrays) -> np.ndarray:
    """Plans whose BF16 layer counts exceed one stage's worth of layers (Megatron-Core
    ``TransformerConfig.__post_init__``: each count between 0 and num_layers // pp)."""
    most = num_layers // plans.pp
    return ((training.num_layers_at_start_in_bf16 > most) | (training.num_layers_at_end_in_bf16 > most)) & (
        training.precision in ("fp8", "fp4"))
