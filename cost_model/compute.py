"""Compute time of one layer for one micro-batch on one rank, from the GEMMs and kernels it runs.

Each GEMM (M x K) @ (K x N) is priced on a roofline with an achievable fraction of peak:

    time = max(2*M*N*K / (peak * gemm_efficiency * wave_efficiency),
               bytes_moved / (HBM bandwidth * hbm_efficiency)) + kernel_overhead

wave_efficiency = tiles / (waves * SMs) with tiles = ceil(M/128) * ceil(N/256): the output tiles run
one per SM, in waves, and the last wave is partly idle (wave quantization).

where bytes_moved = (M*K + K*N) * input bytes + M*N * 2. Large GEMMs are compute bound at the measured
large-GEMM efficiency (REFERENCE.md: ~80% of dense peak on H100 SXM); thin, TP-sharded or small-batch
GEMMs become bandwidth or overhead bound, which is how tensor and expert parallelism lose efficiency.

Attention core (QK^T, softmax, AV): 2*b*heads*s_q*s_kv*(d_qk + d_v) FLOPs forward; fused causal kernels
skip the masked half. Their efficiency falls for short sequences (or short context-parallel chunks):
L / (L + 512) of the GPU's attention efficiency, L the tokens one kernel call sees. Backward of a flash kernel recomputes QK^T, so it does 2.5x the forward FLOPs
(Dao 2023, FlashAttention-2, section 3.1: 5 matmuls backward vs 2 forward); an unfused kernel 2x.
Priced at the GPU's attention efficiency.

Element-wise kernels (norms, residual adds, rotary embedding, SwiGLU/GeLU, dropout, unfused softmax,
MoE token reordering, FP8 casts of GEMM inputs) are memory bound: bytes read + written / achievable
HBM bandwidth. Their backward moves about twice the forward's bytes (for the FP8 casts: the output
gradients, cast in both layouts like the forward inputs).

Backward GEMMs: one data-gradient and one weight-gradient GEMM per forward GEMM, same FLOPs each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware.schema import GPUSpec

from .activations import ACT_BYTES, recomputes, routed_pairs_per_rank
from .host import exposed_issue_time, host_syncs_per_layer, layer_kernels
from .model_spec import ModelSpec
from .options import CostOptions
from .plan import PlanArrays
from .stacks import stack_spec
from .training_spec import TrainingSpec


@dataclass
class LayerTimes:
    """Seconds per micro-batch on one rank, arrays over plans."""

    forward: np.ndarray
    """Whole layer forward."""
    backward: np.ndarray
    """Whole layer backward."""
    attention_forward: np.ndarray
    """Attention core forward (what selective recompute repeats; what the CP ring overlaps with)."""
    attention_backward: np.ndarray
    gemm_forward: np.ndarray
    """GEMM part of the forward (what TP communication overlap can hide behind)."""
    selective_recompute: np.ndarray
    """What the plan's selective recompute modules rerun in backward (zero for other modes)."""
    forward_flops: np.ndarray
    """FLOPs executed forward (model FLOPs; recompute adds more)."""
    attention_forward_flops: np.ndarray
    attention_block_forward: np.ndarray
    """The attention half of the layer forward: projections, core, norms and element-wise work (what
    the EP all-to-all overlap pairs with a combine, :mod:`cost_model.ep_overlap`)."""
    attention_block_backward: np.ndarray
    host_exposed: np.ndarray
    """Seconds of ``forward + backward`` the GPU waits for the host to issue kernels
    (:func:`cost_model.host.exposed_issue_time`)."""


class _Pricer:
    def __init__(self, gpu: GPUSpec, training: TrainingSpec, options: CostOptions, gemm_precision: str | None = None):
        """``gemm_precision`` overrides the run's precision for GEMMs kept out of FP8 (the LM head)."""
        fp8 = (gemm_precision or training.precision) == "fp8" and gpu.peak_tflops_fp8
        # The GPU presets' efficiencies are the reference stack's (Megatron-Core + Transformer Engine);
        # another stack reaches its fitted share of them (cost_model.stacks).
        stack = stack_spec(training.stack).kernel_efficiency
        if fp8:
            efficiency = gpu.gemm_efficiency_fp8 or gpu.gemm_efficiency
            self.gemm_flops_per_s = gpu.peak_tflops_fp8 * 1e12 * efficiency * stack
        else:
            self.gemm_flops_per_s = gpu.peak_tflops_bf16 * 1e12 * gpu.gemm_efficiency * stack
        self.attention_flops_per_s = gpu.peak_tflops_bf16 * 1e12 * gpu.attention_efficiency * stack
        self.hbm_bytes_per_s = gpu.hbm_GBps * 1e9 * gpu.hbm_efficiency
        self.in_bytes = 1 if fp8 else 2
        # Current scaling reads each input once more for its amax before the cast.
        self.quantize_bytes_per_element = 6.0 if training.fp8_recipe == "tensorwise" else 4.0
        self.overhead_s = options.kernel_overhead_us * 1e-6
        self.num_sms = gpu.num_sms
        self.tile_m, self.tile_n = options.gemm_tile

    def wave_efficiency(self, m, n, count=1.0):
        """Share of SM time doing useful work when output tiles run in waves of num_sms.

        A GEMM's output is cut into tile_m x tile_n tiles, one per SM at a time; the last wave is
        partly empty (wave quantization, NVIDIA "Matrix Multiplication Background" guide). A grouped
        GEMM (``count`` experts) schedules all its tiles together.
        """
        if not self.num_sms:
            return 1.0
        tiles = np.ceil(np.asarray(m, dtype=float) / self.tile_m) * np.ceil(np.asarray(n, dtype=float) / self.tile_n)
        tiles = np.maximum(tiles * count, 1.0)
        waves = np.ceil(tiles / self.num_sms)
        return tiles / (waves * self.num_sms)

    def gemm(self, m, n, k, count=1.0):
        """Seconds and FLOPs of ``count`` GEMMs of shape (m x k) @ (k x n)."""
        m, n, k = (np.asarray(x, dtype=float) for x in (m, n, k))
        flops = 2.0 * m * n * k
        moved = (m * k + k * n) * self.in_bytes + m * n * ACT_BYTES
        compute_s = flops / (self.gemm_flops_per_s * self.wave_efficiency(m, n, count))
        seconds = np.maximum(compute_s, moved / self.hbm_bytes_per_s) + self.overhead_s
        seconds = np.where(m > 0, seconds, 0.0)
        return count * seconds, count * flops

    def streaming(self, bytes_moved):
        return np.asarray(bytes_moved, dtype=float) / self.hbm_bytes_per_s

    def quantize(self, m, k, count=1.0):
        """Seconds to cast a GEMM's (m x k) bf16 input to FP8 in both the row- and the column-wise
        layout that forward and weight-gradient GEMMs read: 2 bytes read, 2 written per element
        (Transformer Engine), and with ``tensorwise`` current scaling 2 more read by the amax pass;
        zero without FP8. Weights are cast once per step and left out."""
        if self.in_bytes != 1:
            return 0.0
        bytes_moved = self.quantize_bytes_per_element * np.asarray(m, dtype=float) * np.asarray(k, dtype=float)
        return count * self.streaming(bytes_moved)


def _attention(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, pricer: _Pricer,
               options: CostOptions):
    """Projection GEMMs, attention core and element-wise work of the attention half of a layer."""
    h = model.hidden_size
    t = plans.tp.astype(float)
    tokens = plans.micro_batch * training.seq_length / plans.cp
    sp_div = np.where(plans.sequence_parallel, t, 1.0)
    q_heads = model.num_attention_heads / t
    kv_heads = np.maximum((model.num_attention_heads if model.is_mla else model.num_kv_heads) / t, 1.0)

    gemm_s = np.zeros(len(plans))
    gemm_flops = np.zeros(len(plans))
    quantize_s = np.zeros(len(plans))

    def add(seconds_flops, k):
        nonlocal gemm_s, gemm_flops, quantize_s
        gemm_s = gemm_s + seconds_flops[0]
        gemm_flops = gemm_flops + seconds_flops[1]
        quantize_s = quantize_s + pricer.quantize(tokens, k)

    up_proj_s = np.zeros(len(plans))
    if model.is_mla:
        if model.q_lora_rank:
            add(pricer.gemm(tokens, model.q_lora_rank, h), h)                    # q_a (replicated)
            q_b = pricer.gemm(tokens, q_heads * model.q_head_dim, model.q_lora_rank)
            add(q_b, model.q_lora_rank)
            up_proj_s = up_proj_s + q_b[0]
        else:
            add(pricer.gemm(tokens, q_heads * model.q_head_dim, h), h)
        add(pricer.gemm(tokens, model.kv_lora_rank + model.qk_rope_head_dim, h), h)  # kv_a (replicated)
        kv_b = pricer.gemm(tokens, q_heads * (model.qk_nope_head_dim + model.v_head_dim), model.kv_lora_rank)
        add(kv_b, model.kv_lora_rank)
        up_proj_s = up_proj_s + kv_b[0]
    else:
        add(pricer.gemm(tokens, (q_heads + 2 * kv_heads) * model.head_dim, h), h)  # fused QKV
    add(pricer.gemm(tokens, q_heads * model.v_dim, h), q_heads * model.v_dim)     # output projection

    s_kv = float(training.seq_length)
    causal_skip = 0.5 if (training.causal and training.flash_attention) else 1.0
    # Fused kernels skip the blocks a causal mask or a sliding window hides; unfused attention
    # computes the whole s x s score matrix and masks it.
    window_share = (model.attended_share(training.seq_length, training.causal) if training.flash_attention else 1.0)
    core_flops = 2.0 * plans.micro_batch * q_heads * (training.seq_length / plans.cp) * s_kv \
        * (model.q_head_dim + model.v_dim) * causal_skip * window_share
    # Fused attention kernels fill the GPU only with long sequences: FlashAttention-2 (Dao 2023, fig. 4-5)
    # roughly halves its throughput from 16K to 512 tokens. Model the kernel's efficiency as
    # L / (L + attention_half_length) of the GPU's figure, L the sequence each kernel sees: the whole
    # sequence, or with ring context parallelism the s/cp chunk one step processes.
    kernel_length = training.seq_length / plans.cp
    size_factor = kernel_length / (kernel_length + options.attention_half_length)
    core_fwd_s = core_flops / (pricer.attention_flops_per_s * size_factor)
    backward_factor = 2.5 if training.flash_attention else 2.0

    e = ACT_BYTES
    norms_s = pricer.streaming(4 * e * h / sp_div * tokens)      # two norms, each reads and writes h
    per_token = (4 * e * h + 6 * e * h) / sp_div                  # the norms, 2 residual adds
    per_token = per_token + 2 * e * (q_heads + kv_heads) * model.q_head_dim  # rotary embedding on q, k
    if training.dropout:
        per_token = per_token + (2 * e + 1) * h / sp_div
    elementwise = per_token * tokens
    if not training.flash_attention:
        score_passes = 4 if training.dropout else 2                 # softmax read/write (+ dropout)
        elementwise = elementwise + score_passes * e * q_heads * tokens * s_kv
    elementwise_s = pricer.streaming(elementwise) + quantize_s
    # What selective recompute reruns in this half: core attention, the norms, MLA's up-projections.
    rerun = (np.where(recomputes(plans, "core_attn"), core_fwd_s, 0.0)
             + np.where(recomputes(plans, "layernorm"), norms_s, 0.0)
             + np.where(recomputes(plans, "mla_up_proj"), up_proj_s, 0.0))
    return gemm_s, gemm_flops, core_fwd_s, core_flops, backward_factor, elementwise_s, rerun


def _mlp(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, pricer: _Pricer, width_per_rank,
         tokens):
    """A dense or shared-expert MLP of the given per-rank intermediate width."""
    h = model.hidden_size
    fc1_width = width_per_rank * (2 if model.gated_mlp else 1)
    s1, f1 = pricer.gemm(tokens, fc1_width, h)
    s2, f2 = pricer.gemm(tokens, h, width_per_rank)
    act_bytes = ACT_BYTES * width_per_rank * (3 if model.gated_mlp else 2) * tokens
    quantize_s = pricer.quantize(tokens, h) + pricer.quantize(tokens, width_per_rank)
    return s1 + s2, f1 + f2, pricer.streaming(act_bytes) + quantize_s


def layer_times(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, gpu: GPUSpec,
                options: CostOptions) -> tuple[LayerTimes, LayerTimes]:
    """Times of a dense layer and of a MoE layer (zeros where the model has none)."""
    pricer = _Pricer(gpu, training, options)
    t = plans.tp.astype(float)
    tokens = plans.micro_batch * training.seq_length / plans.cp
    att_gemm_s, att_flops, core_s, core_flops, bwd_factor, att_elem_s, att_rerun = _attention(
        model, training, plans, pricer, options)

    attention_fwd = att_gemm_s + core_s + att_elem_s
    attention_bwd = 2 * att_gemm_s + bwd_factor * core_s + 2 * att_elem_s

    def assemble(gemm_s, gemm_flops, elem_s, mlp_rerun):
        forward = gemm_s + core_s + elem_s
        backward = 2 * gemm_s + bwd_factor * core_s + 2 * elem_s
        return LayerTimes(forward=forward, backward=backward, attention_forward=core_s,
                          attention_backward=bwd_factor * core_s, gemm_forward=gemm_s,
                          selective_recompute=att_rerun + mlp_rerun,
                          forward_flops=gemm_flops + core_flops, attention_forward_flops=core_flops,
                          attention_block_forward=attention_fwd, attention_block_backward=attention_bwd,
                          host_exposed=np.zeros(len(plans)))

    zero = np.zeros(len(plans))
    if model.num_dense_layers:
        mlp_s, mlp_flops, mlp_elem = _mlp(model, training, plans, pricer, model.ffn_hidden_size / t, tokens)
        dense = assemble(att_gemm_s + mlp_s, att_flops + mlp_flops, att_elem_s + mlp_elem,
                         np.where(recomputes(plans, "mlp"), mlp_s + mlp_elem, 0.0))
    else:
        dense = LayerTimes(*[zero] * 11)

    if model.is_moe:
        sp_div = np.where(plans.sequence_parallel, t, 1.0)
        router_s, router_flops = pricer.gemm(tokens / sp_div, model.num_experts, model.hidden_size)
        pairs = routed_pairs_per_rank(model, training, plans)
        local_experts = model.num_experts / plans.ep
        width = model.moe_ffn_hidden_size / plans.etp
        fc1 = width * (2 if model.gated_mlp else 1)
        e1_s, e1_f = pricer.gemm(pairs / local_experts, fc1, model.hidden_size, count=local_experts)
        e2_s, e2_f = pricer.gemm(pairs / local_experts, model.hidden_size, width, count=local_experts)
        activation_s = pricer.streaming(ACT_BYTES * pairs * width * (3 if model.gated_mlp else 2))
        # Token reordering, each a read and a write of h per pair: permute before dispatch and unpermute
        # after combine; with several local experts Megatron's all-to-all dispatcher also sorts the
        # received tokens by expert and back (megatron/core/transformer/moe/token_dispatcher.py,
        # sort_chunks_by_idxs). The flex dispatcher's kernels do the global permute; the received tokens
        # are expanded to pairs by expert once and gathered back once (MoEFlexTokenDispatcher).
        if training.moe_token_dispatcher == "alltoall":
            reorders = np.where(local_experts > 1, 4.0, 2.0)
        else:
            reorders = np.full(len(plans), 2.0)
        reorder_s = pricer.streaming(ACT_BYTES * pairs * 2 * reorders * model.hidden_size)
        quantize_s = pricer.quantize(pairs, model.hidden_size) + pricer.quantize(pairs, width)
        expert_elem_s = activation_s + reorder_s + quantize_s
        experts_s = router_s + e1_s + e2_s + expert_elem_s
        shared_s = zero
        gemm_s = att_gemm_s + router_s + e1_s + e2_s
        flops = att_flops + router_flops + e1_f + e2_f
        elem_s = att_elem_s + expert_elem_s
        if model.shared_expert_ffn_hidden_size:
            sh_s, sh_f, sh_elem = _mlp(model, training, plans, pricer, model.shared_expert_ffn_hidden_size / t, tokens)
            gemm_s, flops, elem_s = gemm_s + sh_s, flops + sh_f, elem_s + sh_elem
            shared_s = sh_s + sh_elem
        whole = recomputes(plans, "moe")
        rerun = np.where(whole, experts_s + shared_s,
                         np.where(recomputes(plans, "moe_act"), activation_s, 0.0)
                         + np.where(recomputes(plans, "shared_experts"), shared_s, 0.0))
        moe = assemble(gemm_s, flops, elem_s, rerun)
    else:
        moe = LayerTimes(*[zero] * 11)
    # The CPU must issue every kernel: each part of a layer takes at least its host issue time.
    kernels = layer_kernels(model, training, plans)
    synced = host_syncs_per_layer(model, training)
    if model.num_dense_layers:
        mlp_fwd = mlp_s + mlp_elem
        extra_fwd, extra_bwd = exposed_issue_time(
            {"attention": attention_fwd, "dense_mlp": mlp_fwd}, {"attention": attention_bwd, "dense_mlp": 2 * mlp_fwd},
            kernels, options.host_kernel_issue_us, synced)
        dense.forward, dense.backward = dense.forward + extra_fwd, dense.backward + extra_bwd
        dense.host_exposed = extra_fwd + extra_bwd
    if model.is_moe:
        fixed_fwd = router_s + activation_s + reorder_s + shared_s
        experts_fwd = e1_s + e2_s + quantize_s
        extra_fwd, extra_bwd = exposed_issue_time(
            {"attention": attention_fwd, "moe_fixed": fixed_fwd, "experts": experts_fwd},
            {"attention": attention_bwd, "moe_fixed": 2 * fixed_fwd, "experts": 2 * experts_fwd},
            kernels, options.host_kernel_issue_us, synced)
        moe.forward, moe.backward = moe.forward + extra_fwd, moe.backward + extra_bwd
        moe.host_exposed = extra_fwd + extra_bwd
    return dense, moe


def lm_head_times(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, gpu: GPUSpec,
                  options: CostOptions, padded_vocab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward seconds, backward seconds and forward FLOPs of the final norm, LM head and loss.

    The LM head runs in bf16 even in FP8 runs: Megatron's output layer is a plain
    ``tensor_parallel.ColumnParallelLinear`` outside Transformer Engine's FP8 layers, torchtitan's
    Float8 conversion skips the module named ``output``, and DeepSeek-V3 keeps its output head in
    BF16 (DeepSeek-V3 report, section 3.3, mixed-precision framework)."""
    pricer = _Pricer(gpu, training, options, gemm_precision="bf16")
    tokens = plans.micro_batch * training.seq_length / plans.cp
    vocab_per_rank = padded_vocab / plans.tp
    gemm_s, flops = pricer.gemm(tokens, vocab_per_rank, model.hidden_size)
    # Cross-entropy: upcast bf16 logits to fp32, max, exp, sum, normalise: ~4 passes over fp32 logits.
    loss_s = pricer.streaming((ACT_BYTES + 4 * 4) * tokens * vocab_per_rank)
    return gemm_s + loss_s, 2 * gemm_s + loss_s, flops
