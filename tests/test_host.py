"""Host issue time (cost_model.host): the CPU floor under each part of a layer, and CUDA graphs."""

from __future__ import annotations

import numpy as np
import pytest

from cost_model.compute import layer_times
from cost_model.evaluate import evaluate
from cost_model.host import exposed_issue_time, forward_kernels
from cost_model.model_loader import build_training, load_model
from cost_model.options import CostOptions
from cost_model.plan import PlanArrays
from hardware.loader import load_cluster
from optimizer.emit import emit

QWEN = load_model("qwen3-30b-a3b").spec


def plans(**changes):
    base = dict(tp=1, pp=1, dp=8, cp=1, ep=8, vpp=1, micro_batch=1, recompute="none",
                sequence_parallel=False, zero_stage=1)
    return PlanArrays.from_records([{**base, **changes}])


def test_kernel_inventory_by_hand():
    fp8 = build_training({"seq_length": 4096, "global_batch_size": 512, "precision": "fp8"})
    k = forward_kernels(QWEN, fp8, plans())
    # FP8 attention block 10; MoE fixed part 16; 128 experts / EP 8 = 16 local experts x 4 kernels.
    assert (k.attention[0], k.moe_fixed[0], k.experts[0]) == (10, 16, 64)
    graphed = forward_kernels(QWEN, fp8.with_changes(cuda_graph_scope=("attn", "moe_router", "moe_preprocess")), plans())
    assert (graphed.attention[0], graphed.moe_fixed[0], graphed.experts[0]) == (0, 8, 64)
    whole = forward_kernels(QWEN, fp8.with_changes(cuda_graph_scope=("full_iteration",)), plans())
    assert whole.attention[0] == whole.moe_fixed[0] == whole.experts[0] == 0
    # Fewer GPUs per expert group -> more local experts -> more kernels.
    assert forward_kernels(QWEN, fp8, plans(ep=4, dp=8)).experts[0] == 128


def test_exposed_time_is_what_issuing_outlasts_running():
    k = forward_kernels(QWEN, build_training({"seq_length": 4096, "global_batch_size": 512}), plans())
    # bf16: experts issue 2 kernels each, 16 local experts -> 32 kernels x 10 us = 320 us.
    gpu_fwd = {"experts": np.array([100e-6])}
    gpu_bwd = {"experts": np.array([1000e-6])}
    forward, backward = exposed_issue_time(gpu_fwd, gpu_bwd, k, kernel_issue_us=10.0)
    assert forward[0] == pytest.approx(320e-6 - 100e-6)
    assert backward[0] == 0.0  # 640 us of issue hides behind 1000 us of GPU work


def test_host_floor_binds_only_where_the_gpu_work_is_small():
    cluster = load_cluster("b200x8")
    training = build_training({"seq_length": 4096, "global_batch_size": 512, "precision": "fp8"})
    host, free = CostOptions(host_kernel_issue_us=36.7), CostOptions(host_kernel_issue_us=0.0)
    small, large = plans(micro_batch=1), plans(micro_batch=8)
    slow = evaluate(QWEN, training, cluster, small, host).tokens_per_s[0] / evaluate(QWEN, training, cluster, small, free).tokens_per_s[0]
    fast = evaluate(QWEN, training, cluster, large, host).tokens_per_s[0] / evaluate(QWEN, training, cluster, large, free).tokens_per_s[0]
    assert slow < fast <= 1.0  # bigger micro-batches amortise the issue time
    assert slow < 0.6
    # A dense model's big GEMMs hide the host entirely.
    llama = load_model("llama3-70b").spec
    dense = PlanArrays.from_records([dict(tp=8, pp=1, dp=1, micro_batch=1, recompute="full", sequence_parallel=True)])
    t = build_training({"seq_length": 8192, "global_batch_size": 8})
    h100 = load_cluster("h100x8")
    assert evaluate(llama, t, h100, dense, host).step_time_s[0] == evaluate(llama, t, h100, dense, free).step_time_s[0]
    # Full-iteration CUDA graphs remove the floor.
    graphed = training.with_changes(cuda_graph_scope=("full_iteration",))
    assert evaluate(QWEN, graphed, cluster, small, host).step_time_s[0] == evaluate(QWEN, graphed, cluster, small, free).step_time_s[0]


def test_layer_times_never_fall_below_their_issue_time():
    training = build_training({"seq_length": 4096, "global_batch_size": 512, "precision": "fp8"})
    gpu = load_cluster("b200x8").gpu
    dense, moe = layer_times(QWEN, training, plans(), gpu, CostOptions(host_kernel_issue_us=36.7))
    k = forward_kernels(QWEN, training, plans())
    issue = (k.attention + k.moe_fixed + k.experts) * 36.7e-6
    assert moe.forward[0] >= issue[0] and moe.backward[0] >= 2 * issue[0]
    assert dense.forward[0] == 0  # Qwen3-30B-A3B has no dense layer


def test_cuda_graph_scope_is_checked_and_emitted():
    with pytest.raises(ValueError, match="cuda_graph_scope"):
        build_training({"cuda_graph_scope": ["attention"]})
    training = build_training({"seq_length": 4096, "global_batch_size": 512, "cuda_graph_scope": ["attn", "moe_router"]})
    plan = dict(tp=1, pp=1, dp=8, cp=1, ep=8, etp=1, vpp=1, micro_batch=1, recompute=0, recompute_num_layers=0,
                recompute_modules=0, activation_offload_layers=0, sequence_parallel=False, zero_stage=1,
                optimizer_offload=False)
    megatron = emit("megatron", plan, QWEN, training)
    assert "--cuda-graph-impl transformer_engine" in megatron and "--cuda-graph-scope attn moe_router" in megatron
    whole = training.with_changes(cuda_graph_scope=("full_iteration",))
    assert "--cuda-graph-impl local" in emit("megatron", plan, QWEN, whole)
    assert "cuda_graph_scope = ['full_iteration']" in emit("nemo", plan, QWEN, whole)
