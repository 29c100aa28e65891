"""Hybrid sharding (HSDP, issue 18 item 2): ZeRO states sharded over dp x cp / dp_replicate ranks, the
all-gathers and reduce-scatters inside that shard group and an all-reduce of each gradient shard across
the copies; searched where the launcher runs it and emitted in each launcher's words.

The running example is Llama 3 8B on 128 H100 (16 HGX nodes of 8), tp = pp = 1, dp = 128: an 8-way shard
group inside each node x 16 copies across the nodes (dp_replicate = 16).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests import strategies as S

from cost_model.communication import CommPricer, data_parallel_communication, place
from cost_model.evaluate import evaluate
from cost_model.memory import gathered_weight_bytes, memory_breakdown, stage_parameters
from cost_model.model_loader import load_model
from cost_model.options import CostOptions
from cost_model.params import ParameterCounts
from cost_model.plan import PlanArrays
from cost_model.stages import stage_layout
from cost_model.training_spec import TrainingSpec
from hardware.collectives import collective_time_s
from hardware.loader import load_cluster
from hardware.placement import dense_placement, hybrid_placement
from optimizer.emit import build_knobs
from optimizer.emit import megatron_bridge, megatron_lm, torchtitan
from optimizer.plan_rules import violations
from optimizer.search import Scenario, search
from optimizer.search_options import SearchOptions

LLAMA = load_model("llama3-8b").spec
TRAINING = TrainingSpec(seq_length=8192, global_batch_size=512)
H100 = load_cluster("h100x128")
CONFORMANCE = Path(__file__).parent / "conformance" / "data"


def _plans(*records):
    return PlanArrays.from_records([dict(tp=1, dp=128) | r for r in records])


def _memory(plans, training=TRAINING):
    m = plans.num_microbatches(training.global_batch_size)
    stages = stage_layout(LLAMA, plans, m)
    params = stage_parameters(LLAMA, ParameterCounts(LLAMA), plans, stages, CostOptions())
    return params, memory_breakdown(LLAMA, training, plans, stages, params, CostOptions())


# ---- placement ----------------------------------------------------------------------------------------

def test_an_8_way_shard_group_fills_a_node_and_its_16_copies_span_16_nodes():
    placed = hybrid_placement(1, 1, 128, 1, 16, domain_gpus=8)
    shard, replicate = placed["shard"], placed["replicate"]
    assert (int(shard.size), int(shard.ranks_per_domain), int(shard.domains_spanned), int(shard.stride)) == (8, 8, 1, 1)
    assert (int(replicate.size), int(replicate.ranks_per_domain), int(replicate.domains_spanned),
            int(replicate.stride)) == (16, 1, 16, 8)


def test_one_copy_places_the_shard_group_as_the_whole_data_parallel_group():
    for tp, cp, dp, pp, domain in ((1, 1, 128, 1, 8), (2, 2, 64, 4, 72), (8, 1, 16, 8, 8)):
        hybrid = hybrid_placement(tp, cp, dp, pp, 1, domain_gpus=domain)["shard"]
        whole = dense_placement(tp, cp, dp, pp, domain_gpus=domain)["dp_cp"]
        assert (hybrid.size, hybrid.ranks_per_domain, hybrid.domains_spanned) == (
            whole.size, whole.ranks_per_domain, whole.domains_spanned)


# ---- memory -------------------------------------------------------------------------------------------

def test_zero3_model_states_shard_over_the_8_ranks_of_a_node():
    """2 + 4 + 12 bytes a parameter over 8 ranks instead of 128: 16x more model-state memory per rank."""
    plans = _plans(dict(zero_stage=3, dp_replicate=16), dict(zero_stage=3))
    params, mem = _memory(plans)
    p = params.dense[0, 0]  # pp = 1: the first stage holds every parameter before sharding
    assert p == pytest.approx(8.03e9, rel=0.01)
    np.testing.assert_allclose(mem.weights[0, 0], 2 * p / 8)
    np.testing.assert_allclose(mem.gradients[0, 0], 4 * p / 8)
    np.testing.assert_allclose(mem.optimizer[0, 0], 12 * p / 8)
    np.testing.assert_allclose(mem.weights[0, 0], 16 * mem.weights[1, 0])
    # Two more NCCL communicators (the shard and the replica group), each with the options' buffers.
    extra = 2 * CostOptions().nccl_buffer_mib_per_communicator * 2**20
    np.testing.assert_allclose(mem.communicator_buffers[0, 0] - mem.communicator_buffers[1, 0], extra)


def test_zero1_shards_only_the_optimizer_over_the_shard_group():
    params, mem = _memory(_plans(dict(zero_stage=1, dp_replicate=16)))
    p = params.dense[0, 0]
    np.testing.assert_allclose(mem.weights[0, 0], 2 * p)
    np.testing.assert_allclose(mem.gradients[0, 0], 4 * p)
    np.testing.assert_allclose(mem.optimizer[0, 0], 12 * p / 8)


def test_one_copy_prices_exactly_as_plain_zero():
    """dp_replicate = 1 (the shard group is all of dp x cp) is today's ZeRO, to the last bit."""
    plain = PlanArrays.from_records([dict(tp=1, dp=128, zero_stage=z) for z in (0, 1, 2, 3)])
    explicit = PlanArrays.from_records([dict(tp=1, dp=128, zero_stage=z, dp_replicate=1) for z in (0, 1, 2, 3)])
    a = evaluate(LLAMA, TRAINING, H100, plain, CostOptions())
    b = evaluate(LLAMA, TRAINING, H100, explicit, CostOptions())
    np.testing.assert_array_equal(a.memory_bytes, b.memory_bytes)
    np.testing.assert_array_equal(a.step_time_s, b.step_time_s)
    np.testing.assert_array_equal(a.comm_bytes_per_step["dp"], b.comm_bytes_per_step["dp"])


# ---- communication ------------------------------------------------------------------------------------

def _dp_comm(plans, training=TRAINING):
    params, _ = _memory(plans, training)
    pricer = CommPricer(H100, place(H100, plans, CostOptions()))
    m = plans.num_microbatches(training.global_batch_size)
    layers = np.full((len(plans), 3), float(LLAMA.num_layers))
    comm = data_parallel_communication(training, plans, pricer, params.dense, params.expert, layers, m,
                                       CostOptions().grad_bucket_elements, model=LLAMA,
                                       gather_bytes_per_param=gathered_weight_bytes(training, plans))
    return params.dense[:, 0], comm


def test_zero1_hsdp_bytes_and_times_by_hand():
    """ZeRO-1, 8-way shard x 16 copies, fp32 gradients of P parameters in B buckets of 40M elements:
    reduce-scatter 4P x 7/8 on NVLink, all-reduce of the 4P/8 shard over 16 nodes, 2 x (4P/8) x 15/16,
    all-gather of bf16 weights 2P x 7/8 on NVLink."""
    plans = _plans(dict(zero_stage=1, dp_replicate=16))
    p, comm = _dp_comm(plans)
    p = float(p[0])
    rs, ar, ag = 4 * p * 7 / 8, 2 * (4 * p / 8) * 15 / 16, 2 * p * 7 / 8
    assert comm.bytes_per_step[0, 0] == pytest.approx(rs + ar + ag, rel=1e-12)
    buckets = np.ceil(p / CostOptions().grad_bucket_elements)
    topo = H100.topology
    rs_s = buckets * collective_time_s(topo, "reduce_scatter", 8, 4 * p / buckets, 8)
    ar_s = buckets * collective_time_s(topo, "all_reduce", 16, 4 * p / 8 / buckets, 1)
    ag_s = buckets * collective_time_s(topo, "all_gather", 8, 2 * p / buckets, 8)
    assert comm.grad_sync_s[0, 0] == pytest.approx(float(rs_s + ar_s), rel=1e-9)
    assert comm.param_gather_s[0, 0] == pytest.approx(float(ag_s), rel=1e-9)


def test_zero3_hsdp_bytes_by_hand():
    """ZeRO-3 per micro-batch: two bf16 all-gathers and a fp32 reduce-scatter in the node, the shard's
    all-reduce across nodes: m x (2 x 2P x 7/8 + 4P x 7/8 + 2 x (4P/8) x 15/16)."""
    plans = _plans(dict(zero_stage=3, dp_replicate=16, micro_batch=1))
    p, comm = _dp_comm(plans)
    p = float(p[0])
    m = 512 // 128
    per_microbatch = 2 * (2 * p * 7 / 8) + 4 * p * 7 / 8 + 2 * (4 * p / 8) * 15 / 16
    assert comm.bytes_per_step[0, 0] == pytest.approx(m * per_microbatch, rel=1e-12)
    # The gathers run on NVLink: per layer, an all-gather of the layer's bf16 weights over 8 ranks of a node.
    per_layer_fwd = collective_time_s(H100.topology, "all_gather", 8, 2 * p / LLAMA.num_layers, 8)
    assert comm.per_microbatch_fwd_s[0, 0] == pytest.approx(float(LLAMA.num_layers * per_layer_fwd), rel=1e-9)


def test_the_shard_group_inside_a_node_gathers_faster_than_across_128_ranks():
    _, hybrid = _dp_comm(_plans(dict(zero_stage=3, dp_replicate=16)))
    _, flat = _dp_comm(_plans(dict(zero_stage=3)))
    assert hybrid.per_microbatch_fwd_s[0, 0] < 0.8 * flat.per_microbatch_fwd_s[0, 0]


def test_fp8_param_gather_halves_the_gathered_bytes_except_mxfp8():
    """Per-tensor FP8 primary weights are gathered as 1 byte (Megatron's uint8 parameter buffer); MXFP8
    gathers bf16 through the gradient buffer (reuse_grad_buf_for_mxfp8_param_ag)."""
    plans = _plans(dict(zero_stage=1), dict(zero_stage=0))
    fp8 = TRAINING.with_changes(precision="fp8", fp8_recipe="tensorwise")
    mx = TRAINING.with_changes(precision="fp8", fp8_recipe="mxfp8")
    assert list(gathered_weight_bytes(fp8, plans)) == [1.0, 2.0]  # ZeRO-0 keeps bf16 weights
    assert list(gathered_weight_bytes(mx, plans)) == [2.0, 2.0]
    assert list(gathered_weight_bytes(TRAINING, plans)) == [2.0, 2.0]
    p, comm = _dp_comm(plans.take([0]), fp8)
    p = float(p[0])
    assert comm.bytes_per_step[0, 0] == pytest.approx(4 * p * 127 / 128 + 1 * p * 127 / 128, rel=1e-12)


# ---- rules, search, emission ----------------------------------------------------------------------------

def test_rules_refuse_copies_that_do_not_divide_or_shard_nothing():
    plans = _plans(dict(zero_stage=3, dp_replicate=3), dict(zero_stage=0, dp_replicate=2),
                   dict(zero_stage=1, dp_replicate=128), dict(zero_stage=1, dp_replicate=64))
    broken = violations(LLAMA, TRAINING, plans, allow_uneven=True)
    assert list(broken["hybrid_sharding_divides"]) == [True, False, False, False]
    assert list(broken["hybrid_sharding_needs_zero"]) == [False, True, True, False]


def test_megatron_fsdp_hsdp_is_refused_for_moe_but_the_distributed_optimizers_is_not():
    qwen = load_model("qwen3-30b-a3b").spec
    plans = PlanArrays.from_records([dict(tp=1, dp=8, ep=4, zero_stage=z, dp_replicate=2) for z in (1, 3)])
    broken = megatron_lm.violations(qwen, TRAINING, plans)["megatron_fsdp_hsdp_dense_only"]
    assert list(broken) == [False, True]


def test_search_prices_shard_groups_of_one_two_or_four_nodes_and_can_turn_hsdp_off():
    def feasible(**changes):
        options = SearchOptions(top_k=5, zero_stages=(1, 3), **changes)
        return search(Scenario(model=LLAMA, training=TRAINING, cluster=H100, options=options),
                      keep_feasible=True).feasible_plans

    plans = feasible()
    hybrid = plans.dp_replicate > 1
    assert hybrid.any() and (~hybrid).any()
    per_domain = np.broadcast_to(dense_placement(plans.tp, plans.cp, plans.dp, plans.pp,
                                                 domain_gpus=8)["dp_cp"].ranks_per_domain, plans.tp.shape)
    shard = plans.shard_group[hybrid]
    assert np.all(shard % per_domain[hybrid] == 0)
    assert set(np.unique(shard // per_domain[hybrid])) <= {1, 2, 4}
    assert np.all(plans.zero_stage[hybrid] >= 1) and np.all(plans.dp[hybrid] % plans.dp_replicate[hybrid] == 0)
    assert not (feasible(dp_replicate_values=(1,)).dp_replicate > 1).any()


def test_launchers_write_the_copies_in_their_own_words():
    plan = dict(tp=1, dp=128, zero_stage=3, dp_replicate=16)
    knobs = build_knobs(plan, LLAMA, TRAINING, gpus_per_node=8)
    argv = megatron_lm.emit(knobs).argv
    at = argv.index("--num-distributed-optimizer-instances")
    assert argv[at + 1] == "16"
    flags = {line.split("\t")[0] for line in (CONFORMANCE / "megatron_lm_flags.txt").read_text().splitlines()}
    assert "--num-distributed-optimizer-instances" in flags  # Megatron-LM core_v0.16.1's parser has it
    assert megatron_lm.refused_rules(knobs) == []

    bridge = megatron_bridge.emit(knobs).argv
    assert "ddp.num_distributed_optimizer_instances=16" in bridge
    fields = json.loads((CONFORMANCE / "megatron_bridge_fields.json").read_text())
    assert "num_distributed_optimizer_instances" in json.dumps(fields["sections"]["ddp"])

    titan = build_knobs(plan, LLAMA, TRAINING.with_changes(stack="torchtitan"), gpus_per_node=8)
    words = torchtitan.emit(titan).argv
    values = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--parallelism.")}
    assert (values["--parallelism.data_parallel_replicate_degree"],
            values["--parallelism.data_parallel_shard_degree"]) == ("16", "8")
    assert torchtitan.refused(titan) == []


def test_without_copies_the_launchers_say_nothing_new():
    knobs = build_knobs(dict(tp=1, dp=128, zero_stage=3), LLAMA, TRAINING)
    assert "--num-distributed-optimizer-instances" not in megatron_lm.emit(knobs).argv
    assert not any("num_distributed_optimizer_instances" in word for word in megatron_bridge.emit(knobs).argv)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_more_copies_never_lower_the_model_states_and_one_copy_is_plain_zero(data):
    """For any drawn model, setup, cluster and plan with ZeRO >= 1: more copies (smaller shard groups) never
    shrink the weights, gradients or optimizer states a rank holds, each shard shrinking by the copies it
    loses; and dp_replicate = 1 prices the same memory as a plan without the column."""
    d = data.draw(S.scenarios())
    record = data.draw(S.plan_records(d.model, d.training, d.cluster, need_dp=True))
    assume(record["zero_stage"] >= 1)
    edp = record["tp"] * record["cp"] * record["dp"] // (record["etp"] * record["ep"])
    copies = [r for r in (1, 2, 4, 8) if record["dp"] % r == 0 and edp % r == 0
              and record["dp"] * record["cp"] >= 2 * r]
    assume(len(copies) > 1)
    plans = PlanArrays.from_records([record | {"dp_replicate": r} for r in copies])
    mem = predict_memory_of(d, plans)
    states = (mem.weights + mem.gradients + mem.optimizer)
    assert np.all(np.diff(states, axis=0) >= -1e-9 * states[:-1])
    plain = {k: v for k, v in record.items() if k != "dp_replicate"}
    a, b = predict_memory_of(d, PlanArrays.from_records([plain])), predict_memory_of(d, plans.take([0]))
    np.testing.assert_array_equal(a.total, b.total)


def predict_memory_of(drawn, plans):
    from cost_model.evaluate import predict_memory
    return predict_memory(drawn.model, drawn.training, plans).by_stage
