"""The per-micro-batch gradient accumulation pass of runs without ``gradient_accumulation_fusion``
(cost_model/compute.py ``gradient_accumulation_bytes``), the field's checks, the launches that carry it,
and the published rows that state it.

A one-GPU layout (tp = pp = dp = 1) has no bubble and no data-parallel traffic, so the pass shows whole in
the step and in its ``compute`` part: m micro-batches, each the pass's bytes over the GPU's parameters at
the HBM's streaming rate."""

import numpy as np
import pytest

from cost_model.calibration.training_runs import load_all_rows
from cost_model.calibration.validate import DEFAULT_DATASET, read_runs
from cost_model.compute import gradient_accumulation_bytes
from cost_model.evaluate import evaluate
from cost_model.model_loader import build_training, load_model, model_from_hf
from cost_model.options import CostOptions
from cost_model.params import ParameterCounts
from cost_model.plan import NONE, PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster
from optimizer.emit import emit

CLUSTER = load_cluster("h100x1024")
BW = CLUSTER.gpu.hbm_GBps * 1e9 * CLUSTER.gpu.hbm_efficiency
MODEL = model_from_hf({"model_type": "llama", "num_hidden_layers": 8, "hidden_size": 2048,
                       "intermediate_size": 5504, "num_attention_heads": 16, "vocab_size": 32000,
                       "tie_word_embeddings": False})
P = ParameterCounts(MODEL).total
ONE_GPU = [dict(tp=1, pp=1, dp=1, micro_batch=2)]
M = 8  # global batch 16 / micro-batch 2


def price(training, records=ONE_GPU):
    return evaluate(MODEL, training, CLUSTER, PlanArrays.from_records(records), CostOptions())


def train(**changes):
    base = dict(seq_length=2048, global_batch_size=16, precision="fp16", stack="megatron-lm-2021",
                overlap_grad_reduce=False, overlap_param_gather=False)
    return TrainingSpec(**{**base, **changes})


def test_bytes_per_microbatch_by_buffer():
    fp16 = train(grad_dtype="fp16")
    # AccumulateGrad: 6 bytes a parameter on m - 1 of m micro-batches, nothing at m = 1.
    np.testing.assert_allclose(gradient_accumulation_bytes(fp16, 1000.0, np.array([1, 2, 8])),
                               [0.0, 3000.0, 5250.0])
    # Megatron's hook into an fp32 main_grad every micro-batch: read 2 + 4, write 4.
    assert gradient_accumulation_bytes(train(), 1000.0, 8) == pytest.approx(10000.0)
    # DeepSpeed's BF16_Optimizer: cast (2 + 4) then add (4 + 4 + 4).
    ds = train(stack="megatron-deepspeed", precision="bf16")
    assert gradient_accumulation_bytes(ds, 1000.0, 8) == pytest.approx(18000.0)


def test_fp32_buffer_without_fusion_pays_ten_bytes_every_microbatch():
    fused = price(train(gradient_accumulation_fusion=True))
    unfused = price(train())  # the megatron-lm-2021 stack's default: no fusion (6985e58938)
    assert train().fuses_gradient_accumulation is False
    np.testing.assert_allclose(unfused.step_time_s - fused.step_time_s, [M * 10 * P / BW], rtol=1e-9)
    np.testing.assert_allclose(unfused.step_time_parts_s["compute"] - fused.step_time_parts_s["compute"],
                               [M * 10 * P / BW], rtol=1e-9)
    np.testing.assert_allclose(unfused.step_time_parts_s["optimizer"], fused.step_time_parts_s["optimizer"])


def test_fp16_buffer_pays_six_bytes_from_the_second_microbatch():
    # Against the fused fp32 run, only the compute part moves (the optimizer reads the other buffer).
    fused = price(train(gradient_accumulation_fusion=True))
    fp16 = price(train(grad_dtype="fp16"))
    np.testing.assert_allclose(fp16.step_time_parts_s["compute"] - fused.step_time_parts_s["compute"],
                               [(M - 1) * 6 * P / BW], rtol=1e-9)
    one = [dict(tp=1, pp=1, dp=1, micro_batch=16)]
    np.testing.assert_allclose(price(train(grad_dtype="fp16"), one).step_time_parts_s["compute"],
                               price(train(gradient_accumulation_fusion=True), one).step_time_parts_s["compute"],
                               rtol=1e-12)


def test_deepspeed_bf16_casts_then_adds():
    ds = dict(stack="megatron-deepspeed", precision="bf16", overlap_grad_reduce=False)
    gap = (price(train(**ds)).step_time_s - price(train(**ds, gradient_accumulation_fusion=True)).step_time_s)
    np.testing.assert_allclose(gap, [M * 18 * P / BW], rtol=1e-9)


def test_megatron_core_fuses_by_default_and_pays_when_turned_off():
    core = dict(stack="megatron-core", precision="bf16")
    default, on, off = (price(train(**core)), price(train(**core, gradient_accumulation_fusion=True)),
                        price(train(**core, gradient_accumulation_fusion=False)))
    np.testing.assert_array_equal(default.step_time_s, on.step_time_s)
    np.testing.assert_allclose(off.step_time_s - on.step_time_s, [M * 10 * P / BW], rtol=1e-9)


def test_sharded_gradients_pay_no_pass():
    # ZeRO-2/3 reduce-scatter each micro-batch and accumulate a shard: no pass over a local buffer.
    core = dict(stack="megatron-core", precision="bf16")
    zero2 = [dict(tp=1, pp=1, dp=8, micro_batch=2, zero_stage=2)]
    np.testing.assert_allclose(price(train(**core, global_batch_size=128, gradient_accumulation_fusion=False), zero2)
                               .step_time_s,
                               price(train(**core, global_batch_size=128), zero2).step_time_s, rtol=1e-12)


def test_field_checks():
    with pytest.raises(ValueError, match="gradient_accumulation_fusion is Megatron's"):
        TrainingSpec(stack="torchtitan", gradient_accumulation_fusion=True, overlap_grad_reduce=True)
    with pytest.raises(ValueError, match="needs an fp32 gradient buffer"):
        train(grad_dtype="fp16", gradient_accumulation_fusion=True)
    with pytest.raises(ValueError, match="gradient_accumulation_fusion must be true, false"):
        train(gradient_accumulation_fusion="yes")
    assert TrainingSpec().fuses_gradient_accumulation is True  # megatron-core
    assert train(gradient_accumulation_fusion=True).fuses_gradient_accumulation is True


LLAMA8 = load_model("llama3-8b").spec
PLAN = dict(tp=1, pp=1, dp=8, cp=1, ep=1, etp=1, vpp=1, micro_batch=1, recompute=NONE, recompute_num_layers=-1,
            recompute_modules=1, sequence_parallel=False, zero_stage=1, optimizer_offload=False,
            activation_offload_layers=0)


def _training(**changes):
    return build_training({"seq_length": 4096, "global_batch_size": 64, **changes}, model=LLAMA8)


def test_megatron_lm_launch_turns_fusion_off_as_priced():
    assert "--no-gradient-accumulation-fusion" not in emit("megatron", PLAN, LLAMA8, _training()).argv
    off = emit("megatron", PLAN, LLAMA8, _training(gradient_accumulation_fusion=False))
    assert off.argv.count("--no-gradient-accumulation-fusion") == 1


def test_megatron_bridge_launch_states_fusion():
    def value(training):
        argv = emit("megatron-bridge", PLAN, LLAMA8, training).argv
        return [word for word in argv if word.startswith("model.gradient_accumulation_fusion=")]

    assert value(_training()) == ["model.gradient_accumulation_fusion=true"]
    assert value(_training(gradient_accumulation_fusion=False)) == ["model.gradient_accumulation_fusion=false"]


def test_torchtitan_launch_notes_the_unfused_accumulation():
    note = "torchtitan has no fused weight-gradient accumulation"
    fsdp = dict(PLAN, zero_stage=3)
    assert any(note in d for d in emit("torchtitan", fsdp, LLAMA8, _training()).differences)  # 8 micro-batches
    one = _training(global_batch_size=8)
    assert not any(note in d for d in emit("torchtitan", fsdp, LLAMA8, one).differences)


def test_sc21_rows_accumulate_fp16_and_korthikanti_rows_assume_fusion():
    # examples/sc21/CONFIG.sh @6985e58938: --fp16, no --accumulate-allreduce-grads-in-fp32.
    published = read_runs(DEFAULT_DATASET)
    sc21_t1 = [r for r in published if r["source_group"] == "sc21_t1"]
    assert len(sc21_t1) == 10 and all(r["training"]["grad_dtype"] == "fp16" for r in sc21_t1)
    korthikanti = [r for r in published if r["source_group"] == "korthikanti2022"]
    assert len(korthikanti) == 8 and all(r["training"]["gradient_accumulation_fusion"] is True
                                         and "grad_dtype" not in r["training"] for r in korthikanti)
    rows, _ = load_all_rows()
    table2 = [r for r in rows if r["source_group"] == "sc21_t2"]
    # PTD-P rows (Megatron) and DeepSpeed fp16 ZeRO-3 rows alike.
    stacks = {r["training"]["stack"] for r in table2}
    assert stacks == {"megatron-lm-2021", "deepspeed-zero3"}
    assert all(r["training"]["grad_dtype"] == "fp16" for r in table2)
