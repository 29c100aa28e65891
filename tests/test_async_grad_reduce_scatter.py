"""Llama 3's asynchronous ZeRO-2 gradient reduce-scatter (``training.async_grad_reduce_scatter``) and the
Llama 3 Table 4 rows (Dubey et al. 2024, arXiv:2407.21783, section 3.3.2).

Under ZeRO-2 the weights stay gathered, so the forward has no data-parallel traffic; an asynchronous
reduce-scatter of one micro-batch's gradients runs beside its backward and the next micro-batch's forward.
Per micro-batch the exposed time is max(0, RS - B - F) instead of max(0, RS - B); the last micro-batch's
reduce-scatter has only its backward, so a step exposes (m - 1) max(0, RS - B - F) + max(0, RS - B)
instead of m max(0, RS - B)."""

import dataclasses

import numpy as np
import pytest

import cost_model.evaluate as evaluate_module
from cost_model.calibration.validate import DEFAULT_DATASET, prepare_row, read_runs
from cost_model.compute import layer_times, lm_head_times
from cost_model.evaluate import evaluate
from cost_model.flops import model_flops_per_step
from cost_model.memory import padded_vocab
from cost_model.model_loader import load_model
from cost_model.options import CostOptions
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster

LLAMA_8B = load_model("llama3-8b").spec
M = 4  # micro-batches: global batch 32 over dp 8 at micro-batch 1


def _training(async_rs: bool) -> TrainingSpec:
    return TrainingSpec(seq_length=4096, global_batch_size=32, async_grad_reduce_scatter=async_rs)


def _priced(monkeypatch, async_rs: bool, zero_stage: int, reduce_scatter_s: float | None):
    """One pp = 1 plan on 8 H100s; the per-micro-batch reduce-scatter forced to ``reduce_scatter_s``
    (None: as priced), so that the exposure rule is checked against chosen traffic."""
    real = evaluate_module.data_parallel_communication

    def forced(*args, **kwargs):
        dp = real(*args, **kwargs)
        if reduce_scatter_s is None:
            return dp
        return dataclasses.replace(dp, per_microbatch_bwd_s=np.full_like(dp.per_microbatch_bwd_s, reduce_scatter_s))

    monkeypatch.setattr(evaluate_module, "data_parallel_communication", forced)
    plans = PlanArrays.from_records([dict(tp=1, pp=1, dp=8, micro_batch=1, zero_stage=zero_stage, recompute="none")])
    return evaluate(LLAMA_8B, _training(async_rs), load_cluster("h100x8"), plans, CostOptions()), plans


def _forward_backward_s(plans: PlanArrays) -> tuple[float, float]:
    """Forward and backward seconds of one micro-batch on the one stage: 32 layers plus the LM head,
    as evaluate adds them."""
    training, options, gpu = _training(False), CostOptions(), load_cluster("h100x8").gpu
    dense, _ = layer_times(LLAMA_8B, training, plans, gpu, options)
    head_f, head_b, _ = lm_head_times(LLAMA_8B, training, plans, gpu, options,
                                      padded_vocab(LLAMA_8B, plans, options).astype(float))
    return (32 * dense.forward[0] + head_f[0]), (32 * dense.backward[0] + head_b[0])


def test_forward_and_backward_are_what_the_step_computes(monkeypatch):
    metrics, plans = _priced(monkeypatch, False, 2, None)
    forward_s, backward_s = _forward_backward_s(plans)
    parts = metrics.step_time_parts_s
    assert metrics.num_microbatches[0] == M
    assert parts["compute"][0] + parts["host_issue"][0] == pytest.approx(M * (forward_s + backward_s), rel=1e-9)


@pytest.mark.parametrize("between", [0.25, 0.5, 0.75])
def test_a_reduce_scatter_shorter_than_the_micro_batch_hides_but_for_the_last(monkeypatch, between):
    """RS = B + between x F: stock FSDP exposes M x between x F; the asynchronous one only the last
    micro-batch's between x F."""
    _, plans = _priced(monkeypatch, False, 2, None)
    forward_s, backward_s = _forward_backward_s(plans)
    rs = backward_s + between * forward_s
    stock, _ = _priced(monkeypatch, False, 2, rs)
    asynchronous, _ = _priced(monkeypatch, True, 2, rs)
    weights_s = stock.step_time_parts_s["dp_comm"][0] - M * between * forward_s  # the once-a-step weight gather
    assert weights_s == pytest.approx(asynchronous.step_time_parts_s["dp_comm"][0] - between * forward_s, rel=1e-9)
    assert 0.0 <= weights_s < 0.1 * forward_s


def test_a_reduce_scatter_longer_than_the_micro_batch_saves_the_forwards_it_runs_beside(monkeypatch):
    """RS = B + 2F: stock exposes M x 2F, asynchronous (M - 1) x F + 2F: (M - 1) F less."""
    _, plans = _priced(monkeypatch, False, 2, None)
    forward_s, backward_s = _forward_backward_s(plans)
    rs = backward_s + 2 * forward_s
    stock, _ = _priced(monkeypatch, False, 2, rs)
    asynchronous, _ = _priced(monkeypatch, True, 2, rs)
    saved = stock.step_time_parts_s["dp_comm"][0] - asynchronous.step_time_parts_s["dp_comm"][0]
    assert saved == pytest.approx((M - 1) * forward_s, rel=1e-9)


@pytest.mark.parametrize("zero_stage", [0, 1, 3])
def test_only_zero2_changes(monkeypatch, zero_stage):
    """ZeRO-0/1 reduce once a step; ZeRO-3's forward gathers weights of its own: the field leaves them."""
    stock, _ = _priced(monkeypatch, False, zero_stage, None)
    asynchronous, _ = _priced(monkeypatch, True, zero_stage, None)
    assert asynchronous.step_time_s[0] == stock.step_time_s[0]


LLAMA3_ROWS = {r["id"]: r for r in read_runs(DEFAULT_DATASET) if r.get("source_group") == "llama3_herd"}


@pytest.mark.parametrize("row_id, batch_per_dp, gpus", [
    ("llama3-2024-t4-405b-8192gpu-8k", 32, 8192),
    ("llama3-2024-t4-405b-16384gpu-8k", 16, 16384),
    ("llama3-2024-t4-405b-16384gpu-128k", 16, 16384),
])
def test_table4_rows_multiply_out(row_id, batch_per_dp, gpus):
    """Table 4: TP x CP x PP x DP = GPUs and DP x batch/DP x sequence = 16M (16,777,216) tokens a batch
    (the 128K row prints DP 4, which makes 8,192 GPUs and 8.4M tokens; DP 8 satisfies both cells)."""
    row = LLAMA3_ROWS[row_id]
    plan, training = row["plan"], row["training"]
    assert plan["tp"] * plan["cp"] * plan["pp"] * plan["dp"] == gpus == row["cluster"]["num_gpus"]
    assert training["global_batch_size"] // plan["dp"] == batch_per_dp
    assert training["global_batch_size"] * training["seq_length"] == 16_777_216
    # section 3.3.2: FSDP shards optimizer states and gradients, not the weights after forward
    assert plan["zero_stage"] == 2 and training["async_grad_reduce_scatter"]
    assert row["measured"]["attention_flops"] == "full"


def test_table4_flops_count_palm_attention():
    """MFU as PaLM counts it (appendix B: 6N + 12 L H Q T per token): the full s x s attention is
    12 x 126 x 16384 x 8192 = 202,937,204,736 FLOPs a token at 8K, twice the causal half the model
    counts by default; over a 16,777,216-token batch the difference is half of that, 1.7024e18."""
    prepared = prepare_row(LLAMA3_ROWS["llama3-2024-t4-405b-8192gpu-8k"], "test")
    full = model_flops_per_step(prepared.model, prepared.training, causal_attention_half=False)
    causal = model_flops_per_step(prepared.model, prepared.training, causal_attention_half=True)
    per_token = 12 * 126 * 16384 * 8192
    assert per_token == 202_937_204_736
    assert full - causal == pytest.approx(per_token / 2 * 16_777_216, rel=1e-12)
    assert not prepared.options.mfu_attention_causal


@pytest.mark.parametrize("framework, runner", [("torchtitan", "FSDP2"), ("megatron", "Megatron FSDP"),
                                               ("megatron-bridge", "Megatron FSDP")])
def test_a_launch_says_its_framework_waits_for_the_reduce_scatter(framework, runner):
    """No framework plan-search emits for runs Llama 3's asynchronous reduce-scatter: a ZeRO-2 plan priced
    with it says so; ZeRO-1, or the field off, says nothing."""
    from optimizer.emit import emit

    plan = dict(tp=1, pp=1, dp=8, cp=1, ep=1, etp=1, vpp=1, micro_batch=1, recompute="none", recompute_num_layers=-1,
                recompute_modules=0, sequence_parallel=False, zero_stage=2, optimizer_offload=False,
                activation_offload_layers=0)
    for async_rs, zero_stage, said in ((True, 2, True), (False, 2, False), (True, 1, False)):
        training = TrainingSpec(seq_length=4096, global_batch_size=64, async_grad_reduce_scatter=async_rs)
        emission = emit(framework, dict(plan, zero_stage=zero_stage), LLAMA_8B, training,
                        rank_order="tp-cp-ep-pp-dp")
        notes = [d for d in emission.differences if "async_grad_reduce_scatter" in d]
        assert bool(notes) == said, (framework, async_rs, zero_stage, emission.differences)
        assert all(n.startswith(runner) for n in notes)
