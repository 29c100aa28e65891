"""Compute time of one layer for one micro-batch on one rank, from the GEMMs and kernels it runs.

Each GEMM (M x K) @ (K x N) is priced on a roofline with an achievable fraction of peak:

    time = max(2*M*N*K / (peak * gemm_efficiency * wave_efficiency),
               bytes_moved / (HBM bandwidth * hbm_efficiency)) + kernel_overhead

wave_efficiency = tiles / (waves * SMs) with tiles = ceil(M/128) * ceil(N/256): the output tiles run
one per SM, in waves, and the last wave is partly idle (wave quantization).

where bytes_moved = (M*K + K*N) * input bytes + M*N * 2. Large GEMMs are compute bound at the measured
large-GEMM efficiency (REFERENCE.md: ~80% of dense peak on H100 SXM); thin, TP-sharded or small-batch
GEMMs become bandwidth or overhead bound, which is how tensor and expert parallelism lose efficiency.

The rate does not depend on the reduction length K. A per-tile fixed cost (pipeline fill, and an epilogue
that Ampere's CUTLASS 2.x-style kernels do not overlap with the next tile) would add the output store,
M*N*2 bytes / HBM, to the math: efficiency K / (K + K0), K0 = 2 bytes * rate / (2 FLOPs * bandwidth),
about 130 on an A100 (230 TFLOP/s fitted over 1.73 TB/s). Priced so on pre-Hopper GPUs and refitted
(2026-12), the leave-one-source-out median |error| rose from 7.9% to 8.8%: llm-foundry's small A100
models, already priced slow, went from -2% to -7% (MPT-125M, h = 768) and from -5% to -10% (MPT-350M,
h = 1024) held out, while the Korthikanti et al. 2022 rows' mean |step-time error| moved only from 3.3%
to 3.0% (fitted). Their 1T rows (priced 6-7% slow) share model, layout, micro-batches and GEMM shapes
with Narayanan et al. 2021's 1T row (SC21 Table 1, priced -1%), whose 163 TFLOP/s is a 102.6 s step
against their 94.4 s: no GEMM-shape term separates the two.

Attention core (QK^T, softmax, AV): 2*b*heads*s_q*s_kv*(d_qk + d_v) FLOPs forward.

* A fused (flash) kernel skips the blocks a causal mask hides and runs at the GPU's attention rate
  scaled by the kernel (FlashAttention-2 on Hopper/Blackwell runs at about half of cuDNN / FA3), the
  head dim, the sequence length a kernel call sees and the diagonal tiles a causal mask wastes; its
  backward recomputes QK^T (2.5x the forward FLOPs, Dao 2023, FlashAttention-2, section 3.1) at a lower
  rate than its forward (:func:`flash_attention_rates`).
* An unfused core (Megatron-LM before FlashAttention) materialises the s x s scores: two batched GEMMs
  priced on the roofline above (bandwidth bound: d FLOPs per score byte), a fused softmax and a dropout
  pass streaming the scores, and their backward; selective recompute reruns all of it.

Element-wise kernels (norms, residual adds, rotary embedding, SwiGLU/GeLU, dropout, MoE token
reordering, FP8 casts of GEMM inputs) are memory bound: bytes read + written / achievable
HBM bandwidth. Their backward moves about twice the forward's bytes (for the FP8 casts: the output
gradients, cast in both layouts like the forward inputs). A stack without fused element-wise kernels
(``StackSpec.fused_elementwise`` False: eager PyTorch) also copies q, k, v into the attention kernel's
layout and back, runs rotary embedding and SwiGLU as several kernels each.

MoE experts outside a fused grouped MLP (Megatron-Core ``TEGroupedMLP``) also clamp a clamped GLU's input
and add the experts' output bias as separate element-wise passes (GPT-OSS has both:
:func:`eager_expert_elementwise`).

Backward GEMMs: one data-gradient and one weight-gradient GEMM per forward GEMM, same FLOPs each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware.schema import GPUSpec

from .activations import ACT_BYTES, GEMM_INPUT_BYTES, recomputes, routed_pairs_per_rank
from .host import exposed_issue_time, host_syncs_per_layer, layer_kernels, unfused_rotary
from .model_spec import ModelSpec
from .options import CostOptions
from .plan import PlanArrays
from .stacks import DEFAULT_STACK, stack_spec
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
    forward_after_last_save: np.ndarray
    """Forward seconds after the layer's last tensor saved for backward: a dense layer's MLP output
    projection GEMM, whose input is the last tensor autograd saves (a GEMM's inputs are saved before it
    runs); what a recompute that stops early skips (:attr:`cost_model.stacks.StackSpec.recompute_early_stop`).
    The residual add after it is left out (a few percent of the GEMM's time); zero for MoE layers (not
    derived)."""


QUANTIZE_BYTES_PER_ELEMENT = {"tensorwise": 6.0, "delayed": 4.0, "mxfp8": 4.0 + 2 / 32, "blockwise": 4.0,
                              "nvfp4": 7.125}
"""HBM bytes per element to quantize one bf16 GEMM input into the row- and column-wise copies that the
forward and weight-gradient GEMMs read (Transformer Engine quantizers).

FP8: read 2 bytes, write 1 + 1. ``delayed`` takes its scale from the amax history and ``blockwise`` its
per-block scales in the cast: 4. ``tensorwise`` current scaling reads the input once more for its amax
before the cast: 6. ``mxfp8`` needs no extra pass but writes one E8M0 scale byte per 32 elements with each
of the two copies (``MXFP8Quantizer``; OCP Microscaling Formats v1.0, section 5: 32-element blocks,
E8M0 scales): 4 + 2/32 = 4.0625.

``nvfp4`` (TE ``NVFP4Quantizer::quantize_impl``): one ``nvte_hadamard_transform_amax`` pass reads the input
for the row-wise amax and the column-wise amax after the random Hadamard transform (2 bytes); the row-wise
cast reads it again (2) and the column-wise RHT cast fusion (``nvte_hadamard_transform_cast_fusion_columnwise``)
a third time (2); each writes 4-bit values plus one E4M3 scale per 16 elements, 0.5625 bytes
(:data:`NVFP4_BYTES_PER_ELEMENT`): 6 + 2 x 0.5625 = 7.125. Stochastic rounding of gradients happens in the
cast and moves no extra bytes."""

MXFP8_VS_PER_TENSOR_GEMM = 2347.65 / 2369.05
"""Throughput of an MXFP8 GEMM relative to a per-tensor-scaled FP8 GEMM of the same shape on Blackwell
(0.991): Blackwell's block-scaled tensor cores apply the E8M0 scale of every 32 elements inside the MMA
(cuBLAS kernel ``nvjet_sm100_qqtst_..._Avec32UE8M0_Bvec32UE8M0``), so the rate is the FP8 rate less the
scale traffic: cuDNN on B200, batch 128 x 512 x 512 x 4096 to bf16, 2,347.65 TFLOP/s MXFP8 against
2,369.05 per-tensor FP8 (flashinfer-ai/flashinfer PR #2256, ``flashinfer_benchmark.py`` ``bmm_mxfp8`` vs
``bmm_fp8``). The per-tensor recipes (``tensorwise``, ``delayed``) and ``blockwise`` run at the GPU's
calibrated FP8 efficiency; MXFP8 at that times this."""


def gemm_precision_rate(gpu: GPUSpec, precision: str) -> tuple[str, float, float]:
    """(precision the GEMMs really run in, dense peak TFLOP/s, achievable fraction of it) on ``gpu``.

    FP8 on a GPU without FP8 tensor cores runs in bf16 (Transformer Engine falls back); FP4 needs FP4 tensor
    cores, which :func:`precision_conflict` checks before pricing. An uncalibrated FP4 efficiency
    (``gemm_efficiency_fp4`` None) is the FP8 one: both are Transformer Engine's quantized GEMMs with
    their casts."""
    if precision == "fp4" and gpu.peak_tflops_fp4:
        efficiency = gpu.gemm_efficiency_fp4 or gpu.gemm_efficiency_fp8 or gpu.gemm_efficiency
        return "fp4", gpu.peak_tflops_fp4, efficiency
    if precision in ("fp8", "fp4") and gpu.peak_tflops_fp8:
        return "fp8", gpu.peak_tflops_fp8, gpu.gemm_efficiency_fp8 or gpu.gemm_efficiency
    return "bf16", gpu.peak_tflops_bf16, gpu.gemm_efficiency


def precision_conflict(training: TrainingSpec, gpu: GPUSpec) -> str | None:
    """Why the run's precision cannot run on ``gpu``, or None if it can."""
    if training.precision == "fp4" and not gpu.peak_tflops_fp4:
        return (f"precision fp4 needs FP4 tensor cores (a Blackwell GPU): the {gpu.name} preset has no "
                "peak_tflops_fp4")
    # Block-scaled tensor cores come with the FP4 ones (Blackwell's block-scale MMA serves MXFP8 and NVFP4).
    if training.precision == "fp8" and training.fp8_recipe == "mxfp8" and not gpu.peak_tflops_fp4:
        return (f"fp8_recipe mxfp8 needs block-scaled FP8 tensor cores (a Blackwell GPU): the {gpu.name} preset "
                "has none (no peak_tflops_fp4)")
    return None


def precision_fix(training: TrainingSpec) -> tuple[str, str]:
    """(the training field to change, how) for a :func:`precision_conflict`."""
    if training.precision == "fp8":
        return "training.fp8_recipe", "use fp8_recipe tensorwise, delayed or blockwise, or a Blackwell GPU"
    return "training.precision", "use precision fp8 or bf16, or a Blackwell GPU"


class _Pricer:
    def __init__(self, gpu: GPUSpec, training: TrainingSpec, options: CostOptions, gemm_precision: str | None = None):
        """``gemm_precision`` overrides the run's precision for GEMMs kept out of FP8/FP4 (the LM head)."""
        self._set_rates(gpu, stack_spec(training.stack), gemm_precision or training.precision, options,
                        lambda precision: training.quantized_recipe if precision == training.precision
                        else training.fp8_recipe)

    @classmethod
    def for_precision(cls, gpu: GPUSpec, precision: str, options: CostOptions, stack: str = DEFAULT_STACK,
                      recipe: str = "blockwise") -> "_Pricer":
        """A pricer without a training run (the serving cost model): GEMMs in ``precision`` on ``stack``'s
        kernels, activations quantized per ``recipe`` (:data:`QUANTIZE_BYTES_PER_ELEMENT`)."""
        pricer = cls.__new__(cls)
        pricer._set_rates(gpu, stack_spec(stack), precision, options, lambda _: recipe)
        return pricer

    def _set_rates(self, gpu: GPUSpec, stack, requested_precision: str, options: CostOptions, recipe_of) -> None:
        # The GPU presets' efficiencies are the reference stack's (Megatron-Core + Transformer Engine);
        # another stack reaches its fitted share of them (cost_model.stacks).
        self.gpu = gpu
        self.stack = stack
        kernel_efficiency = stack.kernel_efficiency
        precision, peak_tflops, efficiency = gemm_precision_rate(gpu, requested_precision)
        self.gemm_flops_per_s = peak_tflops * 1e12 * efficiency * kernel_efficiency
        if precision == "fp8" and recipe_of(precision) == "mxfp8":
            self.gemm_flops_per_s *= MXFP8_VS_PER_TENSOR_GEMM
        self.attention_flops_per_s = gpu.peak_tflops_bf16 * 1e12 * gpu.attention_efficiency * kernel_efficiency
        self.hbm_bytes_per_s = gpu.hbm_GBps * 1e9 * gpu.hbm_efficiency
        self.in_bytes = GEMM_INPUT_BYTES[precision]
        self.quantized = precision in ("fp8", "fp4")
        self.quantize_bytes_per_element = QUANTIZE_BYTES_PER_ELEMENT.get(recipe_of(precision), 4.0)
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
        """Seconds to cast a GEMM's (m x k) bf16 input to FP8 or NVFP4 in both the row- and the
        column-wise layout that forward and weight-gradient GEMMs read
        (:data:`QUANTIZE_BYTES_PER_ELEMENT`); zero for bf16 GEMMs. Weights are cast once per step (NVFP4:
        16x16 2D blocks) and left out."""
        if not self.quantized:
            return 0.0
        bytes_moved = self.quantize_bytes_per_element * np.asarray(m, dtype=float) * np.asarray(k, dtype=float)
        return count * self.streaming(bytes_moved)


FLASH_REFERENCE_HEAD_DIM = 128
"""Head dim at which the GPU presets' ``attention_efficiency`` is stated (FlashAttention-2/3 papers' headline)."""


def flash2_is_native(gpu: GPUSpec) -> bool:
    """Whether FlashAttention-2 is the GPU's own fast attention kernel: on Ampere (no FP8 tensor cores) it
    is; on AMD Instinct, ROCm's FlashAttention-2 is Composable Kernel's native implementation. On Hopper
    and Blackwell it is not: FA2 issues Ampere's synchronous mma instructions, without the asynchronous
    warpgroup MMA and TMA that FlashAttention-3 and cuDNN use (Shah et al. 2024, FlashAttention-3,
    arXiv:2407.08608, section 1: FA2 reaches 35% of H100's peak)."""
    return gpu.peak_tflops_fp8 is None or gpu.name.startswith("Instinct")


def flash_attention_rates(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, pricer: _Pricer,
                          options: CostOptions) -> tuple[np.ndarray, np.ndarray]:
    """FLOP/s of a fused (flash) attention kernel, forward and backward, over plans.

    The GPU preset's ``attention_efficiency`` is the reference stack's kernel (cuDNN / FlashAttention-3
    on Hopper and Blackwell, FlashAttention-2 on Ampere) running forward at head dim 128 on long
    sequences. Four physical factors scale it:

    * kernel: a run whose flash kernel is FlashAttention-2 (``TrainingSpec.flash_attention_2``, by default
      its stack's ``StackSpec.flash_attention_2``) runs on
      Hopper and Blackwell at ``flash_attention_2_share`` of it: PyTorch SDPA's FA2 backend reaches 287-304
      TFLOP/s forward at head dim 128 on H100 (pytorch/benchmark PR #2296) where FA3 reaches 430-621
      (PR #2391), a share of 0.48-0.67 (0.49-0.53 against FA3's 621-649 at 16K tokens);
    * head dim d: each tile's softmax and rescaling work is per score, its MMA work per score and head
      dim, so short heads spend a larger share on non-matmul work: d/(d + d_half) relative to d = 128,
      capped at 1 (FA3 paper figure 5, 16K tokens: head dim 64 reaches ~500 TFLOP/s forward, 128 ~650,
      256 ~756; FA2 paper figure 4 on A100: ~0.8-0.85 of head dim 128);
    * length: L / (L + attention_half_length), L the tokens one kernel call sees (s, or s/cp with ring
      context parallelism): short sequences give too few tiles to fill the SMs (FA2 paper figures 4-5);
    * causal mask: the kernel computes the tiles on the diagonal in full and masks half of them, B/2
      wasted keys per query against a useful a = attended keys (s/2 for causal), so a / (a + B/2),
      B = ``attention_block_tokens`` (FA2 and FA3 use 128-token tiles): 0.8 at 512 tokens, 0.99 at 16K,
      which is how causal attention loses more at short lengths (FA2 paper figure 4: causal vs not).

    Backward runs at ``attention_backward_share`` of the forward rate on the FLOPs the papers count
    (2.5x the forward; :class:`cost_model.options.CostOptions` gives the papers' non-causal ratios, 0.86
    for FA2 on A100 and 0.90 for FA3 on H100).
    """
    attended = 0.5 * training.seq_length * model.attended_share(training.seq_length, True) if training.causal else None
    forward = flash_forward_rate(model, pricer, options, training.seq_length / plans.cp, attended,
                                 flash_attention_2=training.flash_kernel_is_fa2)
    return forward, forward * options.attention_backward_share


def flash_forward_rate(model: ModelSpec, pricer: _Pricer, options: CostOptions, kernel_tokens, attended_keys=None,
                       flash_attention_2: bool | None = None):
    """Forward FLOP/s of a flash kernel whose call sees ``kernel_tokens`` tokens, each query attending to
    ``attended_keys`` keys under a causal mask (None: no mask): the kernel, head-dim, length and diagonal
    factors of :func:`flash_attention_rates` (arrays broadcast). ``flash_attention_2``: whether the kernel
    is FlashAttention-2 (None: the pricer's stack's; a training run states its own,
    :attr:`cost_model.training_spec.TrainingSpec.flash_kernel_is_fa2`). The serving model prices its
    prefill and decode attention with it."""
    rate = pricer.attention_flops_per_s
    if flash_attention_2 is None:
        flash_attention_2 = pricer.stack.flash_attention_2
    if flash_attention_2 and not flash2_is_native(pricer.gpu):
        rate = rate * options.flash_attention_2_share
    d = float(model.q_head_dim)
    d_half = options.attention_head_dim_half
    head = min(1.0, d / (d + d_half) * (FLASH_REFERENCE_HEAD_DIM + d_half) / FLASH_REFERENCE_HEAD_DIM)
    length = np.asarray(kernel_tokens, dtype=np.float64)
    fill = length / (length + options.attention_half_length)
    if attended_keys is None:
        diagonal = 1.0
    else:
        attended = np.asarray(attended_keys, dtype=np.float64)
        diagonal = attended / (attended + options.attention_block_tokens / 2)
    return rate * head * fill * diagonal


FLASH_BACKWARD_FLOPS = 2.5
"""Backward FLOPs of a flash kernel per forward FLOP: it recomputes QK^T, so 5 matmuls against 2
(Dao 2023, FlashAttention-2, section 3.1)."""


def _flash_core(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, pricer: _Pricer,
                options: CostOptions, q_heads):
    """Forward and backward seconds and forward FLOPs of a fused attention kernel. Fused kernels skip
    the blocks a causal mask or a sliding window hides."""
    causal_skip = 0.5 if training.causal else 1.0
    window_share = model.attended_share(training.seq_length, training.causal)
    flops = 2.0 * plans.micro_batch * q_heads * (training.seq_length / plans.cp) * float(training.seq_length) \
        * (model.q_head_dim + model.v_dim) * causal_skip * window_share
    forward_rate, backward_rate = flash_attention_rates(model, training, plans, pricer, options)
    return flops / forward_rate, FLASH_BACKWARD_FLOPS * flops / backward_rate, flops


SOFTMAX_BYTES = (4, 6)
"""Bytes per score of the fused scale-mask-softmax, forward (read fp16 scores, write probabilities) and
backward (read the gradient and the probabilities, write the gradient): Megatron-LM
``megatron/model/fused_softmax.py`` (scaled_upper_triang_masked_softmax)."""
DROPOUT_BYTES = (5, 5)
"""Bytes per score of attention dropout: read, write, and a 1-byte mask forward; read the gradient and
the mask, write the gradient backward (PyTorch's fused dropout)."""


def _unfused_core(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, options: CostOptions, q_heads,
                  gpu: GPUSpec):
    """Forward and backward seconds and forward FLOPs of attention without a fused kernel (Megatron-LM
    before FlashAttention, megatron/model/transformer.py CoreAttention): a batched GEMM writes the
    s x s scores, a fused softmax and a dropout pass read and write them, a batched GEMM reads the
    probabilities into AV. With head dims of 64-128 the two GEMMs do d FLOPs per score byte, below the
    GPU's FLOP-to-byte ratio (A100: 268 TFLOP/s over 1.7 TB/s = 155), so moving the scores dominates.
    Backward runs dP = dO V^T (shaped as QK^T), dQ, dK and dV (shaped as AV) and the two passes'
    backward. The whole score matrix is computed; a causal mask hides half of it."""
    pricer = _Pricer(gpu, training, options, gemm_precision="bf16")  # batched GEMMs stay in 16 bits
    s_q = training.seq_length / plans.cp
    s_kv = float(training.seq_length)
    rows = plans.micro_batch * q_heads * s_q
    scores = rows * s_kv
    # QK^T (and dP = dO V^T backward) reduces over only d = 64-128: each output tile's main loop is a few
    # steps, then its epilogue stores the tile, and with one 128 x 256 tile per SM the store does not
    # hide behind the math, so the s x s write adds to it rather than bounding it.
    qk_compute_s = 2.0 * scores * model.q_head_dim / (pricer.gemm_flops_per_s * pricer.wave_efficiency(rows, s_kv))
    qk_s = qk_compute_s + pricer.streaming(scores * ACT_BYTES) + pricer.overhead_s
    qk_flops = 2.0 * scores * model.q_head_dim
    # AV (and dQ, dK, dV backward) reduces over the s keys: the scores stream through its main loop
    # behind the math, a GEMM on the roofline.
    av_s, av_flops = pricer.gemm(rows, model.v_dim, s_kv)
    forward_bytes = SOFTMAX_BYTES[0] + (DROPOUT_BYTES[0] if training.dropout else 0)
    backward_bytes = SOFTMAX_BYTES[1] + (DROPOUT_BYTES[1] if training.dropout else 0)
    forward = qk_s + av_s + pricer.streaming(forward_bytes * scores)
    backward = qk_s + 3 * av_s + pricer.streaming(backward_bytes * scores)
    return forward, backward, qk_flops + av_flops


def _eager_attention_bytes(model: ModelSpec, training: TrainingSpec, q_heads, kv_heads, sp_div):
    """Bytes per token that an eager (unfused) stack moves in the attention block beyond the fused
    stacks' kernels: copies of q, k, v into the attention kernel's layout and of its output back
    (llm-foundry's flash path gathers q, k, v with ``bert_padding.index_first_axis`` and scatters the
    output with ``pad_input``, llmfoundry/models/layers/attention.py), and rotary embedding as separate
    multiply, rotate-half (negate, concatenate) and add kernels (HF ``apply_rotary_pos_emb``): 9 reads and
    writes of q and k where a fused kernel makes 2. Zero for stacks with fused element-wise work."""
    if stack_spec(training.stack).fused_elementwise:
        return unfused_rotary_bytes(model, training, q_heads, kv_heads)
    e = ACT_BYTES
    layout = 2 * e * ((q_heads + 2 * kv_heads) * model.q_head_dim + q_heads * model.v_dim)
    return layout + _eager_rotary_bytes(model, q_heads, kv_heads)


def _eager_rotary_bytes(model: ModelSpec, q_heads, kv_heads):
    """Bytes per token that rotary embedding as separate kernels moves beyond a fused kernel: 9 reads and
    writes of q and k where a fused kernel makes 2 (see :func:`_eager_attention_bytes`)."""
    if model.position_embedding_type != "rope":
        return 0.0
    return 7 * ACT_BYTES * (q_heads + kv_heads) * model.q_head_dim


def unfused_rotary_bytes(model: ModelSpec, training: TrainingSpec, q_heads, kv_heads):
    """Bytes per token an unfused YaRN rotary embedding adds on a fused stack (:func:`unfused_rotary`):
    Megatron-Core's ``_apply_rotary_pos_emb_bshd`` multiplies by cos, rotates half (chunk, negate,
    concatenate), multiplies by sin, adds and concatenates the pass-through part, priced as an eager
    stack's rotary embedding (:func:`_eager_rotary_bytes`)."""
    return _eager_rotary_bytes(model, q_heads, kv_heads) if unfused_rotary(model, training) else 0.0


def _residual_bytes(training: TrainingSpec, h: float) -> float:
    """HBM bytes per token of a layer's two residual connections (after attention, after the MLP).

    Without dropout each is an add: read the block output and the residual, write the sum, 3 x 2 bytes
    of h. With hidden dropout (GPT-3-era runs, 0.1 after each block: Megatron-LM ``ParallelTransformerLayer``
    calls ``bias_dropout_add`` twice) a stack with fused element-wise kernels runs bias, dropout and add
    as one kernel per block, ``bias_dropout_add_fused_train`` (megatron/model/transformer.py, 2021-2022;
    Megatron-Core ``get_bias_dropout_add``): read the block output and the residual, write the sum and a
    1-byte mask, 3 x 2 + 1; an eager stack runs the dropout (read, write, mask: 2 x 2 + 1) and the add
    apart, 5 x 2 + 1 a block."""
    e = ACT_BYTES
    if not training.dropout:
        return 2 * 3 * e * h
    if stack_spec(training.stack).fused_elementwise:
        return 2 * (3 * e + 1) * h
    return 2 * (5 * e + 1) * h


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

    if training.flash_attention:
        core_fwd_s, core_bwd_s, core_flops = _flash_core(model, training, plans, pricer, options, q_heads)
    else:
        core_fwd_s, core_bwd_s, core_flops = _unfused_core(model, training, plans, options, q_heads, gpu=pricer.gpu)

    e = ACT_BYTES
    norms_s = pricer.streaming(4 * e * h / sp_div * tokens)      # two norms, each reads and writes h
    per_token = (4 * e * h + _residual_bytes(training, h)) / sp_div    # the norms, the 2 residual adds
    if model.position_embedding_type == "rope":                   # learned and ALiBi positions add no kernel here
        per_token = per_token + 2 * e * (q_heads + kv_heads) * model.q_head_dim  # rotary embedding on q, k
    per_token = per_token + _eager_attention_bytes(model, training, q_heads, kv_heads, sp_div)
    elementwise = per_token * tokens
    elementwise_s = pricer.streaming(elementwise) + quantize_s
    # What selective recompute reruns in this half: core attention (with an unfused kernel, the s x s
    # softmax and dropout passes too: Korthikanti et al. 2022 section 4.2 recompute QK^T, softmax,
    # dropout and AV), the norms, MLA's up-projections.
    rerun = (np.where(recomputes(plans, "core_attn"), core_fwd_s, 0.0)
             + np.where(recomputes(plans, "layernorm"), norms_s, 0.0)
             + np.where(recomputes(plans, "mla_up_proj"), up_proj_s, 0.0))
    return gemm_s, gemm_flops, core_fwd_s, core_bwd_s, core_flops, elementwise_s, rerun


EAGER_CLAMP_BYTES = (8 * ACT_BYTES, 10 * ACT_BYTES)
"""HBM bytes per pair and element of the expert width (one GLU half) that clamping the GLU input moves,
forward and backward, when the experts' activation is not fused with their GEMMs. Megatron-Core
``weighted_bias_quick_geglu_impl`` (megatron/core/fusions/fused_bias_geglu.py, core_v0.15.0..core_v0.18.0)
clamps outside its compiled kernel: ``x_glu.clamp(max=limit)`` and ``x_linear.clamp(-limit, limit)`` each
read and write one half (2 x 2 x 2 bytes), ``torch.cat`` reads and writes both halves (2 x 2 x 2): 16 bytes
= 8 x 2. Backward: each clamp's gradient reads the gradient and the saved input and writes the gradient
(2 x 3 x 2), the chunk's backward concatenates the halves' gradients (2 x 2 x 2): 20 = 10 x 2."""
EAGER_EXPERT_BIAS_BYTES = (6 * ACT_BYTES, 6 * ACT_BYTES)
"""HBM bytes per pair and element of the hidden size that adding the experts' output bias moves, forward
and backward, outside the GEMM. Megatron-Core ``TEGroupedMLP`` (megatron/core/transformer/moe/experts.py,
core_v0.15.0..core_v0.18.0) runs fc2 with ``skip_bias_add=True`` and ``_apply_bias`` adds each expert's
bias scaled by the routing probability, ``torch.cat([t + b * p for ...])``: ``b * p`` writes a pair x h
tensor (2 bytes), the add reads two and writes one (6), the concatenation reads and writes (4): 12 = 6 x 2.
Backward: the gradients of ``b`` and ``p`` are each a product with the output gradient (read 2, write 2)
summed over tokens or over h (read 2): 12 = 6 x 2 (the add and the concatenation pass the gradient on as
views)."""


def eager_expert_elementwise(model: ModelSpec, pairs, width):
    """HBM bytes, forward and backward, of the element-wise work a MoE layer's experts add outside their
    grouped GEMMs and fused activation: the GLU input clamp (``activation_clamp``, :data:`EAGER_CLAMP_BYTES`)
    and the output bias (``linear_bias``, :data:`EAGER_EXPERT_BIAS_BYTES`); GPT-OSS has both. Transformer
    Engine's fused grouped MLP (``use_transformer_engine_op_fuser``, MXFP8/FP4 only: its clamped quick-GeLU
    has no BF16 kernel, Megatron-Bridge commit 983014c7) folds them into its kernels; it is not modelled.
    Returns (clamp forward, clamp backward, bias forward, bias backward) in bytes."""
    clamp = float(model.activation_clamp > 0) * pairs * width
    bias = float(model.linear_bias) * pairs * model.hidden_size
    return (EAGER_CLAMP_BYTES[0] * clamp, EAGER_CLAMP_BYTES[1] * clamp,
            EAGER_EXPERT_BIAS_BYTES[0] * bias, EAGER_EXPERT_BIAS_BYTES[1] * bias)


def _mlp(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, pricer: _Pricer, width_per_rank,
         tokens):
    """A dense or shared-expert MLP of the given per-rank intermediate width: (GEMM seconds, GEMM FLOPs,
    element-wise seconds, seconds of the output projection GEMM alone)."""
    h = model.hidden_size
    fc1_width = width_per_rank * (2 if model.gated_mlp else 1)
    s1, f1 = pricer.gemm(tokens, fc1_width, h)
    s2, f2 = pricer.gemm(tokens, h, width_per_rank)
    act_bytes = ACT_BYTES * width_per_rank * (3 if model.gated_mlp else 2) * tokens
    if model.gated_mlp and not stack_spec(training.stack).fused_elementwise:
        # Eager SwiGLU: the activation and the product are two kernels, the activation's output written
        # and read again (a fused kernel reads both halves and writes the product once).
        act_bytes = act_bytes + 2 * ACT_BYTES * width_per_rank * tokens
    quantize_s = pricer.quantize(tokens, h) + pricer.quantize(tokens, width_per_rank)
    return s1 + s2, f1 + f2, pricer.streaming(act_bytes) + quantize_s, s2


def layer_times(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, gpu: GPUSpec,
                options: CostOptions) -> tuple[LayerTimes, LayerTimes]:
    """Times of a dense layer and of a MoE layer (zeros where the model has none)."""
    pricer = _Pricer(gpu, training, options)
    t = plans.tp.astype(float)
    tokens = plans.micro_batch * training.seq_length / plans.cp
    att_gemm_s, att_flops, core_s, core_bwd_s, core_flops, att_elem_s, att_rerun = _attention(
        model, training, plans, pricer, options)

    attention_fwd = att_gemm_s + core_s + att_elem_s
    attention_bwd = 2 * att_gemm_s + core_bwd_s + 2 * att_elem_s

    def assemble(gemm_s, gemm_flops, elem_s, mlp_rerun, elem_backward_extra_s=0.0, after_last_save_s=0.0):
        """``elem_backward_extra_s``: element-wise backward beyond twice the forward's."""
        forward = gemm_s + core_s + elem_s
        backward = 2 * gemm_s + core_bwd_s + 2 * elem_s + elem_backward_extra_s
        return LayerTimes(forward=forward, backward=backward, attention_forward=core_s,
                          attention_backward=core_bwd_s, gemm_forward=gemm_s,
                          selective_recompute=att_rerun + mlp_rerun,
                          forward_flops=gemm_flops + core_flops, attention_forward_flops=core_flops,
                          attention_block_forward=attention_fwd, attention_block_backward=attention_bwd,
                          host_exposed=np.zeros(len(plans)),
                          forward_after_last_save=after_last_save_s + np.zeros(len(plans)))

    zero = np.zeros(len(plans))
    if model.num_dense_layers:
        mlp_s, mlp_flops, mlp_elem, fc2_s = _mlp(model, training, plans, pricer, model.ffn_hidden_size / t, tokens)
        dense = assemble(att_gemm_s + mlp_s, att_flops + mlp_flops, att_elem_s + mlp_elem,
                         np.where(recomputes(plans, "mlp"), mlp_s + mlp_elem, 0.0), after_last_save_s=fc2_s)
    else:
        dense = LayerTimes(*[zero] * 12)

    if model.is_moe:
        sp_div = np.where(plans.sequence_parallel, t, 1.0)
        router_s, router_flops = pricer.gemm(tokens / sp_div, model.num_experts, model.hidden_size)
        pairs = routed_pairs_per_rank(model, training, plans)
        local_experts = model.num_experts / plans.ep
        width = model.moe_ffn_hidden_size / plans.etp
        fc1 = width * (2 if model.gated_mlp else 1)
        e1_s, e1_f = pricer.gemm(pairs / local_experts, fc1, model.hidden_size, count=local_experts)
        e2_s, e2_f = pricer.gemm(pairs / local_experts, model.hidden_size, width, count=local_experts)
        clamp_fwd, clamp_bwd, bias_fwd, bias_bwd = eager_expert_elementwise(model, pairs, width)
        # the clamp runs inside the activation's recompute checkpoint ('moe_act'), the bias after fc2
        activation_s = (pricer.streaming(ACT_BYTES * pairs * width * (3 if model.gated_mlp else 2))
                        + pricer.streaming(clamp_fwd))
        eager_bias_s = pricer.streaming(bias_fwd)
        eager_backward_extra_s = pricer.streaming(clamp_bwd + bias_bwd) - 2 * (pricer.streaming(clamp_fwd)
                                                                               + eager_bias_s)
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
        expert_elem_s = activation_s + eager_bias_s + reorder_s + quantize_s
        experts_s = router_s + e1_s + e2_s + expert_elem_s
        shared_s = zero
        gemm_s = att_gemm_s + router_s + e1_s + e2_s
        flops = att_flops + router_flops + e1_f + e2_f
        elem_s = att_elem_s + expert_elem_s
        if model.shared_expert_ffn_hidden_size:
            sh_s, sh_f, sh_elem, _ = _mlp(model, training, plans, pricer, model.shared_expert_ffn_hidden_size / t, tokens)
            gemm_s, flops, elem_s = gemm_s + sh_s, flops + sh_f, elem_s + sh_elem
            shared_s = sh_s + sh_elem
        whole = recomputes(plans, "moe")
        rerun = np.where(whole, experts_s + shared_s,
                         np.where(recomputes(plans, "moe_act"), activation_s, 0.0)
                         + np.where(recomputes(plans, "shared_experts"), shared_s, 0.0))
        moe = assemble(gemm_s, flops, elem_s, rerun, eager_backward_extra_s)
    else:
        moe = LayerTimes(*[zero] * 12)
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
        fixed_fwd = router_s + activation_s + eager_bias_s + reorder_s + shared_s
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
    # Cross-entropy: upcast bf16 logits to fp32, max, exp, sum, normalise: ~4 passes over fp32 logits,
    # whatever training.fused_cross_entropy says. A fused kernel would read the bf16 logits once forward
    # and read and write them once backward (2 + 4 bytes per logit), but priced so, MPT-125M (llm-foundry,
    # vocabulary 50368, the head a third of the work) comes out 17% faster than measured against the
    # other sizes (+21.5% vs +4..+13% after the attention refit); the measured runs do not show the saving.
    loss_s = pricer.streaming((ACT_BYTES + 4 * 4) * tokens * vocab_per_rank)
    return gemm_s + loss_s, 2 * gemm_s + loss_s, flops


LOSS_SCALED_PRECISIONS = ("fp16",)
"""Precisions trained with a dynamic loss scale, whose gradients are unscaled and checked every step."""


def optimizer_step_bytes(training: TrainingSpec, shard_params, grad_buffer_params):
    """HBM bytes one optimizer step moves on a rank, memory bound like every element-wise kernel.

    Over the ``shard_params`` the rank updates (its ZeRO shard, or all its parameters):

    * the update: read and write each optimizer state (fp32 master weights and the moments), read the
      gradient, write the 16-bit weight: 2 x state + grad + 2 bytes (30 for fp32 Adam with fp32
      gradients; apex / Transformer Engine FusedAdam);
    * the global gradient norm for clipping: one more read of the gradient (Megatron
      ``clip_grad_norm_fp32``: multi_tensor_l2norm; PyTorch ``clip_grad_norm_``);
    * with a dynamic loss scale (fp16): unscale and check for inf/NaN in place, a read and a write of the
      gradient (Megatron ``_unscale_main_grads_and_check_for_nan``:
      ``torch._amp_foreach_non_finite_check_and_unscale_``).

    And over ``grad_buffer_params``, the gradient buffer zeroed for the next step (Megatron
    ``zero_grad_buffer``, PyTorch ``zero_grad``): the rank's whole buffer with ZeRO-0/1 (the distributed
    optimizer keeps full-size gradient buckets), its shard with ZeRO-2/3.

    A stack with ``float16_optimizer_copies`` (Megatron-LM's ``Float16OptimizerWithFloat16Params``,
    :attr:`cost_model.stacks.StackSpec.float16_optimizer_copies`) first casts the gradient buffer to an
    fp32 copy (read ``grad_bytes``, write 4; nothing from an fp32 buffer), unscales, clips and updates with
    4-byte gradients, and writes the 16-bit weight in its own pass from the fp32 master (read 4, write 2):
    fp32 Adam under fp16 loss scaling moves 12 x 2 + 4 + 6 + 4 + 8 = 46 bytes a parameter plus the zeroing
    of the buffer, 4 more than the 42 of a fused update writing the weight itself, and 54 in all from a
    16-bit buffer (the cast 6, the zeroing 2), Megatron-LM's default for ``--fp16`` without
    ``--accumulate-allreduce-grads-in-fp32``.
    """
    grad = training.grad_bytes
    if stack_spec(training.stack).float16_optimizer_copies:
        # Megatron-LM's Float16OptimizerWithFloat16Params: Adam, the norm and the unscale see an fp32 copy
        # of the gradient (the cast reads the buffer, writes 4; none from an fp32 buffer), and a separate
        # multi_tensor_scale writes the 16-bit weight from the fp32 master (read 4, write 2).
        step_grad = 4.0
        cast = grad + 4.0 if grad != 4 else 0.0
        weight_write = 4.0 + 2.0
    else:
        step_grad, cast, weight_write = grad, 0.0, 2.0
    per_shard_param = 2.0 * training.optimizer_state_bytes + step_grad + weight_write + step_grad + cast
    if training.precision in LOSS_SCALED_PRECISIONS:
        per_shard_param = per_shard_param + 2.0 * step_grad
    return shard_params * per_shard_param + grad_buffer_params * grad


def gradient_accumulation_bytes(training: TrainingSpec, local_params, num_microbatches):
    """HBM bytes, averaged over a step's micro-batches, that one micro-batch's backward moves adding its
    weight gradients into an unsharded gradient buffer of ``local_params``, for a run without
    ``gradient_accumulation_fusion`` (:attr:`cost_model.training_spec.TrainingSpec.fuses_gradient_accumulation`;
    with it the weight-gradient GEMM accumulates into the buffer and nothing is added). Element-wise, memory
    bound. ``num_microbatches`` broadcasts against ``local_params``.

    * A buffer in the parameters' 16-bit dtype is ``param.grad`` itself: autograd's ``AccumulateGrad`` keeps
      the first micro-batch's gradient as it comes and adds each later one in place (``variable_grad +=
      new_grad``: read 2 + 2, write 2), so 6 bytes per parameter on m - 1 of the m micro-batches.
      Megatron-LM 6985e58938 (the SC21 code) runs so: its local DDP registers the ``main_grad`` hook only
      with ``--use-contiguous-buffers-in-ddp`` (off by default; ``megatron/model/distributed.py``,
      ``arguments.py``), and torch DDP accumulates under ``no_sync`` (``megatron/schedules.py``); so does
      DeepSpeed's fp16 engine (``param.grad`` accumulated by autograd, v0.5.4).
    * An fp32 buffer is added to every micro-batch: Megatron's DDP hook runs ``param.main_grad.add_(param.grad
      .data)`` (``megatron/model/distributed.py`` ``_make_param_hook``, 6985e58938 and d898a8991d: read 2 + 4,
      write 4 = 10 bytes); a stack with ``gradient_accumulation_cast_then_add`` (DeepSpeed's
      ``BF16_Optimizer``, :attr:`cost_model.stacks.StackSpec.gradient_accumulation_cast_then_add`) casts first
      (read 2, write 4) and adds the fp32 copy (read 4 + 4, write 4): 18 bytes.

    Megatron-LM of 2022 (d898a8991d) keeps contiguous buffers by default, so an unfused 16-bit buffer there
    is added to every micro-batch (one pass more per step than priced here)."""
    m = np.asarray(num_microbatches, dtype=float)
    if training.grad_bytes == 2:
        return local_params * 6.0 * (m - 1.0) / np.maximum(m, 1.0)
    per_param = 18.0 if stack_spec(training.stack).gradient_accumulation_cast_then_add else 10.0
    return local_params * per_param * np.ones_like(m)


def unsharded_gradient_bytes(training: TrainingSpec, unsharded_params):
    """HBM bytes one micro-batch's backward moves preparing the unsharded gradients of
    ``unsharded_params`` for their ZeRO-2/3 reduce-scatter under a stack with ``unsharded_grad_prep``
    (PyTorch FSDP1, torch/distributed/fsdp ``_runtime_utils._post_backward_hook`` and ``_reduce_grad``,
    torch 2.1-2.3 as Composer runs it), per parameter of the layer:

    * the flat gradient assembled from its views' gradients: the module parameters are ``split`` /
      ``view`` views of the flat parameter (``_flat_param.FlatParamHandle._get_unflat_views``), whose
      backward concatenates the views' 16-bit gradients into the flat gradient: a read and a write of
      2 bytes;
    * the cast to the reduce dtype where it differs (``flat_param.grad.to(handle._reduce_dtype)``; fp32
      under Composer's ``mixed_precision: DEFAULT``): read 2, write ``grad_bytes``;
    * the pre-divide in place before the reduce-scatter (``_div_if_needed(padded_unsharded_grad,
      state._gradient_predivide_factor)``, a factor above 1 for every group of two or more ranks): read and
      write ``grad_bytes``.

    18 bytes per parameter with fp32 reduction, 8 with bf16. The post-divide runs on the 1/n shard and is
    left out."""
    grad = training.grad_bytes
    cast = 2.0 + grad if grad != 2 else 0.0
    return unsharded_params * (4.0 + cast + 2.0 * grad)

