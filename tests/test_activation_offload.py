"""Activation offload to host memory (Megatron ``--cpu-offloading --cpu-offloading-num-layers``).

Memory: without pipeline parallelism one micro-batch is in flight; offloading N of L layers keeps the
other L - N layers' activations on the GPU plus the one whose copy is under way. Time: each offloaded
layer's activations cross the host link once in forward and once in backward, beside the compute;
only what the copies take beyond the compute is exposed.
"""

import json

import pytest

from cost_model.activations import layer_activations
from cost_model.evaluate import evaluate
from cost_model.model_loader import load_model
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster
from optimizer.emit import emit
from optimizer.plan_rules import violations
from cost_model.calibration.validate import validate
from tests.test_cli import run as run_cli

LLAMA70 = load_model("llama3-70b").spec
TRAIN = TrainingSpec(seq_length=8192, global_batch_size=128, precision="fp8")
GB200 = load_cluster("gb200x72")


def price(cluster, *offloads, **plan):
    plan = dict(dict(tp=1, pp=1, dp=64, micro_batch=2, zero_stage=3), **plan)
    return evaluate(LLAMA70, TRAIN, cluster, PlanArrays.from_records([dict(plan, activation_offload_layers=n)
                                                                       for n in offloads]))


def test_offloaded_layers_leave_the_gpu():
    m = price(GB200, 0, 40, 79)
    acts = m.memory_parts_bytes["activations"]
    per_layer = layer_activations(LLAMA70, TRAIN, PlanArrays.from_records([dict(tp=1, micro_batch=2)])).dense_full[0]
    # 40 offloaded: 40 + 1 layers stay; 79 offloaded: 1 + 1 stay (the LM head's tensors are untouched)
    assert acts[0] - acts[1] == pytest.approx(39 * per_layer, rel=1e-9)
    assert acts[0] - acts[2] == pytest.approx(78 * per_layer, rel=1e-9)
    assert m.extras["memory_by_stage"].offloaded_bytes[1, 0] == pytest.approx(40 * per_layer, rel=1e-12)
    assert m.memory_bytes[2] < m.memory_bytes[1] < m.memory_bytes[0]


def test_copies_hide_behind_compute_on_a_fast_link_and_show_on_a_slow_one():
    fast = price(GB200, 40)
    assert fast.step_time_parts_s["offload"][0] == 0.0
    slow_cluster = GB200.with_overrides({"gpu.host_link_GBps": 1.0}, source="test")
    slow = price(slow_cluster, 0, 40)
    offloaded = slow.extras["memory_by_stage"].offloaded_bytes[1, 0]
    assert slow.extras["memory_by_stage"].offloaded_bytes[0, 0] == 0
    copy_s = offloaded / 1e9
    m = slow.num_microbatches[1]
    # Both copies take far longer than the compute beside them: exposed = 2 copies - forward - backward.
    compute = slow.step_time_parts_s["compute"][1] / m
    assert slow.step_time_parts_s["offload"][1] == pytest.approx(m * (2 * copy_s - compute), rel=1e-6)
    assert slow.step_time_s[1] > slow.step_time_s[0]


def test_megatron_rules():
    plans = PlanArrays.from_records([
        dict(tp=1, pp=1, activation_offload_layers=40),
        dict(tp=1, pp=2, activation_offload_layers=40),
        dict(tp=1, pp=1, activation_offload_layers=40, recompute="full"),
        dict(tp=1, pp=1, activation_offload_layers=80),
    ])
    broken = violations(LLAMA70, TRAIN, plans, allow_uneven=True)["activation_offload_valid"]
    assert broken.tolist() == [False, True, True, True]


def test_emitters():
    plan = dict(tp=1, pp=1, dp=64, cp=1, ep=1, etp=1, vpp=1, micro_batch=2, recompute=0, recompute_num_layers=-1,
                recompute_modules=1, sequence_parallel=False, zero_stage=3, optimizer_offload=False,
                activation_offload_layers=40)
    assert "--cpu-offloading-num-layers 40" in emit("megatron", plan, LLAMA70, TRAIN).text
    assert "model.cpu_offloading_num_layers=40" in emit("megatron-bridge", plan, LLAMA70, TRAIN).text


def test_published_gb200_70b_run_fits_with_its_offload():
    row = next(r for r in validate() if r.id == "megatron-bridge-25.11-gb200-llama3-70b-fp8")
    assert row.fits and row.predicted_memory_gib > 150  # the recipe fills the GPU
    # Within the leave-one-source-out band of its group (megatron-core, blackwell, dense: about -15..+15%).
    assert abs(row.tflops_error) < 0.15


def test_search_offers_offload_only_when_allowed(capsys):
    args = ("gb200x72", "llama3-70b", "--gpus", "64", "--seq-len", "8192", "--global-batch", "128",
            "--precision", "fp8", "--top", "400", "--format", "json")
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    assert all(p["activation_offload_layers"] == 0 for p in json.loads(out)["plans"])
    code, out, _ = run_cli(capsys, *args, "--allow-offload")
    plans = json.loads(out)["plans"]
    offloaded = [p for p in plans if p["activation_offload_layers"] > 0]
    assert offloaded and all(p["pp"] == 1 and p["recompute"] == "none" for p in offloaded)
    assert {p["activation_offload_layers"] for p in offloaded} <= {40, 79}
