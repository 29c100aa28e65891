"""torchtitan's configuration for a priced plan.

Key names: torchtitan ``torchtitan/config`` ([parallelism], [activation_checkpoint], [training]).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec

from .emission import Emission
from .knobs import LaunchKnobs

TESTED_VERSION = "torchtitan 0.3.0"

RULES: dict[str, str] = {}
"""torchtitan's start-up rules the search enforces (name -> sentence)."""


def violations(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, **_: Any) -> dict[str, np.ndarray]:
    """For each of :data:`RULES`, True where torchtitan refuses the plan."""
    return {}


def emit(knobs: LaunchKnobs) -> Emission:
    training = knobs.training
    replicate, shard = (knobs.dp, 1) if knobs.zero_stage == 0 else (1, knobs.dp)
    lines = [
        "[parallelism]",
        f"data_parallel_replicate_degree = {replicate}",
        f"data_parallel_shard_degree = {shard}",
        f"tensor_parallel_degree = {knobs.tp}",
        f"pipeline_parallel_degree = {knobs.pp}",
        f"context_parallel_degree = {knobs.cp}",
    ]
    if knobs.model.is_moe:
        lines += [f"expert_parallel_degree = {knobs.ep}", f"expert_tensor_parallel_degree = {knobs.etp}"]
    if knobs.pp > 1:
        schedule = "Interleaved1F1B" if knobs.vpp > 1 else "1F1B"
        lines += [f'pipeline_parallel_schedule = "{schedule}"',
                  f"pipeline_parallel_microbatch_size = {knobs.micro_batch}"]
    if knobs.zero_stage in (1, 2):
        lines.append('fsdp_reshard_after_forward = "never"')
    elif knobs.zero_stage == 3:
        lines.append('fsdp_reshard_after_forward = "always"')
    lines += ["", "[activation_checkpoint]", f'mode = "{knobs.recompute}"']
    lines += ["", "[training]", f"seq_len = {training.seq_length}",
              f"global_batch_size = {training.global_batch_size}",
              f"local_batch_size = {training.global_batch_size // max(knobs.dp, 1)}"]
    if training.precision == "fp8":
        lines += ["", "[quantize.linear.float8]", "enable_fsdp_float8_all_gather = true"]
    text = "\n".join(lines)
    return Emission(framework="torchtitan", tested_version=TESTED_VERSION, argv=(), text=text)
