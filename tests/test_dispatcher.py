"""MoE token dispatchers: Megatron's all-to-all (a row per token-expert pair) against the flex dispatcher's
DeepEP and HybridEP backends (a row per token and destination rank, the global permute fused)."""

import math

import numpy as np
import pytest

from cost_model.activations import ACT_BYTES, distinct_destination_ranks, routed_pairs_per_rank
from cost_model.compute import layer_times
from cost_model.evaluate import evaluate
from cost_model.host import host_syncs_per_layer
from cost_model.model_loader import load_model
from cost_model.options import CostOptions
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster
from optimizer.emit import emit

QWEN3_30B = load_model("qwen3-30b-a3b").spec  # 128 experts, top-8
GB200X8 = load_cluster("gb200x8")
TRAIN = TrainingSpec(seq_length=4096, global_batch_size=64)


def plans(**plan):
    return PlanArrays.from_records([dict(dict(tp=1, pp=1, dp=8, cp=1, ep=8, micro_batch=1, zero_stage=1), **plan)])


def test_distinct_destination_ranks_by_hand():
    """Top-8 of 128 experts, 16 per rank on 8 ranks: a given rank holds none of a token's experts with
    probability C(112, 8) / C(128, 8) = prod_{i<8} (112 - i) / (128 - i) = 0.3326, so a token reaches
    8 x (1 - 0.3326) = 5.34 ranks. With one expert per rank every chosen expert is on its own rank (k);
    with one rank, one."""
    missed = math.prod((112 - i) / (128 - i) for i in range(8))
    assert missed == pytest.approx(0.3326, abs=1e-4)
    got = distinct_destination_ranks(128, 8, np.array([1, 8, 128]))
    np.testing.assert_allclose(got, [1.0, 8 * (1 - missed), 8.0], rtol=1e-12)
    # never more ranks than experts chosen, nor than ranks there are
    many = distinct_destination_ranks(256, 8, np.array([2, 4, 8, 16, 32, 64, 256]))
    assert np.all(many <= np.minimum(8, [2, 4, 8, 16, 32, 64, 256]) + 1e-12) and np.all(np.diff(many) > 0)


def _bytes_and_times(dispatcher, options=CostOptions()):
    training = TRAIN.with_changes(moe_token_dispatcher=dispatcher)
    metrics = evaluate(QWEN3_30B, training, GB200X8, plans(), options)
    _, moe = layer_times(QWEN3_30B, training, plans(), GB200X8.gpu, options)
    return metrics.comm_bytes_per_step["ep"][0], moe


def test_flex_dispatch_sends_a_token_once_per_destination_rank():
    """EP bytes scale with rows sent: 5.34 per token instead of 8 pairs."""
    alltoall, _ = _bytes_and_times("alltoall")
    for backend in ("deepep", "hybridep"):
        flex, _ = _bytes_and_times(backend)
        ranks = distinct_destination_ranks(128, 8, np.array([8]))[0]
        assert flex == pytest.approx(alltoall * ranks / 8, rel=1e-12)


def test_flex_dispatch_drops_the_expert_sort():
    """16 local experts: Megatron's all-to-all dispatcher permutes, sorts by local expert, unsorts and
    unpermutes (4 passes of h per pair); the flex dispatcher's kernels do the global permute, leaving 2.
    Without the host floor the MoE layer's forward is shorter by two read-and-write passes."""
    no_host = CostOptions(host_kernel_issue_us=0.0)
    _, alltoall = _bytes_and_times("alltoall", no_host)
    _, flex = _bytes_and_times("hybridep", no_host)
    pairs = routed_pairs_per_rank(QWEN3_30B, TRAIN, plans())[0]
    bandwidth = GB200X8.gpu.hbm_GBps * 1e9 * GB200X8.gpu.hbm_efficiency
    two_passes = ACT_BYTES * pairs * 2 * 2 * QWEN3_30B.hidden_size / bandwidth
    assert alltoall.forward[0] - flex.forward[0] == pytest.approx(two_passes, rel=1e-9)
    assert alltoall.backward[0] - flex.backward[0] == pytest.approx(2 * two_passes, rel=1e-9)


def test_dropless_flex_still_syncs_unless_hybridep_sizes_its_buffers():
    """DeepEP waits on host-mapped receive counters every layer; HybridEP reads its permuted token count to
    the host unless Megatron's rank capacity sizes it up front (Megatron-LM fused_a2a.py)."""
    assert host_syncs_per_layer(QWEN3_30B, TRAIN.with_changes(moe_token_dispatcher="deepep"))
    assert host_syncs_per_layer(QWEN3_30B, TRAIN.with_changes(moe_token_dispatcher="hybridep"))
    assert not host_syncs_per_layer(QWEN3_30B, TRAIN.with_changes(moe_token_dispatcher="hybridep",
                                                                   moe_rank_capacity_factor=1.5))


def test_emitters_name_the_flex_backend():
    plan = dict(tp=1, pp=1, dp=8, cp=1, ep=8, etp=1, vpp=1, micro_batch=1, recompute=0, recompute_num_layers=0,
                recompute_modules=0, activation_offload_layers=0, sequence_parallel=False, zero_stage=1,
                optimizer_offload=False)
    assert "--moe-token-dispatcher-type alltoall" in emit("megatron", plan, QWEN3_30B, TRAIN)  # Megatron's default is allgather
    deepep = emit("megatron", plan, QWEN3_30B, TRAIN.with_changes(moe_token_dispatcher="deepep"))
    assert "--moe-token-dispatcher-type flex \\\n  --moe-flex-dispatcher-backend deepep" in deepep.text
    bridge = emit("megatron-bridge", plan, QWEN3_30B, TRAIN.with_changes(moe_token_dispatcher="hybridep")).argv
    assert "model.moe_token_dispatcher_type=flex" in bridge and "model.moe_flex_dispatcher_backend=hybridep" in bridge
    sync_free = emit("megatron", plan, QWEN3_30B, TRAIN.with_changes(moe_token_dispatcher="hybridep",
                                                                      moe_rank_capacity_factor=1.5))
    assert sync_free.text.count("--moe-token-dispatcher-type flex") == 1 and "--moe-expert-rank-capacity-factor" not in sync_free
    assert any("rank capacity" in difference for difference in sync_free.differences)  # not in core_v0.16.1
