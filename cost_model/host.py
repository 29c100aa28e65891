"""Host issue time of a layer: the floor the CPU puts under a layer's GPU time.

An eager PyTorch framework issues every kernel from the CPU. When the GPU finishes a layer's kernels
faster than the CPU can issue them, the GPU waits: the layer takes max(GPU time, host issue time).
For large dense GEMMs the GPU side dominates and the floor never binds. It binds for mixture-of-
experts layers with many small experts per GPU: Transformer Engine's grouped linear issues one GEMM
(and, in FP8, one input cast) per local expert, and Megatron's all-to-all dispatcher reads the
per-expert token counts back to the host before its all-to-all (a device-to-host sync in
``MoEAlltoAllTokenDispatcher``), so the CPU cannot run ahead of the GPU across layers to hide its
issue time. NVIDIA's DeepSeek-V3 GB200 optimisation notes (Megatron-LM
``docs/discussions/deepseek-v3-gb200-optimization``) describe such runs as bound by CPU-side kernel
launch, and CUDA graphs as the cure.

Model: issue time = kernels issued x ``host_kernel_issue_us`` (one calibrated constant,
:mod:`optimizer.calibrate`), with a kernel inventory per layer part read off the module structure of
Megatron-Core with Transformer Engine layers. The counts are approximate (fusion flags move them by a
few); what the calibration pins is their product with the per-kernel time, and what the held-out rows
test is the structure: a fixed part per layer plus a part per local expert.

Forward kernels, per layer and micro-batch (backward issues about twice as many: data and weight
gradients of every GEMM, the backward of every element-wise kernel):

- attention block: norm, (FP8 cast), QKV GEMM, rotary embedding on q and k, the attention kernel,
  (FP8 cast), output GEMM, bias-dropout-add: 8 (10 in FP8); MLA adds the q_a/q_b/kv_a/kv_b
  GEMMs, their two norms and the nope/rope split and concat: 16 (22 in FP8).
- dense MLP: norm, (cast), fc1, activation, (cast), fc2: 4 (6 in FP8).
- MoE block, fixed part: norm, router GEMM, score and top-k, load-balancing statistics, permute,
  split sizes and their device-to-host copy, all-to-all, sort by local expert, activation, unsort,
  all-to-all back, unpermute, residual: 16; shared experts add a dense MLP's 4 (6).
- MoE block, per local expert: fc1 and fc2 GEMMs: 2 (4 in FP8, with the per-expert input casts).

CUDA graphs (Megatron ``--cuda-graph-scope``) replay captured parts with one launch: those parts
issue nothing. ``attn`` captures the attention block, ``mlp`` a dense MLP, ``moe_router`` the router
and ``moe_preprocess`` the dispatcher's preprocessing (together about half of the MoE fixed part),
``moe`` the whole MoE block, ``full_iteration`` all.

A graph replays fixed shapes and cannot contain a device-to-host sync, so ``moe`` and
``full_iteration`` need an MoE layer whose buffers are sized up front. Two ways exist:

- drop and pad (``moe_pad_to_capacity``; Megatron ``--moe-expert-capacity-factor`` with
  ``--moe-pad-expert-input-to-capacity``): ``MoEAlltoAllTokenDispatcher`` with ``drop_and_pad`` skips
  its device-to-host copy. Megatron's MoE guide: without these flags "the resulting dynamic shapes make
  MoE layers uncapturable"; its DeepSeek-V3 GB200 notes (``docs/discussions/deepseek-v3-gb200-optimization``)
  call ``local`` full-iteration graphs "not feasible for MoE models due to the dynamic shape issue".
- sync-free dropless HybridEP (``moe_rank_capacity_factor``, Megatron 2026): dispatch and fused grouped
  expert buffers pre-sized from a rank capacity, no device query; graph capture of the MoE block also
  needs the paged stash (``moe_paged_stash_factor``; Megatron-LM ``docs/user-guide/features/paged_stash.md``).

Otherwise a token-dropless MoE layer graphs ``moe_router`` and ``moe_preprocess`` at most, and
:func:`graph_scope_conflict` rejects the rest. Without the sync the host runs ahead across the parts
of a layer, and only the layer's whole issue time against its whole GPU time matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model_spec import ModelSpec
from .plan import PlanArrays
from .training_spec import TrainingSpec

BACKWARD_KERNEL_RATIO = 2.0
"""Backward kernels per forward kernel: a data- and a weight-gradient GEMM per GEMM."""

ATTENTION_KERNELS = {"bf16": 8, "fp8": 10}
MLA_ATTENTION_KERNELS = {"bf16": 16, "fp8": 22}
MLP_KERNELS = {"bf16": 4, "fp8": 6}
MOE_FIXED_KERNELS = 16
MOE_ROUTER_AND_PREPROCESS_KERNELS = 8
"""The part of the MoE fixed kernels that the ``moe_router`` and ``moe_preprocess`` graphs capture."""
EXPERT_KERNELS = {"bf16": 2, "fp8": 4}


@dataclass
class LayerKernels:
    """Kernels the host issues in one forward of each part of a layer, after CUDA graphs (over plans)."""

    attention: np.ndarray
    dense_mlp: np.ndarray
    moe_fixed: np.ndarray
    """Router, dispatcher, activation, shared experts: everything in a MoE block but the expert GEMMs."""
    experts: np.ndarray
    """The per-local-expert GEMMs (and their FP8 input casts)."""


GRAPH_SCOPES_CAPTURING_EXPERTS = ("moe", "full_iteration")
"""Graph scopes that capture the expert dispatch and GEMMs: they need static token counts."""


def graph_scope_conflict(model: ModelSpec, training: TrainingSpec) -> str | None:
    """Why the run's CUDA graph scope cannot be captured for this model, or None if it can."""
    capturing = [part for part in training.cuda_graph_scope if part in GRAPH_SCOPES_CAPTURING_EXPERTS]
    if not model.is_moe or not capturing or training.moe_pad_to_capacity:
        return None
    if training.moe_rank_capacity_factor is None:
        return (f"cuda_graph_scope {capturing[0]} cannot capture a token-dropless MoE layer: its dispatcher "
                "reads the per-expert token counts back to the host every layer")
    if training.moe_paged_stash_factor is None:
        return (f"cuda_graph_scope {capturing[0]} captures a sync-free MoE layer only with the paged stash "
                "(Megatron's --moe-paged-stash)")
    return None


def host_syncs_per_layer(model: ModelSpec, training: TrainingSpec) -> bool:
    """Whether the MoE dispatcher syncs device to host in every MoE layer: dropless MoE without the
    sync-free rank-capacity buffers."""
    return model.is_moe and not training.moe_pad_to_capacity and training.moe_rank_capacity_factor is None


def forward_kernels(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> LayerKernels:
    """Kernels the host issues in the forward of each layer part for one micro-batch."""
    precision = "fp8" if training.precision == "fp8" else "bf16"
    scope = set(training.cuda_graph_scope)
    zero = np.zeros(len(plans))
    if "full_iteration" in scope:
        return LayerKernels(zero, zero, zero, zero)
    attention = 0 if "attn" in scope else (MLA_ATTENTION_KERNELS if model.is_mla else ATTENTION_KERNELS)[precision]
    mlp = 0 if "mlp" in scope else MLP_KERNELS[precision]
    if not model.is_moe or "moe" in scope:
        return LayerKernels(zero + attention, zero + mlp, zero, zero)
    captured = MOE_ROUTER_AND_PREPROCESS_KERNELS / 2 * (("moe_router" in scope) + ("moe_preprocess" in scope))
    fixed = MOE_FIXED_KERNELS - captured + (MLP_KERNELS[precision] if model.shared_expert_ffn_hidden_size else 0)
    local_experts = model.num_experts / plans.ep.astype(float)
    return LayerKernels(zero + attention, zero + mlp, zero + fixed, EXPERT_KERNELS[precision] * local_experts)


def exposed_issue_time(gpu_forward_s: dict[str, np.ndarray], gpu_backward_s: dict[str, np.ndarray],
                       kernels: LayerKernels, kernel_issue_us: float,
                       synced: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Seconds by which issuing a layer's kernels outlasts running them, forward and backward.

    ``synced`` (a dropless MoE model): part by part (attention, dense MLP, MoE fixed part, experts),
    as the dispatcher's host sync sits between them, so the host cannot issue one part while the GPU
    still runs another; within a part the GPU runs each kernel as soon as it is issued. Each part
    takes max(GPU time, issue time). Without a sync the host runs ahead across parts, and the layer
    takes max(its GPU time, its issue time).
    """
    per_kernel_s = kernel_issue_us * 1e-6
    issue = {part: getattr(kernels, part) * per_kernel_s for part in gpu_forward_s}
    if not synced:
        forward_gap = sum(issue.values()) - sum(gpu_forward_s.values())
        backward_gap = BACKWARD_KERNEL_RATIO * sum(issue.values()) - sum(gpu_backward_s.values())
        return np.maximum(forward_gap, 0.0), np.maximum(backward_gap, 0.0)
    forward = backward = 0.0
    for part, gpu_forward in gpu_forward_s.items():
        forward = forward + np.maximum(issue[part] - gpu_forward, 0.0)
        backward = backward + np.maximum(BACKWARD_KERNEL_RATIO * issue[part] - gpu_backward_s[part], 0.0)
    return forward, backward
