"""Parameter counts: published totals of real models, and small models counted by hand.

The published totals are what ``sum(p.numel() for p in model.parameters())`` prints for the Hugging Face
implementation of each checkpoint (REFERENCE.md).
"""

import dataclasses

import pytest

from cost_model.model_loader import load_model, model_input_from_mapping
from cost_model.params import ParameterCounts


def counts(name_or_config) -> ParameterCounts:
    if isinstance(name_or_config, dict):
        return ParameterCounts(model_input_from_mapping(name_or_config).spec)
    return ParameterCounts(load_model(name_or_config).spec)


# --- published totals ------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, published", [
    ("llama3-8b", 8_030_261_248),        # Meta-Llama-3-8B
    ("llama3-70b", 70_553_706_496),      # Meta-Llama-3-70B
    ("llama3-405b", 405_853_388_800),    # Llama-3.1-405B
    ("mixtral-8x7b", 46_702_792_704),    # Mixtral-8x7B-v0.1
    ("qwen2.5-7b", 7_615_616_512),       # Qwen2.5-7B (with q/k/v biases)
    ("deepseek-v3", 671_026_404_352),    # DeepSeek-V3 without the MTP module
])
def test_published_totals_are_exact(preset, published):
    assert counts(preset).total == published


def test_llama3_8b_by_hand():
    # h=4096, 32 q heads, 8 kv heads of 128, F=14336, V=128256, untied, RMSNorm, no biases.
    h, kv_w, F, V, L = 4096, 8 * 128, 14336, 128256, 32
    attention = h * h + 2 * h * kv_w + h * h            # q, k, v, o
    mlp = 3 * h * F                                     # gate, up, down
    layer = attention + mlp + 2 * h                     # two RMSNorm weights
    total = L * layer + 2 * V * h + h                   # embedding, LM head, final norm
    assert total == 8_030_261_248
    c = counts("llama3-8b")
    assert (c.attention, c.dense_mlp, c.dense_layer) == (attention, mlp, layer)
    assert c.embedding == c.lm_head == V * h
    assert c.final_norm == h


def test_qwen3_moe_published_totals_and_qk_norm():
    # Qwen3 model cards: 30.5B total / 3.3B activated; 235B total / 22B activated.
    small, large = counts("qwen3-30b-a3b"), counts("qwen3-235b-a22b")
    assert round(small.total / 1e9, 1) == 30.5 and int(small.active / 1e8) == 33  # 3.35B, the card truncates
    assert round(large.total / 1e9) == 235 and round(large.active / 1e9) == 22
    # By hand, one Qwen3-30B-A3B layer: q 2048x4096, k and v 2048x512, o 4096x2048, q_norm and k_norm
    # of head_dim 128, two RMSNorms, router 2048x128, 128 experts of 3 x 2048 x 768.
    h = 2048
    attention = h * 4096 + 2 * h * 512 + 4096 * h + 2 * 128
    assert small.attention == attention
    assert small.moe_layer == attention + 2 * h + h * 128 + 128 * 3 * h * 768
    assert small.total == 48 * small.moe_layer + 2 * 151936 * h + h


def test_gpt_oss_120b_matches_openai_model_card():
    # OpenAI gpt-oss model card (arXiv 2508.10925), table 1: 116.83B total, 5.13B active per token
    # (their active count leaves out the input embedding; the unembedding is in).
    c = counts("gpt-oss-120b")
    assert round(c.total / 1e9, 2) == 116.83
    assert round((c.active - c.embedding) / 1e9, 2) == 5.13
    # One layer by hand: q/k/v/o with biases and 64 sink logits; 128 experts of gate_up 2880x5760 and
    # down 2880x2880 with their biases; the router with its bias.
    h, q_w, kv_w, e = 2880, 64 * 64, 8 * 64, 128
    attention = h * (q_w + 2 * kv_w) + q_w * h + (q_w + 2 * kv_w) + h + 64
    expert = 3 * h * 2880 + 2 * 2880 + h
    assert c.attention == attention
    assert c.moe_layer == attention + 2 * h + (h * e + e) + e * expert


def test_mixtral_active_parameters():
    c = counts("mixtral-8x7b")
    # Mistral's announcement: 46.7B total, 12.9B used per token (2 of 8 experts).
    assert c.active == pytest.approx(12.9e9, rel=0.005)
    # total - active = 6 unused experts per layer x 32 layers x 3 x 4096 x 14336
    assert c.total - c.active == 6 * 32 * 3 * 4096 * 14336
    assert c.dense_mlp == 0  # every Mixtral layer is a MoE layer


def test_deepseek_v3_structure_and_active_parameters():
    c = counts("deepseek-v3")
    spec = c.spec
    # first_k_dense_replace = 3: layers 0-2 dense, 3..60 MoE.
    assert spec.moe_layers == (False,) * 3 + (True,) * 58
    assert spec.num_moe_layers == 58 and spec.num_dense_layers == 3
    # DeepSeek-V3 technical report: "671B total parameters with 37B activated for each token".
    assert c.active == pytest.approx(37e9, rel=0.03)
    # MLA attention, by hand (modeling_deepseek_v3.py):
    h, a, ql, kvl, nope, rope, v = 7168, 128, 1536, 512, 128, 64, 128
    q = h * ql + ql + ql * a * (nope + rope)
    kv = h * (kvl + rope) + kvl + kvl * a * (nope + v)
    o = a * v * h
    assert c.attention == q + kv + o
    # One routed expert = SwiGLU with F=2048; shared expert likewise (1 x 2048); router 256 x h.
    assert c.expert == 3 * h * 2048
    assert c.shared_experts == 3 * h * 2048
    assert c.router == 256 * h
    assert c.routed_experts_total == 58 * 256 * 3 * h * 2048


def test_dense_models_active_equals_total():
    for preset in ("llama3-8b", "qwen2.5-7b"):
        c = counts(preset)
        assert c.active == c.total
        assert c.routed_experts_total == 0


# --- hand-built models -----------------------------------------------------------------------------

def test_tiny_gqa_swiglu_model_by_hand():
    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100, "hidden_act": "silu",
           "tie_word_embeddings": False, "rms_norm_eps": 1e-5}
    c = counts(cfg)
    # head_dim = 64/4 = 16; q 64x64 = 4096, k and v 64x(2x16) = 2048 each, o 64x64 = 4096 -> 12,288
    assert c.attention == 12_288
    # SwiGLU: 3 x 64 x 128 = 24,576
    assert c.dense_mlp == 24_576
    # layer = 12,288 + 24,576 + 2 x 64 (RMSNorm) = 36,992; 2 layers = 73,984
    assert c.dense_layer == 36_992
    # + embedding 100 x 64 + untied head 100 x 64 + final norm 64 = 86,848
    assert c.total == 86_848
    # Tied: the head disappears -> 80,448
    tied = counts({**cfg, "tie_word_embeddings": True})
    assert tied.total == 86_848 - 6_400


def test_tiny_gpt2_model_by_hand():
    cfg = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 32, "vocab_size": 100}
    c = counts(cfg)
    # Per layer (HF GPT2Block): ln_1 2h=128; c_attn 64x192+192=12,480; c_proj 64x64+64=4,160;
    # ln_2 128; c_fc 64x256+256=16,640; mlp c_proj 256x64+64=16,448 -> 49,984 (= 12h^2 + 13h)
    assert c.dense_layer == 49_984 == 12 * 64**2 + 13 * 64
    # + wte 100x64 = 6,400 + wpe 32x64 = 2,048 + ln_f 128; head tied (HF default) -> 108,544
    assert c.total == 2 * 49_984 + 6_400 + 2_048 + 128 == 108_544


def test_gpt2_small_published_total():
    # GPT-2 small (openai-community/gpt2 config.json): 124,439,808 parameters in GPT2Model / LMHead (tied):
    # 12h^2 L + 13h L + (V + P) h + 2h with h=768, L=12, V=50257, P=1024.
    cfg = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024,
           "n_ctx": 1024, "vocab_size": 50257, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}
    assert counts(cfg).total == 124_439_808


def test_qwen2_bias_adds_exactly_the_qkv_widths():
    c = counts("qwen2.5-7b")
    # 28 q heads + 2 x 4 kv heads of 128 = 4,608 bias elements per layer, 28 layers
    spec = c.spec
    no_bias = ParameterCounts(dataclasses.replace(spec, qkv_bias=False))
    assert c.total - no_bias.total == 28 * (28 + 2 * 4) * 128


def test_tp_replicated_parameters():
    # LayerNorm + linear biases (GPT): only the row-parallel output bias is replicated in attention.
    c = counts({"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 32, "vocab_size": 100})
    assert c.attention_tp_replicated == 64
    # QKV bias (3h) + output bias (h) are the attention's vectors, not matmul weights.
    assert c.attention_vectors == 4 * 64
    # MLA: q_a (h x q_lora + norm) and kv_a (h x (kv_lora + rope) + norm) are replicated.
    ds = counts("deepseek-v3")
    h = 7168
    assert ds.attention_tp_replicated == h * 1536 + 1536 + h * (512 + 64) + 512
