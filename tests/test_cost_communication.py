"""Communication volumes: bytes each rank sends per step, per parallel dimension.

Ring conventions (nccl-tests): an all-reduce of M bytes over n ranks sends 2M(n-1)/n per rank;
all-gather, reduce-scatter and all-to-all M(n-1)/n; send/recv M.
"""

import dataclasses

import numpy as np
import pytest

from cost_model.communication import AG, AR, A2A, P2P, RS, sent_bytes
from cost_model.evaluate import evaluate
from cost_model.model_loader import load_model, model_from_hf
from cost_model.options import CostOptions
from cost_model.params import ParameterCounts
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster

CLUSTER = load_cluster("h100x1024")


def run(model, training, records, **options):
    return evaluate(model, training, CLUSTER, PlanArrays.from_records(records), CostOptions(**options))


def test_sent_bytes_ring_conventions():
    M = 1e9
    assert sent_bytes(AR, 8, M) == pytest.approx(2 * M * 7 / 8)
    assert sent_bytes(AG, 8, M) == pytest.approx(M * 7 / 8)
    assert sent_bytes(RS, 8, M) == pytest.approx(M * 7 / 8)
    assert sent_bytes(A2A, 4, M) == pytest.approx(M * 3 / 4)
    assert sent_bytes(P2P, 2, M) == pytest.approx(M)
    for kind in (AR, AG, RS, A2A, P2P):
        assert sent_bytes(kind, 1, M) == 0      # a group of one sends nothing
    # An all-reduce is a reduce-scatter plus an all-gather.
    assert sent_bytes(AR, 16, M) == pytest.approx(sent_bytes(RS, 16, M) + sent_bytes(AG, 16, M))


# --- seed 001 section 8.2: comms per layer (bytes, forward + backward), bf16, large X and Y -----------
# One layer = the two D x F matrices of an MLP (2DF parameters); B tokens of width D.

D, F, BT = 4096, 16384, 8192
X = Y = 1 << 20   # "large": (X-1)/X -> 1


def test_seed_table_dp():
    # DP: 0 forward + an all-reduce of the bf16 gradients (2 bytes x 2DF) backward = 8DF
    assert sent_bytes(AR, X, 2 * 2 * D * F) == pytest.approx(8 * D * F, rel=1e-5)


def test_seed_table_fsdp():
    weights = 2 * 2 * D * F   # bf16 weights of the layer: 4DF bytes
    forward = sent_bytes(AG, X, weights)                                  # gather the weights: 4DF
    backward = sent_bytes(AG, X, weights) + sent_bytes(RS, X, weights)     # gather again + RS grads: 8DF
    assert forward == pytest.approx(4 * D * F, rel=1e-5)
    assert backward == pytest.approx(8 * D * F, rel=1e-5)


def test_seed_table_mp():
    # MP: the layer's output (B x D, bf16) is all-reduced once forward and once backward: 4BD + 4BD
    assert sent_bytes(AR, Y, 2 * BT * D) == pytest.approx(4 * BT * D, rel=1e-5)


# --- tensor parallelism --------------------------------------------------------------------------

GPT = model_from_hf({"model_type": "gpt2", "n_layer": 4, "n_embd": 4096, "n_head": 32, "n_positions": 4096,
                     "vocab_size": 51200})
TRAIN = TrainingSpec(seq_length=4096, global_batch_size=64)


@pytest.mark.parametrize("t", [2, 4, 8])
@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("b", [1, 2])
def test_tp_volume_per_layer_is_8bsh(t, sp, b):
    # One layer per stage (4 layers, pp = 4): tp bytes per step / (2 bytes x micro-batches) = 8bsh(t-1)/t
    # elements, with all-reduces or (SP) all-gather + reduce-scatter alike; SP adds the backward
    # re-gather of the two column-parallel inputs (QKV, fc1) for their weight gradients: 2bsh(t-1)/t.
    m = run(GPT, TRAIN, [dict(tp=t, pp=4, dp=1, micro_batch=b, sequence_parallel=sp)])
    micro_batches = 64 // b
    assert m.num_microbatches[0] == micro_batches
    s, h = 4096, 4096
    elements = m.comm_bytes_per_step["tp"][0] / 2 / micro_batches
    assert elements == pytest.approx((10 if sp else 8) * b * s * h * (t - 1) / t, rel=1e-12)


def test_tp_volume_scales_with_layers_per_stage():
    one = run(GPT, TRAIN, [dict(tp=8, pp=4)]).comm_bytes_per_step["tp"][0]
    four = run(GPT, TRAIN, [dict(tp=8, pp=1)]).comm_bytes_per_step["tp"][0]
    assert four == pytest.approx(4 * one, rel=1e-12)
    assert run(GPT, TRAIN, [dict(tp=1, pp=4)]).comm_bytes_per_step["tp"][0] == 0


def test_moe_layer_tp_volume_attention_only_without_expert_tp():
    # Mixtral: no shared experts; with etp = 1 the MLP needs no TP collectives, so half of a dense layer
    # (with SP: two pairs and one backward re-gather of the QKV input, 10bsh(t-1)/t / 2).
    mixtral = load_model("mixtral-8x7b").spec
    training = TrainingSpec(seq_length=4096, global_batch_size=64)
    records = [dict(tp=4, pp=32, dp=8, ep=8, etp=1, sequence_parallel=True),
               dict(tp=4, pp=32, dp=8, ep=4, etp=4, sequence_parallel=True)]
    m = evaluate(mixtral, training, load_cluster("h100x1024"), PlanArrays.from_records(records))
    per_mb = m.comm_bytes_per_step["tp"] / m.num_microbatches
    s, h, t = 4096, 4096, 4
    assert per_mb[0] == pytest.approx(2 * (10 * s * h * (t - 1) / t) / 2, rel=1e-12)
    assert per_mb[1] == pytest.approx(2 * 10 * s * h * (t - 1) / t, rel=1e-12)


# --- context, expert and pipeline parallelism ------------------------------------------------------

LLAMA8 = load_model("llama3-8b").spec


def test_cp_ring_volume_by_hand():
    # Ring attention: forward sends the local K and V chunk cp-1 times; backward K, V and dK, dV.
    cp, t, s = 4, 2, 16384
    m = run(LLAMA8, TrainingSpec(seq_length=s, global_batch_size=16),
            [dict(tp=t, cp=cp, pp=1, dp=1, sequence_parallel=True)])
    kv_heads, d = 8 / t, 128
    kv_chunk = 2 * (s / cp) * kv_heads * (d + d)   # bf16 K and V of s/cp tokens
    per_layer = 3 * (cp - 1) * kv_chunk
    assert m.comm_bytes_per_step["cp"][0] == pytest.approx(16 * 32 * per_layer, rel=1e-12)


def test_cp_all_to_all_volume_by_hand():
    cp, s = 4, 16384
    m = run(LLAMA8, TrainingSpec(seq_length=s, global_batch_size=16), [dict(tp=1, cp=cp, dp=1)],
            cp_comm_type="a2a")
    tokens = s / cp
    # q (32 heads), k and v (8 heads), output (32 heads), each 128 wide, bf16, forward and backward
    widths = 32 * 128 + 8 * 128 + 8 * 128 + 32 * 128
    per_layer = 2 * 2 * tokens * widths * (cp - 1) / cp
    assert m.comm_bytes_per_step["cp"][0] == pytest.approx(16 * 32 * per_layer, rel=1e-12)


@pytest.mark.parametrize("fp8_dispatch", [False, True])
def test_ep_all_to_all_volume_by_hand(fp8_dispatch):
    mixtral = load_model("mixtral-8x7b").spec
    training = TrainingSpec(seq_length=4096, global_batch_size=64, moe_dispatch_fp8=fp8_dispatch)
    m = evaluate(mixtral, training, CLUSTER, PlanArrays.from_records([dict(tp=1, pp=4, dp=8, ep=8)]))
    pairs = 4096 * 2           # b*s tokens x top-2
    h, ep = 4096, 8
    dispatch = (1 if fp8_dispatch else 2) * pairs * h
    combine = 2 * pairs * h
    # forward dispatch + combine, backward two bf16 all-to-alls; 8 MoE layers per stage; m = 8
    per_layer = (dispatch + 3 * combine) * (ep - 1) / ep
    assert m.num_microbatches[0] == 8
    assert m.comm_bytes_per_step["ep"][0] == pytest.approx(8 * 8 * per_layer, rel=1e-12)


@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("v", [1, 2])
def test_pp_volume_by_hand(sp, v):
    # A middle stage sends each micro-batch's activation forward and its gradient back, per chunk.
    model = dataclasses.replace(LLAMA8, num_layers=32)
    m = run(model, TrainingSpec(seq_length=8192, global_batch_size=32),
            [dict(tp=4, pp=4, dp=1, vpp=v, sequence_parallel=sp)])
    message = 2 * 8192 * 4096 / (4 if sp else 1)
    assert m.comm_bytes_per_step["pp"][0] == pytest.approx(2 * 32 * v * message, rel=1e-12)
    assert run(model, TrainingSpec(seq_length=8192, global_batch_size=32),
               [dict(tp=4, pp=1)]).comm_bytes_per_step["pp"][0] == 0


@pytest.mark.parametrize("sp", [False, True])
def test_megatron_2021_scatter_gather_pipeline_send_by_hand(sp):
    # Megatron-LM's scatter/gather optimisation: each TP rank sends 1/t of the b*s*h activation and the
    # receiver all-gathers the pieces over the TP group (p2p_communication._communicate,
    # gather_split_1d_tensor); with sequence parallelism the shard is what the next stage runs on.
    from cost_model.communication import CommPricer, pipeline_p2p, place
    from cost_model.model_loader import build_training
    model = dataclasses.replace(LLAMA8, num_layers=32)
    plans = PlanArrays.from_records([dict(tp=4, pp=4, dp=1, sequence_parallel=sp)])
    pricer = CommPricer(CLUSTER, place(CLUSTER, plans, CostOptions()))
    old = build_training(dict(seq_length=8192, global_batch_size=32, stack="megatron-lm-2021"), source="test",
                         model=model)
    core = TrainingSpec(seq_length=8192, global_batch_size=32)
    whole = 2 * 8192 * 4096                       # bytes of one b*s*h activation, b = 1
    seconds, sent = pipeline_p2p(model, old, plans, pricer)
    assert sent[0] == whole / 4                   # 8 MiB of 32
    send = pricer.time(P2P, pricer.placements.pp, np.array([whole / 4]))[0]
    gather = pricer.time(AG, pricer.placements.tp, np.array([whole]))[0]
    assert seconds[0] == pytest.approx(send + (0.0 if sp else gather), rel=1e-12)
    core_seconds, core_sent = pipeline_p2p(model, core, plans, pricer)
    assert core_sent[0] == whole / (4 if sp else 1)   # Megatron-Core sends the whole tensor without SP
    assert core_seconds[0] == pytest.approx(pricer.time(P2P, pricer.placements.pp, core_sent)[0], rel=1e-12)


# --- data parallelism and ZeRO --------------------------------------------------------------------

LLAMA2_7B = model_from_hf({"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
                           "intermediate_size": 11008, "num_attention_heads": 32, "vocab_size": 32000,
                           "tie_word_embeddings": False})
P = ParameterCounts(LLAMA2_7B).total   # V = 32000 needs no padding at tp = 1


@pytest.mark.parametrize("grad_dtype, g", [("bf16", 2), ("fp32", 4)])
@pytest.mark.parametrize("dp, cp", [(8, 1), (4, 2), (64, 1)])
def test_dp_volume_per_zero_stage(grad_dtype, g, dp, cp):
    training = TrainingSpec(seq_length=4096, global_batch_size=256, grad_dtype=grad_dtype)
    m = run(LLAMA2_7B, training, [dict(tp=1, pp=1, dp=dp, cp=cp, zero_stage=z) for z in range(4)])
    mb = 256 // dp
    assert list(m.num_microbatches) == [mb] * 4
    X = dp * cp
    share = (X - 1) / X
    expected = [2 * g * P * share,                        # ZeRO-0: all-reduce the gradients once
                (g * P + 2 * P) * share,                  # ZeRO-1: reduce-scatter grads + all-gather bf16 weights
                (mb * g * P + 2 * P) * share,             # ZeRO-2: reduce-scatter every micro-batch
                mb * (2 * 2 * P + g * P) * share]         # ZeRO-3: gather fwd + gather bwd + RS, every micro-batch
    np.testing.assert_allclose(m.comm_bytes_per_step["dp"], expected, rtol=1e-12)


def test_dp_volume_matches_seed_table_per_parameter():
    # Seed 001 table per layer of 2DF parameters, large X, bf16: DP 8DF = 4 bytes/param per step,
    # FSDP 12DF = 6 bytes/param per micro-batch.
    training = TrainingSpec(seq_length=4096, global_batch_size=1024, grad_dtype="bf16")
    m = run(LLAMA2_7B, training, [dict(tp=1, dp=1024, zero_stage=0), dict(tp=1, dp=1024, zero_stage=3)])
    per_param = m.comm_bytes_per_step["dp"] / P
    np.testing.assert_allclose(per_param, [4 * 1023 / 1024, 6 * 1023 / 1024], rtol=1e-12)


def test_zero2_and_zero3_volumes_scale_with_microbatches():
    records = [dict(tp=1, dp=8, zero_stage=z) for z in range(4)]
    small = run(LLAMA2_7B, TrainingSpec(seq_length=4096, global_batch_size=64, grad_dtype="bf16"), records)
    big = run(LLAMA2_7B, TrainingSpec(seq_length=4096, global_batch_size=128, grad_dtype="bf16"), records)
    assert list(small.num_microbatches) == [8] * 4 and list(big.num_microbatches) == [16] * 4
    a, b = small.comm_bytes_per_step["dp"], big.comm_bytes_per_step["dp"]
    assert b[0] == pytest.approx(a[0]) and b[1] == pytest.approx(a[1])   # once per step
    assert b[3] == pytest.approx(2 * a[3], rel=1e-12)                     # every micro-batch
    # ZeRO-2: 8 more reduce-scatters of 2P bytes each
    assert b[2] - a[2] == pytest.approx(8 * 2 * P * 7 / 8, rel=1e-12)


def test_expert_gradients_reduce_over_expert_data_parallel_ranks():
    mixtral = load_model("mixtral-8x7b").spec
    c = ParameterCounts(mixtral)
    training = TrainingSpec(seq_length=4096, global_batch_size=256, grad_dtype="bf16")
    # pp = 1, tp = 1, dp = 16, ep = 8 -> expert-data-parallel = 16 / 8 = 2
    m = evaluate(mixtral, training, CLUSTER, PlanArrays.from_records([dict(tp=1, dp=16, ep=8)]))
    experts_per_rank = c.routed_experts_total / 8
    dense = c.total - c.routed_experts_total       # V = 32000 is a multiple of 128: no padding
    expected = 2 * 2 * dense * 15 / 16 + 2 * 2 * experts_per_rank * 1 / 2
    assert m.comm_bytes_per_step["dp"][0] == pytest.approx(expected, rel=1e-12)


def test_full_recompute_repeats_forward_tp_bytes():
    # Forward is 2 of the 4 TP collectives per layer; recomputing every layer repeats those 2: x 1.5.
    m = run(GPT, TRAIN, [dict(tp=8, pp=4), dict(tp=8, pp=4, recompute="full")])
    tp = m.comm_bytes_per_step["tp"]
    assert tp[1] == pytest.approx(1.5 * tp[0], rel=1e-12)


def test_distinct_layout_rows_match_numpy_row_unique():
    from cost_model.communication import _distinct_rows

    rng = np.random.default_rng(0)
    columns = [rng.choice([1, 2, 4, 8], 500), rng.choice([1, 3, 9], 500), rng.choice([1, 2**40], 500)]
    for cols in (columns[:2], columns):  # packed key, and the row-sort fallback for wide values
        distinct, index = _distinct_rows(cols)
        rows = np.stack(cols, axis=1)
        expected, expected_index = np.unique(rows, axis=0, return_inverse=True)
        assert sorted(map(tuple, np.stack(distinct, axis=1))) == sorted(map(tuple, expected))
        np.testing.assert_array_equal(np.stack(distinct, axis=1)[index], rows)
