"""NVFP4 training (issue 18 item 3): FP4 GEMM rates, bytes and quantization by hand, FP4 against FP8,
the LM head kept in BF16, the refusal on GPUs without FP4 tensor cores, and the Megatron-Bridge rows."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from cost_model.calibration.training_runs import CSV_SOURCE, load_training_runs
from cost_model.calibration.validate import validate_row
from cost_model.compute import MXFP8_VS_PER_TENSOR_GEMM, _Pricer, layer_times, lm_head_times
from cost_model.evaluate import evaluate
from cost_model.activations import layer_activations
from cost_model.host import layer_kernels
from cost_model.model_loader import load_model
from cost_model.options import CostOptions
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster

B200 = load_cluster("b200x8").gpu.model_copy(update={"gemm_efficiency_fp4": 0.6, "gemm_efficiency_fp8": 0.62})
FP4 = TrainingSpec(precision="fp4")
FP8_MX = TrainingSpec(precision="fp8", fp8_recipe="mxfp8")


def test_b200_fp4_peak_is_the_datasheet_dense_figure():
    # HGX B200: 144 PFLOPS sparse FP4 per 8 GPUs -> 18 sparse -> 9 dense; GB200 NVL72 1,440 PF sparse / 72 / 2.
    assert B200.peak_tflops_fp4 == 9000 and B200.num_sms == 148
    assert load_cluster("gb200x72").gpu.peak_tflops_fp4 == 10000
    assert load_cluster("gb300x72").gpu.peak_tflops_fp4 == 15000
    assert load_cluster("h100x8").gpu.peak_tflops_fp4 is None


def test_fp4_gemm_time_by_hand_on_b200():
    """8192 x 8192 x 8192 NVFP4 GEMM: 64 x 32 = 2,048 tiles of 128 x 256 on 148 SMs = 14 waves (2,072
    slots); 2 x 8192^3 FLOPs at 9,000 TFLOP/s x 0.6 x 2048/2072, plus the 4 us kernel overhead. Its
    inputs are 0.5625 bytes an element (E2M1 + an E4M3 scale per 16): far from bandwidth bound."""
    m = n = k = 8192
    wave = 2048 / 2072
    expected = 2 * m * n * k / (9000e12 * 0.6 * wave) + 4e-6
    pricer = _Pricer(B200, FP4, CostOptions())
    seconds, flops = pricer.gemm(m, n, k)
    assert pricer.in_bytes == 0.5625 and flops == 2 * m * n * k
    assert seconds == pytest.approx(expected, rel=1e-12)
    # The same GEMM memory bound: 16 tokens read the 8192 x 8192 weight at 0.5625 bytes an element.
    thin, _ = pricer.gemm(16, n, k)
    moved = (16 * k + k * n) * 0.5625 + 16 * n * 2
    assert thin == pytest.approx(moved / (8000e9 * B200.hbm_efficiency) + 4e-6, rel=1e-12)


def test_nvfp4_quantization_moves_7_125_bytes_an_element():
    """TE's NVFP4 quantizer reads the bf16 input three times (the amax kernel with the Hadamard-transformed
    amax, the row-wise cast, the column-wise Hadamard cast) and writes two 0.5625-byte copies."""
    pricer = _Pricer(B200, FP4, CostOptions())
    m, k = 8192, 8192
    assert pricer.quantize(m, k) == pytest.approx((3 * 2 + 2 * 0.5625) * m * k / (8000e9 * B200.hbm_efficiency))
    assert pricer.quantize(m, k) > _Pricer(B200, FP8_MX, CostOptions()).quantize(m, k)


def test_fp4_layer_is_faster_than_fp8_where_gemms_dominate_and_the_lm_head_stays_bf16():
    """Llama 3 70B at TP 2 on a B200: the layer's GEMMs are compute bound, so FP4 (9,000 x 0.6) beats
    MXFP8 (4,500 x 0.62 x 0.991, the block-scaled FP8 rate) on the GEMM part by close to
    9000 x 0.6 / (4500 x 0.62 x 0.991) = 1.95x; the attention core runs in BF16 in both. The LM head runs
    in BF16 under FP4 as under FP8."""
    model = load_model("llama3-70b").spec
    plans = PlanArrays.from_records([dict(tp=2, sequence_parallel=True)])
    fp4, _ = layer_times(model, FP4.with_changes(seq_length=8192), plans, B200, CostOptions())
    fp8, _ = layer_times(model, FP8_MX.with_changes(seq_length=8192), plans, B200, CostOptions())
    assert fp4.forward[0] < fp8.forward[0] and fp4.backward[0] < fp8.backward[0]
    assert 1.7 < fp8.gemm_forward[0] / fp4.gemm_forward[0] < 9000 * 0.6 / (4500 * 0.62 * MXFP8_VS_PER_TENSOR_GEMM)
    assert fp4.attention_forward[0] == pytest.approx(fp8.attention_forward[0], rel=1e-12)
    vocab = np.array([128256.0])
    head = [lm_head_times(model, t, plans, B200, CostOptions(), vocab) for t in (FP4, FP8_MX, TrainingSpec())]
    assert head[0][0][0] == head[1][0][0] == head[2][0][0]


def test_fp4_saves_nvfp4_gemm_inputs_and_issues_its_quantize_kernels():
    model = load_model("llama3-8b").spec
    plans = PlanArrays.from_records([dict(tp=1)])
    saved = {p: layer_activations(model, TrainingSpec(precision=p), plans).dense_full[0] for p in ("bf16", "fp8", "fp4")}
    assert saved["fp4"] < saved["fp8"] < saved["bf16"]
    # Per GEMM forward: the GEMM, 3 quantize calls (amax, row cast, column Hadamard cast), 2 scale swizzles.
    forward_fp4, _ = layer_kernels(model, FP4, plans)
    forward_bf16, _ = layer_kernels(model, TrainingSpec(), plans)
    assert forward_fp4.dense_mlp[0] - forward_bf16.dense_mlp[0] == 2 * (3 + 2)


def test_fp4_on_a_gpu_without_fp4_tensor_cores_is_refused():
    model = load_model("llama3-8b").spec
    plans = PlanArrays.from_records([dict(tp=1, dp=8)])
    with pytest.raises(ValueError, match="precision fp4 needs FP4 tensor cores.*H100.*peak_tflops_fp4"):
        evaluate(model, FP4.with_changes(global_batch_size=64), load_cluster("h100x8"), plans, CostOptions())
    metrics = evaluate(model, FP4.with_changes(global_batch_size=64), load_cluster("b200x8"), plans, CostOptions())
    assert metrics.step_time_s[0] > 0
    with pytest.raises(ValueError, match="torchtitan stack has no FP4 recipe"):
        TrainingSpec(precision="fp4", stack="torchtitan")


def test_the_megatron_bridge_nvfp4_rows_are_priced():
    """The 18 Llama NVFP4 rows (3 and 3.1, 70B and 405B, GB200 and GB300) all price; GB300 (15 PF FP4)
    predicts more tokens per GPU than GB200 (10 PF) on the same model."""
    rows = [row for row in load_training_runs()[0] if row["training"]["precision"] == "fp4"]
    assert len(rows) == 18
    results = {row["id"]: validate_row(row, CSV_SOURCE) for row in rows}
    errors = [r.tflops_error for r in results.values()]
    assert all(e is not None and math.isfinite(e) and abs(e) < 0.6 for e in errors)
    assert abs(statistics.median(errors)) < 0.3
    by_gpu = {}
    for row in rows:
        by_gpu.setdefault((str(row["model"]), row["cluster"]["gpu"]), []).append(
            results[row["id"]].predicted_tokens_per_gpu)
    for model in ("{'preset': 'llama3-70b'}", "{'preset': 'llama3-405b'}"):
        assert min(by_gpu[(model, "gb300-nvl72")]) > max(by_gpu[(model, "gb200-nvl72")]) * 0.9, model
