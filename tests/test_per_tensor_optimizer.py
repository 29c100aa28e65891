"""Composer's DecoupledAdamW over FSDP1 shards, tensor by tensor (cost_model.per_tensor_optimizer).

Hand-derived from the kernels of composer/optim/decoupled_weight_decay.py and FSDP1's equal chunks of
each wrapped layer's flat parameter."""

import dataclasses

import numpy as np
import pytest

from cost_model.communication import parameter_tensors_per_layer
from cost_model.evaluate import evaluate
from cost_model.model_loader import model_from_hf
from cost_model.options import CostOptions
from cost_model.params import ParameterCounts
from cost_model.per_tensor_optimizer import (BYTES_PER_PARAMETER, KERNELS_PER_TENSOR, STEP_COUNTER_CALLS,
                                             layer_tensor_sizes, optimizer_step_s, rank_step_s, root_tensor_sizes,
                                             shard_pieces)
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster

H = 1024
MPT = model_from_hf({"num_hidden_layers": 4, "hidden_size": H, "num_attention_heads": 8, "intermediate_size": 4 * H,
                     "vocab_size": 50368, "hidden_act": "gelu", "norm_type": "layernorm",
                     "position_embedding_type": "learned", "max_position_embeddings": 2048,
                     "tie_word_embeddings": True, "add_bias_linear": True}, name="mpt-like")


def test_kernel_inventory():
    """Per parameter: exp_avg mul_ (4+4), add_ grad (8+4), exp_avg_sq mul_ (4+4), addcmul_ grad grad (12+4),
    sqrt (4+4), divide (4+4), add_ eps (4+4), param addcdiv_ (12+4), clip norm (4), clip mul_ (4+4) = 96 bytes;
    8 + 2 kernels, and Composer >= 0.15's step increment and its read-back."""
    assert BYTES_PER_PARAMETER == 8 + 12 + 8 + 16 + 8 + 8 + 8 + 16 + 4 + 8
    assert KERNELS_PER_TENSOR == 10 and STEP_COUNTER_CALLS == 2


def test_mpt_block_tensors_in_registration_order():
    """MPT block: norm_1 (w, b), Wqkv (w, b), out_proj (w, b), norm_2 (w, b), up_proj (w, b), down_proj (w, b);
    they add up to the layer's parameter count, one tensor each as the per-tensor collectives count them."""
    sizes = layer_tensor_sizes(MPT)
    assert sizes.tolist() == [H, H, 3 * H * H, 3 * H, H * H, H, H, H, 4 * H * H, 4 * H, 4 * H * H, H]
    assert len(sizes) == parameter_tensors_per_layer(MPT)
    assert sizes.sum() == ParameterCounts(MPT).dense_layer
    # root unit: tied token embedding, learned positions, final LayerNorm
    assert root_tensor_sizes(MPT).tolist() == [50368 * H, 2048 * H, H, H]


def test_shard_pieces_by_hand():
    """Tensors of 2, 10 and 4 elements over 4 ranks: chunks of 4 -> rank 0 holds 2 of the first and 2 of the
    second, ranks 1 and 2 the second's middle, rank 3 the last; 15 elements are padded to 16."""
    assert shard_pieces(np.array([2.0, 10.0, 4.0]), 4).tolist() == [[2, 2, 0], [0, 4, 0], [0, 4, 0], [0, 0, 4]]
    assert shard_pieces(np.array([2.0, 9.0, 4.0]), 4).tolist() == [[2, 2, 0], [0, 4, 0], [0, 3, 1], [0, 0, 3]]


def test_rank_step_by_hand():
    """HBM at 96 B/s makes a piece of p elements take p seconds; a host call 0.25 s.
    Module parameters with the read-back: each held tensor takes max(12 x 0.25 = 3 s, p):
    rank 0 max(3, 2) + max(3, 2) = 6, ranks 1-3 max(3, 4) = 4.
    Flat shards: one tensor, max(10 x 0.25 = 2.5 s, 4 s) = 4 s on every rank."""
    sizes = np.array([2.0, 10.0, 4.0])
    assert rank_step_s(sizes, 4, False, 0.25, 96.0).tolist() == [6.0, 4.0, 4.0, 4.0]
    assert rank_step_s(sizes, 4, True, 0.25, 96.0).tolist() == [4.0, 4.0, 4.0, 4.0]
    # one rank: 3 tensors; 16 elements in one flat tensor
    assert rank_step_s(sizes, 1, False, 0.25, 96.0).tolist() == [3.0 + 10.0 + 4.0]
    assert rank_step_s(sizes, 1, True, 0.25, 96.0).tolist() == [16.0]


def test_step_is_the_slowest_rank_over_layers_and_root():
    """Per rank: layers x its layer time + its root time; the step is the slowest rank's. Stage 0 holds the
    root; a stage without layers costs nothing."""
    call_s, hbm = 20e-6, 3000e9
    layer = rank_step_s(layer_tensor_sizes(MPT), 8, False, call_s, hbm)
    root = rank_step_s(root_tensor_sizes(MPT), 8, False, call_s, hbm)
    got = optimizer_step_s(MPT, np.array([8]), np.array([[4.0, 0.0, 0.0]]), np.array([[True, False, False]]),
                           False, call_s, hbm)
    assert got[0, 0] == pytest.approx(float((4 * layer + root).max()), rel=1e-12)
    assert got[0, 1] == 0.0 and got[0, 2] == 0.0


def test_composer_step_prices_the_loop_in_place_of_a_fused_pass():
    """8 H100, ZeRO-3 over 8 ranks, one micro-batch: composer-fsdp's optimizer part is the per-tensor step at
    the options' host call time and the GPU's streaming rate; with flat shards (torch 1.13) it is the longer of
    the issue and the HBM time per unit, and 96 bytes a parameter is more than a fused Adam's 38."""
    cluster = load_cluster("h100x8")
    gpu = cluster.gpu
    options = CostOptions()
    plans = PlanArrays.from_records([dict(tp=1, pp=1, dp=8, micro_batch=2, zero_stage=3)])
    hbm = gpu.hbm_GBps * 1e9 * gpu.hbm_efficiency
    call_s = options.host_kernel_issue_us * 1e-6
    for flat in (False, True):
        training = TrainingSpec(seq_length=2048, global_batch_size=16, stack="composer-fsdp", grad_dtype="fp32",
                                optimizer="adamw", torch_1_13=flat)
        metrics = evaluate(MPT, training, cluster, plans, options)
        layer = rank_step_s(layer_tensor_sizes(MPT), 8, flat, call_s, hbm)
        root = rank_step_s(root_tensor_sizes(MPT), 8, flat, call_s, hbm)
        assert metrics.step_time_parts_s["optimizer"][0] == pytest.approx(float((4 * layer + root).max()), rel=1e-9)
    fused = evaluate(MPT, dataclasses.replace(training, stack="torchtitan", torch_1_13=False), cluster,
                     plans, options).step_time_parts_s["optimizer"][0]
    local = ParameterCounts(MPT).total / 8
    assert fused == pytest.approx(local * 38 / hbm, rel=0.05)


def test_flat_shards_need_the_per_tensor_stack():
    with pytest.raises(ValueError, match="torch_1_13"):
        TrainingSpec(seq_length=2048, global_batch_size=16, torch_1_13=True)
