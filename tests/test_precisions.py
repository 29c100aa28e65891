"""Precisions of current runs (issue 18 item 3): MXFP8 against per-tensor FP8 (GEMM rate, cast bytes, host
calls, Blackwell only), first/last transformer layers kept in BF16, FP8 primary weights in memory and in
the all-gather, and how the 18 Megatron-Bridge NVFP4 rows are priced and reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cost_model.bf16_layers import bf16_layers_per_stage, check_bf16_layers
from cost_model.calibration.training_runs import load_training_runs
from cost_model.compute import (MXFP8_VS_PER_TENSOR_GEMM, QUANTIZE_BYTES_PER_ELEMENT, _Pricer, layer_times,
                                precision_conflict)
from cost_model.evaluate import evaluate
from cost_model.host import layer_kernels
from cost_model.memory import fp8_primary_weights, gathered_weight_bytes
from cost_model.model_loader import load_model
from cost_model.options import CostOptions
from cost_model.plan import PlanArrays
from cost_model.stages import stage_layout
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster
from optimizer.emit import build_knobs
from optimizer.emit import megatron_bridge, megatron_lm

B200 = load_cluster("b200x8")
H100 = load_cluster("h100x8")
LLAMA = load_model("llama3-8b").spec
CONFORMANCE = Path(__file__).parent / "conformance" / "data"
SHORT = dict(seq_length=8192, global_batch_size=64)
TENSORWISE = TrainingSpec(precision="fp8", fp8_recipe="tensorwise", **SHORT)
MXFP8 = TrainingSpec(precision="fp8", fp8_recipe="mxfp8", **SHORT)


# ---- MXFP8 against per-tensor FP8 ------------------------------------------------------------------

def test_mxfp8_gemms_run_at_0_991_of_the_per_tensor_rate_on_b200():
    """B200: 4,500 dense FP8 TFLOP/s x the preset's FP8 efficiency; MXFP8 x 2,347.65 / 2,369.05."""
    gpu = B200.gpu
    per_tensor = _Pricer(gpu, TENSORWISE, CostOptions())
    mx = _Pricer(gpu, MXFP8, CostOptions())
    assert per_tensor.gemm_flops_per_s == pytest.approx(4500e12 * gpu.gemm_efficiency_fp8, rel=1e-12)
    assert mx.gemm_flops_per_s == pytest.approx(4500e12 * gpu.gemm_efficiency_fp8 * 2347.65 / 2369.05, rel=1e-12)
    assert MXFP8_VS_PER_TENSOR_GEMM == pytest.approx(0.99097, abs=1e-5)
    # An 8192^3 GEMM is compute bound: its time is FLOPs / rate (x the wave share) + the launch overhead.
    overhead = CostOptions().kernel_overhead_us * 1e-6
    t_tw, flops = per_tensor.gemm(8192, 8192, 8192)
    t_mx, _ = mx.gemm(8192, 8192, 8192)
    assert flops == 2 * 8192**3
    assert (t_mx - overhead) / (t_tw - overhead) == pytest.approx(2369.05 / 2347.65, rel=1e-12)


def test_casts_move_6_bytes_tensorwise_4_0625_mxfp8_4_delayed_per_element():
    """8192 x 4096 bf16 input to both layouts: tensorwise reads it twice (amax, cast), MXFP8 writes an E8M0
    scale per 32 elements with each copy."""
    elements = 8192 * 4096
    rate = B200.gpu.hbm_GBps * 1e9 * B200.gpu.hbm_efficiency
    assert QUANTIZE_BYTES_PER_ELEMENT["mxfp8"] == 4 + 2 / 32
    for training, per_element in ((TENSORWISE, 6.0), (MXFP8, 4.0625), (TENSORWISE.with_changes(fp8_recipe="delayed"), 4.0)):
        assert _Pricer(B200.gpu, training, CostOptions()).quantize(8192, 4096) == pytest.approx(
            per_element * elements / rate, rel=1e-12)


def test_host_issues_4_calls_per_tensorwise_cast_and_1_plus_2_swizzles_per_mxfp8_one():
    """Per GEMM of the dense MLP (2 GEMMs) forward: tensorwise current scaling 4 quantize calls (memset, amax,
    scale, cast), MXFP8 one cast and 2 scale swizzles (cost_model.host.QUANTIZE_CALLS, SWIZZLE_CALLS)."""
    plans = PlanArrays.from_records([dict(tp=1)])
    tensorwise, _ = layer_kernels(LLAMA, TENSORWISE, plans)
    mx, _ = layer_kernels(LLAMA, MXFP8, plans)
    bf16, _ = layer_kernels(LLAMA, TrainingSpec(**SHORT), plans)
    assert tensorwise.dense_mlp[0] - bf16.dense_mlp[0] == 2 * 4
    assert mx.dense_mlp[0] - bf16.dense_mlp[0] == 2 * (1 + 2)


def test_a_step_prices_mxfp8_and_tensorwise_differently():
    plans = PlanArrays.from_records([dict(tp=1, dp=8, zero_stage=1)])
    tw = evaluate(LLAMA, TENSORWISE, B200, plans, CostOptions())
    mx = evaluate(LLAMA, MXFP8, B200, plans, CostOptions())
    assert mx.step_time_s[0] != tw.step_time_s[0]
    assert mx.memory_bytes[0] > tw.memory_bytes[0]  # MXFP8 keeps row- and column-wise FP8 weights (2 B/param)


def test_mxfp8_needs_blackwell():
    assert precision_conflict(MXFP8, B200.gpu) is None
    message = precision_conflict(MXFP8, H100.gpu)
    assert "mxfp8" in message and "Blackwell" in message and "H100" in message
    assert precision_conflict(TENSORWISE, H100.gpu) is None
    with pytest.raises(ValueError, match="use fp8_recipe tensorwise, delayed or blockwise"):
        evaluate(LLAMA, MXFP8, H100, PlanArrays.from_records([dict(tp=1, dp=8)]), CostOptions())


# ---- first and last layers in BF16 --------------------------------------------------------------------

def _step_parts(training, plan):
    plans = PlanArrays.from_records([plan])
    metrics = evaluate(LLAMA, training, B200, plans, CostOptions())
    return metrics, metrics.step_time_parts_s


def test_bf16_first_and_last_layers_cost_their_bf16_time_on_one_stage():
    """pp = 1, 8 micro-batches of 1: 'compute' grows by 8 x 2 x (BF16 layer - FP8 layer) forward + backward."""
    plan = dict(tp=1, dp=8, zero_stage=1)
    base, base_parts = _step_parts(TENSORWISE, plan)
    kept, kept_parts = _step_parts(TENSORWISE.with_changes(num_layers_at_start_in_bf16=1, num_layers_at_end_in_bf16=1),
                                   plan)
    plans = PlanArrays.from_records([plan])
    fp8_layer, _ = layer_times(LLAMA, TENSORWISE, plans, B200.gpu, CostOptions())
    bf16_layer, _ = layer_times(LLAMA, TrainingSpec(**SHORT), plans, B200.gpu, CostOptions())
    per_layer = (bf16_layer.forward + bf16_layer.backward) - (fp8_layer.forward + fp8_layer.backward)
    m = 64 // 8
    assert kept_parts["compute"][0] - base_parts["compute"][0] == pytest.approx(m * 2 * per_layer[0], rel=1e-9)
    assert per_layer[0] > 0


def test_bf16_layers_sit_on_the_first_and_last_stages():
    plans = PlanArrays.from_records([dict(tp=1, pp=4, dp=2), dict(tp=1, pp=1, dp=8)])
    stages = stage_layout(LLAMA, plans, plans.num_microbatches(64))
    counts = bf16_layers_per_stage(TENSORWISE.with_changes(num_layers_at_start_in_bf16=2, num_layers_at_end_in_bf16=3),
                                   stages)
    assert counts[0].tolist() == [2.0, 0.0, 3.0]  # first (embedding), middle, last (LM head)
    assert counts[1][0] == 5.0                   # one stage holds both ends
    assert bf16_layers_per_stage(TrainingSpec(num_layers_at_end_in_bf16=3, **SHORT), stages).sum() == 0  # bf16 run
    too_many = TENSORWISE.with_changes(num_layers_at_end_in_bf16=9)
    assert check_bf16_layers(too_many, LLAMA.num_layers, plans).tolist() == [True, False]  # 32 // 4 = 8


def test_bf16_layers_keep_bf16_weights_and_bf16_gemm_inputs():
    """ZeRO-1 with FP8 primary weights (1 B/param): the 2 BF16 layers hold 2 B/param (+1 each), and save
    their GEMM inputs in BF16 instead of FP8."""
    plan = dict(tp=1, dp=8, zero_stage=1)
    plans = PlanArrays.from_records([plan])
    training = TENSORWISE.with_changes(num_layers_at_start_in_bf16=1, num_layers_at_end_in_bf16=1)
    base = evaluate(LLAMA, TENSORWISE, B200, plans, CostOptions()).extras["memory_by_stage"]
    kept = evaluate(LLAMA, training, B200, plans, CostOptions()).extras["memory_by_stage"]
    h, f = LLAMA.hidden_size, LLAMA.ffn_hidden_size
    layer_params = 2 * h + h * (h + 2 * LLAMA.num_kv_heads * LLAMA.head_dim) + h * h + 3 * h * f
    assert kept.weights[0, 0] - base.weights[0, 0] == pytest.approx(2 * 1.0 * layer_params, rel=1e-9)
    assert kept.activations[0, 0] > base.activations[0, 0]


def test_delayed_scaling_refuses_bf16_layers_and_bf16_runs_ignore_them():
    with pytest.raises(ValueError, match="delayed scaling"):
        TrainingSpec(precision="fp8", fp8_recipe="delayed", num_layers_at_end_in_bf16=1)
    with pytest.raises(ValueError, match="whole number of layers"):
        TrainingSpec(num_layers_at_start_in_bf16=-1)
    plans = PlanArrays.from_records([dict(tp=1, dp=8)])
    a = evaluate(LLAMA, TrainingSpec(**SHORT), B200, plans, CostOptions())
    b = evaluate(LLAMA, TrainingSpec(num_layers_at_end_in_bf16=4, **SHORT), B200, plans, CostOptions())
    assert a.step_time_s[0] == b.step_time_s[0] and a.memory_bytes[0] == b.memory_bytes[0]


# ---- FP8 primary weights ------------------------------------------------------------------------------

def test_fp8_primary_weights_need_the_distributed_optimizer_and_no_offload_outside_delayed_scaling():
    plans = PlanArrays.from_records([dict(tp=1, dp=8, zero_stage=z, optimizer_offload=off)
                                     for z, off in ((0, False), (1, False), (3, False), (1, True))])
    assert fp8_primary_weights(TENSORWISE, plans).tolist() == [False, True, True, False]
    delayed = TENSORWISE.with_changes(fp8_recipe="delayed")
    assert fp8_primary_weights(delayed, plans).tolist() == [False, True, True, True]
    assert gathered_weight_bytes(TENSORWISE, plans).tolist() == [2.0, 1.0, 1.0, 2.0]
    assert gathered_weight_bytes(MXFP8, plans).tolist() == [2.0, 2.0, 2.0, 2.0]


# ---- emitted flags parse back ---------------------------------------------------------------------------

def test_megatron_launches_carry_fp8_weights_and_bf16_layers():
    training = TENSORWISE.with_changes(num_layers_at_start_in_bf16=1, num_layers_at_end_in_bf16=2)
    knobs = build_knobs(dict(tp=1, dp=8, zero_stage=1), LLAMA, training)
    argv = megatron_lm.emit(knobs).argv
    flags = {line.split("\t")[0] for line in (CONFORMANCE / "megatron_lm_flags.txt").read_text().splitlines()}
    for flag in ("--fp8-param-gather", "--first-last-layers-bf16"):
        assert flag in argv and flag in flags
    for flag, value in (("--num-layers-at-start-in-bf16", "1"), ("--num-layers-at-end-in-bf16", "2"),
                        ("--fp8-recipe", "tensorwise")):
        assert argv[argv.index(flag) + 1] == value and flag in flags
    assert "--reuse-grad-buf-for-mxfp8-param-ag" not in argv
    mx = megatron_lm.emit(build_knobs(dict(tp=1, dp=8, zero_stage=1), LLAMA, MXFP8)).argv
    assert "--fp8-param-gather" in mx and "--reuse-grad-buf-for-mxfp8-param-ag" in mx
    ddp = megatron_lm.emit(build_knobs(dict(tp=1, dp=8, zero_stage=0), LLAMA, TENSORWISE)).argv
    assert "--fp8-param-gather" not in ddp  # priced with BF16 weights and an FP8 cache

    words = " ".join(megatron_bridge.emit(knobs).argv)
    node = megatron_bridge.mixed_precision(knobs)
    assert all(f"{name}:" in words for name in ("fp8_param_gather", "first_last_layers_bf16",
                                                "num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16"))
    assert (node["fp8_param_gather"], node["first_last_layers_bf16"], node["num_layers_at_start_in_bf16"],
            node["num_layers_at_end_in_bf16"], node["reuse_grad_buf_for_mxfp8_param_ag"]) == (True, True, 1, 2, False)
    fields = json.loads((CONFORMANCE / "megatron_bridge_fields.json").read_text())
    assert all(name in json.dumps(fields) for name in node if not name.startswith("_"))


# ---- the Megatron-Bridge NVFP4 rows -----------------------------------------------------------------------

def test_the_18_nvfp4_rows_run_nvfp4_in_every_layer_with_bf16_weights():
    """Megatron-Bridge's performance scripts run bf16_with_nvfp4_mixed as is (scripts/performance/utils/
    precision.py @067f987d): no BF16 first/last layers, no FP4 parameter gather."""
    rows = [row for row in load_training_runs()[0] if row["training"]["precision"] == "fp4"]
    assert len(rows) == 18
    for row in rows:
        training = row["training"]
        assert training.get("fp4_recipe", "nvfp4") == "nvfp4"
        assert not training.get("num_layers_at_start_in_bf16") and not training.get("num_layers_at_end_in_bf16")
