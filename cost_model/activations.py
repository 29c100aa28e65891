"""Activation memory of one decoder layer for one micro-batch, counted tensor by tensor.

Method (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
section 4): list every tensor the backward pass needs that the forward pass saves, with its shape and
dtype, and note which are split by tensor parallelism (t), by sequence parallelism (the rest of them),
and by context parallelism (the sequence, across cp ranks). For a GPT-3 layer (LayerNorm, GeLU 4h MLP,
dropout, no flash attention, 2-byte activations) the inventory below gives, in units of s*b*h bytes:

=============================  =================================  ======================
tensor saved for backward       bytes                               split by
=============================  =================================  ======================
norm 1 input                    2sbh                                SP
QKV GEMM input                  2sbh                                SP
Q and K (for QK^T)              4sbh                                TP
softmax output                  2as^2b                              TP
attention dropout mask          as^2b                               TP
dropout output (AV input)       2as^2b                              TP
V                               2sbh                                TP
output-projection input         2sbh                                TP
attention dropout-out mask      sbh                                 SP
norm 2 input                    2sbh                                SP
fc1 input                       2sbh                                SP
GeLU input (fc1 output)         8sbh  (2 x 4h)                      TP
fc2 input (GeLU output)         8sbh                                TP
MLP dropout mask                sbh                                 SP
=============================  =================================  ======================

Sum: sbh(34 + 5as/h); with TP the SP column stays whole: sbh(10 + 24/t + 5as/(ht)); with SP everything
is split: sbh(34/t + 5as/(ht)); selective recompute drops the three s^2 tensors. These are the seeds'
and the paper's table rows, and tests/test_activations.py reproduces each exactly.

The same inventory adapts to modern layers:

* no dropout: no masks, and the softmax output is the AV input (2as^2b instead of 5as^2b);
* flash attention: no s x s tensor; the kernel saves Q, K, V, its output (the output-projection input)
  and the fp32 log-sum-exp per row and head (4·a·s·b bytes) — Dao et al. 2022, Algorithm 2;
* GQA/MQA: K and V have kv heads (per TP rank max(kv/t, 1): Megatron replicates KV heads when t > kv);
* SwiGLU: the fused bias-SwiGLU saves the fc1 output (gate and up, 2F wide) and the fc2 input (F);
* MLA (DeepSeek-V3): the low-rank query and KV paths save their latent inputs (replicated over TP);
* FP8 GEMMs (Transformer Engine) save FP8 copies of GEMM inputs: 1 byte instead of 2;
* context parallelism: every tensor covers s/cp tokens; a materialised score matrix is (s/cp) x s;
* MoE (Megatron token dispatcher): per rank, b*(s/cp)*k*capacity*etp/tp token-expert pairs; each saves
  the expert's fc1 input (h), fc1 output and fc2 input (split by expert-TP), and the expert output for
  the weighted combine; the router saves fp32 probabilities (E per token).

Full recompute keeps only each layer's input (2sbh, split by SP) — Korthikanti's 2sbh/t with SP.
Norm statistics (8 bytes per token) and RNG state are ignored, as the paper does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model_spec import ModelSpec
from .plan import PlanArrays, SELECTIVE
from .training_spec import TrainingSpec

ACT_BYTES = 2  # bf16 activations between layers


@dataclass
class LayerActivations:
    """Bytes per rank per micro-batch for one layer of each kind; arrays over plans."""

    dense_full: np.ndarray
    """Dense layer, nothing recomputed (selective recompute already applied where the plan asks)."""
    moe_full: np.ndarray
    """MoE layer, likewise."""
    layer_input: np.ndarray
    """What full recompute keeps: the layer input."""
    dense_no_recompute: np.ndarray
    """Dense layer with nothing recomputed at all: the backward working set of one layer."""
    moe_no_recompute: np.ndarray


@dataclass(frozen=True)
class _Shapes:
    """Per-rank tensor widths, arrays over plans."""

    tokens: np.ndarray        # b * s / cp : tokens of one micro-batch on one rank's sequence shard
    sp_div: np.ndarray        # t with sequence parallelism, else 1
    t: np.ndarray
    q_heads: np.ndarray       # a / t
    kv_heads: np.ndarray      # max(kv / t, 1)  (all heads for MLA, whose K/V are per head)
    s_kv: np.ndarray          # keys each query attends to (full sequence under CP)
    gemm_in_bytes: int        # saved GEMM-input bytes: 1 with FP8, else 2


def _shapes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> _Shapes:
    t = plans.tp.astype(float)
    kv = model.num_attention_heads if model.is_mla else model.num_kv_heads
    return _Shapes(
        tokens=plans.micro_batch * training.seq_length / plans.cp,
        sp_div=np.where(plans.sequence_parallel, t, 1.0),
        t=t,
        q_heads=model.num_attention_heads / t,
        kv_heads=np.maximum(kv / t, 1.0),
        s_kv=np.full(len(plans), float(training.seq_length)),
        gemm_in_bytes=1 if training.precision == "fp8" else 2,
    )


def attention_block_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays,
                          selective: np.ndarray | None = None) -> np.ndarray:
    """Saved bytes of the attention half of a layer (norm 1 through the residual), per rank."""
    sh = _shapes(model, training, plans)
    h = model.hidden_size
    e, g = ACT_BYTES, sh.gemm_in_bytes
    tok = sh.tokens
    dropout = training.dropout

    replicated = e * h + g * h  # norm-1 input, QKV (or MLA down-projection) GEMM input
    if dropout:
        replicated += 1 * h  # dropout mask after the output projection
    if model.is_mla:
        # Latent paths are replicated over TP: q_a output (norm input) and q_b input; kv_a output
        # (latent + rope key) and kv_b input.
        if model.q_lora_rank:
            replicated += e * model.q_lora_rank + g * model.q_lora_rank
        replicated += e * (model.kv_lora_rank + model.qk_rope_head_dim) + g * model.kv_lora_rank
    split = (e * sh.q_heads * model.q_head_dim          # Q
             + e * sh.kv_heads * model.q_head_dim        # K
             + e * sh.kv_heads * model.v_dim             # V
             + g * sh.q_heads * model.v_dim)             # output-projection input (= attention output)
    per_token = replicated / sh.sp_div + split

    scores = np.zeros_like(tok)
    if training.flash_attention:
        per_token = per_token + 4.0 * sh.q_heads  # fp32 log-sum-exp per head
    else:
        # s x s tensors per head: softmax output (2 bytes) + with dropout a 1-byte mask and a 2-byte output.
        score_bytes = (2 + 1 + 2) if dropout else 2
        scores = score_bytes * sh.q_heads * tok * sh.s_kv
        if selective is not None:
            scores = np.where(selective, 0.0, scores)
    return per_token * tok + scores


def _mlp_saved_per_token(model: ModelSpec, training: TrainingSpec, width_per_rank: np.ndarray) -> np.ndarray:
    """fc1 output (SwiGLU: gate and up) and fc2 input for an MLP of the given per-rank width."""
    e = ACT_BYTES
    g = 1 if training.precision == "fp8" else 2
    fc1_out = e * width_per_rank * (2 if model.gated_mlp else 1)
    return fc1_out + g * width_per_rank


def dense_mlp_block_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    sh = _shapes(model, training, plans)
    h = model.hidden_size
    replicated = ACT_BYTES * h + sh.gemm_in_bytes * h  # norm-2 input, fc1 input
    if training.dropout:
        replicated += 1 * h
    split = _mlp_saved_per_token(model, training, model.ffn_hidden_size / sh.t)
    return (replicated / sh.sp_div + split) * sh.tokens


def routed_pairs_per_rank(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Token-expert pairs one rank's experts process per micro-batch.

    A data-parallel replica's b*s tokens make b*s*k pairs; the tp*cp ranks that share them (Megatron's
    folding: etp*ep*edp = tp*cp*dp) each process an equal share, and expert-TP ranks of an expert all
    see its tokens: b*(s/cp)*k*capacity*etp/tp.
    """
    tokens = plans.micro_batch * training.seq_length / plans.cp
    return tokens * model.experts_per_token * training.moe_capacity_factor * plans.etp / plans.tp


def moe_mlp_block_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    sh = _shapes(model, training, plans)
    h = model.hidden_size
    e, g = ACT_BYTES, sh.gemm_in_bytes
    replicated = e * h + g * h + 4 * model.num_experts  # norm-2 input, router/expert input, fp32 router probs
    if training.dropout:
        replicated += 1 * h
    per_token = replicated / sh.sp_div
    if model.shared_expert_ffn_hidden_size:
        per_token = per_token + _mlp_saved_per_token(model, training, model.shared_expert_ffn_hidden_size / sh.t)
    pairs = routed_pairs_per_rank(model, training, plans)
    per_pair = (g * h                                              # expert fc1 input (permuted tokens)
                + _mlp_saved_per_token(model, training, model.moe_ffn_hidden_size / plans.etp)
                + e * h)                                           # expert output, for the weighted combine
    return per_token * sh.tokens + per_pair * pairs


def layer_input_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Full recompute keeps the layer input: 2sbh, split by SP (Korthikanti et al. 2022, section 5)."""
    sh = _shapes(model, training, plans)
    return ACT_BYTES * model.hidden_size * sh.tokens / sh.sp_div


def layer_activations(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> LayerActivations:
    selective = plans.recompute == SELECTIVE
    attention = attention_block_bytes(model, training, plans, selective=selective)
    attention_all = attention_block_bytes(model, training, plans)
    dense_mlp = dense_mlp_block_bytes(model, training, plans) if model.num_dense_layers else 0.0 * attention
    moe_mlp = moe_mlp_block_bytes(model, training, plans) if model.is_moe else 0.0 * attention
    return LayerActivations(
        dense_full=attention + dense_mlp,
        moe_full=attention + moe_mlp,
        layer_input=layer_input_bytes(model, training, plans),
        dense_no_recompute=attention_all + dense_mlp,
        moe_no_recompute=attention_all + moe_mlp,
    )


def embedding_dropout_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Dropout mask on the embedding output (first stage, per micro-batch in flight)."""
    if not training.dropout:
        return np.zeros(len(plans))
    sh = _shapes(model, training, plans)
    return 1.0 * model.hidden_size * sh.tokens / sh.sp_div


def lm_head_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, padded_vocab: np.ndarray) -> np.ndarray:
    """Last stage, one micro-batch: final-norm input, LM-head GEMM input and the fp32 logits that
    Megatron's vocab-parallel cross-entropy keeps for backward (softmax computed in place in fp32)."""
    sh = _shapes(model, training, plans)
    h = model.hidden_size
    per_token = (ACT_BYTES * h + sh.gemm_in_bytes * h) / sh.sp_div + 4.0 * padded_vocab / sh.t
    return per_token * sh.tokens


def logits_transient_bytes(training: TrainingSpec, plans: PlanArrays, padded_vocab: np.ndarray) -> np.ndarray:
    """The bf16 logits that exist next to their fp32 copy while the loss is computed."""
    tokens = plans.micro_batch * training.seq_length / plans.cp
    return ACT_BYTES * tokens * padded_vocab / plans.tp
