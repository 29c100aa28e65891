"""Megatron-LM's ``pretrain_gpt.py`` command line for a priced plan.

Flag names: Megatron-LM ``megatron/training/arguments.py`` (Megatron-FSDP's
``--data-parallel-sharding-strategy`` values ``optim_grads`` = ZeRO-2 and ``optim_grads_params`` = ZeRO-3).
"""

from __future__ import annotations

import shlex
from typing import Any

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec

from .emission import Emission
from .knobs import LaunchKnobs

TESTED_VERSION = "megatron-core 0.16.1 (Megatron-LM core_v0.16.1)"

RULES: dict[str, str] = {}
"""Megatron-LM's start-up rules the search enforces (name -> sentence)."""


def violations(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, **_: Any) -> dict[str, np.ndarray]:
    """For each of :data:`RULES`, True where Megatron-LM refuses the plan."""
    return {}


def moe_settings(training: TrainingSpec) -> list[tuple[str, str, Any]]:
    """Megatron flag, Megatron-Core config field and value of each MoE setting: the flex dispatcher and its
    backend, then what sizes the expert buffers up front (what lets CUDA graphs capture an MoE layer):
    drop and pad, or sync-free HybridEP with rank capacity and, optionally, the paged stash."""
    settings = []
    if training.moe_token_dispatcher != "alltoall":
        settings += [("--moe-token-dispatcher-type", "moe_token_dispatcher_type", "flex"),
                     ("--moe-flex-dispatcher-backend", "moe_flex_dispatcher_backend", training.moe_token_dispatcher)]
    if training.moe_pad_to_capacity:
        return settings + [("--moe-expert-capacity-factor", "moe_expert_capacity_factor", training.moe_capacity_factor),
                           ("--moe-pad-expert-input-to-capacity", "moe_pad_expert_input_to_capacity", True)]
    if training.moe_rank_capacity_factor is None:
        return settings
    settings += [("--use-transformer-engine-op-fuser", "use_transformer_engine_op_fuser", True),
                 ("--moe-expert-rank-capacity-factor", "moe_expert_rank_capacity_factor", training.moe_rank_capacity_factor)]
    if training.moe_paged_stash_factor is not None:
        settings += [("--moe-paged-stash", "moe_paged_stash", True),
                     ("--moe-paged-stash-buffer-size-factor-cuda", "moe_paged_stash_buffer_size_factor_cuda",
                      training.moe_paged_stash_factor)]
    return settings


def cuda_graph_impl(training: TrainingSpec) -> str:
    """Megatron captures a whole iteration with its own graphs; per-layer scopes go through Transformer
    Engine's ``make_graphed_callables`` (``--cuda-graph-impl local`` / ``transformer_engine``)."""
    return "local" if "full_iteration" in training.cuda_graph_scope else "transformer_engine"


def arguments(knobs: LaunchKnobs) -> list[str]:
    """The flags, one ``--flag value`` string each."""
    model, training = knobs.model, knobs.training
    args = [
        f"--tensor-model-parallel-size {knobs.tp}",
        f"--pipeline-model-parallel-size {knobs.pp}",
        f"--context-parallel-size {knobs.cp}",
    ]
    if model.is_moe:
        args += [f"--expert-model-parallel-size {knobs.ep}", f"--expert-tensor-parallel-size {knobs.etp}"]
        args += [flag if value is True else f"{flag} {value}" for flag, _, value in moe_settings(training)]
    if knobs.vpp > 1:
        args.append(f"--virtual-pipeline-model-parallel-size {knobs.vpp}")
    if knobs.uneven_pipeline:
        args += [f"--decoder-first-pipeline-num-layers {knobs.stage_layers[0]}",
                 f"--decoder-last-pipeline-num-layers {knobs.stage_layers[-1]}"]
    if knobs.sequence_parallel:
        args.append("--sequence-parallel")
    args += [f"--micro-batch-size {knobs.micro_batch}", f"--global-batch-size {training.global_batch_size}",
             f"--seq-length {training.seq_length}"]
    if knobs.recompute == "selective":
        args += ["--recompute-granularity selective", "--recompute-modules " + " ".join(knobs.recompute_modules)]
    elif knobs.recompute == "full":
        args += ["--recompute-granularity full", "--recompute-method block",
                 f"--recompute-num-layers {knobs.recompute_layers_per_chunk}"]
    if knobs.zero_stage == 1:
        args.append("--use-distributed-optimizer")
    elif knobs.zero_stage in (2, 3):
        strategy = "optim_grads" if knobs.zero_stage == 2 else "optim_grads_params"
        args += ["--use-megatron-fsdp", f"--data-parallel-sharding-strategy {strategy}",
                 "--use-distributed-optimizer", "--no-gradient-accumulation-fusion", "--ckpt-format fsdp_dtensor"]
    if knobs.optimizer_offload:
        args.append("--optimizer-cpu-offload")
    if knobs.activation_offload_layers > 0:
        args += ["--cpu-offloading", f"--cpu-offloading-num-layers {knobs.activation_offload_layers}"]
    if training.optimizer_moments_dtype == "bf16":
        args += ["--use-precision-aware-optimizer", "--exp-avg-dtype bf16", "--exp-avg-sq-dtype bf16"]
    if training.overlap_grad_reduce:
        args.append("--overlap-grad-reduce")
    if training.overlap_param_gather and knobs.zero_stage >= 1:
        args.append("--overlap-param-gather")
    if training.tp_comm_overlap and knobs.tp > 1:
        args.append("--tp-comm-overlap")
    if knobs.ep_overlap:
        args.append("--overlap-moe-expert-parallel-comm")
    if training.cuda_graph_scope:
        args += [f"--cuda-graph-impl {cuda_graph_impl(training)}",
                 f"--cuda-graph-scope {' '.join(training.cuda_graph_scope)}"]
    args.append("--fp16" if training.precision == "fp16" else "--bf16")
    if training.precision == "fp8":
        args += ["--fp8-format hybrid", f"--fp8-recipe {training.fp8_recipe}"]
    return args


def emit(knobs: LaunchKnobs) -> Emission:
    flags = arguments(knobs)
    argv = tuple(part for flag in flags for part in shlex.split(flag))
    return Emission(framework="megatron", tested_version=TESTED_VERSION, argv=argv, text=" \\\n  ".join(flags))
