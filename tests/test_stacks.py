"""Software stacks (cost_model/stacks.py): the switches each stack sets and what they change."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cost_model import stacks as stacks_module
from cost_model.evaluate import evaluate
from cost_model.model_loader import build_training, load_model
from cost_model.plan import PlanArrays
from cost_model.stacks import STACK_NAMES, stack_spec, stacks
from hardware.errors import InputError
from hardware.loader import load_cluster


def test_every_named_stack_is_in_the_presets_and_the_reference_is_unscaled():
    assert tuple(stacks()) == STACK_NAMES
    assert stack_spec("megatron-core").kernel_efficiency == 1.0
    for spec in stacks().values():
        assert 0.2 <= spec.kernel_efficiency <= 1.5 and spec.sources


def test_settings_a_run_leaves_out_take_the_stack_s():
    titan = build_training({"stack": "torchtitan"})
    assert (titan.flash_attention, titan.fused_cross_entropy, titan.overlap_grad_reduce) == (True, False, True)
    old = build_training({"stack": "megatron-lm-2021"})
    assert (old.flash_attention, old.overlap_grad_reduce) == (False, False)
    # What the run states wins over the stack's default.
    assert build_training({"stack": "megatron-lm-2021", "flash_attention": True}).flash_attention is True


def test_unknown_stack_and_impossible_overlap_are_one_line_errors():
    with pytest.raises(InputError, match=r"training\.stack: stack must be one of megatron-core, .*'foo'"):
        build_training({"stack": "foo"})
    with pytest.raises(InputError, match=r"training\.tp_comm_overlap: .*megatron-lm-2021 stack cannot overlap"):
        build_training({"stack": "megatron-lm-2021", "tp_comm_overlap": True})
    with pytest.raises(InputError, match=r"training\.tp_backward_overlap: .*torchtitan stack runs its tensor-parallel"):
        build_training({"stack": "torchtitan", "tp_backward_overlap": True})
    assert build_training({"stack": "megatron-lm-2021", "tp_backward_overlap": True}).tp_backward_overlap is True


def test_kernel_efficiency_scales_gemm_time(monkeypatch):
    """A stack at half the reference kernel efficiency doubles the compute of a compute-bound layer
    and leaves communication alone."""
    model = load_model("llama3-8b").spec
    cluster = load_cluster("h100x8")
    plans = PlanArrays.from_records([{"tp": 1, "pp": 1, "dp": 8, "micro_batch": 2, "recompute": "none",
                                      "zero_stage": 1}])
    training = build_training({"seq_length": 8192, "global_batch_size": 64})
    base = evaluate(model, training, cluster, plans)
    halved = {**stacks(), "megatron-core": dataclasses.replace(stack_spec("megatron-core"), kernel_efficiency=0.5)}
    monkeypatch.setattr(stacks_module, "stacks", lambda: halved)
    slow = evaluate(model, training, cluster, plans)
    ratio = slow.step_time_parts_s["compute"][0] / base.step_time_parts_s["compute"][0]
    # GEMMs and attention take twice as long; memory-bound element-wise work does not change.
    assert 1.75 < ratio < 2.0
    np.testing.assert_allclose(slow.step_time_parts_s["dp_comm"], base.step_time_parts_s["dp_comm"])


def test_stack_flag_prices_the_stack_and_the_header_names_it(capsys):
    from tests.test_cli import run

    code, out, _ = run(capsys, "evaluate", "h100x8", "llama3-8b", "--stack", "megatron-lm-2021", "--tp", "8", "--seq-len", "2048",
                       "--global-batch", "64", "--recompute", "full")
    assert code == 0 and "bf16, megatron-lm-2021 |" in out
    code, _, err = run(capsys, "evaluate", "h100x8", "llama3-8b", "--stack", "titan")
    assert code == 2 and "--stack: stack must be one of megatron-core" in err
