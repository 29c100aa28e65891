"""GEMM pricing: roofline, wave quantization and kernel overhead, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cost_model.compute import _Pricer
from cost_model.options import CostOptions
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster

H100 = load_cluster("h100x8").gpu


def pricer(**options):
    return _Pricer(H100, TrainingSpec(), CostOptions(**options))


def test_wave_quantization_by_hand():
    # 1024 x 4608 output in 128 x 256 tiles: 8 x 18 = 144 tiles on 132 SMs -> 2 waves, 144 / 264 busy.
    assert pricer().wave_efficiency(1024, 4608) == pytest.approx(144 / 264)
    # 8192 x 13312: 64 x 52 = 3328 tiles -> 26 waves of 132 = 3432 slots.
    assert pricer().wave_efficiency(8192, 13312) == pytest.approx(3328 / 3432)
    # A grouped GEMM of 4 experts schedules 4 x 144 = 576 tiles together: 5 waves = 660 slots.
    assert pricer().wave_efficiency(1024, 4608, count=4) == pytest.approx(576 / 660)


def test_large_gemm_time_by_hand():
    # 8192 x 16384 x 16384 GEMM: 2*M*N*K FLOPs at 989e12 * gemm_efficiency * wave efficiency, plus 4 us.
    m, n, k = 8192, 16384, 16384
    tiles = 64 * 64
    wave = tiles / (np.ceil(tiles / 132) * 132)
    expected = 2 * m * n * k / (989e12 * H100.gemm_efficiency * wave) + 4e-6
    seconds, flops = pricer().gemm(m, n, k)
    assert flops == 2 * m * n * k
    assert seconds == pytest.approx(expected, rel=1e-12)


def test_thin_gemm_is_bandwidth_bound():
    # 16 tokens x 8192 x 8192: moving the 128 MiB weight dominates the 2 GFLOP.
    m, n, k = 16, 8192, 8192
    moved = (m * k + k * n) * 2 + m * n * 2
    seconds, _ = pricer().gemm(m, n, k)
    assert seconds == pytest.approx(moved / (3350e9 * 0.85) + 4e-6, rel=1e-12)


def test_smaller_gemms_lose_efficiency():
    big, _ = pricer().gemm(8192, 8192, 8192)
    small, _ = pricer().gemm(1024, 1024, 8192)
    # Same FLOPs per element of output; 64x fewer outputs must take more than 1/64 of the time.
    assert small > big / 64


def test_attention_kernel_efficiency_falls_with_context_parallel_chunks():
    from cost_model.compute import layer_times
    from cost_model.model_loader import load_model
    from cost_model.plan import PlanArrays

    spec = load_model("llama3-70b").spec
    training = TrainingSpec(seq_length=8192, global_batch_size=64)
    plans = PlanArrays.from_records([dict(tp=8, cp=1, dp=8), dict(tp=8, cp=8, dp=1)])
    dense, _ = layer_times(spec, training, plans, H100, CostOptions())
    # cp=8 does 1/8 of the FLOPs per rank, in kernels of 1024 instead of 8192 tokens:
    # efficiency L / (L + 512) drops from 8192/8704 to 1024/1536.
    expected_ratio = (1 / 8) * (8192 / 8704) / (1024 / 1536)
    assert dense.attention_forward[1] / dense.attention_forward[0] == pytest.approx(expected_ratio, rel=1e-12)


def test_lm_head_stays_in_bf16_in_fp8_runs():
    """Megatron's output layer is a plain ColumnParallelLinear and torchtitan's Float8 skips 'output':
    an FP8 run prices its LM head at the BF16 rate, which is slower per FLOP on H100."""
    from cost_model.compute import lm_head_times
    from cost_model.plan import PlanArrays
    from cost_model.model_loader import load_model
    model = load_model("llama3-8b").spec
    plans = PlanArrays.from_records([dict(tp=1)])
    vocab = np.array([128256.0])
    bf16 = lm_head_times(model, TrainingSpec(precision="bf16"), plans, H100, CostOptions(), vocab)
    fp8 = lm_head_times(model, TrainingSpec(precision="fp8"), plans, H100, CostOptions(), vocab)
    for got, expected in zip(fp8, bf16):
        np.testing.assert_array_equal(got, expected)
    # ...which differs from pricing it at the FP8 rate.
    fp8_rate = _Pricer(H100, TrainingSpec(precision="fp8"), CostOptions()).gemm(4096, 128256, 4096)[0]
    bf16_rate = pricer().gemm(4096, 128256, 4096)[0]
    assert fp8_rate < 0.8 * bf16_rate


def test_fp8_input_cast_bytes_by_recipe():
    """An 8192 x 4096 bf16 input cast to FP8 row- and column-wise: 2 bytes read and 2 written per element
    (4 x 33.5M bytes) at the H100's achievable HBM rate; current scaling reads it once more for its amax;
    MXFP8 writes one E8M0 scale byte per 32 elements with each copy (4 + 2/32)."""
    elements = 8192 * 4096
    rate = H100.hbm_GBps * 1e9 * H100.hbm_efficiency
    for recipe, bytes_per_element in (("delayed", 4), ("mxfp8", 4.0625), ("tensorwise", 6)):
        fp8 = _Pricer(H100, TrainingSpec(precision="fp8", fp8_recipe=recipe), CostOptions())
        assert fp8.quantize(8192, 4096) == pytest.approx(bytes_per_element * elements / rate)
    assert pricer().quantize(8192, 4096) == 0.0  # BF16 casts nothing


# ---- attention kernels (issue 14 item 1): head dim, length, causal mask, forward/backward, kernel ----

A100 = load_cluster("a100x8").gpu


def _gpt(l, h, a, seq, **extra):
    from cost_model.model_loader import model_from_hf
    return model_from_hf({"model_type": "gpt2", "n_layer": l, "n_embd": h, "n_head": a, "n_positions": seq,
                          "vocab_size": 50368, **extra})


def _rates(model, training, gpu, **plan):
    from cost_model.compute import flash_attention_rates
    from cost_model.plan import PlanArrays
    plans = PlanArrays.from_records([dict(tp=1, **plan)])
    return flash_attention_rates(model, training, plans, _Pricer(gpu, training, CostOptions()), CostOptions())


def test_flash_rates_by_hand():
    """Llama 3 8B (head dim 128) at 8K tokens on H100 with cuDNN attention (megatron-core): the preset's
    forward rate x fill 8192/(8192+512) x causal diagonal 4096/(4096+64) (a query attends to 4096 keys on
    average, the diagonal 128-token tiles waste 64); backward at 0.8 of it."""
    from cost_model.model_loader import load_model
    model = load_model("llama3-8b").spec
    forward, backward = _rates(model, TrainingSpec(seq_length=8192), H100)
    expected = 989e12 * H100.attention_efficiency * (8192 / 8704) * (4096 / 4160)
    assert forward[0] == pytest.approx(expected, rel=1e-12)
    assert backward[0] == pytest.approx(0.8 * expected, rel=1e-12)
    # Without the causal mask there is no diagonal to waste.
    forward_full, _ = _rates(model, TrainingSpec(seq_length=8192, causal=False), H100)
    assert forward_full[0] == pytest.approx(989e12 * H100.attention_efficiency * (8192 / 8704), rel=1e-12)


def test_causal_attention_loses_more_at_short_lengths():
    # Diagonal share a / (a + 64): 0.8 at 512 tokens (a = 256), 0.992 at 16K.
    model = _gpt(2, 2048, 16, 16384)
    short = _rates(model, TrainingSpec(seq_length=512), A100)[0] / _rates(model, TrainingSpec(seq_length=512, causal=False), A100)[0]
    long = _rates(model, TrainingSpec(seq_length=16384), A100)[0] / _rates(model, TrainingSpec(seq_length=16384, causal=False), A100)[0]
    assert short[0] == pytest.approx(0.8)
    assert long[0] == pytest.approx(8192 / 8256)


def test_head_dim_64_runs_below_head_dim_128():
    # Same width, 16 heads of 128 against 32 heads of 64: (64/88) / (128/152) = 0.864 (FA2 paper fig. 4
    # ~0.85-0.9 forward + backward on A100); head dims above 128 gain nothing.
    training = TrainingSpec(seq_length=4096)
    d128 = _rates(_gpt(2, 2048, 16, 4096), training, A100)[0]
    d64 = _rates(_gpt(2, 2048, 32, 4096), training, A100)[0]
    d256 = _rates(_gpt(2, 2048, 8, 4096), training, A100)[0]
    assert d64[0] / d128[0] == pytest.approx((64 / 88) / (128 / 152))
    assert d256[0] == pytest.approx(d128[0])


def test_flash_attention_2_is_native_on_ampere_only():
    """flash-attn 2 (composer-fsdp, torchtitan's SDPA) runs at half the rate of cuDNN / FA3 on Hopper
    (pytorch/benchmark #2296 vs #2391); on A100 it is the kernel the preset describes."""
    model = _gpt(2, 2048, 16, 4096)
    fa2, native = TrainingSpec(seq_length=4096, stack="composer-fsdp"), TrainingSpec(seq_length=4096)
    from cost_model.options import CostOptions
    from cost_model.stacks import stack_spec
    # The stack's own kernel efficiency (fitted) applies on every GPU; FA2's share only off Ampere.
    stack = stack_spec("composer-fsdp").kernel_efficiency
    share = CostOptions().flash_attention_2_share
    assert 0.2 <= share <= 1.0
    assert _rates(model, fa2, H100)[0][0] == pytest.approx(share * stack * _rates(model, native, H100)[0][0])
    assert _rates(model, fa2, A100)[0][0] == pytest.approx(stack * _rates(model, native, A100)[0][0])
    # On MI300X, ROCm's FlashAttention-2 is Composable Kernel's own kernel: no penalty either.
    mi300x = load_cluster("mi300xx8").gpu
    assert _rates(model, fa2, mi300x)[0][0] == pytest.approx(stack * _rates(model, native, mi300x)[0][0])


def test_run_states_its_flash_kernel_over_the_stack():
    """A Megatron-Core run launched with NVTE_FUSED_ATTN=0 (dgxc-benchmarking nemo_megatron/configure.sh,
    GPT-3 175B with attention dropout) runs TE's flash-attn 2 backend: GPT-3 175B's head dim 128 at 2K
    tokens on H100, the preset's forward rate x fill 2048/(2048+512) x diagonal 1024/(1024+64) x the FA2
    share; leaving the field out keeps the stack's kernel (cuDNN for megatron-core, FA2 for torchtitan)."""
    model = _gpt(96, 12288, 96, 2048)
    share = CostOptions().flash_attention_2_share
    cudnn = 989e12 * H100.attention_efficiency * (2048 / 2560) * (1024 / 1088)
    stated = TrainingSpec(seq_length=2048, dropout=True, flash_attention_2=True)
    forward, backward = _rates(model, stated, H100)
    assert forward[0] == pytest.approx(share * cudnn, rel=1e-12)
    assert backward[0] == pytest.approx(0.8 * share * cudnn, rel=1e-12)
    assert _rates(model, TrainingSpec(seq_length=2048, dropout=True), H100)[0][0] == pytest.approx(cudnn, rel=1e-12)
    # On A100 flash-attn 2 is the preset's own kernel: no share.
    a100 = 312e12 * A100.attention_efficiency * (2048 / 2560) * (1024 / 1088)
    assert _rates(model, stated, A100)[0][0] == pytest.approx(a100, rel=1e-12)
    # torchtitan's SDPA is FA2 by its stack; a run stating flash_attention_2 false prices the native kernel.
    from cost_model.stacks import stack_spec
    titan = stack_spec("torchtitan").kernel_efficiency
    assert TrainingSpec(stack="torchtitan").flash_kernel_is_fa2
    native_titan = TrainingSpec(seq_length=2048, stack="torchtitan", flash_attention_2=False, overlap_grad_reduce=False)
    assert _rates(model, native_titan, H100)[0][0] == pytest.approx(titan * cudnn, rel=1e-12)
    with pytest.raises(ValueError, match="flash_attention_2"):
        TrainingSpec(flash_attention_2="yes")


def test_unfused_attention_is_bandwidth_bound_by_hand():
    """Korthikanti et al. 2022's 22B layer (h 6144, 64 heads of 96, TP 8, micro-batch 4, 2K tokens,
    dropout): 8 heads x 4 sequences per rank. QK^T writes 4 x 8 x 2048^2 fp16 scores (268 MB) after
    doing 96 FLOPs per score (26 GFLOP); AV reads them back, on A100 (~230 TFLOP/s GEMMs, 1.73 TB/s) for
    longer than its math; softmax (4 B/score) and dropout (5 B) stream them in between."""
    from cost_model.compute import layer_times
    from cost_model.plan import PlanArrays
    from cost_model.stacks import stack_spec
    model = _gpt(48, 6144, 64, 2048, add_bias_linear=True)
    training = TrainingSpec(seq_length=2048, global_batch_size=4, precision="fp16", dropout=True,
                            flash_attention=False, overlap_grad_reduce=False, stack="megatron-lm-2021")
    plans = PlanArrays.from_records([dict(tp=8, micro_batch=4, recompute="selective", sequence_parallel=True)])
    dense, _ = layer_times(model, training, plans, A100, CostOptions())
    bandwidth = 2039e9 * 0.85
    # The A100 preset's fitted GEMM share times the stack's fitted kernel efficiency (both ~0.75-0.8).
    gemm = 312e12 * A100.gemm_efficiency * stack_spec("megatron-lm-2021").kernel_efficiency
    rows, scores = 4 * 8 * 2048, 4 * 8 * 2048 * 2048
    # QK^T: 96-step main loops, then each tile's store: the math and the 268 MB write add up.
    qk = 2 * rows * 2048 * 96 / (gemm * (4096 / 4104)) + scores * 2 / bandwidth + 4e-6  # 512 x 8 tiles, waves of 108
    # AV streams the scores through its 2048-step main loop: the roofline, bandwidth bound.
    av_compute = 2 * rows * 96 * 2048 / gemm
    av = ((rows * 2048 + 2048 * 96) * 2 + rows * 96 * 2) / bandwidth + 4e-6
    assert av - 4e-6 > av_compute
    expected = qk + av + 9 * scores / bandwidth
    assert dense.attention_forward[0] == pytest.approx(expected, rel=1e-9)
    # Backward: dP (as QK^T), dQ, dK, dV (as AV), softmax (6 B) and dropout (5 B) backward.
    assert dense.attention_backward[0] == pytest.approx(qk + 3 * av + 11 * scores / bandwidth, rel=1e-9)
    # Selective recompute reruns all of it: QK^T, softmax, dropout, AV (Korthikanti et al. 2022, section 4.2).
    assert dense.selective_recompute[0] == pytest.approx(expected, rel=1e-9)


def test_eager_stacks_copy_q_k_v_into_the_kernel_layout():
    """composer-fsdp (eager PyTorch, llm-foundry's flash path gathers q, k, v and scatters the output)
    moves 2 bytes x 2 (read, write) x (3h + h) per token more than a fused stack in the attention block;
    MPT's learned positions add no rotary kernel. On A100 both run the same flash kernel."""
    from cost_model.compute import layer_times
    from cost_model.plan import PlanArrays
    model = _gpt(24, 2048, 16, 2048)
    plans = PlanArrays.from_records([dict(tp=1, micro_batch=8)])
    options = CostOptions(host_kernel_issue_us=0.0)

    def elementwise(stack):
        dense, _ = layer_times(model, TrainingSpec(seq_length=2048, stack=stack), plans, A100, options)
        return dense.forward - dense.gemm_forward - dense.attention_forward

    tokens = 8 * 2048
    extra = 2 * 2 * (3 * 2048 + 2048) * tokens / (2039e9 * 0.85)
    assert (elementwise("composer-fsdp") - elementwise("megatron-core"))[0] == pytest.approx(extra, rel=1e-9)


def test_eager_expert_clamp_and_bias_bytes_by_hand():
    from cost_model.compute import eager_expert_elementwise
    from cost_model.model_loader import load_model

    gpt_oss = load_model("gpt-oss-120b").spec
    assert (gpt_oss.activation_clamp, gpt_oss.linear_bias) == (7.0, True)  # config.json swiglu_limit, biases
    # 4 x 4096 tokens x top-4 = 65,536 pairs, expert width 2880 = hidden 2880.
    pairs, width = np.array([65536.0]), 2880
    clamp_fwd, clamp_bwd, bias_fwd, bias_bwd = eager_expert_elementwise(gpt_oss, pairs, width)
    # Clamp: two clamps (read + write a half, 2 bytes each) and a cat of both halves: 16 bytes per pair and
    # element of one half; backward two clamp gradients (read grad, read input, write) and the chunk's cat: 20.
    assert clamp_fwd[0] == 16 * 65536 * 2880 == 3_019_898_880
    assert clamp_bwd[0] == 20 * 65536 * 2880
    # Output bias: b * p written, the add reads two and writes one, the cat reads and writes: 12 bytes per
    # pair and hidden element; backward the two products (read, write) and their sums (read): 12.
    assert bias_fwd[0] == bias_bwd[0] == 12 * 65536 * 2880 == 2_264_924_160
    # A model with neither (Qwen3-30B-A3B) moves nothing extra.
    qwen = load_model("qwen3-30b-a3b").spec
    assert all(part[0] == 0 for part in eager_expert_elementwise(qwen, pairs, 768))


def test_gpt_oss_experts_pay_their_clamp_and_bias_in_the_layer():
    import dataclasses

    from cost_model.compute import layer_times
    from cost_model.model_loader import load_model
    from cost_model.plan import PlanArrays

    gpt_oss = load_model("gpt-oss-120b").spec
    plain = dataclasses.replace(gpt_oss, activation_clamp=0.0, linear_bias=False)
    training = TrainingSpec(seq_length=4096, global_batch_size=1280)
    plans = PlanArrays.from_records([dict(tp=1, dp=64, ep=64, micro_batch=4)])
    _, with_eager = layer_times(gpt_oss, training, plans, H100, CostOptions())
    _, without = layer_times(plain, training, plans, H100, CostOptions())
    hbm = 3350e9 * H100.hbm_efficiency
    pairs = 4 * 4096 * 4
    # Forward: clamp 16 and bias 12 bytes per pair and element of 2880; backward 20 + 12 (on top of the
    # GPU time; the host issue floor does not bind at 16,384 tokens a micro-batch).
    assert with_eager.host_exposed[0] == without.host_exposed[0] == 0
    assert with_eager.forward[0] - without.forward[0] == pytest.approx((16 + 12) * pairs * 2880 / hbm, rel=1e-9)
    assert with_eager.backward[0] - without.backward[0] == pytest.approx((20 + 12) * pairs * 2880 / hbm, rel=1e-9)
    assert with_eager.gemm_forward[0] == without.gemm_forward[0]
    # 'moe_act' recompute reruns the activation with its clamp (inside the checkpoint), not the bias.
    from cost_model.plan import module_mask

    moe_act = PlanArrays.from_records([dict(tp=1, dp=64, ep=64, micro_batch=4, recompute="selective",
                                            recompute_modules=module_mask(["moe_act"]))])
    _, eager_rerun = layer_times(gpt_oss, training, moe_act, H100, CostOptions())
    _, plain_rerun = layer_times(plain, training, moe_act, H100, CostOptions())
    assert eager_rerun.selective_recompute[0] - plain_rerun.selective_recompute[0] == pytest.approx(
        16 * pairs * 2880 / hbm, rel=1e-9)


def test_yarn_rotary_runs_unfused_on_megatron_core():
    import dataclasses

    from cost_model.compute import _Pricer, _attention
    from cost_model.model_loader import load_model
    from cost_model.plan import PlanArrays

    gpt_oss = load_model("gpt-oss-120b").spec
    assert gpt_oss.rope_scaling_type == "yarn"  # config.json rope_scaling rope_type
    plain = dataclasses.replace(gpt_oss, rope_scaling_type="")
    training = TrainingSpec(seq_length=4096, global_batch_size=1280)
    plans = PlanArrays.from_records([dict(tp=1, dp=64, ep=64, micro_batch=4)])
    options = CostOptions()
    pricer_ = _Pricer(H100, training, options)
    yarn_elem = _attention(gpt_oss, training, plans, pricer_, options)[5]
    rope_elem = _attention(plain, training, plans, pricer_, options)[5]
    # Megatron-Core's unfused RoPE on q (64 heads) and k (8 heads) of head dim 64: 7 more reads and writes
    # of 2 bytes than the fused kernel, per token of the 4 x 4096-token micro-batch.
    extra = 7 * 2 * (64 + 8) * 64 * 4 * 4096
    assert yarn_elem[0] - rope_elem[0] == pytest.approx(extra / (3350e9 * H100.hbm_efficiency), rel=1e-9)
    # DeepSeek-V3's YaRN sits in MLA's own rotary path: nothing added.
    deepseek = load_model("deepseek-v3").spec
    mla_plain = dataclasses.replace(deepseek, rope_scaling_type="")
    mla_plans = PlanArrays.from_records([dict(tp=1, dp=8, ep=8, micro_batch=1)])
    assert _attention(deepseek, training, mla_plans, pricer_, options)[5][0] == \
        _attention(mla_plain, training, mla_plans, pricer_, options)[5][0]


@pytest.mark.parametrize("dropout, stack, bytes_per_h", [
    (False, "megatron-core", 2 * 3 * 2),         # two adds: read the block output and the residual, write
    (True, "megatron-lm-2021", 2 * (3 * 2 + 1)),  # bias_dropout_add_fused_train twice: the same + 1-byte mask
    (True, "composer-fsdp", 2 * (5 * 2 + 1)),     # eager: dropout (read, write, mask) and add apart
])
def test_residual_connection_bytes_by_hand(dropout, stack, bytes_per_h):
    from cost_model.compute import _residual_bytes
    training = TrainingSpec(dropout=dropout, stack=stack, flash_attention=stack != "megatron-lm-2021",
                            overlap_grad_reduce=stack != "megatron-lm-2021")
    assert _residual_bytes(training, 6144) == bytes_per_h * 6144   # 73,728 / 86,016 / 135,168 bytes a token


def test_korthikanti_22b_layer_with_and_without_sequence_parallelism():
    # One GPT-22B layer as Korthikanti et al. 2022 time it (TP 8, micro-batch 4, A100, Megatron-LM): sequence
    # parallelism runs the norms and the two fused bias-dropout-adds on 1/t of the tokens. The element-wise
    # bytes a token it divides by t: two norms (4 x 2 x h) and two bias-dropout-adds (2 x 7 x h), 22 h; at
    # h = 6144 and 8192 tokens 1.107 GB, 7/8 of it saved forward and twice that backward.
    from cost_model.compute import layer_times
    from cost_model.model_loader import build_training, model_input_from_mapping
    from cost_model.plan import PlanArrays
    model = model_input_from_mapping(dict(num_hidden_layers=48, hidden_size=6144, num_attention_heads=64,
                                          intermediate_size=24576, vocab_size=51200, hidden_act="gelu",
                                          norm_type="layernorm", position_embedding_type="learned",
                                          max_position_embeddings=2048, add_bias_linear=True),
                                     source="test", default_name="gpt-22b").spec
    training = build_training(dict(stack="megatron-lm-2021", seq_length=2048, global_batch_size=4, precision="fp16",
                                   dropout=True), source="test", model=model)
    gpu = load_cluster("a100-sxm-80gb").gpu
    plans = PlanArrays.from_records([dict(tp=8, pp=1, dp=1, micro_batch=4, sequence_parallel=sp) for sp in (False, True)])
    dense, _ = layer_times(model, training, plans, gpu, CostOptions())
    saved = 22 * 6144 * 8192 * 7 / 8 / (gpu.hbm_GBps * 1e9 * gpu.hbm_efficiency)
    assert dense.forward[0] - dense.forward[1] == pytest.approx(saved, rel=1e-9)
    assert dense.backward[0] - dense.backward[1] == pytest.approx(2 * saved, rel=1e-9)
