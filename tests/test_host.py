"""Host issue time (cost_model.host): the CPU floor under each part of a layer, and CUDA graphs."""

from __future__ import annotations

import numpy as np
import pytest

from cost_model.compute import layer_times
from cost_model.evaluate import evaluate
from cost_model.host import exposed_issue_time, graph_scope_conflict, layer_kernels
from cost_model.model_loader import build_training, load_model
from cost_model.options import CostOptions
from cost_model.plan import PlanArrays
from hardware.errors import InputError
from hardware.loader import load_cluster
from optimizer.emit import emit

QWEN = load_model("qwen3-30b-a3b").spec


def plans(**changes):
    base = dict(tp=1, pp=1, dp=8, cp=1, ep=8, vpp=1, micro_batch=1, recompute="none",
                sequence_parallel=False, zero_stage=1)
    return PlanArrays.from_records([{**base, **changes}])


def test_kernel_inventory_by_hand():
    fp8 = build_training({"seq_length": 4096, "global_batch_size": 512, "precision": "fp8"})
    forward, backward = layer_kernels(QWEN, fp8, plans())
    # Delayed scaling (Megatron's default), one cast per quantized tensor. Attention: 2 GEMMs + 6 other
    # + 2 input casts = 10 forward; backward 2 x 8 + 2 output-gradient casts = 18. MoE fixed part 16
    # (32 backward). 128 experts / EP 8 = 16 local experts x (2 GEMMs + 2 casts) = 64 forward,
    # 16 x (4 GEMMs + 2 casts) = 96 backward.
    assert (forward.attention[0], forward.moe_fixed[0], forward.experts[0]) == (10, 16, 64)
    assert (backward.attention[0], backward.moe_fixed[0], backward.experts[0]) == (18, 32, 96)
    graphed, _ = layer_kernels(QWEN, fp8.with_changes(cuda_graph_scope=("attn", "moe_router", "moe_preprocess")), plans())
    assert (graphed.attention[0], graphed.moe_fixed[0], graphed.experts[0]) == (0, 8, 64)
    padded = fp8.with_changes(cuda_graph_scope=("full_iteration",), moe_pad_to_capacity=True)
    for whole in layer_kernels(QWEN, padded, plans()):
        assert whole.attention[0] == whole.moe_fixed[0] == whole.experts[0] == 0
    # Fewer GPUs per expert group -> more local experts -> more kernels.
    assert layer_kernels(QWEN, fp8, plans(ep=4, dp=8))[0].experts[0] == 128


@pytest.mark.parametrize("recipe, attention, experts", [
    # Current scaling: a memset, the amax, the scale and the cast per tensor (4 calls).
    ("tensorwise", (2 + 6 + 2 * 4, 16 + 2 * 4), (16 * (2 + 2 * 4), 16 * (4 + 2 * 4))),
    # MXFP8: one cast per tensor, and 2 scale-factor swizzles before every GEMM; the experts' swizzles
    # run once per grouped GEMM (2 forward, 4 backward).
    ("mxfp8", (2 + 6 + 2 * (1 + 2), 16 + 2 * (1 + 4)), (16 * 4 + 2 * 2, 16 * 6 + 4 * 2)),
    ("blockwise", (10, 18), (64, 96)),
])
def test_kernel_inventory_by_fp8_recipe(recipe, attention, experts):
    training = build_training({"seq_length": 4096, "global_batch_size": 512, "precision": "fp8", "fp8_recipe": recipe})
    forward, backward = layer_kernels(QWEN, training, plans())
    assert (forward.attention[0], backward.attention[0]) == attention
    assert (forward.experts[0], backward.experts[0]) == experts
    bf16 = layer_kernels(QWEN, training.with_changes(precision="bf16"), plans())
    assert (bf16[0].experts[0], bf16[1].experts[0]) == (32, 64)  # the recipe is ignored in BF16
    plan = dict(tp=1, pp=1, dp=8, cp=1, ep=8, etp=1, vpp=1, micro_batch=1, recompute=0, recompute_num_layers=0,
                recompute_modules=0, activation_offload_layers=0, sequence_parallel=False, zero_stage=1,
                optimizer_offload=False)
    assert f"--fp8-recipe {recipe}" in emit("megatron", plan, QWEN, training)
    assert f"fp8_recipe:{recipe}" in emit("megatron-bridge", plan, QWEN, training)


def test_exposed_time_is_what_issuing_outlasts_running():
    k = layer_kernels(QWEN, build_training({"seq_length": 4096, "global_batch_size": 512}), plans())
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
    # Full-iteration CUDA graphs (possible once expert inputs are padded to capacity) remove the floor.
    graphed = training.with_changes(cuda_graph_scope=("full_iteration",), moe_pad_to_capacity=True)
    assert evaluate(QWEN, graphed, cluster, small, host).step_time_s[0] == evaluate(QWEN, graphed, cluster, small, free).step_time_s[0]


def test_layer_times_never_fall_below_their_issue_time():
    training = build_training({"seq_length": 4096, "global_batch_size": 512, "precision": "fp8"})
    gpu = load_cluster("b200x8").gpu
    dense, moe = layer_times(QWEN, training, plans(), gpu, CostOptions(host_kernel_issue_us=36.7))
    forward, backward = layer_kernels(QWEN, training, plans())
    issue = [(k.attention + k.moe_fixed + k.experts)[0] * 36.7e-6 for k in (forward, backward)]
    assert moe.forward[0] >= issue[0] and moe.backward[0] >= issue[1]
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
    assert "--moe-pad-expert-input-to-capacity" not in megatron  # dropless, Megatron's default
    whole = training.with_changes(cuda_graph_scope=("full_iteration",), moe_pad_to_capacity=True)
    assert "--cuda-graph-impl local" in emit("megatron", plan, QWEN, whole)
    padded_args = emit("megatron", plan, QWEN, whole)
    assert "--moe-expert-capacity-factor 1.0 \\\n  --moe-pad-expert-input-to-capacity" in padded_args
    bridge = emit("megatron-bridge", plan, QWEN, whole)
    assert "model.cuda_graph_scope=[full_iteration]" in bridge and "model.moe_pad_expert_input_to_capacity=true" in bridge


@pytest.mark.parametrize("scope", [("full_iteration",), ("moe",), ("attn", "moe")])
def test_a_dropless_moe_layer_cannot_be_captured_whole(scope):
    """Megatron's MoE guide: without capacity padding the token counts are dynamic and MoE layers are
    uncapturable; the dispatcher syncs them to the host every layer."""
    dropless = build_training({"seq_length": 4096, "global_batch_size": 512, "cuda_graph_scope": list(scope)})
    assert "token-dropless" in graph_scope_conflict(QWEN, dropless)
    with pytest.raises(ValueError, match="token-dropless"):
        evaluate(QWEN, dropless, load_cluster("b200x8"), plans())
    with pytest.raises(InputError, match="training.cuda_graph_scope.*moe_pad_to_capacity: true"):
        build_training({"seq_length": 4096, "global_batch_size": 512, "cuda_graph_scope": list(scope)},
                       source="qwen.yaml", model=QWEN)
    # Padded to capacity, or a dense model, or only the router and preprocessing: all capturable.
    assert graph_scope_conflict(QWEN, dropless.with_changes(moe_pad_to_capacity=True)) is None
    assert graph_scope_conflict(load_model("llama3-8b").spec, dropless) is None
    partial = dropless.with_changes(cuda_graph_scope=("attn", "moe_router", "moe_preprocess"))
    assert graph_scope_conflict(QWEN, partial) is None


def test_without_a_host_sync_the_cpu_runs_ahead_across_parts():
    k = layer_kernels(QWEN, build_training({"seq_length": 4096, "global_batch_size": 512}), plans())
    # bf16 kernels: attention 8, MoE fixed part 16, experts 16 x 2 = 32; at 10 us: 80, 160, 320 us of issue.
    gpu_fwd = {"attention": np.array([500e-6]), "moe_fixed": np.array([100e-6]), "experts": np.array([100e-6])}
    gpu_bwd = {part: 2 * seconds for part, seconds in gpu_fwd.items()}
    synced_fwd, synced_bwd = exposed_issue_time(gpu_fwd, gpu_bwd, k, kernel_issue_us=10.0, synced=True)
    # Part by part: attention hides (80 < 500); MoE fixed 160 - 100; experts 320 - 100.
    assert synced_fwd[0] == pytest.approx(60e-6 + 220e-6)
    # Backward: 2x issue (160, 320, 640 us) against 1000, 200, 200 us of GPU work.
    assert synced_bwd[0] == pytest.approx(120e-6 + 440e-6)
    free_fwd, free_bwd = exposed_issue_time(gpu_fwd, gpu_bwd, k, kernel_issue_us=10.0, synced=False)
    assert free_fwd[0] == 0.0  # 560 us of issue < 700 us of GPU work
    assert free_bwd[0] == pytest.approx(0.0)  # 1120 us of issue < 1400 us of GPU work


def test_padding_to_capacity_lifts_the_sync_floor():
    """Same kernels, but without the per-layer sync the host's issue time hides behind the attention."""
    cluster = load_cluster("b200x8")
    dropless = build_training({"seq_length": 4096, "global_batch_size": 512, "precision": "fp8"})
    padded = dropless.with_changes(moe_pad_to_capacity=True)
    options = CostOptions(host_kernel_issue_us=36.1)
    # Micro-batch 4: the experts issue more than they run, the attention runs more than it issues.
    slow = evaluate(QWEN, dropless, cluster, plans(micro_batch=4), options).step_time_s[0]
    fast = evaluate(QWEN, padded, cluster, plans(micro_batch=4), options).step_time_s[0]
    free = evaluate(QWEN, dropless, cluster, plans(micro_batch=4), CostOptions(host_kernel_issue_us=0.0)).step_time_s[0]
    assert free < fast < 0.9 * slow
    # Micro-batch 1 of 2K tokens: every part is host-bound, so there is nothing to run ahead into (at 4K
    # tokens the attention kernels, causal and priced forward and backward apart, outlast their issue).
    short = dropless.with_changes(seq_length=2048)
    one = [evaluate(QWEN, t, cluster, plans(), options).step_time_s[0]
           for t in (short, short.with_changes(moe_pad_to_capacity=True))]
    assert one[0] == pytest.approx(one[1])


def test_sync_free_hybridep_is_capturable_with_the_paged_stash():
    """Megatron-LM docs/user-guide/features/paged_stash.md: rank-capacity buffers make dropless MoE
    sync-free; capturing the MoE block also needs the paged stash."""
    base = {"seq_length": 4096, "global_batch_size": 512, "cuda_graph_scope": ["full_iteration"],
            "moe_token_dispatcher": "hybridep"}
    no_stash = build_training({**base, "moe_rank_capacity_factor": 1.5})
    assert "paged stash" in graph_scope_conflict(QWEN, no_stash)
    stashed = build_training({**base, "moe_rank_capacity_factor": 1.5, "moe_paged_stash_factor": 1.2},
                             source="qwen.yaml", model=QWEN)
    assert graph_scope_conflict(QWEN, stashed) is None
    # Without graphs, the rank capacity alone already removes the per-layer sync.
    hybridep = {"seq_length": 4096, "global_batch_size": 512, "moe_token_dispatcher": "hybridep"}
    eager = build_training({**hybridep, "moe_rank_capacity_factor": 1.5})
    options = CostOptions(host_kernel_issue_us=36.1)
    synced = evaluate(QWEN, build_training(hybridep), load_cluster("b200x8"), plans(micro_batch=4), options).step_time_s[0]
    assert evaluate(QWEN, eager, load_cluster("b200x8"), plans(micro_batch=4), options).step_time_s[0] < synced
    plan = dict(tp=1, pp=1, dp=8, cp=1, ep=8, etp=1, vpp=1, micro_batch=1, recompute=0, recompute_num_layers=0,
                recompute_modules=0, activation_offload_layers=0, sequence_parallel=False, zero_stage=1,
                optimizer_offload=False)
    args = emit("megatron", plan, QWEN, stashed)
    for flag in ("--moe-token-dispatcher-type flex", "--moe-flex-dispatcher-backend hybridep"):
        assert flag in args
    # Megatron-LM core_v0.16.1 has no rank capacity or paged stash: refused by its rules, said in differences.
    assert "--moe-paged-stash" not in args and any("rank capacity" in d for d in args.differences)
    assert "rank_capacity" not in emit("megatron-bridge", plan, QWEN, stashed)


@pytest.mark.parametrize("settings, message", [
    ({"moe_token_dispatcher": "hybridep", "moe_rank_capacity_factor": 0.9}, "at least moe_capacity_factor"),
    ({"moe_token_dispatcher": "hybridep", "moe_capacity_factor": 1.3, "moe_rank_capacity_factor": 1.2},
     "at least moe_capacity_factor"),
    ({"moe_paged_stash_factor": 1.1}, "needs moe_rank_capacity_factor"),
    ({"moe_token_dispatcher": "hybridep", "moe_pad_to_capacity": True, "moe_rank_capacity_factor": 1.5}, "choose one"),
    ({"moe_rank_capacity_factor": 1.5}, "needs moe_token_dispatcher: hybridep"),
    ({"moe_token_dispatcher": "deepep", "moe_rank_capacity_factor": 1.5}, "needs moe_token_dispatcher: hybridep"),
    ({"moe_token_dispatcher": "hybridep", "moe_dispatch_fp8": True}, "alltoall only"),
    ({"moe_token_dispatcher": "flex"}, "moe_token_dispatcher must be one of alltoall, deepep, hybridep"),
])
def test_buffer_settings_are_checked(settings, message):
    with pytest.raises(InputError, match=message):
        build_training({"seq_length": 4096, "global_batch_size": 512, **settings})


def test_step_time_breakdown_shows_the_host_wait():
    """The time the GPU waits for the CPU is its own step-time part: compute stays what the same plan
    costs with a free host, the step grows by host_issue, and graphs leave it at zero."""
    cluster = load_cluster("b200x8")
    training = build_training({"seq_length": 4096, "global_batch_size": 512, "precision": "fp8", "fp8_recipe": "mxfp8"})
    host, free = CostOptions(host_kernel_issue_us=39.3), CostOptions(host_kernel_issue_us=0.0)
    slow_metrics = evaluate(QWEN, training, cluster, plans(), host)
    ideal_metrics = evaluate(QWEN, training, cluster, plans(), free)
    slow, ideal = slow_metrics.step_time_parts_s, ideal_metrics.step_time_parts_s
    assert slow["host_issue"][0] > slow["compute"][0] > 0  # 16 experts per GPU at micro-batch 1
    assert slow["compute"][0] == pytest.approx(ideal["compute"][0])
    assert slow_metrics.step_time_s[0] - ideal_metrics.step_time_s[0] == pytest.approx(slow["host_issue"][0])
    assert ideal["host_issue"][0] == 0.0
    graphed = training.with_changes(cuda_graph_scope=("full_iteration",), moe_pad_to_capacity=True)
    assert evaluate(QWEN, graphed, cluster, plans(), host).step_time_parts_s["host_issue"][0] == 0.0


def test_eager_stacks_issue_their_unfused_kernels():
    """llm-foundry's eager PyTorch (composer-fsdp) issues 4 layout copies around flash-attn, and rotary
    (6 more for q and k) and SwiGLU (1 more) unfused, where Megatron-Core's fused kernels issue one."""
    llama = load_model("llama3-8b").spec
    fused = layer_kernels(llama, build_training({"seq_length": 4096, "global_batch_size": 64}), plans())
    eager = layer_kernels(llama, build_training({"seq_length": 4096, "global_batch_size": 64, "stack": "composer-fsdp"}),
                          plans())
    assert eager[0].attention[0] - fused[0].attention[0] == 4 + 6
    assert eager[1].attention[0] - fused[1].attention[0] == 2 * (4 + 6)
    assert eager[0].dense_mlp[0] - fused[0].dense_mlp[0] == 1


def test_gpt_oss_issues_its_clamp_and_bias_kernels():
    gpt_oss = load_model("gpt-oss-120b").spec
    bf16 = build_training({"seq_length": 4096, "global_batch_size": 1280})
    forward, backward = layer_kernels(gpt_oss, bf16, plans())
    # MoE fixed part: 16 + two clamps and a cat (clamped GLU) + the cat of _apply_bias = 20 forward, 40 back.
    # 128 experts / EP 8 = 16 local experts x (2 GEMMs + b * p and the add) = 64 forward; backward
    # 16 x (4 GEMMs + two products and two sums) = 128.
    assert (forward.moe_fixed[0], forward.experts[0]) == (20, 64)
    assert (backward.moe_fixed[0], backward.experts[0]) == (40, 128)
    # Qwen3-30B-A3B (no expert bias, no clamp) keeps 16 and 16 x 2.
    assert (layer_kernels(QWEN, bf16, plans())[0].moe_fixed[0], layer_kernels(QWEN, bf16, plans())[0].experts[0]) \
        == (16, 32)


def test_unfused_yarn_rotary_issues_an_eager_rotary():
    import dataclasses

    gpt_oss = load_model("gpt-oss-120b").spec
    bf16 = build_training({"seq_length": 4096, "global_batch_size": 1280})
    forward, backward = layer_kernels(gpt_oss, bf16, plans())
    # Attention: 2 GEMMs + 6 other + the unfused rotary's 6 more kernels = 14 forward, 28 backward.
    assert (forward.attention[0], backward.attention[0]) == (14, 28)
    plain = dataclasses.replace(gpt_oss, rope_scaling_type="")
    assert layer_kernels(plain, bf16, plans())[0].attention[0] == 8
