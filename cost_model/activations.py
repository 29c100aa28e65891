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
* FP8 GEMMs (Transformer Engine) save FP8 copies of GEMM inputs: 1 byte instead of 2; NVFP4 GEMMs save
  NVFP4 copies, 0.5625 bytes (:data:`GEMM_INPUT_BYTES`);
* context parallelism: every tensor covers s/cp tokens; a materialised score matrix is (s/cp) x s;
* PyTorch tensor parallelism (torchtitan) with sequence parallelism saves the all-gathered input of the
  column-parallel GEMMs (QKV, fc1, LM head) whole, not split by t
  (:attr:`cost_model.stacks.StackSpec.tp_saves_gathered_input`);
* MoE (Megatron token dispatcher): per rank, b*(s/cp)*k*capacity*etp/tp token-expert pairs; each saves
  the expert's fc1 input (h), fc1 output and fc2 input (split by expert-TP) and its fp32 routing
  probability; the router saves fp32 probabilities (E per token). Megatron-Core multiplies the
  probabilities in the experts' activation (``activation_func_with_probs`` in
  ``megatron/core/transformer/moe/experts.py``, MCore 0.13 "memory efficient token permutation"), so
  unpermute saves no expert output for the weighted combine.

Full recompute keeps only each layer's input (2sbh, split by SP) — Korthikanti's 2sbh/t with SP.
Norm statistics (8 bytes per token) and RNG state are ignored, as the paper does.

Selective recompute drops the tensors of the submodules it names (Megatron ``--recompute-modules``):

=================  ==========================================================================
module             tensors no longer saved
=================  ==========================================================================
core_attn          the s x s scores, probabilities and masks (flash attention saves none)
layernorm          both norm outputs (the QKV / MLA down-projection input and the MLP input)
mla_up_proj        MLA's per-head Q, K and V (rebuilt from the saved latents)
mlp                the dense MLP's fc1 output and fc2 input (its bf16 input is kept)
moe_act            every routed expert's fc2 input (the activation output)
moe                router probabilities, routed experts' and shared experts' tensors (input kept)
shared_experts     the shared experts' fc1 output and fc2 input
=================  ==========================================================================
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import numpy as np

from .model_spec import ModelSpec
from .plan import MODULE_BIT, PlanArrays, SELECTIVE
from .stacks import stack_spec
from .training_spec import TrainingSpec

ACT_BYTES = 2  # bf16 activations between layers

NVFP4_BYTES_PER_ELEMENT = 0.5 + 1.0 / 16
"""NVFP4 storage: a 4-bit E2M1 value per element plus one FP8 E4M3 scale per 16-element block (the FP32
per-tensor scale is 4 bytes per tensor, nothing per element); arXiv:2509.25149, section 2."""

GEMM_INPUT_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": NVFP4_BYTES_PER_ELEMENT}
"""Bytes per element of a GEMM input as the GEMM reads it and as Transformer Engine saves it for backward,
by precision. FP8 saves an FP8 copy; NVFP4 saves the column-wise NVFP4 copy that the weight-gradient GEMM
reads (TE ``Linear`` keeps only the usage backward needs)."""


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
    gemm_in_div: np.ndarray   # the split of a saved column-parallel GEMM input: sp_div, or 1 where the stack saves the gathered one
    t: np.ndarray
    q_heads: np.ndarray       # a / t
    kv_heads: np.ndarray      # max(kv / t, 1)  (all heads for MLA, whose K/V are per head)
    s_kv: np.ndarray          # keys each query attends to (full sequence under CP)
    gemm_in_bytes: float      # saved GEMM-input bytes: GEMM_INPUT_BYTES of the precision


def _shapes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> _Shapes:
    t = plans.tp.astype(float)
    kv = model.num_attention_heads if model.is_mla else model.num_kv_heads
    sp_div = np.where(plans.sequence_parallel, t, 1.0)
    return _Shapes(
        tokens=plans.micro_batch * training.seq_length / plans.cp,
        sp_div=sp_div,
        gemm_in_div=np.ones_like(sp_div) if stack_spec(training.stack).tp_saves_gathered_input else sp_div,
        t=t,
        q_heads=model.num_attention_heads / t,
        kv_heads=np.maximum(kv / t, 1.0),
        s_kv=np.full(len(plans), float(training.seq_length)),
        gemm_in_bytes=GEMM_INPUT_BYTES[training.precision],
    )


def recomputes(plans: PlanArrays, module: str) -> np.ndarray:
    """Plans whose selective recompute includes ``module`` (booleans over plans)."""
    return (plans.recompute == SELECTIVE) & ((plans.recompute_modules & MODULE_BIT[module]) != 0)


def attention_block_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays,
                          selective: bool = True) -> np.ndarray:
    """Saved bytes of the attention half of a layer (norm 1 through the residual), per rank;
    ``selective=False`` ignores the plan's recompute modules."""
    sh = _shapes(model, training, plans)
    h = model.hidden_size
    e, g = ACT_BYTES, sh.gemm_in_bytes
    tok = sh.tokens
    dropout = training.dropout

    replicated = e * h  # norm-1 input
    gemm_input = np.full(len(plans), float(g * h))  # QKV (or MLA down-projection) GEMM input
    if dropout:
        replicated += 1 * h  # dropout mask after the output projection
    if model.is_mla:
        # Latent paths are replicated over TP: q_a output (norm input) and q_b input; kv_a output
        # (latent + rope key) and kv_b input.
        if model.q_lora_rank:
            replicated += e * model.q_lora_rank + g * model.q_lora_rank
        replicated += e * (model.kv_lora_rank + model.qk_rope_head_dim) + g * model.kv_lora_rank
    qkv = (e * sh.q_heads * model.q_head_dim            # Q
           + e * sh.kv_heads * model.q_head_dim          # K
           + e * sh.kv_heads * model.v_dim)              # V
    out_proj_input = g * sh.q_heads * model.v_dim        # = attention output
    norm_output = g * h                                  # QKV / down-projection GEMM input
    if selective:
        if model.is_mla:
            qkv = np.where(recomputes(plans, "mla_up_proj"), 0.0, qkv)
        gemm_input = gemm_input - np.where(recomputes(plans, "layernorm"), norm_output, 0.0)
    per_token = replicated / sh.sp_div + gemm_input / sh.gemm_in_div + qkv + out_proj_input

    scores = np.zeros_like(tok)
    if training.flash_attention:
        per_token = per_token + 4.0 * sh.q_heads  # fp32 log-sum-exp per head
    else:
        # s x s tensors per head: softmax output (2 bytes) + with dropout a 1-byte mask and a 2-byte output.
        score_bytes = (2 + 1 + 2) if dropout else 2
        scores = score_bytes * sh.q_heads * tok * sh.s_kv
        if selective:
            scores = np.where(recomputes(plans, "core_attn"), 0.0, scores)
    return per_token * tok + scores


def _mlp_saved_per_token(model: ModelSpec, training: TrainingSpec, width_per_rank: np.ndarray) -> np.ndarray:
    """fc1 output (SwiGLU: gate and up) and fc2 input for an MLP of the given per-rank width."""
    e = ACT_BYTES
    g = GEMM_INPUT_BYTES[training.precision]
    fc1_out = e * width_per_rank * (2 if model.gated_mlp else 1)
    return fc1_out + g * width_per_rank


def _mlp_input_bytes(plans: PlanArrays, h: int, gemm_in_bytes: float, checkpointed: np.ndarray) -> np.ndarray:
    """Per token before the SP split: the norm-2 output the MLP (or MoE) block keeps as its input.

    Saved by fc1 (1 byte under FP8), or at 2 bytes as a checkpointed block's input; discarded by
    ``layernorm`` recompute."""
    kept = np.where(checkpointed, ACT_BYTES * h, gemm_in_bytes * h)
    return np.where(recomputes(plans, "layernorm"), 0.0, kept)


def dense_mlp_block_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays,
                          selective: bool = True) -> np.ndarray:
    sh = _shapes(model, training, plans)
    h = model.hidden_size
    replicated = ACT_BYTES * h + (1 * h if training.dropout else 0)  # norm-2 input (+ dropout mask)
    split = _mlp_saved_per_token(model, training, model.ffn_hidden_size / sh.t)
    if selective:
        checkpointed = recomputes(plans, "mlp")
        mlp_input = _mlp_input_bytes(plans, h, sh.gemm_in_bytes, checkpointed)
        split = np.where(checkpointed, 0.0, split)
    else:
        mlp_input = np.full(len(plans), float(sh.gemm_in_bytes * h))
    return (replicated / sh.sp_div + mlp_input / sh.gemm_in_div + split) * sh.tokens


def routed_pairs_per_rank(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Token-expert pairs one rank's experts process per micro-batch.

    A data-parallel replica's b*s tokens make b*s*k pairs; the tp*cp ranks that share them (Megatron's
    folding: etp*ep*edp = tp*cp*dp) each process an equal share, and expert-TP ranks of an expert all
    see its tokens: b*(s/cp)*k*capacity*etp/tp.
    """
    tokens = plans.micro_batch * training.seq_length / plans.cp
    return tokens * model.experts_per_token * training.moe_capacity_factor * plans.etp / plans.tp


def distinct_destination_ranks(num_experts: int, experts_per_token: int, ep: np.ndarray) -> np.ndarray:
    """Expected number of EP ranks a token's k experts live on, for uniform routing over E experts held
    E/ep per rank: ep * (1 - C(E - E/ep, k) / C(E, k)), the chance that a given rank holds none of the
    k chosen experts being C(E - E/ep, k) / C(E, k). One rank (ep = 1) gives 1; k = 1 gives 1."""
    ep = np.asarray(ep)
    result = np.ones(ep.shape, dtype=float)
    for size in np.unique(ep):
        if size <= 1:
            continue
        elsewhere = num_experts - num_experts // int(size)
        missed = math.comb(elsewhere, experts_per_token) / math.comb(num_experts, experts_per_token)
        result[ep == size] = size * (1.0 - missed)
    return result


def dispatched_rows_per_rank(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Token rows one rank sends in the MoE dispatch all-to-all per micro-batch (and receives back in the
    combine).

    Megatron's ``alltoall`` dispatcher permutes one row per token-expert pair before the all-to-all
    (:func:`routed_pairs_per_rank`). The flex dispatcher's DeepEP and HybridEP kernels send a token once
    to each rank holding any of its experts and expand it to pairs there (Megatron-LM
    ``megatron/core/transformer/moe/fused_a2a.py``; DeepEP README, "normal kernels"): rows =
    tokens x :func:`distinct_destination_ranks` instead of tokens x k, assuming uniform routing (the
    forced balance of the benchmark recipes; group-limited routing such as DeepSeek-V3's sends fewer).
    """
    pairs = routed_pairs_per_rank(model, training, plans)
    if training.moe_token_dispatcher == "alltoall":
        return pairs
    ranks = distinct_destination_ranks(model.num_experts, model.experts_per_token, plans.ep)
    return pairs * ranks / model.experts_per_token


def expert_saved_pairs_per_rank(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Token-expert pairs whose expert activations one rank keeps for backward.

    The routed pairs, except with Megatron's sync-free rank capacity, whose buffers are sized before
    routing at ``moe_rank_capacity_factor`` x a balanced share (Megatron-LM
    ``docs/user-guide/features/paged_stash.md``: "multipliers on buffer size relative to the perfectly
    balanced case"), or, with the paged stash, at ``moe_paged_stash_factor`` x that share.
    """
    pairs = routed_pairs_per_rank(model, training, plans)
    factor = training.moe_paged_stash_factor or training.moe_rank_capacity_factor
    return pairs if factor is None else pairs * (factor / training.moe_capacity_factor)


def moe_mlp_block_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays,
                        selective: bool = True) -> np.ndarray:
    sh = _shapes(model, training, plans)
    h = model.hidden_size
    e, g = ACT_BYTES, sh.gemm_in_bytes
    n = len(plans)
    checkpointed = recomputes(plans, "moe") if selective else np.zeros(n, dtype=bool)
    block_input = _mlp_input_bytes(plans, h, g, checkpointed) if selective else np.full(n, float(g * h))
    norm_input = e * h + (1 * h if training.dropout else 0)
    router_probs = np.where(checkpointed, 0.0, 4.0 * model.num_experts)  # fp32, E per token
    per_token = (norm_input + block_input + router_probs) / sh.sp_div
    if model.shared_expert_ffn_hidden_size:
        shared = _mlp_saved_per_token(model, training, model.shared_expert_ffn_hidden_size / sh.t)
        if selective:
            shared = np.where(checkpointed | recomputes(plans, "shared_experts"), 0.0, shared)
        per_token = per_token + shared
    pairs = expert_saved_pairs_per_rank(model, training, plans)
    width = model.moe_ffn_hidden_size / plans.etp
    fc2_input = g * width
    if selective:
        fc2_input = np.where(recomputes(plans, "moe_act"), 0.0, fc2_input)
    per_pair = (g * h                                              # expert fc1 input (permuted tokens)
                + e * width * (2 if model.gated_mlp else 1)       # expert fc1 output
                + fc2_input                                        # expert fc2 input (activation output)
                + 4.0)                                             # fp32 routing probability, for the activation
    per_pair = np.where(checkpointed, 0.0, per_pair)
    return per_token * sh.tokens + per_pair * pairs


def layer_input_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Full recompute keeps the layer input: 2sbh, split by SP (Korthikanti et al. 2022, section 5)."""
    sh = _shapes(model, training, plans)
    return ACT_BYTES * model.hidden_size * sh.tokens / sh.sp_div


def layer_activations(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> LayerActivations:
    attention = attention_block_bytes(model, training, plans)
    attention_all = attention_block_bytes(model, training, plans, selective=False)
    zero = 0.0 * attention
    has_dense, is_moe = model.num_dense_layers > 0, model.is_moe
    dense_mlp = dense_mlp_block_bytes(model, training, plans) if has_dense else zero
    dense_mlp_all = dense_mlp_block_bytes(model, training, plans, selective=False) if has_dense else zero
    moe_mlp = moe_mlp_block_bytes(model, training, plans) if is_moe else zero
    moe_mlp_all = moe_mlp_block_bytes(model, training, plans, selective=False) if is_moe else zero
    return LayerActivations(
        dense_full=attention + dense_mlp,
        moe_full=attention + moe_mlp,
        layer_input=layer_input_bytes(model, training, plans),
        dense_no_recompute=attention_all + dense_mlp_all,
        moe_no_recompute=attention_all + moe_mlp_all,
    )


def embedding_dropout_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Dropout mask on the embedding output (first stage, per micro-batch in flight)."""
    if not training.dropout:
        return np.zeros(len(plans))
    sh = _shapes(model, training, plans)
    return 1.0 * model.hidden_size * sh.tokens / sh.sp_div


def saved_logit_bytes(training: TrainingSpec) -> float:
    """Bytes per logit (token x vocabulary entry) the loss keeps for backward.

    * 4: Megatron's vocab-parallel cross entropy, fused or not, casts the logits to fp32 and keeps the
      softmax computed in place (``calculate_logits_max`` in
      ``megatron/core/tensor_parallel/cross_entropy.py``); PyTorch's ``log_softmax`` on the fp32 logits
      (torchtitan) keeps its fp32 output;
    * 2: flash-attn's ``CrossEntropyLoss``, the default loss of llm-foundry (composer-fsdp stack,
      ``loss_fn: fused_crossentropy`` in ``llmfoundry/models/mpt/modeling_mpt.py``), keeps the bf16
      logits themselves and an fp32 log-sum-exp per token (``flash_attn/losses/cross_entropy.py``).
    """
    if training.fused_cross_entropy:
        return float(stack_spec(training.stack).loss_logit_bytes)
    return 4.0


def lm_head_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, padded_vocab: np.ndarray) -> np.ndarray:
    """Last stage, one micro-batch: final-norm input, LM-head GEMM input (bf16: the head stays out of
    FP8, see :func:`cost_model.compute.lm_head_times`; whole where the stack saves the gathered
    sequence-parallel input) and the logits the loss keeps for backward
    (:func:`saved_logit_bytes`)."""
    sh = _shapes(model, training, plans)
    h = model.hidden_size
    per_token = ACT_BYTES * h / sh.sp_div + ACT_BYTES * h / sh.gemm_in_div + saved_logit_bytes(training) * padded_vocab / sh.t
    return per_token * sh.tokens


def logits_transient_bytes(training: TrainingSpec, plans: PlanArrays, padded_vocab: np.ndarray) -> np.ndarray:
    """Logit-sized buffers beside the saved fp32 logits (4 bytes per vocabulary entry, counted by
    :func:`lm_head_bytes`) at the loss's memory peak, per vocabulary entry and token:

    * fused (Megatron's vocab-parallel cross entropy): the bf16 logits next to their fp32 copy, whose
      softmax and gradient are computed in place: 2 bytes; flash-attn's (composer-fsdp): the bf16
      gradient its backward writes beside the saved bf16 logits: 2 bytes;
    * unfused, tp = 1 (PyTorch ``log_softmax`` + ``nll_loss``, as ``F.cross_entropy`` runs them): in
      backward, ``nll_loss_backward``'s fp32 gradient of the log-probabilities and
      ``_log_softmax_backward_data``'s fp32 input gradient next to the saved log-probabilities:
      8 bytes (the forward's peak, bf16 logits + fp32 copy + output, is 6);
    * unfused, tp > 1 (PyTorch's loss parallel on vocabulary-sharded DTensor logits, torchtitan's
      TP loss): ``torch.distributed.tensor.parallel.loss._nll_loss_and_log_softmax_backward``
      evaluates ``(grad_input + torch.exp(x)) * grad_output`` with ``grad_input = zeros_like(x)``, so
      the zeros, ``exp(x)`` and their sum (then the sum and the product) are alive at once beside
      the saved log-probabilities ``x``: 12 bytes (the forward's ``_log_softmax`` decomposition peaks
      at 10: the fp32 input, ``shifted`` and ``exp(shifted)`` beside the bf16 logits).
    """
    tokens = plans.micro_batch * training.seq_length / plans.cp
    if training.fused_cross_entropy:
        per_entry = np.full(len(plans), float(ACT_BYTES))
    else:
        per_entry = np.where(plans.tp > 1, 12.0, 8.0)
    return per_entry * tokens * padded_vocab / plans.tp
