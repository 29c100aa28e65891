"""DeepSpeed's pipeline engine (cost_model.deepspeed_pipe): serial blocking transfers, partitioned
activations and gradients, and its ZeRO-1 all-reduce (StackSpec.zero1_gradient_all_reduce)."""

import dataclasses

import numpy as np
import pytest

from cost_model.communication import AG, AR, P2P, CommPricer, data_parallel_communication, place
from cost_model.deepspeed_pipe import meta_bytes, serial_transfers
from cost_model.evaluate import evaluate
from cost_model.model_loader import build_training, model_from_hf
from cost_model.options import CostOptions
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster

CLUSTER = load_cluster("h100x1024")
GPT = model_from_hf({"model_type": "gpt2", "n_layer": 24, "n_embd": 4096, "n_head": 32, "vocab_size": 51200,
                     "n_positions": 2048})


def deepspeed(**fields) -> TrainingSpec:
    return build_training(dict(seq_length=2048, global_batch_size=64, stack="megatron-deepspeed", **fields),
                          source="test", model=GPT)


# --- the TrainSchedule instruction stream, simulated with rendezvous transfers --------------------------

def _instructions(stage: int, p: int, m: int) -> list[tuple[str, int]]:
    """deepspeed/runtime/pipe/schedule.py TrainSchedule.steps (v0.5.4), transfers and compute only."""
    out, prev = [], -1

    def valid(mb):
        return 0 <= mb < m

    for step in range(2 * (m + p - 1)):
        even_step, even_stage = step % 2 == 0, stage % 2 == 0
        if even_step and even_stage:
            mb, forward = step // 2 - stage // 2, True
        elif not even_step and not even_stage:
            mb, forward = (step - 1) // 2 - stage // 2, True
        elif even_step:
            mb, forward = step // 2 - p + (stage + 1) // 2, False
        else:
            mb, forward = (step - 1) // 2 - p + 1 + stage // 2, False
        if forward:
            out += [("RecvActivation", mb)] if valid(mb) and stage > 0 else []
            out += [("SendGrad", prev)] if valid(prev) and stage > 0 else []
        else:
            out += [("SendActivation", prev)] if valid(prev) and stage < p - 1 else []
            out += [("RecvGrad", mb)] if valid(mb) and stage < p - 1 else []
        out += [("F" if forward else "B", mb)] if valid(mb) else []
        prev = mb
    return out


def simulated_step(p: int, m: int, forward: list[float], backward: list[float], transfer: float) -> float:
    """Each stage runs its instructions in order; a send and its receive start together when both stages
    reach them (blocking p2p) and take ``transfer``."""
    streams = [_instructions(s, p, m) for s in range(p)]
    position, clock = [0] * p, [0.0] * p
    partner = {"SendActivation": ("RecvActivation", 1), "RecvActivation": ("SendActivation", -1),
               "SendGrad": ("RecvGrad", -1), "RecvGrad": ("SendGrad", 1)}
    remaining = sum(len(s) for s in streams)
    while remaining:
        moved = False
        for s in range(p):
            while position[s] < len(streams[s]):
                kind, mb = streams[s][position[s]]
                if kind in ("F", "B"):
                    clock[s] += forward[s] if kind == "F" else backward[s]
                    position[s] += 1
                    remaining -= 1
                    moved = True
                    continue
                want, offset = partner[kind]
                other = s + offset
                if position[other] < len(streams[other]) and streams[other][position[other]] == (want, mb):
                    clock[s] = clock[other] = max(clock[s], clock[other]) + transfer
                    position[s] += 1
                    position[other] += 1
                    remaining -= 2
                    moved = True
                    continue
                break
        assert moved, "deadlock"
    return max(clock)


def test_middle_stage_waits_for_four_transfers_and_the_bubble_for_two():
    # p = 4, m = 8, F = 1, B = 2, c = 0.1. Without transfer time, 1F1B's (m + p - 1)(F + B) = 33.
    p, m = 4, 8
    assert simulated_step(p, m, [1.0] * p, [2.0] * p, 0.0) == pytest.approx(33.0)
    # With it, 4 (m - 1) + 2 (p - 2) = 32 transfers on the critical path: 36.2. A paired exchange
    # (Megatron's batch_isend_irecv) would leave half of the steady state's.
    assert simulated_step(p, m, [1.0] * p, [2.0] * p, 0.1) == pytest.approx(33.0 + 32 * 0.1)
    # evaluate's m (F + B + 4c) + (p - 1)(F + B + 2c) = 36.8 counts 6 more, whatever m and p: the first
    # micro-batch's forward step sends no gradient back, the last backward step no activation on.
    for p, m in ((3, 4), (4, 32), (8, 16)):
        priced = m * (3.0 + 0.4) + (p - 1) * (3.0 + 0.2)
        assert priced - simulated_step(p, m, [1.0] * p, [2.0] * p, 0.1) == pytest.approx(0.6)


def test_heavier_last_stage_sets_the_pace_with_two_transfers():
    # Last stage F + B = 3.3 (an LM head) and its two transfers: 3.5 a micro-batch, more than a middle
    # stage's 3.4; evaluate's 8 x 3.5 + 3 x 3.2 = 37.6 is the simulation's 37.4 and one exchange.
    p, m = 4, 8
    forward, backward = [1.0] * p, [2.0] * p
    forward[-1], backward[-1] = 1.1, 2.2
    assert simulated_step(p, m, forward, backward, 0.1) == pytest.approx(37.4)


def test_evaluate_assembles_the_simulated_step():
    # A TP 1 DeepSpeed pipeline across 4 nodes (DP 8 fills each): evaluate's schedule part, m T_bottleneck
    # + (p - 1)(T_other - the middle ranks' second pair), is the simulation of the same stage times and
    # transfers plus the one exchange it counts at the ends (the last stage, with the LM head, sets the
    # pace); pricing two transfers a micro-batch on every stage instead would be 2.8% short.
    model = dataclasses.replace(GPT, num_layers=8)
    training = deepspeed()
    plans = PlanArrays.from_records([dict(tp=1, pp=4, dp=8, micro_batch=1)])
    metrics = evaluate(model, training, CLUSTER, plans, CostOptions())
    c = serial_transfers(model, training, plans, CommPricer(CLUSTER, place(CLUSTER, plans, CostOptions()))).per_microbatch_s[0]
    t_mb = metrics.extras["step_time_by_stage"][0]
    m = int(metrics.num_microbatches[0])
    assert m == 8
    assert c[1] == pytest.approx(2 * c[0]) and c[2] == pytest.approx(c[0])   # 4 transfers in the middle, 2 at the ends
    transfer = c[0] / 2
    compute = t_mb - c                                   # every stage holds 2 layers; the last the LM head too
    pace = [compute[0], compute[1], compute[1], compute[2]]
    simulated = simulated_step(4, m, [x / 3 for x in pace], [2 * x / 3 for x in pace], transfer)
    parts = metrics.step_time_parts_s
    schedule = metrics.step_time_s[0] - parts["dp_comm"][0] - parts["optimizer"][0] - parts["overlap_contention"][0]
    assert schedule - simulated == pytest.approx(2 * transfer, rel=1e-6)
    assert (schedule - m * c[0]) / simulated - 1 < -0.02


# --- partitioned transfers ---------------------------------------------------------------------------

def test_meta_tensor_bytes():
    # to_meta(): [ndims=3, s, b, h, num_parts, rank, t + 1 offsets], int64: t = 8 gives 15 longs.
    assert meta_bytes(np.array([8]))[0] == 120
    assert meta_bytes(np.array([1]))[0] == 64


def test_partitioned_pipeline_transfers_by_hand():
    plans = PlanArrays.from_records([dict(tp=8, pp=4, dp=1, micro_batch=1)])
    pricer = CommPricer(CLUSTER, place(CLUSTER, plans, CostOptions()))
    result = serial_transfers(GPT, deepspeed(), plans, pricer)
    whole = 2 * 2048 * 4096                                    # fp16 [s, b, h], b = 1: 16 MiB
    piece = whole / 8                                          # 2 MiB from each TP rank

    def p2p(size):
        return pricer.time(P2P, pricer.placements.pp, np.array([size]))[0]

    transfer = p2p(piece) + p2p(120)                           # the piece and its 120-byte meta tensor
    gather = pricer.time(AG, pricer.placements.tp, np.array([whole]))[0]
    pair = 2 * transfer
    # all-gathers a micro-batch: first stage its output and the gradient, last its input, middle all three
    expected = [pair + 2 * gather, 2 * pair + 3 * gather, pair + gather]
    assert result.per_microbatch_s[0] == pytest.approx(expected, rel=1e-12)
    assert result.fill_drain_s[0] == pytest.approx([pair + 2 * gather, pair + 3 * gather, pair + gather], rel=1e-12)
    assert result.bytes_per_microbatch[0] == 2 * piece          # 4 MiB: the activation and its gradient
    # TP 1: whole tensors, no meta, no all-gather
    plans = PlanArrays.from_records([dict(tp=1, pp=4, dp=8, micro_batch=1)])
    pricer = CommPricer(CLUSTER, place(CLUSTER, plans, CostOptions()))
    single = serial_transfers(GPT, deepspeed(), plans, pricer)
    c = pricer.time(P2P, pricer.placements.pp, np.array([whole]))[0]
    assert single.per_microbatch_s[0] == pytest.approx([2 * c, 4 * c, 2 * c], rel=1e-12)
    assert single.fill_drain_s[0] == pytest.approx([2 * c] * 3, rel=1e-12)


# --- ZeRO-1: an all-reduce of the gradients, then the all-gather --------------------------------------

@pytest.mark.parametrize("grad_dtype, g", [("fp16", 2), ("fp32", 4)])
def test_deepspeed_zero1_all_reduces_the_gradients(grad_dtype, g):
    plans = PlanArrays.from_records([dict(tp=1, pp=1, dp=8, zero_stage=1)])
    pricer = CommPricer(CLUSTER, place(CLUSTER, plans, CostOptions()))
    params = np.array([[1e9]])
    bucket = 5e8                                               # two buckets of 500M elements
    args = (plans, pricer, params, np.zeros((1, 1)), np.ones((1, 1)), np.array([8]), bucket)
    ds = data_parallel_communication(deepspeed(grad_dtype=grad_dtype, precision="fp16"), *args)
    megatron = data_parallel_communication(
        build_training(dict(seq_length=2048, global_batch_size=64, stack="megatron-lm-2021", grad_dtype=grad_dtype,
                            precision="fp16"), source="test", model=GPT), *args)
    # 2 buckets of 5e8 x g bytes all-reduced over 8 ranks: 2 x 7/8 x 1e9 g bytes sent, then 7/8 x 2e9 gathered
    assert ds.bytes_per_step[0, 0] == pytest.approx(2 * 7 / 8 * 1e9 * g + 7 / 8 * 2e9)
    assert megatron.bytes_per_step[0, 0] == pytest.approx(7 / 8 * 1e9 * g + 7 / 8 * 2e9)
    assert ds.grad_sync_s[0, 0] == pytest.approx(2 * pricer.time(AR, pricer.placements.dp_cp, np.array([bucket * g]))[0])
    assert ds.param_gather_s[0, 0] == pytest.approx(megatron.param_gather_s[0, 0])


def test_an_fp16_gradient_buffer_belongs_to_an_fp16_run():
    """grad_dtype fp16 (DeepSpeed's fp16 ZeRO-1 buffer, MT-NLG) halves the gradient bytes of an fp16 run;
    it is refused with another precision, and optimizer moments stay fp32 or bf16."""
    assert TrainingSpec(seq_length=2048, global_batch_size=8, precision="fp16", grad_dtype="fp16").grad_bytes == 2
    with pytest.raises(ValueError, match="grad_dtype fp16 is the gradient buffer of an fp16 run"):
        TrainingSpec(seq_length=2048, global_batch_size=8, precision="bf16", grad_dtype="fp16")
    with pytest.raises(ValueError, match="optimizer_moments_dtype must be one of fp32, bf16"):
        TrainingSpec(seq_length=2048, global_batch_size=8, optimizer_moments_dtype="fp16")


@pytest.mark.parametrize("grad_dtype, flag", [("fp32", "--accumulate-allreduce-grads-in-fp32"),
                                               ("bf16", "--grad-reduce-in-bf16"), ("fp16", None)])
def test_megatron_lm_launch_keeps_the_priced_gradient_buffer(grad_dtype, flag):
    """Megatron-LM's gradient buffer is fp32 with --accumulate-allreduce-grads-in-fp32, bf16 with
    --grad-reduce-in-bf16, and the parameters' dtype (fp16 under --fp16) with neither."""
    from cost_model.model_loader import load_model
    from optimizer.emit import emit

    plan = dict(tp=1, pp=1, dp=8, cp=1, ep=1, etp=1, vpp=1, micro_batch=1, recompute="none", recompute_num_layers=-1,
                recompute_modules=0, sequence_parallel=False, zero_stage=1, optimizer_offload=False,
                activation_offload_layers=0)
    training = TrainingSpec(seq_length=2048, global_batch_size=64, precision="fp16", grad_dtype=grad_dtype)
    argv = emit("megatron", plan, load_model("llama3-8b").spec, training, rank_order="tp-cp-ep-pp-dp").argv
    buffer_flags = {"--accumulate-allreduce-grads-in-fp32", "--grad-reduce-in-bf16"} & set(argv)
    assert buffer_flags == ({flag} if flag else set())
