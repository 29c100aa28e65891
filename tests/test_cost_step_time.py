"""Step time: its decomposition, the pipeline bubble, and sanity properties over realistic plans.

Only relations and formulas are asserted here, not absolute seconds (those depend on the hardware
presets' efficiencies, which are calibrated elsewhere).
"""

import dataclasses
import itertools

import numpy as np
import pytest

from cost_model.evaluate import TIME_PARTS, evaluate
from cost_model.model_loader import load_model, model_from_hf
from cost_model.options import CostOptions
from cost_model.params import ParameterCounts
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster

CLUSTER = load_cluster("h100x1024")
LLAMA70 = load_model("llama3-70b").spec
TRAIN = TrainingSpec(seq_length=8192, global_batch_size=512)


def run(model, training, records, cluster=CLUSTER, **options):
    return evaluate(model, training, cluster, PlanArrays.from_records(records), CostOptions(**options))


GRID = [dict(tp=t, pp=p, dp=d, vpp=v, micro_batch=1, sequence_parallel=t > 1, recompute=r, zero_stage=z)
        for t, p, d, v, r, z in itertools.product([1, 2, 8], [1, 4, 8], [4, 16], [1, 2],
                                                  ["none", "selective", "full"], [0, 1, 3])
        if not (p == 1 and v > 1)]


def test_parts_add_up_to_step_time():
    m = run(LLAMA70, TRAIN, GRID)
    total = sum(m.step_time_parts_s[part] for part in TIME_PARTS)
    np.testing.assert_allclose(total, m.step_time_s, rtol=1e-12)
    assert np.all(m.step_time_s > 0) and np.all(np.isfinite(m.step_time_s))
    for part in TIME_PARTS:
        assert np.all(m.step_time_parts_s[part] >= 0), part


def test_bubble_fraction_is_narayanan_formula():
    # Bubble = (p - 1) / v micro-batch times (Narayanan et al. 2021, section 2.2), those of the ranks the
    # fill and drain pass through: all but the bottleneck (the first rank, p - 2 middle ranks, the last).
    m = run(LLAMA70, TRAIN, GRID)
    plans = m.plans
    p, v = plans.pp.astype(float), plans.vpp.astype(float)
    by_stage = m.extras["step_time_by_stage"]
    counts = np.stack([np.ones_like(p), np.maximum(p - 2, 0), (p >= 2).astype(float)], axis=1)
    finite = np.where(np.isfinite(by_stage), by_stage, 0.0)
    others = ((finite * counts).sum(axis=1) - by_stage.max(axis=1)) / np.maximum(p - 1, 1)
    piped = p > 1
    np.testing.assert_allclose(m.step_time_parts_s["pp_bubble"][piped], ((p - 1) * others / v)[piped], rtol=1e-12)
    np.testing.assert_array_equal(m.step_time_parts_s["pp_bubble"][p == 1], 0.0)
    # The bottleneck (the last rank, with the LM head) is the heaviest: never more than (p - 1) T / v.
    busy = sum(m.step_time_parts_s[part] for part in ("compute", "recompute", "tp_comm", "cp_comm", "ep_comm"))
    zero3 = plans.zero_stage >= 2
    ok = piped & ~zero3
    assert np.all(m.step_time_parts_s["pp_bubble"][ok] / busy[ok] <= ((p - 1) / (v * m.num_microbatches))[ok] * (1 + 1e-12))


@pytest.mark.parametrize("plan", [dict(tp=8, pp=8, dp=4), dict(tp=8, pp=8, dp=4, vpp=2),
                                  dict(tp=4, pp=4, dp=8, recompute="full")])
def test_more_microbatches_shrink_the_bubble_fraction(plan):
    sizes = [64, 128, 256, 512, 1024, 2048]
    fractions = []
    for gbs in sizes:
        m = run(LLAMA70, dataclasses.replace(TRAIN, global_batch_size=gbs), [plan])
        fractions.append(m.step_time_parts_s["pp_bubble"][0] / m.step_time_s[0])
    assert np.all(np.diff(fractions) < 0), fractions


def test_tp_across_nodes_is_slower():
    # Rank order with dp innermost puts the 8 TP ranks on 8 different nodes (stride dp = 8).
    plans = [dict(tp=8, pp=1, dp=8, sequence_parallel=True), dict(tp=8, pp=4, dp=8, sequence_parallel=True),
             dict(tp=4, pp=2, dp=16, sequence_parallel=True)]
    inside = run(LLAMA70, TRAIN, plans)
    across = run(LLAMA70, TRAIN, plans, rank_order="dp-tp-cp-ep-pp")
    assert np.all(across.step_time_parts_s["tp_comm"] > 2 * inside.step_time_parts_s["tp_comm"])
    assert np.all(across.step_time_s > inside.step_time_s)
    # The bytes are the same; only the links differ.
    np.testing.assert_allclose(across.comm_bytes_per_step["tp"], inside.comm_bytes_per_step["tp"])


def test_tp_across_nodes_with_small_scaleup_domain():
    # A cluster whose NVLink domain is 4 GPUs: tp = 8 must cross the network, tp = 4 need not.
    small = CLUSTER.with_overrides({"topology.gpus_per_node": 4, "topology.scaleup_domain_gpus": 4,
                                    "topology.num_nodes": 256, "topology.nics_per_node": 4})
    plans = [dict(tp=8, pp=4, dp=8, sequence_parallel=True)]
    assert run(LLAMA70, TRAIN, plans, cluster=small).step_time_s[0] > run(LLAMA70, TRAIN, plans).step_time_s[0]


def test_tp_comm_overlap_never_hurts():
    plans = [p for p in GRID if p["tp"] > 1]
    plain = run(LLAMA70, TRAIN, plans)
    overlapped = run(LLAMA70, dataclasses.replace(TRAIN, tp_comm_overlap=True), plans)
    assert np.all(overlapped.step_time_s <= plain.step_time_s)
    assert np.all(overlapped.step_time_parts_s["tp_comm"] < plain.step_time_parts_s["tp_comm"])


@pytest.mark.parametrize("base", [dict(tp=8, pp=4), dict(tp=8, pp=1), dict(tp=4, pp=8, vpp=2),
                                  dict(tp=8, pp=8, recompute="full")])
@pytest.mark.parametrize("zero", [0, 1])
def test_more_data_parallel_gpus_never_reduce_throughput(base, zero):
    # Fixed global batch: doubling dp halves the micro-batches per replica (bigger bubble share) but
    # halves each GPU's work; total tokens/s must not drop.
    dps = [1, 2, 4, 8, 16, 32]
    if base["pp"] * base.get("vpp", 1) > 1:
        dps = [d for d in dps if (512 // d) % base["pp"] == 0]
    m = run(LLAMA70, TRAIN, [dict(base, dp=d, zero_stage=zero if d > 1 else 0) for d in dps])
    assert np.all(np.diff(m.tokens_per_s) > 0), list(zip(dps, m.tokens_per_s))


def test_optimizer_step_is_memory_bound_adam():
    # Over the rank's shard: Adam reads/writes fp32 master, m, v, reads the fp32 gradient and writes bf16
    # weights (30 bytes per parameter), and the gradient norm reads the gradient again (4); the gradient
    # buffer is zeroed for the next step (4 per parameter of the whole buffer: with the ZeRO-1
    # distributed optimizer the buffer stays full size). fp16's loss scale unscales the gradient in place
    # (a read and a write, 8 more per shard parameter). All at the achievable HBM bandwidth.
    model = model_from_hf({"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
                           "intermediate_size": 11008, "num_attention_heads": 32, "vocab_size": 32000,
                           "tie_word_embeddings": False})
    P = ParameterCounts(model).total
    gpu = CLUSTER.gpu
    layouts = [dict(tp=1, dp=1), dict(tp=1, dp=8, zero_stage=1), dict(tp=1, dp=8, zero_stage=2)]
    m = run(model, TrainingSpec(seq_length=4096, global_batch_size=64), layouts)
    bw = gpu.hbm_GBps * 1e9 * gpu.hbm_efficiency
    np.testing.assert_allclose(m.step_time_parts_s["optimizer"],
                               [(34 + 4) * P / bw, (34 / 8 + 4) * P / bw, (34 + 4) * P / 8 / bw], rtol=1e-12)
    fp16 = run(model, TrainingSpec(seq_length=4096, global_batch_size=64, precision="fp16"), layouts[:1])
    np.testing.assert_allclose(fp16.step_time_parts_s["optimizer"], [(42 + 4) * P / bw], rtol=1e-12)


def test_megatron_2021_float16_optimizer_copies_the_gradient_and_the_weights_apart():
    # Megatron-LM's Float16OptimizerWithFloat16Params (megatron/optimizer/optimizer.py @6985e58938 and
    # @d898a8991d): the unscale, the norm and FusedAdam read 4-byte gradients, and multi_tensor_scale
    # writes the fp16 weight from the fp32 master after Adam (read 4, write 2) instead of Adam writing it:
    # 12 x 2 + 4 (Adam's gradient) + 6 (the copy) + 4 (norm) + 8 (unscale) = 46 per parameter, plus the
    # zeroed fp32 buffer (4): 50, 4 more than the fused update's 46. From a 16-bit buffer (Megatron-LM's
    # --fp16 default) the .float() cast adds a read of 2 and a write of 4, and zeroing the buffer costs 2:
    # 46 + 6 + 2 = 54.
    model = model_from_hf({"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
                           "intermediate_size": 11008, "num_attention_heads": 32, "vocab_size": 32000,
                           "tie_word_embeddings": False})
    P = ParameterCounts(model).total
    bw = CLUSTER.gpu.hbm_GBps * 1e9 * CLUSTER.gpu.hbm_efficiency
    layout = [dict(tp=1, dp=1)]
    train = TrainingSpec(seq_length=4096, global_batch_size=64, precision="fp16", stack="megatron-lm-2021",
                         overlap_grad_reduce=False, overlap_param_gather=False)
    m = run(model, train, layout)
    np.testing.assert_allclose(m.step_time_parts_s["optimizer"], [50 * P / bw], rtol=1e-12)
    m16 = run(model, dataclasses.replace(train, grad_dtype="bf16"), layout)
    np.testing.assert_allclose(m16.step_time_parts_s["optimizer"], [54 * P / bw], rtol=1e-12)
    # bf16 runs keep fp32 main gradients and no loss scale: 12 x 2 + 4 + 6 + 4 + zeroing 4 = 42.
    bf16 = run(model, dataclasses.replace(train, precision="bf16"), layout)
    np.testing.assert_allclose(bf16.step_time_parts_s["optimizer"], [42 * P / bw], rtol=1e-12)


def test_compute_time_is_not_faster_than_peak():
    # Model FLOPs of the bottleneck stage's work can never run faster than the dense peak.
    m = run(LLAMA70, TRAIN, GRID)
    assert np.all(m.mfu < 1.0) and np.all(m.hfu < 1.0) and np.all(m.mfu > 0)
    assert np.all(m.hfu >= m.mfu)


def test_more_gpus_in_tp_reduce_compute_per_gpu():
    m = run(LLAMA70, TRAIN, [dict(tp=t, pp=8, dp=4, sequence_parallel=t > 1) for t in (1, 2, 4, 8)])
    assert np.all(np.diff(m.step_time_parts_s["compute"]) < 0)


def test_time_to_train_and_gpu_hours():
    training = dataclasses.replace(TRAIN, train_tokens=1e12)
    m = run(LLAMA70, training, [dict(tp=8, pp=4, dp=32, sequence_parallel=True)])
    assert m.time_to_train_s[0] == pytest.approx(1e12 / m.tokens_per_s[0], rel=1e-12)
    assert m.gpu_hours[0] == pytest.approx(m.time_to_train_s[0] * 1024 / 3600, rel=1e-12)
    frame = m.to_frame()
    assert frame["time_to_train_days"][0] == pytest.approx(m.time_to_train_s[0] / 86400)
    assert frame["tokens_per_s_per_gpu"][0] == pytest.approx(m.tokens_per_s[0] / 1024)


@pytest.mark.parametrize("sp", [False, True])
def test_tp_backward_overlap_hides_the_asynchronous_backward_collectives(sp):
    # Megatron's asynchronous backward (Korthikanti et al. 2022 section 6.2): each column-parallel input
    # gradient's all-reduce (with SP: its reduce-scatter and the all-gather of the saved input) runs beside
    # the weight-gradient GEMM. Those take what the forward's collectives take (one all-reduce, or one
    # all-gather + reduce-scatter, per pair), so the exposed TP time drops by exactly the forward's:
    # without SP, half of it; with SP the row-parallel output gradients' all-gathers stay exposed.
    # The 2021 Megatron-LM stack waits for them unless the run says otherwise; Megatron-Core with
    # Transformer Engine always overlaps them (StackSpec.tp_backward_overlap).
    from cost_model.communication import CommPricer, layer_communication, place
    plans = [dict(tp=8, pp=1, dp=64, micro_batch=1, sequence_parallel=sp)]
    train = dataclasses.replace(TRAIN, stack="megatron-lm-2021", overlap_grad_reduce=False, overlap_param_gather=False)
    plain = run(LLAMA70, train, plans)
    overlapped = run(LLAMA70, dataclasses.replace(train, tp_backward_overlap=True), plans)
    core = run(LLAMA70, TRAIN, plans)
    np.testing.assert_allclose(core.step_time_parts_s["tp_comm"], overlapped.step_time_parts_s["tp_comm"], rtol=1e-9)
    arrays, options = PlanArrays.from_records(plans), CostOptions()
    dense, _ = layer_communication(LLAMA70, train, arrays, CommPricer(CLUSTER, place(CLUSTER, arrays, options)), options)
    microbatches = TRAIN.global_batch_size / 64
    forward_collectives = microbatches * LLAMA70.num_layers * dense.tp_fwd_s[0]
    np.testing.assert_allclose(plain.step_time_parts_s["tp_comm"] - overlapped.step_time_parts_s["tp_comm"],
                               forward_collectives, rtol=1e-9)
    if not sp:
        np.testing.assert_allclose(overlapped.step_time_parts_s["tp_comm"], 0.5 * plain.step_time_parts_s["tp_comm"],
                                   rtol=1e-9)
    assert overlapped.step_time_s[0] < plain.step_time_s[0]
