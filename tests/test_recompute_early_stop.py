"""PyTorch's non-reentrant checkpoint stops the recompute at the last saved tensor (torch >= 2.1):
a full-recompute layer under composer-fsdp reruns its forward less the MLP output projection GEMM."""

import numpy as np
import pytest

from cost_model.compute import _Pricer, layer_times
from cost_model.evaluate import evaluate
from cost_model.model_loader import model_from_hf
from cost_model.options import CostOptions
from cost_model.plan import PlanArrays
from cost_model.stacks import stack_spec
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster

H = 5120
MPT13 = model_from_hf({"num_hidden_layers": 40, "hidden_size": H, "num_attention_heads": 40, "intermediate_size": 4 * H,
                       "vocab_size": 50368, "hidden_act": "gelu", "norm_type": "layernorm",
                       "position_embedding_type": "learned", "max_position_embeddings": 2048,
                       "tie_word_embeddings": True, "add_bias_linear": True}, name="mpt-13b-like")


def _training(torch_1_13: bool) -> TrainingSpec:
    return TrainingSpec(seq_length=2048, global_batch_size=128, stack="composer-fsdp", grad_dtype="fp32",
                        optimizer="adamw", torch_1_13=torch_1_13)


def test_the_tail_is_the_mlp_output_projection():
    """The dense layer's forward after its last saved tensor is the fc2 GEMM: 16 x 2048 tokens by
    h x 4h, priced as the pricer prices that shape."""
    cluster = load_cluster("h100x8")
    options = CostOptions()
    training = _training(False)
    plans = PlanArrays.from_records([dict(tp=1, pp=1, dp=8, micro_batch=16, zero_stage=3, recompute="full")])
    dense, moe = layer_times(MPT13, training, plans, cluster.gpu, options)
    fc2_s, fc2_flops = _Pricer(cluster.gpu, training, options).gemm(16 * 2048.0, H, 4 * H)
    assert fc2_flops == pytest.approx(2 * 16 * 2048 * H * 4 * H, rel=1e-12)
    assert dense.forward_after_last_save[0] == pytest.approx(float(np.asarray(fc2_s).ravel()[0]), rel=1e-12)
    assert moe.forward_after_last_save[0] == 0.0


def test_recompute_skips_the_tail_on_torch_2_only():
    """40 layers under full recompute: the recompute part is 40 x (forward - tail) with torch 2.1's early
    stop, 40 x forward on torch 1.13; the fc2 GEMM is a third of the layer's dense GEMM FLOPs (8 of 24 h^2
    per token), so the early stop saves between a fifth and a third of the layer's forward."""
    assert stack_spec("composer-fsdp").recompute_early_stop
    assert not stack_spec("megatron-core").recompute_early_stop
    cluster = load_cluster("h100x8")
    options = CostOptions()
    plans = PlanArrays.from_records([dict(tp=1, pp=1, dp=8, micro_batch=16, zero_stage=3, recompute="full")])
    parts = {}
    for old in (False, True):
        training = _training(old)
        dense, _ = layer_times(MPT13, training, plans, cluster.gpu, options)
        recompute = evaluate(MPT13, training, cluster, plans, options).step_time_parts_s["recompute"][0]
        m = 128 // (8 * 16)
        expected = dense.forward[0] - (0.0 if old else dense.forward_after_last_save[0])
        assert recompute == pytest.approx(m * 40 * expected, rel=1e-9)
        parts[old] = recompute
        share = dense.forward_after_last_save[0] / dense.forward[0]
    assert 0.2 < share < 1 / 3
    assert parts[False] < parts[True]


def test_hardware_flops_leave_out_the_skipped_projection():
    """HFU counts what runs: 40 layers x 2 x 2048 tokens x h x 4h fewer FLOPs per sequence, 128 sequences."""
    cluster = load_cluster("h100x8")
    plans = PlanArrays.from_records([dict(tp=1, pp=1, dp=8, micro_batch=16, zero_stage=3, recompute="full")])
    new, old = (evaluate(MPT13, _training(flag), cluster, plans, CostOptions()) for flag in (False, True))
    assert new.model_flops_per_step == old.model_flops_per_step
    assert old.hardware_flops_per_step[0] - new.hardware_flops_per_step[0] == pytest.approx(
        40 * 2 * 2048 * 4 * H * H * 128, rel=1e-9)
