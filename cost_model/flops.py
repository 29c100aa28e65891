"""Model FLOPs of a training step, the denominator-free quantity behind MFU.

Counting convention. Every matrix multiplication costs 2 FLOPs per multiply-add and the backward pass
costs twice the forward (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", section 5.1; PaLM's MFU, Chowdhery et al. 2022, appendix B). The attention
scores of a causal model count with the causal half only: QK^T and AV over the s(s+1)/2 ~ s^2/2 pairs a
token may attend to, as Megatron-Core >= 0.14 (``num_floating_point_operations`` with causal attention)
and Megatron-Bridge count them. This is plan-search's convention (``CostOptions.mfu_attention_causal``,
default True) because it is the only one in which model FLOPs never exceed the FLOPs the kernels
execute: a flash kernel skips the masked half, so a full s x s count credits a long-context run with
twice the attention work it did, and its MFU can pass the GEMM efficiency (MPT-350M at 64K tokens on
8 A100 read 0.89 under the full count). With it, MFU <= the kernels' efficiency (tests/test_cost_flops.py).

Published figures in the other convention (Narayanan et al. 2021 and Korthikanti et al. 2022 TFLOP/s,
PaLM, llm-foundry's MFU) count the full s x s; compare with them through
``model_flops_per_step(model, training, causal_attention_half=False)`` (and
``recompute_flops_per_step(..., causal_attention_half=False)`` for recompute-inclusive figures).

Forward FLOPs of one sequence of s tokens:

    sum over layers of 2*s*(weights in matmuls the token passes through)      projections, MLP/experts
  + sum over layers of 2*s*s*heads*(d_qk + d_v) * c                           QK^T and AV
  + 2*s*h*V                                                                   LM head

with c = 1/2 for a causal model in plan-search's convention, 1 in the full count. For a GPT layer (4h^2
attention + 8h^2 MLP weights) the full count is 24*s*h^2 + 4*s^2*h per layer, and the step of B
sequences costs 3x the forward:

    72 * B * s * l * h^2 * (1 + s/(6h) + V/(12*l*h))          (Narayanan et al. 2021, equation 3 without recompute)

Full recompute repeats each layer's forward (not the LM head), giving the paper's 96 form:

    96 * B * s * l * h^2 * (1 + s/(6h) + V/(16*l*h))

The causal-half count replaces s/(6h) with s/(12h) in both.

MFU divides model FLOPs by peak; HFU adds the recomputed FLOPs (Korthikanti et al. 2022, section 6.3).
For MoE the weights are the active ones (top-k routed experts, shared experts, router).
"""

from __future__ import annotations

import numpy as np

from .model_spec import ModelSpec
from .params import ParameterCounts
from .activations import recomputes
from .plan import FULL, PlanArrays
from .training_spec import TrainingSpec


def layer_matmul_weights(model: ModelSpec, counts: ParameterCounts) -> tuple[int, int]:
    """Weights in the matmuls of a dense layer and of a MoE layer (active experts only)."""
    h = model.hidden_size
    matrices = 3 if model.gated_mlp else 2
    attention = counts.attention - counts.attention_vectors
    dense = attention + matrices * h * model.ffn_hidden_size
    moe = (attention + matrices * h * (model.experts_per_token * model.moe_ffn_hidden_size
                                       + model.shared_expert_ffn_hidden_size) + h * model.num_experts)
    return dense, moe


def attention_flops_per_sequence(model: ModelSpec, seq_length: int, causal: bool) -> float:
    """QK^T and AV of one layer for one sequence, forward (averaged over layers where some use a
    sliding window, see :meth:`ModelSpec.attended_share`)."""
    full = 2.0 * seq_length * seq_length * model.num_attention_heads * (model.q_head_dim + model.v_dim)
    return (full / 2 if causal else full) * model.attended_share(seq_length, causal)


def forward_flops_per_sequence(model: ModelSpec, seq_length: int, causal: bool = False) -> dict[str, float]:
    """Forward FLOPs of one sequence, split into layer projections, attention scores and LM head."""
    counts = ParameterCounts(model)
    dense_w, moe_w = layer_matmul_weights(model, counts)
    projections = 2.0 * seq_length * (model.num_dense_layers * dense_w + model.num_moe_layers * moe_w)
    attention = model.num_layers * attention_flops_per_sequence(model, seq_length, causal)
    head = 2.0 * seq_length * model.hidden_size * model.vocab_size
    return {"projections": projections, "attention": attention, "lm_head": head}


def model_flops_per_step(model: ModelSpec, training: TrainingSpec, causal_attention_half: bool = True) -> float:
    """Model FLOPs of one optimizer step: 3 x forward x global batch (no recompute counted).

    ``causal_attention_half``: a causal model's attention counts its causal half (plan-search's
    convention, see the module docstring); False counts the full s x s, the convention of Narayanan et
    al. 2021 (SC21), Korthikanti et al. 2022, PaLM and llm-foundry, for comparing with their figures.
    A bidirectional model (``training.causal`` False) counts the full s x s either way."""
    parts = forward_flops_per_sequence(model, training.seq_length, causal_attention_half and training.causal)
    return 3.0 * training.global_batch_size * sum(parts.values())


def recompute_flops_per_step(model: ModelSpec, training: TrainingSpec, plans: PlanArrays,
                             recomputed_layer_share: np.ndarray, causal_attention_half: bool = True) -> np.ndarray:
    """Extra forward FLOPs that recomputation executes per step (hardware minus model FLOPs).

    Full: the recomputed share of the layers' forward (less each dense layer's MLP output projection under a
    stack whose recompute stops early). Selective: the forward GEMMs of the modules it
    names — core attention (Korthikanti et al. 2022's 'selective activation recomputation'), MLA's
    up-projections, the dense MLP, the MoE block (router, active and shared experts) or its shared
    experts; ``layernorm`` and ``moe_act`` rerun element-wise kernels only (no FLOPs counted).
    """
    causal = causal_attention_half and training.causal
    parts = forward_flops_per_sequence(model, training.seq_length, causal)
    layers = parts["projections"] + parts["attention"]
    batch = training.global_batch_size
    if training.recompute_stops_early:
        # the recompute stops before each dense layer's MLP output projection (StackSpec.recompute_early_stop)
        layers = layers - model.num_dense_layers * 2.0 * training.seq_length * model.ffn_hidden_size * model.hidden_size
    full = np.where(plans.recompute == FULL, recomputed_layer_share * layers * batch, 0.0)
    module_flops = selective_module_flops_per_sequence(model, training.seq_length, causal)
    selective = np.zeros(len(plans))
    for name, flops in module_flops.items():
        on = recomputes(plans, name)
        if name == "shared_experts":
            on &= ~recomputes(plans, "moe")  # 'moe' already reruns them
        selective = selective + np.where(on, flops * batch, 0.0)
    return full + selective


def selective_module_flops_per_sequence(model: ModelSpec, seq_length: int, causal: bool = False) -> dict[str, float]:
    """Forward FLOPs of one sequence in each recompute module, over all layers of the model."""
    h, s = model.hidden_size, float(seq_length)
    matrices = 3 if model.gated_mlp else 2
    up_proj = 0.0
    if model.is_mla:
        heads = model.num_attention_heads
        q_in = model.q_lora_rank or h
        up_proj = 2.0 * s * (q_in * heads * model.q_head_dim
                             + model.kv_lora_rank * heads * (model.qk_nope_head_dim + model.v_head_dim))
    shared = 2.0 * s * matrices * h * model.shared_expert_ffn_hidden_size
    routed = 2.0 * s * (matrices * h * model.experts_per_token * model.moe_ffn_hidden_size + h * model.num_experts)
    return {
        "core_attn": model.num_layers * attention_flops_per_sequence(model, seq_length, causal),
        "mla_up_proj": model.num_layers * up_proj,
        "mlp": model.num_dense_layers * 2.0 * s * matrices * h * model.ffn_hidden_size,
        "moe": model.num_moe_layers * (routed + shared),
        "shared_experts": model.num_moe_layers * shared,
    }
