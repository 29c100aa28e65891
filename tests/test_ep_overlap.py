"""Megatron's EP all-to-all overlap (``overlap_moe_expert_parallel_comm``): merged-step share by hand,
the exposed all-to-all of a merged step by hand, and its effect on step time and memory."""

import numpy as np

from cost_model.activations import lm_head_bytes
from cost_model.communication import CommPricer, layer_communication, place
from cost_model.compute import layer_times
from cost_model.ep_overlap import ep_overlap_active, exposed_in_merged_step, merged_share
from cost_model.evaluate import evaluate
from cost_model.memory import padded_vocab
from cost_model.model_loader import load_model
from cost_model.options import CostOptions
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster

QWEN3_30B = load_model("qwen3-30b-a3b").spec
LLAMA8 = load_model("llama3-8b").spec
H100X32 = load_cluster("h100x32")
TRAIN = TrainingSpec(seq_length=4096, global_batch_size=128, precision="bf16")
OVERLAP = TRAIN.with_changes(overlap_moe_expert_parallel_comm=True)


def plans(*records):
    return PlanArrays.from_records([dict(dict(tp=1, cp=1, vpp=1, micro_batch=1, zero_stage=1), **r) for r in records])


def test_merged_share_by_hand():
    """pp = 1, m = 4: the first forward and the last backward run alone, 3 of 4 passes are merged.
    pp = 4, v = 2, m = 8 (16 chunk passes): rank 0 warms up 2*3 + 1*4 + 1 = 11, rank 3 warms up
    0 + 4 + 1 = 5 (Megatron's interleaved warm-up plus the overlap's extra one)."""
    p = plans(dict(pp=1, dp=8, ep=8), dict(pp=4, dp=8, ep=8, vpp=2))
    ranks = np.array([[0, 0, 0], [0, 1, 3]])
    share = merged_share(p, np.array([4, 8]), ranks)
    np.testing.assert_allclose(share[0], [3 / 4] * 3)
    np.testing.assert_allclose(share[1], [5 / 16, 7 / 16, 11 / 16])


def test_exposed_in_merged_step_by_hand():
    """Each all-to-all shows only what it takes beyond the other micro-batch's block beside it:
    forward dispatch 3 vs MoE backward 2 -> 1; forward combine 1 vs attention backward 4 -> 0;
    backward all-to-alls 6 = 3 + 3 vs MoE forward 1 -> 2 and attention forward 2 -> 1."""
    exposed = exposed_in_merged_step(np.array([3.0]), np.array([1.0]), np.array([6.0]),
                                     attention_fwd_s=np.array([2.0]), attention_bwd_s=np.array([4.0]),
                                     moe_fwd_s=np.array([1.0]), moe_bwd_s=np.array([2.0]))
    np.testing.assert_allclose(exposed, [1.0 + 0.0 + 2.0 + 1.0])


def test_active_only_where_megatron_accepts_the_flag():
    p = plans(dict(pp=1, dp=8, ep=8), dict(pp=2, dp=4, ep=4), dict(pp=2, dp=4, ep=4, vpp=2),
              dict(pp=1, dp=8, ep=8, recompute="full"), dict(pp=1, dp=8, ep=1))
    np.testing.assert_array_equal(ep_overlap_active(QWEN3_30B, OVERLAP, p), [True, False, True, False, False])
    assert not ep_overlap_active(QWEN3_30B, TRAIN, p).any()
    assert not ep_overlap_active(LLAMA8, OVERLAP, p).any()


def _metrics(training, **plan):
    return evaluate(QWEN3_30B, training, H100X32, plans(dict(dict(pp=1, dp=32, ep=8), **plan)), CostOptions())


def test_overlap_hides_the_merged_steps_all_to_all():
    """One stage, 4 micro-batches, EP inside the NVLink node: every all-to-all is shorter than the
    block of the other micro-batch beside it, so only the unmerged first forward and last backward stay
    exposed: a quarter of the all-to-all time. The hidden three quarters hold SMs (contention)."""
    p = plans(dict(pp=1, dp=32, ep=8))
    dense_t, moe_t = layer_times(QWEN3_30B, OVERLAP, p, H100X32.gpu, CostOptions())
    _, moe_c = layer_communication(QWEN3_30B, OVERLAP, p, CommPricer(H100X32, place(H100X32, p, CostOptions())),
                                   CostOptions())
    paired = exposed_in_merged_step(moe_c.ep_dispatch_fwd_s, moe_c.ep_fwd_s - moe_c.ep_dispatch_fwd_s,
                                    moe_c.ep_bwd_s, moe_t.attention_block_forward, moe_t.attention_block_backward,
                                    moe_t.forward - moe_t.attention_block_forward,
                                    moe_t.backward - moe_t.attention_block_backward)
    assert paired[0] == 0.0  # the premise of the hand figure below
    off, on = _metrics(TRAIN), _metrics(OVERLAP)
    assert int(off.num_microbatches[0]) == 4
    np.testing.assert_allclose(on.step_time_parts_s["ep_comm"], off.step_time_parts_s["ep_comm"] / 4, rtol=1e-12)
    hidden = off.step_time_parts_s["ep_comm"] * 3 / 4
    np.testing.assert_allclose(on.step_time_parts_s["overlap_contention"] - off.step_time_parts_s["overlap_contention"],
                               CostOptions().overlap_sm_fraction * hidden, rtol=1e-9)
    assert on.step_time_s[0] < off.step_time_s[0]


def test_overlap_keeps_one_more_layer_in_flight():
    """With one stage the merged step runs the new micro-batch's forward layer i beside the old one's
    backward of layer L-1-i and releases that layer after it: (i + 1) + (L - i) = L + 1 = 49 of Qwen3-30B's
    48 layers at once, not two micro-batches (Megatron-LM model_chunk_schedule_plan.py ``run``). The LM
    head's (one micro-batch, at the end of the forward) is unchanged."""
    off, on = _metrics(TRAIN), _metrics(OVERLAP)
    assert off.extras["stages"].in_flight_layers[0, 0] == 48
    assert on.extras["stages"].in_flight_layers[0, 0] == 49
    p = plans(dict(pp=1, dp=32, ep=8))
    head = lm_head_bytes(QWEN3_30B, TRAIN, p, padded_vocab(QWEN3_30B, p, CostOptions()).astype(float))
    layers_off = off.memory_parts_bytes["activations"] - head
    np.testing.assert_allclose(on.memory_parts_bytes["activations"], layers_off * 49 / 48 + head, rtol=1e-12)


def test_no_effect_where_megatron_refuses_the_flag():
    for plan in (dict(recompute="full"), dict(pp=2, dp=16, ep=8)):
        off, on = _metrics(TRAIN, **plan), _metrics(OVERLAP, **plan)
        np.testing.assert_array_equal(on.step_time_s, off.step_time_s)
        np.testing.assert_array_equal(on.memory_bytes, off.memory_bytes)


def test_emitters_write_the_flag_only_where_megatron_accepts_it():
    from optimizer.emit import emit
    plan = dict(tp=1, pp=1, dp=32, cp=1, ep=8, etp=1, vpp=1, micro_batch=1, recompute=0, recompute_num_layers=0,
                recompute_modules=0, activation_offload_layers=0, sequence_parallel=False, zero_stage=1,
                optimizer_offload=False)
    assert "--overlap-moe-expert-parallel-comm" in emit("megatron", plan, QWEN3_30B, OVERLAP)
    assert "model.overlap_moe_expert_parallel_comm=true" in emit("megatron-bridge", plan, QWEN3_30B, OVERLAP)
    assert "overlap-moe" not in emit("megatron", plan, QWEN3_30B, TRAIN)
    for refused in (dict(plan, pp=2), dict(plan, recompute=2), dict(plan, ep=1)):
        assert "overlap-moe" not in emit("megatron", refused, QWEN3_30B, OVERLAP)
        assert "overlap_moe_expert_parallel_comm=true" not in emit("megatron-bridge", refused, QWEN3_30B, OVERLAP)
    assert "overlap-moe" in emit("megatron", dict(plan, pp=2, vpp=2), QWEN3_30B, OVERLAP)
