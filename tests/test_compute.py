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
    (4 x 33.5M bytes) at the H100's achievable HBM rate; current scaling reads it once more for its amax."""
    elements = 8192 * 4096
    rate = H100.hbm_GBps * 1e9 * H100.hbm_efficiency
    for recipe, bytes_per_element in (("delayed", 4), ("mxfp8", 4), ("tensorwise", 6)):
        fp8 = _Pricer(H100, TrainingSpec(precision="fp8", fp8_recipe=recipe), CostOptions())
        assert fp8.quantize(8192, 4096) == pytest.approx(bytes_per_element * elements / rate)
    assert pricer().quantize(8192, 4096) == 0.0  # BF16 casts nothing
