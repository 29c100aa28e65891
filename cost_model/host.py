"""Host issue time of a layer: the floor the CPU puts under a layer's GPU time.

An eager PyTorch framework issues every kernel from the CPU. When the GPU finishes a layer's kernels
faster than the CPU can issue them, the GPU waits: the layer takes max(GPU time, host issue time).
For large dense GEMMs the GPU side dominates and the floor never binds. It binds for mixture-of-
experts layers with many small experts per GPU: Transformer Engine's grouped linear issues one GEMM
(and, in FP8, its input's quantization) per local expert, and Megatron's all-to-all dispatcher reads the
per-expert token counts back to the host before its all-to-all (a device-to-host sync in
``MoEAlltoAllTokenDispatcher``), so the CPU cannot run ahead of the GPU across layers to hide its
issue time. NVIDIA's DeepSeek-V3 GB200 optimisation notes (Megatron-LM
``docs/discussions/deepseek-v3-gb200-optimization``) describe such runs as bound by CPU-side kernel
launch, and CUDA graphs as the cure.

Model: issue time = host calls x ``host_kernel_issue_us`` (one calibrated constant,
:mod:`cost_model.calibration.calibrate`), with an inventory per layer part read off the module structure of
Megatron-Core with Transformer Engine layers. The counts are approximate (fusion flags move them by a
few); what the calibration pins is their product with the per-call time, and what the held-out rows
test is the structure: a fixed part per layer plus a part per local expert.

Each part has G GEMMs and O other kernels in its forward. In BF16 the forward issues G + O and the
backward 2G + 2O (data- and weight-gradient GEMMs; the backward of each element-wise kernel). In FP8
each GEMM input is quantized forward and each output gradient backward, q host calls per tensor, and
MXFP8 swizzles both operands' scale factors before every GEMM (2 calls):

    forward  G + O + G (q + s)        backward  2G + 2O + G (q + 2 s)

q by ``fp8_recipe`` (Transformer Engine 2.x, ``transformer_engine/pytorch/csrc`` quantizers): 4 for
``tensorwise`` current scaling (a memset, the amax reduction, the scale computation, the cast), 1 for
``delayed``, ``mxfp8`` and ``blockwise`` (one cast kernel), 3 for FP4's ``nvfp4`` (amax with the
Hadamard-transformed amax, row-wise cast, column-wise Hadamard cast); s = 2 for ``mxfp8`` and ``nvfp4``
(block scales), else 0.

- attention block: norm, QKV GEMM, rotary embedding on q and k, the attention kernel, output GEMM,
  bias-dropout-add: G 2, O 6; MLA (q_a/q_b/kv_a/kv_b projections, their norms, the nope/rope split
  and concat): G 6, O 10.
- dense MLP (and shared experts): norm, fc1, activation, fc2: G 2, O 2.
- MoE block, fixed part: norm, router GEMM (kept in BF16), score and top-k, load-balancing
  statistics, permute, split sizes and their device-to-host copy, all-to-all, sort by local expert,
  activation, unsort, all-to-all back, unpermute, residual: O 16.
- MoE block, per local expert: fc1 and fc2, G 2. ``GroupedLinear`` quantizes each expert's input
  separately and calls one cuBLAS GEMM per expert (``multi_stream_cublas_gemm``); MXFP8's swizzles run
  once per grouped GEMM over all experts (2 calls for each of the 2 forward and 4 backward grouped GEMMs).
- Expert biases and a clamped GLU (GPT-OSS), outside the fused kernels: O 2 per local expert for the
  probability-scaled output bias, O 1 for concatenating the experts' outputs, O 3 for the clamp
  (:data:`EXPERT_OUTPUT_BIAS`, :data:`CLAMP_KERNELS`).

An eager stack (``StackSpec.fused_elementwise`` False, e.g. llm-foundry's PyTorch) issues more: the
layout copies around its flash kernel, rotary embedding and SwiGLU as several kernels each
(:func:`eager_shapes`).

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
from .stacks import stack_spec
from .training_spec import TrainingSpec

@dataclass(frozen=True)
class PartShape:
    """GEMMs (with FP8 inputs) and other kernels in the forward of one part of a layer."""

    gemms: float
    other: float


ATTENTION = PartShape(gemms=2, other=6)
MLA_ATTENTION = PartShape(gemms=6, other=10)
MLP = PartShape(gemms=2, other=2)
MOE_FIXED = PartShape(gemms=0, other=16)
MOE_ROUTER_AND_PREPROCESS_KERNELS = 8
"""The part of the MoE fixed kernels that the ``moe_router`` and ``moe_preprocess`` graphs capture."""
EXPERT = PartShape(gemms=2, other=0)
"""Per local expert."""
EXPERT_OUTPUT_BIAS = PartShape(gemms=0, other=2)
"""Per local expert, with expert biases (``linear_bias``): Megatron-Core ``TEGroupedMLP._apply_bias`` adds
each expert's fc2 bias scaled by the routing probability in a Python loop, ``b * p`` and the add (its
backward: two products and two sums); the concatenation of the experts' outputs counts once in the MoE
fixed part."""
CLAMP_KERNELS = 3
"""A clamped GLU (``activation_clamp``, GPT-OSS): two clamps and a concatenation before the fused activation
(Megatron-Core ``weighted_bias_quick_geglu_impl``)."""
EXPERT_GROUPED_GEMMS = (2, 4)
"""Grouped GEMMs of the experts, forward and backward (MXFP8 swizzles run once for each)."""

QUANTIZE_CALLS = {"tensorwise": 4, "delayed": 1, "mxfp8": 1, "blockwise": 1, "nvfp4": 3}
"""Host calls to quantize one tensor to FP8 or FP4 under each recipe. ``nvfp4`` (Transformer Engine
``NVFP4Quantizer::quantize_impl``): the fused amax kernel (``nvte_hadamard_transform_amax``: row-wise amax
and the column-wise amax after the random Hadamard transform), the row-wise cast and the column-wise
Hadamard-transform cast fusion."""
SWIZZLE_CALLS = {"mxfp8": 2, "nvfp4": 2}
"""Host calls to swizzle both operands' scale factors before one GEMM."""


@dataclass
class LayerKernels:
    """Host calls in one forward or one backward of each part of a layer, after CUDA graphs (over plans)."""

    attention: np.ndarray
    dense_mlp: np.ndarray
    moe_fixed: np.ndarray
    """Router, dispatcher, activation, shared experts: everything in a MoE block but the expert GEMMs."""
    experts: np.ndarray
    """The per-local-expert GEMMs (and their FP8 quantization)."""


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


def _fp8_calls(training: TrainingSpec) -> tuple[int, int]:
    """Host calls to quantize one tensor and to swizzle one GEMM's scale factors (zero for bf16 GEMMs).
    Block-scaled recipes (MXFP8, NVFP4) swizzle both operands' scales into cuBLAS's layout before each
    GEMM (Transformer Engine ``swizzle_scaling_factors``)."""
    recipe = training.quantized_recipe
    if recipe is None:
        return 0, 0
    return QUANTIZE_CALLS[recipe], SWIZZLE_CALLS.get(recipe, 0)


def _calls(part: PartShape, training: TrainingSpec, swizzle_per_gemm: bool = True) -> tuple[float, float]:
    """Forward and backward host calls of one part (see the module docstring)."""
    q, s = _fp8_calls(training)
    s = s if swizzle_per_gemm else 0
    return (part.gemms + part.other + part.gemms * (q + s),
            2 * (part.gemms + part.other) + part.gemms * (q + 2 * s))


EAGER_LAYOUT_COPIES = 4
"""Kernels an eager stack adds to the attention block to put q, k and v in the attention kernel's layout
and its output back (llm-foundry's flash path: three ``index_first_axis`` gathers and a ``pad_input``
scatter, llmfoundry/models/layers/attention.py)."""
EAGER_ROTARY_EXTRA = 6
"""Kernels eager rotary embedding adds over a fused one, for q and k: multiply by cos, rotate half (negate,
concatenate), multiply by sin, add (HF ``apply_rotary_pos_emb``): 4 kernels each instead of one."""


def eager_shapes(model: ModelSpec, attention: PartShape, mlp: PartShape) -> tuple[PartShape, PartShape]:
    """The attention and MLP inventories of an eager stack (``StackSpec.fused_elementwise`` False): the
    layout copies, rotary as separate kernels, SwiGLU's activation and product as two."""
    rotary = EAGER_ROTARY_EXTRA if model.position_embedding_type == "rope" else 0
    return (PartShape(gemms=attention.gemms, other=attention.other + EAGER_LAYOUT_COPIES + rotary),
            PartShape(gemms=mlp.gemms, other=mlp.other + (1 if model.gated_mlp else 0)))


def unfused_rotary(model: ModelSpec, training: TrainingSpec) -> bool:
    """Whether a stack with fused element-wise kernels still runs this model's rotary embedding unfused:
    YaRN on a stack without a fused YaRN path (:attr:`cost_model.stacks.StackSpec.fused_yarn_rope`,
    Megatron-Core), outside MLA. Its kernels are an eager stack's rotary (:data:`EAGER_ROTARY_EXTRA`)."""
    return (model.rope_scaling_type == "yarn" and not model.is_mla and model.position_embedding_type == "rope"
            and not stack_spec(training.stack).fused_yarn_rope)


def layer_kernels(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> tuple[LayerKernels, LayerKernels]:
    """Host calls of each layer part for one micro-batch, forward and backward."""
    scope = set(training.cuda_graph_scope)
    zero = np.zeros(len(plans))
    if "full_iteration" in scope:
        return LayerKernels(zero, zero, zero, zero), LayerKernels(zero, zero, zero, zero)
    attention_shape, mlp_shape = MLA_ATTENTION if model.is_mla else ATTENTION, MLP
    if not stack_spec(training.stack).fused_elementwise:
        attention_shape, mlp_shape = eager_shapes(model, attention_shape, mlp_shape)
    elif unfused_rotary(model, training):
        attention_shape = PartShape(gemms=attention_shape.gemms, other=attention_shape.other + EAGER_ROTARY_EXTRA)
    attention = (0.0, 0.0) if "attn" in scope else _calls(attention_shape, training)
    mlp = (0.0, 0.0) if "mlp" in scope else _calls(mlp_shape, training)
    if not model.is_moe or "moe" in scope:
        fixed, experts = (0.0, 0.0), (zero, zero)
    else:
        captured = MOE_ROUTER_AND_PREPROCESS_KERNELS / 2 * (("moe_router" in scope) + ("moe_preprocess" in scope))
        eager = CLAMP_KERNELS * (model.activation_clamp > 0) + int(model.linear_bias)  # + _apply_bias's cat
        base = _calls(PartShape(gemms=0, other=MOE_FIXED.other - captured + eager), training)
        shared = _calls(MLP, training) if model.shared_expert_ffn_hidden_size else (0.0, 0.0)
        fixed = (base[0] + shared[0], base[1] + shared[1])
        local_experts = model.num_experts / plans.ep.astype(float)
        per_expert = _calls(EXPERT, training, swizzle_per_gemm=False)
        if model.linear_bias:
            bias = _calls(EXPERT_OUTPUT_BIAS, training)
            per_expert = (per_expert[0] + bias[0], per_expert[1] + bias[1])
        _, swizzle = _fp8_calls(training)
        experts = (per_expert[0] * local_experts + swizzle * EXPERT_GROUPED_GEMMS[0],
                   per_expert[1] * local_experts + swizzle * EXPERT_GROUPED_GEMMS[1])
    return tuple(LayerKernels(zero + attention[i], zero + mlp[i], zero + fixed[i], zero + experts[i])
                 for i in (0, 1))


def exposed_issue_time(gpu_forward_s: dict[str, np.ndarray], gpu_backward_s: dict[str, np.ndarray],
                       kernels: tuple[LayerKernels, LayerKernels], kernel_issue_us: float,
                       synced: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Seconds by which issuing a layer's kernels outlasts running them, forward and backward.

    ``kernels``: the forward and backward host calls (:func:`layer_kernels`). ``synced`` (a dropless
    MoE model): part by part (attention, dense MLP, MoE fixed part, experts), as the dispatcher's host
    sync sits between them, so the host cannot issue one part while the GPU still runs another; within
    a part the GPU runs each kernel as soon as it is issued. Each part takes max(GPU time, issue time).
    Without a sync the host runs ahead across parts, and the layer takes max(its GPU time, its issue
    time).
    """
    per_call_s = kernel_issue_us * 1e-6
    forward_calls, backward_calls = kernels
    issue_fwd = {part: getattr(forward_calls, part) * per_call_s for part in gpu_forward_s}
    issue_bwd = {part: getattr(backward_calls, part) * per_call_s for part in gpu_forward_s}
    if not synced:
        forward_gap = sum(issue_fwd.values()) - sum(gpu_forward_s.values())
        backward_gap = sum(issue_bwd.values()) - sum(gpu_backward_s.values())
        return np.maximum(forward_gap, 0.0), np.maximum(backward_gap, 0.0)
    forward = backward = 0.0
    for part, gpu_forward in gpu_forward_s.items():
        forward = forward + np.maximum(issue_fwd[part] - gpu_forward, 0.0)
        backward = backward + np.maximum(issue_bwd[part] - gpu_backward_s[part], 0.0)
    return forward, backward
