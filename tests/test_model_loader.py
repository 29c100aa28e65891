"""Reading Hugging Face config.json / model.yaml files into a ModelSpec, and the training section."""

import json

import pytest

from cost_model.model_loader import (build_training, list_model_presets, load_model, model_from_hf,
                                     model_input_from_mapping)
from cost_model.params import ParameterCounts
from hardware.errors import InputError

LLAMA_LIKE = {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8,
              "intermediate_size": 1024, "vocab_size": 1000, "hidden_act": "silu", "rms_norm_eps": 1e-5}


def test_missing_kv_heads_means_multi_head_attention():
    spec = model_from_hf(LLAMA_LIKE)
    assert spec.num_kv_heads == spec.num_attention_heads == 8
    assert spec.head_dim == 512 // 8
    # MHA: q, k, v, o are all h x h
    assert ParameterCounts(spec).attention == 4 * 512 * 512


def test_explicit_kv_heads_and_head_dim():
    spec = model_from_hf({**LLAMA_LIKE, "num_key_value_heads": 2, "head_dim": 128})
    assert (spec.num_kv_heads, spec.head_dim) == (2, 128)
    # q: 512 x (8 x 128), k and v: 512 x (2 x 128), o: (8 x 128) x 512
    assert ParameterCounts(spec).attention == 512 * 1024 + 2 * 512 * 256 + 1024 * 512
    assert spec.attention_output_width == 1024


def test_tie_word_embeddings_defaults_to_tied():
    # transformers' PretrainedConfig defaults tie_word_embeddings to True.
    assert model_from_hf(LLAMA_LIKE).tie_embeddings is True
    untied = model_from_hf({**LLAMA_LIKE, "tie_word_embeddings": False})
    assert untied.tie_embeddings is False
    assert ParameterCounts(untied).total - ParameterCounts(model_from_hf(LLAMA_LIKE)).total == 1000 * 512


def test_gpt2_names_and_defaults():
    spec = model_from_hf({"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024,
                          "vocab_size": 50257, "activation_function": "gelu_new"})
    assert (spec.num_layers, spec.hidden_size, spec.num_attention_heads) == (12, 768, 12)
    assert spec.ffn_hidden_size == 4 * 768          # n_inner absent -> 4h
    assert spec.max_position_embeddings == 1024
    assert spec.gated_mlp is False
    assert spec.norm_type == "layernorm"
    assert spec.position_embedding_type == "learned"
    assert spec.linear_bias and spec.qkv_bias
    assert spec.tie_embeddings


def test_qwen2_has_qkv_bias_but_no_other_bias():
    spec = load_model("qwen2.5-7b").spec
    assert spec.qkv_bias is True and spec.linear_bias is False
    assert spec.gated_mlp and spec.norm_type == "rmsnorm"


def test_llama_attention_bias_false_is_respected():
    spec = model_from_hf({**LLAMA_LIKE, "attention_bias": False, "mlp_bias": False})
    assert spec.qkv_bias is False


def test_deepseek_first_k_dense_replace_pattern():
    cfg = {"model_type": "deepseek_v3", "num_hidden_layers": 6, "hidden_size": 256, "intermediate_size": 512,
           "moe_intermediate_size": 64, "num_attention_heads": 4, "n_routed_experts": 8, "n_shared_experts": 2,
           "num_experts_per_tok": 2, "first_k_dense_replace": 2, "moe_layer_freq": 1, "vocab_size": 1000,
           "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
           "v_head_dim": 16}
    spec = model_from_hf(cfg)
    assert spec.moe_layers == (False, False, True, True, True, True)
    assert spec.num_experts == 8 and spec.experts_per_token == 2
    assert spec.shared_expert_ffn_hidden_size == 2 * 64   # n_shared_experts x moe_intermediate_size
    assert spec.is_mla and spec.q_head_dim == 24 and spec.v_dim == 16
    # moe_layer_freq = 2 keeps every other layer (index % 2 == 0) after the dense prefix
    alt = model_from_hf({**cfg, "moe_layer_freq": 2})
    assert alt.moe_layers == (False, False, True, False, True, False)


def test_qwen_moe_decoder_sparse_step_and_mlp_only_layers():
    cfg = {"model_type": "qwen2_moe", "num_hidden_layers": 4, "hidden_size": 128, "intermediate_size": 256,
           "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64, "num_attention_heads": 4,
           "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 2, "mlp_only_layers": [3],
           "vocab_size": 100, "tie_word_embeddings": False}
    spec = model_from_hf(cfg)
    # (i + 1) % 2 == 0 -> layers 1 and 3; layer 3 is listed in mlp_only_layers.
    assert spec.moe_layers == (False, True, False, False)
    c = ParameterCounts(spec)
    # Router 128 x 4 plus Qwen-MoE's shared_expert_gate (128 -> 1).
    assert c.router == 128 * 4 + 128


def test_sliding_window_layers_from_hf_conventions():
    base = {"num_hidden_layers": 4, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
            "vocab_size": 100, "sliding_window": 64}
    listed = model_from_hf({**base, "model_type": "gpt_oss",
                            "layer_types": ["sliding_attention", "full_attention"] * 2,
                            "num_local_experts": 4, "num_experts_per_tok": 2})
    assert (listed.sliding_window, listed.sliding_window_layers) == (64, (True, False, True, False))
    assert listed.attention_sinks and listed.linear_bias and listed.qkv_bias
    assert model_from_hf({**base, "model_type": "mistral"}).sliding_window_layers == (True,) * 4
    qwen2 = {**base, "model_type": "qwen2", "max_window_layers": 3}
    assert model_from_hf(qwen2).sliding_window == 0                     # use_sliding_window defaults off
    assert model_from_hf({**qwen2, "use_sliding_window": True}).sliding_window_layers == (False,) * 3 + (True,)
    assert model_from_hf({**base, "model_type": "mixtral", "sliding_window": None}).sliding_window == 0
    with pytest.raises(InputError, match="layer_types"):
        model_from_hf({**base, "model_type": "gpt_oss", "layer_types": ["full_attention"]})


def test_config_json_file_round_trip(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**LLAMA_LIKE, "num_key_value_heads": 4, "tie_word_embeddings": False}))
    model = load_model(path)
    assert model.spec.num_kv_heads == 4
    assert model.spec.name == "config"
    assert model.training_overrides == {}


def test_preset_override_and_training_section():
    model = model_input_from_mapping({"preset": "llama3-8b", "num_hidden_layers": 16,
                                      "training": {"seq_length": 8192, "global_batch_tokens": 8192 * 512}})
    assert model.spec.num_layers == 16 and model.spec.hidden_size == 4096
    training = build_training(model.training_overrides)
    assert training.seq_length == 8192 and training.global_batch_size == 512
    assert training.global_batch_tokens == 8192 * 512


def test_global_batch_tokens_must_be_whole_sequences():
    with pytest.raises(InputError):
        build_training({"seq_length": 4096, "global_batch_tokens": 4096 * 10 + 1})


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError):
        load_model("llama3-8bb")
    with pytest.raises(InputError):
        model_from_hf({k: v for k, v in LLAMA_LIKE.items() if k != "hidden_size"})
    with pytest.raises(InputError):
        model_from_hf({**LLAMA_LIKE, "num_key_value_heads": 3})   # 8 heads not a multiple of 3
    with pytest.raises(InputError):
        model_input_from_mapping({**LLAMA_LIKE, "training": {"seq_len": 4096}})


def test_every_preset_loads():
    for name in list_model_presets():
        spec = load_model(name).spec
        assert ParameterCounts(spec).total > 0


def test_swiglu_limit_is_the_gated_mlp_clamp():
    assert model_from_hf({**LLAMA_LIKE, "swiglu_limit": 7.0}).activation_clamp == 7.0
    assert model_from_hf(LLAMA_LIKE).activation_clamp == 0.0
    assert model_from_hf({**LLAMA_LIKE, "swiglu_limit": None}).activation_clamp == 0.0
    for bad in (0, -7.0, "7", True):
        with pytest.raises(InputError, match="swiglu_limit"):
            model_from_hf({**LLAMA_LIKE, "swiglu_limit": bad})


def test_rope_scaling_type_and_yarn_is_priced_without_a_warning():
    import warnings

    yarn = {**LLAMA_LIKE, "rope_scaling": {"rope_type": "yarn", "factor": 32.0}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # YaRN is priced: no 'read but not priced' warning
        assert model_from_hf(yarn).rope_scaling_type == "yarn"
    assert model_from_hf({**LLAMA_LIKE, "rope_scaling": {"type": "YaRN"}}).rope_scaling_type == "yarn"
    assert model_from_hf(LLAMA_LIKE).rope_scaling_type == ""
    with pytest.warns(UserWarning, match="rope_scaling"):  # Llama 3.1's scaling changes nothing priced
        assert model_from_hf({**LLAMA_LIKE, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}).rope_scaling_type \
            == "llama3"


def test_a_field_readers_error_names_the_file_and_field_once():
    """_flag and _clamp raise their own InputError inside the ModelSpec call; it reaches the user as written,
    not wrapped again with the file name and a generic fix."""
    with pytest.raises(InputError) as flag:
        model_from_hf({**LLAMA_LIKE, "tie_word_embeddings": "yes"}, source="m.json")
    assert str(flag.value) == ("m.json: tie_word_embeddings: must be true or false, got 'yes'; write "
                               "tie_word_embeddings: true or tie_word_embeddings: false, without quotes")
    with pytest.raises(InputError) as clamp:
        model_from_hf({**LLAMA_LIKE, "swiglu_limit": -1}, source="m.json")
    assert str(clamp.value) == ("m.json: swiglu_limit: must be a positive number, got -1; give the clamp limit "
                                "(GPT-OSS: 7.0) or leave swiglu_limit out")
