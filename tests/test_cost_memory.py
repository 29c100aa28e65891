"""Memory per GPU: model-state bytes per parameter, pipeline in-flight micro-batches, and properties.

Model states: mixed-precision Adam with bf16 gradients is 2 + 2 + 12 = 16 bytes/param (ZeRO paper,
Rajbhandari et al. 2020, section 3.1); Megatron-LM's ``theoretical_memory_usage.py`` gives 18 bytes/param
with fp32 main grads and 6 + 12/d with the distributed optimizer (ZeRO-1 over d data-parallel ranks).
"""

import dataclasses
import itertools

import numpy as np
import pytest

from cost_model.activations import layer_activations, lm_head_bytes
from cost_model.evaluate import evaluate
from cost_model.memory import padded_vocab
from cost_model.model_loader import load_model, model_from_hf
from cost_model.options import CostOptions
from cost_model.params import ParameterCounts
from cost_model.plan import PlanArrays
from cost_model.stages import layers_per_stage, stage_layout, uneven_split_is_valid
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster

CLUSTER = load_cluster("h100x1024")

# Llama 2 7B (meta-llama/Llama-2-7b-hf config.json): V = 32000 is a multiple of 128, so Megatron's
# vocabulary padding adds nothing at tp = 1 and the per-rank parameters are exactly the model's.
LLAMA2_7B = model_from_hf({"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
                           "intermediate_size": 11008, "num_attention_heads": 32, "vocab_size": 32000,
                           "tie_word_embeddings": False, "rms_norm_eps": 1e-5})
P_7B = ParameterCounts(LLAMA2_7B).total


def run(model, training, records, **options):
    return evaluate(model, training, CLUSTER, PlanArrays.from_records(records), CostOptions(**options))


def model_states_per_param(metrics):
    parts = metrics.memory_parts_bytes
    return (parts["weights"] + parts["gradients"] + parts["optimizer"]) / P_7B


def test_llama2_7b_parameter_count():
    assert P_7B == 6_738_415_616  # published total of Llama-2-7b-hf


def test_mixed_precision_adam_is_16_bytes_per_param():
    training = TrainingSpec(seq_length=4096, global_batch_size=8, grad_dtype="bf16")
    m = run(LLAMA2_7B, training, [dict(tp=1, pp=1, dp=1)])
    np.testing.assert_allclose(model_states_per_param(m), [16.0], rtol=1e-12)
    parts = m.memory_parts_bytes
    assert parts["weights"][0] == 2 * P_7B
    assert parts["gradients"][0] == 2 * P_7B
    assert parts["optimizer"][0] == 12 * P_7B


def test_sgd_momentum_is_12_bytes_per_param_with_bf16_grads():
    # bf16 weight 2 + bf16 grad 2 + fp32 master 4 + momentum 4
    training = TrainingSpec(seq_length=4096, global_batch_size=8, grad_dtype="bf16", optimizer="sgd")
    np.testing.assert_allclose(model_states_per_param(run(LLAMA2_7B, training, [dict(tp=1)])), [12.0])


@pytest.mark.parametrize("d", [2, 8, 64])
def test_megatron_18_bytes_and_distributed_optimizer(d):
    training = TrainingSpec(seq_length=4096, global_batch_size=512, grad_dtype="fp32")
    m = run(LLAMA2_7B, training, [dict(tp=1, dp=d, zero_stage=0), dict(tp=1, dp=d, zero_stage=1)])
    np.testing.assert_allclose(model_states_per_param(m), [18.0, 6.0 + 12.0 / d], rtol=1e-12)


@pytest.mark.parametrize("d", [2, 8, 64])
def test_zero_stages_bytes_per_param(d):
    # ZeRO paper, Figure 1 (bf16 grads, K = 12): 2+2+12, 2+2+12/d, 2+(2+12)/d, (2+2+12)/d.
    training = TrainingSpec(seq_length=4096, global_batch_size=512, grad_dtype="bf16")
    m = run(LLAMA2_7B, training, [dict(tp=1, dp=d, zero_stage=z) for z in range(4)])
    np.testing.assert_allclose(model_states_per_param(m), [16, 4 + 12 / d, 2 + 14 / d, 16 / d], rtol=1e-12)


def test_context_parallel_ranks_share_the_zero_shards():
    # Megatron shards the distributed optimizer over the data-parallel-with-context group: dp x cp.
    training = TrainingSpec(seq_length=8192, global_batch_size=64, grad_dtype="fp32")
    m = run(LLAMA2_7B, training, [dict(tp=1, dp=4, cp=2, zero_stage=1)])
    np.testing.assert_allclose(model_states_per_param(m), [6 + 12 / 8], rtol=1e-12)


def test_tensor_parallel_splits_everything_but_the_norms():
    training = TrainingSpec(seq_length=4096, global_batch_size=8, grad_dtype="bf16")
    m = run(LLAMA2_7B, training, [dict(tp=4)])
    norms = 32 * 2 * 4096 + 4096   # two RMSNorms per layer and the final norm stay whole
    # Megatron pads V = 32000 to a multiple of 128 x 4 = 512: 63 x 512 = 32256 rows (embedding and head).
    padding = 2 * (32256 - 32000) * 4096
    per_rank = (P_7B + padding - norms) / 4 + norms
    assert m.memory_parts_bytes["weights"][0] == pytest.approx(2 * per_rank, rel=1e-12)


def test_megatron_vocabulary_padding():
    llama3 = load_model("llama3-8b").spec
    plans = PlanArrays.from_records([dict(tp=1), dict(tp=8), dict(tp=4), dict(tp=3)])
    # 128256 = 1002 x 128; to a multiple of 1024: 126 x 1024 = 129024; of 512: 251 x 512 = 128512;
    # 128256 = 334 x 384 already.
    np.testing.assert_array_equal(padded_vocab(llama3, plans, CostOptions()), [128256, 129024, 128512, 128256])


# --- pipeline stages -------------------------------------------------------------------------------

def test_llama3_405b_uneven_split():
    # Llama 3 paper, section 3.3.2: 126 layers on 16 stages, one layer fewer on the first and last.
    first, middle, last = layers_per_stage(126, np.array([16]))
    assert (int(first[0]), int(middle[0]), int(last[0])) == (7, 8, 7)
    assert 7 + 14 * 8 + 7 == 126
    first, middle, last = layers_per_stage(32, np.array([1, 2, 4]))
    np.testing.assert_array_equal(first, [32, 16, 8])
    np.testing.assert_array_equal(last, [32, 16, 8])


MODERN = TrainingSpec(seq_length=4096, global_batch_size=64, grad_dtype="fp32")  # no dropout


@pytest.mark.parametrize("m_target", [1, 2, 3, 4, 8, 16])
def test_1f1b_first_stage_holds_min_m_p_microbatches(m_target):
    p, L = 4, 32
    training = dataclasses.replace(MODERN, global_batch_size=m_target)   # dp = micro_batch = 1 -> m = gbs
    plan = dict(tp=2, pp=p, dp=1, sequence_parallel=True)
    metrics = run(LLAMA2_7B, training, [plan])
    assert metrics.num_microbatches[0] == m_target
    per_layer = layer_activations(LLAMA2_7B, training, PlanArrays.from_records([plan])).dense_full[0]
    by_stage = metrics.extras["memory_by_stage"].activations[0]
    # first stage: min(m, p) micro-batches x L/p layers (no dropout -> no embedding mask)
    assert by_stage[0] == pytest.approx(min(m_target, p) * (L / p) * per_layer, rel=1e-12)
    # middle stage (rank 1): min(m, p - 1)
    assert by_stage[1] == pytest.approx(min(m_target, p - 1) * (L / p) * per_layer, rel=1e-12)
    # last stage: one micro-batch, plus the LM head's saved tensors
    plans = PlanArrays.from_records([plan])
    head = lm_head_bytes(LLAMA2_7B, training, plans, padded_vocab(LLAMA2_7B, plans, CostOptions()))[0]
    assert by_stage[2] == pytest.approx((L / p) * per_layer + head, rel=1e-12)


def test_lm_head_saved_bytes_by_hand():
    plan = PlanArrays.from_records([dict(tp=2, sequence_parallel=True, micro_batch=2)])
    got = lm_head_bytes(LLAMA2_7B, MODERN, plan, np.array([32000]))[0]
    tokens = 2 * 4096
    # final-norm input 2h + LM-head GEMM input 2h (split by SP) + fp32 logits 4V/t per token
    assert got == pytest.approx(tokens * (4 * 4096 / 2 + 4 * 32000 / 2), rel=1e-12)
    # FP8 runs keep the LM head in bf16, so its saved input stays 2 bytes.
    assert lm_head_bytes(LLAMA2_7B, dataclasses.replace(MODERN, precision="fp8"), plan, np.array([32000]))[0] == got


@pytest.mark.parametrize("p, v", [(2, 2), (4, 2), (4, 4), (8, 2)])
def test_interleaving_multiplies_first_stage_activations(p, v):
    # Korthikanti et al. 2022, section 4.2.3: 1 + (p - 1)/(p v), with m >= p (here m = 4p).
    model = dataclasses.replace(LLAMA2_7B, num_layers=64)
    training = dataclasses.replace(MODERN, global_batch_size=4 * p)
    m = run(model, training, [dict(tp=1, pp=p, vpp=1), dict(tp=1, pp=p, vpp=v)])
    acts = m.extras["memory_by_stage"].activations[:, 0]
    assert acts[1] / acts[0] == pytest.approx(1 + (p - 1) / (p * v), rel=1e-12)


def test_interleaving_with_m_equal_p_holds_everything_once():
    # Megatron runs all forwards first when m == p (all_warmup_microbatches): m*v chunks = L layers.
    p, v = 4, 2
    model = dataclasses.replace(LLAMA2_7B, num_layers=64)
    training = dataclasses.replace(MODERN, global_batch_size=p)
    m = run(model, training, [dict(tp=1, pp=p, vpp=1), dict(tp=1, pp=p, vpp=v)])
    acts = m.extras["memory_by_stage"].activations[:, 0]
    assert acts[1] == pytest.approx(acts[0], rel=1e-12)


def test_full_recompute_block_method_counts_layers():
    # recompute_num_layers = 4 of 8 layers per stage: half the layers keep only their input.
    p = 4
    training = dataclasses.replace(MODERN, global_batch_size=16)
    plans = [dict(tp=1, pp=p, recompute="full", recompute_num_layers=k) for k in (-1, 4, 0)]
    m = run(LLAMA2_7B, training, plans)
    acts = layer_activations(LLAMA2_7B, training, PlanArrays.from_records([dict(tp=1)]))
    full, keep = acts.layer_input[0], acts.dense_full[0]
    first = m.extras["memory_by_stage"].activations[:, 0]
    np.testing.assert_allclose(first, [p * 8 * full, p * (4 * full + 4 * keep), p * 8 * keep], rtol=1e-12)


# --- properties over realistic plans ----------------------------------------------------------------

LLAMA3_70B = load_model("llama3-70b").spec
TRAIN_70B = TrainingSpec(seq_length=8192, global_batch_size=512)


def stage_max(metrics, part):
    values = getattr(metrics.extras["memory_by_stage"], part)
    return np.where(metrics.extras["stages"].exists, values, -np.inf).max(axis=1)


@pytest.mark.parametrize("pp", [1, 2, 4, 8])
def test_weights_per_rank_never_grow_with_tp(pp):
    tps = [1, 2, 4, 8, 16]
    m = run(LLAMA3_70B, TRAIN_70B, [dict(tp=t, pp=pp, dp=8) for t in tps])
    weights = stage_max(m, "weights")
    assert np.all(np.diff(weights) < 0)


@pytest.mark.parametrize("model_name", ["llama3-70b", "llama3-405b", "deepseek-v3", "mixtral-8x7b"])
@pytest.mark.parametrize("tp", [1, 8])
def test_weights_per_rank_never_grow_when_pp_is_multiplied(model_name, tp):
    # Compared between depths p and q = k*p. NOT for any larger q: the even split of 80 layers on 16
    # stages puts 5 layers plus the embedding on the first stage, more than the uneven 15-stage split's
    # 6-layer middle stages (embedding stage with 1 layer) -- a real property of the layouts, not a bug.
    model = load_model(model_name).spec
    pps = [p for p in range(1, 33) if model.num_layers % p == 0
           or (p >= 2 and uneven_split_is_valid(model.num_layers, np.array([p]), np.array([1]))[0])]
    assert len(pps) > 8
    ep = 8 if model.is_moe else 1
    m = run(model, TRAIN_70B, [dict(tp=tp, pp=p, dp=8, ep=ep) for p in pps])
    weights = dict(zip(pps, stage_max(m, "weights")))
    pairs = [(p, q) for p in pps for q in pps if q > p and q % p == 0]
    assert len(pairs) > 10
    for p, q in pairs:
        assert weights[q] < weights[p], (p, q)


REALISTIC = [dict(tp=t, pp=p, dp=d, vpp=v, micro_batch=b, sequence_parallel=t > 1, recompute=r)
             for t, p, d, v, b, r in itertools.product([1, 4, 8], [1, 4, 8], [8, 32], [1, 2], [1, 2],
                                                       ["none", "selective", "full"])
             if not (p == 1 and v > 1)]


def test_zero_stages_are_ordered_in_memory():
    # Enough layers per rank (>= 10) and dp >= 8: ZeRO-3's two gathered layers cost less than it saves.
    records = [dict(plan, zero_stage=z) for plan in REALISTIC for z in range(4)]
    m = run(LLAMA3_70B, TRAIN_70B, records)
    mem = m.memory_bytes.reshape(-1, 4)
    assert np.all(mem[:, 3] <= mem[:, 2]) and np.all(mem[:, 2] <= mem[:, 1]) and np.all(mem[:, 1] <= mem[:, 0])
    assert np.all(mem[:, 1] < mem[:, 0])   # the optimizer states are always worth sharding over dp >= 8


def test_zero3_gathered_layers_are_counted():
    # Documented trade-off: with a single data-parallel rank ZeRO-3 shards nothing and still holds two
    # gathered layers (current + prefetched), so it costs more than ZeRO-2.
    training = TrainingSpec(seq_length=4096, global_batch_size=8, grad_dtype="bf16")
    m = run(LLAMA2_7B, training, [dict(tp=1, dp=1, zero_stage=2), dict(tp=1, dp=1, zero_stage=3)])
    layer = ParameterCounts(LLAMA2_7B).dense_layer
    assert m.memory_bytes[1] - m.memory_bytes[0] == pytest.approx(2 * 2 * layer, rel=1e-12)


def test_recompute_ordering_memory_and_time():
    base = [dict(p, recompute="none") for p in REALISTIC if p["recompute"] == "none"]
    records = [dict(p, recompute=r) for p in base for r in ("none", "selective", "full")]
    for training in (TRAIN_70B, dataclasses.replace(TRAIN_70B, flash_attention=False, seq_length=4096)):
        m = run(LLAMA3_70B, training, records)
        acts = stage_max(m, "activations").reshape(-1, 3)
        mem = m.memory_bytes.reshape(-1, 3)
        time = m.step_time_s.reshape(-1, 3)
        assert np.all(acts[:, 2] < acts[:, 1]) and np.all(acts[:, 1] <= acts[:, 0])
        assert np.all(mem[:, 2] < mem[:, 1]) and np.all(mem[:, 1] <= mem[:, 0])
        assert np.all(time[:, 2] > time[:, 1]) and np.all(time[:, 1] >= time[:, 0])
        if not training.flash_attention:   # selective recompute pays off only without fused attention
            assert np.all(acts[:, 1] < acts[:, 0])


def test_memory_parts_add_up_and_frame_in_gib():
    m = run(LLAMA3_70B, TRAIN_70B, REALISTIC[:12])
    total = sum(m.memory_parts_bytes.values())
    np.testing.assert_allclose(total, m.memory_bytes, rtol=1e-12)
    frame = m.to_frame()
    np.testing.assert_allclose(frame["memory_gib"], m.memory_bytes / 2**30)
    assert len(frame) == 12


def test_workspace_reserve_is_added_once():
    training = TrainingSpec(seq_length=4096, global_batch_size=8)
    a = run(LLAMA2_7B, training, [dict(tp=1)], workspace_reserve_gib=0.0)
    b = run(LLAMA2_7B, training, [dict(tp=1)], workspace_reserve_gib=2.0)
    assert b.memory_bytes[0] - a.memory_bytes[0] == pytest.approx(2 * 2**30)


def test_stage_layout_in_flight_counts():
    plans = PlanArrays.from_records([dict(tp=1, pp=4, vpp=1), dict(tp=1, pp=4, vpp=2)])
    layout = stage_layout(dataclasses.replace(LLAMA2_7B, num_layers=64), plans, np.array([16, 16]))
    # 1F1B: ranks 0, 1, 3 hold 4, 3, 1 micro-batches of 16 layers
    np.testing.assert_allclose(layout.in_flight_layers[0], [64, 48, 16])
    # interleaved v=2, rank r: (v-1)p + 2(p-r-1) + 1 chunks of 8 layers -> 11, 9, 5 chunks
    np.testing.assert_allclose(layout.in_flight_layers[1], [88, 72, 40])


def test_expert_parallel_splits_experts_and_zero_shards_over_expert_data_parallel():
    mixtral = load_model("mixtral-8x7b").spec
    c = ParameterCounts(mixtral)
    routed = c.routed_experts_total
    dense = c.total - routed             # V = 32000 is a multiple of 128: no padding at tp = 1
    training = TrainingSpec(seq_length=4096, global_batch_size=64, grad_dtype="bf16")
    # tp = pp = 1, dp = 16, ep = 8 -> each rank holds 1 of 8 experts per layer; expert-DP = 16 / 8 = 2.
    m = run(mixtral, training, [dict(tp=1, dp=16, ep=8, zero_stage=z) for z in (0, 1, 3)])
    parts = m.memory_parts_bytes
    local_experts = routed / 8
    np.testing.assert_allclose(parts["weights"][:2], 2 * (dense + local_experts), rtol=1e-12)
    np.testing.assert_allclose(parts["optimizer"], [12 * (dense + local_experts),
                                                    12 * (dense / 16 + local_experts / 2),
                                                    12 * (dense / 16 + local_experts / 2)], rtol=1e-12)
    assert parts["weights"][2] == pytest.approx(2 * (dense / 16 + local_experts / 2), rel=1e-12)


def test_bf16_adam_moments_take_8_optimizer_bytes_per_parameter():
    # fp32 master (4) + bf16 m (2) + bf16 v (2): Megatron's precision-aware optimizer.
    from cost_model.training_spec import TrainingSpec
    assert TrainingSpec(optimizer_moments_dtype="bf16").optimizer_state_bytes == 8
    assert TrainingSpec().optimizer_state_bytes == 12
    assert TrainingSpec(optimizer="sgd", optimizer_moments_dtype="bf16").optimizer_state_bytes == 6
