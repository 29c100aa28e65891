"""Exposed communication at scale: ZeRO-3 collectives per stack and the context-parallel ring per step.

Hand-derived from the collective model (hardware.collectives: NCCL's flat-ring latency over all ranks)
and the stacks' sources (DeepSpeed 0.3.16 per-parameter list collectives with a device synchronisation
before each gather; FSDP-style prefetch for the others).
"""

import math

import numpy as np
import pytest

from cost_model.communication import (CommPricer, data_parallel_communication, layer_communication,
                                      parameter_tensors_per_layer, place)
from cost_model.compute import layer_times
from cost_model.evaluate import evaluate
from cost_model.model_loader import load_model, model_from_hf
from cost_model.options import CostOptions
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.collectives import collective_time_s
from hardware.loader import load_cluster

GPT3 = model_from_hf({"num_hidden_layers": 96, "hidden_size": 12288, "num_attention_heads": 96,
                      "intermediate_size": 4 * 12288, "vocab_size": 51200, "hidden_act": "gelu",
                      "norm_type": "layernorm", "position_embedding_type": "learned",
                      "max_position_embeddings": 2048, "tie_word_embeddings": True, "add_bias_linear": True},
                     name="gpt3-175b")


def test_parameter_tensors_per_layer():
    # GPT-3 (Megatron GPT under DeepSpeed): 2 LayerNorms x (weight, bias) + QKV, proj, fc1, fc2 x (weight, bias)
    assert parameter_tensors_per_layer(GPT3) == 12
    # Llama: 2 RMSNorm weights + 4 projection weights, no biases
    assert parameter_tensors_per_layer(load_model("llama3-8b").spec) == 6


def _zero3_comm(stack: str, num_gpus: int, layers: int, params: float, recomputed_share: float = 0.0,
                copy_s: float = 20e-6):
    cluster = load_cluster(f"a100x{num_gpus}")
    plans = PlanArrays.from_records([dict(tp=1, pp=1, dp=num_gpus, zero_stage=3)])
    options = CostOptions()
    pricer = CommPricer(cluster, place(cluster, plans, options))
    return data_parallel_communication(
        TrainingSpec(seq_length=2048, global_batch_size=num_gpus, stack=stack, grad_dtype="bf16"), plans, pricer,
        np.array([[params, 0.0, 0.0]]), np.zeros((1, 3)), np.array([[float(layers), 0.0, 0.0]]), np.array([1]),
        options.grad_bucket_elements, model=GPT3, copy_kernel_s=copy_s,
        recomputed_share=np.array([[recomputed_share, 0.0, 0.0]]))


def _zero3_forward_gather_s(stack: str, num_gpus: int, layers: int, params: float) -> float:
    return float(_zero3_comm(stack, num_gpus, layers, params).per_microbatch_fwd_s[0, 0])


H = 12288
RING_LATENCY_1536_S = 1344 * 2e-6 + 191 * 5e-6  # flat ring over 1,536 ranks: 1,344 NVLink + 191 network steps
GATHERED_SHARE = 12 * H**2 / (12 * H**2 + 13 * H)  # the four weight matrices of a GPT-3 layer


def test_deepspeed_zero3_gathers_each_non_persistent_tensor_with_per_rank_copies_by_hand():
    # 96 GPT-3 layers of 12 h^2 parameters on 1,536 A100 (192 DGX nodes), bf16 weights.
    layers, params = 96, 96 * 12 * H**2
    topo = load_cluster("a100x1536").topology
    # FSDP-style: one all-gather of a layer's 12 h^2 x 2 bytes per layer.
    per_layer = float(collective_time_s(topo, "all_gather", 1536, 2 * params / layers, 8))
    assert _zero3_forward_gather_s("torchtitan", 1536, layers, params) == pytest.approx(layers * per_layer, rel=1e-9)
    # DeepSpeed 0.3.x: one all-gather per weight matrix (QKV, output, fc1, fc2), each paying the ring's
    # latency over 1,536 ranks (3.643 ms) and 1,536 host-issued copies (20 us each here); the norms and
    # biases (at most 4h = 49,152 elements, under the 100,000-element persistence threshold) are never
    # gathered, so the bytes are the matrices' share of the layer.
    bandwidth = float(collective_time_s(topo, "all_gather", 1536, 2 * GATHERED_SHARE * params / layers, 8)) - RING_LATENCY_1536_S
    by_hand = layers * (4 * RING_LATENCY_1536_S + bandwidth + 4 * 1536 * 20e-6)
    got = _zero3_forward_gather_s("deepspeed-zero3", 1536, layers, params)
    assert got == pytest.approx(by_hand, rel=1e-9)
    assert got == pytest.approx(15.12, rel=0.01)  # 1.40 s latency + 1.92 s bandwidth + 11.80 s copies


def test_deepspeed_zero3_recomputed_layer_gathers_again_and_all_reduces_gradients_by_hand():
    """DeepSpeed 0.3.x under full recompute: the recomputed forward gathers the four matrices again and
    the backward all but fc2 (4 h^2 of the 12 h^2), which stayed gathered; the gradients go out as
    flattened buckets all-reduced over all 1,536 ranks, 5 per GPT-3 layer (fc2; fc1's bias; fc1; norm 2
    with the output projection and QKV's bias; QKV with norm 1 and the next fc2 bias,
    :func:`cost_model.deepspeed_zero3.gradient_buckets_per_layer`), not reduce-scattered."""
    layers, params = 96, 96 * 12 * H**2
    topo = load_cluster("a100x1536").topology
    plain = _zero3_comm("deepspeed-zero3", 1536, layers, params)
    recomputed = _zero3_comm("deepspeed-zero3", 1536, layers, params, recomputed_share=1.0)
    one_pass = float(plain.per_microbatch_fwd_s[0, 0])
    fc2 = layers * (float(collective_time_s(topo, "all_gather", 1536, 2 * 4 * H**2 * params / (12 * H**2 + 13 * H) / layers, 8))
                    + 1536 * 20e-6)
    np.testing.assert_allclose(recomputed.per_microbatch_bwd_s[0, 0] - plain.per_microbatch_bwd_s[0, 0], one_pass - fc2,
                               rtol=1e-9)
    buckets = 5 * layers
    all_reduce = buckets * float(collective_time_s(topo, "all_reduce", 1536, 2 * params / buckets, 8))
    np.testing.assert_allclose(plain.per_microbatch_bwd_s[0, 0] - one_pass, all_reduce, rtol=1e-9)
    # twice a reduce-scatter's bytes: 2 x 12 h^2 x 2 bytes x 1535/1536 per layer
    assert float(plain.bytes_per_step[0, 0]) == pytest.approx(
        2 * 2 * GATHERED_SHARE * params * 1535 / 1536 + 2 * 2 * params * 1535 / 1536, rel=1e-9)


def test_deepspeed_zero3_gather_time_grows_with_ranks_at_fixed_bytes():
    # Bandwidth per rank is the same at any scale; latency and per-rank copies grow with the ranks.
    times = [_zero3_forward_gather_s("deepspeed-zero3", n, 96, 96 * 12 * 12288**2) for n in (384, 768, 1536)]
    assert times[0] < times[1] < times[2]
    assert times[2] - times[1] == pytest.approx(2 * (times[1] - times[0]), rel=0.02)  # linear in ranks


def _gpt3_step(stack: str, num_gpus: int, micro_batch: int):
    training = TrainingSpec(seq_length=2048, global_batch_size=1536, precision="fp16", stack=stack,
                            grad_dtype="bf16", flash_attention=False)
    plans = PlanArrays.from_records([dict(tp=1, pp=1, dp=num_gpus, micro_batch=micro_batch, zero_stage=3,
                                          recompute="full")])
    return evaluate(GPT3, training, load_cluster(f"a100x{num_gpus}"), plans)


def test_zero3_without_prefetch_is_exposed_and_grows_as_tokens_per_gpu_shrink():
    # SC21 Table 2: a fixed batch of 1,536 sequences on 384 / 768 / 1,536 GPUs (micro-batch 4 / 2 / 1).
    # With prefetch (torchtitan, FSDP2) the per-layer gathers hide behind each layer's compute; DeepSpeed
    # 0.3.x synchronises the device before each gather, so they add up, and their share of the step grows
    # as the compute per GPU shrinks.
    shares = []
    for n, mb in ((384, 4), (768, 2), (1536, 1)):
        hidden = _gpt3_step("torchtitan", n, mb)
        exposed = _gpt3_step("deepspeed-zero3", n, mb)
        assert float(hidden.step_time_parts_s["dp_comm"][0]) < 0.01 * float(hidden.step_time_s[0])
        shares.append(float(exposed.step_time_parts_s["dp_comm"][0] / exposed.step_time_s[0]))
    assert shares[0] < shares[1] < shares[2]
    assert shares[2] > 0.6  # at micro-batch 1 most of the step is ZeRO-3 communication


def test_cp_ring_exposes_what_each_transfer_takes_beyond_one_block():
    # A slow scale-up network forces exposure: cp - 1 transfers, each beside one of cp equal blocks.
    model = load_model("llama3-8b").spec
    cluster = load_cluster("h100x8").with_overrides({"topology.scaleup_GBps": 5.0, "topology.nvls": False})
    training = TrainingSpec(seq_length=65536, global_batch_size=1)
    plans = PlanArrays.from_records([dict(tp=1, pp=1, dp=1, cp=8)])
    options = CostOptions()
    dense_t, _ = layer_times(model, training, plans, cluster.gpu, options)
    dense_c, _ = layer_communication(model, training, plans, CommPricer(cluster, place(cluster, plans, options)), options)
    cp = 8
    step_f, step_b = dense_c.cp_fwd_s[0] / (cp - 1), dense_c.cp_bwd_s[0] / (cp - 1)
    block_f, block_b = dense_t.attention_forward[0] / cp, dense_t.attention_backward[0] / cp
    assert step_f > block_f  # the case is communication-bound
    per_layer = (cp - 1) * (max(0.0, step_f - block_f) + max(0.0, step_b - block_b))
    m = evaluate(model, training, cluster, plans, options)
    assert float(m.step_time_parts_s["cp_comm"][0]) == pytest.approx(model.num_layers * per_layer, rel=1e-9)
    # and more than the old aggregate rule max(0, all transfers - all attention)
    aggregate = max(0.0, dense_c.cp_fwd_s[0] - dense_t.attention_forward[0]) + max(
        0.0, dense_c.cp_bwd_s[0] - dense_t.attention_backward[0])
    assert per_layer > aggregate


def test_hierarchical_dispatch_crosses_the_network_once_per_remote_node():
    # DeepSeek-V3 (256 experts, top-8) with EP32 on four 8-GPU nodes: a token reaches a given node with
    # probability 1 - C(192, 8) / C(256, 8) = 0.9036, so 3 x 0.9036 = 2.711 remote nodes per token,
    # against 8 x 24/32 = 6 remote token-expert rows of the alltoall dispatcher.
    from cost_model.communication import ep_network_rows_per_rank

    dsv3 = load_model("deepseek-v3").spec
    training = TrainingSpec(seq_length=4096, global_batch_size=4096, moe_token_dispatcher="hybridep")
    plans = PlanArrays.from_records([dict(tp=1, pp=8, dp=32, ep=32)])
    q = math.comb(192, 8) / math.comb(256, 8)
    rows = ep_network_rows_per_rank(dsv3, training, plans, np.array([4]))
    assert float(rows[0]) == pytest.approx(4096 * 3 * (1 - q), rel=1e-12)
    assert float(rows[0]) / 4096 == pytest.approx(2.711, rel=1e-3)
    assert float(ep_network_rows_per_rank(dsv3, training, plans, np.array([1]))[0]) == 0.0


def test_two_level_exchange_by_hand():
    from hardware.collectives import two_level_exchange_time_s

    topo = load_cluster("b200x256").topology
    # 100 MB over NVLink (900 GB/s x 0.75) and 50 MB over the NIC share (50 GB/s x 0.9): the network
    # stage is slower; one network latency of 5 us.
    t = float(two_level_exchange_time_s(topo, 8, 4, 100e6, 50e6))
    assert t == pytest.approx(5e-6 + 50e6 / (50e9 * 0.9), rel=1e-12)
    inside = float(two_level_exchange_time_s(topo, 8, 1, 100e6, 0.0))
    assert inside == pytest.approx(2e-6 + 100e6 / (900e9 * 0.75), rel=1e-12)
    assert float(two_level_exchange_time_s(topo, 8, 4, 0.0, 0.0)) == 0.0


def test_hybridep_across_nodes_is_faster_than_alltoall_and_equal_inside_one():
    dsv3 = load_model("deepseek-v3").spec
    cluster = load_cluster("b200x256")
    options = CostOptions()

    def ep_forward_s(dispatcher, ep):
        training = TrainingSpec(seq_length=4096, global_batch_size=4096, moe_token_dispatcher=dispatcher)
        plans = PlanArrays.from_records([dict(tp=1, pp=8, dp=32, ep=ep)])
        _, moe = layer_communication(dsv3, training, plans, CommPricer(cluster, place(cluster, plans, options)), options)
        return float(moe.ep_fwd_s[0])

    flat_flex = ep_forward_s("hybridep", 8)  # inside one node: the per-rank flex exchange as before
    assert flat_flex < ep_forward_s("alltoall", 8)
    across = ep_forward_s("hybridep", 32)
    assert across < 0.6 * ep_forward_s("alltoall", 32)  # 2.7 remote nodes per token instead of 6 rows


# ---- Composer FSDP1: each per-layer collective's ring latency stays exposed (StackSpec.collective_fill_exposed)

def test_ring_fill_latency_by_hand():
    """128 ranks on 16 HGX H100 nodes: n - d = 112 NVLink steps of 2 us and d - 1 = 15 network steps of
    5 us (the preset's per-step latencies) = 299 us, whatever the message; a group of one waits for
    nothing."""
    from hardware.collectives import Collective, CollectiveCost

    topology = load_cluster("h100x128").topology
    cost = CollectiveCost(topology, Collective.ALL_GATHER, np.array([128.0, 1.0]), np.array([8.0, 1.0]))
    assert cost.fill_latency_s() == pytest.approx([299e-6, 0.0])
    # the fill is the time of a one-byte all-gather, less its (tiny) bandwidth term
    one_byte = collective_time_s(topology, "all_gather", 128, 1.0, 8)
    assert float(one_byte) == pytest.approx(299e-6, rel=1e-6)


def _fsdp(stack: str, num_gpus: int, zero_stage: int):
    model = load_model("llama3-8b").spec  # 32 layers
    cluster = load_cluster(f"h100x{num_gpus}")
    training = TrainingSpec(seq_length=2048, global_batch_size=6 * num_gpus, stack=stack, grad_dtype="fp32",
                            flash_attention=True)
    plans = PlanArrays.from_records([dict(tp=1, pp=1, dp=num_gpus, micro_batch=6, zero_stage=zero_stage)])
    return model, cluster, training, plans


def test_zero3_and_zero2_fill_per_microbatch_and_step_by_hand():
    """512 ranks on 64 nodes: a ring fill of 448 x 2 us + 63 x 5 us = 1,211 us. ZeRO-3 runs two
    all-gathers and a reduce-scatter per layer and micro-batch: 32 x 3 x 1,211 us = 116.3 ms; ZeRO-2 a
    reduce-scatter per layer and micro-batch (38.8 ms) and, once a step, its weight all-gathers (38.8 ms):
    FSDP's SHARD_GRAD_OP shards by wrapped layer, not by Megatron's 40M-element buckets."""
    fill = 448 * 2e-6 + 63 * 5e-6
    model, cluster, training, plans3 = _fsdp("composer-fsdp", 512, 3)
    _, _, _, plans2 = _fsdp("composer-fsdp", 512, 2)
    options = CostOptions()
    from cost_model.memory import stage_parameters
    from cost_model.params import ParameterCounts
    from cost_model.stages import stage_layout

    for plans, per_mb, per_step in ((plans3, 32 * 3 * fill, 0.0), (plans2, 32 * fill, 32 * fill)):
        m = plans.num_microbatches(training.global_batch_size)
        stages = stage_layout(model, plans, m)
        params = stage_parameters(model, ParameterCounts(model), plans, stages, options)
        dp = data_parallel_communication(training, plans, CommPricer(cluster, place(cluster, plans, options)),
                                         params.dense, params.expert, stages.layers, m,
                                         options.grad_bucket_elements, model=model)
        assert float(dp.per_microbatch_fill_s[0, 0]) == pytest.approx(per_mb, rel=1e-9)
        assert float(dp.per_step_fill_s[0, 0]) == pytest.approx(per_step, rel=1e-9)


def test_composer_step_carries_the_fill_and_grows_with_the_ring(monkeypatch):
    """The same run with the switch off hides the fill behind the compute: the step with it is longer
    by the fill less the SM contention it no longer causes (overlap_sm_fraction of it), and the
    difference grows with the ring: 128 -> 512 ranks adds 336 NVLink and 48 network steps per
    collective."""
    import dataclasses

    import cost_model.evaluate as ev
    from cost_model.stacks import stack_spec

    options = CostOptions()
    on = stack_spec("composer-fsdp")
    assert on.collective_fill_exposed
    off = dataclasses.replace(on, collective_fill_exposed=False)
    gaps = []
    for n in (128, 512):
        model, cluster, training, plans = _fsdp("composer-fsdp", n, 3)
        with_fill = evaluate(model, training, cluster, plans, options).step_time_s[0]
        monkeypatch.setattr(ev, "stack_spec", lambda name: off)
        without = evaluate(model, training, cluster, plans, options).step_time_s[0]
        monkeypatch.undo()
        fill = 32 * 3 * ((n - n // 8) * 2e-6 + (n // 8 - 1) * 5e-6)
        assert with_fill - without == pytest.approx(fill * (1 - options.overlap_sm_fraction), rel=1e-6)
        gaps.append(with_fill - without)
    assert gaps[1] - gaps[0] == pytest.approx(32 * 3 * (336 * 2e-6 + 48 * 5e-6) * (1 - options.overlap_sm_fraction),
                                              rel=1e-6)


# ---- Composer FSDP1: passes over each layer's unsharded gradient every micro-batch (StackSpec.unsharded_grad_prep)

def test_unsharded_gradient_bytes_by_hand():
    """Per parameter: assemble the bf16 flat gradient (read 2 + write 2), cast to fp32 (read 2 + write 4),
    pre-divide in place (read 4 + write 4) = 18 bytes; reducing in bf16 skips the cast and divides 2-byte
    values: 4 + 4 = 8."""
    from cost_model.compute import unsharded_gradient_bytes

    fp32 = TrainingSpec(seq_length=2048, global_batch_size=8, grad_dtype="fp32")
    bf16 = TrainingSpec(seq_length=2048, global_batch_size=8, grad_dtype="bf16")
    assert unsharded_gradient_bytes(fp32, 1e9) == pytest.approx(18e9)
    assert unsharded_gradient_bytes(bf16, 1e9) == pytest.approx(8e9)


def test_composer_step_pays_the_gradient_passes_each_microbatch(monkeypatch):
    """8 H100 (no ring fill to speak of inside one node), ZeRO-3, two micro-batches of 6: the step with
    the passes is longer by 2 x 18 bytes x the stage's parameters at the HBM's streaming rate
    (3,350 GB/s x 0.85); one GPU reduces nothing and pays nothing."""
    import dataclasses

    import cost_model.evaluate as ev
    from cost_model.memory import stage_parameters
    from cost_model.params import ParameterCounts
    from cost_model.stacks import stack_spec
    from cost_model.stages import stage_layout

    options = CostOptions()
    model = load_model("llama3-8b").spec
    cluster = load_cluster("h100x8")
    training = TrainingSpec(seq_length=2048, global_batch_size=96, stack="composer-fsdp", grad_dtype="fp32",
                            flash_attention=True)
    plans = PlanArrays.from_records([dict(tp=1, pp=1, dp=8, micro_batch=6, zero_stage=3),
                                     dict(tp=1, pp=1, dp=1, micro_batch=6, zero_stage=3)])
    on = stack_spec("composer-fsdp")
    assert on.unsharded_grad_prep
    with_prep = evaluate(model, training, cluster, plans, options).step_time_s
    monkeypatch.setattr(ev, "stack_spec", lambda name: dataclasses.replace(on, unsharded_grad_prep=False))
    without = evaluate(model, training, cluster, plans, options).step_time_s
    m = plans.num_microbatches(training.global_batch_size)
    stages = stage_layout(model, plans, m)
    params = float(stage_parameters(model, ParameterCounts(model), plans, stages, options).total[0, 0])
    assert m[0] == 2
    assert with_prep[0] - without[0] == pytest.approx(2 * 18 * params / (3350e9 * 0.85), rel=1e-6)
    assert with_prep[1] == without[1]
