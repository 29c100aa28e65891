"""DeepSpeed ZeRO-3 (v0.3.13-v0.4.0): which tensors it gathers and how many gradient all-reduces a layer takes.

Hand-derived from ``deepspeed/runtime/zero/stage3.py`` and ``constants.py`` at tag v0.3.16: tensors of at
most 100,000 elements persist (never gathered); the gradient hook flushes its bucket when the next
gradient would take it past 5 x 10^8 elements.
"""

import numpy as np
import pytest

from cost_model.deepspeed_zero3 import (gather_passes, gather_plan, gathered_tensors, gradient_buckets_per_layer,
                                       layer_parameter_tensors, memory_pass_bytes)
from cost_model.model_loader import load_model, model_from_hf
from cost_model.params import ParameterCounts


def _gpt(hidden: int, layers: int = 4):
    return model_from_hf({"num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": 32,
                          "intermediate_size": 4 * hidden, "vocab_size": 51200, "hidden_act": "gelu",
                          "norm_type": "layernorm", "position_embedding_type": "learned",
                          "max_position_embeddings": 2048, "tie_word_embeddings": True, "add_bias_linear": True})


@pytest.mark.parametrize("model", [_gpt(12288), _gpt(20480), load_model("llama3-8b").spec])
def test_layer_tensors_add_up_to_the_layer(model):
    tensors = layer_parameter_tensors(model, np.array([1]))
    assert tensors[:, 0].sum() == ParameterCounts(model).dense_layer


def test_only_tensors_above_the_persistence_threshold_are_gathered():
    # GPT-3 175B (h 12,288): norms h, biases 3h = 36,864 and 4h = 49,152 elements persist; the QKV,
    # output, fc1 and fc2 weights are gathered.
    tensors = layer_parameter_tensors(_gpt(12288), np.array([1, 8]))
    np.testing.assert_array_equal(np.flatnonzero(gathered_tensors(tensors)[:, 0]), [1, 3, 6, 8])
    # h 32,768: fc1's bias, 4h = 131,072 elements, is past the threshold; QKV's, 3h = 98,304, is not.
    wide = layer_parameter_tensors(_gpt(32768), np.array([1]))
    np.testing.assert_array_equal(np.flatnonzero(gathered_tensors(wide)[:, 0]), [1, 3, 6, 7, 8])
    # tensor parallelism splits the matrices and the QKV / fc1 biases, not the norms or the row biases
    np.testing.assert_allclose(tensors[:, 1] * [1, 8, 8, 8, 1, 1, 8, 8, 8, 1], tensors[:, 0])


def test_gradient_buckets_per_layer_by_hand():
    """Backward order fc2 bias, fc2, fc1 bias, fc1, norm 2, output bias and weight, QKV bias and weight,
    norm 1; flush when the next gradient would pass 5e8 elements.

    GPT-3 175B: fc2 (6.04e8) flushes the norm-1 / fc2-bias bucket, fc1's bias flushes fc2, fc1 flushes
    its bias, norm 2 flushes fc1, QKV (4.53e8) flushes norm 2 + the output projection (1.51e8) + QKV's
    bias; QKV, norm 1 and the next fc2 bias share the next bucket: 5 all-reduces a layer.
    GPT 530B (h 20,480): the same five, and norm 1 no longer fits beside QKV (1.26e9): 6."""
    rates = gradient_buckets_per_layer(np.concatenate([layer_parameter_tensors(_gpt(h), np.array([1]))
                                                       for h in (12288, 20480)], axis=1))
    np.testing.assert_allclose(rates, [5, 6])
    # Llama 3 8B (2.18e8 a layer): one bucket every 5e8 / 2.18e8 layers, 3 flushes over 7 layers.
    llama = layer_parameter_tensors(load_model("llama3-8b").spec, np.array([1]))
    np.testing.assert_allclose(gradient_buckets_per_layer(llama), [3 / 7])


def test_gather_plan_and_copy_bytes_by_hand():
    """GPT-3 175B layer (h 12,288): 12 h^2 of 12 h^2 + 13 h parameters gathered in 4 tensors, fc2 (4 h^2)
    the last. Under full recompute a micro-batch gathers 2 + (1 - 1/3) = 2.667 times; each gathered
    element costs 6 HBM bytes beside the collective (buffer fill 2, piece copy 2 + 2) and each gradient
    element 12 around the all-reduce (flatten, pre-divide, copy back: 2 + 2 each)."""
    h = 12288
    plan = gather_plan(_gpt(h), np.array([1]))
    np.testing.assert_allclose(plan.collectives, [4])
    np.testing.assert_allclose(plan.gathered_share, [12 * h**2 / (12 * h**2 + 13 * h)])
    np.testing.assert_allclose(plan.kept_share, [1 / 3])
    recomputed = np.array([[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(gather_passes(plan, recomputed), [[2 + 2 / 3, 2.0, 2.0]])
    layer = 12 * h**2 + 13 * h
    bytes_ = memory_pass_bytes(plan, np.array([[96.0 * layer, 0.0, 0.0]]), recomputed, all_reduce=True)
    assert bytes_[0, 0] == pytest.approx(96 * (6 * 12 * h**2 * (2 + 2 / 3) + 12 * layer))
    assert bytes_[0, 0] / 1.5e12 == pytest.approx(3.25, rel=0.01)  # 28 B x 174.0e9 parameters: s at 1.5 TB/s
