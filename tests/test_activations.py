"""Activation memory per layer: Korthikanti et al. 2022's table exactly, then the modern adaptations.

Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", Table 2 (also
seed 001 section 7.5 and REFERENCE.md), bytes per layer for a GPT-3 layer with 16-bit activations,
dropout, no fused attention:

    no parallelism              sbh(34 + 5as/h)
    TP                          sbh(10 + 24/t + 5as/(ht))
    TP + SP                     sbh(34/t + 5as/(ht))
    TP + selective recompute    sbh(10 + 24/t)
    TP + SP + selective         34 sbh / t
    full recompute              2sbh   (2sbh/t with SP)
"""

import dataclasses

import numpy as np
import pytest

from cost_model.activations import (attention_block_bytes, dense_mlp_block_bytes, layer_activations,
                                    layer_input_bytes)
from cost_model.model_loader import model_from_hf
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec

S, B, H, A, T = 2048, 1, 12288, 96, 8

# GPT-3 175B layer: LayerNorm, GeLU 4h MLP, biases, no GQA.
GPT3 = model_from_hf({"model_type": "gpt2", "n_layer": 96, "n_embd": H, "n_head": A, "n_positions": 2048,
                      "vocab_size": 51200})
KORTHIKANTI = TrainingSpec(seq_length=S, global_batch_size=8, dropout=True, flash_attention=False,
                           precision="bf16")


def plans(**columns):
    return PlanArrays.from_records([columns])


def per_layer(model, training, **plan):
    return layer_activations(model, training, plans(**plan))


SBH = S * B * H
SCORES = 5 * A * S * S * B   # = sbh * 5as/h


@pytest.mark.parametrize("plan, expected", [
    (dict(tp=1), SBH * 34 + SCORES),                                            # sbh(34 + 5as/h)
    (dict(tp=T), SBH * (10 + 24 / T) + SCORES / T),                             # sbh(10 + 24/t + 5as/(ht))
    (dict(tp=T, sequence_parallel=True), SBH * 34 / T + SCORES / T),            # sbh(34/t + 5as/(ht))
    (dict(tp=T, recompute="selective"), SBH * (10 + 24 / T)),                   # sbh(10 + 24/t)
    (dict(tp=T, sequence_parallel=True, recompute="selective"), SBH * 34 / T),  # 34sbh/t
])
def test_korthikanti_table_rows(plan, expected):
    got = per_layer(GPT3, KORTHIKANTI, **plan).dense_full[0]
    assert got == pytest.approx(expected, rel=1e-12)


def test_korthikanti_table_numbers():
    # The same rows in absolute bytes for s=2048, b=1, h=12288, a=96, t=8 (5as/h = 80):
    # sbh = 25,165,824; no parallelism: sbh(34 + 80) = 2,868,903,936 bytes (2.67 GiB per layer).
    assert per_layer(GPT3, KORTHIKANTI, tp=1).dense_full[0] == pytest.approx(2_868_903_936, rel=1e-12)
    # TP 8: sbh(10 + 3 + 10) = 578,813,952
    assert per_layer(GPT3, KORTHIKANTI, tp=8).dense_full[0] == pytest.approx(578_813_952, rel=1e-12)
    # TP 8 + SP + selective: 34/8 sbh = 106,954,752
    got = per_layer(GPT3, KORTHIKANTI, tp=8, sequence_parallel=True, recompute="selective").dense_full[0]
    assert got == pytest.approx(106_954_752, rel=1e-12)


def test_full_recompute_keeps_the_layer_input():
    acts = per_layer(GPT3, KORTHIKANTI, tp=T, recompute="full")
    assert acts.layer_input[0] == pytest.approx(2 * SBH, rel=1e-12)                  # 2sbh
    acts_sp = per_layer(GPT3, KORTHIKANTI, tp=T, recompute="full", sequence_parallel=True)
    assert acts_sp.layer_input[0] == pytest.approx(2 * SBH / T, rel=1e-12)           # 2sbh/t


def test_no_recompute_working_set_ignores_selective():
    acts = per_layer(GPT3, KORTHIKANTI, tp=T, recompute="selective")
    assert acts.dense_no_recompute[0] == pytest.approx(SBH * (10 + 24 / T) + SCORES / T, rel=1e-12)


def test_micro_batch_scales_linearly():
    one = per_layer(GPT3, KORTHIKANTI, tp=T).dense_full[0]
    four = per_layer(GPT3, KORTHIKANTI, tp=T, micro_batch=4).dense_full[0]
    assert four == pytest.approx(4 * one, rel=1e-12)


# --- adaptations -------------------------------------------------------------------------------------

NO_DROPOUT = dataclasses.replace(KORTHIKANTI, dropout=False)


def test_no_dropout_drops_masks_and_dropout_output():
    # Masks gone: 34 - 2 (two 1-byte sbh masks) = 32 sbh; scores: softmax output only, 2as^2b.
    got = per_layer(GPT3, NO_DROPOUT, tp=1).dense_full[0]
    assert got == pytest.approx(32 * SBH + 2 * A * S * S * B, rel=1e-12)
    # With TP the replicated part is 8 sbh (norm inputs + QKV/fc1 inputs), the split part 24 sbh.
    got_tp = per_layer(GPT3, NO_DROPOUT, tp=T).dense_full[0]
    assert got_tp == pytest.approx(SBH * (8 + 24 / T) + 2 * A * S * S * B / T, rel=1e-12)


def test_flash_attention_removes_the_quadratic_term():
    flash = dataclasses.replace(NO_DROPOUT, flash_attention=True)
    # 32 sbh + fp32 log-sum-exp per query row and head: 4 * a * s * b bytes
    got = per_layer(GPT3, flash, tp=1).dense_full[0]
    assert got == pytest.approx(32 * SBH + 4 * A * S * B, rel=1e-12)
    # Doubling the sequence exactly doubles the memory: no s^2 left.
    long = dataclasses.replace(flash, seq_length=2 * S)
    assert per_layer(GPT3, long, tp=1).dense_full[0] == pytest.approx(2 * got, rel=1e-12)
    # With flash, selective recompute has nothing more to drop.
    assert per_layer(GPT3, flash, tp=T, recompute="selective").dense_full[0] == \
        pytest.approx(per_layer(GPT3, flash, tp=T).dense_full[0], rel=1e-12)


LLAMA70 = model_from_hf({"model_type": "llama", "num_hidden_layers": 80, "hidden_size": 8192,
                         "intermediate_size": 28672, "num_attention_heads": 64, "num_key_value_heads": 8,
                         "vocab_size": 128256, "tie_word_embeddings": False})
MODERN = TrainingSpec(seq_length=8192, global_batch_size=8, dropout=False, flash_attention=True)


def test_gqa_and_swiglu_layer_by_hand():
    h, F, a, kv, d, s = 8192, 28672, 64, 8, 128, 8192
    per_token = (2 * h + 2 * h          # norm-1 input, QKV input
                 + 2 * a * d            # Q
                 + 2 * kv * d * 2       # K and V: 8 kv heads only
                 + 2 * a * d            # attention output = output-projection input
                 + 4 * a                # fp32 LSE per head
                 + 2 * h + 2 * h        # norm-2 input, fc1 input
                 + 2 * 2 * F            # SwiGLU fc1 output (gate and up, 2F wide)
                 + 2 * F)               # fc2 input (F)
    got = per_layer(LLAMA70, MODERN, tp=1).dense_full[0]
    assert got == pytest.approx(per_token * s, rel=1e-12)
    # MLP part alone: 4h + 6F bytes per token
    mlp = dense_mlp_block_bytes(LLAMA70, MODERN, plans(tp=1))[0]
    assert mlp == pytest.approx((4 * h + 6 * F) * s, rel=1e-12)


def test_gqa_kv_heads_are_replicated_when_tp_exceeds_them():
    h, a, kv, d, s = 8192, 64, 8, 128, 8192
    t = 16  # 4 query heads per rank; 8 kv heads / 16 ranks -> Megatron keeps one kv head per rank
    got = attention_block_bytes(LLAMA70, MODERN, plans(tp=t))[0]
    per_token = (4 * h) + 2 * (a / t) * d + 2 * 1 * d * 2 + 2 * (a / t) * d + 4 * (a / t)
    assert got == pytest.approx(per_token * s, rel=1e-12)
    # With t = 8 exactly one kv head per rank as well: K/V memory equal to t = 16 per rank.
    k_v_8 = attention_block_bytes(LLAMA70, MODERN, plans(tp=8))[0]
    q_o_lse_8 = (2 * 8 * d * 2 + 4 * 8) * s
    q_o_lse_16 = (2 * 4 * d * 2 + 4 * 4) * s
    assert k_v_8 - q_o_lse_8 == pytest.approx(got - q_o_lse_16, rel=1e-12)


@pytest.mark.parametrize("training", [MODERN, KORTHIKANTI, NO_DROPOUT])
@pytest.mark.parametrize("cp", [2, 4])
def test_context_parallel_divides_everything_by_cp(training, cp):
    model = GPT3 if training is not MODERN else LLAMA70
    base = per_layer(model, training, tp=4, sequence_parallel=True)
    split = per_layer(model, training, tp=4, sequence_parallel=True, cp=cp)
    # Per-token tensors cover s/cp tokens; a materialised score matrix is (s/cp) x s.
    assert split.dense_full[0] == pytest.approx(base.dense_full[0] / cp, rel=1e-12)
    assert split.layer_input[0] == pytest.approx(base.layer_input[0] / cp, rel=1e-12)


def test_fp8_saves_gemm_inputs_in_one_byte():
    fp8 = dataclasses.replace(MODERN, precision="fp8")
    h, F, s = 8192, 28672, 8192
    a, d = 64, 128
    bf16 = per_layer(LLAMA70, MODERN, tp=1).dense_full[0]
    got = per_layer(LLAMA70, fp8, tp=1).dense_full[0]
    # Four GEMM inputs lose one byte per element: QKV input h, out-proj input a*d, fc1 input h, fc2 input F.
    assert bf16 - got == pytest.approx((h + a * d + h + F) * s, rel=1e-12)


def test_layer_input_is_independent_of_recompute_and_model_internals():
    acts = layer_input_bytes(LLAMA70, MODERN, plans(tp=8, sequence_parallel=True, micro_batch=2))
    assert acts[0] == pytest.approx(2 * 8192 * 2 * 8192 / 8, rel=1e-12)


def test_vectorised_over_plans():
    many = PlanArrays.from_records([dict(tp=1), dict(tp=T), dict(tp=T, sequence_parallel=True)])
    got = layer_activations(GPT3, KORTHIKANTI, many).dense_full
    expected = np.array([SBH * 34 + SCORES, SBH * (10 + 24 / T) + SCORES / T, SBH * 34 / T + SCORES / T])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_unfused_cross_entropy_holds_more_logit_buffers():
    """Fused (Megatron): bf16 logits beside the fp32 copy, 2 B per entry. PyTorch's log_softmax +
    nll_loss backward at tp = 1: the fp32 gradient of the log-probabilities and the fp32 input
    gradient, 8 B. PyTorch's loss parallel at tp > 1: zeros_like(x), exp(x) and their sum, 12 B."""
    from cost_model.activations import logits_transient_bytes
    p = PlanArrays.from_records([dict(tp=1, micro_batch=2), dict(tp=4, micro_batch=2)])
    vocab = np.array([128256.0, 128256.0])
    fused = logits_transient_bytes(MODERN, p, vocab)
    unfused = logits_transient_bytes(dataclasses.replace(MODERN, fused_cross_entropy=False), p, vocab)
    entries = 2 * 8192 * 128256
    np.testing.assert_array_equal(fused, [2 * entries, 2 * entries / 4])
    np.testing.assert_array_equal(unfused, [8 * entries, 12 * entries / 4])


def test_sync_free_rank_capacity_buffers_hold_the_expert_activations():
    """Qwen3-30B-A3B, one 4096-token sequence, TP 1: 4096 x top-8 = 32,768 routed pairs, each saving the
    permuted fc1 input (2 x 2048 B), the gated fc1 output (2 x 2 x 768), the activation output (2 x 768)
    and its fp32 routing probability (4): 8,708 bytes. Rank-capacity buffers hold 1.5x a balanced share,
    the paged stash 1.1x (Megatron-LM docs/user-guide/features/paged_stash.md)."""
    from cost_model.activations import moe_mlp_block_bytes
    from cost_model.model_loader import load_model
    qwen = load_model("qwen3-30b-a3b").spec
    plan = plans(tp=1, pp=1, dp=8, cp=1, ep=8, micro_batch=1, recompute="none", sequence_parallel=False)
    base = TrainingSpec(seq_length=4096, global_batch_size=8)
    routed = moe_mlp_block_bytes(qwen, base, plan)[0]
    hybridep = dataclasses.replace(base, moe_token_dispatcher="hybridep")
    assert moe_mlp_block_bytes(qwen, hybridep, plan)[0] == routed  # the dispatcher alone keeps the same pairs
    rank = moe_mlp_block_bytes(qwen, dataclasses.replace(hybridep, moe_rank_capacity_factor=1.5), plan)[0]
    stash = moe_mlp_block_bytes(qwen, dataclasses.replace(hybridep, moe_rank_capacity_factor=1.5,
                                                          moe_paged_stash_factor=1.1), plan)[0]
    assert rank - routed == pytest.approx(0.5 * 32768 * 8708)
    assert stash - routed == pytest.approx(0.1 * 32768 * 8708)
